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
