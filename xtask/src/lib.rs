//! `cargo xtask`: developer commands for d2a.
//!
//! - `fetch-data` ([`fetch`]): the paper's three datasets into `data/raw/` with checksums and
//!   resumable downloads ([`download`], [`datasets`]), prepared into `data/prepared/{train,test}`.
//! - `convert-weights` ([`convert`]): ImageNet ResNeXt-50 / ResNet-101 weights to safetensors.
//! - `align-labels` ([`align`]): the radiologists' masks of `ma20-radiologist-256` carried onto
//!   the Inf-Net images of `covid20-infnet-pseudo`, as a dataset folder.

pub mod align;
pub mod convert;
pub mod datasets;
pub mod download;
pub mod fetch;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(name = "cargo xtask", about = "Developer commands for d2a")]
pub struct Cli {
    /// The task.
    #[command(subcommand)]
    pub task: Task,
}

/// The tasks.
#[derive(Debug, clap::Subcommand)]
pub enum Task {
    /// Download the paper's datasets into data/raw and prepare data/prepared/{train,test}.
    FetchData(fetch::Args),
    /// Convert ImageNet ResNeXt-50 / ResNet-101 weights to weights/<name>.safetensors.
    ConvertWeights(convert::Args),
    /// Carry ma20-radiologist-256's radiologist masks onto covid20-infnet-pseudo's images.
    AlignLabels(align::Args),
}

impl Cli {
    /// Runs the task.
    pub fn run(self) -> anyhow::Result<()> {
        match self.task {
            Task::FetchData(args) => args.run(),
            Task::ConvertWeights(args) => args.run(),
            Task::AlignLabels(args) => args.run(),
        }
    }
}
