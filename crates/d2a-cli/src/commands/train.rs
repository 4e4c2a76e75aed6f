//! `d2a train`: not built yet; the training issue brings the loop, the data and the model.

/// Arguments of `d2a train`.
#[derive(Debug, clap::Args)]
pub struct Args {}

impl Args {
    /// Says what exists today instead of training.
    pub fn run(self) -> anyhow::Result<()> {
        println!(
            "d2a train: not built yet. Training lands with the d2a-model, d2a-data and training issues; \
             today d2a can score masks: d2a eval-masks --pred DIR --truth DIR"
        );
        Ok(())
    }
}
