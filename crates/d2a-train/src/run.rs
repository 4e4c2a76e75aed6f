//! A training run in a run folder: `config.json` (everything needed to rerun), `metrics.jsonl`
//! (one line per epoch), `curves.png`, `last.safetensors` (weights, BatchNorm statistics,
//! optimiser moments and the training state, written atomically every epoch),
//! `best.safetensors` (the weights of the best validation epoch; the model input side at
//! evaluation, [`eval_size`], is in its metadata) and, when a test set is given,
//! `test.json` (the test set scored once, at the end, with the best-on-validation weights).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use d2a_data::augment::AugmentConfig;
use d2a_data::dataset::read_dataset;
use d2a_data::loader::{Loader, LoaderConfig};
use d2a_data::{ReadOptions, Slice};
use d2a_metrics::Report;
use d2a_model::checkpoint::load_exact;
use d2a_model::init::seeded_var_builder;
use d2a_model::{Model, ModelConfig, Pretrained};
use serde::{Deserialize, Serialize};

use crate::curves::write_curves;
use crate::fit::{EpochRecord, FitConfig, Trainer, Validation, split_by_volume};
use crate::infer::evaluate_slices;

/// What a run trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TrainData {
    /// Synthetic CT phantoms (`d2a_data::synthetic`), 8 per volume.
    Synthetic {
        /// How many.
        slices: usize,
        /// Their side.
        size: usize,
    },
    /// A prepared folder or a dataset folder (`d2a_data::dataset`).
    Folder {
        /// Its path.
        path: PathBuf,
    },
}

/// Everything a run needs; written as `config.json` and read back by `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Model name (`d2a_model::ModelConfig::by_name`: `d2a-vgg`, `unet`, ...).
    pub model: String,
    /// The ImageNet backbone of a pretrained model (`d2a-resnext50`, the ResNet-101 baselines);
    /// `None`: `weights/<torchvision name>.safetensors`, as `cargo xtask convert-weights`
    /// writes it.
    #[serde(default)]
    pub backbone: Option<PathBuf>,
    /// Training data; the validation split is taken from it by volume.
    pub train: TrainData,
    /// Test data, scored once at the end; never used to choose anything.
    pub test: Option<PathBuf>,
    /// Side of the training crops and of the model input at evaluation.
    pub size: usize,
    /// Slices per batch.
    pub batch: usize,
    /// Seed of the data, split, initialisation, order and augmentation.
    pub seed: u64,
    /// Least fraction of the training slices (whole volumes) held out for validation.
    pub val_fraction: f64,
    /// Epochs, optimiser, loss weight and schedule.
    pub fit: FitConfig,
}

/// How a run folder that already holds a run is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it.
    Refuse,
    /// Start over, replacing its files.
    Overwrite,
    /// Continue it from its last checkpoint (its `config.json` wins).
    Resume,
}

/// Reports from a run as it goes (progress bars, logs); every method has an empty default.
pub trait Observer {
    /// A message for the user.
    fn message(&mut self, _text: &str) {}
    /// Epoch `epoch` of `epochs` starts, with `batches` batches.
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// A batch is done with this loss.
    fn batch(&mut self, _done: usize, _loss: f64) {}
    /// An epoch is done (and checkpointed).
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// An observer that ignores everything.
pub struct Silent;

impl Observer for Silent {}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch with the best validation Dice.
    pub best: EpochRecord,
    /// The test report, if a test set was given.
    pub test: Option<Report>,
    /// Training, validation and test slice counts.
    pub counts: (usize, usize, usize),
}

/// Files a run writes (and `--force` replaces).
pub const RUN_FILES: [&str; 6] = [
    "config.json",
    "metrics.jsonl",
    "curves.png",
    "last.safetensors",
    "best.safetensors",
    "test.json",
];

/// Checkpoint metadata keys: the model preset and its input side.
pub const MODEL_KEY: &str = "d2a.model";
/// See [`MODEL_KEY`].
pub const INPUT_SIZE_KEY: &str = "d2a.input_size";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn err(text: String) -> BoxError {
    text.into()
}

/// Runs (or resumes) the training described by `cfg` in `dir`.
pub fn run(
    cfg: &RunConfig,
    dir: &Path,
    existing: Existing,
    observer: &mut dyn Observer,
) -> Result<RunOutcome, BoxError> {
    let config_path = dir.join("config.json");
    let last = dir.join("last.safetensors");
    let cfg = if existing == Existing::Resume {
        let text = std::fs::read_to_string(&config_path).map_err(|e| {
            err(format!(
                "cannot resume {}: no readable config.json ({e})",
                dir.display()
            ))
        })?;
        let cfg: RunConfig = serde_json::from_str(&text)
            .map_err(|e| err(format!("corrupt {}: {e}", config_path.display())))?;
        if !last.is_file() {
            return Err(err(format!(
                "cannot resume {}: it has no last.safetensors (no epoch finished); start it again with --force",
                dir.display()
            )));
        }
        cfg
    } else {
        // Before anything of an existing run is replaced.
        check(cfg)?;
        check_backbone(cfg)?;
        if config_path.exists() {
            if existing == Existing::Refuse {
                return Err(err(format!(
                    "{} already holds a run; continue it with --resume or replace it with --force",
                    dir.display()
                )));
            }
            for f in RUN_FILES {
                let p = dir.join(f);
                if p.exists() {
                    std::fs::remove_file(&p)
                        .map_err(|e| err(format!("cannot remove {}: {e}", p.display())))?;
                }
            }
        }
        cfg.clone()
    };
    check(&cfg)?;
    std::fs::create_dir_all(dir).map_err(|e| {
        err(format!(
            "cannot create the run folder {}: {e}",
            dir.display()
        ))
    })?;
    write_atomic(
        &config_path,
        (serde_json::to_string_pretty(&cfg)? + "\n").as_bytes(),
    )?;

    let model_cfg = ModelConfig::by_name(&cfg.model).ok_or_else(|| unknown_model(&cfg.model))?;
    let slices = load_train(&cfg, observer)?;
    let (train, val) = split_by_volume(slices, cfg.val_fraction, cfg.seed);
    if train.is_empty() || val.is_empty() {
        return Err(err(format!(
            "the training data must hold at least two volumes (one for validation): got {} training and {} validation slices",
            train.len(),
            val.len()
        )));
    }
    let input = eval_size(&cfg);
    let val = Validation {
        slices: val,
        input,
        batch: cfg.batch,
    };
    let counts = (train.len(), val.slices.len());
    let augment = AugmentConfig::for_crop(cfg.size);
    let train_loader = Loader::new(train, LoaderConfig::train(cfg.batch, cfg.seed, augment))?;

    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = Model::new(
        &model_cfg,
        seeded_var_builder(&varmap, cfg.seed, DType::F32, &device),
    )?;
    if existing != Existing::Resume
        && let Some((pretrained, path)) = backbone_file(&cfg, &model_cfg)
    {
        let report = load_exact(&varmap, &path, pretrained.prefix, &["fc."])?;
        observer.message(&format!(
            "encoder initialised from ImageNet weights {} ({} tensors)",
            path.display(),
            report.loaded
        ));
    }
    let mut trainer = Trainer::new(model, varmap, cfg.fit)?;
    if existing == Existing::Resume {
        trainer.restore(&last)?;
        observer.message(&format!(
            "resuming {} after epoch {} of {}",
            dir.display(),
            trainer.state.epoch,
            cfg.fit.epochs
        ));
    }
    let metadata = HashMap::from([
        (MODEL_KEY.to_string(), cfg.model.clone()),
        (INPUT_SIZE_KEY.to_string(), input.to_string()),
    ]);
    let best_path = dir.join("best.safetensors");
    while trainer.state.epoch < cfg.fit.epochs {
        observer.epoch_start(
            trainer.state.epoch + 1,
            cfg.fit.epochs,
            train_loader.n_batches(),
        );
        let record = trainer.run_epoch(&train_loader, &val, |done, _, loss| {
            observer.batch(done, loss)
        })?;
        // Best weights first, then the full state: a run killed in between resumes from the
        // previous epoch and rewrites both.
        if trainer
            .state
            .best()
            .is_some_and(|b| b.epoch == record.epoch)
        {
            trainer.save_weights(&best_path, &metadata)?;
        }
        trainer.save_checkpoint(&last, &metadata)?;
        write_metrics(&trainer.state.history, &dir.join("metrics.jsonl"))?;
        write_curves(&trainer.state.history, &dir.join("curves.png")).map_err(err)?;
        observer.epoch_end(&record);
    }
    let best = trainer
        .state
        .best()
        .cloned()
        .ok_or_else(|| err("no epoch ran".into()))?;
    let mut n_test = 0;
    let test = match &cfg.test {
        None => None,
        Some(path) => {
            observer.message(&format!(
                "testing the epoch-{} weights (best on validation) on {}",
                best.epoch,
                path.display()
            ));
            load_exact(trainer.varmap(), &best_path, "", &[])?;
            // Every slice, scored at its own size (as published scores are).
            let slices = read_dataset(path, &ReadOptions::native())?;
            n_test = slices.len();
            let report = evaluate_slices(trainer.model(), &slices, input, cfg.batch, &device)?;
            write_atomic(
                &dir.join("test.json"),
                (serde_json::to_string_pretty(&report)? + "\n").as_bytes(),
            )?;
            Some(report)
        }
    };
    Ok(RunOutcome {
        dir: dir.to_path_buf(),
        history: trainer.state.history.clone(),
        best,
        test,
        counts: (counts.0, counts.1, n_test),
    })
}

/// The model's input side at evaluation: the side training crops are cut from (crop · 5/4, the
/// paper's 560/448), rounded to the model's size multiple, so that inference sees lesions at
/// the scale training did.
pub fn eval_size(cfg: &RunConfig) -> usize {
    let multiple = ModelConfig::by_name(&cfg.model).map_or(16, |c| c.size_multiple());
    let side = AugmentConfig::for_crop(cfg.size).resize;
    (side.div_ceil(multiple) * multiple).max(multiple)
}

/// The ImageNet weights a pretrained model starts from, and where they are read.
fn backbone_file(cfg: &RunConfig, model: &ModelConfig) -> Option<(Pretrained, PathBuf)> {
    let pretrained = model.pretrained()?;
    let path = cfg.backbone.clone().unwrap_or_else(|| {
        PathBuf::from("weights").join(format!("{}.safetensors", pretrained.name))
    });
    Some((pretrained, path))
}

/// Checks that the ImageNet weights a fresh run of a pretrained model needs exist.
fn check_backbone(cfg: &RunConfig) -> Result<(), BoxError> {
    let model = ModelConfig::by_name(&cfg.model).ok_or_else(|| unknown_model(&cfg.model))?;
    if let Some((pretrained, path)) = backbone_file(cfg, &model)
        && !path.is_file()
    {
        return Err(err(format!(
            "{} starts from ImageNet {} weights, and {} does not exist: run `cargo xtask \
             convert-weights --model {}` (or pass --backbone FILE), or train `{}+scratch`",
            cfg.model,
            pretrained.name,
            path.display(),
            pretrained.name,
            cfg.model
        )));
    }
    Ok(())
}

fn unknown_model(name: &str) -> BoxError {
    err(format!(
        "unknown model {name:?}; known: {} (baselines also with -tiny; see `d2a info --all`)",
        ModelConfig::NAMES.join(", ")
    ))
}

/// Checks the numbers of a configuration.
fn check(cfg: &RunConfig) -> Result<(), BoxError> {
    let model = ModelConfig::by_name(&cfg.model).ok_or_else(|| unknown_model(&cfg.model))?;
    let multiple = model.size_multiple();
    if cfg.size == 0 || !cfg.size.is_multiple_of(multiple) {
        return Err(err(format!(
            "--size {} must be a positive multiple of {multiple} for {}",
            cfg.size, cfg.model
        )));
    }
    if cfg.batch == 0 || cfg.fit.epochs == 0 {
        return Err(err("--batch and --epochs must be positive".into()));
    }
    let lr = cfg.fit.adam.lr;
    if !(lr.is_finite() && lr > 0.0 && (0.0..1.0).contains(&cfg.val_fraction)) {
        return Err(err(format!(
            "the learning rate ({lr}) must be positive and the validation fraction ({}) in [0, 1)",
            cfg.val_fraction
        )));
    }
    if let TrainData::Synthetic { slices, size } = cfg.train
        && (slices < 16 || size < 16)
    {
        return Err(err(
            "synthetic data needs at least 16 slices (two volumes) of at least 16 pixels".into(),
        ));
    }
    Ok(())
}

fn load_train(cfg: &RunConfig, observer: &mut dyn Observer) -> Result<Vec<Slice>, BoxError> {
    Ok(match &cfg.train {
        TrainData::Synthetic { slices, size } => {
            d2a_data::synthetic::phantoms(*slices, *size, cfg.seed.wrapping_mul(1_000_003))
        }
        TrainData::Folder { path } => {
            observer.message(&format!("reading {}", path.display()));
            read_dataset(path, &ReadOptions::paper())
                .map_err(|e| err(format!("reading the training data {}: {e}", path.display())))?
        }
    })
}

/// `metrics.jsonl` from the whole history, rewritten atomically (so a resumed run never
/// duplicates or loses a line).
fn write_metrics(history: &[EpochRecord], path: &Path) -> Result<(), BoxError> {
    let mut text = String::new();
    for r in history {
        text += &serde_json::to_string(r)?;
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` through `<path>.partial` and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BoxError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    std::fs::write(&tmp, bytes).map_err(|e| {
        err(format!(
            "cannot write {}: {e}",
            PathBuf::from(&tmp).display()
        ))
    })?;
    std::fs::rename(&tmp, path)
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}
