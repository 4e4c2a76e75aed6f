//! A DICOM CT series with its lesion mask, given as a NIfTI volume on the series' grid or as a
//! DICOM SEG: the training pair `d2a prepare` reads from a scanner's files.

use std::path::Path;

use nifti::NiftiHeader;

use super::is_nifti;
use super::{Finish, ReadOptions, ReadResult, check_finite, read_volume};
use crate::dicom::is_dicom_file;
use crate::dicom::seg::read_seg;
use crate::inputs::read_input_with;
use crate::{Error, Result};

/// How far (in voxels) a mask's grid may sit from the series' and still be the same grid.
const GRID_TOLERANCE: f64 = 1e-3;

/// Reads the series in the folder `images` and its mask `masks` (a `.nii`/`.nii.gz` volume on
/// the series' voxel grid, in any axis order or direction, or a binary DICOM SEG file), every
/// slice in display orientation, the kept ones resized and passed through `finish`.
pub(crate) fn read_dicom_pair_with<T: Send>(
    images: &Path,
    masks: &Path,
    opts: &ReadOptions,
    finish: Finish<T>,
) -> Result<ReadResult<T>> {
    let input = read_input_with(images, opts.intensity, None)?;
    let (Some(volume), Some(dicom)) = (&input.volume, &input.dicom) else {
        return Err(Error::Invalid(format!(
            "{} is not a DICOM series",
            images.display()
        )));
    };
    let labels = if is_nifti(masks) {
        nifti_on_grid(masks, &volume.header, volume.dims)?
    } else if masks.is_file() && is_dicom_file(masks) {
        read_seg(masks, &dicom.seg_source())?
    } else {
        return Err(Error::Invalid(format!(
            "{}: the mask of a DICOM series must be a NIfTI volume (.nii, .nii.gz) or a DICOM \
             SEG file",
            masks.display()
        )));
    };
    let n_slices_total = input.slices.len();
    let slices = input
        .slices
        .into_iter()
        .zip(labels)
        .filter_map(|(mut slice, mask)| {
            slice.mask = mask;
            (opts.keep_empty || slice.has_lesion()).then(|| finish(opts.resize(slice)))
        })
        .collect();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let sources = dicom
        .instances
        .iter()
        .map(|(file, _)| file.as_path())
        .chain([masks])
        .map(|p| (p.to_path_buf(), size(p)))
        .collect();
    Ok(ReadResult {
        n_volumes: 1,
        n_slices_total,
        slices,
        sources,
    })
}

/// The 3x4 voxel-to-world affine of a NIfTI header: the sform where set, else the qform (the
/// quaternion, voxel sizes and qfac), else an error naming `path`.
fn affine_of(header: &NiftiHeader, path: &Path) -> Result<[[f64; 4]; 3]> {
    let f = |row: [f32; 4]| row.map(f64::from);
    if header.sform_code > 0 {
        return Ok([f(header.srow_x), f(header.srow_y), f(header.srow_z)]);
    }
    if header.qform_code > 0 {
        let (b, c, d) = (
            f64::from(header.quatern_b),
            f64::from(header.quatern_c),
            f64::from(header.quatern_d),
        );
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if header.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let scale = [
            f64::from(header.pixdim[1]),
            f64::from(header.pixdim[2]),
            qfac * f64::from(header.pixdim[3]),
        ];
        let offset = [
            f64::from(header.quatern_x),
            f64::from(header.quatern_y),
            f64::from(header.quatern_z),
        ];
        let mut out = [[0.0; 4]; 3];
        for i in 0..3 {
            for j in 0..3 {
                out[i][j] = r[i][j] * scale[j];
            }
            out[i][3] = offset[i];
        }
        return Ok(out);
    }
    Err(Error::Nifti {
        path: path.to_path_buf(),
        reason: "has neither an sform nor a qform, so where its voxels lie is unknown".into(),
    })
}

/// `a⁻¹ · v` for the 3x3 part of `a` (by its adjugate), or `None` where it is singular.
fn solve(a: &[[f64; 4]; 3], v: [f64; 3]) -> Option<[f64; 3]> {
    let m = |i: usize, j: usize| a[i % 3][j % 3];
    // cofactor(i, j) with cyclic indices carries its own sign.
    let cof =
        |i: usize, j: usize| m(i + 1, j + 1) * m(i + 2, j + 2) - m(i + 1, j + 2) * m(i + 2, j + 1);
    let det: f64 = (0..3).map(|j| m(0, j) * cof(0, j)).sum();
    if det.abs() < 1e-12 {
        return None;
    }
    // (a⁻¹)[i][j] = cof(j, i) / det.
    Some([0, 1, 2].map(|i| (0..3).map(|j| cof(j, i) * v[j]).sum::<f64>() / det))
}

/// The mask volume at `path` laid on the series grid (`header`'s affine, `dims` = [columns,
/// rows, slices]): one 0/1 display-orientation mask per slice. The mask may store the grid in
/// another axis order or direction (its affine says how); any other grid is refused.
fn nifti_on_grid(path: &Path, header: &NiftiHeader, dims: [usize; 3]) -> Result<Vec<Vec<u8>>> {
    let mask = read_volume(path)?;
    let grid_error = |reason: String| Error::Nifti {
        path: path.to_path_buf(),
        reason: format!("is not on the series' voxel grid: {reason}"),
    };
    let series = affine_of(header, path)?;
    let theirs = affine_of(&mask.header, path)?;
    let mask_dims: Vec<usize> = mask.dims.iter().copied().chain([1, 1]).take(3).collect();
    if mask.dims.iter().skip(3).any(|&d| d != 1) {
        return Err(grid_error(format!("dimensions {:?}", mask.dims)));
    }
    // Series voxel (i, j, k) -> mask voxel origin + Σ axis[n]·index[n], each axis a unit
    // step along one mask axis.
    let origin = solve(&theirs, [0, 1, 2].map(|r| series[r][3] - theirs[r][3]))
        .ok_or_else(|| grid_error("its affine is singular".into()))?;
    let mut axes = [(0usize, 1i64); 3];
    for (n, axis) in axes.iter_mut().enumerate() {
        let step = solve(&theirs, [0, 1, 2].map(|r| series[r][n]))
            .ok_or_else(|| grid_error("its affine is singular".into()))?;
        let (along, value) = step
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, &v)| (i, v))
            .unwrap_or((0, 0.0));
        let unit = value.round();
        let off_axis = step
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != along)
            .any(|(_, v)| v.abs() > GRID_TOLERANCE);
        if unit.abs() != 1.0 || (value - unit).abs() > GRID_TOLERANCE || off_axis {
            return Err(grid_error(format!(
                "a step along series axis {n} moves {step:.4?} mask voxels"
            )));
        }
        *axis = (along, unit as i64);
    }
    if axes
        .iter()
        .map(|a| a.0)
        .collect::<std::collections::HashSet<_>>()
        .len()
        != 3
    {
        return Err(grid_error("two series axes fall on one mask axis".into()));
    }
    let start: Vec<i64> = origin.iter().map(|v| v.round() as i64).collect();
    if origin
        .iter()
        .zip(&start)
        .any(|(v, &s)| (v - s as f64).abs() > GRID_TOLERANCE)
    {
        return Err(grid_error(format!(
            "the series' first voxel lies at mask voxel {origin:.4?}"
        )));
    }
    // Every series voxel must fall inside the mask, and the two hold as many voxels.
    for (n, &(along, dir)) in axes.iter().enumerate() {
        let last = start[along] + dir * (dims[n] as i64 - 1);
        let (lo, hi) = (start[along].min(last), start[along].max(last));
        if lo != 0 || hi != mask_dims[along] as i64 - 1 {
            return Err(grid_error(format!(
                "the mask's dimensions {:?} do not cover the series' {dims:?} there",
                mask.dims
            )));
        }
    }
    let (mx, my) = (mask_dims[0], mask_dims[1]);
    let plane = mx * my;
    for (s, labels) in mask.values.chunks_exact(plane.max(1)).enumerate() {
        check_finite(labels, path, s)?;
    }
    let (columns, rows, slices) = (dims[0], dims[1], dims[2]);
    Ok((0..slices)
        .map(|k| {
            let mut out = vec![0u8; rows * columns];
            for r in 0..rows {
                for c in 0..columns {
                    let mut at = [0i64; 3];
                    for (n, index) in [c, r, k].into_iter().enumerate() {
                        let (along, dir) = axes[n];
                        at[along] = start[along] + dir * index as i64;
                    }
                    let src = at[0] as usize + at[1] as usize * mx + at[2] as usize * plane;
                    out[r * columns + c] = u8::from(mask.values[src] >= 0.5);
                }
            }
            out
        })
        .collect())
}
