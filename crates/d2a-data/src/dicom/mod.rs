//! DICOM CT series: a folder (or a list of files) read into one volume of Hounsfield units with
//! the series' geometry, whatever the file names and InstanceNumbers say.
//!
//! - Files are grouped by SeriesInstanceUID; objects that are not CT images (SR, RTSTRUCT, SEG,
//!   presentation states, files that are not DICOM at all) are skipped and reported. A folder
//!   with several CT series is refused with the list, unless one is chosen by UID.
//! - Slices are ordered by their position along the slice normal (ImagePositionPatient projected
//!   on the cross product of the two ImageOrientationPatient cosines). Slices of another
//!   orientation (localisers) are skipped and reported; two slices at one position, uneven
//!   spacing (a missing slice) and mixed sizes are errors, since any of them would misalign a
//!   mask with its series.
//! - Stored values become HU through RescaleSlope/RescaleIntercept; PixelPaddingValue (and its
//!   range) and values below -1024 HU (the -2000/-3024 fill outside the scanner's field of view)
//!   become air, -1024 HU.
//! - [`Geometry::affine_ras`] is the NIfTI affine of the volume stored as (column, row, slice),
//!   the dicom2nifti/nibabel convention, so a mask written with it overlays the series.
//!
//! Pixel data is decoded by dicom-pixeldata: uncompressed (implicit and explicit VR), deflate,
//! RLE, JPEG baseline and lossless, and JPEG 2000 (pure Rust `openjp2`).

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder};

use crate::{Error, Result};

/// HU that padding and values outside the field of view become (air).
pub const AIR_HU: f32 = -1024.0;

/// Most files a series folder may hold (a bound on what is listed and opened).
const MAX_FILES: usize = 100_000;

/// CT Image Storage, the SOP class of the slices read.
const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";

/// Where a series' voxels are: `voxel (column i, row j, slice k)` lies at
/// `origin + i·Δc·row_cosine + j·Δr·column_cosine + k·step` in patient coordinates (LPS, mm).
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    /// Rows of each slice.
    pub rows: usize,
    /// Columns of each slice.
    pub columns: usize,
    /// PixelSpacing: `[Δr, Δc]`, the spacing between rows and between columns, in mm.
    pub pixel_spacing: [f64; 2],
    /// ImageOrientationPatient: the row cosine (direction of increasing column) then the
    /// column cosine.
    pub orientation: [f64; 6],
    /// ImagePositionPatient of the first slice (the centre of its first pixel).
    pub origin: [f64; 3],
    /// From one slice's position to the next, in mm.
    pub step: [f64; 3],
}

impl Geometry {
    /// The 3x4 NIfTI affine (RAS, mm) of the volume stored as `[column, row, slice]`: LPS from
    /// the DICOM geometry with x and y negated, as dicom2nifti and nibabel build it.
    pub fn affine_ras(&self) -> [[f64; 4]; 3] {
        let [dr, dc] = self.pixel_spacing;
        let o = &self.orientation;
        let mut a = [[0.0; 4]; 3];
        for axis in 0..3 {
            let sign = if axis < 2 { -1.0 } else { 1.0 };
            a[axis] = [
                sign * o[axis] * dc,
                sign * o[3 + axis] * dr,
                sign * self.step[axis],
                sign * self.origin[axis],
            ];
        }
        a
    }

    /// The distance between neighbouring slices, in mm.
    pub fn slice_spacing(&self) -> f64 {
        norm(self.step)
    }
}

/// A CT series read into HU.
#[derive(Debug, Clone)]
pub struct Series {
    /// SeriesInstanceUID.
    pub uid: String,
    /// StudyInstanceUID.
    pub study_uid: String,
    /// The slices' files, in slice order.
    pub files: Vec<PathBuf>,
    /// The slices' SOPInstanceUIDs, in slice order.
    pub sop_instance_uids: Vec<String>,
    /// Where the voxels are.
    pub geometry: Geometry,
    /// HU, slice after slice, each `rows x columns` row-major (as displayed).
    pub hu: Vec<f32>,
    /// Files found but not used, with the reason (not DICOM, not a CT image, another
    /// orientation).
    pub skipped: Vec<(PathBuf, String)>,
}

/// Whether `path` is a DICOM Part 10 file (the `DICM` marker after the 128-byte preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    use std::io::Read as _;
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head[128..] == b"DICM"
}

/// Whether `path` is a folder holding at least one DICOM file (a series to read).
pub fn is_dicom_folder(path: &Path) -> bool {
    path.is_dir()
        && list_files(path)
            .map(|files| files.iter().any(|f| is_dicom_file(f)))
            .unwrap_or(false)
}

/// The regular files under `dir`, depth first, sorted by path (hidden files skipped).
fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| Error::Io {
            op: "list",
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| Error::Io {
                op: "list",
                path: d.clone(),
                source,
            })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|source| Error::Io {
                op: "list",
                path: path.clone(),
                source,
            })?;
            if kind.is_dir() {
                pending.push(path);
            } else if path.is_file() {
                out.push(path);
            }
            if out.len() > MAX_FILES {
                return Err(dicom_error(
                    dir,
                    format!("holds more than {MAX_FILES} files; point at one series' folder"),
                ));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn dicom_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dicom {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What one slice's header says.
#[derive(Debug, Clone)]
struct Header {
    path: PathBuf,
    series_uid: String,
    study_uid: String,
    sop_uid: String,
    description: String,
    rows: usize,
    columns: usize,
    position: [f64; 3],
    orientation: [f64; 6],
    spacing: [f64; 2],
    slope: f64,
    intercept: f64,
    padding: Option<(f64, f64)>,
}

/// Why a DICOM object is not a CT slice, or its header.
enum Parsed {
    Slice(Box<Header>),
    Skip(String),
}

/// Runs `f` on a file, turning a panic inside the DICOM crates into an error naming it.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(dicom_error(
            path,
            "the DICOM parser failed on this file (damaged or unsupported)",
        ))
    })
}

fn open(path: &Path, header_only: bool) -> Result<DefaultDicomObject> {
    guarded(path, || {
        let options = OpenFileOptions::new();
        let options = if header_only {
            options.read_until(tags::PIXEL_DATA)
        } else {
            options
        };
        options
            .open_file(path)
            .map_err(|e| dicom_error(path, format!("cannot be read: {e}")))
    })
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
}

fn numbers(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.get(tag).and_then(|e| e.to_multi_float64().ok())
}

fn parse_header(path: &Path) -> Result<Parsed> {
    let obj = open(path, true)?;
    let sop_class = text(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
    let modality = text(&obj, tags::MODALITY).unwrap_or_default();
    if sop_class != CT_IMAGE_STORAGE {
        let what = if modality.is_empty() {
            format!("SOP class {sop_class}")
        } else {
            format!("{modality} object (SOP class {sop_class})")
        };
        return Ok(Parsed::Skip(format!("not a CT image slice: {what}")));
    }
    let required = |tag: dicom_core::Tag, name: &str, n: usize| -> Result<Vec<f64>> {
        match numbers(&obj, tag) {
            Some(v) if v.len() == n && v.iter().all(|x| x.is_finite()) => Ok(v),
            Some(v) => Err(dicom_error(
                path,
                format!("{name} holds {v:?}, not {n} finite numbers"),
            )),
            None => Err(dicom_error(path, format!("has no {name}"))),
        }
    };
    let position = required(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient", 3)?;
    let orientation = required(
        tags::IMAGE_ORIENTATION_PATIENT,
        "ImageOrientationPatient",
        6,
    )?;
    let spacing = required(tags::PIXEL_SPACING, "PixelSpacing", 2)?;
    if spacing.iter().any(|&s| s <= 0.0) {
        return Err(dicom_error(
            path,
            format!("PixelSpacing {spacing:?} is not positive"),
        ));
    }
    let (r, c) = (&orientation[..3], &orientation[3..]);
    let (nr, nc) = (norm([r[0], r[1], r[2]]), norm([c[0], c[1], c[2]]));
    let dot: f64 = r.iter().zip(c).map(|(a, b)| a * b).sum();
    if (nr - 1.0).abs() > 1e-3 || (nc - 1.0).abs() > 1e-3 || dot.abs() > 1e-3 {
        return Err(dicom_error(
            path,
            format!("ImageOrientationPatient {orientation:?} is not two orthogonal unit vectors"),
        ));
    }
    let count = |tag, name: &str| -> Result<usize> {
        obj.get(tag)
            .and_then(|e| e.to_int::<u32>().ok())
            .filter(|&n| n > 0 && n <= crate::slice_files::MAX_IMAGE_SIDE)
            .map(|n| n as usize)
            .ok_or_else(|| dicom_error(path, format!("has no usable {name}")))
    };
    let (rows, columns) = (count(tags::ROWS, "Rows")?, count(tags::COLUMNS, "Columns")?);
    let scalar = |tag| numbers(&obj, tag).and_then(|v| v.first().copied());
    let slope = scalar(tags::RESCALE_SLOPE).unwrap_or(1.0);
    let intercept = scalar(tags::RESCALE_INTERCEPT).unwrap_or(0.0);
    if !(slope.is_finite() && slope != 0.0 && intercept.is_finite()) {
        return Err(dicom_error(
            path,
            format!("RescaleSlope {slope} / RescaleIntercept {intercept} are unusable"),
        ));
    }
    let padding = scalar(tags::PIXEL_PADDING_VALUE).map(|p| {
        let limit = scalar(tags::PIXEL_PADDING_RANGE_LIMIT).unwrap_or(p);
        (p.min(limit), p.max(limit))
    });
    let uid = |tag, name: &str| {
        text(&obj, tag)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| dicom_error(path, format!("has no {name}")))
    };
    Ok(Parsed::Slice(Box::new(Header {
        path: path.to_path_buf(),
        series_uid: uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
        study_uid: text(&obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        sop_uid: uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        description: text(&obj, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        rows,
        columns,
        position: [position[0], position[1], position[2]],
        orientation: std::array::from_fn(|i| orientation[i]),
        spacing: [spacing[0], spacing[1]],
        slope,
        intercept,
        padding,
    })))
}

/// A decimal string (DS) value of `values`: six decimals at most, trailing zeros dropped, so
/// that each stays within DS's 16 characters.
pub(crate) fn ds(values: &[f64]) -> dicom_core::PrimitiveValue {
    let one = |v: &f64| {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".to_string()
        } else {
            s.to_string()
        }
    };
    dicom_core::PrimitiveValue::from(values.iter().map(one).collect::<Vec<_>>().join("\\"))
}

fn norm(v: [f64; 3]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn cross(a: &[f64], b: &[f64]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// Reads the CT series in `inputs` (folders are searched, files taken as they are); `series`
/// picks one by SeriesInstanceUID where they hold several.
pub fn read_series(inputs: &[PathBuf], series: Option<&str>) -> Result<Series> {
    let Some(first) = inputs.first() else {
        return Err(Error::Invalid("no DICOM files or folders given".into()));
    };
    let mut files = Vec::new();
    for p in inputs {
        if p.is_dir() {
            files.extend(list_files(p)?);
        } else {
            files.push(p.clone());
        }
    }
    let mut skipped = Vec::new();
    let mut headers = Vec::new();
    for f in files {
        if !is_dicom_file(&f) {
            skipped.push((f, "not a DICOM file (no DICM marker)".to_string()));
            continue;
        }
        match parse_header(&f)? {
            Parsed::Slice(h) => headers.push(*h),
            Parsed::Skip(why) => skipped.push((f, why)),
        }
    }
    if headers.is_empty() {
        return Err(dicom_error(
            first,
            format!(
                "holds no CT image slice ({} files skipped{})",
                skipped.len(),
                skipped
                    .first()
                    .map(|(p, why)| format!("; {}: {why}", p.display()))
                    .unwrap_or_default()
            ),
        ));
    }
    let headers = choose_series(first, headers, series)?;
    let (headers, other_orientation) = by_orientation(headers);
    for h in other_orientation {
        skipped.push((
            h.path,
            "orientation differs from the series' (a localiser?)".into(),
        ));
    }
    let (headers, geometry) = order(headers)?;
    let plane = geometry.rows * geometry.columns;
    let mut hu = Vec::with_capacity(plane * headers.len());
    for h in &headers {
        hu.extend(read_pixels(h)?);
    }
    Ok(Series {
        uid: headers[0].series_uid.clone(),
        study_uid: headers[0].study_uid.clone(),
        files: headers.iter().map(|h| h.path.clone()).collect(),
        sop_instance_uids: headers.iter().map(|h| h.sop_uid.clone()).collect(),
        geometry,
        hu,
        skipped,
    })
}

/// The slices of one series: the only one, or the one named.
fn choose_series(at: &Path, headers: Vec<Header>, series: Option<&str>) -> Result<Vec<Header>> {
    let mut uids: Vec<(String, usize, String)> = Vec::new();
    for h in &headers {
        match uids.iter_mut().find(|(u, _, _)| *u == h.series_uid) {
            Some(entry) => entry.1 += 1,
            None => uids.push((h.series_uid.clone(), 1, h.description.clone())),
        }
    }
    let listing = || {
        uids.iter()
            .map(|(u, n, d)| {
                format!(
                    "{u} ({n} slices{})",
                    if d.is_empty() {
                        String::new()
                    } else {
                        format!(", {d:?}")
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let wanted = match series {
        Some(uid) => {
            if !uids.iter().any(|(u, _, _)| u == uid) {
                return Err(dicom_error(
                    at,
                    format!("holds no series {uid}; it holds {}", listing()),
                ));
            }
            uid.to_string()
        }
        None if uids.len() == 1 => uids[0].0.clone(),
        None => {
            return Err(dicom_error(
                at,
                format!(
                    "holds {} CT series; choose one with --series UID: {}",
                    uids.len(),
                    listing()
                ),
            ));
        }
    };
    Ok(headers
        .into_iter()
        .filter(|h| h.series_uid == wanted)
        .collect())
}

/// The slices of the most common orientation, and the others.
fn by_orientation(headers: Vec<Header>) -> (Vec<Header>, Vec<Header>) {
    let same = |a: &[f64; 6], b: &[f64; 6]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
    let majority = headers
        .iter()
        .max_by_key(|h| {
            headers
                .iter()
                .filter(|o| same(&o.orientation, &h.orientation))
                .count()
        })
        .map(|h| h.orientation)
        .unwrap_or_default();
    headers
        .into_iter()
        .partition(|h| same(&h.orientation, &majority))
}

/// The slices sorted along the normal, checked, and the series' geometry.
fn order(mut headers: Vec<Header>) -> Result<(Vec<Header>, Geometry)> {
    let o = headers[0].orientation;
    let normal = cross(&o[..3], &o[3..]);
    let along = |h: &Header| {
        h.position
            .iter()
            .zip(&normal)
            .map(|(p, n)| p * n)
            .sum::<f64>()
    };
    headers.sort_by(|a, b| along(a).total_cmp(&along(b)));
    let first = &headers[0];
    if let Some(h) = headers
        .iter()
        .find(|h| (h.rows, h.columns) != (first.rows, first.columns))
    {
        return Err(dicom_error(
            &h.path,
            format!(
                "is {}x{}, other slices of the series ({}) are {}x{}",
                h.rows,
                h.columns,
                first.path.display(),
                first.rows,
                first.columns
            ),
        ));
    }
    if let Some(h) = headers.iter().find(|h| {
        h.spacing
            .iter()
            .zip(&first.spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4)
    }) {
        return Err(dicom_error(
            &h.path,
            format!(
                "has PixelSpacing {:?}, {} has {:?}",
                h.spacing,
                first.path.display(),
                first.spacing
            ),
        ));
    }
    let gaps: Vec<f64> = headers
        .windows(2)
        .map(|w| along(&w[1]) - along(&w[0]))
        .collect();
    if let Some(k) = gaps.iter().position(|&g| g < 1e-3) {
        return Err(dicom_error(
            &headers[k + 1].path,
            format!(
                "lies at the same position as {} ({:.3} mm along the slice normal): a duplicated slice",
                headers[k].path.display(),
                along(&headers[k])
            ),
        ));
    }
    if !gaps.is_empty() {
        let mut sorted = gaps.clone();
        sorted.sort_by(f64::total_cmp);
        let typical = sorted[sorted.len() / 2];
        if let Some(k) = gaps
            .iter()
            .position(|&g| (g - typical).abs() > (0.01 * typical).max(1e-3))
        {
            return Err(dicom_error(
                &headers[k + 1].path,
                format!(
                    "is {:.3} mm from the previous slice {}, where slices are {typical:.3} mm apart: \
                     the series is missing slices or its spacing is uneven",
                    gaps[k],
                    headers[k].path.display()
                ),
            ));
        }
    }
    let step = if headers.len() > 1 {
        let (a, b) = (headers[0].position, headers[headers.len() - 1].position);
        let n = (headers.len() - 1) as f64;
        std::array::from_fn(|i| (b[i] - a[i]) / n)
    } else {
        normal
    };
    let geometry = Geometry {
        rows: first.rows,
        columns: first.columns,
        pixel_spacing: first.spacing,
        orientation: o,
        origin: first.position,
        step,
    };
    Ok((headers, geometry))
}

/// One slice's pixels in HU, padding and values outside the field of view as air.
fn read_pixels(h: &Header) -> Result<Vec<f32>> {
    let obj = open(&h.path, false)?;
    guarded(&h.path, || {
        let decoded = obj
            .decode_pixel_data()
            .map_err(|e| dicom_error(&h.path, format!("cannot decode its pixel data: {e}")))?;
        if decoded.samples_per_pixel() != 1 || decoded.number_of_frames() != 1 {
            return Err(dicom_error(
                &h.path,
                format!(
                    "has {} samples per pixel and {} frames; a CT slice has one of each",
                    decoded.samples_per_pixel(),
                    decoded.number_of_frames()
                ),
            ));
        }
        let (rows, columns) = (decoded.rows() as usize, decoded.columns() as usize);
        let expected = h.rows * h.columns;
        let bytes_per_sample = usize::from(decoded.bits_allocated().div_ceil(8));
        if (rows, columns) != (h.rows, h.columns)
            || decoded.data().len() < expected * bytes_per_sample
        {
            return Err(dicom_error(
                &h.path,
                format!(
                    "pixel data holds {} bytes, Rows x Columns ({} x {}) at {} bits need {}",
                    decoded.data().len(),
                    h.rows,
                    h.columns,
                    decoded.bits_allocated(),
                    expected * bytes_per_sample
                ),
            ));
        }
        let raw: Vec<f64> = decoded
            .to_vec_with_options(&ConvertOptions::new().with_modality_lut(ModalityLutOption::None))
            .map_err(|e| dicom_error(&h.path, format!("cannot convert its pixel data: {e}")))?;
        Ok(raw[..expected]
            .iter()
            .map(|&v| {
                let padded = h.padding.is_some_and(|(lo, hi)| v >= lo && v <= hi);
                let hu = (v * h.slope + h.intercept) as f32;
                if padded || !hu.is_finite() || hu < AIR_HU {
                    AIR_HU
                } else {
                    hu
                }
            })
            .collect())
    })
}

pub mod seg;
pub mod write;

#[cfg(test)]
mod tests;
