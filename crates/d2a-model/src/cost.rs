//! Parameter and multiply-add counts, per layer, computed from shapes alone (SPEC §2.8).
//!
//! Every convolution and linear layer adds one [`LayerCost`] when a model's `cost` method walks
//! its layers for an input size; nothing is run. MACs count the weight multiply-adds of
//! convolutions and linear layers (as the paper's tables and `thop` do); FLOPs = 2 x MACs.

use serde::Serialize;

/// Shape of a feature map `[B, C, H, W]`, for cost accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape4 {
    /// Batch.
    pub b: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// The cost of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// The layer's parameter path.
    pub name: String,
    /// Trainable parameters (weights and biases; BatchNorm's running statistics excluded).
    pub params: u64,
    /// Multiply-adds for the whole batch.
    pub macs: u64,
}

/// A running account of layer costs.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    /// Every layer, in forward order.
    pub layers: Vec<LayerCost>,
}

impl Cost {
    /// Records a layer.
    pub fn add(&mut self, name: &str, params: u64, macs: u64) {
        self.layers.push(LayerCost {
            name: name.to_string(),
            params,
            macs,
        });
    }

    /// Records a linear layer `c_in -> c_out` with bias, applied once to each of `batch` images.
    pub fn linear(&mut self, name: &str, c_in: usize, c_out: usize, batch: usize) {
        self.add(
            name,
            (c_in * c_out + c_out) as u64,
            (batch * c_in * c_out) as u64,
        );
    }

    /// Records a BatchNorm over `c` channels (2c parameters, no MACs counted).
    pub fn batch_norm(&mut self, name: &str, c: usize) {
        self.add(name, 2 * c as u64, 0);
    }

    /// Total parameters.
    pub fn params(&self) -> u64 {
        self.layers.iter().map(|l| l.params).sum()
    }

    /// Total multiply-adds.
    pub fn macs(&self) -> u64 {
        self.layers.iter().map(|l| l.macs).sum()
    }
}
