//! Encoders against PyTorch: the fixture's tiny ResNeXt, from safetensors and from `.pth`.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use crate::checkpoint;
use crate::test_support::{fixture, pseudo_random};

fn check_tiny_resnext(weights: &str) -> Result<()> {
    let Some(io) = fixture("resnext_tiny_io.safetensors")? else {
        return Ok(());
    };
    let varmap = VarMap::new();
    let net = ResNeXt::new(
        &ResNeXtConfig::tiny(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let Some(path) = d2a_tests::shared_fixture(weights) else {
        return Ok(());
    };
    let report =
        checkpoint::load_exact(&varmap, &path, "", &["fc."]).map_err(candle_core::Error::wrap)?;
    assert_eq!(report.loaded, varmap.all_vars().len());
    let feats = net.features(&io["input"], false)?;
    for (i, f) in feats.iter().enumerate() {
        let want = &io[&format!("e{i}")];
        assert_eq!(f.dims(), want.dims(), "e{i}");
        let diff = (f - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(
            diff < 1e-4,
            "{weights}: e{i} differs from PyTorch by {diff}"
        );
    }
    Ok(())
}

#[test]
fn tiny_resnext_matches_pytorch_from_safetensors() -> Result<()> {
    check_tiny_resnext("resnext_tiny.safetensors")
}

#[test]
fn tiny_resnext_matches_pytorch_from_pth() -> Result<()> {
    check_tiny_resnext("resnext_tiny.pth")
}

#[test]
fn loading_reports_every_key_that_does_not_fit() -> Result<()> {
    if fixture("resnext_tiny.safetensors")?.is_none() {
        return Ok(());
    }
    // A ResNeXt with two blocks in layer1 wants keys the tiny checkpoint lacks, and an 8-group
    // model of another width gets mis-shaped weights.
    let varmap = VarMap::new();
    let cfg = ResNeXtConfig {
        layers: [2, 1, 1, 1],
        groups: 8,
        width_per_group: 8,
        ..ResNeXtConfig::tiny()
    };
    ResNeXt::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let Some(path) = d2a_tests::shared_fixture("resnext_tiny.safetensors") else {
        return Ok(());
    };
    let report = checkpoint::load(&varmap, &path, "", &[]).map_err(candle_core::Error::wrap)?;
    assert!(
        report.missing.iter().any(|k| k.starts_with("layer1.1.")),
        "{report}"
    );
    assert!(
        report.unexpected.contains(&"fc.weight".to_string()),
        "{report}"
    );
    assert!(
        report
            .mismatched
            .iter()
            .any(|(k, _, _)| k == "layer1.0.conv2.weight"),
        "{report}"
    );
    let err = checkpoint::load_exact(&varmap, &path, "", &["fc."])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resnext_tiny.safetensors") && err.contains("missing"),
        "{err}"
    );
    Ok(())
}

#[test]
fn vgg_features_have_the_documented_shapes() -> Result<()> {
    let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
    let net = Vgg::new(
        &VggConfig {
            in_channels: 1,
            base_width: 4,
        },
        vb,
    )?;
    let x: Tensor = pseudo_random(&[2, 1, 32, 48], 1)?;
    let dims: Vec<Vec<usize>> = net
        .features(&x, true)?
        .iter()
        .map(|f| f.dims().to_vec())
        .collect();
    assert_eq!(
        dims,
        [
            vec![2, 4, 32, 48],
            vec![2, 8, 16, 24],
            vec![2, 16, 8, 12],
            vec![2, 32, 4, 6],
            vec![2, 64, 2, 3]
        ]
    );
    Ok(())
}
