//! The end of a residual block, `relu(a + b)`, as one kernel forward and one backward.
//!
//! On candle's ops it is an add and a ReLU forward (two passes, an intermediate), and a
//! comparison, a cast and a multiply backward; every RAB and every ResNeXt bottleneck ends
//! with it.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType as _, bail,
};

use super::conv::runs_composed;
use super::cpu::{Float, contiguous, par_planes, with_float};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// `relu(a + b)` for two tensors of one shape, differentiable in both.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        bail!(
            "add_relu: the two inputs differ in shape, {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    if runs_composed(a) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// `(a, b) -> max(a + b, 0)`; NaN gives 0, as candle's ReLU does.
struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "d2a-add-relu"
    }

    fn cpu_fwd(
        &self,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = with_float!(as_, self.name(), |T| {
            let a = contiguous::<T>(as_, al, self.name())?;
            let b = contiguous::<T>(bs, bl, self.name())?;
            let zero = T::from_f64(0.0);
            T::to_cpu_storage_owned(par_map([a, b], |[x, y]| {
                let s = x + y;
                if s >= zero { s } else { zero }
            }))
        });
        Ok((z, al.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _z: &Tensor,
        dz: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = dz.contiguous()?.apply_op3_no_bwd(a, b, &AddReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(dz, a, b) -> dz · [a + b ≥ 0]`, the gradient of both inputs (the mask multiplied
/// in, as candle's ReLU backward does).
struct AddReluGrad;

impl CustomOp3 for AddReluGrad {
    fn name(&self) -> &'static str {
        "d2a-add-relu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = with_float!(gs, self.name(), |T| {
            let dz = contiguous::<T>(gs, gl, self.name())?;
            let a = contiguous::<T>(as_, al, self.name())?;
            let b = contiguous::<T>(bs, bl, self.name())?;
            let (zero, one) = (T::from_f64(0.0), T::from_f64(1.0));
            T::to_cpu_storage_owned(par_map([a, b, dz], |[x, y, g]| {
                g * if x + y >= zero { one } else { zero }
            }))
        });
        Ok((g, gl.shape().clone()))
    }
}

/// `f([x[i] for x in inputs])` for every element of `N` slices of one length, in parallel chunks.
fn par_map<T: Float, const N: usize>(inputs: [&[T]; N], f: impl Fn([T; N]) -> T + Sync) -> Vec<T> {
    let len = inputs[0].len();
    debug_assert!(inputs.iter().all(|x| x.len() == len));
    // SAFETY: each chunk's closure writes every element of its chunk.
    unsafe {
        par_planes(len, CHUNK, |p, out| {
            let at = p * CHUNK;
            let inputs = inputs.map(|x| &x[at..][..out.len()]);
            for (i, o) in out.iter_mut().enumerate() {
                o.write(f(inputs.map(|x| x[i])));
            }
        })
    }
}
