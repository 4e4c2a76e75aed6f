//! Whole models on the composed ops (candle's tensor ops: the path a GPU runs) against the same
//! models on d2a's CPU kernels: one training step's loss, every gradient and the BatchNorm
//! running statistics it leaves, then an evaluation forward. In a build with the `cuda` feature,
//! the same step on a GPU against the CPU (skipped with a message where no GPU opens, a failure
//! under `D2A_REQUIRE_GPU=1`).
//!
//! Its own test binary: [`set_conv_backend`] switches the whole process.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use d2a_model::init::seeded_var_builder;
use d2a_model::ops::{ConvBackend, set_conv_backend};
use d2a_model::{Model, ModelConfig};

/// What one training step of a model computes, as f64 vectors by variable name.
struct Step {
    loss: f64,
    grads: BTreeMap<String, Vec<f64>>,
    /// Every variable after the step's forward (the running statistics moved).
    vars: BTreeMap<String, Vec<f64>>,
    eval: Vec<f64>,
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// A fixed smooth input `[batch, 1, size, size]` in [0, 1].
fn input(batch: usize, size: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let n = batch * size * size;
    let t = Tensor::arange(0u32, n as u32, &Device::Cpu)?.to_dtype(DType::F64)?;
    let v = ((t * 0.013)?.sin()? * 0.5)?.affine(1.0, 0.5)?;
    v.reshape((batch, 1, size, size))?
        .to_dtype(dtype)?
        .to_device(device)
}

/// One training step of model `name` from seed-3 weights on `device`: the loss
/// `mean(logits · r)` for a fixed `r`, its gradients, the variables after it; then the
/// evaluation forward.
fn step(name: &str, dtype: DType, device: &Device, (batch, size): (usize, usize)) -> Result<Step> {
    let cfg = ModelConfig::by_name(name).unwrap_or_else(|| panic!("no model {name}"));
    let varmap = VarMap::new();
    let model = Model::new(&cfg, seeded_var_builder(&varmap, 3, dtype, device))?;
    let x = input(batch, size, dtype, device)?;
    let y = model.forward_t(&x, true)?;
    let r = ((input(batch, size, dtype, device)? * 7.0)?.cos()? - 0.2)?;
    let loss = (&y * r)?.mean_all()?;
    let grads = loss.backward()?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut out = Step {
        loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        grads: BTreeMap::new(),
        vars: BTreeMap::new(),
        eval: Vec::new(),
    };
    for (key, var) in data.iter() {
        if let Some(g) = grads.get(var) {
            out.grads.insert(key.clone(), host(g)?);
        }
        out.vars.insert(key.clone(), host(var.as_tensor())?);
    }
    drop(data);
    out.eval = host(&model.forward_t(&x, false)?)?;
    Ok(out)
}

/// Asserts `|a − b| <= tol · max(1e-3, max |b|)` for every element, per tensor.
fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f64, f64::max);
    assert!(
        worst <= tol * scale,
        "{what}: differs by {worst:e} (scale {scale:e}, tolerance {tol:e})"
    );
}

fn assert_steps_match(name: &str, ours: &Step, reference: &Step, tol: f64) {
    assert!(
        (ours.loss - reference.loss).abs() <= tol * reference.loss.abs().max(1e-3),
        "{name}: loss {} vs {}",
        ours.loss,
        reference.loss
    );
    assert_eq!(
        ours.grads.keys().collect::<Vec<_>>(),
        reference.grads.keys().collect::<Vec<_>>(),
        "{name}: the same variables get gradients"
    );
    for (key, g) in &reference.grads {
        assert_close(
            &ours.grads[key],
            g,
            tol,
            &format!("{name}: gradient of {key}"),
        );
    }
    for (key, v) in &reference.vars {
        assert_close(
            &ours.vars[key],
            v,
            tol,
            &format!("{name}: {key} after the step"),
        );
    }
    assert_close(
        &ours.eval,
        &reference.eval,
        tol,
        &format!("{name}: evaluation"),
    );
}

const MODELS: [&str; 7] = [
    "d2a-vgg-tiny",
    "d2a-resnext50",
    "unet-tiny",
    "attention-unet-tiny",
    "unet-pp-tiny",
    "fcn8s-resnet101-tiny",
    "deeplabv3-resnet101-tiny",
];

/// The tests of this binary one at a time: [`set_conv_backend`] is process-wide.
static BACKEND: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Whether any gradient differs in any bit: the two paths sum in different orders, so identical
/// results would mean one path ran twice.
fn any_bit_differs(a: &Step, b: &Step) -> bool {
    a.grads.iter().any(|(k, g)| {
        g.iter()
            .zip(&b.grads[k])
            .any(|(x, y)| x.to_bits() != y.to_bits())
    })
}

#[test]
fn composed_ops_train_every_model_as_the_kernels_do() -> Result<()> {
    let _serial = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    for name in MODELS {
        set_conv_backend(ConvBackend::D2a);
        let kernels = step(name, DType::F64, &Device::Cpu, (2, 64))?;
        set_conv_backend(ConvBackend::Composed);
        let composed = step(name, DType::F64, &Device::Cpu, (2, 64));
        set_conv_backend(ConvBackend::D2a);
        let composed = composed?;
        assert_steps_match(name, &composed, &kernels, 1e-9);
        assert!(
            any_bit_differs(&composed, &kernels),
            "{name}: bitwise equal gradients, so the composed path did not run"
        );
    }
    Ok(())
}

/// The same step on GPU 0 (f32) against the CPU kernels (f32).
#[cfg(feature = "cuda")]
#[test]
fn gpu_training_step_matches_the_cpu() -> Result<()> {
    let _serial = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    let Some(gpu) = gpu() else { return Ok(()) };
    for (name, shape) in [("d2a-vgg-tiny", (2, 128)), ("d2a-resnext50", (2, 64))] {
        let cpu = step(name, DType::F32, &Device::Cpu, shape)?;
        let on_gpu = step(name, DType::F32, &gpu, shape)?;
        // f32 through a deep network in another summation order: stated bound 1e-3 of each
        // tensor's largest value.
        assert_steps_match(name, &on_gpu, &cpu, 1e-3);
        println!("{name}: GPU step matches the CPU (loss {:.6})", on_gpu.loss);
    }
    Ok(())
}

/// GPU 0, or `None` with a message where none opens (a failure under `D2A_REQUIRE_GPU=1`).
#[cfg(feature = "cuda")]
fn gpu() -> Option<Device> {
    match d2a_model::DeviceSpec::Cuda(0).open() {
        Ok(device) => Some(device),
        Err(e) if std::env::var("D2A_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("D2A_REQUIRE_GPU=1 but no GPU: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no GPU ({e})");
            None
        }
    }
}

/// Deterministic values in [-1, 1] of shape `dims` (f32, on the CPU).
#[cfg(feature = "cuda")]
fn values(dims: &[usize], seed: u32) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let t = Tensor::arange(seed, seed + n as u32, &Device::Cpu)?.to_dtype(DType::F64)?;
    ((&t * 0.7313)?.sin()? * (&t * 0.0173)?.cos()?)?
        .to_dtype(DType::F32)?
        .reshape(dims)
}

/// Runs `f` on `inputs` on the CPU and on `gpu` (f32) with the loss `sum(y · r)` and asserts the
/// outputs and every input's gradient agree within `tol` of each tensor's largest value.
#[cfg(feature = "cuda")]
fn assert_gpu_matches_cpu(
    what: &str,
    gpu: &Device,
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> Result<()> {
    let run = |device: &Device| -> Result<Vec<Vec<f64>>> {
        let vars = inputs
            .iter()
            .map(|t| candle_core::Var::from_tensor(&t.to_device(device)?))
            .collect::<Result<Vec<_>>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts)?;
        let r = values(y.dims(), 11)?.to_device(device)?;
        let grads = (&y * &r)?.sum_all()?.backward()?;
        let mut out = vec![host(&y)?];
        for v in &vars {
            out.push(host(grads.get(v).expect("every input gets a gradient"))?);
        }
        Ok(out)
    };
    let (cpu, on_gpu) = (run(&Device::Cpu)?, run(gpu)?);
    for (i, (a, b)) in on_gpu.iter().zip(&cpu).enumerate() {
        let part = if i == 0 {
            "output".to_string()
        } else {
            format!("gradient {}", i - 1)
        };
        assert_close(a, b, 1e-4, &format!("{what}: {part}"));
    }
    println!("{what}: GPU matches the CPU");
    Ok(())
}

/// Every op on the GPU against its CPU kernel, forward and gradients, f32, within 1e-4 of each
/// tensor's largest value.
#[cfg(feature = "cuda")]
#[test]
fn gpu_ops_match_the_cpu_kernels() -> Result<()> {
    use d2a_model::ops::{
        Conv2dConfig, add_relu, attend, batch_norm_act, conv2d, conv2d_affine, max_pool2d,
        resize_bilinear,
    };
    let _serial = BACKEND.lock().unwrap_or_else(|e| e.into_inner());
    let Some(gpu) = gpu() else { return Ok(()) };
    let cfg = |stride, padding, dilation, groups| Conv2dConfig {
        stride,
        padding,
        dilation,
        groups,
    };
    let convs = [
        (
            "stride 2, non-square",
            [2, 6, 33, 27],
            [8, 6, 3, 3],
            cfg((2, 2), (1, 1), (1, 1), 1),
        ),
        (
            "per-axis geometry",
            [2, 6, 19, 23],
            [4, 3, 3, 3],
            cfg((2, 1), (1, 2), (1, 2), 2),
        ),
        (
            "32 groups",
            [2, 128, 17, 15],
            [128, 4, 3, 3],
            cfg((1, 1), (1, 1), (1, 1), 32),
        ),
        (
            "dilation 5",
            [2, 16, 41, 37],
            [16, 16, 3, 3],
            cfg((1, 1), (5, 5), (5, 5), 1),
        ),
        (
            "1x1 stride 2",
            [2, 32, 15, 13],
            [64, 32, 1, 1],
            cfg((2, 2), (0, 0), (1, 1), 1),
        ),
        (
            "7x7 stem",
            [2, 1, 67, 65],
            [16, 1, 7, 7],
            cfg((2, 2), (3, 3), (1, 1), 1),
        ),
    ];
    for (i, (what, xd, wd, c)) in convs.into_iter().enumerate() {
        let (x, w) = (values(&xd, 100 + i as u32)?, values(&wd, 200 + i as u32)?);
        let o = wd[0];
        assert_gpu_matches_cpu(
            &format!("conv2d {what}"),
            &gpu,
            |t| conv2d(&t[0], &t[1], c),
            &[x.clone(), w.clone()],
        )?;
        assert_gpu_matches_cpu(
            &format!("conv2d_affine {what}"),
            &gpu,
            |t| conv2d_affine(&t[0], &t[1], (&t[2], &t[3]), c, true),
            &[x, w, values(&[o], 300)?, values(&[o], 301)?],
        )?;
    }
    let x = values(&[3, 8, 21, 19], 400)?;
    let (gamma, beta) = (values(&[8], 401)?.affine(0.5, 1.0)?, values(&[8], 402)?);
    for relu in [false, true] {
        assert_gpu_matches_cpu(
            &format!("batch_norm_act (relu {relu})"),
            &gpu,
            |t| Ok(batch_norm_act(&t[0], &t[1], &t[2], None, 1e-5, relu)?.0),
            &[x.clone(), gamma.clone(), beta.clone()],
        )?;
    }
    for (k, s, p) in [(3, 2, 1), (2, 2, 0)] {
        assert_gpu_matches_cpu(
            &format!("max_pool2d {k}x{k} stride {s} padding {p}"),
            &gpu,
            |t| max_pool2d(&t[0], k, s, p),
            std::slice::from_ref(&x),
        )?;
    }
    for to in [(42, 38), (9, 31)] {
        assert_gpu_matches_cpu(
            &format!("resize_bilinear to {to:?}"),
            &gpu,
            |t| resize_bilinear(&t[0], to),
            std::slice::from_ref(&x),
        )?;
    }
    let (mc, ms) = (values(&[3, 8, 1, 1], 500)?, values(&[3, 1, 21, 19], 501)?);
    assert_gpu_matches_cpu(
        "attend",
        &gpu,
        |t| attend(&t[0], &t[1], &t[2]),
        &[x.clone(), mc, ms],
    )?;
    assert_gpu_matches_cpu(
        "add_relu",
        &gpu,
        |t| add_relu(&t[0], &t[1]),
        &[x.clone(), values(&[3, 8, 21, 19], 600)?],
    )?;
    Ok(())
}
