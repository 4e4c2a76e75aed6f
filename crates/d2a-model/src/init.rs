//! Reproducible weight initialisation.
//!
//! candle cannot seed its CPU generator, so models built over a plain `VarMap` differ from run
//! to run. [`seeded_var_builder`] builds variables into a `VarMap` with values drawn from a
//! generator seeded by the run's seed and the variable's name: the same seed gives the same
//! model, whatever order layers are built in, on any device.

use std::hash::{Hash, Hasher};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

/// A `VarMap` that creates missing variables from a seeded generator.
struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

/// SplitMix64: small, fast, and good enough for weight initialisation.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Values for `init` over `shape`, drawn from `rng`.
fn draw(init: Init, shape: &Shape, rng: &mut SplitMix64) -> Vec<f64> {
    let n = shape.elem_count();
    let uniform = |rng: &mut SplitMix64, lo: f64, up: f64| lo + (up - lo) * rng.uniform();
    match init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => (0..n).map(|_| uniform(rng, lo, up)).collect(),
        Init::Randn { mean, stdev } => (0..n).map(|_| mean + stdev * rng.normal()).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (0..n).map(|_| std * rng.normal()).collect(),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| uniform(rng, -bound, bound)).collect()
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name} exists with shape {:?}, asked for {:?}",
                    var.shape(),
                    shape
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let mut rng = SplitMix64(self.seed ^ hasher.finish());
        let values = draw(init, &shape, &mut rng);
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&tensor)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        let vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
        match vars.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("no variable named {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .is_ok_and(|vars| vars.contains_key(name))
    }
}

/// A `VarBuilder` that creates trainable variables in `varmap`, reproducibly from `seed`.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(SeededVarMap {
        varmap: varmap.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, device.clone())
}
