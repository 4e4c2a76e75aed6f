//! The convolution forward op, `(x, w) -> y`, and its backward (the two gradient ops).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType as _};

use super::Conv2dConfig;
use super::affine::Epilogue;
use super::gemm::{for_each_item, matmul};
use super::geometry::Geometry;
use super::grad::{Conv2dInputGrad, Conv2dWeightGrad};
use super::winograd;
use crate::ops::cpu::{Float, SharedMut, contiguous, with_float};

/// Convolution forward: `(x, w) -> y`.
pub(super) struct Conv2dFwd(pub(super) Conv2dConfig);

impl Conv2dFwd {
    /// `y = conv(x, w)`: per (image, group, tile of output rows) one GEMM
    /// `Y[:, tile] = W_g · im2col(tile)`; 1x1 convolutions read the input in place.
    pub(super) fn run<T: Float>(geo: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
        Self::run_with(geo, x, w, None)
    }

    /// [`Conv2dFwd::run`], then, where `epilogue` is given, `y = y · scale[o] + shift[o]` and
    /// ReLU if asked, applied to each tile as soon as its GEMM wrote it (while it is in cache).
    /// 3x3 stride-1 convolutions with enough channels run by Winograd's F(2x2, 3x3)
    /// ([`winograd`]), the others as im2col + GEMM.
    pub(super) fn run_with<T: Float>(
        geo: &Geometry,
        x: &[T],
        w: &[T],
        epilogue: Option<Epilogue<'_, T>>,
    ) -> Vec<T> {
        if winograd::applies(geo) {
            winograd::forward(geo, x, w, epilogue)
        } else {
            Self::im2col_gemm(geo, x, w, epilogue)
        }
    }

    /// [`Conv2dFwd::run_with`] as im2col + GEMM, whatever the geometry.
    pub(super) fn im2col_gemm<T: Float>(
        geo: &Geometry,
        x: &[T],
        w: &[T],
        epilogue: Option<Epilogue<'_, T>>,
    ) -> Vec<T> {
        let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
        let plane_in = geo.h * geo.w;
        let len = geo.batch * geo.c_out * n;
        // Not zero-filled: the GEMMs below overwrite every element (they do not read `dst`).
        let mut y: Vec<T> = Vec::with_capacity(len);
        let y_ptr = SharedMut(y.as_mut_ptr());
        let parallelism = geo.gemm_parallelism();
        for_each_item(geo.items(), geo.parallel_items(), |cols: &mut Vec<T>, i| {
            let (b, g, t) = geo.item(i);
            let (oy0, oy1) = geo.tile_rows(t);
            let (n0, tn) = (oy0 * geo.wo, (oy1 - oy0) * geo.wo);
            let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
            let (rhs, rhs_rs) = if geo.is_pointwise() {
                (&x_bg[n0..], n)
            } else {
                geo.im2col(x_bg, (oy0, oy1), cols, !geo.parallel_items());
                (&cols[..], tn)
            };
            // SAFETY: item (b, g, t) alone writes rows `g·og..(g+1)·og` of image b, columns
            // `n0..n0 + tn`, all inside `y`.
            unsafe {
                matmul(
                    (og, tn, k),
                    y_ptr.get().add((b * geo.c_out + g * og) * n + n0),
                    n,
                    false,
                    &w[g * og * k..][..og * k],
                    (k, 1),
                    rhs,
                    (rhs_rs, 1),
                    parallelism,
                );
            }
            if let Some(e) = &epilogue {
                let zero = T::from_f64(0.0);
                for o in g * og..(g + 1) * og {
                    let (s, t) = (e.scale[o], e.shift[o]);
                    // SAFETY: the same elements this item's GEMM just wrote.
                    let row = unsafe {
                        std::slice::from_raw_parts_mut(
                            y_ptr.get().add((b * geo.c_out + o) * n + n0),
                            tn,
                        )
                    };
                    for v in row {
                        let a = *v * s + t;
                        *v = if e.relu && a < zero { zero } else { a };
                    }
                }
            }
        });
        // SAFETY: the items (b, g, t) cover every image, group and output row, and each GEMM
        // wrote all of its `og x tn` block (`accumulate: false` never reads `dst`).
        unsafe { y.set_len(len) };
        y
    }
}

impl CustomOp2 for Conv2dFwd {
    fn name(&self) -> &'static str {
        "d2a-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(xl.dims(), wl.dims(), self.0)?;
        let y = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let w = contiguous::<T>(ws, wl, self.name())?;
            T::to_cpu_storage_owned(Self::run(&geo, x, w))
        });
        Ok((y, Shape::from(geo.y_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = gy.apply_op2_no_bwd(
            w,
            &Conv2dInputGrad {
                cfg: self.0,
                x_dims: x.dims4()?,
            },
        )?;
        let gw = x.apply_op2_no_bwd(
            &gy,
            &Conv2dWeightGrad {
                cfg: self.0,
                w_dims: w.dims4()?,
            },
        )?;
        Ok((Some(gx), Some(gw)))
    }
}
