//! Intensity normalisation applied to every image before the model sees it, in training and at
//! inference alike: a checkpoint records its own (`d2a.normalise`), so the `Segmenter` applies
//! exactly what training applied.

/// One of the normalisations, by name (`none`, `percentile`, `clahe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalise {
    /// Pixels as read (the paper's).
    #[default]
    None,
    /// Per image: clip to its 0.5th and 99.5th percentiles and rescale that range to [0, 1]
    /// (nnU-Net's choice for images not in CT units), so that differently windowed or
    /// equalised slices look alike.
    Percentile,
    /// Per image: stretch its [min, max] to 8-bit, then contrast-limited adaptive histogram
    /// equalisation as OpenCV's `createCLAHE(clipLimit = 7, tileGridSize = 8x8)` computes it,
    /// back to [0, 1]. This is how `ma20-radiologist-256` was made, so a model trained on those
    /// slices sees any other slice (a display-windowed JPEG, a HU volume) in the same form:
    /// equalisation undoes most monotone intensity changes such as a different window.
    Clahe,
}

/// CLAHE's clip limit and tile grid (OpenCV's parameters) for [`Normalise::Clahe`].
const CLAHE_CLIP: f32 = 7.0;
const CLAHE_TILES: usize = 8;

impl Normalise {
    /// The name in checkpoints and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Percentile => "percentile",
            Self::Clahe => "clahe",
        }
    }

    /// Normalises `pixels`, a row-major `height x width` image, in place.
    ///
    /// # Panics
    /// If `pixels.len() != height * width` (callers hold images whose size was checked).
    pub fn apply(self, pixels: &mut [f32], (height, width): (usize, usize)) {
        assert_eq!(pixels.len(), height * width, "image size");
        if pixels.is_empty() {
            return;
        }
        match self {
            Self::None => {}
            Self::Percentile => percentile(pixels),
            Self::Clahe => {
                let bytes = stretch_to_u8(pixels);
                let out = clahe(&bytes, (height, width), CLAHE_CLIP, CLAHE_TILES);
                for (p, &v) in pixels.iter_mut().zip(&out) {
                    *p = f32::from(v) / 255.0;
                }
            }
        }
    }
}

impl std::str::FromStr for Normalise {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "percentile" => Ok(Self::Percentile),
            "clahe" => Ok(Self::Clahe),
            other => Err(format!(
                "unknown normalisation {other:?}: none, percentile or clahe"
            )),
        }
    }
}

fn percentile(pixels: &mut [f32]) {
    let mut sorted = pixels.to_vec();
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    let span = hi - lo;
    for p in pixels.iter_mut() {
        *p = if span > 0.0 {
            ((*p - lo) / span).clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
}

/// The image's [min, max] stretched to 0..=255 and rounded (a flat image gives zeros).
fn stretch_to_u8(pixels: &[f32]) -> Vec<u8> {
    let (lo, hi) = pixels
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &p| {
            (lo.min(p), hi.max(p))
        });
    let span = hi - lo;
    pixels
        .iter()
        .map(|&p| {
            if span > 0.0 {
                (255.0 * (p - lo) / span).round().clamp(0.0, 255.0) as u8
            } else {
                0
            }
        })
        .collect()
}

/// OpenCV's CLAHE on an 8-bit image (`modules/imgproc/src/clahe.cpp`, its CPU path): the image
/// is extended by reflection (`BORDER_REFLECT_101`) to a multiple of the tile grid, each tile's
/// 256-bin histogram is clipped at `clip · tile area / 256` (at least 1) with the excess spread
/// evenly and its residual one count per `256 / residual` bins, its cumulative sum scaled to
/// 0..=255 and rounded (ties to even) as a lookup table, and each pixel of the original image
/// takes the bilinear blend of its four nearest tiles' tables, rounded.
fn clahe(src: &[u8], (height, width): (usize, usize), clip: f32, tiles: usize) -> Vec<u8> {
    const BINS: usize = 256;
    let pad = |n: usize| n.next_multiple_of(tiles);
    let (ext_h, ext_w) = (pad(height), pad(width));
    let (tile_h, tile_w) = (ext_h / tiles, ext_w / tiles);
    // BORDER_REFLECT_101 for the rows and columns past the end (at most `tiles - 1` of them;
    // an image narrower than that is reflected repeatedly).
    let reflect = |i: usize, n: usize| {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let i = i % period;
        if i < n { i } else { period - i }
    };
    let area = tile_h * tile_w;
    let limit = ((clip * area as f32 / BINS as f32) as usize).max(1);
    let scale = (BINS - 1) as f32 / area as f32;
    let mut luts = vec![0u8; tiles * tiles * BINS];
    for ty in 0..tiles {
        for tx in 0..tiles {
            let mut hist = [0usize; BINS];
            for y in ty * tile_h..(ty + 1) * tile_h {
                let row = reflect(y, height) * width;
                for x in tx * tile_w..(tx + 1) * tile_w {
                    hist[usize::from(src[row + reflect(x, width)])] += 1;
                }
            }
            let mut clipped = 0;
            for h in hist.iter_mut() {
                if *h > limit {
                    clipped += *h - limit;
                    *h = limit;
                }
            }
            let batch = clipped / BINS;
            let mut residual = clipped - batch * BINS;
            for h in hist.iter_mut() {
                *h += batch;
            }
            if let Some(step) = BINS.checked_div(residual) {
                let step = step.max(1);
                let mut i = 0;
                while i < BINS && residual > 0 {
                    hist[i] += 1;
                    i += step;
                    residual -= 1;
                }
            }
            let lut = &mut luts[(ty * tiles + tx) * BINS..][..BINS];
            let mut sum = 0usize;
            for (l, &h) in lut.iter_mut().zip(&hist) {
                sum += h;
                *l = saturate_u8(sum as f32 * scale);
            }
        }
    }
    // Per column: the two tiles it blends and the weight of the second.
    let (inv_w, inv_h) = (1.0 / tile_w as f32, 1.0 / tile_h as f32);
    let neighbours = |pos: usize, inv: f32| {
        let f = pos as f32 * inv - 0.5;
        let first = f.floor();
        let weight = f - first;
        let first = first as isize;
        let lo = first.max(0) as usize;
        let hi = ((first + 1) as usize).min(tiles - 1);
        (lo, hi, weight)
    };
    let columns: Vec<_> = (0..width).map(|x| neighbours(x, inv_w)).collect();
    let mut out = vec![0u8; height * width];
    for y in 0..height {
        let (ty1, ty2, ya) = neighbours(y, inv_h);
        let (plane1, plane2) = (ty1 * tiles, ty2 * tiles);
        for x in 0..width {
            let (tx1, tx2, xa) = columns[x];
            let v = usize::from(src[y * width + x]);
            let at = |tile: usize| f32::from(luts[tile * BINS + v]);
            let res = (at(plane1 + tx1) * (1.0 - xa) + at(plane1 + tx2) * xa) * (1.0 - ya)
                + (at(plane2 + tx1) * (1.0 - xa) + at(plane2 + tx2) * xa) * ya;
            out[y * width + x] = saturate_u8(res);
        }
    }
    out
}

/// OpenCV's `saturate_cast<uchar>(float)`: rounded to nearest, ties to even, clamped.
fn saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_normalisation_clips_and_rescales() {
        // 0..=199: the 0.5th and 99.5th percentiles are 1 and 198.
        let mut px: Vec<f32> = (0..200).map(|v| v as f32).collect();
        Normalise::Percentile.apply(&mut px, (10, 20));
        assert_eq!((px[0], px[1], px[198], px[199]), (0.0, 0.0, 1.0, 1.0));
        assert!((px[100] - 99.0 / 197.0).abs() < 1e-6);
        let mut flat = vec![0.3f32; 9];
        Normalise::Percentile.apply(&mut flat, (3, 3));
        assert!(flat.iter().all(|&v| v == 0.0));
        let mut same = vec![0.1f32, 0.7];
        Normalise::None.apply(&mut same, (1, 2));
        assert_eq!(same, [0.1, 0.7]);
        assert_eq!("percentile".parse(), Ok(Normalise::Percentile));
        assert_eq!("clahe".parse(), Ok(Normalise::Clahe));
        assert!("zscore".parse::<Normalise>().is_err());
    }

    #[test]
    fn clahe_matches_opencv() {
        // OpenCV's output on synthetic images (tests/fixtures/make_clahe.py made the file).
        let bytes = include_bytes!("../tests/fixtures/clahe_cv2.bin");
        let mut rest = &bytes[..];
        let mut cases = 0;
        while !rest.is_empty() {
            let word = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            let (h, w) = (word(rest), word(&rest[4..]));
            let input = &rest[8..8 + h * w];
            let want = &rest[8 + h * w..8 + 2 * h * w];
            let got = clahe(input, (h, w), CLAHE_CLIP, CLAHE_TILES);
            let differ = got.iter().zip(want).filter(|(g, w)| g != w).count();
            assert_eq!(differ, 0, "{h}x{w}: {differ} pixels differ from OpenCV's");
            rest = &rest[8 + 2 * h * w..];
            cases += 1;
        }
        assert_eq!(cases, 5);
    }

    #[test]
    fn clahe_ignores_a_change_of_window() {
        // Equalisation is what makes differently windowed slices alike: a monotone remapping
        // of the grey levels (here a gamma and an offset, as another display window gives)
        // changes CLAHE's output far less than it changes the input.
        let (h, w) = (48, 40);
        let base: Vec<f32> = (0..h * w)
            .map(|i| {
                let (y, x) = ((i / w) as f32, (i % w) as f32);
                (0.5 + 0.3 * (x / 5.0).sin() * (y / 7.0).cos()).clamp(0.0, 1.0)
            })
            .collect();
        let other: Vec<f32> = base.iter().map(|v| 0.2 + 0.6 * v.powf(1.8)).collect();
        let mean_gap = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).map(|(a, b)| (a - b).abs()).sum::<f32>() / a.len() as f32
        };
        let before = mean_gap(&base, &other);
        let (mut a, mut b) = (base.clone(), other.clone());
        Normalise::Clahe.apply(&mut a, (h, w));
        Normalise::Clahe.apply(&mut b, (h, w));
        let after = mean_gap(&a, &b);
        // Measured: 0.119 before, 0.036 after.
        assert!(
            after < before / 3.0,
            "gap {before} before CLAHE, {after} after"
        );
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut flat = vec![0.4f32; 12];
        Normalise::Clahe.apply(&mut flat, (3, 4));
        assert!(flat.iter().all(|v| v.is_finite()));
    }
}
