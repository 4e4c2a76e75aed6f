//! `d2a eval`: scores a trained checkpoint on a labelled dataset with the paper's metrics (the
//! JSON schema of `d2a eval-masks`), optionally writing overlay PNGs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use d2a_data::ReadOptions;
use d2a_data::dataset::read_dataset;
use d2a_metrics::{Confusion, Report};
use d2a_train::infer::{predict_logits, slice_name};

use crate::overlay::write_overlay;

/// Arguments of `d2a eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint and its model.
    #[command(flatten)]
    pub model: super::CheckpointArgs,
    /// Labelled data: a prepared folder or a dataset folder (images/ + masks/).
    #[arg(long, value_name = "DATA")]
    pub data: PathBuf,
    /// Write the report as JSON (schema of `d2a eval-masks --json`).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one overlay PNG per slice into this folder (prediction red, truth green).
    #[arg(long, value_name = "DIR")]
    pub overlays: Option<PathBuf>,
}

impl Args {
    /// Evaluates and reports.
    pub fn run(self) -> Result<()> {
        let device = Device::Cpu;
        let loaded = self.model.load(&device)?;
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
            let logits = predict_logits(
                &loaded.model,
                chunk,
                loaded.input,
                self.model.batch,
                &device,
            )?;
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
            self.model.checkpoint.display(),
            loaded.name,
            loaded.input,
            loaded.input,
            self.data.display(),
            report.n_slices,
            report.table()
        );
        if let Some(path) = &self.json {
            super::eval_masks::write_json(path, &report)?;
        }
        Ok(())
    }
}
