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
    /// Model name, for a checkpoint that does not record it.
    #[arg(long)]
    pub model: Option<String>,
    /// Side of the square model input every slice is resized to (and its mask resized back
    /// from) [default: the one recorded in the checkpoint].
    #[arg(long, value_parser = side)]
    pub size: Option<usize>,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch: u16,
    /// Test-time augmentation: average the logits of each slice and of its left-right mirror
    /// (two forward passes).
    #[arg(long)]
    pub tta: bool,
    /// Lesion probability threshold, strictly between 0 and 1 [default: the one chosen on
    /// validation and recorded in the checkpoint, else 0.5].
    #[arg(long, value_parser = threshold)]
    pub threshold: Option<f64>,
    /// Where the model runs: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: d2a_model::DeviceSpec,
}

fn threshold(text: &str) -> Result<f64, String> {
    d2a_model::checkpoint::format::parse_threshold(text)
}

/// A number strictly between 0 and 1 (a loss weight).
pub fn unit_interval(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| d2a_model::checkpoint::format::is_threshold(*v))
        .ok_or_else(|| format!("{text:?} is not a number strictly between 0 and 1"))
}

impl CheckpointArgs {
    /// Builds the checkpoint's model and loads its weights, as `d2a predict` and `d2a eval`
    /// run it.
    pub fn load(&self, device: &candle_core::Device) -> anyhow::Result<d2a_model::Segmenter> {
        use anyhow::Context as _;
        let segmenter =
            d2a_model::Segmenter::load(&self.checkpoint, self.model.as_deref(), self.size, device)
                .with_context(|| format!("loading {}", self.checkpoint.display()))?;
        let tta = if self.tta {
            d2a_model::Tta::Flip
        } else {
            d2a_model::Tta::None
        };
        let segmenter = segmenter.with_batch(self.batch.into()).with_tta(tta);
        Ok(match self.threshold {
            Some(p) => segmenter.with_threshold(p)?,
            None => segmenter,
        })
    }
}

/// A progress bar of `len` steps on a terminal (nothing off one, or when `quiet`).
pub fn progress(len: usize, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} ({{elapsed}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

/// Parses a count that must be at least 1 (`--batch`, `--runs`, `--epochs`).
pub fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// The largest image side any subcommand accepts.
pub const MAX_SIDE: usize = d2a_model::checkpoint::format::MAX_INPUT_SIDE;

/// Parses an image side: at least 1 and at most [`MAX_SIDE`].
pub fn side(text: &str) -> Result<usize, String> {
    let n = positive(text)?;
    if n > MAX_SIDE {
        return Err(format!("must be at most {MAX_SIDE}"));
    }
    Ok(n)
}

/// `path` made absolute with links resolved, for a path that may not exist yet: its deepest
/// existing ancestor is canonicalised and the rest appended.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolved(if parent.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            parent
        })
        .join(name),
        _ => path.to_path_buf(),
    }
}

/// Refuses an output (`flag` names it in the message) that is one of `inputs` or lies inside
/// an input folder, compared with links resolved: `--force` may replace an earlier output,
/// never an input.
pub fn check_output(
    flag: &str,
    output: &std::path::Path,
    inputs: &[&std::path::Path],
) -> anyhow::Result<()> {
    let out = resolved(output);
    for input in inputs {
        let input_resolved = resolved(input);
        if out == input_resolved || (input.is_dir() && out.starts_with(&input_resolved)) {
            anyhow::bail!(
                "{flag} {} would write into the input {}; choose another path",
                output.display(),
                input.display()
            );
        }
    }
    Ok(())
}
