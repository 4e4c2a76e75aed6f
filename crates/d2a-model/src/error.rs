//! The error type of the model crate.

use std::path::PathBuf;

/// What can go wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint file could not be read.
    #[error("cannot read checkpoint {path}: {source}")]
    ReadCheckpoint {
        /// The file.
        path: PathBuf,
        /// What candle said.
        source: candle_core::Error,
    },
    /// A checkpoint does not fit the model: keys missing or of the wrong shape.
    #[error("checkpoint {path} does not fit the model: {report}")]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// What was missing, unexpected or mis-shaped.
        report: Box<crate::checkpoint::LoadReport>,
    },
    /// A model configuration or input that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of the model crate.
pub type Result<T> = std::result::Result<T, Error>;
