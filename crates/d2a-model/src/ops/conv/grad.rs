//! The two gradient ops of a convolution, each with its kernel: the input gradient
//! `(dy, w) -> dx` and the weight gradient `(x, dy) -> dw`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, WithDType as _};
use gemm::Parallelism;
use rayon::iter::{IndexedParallelIterator as _, IntoParallelIterator as _, ParallelIterator as _};
use rayon::slice::ParallelSliceMut as _;

use super::Conv2dConfig;
use super::forward::Conv2dFwd;
use super::gemm::matmul;
use super::geometry::{GEMM_PARALLEL_MIN, Geometry};
use super::winograd;
use crate::ops::cpu::{Float, contiguous, with_float};

/// Most partial weight gradients summed at the end of a weight-gradient call; fixed, so that the
/// summation order (and so the result, bit for bit) does not depend on the number of threads.
pub(super) const WEIGHT_GRAD_CHUNKS: usize = 8;

/// Most elements the partial weight gradients of one call may hold together (64 MiB of f32).
pub(super) const WEIGHT_GRAD_BUDGET: usize = 1 << 24;

/// Input gradient: `(dy, w) -> dx`.
pub(super) struct Conv2dInputGrad {
    pub(super) cfg: Conv2dConfig,
    pub(super) x_dims: (usize, usize, usize, usize),
}

impl Conv2dInputGrad {
    /// `dx` of `conv(x, w)` given `dy`: a forward convolution of `dy` where stride 1 allows it,
    /// else `W_gᵀ · dY` per tile scattered back by col2im (one work item per image and group).
    fn kernel<T: Float>(geo: &Geometry, gy: &[T], w: &[T]) -> Vec<T> {
        if let Some(t) = geo.transposed() {
            return Conv2dFwd::run(&t, gy, &geo.transpose_weights(w));
        }
        let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
        let plane_in = geo.h * geo.w;
        let mut gx = vec![T::from_f64(0.0); geo.x_dims().iter().product()];
        let per_image_group = geo.batch * geo.cfg.groups;
        let parallel = per_image_group >= 2 * rayon::current_num_threads();
        let parallelism = if parallel {
            Parallelism::None
        } else {
            geo.gemm_parallelism()
        };
        let run = |cols: &mut Vec<T>, (bg, gx_bg): (usize, &mut [T])| {
            let (b, g) = (bg / geo.cfg.groups, bg % geo.cfg.groups);
            let w_g = &w[g * og * k..][..og * k];
            for t in 0..geo.tiles() {
                let (oy0, oy1) = geo.tile_rows(t);
                let (n0, tn) = (oy0 * geo.wo, (oy1 - oy0) * geo.wo);
                cols.resize(k * tn, T::from_f64(0.0));
                // SAFETY: `cols` holds `k x tn` elements and is this item's own buffer.
                unsafe {
                    matmul(
                        (k, tn, og),
                        cols.as_mut_ptr(),
                        tn,
                        false,
                        w_g,
                        (1, k),
                        &gy[(b * geo.c_out + g * og) * n + n0..],
                        (n, 1),
                        parallelism,
                    );
                }
                geo.col2im(cols, (oy0, oy1), gx_bg);
            }
        };
        if parallel {
            gx.par_chunks_mut(cg * plane_in)
                .enumerate()
                .for_each_init(Vec::new, run);
        } else {
            let mut cols = Vec::new();
            gx.chunks_mut(cg * plane_in)
                .enumerate()
                .for_each(|item| run(&mut cols, item));
        }
        gx
    }
}

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "d2a-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = self.x_dims;
        let geo = Geometry::new(&[b, c, h, w], wl.dims(), self.cfg)?;
        geo.check_output(gl.dims(), self.name())?;
        let gx = with_float!(gs, self.name(), |T| {
            let gy = contiguous::<T>(gs, gl, self.name())?;
            let wt = contiguous::<T>(ws, wl, self.name())?;
            T::to_cpu_storage_owned(Conv2dInputGrad::kernel(&geo, gy, wt))
        });
        Ok((gx, Shape::from(geo.x_dims().to_vec())))
    }
}

/// Weight gradient: `(x, dy) -> dw`.
pub(super) struct Conv2dWeightGrad {
    pub(super) cfg: Conv2dConfig,
    pub(super) w_dims: (usize, usize, usize, usize),
}

impl Conv2dWeightGrad {
    /// `dw` of `conv(x, w)` given `dy`: by Winograd's F(2x2, 3x3) where the forward runs by it
    /// ([`winograd::weight_grad`]), else [`Conv2dWeightGrad::im2col_gemm`].
    fn kernel<T: Float>(geo: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
        if winograd::applies(geo) {
            winograd::weight_grad(geo, x, gy)
        } else {
            Self::im2col_gemm(geo, x, gy)
        }
    }

    /// `dw` of `conv(x, w)` given `dy`: `dW_g += dY[:, tile] · im2col(tile)ᵀ` over every work
    /// item, in at most [`WEIGHT_GRAD_CHUNKS`] partial sums (fewer for large weights) added in
    /// a fixed order that depends on the shapes only.
    pub(super) fn im2col_gemm<T: Float>(geo: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
        let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
        let plane_in = geo.h * geo.w;
        let w_len = geo.c_out * k;
        let items = geo.items();
        // A function of the shapes alone (never of the thread count), so the summation order is
        // fixed; capped so the partial sums of a large weight cost at most WEIGHT_GRAD_BUDGET
        // elements (one sum, with each GEMM parallel inside, for the largest).
        let chunks = items
            .min(WEIGHT_GRAD_CHUNKS)
            .min((WEIGHT_GRAD_BUDGET / w_len.max(1)).max(1));
        let parallelism = if chunks > 1 || geo.c_out_g() * k * n < GEMM_PARALLEL_MIN {
            Parallelism::None
        } else {
            Parallelism::Rayon(rayon::current_num_threads())
        };
        let partial = |c: usize| {
            let mut gw = vec![T::from_f64(0.0); w_len];
            let mut cols = Vec::new();
            for i in (c * items / chunks)..((c + 1) * items / chunks) {
                let (b, g, t) = geo.item(i);
                let (oy0, oy1) = geo.tile_rows(t);
                let (n0, tn) = (oy0 * geo.wo, (oy1 - oy0) * geo.wo);
                let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
                let (rhs, rhs_cs) = if geo.is_pointwise() {
                    (&x_bg[n0..], n)
                } else {
                    geo.im2col(x_bg, (oy0, oy1), &mut cols, chunks == 1);
                    (&cols[..], tn)
                };
                // SAFETY: `gw` is this chunk's own buffer; group g's block is `og x k`.
                unsafe {
                    matmul(
                        (og, k, tn),
                        gw.as_mut_ptr().add(g * og * k),
                        k,
                        true,
                        &gy[(b * geo.c_out + g * og) * n + n0..],
                        (n, 1),
                        rhs,
                        (1, rhs_cs),
                        parallelism,
                    );
                }
            }
            gw
        };
        let partials: Vec<Vec<T>> = if chunks > 1 {
            (0..chunks).into_par_iter().map(partial).collect()
        } else {
            vec![partial(0)]
        };
        let mut partials = partials.into_iter();
        let mut gw = partials.next().unwrap_or_default();
        for p in partials {
            for (a, b) in gw.iter_mut().zip(&p) {
                *a += *b;
            }
        }
        gw
    }
}

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "d2a-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (o, c, kh, kw) = self.w_dims;
        let geo = Geometry::new(xl.dims(), &[o, c, kh, kw], self.cfg)?;
        geo.check_output(gl.dims(), self.name())?;
        let gw = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let gy = contiguous::<T>(gs, gl, self.name())?;
            T::to_cpu_storage_owned(Conv2dWeightGrad::kernel(&geo, x, gy))
        });
        Ok((gw, Shape::from(geo.w_dims().to_vec())))
    }
}
