//! The D2A U-Net (SPEC §2) and its baselines on candle.
//!
//! This crate will hold the models (`d2a_unet`, `unet`, `attention_unet`, ...), their shared
//! blocks (GAM and DAM attention, the residual attention block, the ResNeXt and VGG-style
//! encoders) and the ops whose candle versions are wrong or slow (bilinear upsampling, max
//! pooling, grouped and dilated convolution), each with a correct backward. It lands with the
//! d2a-model issue.
//!
//! The crate stands alone: it depends on no other d2a crate.

#![warn(missing_docs)]

pub mod attention;
pub mod checkpoint;
pub mod cost;
mod d2a_unet;
pub mod encoders;
mod error;
pub mod init;
pub mod nn;
pub mod ops;
pub mod rab;

pub use d2a_unet::{Config, D2AUNet, Encoder};
pub use error::{Error, Result};

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod model_tests;
