//! Applying a channel map and a spatial map to a feature: `x ⊙ Mc ⊗ Ms` (SPEC §2.2–2.3).

use candle_core::{Result, Tensor, bail};

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
    x.broadcast_mul(mc)?.broadcast_mul(ms)
}
