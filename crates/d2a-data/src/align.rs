//! Finding one copy of a slice inside another copy of it, and carrying a mask across.
//!
//! Two public copies of the same 20 CT volumes differ in everything but anatomy:
//! `ma20-radiologist-256` holds whole frames resized to 256x256 and CLAHE-equalised, with the
//! radiologists' masks; `covid20-infnet-pseudo` holds Inf-Net's copies, cropped to the thorax at
//! the scanner's resolution, rotated a quarter turn and display-windowed, with model-made
//! pseudo-labels. An Inf-Net image rotated ([`Plane::rotate90`]) and scaled to the frame's pixel
//! size ([`Plane::scaled`]) is a crop of one 256x256 frame; [`Frames::locate`] finds which frame
//! and where by normalised cross-correlation (which ignores the windowing: any increasing affine
//! map of the grey levels leaves it unchanged), coarse to fine, and [`transfer_mask`] samples that
//! frame's mask onto the Inf-Net image's pixel grid.

use std::ops::Range;

use rayon::prelude::*;

use crate::slice_files::GrayMap;

/// A grey image as `f32`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` values, row by row.
    pub values: Vec<f32>,
}

impl Plane {
    /// A plane of `values` (row-major); `None` unless there are `width * height` of them.
    pub fn new(width: usize, height: usize, values: Vec<f32>) -> Option<Self> {
        (values.len() == width * height).then_some(Self {
            width,
            height,
            values,
        })
    }

    /// The grey levels of a decoded image file.
    pub fn from_gray(map: &GrayMap) -> Self {
        Self {
            width: map.width as usize,
            height: map.height as usize,
            values: map.values.iter().map(|&v| f32::from(v)).collect(),
        }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        self.values[y * self.width + x]
    }

    /// The image turned a quarter turn counter-clockwise (NumPy's `rot90(a, 1)`): the output's
    /// row `i`, column `j` is the input's row `j`, column `width - 1 - i`.
    pub fn rotate90(&self) -> Self {
        let (w, h) = (self.width, self.height);
        let values = (0..w)
            .flat_map(|i| (0..h).map(move |j| self.at(w - 1 - i, j)))
            .collect();
        Self {
            width: h,
            height: w,
            values,
        }
    }

    /// The image scaled by `s` (`0 < s <= 1`): `floor(width · s)` by `floor(height · s)` pixels,
    /// each the bilinear sample at `(dst + 0.5) / s - 0.5` (edges clamped). At `s = 1/2` that is
    /// the mean of each 2x2 block.
    pub fn scaled(&self, s: f32) -> Self {
        let width = (self.width as f32 * s).floor() as usize;
        let height = (self.height as f32 * s).floor() as usize;
        let xs: Vec<_> = (0..width).map(|x| taps(x, s, self.width)).collect();
        let values = (0..height)
            .flat_map(|y| {
                let (y0, y1, fy) = taps(y, s, self.height);
                xs.iter().map(move |&(x0, x1, fx)| {
                    let top = self.at(x0, y0) * (1.0 - fx) + self.at(x1, y0) * fx;
                    let bottom = self.at(x0, y1) * (1.0 - fx) + self.at(x1, y1) * fx;
                    top * (1.0 - fy) + bottom * fy
                })
            })
            .collect();
        Self {
            width,
            height,
            values,
        }
    }

    /// The mean of each `k`x`k` block (the remainder rows and columns dropped).
    fn shrunk(&self, k: usize) -> Self {
        let (width, height) = (self.width / k, self.height / k);
        let norm = 1.0 / (k * k) as f32;
        let values = (0..height)
            .flat_map(|y| {
                (0..width).map(move |x| {
                    let block = (0..k).flat_map(|dy| (0..k).map(move |dx| (dx, dy)));
                    block
                        .map(|(dx, dy)| self.at(x * k + dx, y * k + dy))
                        .sum::<f32>()
                        * norm
                })
            })
            .collect();
        Self {
            width,
            height,
            values,
        }
    }
}

/// The two source indices and the weight of the second for output pixel `dst` at scale `s`.
fn taps(dst: usize, s: f32, len: usize) -> (usize, usize, f32) {
    let src = ((dst as f32 + 0.5) / s - 0.5).clamp(0.0, (len - 1) as f32);
    let lo = src.floor() as usize;
    (lo, (lo + 1).min(len - 1), src - lo as f32)
}

/// A template, zero-mean and of unit norm, so that its dot product with a window divided by the
/// window's own deviation is their correlation coefficient.
struct Template {
    plane: Plane,
}

impl Template {
    fn new(mut plane: Plane) -> Option<Self> {
        let n = plane.values.len() as f64;
        let mean = plane.values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let norm = plane
            .values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            .sqrt();
        if !norm.is_finite() || norm <= 1e-6 {
            return None;
        }
        for v in &mut plane.values {
            *v = ((f64::from(*v) - mean) / norm) as f32;
        }
        Some(Self { plane })
    }
}

/// A frame with the summed-area tables of its values and squares.
struct Searchable {
    plane: Plane,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl Searchable {
    fn new(plane: Plane) -> Self {
        let (w, h) = (plane.width, plane.height);
        let mut sum = vec![0.0; (w + 1) * (h + 1)];
        let mut sum_sq = vec![0.0; (w + 1) * (h + 1)];
        for y in 0..h {
            for x in 0..w {
                let v = f64::from(plane.at(x, y));
                let i = (y + 1) * (w + 1) + x + 1;
                sum[i] = v + sum[i - 1] + sum[i - w - 1] - sum[i - w - 2];
                sum_sq[i] = v * v + sum_sq[i - 1] + sum_sq[i - w - 1] - sum_sq[i - w - 2];
            }
        }
        Self { plane, sum, sum_sq }
    }

    /// The correlation coefficient of `t` placed with its top-left corner at `(x, y)`.
    fn score(&self, t: &Template, x: usize, y: usize) -> f32 {
        let (tw, th) = (t.plane.width, t.plane.height);
        let stride = self.plane.width + 1;
        let boxed = |s: &[f64]| {
            s[(y + th) * stride + x + tw] - s[y * stride + x + tw] - s[(y + th) * stride + x]
                + s[y * stride + x]
        };
        let n = (tw * th) as f64;
        let (s, s2) = (boxed(&self.sum), boxed(&self.sum_sq));
        let var = s2 - s * s / n;
        if !var.is_finite() || var <= 1e-6 {
            return 0.0;
        }
        let dot: f32 = (0..th)
            .map(|r| {
                let f = &self.plane.values[(y + r) * self.plane.width + x..][..tw];
                let tr = &t.plane.values[r * tw..][..tw];
                f.iter().zip(tr).map(|(a, b)| a * b).sum::<f32>()
            })
            .sum();
        (f64::from(dot) / var.sqrt()) as f32
    }

    /// The best placement of `t` with its corner in `xs` x `ys` (clipped to where it fits).
    fn best(&self, t: &Template, xs: Range<usize>, ys: Range<usize>) -> Option<Placement> {
        let x_end = xs
            .end
            .min((self.plane.width + 1).checked_sub(t.plane.width)?);
        let y_end = ys
            .end
            .min((self.plane.height + 1).checked_sub(t.plane.height)?);
        (ys.start..y_end)
            .flat_map(|y| (xs.start..x_end).map(move |x| (x, y)))
            .map(|(x, y)| Placement {
                score: self.score(t, x, y),
                x,
                y,
            })
            .reduce(|a, b| if b.score > a.score { b } else { a })
    }
}

/// Where a template sits in a frame: its top-left corner and the correlation there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Correlation coefficient in `[-1, 1]`.
    pub score: f32,
    /// Column of the template's left edge in the frame.
    pub x: usize,
    /// Row of the template's top edge.
    pub y: usize,
}

/// A placement in one of several frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Located {
    /// Index of the frame (into the list [`Frames::new`] was given).
    pub frame: usize,
    /// Where in it.
    pub at: Placement,
}

/// How much coarser the first search runs than the frames.
const COARSE: usize = 4;
/// Frames whose coarse best is among this many are searched at full resolution.
const REFINE_FRAMES: usize = 4;

/// Frames to search, each kept at full and at coarse resolution.
pub struct Frames {
    fine: Vec<Searchable>,
    coarse: Vec<Searchable>,
}

impl Frames {
    /// Prepares `frames` for [`Frames::locate`].
    pub fn new(frames: Vec<Plane>) -> Self {
        let coarse = frames
            .par_iter()
            .map(|f| Searchable::new(f.shrunk(COARSE)))
            .collect();
        let fine = frames.into_par_iter().map(Searchable::new).collect();
        Self { fine, coarse }
    }

    /// How many frames there are.
    pub fn len(&self) -> usize {
        self.fine.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fine.is_empty()
    }

    /// The best placement of `template` (already in the frames' pixel size and orientation) in
    /// any frame of `among`: every placement in every frame at 1/4 resolution, then the
    /// [`REFINE_FRAMES`] best frames at full resolution within 4 pixels of their coarse best.
    /// `None` when the template is flat or fits in no frame.
    pub fn locate(&self, template: &Plane, among: Range<usize>) -> Option<Located> {
        let among = among.start.min(self.len())..among.end.min(self.len());
        let fine_t = Template::new(template.clone())?;
        let coarse_t = Template::new(template.shrunk(COARSE))?;
        let mut coarse: Vec<Located> = among
            .into_par_iter()
            .filter_map(|frame| {
                let at = self.coarse[frame].best(&coarse_t, 0..usize::MAX, 0..usize::MAX)?;
                Some(Located { frame, at })
            })
            .collect();
        coarse.sort_by(|a, b| {
            b.at.score
                .total_cmp(&a.at.score)
                .then(a.frame.cmp(&b.frame))
        });
        coarse.truncate(REFINE_FRAMES);
        let reach = COARSE;
        coarse
            .into_par_iter()
            .filter_map(|c| {
                let (x, y) = (c.at.x * COARSE, c.at.y * COARSE);
                let xs = x.saturating_sub(reach)..x + reach + 1;
                let ys = y.saturating_sub(reach)..y + reach + 1;
                let at = self.fine[c.frame].best(&fine_t, xs, ys)?;
                Some(Located { frame: c.frame, at })
            })
            .reduce_with(|a, b| {
                if (b.at.score, std::cmp::Reverse(b.frame))
                    > (a.at.score, std::cmp::Reverse(a.frame))
                {
                    b
                } else {
                    a
                }
            })
    }
}

/// An image as the frames hold it: turned a quarter turn counter-clockwise and scaled by `s`.
pub fn as_template(image: &Plane, s: f32) -> Plane {
    image.rotate90().scaled(s)
}

/// The mask `frame_mask` (a frame's mask, lesion where `true`) on the pixel grid of the image
/// found at `at` in that frame with [`as_template`]`(image, s)`: each image pixel takes the
/// bilinear sample of the mask at the point it maps to, lesion where that is at least 1/2.
pub fn transfer_mask(
    frame_mask: &[bool],
    frame_size: (usize, usize),
    image_size: (usize, usize),
    at: Placement,
    s: f32,
) -> Vec<bool> {
    let (fw, fh) = frame_size;
    let (w, h) = image_size;
    let mask = Plane {
        width: fw,
        height: fh,
        values: frame_mask.iter().map(|&m| f32::from(u8::from(m))).collect(),
    };
    let sample = |fx: f32, fy: f32| {
        let fx = fx.clamp(0.0, (fw - 1) as f32);
        let fy = fy.clamp(0.0, (fh - 1) as f32);
        let (x0, y0) = (fx.floor() as usize, fy.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(fw - 1), (y0 + 1).min(fh - 1));
        let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
        let top = mask.at(x0, y0) * (1.0 - ax) + mask.at(x1, y0) * ax;
        let bottom = mask.at(x0, y1) * (1.0 - ax) + mask.at(x1, y1) * ax;
        top * (1.0 - ay) + bottom * ay
    };
    (0..h)
        .flat_map(|y| {
            (0..w).map(move |x| {
                // Image pixel (x, y) is pixel (row w-1-x, column y) of the rotated image, which
                // the template's scaling puts at (row, column) · s + (s - 1) / 2.
                let (row, col) = ((w - 1 - x) as f32, y as f32);
                let fy = at.y as f32 + (row + 0.5) * s - 0.5;
                let fx = at.x as f32 + (col + 0.5) * s - 0.5;
                sample(fx, fy) >= 0.5
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A smooth random image: a sum of Gaussian blobs.
    fn blobs(width: usize, height: usize, seed: u64) -> Plane {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let centres: Vec<(f32, f32, f32)> = (0..40)
            .map(|_| {
                (
                    rng.random_range(0.0..width as f32),
                    rng.random_range(0.0..height as f32),
                    rng.random_range(2.0..8.0),
                )
            })
            .collect();
        let values = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x as f32, y as f32)))
            .map(|(x, y)| {
                centres
                    .iter()
                    .map(|&(cx, cy, r)| (-((x - cx).powi(2) + (y - cy).powi(2)) / (r * r)).exp())
                    .sum::<f32>()
                    * 100.0
            })
            .collect();
        Plane::new(width, height, values).unwrap()
    }

    /// The crop of `p` at `(x, y)` of `w` by `h`.
    fn crop(p: &Plane, x: usize, y: usize, w: usize, h: usize) -> Plane {
        let values = (y..y + h)
            .flat_map(|r| (x..x + w).map(move |c| (c, r)))
            .map(|(c, r)| p.at(c, r))
            .collect();
        Plane::new(w, h, values).unwrap()
    }

    /// Each pixel repeated `k` times in both directions.
    fn enlarged(p: &Plane, k: usize) -> Plane {
        let values = (0..p.height * k)
            .flat_map(|y| (0..p.width * k).map(move |x| (x / k, y / k)))
            .map(|(x, y)| p.at(x, y))
            .collect();
        Plane::new(p.width * k, p.height * k, values).unwrap()
    }

    #[test]
    fn a_quarter_turn_is_numpys_rot90() {
        // np.rot90([[1, 2, 3], [4, 5, 6]]) == [[3, 6], [2, 5], [1, 4]]
        let p = Plane::new(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let r = p.rotate90();
        assert_eq!((r.width, r.height), (2, 3));
        assert_eq!(r.values, vec![3.0, 6.0, 2.0, 5.0, 1.0, 4.0]);
        let full = (0..4).fold(p.clone(), |q, _| q.rotate90());
        assert_eq!(full, p);
    }

    #[test]
    fn halving_averages_two_by_two_blocks() {
        let p = Plane::new(4, 2, vec![0.0, 2.0, 4.0, 8.0, 2.0, 4.0, 0.0, 0.0]).unwrap();
        assert_eq!(p.scaled(0.5).values, vec![2.0, 3.0]);
        assert_eq!(p.shrunk(2).values, vec![2.0, 3.0]);
    }

    /// Three frames; an "image" made from a crop of the middle one, enlarged twice, turned back
    /// a quarter turn (so that `as_template` undoes both), with its grey levels remapped as a
    /// display window would.
    #[test]
    fn a_crop_is_found_in_its_frame_and_its_mask_comes_back() {
        let frames: Vec<Plane> = (0..3).map(|s| blobs(96, 96, s)).collect();
        let (cx, cy, cw, ch) = (21, 30, 40, 52);
        let piece = crop(&frames[1], cx, cy, cw, ch);
        let mut image = (0..3).fold(enlarged(&piece, 2), |q, _| q.rotate90());
        for v in &mut image.values {
            *v = 3.0 * *v + 17.0;
        }
        let template = as_template(&image, 0.5);
        assert_eq!((template.width, template.height), (cw, ch));
        let found = Frames::new(frames.clone()).locate(&template, 0..3).unwrap();
        assert_eq!(found.frame, 1);
        assert_eq!((found.at.x, found.at.y), (cx, cy));
        assert!(found.at.score > 0.999, "{found:?}");
        // Outside the frame it belongs to, the best placement is poor.
        let elsewhere = Frames::new(frames.clone()).locate(&template, 2..3).unwrap();
        assert!(elsewhere.at.score < 0.9, "{elsewhere:?}");

        // The frame's mask: a rectangle inside the crop. Carried onto the image it is that
        // rectangle enlarged and turned the way the image is.
        let mut frame_mask = vec![false; 96 * 96];
        for y in 40..60 {
            for x in 30..45 {
                frame_mask[y * 96 + x] = true;
            }
        }
        let mask = transfer_mask(
            &frame_mask,
            (96, 96),
            (image.width, image.height),
            found.at,
            0.5,
        );
        let piece_mask = Plane::new(
            cw,
            ch,
            (cy..cy + ch)
                .flat_map(|y| (cx..cx + cw).map(move |x| (x, y)))
                .map(|(x, y)| f32::from(u8::from(frame_mask[y * 96 + x])))
                .collect(),
        )
        .unwrap();
        let expected = (0..3).fold(enlarged(&piece_mask, 2), |q, _| q.rotate90());
        let differ = mask
            .iter()
            .zip(&expected.values)
            .filter(|&(&m, &e)| m != (e > 0.5))
            .count();
        // Bilinear sampling moves the rectangle's edges by at most one enlarged pixel.
        let edge = 2 * 2 * (15 + 20) * 2;
        assert!(differ <= edge, "{differ} pixels differ");
        assert!(mask.iter().filter(|&&m| m).count() >= 4 * 15 * 20 - edge);
    }

    #[test]
    fn flat_or_oversized_templates_are_not_placed() {
        let frames = Frames::new(vec![blobs(32, 32, 0)]);
        let flat = Plane::new(8, 8, vec![5.0; 64]).unwrap();
        assert!(frames.locate(&flat, 0..1).is_none());
        assert!(frames.locate(&blobs(40, 20, 1), 0..1).is_none());
        assert!(frames.locate(&blobs(8, 8, 1), 3..9).is_none());
    }
}
