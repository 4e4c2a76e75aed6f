//! `d2a eval-masks`: scores a folder of predicted masks against a folder of ground truth.
//!
//! Files pair by stem across png/jpg/jpeg/bmp/tif. Truth is lesion wherever a pixel is non-zero;
//! a prediction (0/1 mask, 0/255 mask or soft 0–255 map) is lesion where its value is at least
//! the threshold times its full scale (see [`d2a_data::slice_files::GrayMap::at_least`]).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use d2a_data::slice_files::{GrayMap, pair_by_stem};
use d2a_metrics::{Confusion, Report};

/// Arguments of `d2a eval-masks`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of predicted masks or probability maps.
    #[arg(long, value_name = "DIR")]
    pub pred: PathBuf,
    /// Folder of ground-truth masks (any non-zero pixel is lesion).
    #[arg(long, value_name = "DIR")]
    pub truth: PathBuf,
    /// A prediction pixel is lesion where value >= T x full scale (255 for 8-bit maps).
    #[arg(long, value_name = "T", default_value_t = 0.5)]
    pub threshold: f64,
    /// Also write the report, with every slice, as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl Args {
    /// Evaluates, prints the table and writes the JSON report if asked.
    pub fn run(self) -> Result<()> {
        if let Some(json) = &self.json {
            super::check_output("--json", json, &[&self.pred, &self.truth])?;
        }
        let report = evaluate(&self.pred, &self.truth, self.threshold)?;
        println!(
            "d2a eval-masks: {} vs {} (threshold {})\n{}",
            self.pred.display(),
            self.truth.display(),
            self.threshold,
            report.table()
        );
        if let Some(path) = &self.json {
            d2a_train::run::write_json(path, &report)?;
            println!("report written to {}", path.display());
        }
        Ok(())
    }
}

/// Scores every prediction in `pred_dir` against its truth in `truth_dir`.
///
/// Errors name the files at fault: unpaired files on either side, unreadable or truncated images,
/// and a prediction whose size differs from its truth.
pub fn evaluate(pred_dir: &Path, truth_dir: &Path, threshold: f64) -> Result<Report> {
    if !(0.0..=1.0).contains(&threshold) {
        bail!("--threshold must be in [0, 1], got {threshold}");
    }
    let pairs = pair_by_stem((pred_dir, "prediction"), (truth_dir, "truth"))?;
    let mut named = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let pred = GrayMap::read(&pair.left)?;
        let truth = GrayMap::read(&pair.right)?;
        if pred.size() != truth.size() {
            bail!(
                "prediction {} is {}x{} but truth {} is {}x{} (width x height)",
                pair.left.display(),
                pred.width,
                pred.height,
                pair.right.display(),
                truth.width,
                truth.height
            );
        }
        let counts = Confusion::from_masks(&pred.at_least(threshold)?, &truth.nonzero())?;
        named.push((pair.stem, counts));
    }
    Ok(Report::new(named)?)
}
