//! The error type of the model crate.

use std::path::PathBuf;

/// What can go wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A checkpoint file could not be read.
    #[error("cannot read checkpoint {path}")]
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
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done: "read", "write", "create", "rename".
        op: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A checkpoint's metadata value is missing or unusable.
    #[error("checkpoint {path}: {key} {problem}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key ([`crate::checkpoint::format`]).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A model name that [`crate::ModelConfig::by_name`] does not know.
    #[error(
        "unknown model {0:?}; known: {names} (baselines also with -tiny, D2A U-Nets with \
         ablation switches; see `d2a info --all`)",
        names = crate::ModelConfig::NAMES.join(", ")
    )]
    UnknownModel(String),
    /// An input side the model cannot take.
    #[error("{what} {side} must be a positive multiple of {multiple} for {model}")]
    BadSide {
        /// Which side ("--size", "model input side", "input height").
        what: &'static str,
        /// The side given.
        side: usize,
        /// The model's size multiple.
        multiple: usize,
        /// The model's name in the paper.
        model: &'static str,
    },
    /// A device that this build cannot open, or that did not open.
    #[error("cannot run on {spec}: {reason}")]
    Device {
        /// The device asked for (`cuda:0`).
        spec: String,
        /// Why not.
        reason: String,
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
