//! `d2a eval`: scores a trained checkpoint on a labelled dataset with the paper's metrics (the
//! JSON schema of `d2a eval-masks`), optionally writing overlay PNGs.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use candle_core::Device;
use d2a_data::ReadOptions;
use d2a_data::dataset::read_dataset;
use d2a_metrics::{Confusion, Report};
use d2a_train::infer::{load_for_inference, predict_logits, slice_name};

use crate::overlay::write_overlay;

/// Arguments of `d2a eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint written by `d2a train` (best.safetensors or last.safetensors).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Labelled data: a prepared folder or a dataset folder (images/ + masks/).
    #[arg(long, value_name = "DATA")]
    pub data: PathBuf,
    /// Write the report as JSON (schema of `d2a eval-masks --json`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one overlay PNG per slice into this folder (prediction red, truth green).
    #[arg(long, value_name = "DIR")]
    pub overlays: Option<PathBuf>,
    /// Model preset, if the checkpoint does not record it.
    #[arg(long)]
    pub model: Option<String>,
    /// Model input side [default: the one recorded in the checkpoint].
    #[arg(long)]
    pub size: Option<usize>,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

impl Args {
    /// Evaluates and reports.
    pub fn run(self) -> Result<()> {
        let device = Device::Cpu;
        let loaded =
            load_for_inference(&self.checkpoint, self.model.as_deref(), self.size, &device)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("loading {}", self.checkpoint.display()))?;
        // Every slice, scored at its own size (as published scores are).
        let slices = read_dataset(&self.data, &ReadOptions::native())
            .with_context(|| format!("reading {}", self.data.display()))?;
        if let Some(dir) = &self.overlays {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the overlay folder {}", dir.display()))?;
        }
        let mut named = Vec::with_capacity(slices.len());
        // In chunks, so that the logits of a large dataset are never all in memory.
        for chunk in slices.chunks(64) {
            let logits = predict_logits(&loaded.model, chunk, loaded.input, self.batch, &device)?;
            for (s, l) in chunk.iter().zip(&logits) {
                let truth: Vec<bool> = s.mask.iter().map(|&m| m != 0).collect();
                let counts = Confusion::from_scores(l, 0.0, &truth)?;
                let name = slice_name(s);
                if let Some(dir) = &self.overlays {
                    let pred: Vec<u8> = l.iter().map(|&v| u8::from(v >= 0.0)).collect();
                    write_overlay(
                        &s.image,
                        (s.height, s.width),
                        &pred,
                        Some(&s.mask),
                        &dir.join(format!("{name}.png")),
                    )?;
                }
                named.push((name, counts));
            }
        }
        let report = Report::new(named)?;
        println!(
            "{} ({}, input {}x{}) on {}: {} slices\n{}",
            self.checkpoint.display(),
            loaded.name,
            loaded.input,
            loaded.input,
            self.data.display(),
            report.n_slices,
            report.table()
        );
        if let Some(path) = &self.json {
            d2a_train::run::write_atomic(
                path,
                (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
            )
            .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }
}
