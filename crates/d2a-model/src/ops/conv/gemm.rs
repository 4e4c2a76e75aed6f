//! The GEMM every convolution kernel runs, and the loop over work items.

use gemm::Parallelism;
use rayon::iter::{IntoParallelIterator as _, ParallelIterator as _};

use crate::ops::cpu::Float;

/// Runs `f(scratch, item)` for items `0..n`, on all threads when `parallel`, each thread with its
/// own scratch buffer.
pub(super) fn for_each_item<T: Float>(
    n: usize,
    parallel: bool,
    f: impl Fn(&mut Vec<T>, usize) + Send + Sync,
) {
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
pub(super) unsafe fn matmul<T: Float>(
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
