//! The VGG-style encoder of the original U-Net (SPEC §2.1): per stage two (3x3 conv, BN, ReLU),
//! widths `w, 2w, 4w, 8w, 16w`, a 2x2 max-pool between stages; trained from scratch.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cost::{Cost, Shape4};
use crate::nn::ConvBn;
use crate::ops::max_pool2d;

/// Width of the VGG-style encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VggConfig {
    /// Input channels (1 for CT).
    pub in_channels: usize,
    /// Channels of the first stage; the paper's U-Net uses 64.
    pub base_width: usize,
}

impl VggConfig {
    /// Channels of the five stages.
    pub const fn channels(&self) -> [usize; 5] {
        let w = self.base_width;
        [w, 2 * w, 4 * w, 8 * w, 16 * w]
    }
}

/// Two (3x3 conv, BN, ReLU) units: the VGG stage, also the plain U-Net decoder block.
#[derive(Debug, Clone)]
pub struct DoubleConv {
    first: ConvBn,
    second: ConvBn,
}

impl DoubleConv {
    /// `c_in -> c_out -> c_out`, weights at `vb/0/{conv,bn}` and `vb/1/{conv,bn}`.
    pub fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            first: ConvBn::same(c_in, c_out, 3, 1, vb.pp("0"))?,
            second: ConvBn::same(c_out, c_out, 3, 1, vb.pp("1"))?,
        })
    }
}

impl DoubleConv {
    /// Adds both units' costs for an input of shape `x`; returns the output shape.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Shape4 {
        let y = self.first.cost(cost, &format!("{name}.0"), x);
        self.second.cost(cost, &format!("{name}.1"), y)
    }
}

impl ModuleT for DoubleConv {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.second
            .forward_t(&self.first.forward_t(x, train)?, train)
    }
}

/// The VGG-style encoder.
#[derive(Debug, Clone)]
pub struct Vgg {
    stages: Vec<DoubleConv>,
}

impl Vgg {
    /// Builds the encoder with weights at `vb/stages/{i}/...`.
    pub fn new(cfg: &VggConfig, vb: VarBuilder) -> Result<Self> {
        let mut c_in = cfg.in_channels;
        let mut stages = Vec::with_capacity(5);
        for (i, c) in cfg.channels().into_iter().enumerate() {
            stages.push(DoubleConv::new(c_in, c, vb.pp("stages").pp(i))?);
            c_in = c;
        }
        Ok(Self { stages })
    }

    /// Adds every layer's cost for an input of shape `x`; returns the five feature shapes.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Vec<Shape4> {
        let mut feats: Vec<Shape4> = Vec::with_capacity(5);
        for (i, stage) in self.stages.iter().enumerate() {
            let input = if i == 0 {
                x
            } else {
                Shape4 {
                    h: feats[i - 1].h / 2,
                    w: feats[i - 1].w / 2,
                    ..feats[i - 1]
                }
            };
            feats.push(stage.cost(cost, &format!("{name}.stages.{i}"), input));
        }
        feats
    }

    /// The five features, strides 1, 2, 4, 8, 16.
    ///
    /// # Shapes
    /// `[B, C_in, H, W] -> [B, w, H, W], [B, 2w, H/2, W/2], ..., [B, 16w, H/16, W/16]`.
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut feats: Vec<Tensor> = Vec::with_capacity(5);
        for (i, stage) in self.stages.iter().enumerate() {
            let input = if i == 0 {
                x.clone()
            } else {
                max_pool2d(&feats[i - 1], 2, 2, 0)?
            };
            feats.push(stage.forward_t(&input, train)?);
        }
        Ok(feats)
    }
}
