//! Which kernel convolutions run: d2a's (the default) or candle's own, for comparison
//! (`d2a bench --candle`).

use candle_core::{Result, Tensor, bail};

use super::Conv2dConfig;

/// Which convolution kernel [`conv2d`] and [`conv2d_affine`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvBackend {
    /// d2a's kernel (the default).
    D2a,
    /// candle 0.11's own `Tensor::conv2d`, for comparison only: its backward is wrong for
    /// stride 2 on non-square inputs and its grouped convolution runs one group at a time; it
    /// takes square stride, padding and dilation only.
    Candle,
}

static CANDLE_BACKEND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Switches every later convolution of this process to `backend` (`d2a bench --candle`).
pub fn set_conv_backend(backend: ConvBackend) {
    CANDLE_BACKEND.store(
        backend == ConvBackend::Candle,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The kernel convolutions run on now.
pub fn conv_backend() -> ConvBackend {
    if CANDLE_BACKEND.load(std::sync::atomic::Ordering::Relaxed) {
        ConvBackend::Candle
    } else {
        ConvBackend::D2a
    }
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
