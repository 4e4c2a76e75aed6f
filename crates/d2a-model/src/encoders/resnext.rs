//! ResNeXt and ResNet encoders with torchvision's `state_dict` names (SPEC §2.1).
//!
//! The features are `e0 = relu(bn1(conv1(x)))` (stride 2, 64 channels) and the outputs of
//! `layer1` (after the 3x3/2 max-pool) to `layer4` (strides 4 to 32, 256 to 2048 channels). The
//! bottleneck puts its stride on the 3x3 grouped conv (torchvision's "ResNet v1.5"). An output
//! stride of 16 or 8 replaces the strides of `layer4` (and `layer3`) by dilation, as torchvision's
//! `replace_stride_with_dilation` does for DeepLab v3.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cost::{Cost, Shape4};
use crate::nn::ConvBn;
use crate::ops::{Conv2dConfig, add_relu, max_pool2d};

/// Depth and width of a ResNeXt (or, with one group, a ResNet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNeXtConfig {
    /// Bottleneck blocks in `layer1..layer4`.
    pub layers: [usize; 4],
    /// Groups of the 3x3 convolutions.
    pub groups: usize,
    /// Channels per group at `layer1` (torchvision's `width_per_group`).
    pub width_per_group: usize,
    /// Channels of the stem (64 in every torchvision model; smaller for tests). The stages
    /// have 4, 8, 16 and 32 times as many.
    pub stem_width: usize,
    /// Stride of `layer4` relative to the input: 32, or 16 / 8 with dilated `layer4` /
    /// `layer3` and `layer4` (DeepLab v3).
    pub output_stride: usize,
}

impl ResNeXtConfig {
    /// ResNeXt-50 (32x4d), the paper's encoder.
    pub const fn resnext50_32x4d() -> Self {
        Self {
            layers: [3, 4, 6, 3],
            groups: 32,
            width_per_group: 4,
            stem_width: 64,
            output_stride: 32,
        }
    }

    /// ResNet-101, the FCN8s and DeepLab v3 backbone.
    pub const fn resnet101() -> Self {
        Self {
            layers: [3, 4, 23, 3],
            groups: 1,
            width_per_group: 64,
            stem_width: 64,
            output_stride: 32,
        }
    }

    /// The fixture's tiny ResNeXt: one block per stage, 8 groups of width 4.
    pub const fn tiny() -> Self {
        Self {
            layers: [1, 1, 1, 1],
            groups: 8,
            width_per_group: 4,
            stem_width: 64,
            output_stride: 32,
        }
    }

    /// A ResNet with one block per stage and a stem of 8 channels: the backbone of the
    /// baselines' tests and quick runs.
    pub const fn resnet_tiny() -> Self {
        Self {
            layers: [1, 1, 1, 1],
            groups: 1,
            width_per_group: 64,
            stem_width: 8,
            output_stride: 32,
        }
    }

    /// The same network with `layer4` (16) or `layer3` and `layer4` (8) dilated instead of
    /// strided.
    pub const fn with_output_stride(mut self, output_stride: usize) -> Self {
        self.output_stride = output_stride;
        self
    }

    /// Channels of `e0..e4`.
    pub const fn channels(&self) -> [usize; 5] {
        let s = self.stem_width;
        [s, 4 * s, 8 * s, 16 * s, 32 * s]
    }
}

/// One bottleneck: 1x1 reduce, 3x3 grouped (strided), 1x1 expand (x4), plus shortcut.
#[derive(Debug, Clone)]
struct Bottleneck {
    reduce: ConvBn,
    grouped: ConvBn,
    expand: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(
        c_in: usize,
        planes: usize,
        (stride, dilation): (usize, usize),
        cfg: &ResNeXtConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let width = planes * cfg.width_per_group / 64 * cfg.groups;
        let c_out = planes * 4;
        let one = Conv2dConfig::plain();
        let reduce = ConvBn::new((c_in, width, 1), one, vb.pp("conv1"), vb.pp("bn1"))?;
        let grouped_cfg = Conv2dConfig::square(stride, dilation, dilation, cfg.groups);
        let grouped = ConvBn::new((width, width, 3), grouped_cfg, vb.pp("conv2"), vb.pp("bn2"))?;
        let expand =
            ConvBn::new((width, c_out, 1), one, vb.pp("conv3"), vb.pp("bn3"))?.without_relu();
        let downsample = if stride != 1 || c_in != c_out {
            let ds_cfg = Conv2dConfig::square(stride, 0, 1, 1);
            Some(
                ConvBn::new(
                    (c_in, c_out, 1),
                    ds_cfg,
                    vb.pp("downsample.0"),
                    vb.pp("downsample.1"),
                )?
                .without_relu(),
            )
        } else {
            None
        };
        Ok(Self {
            reduce,
            grouped,
            expand,
            downsample,
        })
    }
}

impl Bottleneck {
    fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Shape4 {
        let y = self.reduce.cost(cost, &format!("{name}.conv1"), x);
        let y = self.grouped.cost(cost, &format!("{name}.conv2"), y);
        let y = self.expand.cost(cost, &format!("{name}.conv3"), y);
        if let Some(ds) = &self.downsample {
            ds.cost(cost, &format!("{name}.downsample"), x);
        }
        y
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.expand.forward_t(
            &self
                .grouped
                .forward_t(&self.reduce.forward_t(x, train)?, train)?,
            train,
        )?;
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward_t(x, train)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}

/// ImageNet channel statistics for the ResNeXt/ResNet input (SPEC §2.1 decision).
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A CT slice in [0, 1] as an ImageNet backbone's input: the channel repeated three times and
/// normalised with ImageNet's per-channel mean and standard deviation.
///
/// # Shapes
/// `[B, 1, H, W] -> [B, 3, H, W]`
pub fn imagenet_input(x: &Tensor) -> Result<Tensor> {
    let dev = x.device();
    let mean = Tensor::new(&IMAGENET_MEAN, dev)?
        .to_dtype(x.dtype())?
        .reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&IMAGENET_STD, dev)?
        .to_dtype(x.dtype())?
        .reshape((1, 3, 1, 1))?;
    x.repeat((1, 3, 1, 1))?
        .broadcast_sub(&mean)?
        .broadcast_div(&std)
}

/// A ResNeXt/ResNet without its pooling and classifier.
#[derive(Debug, Clone)]
pub struct ResNeXt {
    stem: ConvBn,
    layers: Vec<Vec<Bottleneck>>,
}

impl ResNeXt {
    /// Builds the encoder; weights at torchvision's names under `vb` (`conv1.weight`,
    /// `layer2.0.downsample.1.running_var`, ...).
    pub fn new(cfg: &ResNeXtConfig, vb: VarBuilder) -> Result<Self> {
        let dilate = match cfg.output_stride {
            32 => [false, false],
            16 => [false, true],
            8 => [true, true],
            os => candle_core::bail!("ResNeXt: output stride must be 32, 16 or 8, got {os}"),
        };
        let stem = ConvBn::new(
            (3, cfg.stem_width, 7),
            Conv2dConfig::square(2, 3, 1, 1),
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut c_in = cfg.stem_width;
        let mut layers = Vec::with_capacity(4);
        // torchvision's rule: a dilated layer's first block keeps the previous dilation, its
        // stride becomes 1, and the following blocks use the doubled dilation.
        let mut dilation = 1;
        for (i, &n_blocks) in cfg.layers.iter().enumerate() {
            let planes = cfg.stem_width << i;
            let vb_layer = vb.pp(format!("layer{}", i + 1));
            let mut blocks = Vec::with_capacity(n_blocks);
            let first_dilation = dilation;
            let mut stride = if i == 0 { 1 } else { 2 };
            if i >= 2 && dilate[i - 2] {
                dilation *= stride;
                stride = 1;
            }
            for j in 0..n_blocks {
                let d = if j == 0 { first_dilation } else { dilation };
                blocks.push(Bottleneck::new(
                    c_in,
                    planes,
                    (stride, d),
                    cfg,
                    vb_layer.pp(j),
                )?);
                c_in = planes * 4;
                stride = 1;
            }
            layers.push(blocks);
        }
        Ok(Self { stem, layers })
    }

    /// Adds every layer's cost for an input of shape `x`; returns the shapes of `e0..e4`.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Vec<Shape4> {
        let e0 = self.stem.cost(cost, &format!("{name}.conv1"), x);
        let mut feats = vec![e0];
        // The 3x3/2 max-pool with padding 1.
        let mut h = Shape4 {
            h: (e0.h - 1) / 2 + 1,
            w: (e0.w - 1) / 2 + 1,
            ..e0
        };
        for (i, blocks) in self.layers.iter().enumerate() {
            for (j, block) in blocks.iter().enumerate() {
                h = block.cost(cost, &format!("{name}.layer{}.{j}", i + 1), h);
            }
            feats.push(h);
        }
        feats
    }

    /// The five features `e0..e4`.
    ///
    /// # Shapes
    /// `[B, 3, H, W] -> [B, 64, H/2, W/2], [B, 256, H/4, W/4], ..., [B, 2048, H/32, W/32]`
    /// (sizes rounded as the strided convolutions round them).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let e0 = self.stem.forward_t(x, train)?;
        let mut feats = vec![e0.clone()];
        let mut h = max_pool2d(&e0, 3, 2, 1)?;
        for blocks in &self.layers {
            for block in blocks {
                h = block.forward_t(&h, train)?;
            }
            feats.push(h.clone());
        }
        Ok(feats)
    }
}
