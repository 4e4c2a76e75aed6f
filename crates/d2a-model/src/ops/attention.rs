//! Applying a channel map and a spatial map to a feature: `x ⊙ Mc ⊗ Ms` (SPEC §2.2–2.3), as one
//! kernel forward and one backward.
//!
//! As two broadcast multiplies on candle's ops the apply costs two passes and an intermediate
//! forward, and four broadcast multiplies, two strided reductions and their allocations
//! backward; every decoder stage of the D2A U-Net applies it twice (GAM and DAM). Here the
//! forward is one pass and the backward one pass that writes `dx` and sums both map gradients.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType as _, bail};
use rayon::iter::{IntoParallelIterator as _, ParallelIterator as _};

use super::conv::runs_composed;
use super::cpu::{Float, LANES, SharedMut, combine_lanes, contiguous, par_planes, with_float};

/// Pixels of one work item of the backward: each item sums its own partial channel-map
/// gradients, combined afterwards in item order, so the result does not depend on the threads.
const CHUNK: usize = 4096;

/// `x * mc * ms` with broadcasting, differentiable in all three.
///
/// # Shapes
/// - `x`: `[B, C, H, W]`; `mc`: `[B, C, 1, 1]` (channel attention); `ms`: `[B, 1, H, W]`
///   (spatial attention); returns `[B, C, H, W]`.
pub fn attend(x: &Tensor, mc: &Tensor, ms: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if mc.dims() != [b, c, 1, 1] || ms.dims() != [b, 1, h, w] {
        bail!(
            "attend: for x {:?} expected mc [{b}, {c}, 1, 1] and ms [{b}, 1, {h}, {w}], got {:?} and {:?}",
            x.dims(),
            mc.dims(),
            ms.dims()
        )
    }
    if runs_composed(x) {
        return x.broadcast_mul(mc)?.broadcast_mul(ms);
    }
    x.contiguous()?.apply_op3(
        &mc.contiguous()?,
        &ms.contiguous()?,
        Attend {
            dims: (b, c, h * w),
        },
    )
}

/// `(x, mc, ms) -> x · mc · ms` over `(B, C, H·W)`.
struct Attend {
    dims: (usize, usize, usize),
}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "d2a-attend"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw) = self.dims;
        let y = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let mc = contiguous::<T>(cs, cl, self.name())?;
            let ms = contiguous::<T>(ss, sl, self.name())?;
            // SAFETY: each plane's closure writes every element of its chunk.
            let y = unsafe {
                par_planes(x.len(), hw, |p, out| {
                    let (m, s) = (mc[p], &ms[p / c * hw..][..hw]);
                    for ((o, &v), &s) in out.iter_mut().zip(&x[p * hw..][..hw]).zip(s) {
                        // The order of candle's `x.broadcast_mul(mc).broadcast_mul(ms)`.
                        o.write(v * m * s);
                    }
                })
            };
            T::to_cpu_storage_owned(y)
        });
        Ok((y, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mc: &Tensor,
        ms: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, hw) = self.dims;
        // One flat result: dx, then dmc and dms.
        let maps = Tensor::cat(&[mc.flatten_all()?, ms.flatten_all()?], 0)?;
        let flat = dy
            .contiguous()?
            .apply_op3_no_bwd(x, &maps, &AttendGrad { dims: self.dims })?;
        let n = x.elem_count();
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        // Copied (small): as views they would keep all of `flat` alive until they are used.
        let dmc = flat
            .narrow(0, n, b * c)?
            .reshape(mc.shape())?
            .force_contiguous()?;
        let dms = flat
            .narrow(0, n + b * c, b * hw)?
            .reshape(ms.shape())?
            .force_contiguous()?;
        Ok((Some(dx), Some(dmc), Some(dms)))
    }
}

/// The gradients of [`Attend`]: `(dy, x, [mc..., ms...]) -> [dx..., dmc..., dms...]`, with
/// `dx = dy·ms·mc`, `dmc = Σ_hw dy·ms·x` and `dms = Σ_c dy·(x·mc)` (sums in f64).
struct AttendGrad {
    dims: (usize, usize, usize),
}

impl AttendGrad {
    fn kernel<T: Float>(&self, dy: &[T], x: &[T], maps: &[T]) -> Vec<T> {
        let (b, c, hw) = self.dims;
        let n = b * c * hw;
        let (mc, ms) = maps.split_at(b * c);
        // At least one item per image, so that an empty plane still writes its (zero) dmc.
        let chunks = hw.div_ceil(CHUNK).max(1);
        let mut out: Vec<T> = Vec::with_capacity(n + b * c + b * hw);
        let out_ptr = SharedMut(out.as_mut_ptr());
        // Per item (image, chunk of pixels): its partial dmc, one per channel.
        let partial_dmc: Vec<Vec<f64>> = (0..b * chunks)
            .into_par_iter()
            .map(|item| {
                let (i, p0) = (item / chunks, item % chunks * CHUNK);
                let len = CHUNK.min(hw - p0);
                let s = &ms[i * hw + p0..][..len];
                let mut dms = vec![0.0f64; len];
                let mut dmc = vec![0.0f64; c];
                for (ch, dmc) in dmc.iter_mut().enumerate() {
                    let at = (i * c + ch) * hw + p0;
                    let (g, v, m) = (&dy[at..][..len], &x[at..][..len], mc[i * c + ch]);
                    // SAFETY: item (i, chunk) alone writes dx of its pixels in every channel.
                    let dx = unsafe {
                        std::slice::from_raw_parts_mut(
                            out_ptr.get().add(at).cast::<std::mem::MaybeUninit<T>>(),
                            len,
                        )
                    };
                    let mut lanes = [0.0f64; LANES];
                    // In runs of LANES pixels, pixel `p0 + l` into lane `l`, so that the loop
                    // vectorises; the orders of candle's backward of the two broadcast
                    // multiplies.
                    let mut step = |dx: &mut [std::mem::MaybeUninit<T>],
                                    g: &[T],
                                    v: &[T],
                                    s: &[T],
                                    dms: &mut [f64]| {
                        for l in 0..dx.len() {
                            let gs = g[l] * s[l];
                            dx[l].write(gs * m);
                            lanes[l] += (gs * v[l]).to_f64();
                            dms[l] += (g[l] * (v[l] * m)).to_f64();
                        }
                    };
                    let full = len / LANES * LANES;
                    for q in (0..full).step_by(LANES) {
                        let r = q..q + LANES;
                        step(
                            &mut dx[r.clone()],
                            &g[r.clone()],
                            &v[r.clone()],
                            &s[r.clone()],
                            &mut dms[r],
                        );
                    }
                    step(
                        &mut dx[full..],
                        &g[full..],
                        &v[full..],
                        &s[full..],
                        &mut dms[full..],
                    );
                    *dmc = combine_lanes(lanes);
                }
                let dst = n + b * c + i * hw + p0;
                for (p, v) in dms.into_iter().enumerate() {
                    // SAFETY: this item's own pixels of dms.
                    unsafe { out_ptr.get().add(dst + p).write(T::from_f64(v)) };
                }
                dmc
            })
            .collect();
        for (i, items) in partial_dmc.chunks_exact(chunks).enumerate() {
            for ch in 0..c {
                let sum: f64 = items.iter().map(|dmc| dmc[ch]).sum();
                // SAFETY: dmc's own elements, written once.
                unsafe { out_ptr.get().add(n + i * c + ch).write(T::from_f64(sum)) };
            }
        }
        // SAFETY: the items wrote every dx and dms element, the loop above every dmc element.
        unsafe { out.set_len(n + b * c + b * hw) };
        out
    }
}

impl CustomOp3 for AttendGrad {
    fn name(&self) -> &'static str {
        "d2a-attend-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ms: &CpuStorage,
        ml: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = with_float!(gs, self.name(), |T| {
            let dy = contiguous::<T>(gs, gl, self.name())?;
            let x = contiguous::<T>(xs, xl, self.name())?;
            let maps = contiguous::<T>(ms, ml, self.name())?;
            T::to_cpu_storage_owned(self.kernel(dy, x, maps))
        });
        let (b, c, hw) = self.dims;
        Ok((out, Shape::from(b * c * hw + b * c + b * hw)))
    }
}
