//! Layers built on [`crate::ops`]: convolution with optional bias, conv + BatchNorm (+ ReLU).
//!
//! Parameter names follow PyTorch (`weight`, `bias`, `running_mean`, `running_var`) so that
//! `state_dict` checkpoints load without renaming.

use candle_core::{DType, Module, ModuleT, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::cost::{Cost, Shape4};
use crate::ops::{
    BnStats, Conv2dConfig, batch_norm_act, batch_norm_train, channel_affine, conv2d, conv2d_affine,
    fold_batch_norm, runs_composed,
};

/// A 2-D convolution layer on [`conv2d`], square kernel.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    /// `(ones, bias)`: the bias as the shift of [`conv2d_affine`], added inside the kernel.
    bias: Option<(Tensor, Tensor)>,
    cfg: Conv2dConfig,
    /// `(out channels, in channels per group, kh, kw)` of `weight`.
    dims: (usize, usize, usize, usize),
}

impl Conv2d {
    /// Records this layer's parameters and MACs for an input of shape `x`; returns the output shape.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Shape4 {
        let (c_out, c_in_g, kh, kw) = self.dims;
        let out = |n: usize, p: usize, d: usize, k: usize, s: usize| {
            (n + 2 * p).saturating_sub(d * (k - 1) + 1) / s + 1
        };
        let cfg = self.cfg;
        let y = Shape4 {
            b: x.b,
            c: c_out,
            h: out(x.h, cfg.padding.0, cfg.dilation.0, kh, cfg.stride.0),
            w: out(x.w, cfg.padding.1, cfg.dilation.1, kw, cfg.stride.1),
        };
        let weights = c_out * c_in_g * kh * kw;
        let params = weights + if self.bias.is_some() { c_out } else { 0 };
        cost.add(name, params as u64, (y.b * y.h * y.w * weights) as u64);
        y
    }
}

impl Conv2d {
    /// A `k x k` convolution `c_in -> c_out` with a bias (`weight`, `bias` under `vb`); weights
    /// drawn as PyTorch does (Kaiming uniform with `a = sqrt(5)`, so
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, and the same for the bias).
    pub fn with_bias(
        c_in: usize,
        c_out: usize,
        k: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(c_in, c_out, k, cfg, true, vb)
    }

    /// [`Conv2d::with_bias`] without the bias (before a BatchNorm).
    pub fn no_bias(
        c_in: usize,
        c_out: usize,
        k: usize,
        cfg: Conv2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        Self::build(c_in, c_out, k, cfg, false, vb)
    }

    fn build(
        c_in: usize,
        c_out: usize,
        k: usize,
        cfg: Conv2dConfig,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let fan_in = (c_in / cfg.groups.max(1) * k * k).max(1);
        let bound = 1.0 / (fan_in as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = vb.get_with_hints((c_out, c_in / cfg.groups.max(1), k, k), "weight", init)?;
        let bias = if bias {
            let b = vb.get_with_hints(c_out, "bias", init)?;
            Some((b.ones_like()?, b))
        } else {
            None
        };
        let dims = weight.dims4()?;
        Ok(Self {
            weight,
            bias,
            cfg,
            dims,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some((ones, b)) => conv2d_affine(x, &self.weight, (ones, b), self.cfg, false),
            None => conv2d(x, &self.weight, self.cfg),
        }
    }
}

/// BatchNorm over `[B, C, H, W]` with PyTorch's defaults (eps 1e-5, momentum 0.1, affine,
/// running statistics with the unbiased batch variance), on the fused [`batch_norm_act`] kernel.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    /// `c` channels; `weight`, `bias`, `running_mean`, `running_var` under `vb`.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let running_mean = vb.get_with_hints(c, "running_mean", Init::Const(0.))?;
        let running_var = vb.get_with_hints(c, "running_var", Init::Const(1.))?;
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.))?,
            // Variables of the VarMap: these share its storage, so updates reach checkpoints.
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// The inference-time map as `(scale, shift)` per channel: `weight / sqrt(running_var + eps)`
    /// and `bias − running_mean · scale`, differentiable in `weight` and `bias`.
    pub fn folded(&self) -> Result<(Tensor, Tensor)> {
        let running = (self.running_mean.as_tensor(), self.running_var.as_tensor());
        fold_batch_norm(&self.weight, &self.bias, running, self.eps)
    }

    /// Normalises `x` (batch statistics when `train`, updating the running ones; else the
    /// running statistics), then applies ReLU if `relu`.
    pub fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if runs_composed(x) {
            return self.forward_composed(x, train, relu);
        }
        if !train {
            let running = BnStats {
                mean: self
                    .running_mean
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
                var: self
                    .running_var
                    .as_tensor()
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
                count: 0,
            };
            return Ok(
                batch_norm_act(x, &self.weight, &self.bias, Some(running), self.eps, relu)?.0,
            );
        }
        let (y, stats) = batch_norm_act(x, &self.weight, &self.bias, None, self.eps, relu)?;
        let Some(stats) = stats else {
            candle_core::bail!("batch_norm: the kernel returned no batch statistics")
        };
        let m = self.momentum;
        let n = stats.count as f64;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let update = |var: &Var, batch: Vec<f64>| -> Result<()> {
            let old = var.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?;
            let new: Vec<f64> = old
                .iter()
                .zip(batch)
                .map(|(o, b)| (1.0 - m) * o + m * b)
                .collect();
            var.set(&Tensor::new(new, var.device())?.to_dtype(var.dtype())?)
        };
        update(&self.running_mean, stats.mean)?;
        update(
            &self.running_var,
            stats.var.iter().map(|v| v * unbias).collect(),
        )?;
        Ok(y)
    }

    /// [`BatchNorm2d::forward_act`] in candle's tensor ops, as off the CPU: the statistics and
    /// their running averages never leave the device.
    fn forward_composed(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if !train {
            let (scale, shift) = self.folded()?;
            return channel_affine(x, (&scale, &shift), relu);
        }
        let (y, mean, var) = batch_norm_train(x, &self.weight, &self.bias, self.eps, relu)?;
        let (b, _, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        let unbias = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let m = self.momentum;
        let update = |var: &Var, batch: Tensor, gain: f64| -> Result<()> {
            let batch = batch.to_dtype(var.dtype())?.affine(m * gain, 0.0)?;
            var.set(&(var.as_tensor().affine(1.0 - m, 0.0)? + batch)?)
        };
        update(&self.running_mean, mean, 1.0)?;
        update(&self.running_var, var, unbias)?;
        Ok(y)
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }
}

/// BatchNorm with PyTorch's defaults (see [`BatchNorm2d`]).
pub fn batch_norm(c: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
    BatchNorm2d::new(c, vb)
}

/// Convolution without bias, then BatchNorm, then ReLU (unless built
/// [`without_relu`](ConvBn::without_relu)): the repeated unit of every encoder and decoder.
/// Weights under `{conv}` and `{bn}` names given by the caller.
#[derive(Debug, Clone)]
pub struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
    relu: bool,
}

impl ConvBn {
    /// A `k x k` conv `c_in -> c_out` with `cfg`, weights at `vb_conv`, BN at `vb_bn`, then ReLU.
    pub fn new(
        (c_in, c_out, k): (usize, usize, usize),
        cfg: Conv2dConfig,
        vb_conv: VarBuilder,
        vb_bn: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::no_bias(c_in, c_out, k, cfg, vb_conv)?,
            bn: batch_norm(c_out, vb_bn)?,
            relu: true,
        })
    }

    /// The common case: "same"-padded `k x k` conv, BN, ReLU, with weights at `vb/conv` and `vb/bn`.
    pub fn same(
        c_in: usize,
        c_out: usize,
        k: usize,
        dilation: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = Conv2dConfig::square(1, dilation * (k / 2), dilation, 1);
        Self::new((c_in, c_out, k), cfg, vb.pp("conv"), vb.pp("bn"))
    }

    /// The same unit without the final ReLU.
    pub fn without_relu(mut self) -> Self {
        self.relu = false;
        self
    }
}

impl ConvBn {
    /// Records the conv and the BatchNorm under `name`; returns the output shape.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Shape4 {
        let y = self.conv.cost(cost, &format!("{name}.conv"), x);
        cost.batch_norm(&format!("{name}.bn"), y.c);
        y
    }
}

impl ModuleT for ConvBn {
    /// Training: the convolution, then BatchNorm on batch statistics (+ ReLU). Inference: the
    /// BatchNorm folded into the convolution's kernel ([`conv2d_affine`]), one pass.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            return self
                .bn
                .forward_act(&self.conv.forward(x)?, train, self.relu);
        }
        let (scale, shift) = self.bn.folded()?;
        conv2d_affine(
            x,
            &self.conv.weight,
            (&scale, &shift),
            self.conv.cfg,
            self.relu,
        )
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use super::*;
    use crate::init::seeded_var_builder;
    use crate::test_support::pseudo_random;

    /// The folded inference path equals the convolution followed by BatchNorm on running
    /// statistics, with and without ReLU.
    #[test]
    fn folded_conv_bn_equals_conv_then_bn() -> Result<()> {
        for relu in [false, true] {
            let varmap = VarMap::new();
            let vb = seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
            let cfg = Conv2dConfig::square(2, 1, 1, 1);
            let mut unit = ConvBn::new((3, 5, 3), cfg, vb.pp("conv"), vb.pp("bn"))?;
            if !relu {
                unit = unit.without_relu();
            }
            let x = pseudo_random(&[2, 3, 9, 7], 1)?;
            // Two training steps move the running statistics away from (0, 1).
            unit.forward_t(&x, true)?;
            unit.forward_t(&(&x * 3.0)?, true)?;
            let want = unit.bn.forward_act(&unit.conv.forward(&x)?, false, relu)?;
            let got = unit.forward_t(&x, false)?;
            let diff = (got - want)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-5, "relu {relu}: {diff}");
        }
        Ok(())
    }
}
