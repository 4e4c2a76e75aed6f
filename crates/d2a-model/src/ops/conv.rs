//! 2-D convolution for any stride, padding, dilation and groups, with both gradients.
//!
//! candle 0.11's own conv2d backward fails for stride 2 on non-square inputs and runs grouped
//! convolutions as one convolution per group. This kernel lowers each (image, group) pair to one
//! GEMM over an im2col buffer on the `gemm` crate: forward `Y_g = W_g · cols`, weight gradient
//! `dW_g += dY_g · colsᵀ`, input gradient `cols' = W_gᵀ · dY_g` scattered back by col2im.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType as _, bail,
};
use gemm::Parallelism;
use rayon::iter::{IndexedParallelIterator as _, IntoParallelIterator as _, ParallelIterator as _};
use rayon::slice::ParallelSliceMut as _;

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

    /// Output rows per tile: a tile's im2col block (`k() x rows·wo`) stays near [`TILE_ELEMS`]
    /// elements, so it lives in cache and costs no page faults.
    fn rows_per_tile(&self) -> usize {
        (TILE_ELEMS / (self.k() * self.wo).max(1)).clamp(1, self.ho.max(1))
    }

    fn tiles(&self) -> usize {
        self.ho.div_ceil(self.rows_per_tile())
    }

    /// Output rows `[oy0, oy1)` of tile `t`.
    fn tile_rows(&self, t: usize) -> (usize, usize) {
        let rows = self.rows_per_tile();
        (t * rows, ((t + 1) * rows).min(self.ho))
    }

    /// Fills `cols` (`k() x (oy1 − oy0)·wo`, row-major) with the im2col block of output rows
    /// `[oy0, oy1)` from the group's input planes `x` (`C_g x H x W`).
    fn im2col<T: Float>(&self, x: &[T], (oy0, oy1): (usize, usize), cols: &mut Vec<T>) {
        let (sh, sw) = self.cfg.stride;
        let (ph, pw) = self.cfg.padding;
        let (dh, dw) = self.cfg.dilation;
        let zero = T::from_f64(0.0);
        let tn = (oy1 - oy0) * self.wo;
        cols.resize(self.k() * tn, zero);
        for (row, out) in cols.chunks_exact_mut(tn).enumerate() {
            let (c, ky, kx) = (
                row / (self.kh * self.kw),
                row / self.kw % self.kh,
                row % self.kw,
            );
            let plane = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            // Output columns whose input column is inside the image: `[lo, hi)`.
            let shift = kx * dw;
            let lo = pw.saturating_sub(shift).div_ceil(sw).min(self.wo);
            let hi = (self.w + pw)
                .checked_sub(shift)
                .map_or(0, |e| e.div_ceil(sw))
                .clamp(lo, self.wo);
            for (oy, out_row) in (oy0..oy1).zip(out.chunks_exact_mut(self.wo)) {
                let Some(iy) = Self::src(oy, ky, sh, dh, ph, self.h) else {
                    out_row.fill(zero);
                    continue;
                };
                let in_row = &plane[iy * self.w..(iy + 1) * self.w];
                out_row[..lo].fill(zero);
                out_row[hi..].fill(zero);
                if lo == hi {
                    continue;
                }
                let first = lo * sw + shift - pw;
                if sw == 1 {
                    out_row[lo..hi].copy_from_slice(&in_row[first..first + hi - lo]);
                } else {
                    for (v, &s) in out_row[lo..hi]
                        .iter_mut()
                        .zip(in_row[first..].iter().step_by(sw))
                    {
                        *v = s;
                    }
                }
            }
        }
    }

    /// Adds `cols` (`k() x (oy1 − oy0)·wo`) back into the group's input-gradient planes `gx`.
    fn col2im<T: Float>(&self, cols: &[T], (oy0, oy1): (usize, usize), gx: &mut [T]) {
        let (sh, sw) = self.cfg.stride;
        let (ph, pw) = self.cfg.padding;
        let (dh, dw) = self.cfg.dilation;
        let tn = (oy1 - oy0) * self.wo;
        for (row, col) in cols.chunks_exact(tn).enumerate() {
            let (c, ky, kx) = (
                row / (self.kh * self.kw),
                row / self.kw % self.kh,
                row % self.kw,
            );
            let plane = &mut gx[c * self.h * self.w..(c + 1) * self.h * self.w];
            for (oy, col_row) in (oy0..oy1).zip(col.chunks_exact(self.wo)) {
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

    /// The convolution whose forward pass is this one's input gradient, when there is one:
    /// stride 1 and padding at most the dilated kernel's reach. It maps `dY` (`c_out` channels)
    /// back to `c_in` channels with the kernel flipped and its in/out axes swapped per group.
    fn transposed(&self) -> Option<Self> {
        let (ph, pw) = self.cfg.padding;
        let reach = (
            self.cfg.dilation.0 * (self.kh - 1),
            self.cfg.dilation.1 * (self.kw - 1),
        );
        if self.cfg.stride != (1, 1) || ph > reach.0 || pw > reach.1 {
            return None;
        }
        Some(Self {
            cfg: Conv2dConfig {
                padding: (reach.0 - ph, reach.1 - pw),
                ..self.cfg
            },
            c_in: self.c_out,
            c_out: self.c_in,
            h: self.ho,
            w: self.wo,
            ho: self.h,
            wo: self.w,
            ..*self
        })
    }

    /// The weights of [`Geometry::transposed`]: `w'[g·cg + c, o, ky, kx] = w[g·og + o, c,
    /// kh−1−ky, kw−1−kx]`.
    fn transpose_weights<T: Float>(&self, w: &[T]) -> Vec<T> {
        let (og, cg, taps) = (self.c_out_g(), self.c_in_g(), self.kh * self.kw);
        let mut out = vec![T::from_f64(0.0); w.len()];
        for g in 0..self.cfg.groups {
            for o in 0..og {
                for c in 0..cg {
                    let src = &w[((g * og + o) * cg + c) * taps..][..taps];
                    let dst = &mut out[((g * cg + c) * og + o) * taps..][..taps];
                    for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                        *d = *s;
                    }
                }
            }
        }
        out
    }

    /// Work items of one call: every (image, group, tile of output rows).
    fn items(&self) -> usize {
        self.batch * self.cfg.groups * self.tiles()
    }

    /// `(b, g, tile)` of work item `i`.
    fn item(&self, i: usize) -> (usize, usize, usize) {
        let tiles = self.tiles();
        let (bg, t) = (i / tiles, i % tiles);
        (bg / self.cfg.groups, bg % self.cfg.groups, t)
    }

    /// Whether to spread work items over the threads (each GEMM then single-threaded), rather
    /// than run them in turn with threaded GEMMs: when there are enough of them.
    fn parallel_items(&self) -> bool {
        self.items() >= 2 * rayon::current_num_threads()
    }

    /// Parallelism handed to each GEMM.
    fn gemm_parallelism(&self) -> Parallelism {
        if self.parallel_items() || self.c_out_g() * self.k() * self.n() < 1 << 18 {
            Parallelism::None
        } else {
            Parallelism::Rayon(rayon::current_num_threads())
        }
    }
}

/// Elements of the im2col block one tile works on (256 KiB of f32).
const TILE_ELEMS: usize = 1 << 16;

/// Most partial weight gradients summed at the end of a weight-gradient call; fixed, so that the
/// summation order (and so the result, bit for bit) does not depend on the number of threads.
const WEIGHT_GRAD_CHUNKS: usize = 8;

/// Most elements the partial weight gradients of one call may hold together (64 MiB of f32).
const WEIGHT_GRAD_BUDGET: usize = 1 << 24;

/// A raw pointer that work items on different threads write through, each to its own elements.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);

// SAFETY: only used for disjoint writes from the work items of one call, which ends before the
// buffer is read or dropped.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `f(scratch, item)` for items `0..n`, on all threads when `parallel`, each thread with its
/// own scratch buffer.
fn for_each_item<T: Float>(n: usize, parallel: bool, f: impl Fn(&mut Vec<T>, usize) + Send + Sync) {
    if parallel {
        (0..n).into_par_iter().for_each_init(Vec::new, f);
    } else {
        let mut scratch = Vec::new();
        (0..n).for_each(|i| f(&mut scratch, i));
    }
}

/// `dst (m x n, row stride dst_rs) = [dst +] lhs (m x k) · rhs (k x n)` with explicit row and
/// column strides.
///
/// # Safety
/// `dst` must be valid for writes at `i·dst_rs + j` for `i < m`, `j < n`, and nothing else may
/// access those elements during the call; `lhs` and `rhs` must cover the elements their strides
/// reach.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: Float>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_rs: usize,
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
    parallelism: Parallelism,
) {
    debug_assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    debug_assert!(k == 0 || n == 0 || rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let (one, zero) = (T::from_f64(1.0), T::from_f64(0.0));
    // SAFETY: the caller guarantees `dst`; the debug assertions above state the bounds the
    // strides reach in `lhs` and `rhs`, which are shared borrows that cannot alias `dst`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
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
    /// `y = conv(x, w)`: per (image, group, tile of output rows) one GEMM
    /// `Y[:, tile] = W_g · im2col(tile)`; 1x1 convolutions read the input in place.
    fn run<T: Float>(geo: &Geometry, x: &[T], w: &[T]) -> Vec<T> {
        Self::run_with(geo, x, w, None)
    }

    /// [`Conv2dFwd::run`], then, where `epilogue` is given, `y = y · scale[o] + shift[o]` and
    /// ReLU if asked, applied to each tile as soon as its GEMM wrote it (while it is in cache).
    fn run_with<T: Float>(
        geo: &Geometry,
        x: &[T],
        w: &[T],
        epilogue: Option<Epilogue<'_, T>>,
    ) -> Vec<T> {
        let (k, n, og, cg) = (geo.k(), geo.n(), geo.c_out_g(), geo.c_in_g());
        let plane_in = geo.h * geo.w;
        let mut y = vec![T::from_f64(0.0); geo.batch * geo.c_out * n];
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
                geo.im2col(x_bg, (oy0, oy1), cols);
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
        y
    }

    /// `dx` of `conv(x, w)` given `dy`: a forward convolution of `dy` where stride 1 allows it,
    /// else `W_gᵀ · dY` per tile scattered back by col2im (one work item per image and group).
    fn input_grad<T: Float>(geo: &Geometry, gy: &[T], w: &[T]) -> Vec<T> {
        if let Some(t) = geo.transposed() {
            return Self::run(&t, gy, &geo.transpose_weights(w));
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

    /// `dw` of `conv(x, w)` given `dy`: `dW_g += dY[:, tile] · im2col(tile)ᵀ` over every work
    /// item, in at most [`WEIGHT_GRAD_CHUNKS`] partial sums (fewer for large weights) added in
    /// a fixed order that depends on the shapes only.
    fn weight_grad<T: Float>(geo: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
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
        let parallelism = if chunks > 1 || geo.c_out_g() * k * n < 1 << 18 {
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
                    geo.im2col(x_bg, (oy0, oy1), &mut cols);
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

/// A per-output-channel affine map (and ReLU) applied to a convolution's output in its kernel.
#[derive(Clone, Copy)]
struct Epilogue<'a, T> {
    scale: &'a [T],
    shift: &'a [T],
    relu: bool,
}

/// `relu?(conv(x, w) · scale + shift)`: inputs `(x, w, [scale..., shift...])`.
struct Conv2dAffine {
    cfg: Conv2dConfig,
    relu: bool,
}

impl CustomOp3 for Conv2dAffine {
    fn name(&self) -> &'static str {
        "d2a-conv2d-affine"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = Geometry::new(xl.dims(), wl.dims(), self.cfg)?;
        if al.dims() != [2 * geo.c_out] {
            bail!(
                "{}: expected {} scales and shifts, got {:?}",
                self.name(),
                geo.c_out,
                al.dims()
            )
        }
        let y = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let w = contiguous::<T>(ws, wl, self.name())?;
            let (scale, shift) = contiguous::<T>(a_s, al, self.name())?.split_at(geo.c_out);
            let epilogue = Epilogue {
                scale,
                shift,
                relu: self.relu,
            };
            T::to_cpu_storage_owned(Conv2dFwd::run_with(&geo, x, w, Some(epilogue)))
        });
        Ok((y, Shape::from(geo.y_dims().to_vec())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = w.dim(0)?;
        // Through the ReLU: nothing where it clipped (PyTorch's gradient at 0 is 0 too).
        let gy = if self.relu {
            (gy * y.gt(0.0)?.to_dtype(gy.dtype())?)?
        } else {
            gy.clone()
        };
        // The convolution's own output, recomputed: the scales' gradient needs it.
        let z = x.apply_op2_no_bwd(w, &Conv2dFwd(self.cfg))?;
        let gscale = (&gy * &z)?.sum((0, 2, 3))?;
        let gshift = gy.sum((0, 2, 3))?;
        let scale = affine.narrow(0, 0, c)?.reshape((1, c, 1, 1))?;
        let gz = gy.broadcast_mul(&scale)?;
        let (gx, gw) = Conv2dFwd(self.cfg).bwd(x, w, &z, &gz)?;
        Ok((gx, gw, Some(Tensor::cat(&[gscale, gshift], 0)?)))
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
            T::to_cpu_storage_owned(Conv2dFwd::input_grad(&geo, gy, wt))
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
            T::to_cpu_storage_owned(Conv2dFwd::weight_grad(&geo, x, gy))
        });
        Ok((gw, Shape::from(geo.w_dims().to_vec())))
    }
}

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

fn candle_conv2d(x: &Tensor, weight: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
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

/// 2-D convolution of `x` with `weight`, differentiable in both.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`, f32 or f64, on the CPU;
/// - `weight`: `[O, C / groups, KH, KW]`;
/// - returns `[B, O, (H + 2·pad − dil·(KH − 1) − 1) / stride + 1, ...]`, as PyTorch's `conv2d`.
pub fn conv2d(x: &Tensor, weight: &Tensor, cfg: Conv2dConfig) -> Result<Tensor> {
    Geometry::new(x.dims(), weight.dims(), cfg)?;
    if conv_backend() == ConvBackend::Candle {
        return candle_conv2d(x, weight, cfg);
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
    Geometry::new(x.dims(), weight.dims(), cfg)?;
    if conv_backend() == ConvBackend::Candle {
        let c = (1, scale.dim(0)?, 1, 1);
        let y = candle_conv2d(x, weight, cfg)?
            .broadcast_mul(&scale.reshape(c)?)?
            .broadcast_add(&shift.reshape(c)?)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    let affine = Tensor::cat(&[scale, shift], 0)?.to_dtype(x.dtype())?;
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &affine, Conv2dAffine { cfg, relu })
}
