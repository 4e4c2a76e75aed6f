//! DeepLab v3: L.-C. Chen, G. Papandreou, F. Schroff, H. Adam, "Rethinking Atrous Convolution for
//! Semantic Image Segmentation", arXiv:1706.05587 (2017), over an ImageNet ResNet-101 with output
//! stride 8 as in the D2A U-Net paper's Table 2.
//!
//! `layer3` and `layer4` of the backbone are dilated (2 and 4) instead of strided; ASPP runs a 1x1
//! conv, three 3x3 convs of rates 12, 24, 36 and image pooling (global average, 1x1 conv,
//! broadcast back), each with BN + ReLU, concatenates them and projects to 256 channels; a 3x3
//! conv + BN + ReLU and a 1x1 conv give the logits at stride 8, resized bilinearly to the input.
//! Names follow torchvision's `deeplabv3_resnet101` (`backbone.*`, `classifier.0.convs.{0..4}`,
//! `classifier.0.project`, `classifier.{1,2,4}`), without the auxiliary head; the dropout of the
//! projection is left out, as everywhere in d2a.

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cost::{Cost, Shape4};
use crate::encoders::{ResNeXt, ResNeXtConfig, imagenet_input};
use crate::nn::{Conv2d, ConvBn};
use crate::ops::{Conv2dConfig, resize_bilinear};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeepLabV3Config {
    /// The backbone; its output stride is set to 8 when the model is built.
    pub backbone: ResNeXtConfig,
    /// Channels of every ASPP branch and of the head (256 in the paper).
    pub aspp_width: usize,
    /// Dilation rates of the three 3x3 ASPP branches (12, 24, 36 at output stride 8).
    pub rates: [usize; 3],
    /// Whether training starts from ImageNet weights (read by training, not here).
    pub pretrained: bool,
}

impl DeepLabV3Config {
    /// The paper's baseline: ImageNet ResNet-101, output stride 8.
    pub const fn paper() -> Self {
        Self {
            backbone: ResNeXtConfig::resnet101().with_output_stride(8),
            aspp_width: 256,
            rates: [12, 24, 36],
            pretrained: true,
        }
    }

    /// A one-block-per-stage ResNet of stem width 8 and 32-channel ASPP, from scratch.
    pub const fn tiny() -> Self {
        Self {
            backbone: ResNeXtConfig::resnet_tiny().with_output_stride(8),
            aspp_width: 32,
            rates: [12, 24, 36],
            pretrained: false,
        }
    }
}

/// DeepLab v3.
#[derive(Debug, Clone)]
pub struct DeepLabV3 {
    backbone: ResNeXt,
    /// The 1x1 branch and the three dilated branches.
    branches: Vec<ConvBn>,
    pooling: ConvBn,
    project: ConvBn,
    head: ConvBn,
    out: Conv2d,
}

impl DeepLabV3 {
    /// Builds the model with torchvision's weight names.
    pub fn new(cfg: &DeepLabV3Config, vb: VarBuilder) -> Result<Self> {
        let backbone_cfg = cfg.backbone.with_output_stride(8);
        let c = backbone_cfg.channels()[4];
        let a = cfg.aspp_width;
        let aspp = vb.pp("classifier.0");
        let unit = |c_in, k, dilation: usize, vb: VarBuilder, conv: &str, bn: &str| {
            let cfg = Conv2dConfig::square(1, dilation * (k / 2), dilation, 1);
            ConvBn::new((c_in, a, k), cfg, vb.pp(conv), vb.pp(bn))
        };
        let mut branches = vec![unit(c, 1, 1, aspp.pp("convs.0"), "0", "1")?];
        for (i, &rate) in cfg.rates.iter().enumerate() {
            branches.push(unit(
                c,
                3,
                rate,
                aspp.pp(format!("convs.{}", i + 1)),
                "0",
                "1",
            )?);
        }
        Ok(Self {
            backbone: ResNeXt::new(&backbone_cfg, vb.pp("backbone"))?,
            branches,
            pooling: unit(c, 1, 1, aspp.pp("convs.4"), "1", "2")?,
            project: unit(5 * a, 1, 1, aspp.pp("project"), "0", "1")?,
            head: unit(a, 3, 1, vb.clone(), "classifier.1", "classifier.2")?,
            out: Conv2d::with_bias(a, 1, 1, Conv2dConfig::plain(), vb.pp("classifier.4"))?,
        })
    }

    /// Parameters and MACs per layer for an `h x w` single-channel input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let f = self
            .backbone
            .cost(&mut cost, "backbone", Shape4 { b: 1, c: 3, h, w })[4];
        let mut y = f;
        for (i, branch) in self.branches.iter().enumerate() {
            y = branch.cost(&mut cost, &format!("classifier.0.convs.{i}"), f);
        }
        self.pooling.cost(
            &mut cost,
            "classifier.0.convs.4",
            Shape4 { h: 1, w: 1, ..f },
        );
        let y = self.project.cost(
            &mut cost,
            "classifier.0.project",
            Shape4 { c: 5 * y.c, ..y },
        );
        let y = self.head.cost(&mut cost, "classifier.1", y);
        self.out.cost(&mut cost, "classifier.4", y);
        cost
    }
}

impl ModuleT for DeepLabV3 {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits; H and W multiples of 8.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let f = self
            .backbone
            .features(&imagenet_input(x)?, train)?
            .swap_remove(4);
        let mut parts = self
            .branches
            .iter()
            .map(|b| b.forward_t(&f, train))
            .collect::<Result<Vec<_>>>()?;
        let pooled = self.pooling.forward_t(&f.mean_keepdim((2, 3))?, train)?;
        let dims = parts[0].dims().to_vec();
        parts.push(pooled.broadcast_as(dims)?.contiguous()?);
        let y = self.project.forward_t(&Tensor::cat(&parts, 1)?, train)?;
        let logits = self.out.forward(&self.head.forward_t(&y, train)?)?;
        resize_bilinear(&logits, (h, w))
    }
}
