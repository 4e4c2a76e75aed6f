//! `d2a train`: with no arguments, `d2a-vgg-tiny` on synthetic CT phantoms on the CPU (the first
//! thing a new user runs); with `--train DATA`, the paper's protocol on real data. Everything goes
//! to a run folder (see `d2a_train::run`); `--resume` continues one, `--repeats` runs several seeds.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use d2a_metrics::Scores;
use d2a_train::fit::{EpochRecord, FitConfig};
use d2a_train::optim::AdamConfig;
use d2a_train::run::{Existing, Observer, RunConfig, RunOutcome, TrainData, run, write_json};
use d2a_train::schedule::{PlateauConfig, Schedule};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Arguments of `d2a train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training data: a prepared folder or a dataset folder (images/ + masks/); repeat it to
    /// train on several together. Without it, synthetic phantoms.
    #[arg(long, value_name = "DATA")]
    pub train: Vec<PathBuf>,
    /// Test data, scored once at the end with the best-on-validation weights.
    #[arg(long, value_name = "DATA")]
    pub test: Option<PathBuf>,
    /// Model: d2a-resnext50, d2a-vgg, d2a-vgg-tiny (with ablations such as +no-gam, +scratch),
    /// or a baseline: unet, attention-unet, unet-pp, fcn8s-resnet101, deeplabv3-resnet101
    /// (append -tiny for a reduced width). `d2a info --all` lists them.
    #[arg(long, default_value = "d2a-vgg-tiny")]
    pub model: String,
    /// ImageNet weights of a pretrained model's encoder [default:
    /// weights/<resnext50_32x4d|resnet101>.safetensors, from `cargo xtask convert-weights`].
    #[arg(long, value_name = "FILE")]
    pub backbone: Option<PathBuf>,
    /// A bundle of settings for real data, each overridden by its own flag: paper (the paper's
    /// protocol: 448 crops, 30 epochs, lr 1e-4, no normalisation) or cpu-hour (the best on
    /// validation, over three seeds, of what trains in an hour on 2 CPU cores: 192 crops, 8
    /// epochs of a cosine schedule from lr 1e-3, percentile normalisation, soft pseudo-labels,
    /// intensity augmentation, threshold chosen on validation; docs/results.md).
    #[arg(long, default_value = "paper")]
    pub recipe: Recipe,
    /// Epochs [default: 30 on real data, 16 on phantoms].
    #[arg(long, value_parser = super::positive)]
    pub epochs: Option<usize>,
    /// Slices per batch [default: 6 on real data, 4 on phantoms].
    #[arg(long, value_parser = super::positive)]
    pub batch: Option<usize>,
    /// Side of the square training crops [default: 448 on real data, 64 on phantoms]; the model
    /// input at evaluation is the side crops are cut from (5/4 of it, rounded to the model's
    /// size multiple), recorded in the checkpoint.
    #[arg(long, value_parser = super::side)]
    pub size: Option<usize>,
    /// Initial learning rate (Adam) [default: 1e-4 on real data, 3e-3 on phantoms].
    #[arg(long)]
    pub lr: Option<f64>,
    /// L2 weight decay added to the gradient.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Learning-rate schedule: plateau (the paper's: tenfold drop after --patience epochs
    /// without improvement of the validation loss) or cosine (decay to 0 over --epochs)
    /// [default: plateau, cosine for --recipe cpu-hour].
    #[arg(long)]
    pub schedule: Option<Schedule>,
    /// β of the loss's region term: 0.5 is soft Dice (the paper's Dice + BCE); above 0.5 the
    /// Tversky loss, which counts a missed lesion pixel β/(1-β) times a false alarm (against
    /// under-segmentation; 0.7 is common).
    #[arg(long, default_value_t = 0.5, value_parser = super::unit_interval)]
    pub tversky_beta: f64,
    /// Per-image intensity normalisation of every slice: none (the paper's), percentile (clip
    /// to the 0.5th-99.5th percentiles, rescale to [0, 1]) or clahe (min-max to 8 bits, then
    /// OpenCV's CLAHE with clip limit 7 on 8x8 tiles, as ma20-radiologist-256 was made);
    /// recorded in the checkpoints, so eval and predict apply the same [default: none].
    #[arg(long, value_name = "NORMALISE")]
    pub normalise: Option<d2a_model::Normalise>,
    /// Add nnU-Net's intensity augmentations to the paper's: contrast, brightness, Gaussian
    /// noise, blur and low resolution, each drawn with nnU-Net's probability [default: off, on
    /// for --recipe cpu-hour; `--intensity-augment=false` turns it off].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub intensity_augment: Option<bool>,
    /// Train on whole slices resized to --size (rotation, flips and intensity transforms, no
    /// crop) and infer at --size, instead of the paper's crops of --size from 5/4 of it.
    #[arg(long)]
    pub whole_slice: bool,
    /// Learn soft pseudo-labels: where a mask image is a soft map (0-255, as
    /// covid20-infnet-pseudo's are), train towards its levels / 255 instead of the mask cut at
    /// 128. Validation and test are scored on the hard masks [default: off, on for --recipe
    /// cpu-hour; `--soft-labels=false` turns it off].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub soft_labels: Option<bool>,
    /// After the last epoch, choose the lesion probability threshold with the best validation
    /// Dice, record it in best.safetensors (eval and predict use it) and test with it.
    #[arg(long)]
    pub threshold_on_val: bool,
    /// Epochs without improvement of the validation loss before the learning rate drops tenfold.
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Least fraction of the training slices held out (whole volumes) for validation.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Hold out exactly these volumes (comma-separated names: a NIfTI file's stem, a slice
    /// folder's volume column) for validation, instead of a seeded choice.
    #[arg(
        long,
        value_name = "NAMES",
        value_delimiter = ',',
        conflicts_with = "val_fraction"
    )]
    pub val_volumes: Vec<String>,
    /// Synthetic phantoms to generate (8 per synthetic volume).
    #[arg(long, default_value_t = 128)]
    pub slices: usize,
    /// Seed of the split, initialisation, order and augmentation (and of the phantoms).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Runs with seeds seed, seed+1, ...; reports mean ± std of every metric.
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub repeats: usize,
    /// Run folder [default: runs/<model>-<data>-<seed>-<unix time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint: its config.json is used, so
    /// no other setting may be given with it but --epochs, which extends the run to that many
    /// epochs in all (recorded in config.json).
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "train", "test", "model", "backbone", "batch", "size", "lr", "weight_decay", "schedule",
        "threshold_on_val", "normalise", "tversky_beta", "intensity_augment", "whole_slice",
        "soft_labels", "recipe",
        "patience", "val_fraction", "val_volumes", "slices", "seed", "repeats", "out", "force",
    ])]
    pub resume: Option<PathBuf>,
    /// Where training runs: cpu, or cuda / cuda:N in a build with the `cuda` feature (a run
    /// may be resumed on another device).
    #[arg(long, default_value = "cpu")]
    pub device: d2a_model::DeviceSpec,
    /// Replace a run already in the output folder.
    #[arg(long)]
    pub force: bool,
    /// Print only results and errors.
    #[arg(skip)]
    pub quiet: bool,
}

/// A bundle of defaults for real data (`--recipe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Recipe {
    /// The paper's protocol (SPEC §4).
    Paper,
    /// The best result measured within an hour of training on 2 CPU cores (docs/results.md).
    CpuHour,
}

/// Settings a recipe fills in where no flag gives them.
struct RecipeDefaults {
    size: usize,
    epochs: usize,
    lr: f64,
    normalise: d2a_model::Normalise,
    threshold_on_val: bool,
    schedule: Schedule,
    soft_labels: bool,
    intensity_augment: bool,
}

impl Recipe {
    fn defaults(self) -> RecipeDefaults {
        match self {
            Recipe::Paper => RecipeDefaults {
                size: 448,
                epochs: 30,
                lr: 1e-4,
                normalise: d2a_model::Normalise::None,
                threshold_on_val: false,
                schedule: Schedule::Plateau,
                soft_labels: false,
                intensity_augment: false,
            },
            Recipe::CpuHour => RecipeDefaults {
                size: 192,
                epochs: 8,
                lr: 1e-3,
                normalise: d2a_model::Normalise::Percentile,
                threshold_on_val: true,
                schedule: Schedule::Cosine,
                soft_labels: true,
                intensity_augment: true,
            },
        }
    }
}

/// Mean and standard deviation over repeats.
#[derive(Debug, Clone, Copy, Serialize)]
struct MeanStd {
    mean: f64,
    std: f64,
}

impl MeanStd {
    /// Sample standard deviation (n − 1), 0 for one value.
    fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        Self {
            mean,
            std: var.sqrt(),
        }
    }
}

impl Args {
    /// Trains and reports.
    pub fn run(self) -> Result<()> {
        let start = Instant::now();
        let device = self.device.open()?;
        let mut observer = Console::new(self.quiet);
        if let Some(dir) = &self.resume {
            let outcome = run(
                &self.config(self.seed)?,
                dir,
                Existing::Resume {
                    epochs: self.epochs,
                },
                &device,
                &mut observer,
            )?;
            observer.done();
            report(&outcome, start);
            return Ok(());
        }
        let existing = if self.force {
            Existing::Overwrite
        } else {
            Existing::Refuse
        };
        let base = self.out.clone().unwrap_or_else(|| self.default_out());
        let inputs: Vec<&Path> = self
            .train
            .iter()
            .chain([&self.test, &self.backbone].into_iter().flatten())
            .map(PathBuf::as_path)
            .collect();
        super::check_output("--out", &base, &inputs)?;
        let mut outcomes = Vec::new();
        for r in 0..self.repeats {
            let seed = self.seed + r as u64;
            let dir = if self.repeats == 1 {
                base.clone()
            } else {
                base.join(format!("seed-{seed}"))
            };
            let cfg = self.config(seed)?;
            if !self.quiet {
                let side = if cfg.whole_slice {
                    "whole slices"
                } else {
                    "crops"
                };
                println!(
                    "d2a train: {} on {}, {} epochs, batch {}, {}x{} {side}, lr {:e}, seed {seed}, {} -> {}",
                    cfg.model,
                    describe(&cfg.train),
                    cfg.fit.epochs,
                    cfg.batch,
                    cfg.size,
                    cfg.size,
                    cfg.fit.adam.lr,
                    self.device,
                    dir.display()
                );
            }
            let outcome = run(&cfg, &dir, existing, &device, &mut observer)?;
            observer.done();
            report(&outcome, start);
            outcomes.push(outcome);
        }
        if self.repeats > 1 {
            summarise(&outcomes, &base.join("summary.json"))?;
        }
        Ok(())
    }

    fn is_synthetic(&self) -> bool {
        self.train.is_empty()
    }

    /// The run configuration for `seed`, with the defaults of the data kind filled in.
    fn config(&self, seed: u64) -> Result<RunConfig> {
        let synthetic = self.is_synthetic();
        if synthetic && self.recipe != Recipe::Paper {
            anyhow::bail!("--recipe is for real data: give the training data with --train");
        }
        let recipe = self.recipe.defaults();
        let pick = |given: Option<usize>, real: usize, phantoms: usize| {
            given.unwrap_or(if synthetic { phantoms } else { real })
        };
        let size = pick(self.size, recipe.size, 64);
        let train = match self.train.split_first() {
            None => TrainData::Synthetic {
                slices: self.slices,
                size,
            },
            Some((path, also)) => TrainData::Folder {
                path: path.clone(),
                also: also.to_vec(),
            },
        };
        let lr = self.lr.unwrap_or(if synthetic { 3e-3 } else { recipe.lr });
        Ok(RunConfig {
            model: self.model.clone(),
            backbone: self.backbone.clone(),
            train,
            test: self.test.clone(),
            size,
            batch: pick(self.batch, 6, 4),
            seed,
            val_fraction: self.val_fraction,
            val_volumes: self.val_volumes.clone(),
            fit: FitConfig {
                epochs: pick(self.epochs, recipe.epochs, 16),
                adam: AdamConfig {
                    lr,
                    weight_decay: self.weight_decay,
                    ..AdamConfig::paper()
                },
                lambda: 1.0,
                plateau: PlateauConfig {
                    patience: self.patience,
                    ..PlateauConfig::paper()
                },
                schedule: self.schedule.unwrap_or(recipe.schedule),
                tversky_beta: self.tversky_beta,
            },
            threshold_on_val: self.threshold_on_val || recipe.threshold_on_val,
            normalise: self.normalise.unwrap_or(recipe.normalise),
            intensity_augment: self.intensity_augment.unwrap_or(recipe.intensity_augment),
            whole_slice: self.whole_slice,
            soft_labels: self.soft_labels.unwrap_or(recipe.soft_labels),
        })
    }

    fn default_out(&self) -> PathBuf {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let data = match self.train.first() {
            None => "synthetic".to_string(),
            Some(p) => p
                .file_name()
                .map_or("data".into(), |n| n.to_string_lossy().to_string()),
        };
        PathBuf::from(format!("runs/{}-{data}-{}-{now}", self.model, self.seed))
    }
}

fn describe(data: &TrainData) -> String {
    match data {
        TrainData::Synthetic { slices, size } => {
            format!("{slices} synthetic phantoms of {size}x{size}")
        }
        TrainData::Folder { path, also } => std::iter::once(path)
            .chain(also)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
    }
}

fn report(outcome: &RunOutcome, start: Instant) {
    let last = outcome.history.last();
    let b = &outcome.best;
    println!(
        "validation Dice {:.4} (per-slice mean), {:.4} (global) after {} epochs; best {:.4} at epoch {}; {} train / {} validation slices; {:.0} s",
        last.map_or(f64::NAN, |r| r.val_dice),
        last.map_or(f64::NAN, |r| r.val_dice_global),
        outcome.history.len(),
        b.val_dice,
        b.epoch,
        outcome.counts.train,
        outcome.counts.val,
        start.elapsed().as_secs_f64()
    );
    if let Some(test) = &outcome.test {
        println!(
            "test ({} slices, scored once with the epoch-{} weights): Dice {:.4} (global {:.4}), recall {:.4}, pixel error {:.4}",
            test.n_slices,
            b.epoch,
            test.per_slice_mean.dice,
            test.global.dice,
            test.per_slice_mean.recall,
            test.per_slice_mean.pixel_error
        );
    }
    println!(
        "run folder: {} (config.json, metrics.jsonl, curves.png, last.safetensors, best.safetensors{})",
        outcome.dir.display(),
        if outcome.test.is_some() {
            ", test.json"
        } else {
            ""
        }
    );
}

/// Writes and prints mean ± std over the repeats of the best validation epoch's metrics and, when
/// tested, of every test metric.
fn summarise(outcomes: &[RunOutcome], path: &Path) -> Result<()> {
    let val = |f: fn(&EpochRecord) -> f64| {
        MeanStd::of(&outcomes.iter().map(|o| f(&o.best)).collect::<Vec<_>>())
    };
    let mut summary = serde_json::json!({
        "runs": outcomes.iter().map(|o| o.dir.display().to_string()).collect::<Vec<_>>(),
        "best_val_dice": val(|r| r.val_dice),
        "best_val_dice_global": val(|r| r.val_dice_global),
    });
    println!(
        "over {} seeds: best validation Dice {:.4} ± {:.4}",
        outcomes.len(),
        summary["best_val_dice"]["mean"]
            .as_f64()
            .unwrap_or(f64::NAN),
        summary["best_val_dice"]["std"].as_f64().unwrap_or(f64::NAN)
    );
    let tests: Vec<_> = outcomes.iter().filter_map(|o| o.test.as_ref()).collect();
    if tests.len() == outcomes.len() {
        for (key, global) in [("test_per_slice_mean", false), ("test_global", true)] {
            let pick = |r: &d2a_metrics::Report| if global { r.global } else { r.per_slice_mean };
            let mut fields = serde_json::Map::new();
            for (name, get) in Scores::FIELDS {
                let values: Vec<f64> = tests.iter().map(|t| get(&pick(t))).collect();
                let ms = MeanStd::of(&values);
                if !key.ends_with("global") || name == "dice" {
                    println!("  {key} {name}: {:.4} ± {:.4}", ms.mean, ms.std);
                }
                fields.insert(name.to_string(), serde_json::to_value(ms)?);
            }
            summary[key] = serde_json::Value::Object(fields);
        }
    }
    write_json(path, &summary)?;
    println!("summary: {}", path.display());
    Ok(())
}

/// Progress bars and per-epoch lines on the terminal.
struct Console {
    quiet: bool,
    bar: Option<ProgressBar>,
}

impl Console {
    fn new(quiet: bool) -> Self {
        Self { quiet, bar: None }
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Console {
    fn message(&mut self, text: &str) {
        if !self.quiet {
            tracing::info!("{text}");
        }
    }

    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        if self.quiet {
            return;
        }
        // indicatif draws nothing when stderr is not a terminal (logs, CI).
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches, {msg} ({elapsed}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }

    fn batch(&mut self, done: usize, loss: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            bar.set_message(format!("loss {loss:.4}"));
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        self.done();
        if !self.quiet {
            println!(
                "epoch {:>2}: train loss {:.4}, validation loss {:.4}, Dice {:.4} (global {:.4}), lr {:e}, {:.1} s",
                r.epoch, r.train_loss, r.val_loss, r.val_dice, r.val_dice_global, r.lr, r.seconds
            );
        }
    }
}
