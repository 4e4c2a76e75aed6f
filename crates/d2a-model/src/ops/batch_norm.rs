//! BatchNorm and ReLU fused into one kernel, forward and backward.
//!
//! candle-nn's `BatchNorm` runs as some ten broadcast tensor ops, each a pass over memory with an
//! allocation, and as many again in its backward; the D2A U-Net has one after every conv. This
//! kernel computes the batch statistics in two passes over each channel (the mean, then the
//! centred variance, in f64), normalises, scales, shifts and rectifies in a third, and computes
//! all three gradients in two passes.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType as _, bail,
};
use rayon::iter::{IntoParallelIterator as _, ParallelIterator as _};

use super::cpu::{Float, contiguous, lane_sums, par_planes, with_float};

/// Per-channel statistics the normalisation used.
#[derive(Debug, Clone, PartialEq)]
pub struct BnStats {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Biased variance per channel (what the normalisation divides by).
    pub var: Vec<f64>,
    /// Values per channel (B·H·W), for the unbiased variance of the running statistics.
    pub count: usize,
}

/// `y = [relu](gamma · (x − mean) / sqrt(var + eps) + beta)` over `[B, C, H, W]`.
///
/// With `stats: None` (training) the mean and variance are the batch's, computed here and
/// published through `out_stats`; with `Some` (evaluation) they are the given running values,
/// and the gradient treats them as constants.
struct BnAct {
    given: Option<Arc<BnStats>>,
    out_stats: Arc<Mutex<Option<Arc<BnStats>>>>,
    eps: f64,
    relu: bool,
}

fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    let &[b, c, h, w] = l.dims() else {
        bail!("batch_norm: expected [B, C, H, W], got {:?}", l.dims())
    };
    Ok((b, c, h * w))
}

fn batch_stats<T: Float>(x: &[T], (b, c, hw): (usize, usize, usize)) -> BnStats {
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |i| &x[(i * c + ch) * hw..][..hw]);
            let n = (b * hw) as f64;
            let mean = planes()
                .map(|p| lane_sums(p, p, |v, _| [v.to_f64()])[0])
                .sum::<f64>()
                / n;
            let var = planes()
                .map(|p| lane_sums(p, p, |v, _| [(v.to_f64() - mean).powi(2)])[0])
                .sum::<f64>()
                / n;
            (mean, var)
        })
        .unzip();
    BnStats {
        mean,
        var,
        count: b * hw,
    }
}

impl BnAct {
    fn stats(&self) -> Result<Arc<BnStats>> {
        match &self.given {
            Some(s) => Ok(s.clone()),
            None => self
                .out_stats
                .lock()
                .map_err(|_| candle_core::Error::Msg("batch_norm: poisoned statistics".into()))?
                .clone()
                .ok_or_else(|| candle_core::Error::Msg("batch_norm: no batch statistics".into())),
        }
    }
}

impl CustomOp3 for BnAct {
    fn name(&self) -> &'static str {
        "d2a-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, hw) = dims(xl)?;
        if gl.dims() != [c] || bl.dims() != [c] {
            bail!(
                "batch_norm: weight {:?} and bias {:?} for {c} channels",
                gl.dims(),
                bl.dims()
            )
        }
        let y = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let gamma = contiguous::<T>(gs, gl, self.name())?;
            let beta = contiguous::<T>(bs, bl, self.name())?;
            let stats = match &self.given {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(batch_stats(x, (b, c, hw)));
                    *self.out_stats.lock().map_err(|_| {
                        candle_core::Error::Msg("batch_norm: poisoned statistics".into())
                    })? = Some(s.clone());
                    s
                }
            };
            let (scale, shift): (Vec<T>, Vec<T>) = (0..c)
                .map(|ch| {
                    let s = gamma[ch].to_f64() / (stats.var[ch] + self.eps).sqrt();
                    (
                        T::from_f64(s),
                        T::from_f64(beta[ch].to_f64() - stats.mean[ch] * s),
                    )
                })
                .unzip();
            let zero = T::from_f64(0.0);
            // SAFETY: both branches write every element of `y`.
            let y = unsafe {
                par_planes(x.len(), hw, |plane, y| {
                    let (s, t) = (scale[plane % c], shift[plane % c]);
                    let x = &x[plane * hw..][..y.len()];
                    if self.relu {
                        for (y, &x) in y.iter_mut().zip(x) {
                            let v = x * s + t;
                            y.write(if v < zero { zero } else { v });
                        }
                    } else {
                        for (y, &x) in y.iter_mut().zip(x) {
                            y.write(x * s + t);
                        }
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
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = gamma.dim(0)?;
        let grad = BnGrad {
            stats: self.stats()?,
            gamma: gamma.to_dtype(candle_core::DType::F64)?.to_vec1()?,
            beta: beta.to_dtype(candle_core::DType::F64)?.to_vec1()?,
            eps: self.eps,
            relu: self.relu,
            train: self.given.is_none(),
        };
        // One flat result: dx, then dgamma and dbeta.
        let flat = x.apply_op2_no_bwd(&dy.contiguous()?, &grad)?;
        let n = x.elem_count();
        let dx = flat.narrow(0, 0, n)?.reshape(x.shape())?;
        // Copied: as views they would keep all of `flat` alive for as long as the parameters'
        // gradients live (the whole backward pass, as candle stores a first gradient as it is).
        let dgamma = flat.narrow(0, n, c)?.force_contiguous()?;
        let dbeta = flat.narrow(0, n + c, c)?.force_contiguous()?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// The gradients of [`BnAct`]: `(x, dy) -> [dx..., dgamma..., dbeta...]`.
struct BnGrad {
    stats: Arc<BnStats>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    eps: f64,
    relu: bool,
    train: bool,
}

impl CustomOp2 for BnGrad {
    fn name(&self) -> &'static str {
        "d2a-batch-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, hw) = dims(xl)?;
        if dl.dims() != xl.dims() {
            bail!(
                "batch_norm: gradient {:?} for input {:?}",
                dl.dims(),
                xl.dims()
            )
        }
        let out = with_float!(xs, self.name(), |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let dy = contiguous::<T>(ds, dl, self.name())?;
            let invstd: Vec<f64> = self
                .stats
                .var
                .iter()
                .map(|v| 1.0 / (v + self.eps).sqrt())
                .collect();
            // The gradient reaching the normalised value (dy where the ReLU passed it) and x̂,
            // for a channel's (mean, 1/std, gamma, beta).
            let relu = self.relu;
            let dz_xhat = move |(mean, invstd, gamma, beta): (f64, f64, f64, f64), v: T, d: T| {
                let xhat = (v.to_f64() - mean) * invstd;
                let passed = !relu || gamma * xhat + beta >= 0.0;
                (if passed { d.to_f64() } else { 0.0 }, xhat)
            };
            let channel = |ch: usize| {
                (
                    self.stats.mean[ch],
                    invstd[ch],
                    self.gamma[ch],
                    self.beta[ch],
                )
            };
            // Per channel: Σ dz (dbeta) and Σ dz·x̂ (dgamma).
            let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = (0..c)
                .into_par_iter()
                .map(|ch| {
                    let k = channel(ch);
                    let (mut sd, mut sdx) = (0.0, 0.0);
                    for i in 0..b {
                        let at = (i * c + ch) * hw;
                        let [d, dx] = lane_sums(&x[at..at + hw], &dy[at..at + hw], |v, d| {
                            let (g, xhat) = dz_xhat(k, v, d);
                            [g, g * xhat]
                        });
                        sd += d;
                        sdx += dx;
                    }
                    (sd, sdx)
                })
                .unzip();
            let n = self.stats.count as f64;
            let planes = b * c;
            // dx plane by plane, then dgamma and dbeta: 2c values in the chunks after the
            // last plane.
            // SAFETY: every branch writes every element of its chunk (the planes of dx, then
            // the 2c values of dgamma and dbeta).
            let out = unsafe {
                par_planes(x.len() + 2 * c, hw, |plane, out| {
                    if plane >= planes {
                        let first = (plane - planes) * hw;
                        for (j, o) in out.iter_mut().enumerate() {
                            let at = first + j;
                            o.write(T::from_f64(if at < c { dgamma[at] } else { dbeta[at - c] }));
                        }
                        return;
                    }
                    let ch = plane % c;
                    let kc = channel(ch);
                    let k = kc.2 * kc.1;
                    let (mean_d, mean_dx) = (dbeta[ch] / n, dgamma[ch] / n);
                    let at = plane * hw;
                    let (x, dy) = (&x[at..at + hw], &dy[at..at + hw]);
                    if self.train {
                        for ((o, &v), &d) in out.iter_mut().zip(x).zip(dy) {
                            let (g, xhat) = dz_xhat(kc, v, d);
                            o.write(T::from_f64(k * (g - mean_d - xhat * mean_dx)));
                        }
                    } else {
                        for ((o, &v), &d) in out.iter_mut().zip(x).zip(dy) {
                            o.write(T::from_f64(k * dz_xhat(kc, v, d).0));
                        }
                    }
                })
            };
            T::to_cpu_storage_owned(out)
        });
        Ok((out, Shape::from(b * c * hw + 2 * c)))
    }
}

/// Fused BatchNorm (+ ReLU if `relu`) of `x` (`[B, C, H, W]`) with affine `gamma`, `beta`
/// (`[C]`), differentiable in all three.
///
/// With `running: None`, normalises with the batch's statistics and returns them (to update the
/// running averages); with `Some(stats)`, normalises with those and returns `None`.
pub fn batch_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<BnStats>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BnStats>)> {
    if super::runs_composed(x) {
        return composed_batch_norm_act(x, gamma, beta, running, eps, relu);
    }
    let train = running.is_none();
    let out_stats = Arc::new(Mutex::new(None));
    let op = BnAct {
        given: running.map(Arc::new),
        out_stats: out_stats.clone(),
        eps,
        relu,
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = if train {
        let guard = out_stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch_norm: poisoned statistics".into()))?;
        guard.as_deref().cloned()
    } else {
        None
    };
    Ok((y, stats))
}

/// [`batch_norm_act`] composed of candle's tensor ops (off the CPU); its statistics are read
/// back to the host, which [`crate::nn::BatchNorm2d`] avoids by calling
/// [`super::batch_norm_train`] itself.
fn composed_batch_norm_act(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<BnStats>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<BnStats>)> {
    let (b, _, h, w) = x.dims4()?;
    match running {
        None => {
            let (y, mean, var) = super::composed::batch_norm_train(x, gamma, beta, eps, relu)?;
            let host = |t: Tensor| t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>();
            let stats = BnStats {
                mean: host(mean)?,
                var: host(var)?,
                count: b * h * w,
            };
            Ok((y, Some(stats)))
        }
        Some(s) => {
            let on_device = |v: Vec<f64>| Tensor::new(v, x.device())?.to_dtype(gamma.dtype());
            let stats = (&on_device(s.mean)?, &on_device(s.var)?);
            let (scale, shift) = super::fold_batch_norm(gamma, beta, stats, eps)?;
            Ok((
                super::composed::channel_affine(x, (&scale, &shift), relu)?,
                None,
            ))
        }
    }
}
