//! Reproducible weight initialisation.
//!
//! candle cannot seed its CPU generator, so models built over a plain `VarMap` differ from run
//! to run. [`seeded_var_builder`] builds variables into a `VarMap` with values drawn from a
//! generator seeded by the run's seed and the variable's name: the same seed gives the same
//! model, whatever order layers are built in, on any device.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

/// The hash of a variable name that seeds its generator: SipHash-1-3 with zero keys over the
/// name's bytes and a final `0xff`. That is what std's `DefaultHasher::new()` computed for a
/// `str` when the initialisation was first written, spelled out here because std does not
/// promise its algorithm across releases: every model (and every figure measured from one)
/// keeps its initial weights.
pub fn name_hash(name: &str) -> u64 {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0xff);
    siphash13(&bytes)
}

/// SipHash-1-3 (one compression round, three finalisation rounds) with keys `(0, 0)`.
fn siphash13(msg: &[u8]) -> u64 {
    let mut v = [
        0x736f_6d65_7073_6575u64,
        0x646f_7261_6e64_6f6d,
        0x6c79_6765_6e65_7261,
        0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let compress = |m: u64, v: &mut [u64; 4]| {
        v[3] ^= m;
        round(v);
        v[0] ^= m;
    };
    let chunks = msg.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        let m = u64::from_le_bytes(c.try_into().expect("chunks of 8"));
        compress(m, &mut v);
    }
    let mut last = (msg.len() as u64 & 0xff) << 56;
    for (i, &b) in tail.iter().enumerate() {
        last |= u64::from(b) << (8 * i);
    }
    compress(last, &mut v);
    v[2] ^= 0xff;
    for _ in 0..3 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

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
        let mut rng = SplitMix64(self.seed ^ name_hash(name));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The values std's `DefaultHasher::new()` gave for these names (Rust 1.95): the weights
    /// every earlier checkpoint and figure started from.
    #[test]
    fn name_hash_is_the_hash_the_initial_weights_were_drawn_with() {
        for (name, want) in [
            ("", 0x30406ea523c53def),
            ("encoder.conv1.weight", 0x90eee805371b7295),
            ("decoder.0.gate.psi.bias", 0x222dc27fabd10ffa),
            ("head.weight", 0x87da0f4f3367d9ee),
            ("a", 0x719b50b9a4f0e9f3),
        ] {
            assert_eq!(name_hash(name), want, "{name:?}");
        }
    }
}
