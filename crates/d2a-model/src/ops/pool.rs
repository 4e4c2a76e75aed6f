//! Max pooling with padding, whose gradient goes, whole, to the first maximum of each window.
//!
//! candle 0.11's `max_pool2d` has no padding and its backward divides the gradient by k²; the
//! ResNeXt stem needs 3x3, stride 2, padding 1 with PyTorch's gradient.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType as _, bail,
};

use rayon::iter::{IndexedParallelIterator as _, ParallelIterator as _};
use rayon::slice::{ParallelSlice as _, ParallelSliceMut as _};

use super::conv::runs_composed;
use super::cpu::{Float, contiguous, with_float};

/// Window geometry of a square max pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pool {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Pool {
    /// `[B, C, H, W] -> (planes, H, W, Ho, Wo)`, checked as PyTorch does (padding at most half
    /// the kernel, so that every window holds at least one real pixel).
    fn sizes(&self, dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
        let &[b, c, h, w] = dims else {
            bail!("max_pool2d: expected [B, C, H, W], got {dims:?}")
        };
        if self.kernel == 0 || self.stride == 0 || 2 * self.padding > self.kernel {
            bail!("max_pool2d: invalid window {self:?}")
        }
        let out = |n: usize| {
            (n + 2 * self.padding)
                .checked_sub(self.kernel)
                .map(|v| v / self.stride + 1)
        };
        let (Some(ho), Some(wo)) = (out(h), out(w)) else {
            bail!(
                "max_pool2d: input {h}x{w} is smaller than the {}x{} window",
                self.kernel,
                self.kernel
            )
        };
        Ok((b * c, h, w, ho, wo))
    }

    /// Calls `f(output index, flat index of the window's first maximum)` for every output pixel
    /// of one plane. NaN counts as a maximum, as in PyTorch.
    fn argmax<T: Float>(
        &self,
        plane: &[T],
        (h, w, ho, wo): (usize, usize, usize, usize),
        mut f: impl FnMut(usize, usize),
    ) {
        for oy in 0..ho {
            let y0 = (oy * self.stride).saturating_sub(self.padding);
            let y1 = (oy * self.stride + self.kernel - self.padding).min(h);
            for ox in 0..wo {
                let x0 = (ox * self.stride).saturating_sub(self.padding);
                let x1 = (ox * self.stride + self.kernel - self.padding).min(w);
                let mut best = y0 * w + x0;
                for y in y0..y1 {
                    for x in x0..x1 {
                        let v = plane[y * w + x];
                        if v > plane[best] || v.to_f64().is_nan() {
                            best = y * w + x;
                        }
                    }
                }
                f(oy * wo + ox, best);
            }
        }
    }
}

impl CustomOp1 for Pool {
    fn name(&self) -> &'static str {
        "d2a-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, ho, wo) = self.sizes(l.dims())?;
        let y = with_float!(s, self.name(), |T| {
            let x = contiguous::<T>(s, l, self.name())?;
            let mut y = vec![T::from_f64(0.0); planes * ho * wo];
            y.par_chunks_exact_mut((ho * wo).max(1))
                .zip(x.par_chunks_exact((h * w).max(1)))
                .for_each(|(out, plane)| {
                    self.argmax(plane, (h, w, ho, wo), |o, i| out[o] = plane[i]);
                });
            T::to_cpu_storage_owned(y)
        });
        let dims = l.dims();
        Ok((y, Shape::from((dims[0], dims[1], ho, wo))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&gy.contiguous()?, &PoolGrad(*self))?,
        ))
    }
}

/// `(x, dy) -> dx`: each output's gradient added at its window's first maximum.
struct PoolGrad(Pool);

impl CustomOp2 for PoolGrad {
    fn name(&self) -> &'static str {
        "d2a-max-pool2d-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, ho, wo) = self.0.sizes(xl.dims())?;
        if gl.dims().iter().product::<usize>() != planes * ho * wo {
            bail!(
                "{}: gradient {:?} does not match the pooled output",
                self.name(),
                gl.dims()
            )
        }
        let gx = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let gy = contiguous::<T>(gs, gl, self.name())?;
            let mut gx = vec![T::from_f64(0.0); x.len()];
            gx.par_chunks_exact_mut((h * w).max(1))
                .zip(x.par_chunks_exact((h * w).max(1)))
                .zip(gy.par_chunks_exact((ho * wo).max(1)))
                .for_each(|((g_in, plane), g_out)| {
                    self.0
                        .argmax(plane, (h, w, ho, wo), |o, i| g_in[i] += g_out[o]);
                });
            T::to_cpu_storage_owned(gx)
        });
        Ok((gx, xl.shape().clone()))
    }
}

/// Square max pooling with zero-free padding (padded positions never win), as PyTorch's
/// `max_pool2d(kernel, stride, padding)`; the gradient goes to the first maximum of each window.
///
/// # Shapes
/// `[B, C, H, W] -> [B, C, (H + 2p − k) / s + 1, (W + 2p − k) / s + 1]`.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pool = Pool {
        kernel,
        stride,
        padding,
    };
    let (_, _, _, ho, wo) = pool.sizes(x.dims())?;
    if runs_composed(x) {
        return super::composed::max_pool2d(x, (kernel, stride, padding), (ho, wo));
    }
    x.contiguous()?.apply_op1(pool)
}
