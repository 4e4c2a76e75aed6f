//! A DICOM Segmentation (SEG) object for a predicted mask: binary, one segment ("COVID-19
//! lesion"), one frame per slice of the source series, each frame referencing its source
//! SOP instance and carrying its plane position, so that a DICOM viewer overlays it on the
//! series. Patient, study and frame-of-reference attributes are copied from the source.

use std::path::Path;

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::{CT_IMAGE_STORAGE, Geometry, dicom_error, ds, open, text};
use crate::inputs::write_through_temporary;
use crate::{Error, Result};

/// Segmentation Storage.
pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";

/// What a SEG needs of its source series.
#[derive(Debug, Clone)]
pub struct SegSource<'a> {
    /// SeriesInstanceUID of the source.
    pub series_uid: &'a str,
    /// StudyInstanceUID of the source.
    pub study_uid: &'a str,
    /// Each slice's file and SOPInstanceUID, in slice order (the frames' order).
    pub instances: &'a [(std::path::PathBuf, String)],
    /// The series' geometry.
    pub geometry: &'a Geometry,
}

/// A fresh UID under the `2.25` root (a 128-bit number, PS3.5 B.2), from the time, the
/// process and a counter.
pub fn new_uid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = mix(nanos as u64 ^ u64::from(std::process::id()).rotate_left(32));
    let lo = mix((nanos >> 64) as u64 ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ hi);
    format!("2.25.{}", (u128::from(hi) << 64 | u128::from(lo)))
}

fn el(tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, value.into())
}

fn seq(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, Value::Sequence(DataSetSequence::from(items)))
}

fn item(elements: Vec<DataElement<InMemDicomObject>>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// Writes `masks` (one per slice of `source`, `rows x columns`, 0/1) as a binary SEG at `path`.
pub fn write_seg(source: &SegSource, masks: &[Vec<u8>], path: &Path) -> Result<()> {
    let g = source.geometry;
    let plane = g.rows * g.columns;
    if masks.len() != source.instances.len() || masks.iter().any(|m| m.len() != plane) {
        return Err(Error::Invalid(format!(
            "{} masks for a series of {} slices of {}x{}",
            masks.len(),
            source.instances.len(),
            g.rows,
            g.columns
        )));
    }
    // Patient, study and frame of reference as the source's first slice has them.
    let first = &source.instances[0].0;
    let src = open(first, true)?;
    let copy = |tag: Tag| text(&src, tag).unwrap_or_default();
    let frame_of_reference = text(&src, tags::FRAME_OF_REFERENCE_UID)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(new_uid);
    let series_uid = new_uid();
    let sop_uid = new_uid();
    let dimension_uid = new_uid();
    let [dr, dc] = g.pixel_spacing;
    let spacing = g.slice_spacing();
    let frames = masks.len();

    let shared = item(vec![
        seq(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![
                DataElement::new(tags::PIXEL_SPACING, VR::DS, ds(&[dr, dc])),
                DataElement::new(tags::SLICE_THICKNESS, VR::DS, ds(&[spacing])),
                DataElement::new(tags::SPACING_BETWEEN_SLICES, VR::DS, ds(&[spacing])),
            ])],
        ),
        seq(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                ds(&g.orientation),
            )])],
        ),
    ]);
    let per_frame: Vec<InMemDicomObject> = source
        .instances
        .iter()
        .enumerate()
        .map(|(k, (_, sop))| {
            let position: Vec<f64> = (0..3).map(|i| g.origin[i] + k as f64 * g.step[i]).collect();
            item(vec![
                seq(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![item(vec![
                        seq(
                            tags::SOURCE_IMAGE_SEQUENCE,
                            vec![item(vec![
                                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE),
                                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop.as_str()),
                                seq(
                                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                                    vec![code(
                                        "121322",
                                        "DCM",
                                        "Source image for image processing operation",
                                    )],
                                ),
                            ])],
                        ),
                        seq(
                            tags::DERIVATION_CODE_SEQUENCE,
                            vec![code("113076", "DCM", "Segmentation")],
                        ),
                    ])],
                ),
                seq(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![item(vec![el(
                        tags::DIMENSION_INDEX_VALUES,
                        VR::UL,
                        [1u32, k as u32 + 1],
                    )])],
                ),
                seq(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![item(vec![DataElement::new(
                        tags::IMAGE_POSITION_PATIENT,
                        VR::DS,
                        ds(&position),
                    )])],
                ),
                seq(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![item(vec![el(
                        tags::REFERENCED_SEGMENT_NUMBER,
                        VR::US,
                        1u16,
                    )])],
                ),
            ])
        })
        .collect();
    let dimension = |pointer: Tag, group: Tag, label: &str| {
        item(vec![
            el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dimension_uid.as_str(),
            ),
            el(tags::DIMENSION_INDEX_POINTER, VR::AT, pointer),
            el(tags::FUNCTIONAL_GROUP_POINTER, VR::AT, group),
            el(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label),
        ])
    };
    // Frames packed one bit a pixel, continuously across frames (PS3.5 8.1.1), even length.
    let mut bits = vec![0u8; (plane * frames).div_ceil(8)];
    for (i, &m) in masks.iter().flatten().enumerate() {
        if m != 0 {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    if bits.len() % 2 == 1 {
        bits.push(0);
    }
    let now = chrono_now();
    let obj = InMemDicomObject::from_element_iter([
        el(tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE),
        el(tags::SOP_INSTANCE_UID, VR::UI, sop_uid.as_str()),
        el(tags::STUDY_INSTANCE_UID, VR::UI, source.study_uid),
        el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str()),
        el(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            frame_of_reference.as_str(),
        ),
        el(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
        el(tags::MODALITY, VR::CS, "SEG"),
        el(tags::SERIES_NUMBER, VR::IS, "901"),
        el(tags::SERIES_DESCRIPTION, VR::LO, "d2a COVID-19 lesions"),
        el(tags::INSTANCE_NUMBER, VR::IS, "1"),
        el(tags::PATIENT_NAME, VR::PN, copy(tags::PATIENT_NAME)),
        el(tags::PATIENT_ID, VR::LO, copy(tags::PATIENT_ID)),
        el(
            tags::PATIENT_BIRTH_DATE,
            VR::DA,
            copy(tags::PATIENT_BIRTH_DATE),
        ),
        el(tags::PATIENT_SEX, VR::CS, copy(tags::PATIENT_SEX)),
        el(tags::STUDY_DATE, VR::DA, copy(tags::STUDY_DATE)),
        el(tags::STUDY_TIME, VR::TM, copy(tags::STUDY_TIME)),
        el(
            tags::REFERRING_PHYSICIAN_NAME,
            VR::PN,
            copy(tags::REFERRING_PHYSICIAN_NAME),
        ),
        el(tags::STUDY_ID, VR::SH, copy(tags::STUDY_ID)),
        el(tags::ACCESSION_NUMBER, VR::SH, copy(tags::ACCESSION_NUMBER)),
        el(tags::CONTENT_DATE, VR::DA, now.0.as_str()),
        el(tags::CONTENT_TIME, VR::TM, now.1.as_str()),
        el(tags::MANUFACTURER, VR::LO, "d2a"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "d2a"),
        el(tags::DEVICE_SERIAL_NUMBER, VR::LO, "0"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        el(tags::CONTENT_LABEL, VR::CS, "LESION"),
        el(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            "COVID-19 lesions segmented by d2a",
        ),
        el(tags::CONTENT_CREATOR_NAME, VR::PN, "d2a"),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, g.rows as u16),
        el(tags::COLUMNS, VR::US, g.columns as u16),
        el(tags::BITS_ALLOCATED, VR::US, 1u16),
        el(tags::BITS_STORED, VR::US, 1u16),
        el(tags::HIGH_BIT, VR::US, 0u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::NUMBER_OF_FRAMES, VR::IS, frames.to_string()),
        seq(
            tags::SEGMENT_SEQUENCE,
            vec![item(vec![
                el(tags::SEGMENT_NUMBER, VR::US, 1u16),
                el(tags::SEGMENT_LABEL, VR::LO, "COVID-19 lesion"),
                el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"),
                el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, "d2a"),
                seq(
                    tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                    vec![code("49755003", "SCT", "Morphologically Altered Structure")],
                ),
                seq(
                    tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                    vec![code("52988006", "SCT", "Lesion")],
                ),
            ])],
        ),
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![item(vec![el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dimension_uid.as_str(),
            )])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![
                dimension(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    "Segment Number",
                ),
                dimension(
                    tags::IMAGE_POSITION_PATIENT,
                    tags::PLANE_POSITION_SEQUENCE,
                    "Image Position Patient",
                ),
            ],
        ),
        seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]),
        seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item(vec![
                el(tags::SERIES_INSTANCE_UID, VR::UI, source.series_uid),
                seq(
                    tags::REFERENCED_INSTANCE_SEQUENCE,
                    source
                        .instances
                        .iter()
                        .map(|(_, sop)| {
                            item(vec![
                                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE),
                                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, sop.as_str()),
                            ])
                        })
                        .collect(),
                ),
            ])],
        ),
        DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(bits)),
    ]);
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(super::write::EXPLICIT_VR_LE))
        .map_err(|e| dicom_error(path, format!("cannot build the SEG: {e}")))?;
    write_through_temporary(path, "", |tmp| {
        file.write_to_file(tmp)
            .map_err(|e| dicom_error(path, format!("cannot write: {e}")))
    })
}

/// Today's date (`YYYYMMDD`) and time (`HHMMSS`), UTC.
fn chrono_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}{month:02}{day:02}"),
        format!("{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60),
    )
}

/// Reads a binary DICOM SEG at `path` as one 0/1 mask per slice of `source` (`rows x columns`,
/// in the series' slice order): every frame is placed on the slice its
/// ReferencedSOPInstanceUID names (else the one at its ImagePositionPatient), and the frames of
/// all segments are merged. Slices without a frame are empty.
///
/// Refused, naming the file: an object that is not a SEG, a SEG of another size, FRACTIONAL
/// segmentations, compressed pixel data, pixel data shorter than its frames, a frame that
/// lies on no slice of the series.
pub fn read_seg(path: &Path, source: &SegSource) -> Result<Vec<Vec<u8>>> {
    let err = |reason: String| dicom_error(path, reason);
    let obj = open(path, false)?;
    let sop_class = text(&obj, tags::SOP_CLASS_UID).unwrap_or_default();
    if sop_class != SEGMENTATION_STORAGE {
        return Err(err(format!(
            "is not a DICOM Segmentation (SOP class {sop_class}); the mask of a DICOM series \
             is a SEG or a NIfTI volume"
        )));
    }
    let kind = text(&obj, tags::SEGMENTATION_TYPE).unwrap_or_default();
    if kind != "BINARY" {
        return Err(err(format!(
            "is a {kind} segmentation; d2a reads BINARY ones"
        )));
    }
    let int = |tag: Tag, name: &str| -> Result<usize> {
        obj.get(tag)
            .and_then(|e| e.to_int::<i64>().ok())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| err(format!("has no valid {name}")))
    };
    let (rows, columns, frames) = (
        int(tags::ROWS, "Rows")?,
        int(tags::COLUMNS, "Columns")?,
        int(tags::NUMBER_OF_FRAMES, "NumberOfFrames")?,
    );
    let g = source.geometry;
    if (rows, columns) != (g.rows, g.columns) {
        return Err(err(format!(
            "has {rows}x{columns} frames for a series of {}x{} slices",
            g.rows, g.columns
        )));
    }
    if int(tags::BITS_ALLOCATED, "BitsAllocated")? != 1 {
        return Err(err("is binary but not 1 bit per pixel".into()));
    }
    let pixel = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| err("has no pixel data".into()))?;
    let bytes = match pixel.value() {
        Value::Primitive(p) => p.to_bytes(),
        _ => {
            return Err(err(format!(
                "holds compressed pixel data (transfer syntax {}); write the SEG uncompressed",
                obj.meta().transfer_syntax()
            )));
        }
    };
    let plane = rows * columns;
    let bits = plane
        .checked_mul(frames)
        .ok_or_else(|| err(format!("{frames} frames of {rows}x{columns} overflow")))?;
    if bytes.len() * 8 < bits {
        return Err(err(format!(
            "pixel data holds {} bytes, fewer than its {frames} frames of {rows}x{columns} \
             need ({} bytes)",
            bytes.len(),
            bits.div_ceil(8)
        )));
    }
    let groups = obj
        .get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .and_then(|e| e.items())
        .unwrap_or(&[]);
    if groups.len() != frames {
        return Err(err(format!(
            "describes {} frames in its per-frame functional groups but holds {frames}",
            groups.len()
        )));
    }
    let by_uid: std::collections::HashMap<&str, usize> = source
        .instances
        .iter()
        .enumerate()
        .map(|(k, (_, uid))| (uid.as_str(), k))
        .collect();
    let mut masks = vec![vec![0u8; plane]; source.instances.len()];
    for (f, group) in groups.iter().enumerate() {
        let k = frame_slice(group, &by_uid, source.instances.len(), g)
            .ok_or_else(|| err(format!("frame {} lies on no slice of the series", f + 1)))?;
        for (i, m) in masks[k].iter_mut().enumerate() {
            let bit = f * plane + i;
            *m |= (bytes[bit / 8] >> (bit % 8)) & 1;
        }
    }
    Ok(masks)
}

/// The series slice a SEG frame's functional group points at: by the SOP instance its source
/// image reference names, else by its plane position (within 1% of the slice spacing and on
/// the series' grid).
fn frame_slice(
    group: &InMemDicomObject,
    by_uid: &std::collections::HashMap<&str, usize>,
    n_slices: usize,
    g: &Geometry,
) -> Option<usize> {
    let first = |obj: &InMemDicomObject, tag: Tag| -> Option<InMemDicomObject> {
        obj.get(tag)?.items()?.first().cloned()
    };
    let uid = first(group, tags::DERIVATION_IMAGE_SEQUENCE)
        .and_then(|d| first(&d, tags::SOURCE_IMAGE_SEQUENCE))
        .and_then(|s| {
            s.get(tags::REFERENCED_SOP_INSTANCE_UID)?
                .to_str()
                .ok()
                .map(|u| u.trim_end_matches(['\0', ' ']).to_string())
        });
    if let Some(k) = uid.and_then(|u| by_uid.get(u.as_str()).copied()) {
        return Some(k);
    }
    let position = first(group, tags::PLANE_POSITION_SEQUENCE)?
        .get(tags::IMAGE_POSITION_PATIENT)?
        .to_multi_float64()
        .ok()?;
    let &[x, y, z] = position.as_slice() else {
        return None;
    };
    let spacing = g.slice_spacing();
    if spacing == 0.0 {
        return None;
    }
    let d = [x - g.origin[0], y - g.origin[1], z - g.origin[2]];
    let along = (0..3).map(|i| d[i] * g.step[i]).sum::<f64>() / (spacing * spacing);
    let k = along.round();
    let off = (0..3)
        .map(|i| (d[i] - k * g.step[i]).powi(2))
        .sum::<f64>()
        .sqrt();
    (k >= 0.0 && (k as usize) < n_slices && off <= 0.01 * spacing).then_some(k as usize)
}
