//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3), any dilation.
//!
//! Each 2x2 block of outputs is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4x4 input window `d` and
//! the 3x3 kernel `g` (Lavin & Gray, 2016): the 9 multiply-adds per output and input channel of
//! im2col + GEMM become 4, as 16 GEMMs (one per position `ξ` of the 4x4 transformed tile)
//! `M_ξ = U_ξ · V_ξ` over all input channels. The transforms are additions and halvings; they
//! read the input and write the output once, where im2col writes 9 copies of the input.
//!
//! The weight gradient runs the same GEMMs backwards: `dU_ξ = dM_ξ · V_ξᵀ` with `dM = A dY Aᵀ`,
//! then `dg = Gᵀ dU G` (the adjoints of the output and weight transforms). The stride-1 input
//! gradient is a forward convolution (the flipped kernel), so it runs here too.
//!
//! Dilation `d` splits each axis into `d` phases of outputs `p, p + d, p + 2d, ...`: within a
//! phase the dilated kernel is a dense 3-tap filter on every `d`-th input, so a tile is two
//! outputs `b, b + d` from four inputs `b + d·e − pad` (`e < 4`), with `b` running over the
//! bases `b mod 2d < d` below the output size.
//!
//! The arithmetic differs from im2col + GEMM by rounding only (the products are summed in
//! another order, through the transforms); the result depends on the shapes alone, never on the
//! thread count.

use gemm::Parallelism;
use rayon::iter::{IndexedParallelIterator as _, IntoParallelIterator as _, ParallelIterator as _};
use rayon::slice::ParallelSliceMut as _;

use super::affine::Epilogue;
use super::gemm::matmul;
use super::geometry::Geometry;
use super::grad::{WEIGHT_GRAD_BUDGET, WEIGHT_GRAD_CHUNKS};
use crate::ops::cpu::{Float, SharedMut, with_scratch};

/// Positions of a transformed 4x4 tile: the GEMMs of one call.
const XI: usize = 16;

/// Input channels per group below which im2col + GEMM is kept: with few channels the 16 GEMMs
/// are too thin to pay for the transforms.
const MIN_CHANNELS: usize = 64;

/// Elements of one transformed input block per position (`C_g x tiles`, 64 KiB of f32; 1 MiB
/// for the 16 positions): the tile rows of a work item are chosen so that it stays near this.
/// Against 256 KiB, the 128-channel 64x64 convolution of `d2a bench --op` ran about 25% faster
/// on 2 threads (its items then run in parallel, each in its own cache).
const BLOCK_ELEMS: usize = 1 << 14;

/// Tiles a work item holds at least where a group's transformed weights per position reach
/// [`LARGE_WEIGHTS`] elements: each item re-reads all of them.
const MIN_TILES: usize = 256;

/// Transformed weights per position (`O_g x C_g`) from which [`MIN_TILES`] applies.
const LARGE_WEIGHTS: usize = 1 << 16;

/// Elements between the 16-position blocks of successive channels beyond the `16·tn` they hold
/// (a cache line of f32). Without it, `tn = 128` tiles put the channels of a transformed block
/// 8 KiB apart, so the weight gradient's GEMM, which packs that block across its channels, read
/// 64 rows that all fell into the same cache sets: its GEMMs ran at half speed (a standalone
/// timing of the 16 GEMMs of one item: 1.35 ms at `tn` 128, 0.65 ms with the pad, 0.71 ms at
/// `tn` 129).
const CHANNEL_PAD: usize = 16;

/// Elements per channel of a transformed block of `tn` tiles: `[16][tn]`, then the pad.
fn channel_stride(tn: usize) -> usize {
    XI * tn + CHANNEL_PAD
}

/// Writes zeros into the pad after each channel's `[16][tn]` of `block` (channel stride
/// [`channel_stride`]), so that every element of the block is initialised.
fn zero_pads<T: Float>(block: &mut [std::mem::MaybeUninit<T>], tn: usize) {
    for c in block.chunks_exact_mut(channel_stride(tn)) {
        for p in &mut c[XI * tn..] {
            p.write(T::from_f64(0.0));
        }
    }
}

/// Whether [`forward`] runs this convolution: 3x3, stride 1, with enough channels per group.
pub(super) fn applies(geo: &Geometry) -> bool {
    geo.kh == 3
        && geo.kw == 3
        && geo.cfg.stride == (1, 1)
        && geo.c_in_g() >= MIN_CHANNELS
        && geo.c_out_g() >= MIN_CHANNELS
}

/// The first output (the base) of each tile along one axis of `n` outputs with dilation `d`,
/// phase by phase: `p, p + 2d, p + 4d, ...` for `p < d`.
fn bases(n: usize, d: usize) -> Vec<usize> {
    phases(n, d)
        .flat_map(|(p, count)| (0..count).map(move |k| p + 2 * d * k))
        .collect()
}

/// `(p, tiles)` of each phase `p` with at least one output, along an axis of `n` outputs with
/// dilation `d`: its tiles' bases are `p + 2d·k` for `k < tiles`.
fn phases(n: usize, d: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..d.min(n)).map(move |p| (p, (n - p).div_ceil(d).div_ceil(2)))
}

/// The tiles of one call and how they are split into work items.
struct Tiling {
    /// Tile bases along the height.
    rows: Vec<usize>,
    /// The base column of each tile along the width, in the order of the columns of the
    /// transformed blocks (phase by phase, as [`bases`]). With dilation along the width, the
    /// transforms gather and scatter through it: a phase holds only a few tiles, and a strided
    /// copy per phase cost more in loop set-up (a division each) than in copying.
    cols: Vec<usize>,
    /// Whether the width has no dilation: one phase, tiles at every other column, copied by
    /// strided loops that vectorise.
    dense_cols: bool,
    /// Tiles along the width in all.
    tw: usize,
    /// Tile rows per work item.
    rows_per_item: usize,
    /// Images and groups of the call: with the blocks of tile rows, the work items.
    batch: usize,
    groups: usize,
}

impl Tiling {
    fn new(geo: &Geometry) -> Self {
        let rows = bases(geo.ho, geo.cfg.dilation.0);
        let cols = bases(geo.wo, geo.cfg.dilation.1);
        let tw = cols.len();
        let mut per_item = BLOCK_ELEMS / (geo.c_in_g() * tw).max(1);
        if geo.c_out_g() * geo.c_in_g() >= LARGE_WEIGHTS {
            per_item = per_item.max(MIN_TILES.div_ceil(tw.max(1)));
        }
        let rows_per_item = per_item.clamp(1, rows.len().max(1));
        Self {
            rows,
            cols,
            dense_cols: geo.cfg.dilation.1 == 1,
            tw,
            rows_per_item,
            batch: geo.batch,
            groups: geo.cfg.groups,
        }
    }

    /// Blocks of tile rows per image and group.
    fn chunks(&self) -> usize {
        self.rows.len().div_ceil(self.rows_per_item)
    }

    /// Work items of the call: every (image, group, block of tile rows).
    fn items(&self) -> usize {
        self.batch * self.groups * self.chunks()
    }

    /// `(b, g, [r0, r1))` of work item `i`: its image, group and tile rows.
    fn item(&self, i: usize) -> (usize, usize, (usize, usize)) {
        let (bg, t) = (i / self.chunks(), i % self.chunks());
        let r0 = t * self.rows_per_item;
        let rows = (r0, (r0 + self.rows_per_item).min(self.rows.len()));
        (bg / self.groups, bg % self.groups, rows)
    }
}

/// `y = conv(x, w)` (then the epilogue, if any) for a convolution [`applies`] accepts.
pub(super) fn forward<T: Float>(
    geo: &Geometry,
    x: &[T],
    w: &[T],
    epilogue: Option<Epilogue<'_, T>>,
) -> Vec<T> {
    debug_assert!(applies(geo));
    let cg = geo.c_in_g();
    with_scratch(geo.c_out * XI * cg, |u| {
        let u = transform_weights(w, cg, u);
        forward_with_weights(geo, x, u, epilogue)
    })
}

/// [`forward`] with the weights already transformed.
fn forward_with_weights<T: Float>(
    geo: &Geometry,
    x: &[T],
    u: &[T],
    epilogue: Option<Epilogue<'_, T>>,
) -> Vec<T> {
    let (og, cg) = (geo.c_out_g(), geo.c_in_g());
    let tiling = Tiling::new(geo);
    let len = geo.batch * geo.c_out * geo.n();
    let mut y: Vec<T> = Vec::with_capacity(len);
    let y_ptr = SharedMut(y.as_mut_ptr());
    let items = tiling.items();
    let parallel = items >= 2 * rayon::current_num_threads();
    let tw = tiling.tw;
    let plane_in = geo.h * geo.w;
    // One item's buffer: the transformed input `[C_g][16][tn]`, then the products
    // `[O_g][16][tn]`, each channel at `channel_stride(tn)`.
    let scratch_len = (cg + og) * channel_stride(tiling.rows_per_item * tw);
    let run = |scratch: &mut [std::mem::MaybeUninit<T>], i: usize| {
        let (b, g, (r0, r1)) = tiling.item(i);
        let tn = (r1 - r0) * tw;
        let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
        let cs = channel_stride(tn);
        let (v, m) = scratch[..(cg + og) * cs].split_at_mut(cg * cs);
        transform_input(geo, &tiling, x_bg, (r0, r1), v, !parallel);
        zero_pads(m, tn);
        // SAFETY: `transform_input` wrote every element of `v` (its contract); the rest of `m`
        // is written by the GEMMs below before it is read.
        let v: &[T] = unsafe { &*(v as *const [_] as *const [T]) };
        let m_ptr = SharedMut(m.as_mut_ptr().cast::<T>());
        let u_g = &u[g * og * XI * cg..][..og * XI * cg];
        let gemm = |xi: usize| {
            // SAFETY: `M_ξ` is `og x tn` at row stride `cs` inside `m`, this item's own,
            // and no other GEMM of the item writes its elements.
            unsafe {
                matmul(
                    (og, tn, cg),
                    m_ptr.get().add(xi * tn),
                    cs,
                    false,
                    &u_g[xi * cg..],
                    (XI * cg, 1),
                    &v[xi * tn..],
                    (cs, 1),
                    Parallelism::None,
                );
            }
        };
        // Alone, an item spreads its 16 GEMMs over the threads.
        if parallel {
            (0..XI).for_each(gemm);
        } else {
            (0..XI).into_par_iter().for_each(gemm);
        }
        // SAFETY: the 16 GEMMs wrote every element of `m` but the pads (`accumulate: false`),
        // which `zero_pads` wrote.
        let m: &[T] = unsafe { std::slice::from_raw_parts(m_ptr.get(), og * cs) };
        let out = OutputBlock {
            y: y_ptr,
            first_channel: b * geo.c_out + g * og,
            channel_of_group: g * og,
        };
        transform_output(geo, &tiling, m, (r0, r1), out, epilogue, !parallel);
    };
    if parallel {
        (0..items)
            .into_par_iter()
            .for_each_init(Vec::<T>::new, |buf, i| {
                buf.reserve(scratch_len);
                run(&mut buf.spare_capacity_mut()[..scratch_len], i);
            });
    } else {
        with_scratch(scratch_len, |buf| (0..items).for_each(|i| run(buf, i)));
    }
    // SAFETY: the items cover every image, group and tile row, and the tiles of a row cover
    // every output pixel of its rows (`bases` leaves no output uncovered), all written by
    // `transform_output`.
    unsafe { y.set_len(len) };
    y
}

/// `dw` of `conv(x, w)` given `dy`, for a convolution [`applies`] accepts: per work item
/// `dU_ξ += dM_ξ · V_ξᵀ`, with `V` the input's transform (as in [`forward`]) and `dM = A dY Aᵀ`
/// the adjoint of the output transform, then `dw = Gᵀ dU G`, the adjoint of the weights'.
/// The items are summed in at most [`WEIGHT_GRAD_CHUNKS`] partial sums (with the transformed
/// weights' size in [`WEIGHT_GRAD_BUDGET`]) added in a fixed order, as the im2col kernel's.
pub(super) fn weight_grad<T: Float>(geo: &Geometry, x: &[T], gy: &[T]) -> Vec<T> {
    debug_assert!(applies(geo));
    let (og, cg) = (geo.c_out_g(), geo.c_in_g());
    let tiling = Tiling::new(geo);
    let items = tiling.items();
    let u_len = geo.c_out * XI * cg;
    let partials = items
        .min(WEIGHT_GRAD_CHUNKS)
        .min((WEIGHT_GRAD_BUDGET / u_len.max(1)).max(1));
    let tw = tiling.tw;
    let plane_in = geo.h * geo.w;
    let n = geo.n();
    let scratch_len = (cg + og) * channel_stride(tiling.rows_per_item * tw);
    // Adds item `i` into `du` (`[O][16][C_g]`), with its transforms spread over the threads
    // and its 16 GEMMs each on a thread when `alone`.
    let add_item = |du: &mut [T], scratch: &mut [std::mem::MaybeUninit<T>], i: usize, alone| {
        let (b, g, (r0, r1)) = tiling.item(i);
        let tn = (r1 - r0) * tw;
        let x_bg = &x[(b * geo.c_in + g * cg) * plane_in..][..cg * plane_in];
        let gy_bg = &gy[(b * geo.c_out + g * og) * n..][..og * n];
        let cs = channel_stride(tn);
        let (v, dm) = scratch[..(cg + og) * cs].split_at_mut(cg * cs);
        transform_input(geo, &tiling, x_bg, (r0, r1), v, alone);
        transform_grad_output(geo, &tiling, gy_bg, (r0, r1), dm, alone);
        // SAFETY: both transforms write every element of their buffers (their contracts).
        let (v, dm): (&[T], &[T]) = unsafe {
            (
                &*(v as *const [_] as *const [T]),
                &*(dm as *const [_] as *const [T]),
            )
        };
        let du_ptr = SharedMut(du.as_mut_ptr());
        let gemm = |xi: usize| {
            // SAFETY: `dU_ξ` of group g is `og x cg` at row stride `16·cg` inside `du`, and no
            // other GEMM running meanwhile writes its elements.
            unsafe {
                matmul(
                    (og, cg, tn),
                    du_ptr.get().add(g * og * XI * cg + xi * cg),
                    XI * cg,
                    true,
                    &dm[xi * tn..],
                    (cs, 1),
                    &v[xi * tn..],
                    (1, cs),
                    Parallelism::None,
                );
            }
        };
        if alone {
            (0..XI).into_par_iter().for_each(gemm);
        } else {
            (0..XI).for_each(gemm);
        }
    };
    with_scratch(partials * u_len, |du| {
        let zero = T::from_f64(0.0);
        for v in du.iter_mut() {
            v.write(zero);
        }
        // SAFETY: every element was just written.
        let du: &mut [T] = unsafe { &mut *(du as *mut [_] as *mut [T]) };
        if partials == 1 {
            with_scratch(scratch_len, |scratch| {
                (0..items).for_each(|i| add_item(du, scratch, i, true));
            });
        } else {
            du.par_chunks_mut(u_len).enumerate().for_each(|(c, du)| {
                let mut scratch = Vec::<T>::with_capacity(scratch_len);
                for i in (c * items / partials)..((c + 1) * items / partials) {
                    add_item(du, scratch.spare_capacity_mut(), i, false);
                }
            });
        }
        let (first, rest) = du.split_at_mut(u_len);
        for p in rest.chunks_exact(u_len) {
            for (a, &b) in first.iter_mut().zip(p) {
                *a += b;
            }
        }
        untransform_weights(first, cg)
    })
}

/// `dg = Gᵀ dU G` for every kernel: the adjoint of [`transform_weights`], from `du`
/// (`[O][16][C_g]`) to `[O][C_g][3][3]`.
fn untransform_weights<T: Float>(du: &[T], cg: usize) -> Vec<T> {
    let half = T::from_f64(0.5);
    // Gᵀ (u0, u1, u2, u3) = (u0 + (u1 + u2)/2, (u1 − u2)/2, (u1 + u2)/2 + u3).
    let adjoint = |[u0, u1, u2, u3]: [T; 4]| {
        let (p, m) = ((u1 + u2) * half, (u1 - u2) * half);
        [u0 + p, m, p + u3]
    };
    let c_out = du.len() / (XI * cg);
    let mut dw = vec![T::from_f64(0.0); c_out * cg * 9];
    dw.par_chunks_mut(cg * 9).enumerate().for_each(|(o, dw_o)| {
        let du_o = &du[o * XI * cg..][..XI * cg];
        for (c, g) in dw_o.chunks_exact_mut(9).enumerate() {
            let at = |xi: usize| du_o[xi * cg + c];
            // Along each row i of the 4x4 (over j), then down the columns.
            let mut rows = [[T::from_f64(0.0); 3]; 4];
            for (i, r) in rows.iter_mut().enumerate() {
                *r = adjoint([at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3)]);
            }
            for kx in 0..3 {
                let col = adjoint([rows[0][kx], rows[1][kx], rows[2][kx], rows[3][kx]]);
                for (ky, v) in col.into_iter().enumerate() {
                    g[3 * ky + kx] = v;
                }
            }
        }
    });
    dw
}

/// `A (y0, y1)`: `(y0, y0 + y1, y0 − y1, −y1)`, the adjoint of [`output_1d`].
#[inline(always)]
fn grad_output_1d<T: Float>([y0, y1]: [T; 2]) -> [T; 4] {
    [y0, y0 + y1, y0 - y1, T::from_f64(0.0) - y1]
}

/// Writes `dM = A dY Aᵀ` of every tile of tile rows `[r0, r1)` and every output channel of
/// `gy` (`O_g x Ho x Wo`) into `dm`, laid out `[O_g][16][tn]` at [`channel_stride`]: outputs
/// outside the image count as zeros. Channels spread over the threads when `parallel`.
///
/// Contract: every element of `dm` is written.
fn transform_grad_output<T: Float>(
    geo: &Geometry,
    tiling: &Tiling,
    gy: &[T],
    (r0, r1): (usize, usize),
    dm: &mut [std::mem::MaybeUninit<T>],
    parallel: bool,
) {
    let (dh, dw) = geo.cfg.dilation;
    let (ho, wo) = (geo.ho, geo.wo);
    let tw = tiling.tw;
    let tn = (r1 - r0) * tw;
    if tn == 0 {
        return;
    }
    let zero = T::from_f64(0.0);
    let fill = |(o, dm_o): (usize, &mut [std::mem::MaybeUninit<T>])| {
        let plane = &gy[o * ho * wo..][..ho * wo];
        // The 2x2 outputs of every tile of the row: `y[a][b]`, one slice over the tiles each;
        // then `A` along each tile row (`z[a][j]`).
        let mut y = vec![zero; 4 * tw];
        let mut z = vec![zero; 8 * tw];
        for (r, &by) in tiling.rows[r0..r1].iter().enumerate() {
            for (ab, y_ab) in y.chunks_exact_mut(tw).enumerate() {
                let (a, b) = (ab / 2, ab % 2);
                let oy = by + a * dh;
                if oy >= ho {
                    y_ab.fill(zero);
                    continue;
                }
                let row = &plane[oy * wo..][..wo];
                if tiling.dense_cols {
                    let inside = wo.saturating_sub(b).div_ceil(2).min(tw);
                    strided_copy(&mut y_ab[..inside], &row[b.min(wo)..]);
                    y_ab[inside..].fill(zero);
                } else {
                    for (y, &c) in y_ab.iter_mut().zip(&tiling.cols) {
                        *y = row.get(c + b * dw).copied().unwrap_or(zero);
                    }
                }
            }
            for a in 0..2 {
                let (y0, y1) = (&y[2 * a * tw..][..tw], &y[(2 * a + 1) * tw..][..tw]);
                for t in 0..tw {
                    let v = grad_output_1d([y0[t], y1[t]]);
                    for (j, v) in v.into_iter().enumerate() {
                        z[(4 * a + j) * tw + t] = v;
                    }
                }
            }
            for j in 0..4 {
                let (z0, z1) = (&z[j * tw..][..tw], &z[(4 + j) * tw..][..tw]);
                let at = |i: usize| (4 * i + j) * tn + r * tw;
                write_each(&mut dm_o[at(0)..][..tw], |t| z0[t]);
                write_each(&mut dm_o[at(1)..][..tw], |t| z0[t] + z1[t]);
                write_each(&mut dm_o[at(2)..][..tw], |t| z0[t] - z1[t]);
                write_each(&mut dm_o[at(3)..][..tw], |t| zero - z1[t]);
            }
        }
    };
    let dm = &mut dm[..geo.c_out_g() * channel_stride(tn)];
    zero_pads(dm, tn);
    if parallel {
        dm.par_chunks_exact_mut(channel_stride(tn))
            .enumerate()
            .for_each(fill);
    } else {
        dm.chunks_exact_mut(channel_stride(tn))
            .enumerate()
            .for_each(fill);
    }
}

/// `U = G g Gᵀ` for every kernel, laid out `[O][16][C_g]` (so that `U_ξ` of group `g` is the
/// `O_g x C_g` matrix at offset `g·O_g·16·C_g + ξ·C_g`, row stride `16·C_g`).
/// Written into `u` (`c_out·16·C_g` elements), which it returns initialised.
fn transform_weights<'u, T: Float>(
    w: &[T],
    cg: usize,
    u: &'u mut [std::mem::MaybeUninit<T>],
) -> &'u [T] {
    let half = T::from_f64(0.5);
    u.par_chunks_mut(XI * cg).enumerate().for_each(|(o, u_o)| {
        for c in 0..cg {
            let g = &w[(o * cg + c) * 9..][..9];
            // Rows of G g: [g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2] on each column.
            let mut gg = [T::from_f64(0.0); 12];
            for k in 0..3 {
                let (a, b, c2) = (g[k], g[3 + k], g[6 + k]);
                gg[k] = a;
                gg[3 + k] = (a + b + c2) * half;
                gg[6 + k] = (a - b + c2) * half;
                gg[9 + k] = c2;
            }
            for i in 0..4 {
                let (a, b, c2) = (gg[3 * i], gg[3 * i + 1], gg[3 * i + 2]);
                let row = [a, (a + b + c2) * half, (a - b + c2) * half, c2];
                for (j, v) in row.into_iter().enumerate() {
                    u_o[(4 * i + j) * cg + c].write(v);
                }
            }
        }
    });
    // SAFETY: every (o, ξ, c) was written above.
    unsafe { &*(u as *const [_] as *const [T]) }
}

/// `Bᵀ (d0, d1, d2, d3)`: `(d0 − d2, d1 + d2, d2 − d1, d1 − d3)`.
#[inline(always)]
fn input_1d<T: Float>([d0, d1, d2, d3]: [T; 4]) -> [T; 4] {
    [d0 - d2, d1 + d2, d2 - d1, d1 - d3]
}

/// Writes `V = Bᵀ d B` of every tile of tile rows `[r0, r1)` and every channel of `x`
/// (`C_g x H x W`) into `v`, laid out `[C_g][16][tn]` at [`channel_stride`]; channels spread
/// over the threads when `parallel`.
///
/// Contract: every element of `v` is written.
fn transform_input<T: Float>(
    geo: &Geometry,
    tiling: &Tiling,
    x: &[T],
    (r0, r1): (usize, usize),
    v: &mut [std::mem::MaybeUninit<T>],
    parallel: bool,
) {
    let (dh, dw) = geo.cfg.dilation;
    let (ph, pw) = geo.cfg.padding;
    let tw = tiling.tw;
    let tn = (r1 - r0) * tw;
    // A padded row: the input at `pw..pw + W`, zeros around it, wide enough for the last tile.
    let wp = geo.w + 2 * pw + 3 * dw + 1;
    let zero = T::from_f64(0.0);
    let fill = |(c, v_c): (usize, &mut [std::mem::MaybeUninit<T>])| {
        let plane = &x[c * geo.h * geo.w..][..geo.h * geo.w];
        // The four input rows of a tile row, padded, then Bᵀ applied down the columns.
        let mut rows = vec![zero; 4 * wp];
        let mut mixed = vec![zero; 4 * wp];
        let mut gathered = vec![zero; 4 * tw];
        for (r, &by) in tiling.rows[r0..r1].iter().enumerate() {
            for e in 0..4 {
                let row = &mut rows[e * wp..(e + 1) * wp];
                match (by + e * dh).checked_sub(ph).filter(|&iy| iy < geo.h) {
                    Some(iy) => row[pw..pw + geo.w].copy_from_slice(&plane[iy * geo.w..][..geo.w]),
                    None => row[pw..pw + geo.w].fill(zero),
                }
            }
            let (d0, rest) = rows.split_at(wp);
            let (d1, rest) = rest.split_at(wp);
            let (d2, d3) = rest.split_at(wp);
            for i in 0..wp {
                let t = input_1d([d0[i], d1[i], d2[i], d3[i]]);
                for (q, val) in t.into_iter().enumerate() {
                    mixed[q * wp + i] = val;
                }
            }
            // Bᵀ along each row: gather the four inputs of every tile, then one pass per
            // output position over the tiles of the row (contiguous, so it vectorises).
            for (q, s) in mixed.chunks_exact(wp).enumerate() {
                for (e, g) in gathered.chunks_exact_mut(tw).enumerate() {
                    if tiling.dense_cols {
                        strided_copy(g, &s[e..]);
                    } else {
                        for (g, &c) in g.iter_mut().zip(&tiling.cols) {
                            *g = s[c + e * dw];
                        }
                    }
                }
                let (g0, rest) = gathered.split_at(tw);
                let (g1, rest) = rest.split_at(tw);
                let (g2, g3) = rest.split_at(tw);
                let at = |j: usize| (4 * q + j) * tn + r * tw;
                write_each(&mut v_c[at(0)..][..tw], |t| g0[t] - g2[t]);
                write_each(&mut v_c[at(1)..][..tw], |t| g1[t] + g2[t]);
                write_each(&mut v_c[at(2)..][..tw], |t| g2[t] - g1[t]);
                write_each(&mut v_c[at(3)..][..tw], |t| g1[t] - g3[t]);
            }
        }
    };
    if tn == 0 {
        return;
    }
    let v = &mut v[..geo.c_in_g() * channel_stride(tn)];
    zero_pads(v, tn);
    if parallel {
        v.par_chunks_exact_mut(channel_stride(tn))
            .enumerate()
            .for_each(fill);
    } else {
        v.chunks_exact_mut(channel_stride(tn))
            .enumerate()
            .for_each(fill);
    }
}

/// `out[t] = f(t)` for every `t`: a loop the compiler vectorises once `f` is inlined.
#[inline(always)]
fn write_each<T: Float>(out: &mut [std::mem::MaybeUninit<T>], f: impl Fn(usize) -> T) {
    for (t, o) in out.iter_mut().enumerate() {
        o.write(f(t));
    }
}

/// `dst[k] = src[2k]`: a loop without bounds checks, which becomes shuffles.
#[inline(always)]
fn strided_copy<T: Float>(dst: &mut [T], src: &[T]) {
    let Some((last, head)) = dst.split_last_mut() else {
        return;
    };
    for (d, c) in head.iter_mut().zip(src.chunks_exact(2)) {
        *d = c[0];
    }
    *last = src[2 * head.len()];
}

/// `dst[2k] = f(vals[k])` for every `k`, as [`strided_copy`].
#[inline(always)]
fn strided_store<T: Float>(dst: &mut [T], vals: &[T], f: &impl Fn(T) -> T) {
    let Some((last, head)) = vals.split_last() else {
        return;
    };
    for (c, &v) in dst.chunks_exact_mut(2).zip(head) {
        c[0] = f(v);
    }
    dst[2 * head.len()] = f(*last);
}

/// Where one work item's outputs go: image and group of `y`.
#[derive(Clone, Copy)]
struct OutputBlock<T> {
    y: SharedMut<T>,
    /// Index of the group's first output plane in `y` (`b·O + g·O_g`).
    first_channel: usize,
    /// The same channel's index within the image (for the epilogue's scale and shift).
    channel_of_group: usize,
}

/// `Aᵀ (m0, m1, m2, m3)`: `(m0 + m1 + m2, m1 − m2 − m3)`.
#[inline(always)]
fn output_1d<T: Float>([m0, m1, m2, m3]: [T; 4]) -> [T; 2] {
    [m0 + m1 + m2, m1 - m2 - m3]
}

/// Writes `Y = Aᵀ M A` (then the epilogue) of every tile of tile rows `[r0, r1)` from `m`
/// (`[O_g][16][tn]` at [`channel_stride`]) into the outputs of `out`; output channels spread
/// over the threads when `parallel`.
fn transform_output<T: Float>(
    geo: &Geometry,
    tiling: &Tiling,
    m: &[T],
    (r0, r1): (usize, usize),
    out: OutputBlock<T>,
    epilogue: Option<Epilogue<'_, T>>,
    parallel: bool,
) {
    let (dh, dw) = geo.cfg.dilation;
    let tw = tiling.tw;
    let tn = (r1 - r0) * tw;
    let (ho, wo) = (geo.ho, geo.wo);
    let zero = T::from_f64(0.0);
    let plane = |o: usize| {
        let m_o = &m[o * channel_stride(tn)..][..XI * tn];
        let (scale, shift, relu) = match &epilogue {
            Some(e) => {
                let c = out.channel_of_group + o;
                (e.scale[c], e.shift[c], e.relu)
            }
            None => (T::from_f64(1.0), zero, false),
        };
        let finish = |v: T| {
            let a = if epilogue.is_some() {
                v * scale + shift
            } else {
                v
            };
            if relu && a < zero { zero } else { a }
        };
        let y_o = out.y.get().wrapping_add((out.first_channel + o) * ho * wo);
        // Per tile row: Aᵀ along the rows of every tile at once (`s[i][j]`, one slice over
        // the row's tiles each), then down the columns, then each output to its pixel.
        let mut s = vec![zero; 8 * tw];
        let mut y2 = vec![zero; 2 * tw];
        for (r, &by) in tiling.rows[r0..r1].iter().enumerate() {
            let at = |xi: usize| &m_o[xi * tn + r * tw..][..tw];
            for (i, s_i) in s.chunks_exact_mut(2 * tw).enumerate() {
                let (m0, m1, m2, m3) = (at(4 * i), at(4 * i + 1), at(4 * i + 2), at(4 * i + 3));
                let (s0, s1) = s_i.split_at_mut(tw);
                for t in 0..tw {
                    [s0[t], s1[t]] = output_1d([m0[t], m1[t], m2[t], m3[t]]);
                }
            }
            for j in 0..2 {
                let col = |i: usize| &s[(2 * i + j) * tw..][..tw];
                let (c0, c1, c2, c3) = (col(0), col(1), col(2), col(3));
                let (y0, y1) = y2.split_at_mut(tw);
                for t in 0..tw {
                    [y0[t], y1[t]] = output_1d([c0[t], c1[t], c2[t], c3[t]]);
                }
                for (i, y_i) in y2.chunks_exact(tw).enumerate() {
                    let oy = by + i * dh;
                    if oy >= ho {
                        continue;
                    }
                    // SAFETY: row `oy` of plane `first_channel + o` of `y`: only this
                    // (item, channel) writes it (the tile rows partition the output rows, the
                    // items the tile rows), and it holds no other reference to it meanwhile.
                    let y_row = unsafe { std::slice::from_raw_parts_mut(y_o.add(oy * wo), wo) };
                    if tiling.dense_cols {
                        // Tiles whose output `j + 2k` is inside the row.
                        let inside = wo.saturating_sub(j).div_ceil(2).min(tw);
                        strided_store(&mut y_row[j.min(wo)..], &y_i[..inside], &finish);
                    } else {
                        for (&v, &c) in y_i.iter().zip(&tiling.cols) {
                            if let Some(y) = y_row.get_mut(c + j * dw) {
                                *y = finish(v);
                            }
                        }
                    }
                }
            }
        }
    };
    let og = geo.c_out_g();
    if parallel {
        (0..og).into_par_iter().for_each(plane);
    } else {
        (0..og).for_each(plane);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Conv2dConfig;
    use super::super::forward::Conv2dFwd;
    use super::super::grad::Conv2dWeightGrad;
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values<T: Float>(n: usize, seed: u64) -> Vec<T> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                T::from_f64((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
            })
            .collect()
    }

    /// Largest difference relative to the largest magnitude of `want`.
    fn rel_diff<T: Float>(got: &[T], want: &[T]) -> f64 {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.to_f64().abs()));
        let diff = got
            .iter()
            .zip(want)
            .fold(0.0f64, |m, (a, b)| m.max((a.to_f64() - b.to_f64()).abs()));
        diff / scale.max(f64::MIN_POSITIVE)
    }

    fn geometries() -> Vec<([usize; 4], usize, Conv2dConfig)> {
        let cfg = |padding, dilation, groups| Conv2dConfig {
            stride: (1, 1),
            padding,
            dilation,
            groups,
        };
        let c = MIN_CHANNELS;
        vec![
            // Even and odd sizes, "same" padding: every tile whole, or the last row and
            // column of tiles half outside.
            ([2, c, 8, 8], c, cfg((1, 1), (1, 1), 1)),
            ([1, c, 9, 7], c + 8, cfg((1, 1), (1, 1), 1)),
            // No padding, padding 2 (outputs whose windows are mostly zeros), per axis.
            ([1, c + 16, 11, 6], c, cfg((0, 2), (1, 1), 1)),
            // Dilations 2 and 5 (RAB's), odd phase counts, per-axis dilation and padding.
            ([1, c, 13, 10], c, cfg((2, 2), (2, 2), 1)),
            ([2, c, 17, 23], c, cfg((5, 5), (5, 5), 1)),
            ([1, c, 12, 15], c, cfg((1, 3), (1, 3), 1)),
            // Two groups; an output of one pixel.
            ([1, 2 * c, 10, 9], 2 * c, cfg((1, 1), (1, 1), 2)),
            ([1, c, 3, 3], c, cfg((0, 0), (1, 1), 1)),
            // Enough tiles for several work items, and large weights (one item per image).
            ([1, c, 70, 64], c, cfg((1, 1), (1, 1), 1)),
            ([1, 256, 18, 20], 256, cfg((2, 2), (2, 2), 1)),
        ]
    }

    /// Winograd's output equals im2col + GEMM's up to rounding, with and without the epilogue,
    /// in f64 and f32, for every geometry it accepts.
    #[test]
    fn winograd_matches_im2col_gemm() {
        for (i, (x_dims, c_out, cfg)) in geometries().into_iter().enumerate() {
            let w_dims = [c_out, x_dims[1] / cfg.groups, 3, 3];
            let geo = Geometry::new(&x_dims, &w_dims, cfg).unwrap();
            assert!(applies(&geo), "geometry {i} should run by Winograd");
            let x64: Vec<f64> = values(x_dims.iter().product(), 2 * i as u64);
            let w64: Vec<f64> = values(w_dims.iter().product(), 2 * i as u64 + 1);
            let scale: Vec<f64> = values(c_out, 99);
            let shift: Vec<f64> = values(c_out, 98);
            for relu in [None, Some(false), Some(true)] {
                let e = relu.map(|relu| Epilogue {
                    scale: &scale,
                    shift: &shift,
                    relu,
                });
                let want = Conv2dFwd::im2col_gemm(&geo, &x64, &w64, e);
                let got = forward(&geo, &x64, &w64, e);
                let d = rel_diff(&got, &want);
                assert!(
                    d < 1e-13,
                    "geometry {i} ({cfg:?}), epilogue {relu:?}: f64 {d:e}"
                );
            }
            let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
            let w32: Vec<f32> = w64.iter().map(|&v| v as f32).collect();
            let want = Conv2dFwd::im2col_gemm(&geo, &x32, &w32, None);
            let d = rel_diff(&forward(&geo, &x32, &w32, None), &want);
            assert!(d < 1e-5, "geometry {i} ({cfg:?}): f32 {d:e}");
        }
    }

    /// Winograd's weight gradient equals im2col + GEMM's up to rounding, in f64 and f32.
    #[test]
    fn winograd_weight_gradient_matches_im2col_gemm() {
        for (i, (x_dims, c_out, cfg)) in geometries().into_iter().enumerate() {
            let w_dims = [c_out, x_dims[1] / cfg.groups, 3, 3];
            let geo = Geometry::new(&x_dims, &w_dims, cfg).unwrap();
            let x64: Vec<f64> = values(x_dims.iter().product(), 3 * i as u64);
            let gy64: Vec<f64> = values(geo.y_dims().iter().product(), 3 * i as u64 + 2);
            let want = Conv2dWeightGrad::im2col_gemm(&geo, &x64, &gy64);
            let d = rel_diff(&weight_grad(&geo, &x64, &gy64), &want);
            assert!(d < 1e-13, "geometry {i} ({cfg:?}): f64 {d:e}");
            let x32: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
            let gy32: Vec<f32> = gy64.iter().map(|&v| v as f32).collect();
            let want = Conv2dWeightGrad::im2col_gemm(&geo, &x32, &gy32);
            let d = rel_diff(&weight_grad(&geo, &x32, &gy32), &want);
            assert!(d < 1e-5, "geometry {i} ({cfg:?}): f32 {d:e}");
        }
    }

    /// The same result, bit for bit, whatever the number of threads.
    #[test]
    fn winograd_is_independent_of_the_thread_count() {
        for (x_dims, c_out, cfg) in geometries() {
            let w_dims = [c_out, x_dims[1] / cfg.groups, 3, 3];
            let geo = Geometry::new(&x_dims, &w_dims, cfg).unwrap();
            let x: Vec<f32> = values(x_dims.iter().product(), 7);
            let w: Vec<f32> = values(w_dims.iter().product(), 8);
            let gy: Vec<f32> = values(geo.y_dims().iter().product(), 9);
            let run = |threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| (forward(&geo, &x, &w, None), weight_grad(&geo, &x, &gy)))
            };
            let one = run(1);
            for threads in [2, 3, 8] {
                assert!(run(threads) == one, "{cfg:?} differs on {threads} threads");
            }
        }
    }

    /// Which convolutions take this path.
    #[test]
    fn winograd_applies_to_3x3_stride_1_with_enough_channels() {
        let geo = |c: usize, k: usize, stride: usize, groups: usize| {
            let cfg = Conv2dConfig::square(stride, 1, 1, groups);
            Geometry::new(&[1, c, 8, 8], &[c, c / groups, k, k], cfg).unwrap()
        };
        let c = MIN_CHANNELS;
        assert!(applies(&geo(c, 3, 1, 1)));
        assert!(!applies(&geo(c / 2, 3, 1, 1)), "too few channels");
        assert!(
            !applies(&geo(4 * c, 3, 1, 32)),
            "too few channels per group"
        );
        assert!(!applies(&geo(c, 3, 2, 1)), "stride 2");
        assert!(!applies(&geo(c, 1, 1, 1)), "1x1");
    }
}
