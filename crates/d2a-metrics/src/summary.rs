//! Aggregation over slices: the per-slice mean and the global value, always both.

use serde::{Deserialize, Serialize};

use crate::{Confusion, Error, Result, Scores};

/// Metrics of a set of slices, aggregated both ways.
///
/// The per-slice mean weights every slice equally (the headline figure in the paper and in
/// Inf-Net); the global value sums the counts first, so large lesions weigh more. They differ,
/// often by several points of Dice, which is why both are always reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of slices aggregated.
    pub n_slices: usize,
    /// Mean over slices of each slice's metrics.
    pub per_slice_mean: Scores,
    /// Metrics of the counts summed over all slices.
    pub global: Scores,
    /// The summed counts.
    pub total: Confusion,
}

impl Summary {
    /// Aggregates the counts of `slices`; an empty list is an error.
    pub fn from_confusions(slices: &[Confusion]) -> Result<Self> {
        let per_slice: Vec<Scores> = slices.iter().map(Confusion::scores).collect();
        let per_slice_mean = Scores::mean(&per_slice).ok_or(Error::NoSlices)?;
        let total: Confusion = slices.iter().copied().sum();
        Ok(Self {
            n_slices: slices.len(),
            per_slice_mean,
            global: total.scores(),
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_global_differ_as_computed_by_hand() {
        // A small lesion found well and a large one found half.
        let small = Confusion {
            tp: 9,
            fp: 1,
            tn: 90,
            fn_: 0,
        };
        let large = Confusion {
            tp: 50,
            fp: 0,
            tn: 0,
            fn_: 50,
        };
        let s = Summary::from_confusions(&[small, large]).unwrap();
        assert_eq!(s.n_slices, 2);
        let dice_small = 18.0 / 19.0;
        let dice_large = 100.0 / 150.0;
        assert!((s.per_slice_mean.dice - (dice_small + dice_large) / 2.0).abs() < 1e-15);
        assert_eq!(s.global.dice, 118.0 / (118.0 + 1.0 + 50.0));
        assert_eq!(
            s.total,
            Confusion {
                tp: 59,
                fp: 1,
                tn: 90,
                fn_: 50
            }
        );
        assert_eq!(s.global.pixel_error, 51.0 / 200.0);
    }

    #[test]
    fn no_slices_is_an_error() {
        assert!(matches!(
            Summary::from_confusions(&[]),
            Err(Error::NoSlices)
        ));
    }
}
