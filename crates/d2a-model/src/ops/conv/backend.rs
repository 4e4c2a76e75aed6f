//! Which kernels the ops run: d2a's (the default), candle's own convolution (for comparison,
//! `d2a bench --candle`), or every op composed of candle's tensor ops (the path tensors off the
//! CPU always take, selectable on the CPU to check it there).

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{Result, Tensor, bail};

use super::Conv2dConfig;

/// Which kernels [`conv2d`](super::conv2d), [`conv2d_affine`](super::conv2d_affine) and, for
/// [`ConvBackend::Composed`], the other ops run on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBackend {
    /// d2a's kernel (the default).
    D2a,
    /// candle 0.11's own `Tensor::conv2d`, for comparison only: its backward is wrong for
    /// stride 2 on non-square inputs and its grouped convolution runs one group at a time; it
    /// takes square stride, padding and dilation only.
    Candle,
    /// Every op (convolution, BatchNorm, pooling, resizing, attention, residual) composed of
    /// candle's differentiable tensor ops, as it runs on a GPU: for checking that path on the
    /// CPU, where it is slower than d2a's kernels.
    Composed,
}

static BACKEND: AtomicU8 = AtomicU8::new(0);

/// Switches every later op of this process to `backend` (`d2a bench --candle`, `--composed`).
pub fn set_conv_backend(backend: ConvBackend) {
    let code = match backend {
        ConvBackend::D2a => 0,
        ConvBackend::Candle => 1,
        ConvBackend::Composed => 2,
    };
    BACKEND.store(code, Ordering::Relaxed);
}

/// The kernels the ops run on now.
pub fn conv_backend() -> ConvBackend {
    match BACKEND.load(Ordering::Relaxed) {
        1 => ConvBackend::Candle,
        2 => ConvBackend::Composed,
        _ => ConvBackend::D2a,
    }
}

/// Whether an op on `x` runs composed of candle's tensor ops: always off the CPU (d2a's kernels
/// are CPU code), and on the CPU under [`ConvBackend::Composed`].
pub(crate) fn runs_composed(x: &Tensor) -> bool {
    !x.device().is_cpu() || conv_backend() == ConvBackend::Composed
}

pub(super) fn candle_conv2d(x: &Tensor, weight: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
    let Conv2dConfig {
        stride: (s, s2),
        padding: (p, p2),
        dilation: (d, d2),
        groups,
    } = cfg;
    if (s, p, d) != (s2, p2, d2) {
        bail!("conv2d: candle's kernel takes square stride, padding and dilation only ({cfg:?})")
    }
    x.conv2d(weight, p, s, d, groups)
}
