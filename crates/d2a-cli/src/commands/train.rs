//! `d2a train`: today the embedded default, `d2a-vgg-tiny` on synthetic CT phantoms on the CPU,
//! writing a run folder. Training on real data (`--train`, `--test`, `--model`) lands with the
//! training issue.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use candle_nn::VarMap;
use d2a_data::augment::AugmentConfig;
use d2a_data::loader::{Loader, LoaderConfig};
use d2a_model::checkpoint::{save, trainable_vars};
use d2a_model::init::seeded_var_builder;
use d2a_model::{Config, D2AUNet};
use d2a_train::fit::{FitConfig, fit, split_by_volume};
use d2a_train::optim::AdamConfig;
use serde_json::json;

/// Arguments of `d2a train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Epochs over the synthetic training set.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Phantoms to generate (8 per synthetic volume; 2 volumes go to validation).
    #[arg(long, default_value_t = 96)]
    pub slices: usize,
    /// Side of the phantoms and of the training crops.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Slices per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Seed of the phantoms, the split, the initialisation and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run folder (default: runs/synthetic-<seed>-<unix time>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Training data (not built yet: see the training issue).
    #[arg(long, value_name = "DATA")]
    pub train: Option<PathBuf>,
}

impl Args {
    /// Trains and reports.
    pub fn run(self) -> Result<()> {
        if let Some(data) = &self.train {
            bail!(
                "training on {} is not built yet: today `d2a train` trains on synthetic phantoms only",
                data.display()
            )
        }
        if self.size == 0
            || !self.size.is_multiple_of(16)
            || self.slices < 16
            || self.batch == 0
            || self.epochs == 0
        {
            bail!(
                "--size must be a positive multiple of 16, --slices at least 16, --batch and --epochs positive"
            )
        }
        let start = Instant::now();
        let out = self.out.clone().unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(format!("runs/synthetic-{}-{now}", self.seed))
        });
        std::fs::create_dir_all(&out)
            .with_context(|| format!("creating the run folder {}", out.display()))?;
        let slices = d2a_data::synthetic::phantoms(
            self.slices,
            self.size,
            self.seed.wrapping_mul(1_000_003),
        );
        let (train, val) = split_by_volume(slices, 0.15, self.seed);
        println!(
            "d2a train: d2a-vgg-tiny on {} synthetic phantoms ({} train, {} validation) of {}x{}, CPU",
            self.slices,
            train.len(),
            val.len(),
            self.size,
            self.size
        );
        let cfg = Config::tiny();
        let varmap = VarMap::new();
        let model = D2AUNet::new(
            &cfg,
            seeded_var_builder(&varmap, self.seed, DType::F32, &Device::Cpu),
        )?;
        let vars = trainable_vars(&varmap)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        // Crops of the full size after resizing by the paper's 560/448.
        let augment = AugmentConfig::for_crop(self.size);
        let train_loader = Loader::new(train, LoaderConfig::train(self.batch, self.seed, augment))?;
        let val_loader = Loader::new(val, LoaderConfig::eval(self.batch))?;
        let fit_cfg = FitConfig {
            epochs: self.epochs,
            adam: AdamConfig {
                lr: self.lr,
                ..AdamConfig::paper()
            },
            lambda: 1.0,
        };
        let config = json!({
            "model": "d2a-vgg-tiny", "data": "synthetic", "slices": self.slices, "size": self.size,
            "batch": self.batch, "epochs": self.epochs, "lr": self.lr, "weight_decay": fit_cfg.adam.weight_decay,
            "lambda": fit_cfg.lambda, "seed": self.seed, "augment": format!("{augment:?}"),
        });
        std::fs::write(
            out.join("config.json"),
            serde_json::to_string_pretty(&config)? + "\n",
        )
        .with_context(|| format!("writing {}", out.join("config.json").display()))?;
        let metrics_path = out.join("metrics.jsonl");
        let mut metrics = std::fs::File::create(&metrics_path)
            .with_context(|| format!("creating {}", metrics_path.display()))?;
        let (last, best) = (out.join("last.safetensors"), out.join("best.safetensors"));
        let mut best_dice = f64::NEG_INFINITY;
        let records = fit(&model, vars, &train_loader, &val_loader, &fit_cfg, |r| {
            println!(
                "epoch {:>2}/{}: train loss {:.4}, validation loss {:.4}, Dice {:.4} (global {:.4}), {:.1} s",
                r.epoch,
                self.epochs,
                r.train_loss,
                r.val_loss,
                r.val_dice,
                r.val_dice_global,
                r.seconds
            );
            let line = serde_json::to_string(r).map_err(candle_core::Error::wrap)?;
            writeln!(metrics, "{line}").map_err(candle_core::Error::wrap)?;
            // Written atomically every epoch, so a stopped run keeps its last good weights; the
            // best validation epoch is kept too (validation data, never the test set).
            save(&varmap, &last).map_err(candle_core::Error::wrap)?;
            if r.val_dice > best_dice {
                best_dice = r.val_dice;
                save(&varmap, &best).map_err(candle_core::Error::wrap)?;
            }
            Ok(())
        })?;
        let final_epoch = records.last().context("no epoch ran")?;
        let best_epoch = records
            .iter()
            .max_by(|a, b| a.val_dice.total_cmp(&b.val_dice))
            .context("no epoch ran")?;
        println!(
            "validation Dice {:.4} (per-slice mean), {:.4} (global) after {} epochs; best {:.4} at epoch {}; {:.0} s\n\
             run folder: {} (config.json, metrics.jsonl, last.safetensors, best.safetensors)",
            final_epoch.val_dice,
            final_epoch.val_dice_global,
            self.epochs,
            best_epoch.val_dice,
            best_epoch.epoch,
            start.elapsed().as_secs_f64(),
            out.display()
        );
        Ok(())
    }
}
