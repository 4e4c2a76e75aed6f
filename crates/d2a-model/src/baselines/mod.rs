//! The paper's baselines (Table 2, SPEC §2.8), each in its own file with its citation, built on
//! the same ops and layers as the D2A U-Net so that one training loop serves them all
//! (through [`crate::Model`]).

mod attention_unet;
mod deeplabv3;
mod fcn8s;
mod unet;
mod unet_pp;

pub use attention_unet::AttentionUNet;
pub use deeplabv3::{DeepLabV3, DeepLabV3Config};
pub use fcn8s::{Fcn8s, Fcn8sConfig};
pub use unet::{UNet, UNetConfig};
pub use unet_pp::{UNetPlusPlus, UNetPlusPlusConfig};

#[cfg(test)]
mod tests;
