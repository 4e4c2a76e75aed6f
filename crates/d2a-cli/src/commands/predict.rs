//! `d2a predict`: segments new scans. For each input, a mask (a NIfTI volume with the source's
//! header and affine, or a PNG), overlay PNGs, and a JSON summary: lesion pixels per slice and,
//! for volumes, the lesion volume in mL from the voxel size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::Device;
use d2a_data::Intensity;
use d2a_data::inputs::{read_input, write_mask_volume};
use d2a_data::readers::{is_nifti, nifti_stem};
use d2a_train::infer::predict_logits;
use image::{GrayImage, Luma};
use serde::Serialize;

use crate::overlay::write_overlay;

/// Arguments of `d2a predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint and its model.
    #[command(flatten)]
    pub model: super::CheckpointArgs,
    /// CT inputs: NIfTI volumes (.nii, .nii.gz) or 2-D slices (PNG, JPEG, BMP, TIFF).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Intensity rule: auto (HU if values leave 0..255), hu or u8.
    #[arg(long, default_value = "auto")]
    pub intensity: Intensity,
    /// Replace outputs that already exist.
    #[arg(long)]
    pub force: bool,
}

/// One slice of a summary.
#[derive(Debug, Serialize)]
struct SliceSummary {
    index: usize,
    lesion_pixels: u64,
}

/// `<stem>.json`.
#[derive(Debug, Serialize)]
struct Summary {
    input: PathBuf,
    checkpoint: PathBuf,
    model: String,
    input_size: usize,
    mask: PathBuf,
    height: usize,
    width: usize,
    slices: Vec<SliceSummary>,
    lesion_pixels: u64,
    /// Volumes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    voxel_ml: Option<f64>,
    /// Volumes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    lesion_ml: Option<f64>,
}

fn stem_of(path: &Path) -> String {
    if is_nifti(path) {
        nifti_stem(path)
    } else {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
    }
}

impl Args {
    /// Predicts every input in turn.
    pub fn run(self) -> Result<()> {
        // Check everything that can be checked before any work or any write.
        let mut stems = HashSet::new();
        for input in &self.inputs {
            if !input.is_file() {
                bail!("{} is not a file", input.display());
            }
            let stem = stem_of(input);
            if !stems.insert(stem.clone()) {
                bail!("two inputs share the name {stem:?}: their outputs would collide");
            }
            if !self.force {
                for existing in self.outputs(&stem, is_nifti(input)) {
                    if existing.exists() {
                        bail!("{} exists; pass --force to replace it", existing.display());
                    }
                }
            }
        }
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating the output folder {}", self.out.display()))?;
        let device = Device::Cpu;
        let loaded = self.model.load(&device)?;
        for path in &self.inputs {
            let input = read_input(path, self.intensity)
                .with_context(|| format!("reading {}", path.display()))?;
            let stem = stem_of(path);
            let [mask_path, overlay_path, json_path] = self.outputs(&stem, input.volume.is_some());
            let logits = predict_logits(
                &loaded.model,
                &input.slices,
                loaded.input,
                self.model.batch,
                &device,
            )?;
            let masks: Vec<Vec<u8>> = logits
                .iter()
                .map(|l| l.iter().map(|&v| u8::from(v >= 0.0)).collect())
                .collect();
            let Some(first) = input.slices.first() else {
                bail!("{} holds no slices", path.display())
            };
            let (h, w) = (first.height, first.width);
            let slices: Vec<SliceSummary> = masks
                .iter()
                .enumerate()
                .map(|(index, m)| SliceSummary {
                    index,
                    lesion_pixels: m.iter().map(|&v| u64::from(v)).sum(),
                })
                .collect();
            let lesion_pixels: u64 = slices.iter().map(|s| s.lesion_pixels).sum();
            if let Some(info) = &input.volume {
                write_mask_volume(info, &masks, &mask_path)?;
                std::fs::create_dir_all(&overlay_path).with_context(|| {
                    format!("creating the overlay folder {}", overlay_path.display())
                })?;
                // Overlays of the slices with lesion only: a volume has hundreds of slices.
                for ((s, m), summary) in input.slices.iter().zip(&masks).zip(&slices) {
                    if summary.lesion_pixels > 0 {
                        write_overlay(
                            &s.image,
                            (h, w),
                            m,
                            None,
                            &overlay_path.join(format!("slice_{:04}.png", summary.index)),
                        )?;
                    }
                }
            } else {
                let png = GrayImage::from_fn(w as u32, h as u32, |x, y| {
                    Luma([masks[0][y as usize * w + x as usize] * 255])
                });
                png.save(&mask_path)
                    .with_context(|| format!("writing {}", mask_path.display()))?;
                write_overlay(&first.image, (h, w), &masks[0], None, &overlay_path)?;
            }
            let voxel_ml = input.volume.as_ref().map(|v| v.voxel_ml);
            let summary = Summary {
                input: path.clone(),
                checkpoint: self.model.checkpoint.clone(),
                model: loaded.name.clone(),
                input_size: loaded.input,
                mask: mask_path.clone(),
                height: h,
                width: w,
                lesion_pixels,
                voxel_ml,
                lesion_ml: voxel_ml.map(|v| v * lesion_pixels as f64),
                slices,
            };
            d2a_train::run::write_atomic(
                &json_path,
                (serde_json::to_string_pretty(&summary)? + "\n").as_bytes(),
            )
            .map_err(|e| anyhow!("{e}"))?;
            println!(
                "{}: {} slice(s), {} lesion pixels{} -> {}",
                path.display(),
                summary.slices.len(),
                lesion_pixels,
                summary
                    .lesion_ml
                    .map_or(String::new(), |ml| format!(" ({ml:.2} mL)")),
                mask_path.display()
            );
        }
        Ok(())
    }

    /// `[mask, overlay (file or folder), summary]` of an input.
    fn outputs(&self, stem: &str, volume: bool) -> [PathBuf; 3] {
        if volume {
            [
                self.out.join(format!("{stem}_mask.nii.gz")),
                self.out.join(format!("{stem}_overlays")),
                self.out.join(format!("{stem}.json")),
            ]
        } else {
            [
                self.out.join(format!("{stem}_mask.png")),
                self.out.join(format!("{stem}_overlay.png")),
                self.out.join(format!("{stem}.json")),
            ]
        }
    }
}
