//! The D2A U-Net (SPEC §2): an encoder (ResNeXt-50 or VGG-style), four decoder stages that fuse
//! an upsampled deeper feature with a GAM-attended skip through a residual attention block, and a
//! head that returns one channel of logits at the input's size.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::Gam;
use crate::cost::{Cost, Shape4};
use crate::encoders::{DoubleConv, ResNeXt, ResNeXtConfig, Vgg, VggConfig, imagenet_input};
use crate::nn::{Conv2d, ConvBn};
use crate::ops::{Conv2dConfig, up2};
use crate::rab::Rab;

/// Which encoder the model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoder {
    /// ResNeXt/ResNet, 3-channel ImageNet-normalised input made from the CT channel.
    ResNeXt(ResNeXtConfig),
    /// VGG-style, one input channel.
    Vgg(VggConfig),
}

/// What to build: the encoder and the ablation switches of paper Table 3 (SPEC §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct D2AUNetConfig {
    /// The encoder.
    pub encoder: Encoder,
    /// Gate attention on the skips (false: plain skip concatenation).
    pub gam: bool,
    /// Residual attention blocks in the decoder (false: two 3x3 conv + BN + ReLU).
    pub rab: bool,
    /// DAM inside each RAB.
    pub dam: bool,
    /// Whether the encoder is to be loaded from ImageNet weights (read by training, not here).
    pub pretrained: bool,
}

impl D2AUNetConfig {
    /// The paper's best model: ResNeXt-50 (32x4d), pretrained, GAM + RAB + DAM.
    pub const fn paper_resnext50() -> Self {
        Self {
            encoder: Encoder::ResNeXt(ResNeXtConfig::resnext50_32x4d()),
            gam: true,
            rab: true,
            dam: true,
            pretrained: true,
        }
    }

    /// The paper's VGG-style model (width 64), from scratch.
    pub const fn paper_vgg() -> Self {
        Self {
            encoder: Encoder::Vgg(VggConfig {
                in_channels: 1,
                base_width: 64,
            }),
            gam: true,
            rab: true,
            dam: true,
            pretrained: false,
        }
    }

    /// VGG-style at width 16: the model of quick runs and tests.
    pub const fn tiny() -> Self {
        Self {
            encoder: Encoder::Vgg(VggConfig {
                in_channels: 1,
                base_width: 16,
            }),
            gam: true,
            rab: true,
            dam: true,
            pretrained: false,
        }
    }

    /// The model of a name: a preset (`d2a-resnext50`, `d2a-vgg`, `d2a-vgg-tiny`) followed by
    /// any of the ablation switches of paper Table 3, each after a `+`: `no-gam`, `no-rab`,
    /// `no-dam`, `scratch` (no ImageNet weights). E.g. `d2a-vgg+no-gam+no-dam`.
    pub fn by_name(name: &str) -> Option<Self> {
        let mut parts = name.split('+');
        let mut cfg = match parts.next()? {
            "d2a-resnext50" => Self::paper_resnext50(),
            "d2a-vgg" => Self::paper_vgg(),
            "d2a-vgg-tiny" => Self::tiny(),
            _ => return None,
        };
        for switch in parts {
            match switch {
                "no-gam" => cfg.gam = false,
                "no-rab" => cfg.rab = false,
                "no-dam" => cfg.dam = false,
                "scratch" => cfg.pretrained = false,
                _ => return None,
            }
        }
        Some(cfg)
    }

    /// The names [`D2AUNetConfig::by_name`] knows.
    pub const NAMES: [&'static str; 3] = ["d2a-resnext50", "d2a-vgg", "d2a-vgg-tiny"];

    fn channels(&self) -> [usize; 5] {
        match self.encoder {
            Encoder::ResNeXt(c) => c.channels(),
            Encoder::Vgg(c) => c.channels(),
        }
    }

    /// Input height and width must be multiples of this: the deepest feature's stride.
    pub fn size_multiple(&self) -> usize {
        match self.encoder {
            Encoder::ResNeXt(_) => 32,
            Encoder::Vgg(_) => 16,
        }
    }
}

/// The fusion block of a decoder stage: RAB, or two plain conv units when RAB is ablated.
// Four of these exist per model, built once: their size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Fuse {
    Rab(Rab),
    Plain(DoubleConv),
}

/// One decoder stage: `out = fuse(concat(relu(bn(conv3x3(up2(d)))), GAM(d, e)))`.
#[derive(Debug, Clone)]
struct DecoderStage {
    up: ConvBn,
    gam: Option<Gam>,
    fuse: Fuse,
}

impl DecoderStage {
    fn new(c_d: usize, c_e: usize, cfg: &D2AUNetConfig, vb: VarBuilder) -> Result<Self> {
        let up = ConvBn::same(c_d, c_e, 3, 1, vb.pp("up"))?;
        let gam = if cfg.gam {
            Some(Gam::new(c_d, c_e, vb.pp("gam"))?)
        } else {
            None
        };
        let fuse = if cfg.rab {
            Fuse::Rab(Rab::new(2 * c_e, c_e, cfg.dam, vb.pp("rab"))?)
        } else {
            Fuse::Plain(DoubleConv::new(2 * c_e, c_e, vb.pp("conv"))?)
        };
        Ok(Self { up, gam, fuse })
    }

    /// `d`: `[B, C_d, H/2, W/2]`, `e`: `[B, C_e, H, W]` -> `[B, C_e, H, W]`.
    fn forward_t(&self, d: &Tensor, e: &Tensor, train: bool) -> Result<Tensor> {
        let u = self.up.forward_t(&up2(d)?, train)?;
        let a = match &self.gam {
            Some(gam) => gam.forward(d, e)?,
            None => e.clone(),
        };
        let cat = Tensor::cat(&[&u, &a], 1)?;
        match &self.fuse {
            Fuse::Rab(rab) => rab.forward_t(&cat, train),
            Fuse::Plain(conv) => conv.forward_t(&cat, train),
        }
    }

    fn cost(&self, cost: &mut Cost, name: &str, d: Shape4, e: Shape4) -> Shape4 {
        let u = self.up.cost(
            cost,
            &format!("{name}.up"),
            Shape4 {
                h: 2 * d.h,
                w: 2 * d.w,
                ..d
            },
        );
        if let Some(gam) = &self.gam {
            gam.cost(cost, &format!("{name}.gam"), d, e);
        }
        let cat = Shape4 { c: u.c + e.c, ..e };
        match &self.fuse {
            Fuse::Rab(rab) => rab.cost(cost, &format!("{name}.rab"), cat),
            Fuse::Plain(conv) => conv.cost(cost, &format!("{name}.conv"), cat),
        }
    }
}

#[derive(Debug, Clone)]
enum EncoderNet {
    ResNeXt(ResNeXt),
    Vgg(Vgg),
}

/// The D2A U-Net.
#[derive(Debug, Clone)]
pub struct D2AUNet {
    cfg: D2AUNetConfig,
    encoder: EncoderNet,
    decoder: Vec<DecoderStage>,
    head: ConvBn,
    out: Conv2d,
}

impl D2AUNet {
    /// Builds the model with weights under `vb`: `encoder.*` (torchvision names for ResNeXt),
    /// `decoder.{0..3}.*`, `head.*`, `out.*`.
    pub fn new(cfg: &D2AUNetConfig, vb: VarBuilder) -> Result<Self> {
        let encoder = match cfg.encoder {
            Encoder::ResNeXt(c) => EncoderNet::ResNeXt(ResNeXt::new(&c, vb.pp("encoder"))?),
            Encoder::Vgg(c) => EncoderNet::Vgg(Vgg::new(&c, vb.pp("encoder"))?),
        };
        let ch = cfg.channels();
        let mut decoder = Vec::with_capacity(4);
        // Stage i fuses the running feature (ch[4 - i] channels deep) with skip e_{3 - i}.
        for i in 0..4 {
            decoder.push(DecoderStage::new(
                ch[4 - i],
                ch[3 - i],
                cfg,
                vb.pp("decoder").pp(i),
            )?);
        }
        let head = ConvBn::same(ch[0], 32, 3, 1, vb.pp("head"))?;
        let out = Conv2d::with_bias(32, 1, 1, Conv2dConfig::plain(), vb.pp("out"))?;
        Ok(Self {
            cfg: *cfg,
            encoder,
            decoder,
            head,
            out,
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &D2AUNetConfig {
        &self.cfg
    }

    /// `[B, 1, H, W]` in [0, 1] -> the encoder's input (3-channel ImageNet-normalised for ResNeXt).
    fn encoder_input(&self, x: &Tensor) -> Result<Tensor> {
        match self.encoder {
            EncoderNet::Vgg(_) => Ok(x.clone()),
            EncoderNet::ResNeXt(_) => imagenet_input(x),
        }
    }

    /// Logits of the lesion class.
    ///
    /// # Shapes
    /// `[B, 1, H, W] -> [B, 1, H, W]`; H and W multiples of [`D2AUNetConfig::size_multiple`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let input = self.encoder_input(x)?;
        let feats = match &self.encoder {
            EncoderNet::ResNeXt(net) => net.features(&input, train)?,
            EncoderNet::Vgg(net) => net.features(&input, train)?,
        };
        let mut d = feats[4].clone();
        for (i, stage) in self.decoder.iter().enumerate() {
            d = stage.forward_t(&d, &feats[3 - i], train)?;
        }
        if let EncoderNet::ResNeXt(_) = self.encoder {
            d = up2(&d)?;
        }
        candle_core::Module::forward(&self.out, &self.head.forward_t(&d, train)?)
    }

    /// Parameter and multiply-add counts, per layer, for a `[1, 1, h, w]` input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let x = Shape4 { b: 1, c: 1, h, w };
        let feats = match &self.encoder {
            EncoderNet::ResNeXt(net) => net.cost(&mut cost, "encoder", Shape4 { c: 3, ..x }),
            EncoderNet::Vgg(net) => net.cost(&mut cost, "encoder", x),
        };
        let mut d = feats[4];
        for (i, stage) in self.decoder.iter().enumerate() {
            d = stage.cost(&mut cost, &format!("decoder.{i}"), d, feats[3 - i]);
        }
        if let EncoderNet::ResNeXt(_) = self.encoder {
            d = Shape4 {
                h: 2 * d.h,
                w: 2 * d.w,
                ..d
            };
        }
        let d = self.head.cost(&mut cost, "head", d);
        self.out.cost(&mut cost, "out", d);
        cost
    }
}
