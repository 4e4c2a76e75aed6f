//! 2-D convolution for any stride, padding, dilation and groups, with both gradients.
//!
//! candle 0.11's own conv2d backward fails for stride 2 on non-square inputs and runs grouped
//! convolutions as one convolution per group. These kernels split each call into work items
//! (image, group, tile of output rows) and lower each to one GEMM over an im2col block on the
//! `gemm` crate: forward `Y_g[:, tile] = W_g · cols(tile)`, weight gradient
//! `dW_g += dY_g[:, tile] · cols(tile)ᵀ`, input gradient the flipped convolution where stride is
//! 1, else `cols' = W_gᵀ · dY_g` scattered back by col2im. 3x3 stride-1 convolutions with at
//! least 64 channels per group run by Winograd's F(2x2, 3x3) instead (2.25x fewer multiply-adds).
//!
//! - `geometry.rs`: the sizes of one call, checked; tiles, work items, im2col and col2im;
//! - `gemm.rs`: the strided GEMM and the work-item loop every kernel runs on;
//! - `forward.rs`: the forward op and its backward;
//! - `affine.rs`: the forward with a per-channel scale/shift (+ReLU) epilogue;
//! - `grad.rs`: the input- and weight-gradient ops, each with its kernel;
//! - `winograd.rs`: 3x3 stride-1 convolutions (any dilation) by Winograd's F(2x2, 3x3), which
//!   the forward, the stride-1 input gradient and the weight gradient run where there are
//!   enough channels;
//! - `backend.rs`: the switch to candle's own convolution, for comparison.

use candle_core::{Result, Tensor};

mod affine;
mod backend;
mod forward;
mod gemm;
mod geometry;
mod grad;
mod winograd;

pub(crate) use backend::runs_composed;
pub use backend::{ConvBackend, conv_backend, set_conv_backend};

use affine::Conv2dAffine;
use backend::candle_conv2d;
use forward::Conv2dFwd;
use geometry::Geometry;

/// Geometry of a convolution: per-axis `(height, width)` stride, padding and dilation, and the
/// number of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    /// Step between output positions.
    pub stride: (usize, usize),
    /// Zero padding added on both sides.
    pub padding: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
    /// Channel groups: input and output channels must both be divisible by it.
    pub groups: usize,
}

impl Conv2dConfig {
    /// Stride 1, no padding, no dilation, one group.
    pub const fn plain() -> Self {
        Self {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }

    /// Square stride, padding and dilation with `groups` groups.
    pub const fn square(stride: usize, padding: usize, dilation: usize, groups: usize) -> Self {
        Self {
            stride: (stride, stride),
            padding: (padding, padding),
            dilation: (dilation, dilation),
            groups,
        }
    }
}

/// 2-D convolution of `x` with `weight`, differentiable in both.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`, f32 or f64, on the CPU;
/// - `weight`: `[O, C / groups, KH, KW]`;
/// - returns `[B, O, (H + 2·pad − dil·(KH − 1) − 1) / stride + 1, ...]`, as PyTorch's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
    let geo = Geometry::new(x.dims(), weight.dims(), cfg)?;
    if conv_backend() == ConvBackend::Candle {
        return candle_conv2d(x, weight, cfg);
    }
    if runs_composed(x) {
        return crate::ops::composed::conv2d(x, weight, cfg, (geo.ho, geo.wo));
    }
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dFwd(cfg))
}

/// `conv2d(x, weight) · scale + shift` per output channel, then ReLU if `relu`, in one kernel:
/// a convolution's bias (`scale` = 1), or a BatchNorm folded in at inference. Differentiable in
/// all four inputs.
///
/// # Shapes
/// As [`conv2d`]; `scale` and `shift`: `[O]`.
pub fn conv2d_affine(
    x: &Tensor,
    weight: &Tensor,
    (scale, shift): (&Tensor, &Tensor),
    cfg: Conv2dConfig,
    relu: bool,
) -> Result<Tensor> {
    let geo = Geometry::new(x.dims(), weight.dims(), cfg)?;
    if conv_backend() == ConvBackend::Candle {
        let c = (1, scale.dim(0)?, 1, 1);
        let y = candle_conv2d(x, weight, cfg)?
            .broadcast_mul(&scale.reshape(c)?)?
            .broadcast_add(&shift.reshape(c)?)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    if runs_composed(x) {
        let out = (geo.ho, geo.wo);
        return crate::ops::composed::conv2d_affine(x, weight, (scale, shift), cfg, out, relu);
    }
    let affine = Tensor::cat(&[scale, shift], 0)?.to_dtype(x.dtype())?;
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &affine, Conv2dAffine { cfg, relu })
}
