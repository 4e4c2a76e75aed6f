//! Ops the model needs whose candle 0.11 versions are wrong or missing, each differentiable:
//! [`conv2d`] (any stride, padding, dilation, groups), [`max_pool2d`] (with padding), [`up2`]
//! and [`resize_bilinear`] (bilinear) and [`attend`] (fused attention apply).
//!
//! The kernels run on the CPU in f32 and f64; every one has a finite-difference gradient test in
//! f64 and a parity test against PyTorch (`shared/fixtures/ops_io.safetensors`).

mod attention;
mod batch_norm;
mod conv;
mod cpu;
mod pool;
mod upsample;

pub use attention::attend;
pub use batch_norm::{BnStats, batch_norm_act};
pub use conv::{Conv2dConfig, ConvBackend, conv_backend, conv2d, conv2d_affine, set_conv_backend};
pub use pool::max_pool2d;
pub use upsample::{resize_bilinear, up2};

#[cfg(test)]
mod tests;
