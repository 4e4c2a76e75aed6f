//! `d2a prepare`: reads NIfTI volumes or slice folders once and writes a prepared dataset.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use d2a_data::{Intensity, ReadOptions, prepared, read_source};
use serde::Serialize;

/// Arguments of `d2a prepare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A NIfTI image volume, a folder of them, a folder of 2-D slice images, or a DICOM CT
    /// series folder.
    #[arg(long, value_name = "PATH")]
    pub images: PathBuf,
    /// The matching mask volume, folder of mask volumes, or folder of mask images; for a DICOM
    /// series, a NIfTI volume on the series' voxel grid (any axis order, as its affine says) or
    /// a binary DICOM SEG.
    #[arg(long, value_name = "PATH")]
    pub masks: PathBuf,
    /// The folder to create (it must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Intensity rule: auto (HU if values leave 0..255), hu (window [-1250, 250]) or u8 (/255).
    #[arg(long, default_value = "auto")]
    pub intensity: Intensity,
    /// Square side every slice is resized to.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Keep slices without lesion.
    #[arg(long)]
    pub keep_empty: bool,
    /// Print {"n_volumes", "n_slices_total", "n_slices_kept", "size", "out"} as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Summary {
    n_volumes: usize,
    n_slices_total: usize,
    n_slices_kept: usize,
    size: usize,
    out: PathBuf,
}

impl Args {
    /// Reads, writes and reports.
    pub fn run(self, quiet: bool) -> Result<()> {
        let start = Instant::now();
        super::check_output("--out", &self.out, &[&self.images, &self.masks])?;
        // The readers report no per-file progress yet: a spinner with the elapsed time.
        let spinner = if quiet || self.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        spinner.set_message(format!("reading {}", self.images.display()));
        spinner.enable_steady_tick(std::time::Duration::from_millis(200));
        let options = ReadOptions {
            intensity: self.intensity,
            size: self.size,
            keep_empty: self.keep_empty,
            soft_labels: false,
        };
        let read = read_source(&self.images, &self.masks, &options).with_context(|| {
            format!(
                "reading {} with {}",
                self.images.display(),
                self.masks.display()
            )
        })?;
        spinner.set_message(format!("writing {}", self.out.display()));
        let manifest = prepared::write(&read, &options, &self.out)
            .with_context(|| format!("writing {}", self.out.display()))?;
        spinner.finish_and_clear();
        let summary = Summary {
            n_volumes: manifest.n_volumes,
            n_slices_total: manifest.n_slices_total,
            n_slices_kept: manifest.n_slices_kept,
            size: self.size,
            out: self.out.clone(),
        };
        if self.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            println!(
                "prepared {}: {} volume(s), {} slices, {} kept ({}x{}) in {:.1} s",
                self.out.display(),
                summary.n_volumes,
                summary.n_slices_total,
                summary.n_slices_kept,
                self.size,
                self.size,
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}
