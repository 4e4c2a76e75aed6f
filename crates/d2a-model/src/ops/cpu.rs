//! Plumbing shared by the CPU kernels: typed views of candle storage and the element trait.

use candle_core::{CpuStorage, Layout, Result, WithDType, bail};

/// The float types our CPU kernels run on: f32 for work, f64 for gradient checks.
pub(crate) trait Float: WithDType {}

impl Float for f32 {}
impl Float for f64 {}

/// The contiguous elements of `storage` described by `layout`.
///
/// The public op functions make their inputs contiguous before applying a kernel, so a
/// non-contiguous layout here is a bug in this crate, reported as an error rather than a panic.
pub(crate) fn contiguous<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: input is not contiguous (layout {layout:?})")
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

/// Runs `$body` with `$T` bound to the element type of `$storage` (f32 or f64).
macro_rules! with_float {
    ($storage:expr, $op:expr, |$T:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32(_) => {
                type $T = f32;
                $body
            }
            candle_core::CpuStorage::F64(_) => {
                type $T = f64;
                $body
            }
            other => candle_core::bail!(
                "{}: unsupported dtype {:?}, expected f32 or f64",
                $op,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(crate) use with_float;

/// A raw pointer that the work items of one kernel, on different threads, write through, each
/// to its own elements.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);

// SAFETY: only used for disjoint writes from the work items of one kernel call, which ends
// before the buffer is read or dropped.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its field).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// A vector of `len` elements written plane by plane: `fill(p, out)` writes every element of
/// plane `p` (`plane` elements; the last may be shorter), in parallel, with no zero-fill first.
///
/// # Safety
/// `fill` must write every element of the chunk it is given (a panic inside it is fine: it
/// propagates before the vector's length is set).
pub(crate) unsafe fn par_planes<T: Float>(
    len: usize,
    plane: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    use rayon::iter::{IndexedParallelIterator as _, ParallelIterator as _};
    use rayon::slice::ParallelSliceMut as _;
    let mut out = Vec::with_capacity(len);
    if len > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(p, chunk)| fill(p, chunk));
    }
    // SAFETY: every chunk of the first `len` elements was written by `fill`, whose contract is
    // to write all of its chunk.
    unsafe { out.set_len(len) };
    out
}

/// Lanes of [`lane_sums`]: independent partial sums, so that the loop vectorises (one running
/// f64 sum is bound by the latency of each addition).
pub(crate) const LANES: usize = 16;

/// Adds `f(a[i], b[i])` over the two slices (of one length) into `S` sums at once, each split
/// over [`LANES`] partial sums (element `i` into lane `i % LANES`) that are then combined
/// pairwise in a fixed order: the result depends only on the data, never on the thread count.
#[inline(always)]
pub(crate) fn lane_sums<T: Float, const S: usize>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> [f64; S],
) -> [f64; S] {
    let mut acc = [[0.0f64; LANES]; S];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (ca, cb) in ca.zip(cb) {
        for l in 0..LANES {
            let v = f(ca[l], cb[l]);
            for s in 0..S {
                acc[s][l] += v[s];
            }
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        let v = f(x, y);
        for s in 0..S {
            acc[s][l] += v[s];
        }
    }
    acc.map(combine_lanes)
}

/// The [`LANES`] partial sums of one sum, combined pairwise in a fixed order.
#[inline(always)]
pub(crate) fn combine_lanes(mut a: [f64; LANES]) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            a[l] += a[l + width];
        }
    }
    a[0]
}

/// Large scratch buffers kept between kernel calls, as `f64` storage (aligned for either float).
///
/// A fresh buffer of tens of megabytes is fresh pages, and the first write to each page is a
/// page fault the kernel must zero (about 2 µs a page here): for the Winograd transforms of a
/// deep layer that cost more than the transforms themselves. Reused, the pages stay mapped.
static SCRATCH: std::sync::Mutex<Vec<Vec<f64>>> = std::sync::Mutex::new(Vec::new());

/// Buffers [`SCRATCH`] keeps at most (calls running at once beyond that allocate their own).
const SCRATCH_KEPT: usize = 4;

/// Runs `f` on a buffer of `len` uninitialised elements taken from [`SCRATCH`] (or allocated,
/// if none is free), and gives the buffer back afterwards.
pub(crate) fn with_scratch<T: Float, R>(
    len: usize,
    f: impl FnOnce(&mut [std::mem::MaybeUninit<T>]) -> R,
) -> R {
    const { assert!(align_of::<T>() <= align_of::<f64>()) };
    let words = (len * size_of::<T>()).div_ceil(size_of::<f64>());
    let taken = SCRATCH.lock().ok().and_then(|mut pool| {
        // The largest free buffer: the one least likely to need growing.
        let best = (0..pool.len()).max_by_key(|&i| pool[i].capacity())?;
        Some(pool.swap_remove(best))
    });
    let mut buf = taken.unwrap_or_default();
    buf.clear();
    buf.reserve(words);
    // SAFETY: the spare capacity holds at least `words` f64s, i.e. at least `len` elements of
    // `T` (whose alignment divides f64's, asserted above); `MaybeUninit` makes no claim about
    // their contents, and the borrow ends before `buf` is touched again.
    let out = f(unsafe {
        std::slice::from_raw_parts_mut(
            buf.spare_capacity_mut()
                .as_mut_ptr()
                .cast::<std::mem::MaybeUninit<T>>(),
            len,
        )
    });
    if let Ok(mut pool) = SCRATCH.lock()
        && pool.len() < SCRATCH_KEPT
    {
        pool.push(buf);
    }
    out
}
