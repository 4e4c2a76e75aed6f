//! Unlabelled inputs for prediction: one 2-D image, one NIfTI volume or one DICOM CT series read
//! into slices, and mask volumes written back with the source's header and affine (for a DICOM
//! series, the affine its geometry gives).

use std::path::Path;

use ndarray::Array3;
use nifti::NiftiHeader;

use crate::dicom::seg::SegSource;
use crate::dicom::{Geometry, is_dicom_file, is_dicom_folder, read_series};
use crate::readers::{DISPLAY_FULL_SCALE, file_stem, is_nifti, read_volume};
use crate::slice::{Intensity, Provenance, Slice};
use crate::slice_files::GrayMap;
use crate::{Error, Result};

/// Where a NIfTI input's slices came from, to write the mask volume back.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    /// The source header (affine, voxel size, orientation).
    pub header: NiftiHeader,
    /// Stored dimensions `[x, y, z]`.
    pub dims: [usize; 3],
    /// Volume of one voxel in millilitres (`pixdim[1..4]` in mm, product / 1000).
    pub voxel_ml: f64,
}

/// A prediction input: its slices in display orientation (masks all zero) and, for a volume,
/// what writing the mask volume needs.
#[derive(Debug, Clone)]
pub struct Input {
    /// Slices, in order.
    pub slices: Vec<Slice>,
    /// `Some` for a NIfTI volume or a DICOM series.
    pub volume: Option<VolumeInfo>,
    /// `Some` for a DICOM series: its UIDs and the files skipped.
    pub dicom: Option<DicomSource>,
}

/// Where a DICOM input's slices came from.
#[derive(Debug, Clone)]
pub struct DicomSource {
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// Each slice's file and SOPInstanceUID, in slice order.
    pub instances: Vec<(std::path::PathBuf, String)>,
    /// Files found but not read, with the reason.
    pub skipped: Vec<(std::path::PathBuf, String)>,
    /// The series' geometry.
    pub geometry: Geometry,
}

impl DicomSource {
    /// What a SEG written for this series needs.
    pub fn seg_source(&self) -> SegSource<'_> {
        SegSource {
            series_uid: &self.series_uid,
            study_uid: &self.study_uid,
            instances: &self.instances,
            geometry: &self.geometry,
        }
    }
}

/// Reads a 2-D image (PNG, JPEG, BMP, TIFF), a NIfTI volume (`.nii`, `.nii.gz`) or a DICOM CT
/// series (a folder, or one DICOM file).
pub fn read_input(path: &Path, intensity: Intensity) -> Result<Input> {
    read_input_with(path, intensity, None)
}

/// [`read_input`], with the DICOM series chosen by SeriesInstanceUID where a folder holds
/// several.
pub fn read_input_with(path: &Path, intensity: Intensity, series: Option<&str>) -> Result<Input> {
    if is_nifti(path) {
        return read_volume_input(path, intensity);
    }
    if is_dicom_folder(path) || (path.is_file() && is_dicom_file(path)) {
        return read_dicom_input(path, intensity, series);
    }
    if !path.is_file() {
        return Err(Error::Invalid(format!(
            "{} is neither a file nor a folder of DICOM files (expected a PNG/JPEG/BMP/TIFF \
             slice, a .nii/.nii.gz volume or a DICOM series)",
            path.display()
        )));
    }
    let img = GrayMap::read(path)?;
    let full_scale = f32::from(img.depth_max);
    let rule = intensity.resolve(0.0, 0.0, full_scale);
    let (height, width) = (img.height as usize, img.width as usize);
    let stem = file_stem(path);
    Ok(Input {
        slices: vec![Slice {
            height,
            width,
            image: img
                .values
                .iter()
                .map(|&v| rule.apply(f32::from(v), full_scale))
                .collect(),
            mask: vec![0; height * width],
            soft: None,
            provenance: Provenance {
                file: path.to_path_buf(),
                volume: stem,
                slice_idx: 0,
            },
        }],
        volume: None,
        dicom: None,
    })
}

/// The name an input's outputs are called by: a folder's whole name (a DICOM series folder
/// named `1.2.840.113619` keeps its dots), else [`file_stem`].
pub fn input_stem(path: &Path) -> String {
    if path.is_dir()
        && let Some(name) = path.file_name()
    {
        return name.to_string_lossy().into_owned();
    }
    file_stem(path)
}

fn read_dicom_input(path: &Path, intensity: Intensity, series: Option<&str>) -> Result<Input> {
    let s = read_series(&[path.to_path_buf()], series)?;
    let g = &s.geometry;
    let (x, y, z) = (g.columns, g.rows, s.files.len());
    // Values are HU; `u8` is honoured for whoever asks for it.
    let rule = match intensity {
        Intensity::U8 => Intensity::U8,
        Intensity::Auto | Intensity::Hu => Intensity::Hu,
    };
    let volume = input_stem(path);
    let slices =
        s.hu.chunks_exact(x * y)
            .zip(&s.files)
            .enumerate()
            .map(|(k, (plane, file))| Slice {
                height: y,
                width: x,
                // Display pixel (row r, column c) is the DICOM pixel: stored x = column, y = row.
                image: plane
                    .iter()
                    .map(|&v| rule.apply(v, DISPLAY_FULL_SCALE))
                    .collect(),
                mask: vec![0; x * y],
                soft: None,
                provenance: Provenance {
                    file: file.clone(),
                    volume: volume.clone(),
                    slice_idx: k,
                },
            })
            .collect();
    let [dr, dc] = g.pixel_spacing;
    let dz = g.slice_spacing();
    let a = g.affine_ras();
    let row = |r: [f64; 4]| r.map(|v| v as f32);
    let header = NiftiHeader {
        dim: [3, x as u16, y as u16, z as u16, 1, 1, 1, 1],
        pixdim: [1.0, dc as f32, dr as f32, dz as f32, 1.0, 1.0, 1.0, 1.0],
        sform_code: 1,
        qform_code: 0,
        srow_x: row(a[0]),
        srow_y: row(a[1]),
        srow_z: row(a[2]),
        // Millimetres.
        xyzt_units: 2,
        ..NiftiHeader::default()
    };
    Ok(Input {
        slices,
        volume: Some(VolumeInfo {
            header,
            dims: [x, y, z],
            voxel_ml: dr * dc * dz / 1000.0,
        }),
        dicom: Some(DicomSource {
            series_uid: s.uid,
            study_uid: s.study_uid,
            instances: s.files.into_iter().zip(s.sop_instance_uids).collect(),
            skipped: s.skipped,
            geometry: s.geometry,
        }),
    })
}

fn read_volume_input(path: &Path, intensity: Intensity) -> Result<Input> {
    let vol = read_volume(path)?;
    let rule = vol.intensity_rule(path, intensity)?;
    let (x, y, z) = (vol.dims[0], vol.dims[1], vol.dims[2]);
    let (header, values, plane) = (vol.header, vol.values, x * y);
    let volume = file_stem(path);
    let slices = (0..z)
        .map(|s| {
            // Display pixel (row r, col c) = stored (x = c, y = r), as the training readers.
            let mut image = vec![0f32; plane];
            for r in 0..y {
                for c in 0..x {
                    image[r * x + c] =
                        rule.apply(values[s * plane + c + r * x], DISPLAY_FULL_SCALE);
                }
            }
            Slice {
                height: y,
                width: x,
                image,
                mask: vec![0; plane],
                soft: None,
                provenance: Provenance {
                    file: path.to_path_buf(),
                    volume: volume.clone(),
                    slice_idx: s,
                },
            }
        })
        .collect();
    let mm3: f64 = header.pixdim[1..4]
        .iter()
        .map(|&d| f64::from(d).abs())
        .product();
    Ok(Input {
        slices,
        volume: Some(VolumeInfo {
            header,
            dims: [x, y, z],
            voxel_ml: mm3 / 1000.0,
        }),
        dicom: None,
    })
}

/// Writes one display-orientation mask per slice (values 0/1) as a `u8` NIfTI volume at `path`
/// with the source header's geometry (affine, voxel size, orientation).
pub fn write_mask_volume(info: &VolumeInfo, masks: &[Vec<u8>], path: &Path) -> Result<()> {
    let [x, y, z] = info.dims;
    if masks.len() != z || masks.iter().any(|m| m.len() != x * y) {
        return Err(Error::Invalid(format!(
            "{} masks for a volume of {z} slices of {x}x{y}",
            masks.len()
        )));
    }
    let array = Array3::from_shape_fn((x, y, z), |(c, r, s)| masks[s][r * x + c]);
    let mut header = info.header.clone();
    // The mask is a label map: no intensity scaling.
    header.scl_slope = 1.0;
    header.scl_inter = 0.0;
    header.cal_min = 0.0;
    header.cal_max = 1.0;
    // The writer compresses by the extension, so the temporary file keeps it.
    let extension = if path.to_string_lossy().ends_with(".gz") {
        ".nii.gz"
    } else {
        ".nii"
    };
    write_through_temporary(path, extension, |tmp| {
        nifti::writer::WriterOptions::new(tmp)
            .reference_header(&header)
            .write_nifti(&array)
            .map_err(|e| Error::Nifti {
                path: path.to_path_buf(),
                reason: format!("cannot write: {e}"),
            })
    })
}

/// Writes `path` through a temporary sibling (`.NAME-partial-PID` + `extension`, the dots of
/// NAME made `_`) that `write`
/// fills and that is then renamed, so a killed run never leaves a truncated file under the
/// final name; the temporary file is removed when anything fails.
pub(crate) fn write_through_temporary(
    path: &Path,
    extension: &str,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    // No dot before `extension`: the NIfTI writer re-derives its file name from the last one
    // (`.mask.nii.partial-1.nii` would become `.mask.nii.nii`).
    let tmp = path.with_file_name(format!(
        ".{}-partial-{}{extension}",
        name.unwrap_or_default().replace('.', "_"),
        std::process::id(),
    ));
    let written = write(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|source| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use nifti::{IntoNdArray as _, NiftiObject as _, ReaderOptions};

    use super::*;

    #[test]
    fn a_mask_volume_round_trips_with_the_source_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let (x, y, z) = (5usize, 4usize, 3usize);
        let src = dir.path().join("ct.nii.gz");
        let values = Array3::from_shape_fn((x, y, z), |(c, r, s)| {
            -1000.0f32 + (c * 100 + r * 10 + s) as f32
        });
        let mut header = NiftiHeader {
            pixdim: [1.0, 0.7, 0.8, 2.5, 1.0, 1.0, 1.0, 1.0],
            srow_x: [0.7, 0.0, 0.0, -90.0],
            sform_code: 1,
            ..NiftiHeader::default()
        };
        header.srow_y = [0.0, 0.8, 0.0, 12.0];
        nifti::writer::WriterOptions::new(&src)
            .reference_header(&header)
            .write_nifti(&values)
            .unwrap();
        let input = read_input(&src, Intensity::Auto).unwrap();
        assert_eq!(input.slices.len(), z);
        assert_eq!((input.slices[0].height, input.slices[0].width), (y, x));
        let info = input.volume.unwrap();
        assert!((info.voxel_ml - 0.7 * 0.8 * 2.5 / 1000.0).abs() < 1e-9);
        // A mask marking display pixel (row 1, col 3) of slice 2 only.
        let mut masks = vec![vec![0u8; x * y]; z];
        masks[2][x + 3] = 1;
        let out = dir.path().join("mask.nii.gz");
        write_mask_volume(&info, &masks, &out).unwrap();
        let back = ReaderOptions::new().read_file(&out).unwrap();
        let h = back.header().clone();
        assert_eq!(
            (h.srow_x, h.srow_y, h.pixdim),
            (header.srow_x, header.srow_y, header.pixdim)
        );
        let arr = back.into_volume().into_ndarray::<f32>().unwrap();
        assert_eq!(arr.shape(), &[x, y, z]);
        for ((c, r, s), &v) in arr.indexed_iter().map(|(i, v)| ((i[0], i[1], i[2]), v)) {
            let want = if (c, r, s) == (3, 1, 2) { 1.0 } else { 0.0 };
            assert_eq!(v, want, "voxel {c},{r},{s}");
        }
        assert!(write_mask_volume(&info, &masks[..2], &out).is_err());
    }
}
