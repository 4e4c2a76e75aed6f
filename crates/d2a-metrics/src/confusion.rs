//! Confusion counts of the lesion class: from boolean masks, thresholded maps and tensors.

use std::iter::Sum;
use std::ops::{Add, AddAssign};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Pixel counts of one slice (or a sum of slices) for the lesion class.
///
/// Serialised with the keys `tp`, `fp`, `tn`, `fn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Confusion {
    /// Lesion in both prediction and truth.
    pub tp: u64,
    /// Lesion in the prediction only.
    pub fp: u64,
    /// Background in both.
    pub tn: u64,
    /// Lesion in the truth only (`fn` is a keyword, hence the underscore).
    #[serde(rename = "fn")]
    pub fn_: u64,
}

impl Confusion {
    /// Counts from two boolean masks of the same length (`true` is lesion).
    pub fn from_masks(pred: &[bool], truth: &[bool]) -> Result<Self> {
        check_len(pred.len(), truth.len())?;
        Ok(pred
            .iter()
            .zip(truth)
            .map(|(&p, &t)| Self::of_pixel(p, t))
            .sum())
    }

    /// Counts from a score map (probabilities, logits or 8-bit values) and a boolean truth.
    ///
    /// A pixel is predicted lesion where `score >= threshold`: 0.5 for probabilities, 0 for
    /// logits, 128 for 8-bit maps (SPEC §5). A NaN score is an error, never background.
    pub fn from_scores(pred: &[f32], threshold: f32, truth: &[bool]) -> Result<Self> {
        check_threshold(threshold)?;
        check_len(pred.len(), truth.len())?;
        check_no_nan("prediction", pred)?;
        Ok(pred
            .iter()
            .zip(truth)
            .map(|(&p, &t)| Self::of_pixel(p >= threshold, t))
            .sum())
    }

    /// The counts of a single pixel.
    pub fn of_pixel(pred: bool, truth: bool) -> Self {
        let one = |b: bool| u64::from(b);
        Self {
            tp: one(pred && truth),
            fp: one(pred && !truth),
            tn: one(!pred && !truth),
            fn_: one(!pred && truth),
        }
    }

    /// Number of pixels counted.
    pub fn total(&self) -> u64 {
        self.tp + self.fp + self.tn + self.fn_
    }
}

impl Add for Confusion {
    type Output = Self;

    fn add(self, rhs: Self) -> Self {
        Self {
            tp: self.tp + rhs.tp,
            fp: self.fp + rhs.fp,
            tn: self.tn + rhs.tn,
            fn_: self.fn_ + rhs.fn_,
        }
    }
}

impl AddAssign for Confusion {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for Confusion {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

/// One [`Confusion`] per slice of a batch.
///
/// # Shapes
/// - `pred`: `[B, 1, H, W]` scores; lesion where `pred >= threshold` (0.5 for probabilities,
///   0 for logits).
/// - `truth`: `[B, 1, H, W]` labels; lesion where `truth >= 0.5` (0/1 masks).
///
/// Both may live on any device and have any float dtype; NaN in either is an error.
pub fn confusions_from_tensors(
    pred: &Tensor,
    truth: &Tensor,
    threshold: f32,
) -> Result<Vec<Confusion>> {
    check_threshold(threshold)?;
    let shape = check_slice_batch("prediction", pred)?;
    let truth_shape = check_slice_batch("truth", truth)?;
    if shape != truth_shape {
        return Err(Error::ShapeMismatch {
            pred: shape.to_vec(),
            truth: truth_shape.to_vec(),
        });
    }
    let pred = flat_f32(pred)?;
    let truth = flat_f32(truth)?;
    check_no_nan("prediction", &pred)?;
    check_no_nan("truth", &truth)?;
    let slice_len = shape[2] * shape[3];
    if slice_len == 0 {
        return Ok(vec![Confusion::default(); shape[0]]);
    }
    pred.chunks(slice_len)
        .zip(truth.chunks(slice_len))
        .map(|(p, t)| {
            let t: Vec<bool> = t.iter().map(|&v| v >= 0.5).collect();
            Confusion::from_scores(p, threshold, &t)
        })
        .collect()
}

fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn check_slice_batch(what: &'static str, t: &Tensor) -> Result<[usize; 4]> {
    match *t.dims() {
        [b, 1, h, w] => Ok([b, 1, h, w]),
        _ => Err(Error::NotSliceBatch {
            what,
            shape: t.dims().to_vec(),
        }),
    }
}

fn check_len(pred: usize, truth: usize) -> Result<()> {
    if pred != truth {
        return Err(Error::ShapeMismatch {
            pred: vec![pred],
            truth: vec![truth],
        });
    }
    Ok(())
}

fn check_threshold(threshold: f32) -> Result<()> {
    if !threshold.is_finite() {
        return Err(Error::BadThreshold(f64::from(threshold)));
    }
    Ok(())
}

fn check_no_nan(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| v.is_nan()) {
        Some(index) => Err(Error::NaN { what, index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn counts_from_masks_by_hand() {
        let pred = [true, true, false, false, true];
        let truth = [true, false, false, true, true];
        let c = Confusion::from_masks(&pred, &truth).unwrap();
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        assert_eq!(c.total(), 5);
    }

    #[test]
    fn threshold_is_inclusive() {
        let pred = [0.5, 0.499_999, 1.0, 0.0];
        let truth = [true, true, false, false];
        let c = Confusion::from_scores(&pred, 0.5, &truth).unwrap();
        assert_eq!(
            c,
            Confusion {
                tp: 1,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        // 8-bit maps: 128 is lesion, 127 is not.
        let c = Confusion::from_scores(&[128.0, 127.0], 128.0, &[true, true]).unwrap();
        assert_eq!((c.tp, c.fn_), (1, 1));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(
            Confusion::from_masks(&[true], &[true, false]),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            Confusion::from_scores(&[0.1, f32::NAN], 0.5, &[true, false]),
            Err(Error::NaN { index: 1, .. })
        ));
        assert!(matches!(
            Confusion::from_scores(&[0.1], f32::NAN, &[true]),
            Err(Error::BadThreshold(_))
        ));
    }

    #[test]
    fn tensors_give_one_count_per_slice() -> Result<()> {
        let dev = Device::Cpu;
        // Two 2x2 slices.
        let pred = Tensor::new(&[0.9f32, 0.1, 0.6, 0.2, 0.0, 0.0, 0.0, 0.7], &dev)?
            .reshape((2, 1, 2, 2))?;
        let truth =
            Tensor::new(&[1f32, 0., 0., 1., 0., 0., 0., 0.], &dev)?.reshape((2, 1, 2, 2))?;
        let c = confusions_from_tensors(&pred, &truth, 0.5)?;
        assert_eq!(
            c,
            vec![
                Confusion {
                    tp: 1,
                    fp: 1,
                    tn: 1,
                    fn_: 1
                },
                Confusion {
                    tp: 0,
                    fp: 1,
                    tn: 3,
                    fn_: 0
                }
            ]
        );
        // Logits with threshold 0 give the same as their sigmoid with threshold 0.5.
        let logits = Tensor::new(&[2.2f32, -2.2, 0.4, -1.4, -5.0, 0.0, -0.1, 0.8], &dev)?
            .reshape((2, 1, 2, 2))?;
        let probs = (logits.neg()?.exp()? + 1.0)?.recip()?;
        let from_logits = confusions_from_tensors(&logits, &truth, 0.0)?;
        assert_eq!(from_logits, confusions_from_tensors(&probs, &truth, 0.5)?);
        assert_eq!(
            from_logits[1],
            Confusion {
                tp: 0,
                fp: 2,
                tn: 2,
                fn_: 0
            }
        );
        Ok(())
    }

    #[test]
    fn tensor_shape_errors() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 1, 4, 4), DType::F32, &dev)?;
        let b = Tensor::zeros((2, 1, 4, 5), DType::F32, &dev)?;
        let c = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev)?;
        assert!(matches!(
            confusions_from_tensors(&a, &b, 0.5),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            confusions_from_tensors(&c, &c, 0.5),
            Err(Error::NotSliceBatch { .. })
        ));
        let nan = Tensor::new(&[f32::NAN], &dev)?.reshape((1, 1, 1, 1))?;
        let one = Tensor::ones((1, 1, 1, 1), DType::F32, &dev)?;
        assert!(matches!(
            confusions_from_tensors(&nan, &one, 0.5),
            Err(Error::NaN {
                what: "prediction",
                ..
            })
        ));
        assert!(matches!(
            confusions_from_tensors(&one, &nan, 0.5),
            Err(Error::NaN { what: "truth", .. })
        ));
        Ok(())
    }

    proptest! {
        #[test]
        fn counts_add_up(pairs in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
            let (pred, truth): (Vec<bool>, Vec<bool>) = pairs.into_iter().unzip();
            let c = Confusion::from_masks(&pred, &truth).unwrap();
            prop_assert_eq!(c.total() as usize, pred.len());
            prop_assert_eq!((c.tp + c.fp) as usize, pred.iter().filter(|&&p| p).count());
            prop_assert_eq!((c.tp + c.fn_) as usize, truth.iter().filter(|&&t| t).count());
            let swapped = Confusion::from_masks(&truth, &pred).unwrap();
            prop_assert_eq!(c.dice(), swapped.dice());
        }
    }
}
