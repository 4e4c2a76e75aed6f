//! Attention U-Net: O. Oktay, J. Schlemper, L. Le Folgoc et al., "Attention U-Net: Learning Where
//! to Look for the Pancreas", MIDL 2018 (arXiv:1804.03999).
//!
//! The [`super::unet`] U-Net with an additive attention gate on every skip: the upsampled deeper
//! feature `g` (the gating signal) and the skip `x` are projected to `F_int = C_skip / 2`
//! channels, `α = sigmoid(ψ(relu(W_g g + W_x x)))`, and the skip enters the decoder as `α · x`.
//! Decision (as in the widely used PyTorch implementations): the gate is computed at the skip's
//! resolution after upsampling `g`, each projection is a 1x1 conv + BatchNorm, and the decoder
//! keeps the U-Net's bilinear upsampling and double conv `C_deep + C_skip -> C_skip`, so that the
//! two models differ by the gates alone.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::unet::UNetConfig;
use crate::cost::{Cost, Shape4};
use crate::encoders::{DoubleConv, Vgg};
use crate::nn::{Conv2d, ConvBn};
use crate::ops::{Conv2dConfig, up2};

/// The additive attention gate; weights at `wg`, `wx`, `psi` (each `{conv,bn}`).
#[derive(Debug, Clone)]
struct AttentionGate {
    wg: ConvBn,
    wx: ConvBn,
    psi: ConvBn,
}

impl AttentionGate {
    fn new(c_g: usize, c_x: usize, vb: VarBuilder) -> Result<Self> {
        let inter = (c_x / 2).max(1);
        let one = |c_in, c_out, vb: VarBuilder| {
            ConvBn::new(
                (c_in, c_out, 1),
                Conv2dConfig::plain(),
                false,
                vb.pp("conv"),
                vb.pp("bn"),
            )
        };
        Ok(Self {
            wg: one(c_g, inter, vb.pp("wg"))?,
            wx: one(c_x, inter, vb.pp("wx"))?,
            psi: one(inter, 1, vb.pp("psi"))?,
        })
    }

    /// `g`: `[B, C_g, H, W]`, `x`: `[B, C_x, H, W]` -> `α · x`, `[B, C_x, H, W]`.
    fn forward_t(&self, g: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = (self.wg.forward_t(g, train)? + self.wx.forward_t(x, train)?)?.relu()?;
        let alpha = candle_nn::ops::sigmoid(&self.psi.forward_t(&f, train)?)?;
        x.broadcast_mul(&alpha)
    }

    fn cost(&self, cost: &mut Cost, name: &str, g: Shape4, x: Shape4) {
        let f = self.wg.cost(cost, &format!("{name}.wg"), g);
        self.wx.cost(cost, &format!("{name}.wx"), x);
        self.psi.cost(cost, &format!("{name}.psi"), f);
    }
}

/// Attention U-Net; weights at `encoder.stages.*`, `decoder.{i}.gate.*`, `decoder.{i}.conv.*`,
/// `head`.
#[derive(Debug, Clone)]
pub struct AttentionUNet {
    encoder: Vgg,
    /// Deepest stage first: the gate on the skip, then the double conv.
    decoder: Vec<(AttentionGate, DoubleConv)>,
    head: Conv2d,
}

impl AttentionUNet {
    /// Builds the model (same encoder widths as the U-Net of the same [`UNetConfig`]).
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.encoder.channels();
        let encoder = Vgg::new(&cfg.encoder, vb.pp("encoder"))?;
        let decoder = (0..4)
            .map(|i| {
                let (deep, skip) = (c[4 - i], c[3 - i]);
                let vb = vb.pp("decoder").pp(i);
                Ok((
                    AttentionGate::new(deep, skip, vb.pp("gate"))?,
                    DoubleConv::new(deep + skip, skip, vb.pp("conv"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let head = Conv2d::new(c[0], 1, 1, Conv2dConfig::plain(), true, vb.pp("head"))?;
        Ok(Self {
            encoder,
            decoder,
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
        for (i, (gate, conv)) in self.decoder.iter().enumerate() {
            let skip = feats[3 - i];
            let up = Shape4 { c: d.c, ..skip };
            gate.cost(&mut cost, &format!("decoder.{i}.gate"), up, skip);
            let cat = Shape4 {
                c: d.c + skip.c,
                ..skip
            };
            d = conv.cost(&mut cost, &format!("decoder.{i}.conv"), cat);
        }
        self.head.cost(&mut cost, "head", d);
        cost
    }
}

impl ModuleT for AttentionUNet {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits; H and W multiples of 16.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let feats = self.encoder.features(x, train)?;
        let mut d = feats[4].clone();
        for (i, (gate, conv)) in self.decoder.iter().enumerate() {
            let up = up2(&d)?;
            let skip = gate.forward_t(&up, &feats[3 - i], train)?;
            d = conv.forward_t(&Tensor::cat(&[&up, &skip], 1)?, train)?;
        }
        self.head.forward(&d)
    }
}
