//! The convolution with an epilogue: `relu?(conv(x, w) · scale + shift)` per output channel,
//! applied to each output tile right after its GEMM wrote it.

use candle_core::{
    CpuStorage, CustomOp2 as _, CustomOp3, Layout, Result, Shape, Tensor, WithDType as _, bail,
};

use super::Conv2dConfig;
use super::forward::Conv2dFwd;
use super::geometry::Geometry;
use crate::ops::cpu::{contiguous, with_float};

/// A per-output-channel affine map (and ReLU) applied to a convolution's output in its kernel.
#[derive(Clone, Copy)]
pub(super) struct Epilogue<'a, T> {
    pub(super) scale: &'a [T],
    pub(super) shift: &'a [T],
    pub(super) relu: bool,
}

/// `relu?(conv(x, w) · scale + shift)`: inputs `(x, w, [scale..., shift...])`.
pub(super) struct Conv2dAffine {
    pub(super) cfg: Conv2dConfig,
    pub(super) relu: bool,
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
