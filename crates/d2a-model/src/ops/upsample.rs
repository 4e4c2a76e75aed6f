//! Bilinear ×2 upsampling with `align_corners = false`, and its exact adjoint as the backward.
//!
//! candle 0.11's `upsample_bilinear2d` has no backward. PyTorch's rule, per axis of length `n`:
//! output `o` reads source position `s = max(0, (o + 0.5) / 2 − 0.5)` between `floor(s)` and
//! `min(floor(s) + 1, n − 1)`.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType as _, bail};

use super::cpu::{Float, contiguous, with_float};

/// For each output index along an axis of input length `n`: the two source indices and weights.
fn taps(n: usize) -> Vec<(usize, usize, f64, f64)> {
    (0..2 * n)
        .map(|o| {
            let s = ((o as f64 + 0.5) / 2.0 - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            let l1 = s - i0 as f64;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Forward (`transpose == false`, `[.., H, W] -> [.., 2H, 2W]`) or its adjoint, the backward
/// (`transpose == true`, `[.., 2H, 2W] -> [.., H, W]`). `H` and `W` are always the small size.
#[derive(Debug, Clone, Copy)]
struct Up2 {
    transpose: bool,
}

impl Up2 {
    fn run<T: Float>(&self, input: &[T], planes: usize, h: usize, w: usize) -> Vec<T> {
        let (ty, tx) = (taps(h), taps(w));
        let (big, small) = (4 * h * w, h * w);
        let mut out = vec![T::from_f64(0.0); planes * if self.transpose { small } else { big }];
        let w2 = 2 * w;
        for p in 0..planes {
            for (oy, &(y0, y1, wy0, wy1)) in ty.iter().enumerate() {
                for (ox, &(x0, x1, wx0, wx1)) in tx.iter().enumerate() {
                    let corners = [
                        (y0, x0, wy0 * wx0),
                        (y0, x1, wy0 * wx1),
                        (y1, x0, wy1 * wx0),
                        (y1, x1, wy1 * wx1),
                    ];
                    if self.transpose {
                        let g = input[p * big + oy * w2 + ox];
                        for (y, x, k) in corners {
                            out[p * small + y * w + x] += g * T::from_f64(k);
                        }
                    } else {
                        let plane = &input[p * small..(p + 1) * small];
                        let v = corners.iter().fold(T::from_f64(0.0), |acc, &(y, x, k)| {
                            acc + plane[y * w + x] * T::from_f64(k)
                        });
                        out[p * big + oy * w2 + ox] = v;
                    }
                }
            }
        }
        out
    }
}

impl CustomOp1 for Up2 {
    fn name(&self) -> &'static str {
        if self.transpose {
            "d2a-up2-grad"
        } else {
            "d2a-up2"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[b, c, h, w] = l.dims() else {
            bail!("{}: expected [B, C, H, W], got {:?}", self.name(), l.dims())
        };
        let (h, w) = if self.transpose {
            if h % 2 != 0 || w % 2 != 0 {
                bail!(
                    "{}: gradient {h}x{w} is not twice an input size",
                    self.name()
                )
            }
            (h / 2, w / 2)
        } else {
            (h, w)
        };
        if h == 0 || w == 0 {
            bail!("{}: empty input {:?}", self.name(), l.dims())
        }
        let out = with_float!(s, self.name(), |T| {
            T::to_cpu_storage_owned(self.run(contiguous::<T>(s, l, self.name())?, b * c, h, w))
        });
        let dims = if self.transpose {
            (b, c, h, w)
        } else {
            (b, c, 2 * h, 2 * w)
        };
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(gy.contiguous()?.apply_op1_no_bwd(&Up2 {
            transpose: !self.transpose,
        })?))
    }
}

/// Bilinear ×2 upsampling, `align_corners = false` (PyTorch's
/// `F.interpolate(x, scale_factor=2, mode="bilinear")`), differentiable.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, 2H, 2W]`.
pub fn up2(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Up2 { transpose: false })
}
