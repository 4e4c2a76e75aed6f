//! Overlay PNGs: the slice in grey with the predicted lesion outlined in red and the truth (when
//! known) in green; where both outlines meet, yellow.

use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

/// Outline colours: prediction, truth, both.
pub const COLOURS: [[u8; 3]; 3] = [[255, 40, 40], [40, 220, 40], [255, 230, 0]];

/// Pixels of `mask` (`h x w`, non-zero = inside) with a 4-neighbour outside (or on the border).
pub fn outline(mask: &[u8], h: usize, w: usize) -> Vec<bool> {
    let inside = |r: isize, c: isize| {
        r >= 0
            && c >= 0
            && (r as usize) < h
            && (c as usize) < w
            && mask[r as usize * w + c as usize] != 0
    };
    (0..h * w)
        .map(|i| {
            let (r, c) = ((i / w) as isize, (i % w) as isize);
            inside(r, c)
                && !(inside(r - 1, c) && inside(r + 1, c) && inside(r, c - 1) && inside(r, c + 1))
        })
        .collect()
}

/// Writes the overlay of `image` (`h x w`, values in [0, 1]) with `pred` and optional `truth`.
pub fn write_overlay(
    image: &[f32],
    (h, w): (usize, usize),
    pred: &[u8],
    truth: Option<&[u8]>,
    path: &Path,
) -> Result<()> {
    let p = outline(pred, h, w);
    let t = truth.map(|t| outline(t, h, w));
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let in_t = t.as_ref().is_some_and(|t| t[i]);
        match (p[i], in_t) {
            (true, true) => Rgb(COLOURS[2]),
            (true, false) => Rgb(COLOURS[0]),
            (false, true) => Rgb(COLOURS[1]),
            (false, false) => {
                let g = (image[i].clamp(0.0, 1.0) * 255.0).round() as u8;
                Rgb([g, g, g])
            }
        }
    });
    save_png(img, path)
}

/// Writes `img` as a PNG at `path` atomically (never a half-written file under that name).
pub fn save_png(img: impl Into<image::DynamicImage>, path: &Path) -> Result<()> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.into()
        .write_to(&mut bytes, image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    Ok(d2a_model::checkpoint::write_atomic(path, bytes.get_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outline_of_a_square_is_its_border() {
        // A 3x3 square inside a 5x5 image: 8 border pixels, the centre is interior.
        let mut m = vec![0u8; 25];
        for r in 1..4 {
            for c in 1..4 {
                m[r * 5 + c] = 1;
            }
        }
        let o = outline(&m, 5, 5);
        assert_eq!(o.iter().filter(|&&b| b).count(), 8);
        assert!(!o[2 * 5 + 2] && o[5 + 1] && !o[0]);
    }
}
