//! One CT slice with its lesion mask and where it came from, and the operations every reader
//! applies: intensity normalisation (SPEC §3), resizing, and validation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where a slice came from, so that splits can be made by patient (volume), never by slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The image file it was read from.
    pub file: PathBuf,
    /// The volume (patient) id: the NIfTI file stem, or the slice folder's volume column.
    pub volume: String,
    /// Index of the slice within its volume (0 for a 2-D file).
    pub slice_idx: usize,
}

/// A slice: intensities in [0, 1] and a binary lesion mask, row-major, `height x width`.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Intensities in [0, 1].
    pub image: Vec<f32>,
    /// 1 where lesion (every lesion label merged), else 0.
    pub mask: Vec<u8>,
    /// The soft map the mask was cut from, in levels 0..=255 (255: certainly lesion), where the
    /// reader was asked to keep it ([`crate::ReadOptions::soft_labels`]) and the mask file was a
    /// soft map (pseudo-labels); training then learns these levels / 255 instead of the 0/1
    /// mask. `None`: the mask is the target.
    pub soft: Option<Vec<u8>>,
    /// Where it came from.
    pub provenance: Provenance,
}

impl Slice {
    /// Whether the mask has any lesion pixel.
    pub fn has_lesion(&self) -> bool {
        self.mask.iter().any(|&m| m != 0)
    }

    /// The slice resized to `size x size`: image bilinear (half-pixel centres, as PyTorch with
    /// `align_corners = false`), mask and soft map nearest neighbour.
    pub fn resized(&self, size: usize) -> Slice {
        if self.height == size && self.width == size {
            return self.clone();
        }
        Slice {
            height: size,
            width: size,
            image: resize_bilinear(&self.image, (self.height, self.width), (size, size)),
            mask: resize_nearest(&self.mask, (self.height, self.width), (size, size)),
            soft: self
                .soft
                .as_ref()
                .map(|soft| resize_nearest(soft, (self.height, self.width), (size, size))),
            provenance: self.provenance.clone(),
        }
    }
}

/// A slice held compactly for training: intensities quantised to 8 bits (`round(255 · v)`, the
/// precision of the 8-bit sources and of prepared shards) and the mask as bits, 1.125 bytes per
/// pixel against the [`Slice`]'s 5. The loader keeps its whole dataset in this form, at each
/// slice's own size, and unpacks one batch at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedSlice {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Intensities in 0..=255 (255 is 1.0).
    image: Vec<u8>,
    /// The mask, 8 pixels per byte, least significant bit first.
    mask: Vec<u8>,
    /// The soft map, as [`Slice::soft`].
    soft: Option<Vec<u8>>,
    /// Where it came from.
    pub provenance: Provenance,
}

/// An intensity in [0, 1] as 8 bits (clamped, rounded to the nearest of 256 levels).
pub fn quantise(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

impl Slice {
    /// The slice with its intensities quantised to 8 bits (see [`PackedSlice`]).
    pub fn pack(self) -> PackedSlice {
        PackedSlice {
            height: self.height,
            width: self.width,
            image: self.image.iter().map(|&v| quantise(v)).collect(),
            mask: self
                .mask
                .chunks(8)
                .map(|bits| {
                    bits.iter()
                        .enumerate()
                        .fold(0u8, |byte, (i, &m)| byte | (u8::from(m != 0) << i))
                })
                .collect(),
            soft: self.soft,
            provenance: self.provenance,
        }
    }
}

impl PackedSlice {
    /// The slice with intensities `v / 255`.
    pub fn unpack(&self) -> Slice {
        let n = self.height * self.width;
        Slice {
            height: self.height,
            width: self.width,
            image: self.image.iter().map(|&v| f32::from(v) / 255.0).collect(),
            mask: (0..n).map(|i| (self.mask[i / 8] >> (i % 8)) & 1).collect(),
            soft: self.soft.clone(),
            provenance: self.provenance.clone(),
        }
    }

    /// Whether it has a soft map ([`Slice::soft`]).
    pub fn has_soft(&self) -> bool {
        self.soft.is_some()
    }

    /// Bytes it holds (pixels, mask and soft map).
    pub fn bytes(&self) -> usize {
        self.image.len() + self.mask.len() + self.soft.as_ref().map_or(0, Vec::len)
    }
}

impl From<Slice> for PackedSlice {
    fn from(slice: Slice) -> Self {
        slice.pack()
    }
}

/// A slice to read, packed or not: [`Slice`] lends itself, [`PackedSlice`] unpacks a copy, so
/// code that scores slices a batch at a time can hold them packed.
pub trait SliceView {
    /// The slice, as f32 intensities.
    fn view(&self) -> std::borrow::Cow<'_, Slice>;
}

impl SliceView for Slice {
    fn view(&self) -> std::borrow::Cow<'_, Slice> {
        std::borrow::Cow::Borrowed(self)
    }
}

impl SliceView for PackedSlice {
    fn view(&self) -> std::borrow::Cow<'_, Slice> {
        std::borrow::Cow::Owned(self.unpack())
    }
}

/// What splits by patient need of a slice, packed or not.
pub trait HasProvenance {
    /// Where the slice came from.
    fn provenance(&self) -> &Provenance;
}

impl HasProvenance for Slice {
    fn provenance(&self) -> &Provenance {
        &self.provenance
    }
}

impl HasProvenance for PackedSlice {
    fn provenance(&self) -> &Provenance {
        &self.provenance
    }
}

/// How raw values become intensities in [0, 1] (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    /// HU if any value is below 0 or above the bit depth's maximum, else `u8` / full scale.
    #[default]
    Auto,
    /// Hounsfield units, windowed to [-1250, 250] and scaled to [0, 1].
    Hu,
    /// Display values divided by their full scale (255 for 8-bit data).
    U8,
}

impl std::str::FromStr for Intensity {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "hu" => Ok(Self::Hu),
            "u8" => Ok(Self::U8),
            _ => Err(format!("unknown intensity {s:?}; use auto, hu or u8")),
        }
    }
}

/// The lung window of SPEC §3.
pub const HU_WINDOW: (f32, f32) = (-1250.0, 250.0);

impl Intensity {
    /// The rule for a volume whose values span `[min, max]` and whose display scale is
    /// `full_scale` (255 for 8-bit data): `Auto` becomes `Hu` or `U8`.
    pub fn resolve(self, min: f32, max: f32, full_scale: f32) -> Intensity {
        match self {
            Intensity::Auto if min < 0.0 || max > full_scale => Intensity::Hu,
            Intensity::Auto => Intensity::U8,
            other => other,
        }
    }

    /// Maps a raw value to [0, 1] under a resolved rule.
    pub fn apply(self, v: f32, full_scale: f32) -> f32 {
        match self {
            Intensity::Hu => ((v - HU_WINDOW.0) / (HU_WINDOW.1 - HU_WINDOW.0)).clamp(0.0, 1.0),
            Intensity::U8 | Intensity::Auto => (v / full_scale).clamp(0.0, 1.0),
        }
    }
}

/// Fails on the first NaN or infinite value, naming the file and slice.
pub(crate) fn check_finite(values: &[f32], file: &std::path::Path, slice_idx: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::NonFinite {
            path: file.to_path_buf(),
            slice_idx,
            index: i,
        }),
        None => Ok(()),
    }
}

/// For each output index of an axis resized from `n_in` to `n_out`, the two source indices and
/// the weight of the second (half-pixel centres, clamped at the borders).
fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let s = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (s.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, (s - i0 as f64) as f32)
        })
        .collect()
}

/// Bilinear resize of a row-major `(h, w)` plane.
pub fn resize_bilinear(src: &[f32], (h, w): (usize, usize), (ho, wo): (usize, usize)) -> Vec<f32> {
    let (ty, tx) = (bilinear_taps(h, ho), bilinear_taps(w, wo));
    let mut out = Vec::with_capacity(ho * wo);
    for &(y0, y1, ly) in &ty {
        for &(x0, x1, lx) in &tx {
            let top = src[y0 * w + x0] * (1.0 - lx) + src[y0 * w + x1] * lx;
            let bottom = src[y1 * w + x0] * (1.0 - lx) + src[y1 * w + x1] * lx;
            out.push(top * (1.0 - ly) + bottom * ly);
        }
    }
    out
}

/// Nearest-neighbour resize of a row-major `(h, w)` plane (PyTorch's `nearest`: `floor(o · n_in / n_out)`).
pub fn resize_nearest<T: Copy>(
    src: &[T],
    (h, w): (usize, usize),
    (ho, wo): (usize, usize),
) -> Vec<T> {
    let idx = |o: usize, n_in: usize, n_out: usize| ((o * n_in) / n_out).min(n_in - 1);
    let mut out = Vec::with_capacity(ho * wo);
    for oy in 0..ho {
        let y = idx(oy, h, ho);
        for ox in 0..wo {
            out.push(src[y * w + idx(ox, w, wo)]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_rules() {
        assert_eq!(
            Intensity::Auto.resolve(-1024.0, 900.0, 255.0),
            Intensity::Hu
        );
        assert_eq!(Intensity::Auto.resolve(0.0, 255.0, 255.0), Intensity::U8);
        assert_eq!(Intensity::U8.resolve(-5.0, 255.0, 255.0), Intensity::U8);
        assert_eq!(Intensity::Hu.apply(-1250.0, 255.0), 0.0);
        assert_eq!(Intensity::Hu.apply(-500.0, 255.0), 0.5);
        assert_eq!(Intensity::Hu.apply(3000.0, 255.0), 1.0);
        assert_eq!(Intensity::U8.apply(51.0, 255.0), 0.2);
        assert_eq!("hu".parse::<Intensity>(), Ok(Intensity::Hu));
        assert!("x".parse::<Intensity>().is_err());
    }

    #[test]
    fn packing_keeps_8_bit_intensities_exactly_and_rounds_the_rest() {
        let slice = Slice {
            height: 1,
            width: 5,
            image: vec![0.0, 51.0 / 255.0, 1.0, 0.5, 1.7],
            mask: vec![0, 1, 1, 0, 1],
            soft: None,
            provenance: Provenance {
                file: "a.png".into(),
                volume: "a".into(),
                slice_idx: 3,
            },
        };
        let packed = slice.clone().pack();
        assert_eq!(packed.image, [0, 51, 255, 128, 255]);
        assert_eq!(packed.mask, [0b10110]);
        assert_eq!(packed.bytes(), 6);
        let back = packed.unpack();
        assert_eq!(&back.image[..3], &slice.image[..3]);
        assert_eq!(back.image[3], 128.0 / 255.0);
        assert_eq!(
            (back.mask, back.soft, back.provenance),
            (slice.mask.clone(), None, slice.provenance.clone())
        );
        // A soft map travels with the slice, byte for byte, and is counted.
        let soft = Slice {
            soft: Some(vec![0, 200, 128, 127, 255]),
            ..slice
        };
        let packed = soft.clone().pack();
        assert_eq!(packed.bytes(), 11);
        assert_eq!(packed.unpack().soft, soft.soft);
    }

    #[test]
    fn resizing_keeps_constants_and_mask_values() {
        let img = vec![0.25f32; 6 * 4];
        assert!(
            resize_bilinear(&img, (6, 4), (8, 8))
                .iter()
                .all(|&v| (v - 0.25).abs() < 1e-7)
        );
        // A 2x2 checkerboard doubled by nearest: each value becomes a 2x2 block.
        let m = resize_nearest(&[1u8, 0, 0, 1], (2, 2), (4, 4));
        assert_eq!(m, [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
        // A slice's soft map is resized as its mask.
        let slice = Slice {
            height: 2,
            width: 2,
            image: vec![0.0; 4],
            mask: vec![1, 0, 0, 1],
            soft: Some(vec![200, 10, 60, 255]),
            provenance: Provenance {
                file: "b.png".into(),
                volume: "b".into(),
                slice_idx: 0,
            },
        }
        .resized(4);
        assert_eq!(slice.mask, m);
        assert_eq!(
            slice.soft.unwrap(),
            [
                200, 200, 10, 10, 200, 200, 10, 10, 60, 60, 255, 255, 60, 60, 255, 255
            ]
        );
        // Bilinear x2 of [0, 4] is PyTorch's [0, 1, 3, 4].
        assert_eq!(
            resize_bilinear(&[0.0, 4.0], (1, 2), (1, 4)),
            [0.0, 1.0, 3.0, 4.0]
        );
    }
}
