//! Bilinear resizing with `align_corners = false`, and its exact adjoint as the backward.
//!
//! candle 0.11's `upsample_bilinear2d` has no backward. PyTorch's rule
//! (`F.interpolate(x, size=(H', W'), mode="bilinear")`), per axis from length `n` to `m`:
//! output `o` reads source position `s = max(0, (o + 0.5) · n / m − 0.5)` between `floor(s)` and
//! `min(floor(s) + 1, n − 1)`. With `m = 2n` this is `scale_factor=2`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType as _, bail};
use rayon::prelude::*;

use super::conv::runs_composed;
use super::cpu::{Float, contiguous, with_float};

/// For each output index along an axis from length `n` to `m`: the two source indices and
/// their weights.
pub(super) fn taps(n: usize, m: usize) -> Vec<(usize, usize, f64, f64)> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let l1 = s - i0 as f64;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Resizes `[.., h, w]` to `[.., out_h, out_w]` (`transpose == false`), or is that map's adjoint,
/// the backward (`transpose == true`, `[.., out_h, out_w] -> [.., h, w]`). `(h, w)` is always
/// the source size of the forward.
#[derive(Debug, Clone, Copy)]
struct Resize {
    src: (usize, usize),
    dst: (usize, usize),
    transpose: bool,
}

impl Resize {
    fn run<T: Float>(&self, input: &[T], planes: usize) -> Vec<T> {
        let ((h, w), (oh, ow)) = (self.src, self.dst);
        let (ty, tx) = (taps(h, oh), taps(w, ow));
        let (big, small) = (oh * ow, h * w);
        let out_plane = if self.transpose { small } else { big };
        let mut out = vec![T::from_f64(0.0); planes * out_plane];
        out.par_chunks_mut(out_plane.max(1))
            .enumerate()
            .for_each(|(p, out)| {
                for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
                    for (ox, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
                        let corners = [
                            (y0, x0, wy0 * wx0),
                            (y0, x1, wy0 * wx1),
                            (y1, x0, wy1 * wx0),
                            (y1, x1, wy1 * wx1),
                        ];
                        if self.transpose {
                            let g = input[p * big + oy * ow + ox];
                            for (y, x, k) in corners {
                                out[y * w + x] += g * T::from_f64(k);
                            }
                        } else {
                            let plane = &input[p * small..(p + 1) * small];
                            out[oy * ow + ox] =
                                corners.iter().fold(T::from_f64(0.0), |acc, &(y, x, k)| {
                                    acc + plane[y * w + x] * T::from_f64(k)
                                });
                        }
                    }
                }
            });
        out
    }
}

impl CustomOp1 for Resize {
    fn name(&self) -> &'static str {
        if self.transpose {
            "d2a-resize-bilinear-grad"
        } else {
            "d2a-resize-bilinear"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, c, h, w] = l.dims() else {
            bail!("{}: expected [B, C, H, W], got {:?}", self.name(), l.dims())
        };
        let (from, to) = if self.transpose {
            (self.dst, self.src)
        } else {
            (self.src, self.dst)
        };
        if (h, w) != from {
            bail!(
                "{}: expected a {}x{} input, got {h}x{w}",
                self.name(),
                from.0,
                from.1
            )
        }
        let out = with_float!(s, self.name(), |T| {
            T::to_cpu_storage_owned(self.run(contiguous::<T>(s, l, self.name())?, b * c))
        });
        Ok((out, Shape::from((b, c, to.0, to.1))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gy.contiguous()?.apply_op1_no_bwd(&Resize {
            transpose: !self.transpose,
            ..*self
        })?))
    }
}

/// Bilinear resizing to `(height, width)`, `align_corners = false` (PyTorch's
/// `F.interpolate(x, size=(height, width), mode="bilinear")`), differentiable.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, height, width]`; every size positive.
pub fn resize_bilinear(x: &Tensor, (height, width): (usize, usize)) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h == 0 || w == 0 || height == 0 || width == 0 {
        bail!(
            "resize_bilinear: cannot resize {:?} to {height}x{width}",
            x.dims()
        )
    }
    if runs_composed(x) {
        return super::composed::resize_bilinear(x, (height, width));
    }
    x.contiguous()?.apply_op1(Resize {
        src: (h, w),
        dst: (height, width),
        transpose: false,
    })
}

/// Bilinear ×2 upsampling, `align_corners = false` (PyTorch's
/// `F.interpolate(x, scale_factor=2, mode="bilinear")`), differentiable.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, 2H, 2W]`.
pub fn up2(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    resize_bilinear(x, (2 * h, 2 * w))
}
