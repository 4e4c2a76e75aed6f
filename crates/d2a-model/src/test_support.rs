//! Helpers for this crate's tests: deterministic inputs and the PyTorch fixtures.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use crate::init::SplitMix64;

/// A tensor of values in [-1, 1) from a fixed-seed generator (SplitMix64), f32 on the CPU.
pub(crate) fn pseudo_random(dims: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = SplitMix64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1));
    let n: usize = dims.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// The tensors of `shared/fixtures/NAME`, or `None` where it is absent (skipped visibly, or a
/// failure under `CI=true`).
pub(crate) fn fixture(name: &str) -> Result<Option<HashMap<String, Tensor>>> {
    match d2a_tests::shared_fixture(name) {
        Some(path) => candle_core::safetensors::load(&path, &Device::Cpu).map(Some),
        None => Ok(None),
    }
}
