//! 2-D convolution for any stride, padding, dilation and groups, with both gradients.
//!
//! candle 0.11's own conv2d backward fails for stride 2 on non-square inputs and runs grouped
//! convolutions as one convolution per group. This kernel lowers each (image, group) pair to one
//! GEMM over an im2col buffer on the `gemm` crate: forward `Y_g = W_g · cols`, weight gradient
//! `dW_g += dY_g · colsᵀ`, input gradient `cols' = W_gᵀ · dY_g` scattered back by col2im.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType as _, bail};
use gemm::Parallelism;

use super::cpu::{Float, contiguous, with_float};

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

/// All sizes of one convolution call, checked.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    cfg: Conv2dConfig,
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], cfg: Conv2dConfig) -> Result<Self> {
        let (&[batch, c_in, h, w], &[c_out, c_in_g, kh, kw]) = (x, weight) else {
            bail!(
                "conv2d: expected input [B, C, H, W] and weight [O, C/groups, KH, KW], got {x:?} and {weight:?}"
            )
        };
        let g = cfg.groups;
        if g == 0 || c_in % g != 0 || c_out % g != 0 || c_in_g * g != c_in {
            bail!(
                "conv2d: {c_in} input and {c_out} output channels do not fit {g} groups with weight {weight:?}"
            )
        }
        if [cfg.stride.0, cfg.stride.1, cfg.dilation.0, cfg.dilation.1].contains(&0)
            || kh == 0
            || kw == 0
        {
            bail!(
                "conv2d: stride, dilation and kernel size must be positive ({cfg:?}, kernel {kh}x{kw})"
            )
        }
        let out = |n: usize, pad: usize, dil: usize, k: usize, stride: usize| {
            (n + 2 * pad)
                .checked_sub(dil * (k - 1) + 1)
                .map(|v| v / stride + 1)
        };
        let (Some(ho), Some(wo)) = (
            out(h, cfg.padding.0, cfg.dilation.0, kh, cfg.stride.0),
            out(w, cfg.padding.1, cfg.dilation.1, kw, cfg.stride.1),
        ) else {
            bail!("conv2d: input {h}x{w} is smaller than the dilated kernel {kh}x{kw} ({cfg:?})")
        };
        Ok(Self {
            cfg,
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            ho,
            wo,
        })
    }

    fn c_in_g(&self) -> usize {
        self.c_in / self.cfg.groups
    }

    fn c_out_g(&self) -> usize {
        self.c_out / self.cfg.groups
    }

    /// Rows of the im2col matrix: one per (input channel of the group, ky, kx).
    fn k(&self) -> usize {
        self.c_in_g() * self.kh * self.kw
    }

    /// Columns of the im2col matrix: one per output pixel.
    fn n(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1, stride-1, unpadded convolution reads its input as the im2col matrix directly.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.cfg.stride == (1, 1) && self.cfg.padding == (0, 0)
    }

    /// Fails unless `dims` is this convolution's output shape (for gradients).
    fn check_output(&self, dims: &[usize], op: &str) -> Result<()> {
        if dims != self.y_dims() {
            bail!(
                "{op}: gradient {dims:?} does not match the output {:?}",
                self.y_dims()
            );
        }
        Ok(())
    }

    fn x_dims(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.h, self.w]
    }

    fn w_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in_g(), self.kh, self.kw]
    }

    fn y_dims(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.ho, self.wo]
    }

    /// Input coordinate of output coordinate `o` and kernel tap `k` on one axis, if inside.
    #[inline]
    fn src(o: usize, k: usize, stride: usize, dil: usize, pad: usize, n: usize) -> Option<usize> {
        (o * stride + k * dil).checked_sub(pad).filter(|&i| i < n)
    }

    /// Fills `cols` (`k() x n()`, row-major) from the group's input planes `x` (`C_g x H x W`).
    fn im2col<T: Float>(&self, x: &[T], cols: &mut [T]) {
        let (sh, sw) = self.cfg.stride;
        let (ph, pw) = self.cfg.padding;
        let (dh, dw) = self.cfg.dilation;
        let zero = T::from_f64(0.0);
        for (row, out) in cols.chunks_exact_mut(self.n()).enumerate() {
            let (c, ky, kx) = (
                row / (self.kh * self.kw),
                row / self.kw % self.kh,
                row % self.kw,
            );
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for (oy, out_row) in out.chunks_exact_mut(self.wo).enumerate() {
                let Some(iy) = Self::src(oy, ky, sh, dh, ph, self.h) else {
                    out_row.fill(zero);
                    continue;
                };
                let in_row = &plane[iy * self.w..(iy + 1) * self.w];
                for (ox, v) in out_row.iter_mut().enumerate() {
                    *v = Self::src(ox, kx, sw, dw, pw, self.w).map_or(zero, |ix| in_row[ix]);
                }
            }
        }
    }

    /// Adds `cols` (`k() x n()`) back into the group's input-gradient planes `gx`.
    fn col2im<T: Float>(&self, cols: &[T], gx: &mut [T]) {
        let (sh, sw) = self.cfg.stride;
        let (ph, pw) = self.cfg.padding;
        let (dh, dw) = self.cfg.dilation;
        for (row, col) in cols.chunks_exact(self.n()).enumerate() {
            let (c, ky, kx) = (
                row / (self.kh * self.kw),
                row / self.kw % self.kh,
                row % self.kw,
            );
            let plane = &mut gx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for (oy, col_row) in col.chunks_exact(self.wo).enumerate() {
                let Some(iy) = Self::src(oy, ky, sh, dh, ph, self.h) else {
                    continue;
                };
                let in_row = &mut plane[iy * self.w..(iy + 1) * self.w];
                for (ox, &v) in col_row.iter().enumerate() {
                    if let Some(ix) = Self::src(ox, kx, sw, dw, pw, self.w) {
                        in_row[ix] += v;
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)` with explicit row and column strides.
#[allow(clippy::too_many_arguments)]
fn matmul<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // Threads only pay for themselves on matrices of some size.
    let parallelism = if m * n * k >= 1 << 18 {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    // SAFETY: the slices outlive the call and the debug assertions above state the bounds the
    // strides reach; `dst` does not alias `lhs` or `rhs` (a `&mut` and two `&`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { one } else { zero },
            one,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Convolution forward: `(x, w) -> y`.
struct Conv2dFwd(Conv2dConfig);

impl Conv2dFwd {
    fn run<T: Float>(geo: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
        let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
        let plane_in = geo.h * geo.w;
        let mut y = vec![T::from_f64(0.0); geo.batch * geo.c_out * n];
        let mut cols = vec![T::from_f64(0.0); if geo.is_pointwise() { 0 } else { k * n }];
        for b in 0..geo.batch {
            for g in 0..geo.cfg.groups {
                let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
                let cols: &[T] = if geo.is_pointwise() {
                    x_bg
                } else {
                    geo.im2col(x_bg, &mut cols);
                    &cols
                };
                let y_bg = &mut y[(b * geo.c_out + g * og) * n..][..og * n];
                matmul(
                    (og, n, k),
                    y_bg,
                    false,
                    &w[g * og * k..][..og * k],
                    (k, 1),
                    cols,
                    (n, 1),
                );
            }
        }
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

/// Input gradient: `(dy, w) -> dx`.
struct Conv2dInputGrad {
    cfg: Conv2dConfig,
    x_dims: (usize, usize, usize, usize),
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
            let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
            let plane_in = geo.h * geo.w;
            let mut gx = vec![T::from_f64(0.0); geo.x_dims().iter().product()];
            let mut cols = vec![T::from_f64(0.0); k * n];
            for b in 0..geo.batch {
                for g in 0..geo.cfg.groups {
                    let gy_bg = &gy[(b * geo.c_out + g * og) * n..][..og * n];
                    let gx_bg = &mut gx[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
                    let w_g = &wt[g * og * k..][..og * k];
                    if geo.is_pointwise() {
                        matmul((k, n, og), gx_bg, false, w_g, (1, k), gy_bg, (n, 1));
                    } else {
                        matmul((k, n, og), &mut cols, false, w_g, (1, k), gy_bg, (n, 1));
                        geo.col2im(&cols, gx_bg);
                    }
                }
            }
            T::to_cpu_storage_owned(gx)
        });
        Ok((gx, Shape::from(geo.x_dims().to_vec())))
    }
}

/// Weight gradient: `(x, dy) -> dw`.
struct Conv2dWeightGrad {
    cfg: Conv2dConfig,
    w_dims: (usize, usize, usize, usize),
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
            let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
            let plane_in = geo.h * geo.w;
            let mut gw = vec![T::from_f64(0.0); geo.w_dims().iter().product()];
            let mut cols = vec![T::from_f64(0.0); if geo.is_pointwise() { 0 } else { k * n }];
            for b in 0..geo.batch {
                for g in 0..geo.cfg.groups {
                    let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
                    let cols: &[T] = if geo.is_pointwise() {
                        x_bg
                    } else {
                        geo.im2col(x_bg, &mut cols);
                        &cols
                    };
                    let gy_bg = &gy[(b * geo.c_out + g * og) * n..][..og * n];
                    let gw_g = &mut gw[g * og * k..][..og * k];
                    matmul((og, k, n), gw_g, b > 0, gy_bg, (n, 1), cols, (1, n));
                }
            }
            T::to_cpu_storage_owned(gw)
        });
        Ok((gw, Shape::from(geo.w_dims().to_vec())))
    }
}

/// 2-D convolution of `x` with `weight`, differentiable in both.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`, f32 or f64, on the CPU;
/// - `weight`: `[O, C / groups, KH, KW]`;
/// - returns `[B, O, (H + 2·pad − dil·(KH − 1) − 1) / stride + 1, ...]`, as PyTorch's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
    Geometry::new(x.dims(), weight.dims(), cfg)?;
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, Conv2dFwd(cfg))
}
