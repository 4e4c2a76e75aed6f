//! Every model d2a trains, by name: the three D2A U-Net presets and the five baselines of the
//! paper's Table 2, behind one [`Model`] that the training loop, `d2a info` and `d2a bench` use.
//!
//! Names: `d2a-resnext50`, `d2a-vgg`, `d2a-vgg-tiny` (each with the ablation switches of
//! [`D2AUNetConfig::by_name`]), `unet`, `attention-unet`, `unet-pp`, `fcn8s-resnet101`,
//! `deeplabv3-resnet101`. A baseline name with `-tiny` appended is the same architecture at a
//! reduced width (tests and quick CPU runs); the ResNet-101 models accept `+scratch` (no
//! ImageNet weights).

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::baselines::{
    AttentionUNet, DeepLabV3, DeepLabV3Config, Fcn8s, Fcn8sConfig, UNet, UNetConfig, UNetPlusPlus,
    UNetPlusPlusConfig,
};
use crate::cost::Cost;
use crate::{D2AUNet, D2AUNetConfig, Encoder, Error};

/// Which model to build, with its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelConfig {
    /// The D2A U-Net.
    D2A(D2AUNetConfig),
    /// U-Net (Ronneberger et al. 2015).
    UNet(UNetConfig),
    /// Attention U-Net (Oktay et al. 2018): the U-Net's configuration plus gates.
    AttentionUNet(UNetConfig),
    /// U-Net++ (Zhou et al. 2018).
    UNetPlusPlus(UNetPlusPlusConfig),
    /// FCN-8s over ResNet-101 (Long et al. 2015).
    Fcn8s(Fcn8sConfig),
    /// DeepLab v3 over ResNet-101, output stride 8 (Chen et al. 2017).
    DeepLabV3(DeepLabV3Config),
}

/// An ImageNet backbone a model starts from: the weights' name (`weights/<name>.safetensors`,
/// as `cargo xtask convert-weights` writes it) and where its keys sit in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    /// torchvision's model name: `resnext50_32x4d` or `resnet101`.
    pub name: &'static str,
    /// Prefix of the backbone's keys in the model (`encoder.` or `backbone.`).
    pub prefix: &'static str,
}

impl ModelConfig {
    /// The paper's eight models, in the order of its Table 2 (ours last).
    pub const NAMES: [&'static str; 8] = [
        "unet",
        "attention-unet",
        "unet-pp",
        "fcn8s-resnet101",
        "deeplabv3-resnet101",
        "d2a-vgg",
        "d2a-resnext50",
        "d2a-vgg-tiny",
    ];

    /// The model of a name (see the module documentation), or `None`.
    pub fn by_name(name: &str) -> Option<Self> {
        if name.starts_with("d2a-") {
            return D2AUNetConfig::by_name(name).map(Self::D2A);
        }
        let (base, switches) = match name.split_once('+') {
            Some((base, switches)) => (base, Some(switches)),
            None => (name, None),
        };
        let (base, tiny) = match base.strip_suffix("-tiny") {
            Some(base) => (base, true),
            None => (base, false),
        };
        let (paper, small) = match base {
            "unet" => (
                Self::UNet(UNetConfig::paper()),
                Self::UNet(UNetConfig::tiny()),
            ),
            "attention-unet" => (
                Self::AttentionUNet(UNetConfig::paper()),
                Self::AttentionUNet(UNetConfig::tiny()),
            ),
            "unet-pp" => (
                Self::UNetPlusPlus(UNetPlusPlusConfig::paper()),
                Self::UNetPlusPlus(UNetPlusPlusConfig::tiny()),
            ),
            "fcn8s-resnet101" => (
                Self::Fcn8s(Fcn8sConfig::paper()),
                Self::Fcn8s(Fcn8sConfig::tiny()),
            ),
            "deeplabv3-resnet101" => (
                Self::DeepLabV3(DeepLabV3Config::paper()),
                Self::DeepLabV3(DeepLabV3Config::tiny()),
            ),
            _ => return None,
        };
        let mut cfg = if tiny { small } else { paper };
        match (switches, &mut cfg) {
            (None, _) => {}
            (Some("scratch"), Self::Fcn8s(c)) => c.pretrained = false,
            (Some("scratch"), Self::DeepLabV3(c)) => c.pretrained = false,
            _ => return None,
        }
        Some(cfg)
    }

    /// The model of a name, or [`Error::UnknownModel`] listing the known ones.
    pub fn parse(name: &str) -> crate::Result<Self> {
        Self::by_name(name).ok_or_else(|| Error::UnknownModel(name.to_string()))
    }

    /// Checks that `side` (an input height, width or square side, named `what` in the
    /// message) is a positive multiple of [`ModelConfig::size_multiple`]: the one place this
    /// rule is written. Entry points (training, inference, `info`, `bench`) call it once,
    /// before any work.
    pub fn check_side(&self, what: &'static str, side: usize) -> crate::Result<()> {
        let multiple = self.size_multiple();
        if side == 0 || !side.is_multiple_of(multiple) {
            return Err(Error::BadSide {
                what,
                side,
                multiple,
                model: self.reference(),
            });
        }
        Ok(())
    }

    /// Input height and width must be multiples of this.
    pub fn size_multiple(&self) -> usize {
        match self {
            Self::D2A(c) => c.size_multiple(),
            Self::UNet(_) | Self::AttentionUNet(_) | Self::UNetPlusPlus(_) => 16,
            Self::Fcn8s(_) => 32,
            Self::DeepLabV3(_) => 8,
        }
    }

    /// The ImageNet backbone training loads before the first step, if any.
    pub fn pretrained(&self) -> Option<Pretrained> {
        match self {
            Self::D2A(c) if c.pretrained => match c.encoder {
                Encoder::ResNeXt(r) if r.groups == 32 => Some(Pretrained {
                    name: "resnext50_32x4d",
                    prefix: "encoder.",
                }),
                _ => None,
            },
            Self::Fcn8s(Fcn8sConfig {
                pretrained: true, ..
            })
            | Self::DeepLabV3(DeepLabV3Config {
                pretrained: true, ..
            }) => Some(Pretrained {
                name: "resnet101",
                prefix: "backbone.",
            }),
            _ => None,
        }
    }

    /// The model's name in the D2A U-Net paper (Table 2: model and backbone).
    pub fn reference(&self) -> &'static str {
        match self {
            Self::D2A(c) => match c.encoder {
                Encoder::ResNeXt(_) => "D2A U-Net, ResNeXt-50 (32x4d) pretrained",
                Encoder::Vgg(v) if v.base_width == 64 => "D2A U-Net, VGG-style",
                Encoder::Vgg(_) => "D2A U-Net, VGG-style at width 16 (not in the paper)",
            },
            Self::UNet(_) => "U-Net, VGG-style",
            Self::AttentionUNet(_) => "Attention U-Net, VGG-style",
            Self::UNetPlusPlus(_) => "U-Net++, VGG-style",
            Self::Fcn8s(_) => "FCN8s, ResNet-101 pretrained",
            Self::DeepLabV3(_) => "DeepLab v3 (output stride 8), ResNet-101 pretrained",
        }
    }
}

/// Any of the models, built.
#[derive(Debug, Clone)]
pub struct Model {
    cfg: ModelConfig,
    net: Net,
}

// One of these exists per model, built once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum Net {
    D2A(D2AUNet),
    UNet(UNet),
    AttentionUNet(AttentionUNet),
    UNetPlusPlus(UNetPlusPlus),
    Fcn8s(Fcn8s),
    DeepLabV3(DeepLabV3),
}

impl Model {
    /// Builds the model of `cfg` with its weights under `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let net = match cfg {
            ModelConfig::D2A(c) => Net::D2A(D2AUNet::new(c, vb)?),
            ModelConfig::UNet(c) => Net::UNet(UNet::new(c, vb)?),
            ModelConfig::AttentionUNet(c) => Net::AttentionUNet(AttentionUNet::new(c, vb)?),
            ModelConfig::UNetPlusPlus(c) => Net::UNetPlusPlus(UNetPlusPlus::new(c, vb)?),
            ModelConfig::Fcn8s(c) => Net::Fcn8s(Fcn8s::new(c, vb)?),
            ModelConfig::DeepLabV3(c) => Net::DeepLabV3(DeepLabV3::new(c, vb)?),
        };
        Ok(Self { cfg: *cfg, net })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Parameters and multiply-adds per layer for a `[1, 1, h, w]` input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        match &self.net {
            Net::D2A(m) => m.cost(h, w),
            Net::UNet(m) => m.cost(h, w),
            Net::AttentionUNet(m) => m.cost(h, w),
            Net::UNetPlusPlus(m) => m.cost(h, w),
            Net::Fcn8s(m) => m.cost(h, w),
            Net::DeepLabV3(m) => m.cost(h, w),
        }
    }

    /// Logits of the lesion class.
    ///
    /// # Shapes
    /// `[B, 1, H, W] -> [B, 1, H, W]`; H and W positive multiples of the model's
    /// [`ModelConfig::size_multiple`] (checked by the caller with [`ModelConfig::check_side`],
    /// once, not on every pass; [`crate::Segmenter`] does it for you).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match &self.net {
            Net::D2A(m) => m.forward_t(x, train),
            Net::UNet(m) => m.forward_t(x, train),
            Net::AttentionUNet(m) => m.forward_t(x, train),
            Net::UNetPlusPlus(m) => m.forward_t(x, train),
            Net::Fcn8s(m) => m.forward_t(x, train),
            Net::DeepLabV3(m) => m.forward_t(x, train),
        }
    }
}

impl ModuleT for Model {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Model::forward_t(self, x, train)
    }
}
