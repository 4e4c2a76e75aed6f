//! Folders of 2-D slice images: listing, pairing by stem, and decoding grayscale maps.
//!
//! A slice folder holds one image per slice in any of [`IMAGE_EXTENSIONS`]; files of two folders
//! (predictions and truths, images and masks) belong together when their file stems are equal,
//! whatever their extensions (`007.jpg` pairs with `007.png`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::DynamicImage;

use crate::{Error, Result, UnpairedFiles};

/// File extensions read as slice images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// One file of a slice folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceFile {
    /// File name without its extension; the key that pairs folders.
    pub stem: String,
    /// Full path.
    pub path: PathBuf,
}

/// The files of two folders that share a stem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePair {
    /// The shared stem.
    pub stem: String,
    /// File in the left folder.
    pub left: PathBuf,
    /// File in the right folder.
    pub right: PathBuf,
}

/// Lists the image files of `dir`, sorted by stem.
///
/// Files with other extensions and sub-folders are skipped. It is an error for `dir` to be
/// missing, to not be a folder, to hold no image, or to hold two images with the same stem.
pub fn list_slices(dir: &Path) -> Result<Vec<SliceFile>> {
    let mut by_stem: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in files_in(dir)? {
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        let ext = ext.to_string_lossy().to_ascii_lowercase();
        if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            continue;
        }
        let stem = stem.to_string_lossy().into_owned();
        if let Some(first) = by_stem.get(&stem) {
            let (first, second) = ordered(first.clone(), path);
            return Err(Error::DuplicateStem { first, second });
        }
        by_stem.insert(stem, path);
    }
    if by_stem.is_empty() {
        return Err(Error::EmptyFolder {
            path: dir.to_path_buf(),
            extensions: IMAGE_EXTENSIONS.join("/"),
        });
    }
    Ok(by_stem
        .into_iter()
        .map(|(stem, path)| SliceFile { stem, path })
        .collect())
}

/// The regular files of folder `dir`, sorted; an error if `dir` is missing or not a folder.
pub(crate) fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let io_err = |source| Error::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    };
    if !dir.is_dir() {
        // Distinguish "missing" (an I/O error with its own message) from "a file, not a folder".
        std::fs::metadata(dir).map_err(io_err)?;
        return Err(Error::NotAFolder {
            path: dir.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn ordered(a: PathBuf, b: PathBuf) -> (PathBuf, PathBuf) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Pairs the images of two folders by stem, sorted by stem.
///
/// `left` and `right` are a folder and the role of its files ("prediction", "truth"), used in
/// the error that lists every file left without a partner, on either side.
pub fn pair_by_stem(left: (&Path, &str), right: (&Path, &str)) -> Result<Vec<SlicePair>> {
    let (left_dir, left_role) = left;
    let (right_dir, right_role) = right;
    let mut left_files: BTreeMap<String, PathBuf> = list_slices(left_dir)?
        .into_iter()
        .map(|f| (f.stem, f.path))
        .collect();
    let mut pairs = Vec::new();
    let mut only_right = Vec::new();
    for SliceFile { stem, path } in list_slices(right_dir)? {
        match left_files.remove(&stem) {
            Some(left) => pairs.push(SlicePair {
                stem,
                left,
                right: path,
            }),
            None => only_right.push(file_name(&path)),
        }
    }
    let only_left: Vec<String> = left_files.values().map(|p| file_name(p)).collect();
    if !only_left.is_empty() || !only_right.is_empty() {
        return Err(Error::Unpaired(Box::new(UnpairedFiles {
            left_role: left_role.to_string(),
            left_dir: left_dir.to_path_buf(),
            only_left,
            right_role: right_role.to_string(),
            right_dir: right_dir.to_path_buf(),
            only_right,
        })));
    }
    Ok(pairs)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A decoded single-channel image at its own bit depth.
///
/// Colour images are reduced to the maximum of their colour channels (alpha is ignored), so a
/// pixel is non-zero exactly where any colour channel is, and a grey image saved as RGB reads
/// back unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayMap {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major values, `width * height` of them.
    pub values: Vec<u16>,
    /// The largest value the file's bit depth can hold: 255 or 65535.
    pub depth_max: u16,
}

/// The largest image side a slice file may have (CT slices are 512).
pub const MAX_IMAGE_SIDE: u32 = 16384;

impl GrayMap {
    /// Reads an image file.
    ///
    /// Corrupt and truncated files are errors naming the file, including JPEGs that end before
    /// their end-of-image marker (which some decoders would silently fill with grey).
    pub fn read(path: &Path) -> Result<Self> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut crate::readers::open_regular(path)?, &mut bytes).map_err(
            |source| Error::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            },
        )?;
        let decode_err = |reason: String| Error::Decode {
            path: path.to_path_buf(),
            reason,
        };
        let format = image::guess_format(&bytes).map_err(|e| decode_err(e.to_string()))?;
        if format == image::ImageFormat::Jpeg && !jpeg_has_end_marker(&bytes) {
            return Err(decode_err(
                "JPEG data is truncated (no end-of-image marker)".into(),
            ));
        }
        // Sizes are checked before the decoder allocates: a tiny file may claim a huge image.
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(1 << 30);
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
        Ok(Self::from_image(&img))
    }

    /// The map of an already decoded image.
    pub fn from_image(img: &DynamicImage) -> Self {
        let (width, height) = (img.width(), img.height());
        let eight_bit = matches!(
            img,
            DynamicImage::ImageLuma8(_)
                | DynamicImage::ImageLumaA8(_)
                | DynamicImage::ImageRgb8(_)
                | DynamicImage::ImageRgba8(_)
        );
        let values: Vec<u16> = match (eight_bit, img.color().has_color()) {
            (true, false) => img
                .to_luma8()
                .into_raw()
                .into_iter()
                .map(u16::from)
                .collect(),
            (true, true) => img
                .to_rgb8()
                .pixels()
                .map(|p| u16::from(p.0.into_iter().max().unwrap_or(0)))
                .collect(),
            (false, false) => img.to_luma16().into_raw(),
            (false, true) => img
                .to_rgb16()
                .pixels()
                .map(|p| p.0.into_iter().max().unwrap_or(0))
                .collect(),
        };
        Self {
            width,
            height,
            values,
            depth_max: if eight_bit { u8::MAX.into() } else { u16::MAX },
        }
    }

    /// `(width, height)`.
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// A label mask: lesion wherever the value is non-zero.
    pub fn nonzero(&self) -> Vec<bool> {
        self.values.iter().map(|&v| v != 0).collect()
    }

    /// A score map thresholded at `threshold` in `[0, 1]` of the full scale.
    ///
    /// A pixel is lesion where `value >= threshold * full_scale`. The full scale is the bit
    /// depth's maximum (255 or 65535), except for a map whose values are all 0 or 1, which is
    /// read as a 0/1 label mask (full scale 1). So 0/1 masks, 0/255 masks and soft 0–255
    /// probability maps all give what they mean at the default threshold 0.5.
    pub fn at_least(&self, threshold: f64) -> Result<Vec<bool>> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::BadThreshold(threshold));
        }
        let full_scale = if self.values.iter().all(|&v| v <= 1) {
            1.0
        } else {
            f64::from(self.depth_max)
        };
        let cut = threshold * full_scale;
        Ok(self.values.iter().map(|&v| f64::from(v) >= cut).collect())
    }
}

/// Whether JPEG data ends with its end-of-image marker `FF D9` (trailing zero padding allowed).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

    use super::*;

    fn save_gray(dir: &Path, name: &str, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> PathBuf {
        let path = dir.join(name);
        GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)]))
            .save(&path)
            .unwrap();
        path
    }

    #[test]
    fn lists_and_pairs_by_stem_across_extensions() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        save_gray(&a, "002.png", 2, 2, |_, _| 0);
        save_gray(&a, "001.PNG", 2, 2, |_, _| 0);
        save_gray(&b, "001.jpg", 2, 2, |_, _| 0);
        save_gray(&b, "002.bmp", 2, 2, |_, _| 0);
        std::fs::write(a.join("notes.txt"), "skipped").unwrap();
        std::fs::create_dir(a.join("sub.png")).unwrap();
        let pairs = pair_by_stem((&a, "prediction"), (&b, "truth"))?;
        assert_eq!(
            pairs.iter().map(|p| p.stem.as_str()).collect::<Vec<_>>(),
            ["001", "002"]
        );
        assert_eq!(pairs[0].left, a.join("001.PNG"));
        assert_eq!(pairs[1].right, b.join("002.bmp"));
        Ok(())
    }

    #[test]
    fn unpaired_files_are_named_on_both_sides() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("pred"), tmp.path().join("truth"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        save_gray(&a, "001.png", 2, 2, |_, _| 0);
        save_gray(&a, "009.png", 2, 2, |_, _| 0);
        save_gray(&b, "001.png", 2, 2, |_, _| 0);
        save_gray(&b, "005.png", 2, 2, |_, _| 0);
        let msg = pair_by_stem((&a, "prediction"), (&b, "truth"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("1 prediction file(s)") && msg.contains("009.png"),
            "{msg}"
        );
        assert!(
            msg.contains("1 truth file(s)")
                && msg.contains("005.png")
                && msg.contains("no prediction"),
            "{msg}"
        );
    }

    #[test]
    fn folder_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("missing");
        assert!(matches!(list_slices(&missing), Err(Error::Io { .. })));
        let file = save_gray(tmp.path(), "x.png", 1, 1, |_, _| 0);
        assert!(matches!(list_slices(&file), Err(Error::NotAFolder { .. })));
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = list_slices(&empty).unwrap_err();
        assert!(
            matches!(err, Error::EmptyFolder { .. }) && err.to_string().contains("empty"),
            "{err}"
        );
        save_gray(&empty, "3.png", 1, 1, |_, _| 0);
        save_gray(&empty, "3.jpg", 1, 1, |_, _| 0);
        let err = list_slices(&empty).unwrap_err().to_string();
        assert!(err.contains("3.png") && err.contains("3.jpg"), "{err}");
    }

    #[test]
    fn thresholds_for_01_0255_and_soft_maps() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let soft = GrayMap::read(&save_gray(tmp.path(), "soft.png", 4, 1, |x, _| {
            [0, 127, 128, 255][x as usize]
        }))?;
        assert_eq!(soft.depth_max, 255);
        assert_eq!(soft.at_least(0.5)?, [false, false, true, true]);
        assert_eq!(soft.at_least(0.0)?, [true; 4]);
        assert_eq!(soft.nonzero(), [false, true, true, true]);
        let zero_one = GrayMap::read(&save_gray(tmp.path(), "01.png", 3, 1, |x, _| {
            [0, 1, 1][x as usize]
        }))?;
        assert_eq!(zero_one.at_least(0.5)?, [false, true, true]);
        assert!(matches!(soft.at_least(1.5), Err(Error::BadThreshold(_))));
        assert!(matches!(
            soft.at_least(f64::NAN),
            Err(Error::BadThreshold(_))
        ));
        Ok(())
    }

    #[test]
    fn sixteen_bit_and_colour_images() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let p16 = tmp.path().join("16.png");
        ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(2, 1, |x, _| {
            Luma([[32767, 32768][x as usize]])
        })
        .save(&p16)
        .unwrap();
        let m = GrayMap::read(&p16)?;
        assert_eq!(m.depth_max, u16::MAX);
        assert_eq!(m.at_least(0.5)?, [false, true]);
        let prgb = tmp.path().join("rgb.png");
        RgbImage::from_fn(3, 1, |x, _| {
            Rgb([[0, 0, 0], [0, 0, 7], [200, 200, 200]][x as usize])
        })
        .save(&prgb)
        .unwrap();
        let m = GrayMap::read(&prgb)?;
        assert_eq!(m.values, [0, 7, 200]);
        assert_eq!(m.nonzero(), [false, true, true]);
        Ok(())
    }

    #[test]
    fn corrupt_and_truncated_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let png = save_gray(tmp.path(), "t.png", 64, 64, |x, y| (x * y) as u8);
        let jpg = save_gray(tmp.path(), "t.jpg", 64, 64, |x, y| (x + y) as u8);
        for path in [&png, &jpg] {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
            let err = GrayMap::read(path).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{err}");
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
        let junk = tmp.path().join("junk.png");
        std::fs::write(&junk, b"not an image at all").unwrap();
        assert!(
            GrayMap::read(&junk)
                .unwrap_err()
                .to_string()
                .contains("junk.png")
        );
    }
}
