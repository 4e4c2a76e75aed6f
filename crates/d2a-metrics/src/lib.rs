//! Segmentation metrics of the D2A U-Net paper (SPEC §5).
//!
//! Everything starts from [`Confusion`]: the TP, FP, TN and FN pixel counts of the lesion class on
//! one slice. They come from boolean masks ([`Confusion::from_masks`]), from probability or 8-bit
//! maps with a threshold ([`Confusion::from_scores`]) or from candle tensors shaped `[B, 1, H, W]`
//! ([`confusions_from_tensors`], one count per slice). [`Scores`] holds the six ratios derived from
//! one set of counts and [`Summary`] aggregates slices both ways the paper's field reports them:
//! the mean over slices (the headline) and the global value over summed counts.
//!
//! # The convention for empty denominators
//!
//! Every ratio whose denominator is 0 is 1 (SPEC §5, a decision), in every function of this crate.
//! So a slice with empty truth and empty prediction has Dice, IoU, recall and precision 1, and an
//! empty prediction on a slice with lesions has recall 0, Dice 0, IoU 0 and precision 1.
//! [`ratio`] is the one place that rule is written.

#![warn(missing_docs)]

mod confusion;
mod error;
mod report;
mod scores;
mod summary;

pub use confusion::{Confusion, confusions_from_tensors};
pub use error::{Error, Result};
pub use report::{Report, SliceReport};
pub use scores::{MetricAccessor, Scores, ratio};
pub use summary::Summary;
