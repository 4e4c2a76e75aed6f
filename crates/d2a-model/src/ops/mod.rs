//! Ops the model needs whose candle 0.11 versions are wrong, slow or missing, each
//! differentiable: [`conv2d`] (any stride, padding, dilation, groups) and [`conv2d_affine`]
//! (with a per-channel scale/shift and ReLU in its kernel), [`batch_norm_act`] (BatchNorm + ReLU
//! fused), [`max_pool2d`] (with padding), [`resize_bilinear`] and [`up2`] (bilinear,
//! `align_corners = false`), [`attend`] (the attention apply `x ⊙ Mc ⊗ Ms`) and [`add_relu`]
//! (the end of a residual block), the last two fused into one pass each way.
//!
//! The kernels run on the CPU in f32 and f64; every one has a finite-difference gradient test in
//! f64 (`tests.rs`). Convolution (grouped, strided, dilated), max-pool and ×2 upsampling are also
//! checked against PyTorch's outputs and gradients (`shared/fixtures/ops_io.safetensors`),
//! bilinear resizing against PyTorch values carried in the test.
//!
//! Off the CPU (a CUDA GPU) every op runs composed of candle's differentiable tensor ops instead
//! (`composed.rs`), which the tests check against the kernels on the CPU
//! ([`ConvBackend::Composed`] selects that path there).

mod attention;
mod batch_norm;
mod composed;
mod conv;
mod cpu;
mod pool;
mod residual;
mod upsample;

pub use attention::attend;
pub use batch_norm::{BnStats, batch_norm_act};
pub(crate) use composed::{batch_norm_train, channel_affine, fold_batch_norm};
pub(crate) use conv::runs_composed;
pub use conv::{Conv2dConfig, ConvBackend, conv_backend, conv2d, conv2d_affine, set_conv_backend};
pub use pool::max_pool2d;
pub use residual::add_relu;
pub use upsample::{resize_bilinear, up2};

#[cfg(test)]
mod tests;
