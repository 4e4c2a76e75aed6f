//! Synthetic CT phantoms: CT-like slices with exact lesion masks, generated from a seed.
//!
//! Intensities imitate lung-windowed CT (SPEC §3, [-1250, 250] HU to [0, 1]): air outside the
//! body about 0.17 (−1000 HU), soft tissue about 0.86 (+40 HU), lung about 0.27 (−850 HU),
//! vessels bright dots in the lungs, ground-glass-like lesions about 0.45–0.6 (−600 to −350
//! HU) and consolidation-like lesions about 0.75–0.85. Each phantom has one to four lesions of
//! varied size and contrast inside the lungs. They are the embedded default of `d2a train` and
//! the data of most tests.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::slice::{Provenance, Slice};

/// Slices per synthetic "volume", so that splits by volume work on phantoms as on real data.
pub const SLICES_PER_VOLUME: usize = 8;

/// An ellipse centred at `(cy, cx)` with semi-axes `(ry, rx)` rotated by `theta` radians.
#[derive(Debug, Clone, Copy)]
struct Ellipse {
    cy: f32,
    cx: f32,
    ry: f32,
    rx: f32,
    theta: f32,
}

impl Ellipse {
    fn contains(&self, y: f32, x: f32) -> bool {
        let (s, c) = self.theta.sin_cos();
        let (dy, dx) = (y - self.cy, x - self.cx);
        let u = (dx * c + dy * s) / self.rx;
        let v = (-dx * s + dy * c) / self.ry;
        u * u + v * v <= 1.0
    }
}

/// The shapes of one phantom: body, two lungs, vessels, and lesions with their intensity.
struct Anatomy {
    body: Ellipse,
    lungs: [Ellipse; 2],
    vessels: Vec<Ellipse>,
    /// (shape, intensity): ground-glass-like or consolidation-like.
    lesions: Vec<(Ellipse, f32)>,
}

impl Anatomy {
    /// Random shapes for an `n x n` slice.
    fn draw(n: f32, rng: &mut StdRng) -> Self {
        let mid = n / 2.0;
        let body = Ellipse {
            cy: mid,
            cx: mid,
            ry: n * rng.random_range(0.30..0.36),
            rx: n * rng.random_range(0.40..0.46),
            theta: 0.0,
        };
        let lung = |side: f32, rng: &mut StdRng| Ellipse {
            cy: mid - n * 0.02,
            cx: mid + side * n * rng.random_range(0.17..0.21),
            ry: n * rng.random_range(0.20..0.25),
            rx: n * rng.random_range(0.12..0.15),
            theta: side * rng.random_range(0.0..0.25),
        };
        let lungs = [lung(-1.0, rng), lung(1.0, rng)];
        let vessels: Vec<Ellipse> = (0..rng.random_range(10..30))
            .map(|_| {
                let l = lungs[rng.random_range(0..2)];
                let r = n * rng.random_range(0.004..0.012);
                Ellipse {
                    cy: l.cy + l.ry * rng.random_range(-0.8..0.8),
                    cx: l.cx + l.rx * rng.random_range(-0.8..0.8),
                    ry: r,
                    rx: r,
                    theta: 0.0,
                }
            })
            .collect();
        let lesions: Vec<(Ellipse, f32)> = (0..rng.random_range(1..=4))
            .map(|_| {
                let l = lungs[rng.random_range(0..2)];
                let ry = n * rng.random_range(0.02..0.09);
                let shape = Ellipse {
                    cy: l.cy + l.ry * rng.random_range(-0.6..0.6),
                    cx: l.cx + l.rx * rng.random_range(-0.6..0.6),
                    ry,
                    rx: ry * rng.random_range(0.5..1.5),
                    theta: rng.random_range(0.0..std::f32::consts::PI),
                };
                let value = if rng.random_bool(0.6) {
                    rng.random_range(0.45..0.6)
                } else {
                    rng.random_range(0.75..0.85)
                };
                (shape, value)
            })
            .collect();
        Self {
            body,
            lungs,
            vessels,
            lesions,
        }
    }

    /// The `size x size` image (with noise from `rng`) and lesion mask.
    fn render(&self, size: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u8>) {
        let mut image = vec![0f32; size * size];
        let mut mask = vec![0u8; size * size];
        for y in 0..size {
            for x in 0..size {
                let (fy, fx) = (y as f32 + 0.5, x as f32 + 0.5);
                let mut v = 0.17;
                if self.body.contains(fy, fx) {
                    v = 0.86;
                    if self.lungs.iter().any(|l| l.contains(fy, fx)) {
                        v = 0.27;
                        if self.vessels.iter().any(|e| e.contains(fy, fx)) {
                            v = 0.78;
                        }
                        for (shape, value) in &self.lesions {
                            if shape.contains(fy, fx) {
                                v = f32::max(v, *value);
                                mask[y * size + x] = 1;
                            }
                        }
                    }
                }
                let noise: f32 = rng.random_range(-0.03..0.03);
                image[y * size + x] = (v + noise).clamp(0.0, 1.0);
            }
        }
        (image, mask)
    }
}

/// One `size x size` phantom from `seed`.
pub fn phantom(seed: u64, size: usize) -> Slice {
    let mut rng = StdRng::seed_from_u64(seed);
    let anatomy = Anatomy::draw(size as f32, &mut rng);
    let (image, mask) = anatomy.render(size, &mut rng);
    Slice {
        height: size,
        width: size,
        image,
        mask,
        soft: None,
        provenance: Provenance {
            file: PathBuf::from("synthetic"),
            volume: format!("phantom-{}", seed / SLICES_PER_VOLUME as u64),
            slice_idx: (seed % SLICES_PER_VOLUME as u64) as usize,
        },
    }
}

/// `n` phantoms, seeds `first_seed..first_seed + n`, that contain lesions.
pub fn phantoms(n: usize, size: usize, first_seed: u64) -> Vec<Slice> {
    phantoms_with(n, size, first_seed, &|s| s)
}

/// [`phantoms`], each passed through `finish` as soon as it is made.
pub fn phantoms_with<T: Send>(
    n: usize,
    size: usize,
    first_seed: u64,
    finish: crate::readers::Finish<T>,
) -> Vec<T> {
    use rayon::prelude::*;
    (first_seed..)
        .take(n)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|s| finish(phantom(s, size)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phantoms_are_reproducible_ct_like_and_have_lesions_in_the_lungs() {
        let a = phantom(3, 96);
        assert_eq!(a, phantom(3, 96));
        assert_ne!(a.image, phantom(4, 96).image);
        let set = phantoms(16, 64, 0);
        assert_eq!(set.len(), 16);
        for s in &set {
            assert!(s.has_lesion());
            assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
            // Lesion pixels are brighter than the lung around them on average.
            let (mut lesion, mut n_lesion) = (0.0, 0);
            for (v, m) in s.image.iter().zip(&s.mask) {
                if *m == 1 {
                    lesion += v;
                    n_lesion += 1;
                }
            }
            assert!(lesion / n_lesion as f32 > 0.35);
        }
        let volumes: std::collections::BTreeSet<_> =
            set.iter().map(|s| s.provenance.volume.clone()).collect();
        assert_eq!(volumes.len(), 2);
    }
}
