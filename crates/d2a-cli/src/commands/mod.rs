//! One module per `d2a` subcommand, each an `Args` struct with a `run` method.

pub mod bench;
pub mod eval;
pub mod eval_masks;
pub mod info;
pub mod predict;
pub mod prepare;
pub mod train;

/// The model arguments `d2a eval` and `d2a predict` share.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// A checkpoint written by `d2a train` (best.safetensors or last.safetensors).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: std::path::PathBuf,
    /// Model preset, if the checkpoint does not record it.
    #[arg(long)]
    pub model: Option<String>,
    /// Model input side [default: the one recorded in the checkpoint].
    #[arg(long)]
    pub size: Option<usize>,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

impl CheckpointArgs {
    /// Builds the checkpoint's model and loads its weights.
    pub fn load(
        &self,
        device: &candle_core::Device,
    ) -> anyhow::Result<d2a_train::infer::LoadedModel> {
        use anyhow::Context as _;
        d2a_train::infer::load_for_inference(
            &self.checkpoint,
            self.model.as_deref(),
            self.size,
            device,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("loading {}", self.checkpoint.display()))
    }
}
