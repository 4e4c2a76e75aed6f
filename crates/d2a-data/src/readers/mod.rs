//! Readers: NIfTI volumes (`.nii`, `.nii.gz`) with their mask volumes, and folders of 2-D slices
//! with their masks, all turned into [`Slice`]s (SPEC §3).
//!
//! [`read_source`] accepts what `d2a prepare` accepts: an image file and a mask file, two folders
//! of NIfTI volumes paired by file name, two folders of 2-D images paired by stem, or a DICOM CT
//! series folder with its mask as a NIfTI volume on the series' grid or a DICOM SEG.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::slice::{Intensity, Provenance, Slice, check_finite};
use crate::slice_files::{GrayMap, files_in, pair_by_stem};
use crate::{Error, Result};

mod dicom_pair;
mod volume;

pub(crate) use volume::read_volume;
pub use volume::{DEFAULT_MAX_VOXELS, max_voxels, open_regular};

/// What to do while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// How raw values become [0, 1].
    pub intensity: Intensity,
    /// Square side every slice is resized to; 0 keeps each slice's own size (for scoring at
    /// the original resolution; prepared datasets need a size).
    pub size: usize,
    /// Keep slices without lesion (the paper drops them).
    pub keep_empty: bool,
    /// Keep the soft maps of 2-D mask files that are soft (pseudo-labels saved as
    /// probabilities, 0-255) in [`Slice::soft`], as training targets; masks that are label maps
    /// or two-valued, NIfTI and DICOM masks and prepared folders have none.
    #[serde(default)]
    pub soft_labels: bool,
}

impl ReadOptions {
    /// Options for scoring: every slice kept, at its own size.
    pub const fn native() -> Self {
        Self {
            intensity: Intensity::Auto,
            size: 0,
            keep_empty: true,
            soft_labels: false,
        }
    }

    /// `slice` resized to [`ReadOptions::size`] (unchanged when it is 0).
    pub fn resize(&self, slice: Slice) -> Slice {
        if self.size == 0 {
            slice
        } else {
            slice.resized(self.size)
        }
    }

    /// The paper's choices: automatic intensity rule, 512x512, lesion slices only.
    pub const fn paper() -> Self {
        Self {
            intensity: Intensity::Auto,
            size: 512,
            keep_empty: false,
            soft_labels: false,
        }
    }
}

/// What a read produced: slices as read ([`Slice`]), or each turned into `T` by the reader's
/// caller as soon as it is read (the `_with` readers), so that a whole dataset is never held as
/// `f32` when its user keeps something smaller.
#[derive(Debug, Clone)]
pub struct ReadResult<T = Slice> {
    /// Volumes read (each 2-D file of a slice folder counts once towards its volume id).
    pub n_volumes: usize,
    /// Slices seen, before dropping those without lesion.
    pub n_slices_total: usize,
    /// The kept slices, resized.
    pub slices: Vec<T>,
    /// Every source file read, with its size in bytes.
    pub sources: Vec<(PathBuf, u64)>,
}

impl<T> Default for ReadResult<T> {
    fn default() -> Self {
        Self {
            n_volumes: 0,
            n_slices_total: 0,
            slices: Vec::new(),
            sources: Vec::new(),
        }
    }
}

/// What a `_with` reader applies to each slice kept (resized) as it is read.
pub type Finish<'a, T> = &'a (dyn Fn(Slice) -> T + Sync);

/// Whether `path` names a NIfTI file.
pub fn is_nifti(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// A file's name without its extension, `.nii.gz` counting as one (`a.nii.gz` -> `a`,
/// `b.png` -> `b`): the volume id of a NIfTI file and the name of every output made from an
/// input. The one file-stem rule of d2a.
pub fn file_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".nii.gz") {
        return name[..name.len() - 7].to_string();
    }
    match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => name,
    }
}

/// Reads images and masks from files or folders; see the module docs.
pub fn read_source(images: &Path, masks: &Path, opts: &ReadOptions) -> Result<ReadResult> {
    read_source_with(images, masks, opts, &|s| s)
}

/// [`read_source`], each kept slice passed through `finish` as soon as it is read.
pub fn read_source_with<T: Send>(
    images: &Path,
    masks: &Path,
    opts: &ReadOptions,
    finish: Finish<T>,
) -> Result<ReadResult<T>> {
    if crate::dicom::is_dicom_folder(images) {
        return dicom_pair::read_dicom_pair_with(images, masks, opts, finish);
    }
    if images.is_file() {
        let vol = read_nifti_pair_with(images, masks, opts, finish)?;
        return Ok(ReadResult {
            n_volumes: 1,
            ..vol
        });
    }
    let nifti_files = list_nifti(images)?;
    if nifti_files.is_empty() {
        return read_slice_folders_with(images, masks, opts, finish);
    }
    let mask_files = list_nifti(masks)?;
    let mut only_images = Vec::new();
    let mut pairs = Vec::new();
    for img in &nifti_files {
        match mask_files.iter().find(|m| file_stem(m) == file_stem(img)) {
            Some(m) => pairs.push((img.clone(), m.clone())),
            None => only_images.push(file_name(img)),
        }
    }
    let only_masks: Vec<String> = mask_files
        .iter()
        .filter(|m| !nifti_files.iter().any(|i| file_stem(i) == file_stem(m)))
        .map(|m| file_name(m))
        .collect();
    if !only_images.is_empty() || !only_masks.is_empty() {
        return Err(Error::Unpaired(Box::new(crate::UnpairedFiles {
            left_role: "image".into(),
            left_dir: images.to_path_buf(),
            only_left: only_images,
            right_role: "mask".into(),
            right_dir: masks.to_path_buf(),
            only_right: only_masks,
        })));
    }
    let mut out = ReadResult::default();
    for (img, mask) in pairs {
        let vol = read_nifti_pair_with(&img, &mask, opts, finish)?;
        out.n_volumes += 1;
        out.n_slices_total += vol.n_slices_total;
        out.slices.extend(vol.slices);
        out.sources.extend(vol.sources);
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn list_nifti(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(files_in(dir)?.into_iter().filter(|p| is_nifti(p)).collect())
}

/// Display full scale of non-HU volumes: 0–255 data is divided by 255 (SPEC §3).
pub(crate) const DISPLAY_FULL_SCALE: f32 = 255.0;

/// A NIfTI volume as stored: its header, dims `[x, y, z]`, values with x varying fastest
/// (scaling applied).
pub(crate) struct RawVolume {
    pub(crate) header: nifti::NiftiHeader,
    pub(crate) dims: Vec<usize>,
    pub(crate) values: Vec<f32>,
}

impl RawVolume {
    /// Fails on a non-finite voxel (naming `path` and the slice), else resolves `intensity`
    /// over the whole volume's range.
    pub(crate) fn intensity_rule(&self, path: &Path, intensity: Intensity) -> Result<Intensity> {
        let plane = self.dims[0] * self.dims[1];
        for (s, values) in self.values.chunks_exact(plane.max(1)).enumerate() {
            check_finite(values, path, s)?;
        }
        let (min, max) = self
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        Ok(intensity.resolve(min, max, DISPLAY_FULL_SCALE))
    }
}

/// Reads one image volume and its mask volume: slices along z, transposed to display
/// orientation (row = y, column = x), every non-zero label merged into lesion.
pub fn read_nifti_pair(image: &Path, mask: &Path, opts: &ReadOptions) -> Result<ReadResult> {
    read_nifti_pair_with(image, mask, opts, &|s| s)
}

/// [`read_nifti_pair`], each kept slice passed through `finish` as soon as it is read.
pub fn read_nifti_pair_with<T: Send>(
    image: &Path,
    mask: &Path,
    opts: &ReadOptions,
    finish: Finish<T>,
) -> Result<ReadResult<T>> {
    let vol = read_volume(image)?;
    let mask_vol = read_volume(mask)?;
    let full_scale = DISPLAY_FULL_SCALE;
    let (dims, mask_dims) = (vol.dims.clone(), mask_vol.dims);
    if dims != mask_dims {
        return Err(Error::MaskShape {
            image: image.to_path_buf(),
            image_dims: dims,
            mask: mask.to_path_buf(),
            mask_dims,
        });
    }
    let (x, y, z) = (dims[0], dims[1], dims[2]);
    let plane = x * y;
    let rule = vol.intensity_rule(image, opts.intensity)?;
    // A NaN label is neither lesion nor background: refused, naming the mask and the slice.
    for (s, labels) in mask_vol.values.chunks_exact(plane.max(1)).enumerate() {
        check_finite(labels, mask, s)?;
    }
    let (values, labels) = (vol.values, mask_vol.values);
    let volume = file_stem(image);
    let slices: Vec<T> = (0..z)
        .into_par_iter()
        .filter_map(|s| {
            // Stored index (x, y) = x + y·X; display pixel (row r, col c) = stored (x = c, y = r).
            let mut img = vec![0f32; plane];
            let mut msk = vec![0u8; plane];
            for r in 0..y {
                for c in 0..x {
                    let src = s * plane + c + r * x;
                    img[r * x + c] = rule.apply(values[src], full_scale);
                    msk[r * x + c] = u8::from(labels[src] >= 0.5);
                }
            }
            let slice = Slice {
                height: y,
                width: x,
                image: img,
                mask: msk,
                soft: None,
                provenance: Provenance {
                    file: image.to_path_buf(),
                    volume: volume.clone(),
                    slice_idx: s,
                },
            };
            (opts.keep_empty || slice.has_lesion()).then(|| finish(opts.resize(slice)))
        })
        .collect();
    let sources = [image, mask]
        .iter()
        .map(|p| {
            (
                p.to_path_buf(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    Ok(ReadResult {
        n_volumes: 1,
        n_slices_total: z,
        slices,
        sources,
    })
}

/// The volume id of a 2-D slice file: its stem without a trailing `_N` / `-N` slice number
/// (`Data-1_coronacases_org_001_17` -> `Data-1_coronacases_org_001`), or the whole stem.
pub fn volume_of_stem(stem: &str) -> String {
    let trimmed = stem.trim_end_matches(|c: char| c.is_ascii_digit());
    match trimmed.strip_suffix(['_', '-']) {
        Some(base) if !base.is_empty() && trimmed.len() < stem.len() => base.to_string(),
        _ => stem.to_string(),
    }
}

/// A label mask from a mask image: a label map (every value at most 3: 0 background, 1–3 lesion
/// classes) is lesion where non-zero; anything else (0/255 or soft 0–255 maps) is lesion where
/// the value is at least half the full scale (128 for 8-bit).
pub fn mask_from_gray(map: &GrayMap) -> Vec<u8> {
    let label_map = is_label_map(map);
    let cut = u32::from(map.depth_max).div_ceil(2);
    map.values
        .iter()
        .map(|&v| {
            u8::from(if label_map {
                v != 0
            } else {
                u32::from(v) >= cut
            })
        })
        .collect()
}

/// Whether a mask image is a label map: every value at most 3 (0 background, 1-3 lesion
/// classes).
fn is_label_map(map: &GrayMap) -> bool {
    map.values.iter().all(|&v| v <= 3)
}

/// The soft map of a mask image in levels 0..=255 (`round(255 · v / full scale)`), or `None`
/// where the image is a label map or holds at most two values (a binary mask has nothing soft
/// to keep).
pub fn soft_levels(map: &GrayMap) -> Option<Vec<u8>> {
    let label_map = is_label_map(map);
    let mut seen = map.values.iter().copied();
    let first = seen.next()?;
    let second = seen.find(|&v| v != first)?;
    let two_valued = map.values.iter().all(|&v| v == first || v == second);
    if label_map || two_valued {
        return None;
    }
    let full = u32::from(map.depth_max);
    Some(
        map.values
            .iter()
            .map(|&v| ((u32::from(v) * 255 + full / 2) / full) as u8)
            .collect(),
    )
}

/// Reads two folders of 2-D images paired by stem.
pub fn read_slice_folders(images: &Path, masks: &Path, opts: &ReadOptions) -> Result<ReadResult> {
    read_slice_folders_with(images, masks, opts, &|s| s)
}

/// [`read_slice_folders`], each kept slice passed through `finish` as soon as it is read.
pub fn read_slice_folders_with<T: Send>(
    images: &Path,
    masks: &Path,
    opts: &ReadOptions,
    finish: Finish<T>,
) -> Result<ReadResult<T>> {
    let pairs = pair_by_stem((images, "image"), (masks, "mask"))?;
    let read = |pair: &crate::slice_files::SlicePair| -> Result<Option<T>> {
        let img = GrayMap::read(&pair.left)?;
        let msk = GrayMap::read(&pair.right)?;
        if img.size() != msk.size() {
            return Err(Error::SizeMismatch {
                left: pair.left.clone(),
                left_size: img.size(),
                right: pair.right.clone(),
                right_size: msk.size(),
            });
        }
        let full_scale = f32::from(img.depth_max);
        let raw: Vec<f32> = img.values.iter().map(|&v| f32::from(v)).collect();
        let rule = opts.intensity.resolve(0.0, 0.0, full_scale);
        let slice = Slice {
            height: img.height as usize,
            width: img.width as usize,
            image: raw.iter().map(|&v| rule.apply(v, full_scale)).collect(),
            mask: mask_from_gray(&msk),
            soft: opts.soft_labels.then(|| soft_levels(&msk)).flatten(),
            provenance: Provenance {
                file: pair.left.clone(),
                volume: volume_of_stem(&pair.stem),
                slice_idx: 0,
            },
        };
        Ok((opts.keep_empty || slice.has_lesion()).then(|| finish(opts.resize(slice))))
    };
    let read_all: Vec<Option<T>> = pairs.par_iter().map(read).collect::<Result<_>>()?;
    let mut volumes: Vec<String> = pairs.iter().map(|p| volume_of_stem(&p.stem)).collect();
    volumes.sort();
    volumes.dedup();
    let sources = pairs
        .iter()
        .flat_map(|p| [&p.left, &p.right])
        .map(|p| {
            (
                p.clone(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    Ok(ReadResult {
        n_volumes: volumes.len(),
        n_slices_total: pairs.len(),
        slices: read_all.into_iter().flatten().collect(),
        sources,
    })
}

#[cfg(test)]
mod tests;
