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

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use super::unet::{UNet, UNetConfig};
use crate::cost::{Cost, Shape4};
use crate::nn::ConvBn;
use crate::ops::{Conv2dConfig, add_relu};

/// The additive attention gate; weights at `wg`, `wx`, `psi` (each `{conv,bn}`).
#[derive(Debug, Clone)]
pub(super) struct AttentionGate {
    wg: ConvBn,
    wx: ConvBn,
    psi: ConvBn,
}

impl AttentionGate {
    pub(super) fn new(c_g: usize, c_x: usize, vb: VarBuilder) -> Result<Self> {
        let inter = (c_x / 2).max(1);
        let one = |c_in, c_out, vb: VarBuilder| {
            ConvBn::new(
                (c_in, c_out, 1),
                Conv2dConfig::plain(),
                vb.pp("conv"),
                vb.pp("bn"),
            )
            .map(ConvBn::without_relu)
        };
        Ok(Self {
            wg: one(c_g, inter, vb.pp("wg"))?,
            wx: one(c_x, inter, vb.pp("wx"))?,
            psi: one(inter, 1, vb.pp("psi"))?,
        })
    }

    /// `g`: `[B, C_g, H, W]`, `x`: `[B, C_x, H, W]` -> `α · x`, `[B, C_x, H, W]`.
    pub(super) fn forward_t(&self, g: &Tensor, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = add_relu(&self.wg.forward_t(g, train)?, &self.wx.forward_t(x, train)?)?;
        let alpha = candle_nn::ops::sigmoid(&self.psi.forward_t(&f, train)?)?;
        x.broadcast_mul(&alpha)
    }

    pub(super) fn cost(&self, cost: &mut Cost, name: &str, g: Shape4, x: Shape4) {
        let f = self.wg.cost(cost, &format!("{name}.wg"), g);
        self.wx.cost(cost, &format!("{name}.wx"), x);
        self.psi.cost(cost, &format!("{name}.psi"), f);
    }
}

/// Attention U-Net: the [`UNet`] with a gate on every skip; weights as the U-Net's plus
/// `decoder.{i}.gate.{wg,wx,psi}.{conv,bn}`.
#[derive(Debug, Clone)]
pub struct AttentionUNet(UNet);

impl AttentionUNet {
    /// Builds the model (same encoder widths as the U-Net of the same [`UNetConfig`]).
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        UNet::gated(cfg, vb).map(Self)
    }

    /// Parameters and MACs per layer for an `h x w` single-channel input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        self.0.cost(h, w)
    }
}

impl ModuleT for AttentionUNet {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits; H and W multiples of 16.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.0.forward_t(x, train)
    }
}
