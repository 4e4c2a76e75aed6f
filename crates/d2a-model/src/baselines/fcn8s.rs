//! FCN-8s: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic
//! Segmentation", CVPR 2015 (arXiv:1411.4038), over an ImageNet ResNet-101 as in the D2A U-Net
//! paper's Table 2.
//!
//! Score maps at strides 32, 16 and 8 are fused coarse to fine: `s32 = head(layer4)`,
//! `s16 = up2(s32) + score_pool4(layer3)`, `s8 = up2(s16) + score_pool3(layer2)`, and `s8` is
//! resized bilinearly to the input. Decisions: the stride-32 head is torchvision's `FCNHead`
//! (3x3 conv to 512 channels, BN, ReLU, 1x1 conv to one logit; its dropout left out, as
//! everywhere in d2a); upsampling is fixed bilinear rather than the paper's learned
//! deconvolutions initialised to bilinear. The backbone sits at `backbone.*` with torchvision's
//! names, so an ImageNet `resnet101` state dict loads with prefix `backbone.` and the head at
//! `classifier.{0,1,4}` as in torchvision's segmentation models.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cost::{Cost, Shape4};
use crate::encoders::{ResNeXt, ResNeXtConfig, imagenet_input};
use crate::nn::{Conv2d, ConvBn};
use crate::ops::{Conv2dConfig, resize_bilinear, up2};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fcn8sConfig {
    /// The backbone (output stride 32).
    pub backbone: ResNeXtConfig,
    /// Channels of the stride-32 head's 3x3 conv (torchvision: `2048 / 4`).
    pub head_width: usize,
    /// Whether training starts from ImageNet weights (read by training, not here).
    pub pretrained: bool,
}

impl Fcn8sConfig {
    /// The paper's baseline: ImageNet ResNet-101.
    pub const fn paper() -> Self {
        Self {
            backbone: ResNeXtConfig::resnet101(),
            head_width: 512,
            pretrained: true,
        }
    }

    /// A one-block-per-stage ResNet of stem width 8, from scratch: tests and quick runs.
    pub const fn tiny() -> Self {
        Self {
            backbone: ResNeXtConfig::resnet_tiny(),
            head_width: 64,
            pretrained: false,
        }
    }
}

/// FCN-8s.
#[derive(Debug, Clone)]
pub struct Fcn8s {
    backbone: ResNeXt,
    head: ConvBn,
    score_fr: Conv2d,
    score_pool4: Conv2d,
    score_pool3: Conv2d,
}

impl Fcn8s {
    /// Builds the model; weights at `backbone.*`, `classifier.{0,1,4}`, `score_pool4`,
    /// `score_pool3`.
    pub fn new(cfg: &Fcn8sConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.backbone.output_stride != 32 {
            candle_core::bail!(
                "FCN-8s needs a backbone of output stride 32, got {}",
                cfg.backbone.output_stride
            )
        }
        let c = cfg.backbone.channels();
        let score = |c_in, name| Conv2d::with_bias(c_in, 1, 1, Conv2dConfig::plain(), vb.pp(name));
        Ok(Self {
            backbone: ResNeXt::new(&cfg.backbone, vb.pp("backbone"))?,
            head: ConvBn::new(
                (c[4], cfg.head_width, 3),
                Conv2dConfig::square(1, 1, 1, 1),
                vb.pp("classifier.0"),
                vb.pp("classifier.1"),
            )?,
            score_fr: score(cfg.head_width, "classifier.4")?,
            score_pool4: score(c[3], "score_pool4")?,
            score_pool3: score(c[2], "score_pool3")?,
        })
    }

    /// Parameters and MACs per layer for an `h x w` single-channel input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let f = self
            .backbone
            .cost(&mut cost, "backbone", Shape4 { b: 1, c: 3, h, w });
        let s = self.head.cost(&mut cost, "classifier.0", f[4]);
        self.score_fr.cost(&mut cost, "classifier.4", s);
        self.score_pool4.cost(&mut cost, "score_pool4", f[3]);
        self.score_pool3.cost(&mut cost, "score_pool3", f[2]);
        cost
    }
}

impl ModuleT for Fcn8s {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits; H and W multiples of 32.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let f = self.backbone.features(&imagenet_input(x)?, train)?;
        let s32 = self.score_fr.forward(&self.head.forward_t(&f[4], train)?)?;
        let s16 = (up2(&s32)? + self.score_pool4.forward(&f[3])?)?;
        let s8 = (up2(&s16)? + self.score_pool3.forward(&f[2])?)?;
        resize_bilinear(&s8, (h, w))
    }
}
