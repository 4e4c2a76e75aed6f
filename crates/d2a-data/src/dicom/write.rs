//! Writing CT slices as DICOM files: what the tests (and anyone wanting a test series) need to
//! make a series of known geometry, uncompressed or RLE Lossless.

use std::path::Path;

use dicom_core::value::{PixelFragmentSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

use super::{CT_IMAGE_STORAGE, ds};
use crate::{Error, Result};

/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// RLE Lossless.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";

/// One CT slice to write: signed 16-bit stored values, HU = stored + `intercept`, pixel spacing
/// 0.7 mm between rows and 0.6 mm between columns, padding value -2000.
#[derive(Debug, Clone)]
pub struct CtSlice {
    /// SeriesInstanceUID.
    pub series: String,
    /// SOPInstanceUID.
    pub sop: String,
    /// InstanceNumber.
    pub instance: i32,
    /// ImagePositionPatient.
    pub position: [f64; 3],
    /// ImageOrientationPatient.
    pub orientation: [f64; 6],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub columns: usize,
    /// RescaleIntercept (slope 1).
    pub intercept: f64,
    /// Stored values, row-major (may disagree with rows x columns, to test readers).
    pub stored: Vec<i16>,
    /// RLE Lossless instead of uncompressed.
    pub rle: bool,
}

/// RLE Lossless (PS3.5 annex G) of 16-bit samples: two segments (high bytes, then low bytes),
/// each a run of PackBits literals.
fn rle(stored: &[i16]) -> Vec<u8> {
    let plane = |shift: u32| -> Vec<u8> {
        let bytes: Vec<u8> = stored
            .iter()
            .map(|&v| ((v as u16) >> shift) as u8)
            .collect();
        let mut seg = Vec::new();
        for chunk in bytes.chunks(128) {
            seg.push((chunk.len() - 1) as u8);
            seg.extend_from_slice(chunk);
        }
        if seg.len() % 2 == 1 {
            seg.push(0x80); // a no-op, to an even length
        }
        seg
    };
    let (high, low) = (plane(8), plane(0));
    let mut out = Vec::with_capacity(64 + high.len() + low.len());
    out.extend(2u32.to_le_bytes());
    out.extend(64u32.to_le_bytes());
    out.extend((64 + high.len() as u32).to_le_bytes());
    out.resize(64, 0);
    out.extend(high);
    out.extend(low);
    out
}

/// Writes `s` as a DICOM Part 10 file at `path`.
pub fn write_ct_slice(path: &Path, s: &CtSlice) -> Result<()> {
    let element = |tag, vr, value: PrimitiveValue| DataElement::new(tag, vr, value);
    let mut obj = InMemDicomObject::from_element_iter([
        element(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE.into()),
        element(tags::SOP_INSTANCE_UID, VR::UI, s.sop.as_str().into()),
        element(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            "1.2.826.0.1.3680043.9.7".into(),
        ),
        element(tags::SERIES_INSTANCE_UID, VR::UI, s.series.as_str().into()),
        element(tags::MODALITY, VR::CS, "CT".into()),
        element(tags::INSTANCE_NUMBER, VR::IS, s.instance.to_string().into()),
        element(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&s.position)),
        element(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&s.orientation)),
        element(tags::PIXEL_SPACING, VR::DS, ds(&[0.7, 0.6])),
        element(tags::ROWS, VR::US, (s.rows as u16).into()),
        element(tags::COLUMNS, VR::US, (s.columns as u16).into()),
        element(tags::SAMPLES_PER_PIXEL, VR::US, 1u16.into()),
        element(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        ),
        element(tags::BITS_ALLOCATED, VR::US, 16u16.into()),
        element(tags::BITS_STORED, VR::US, 16u16.into()),
        element(tags::HIGH_BIT, VR::US, 15u16.into()),
        element(tags::PIXEL_REPRESENTATION, VR::US, 1u16.into()),
        element(tags::RESCALE_SLOPE, VR::DS, ds(&[1.0])),
        element(tags::RESCALE_INTERCEPT, VR::DS, ds(&[s.intercept])),
        element(tags::PIXEL_PADDING_VALUE, VR::SS, (-2000i16).into()),
    ]);
    let ts = if s.rle {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(PixelFragmentSequence::new(
                Vec::<u32>::new(),
                vec![rle(&s.stored)],
            )),
        ));
        RLE_LOSSLESS
    } else {
        let bytes: Vec<u8> = s.stored.iter().flat_map(|v| v.to_le_bytes()).collect();
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(bytes),
        ));
        EXPLICIT_VR_LE
    };
    let fail = |e: String| Error::Dicom {
        path: path.to_path_buf(),
        reason: format!("cannot write: {e}"),
    };
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
        .map_err(|e| fail(e.to_string()))?
        .write_to_file(path)
        .map_err(|e| fail(e.to_string()))
}
