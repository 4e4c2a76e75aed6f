//! The error type of the metrics crate.

/// What can go wrong while counting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Prediction and truth do not have the same number of pixels or the same shape.
    #[error("prediction has shape {pred:?} but truth has shape {truth:?}")]
    ShapeMismatch {
        /// Shape of the prediction.
        pred: Vec<usize>,
        /// Shape of the truth.
        truth: Vec<usize>,
    },
    /// A tensor is not shaped `[B, 1, H, W]`.
    #[error("{what} must be shaped [B, 1, H, W], got {shape:?}")]
    NotSliceBatch {
        /// Which argument.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A prediction or truth value is NaN, so it cannot be classified.
    #[error("{what} holds NaN at pixel {index}")]
    NaN {
        /// Which argument.
        what: &'static str,
        /// Flat index of the first NaN.
        index: usize,
    },
    /// The threshold is not a finite number.
    #[error("threshold must be finite, got {0}")]
    BadThreshold(f64),
    /// Aggregation over zero slices was asked for.
    #[error("cannot summarise zero slices")]
    NoSlices,
    /// An error from candle while reading a tensor.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of the metrics crate.
pub type Result<T> = std::result::Result<T, Error>;
