//! `d2a eval`: scores a trained checkpoint on a labelled dataset with the paper's metrics (the
//! JSON schema of `d2a eval-masks`), optionally writing overlay PNGs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use d2a_data::ReadOptions;
use d2a_data::dataset::read_dataset;
use d2a_metrics::Report;
use d2a_model::mask_of_logits;
use d2a_train::score::{confusion_at, for_each_prediction, slice_name};

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
    pub fn run(self, quiet: bool) -> Result<()> {
        let inputs = [self.model.checkpoint.as_path(), self.data.as_path()];
        if let Some(json) = &self.json {
            super::check_output("--json", json, &inputs)?;
        }
        if let Some(dir) = &self.overlays {
            super::check_output("--overlays", dir, &inputs)?;
        }
        let device = self.model.device.open()?;
        let segmenter = self.model.load(&device)?;
        // Every slice, scored at its own size (as published scores are).
        let mut slices = read_dataset(&self.data, &ReadOptions::native())
            .with_context(|| format!("reading {}", self.data.display()))?;
        // As the checkpoint was trained (the Segmenter does the same for predict).
        d2a_train::run::normalise_all(&mut slices, segmenter.normalise());
        if let Some(dir) = &self.overlays {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the overlay folder {}", dir.display()))?;
        }
        let bar = super::progress(slices.len(), "eval", quiet);
        let at = segmenter.threshold_logit();
        let mut named = Vec::with_capacity(slices.len());
        for_each_prediction(
            segmenter.model(),
            &slices,
            (segmenter.input_size(), self.model.batch.into()),
            segmenter.tta(),
            &device,
            |s, logits| {
                let name = slice_name(s);
                if let Some(dir) = &self.overlays {
                    write_overlay(
                        &s.image,
                        (s.height, s.width),
                        &mask_of_logits(&logits, at),
                        Some(&s.mask),
                        &dir.join(format!("{name}.png")),
                    )?;
                }
                named.push((name, confusion_at(s, &logits, at)?));
                bar.inc(1);
                anyhow::Ok(())
            },
        )?;
        bar.finish_and_clear();
        let report = Report::new(named)?;
        let input = segmenter.input_size();
        println!(
            "{} ({}, input {input}x{input}, threshold {}) on {}: {} slices\n{}",
            self.model.checkpoint.display(),
            segmenter.name(),
            segmenter.threshold(),
            self.data.display(),
            report.n_slices,
            report.table()
        );
        if let Some(path) = &self.json {
            d2a_train::run::write_json(path, &report)?;
        }
        Ok(())
    }
}
