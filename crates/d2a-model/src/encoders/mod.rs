//! Encoders of the D2A U-Net (SPEC §2.1): each returns five features, strides 2 to 32
//! (ResNeXt/ResNet) or 1 to 16 (VGG-style), shallowest first.

mod resnext;
mod vgg;

pub use resnext::{ResNeXt, ResNeXtConfig, imagenet_input};
pub use vgg::{DoubleConv, Vgg, VggConfig};

#[cfg(test)]
mod tests;
