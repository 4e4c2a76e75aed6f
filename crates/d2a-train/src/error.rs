//! The error type of the training crate: every variant names the file, folder or setting at
//! fault. Errors of the crates below are carried whole (`source()` is theirs), never flattened.

use std::path::PathBuf;

/// What can go wrong while training, scoring or managing a run folder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done: "read", "remove", "create the run folder".
        op: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A JSON file (or JSON metadata) that cannot be parsed or written.
    #[error("corrupt {what} in {path}")]
    Json {
        /// What the JSON holds ("config.json", "training state").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// A run folder that cannot be used as asked (already holds a run, cannot be resumed).
    #[error("{dir}: {problem}")]
    RunFolder {
        /// The folder.
        dir: PathBuf,
        /// What is wrong, and the way out.
        problem: String,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// Data that cannot be trained or scored on (too few volumes, an unreadable folder).
    #[error("{what} {path}")]
    Data {
        /// What the data was for ("reading the training data").
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// What the data crate said.
        source: Box<d2a_data::Error>,
    },
    /// The loss went NaN or infinite: training stops before the update that would spread it.
    #[error(
        "loss is {value} at epoch {epoch}, batch {batch}: training stopped; the last good \
         checkpoint is kept"
    )]
    NonFiniteLoss {
        /// The loss.
        value: f64,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch.
        batch: usize,
    },
    /// A checkpoint that cannot be resumed from.
    #[error("{path}: {problem}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An error of the model crate (building, loading, saving).
    #[error(transparent)]
    Model(#[from] d2a_model::Error),
    /// An error of the data crate.
    #[error(transparent)]
    DataCrate(Box<d2a_data::Error>),
    /// An error of the metrics crate.
    #[error(transparent)]
    Metrics(#[from] d2a_metrics::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The result type of the training crate.
pub type Result<T> = std::result::Result<T, Error>;

impl From<d2a_data::Error> for Error {
    fn from(e: d2a_data::Error) -> Self {
        Self::DataCrate(Box::new(e))
    }
}
