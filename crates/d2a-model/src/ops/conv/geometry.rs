//! The sizes of one convolution call, checked, and the layout of its work: tiles of output
//! rows, work items, im2col and col2im.

use candle_core::{Result, bail};
use gemm::Parallelism;
use rayon::iter::{IndexedParallelIterator as _, ParallelIterator as _};
use rayon::slice::ParallelSliceMut as _;

use super::Conv2dConfig;
use crate::ops::cpu::Float;

/// Elements of the im2col block one tile works on (256 KiB of f32).
const TILE_ELEMS: usize = 1 << 16;

/// Output pixels a tile holds at least where a group's weights are large (at least
/// [`LARGE_WEIGHTS`] elements), whatever its im2col block costs: with fewer, a deep layer
/// (k = 9·2048, 28 pixels a row) would re-pack its weights for every tile of the forward and
/// re-read its whole weight-gradient accumulator for every few pixels, costing more memory
/// traffic than the GEMM itself.
const MIN_TILE_PIXELS: usize = 256;

/// Weights per group (`c_out_g · k`) from which [`MIN_TILE_PIXELS`] applies (4 MiB of f32);
/// below it the weights stay in cache across tiles, and cache-sized tiles measured faster.
const LARGE_WEIGHTS: usize = 1 << 20;

/// GEMMs smaller than this many multiply-adds run on one thread.
pub(super) const GEMM_PARALLEL_MIN: usize = 1 << 18;

/// All sizes of one convolution call, checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) cfg: Conv2dConfig,
    pub(super) batch: usize,
    pub(super) c_in: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c_out: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geometry {
    pub(super) fn new(x: &[usize], weight: &[usize], cfg: Conv2dConfig) -> Result<Self> {
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

    pub(super) fn c_in_g(&self) -> usize {
        self.c_in / self.cfg.groups
    }

    pub(super) fn c_out_g(&self) -> usize {
        self.c_out / self.cfg.groups
    }

    /// Rows of the im2col matrix: one per (input channel of the group, ky, kx).
    pub(super) fn k(&self) -> usize {
        self.c_in_g() * self.kh * self.kw
    }

    /// Columns of the im2col matrix: one per output pixel.
    pub(super) fn n(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1, stride-1, unpadded convolution reads its input as the im2col matrix directly.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.cfg.stride == (1, 1) && self.cfg.padding == (0, 0)
    }

    /// Fails unless `dims` is this convolution's output shape (for gradients).
    pub(super) fn check_output(&self, dims: &[usize], op: &str) -> Result<()> {
        if dims != self.y_dims() {
            bail!(
                "{op}: gradient {dims:?} does not match the output {:?}",
                self.y_dims()
            );
        }
        Ok(())
    }

    pub(super) fn x_dims(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.h, self.w]
    }

    pub(super) fn w_dims(&self) -> [usize; 4] {
        [self.c_out, self.c_in_g(), self.kh, self.kw]
    }

    pub(super) fn y_dims(&self) -> [usize; 4] {
        [self.batch, self.c_out, self.ho, self.wo]
    }

    /// Input coordinate of output coordinate `o` and kernel tap `k` on one axis, if inside.
    #[inline]
    pub(super) fn src(
        o: usize,
        k: usize,
        stride: usize,
        dil: usize,
        pad: usize,
        n: usize,
    ) -> Option<usize> {
        (o * stride + k * dil).checked_sub(pad).filter(|&i| i < n)
    }

    /// Output rows per tile: a tile's im2col block (`k() x rows·wo`) stays near [`TILE_ELEMS`]
    /// elements, so it lives in cache, unless that leaves a layer with large weights fewer than
    /// [`MIN_TILE_PIXELS`] pixels.
    pub(super) fn rows_per_tile(&self) -> usize {
        let wo = self.wo.max(1);
        let rows = TILE_ELEMS / (self.k() * wo).max(1);
        let rows = if self.c_out_g() * self.k() >= LARGE_WEIGHTS {
            rows.max(MIN_TILE_PIXELS.div_ceil(wo))
        } else {
            rows
        };
        rows.clamp(1, self.ho.max(1))
    }

    pub(super) fn tiles(&self) -> usize {
        self.ho.div_ceil(self.rows_per_tile())
    }

    /// Output rows `[oy0, oy1)` of tile `t`.
    pub(super) fn tile_rows(&self, t: usize) -> (usize, usize) {
        let rows = self.rows_per_tile();
        (t * rows, ((t + 1) * rows).min(self.ho))
    }

    /// Fills `cols` (`k() x (oy1 − oy0)·wo`, row-major) with the im2col block of output rows
    /// `[oy0, oy1)` from the group's input planes `x` (`C_g x H x W`), its rows spread over the
    /// threads when `parallel` (for a caller that runs one work item at a time).
    pub(super) fn im2col<T: Float>(
        &self,
        x: &[T],
        (oy0, oy1): (usize, usize),
        cols: &mut Vec<T>,
        parallel: bool,
    ) {
        let (sh, sw) = self.cfg.stride;
        let (ph, pw) = self.cfg.padding;
        let (dh, dw) = self.cfg.dilation;
        let zero = T::from_f64(0.0);
        let tn = (oy1 - oy0) * self.wo;
        // Not zero-filled where the rows below overwrite every element.
        cols.clear();
        cols.reserve(self.k() * tn);
        let fill = |(row, out): (usize, &mut [std::mem::MaybeUninit<T>])| {
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
                    out_row.fill(std::mem::MaybeUninit::new(zero));
                    continue;
                };
                let in_row = &plane[iy * self.w..(iy + 1) * self.w];
                out_row[..lo].fill(std::mem::MaybeUninit::new(zero));
                out_row[hi..].fill(std::mem::MaybeUninit::new(zero));
                if lo == hi {
                    continue;
                }
                let first = lo * sw + shift - pw;
                if sw == 1 {
                    out_row[lo..hi].write_copy_of_slice(&in_row[first..first + hi - lo]);
                } else {
                    for (v, &s) in out_row[lo..hi]
                        .iter_mut()
                        .zip(in_row[first..].iter().step_by(sw))
                    {
                        v.write(s);
                    }
                }
            }
        };
        let rows = &mut cols.spare_capacity_mut()[..self.k() * tn];
        if tn > 0 {
            if parallel {
                rows.par_chunks_exact_mut(tn).enumerate().for_each(fill);
            } else {
                rows.chunks_exact_mut(tn).enumerate().for_each(fill);
            }
        }
        // SAFETY: `fill` wrote every element of every row: zeros outside `[lo, hi)` and rows
        // outside the image, the input inside.
        unsafe { cols.set_len(self.k() * tn) };
    }

    /// Adds `cols` (`k() x (oy1 − oy0)·wo`) back into the group's input-gradient planes `gx`.
    pub(super) fn col2im<T: Float>(&self, cols: &[T], (oy0, oy1): (usize, usize), gx: &mut [T]) {
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
    pub(super) fn transposed(&self) -> Option<Self> {
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
    pub(super) fn transpose_weights<T: Float>(&self, w: &[T]) -> Vec<T> {
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
    pub(super) fn items(&self) -> usize {
        self.batch * self.cfg.groups * self.tiles()
    }

    /// `(b, g, tile)` of work item `i`.
    pub(super) fn item(&self, i: usize) -> (usize, usize, usize) {
        let tiles = self.tiles();
        let (bg, t) = (i / tiles, i % tiles);
        (bg / self.cfg.groups, bg % self.cfg.groups, t)
    }

    /// Whether to spread work items over the threads (each GEMM then single-threaded), rather
    /// than run them in turn with threaded GEMMs: when there are enough of them.
    pub(super) fn parallel_items(&self) -> bool {
        self.items() >= 2 * rayon::current_num_threads()
    }

    /// Parallelism handed to each GEMM.
    pub(super) fn gemm_parallelism(&self) -> Parallelism {
        if self.parallel_items() || self.c_out_g() * self.k() * self.n() < GEMM_PARALLEL_MIN {
            Parallelism::None
        } else {
            Parallelism::Rayon(rayon::current_num_threads())
        }
    }
}
