//! `d2a info`: a model's parameter and multiply-add counts at an input size, from shapes alone.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use d2a_model::{Config, D2AUNet};
use serde::Serialize;

/// Arguments of `d2a info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model name: d2a-resnext50, d2a-vgg or d2a-vgg-tiny.
    #[arg(long)]
    pub model: String,
    /// Side of the square input slice `[1, 1, S, S]`.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Print JSON: {"model", "params", "macs", "input"}.
    #[arg(long)]
    pub json: bool,
    /// Also list every layer's parameters and MACs.
    #[arg(long)]
    pub layers: bool,
}

/// What `d2a info --json` prints.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The model name.
    pub model: String,
    /// Trainable parameters.
    pub params: u64,
    /// Multiply-adds of convolutions and linear layers for one slice.
    pub macs: u64,
    /// The input shape counted.
    pub input: [usize; 4],
}

impl Args {
    /// Prints the counts.
    pub fn run(self) -> Result<()> {
        let Some(cfg) = Config::by_name(&self.model) else {
            bail!(
                "unknown model {:?}; known: {}",
                self.model,
                Config::NAMES.join(", ")
            )
        };
        let m = cfg.size_multiple();
        if self.size == 0 || !self.size.is_multiple_of(m) {
            bail!(
                "--size must be a positive multiple of {m} for {}, got {}",
                self.model,
                self.size
            )
        }
        // Zero weights are enough to walk the layers; nothing is run.
        let model = D2AUNet::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))
            .context("building the model")?;
        let cost = model.cost(self.size, self.size);
        let info = Info {
            model: self.model.clone(),
            params: cost.params(),
            macs: cost.macs(),
            input: [1, 1, self.size, self.size],
        };
        if self.json {
            println!("{}", serde_json::to_string(&info)?);
        } else {
            println!(
                "{}: {} parameters, {:.1} GMACs ({:.1} GFLOPs) at 1x1x{}x{}",
                info.model,
                info.params,
                info.macs as f64 / 1e9,
                2.0 * info.macs as f64 / 1e9,
                self.size,
                self.size
            );
        }
        if self.layers {
            for layer in &cost.layers {
                println!("{:<50} {:>12} {:>16}", layer.name, layer.params, layer.macs);
            }
        }
        Ok(())
    }
}
