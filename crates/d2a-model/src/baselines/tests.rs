//! Every baseline: forward and backward on a non-square input, parameter counts against
//! torchvision's published figures, and ResNet-101 checkpoints with torchvision's names.

use candle_core::{DType, Device, Result, Var};
use candle_nn::VarMap;

use crate::checkpoint::{self, trainable_vars};
use crate::encoders::{ResNeXt, ResNeXtConfig};
use crate::init::seeded_var_builder;
use crate::test_support::pseudo_random;
use crate::{Model, ModelConfig};

const BASELINES: [&str; 5] = [
    "unet",
    "attention-unet",
    "unet-pp",
    "fcn8s-resnet101",
    "deeplabv3-resnet101",
];

fn build(name: &str) -> Result<(VarMap, Model)> {
    let cfg = ModelConfig::parse(name).unwrap();
    let varmap = VarMap::new();
    let model = Model::new(
        &cfg,
        seeded_var_builder(&varmap, 11, DType::F32, &Device::Cpu),
    )?;
    Ok((varmap, model))
}

fn trainable_count(varmap: &VarMap) -> u64 {
    trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count() as u64)
        .sum()
}

#[test]
fn every_baseline_runs_forward_and_backward_on_a_non_square_input() -> Result<()> {
    for name in BASELINES {
        let (varmap, model) = build(&format!("{name}-tiny"))?;
        let x = Var::from_tensor(&((pseudo_random(&[2, 1, 64, 96], 5)? + 1.0)? / 2.0)?)?;
        let y = model.forward_t(&x, true)?;
        assert_eq!(y.dims(), &[2, 1, 64, 96], "{name}");
        let grads = y.sqr()?.sum_all()?.backward()?;
        for (key, v) in trainable_vars(&varmap) {
            let g = grads
                .get(&v)
                .unwrap_or_else(|| panic!("{name}: no gradient for {key}"));
            let total = g.abs()?.sum_all()?.to_scalar::<f32>()?;
            assert!(total.is_finite(), "{name}: {key}");
        }
        // Evaluation mode (running statistics) gives the same shape, finite.
        let y = model.forward_t(x.as_tensor(), false)?;
        assert!(y.sum_all()?.to_scalar::<f32>()?.is_finite(), "{name}");
        // The cost walk builds the same variables the model has.
        assert_eq!(
            model.cost(64, 96).params(),
            trainable_count(&varmap),
            "{name}"
        );
        // A size the model cannot take: refused by the one check entry points make; a caller
        // who skips it gets an error or (DeepLab v3, which resizes its output) a result, never a
        // panic.
        let err = model.config().check_side("input side", 36).unwrap_err();
        assert!(err.to_string().contains("multiple of"), "{name}: {err}");
        let bad = pseudo_random(&[1, 1, 36, 36], 1)?;
        if let Ok(y) = model.forward_t(&bad, false) {
            assert_eq!(y.dims(), [1, 1, 36, 36], "{name}");
        }
    }
    Ok(())
}

#[test]
fn resnet101_models_match_torchvision_parameter_counts() -> Result<()> {
    // torchvision's deeplabv3_resnet101 has 60,996,202 parameters with 21 classes and its
    // auxiliary FCNHead(1024): minus the auxiliary head (2,365,205) and 20 of the 21 output
    // channels of the last 1x1 conv (20 x 257) leaves 58,625,857. Its fcn_resnet101 has
    // 54,314,346: minus the auxiliary head and 20 classes (20 x 513) leaves 51,938,881 for the
    // stride-32 FCN; FCN-8s adds score_pool4 (1024 + 1) and score_pool3 (512 + 1): 51,940,419.
    for (name, params) in [
        ("deeplabv3-resnet101", 58_625_857u64),
        ("fcn8s-resnet101", 51_940_419),
    ] {
        let cfg = ModelConfig::by_name(name).unwrap();
        let model = Model::new(&cfg, candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu))?;
        assert_eq!(model.cost(512, 512).params(), params, "{name}");
    }
    Ok(())
}

#[test]
fn attention_unet_and_unet_pp_counts_agree_with_their_variables() -> Result<()> {
    for name in ["attention-unet", "unet-pp"] {
        let (varmap, model) = build(name)?;
        let cost = model.cost(512, 512);
        println!(
            "{name}: {} parameters, {:.1} GMACs",
            cost.params(),
            cost.macs() as f64 / 1e9
        );
        assert_eq!(cost.params(), trainable_count(&varmap), "{name}");
    }
    Ok(())
}

#[test]
fn dilated_resnet_keeps_stride_8() -> Result<()> {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 1, DType::F32, &Device::Cpu);
    let net = ResNeXt::new(&ResNeXtConfig::resnet_tiny().with_output_stride(8), vb)?;
    let feats = net.features(&pseudo_random(&[1, 3, 64, 96], 2)?, false)?;
    let sizes: Vec<(usize, usize)> = feats
        .iter()
        .map(|f| (f.dim(2).unwrap(), f.dim(3).unwrap()))
        .collect();
    assert_eq!(sizes, [(32, 48), (16, 24), (8, 12), (8, 12), (8, 12)]);
    let bad = ResNeXtConfig::resnet_tiny().with_output_stride(4);
    assert!(ResNeXt::new(&bad, candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu)).is_err());
    Ok(())
}

#[test]
fn resnet101_models_load_a_torchvision_checkpoint_and_name_what_does_not_fit() -> Result<()> {
    // An ImageNet ResNet-101 state dict with torchvision's names, as `convert-weights` writes it.
    let source = VarMap::new();
    ResNeXt::new(
        &ResNeXtConfig::resnet101(),
        seeded_var_builder(&source, 3, DType::F32, &Device::Cpu),
    )?;
    let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
    let full = dir.path().join("resnet101.safetensors");
    checkpoint::save(&source, &full).map_err(candle_core::Error::wrap)?;
    let mut tensors: Vec<(String, candle_core::Tensor)> = source
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let probe = "layer3.22.conv2.weight";
    let want = tensors.iter().find(|(k, _)| k == probe).unwrap().1.clone();

    for name in ["fcn8s-resnet101", "deeplabv3-resnet101"] {
        let (varmap, _) = build(name)?;
        let report = checkpoint::load_exact(&varmap, &full, "backbone.", &["fc."])
            .map_err(candle_core::Error::wrap)?;
        assert_eq!(report.loaded, source.all_vars().len(), "{name}");
        let got = varmap.data().lock().unwrap()[&format!("backbone.{probe}")]
            .as_tensor()
            .clone();
        assert_eq!(
            (got - &want)?.abs()?.sum_all()?.to_scalar::<f32>()?,
            0.0,
            "{name}"
        );
    }

    // One key missing, one unexpected, one mis-shaped: each reported by name.
    tensors.retain(|(k, _)| k != "layer4.2.bn3.running_var");
    tensors.push(("layer5.0.conv1.weight".into(), want.clone()));
    for (k, t) in tensors.iter_mut() {
        if k == "conv1.weight" {
            *t = t.narrow(1, 0, 1)?;
        }
    }
    let broken = dir.path().join("broken.safetensors");
    checkpoint::save_tensors(&tensors, &Default::default(), &broken)
        .map_err(candle_core::Error::wrap)?;
    let (varmap, _) = build("deeplabv3-resnet101")?;
    let err = checkpoint::load_exact(&varmap, &broken, "backbone.", &["fc."])
        .unwrap_err()
        .to_string();
    for needle in [
        "backbone.layer4.2.bn3.running_var",
        "layer5.0.conv1.weight",
        "backbone.conv1.weight",
    ] {
        assert!(err.contains(needle), "{needle} not in: {err}");
    }
    Ok(())
}
