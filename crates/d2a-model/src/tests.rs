//! Whole-model tests: parameter and MAC counts against the PyTorch implementation of the SPEC,
//! forward and backward of every preset on non-square inputs, and overfitting a tiny set.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;

use crate::checkpoint::trainable_vars as trainable;
use crate::init::seeded_var_builder;
use crate::test_support::pseudo_random;
use crate::{D2AUNet, D2AUNetConfig};

fn build(cfg: &D2AUNetConfig) -> Result<(VarMap, D2AUNet)> {
    build_seeded(cfg, 7)
}

fn build_seeded(cfg: &D2AUNetConfig, seed: u64) -> Result<(VarMap, D2AUNet)> {
    let varmap = VarMap::new();
    let model = D2AUNet::new(
        cfg,
        seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu),
    )?;
    Ok((varmap, model))
}

#[test]
fn the_same_seed_builds_the_same_model() -> Result<()> {
    let weights = |seed| -> Result<Vec<f32>> {
        let varmap = VarMap::new();
        D2AUNet::new(
            &D2AUNetConfig::tiny(),
            seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu),
        )?;
        let var = varmap.data().lock().unwrap()["decoder.0.gam.spatial.conv7.weight"].clone();
        var.flatten_all()?.to_vec1::<f32>()
    };
    assert_eq!(weights(1)?, weights(1)?);
    assert_ne!(weights(1)?, weights(2)?);
    Ok(())
}

#[test]
fn counts_match_the_pytorch_implementation() -> Result<()> {
    // (preset, parameters, GMACs at 1x1x512x512 to one decimal) from SPEC §2.8.
    for (name, params, gmacs) in [
        ("d2a-vgg-tiny", 2_414_439u64, 20.6),
        ("d2a-vgg", 38_486_817, 313.3),
        ("d2a-resnext50", 100_834_833, 227.2),
    ] {
        let (varmap, model) = build(&D2AUNetConfig::by_name(name).unwrap())?;
        let cost = model.cost(512, 512);
        let in_varmap: u64 = trainable(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count() as u64)
            .sum();
        println!(
            "{name}: params {} (varmap {in_varmap}), GMACs {}",
            cost.params(),
            cost.macs() as f64 / 1e9
        );
        assert_eq!(
            cost.params(),
            in_varmap,
            "{name}: analytic count disagrees with the built model"
        );
        assert_eq!(cost.params(), params, "{name}");
        assert!(
            (cost.macs() as f64 / 1e9 - gmacs).abs() < 0.05,
            "{name}: {} GMACs",
            cost.macs() as f64 / 1e9
        );
    }
    Ok(())
}

/// Forward and backward on a non-square input, for two seeds: every trainable parameter gets a
/// finite gradient, and a non-zero one under at least one seed. (A ReLU unit of an attention MLP
/// can be dead at one initialisation: the hidden width is as small as 1.)
fn check_trains(cfg: &D2AUNetConfig, dims: [usize; 4]) -> Result<()> {
    let mut zero_under_every_seed: Option<std::collections::BTreeSet<String>> = None;
    for seed in [7, 8] {
        let (varmap, model) = build_seeded(cfg, seed)?;
        let x = ((pseudo_random(&dims, seed)? + 1.0)? * 0.5)?;
        let y = model.forward_t(&x, true)?;
        assert_eq!(y.dims(), dims);
        let target = pseudo_random(&dims, seed + 100)?
            .ge(0.0)?
            .to_dtype(DType::F32)?;
        let loss = (candle_nn::ops::sigmoid(&y)? - target)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        let mut zero = std::collections::BTreeSet::new();
        for (name, var) in trainable(&varmap) {
            let g = grads
                .get(&var)
                .unwrap_or_else(|| panic!("{name} got no gradient"));
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{name}: non-finite gradient"
            );
            if g.iter().all(|&v| v == 0.0) {
                zero.insert(name);
            }
        }
        zero_under_every_seed = Some(match zero_under_every_seed {
            None => zero,
            Some(prev) => prev.intersection(&zero).cloned().collect(),
        });
        // Eval mode uses the running statistics the training pass just updated.
        let y_eval = model.forward_t(&x, false)?;
        assert!(
            y_eval
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|v| v.is_finite())
        );
    }
    let zero = zero_under_every_seed.unwrap_or_default();
    assert!(
        zero.is_empty(),
        "parameters with an all-zero gradient under every seed: {zero:?}"
    );
    Ok(())
}

#[test]
fn vgg_presets_train_on_non_square_input() -> Result<()> {
    check_trains(&D2AUNetConfig::tiny(), [2, 1, 96, 128])?;
    let mut ablated = D2AUNetConfig::tiny();
    (ablated.gam, ablated.rab) = (false, false);
    check_trains(&ablated, [1, 1, 48, 64])?;
    let mut no_dam = D2AUNetConfig::tiny();
    no_dam.dam = false;
    check_trains(&no_dam, [1, 1, 32, 48])
}

#[test]
fn resnext_preset_trains_on_non_square_input() -> Result<()> {
    check_trains(&D2AUNetConfig::paper_resnext50(), [2, 1, 64, 96])
}

#[test]
fn bad_input_sizes_are_errors() -> Result<()> {
    let (_, model) = build(&D2AUNetConfig::tiny())?;
    let cfg = crate::ModelConfig::D2A(D2AUNetConfig::tiny());
    let err = cfg.check_side("input height", 40).unwrap_err().to_string();
    assert!(
        err.contains("input height 40 must be a positive multiple of 16"),
        "{err}"
    );
    // Skipping the check gives an error, never a panic.
    for dims in [(1, 1, 40, 64), (1, 3, 64, 64)] {
        let x = Tensor::zeros(dims, DType::F32, &Device::Cpu)?;
        assert!(model.forward_t(&x, false).is_err(), "{dims:?}");
    }
    Ok(())
}

#[test]
fn saved_model_reloads_with_every_key_used() -> Result<()> {
    let (varmap, model) = build(&D2AUNetConfig::tiny())?;
    let x = ((pseudo_random(&[1, 1, 32, 32], 8)? + 1.0)? * 0.5)?;
    // A training pass moves the BatchNorm statistics away from their initial values.
    model.forward_t(&x, true)?;
    let want = model.forward_t(&x, false)?;
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let path = dir.path().join("model.safetensors");
    crate::checkpoint::save(&varmap, &path).map_err(candle_core::Error::wrap)?;
    let (varmap2, model2) = build(&D2AUNetConfig::tiny())?;
    let report = crate::checkpoint::load_exact(&varmap2, &path, "", &[])
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(report.loaded, varmap.all_vars().len());
    let got = model2.forward_t(&x, false)?;
    assert_eq!(
        got.flatten_all()?.to_vec1::<f32>()?,
        want.flatten_all()?.to_vec1::<f32>()?
    );
    // A VGG checkpoint does not fit the ResNeXt model, and the error says why.
    let (varmap3, _) = build(&D2AUNetConfig::paper_resnext50())?;
    let err = crate::checkpoint::load_exact(&varmap3, &path, "", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

#[test]
fn imagenet_encoder_loads_under_the_encoder_prefix() -> Result<()> {
    let Some(path) = d2a_tests::shared_fixture("resnext_tiny.safetensors") else {
        return Ok(());
    };
    let cfg = D2AUNetConfig {
        encoder: crate::Encoder::ResNeXt(crate::encoders::ResNeXtConfig::tiny()),
        ..D2AUNetConfig::paper_resnext50()
    };
    let (varmap, _) = build(&cfg)?;
    let report = crate::checkpoint::load_exact(&varmap, &path, "encoder.", &["fc."])
        .map_err(candle_core::Error::wrap)?;
    let n_encoder = varmap
        .data()
        .lock()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("encoder."))
        .count();
    assert_eq!(report.loaded, n_encoder);
    // Without ignoring the classifier, its two tensors are reported as unexpected.
    let report = crate::checkpoint::load(&varmap, &path, "encoder.", &[])
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(report.unexpected, ["fc.bias", "fc.weight"]);
    Ok(())
}

#[test]
fn ablation_names_switch_modules_off() -> Result<()> {
    let cfg = D2AUNetConfig::by_name("d2a-vgg-tiny+no-gam+no-dam").unwrap();
    assert!(!cfg.gam && cfg.rab && !cfg.dam);
    assert!(
        !D2AUNetConfig::by_name("d2a-resnext50+scratch")
            .unwrap()
            .pretrained
    );
    assert!(D2AUNetConfig::by_name("d2a-vgg-tiny+no-such").is_none());
    assert!(D2AUNetConfig::by_name("unet").is_none());
    // Each switch removes parameters, and the ablated model still runs.
    let full = build(&D2AUNetConfig::tiny())?.1.cost(64, 64).params();
    for name in [
        "d2a-vgg-tiny+no-gam",
        "d2a-vgg-tiny+no-rab",
        "d2a-vgg-tiny+no-dam",
    ] {
        let (_, model) = build(&D2AUNetConfig::by_name(name).unwrap())?;
        assert!(model.cost(64, 64).params() < full, "{name}");
        let x = Tensor::zeros((1, 1, 32, 32), DType::F32, &Device::Cpu)?;
        assert_eq!(model.forward_t(&x, false)?.dims(), &[1, 1, 32, 32]);
    }
    Ok(())
}
