//! The D2A U-Net (Zhao et al. 2021; SPEC §2) on candle, with the ops it needs.
//!
//! - [`D2AUNet`] with [`D2AUNetConfig`] presets `paper_resnext50`, `paper_vgg` and `tiny`, and the
//!   ablation switches of the paper's Table 3;
//! - [`baselines`]: U-Net, Attention U-Net, U-Net++, FCN-8s and DeepLab v3 (paper Table 2);
//! - [`Model`] / [`ModelConfig`]: any of them by name (`ModelConfig::by_name("unet")`), as
//!   training and the command line use them;
//! - its blocks: [`encoders`] (ResNeXt/ResNet with torchvision names, VGG-style),
//!   [`attention`] (GAM, DAM), [`rab`] (residual attention block);
//! - [`ops`]: convolution, max-pool, bilinear ×2 and attention apply with correct gradients
//!   (candle 0.11's versions are wrong or missing);
//! - [`checkpoint`] (load with a key-by-key report, atomic save; [`checkpoint::format`]: every
//!   metadata key), [`cost`] (parameters and MACs per layer), [`init`] (seeded initialisation);
//! - [`Segmenter`]: `d2a predict`'s inference in one call, from a checkpoint.
//!
//! The crate stands alone: it depends on no other d2a crate.
//!
//! # Using the model in your program
//!
//! To segment slices with a checkpoint of `d2a train`, add `d2a-model` to your `Cargo.toml` and
//! use [`Segmenter`] (`Segmenter::from_checkpoint(path)?.segment(image)?` gives exactly the mask
//! `d2a predict` writes). To build and run a network yourself (add `candle-core`, `candle-nn`):
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarMap;
//! use d2a_model::{D2AUNetConfig, D2AUNet, init::seeded_var_builder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let varmap = VarMap::new();
//! let model = D2AUNet::new(&D2AUNetConfig::tiny(), seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu))?;
//! // For trained weights: d2a_model::checkpoint::load_exact(&varmap, path, "", &[])?;
//! // Any model by name: d2a_model::Model::new(&d2a_model::ModelConfig::by_name("unet").unwrap(), vb)
//! let ct = Tensor::zeros((1, 1, 64, 64), DType::F32, &Device::Cpu)?; // [B, 1, H, W] in [0, 1]
//! let logits = model.forward_t(&ct, false)?; // [B, 1, H, W]
//! let mask = logits.ge(0.0)?; // lesion where the probability is >= 0.5
//! assert_eq!(mask.dims(), [1, 1, 64, 64]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod baselines;
pub mod checkpoint;
pub mod cost;
mod d2a_unet;
mod device;
pub mod encoders;
mod error;
pub mod init;
mod models;
pub mod nn;
pub mod normalise;
pub mod ops;
pub mod rab;
mod segment;

pub use d2a_unet::{D2AUNet, D2AUNetConfig, Encoder};
pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use models::{Model, ModelConfig, Pretrained};
pub use normalise::Normalise;
pub use segment::{Image, LESION_LOGIT, Segmenter, Tta, mask_of_logits, predict_logits};

#[cfg(test)]
mod test_support;

#[cfg(test)]
mod tests;

/// Keeps freed tensor memory in the process for reuse instead of returning it to the kernel.
///
/// glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap`s, which
/// the kernel zeroes page by page on first touch; a model's activations are that large, so every
/// op paid page faults. With this, the forward pass of `d2a-vgg-tiny` at 512² went from 1.55 s
/// to 0.82 s here. Peak memory is unchanged: only the release of freed memory is deferred.
/// Programs embedding `d2a-model` should call it first thing in `main` (or set
/// `MALLOC_MMAP_THRESHOLD_`); the `d2a` binary does.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters (glibc takes its own lock); called
    // early, before large allocations, it governs all of them.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
