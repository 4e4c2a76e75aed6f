//! The ops composed of candle's differentiable tensor ops: the path for tensors off the CPU (a
//! CUDA GPU), where d2a's kernels (CPU code) do not run, and on the CPU a second implementation
//! that the kernels are checked against (`tests.rs`, `tests/composed.rs`).
//!
//! - convolution: per image, im2col from shifted, strided views of the zero-padded input
//!   (`narrow`, `reshape`, `stack`), then one `matmul` batched over the groups;
//! - max pooling: the same windows over a `−∞`-padded input, `argmax` and `gather`, so that
//!   the gradient goes whole to the first maximum of each window, as in the CPU kernel;
//! - bilinear resizing: one `matmul` per axis with the interpolation matrix (whose transpose,
//!   candle's matmul backward, is the adjoint);
//! - BatchNorm (+ReLU): the batch mean and centred variance, normalise, scale, shift; the
//!   gradient through the statistics is candle's autograd, the running statistics stay on the
//!   device.
//!
//! The ops chosen are those whose candle backward is right on every device (matmul, narrow,
//! reshape, cat, gather, reductions, elementwise), unlike candle's conv2d, max_pool2d and
//! upsample backwards. Results equal the kernels' up to rounding (sums in another order, f32
//! statistics). Each call uploads nothing but the small interpolation matrices of a resize.

use candle_core::{D, DType, Device, Result, Tensor};

use super::conv::Conv2dConfig;
use super::upsample::taps;

/// `x` with `before` and `after` slices of `fill` added along `dim`.
fn pad(x: &Tensor, dim: usize, (before, after): (usize, usize), fill: f64) -> Result<Tensor> {
    if fill == 0.0 {
        return x.pad_with_zeros(dim, before, after);
    }
    let block = |n: usize| {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::zeros(dims, x.dtype(), x.device())?.affine(1.0, fill)
    };
    let mut parts = Vec::with_capacity(3);
    if before > 0 {
        parts.push(block(before)?);
    }
    parts.push(x.clone());
    if after > 0 {
        parts.push(block(after)?);
    }
    Tensor::cat(&parts, dim)
}

/// One axis of a window: kernel size, stride, padding, dilation, output length.
#[derive(Debug, Clone, Copy)]
struct Axis {
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    out: usize,
}

impl Axis {
    /// Padding `(before, after)` for an input of length `n`: `pad` before, and after at least
    /// `pad` and enough for the last tap's strided view, `(k − 1)·dil + out·stride` long.
    fn padding(&self, n: usize) -> (usize, usize) {
        let needed = (self.k - 1) * self.dil + self.out * self.stride;
        (self.pad, self.pad.max(needed.saturating_sub(self.pad + n)))
    }

    /// For each tap `t < k`, the view of `xp` (padded) along `dim` at positions
    /// `t·dil + i·stride`, `i < out`.
    fn taps(&self, xp: &Tensor, dim: usize) -> Result<Vec<Tensor>> {
        (0..self.k)
            .map(|t| {
                let v = xp.narrow(dim, t * self.dil, self.out * self.stride)?;
                if self.stride == 1 {
                    return Ok(v);
                }
                let mut dims = v.dims().to_vec();
                dims[dim] = self.out;
                dims.insert(dim + 1, self.stride);
                v.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
            })
            .collect()
    }
}

/// The `kh·kw` views of `x` (`[B, C, H, W]`) that a window reads, each `[B, C, Ho, Wo]`, in
/// (row tap, column tap) order, the weights' order; positions outside `x` read `fill`.
fn windows(x: &Tensor, (rows, cols): (Axis, Axis), fill: f64) -> Result<Vec<Tensor>> {
    let (_, _, h, w) = x.dims4()?;
    let xp = pad(&pad(x, 2, rows.padding(h), fill)?, 3, cols.padding(w), fill)?;
    let mut out = Vec::with_capacity(rows.k * cols.k);
    for row in rows.taps(&xp, 2)? {
        out.extend(cols.taps(&row, 3)?);
    }
    Ok(out)
}

/// 2-D convolution (see [`super::conv2d`]) with output size `(ho, wo)`, already checked.
///
/// One image at a time: an image's stacked windows `[1, C, KH·KW, N]` are already its im2col
/// matrix per group, `[G, Cg·KH·KW, N]` (a view, no copy), where a whole batch's would need a
/// transposing copy, kept alive for the backward beside the first.
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    cfg: Conv2dConfig,
    (ho, wo): (usize, usize),
) -> Result<Tensor> {
    let (b, _, _, _) = x.dims4()?;
    let (o, cg, kh, kw) = weight.dims4()?;
    let g = cfg.groups;
    let axis = |k, i: fn((usize, usize)) -> usize, out| Axis {
        k,
        stride: i(cfg.stride),
        pad: i(cfg.padding),
        dil: i(cfg.dilation),
        out,
    };
    let axes = (axis(kh, |p| p.0, ho), axis(kw, |p| p.1, wo));
    let (k, n) = (cg * kh * kw, ho * wo);
    let w = weight.reshape((g, o / g, k))?;
    let images = (0..b)
        .map(|i| {
            let taps = windows(&x.narrow(0, i, 1)?, axes, 0.0)?;
            // Rows in the weights' (c, ky, kx) order.
            let cols = Tensor::stack(&taps, 2)?.reshape((g, k, n))?;
            w.matmul(&cols)?.reshape((1, o, ho, wo))
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&images, 0)
}

/// `conv2d · scale + shift` per output channel, then ReLU if `relu` (see
/// [`super::conv2d_affine`]).
pub(crate) fn conv2d_affine(
    x: &Tensor,
    weight: &Tensor,
    (scale, shift): (&Tensor, &Tensor),
    cfg: Conv2dConfig,
    out: (usize, usize),
    relu: bool,
) -> Result<Tensor> {
    channel_affine(&conv2d(x, weight, cfg, out)?, (scale, shift), relu)
}

/// Square max pooling with output size `(ho, wo)`, already checked (see [`super::max_pool2d`]);
/// the gradient goes to the first maximum of each window.
pub(crate) fn max_pool2d(
    x: &Tensor,
    (kernel, stride, padding): (usize, usize, usize),
    (ho, wo): (usize, usize),
) -> Result<Tensor> {
    let axis = |out| Axis {
        k: kernel,
        stride,
        pad: padding,
        dil: 1,
        out,
    };
    let taps = windows(x, (axis(ho), axis(wo)), f64::NEG_INFINITY)?;
    let stacked = Tensor::stack(&taps, 4)?.contiguous()?;
    let first_max = stacked.argmax_keepdim(D::Minus1)?.contiguous()?;
    stacked.gather(&first_max, D::Minus1)?.squeeze(D::Minus1)
}

/// The `[n, m]` matrix whose column `o` holds the weights output `o` of a resize from `n` to
/// `m` samples gives its source samples.
fn interpolation(n: usize, m: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut a = vec![0.0f64; n * m];
    for (o, (i0, i1, w0, w1)) in taps(n, m).into_iter().enumerate() {
        a[i0 * m + o] += w0;
        a[i1 * m + o] += w1;
    }
    Tensor::from_vec(a, (n, m), device)?.to_dtype(dtype)
}

/// Bilinear resizing, `align_corners = false` (see [`super::resize_bilinear`]).
pub(crate) fn resize_bilinear(x: &Tensor, (oh, ow): (usize, usize)) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let aw = interpolation(w, ow, x.dtype(), x.device())?;
    let ah = interpolation(h, oh, x.dtype(), x.device())?;
    x.reshape((b * c * h, w))?
        .matmul(&aw)?
        .reshape((b * c, h, ow))?
        .transpose(1, 2)?
        .reshape((b * c * ow, h))?
        .matmul(&ah)?
        .reshape((b * c, ow, oh))?
        .transpose(1, 2)?
        .reshape((b, c, oh, ow))
}

/// BatchNorm with the batch's statistics (+ReLU if `relu`) of `x` (`[B, C, H, W]`) with affine
/// `gamma`, `beta` (`[C]`), differentiable in all three; also returns the batch mean and the
/// biased variance (`[C]`, detached).
pub(crate) fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, c, h, w) = x.dims4()?;
    let n = (b * h * w) as f64;
    let per_channel = (1, c, 1, 1);
    let mean = (x.sum_keepdim((0, 2, 3))? / n)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = (centred.sqr()?.sum_keepdim((0, 2, 3))? / n)?;
    let scale = (var.affine(1.0, eps)?.sqrt()?.recip()?)
        .broadcast_mul(&gamma.to_dtype(x.dtype())?.reshape(per_channel)?)?;
    let y = centred
        .broadcast_mul(&scale)?
        .broadcast_add(&beta.to_dtype(x.dtype())?.reshape(per_channel)?)?;
    let y = if relu { y.relu()? } else { y };
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

/// BatchNorm with fixed statistics `(mean, var)` (`[C]`) folded into a per-channel
/// `(scale, shift)`: `gamma / sqrt(var + eps)` and `beta − mean · scale`, differentiable in
/// `gamma` and `beta`.
pub(crate) fn fold_batch_norm(
    gamma: &Tensor,
    beta: &Tensor,
    (mean, var): (&Tensor, &Tensor),
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let scale = gamma.broadcast_div(&(var + eps)?.sqrt()?)?;
    let shift = (beta - (mean * &scale)?)?;
    Ok((scale, shift))
}

/// `x · scale + shift` per channel (BatchNorm with fixed statistics, folded), then ReLU if
/// `relu`.
pub(crate) fn channel_affine(
    x: &Tensor,
    (scale, shift): (&Tensor, &Tensor),
    relu: bool,
) -> Result<Tensor> {
    let c = (1, scale.dim(0)?, 1, 1);
    let y = x
        .broadcast_mul(&scale.to_dtype(x.dtype())?.reshape(c)?)?
        .broadcast_add(&shift.to_dtype(x.dtype())?.reshape(c)?)?;
    if relu { y.relu() } else { Ok(y) }
}
