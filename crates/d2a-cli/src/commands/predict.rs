//! `d2a predict`: segments new scans. For each input, a mask (a NIfTI volume with the source's
//! header and affine, or for a DICOM series the affine of its geometry; or a PNG), overlay PNGs,
//! and a JSON summary: lesion pixels per slice and, for volumes, the lesion volume in mL from
//! the voxel size.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use d2a_data::Intensity;
use d2a_data::dicom::seg::write_seg;
use d2a_data::dicom::{is_dicom_file, is_dicom_folder};
use d2a_data::inputs::{Input, input_stem, read_input_with, write_mask_volume};
use d2a_data::readers::is_nifti;
use d2a_model::Segmenter;
use d2a_train::run::write_json;
use d2a_train::score::image_of;
use image::{GrayImage, Luma};
use serde::Serialize;

use crate::overlay::{save_png, write_overlay};

/// Arguments of `d2a predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint and its model.
    #[command(flatten)]
    pub model: super::CheckpointArgs,
    /// CT inputs: NIfTI volumes (.nii, .nii.gz), DICOM series (a folder of one series' files,
    /// in any order) or 2-D slices (PNG, JPEG, BMP, TIFF).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// The DICOM series to read (SeriesInstanceUID) where a folder holds several.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
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
    /// DICOM series only (the mask is also written as `<stem>_seg.dcm`, a DICOM SEG).
    #[serde(skip_serializing_if = "Option::is_none")]
    dicom: Option<DicomSummary>,
}

/// What a DICOM input was.
#[derive(Debug, Serialize)]
struct DicomSummary {
    series_instance_uid: String,
    study_instance_uid: String,
    /// Slices with lesion (0-based, in slice order).
    slices_with_lesion: Vec<usize>,
    /// Files in the folder that were not read, and why.
    skipped: Vec<String>,
}

impl Args {
    /// Predicts every input in turn.
    pub fn run(self, quiet: bool) -> Result<()> {
        self.check()?;
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating the output folder {}", self.out.display()))?;
        let device = self.model.device.open()?;
        let segmenter = self.model.load(&device)?;
        let bar = super::progress(self.inputs.len(), "predict", quiet || self.inputs.len() < 2);
        for path in &self.inputs {
            // d2a-data's errors name the file.
            let input = read_input_with(path, self.intensity, self.series.as_deref())?;
            let summary = self.predict(&segmenter, path, &input)?;
            bar.suspend(|| {
                println!(
                    "{}: {} slice(s), {} lesion pixels{} -> {}",
                    path.display(),
                    summary.slices.len(),
                    summary.lesion_pixels,
                    summary
                        .lesion_ml
                        .map_or(String::new(), |ml| format!(" ({ml:.2} mL)")),
                    summary.mask.display()
                )
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Checks everything that can be checked before any work or any write: inputs exist, their
    /// outputs do not collide with each other, with an input, or (without --force) with a file.
    fn check(&self) -> Result<()> {
        let mut stems = HashSet::new();
        super::check_output("--out", &self.out, &[&self.model.checkpoint])?;
        let inputs: HashSet<PathBuf> = self
            .inputs
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        for input in &self.inputs {
            let dicom = is_dicom_folder(input);
            if !(input.is_file() || dicom) {
                bail!(
                    "{} is neither a file nor a folder of DICOM files",
                    input.display()
                );
            }
            let stem = input_stem(input);
            if !stems.insert(stem.clone()) {
                bail!("two inputs share the name {stem:?}: their outputs would collide");
            }
            let dicom = dicom || is_dicom_file(input);
            let mut outputs = self.outputs(&stem, dicom || is_nifti(input)).to_vec();
            if dicom {
                outputs.push(self.seg_output(&stem));
            }
            for output in outputs {
                if output.canonicalize().is_ok_and(|o| inputs.contains(&o)) {
                    bail!(
                        "{} is both an input and an output of {}; choose another --out",
                        output.display(),
                        input.display()
                    );
                }
                if !self.force && output.exists() {
                    bail!("{} exists; pass --force to replace it", output.display());
                }
            }
        }
        Ok(())
    }

    /// Segments one input and writes its mask, overlays and summary.
    fn predict(&self, segmenter: &Segmenter, path: &Path, input: &Input) -> Result<Summary> {
        let Some(first) = input.slices.first() else {
            bail!("{} holds no slices", path.display())
        };
        let (h, w) = (first.height, first.width);
        let images = input
            .slices
            .iter()
            .map(image_of)
            .collect::<d2a_train::Result<Vec<_>>>()?;
        let masks = segmenter.segment_all(&images)?;
        let slices: Vec<SliceSummary> = masks
            .iter()
            .enumerate()
            .map(|(index, m)| SliceSummary {
                index,
                lesion_pixels: m.iter().map(|&v| u64::from(v)).sum(),
            })
            .collect();
        let [mask_path, overlay_path, json_path] =
            self.outputs(&input_stem(path), input.volume.is_some());
        match &input.volume {
            Some(info) => {
                write_mask_volume(info, &masks, &mask_path)?;
                write_volume_overlays(input, &masks, &slices, &overlay_path)?;
                if let Some(dicom) = &input.dicom {
                    write_seg(
                        &dicom.seg_source(),
                        &masks,
                        &self.seg_output(&input_stem(path)),
                    )?;
                }
            }
            None => {
                let png = GrayImage::from_fn(w as u32, h as u32, |x, y| {
                    Luma([masks[0][y as usize * w + x as usize] * 255])
                });
                save_png(png, &mask_path)?;
                write_overlay(&first.image, (h, w), &masks[0], None, &overlay_path)?;
            }
        }
        let lesion_pixels: u64 = slices.iter().map(|s| s.lesion_pixels).sum();
        let voxel_ml = input.volume.as_ref().map(|v| v.voxel_ml);
        let summary = Summary {
            input: path.to_path_buf(),
            checkpoint: self.model.checkpoint.clone(),
            model: segmenter.name().to_string(),
            input_size: segmenter.input_size(),
            mask: mask_path,
            height: h,
            width: w,
            lesion_pixels,
            voxel_ml,
            lesion_ml: voxel_ml.map(|v| v * lesion_pixels as f64),
            dicom: input.dicom.as_ref().map(|d| DicomSummary {
                series_instance_uid: d.series_uid.clone(),
                study_instance_uid: d.study_uid.clone(),
                slices_with_lesion: slices
                    .iter()
                    .filter(|s| s.lesion_pixels > 0)
                    .map(|s| s.index)
                    .collect(),
                skipped: d
                    .skipped
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.display()))
                    .collect(),
            }),
            slices,
        };
        write_json(&json_path, &summary)?;
        Ok(summary)
    }

    /// The DICOM Segmentation written for a DICOM input.
    fn seg_output(&self, stem: &str) -> PathBuf {
        self.out.join(format!("{stem}_seg.dcm"))
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

/// Overlays of a volume's slices with lesion only (a volume has hundreds of slices).
fn write_volume_overlays(
    input: &Input,
    masks: &[Vec<u8>],
    slices: &[SliceSummary],
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the overlay folder {}", dir.display()))?;
    for ((s, m), summary) in input.slices.iter().zip(masks).zip(slices) {
        if summary.lesion_pixels > 0 {
            write_overlay(
                &s.image,
                (s.height, s.width),
                m,
                None,
                &dir.join(format!("slice_{:04}.png", summary.index)),
            )?;
        }
    }
    Ok(())
}
