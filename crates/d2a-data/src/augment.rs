//! Training augmentation (SPEC §4), applied to image and mask together, reproducible from a seed:
//! resize, random horizontal and vertical flips, random rotation, random gamma, log transform,
//! random crop. The mask always follows by nearest neighbour, so it stays binary and aligned.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::slice::{Slice, resize_bilinear, resize_nearest};
use crate::{Error, Result};

/// Ranges of the random transforms (SPEC §4 decisions for what the paper leaves unstated).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    /// Side the slice is resized to first (paper: 560).
    pub resize: usize,
    /// Side of the random crop (paper: 448).
    pub crop: usize,
    /// Largest rotation, degrees, either way (15).
    pub max_rotation_deg: f32,
    /// Gamma range (0.7 to 1.5).
    pub gamma: (f32, f32),
    /// Probability of the log transform (0.5).
    pub log_p: f64,
    /// Range of the log transform's `c` in `log(1 + c·x) / log(1 + c)` (1 to 10).
    pub log_c: (f32, f32),
    /// nnU-Net's intensity augmentations on the crop, each drawn on its own (not the paper's;
    /// off by default): contrast, brightness, Gaussian noise, Gaussian blur, low resolution.
    /// They draw from their own random stream, so the geometric transforms stay as without them.
    pub intensity: bool,
}

impl AugmentConfig {
    /// The paper's protocol: 560, crop 448.
    pub const fn paper() -> Self {
        Self {
            resize: 560,
            crop: 448,
            max_rotation_deg: 15.0,
            gamma: (0.7, 1.5),
            log_p: 0.5,
            log_c: (1.0, 10.0),
            intensity: false,
        }
    }

    /// This configuration with nnU-Net's intensity augmentations on or off.
    pub const fn with_intensity(self, intensity: bool) -> Self {
        Self { intensity, ..self }
    }

    /// The same transforms for a crop of `crop` pixels, resized first by the paper's ratio 560/448.
    pub const fn for_crop(crop: usize) -> Self {
        Self {
            resize: crop * 5 / 4,
            crop,
            ..Self::paper()
        }
    }

    fn check(&self) -> Result<()> {
        if self.crop == 0 || self.crop > self.resize {
            return Err(Error::Invalid(format!(
                "augmentation crop {} must be positive and at most the resize {}",
                self.crop, self.resize
            )));
        }
        Ok(())
    }
}

/// An augmented image and mask, `crop x crop`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// Intensities in [0, 1].
    pub image: Vec<f32>,
    /// 0/1 lesion mask.
    pub mask: Vec<u8>,
    /// The slice's soft map ([`Slice::soft`]), moved exactly as the mask.
    pub soft: Option<Vec<u8>>,
}

/// Applies the transforms of `cfg` to `slice`, drawing every random choice from `seed`.
pub fn augment(slice: &Slice, cfg: &AugmentConfig, seed: u64) -> Result<Augmented> {
    cfg.check()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let r = cfg.resize;
    let (h, w) = (slice.height, slice.width);
    let mut image = resize_bilinear(&slice.image, (h, w), (r, r));
    // The mask and the soft map (where there is one) follow the image by nearest neighbour.
    let mut labels: Vec<Vec<u8>> = std::iter::once(&slice.mask)
        .chain(&slice.soft)
        .map(|plane| resize_nearest(plane, (h, w), (r, r)))
        .collect();
    if rng.random_bool(0.5) {
        for row in 0..r {
            image[row * r..(row + 1) * r].reverse();
            for plane in &mut labels {
                plane[row * r..(row + 1) * r].reverse();
            }
        }
    }
    if rng.random_bool(0.5) {
        for row in 0..r / 2 {
            let other = r - 1 - row;
            for col in 0..r {
                image.swap(row * r + col, other * r + col);
                for plane in &mut labels {
                    plane.swap(row * r + col, other * r + col);
                }
            }
        }
    }
    let angle = rng
        .random_range(-cfg.max_rotation_deg..=cfg.max_rotation_deg)
        .to_radians();
    image = rotate(&image, r, angle);
    for plane in &mut labels {
        *plane = rotate_nearest(plane, r, angle);
    }
    let gamma = rng.random_range(cfg.gamma.0..=cfg.gamma.1);
    let log_c = rng
        .random_bool(cfg.log_p)
        .then(|| rng.random_range(cfg.log_c.0..=cfg.log_c.1));
    for v in &mut image {
        *v = v.clamp(0.0, 1.0).powf(gamma);
        if let Some(c) = log_c {
            *v = (1.0 + c * *v).ln() / (1.0 + c).ln();
        }
        *v = v.clamp(0.0, 1.0);
    }
    let (y0, x0) = (
        rng.random_range(0..=r - cfg.crop),
        rng.random_range(0..=r - cfg.crop),
    );
    let c = cfg.crop;
    let crop = |plane: &[u8]| -> Vec<u8> {
        (y0..y0 + c)
            .flat_map(|y| &plane[y * r + x0..y * r + x0 + c])
            .copied()
            .collect()
    };
    let mut out = Augmented {
        image: Vec::with_capacity(c * c),
        mask: crop(&labels[0]),
        soft: labels.get(1).map(|plane| crop(plane)),
    };
    for y in y0..y0 + c {
        out.image
            .extend_from_slice(&image[y * r + x0..y * r + x0 + c]);
    }
    if cfg.intensity {
        intensity_augment(&mut out.image, c, seed);
    }
    Ok(out)
}

/// nnU-Net's intensity augmentations (its default probabilities, ranges scaled to intensities
/// in [0, 1]) on an `n x n` crop, drawn from a stream of their own seeded by `seed`.
fn intensity_augment(image: &mut [f32], n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_1A7E_4517_0001);
    if rng.random_bool(0.15) {
        let factor = rng.random_range(0.65f32..=1.5);
        let mean = image.iter().sum::<f32>() / image.len() as f32;
        for v in image.iter_mut() {
            *v = (mean + (*v - mean) * factor).clamp(0.0, 1.0);
        }
    }
    if rng.random_bool(0.15) {
        let factor = rng.random_range(0.7f32..=1.3);
        for v in image.iter_mut() {
            *v = (*v * factor).clamp(0.0, 1.0);
        }
    }
    if rng.random_bool(0.15) {
        let sigma = rng.random_range(0.0f32..=0.05);
        for v in image.iter_mut() {
            // Box-Muller: a standard normal from two uniforms.
            let (u1, u2): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            *v = (*v + sigma * z).clamp(0.0, 1.0);
        }
    }
    if rng.random_bool(0.2) {
        let sigma = rng.random_range(0.5f32..=1.0);
        blur(image, n, sigma);
    }
    if rng.random_bool(0.25) {
        let low = ((n as f32 * rng.random_range(0.5f32..=1.0)).round() as usize).max(1);
        let small = resize_nearest(image, (n, n), (low, low));
        image.copy_from_slice(&resize_bilinear(&small, (low, low), (n, n)));
    }
}

/// Separable Gaussian blur of an `n x n` image, borders clamped.
fn blur(image: &mut [f32], n: usize, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as isize;
    let taps: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = taps.iter().sum();
    let clamp = |i: isize| i.clamp(0, n as isize - 1) as usize;
    let mut tmp = vec![0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            tmp[y * n + x] = (-radius..=radius)
                .zip(&taps)
                .map(|(d, w)| w * image[y * n + clamp(x as isize + d)])
                .sum::<f32>()
                / total;
        }
    }
    for y in 0..n {
        for x in 0..n {
            image[y * n + x] = (-radius..=radius)
                .zip(&taps)
                .map(|(d, w)| w * tmp[clamp(y as isize + d) * n + x])
                .sum::<f32>()
                / total;
        }
    }
}

/// The source position `(y, x)` of output pixel `(y, x)`'s centre under a rotation by the angle
/// of `(sin, cos)` about the centre of an `n x n` plane: the inverse rotation.
fn source(y: usize, x: usize, n: usize, (s, c): (f32, f32)) -> (f32, f32) {
    let mid = n as f32 / 2.0;
    let (dy, dx) = (y as f32 + 0.5 - mid, x as f32 + 0.5 - mid);
    (c * dy - s * dx + mid - 0.5, s * dy + c * dx + mid - 0.5)
}

/// Rotates an `n x n` image by `angle` radians about the centre (bilinear, zero outside).
fn rotate(image: &[f32], n: usize, angle: f32) -> Vec<f32> {
    let sin_cos = angle.sin_cos();
    let mut out = vec![0f32; n * n];
    let at = |y: isize, x: isize| -> f32 {
        if y >= 0 && x >= 0 && (y as usize) < n && (x as usize) < n {
            image[y as usize * n + x as usize]
        } else {
            0.0
        }
    };
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = source(y, x, n, sin_cos);
            let (fy, fx) = (sy.floor(), sx.floor());
            let (ly, lx) = (sy - fy, sx - fx);
            let (iy, ix) = (fy as isize, fx as isize);
            out[y * n + x] = (at(iy, ix) * (1.0 - lx) + at(iy, ix + 1) * lx) * (1.0 - ly)
                + (at(iy + 1, ix) * (1.0 - lx) + at(iy + 1, ix + 1) * lx) * ly;
        }
    }
    out
}

/// Rotates an `n x n` label plane (mask or soft map) as [`rotate`] does the image, by nearest
/// neighbour (zero outside).
fn rotate_nearest(plane: &[u8], n: usize, angle: f32) -> Vec<u8> {
    let sin_cos = angle.sin_cos();
    let mut out = vec![0u8; n * n];
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = source(y, x, n, sin_cos);
            let (ny, nx) = (sy.round() as isize, sx.round() as isize);
            if ny >= 0 && nx >= 0 && (ny as usize) < n && (nx as usize) < n {
                out[y * n + x] = plane[ny as usize * n + nx as usize];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::Provenance;

    /// A dark slice with one bright square marker drawn into both image and mask.
    fn marked(size: usize, (y, x): (usize, usize), side: usize) -> Slice {
        let mut image = vec![0.1f32; size * size];
        let mut mask = vec![0u8; size * size];
        for yy in y..y + side {
            for xx in x..x + side {
                image[yy * size + xx] = 1.0;
                mask[yy * size + xx] = 1;
            }
        }
        Slice {
            height: size,
            width: size,
            image,
            mask,
            soft: None,
            provenance: Provenance {
                file: "m".into(),
                volume: "m".into(),
                slice_idx: 0,
            },
        }
    }

    fn centroid(values: impl Iterator<Item = bool>, n: usize) -> Option<(f32, f32)> {
        let (mut sy, mut sx, mut k) = (0.0, 0.0, 0.0);
        for (i, on) in values.enumerate() {
            if on {
                sy += (i / n) as f32;
                sx += (i % n) as f32;
                k += 1.0;
            }
        }
        (k > 0.0).then(|| (sy / k, sx / k))
    }

    #[test]
    fn marker_moves_together_in_image_and_mask() -> Result<()> {
        let cfg = AugmentConfig::for_crop(48);
        let mut checked = 0;
        for seed in 0..40 {
            // Markers near the centre stay inside every crop.
            let s = marked(64, (26, 30), 8);
            let a = augment(&s, &cfg, seed)?;
            assert_eq!((a.image.len(), a.mask.len()), (48 * 48, 48 * 48));
            assert!(a.image.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(a.mask.iter().all(|&m| m <= 1));
            let bright = a.image.iter().copied().fold(0.0f32, f32::max);
            let Some(cm) = centroid(a.mask.iter().map(|&m| m == 1), 48) else {
                continue;
            };
            let ci = centroid(a.image.iter().map(|&v| v > 0.5 * bright + 0.05), 48)
                .expect("marker visible in the image");
            assert!(
                (cm.0 - ci.0).abs() < 1.0 && (cm.1 - ci.1).abs() < 1.0,
                "seed {seed}: mask at {cm:?}, image at {ci:?}"
            );
            checked += 1;
        }
        assert!(checked > 30, "the marker left the crop too often");
        Ok(())
    }

    #[test]
    fn a_soft_map_moves_exactly_as_the_mask() -> Result<()> {
        let cfg = AugmentConfig::for_crop(24);
        let hard = marked(32, (10, 12), 8);
        // Soft levels: 255 on the marker, a distinct level per pixel elsewhere below 128.
        let soft_map: Vec<u8> = (0..32 * 32)
            .map(|i| {
                if hard.mask[i] == 1 {
                    255
                } else {
                    (i % 127) as u8
                }
            })
            .collect();
        let soft = Slice {
            soft: Some(soft_map.clone()),
            ..hard.clone()
        };
        for seed in 0..10 {
            let (a, b) = (augment(&hard, &cfg, seed)?, augment(&soft, &cfg, seed)?);
            // The soft map changes neither the image nor the mask.
            assert_eq!((&a.image, &a.mask), (&b.image, &b.mask));
            assert_eq!(a.soft, None);
            let moved = b.soft.unwrap();
            // Where the mask is lesion the soft map is 255; elsewhere it is below 128.
            for (&m, &v) in b.mask.iter().zip(&moved) {
                assert_eq!(m == 1, v == 255, "seed {seed}");
            }
            // The levels are moved, not recomputed: every one comes from the source map.
            assert!(moved.iter().all(|v| *v == 0 || soft_map.contains(v)));
        }
        Ok(())
    }

    #[test]
    fn same_seed_same_result_other_seed_other_result() -> Result<()> {
        let s = crate::synthetic::phantom(1, 40);
        let cfg = AugmentConfig::for_crop(32);
        assert_eq!(augment(&s, &cfg, 5)?, augment(&s, &cfg, 5)?);
        assert_ne!(augment(&s, &cfg, 5)?, augment(&s, &cfg, 6)?);
        Ok(())
    }

    #[test]
    fn intensity_augmentation_changes_only_intensities() -> Result<()> {
        let s = crate::synthetic::phantom(2, 48);
        let plain = AugmentConfig::for_crop(32);
        let with = plain.with_intensity(true);
        let mut changed = 0;
        for seed in 0..40 {
            let (a, b) = (augment(&s, &plain, seed)?, augment(&s, &with, seed)?);
            assert_eq!(a.mask, b.mask, "seed {seed}: the geometry must not change");
            assert!(b.image.iter().all(|v| (0.0..=1.0).contains(v)));
            assert_eq!(b, augment(&s, &with, seed)?);
            changed += usize::from(a.image != b.image);
        }
        // Five transforms at p = 0.15-0.25: about 60% of crops get at least one.
        assert!((12..=36).contains(&changed), "{changed} of 40 changed");
        // Blur keeps a constant image constant and flattens an edge.
        let mut flat = vec![0.4f32; 64];
        blur(&mut flat, 8, 1.0);
        assert!(flat.iter().all(|v| (v - 0.4).abs() < 1e-6));
        let mut edge: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i % 8 >= 4))).collect();
        blur(&mut edge, 8, 1.0);
        assert!(edge[3] > 0.1 && edge[4] < 0.9 && edge[0] < edge[3]);
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() {
        let s = marked(16, (2, 2), 2);
        let cfg = AugmentConfig {
            crop: 20,
            resize: 16,
            ..AugmentConfig::paper()
        };
        assert!(
            augment(&s, &cfg, 0)
                .unwrap_err()
                .to_string()
                .contains("crop")
        );
    }
}
