//! The six ratios of SPEC §5, computed from confusion counts.

use serde::{Deserialize, Serialize};

use crate::Confusion;

/// `num / den`, or 1 where `den` is 0: the crate's single convention for empty denominators.
///
/// ```
/// assert_eq!(d2a_metrics::ratio(0, 0), 1.0);
/// assert_eq!(d2a_metrics::ratio(1, 4), 0.25);
/// ```
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        1.0
    } else {
        num as f64 / den as f64
    }
}

/// Reads one metric out of [`Scores`].
pub type MetricAccessor = fn(&Scores) -> f64;

/// The six metrics of one slice (or of summed counts, or a mean of either).
///
/// Field names are the JSON keys that `d2a eval-masks --json` writes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// `2TP / (2TP + FP + FN)`.
    pub dice: f64,
    /// `TP / (TP + FP + FN)` (Jaccard index).
    pub iou: f64,
    /// `(FP + FN) / (TP + FP + TN + FN)`.
    pub pixel_error: f64,
    /// `TP / (TP + FN)` (sensitivity).
    pub recall: f64,
    /// `TP / (TP + FP)`.
    pub precision: f64,
    /// `TN / (TN + FP)`.
    pub specificity: f64,
}

impl Scores {
    /// The metric names in report order, with accessors; used by tables and tests.
    pub const FIELDS: [(&'static str, MetricAccessor); 6] = [
        ("dice", |s| s.dice),
        ("iou", |s| s.iou),
        ("pixel_error", |s| s.pixel_error),
        ("recall", |s| s.recall),
        ("precision", |s| s.precision),
        ("specificity", |s| s.specificity),
    ];

    /// The element-wise mean of `scores`, or `None` for an empty iterator.
    pub fn mean<'a>(scores: impl IntoIterator<Item = &'a Scores>) -> Option<Scores> {
        let mut n = 0usize;
        let mut sum = [0.0f64; 6];
        for s in scores {
            n += 1;
            for (acc, (_, get)) in sum.iter_mut().zip(Self::FIELDS) {
                *acc += get(s);
            }
        }
        if n == 0 {
            return None;
        }
        let [dice, iou, pixel_error, recall, precision, specificity] = sum.map(|v| v / n as f64);
        Some(Scores {
            dice,
            iou,
            pixel_error,
            recall,
            precision,
            specificity,
        })
    }
}

impl Confusion {
    /// Dice coefficient `2TP / (2TP + FP + FN)`; 1 when truth and prediction are both empty.
    pub fn dice(&self) -> f64 {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Intersection over union `TP / (TP + FP + FN)`; 1 when both are empty.
    pub fn iou(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp + self.fn_)
    }

    /// Fraction of misclassified pixels `(FP + FN) / N`; 1 for a slice of zero pixels.
    pub fn pixel_error(&self) -> f64 {
        ratio(self.fp + self.fn_, self.total())
    }

    /// Recall (sensitivity) `TP / (TP + FN)`; 1 when the truth is empty.
    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// Precision `TP / (TP + FP)`; 1 when the prediction is empty.
    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    /// Specificity `TN / (TN + FP)`; 1 when the truth covers every pixel.
    pub fn specificity(&self) -> f64 {
        ratio(self.tn, self.tn + self.fp)
    }

    /// All six metrics at once.
    pub fn scores(&self) -> Scores {
        Scores {
            dice: self.dice(),
            iou: self.iou(),
            pixel_error: self.pixel_error(),
            recall: self.recall(),
            precision: self.precision(),
            specificity: self.specificity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn counts(tp: u64, fp: u64, tn: u64, fn_: u64) -> Confusion {
        Confusion { tp, fp, tn, fn_ }
    }

    #[test]
    fn hand_computed_values() {
        // 10 pixels: truth has 4 lesion pixels, prediction 3, overlap 2.
        let s = counts(2, 1, 5, 2).scores();
        assert_eq!(s.dice, 4.0 / 7.0);
        assert_eq!(s.iou, 2.0 / 5.0);
        assert_eq!(s.pixel_error, 3.0 / 10.0);
        assert_eq!(s.recall, 2.0 / 4.0);
        assert_eq!(s.precision, 2.0 / 3.0);
        assert_eq!(s.specificity, 5.0 / 6.0);
    }

    #[test]
    fn empty_truth_and_empty_prediction_is_perfect() {
        let s = counts(0, 0, 100, 0).scores();
        assert_eq!(
            s,
            Scores {
                dice: 1.0,
                iou: 1.0,
                pixel_error: 0.0,
                recall: 1.0,
                precision: 1.0,
                specificity: 1.0
            }
        );
    }

    #[test]
    fn empty_prediction_on_lesion_slice() {
        let s = counts(0, 0, 90, 10).scores();
        assert_eq!((s.dice, s.iou, s.recall, s.precision), (0.0, 0.0, 0.0, 1.0));
        assert_eq!(s.pixel_error, 0.1);
        assert_eq!(s.specificity, 1.0);
    }

    #[test]
    fn prediction_on_empty_truth() {
        let s = counts(0, 5, 95, 0).scores();
        assert_eq!((s.dice, s.iou, s.recall, s.precision), (0.0, 0.0, 1.0, 0.0));
        assert_eq!(s.specificity, 0.95);
    }

    #[test]
    fn all_lesion_slice_has_specificity_one() {
        assert_eq!(counts(10, 0, 0, 0).specificity(), 1.0);
        assert_eq!(counts(0, 0, 0, 0).pixel_error(), 1.0);
    }

    #[test]
    fn mean_of_scores() {
        let a = counts(1, 0, 1, 0).scores();
        let b = counts(0, 0, 1, 1).scores();
        let m = Scores::mean([&a, &b]).unwrap();
        assert_eq!(m.dice, 0.5);
        assert_eq!(m.pixel_error, 0.25);
        assert!(Scores::mean([]).is_none());
    }

    fn any_counts() -> impl Strategy<Value = Confusion> {
        (0u64..50, 0u64..50, 0u64..50, 0u64..50)
            .prop_map(|(tp, fp, tn, fn_)| counts(tp, fp, tn, fn_))
    }

    proptest! {
        #[test]
        fn every_metric_is_in_unit_interval(c in any_counts()) {
            let s = c.scores();
            for (name, get) in Scores::FIELDS {
                let v = get(&s);
                prop_assert!((0.0..=1.0).contains(&v), "{name} = {v} for {c:?}");
            }
        }

        #[test]
        fn dice_is_symmetric_in_prediction_and_truth(c in any_counts()) {
            // Swapping the roles of prediction and truth swaps FP and FN.
            let swapped = counts(c.tp, c.fn_, c.tn, c.fp);
            prop_assert_eq!(c.dice(), swapped.dice());
            prop_assert_eq!(c.iou(), swapped.iou());
            prop_assert_eq!(c.precision(), swapped.recall());
        }

        #[test]
        fn dice_and_iou_are_linked(c in any_counts()) {
            let iou = c.iou();
            prop_assert!((c.dice() - 2.0 * iou / (1.0 + iou)).abs() < 1e-12);
        }

        #[test]
        fn dice_is_at_least_iou(c in any_counts()) {
            prop_assert!(c.dice() >= c.iou());
        }
    }
}
