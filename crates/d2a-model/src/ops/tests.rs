//! Gradient checks (central differences in f64) and PyTorch parity for every op.

use candle_core::{DType, Device, Result, Tensor, Var};

use super::*;
use crate::test_support::{fixture, pseudo_random};

/// Compares the autograd gradient of `sum(f(inputs) · r)` (with a fixed pseudo-random `r`) with
/// central differences, for every element of every input, in f64.
fn check_gradients(f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) -> Result<()> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(DType::F64)?))
        .collect::<Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors)?;
    let r = pseudo_random(y.dims(), 99)?.to_dtype(DType::F64)?;
    let loss = |ts: &[Tensor]| -> Result<f64> { (f(ts)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let eps = 1e-6;
    for (i, var) in vars.iter().enumerate() {
        let analytic = grads
            .get(var)
            .expect("every input gets a gradient")
            .flatten_all()?
            .to_vec1::<f64>()?;
        let base = tensors[i].flatten_all()?.to_vec1::<f64>()?;
        for j in 0..base.len() {
            let probe = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut ts = tensors.clone();
                ts[i] = Tensor::from_vec(v, tensors[i].dims(), &Device::Cpu)?;
                loss(&ts)
            };
            let numeric = (probe(eps)? - probe(-eps)?) / (2.0 * eps);
            let tol = 1e-6 * (1.0 + numeric.abs());
            assert!(
                (numeric - analytic[j]).abs() < tol,
                "input {i} element {j}: analytic {} vs numeric {numeric}",
                analytic[j]
            );
        }
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// Runs `f` on the fixture's inputs and checks output and gradients against PyTorch's.
fn check_fixture(name: &str, f: impl Fn(&Tensor, Option<&Tensor>) -> Result<Tensor>) -> Result<()> {
    let Some(fx) = fixture("ops_io.safetensors")? else {
        return Ok(());
    };
    let get = |k: &str| fx.get(&format!("{name}.{k}")).cloned();
    let x = Var::from_tensor(&get("x").expect("fixture input"))?;
    let w = get("w").map(|w| Var::from_tensor(&w)).transpose()?;
    let y = f(x.as_tensor(), w.as_ref().map(|w| w.as_tensor()))?;
    assert!(
        max_abs_diff(&y, &get("y").unwrap())? < 1e-4,
        "{name}: output differs from PyTorch"
    );
    let grads = (&y * get("gy").unwrap())?.sum_all()?.backward()?;
    assert!(
        max_abs_diff(grads.get(&x).unwrap(), &get("gx").unwrap())? < 1e-4,
        "{name}: input gradient differs"
    );
    if let Some(w) = &w {
        assert!(
            max_abs_diff(grads.get(w).unwrap(), &get("gw").unwrap())? < 1e-4,
            "{name}: weight gradient differs"
        );
    }
    Ok(())
}

#[test]
fn conv2d_gradients_for_every_geometry() -> Result<()> {
    let cases = [
        // (x dims, w dims, config)
        ([2, 4, 5, 7], [6, 4, 3, 3], Conv2dConfig::square(1, 1, 1, 1)),
        ([1, 4, 7, 6], [4, 2, 3, 3], Conv2dConfig::square(2, 1, 1, 2)),
        ([1, 4, 6, 9], [4, 1, 3, 3], Conv2dConfig::square(2, 1, 1, 4)),
        ([1, 2, 9, 8], [3, 2, 3, 3], Conv2dConfig::square(1, 2, 2, 1)),
        (
            [1, 2, 12, 11],
            [2, 2, 3, 3],
            Conv2dConfig::square(1, 5, 5, 1),
        ),
        ([2, 3, 5, 4], [5, 3, 1, 1], Conv2dConfig::plain()),
        (
            [1, 3, 9, 11],
            [2, 3, 7, 7],
            Conv2dConfig::square(2, 3, 1, 1),
        ),
        (
            [1, 2, 6, 7],
            [2, 2, 2, 3],
            Conv2dConfig {
                stride: (2, 1),
                padding: (0, 1),
                dilation: (1, 2),
                groups: 1,
            },
        ),
    ];
    for (i, (xd, wd, cfg)) in cases.into_iter().enumerate() {
        let x = pseudo_random(&xd, i as u64)?;
        let w = pseudo_random(&wd, 100 + i as u64)?;
        check_gradients(|t| conv2d(&t[0], &t[1], cfg), &[x, w])?;
    }
    Ok(())
}

#[test]
fn conv2d_affine_gradients_and_equivalence() -> Result<()> {
    for (i, (relu, cfg, groups)) in [
        (false, Conv2dConfig::square(1, 1, 1, 1), 1),
        (true, Conv2dConfig::square(2, 1, 1, 2), 2),
        (true, Conv2dConfig::square(1, 2, 2, 1), 1),
    ]
    .into_iter()
    .enumerate()
    {
        let seed = 20 + 4 * i as u64;
        let x = pseudo_random(&[2, 4, 5, 6], seed)?;
        let w = pseudo_random(&[6, 4 / groups, 3, 3], seed + 1)?;
        let scale = pseudo_random(&[6], seed + 2)?;
        let shift = pseudo_random(&[6], seed + 3)?;
        check_gradients(
            |t| conv2d_affine(&t[0], &t[1], (&t[2], &t[3]), cfg, relu),
            &[x.clone(), w.clone(), scale.clone(), shift.clone()],
        )?;
        let mut want = conv2d(&x, &w, cfg)?
            .broadcast_mul(&scale.reshape((1, 6, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, 6, 1, 1))?)?;
        if relu {
            want = want.relu()?;
        }
        let got = conv2d_affine(&x, &w, (&scale, &shift), cfg, relu)?;
        assert!(max_abs_diff(&got, &want)? < 1e-6, "case {i}");
    }
    let x = pseudo_random(&[1, 4, 5, 5], 1)?;
    let w = pseudo_random(&[6, 4, 3, 3], 2)?;
    let three = pseudo_random(&[3], 3)?;
    assert!(conv2d_affine(&x, &w, (&three, &three), Conv2dConfig::plain(), false).is_err());
    Ok(())
}

#[test]
fn conv2d_matches_candle_where_candle_is_right() -> Result<()> {
    let x = pseudo_random(&[2, 6, 11, 9], 1)?;
    let w = pseudo_random(&[4, 3, 3, 3], 2)?;
    for (stride, padding, dilation) in [(1, 1, 1), (2, 1, 1), (1, 2, 2), (3, 0, 1)] {
        let ours = conv2d(&x, &w, Conv2dConfig::square(stride, padding, dilation, 2))?;
        let theirs = x.conv2d(&w, padding, stride, dilation, 2)?;
        assert!(
            max_abs_diff(&ours, &theirs)? < 1e-5,
            "stride {stride} padding {padding} dilation {dilation}"
        );
    }
    Ok(())
}

/// Shapes large enough to take the tiled, multi-threaded paths (several row tiles per image,
/// more work items than threads, one work item with its im2col spread over the threads, the
/// wider tiles of large weights, the transposed-convolution input gradient and the col2im one): forward and both gradients
/// against candle's convolution, which is right (if slow) on these.
#[test]
fn conv2d_tiled_paths_match_candle_with_gradients() -> Result<()> {
    let cases = [
        // (x dims, w dims, stride, padding, dilation, groups)
        ([2, 32, 48, 40], [24, 32, 3, 3], 1, 1, 1, 1),
        ([2, 64, 40, 40], [64, 2, 3, 3], 1, 1, 1, 32),
        ([2, 32, 40, 40], [16, 32, 3, 3], 2, 1, 1, 1),
        ([1, 16, 50, 50], [8, 16, 3, 3], 1, 5, 5, 1),
        ([2, 48, 30, 30], [40, 48, 1, 1], 1, 0, 1, 1),
        ([3, 16, 34, 34], [16, 16, 1, 1], 2, 0, 1, 1),
        // One work item: im2col spread over the threads, each GEMM threaded.
        ([1, 8, 20, 20], [8, 8, 3, 3], 1, 1, 1, 1),
        ([1, 8, 21, 19], [8, 8, 3, 3], 2, 1, 1, 1),
        // Large weights (1024 x 1152): tiles of at least 256 pixels, two per image.
        ([1, 128, 40, 10], [1024, 128, 3, 3], 1, 1, 1, 1),
    ];
    for (i, (xd, wd, stride, padding, dilation, groups)) in cases.into_iter().enumerate() {
        let x = Var::from_tensor(&pseudo_random(&xd, 10 + i as u64)?)?;
        let w = Var::from_tensor(&pseudo_random(&wd, 20 + i as u64)?)?;
        let cfg = Conv2dConfig::square(stride, padding, dilation, groups);
        let ours = conv2d(&x, &w, cfg)?;
        let theirs = x.conv2d(&w, padding, stride, dilation, groups)?;
        let r = pseudo_random(ours.dims(), 30)?;
        let g_ours = (&ours * &r)?.sum_all()?.backward()?;
        let g_theirs = (&theirs * &r)?.sum_all()?.backward()?;
        let scale = theirs.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        assert!(
            max_abs_diff(&ours, &theirs)? < 1e-5 * scale,
            "case {i}: forward"
        );
        for (name, v) in [("input", &x), ("weight", &w)] {
            let (a, b) = (g_ours.get(v).unwrap(), g_theirs.get(v).unwrap());
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
            let diff = max_abs_diff(a, b)?;
            assert!(
                diff < 1e-5 * scale,
                "case {i}: {name} gradient differs by {diff} (scale {scale})"
            );
        }
    }
    Ok(())
}

#[test]
fn batch_norm_gradients_train_and_eval_with_and_without_relu() -> Result<()> {
    let x = pseudo_random(&[3, 4, 5, 6], 40)?;
    let gamma = pseudo_random(&[4], 41)?;
    let beta = pseudo_random(&[4], 42)?;
    let running = BnStats {
        mean: vec![0.1, -0.2, 0.3, 0.0],
        var: vec![0.5, 1.5, 0.9, 2.0],
        count: 0,
    };
    for relu in [false, true] {
        check_gradients(
            |t| Ok(batch_norm_act(&t[0], &t[1], &t[2], None, 1e-5, relu)?.0),
            &[x.clone(), gamma.clone(), beta.clone()],
        )?;
        check_gradients(
            |t| Ok(batch_norm_act(&t[0], &t[1], &t[2], Some(running.clone()), 1e-5, relu)?.0),
            &[x.clone(), gamma.clone(), beta.clone()],
        )?;
    }
    Ok(())
}

/// The fused layer against candle-nn's BatchNorm + ReLU (right, if slow): outputs in train and
/// eval mode and the running statistics after two training steps.
#[test]
fn batch_norm_layer_matches_candle_nn() -> Result<()> {
    use candle_core::ModuleT as _;
    let dev = Device::Cpu;
    let ours_map = candle_nn::VarMap::new();
    let theirs_map = candle_nn::VarMap::new();
    let ours = crate::nn::batch_norm(
        5,
        candle_nn::VarBuilder::from_varmap(&ours_map, DType::F32, &dev),
    )?;
    let theirs = candle_nn::batch_norm(
        5,
        candle_nn::BatchNormConfig {
            eps: 1e-5,
            remove_mean: true,
            affine: true,
            momentum: 0.1,
        },
        candle_nn::VarBuilder::from_varmap(&theirs_map, DType::F32, &dev),
    )?;
    for (name, value) in [("weight", 43), ("bias", 44)] {
        let v = pseudo_random(&[5], value)?.to_dtype(DType::F32)?;
        for map in [&ours_map, &theirs_map] {
            map.data().lock().unwrap()[name].set(&v)?;
        }
    }
    for step in 0..2 {
        let x = (pseudo_random(&[2, 5, 7, 3], 50 + step)?.to_dtype(DType::F32)? * 3.0)?;
        let a = ours.forward_act(&x, true, true)?;
        let b = theirs.forward_t(&x, true)?.relu()?;
        assert!(max_abs_diff(&a, &b)? < 1e-5, "train step {step}");
    }
    for name in ["running_mean", "running_var"] {
        let (a, b) = (
            ours_map.data().lock().unwrap()[name].as_tensor().clone(),
            theirs_map.data().lock().unwrap()[name].as_tensor().clone(),
        );
        assert!(max_abs_diff(&a, &b)? < 1e-5, "{name}");
    }
    let x = pseudo_random(&[1, 5, 4, 4], 60)?.to_dtype(DType::F32)?;
    let a = ours.forward_t(&x, false)?;
    let b = theirs.forward_t(&x, false)?;
    assert!(max_abs_diff(&a, &b)? < 1e-5, "eval");
    Ok(())
}

#[test]
fn conv2d_rejects_bad_shapes() -> Result<()> {
    let x = pseudo_random(&[1, 6, 5, 5], 1)?;
    let err = |w: &[usize], cfg| {
        conv2d(&x, &pseudo_random(w, 2).unwrap(), cfg)
            .unwrap_err()
            .to_string()
    };
    assert!(err(&[4, 4, 3, 3], Conv2dConfig::square(1, 1, 1, 4)).contains("groups"));
    assert!(err(&[4, 6, 7, 7], Conv2dConfig::plain()).contains("smaller than"));
    assert!(err(&[4, 6, 3, 3], Conv2dConfig::square(0, 1, 1, 1)).contains("positive"));
    assert!(
        conv2d(
            &x.to_dtype(DType::U8)?,
            &pseudo_random(&[4, 6, 3, 3], 2)?.to_dtype(DType::U8)?,
            Conv2dConfig::plain()
        )
        .is_err()
    );
    Ok(())
}

#[test]
fn max_pool_gradient_and_shape() -> Result<()> {
    // Distinct values, so that no window has a tie and the gradient is defined.
    for (i, dims) in [[2, 3, 9, 8], [1, 2, 6, 11], [1, 1, 3, 3]]
        .into_iter()
        .enumerate()
    {
        let n: usize = dims.iter().product();
        let x = Tensor::from_vec(
            (0..n)
                .map(|k| ((k * 7919 + i) % n) as f64 - n as f64 / 2.0)
                .collect(),
            &dims,
            &Device::Cpu,
        )?;
        let y = max_pool2d(&x, 3, 2, 1)?;
        assert_eq!(
            y.dims(),
            [
                dims[0],
                dims[1],
                (dims[2] - 1) / 2 + 1,
                (dims[3] - 1) / 2 + 1
            ]
        );
        check_gradients(|t| max_pool2d(&t[0], 3, 2, 1), &[x])?;
    }
    Ok(())
}

#[test]
fn max_pool_gives_a_tie_to_the_first_maximum_only() -> Result<()> {
    let x = Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
    let y = max_pool2d(x.as_tensor(), 2, 2, 0)?;
    let g = y.sum_all()?.backward()?;
    assert_eq!(
        g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?,
        [1.0, 0.0, 0.0, 0.0]
    );
    Ok(())
}

#[test]
fn up2_gradient_and_known_values() -> Result<()> {
    for (i, dims) in [[2, 3, 5, 7], [1, 1, 1, 1], [1, 2, 4, 3]]
        .into_iter()
        .enumerate()
    {
        check_gradients(|t| up2(&t[0]), &[pseudo_random(&dims, i as u64)?])?;
    }
    // One row [0, 4]: PyTorch gives [0, 1, 3, 4].
    let x = Tensor::new(&[[[[0f32, 4.0]]]], &Device::Cpu)?;
    assert_eq!(
        up2(&x)?.flatten_all()?.to_vec1::<f32>()?,
        [0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]
    );
    Ok(())
}

#[test]
fn resize_gradient_and_pytorch_values() -> Result<()> {
    for (i, (dims, to)) in [
        ([1, 2, 3, 5], (7, 11)),
        ([2, 1, 4, 4], (32, 12)),
        ([1, 1, 6, 5], (4, 2)),
        ([1, 1, 1, 1], (3, 3)),
    ]
    .into_iter()
    .enumerate()
    {
        check_gradients(
            |t| resize_bilinear(&t[0], to),
            &[pseudo_random(&dims, 10 + i as u64)?],
        )?;
    }
    // torch.nn.functional.interpolate(torch.tensor([[[[0., 8.]]]]), size=(1, 5),
    // mode="bilinear") = [0.0, 0.8, 4.0, 7.2, 8.0]
    let x = Tensor::new(&[[[[0f32, 8.0]]]], &Device::Cpu)?;
    let y = resize_bilinear(&x, (1, 5))?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (a, b) in y.iter().zip([0.0, 0.8, 4.0, 7.2, 8.0]) {
        assert!((a - b).abs() < 1e-5, "{y:?}");
    }
    assert!(resize_bilinear(&x, (0, 5)).is_err());
    Ok(())
}

#[test]
fn up2_gradient_accumulates_with_other_uses() -> Result<()> {
    // candle's nearest upsampling overwrote gradients that other uses of its input had added.
    let x = Var::from_tensor(&pseudo_random(&[1, 2, 3, 4], 5)?)?;
    let y = (up2(x.as_tensor())?.sum_all()? + x.as_tensor().sum_all()?)?;
    let g = y
        .backward()?
        .get(&x)
        .unwrap()
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Each input pixel spreads to 4 output pixels with weights summing to 4, plus 1 from the sum.
    assert!(g.iter().all(|&v| (v - 5.0).abs() < 1e-5), "{g:?}");
    Ok(())
}

#[test]
fn attend_gradient_and_shape_errors() -> Result<()> {
    let x = pseudo_random(&[2, 3, 4, 5], 1)?;
    let mc = pseudo_random(&[2, 3, 1, 1], 2)?;
    let ms = pseudo_random(&[2, 1, 4, 5], 3)?;
    check_gradients(
        |t| attend(&t[0], &t[1], &t[2]),
        &[x.clone(), mc.clone(), ms.clone()],
    )?;
    assert!(
        attend(&x, &ms, &mc)
            .unwrap_err()
            .to_string()
            .contains("expected mc")
    );
    Ok(())
}

/// Output and every input's gradient of `f` (an op) and `reference` (the same function on
/// candle's ops) on the same inputs, in `dtype`, with `sum(y · r)` as the loss.
fn op_and_reference(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    reference: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    dtype: DType,
) -> Result<[Vec<Vec<f64>>; 2]> {
    let run = |g: &dyn Fn(&[Tensor]) -> Result<Tensor>| -> Result<Vec<Vec<f64>>> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dtype)?))
            .collect::<Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = g(&ts)?;
        let r = pseudo_random(y.dims(), 7)?.to_dtype(dtype)?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let mut out = vec![y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?];
        for v in &vars {
            let g = grads.get(v).expect("every input gets a gradient");
            out.push(g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
        }
        Ok(out)
    };
    Ok([run(&f)?, run(&reference)?])
}

/// Asserts `|a − b| <= tol · (1 + |b|)` element by element.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn attend_matches_candle_over_several_chunks() -> Result<()> {
    // 65·70 = 4550 pixels: two work items of the backward per image, full lanes and a tail.
    let inputs = [
        pseudo_random(&[2, 3, 65, 70], 4)?,
        pseudo_random(&[2, 3, 1, 1], 5)?,
        pseudo_random(&[2, 1, 65, 70], 6)?,
    ];
    let fused = |t: &[Tensor]| attend(&t[0], &t[1], &t[2]);
    let candle = |t: &[Tensor]| t[0].broadcast_mul(&t[1])?.broadcast_mul(&t[2]);
    let [ours, theirs] = op_and_reference(fused, candle, &inputs, DType::F32)?;
    // The forward and dx multiply in candle's order: equal bit for bit.
    assert_eq!(ours[0], theirs[0]);
    assert_eq!(ours[1], theirs[1]);
    // The map gradients sum in f64 here, in f32 in candle.
    assert_close(&ours[2], &theirs[2], 1e-4, "dmc");
    assert_close(&ours[3], &theirs[3], 1e-5, "dms");
    let [ours, theirs] = op_and_reference(fused, candle, &inputs, DType::F64)?;
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_close(a, b, 1e-12, &format!("f64 output {i}"));
    }
    // Empty planes: an empty result and a backward pass, not a panic.
    let mc = Var::from_tensor(&pseudo_random(&[1, 2, 1, 1], 7)?)?;
    let y = attend(
        &Tensor::zeros((1, 2, 0, 3), DType::F32, &Device::Cpu)?,
        &mc,
        &Tensor::zeros((1, 1, 0, 3), DType::F32, &Device::Cpu)?,
    )?;
    assert_eq!(y.dims(), [1, 2, 0, 3]);
    y.sum_all()?.backward()?;
    Ok(())
}

#[test]
fn add_relu_gradient_matches_candle_and_rejects_mismatched_shapes() -> Result<()> {
    let (a, b) = (
        pseudo_random(&[2, 3, 4, 5], 8)?,
        pseudo_random(&[2, 3, 4, 5], 9)?,
    );
    check_gradients(|t| add_relu(&t[0], &t[1]), &[a.clone(), b.clone()])?;
    // Several parallel chunks; a sum of exactly zero in the middle (candle's ReLU passes the
    // gradient there) and NaN at the start (ReLU gives 0 and no gradient).
    let big = pseudo_random(&[2, 3, 130, 140], 10)?;
    let mut other = pseudo_random(&[2, 3, 130, 140], 11)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let first = big.flatten_all()?.to_vec1::<f32>()?;
    other[50_000] = -first[50_000];
    other[0] = f32::NAN;
    let other = Tensor::from_vec(other, big.dims(), &Device::Cpu)?;
    let [ours, theirs] = op_and_reference(
        |t| add_relu(&t[0], &t[1]),
        |t| (&t[0] + &t[1])?.relu(),
        &[big, other],
        DType::F32,
    )?;
    assert_eq!(ours, theirs);
    assert_eq!((ours[0][0], ours[1][0]), (0.0, 0.0));
    assert!(ours[1][50_000] != 0.0);
    let err = add_relu(&a, &b.narrow(3, 0, 4)?).unwrap_err().to_string();
    assert!(err.contains("differ in shape"), "{err}");
    Ok(())
}

#[test]
fn ops_match_pytorch_fixtures() -> Result<()> {
    check_fixture("up2", |x, _| up2(x))?;
    check_fixture("maxpool", |x, _| max_pool2d(x, 3, 2, 1))?;
    check_fixture("conv_g", |x, w| {
        conv2d(x, w.unwrap(), Conv2dConfig::square(1, 1, 1, 4))
    })?;
    check_fixture("conv_gs", |x, w| {
        conv2d(x, w.unwrap(), Conv2dConfig::square(2, 1, 1, 4))
    })?;
    check_fixture("conv_d5", |x, w| {
        conv2d(x, w.unwrap(), Conv2dConfig::square(1, 5, 5, 1))
    })?;
    Ok(())
}

/// Runs `kernel` and `composed` (the same op composed of candle's tensor ops, as on a GPU) on
/// `inputs` in f64 and asserts the outputs and every gradient agree to `1e-10`.
fn assert_composed_matches(
    what: &str,
    kernel: impl Fn(&[Tensor]) -> Result<Tensor>,
    composed: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> Result<()> {
    let [ours, theirs] = op_and_reference(composed, kernel, inputs, DType::F64)?;
    let names = [
        "output",
        "gradient 0",
        "gradient 1",
        "gradient 2",
        "gradient 3",
    ];
    for ((a, b), name) in ours.iter().zip(&theirs).zip(names) {
        assert_close(a, b, 1e-10, &format!("{what}: {name}"));
    }
    Ok(())
}

#[test]
fn composed_convolution_matches_the_kernel_with_gradients() -> Result<()> {
    let cfg = |stride, padding, dilation, groups| Conv2dConfig {
        stride,
        padding,
        dilation,
        groups,
    };
    let cases = [
        // Stride 2 on a non-square input, per-axis padding and dilation, two groups.
        ([2, 6, 9, 7], [4, 3, 3, 3], cfg((2, 1), (1, 2), (1, 2), 2)),
        ([1, 4, 11, 8], [6, 4, 3, 3], cfg((2, 2), (1, 1), (1, 1), 1)),
        // 32 groups, as in ResNeXt.
        (
            [1, 64, 7, 6],
            [32, 2, 3, 3],
            cfg((1, 1), (1, 1), (1, 1), 32),
        ),
        // Dilation 5, as in the RAB.
        ([2, 4, 13, 11], [3, 4, 3, 3], cfg((1, 1), (5, 5), (5, 5), 1)),
        // 1x1 with stride 2 (a ResNeXt shortcut), the 7x7 stride-2 stem.
        ([2, 5, 9, 8], [6, 5, 1, 1], cfg((2, 2), (0, 0), (1, 1), 1)),
        ([1, 1, 17, 15], [4, 1, 7, 7], cfg((2, 2), (3, 3), (1, 1), 1)),
    ];
    for (i, (xd, wd, c)) in cases.into_iter().enumerate() {
        let x = pseudo_random(&xd, 40 + i as u64)?;
        let w = pseudo_random(&wd, 50 + i as u64)?;
        let (o, ho, wo) = {
            let y = conv2d(&x, &w, c)?;
            (y.dim(1)?, y.dim(2)?, y.dim(3)?)
        };
        assert_composed_matches(
            &format!("conv case {i}"),
            |t| conv2d(&t[0], &t[1], c),
            |t| composed::conv2d(&t[0], &t[1], c, (ho, wo)),
            &[x.clone(), w.clone()],
        )?;
        let (scale, shift) = (pseudo_random(&[o], 60)?, pseudo_random(&[o], 61)?);
        assert_composed_matches(
            &format!("conv affine case {i}"),
            |t| conv2d_affine(&t[0], &t[1], (&t[2], &t[3]), c, true),
            |t| composed::conv2d_affine(&t[0], &t[1], (&t[2], &t[3]), c, (ho, wo), true),
            &[x, w, scale, shift],
        )?;
    }
    Ok(())
}

#[test]
fn composed_pooling_and_resizing_match_the_kernels_with_gradients() -> Result<()> {
    for (i, (dims, k, s, p)) in [
        ([2, 3, 9, 7], 3, 2, 1),
        ([1, 2, 8, 10], 2, 2, 0),
        ([1, 2, 7, 7], 3, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        // Values rounded to a quarter: ties within windows, which go to the first maximum.
        let x = (pseudo_random(&dims, 70 + i as u64)? * 4.0)?.round()?;
        let y = max_pool2d(&x, k, s, p)?;
        let out = (y.dim(2)?, y.dim(3)?);
        assert_composed_matches(
            &format!("max pool case {i}"),
            |t| max_pool2d(&t[0], k, s, p),
            |t| composed::max_pool2d(&t[0], (k, s, p), out),
            &[x],
        )?;
    }
    for (i, (dims, to)) in [([2, 3, 5, 7], (10, 14)), ([1, 2, 6, 5], (9, 4))]
        .into_iter()
        .enumerate()
    {
        assert_composed_matches(
            &format!("resize case {i}"),
            |t| resize_bilinear(&t[0], to),
            |t| composed::resize_bilinear(&t[0], to),
            &[pseudo_random(&dims, 80 + i as u64)?],
        )?;
    }
    Ok(())
}

#[test]
fn composed_batch_norm_matches_the_kernel_with_gradients_and_statistics() -> Result<()> {
    let x = (pseudo_random(&[3, 4, 5, 6], 90)? * 3.0)?.affine(1.0, 0.5)?;
    let gamma = pseudo_random(&[4], 91)?.affine(1.0, 1.0)?;
    let beta = pseudo_random(&[4], 92)?;
    let inputs = [x.clone(), gamma.clone(), beta.clone()];
    for relu in [false, true] {
        assert_composed_matches(
            &format!("batch norm (relu {relu})"),
            |t| Ok(batch_norm_act(&t[0], &t[1], &t[2], None, 1e-5, relu)?.0),
            |t| Ok(batch_norm_train(&t[0], &t[1], &t[2], 1e-5, relu)?.0),
            &inputs,
        )?;
    }
    let x = x.to_dtype(DType::F64)?;
    let (g, b) = (gamma.to_dtype(DType::F64)?, beta.to_dtype(DType::F64)?);
    let (_, stats) = batch_norm_act(&x, &g, &b, None, 1e-5, false)?;
    let stats = stats.expect("training returns statistics");
    let (_, mean, var) = batch_norm_train(&x, &g, &b, 1e-5, false)?;
    assert_close(&mean.to_vec1::<f64>()?, &stats.mean, 1e-12, "batch mean");
    assert_close(&var.to_vec1::<f64>()?, &stats.var, 1e-12, "batch variance");
    // Fixed statistics (evaluation): the folded per-channel map.
    let inv: Vec<f64> = stats.var.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
    let scale = (&g * Tensor::new(inv, &Device::Cpu)?)?;
    let shift = (&b - (Tensor::new(stats.mean.clone(), &Device::Cpu)? * &scale)?)?;
    let fixed = batch_norm_act(&x, &g, &b, Some(stats), 1e-5, true)?.0;
    let folded = channel_affine(&x, (&scale, &shift), true)?;
    assert_close(
        &folded.flatten_all()?.to_vec1::<f64>()?,
        &fixed.flatten_all()?.to_vec1::<f64>()?,
        1e-12,
        "batch norm with fixed statistics",
    );
    Ok(())
}

/// candle-core is vendored (vendor/README.md) so that its backward pass stores a tensor's first
/// gradient as it is: candle 0.11.1 added each one to a fresh tensor of zeros, a zero-filled
/// buffer and an extra pass for every activation of a training step. Fails on that candle.
#[test]
fn backward_keeps_a_first_gradient_without_copying_it() -> Result<()> {
    use std::sync::{Arc, Mutex};

    use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage};

    /// `2x`, whose backward keeps a handle on the gradient it returns.
    struct Double(Arc<Mutex<Option<Tensor>>>);
    impl CustomOp1 for Double {
        fn name(&self) -> &'static str {
            "double"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let x = &s.as_slice::<f32>()?[l.start_offset()..][..l.shape().elem_count()];
            let y = x.iter().map(|v| 2.0 * v).collect();
            Ok((CpuStorage::F32(y), l.shape().clone()))
        }
        fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
            let dx = dy.affine(2.0, 0.0)?.detach();
            *self.0.lock().expect("unpoisoned") = Some(dx.clone());
            Ok(Some(dx))
        }
    }
    fn data_ptr(t: &Tensor) -> *const f32 {
        match &*t.storage_and_layout().0 {
            Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr(),
            _ => std::ptr::null(),
        }
    }

    let returned = Arc::new(Mutex::new(None));
    let x = Var::new(&[1f32, 2.0, 3.0], &Device::Cpu)?;
    let y = x.as_tensor().apply_op1(Double(returned.clone()))?;
    let grads = y.sum_all()?.backward()?;
    let gx = grads.get(&x).expect("x has a gradient");
    assert_eq!(gx.to_vec1::<f32>()?, [2.0; 3]);
    let dx = returned
        .lock()
        .expect("unpoisoned")
        .clone()
        .expect("bwd ran");
    assert_eq!(data_ptr(gx), data_ptr(&dx), "the gradient was copied");
    assert!(!data_ptr(gx).is_null());
    Ok(())
}
