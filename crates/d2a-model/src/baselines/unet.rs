//! U-Net: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical
//! Image Segmentation", MICCAI 2015 (arXiv:1505.04597), in the variant the D2A U-Net paper
//! compares against (SPEC §2.8): the VGG-style encoder with BatchNorm, bilinear ×2 upsampling that
//! keeps the channels, and per decoder stage a double conv `C_deep + C_skip -> C_skip`; a 1x1
//! conv to one logit channel. At width 64: 31,383,681 parameters, 222.4 GMACs at 512².

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention_unet::AttentionGate;
use crate::cost::{Cost, Shape4};
use crate::encoders::{DoubleConv, Vgg, VggConfig};
use crate::nn::Conv2d;
use crate::ops::{Conv2dConfig, up2};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetConfig {
    /// The encoder (its widths set the decoder's).
    pub encoder: VggConfig,
}

impl UNetConfig {
    /// The paper's baseline: width 64, one input channel.
    pub const fn paper() -> Self {
        Self {
            encoder: VggConfig {
                in_channels: 1,
                base_width: 64,
            },
        }
    }

    /// Width 8: for tests and quick runs.
    pub const fn tiny() -> Self {
        Self {
            encoder: VggConfig {
                in_channels: 1,
                base_width: 8,
            },
        }
    }
}

/// U-Net; weights at `encoder.stages.{i}...`, `decoder.{i}.{0,1}.{conv,bn}`, `head` (and, in
/// the Attention U-Net, `decoder.{i}.gate.*`).
#[derive(Debug, Clone)]
pub struct UNet {
    encoder: Vgg,
    /// Deepest stage first.
    decoder: Vec<DoubleConv>,
    /// One attention gate per decoder stage (the Attention U-Net), or none.
    gates: Vec<AttentionGate>,
    head: Conv2d,
}

/// Whether the skip connections pass through attention gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skips {
    Plain,
    Gated,
}

impl UNet {
    /// Builds the model.
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, Skips::Plain, vb)
    }

    /// The U-Net with an attention gate on every skip (the Attention U-Net).
    pub(super) fn gated(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, Skips::Gated, vb)
    }

    fn build(cfg: &UNetConfig, skips: Skips, vb: VarBuilder) -> Result<Self> {
        let c = cfg.encoder.channels();
        let encoder = Vgg::new(&cfg.encoder, vb.pp("encoder"))?;
        let (mut decoder, mut gates) = (Vec::with_capacity(4), Vec::new());
        for i in 0..4 {
            let (deep, skip) = (c[4 - i], c[3 - i]);
            let vb = vb.pp("decoder").pp(i);
            if skips == Skips::Gated {
                gates.push(AttentionGate::new(deep, skip, vb.pp("gate"))?);
            }
            decoder.push(DoubleConv::new(deep + skip, skip, vb)?);
        }
        let head = Conv2d::with_bias(c[0], 1, 1, Conv2dConfig::plain(), vb.pp("head"))?;
        Ok(Self {
            encoder,
            decoder,
            gates,
            head,
        })
    }

    /// Parameters and MACs per layer for an `h x w` single-channel input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let feats = self
            .encoder
            .cost(&mut cost, "encoder", Shape4 { b: 1, c: 1, h, w });
        let mut d = feats[4];
        for (i, stage) in self.decoder.iter().enumerate() {
            let skip = feats[3 - i];
            if let Some(gate) = self.gates.get(i) {
                let up = Shape4 { c: d.c, ..skip };
                gate.cost(&mut cost, &format!("decoder.{i}.gate"), up, skip);
            }
            let cat = Shape4 {
                c: d.c + skip.c,
                ..skip
            };
            d = stage.cost(&mut cost, &format!("decoder.{i}"), cat);
        }
        self.head.cost(&mut cost, "head", d);
        cost
    }
}

impl ModuleT for UNet {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits; H and W multiples of 16.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.encoder.features(x, train)?;
        let mut d = feats[4].clone();
        for (i, stage) in self.decoder.iter().enumerate() {
            let up = up2(&d)?;
            let skip = match self.gates.get(i) {
                Some(gate) => gate.forward_t(&up, &feats[3 - i], train)?,
                None => feats[3 - i].clone(),
            };
            d = stage.forward_t(&Tensor::cat(&[&up, &skip], 1)?, train)?;
        }
        candle_core::Module::forward(&self.head, &d)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    use super::*;
    use crate::init::seeded_var_builder;

    fn build(cfg: &UNetConfig) -> Result<(VarMap, UNet)> {
        let varmap = VarMap::new();
        let model = UNet::new(
            cfg,
            seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu),
        )?;
        Ok((varmap, model))
    }

    #[test]
    fn paper_counts_match_the_spec() -> Result<()> {
        let (varmap, model) = build(&UNetConfig::paper())?;
        let cost = model.cost(512, 512);
        assert_eq!(cost.params(), 31_383_681);
        let trainable: u64 = crate::checkpoint::trainable_vars(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count() as u64)
            .sum();
        assert_eq!(trainable, cost.params());
        assert!(
            ((cost.macs() as f64) / 1e9 - 222.4).abs() < 0.05,
            "{}",
            cost.macs()
        );
        Ok(())
    }

    #[test]
    fn runs_forward_and_backward_on_a_non_square_input() -> Result<()> {
        let (varmap, model) = build(&UNetConfig::tiny())?;
        let x = Var::from_tensor(
            &crate::test_support::pseudo_random(&[2, 1, 32, 48], 5)?.to_dtype(DType::F32)?,
        )?;
        let y = model.forward_t(&x, true)?;
        assert_eq!(y.dims(), &[2, 1, 32, 48]);
        let grads = y.sqr()?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_some());
        for (name, v) in crate::checkpoint::trainable_vars(&varmap) {
            let g = grads
                .get(&v)
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(
                g.abs()?.sum_all()?.to_scalar::<f32>()?.is_finite(),
                "{name}"
            );
        }
        Ok(())
    }
}
