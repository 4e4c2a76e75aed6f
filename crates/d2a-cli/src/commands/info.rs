//! `d2a info`: a model's parameter and multiply-add counts at an input size, from shapes alone;
//! `--all` for the table of every model (`docs/models.md` is `d2a info --all --markdown`).

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use d2a_model::{Model, ModelConfig};
use serde::Serialize;

/// Arguments of `d2a info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model name (see `--all`).
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub model: Option<String>,
    /// Every model of the paper's Table 2 (and ours), one row each.
    #[arg(long)]
    pub all: bool,
    /// Side of the square model input `[1, 1, S, S]` the counts are for.
    #[arg(long, default_value_t = 512, value_parser = super::side)]
    pub size: usize,
    /// Print JSON: {"model", "reference", "params", "macs", "input"} (one per line with --all).
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// With --all: print the table as Markdown (the body of docs/models.md).
    #[arg(long, requires = "all")]
    pub markdown: bool,
    /// Also list every layer's parameters and MACs.
    #[arg(long, conflicts_with = "all")]
    pub layers: bool,
}

/// What `d2a info --json` prints.
#[derive(Debug, Serialize)]
pub struct Info {
    /// The model name.
    pub model: String,
    /// Its name in the paper.
    pub reference: String,
    /// Trainable parameters.
    pub params: u64,
    /// Multiply-adds of convolutions and linear layers for one slice.
    pub macs: u64,
    /// The input shape counted.
    pub input: [usize; 4],
}

/// The counts of model `name` for one `size x size` slice, and the built model.
pub fn info(name: &str, size: usize) -> Result<(Info, Model)> {
    let cfg = ModelConfig::parse(name)?;
    cfg.check_side("--size", size)?;
    // Zero weights are enough to walk the layers; nothing is run.
    let model = Model::new(&cfg, VarBuilder::zeros(DType::F32, &Device::Cpu))
        .with_context(|| format!("building {name}"))?;
    let cost = model.cost(size, size);
    let info = Info {
        model: name.to_string(),
        reference: cfg.reference().to_string(),
        params: cost.params(),
        macs: cost.macs(),
        input: [1, 1, size, size],
    };
    Ok((info, model))
}

/// The Markdown table of every model at `size`: what `docs/models.md` holds.
pub fn markdown_table(size: usize) -> Result<String> {
    let mut out = format!(
        "| model | paper's name | parameters | GMACs at 1x1x{size}x{size} | GFLOPs |\n|---|---|---:|---:|---:|\n"
    );
    for name in ModelConfig::NAMES {
        let (i, _) = info(name, size)?;
        out += &format!(
            "| `{}` | {} | {} | {:.1} | {:.1} |\n",
            i.model,
            i.reference,
            thousands(i.params),
            i.macs as f64 / 1e9,
            2.0 * i.macs as f64 / 1e9
        );
    }
    Ok(out)
}

/// `31383681` -> `31,383,681`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Args {
    /// Prints the counts.
    pub fn run(self) -> Result<()> {
        if self.all {
            if self.markdown {
                print!("{}", markdown_table(self.size)?);
                return Ok(());
            }
            for name in ModelConfig::NAMES {
                self.print(&info(name, self.size)?.0)?;
            }
            return Ok(());
        }
        let name = self.model.as_deref().unwrap_or_default();
        let (info, model) = info(name, self.size)?;
        self.print(&info)?;
        if self.layers {
            for layer in &model.cost(self.size, self.size).layers {
                println!("{:<50} {:>12} {:>16}", layer.name, layer.params, layer.macs);
            }
        }
        Ok(())
    }

    fn print(&self, info: &Info) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(info)?);
        } else {
            println!(
                "{:<22} {:>12} parameters, {:>6.1} GMACs ({:.1} GFLOPs) at 1x1x{}x{}  [{}]",
                info.model,
                thousands(info.params),
                info.macs as f64 / 1e9,
                2.0 * info.macs as f64 / 1e9,
                self.size,
                self.size,
                info.reference
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(31_383_681), "31,383,681");
    }

    /// `docs/models.md` holds what `d2a info --all --markdown` prints today.
    #[test]
    fn docs_models_md_is_current() -> Result<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/models.md");
        let text = std::fs::read_to_string(&path)?;
        let (begin, end) = (
            "<!-- BEGIN d2a info --all --markdown -->\n",
            "<!-- END d2a info --all --markdown -->",
        );
        let start = text.find(begin).context("no BEGIN marker")? + begin.len();
        let stop = text.find(end).context("no END marker")?;
        assert_eq!(
            &text[start..stop],
            markdown_table(512)?,
            "{} is out of date: paste `cargo run -p d2a-cli -- info --all --markdown` between its markers",
            path.display()
        );
        Ok(())
    }
}
