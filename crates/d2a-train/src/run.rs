//! A training run in a run folder: `config.json` (everything needed to rerun), `metrics.jsonl`
//! (one line per epoch), `curves.png`, `last.safetensors` (weights, BatchNorm statistics,
//! optimiser moments and the training state, written atomically every epoch),
//! `best.safetensors` (the weights of the best validation epoch; the model input side at
//! evaluation, [`eval_size`], is in its metadata, see `d2a_model::checkpoint::format`) and,
//! when a test set is given,
//! `test.json` (the test set scored once, at the end, with the best-on-validation weights).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarMap;
use d2a_data::augment::AugmentConfig;
use d2a_data::dataset::{read_dataset, read_dataset_with};
use d2a_data::loader::{Loader, LoaderConfig};
use d2a_data::{PackedSlice, ReadOptions, Slice};
use d2a_metrics::Report;
use d2a_model::checkpoint::format::{InferenceMeta, logit_of};
use d2a_model::checkpoint::{load_exact, write_atomic};
use d2a_model::init::seeded_var_builder;
use d2a_model::{Model, ModelConfig, Pretrained};
use d2a_model::{Normalise, Tta};
use serde::{Deserialize, Serialize};

use crate::curves::write_curves;
use crate::fit::{EpochRecord, FitConfig, Trainer, Validation, split_by_volume, split_named};
use crate::score::{confusion_at, evaluate_slices, for_each_prediction};
use crate::{Error, Result};

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
    /// A prepared folder or a dataset folder (`d2a_data::dataset`), and any more read after it
    /// (`--train A --train B`; name a patient held in several with `--val-volumes` in each, so
    /// that no patient is on both sides of the split).
    Folder {
        /// Its path.
        path: PathBuf,
        /// Further folders.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        also: Vec<PathBuf>,
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
    /// The volumes held out for validation, by name; empty: chosen by `seed` until they hold
    /// `val_fraction` of the slices.
    #[serde(default)]
    pub val_volumes: Vec<String>,
    /// Epochs, optimiser, loss weight and schedule.
    pub fit: FitConfig,
    /// After the last epoch, choose the lesion probability threshold that maximises the mean
    /// per-slice validation Dice of the best weights, record it in `best.safetensors`
    /// (`d2a.threshold`), and test with it. Off: 0.5, the paper's.
    #[serde(default)]
    pub threshold_on_val: bool,
    /// Per-image intensity normalisation of every slice read (training, validation, test),
    /// recorded in the checkpoints so that `eval` and `predict` apply the same.
    #[serde(default)]
    pub normalise: Normalise,
    /// nnU-Net's intensity augmentations (contrast, brightness, noise, blur, low resolution) on
    /// top of the paper's (off: the paper's).
    #[serde(default)]
    pub intensity_augment: bool,
    /// Train on whole slices resized to `size` (rotation, flips and intensity transforms, no
    /// crop) and infer at `size`, instead of the paper's crops of `size` from 5/4 of it.
    #[serde(default)]
    pub whole_slice: bool,
    /// Learn soft pseudo-labels: where a 2-D mask file is a soft map (0-255, as Inf-Net's
    /// pseudo-labels are saved), the targets are its levels / 255 instead of the mask cut at 128
    /// (knowledge distillation from the model that made them). Validation and test are scored
    /// on the hard masks either way.
    #[serde(default)]
    pub soft_labels: bool,
}

/// How a run folder that already holds a run is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse it.
    Refuse,
    /// Start over, replacing its files.
    Overwrite,
    /// Continue it from its last checkpoint (its `config.json` wins), to `epochs` in all where
    /// given (extending a finished run; recorded in `config.json`).
    Resume {
        /// The new total number of epochs, at least the number already run.
        epochs: Option<usize>,
    },
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

/// How many slices a run trained, validated and tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SliceCounts {
    /// Training slices.
    pub train: usize,
    /// Validation slices (whole volumes held out of the training data).
    pub val: usize,
    /// Test slices (0 without a test set).
    pub test: usize,
}

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
    /// Slice counts.
    pub counts: SliceCounts,
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

/// Runs (or resumes) the training described by `cfg` in `dir`. With [`Existing::Resume`],
/// `cfg` is ignored: the folder's `config.json` wins. Nothing of an existing run is replaced
/// before the new run's settings are checked and its data read.
pub fn run(
    cfg: &RunConfig,
    dir: &Path,
    existing: Existing,
    device: &Device,
    observer: &mut dyn Observer,
) -> Result<RunOutcome> {
    let folder = RunFolder(dir.to_path_buf());
    let plan = match existing {
        Existing::Resume { epochs } => {
            let mut cfg = folder.resumable_config()?;
            if let Some(n) = epochs {
                cfg.fit.epochs = n;
            }
            Plan::new(cfg, device).map_err(|e| folder.problem(&format!("config.json: {e}")))?
        }
        Existing::Refuse | Existing::Overwrite => {
            folder.check_free(existing)?;
            Plan::new(cfg.clone(), device)?
        }
    };
    let (train, val) = plan.read_data(observer)?;
    if existing == Existing::Overwrite {
        folder.clear()?;
    }
    folder.create()?;
    write_json(&folder.file("config.json"), &plan.cfg)?;
    let mut trainer = plan.trainer(existing, &folder, observer)?;
    plan.train_epochs(&mut trainer, &train, &val, &folder, observer)?;
    let best = trainer
        .state
        .best()
        .cloned()
        .ok_or_else(|| Error::Config("no epoch ran".into()))?;
    let threshold = if plan.cfg.threshold_on_val {
        Some(plan.choose_threshold(&mut trainer, &val, &folder, observer)?)
    } else {
        None
    };
    let test = plan.test(&mut trainer, &best, threshold, &folder, observer)?;
    Ok(RunOutcome {
        dir: dir.to_path_buf(),
        history: trainer.state.history.clone(),
        best,
        counts: SliceCounts {
            train: train.len(),
            val: val.slices.len(),
            test: test.as_ref().map_or(0, |r| r.n_slices),
        },
        test,
    })
}

/// A run folder and the rules for an existing run in it.
struct RunFolder(PathBuf);

impl RunFolder {
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The `config.json` of a run that can be resumed.
    fn resumable_config(&self) -> Result<RunConfig> {
        let path = self.file("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            op: "resume from",
            path: path.clone(),
            source,
        })?;
        let cfg = serde_json::from_str(&text).map_err(|source| Error::Json {
            what: "config.json",
            path,
            source,
        })?;
        if !self.file("last.safetensors").is_file() {
            return Err(self.problem(
                "cannot resume: it has no last.safetensors (no epoch finished); start it again \
                 with --force",
            ));
        }
        Ok(cfg)
    }

    /// Refuses a folder that holds a run, unless it is to be overwritten.
    fn check_free(&self, existing: Existing) -> Result<()> {
        if existing == Existing::Refuse && self.file("config.json").exists() {
            return Err(self.problem(
                "already holds a run; continue it with --resume or replace it with --force",
            ));
        }
        Ok(())
    }

    /// Removes the files of the run it holds.
    fn clear(&self) -> Result<()> {
        for f in RUN_FILES {
            let path = self.file(f);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|source| Error::Io {
                    op: "remove",
                    path,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Creates the folder, removing what a killed run's atomic writes left behind.
    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.0).map_err(|source| Error::Io {
            op: "create the run folder",
            path: self.0.clone(),
            source,
        })?;
        d2a_model::checkpoint::remove_stale_temporaries(&self.0)?;
        Ok(())
    }

    fn problem(&self, problem: &str) -> Error {
        Error::RunFolder {
            dir: self.0.clone(),
            problem: problem.into(),
        }
    }
}

/// A checked configuration with its model parsed once.
struct Plan {
    cfg: RunConfig,
    model: ModelConfig,
    device: Device,
}

impl Plan {
    /// Checks every setting of `cfg` (and that the files it names exist) before any work.
    fn new(cfg: RunConfig, device: &Device) -> Result<Self> {
        let model = ModelConfig::parse(&cfg.model)?;
        model.check_side("--size", cfg.size)?;
        if cfg.batch == 0 || cfg.fit.epochs == 0 {
            return Err(Error::Config(
                "--batch and --epochs must be positive".into(),
            ));
        }
        let (lr, decay) = (cfg.fit.adam.lr, cfg.fit.adam.weight_decay);
        if !(lr.is_finite() && lr > 0.0 && (0.0..1.0).contains(&cfg.val_fraction)) {
            return Err(Error::Config(format!(
                "the learning rate ({lr}) must be positive and the validation fraction ({}) in [0, 1)",
                cfg.val_fraction
            )));
        }
        if !(decay.is_finite() && decay >= 0.0) {
            return Err(Error::Config(format!(
                "the weight decay ({decay}) must be zero or positive"
            )));
        }
        if let TrainData::Synthetic { slices, size } = cfg.train
            && (slices < 16 || size < 16)
        {
            return Err(Error::Config(
                "synthetic data needs at least 16 slices (two volumes) of at least 16 pixels"
                    .into(),
            ));
        }
        if let Some(test) = &cfg.test
            && !test.exists()
        {
            return Err(Error::Config(format!(
                "the test data {} does not exist",
                test.display()
            )));
        }
        let plan = Self {
            cfg,
            model,
            device: device.clone(),
        };
        plan.check_backbone()?;
        Ok(plan)
    }

    /// The ImageNet weights a pretrained model starts from, and where they are read.
    fn backbone_file(&self) -> Option<(Pretrained, PathBuf)> {
        let pretrained = self.model.pretrained()?;
        let path = self.cfg.backbone.clone().unwrap_or_else(|| {
            PathBuf::from("weights").join(format!("{}.safetensors", pretrained.name))
        });
        Some((pretrained, path))
    }

    /// Checks that the ImageNet weights a pretrained model needs exist.
    fn check_backbone(&self) -> Result<()> {
        if let Some((pretrained, path)) = self.backbone_file()
            && !path.is_file()
        {
            return Err(Error::Config(format!(
                "{} starts from ImageNet {} weights, and {} does not exist: run `cargo xtask \
                 convert-weights --model {}` (or pass --backbone FILE), or train `{}+scratch`",
                self.cfg.model,
                pretrained.name,
                path.display(),
                pretrained.name,
                self.cfg.model
            )));
        }
        Ok(())
    }

    fn input_size(&self) -> usize {
        eval_side(self.cfg.size, self.cfg.whole_slice, &self.model)
    }

    /// What the checkpoints record for inference.
    fn inference_meta(&self) -> Result<InferenceMeta> {
        let mut meta = InferenceMeta::new(&self.cfg.model, self.input_size())?;
        meta.normalise = self.cfg.normalise;
        Ok(meta)
    }

    /// The training loader and the validation slices, split by volume.
    fn read_data(&self, observer: &mut dyn Observer) -> Result<(Loader, Validation)> {
        let cfg = &self.cfg;
        let slices = load_train(cfg, observer)?;
        let (train, val) = if cfg.val_volumes.is_empty() {
            split_by_volume(slices, cfg.val_fraction, cfg.seed)
        } else {
            split_named(slices, &cfg.val_volumes)?
        };
        if train.is_empty() || val.is_empty() {
            return Err(Error::Config(format!(
                "the training data must hold at least two volumes (one for validation): got {} \
                 training and {} validation slices",
                train.len(),
                val.len()
            )));
        }
        let val_names: Vec<&str> = val
            .iter()
            .map(|s| s.provenance.volume.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        observer.message(&format!(
            "validation: {} slices of {} volumes ({})",
            val.len(),
            val_names.len(),
            val_names.join(", ")
        ));
        let augment =
            augment_config(cfg.size, cfg.whole_slice).with_intensity(cfg.intensity_augment);
        let mut loading = LoaderConfig::train(cfg.batch, cfg.seed, augment);
        if let TrainData::Folder { .. } = cfg.train {
            // Slices are held at their own sizes and brought to the paper's side as used.
            loading = loading.with_side(READ_SIDE);
        }
        let loader = Loader::new(train, loading)?;
        // Validation slices at their own sizes, scored there as the test is.
        let val = Validation {
            slices: val,
            input: self.input_size(),
            batch: cfg.batch,
            device: self.device.clone(),
        };
        Ok((loader, val))
    }

    /// The model, seeded, with its ImageNet backbone (fresh runs) or its last checkpoint
    /// (resumed runs).
    fn trainer(
        &self,
        existing: Existing,
        folder: &RunFolder,
        observer: &mut dyn Observer,
    ) -> Result<Trainer> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, self.cfg.seed, DType::F32, &self.device);
        let model = Model::new(&self.model, vb)?;
        let resume = matches!(existing, Existing::Resume { .. });
        if !resume && let Some((pretrained, path)) = self.backbone_file() {
            let report = load_exact(&varmap, &path, pretrained.prefix, &["fc."])?;
            observer.message(&format!(
                "encoder initialised from ImageNet weights {} ({} tensors)",
                path.display(),
                report.loaded
            ));
        }
        let mut trainer = Trainer::new(model, varmap, self.cfg.fit)?;
        if resume {
            trainer.restore(&folder.file("last.safetensors"))?;
            if trainer.state.epoch > self.cfg.fit.epochs {
                return Err(folder.problem(&format!(
                    "already ran {} epochs; --epochs must be at least that",
                    trainer.state.epoch
                )));
            }
            observer.message(&format!(
                "resuming {} after epoch {} of {}",
                folder.0.display(),
                trainer.state.epoch,
                self.cfg.fit.epochs
            ));
        }
        Ok(trainer)
    }

    /// Epochs until the configured count, each checkpointed.
    fn train_epochs(
        &self,
        trainer: &mut Trainer,
        train: &Loader,
        val: &Validation,
        folder: &RunFolder,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        let metadata = self.inference_meta()?.to_metadata();
        let epochs = self.cfg.fit.epochs;
        while trainer.state.epoch < epochs {
            observer.epoch_start(trainer.state.epoch + 1, epochs, train.n_batches());
            let record =
                trainer.run_epoch(train, val, |done, _, loss| observer.batch(done, loss))?;
            // Best weights first, then the full state: a run killed in between resumes from the
            // previous epoch and rewrites both.
            if trainer
                .state
                .best()
                .is_some_and(|b| b.epoch == record.epoch)
            {
                trainer.save_weights(&folder.file("best.safetensors"), &metadata)?;
            }
            trainer.save_checkpoint(&folder.file("last.safetensors"), &metadata)?;
            write_metrics(&trainer.state.history, &folder.file("metrics.jsonl"))?;
            write_curves(&trainer.state.history, &folder.file("curves.png"))?;
            observer.epoch_end(&record);
        }
        Ok(())
    }

    /// The lesion probability threshold (0.05 to 0.95 in steps of 0.05; ties go to the one
    /// nearest 0.5) with the best mean per-slice Dice of the best weights on `val`, recorded in
    /// `best.safetensors`.
    fn choose_threshold(
        &self,
        trainer: &mut Trainer,
        val: &Validation,
        folder: &RunFolder,
        observer: &mut dyn Observer,
    ) -> Result<f64> {
        let best_path = folder.file("best.safetensors");
        load_exact(trainer.varmap(), &best_path, "", &[])?;
        let grid: Vec<f64> = (1..20).map(|i| f64::from(i) * 0.05).collect();
        let logits: Vec<f32> = grid.iter().map(|&p| logit_of(p)).collect();
        let mut counts = vec![Vec::with_capacity(val.slices.len()); grid.len()];
        let sizes = (val.input, val.batch);
        for_each_prediction(
            trainer.model(),
            &val.slices,
            sizes,
            Tta::None,
            &self.device,
            |s, l| {
                for (c, &at) in counts.iter_mut().zip(&logits) {
                    c.push(confusion_at(s, &l, at)?);
                }
                Ok::<_, Error>(())
            },
        )?;
        let mut chosen: (f64, f64) = (0.5, f64::NEG_INFINITY);
        for (&p, c) in grid.iter().zip(&counts) {
            let dice = d2a_metrics::Summary::from_confusions(c)?
                .per_slice_mean
                .dice;
            let nearer = (p - 0.5).abs() < (chosen.0 - 0.5).abs();
            if dice > chosen.1 || (dice == chosen.1 && nearer) {
                chosen = (p, dice);
            }
        }
        let mut meta = self.inference_meta()?;
        meta.threshold = Some(chosen.0);
        trainer.save_weights(&best_path, &meta.to_metadata())?;
        observer.message(&format!(
            "threshold {:.2} chosen on validation (per-slice Dice {:.4}), recorded in {}",
            chosen.0,
            chosen.1,
            best_path.display()
        ));
        Ok(chosen.0)
    }

    /// The test set scored once with the best-on-validation weights (at `threshold`, else 0.5),
    /// into `test.json`.
    fn test(
        &self,
        trainer: &mut Trainer,
        best: &EpochRecord,
        threshold: Option<f64>,
        folder: &RunFolder,
        observer: &mut dyn Observer,
    ) -> Result<Option<Report>> {
        let Some(path) = &self.cfg.test else {
            return Ok(None);
        };
        observer.message(&format!(
            "testing the epoch-{} weights (best on validation) on {}",
            best.epoch,
            path.display()
        ));
        load_exact(trainer.varmap(), &folder.file("best.safetensors"), "", &[])?;
        // Every slice, scored at its own size (as published scores are).
        let mut slices =
            read_dataset(path, &ReadOptions::native()).map_err(|source| Error::Data {
                what: "reading the test data",
                path: path.clone(),
                source: Box::new(source),
            })?;
        normalise_all(&mut slices, self.cfg.normalise);
        let at = threshold.map_or(d2a_model::LESION_LOGIT, logit_of);
        let report = evaluate_slices(
            trainer.model(),
            &slices,
            (self.input_size(), self.cfg.batch),
            at,
            &self.device,
        )?;
        write_json(&folder.file("test.json"), &report)?;
        Ok(Some(report))
    }
}

/// The training transforms: crops of `size` from slices resized to 5/4 of it (the paper's
/// 448 from 560), or with `whole_slice` the whole slice resized to `size`.
fn augment_config(size: usize, whole_slice: bool) -> AugmentConfig {
    let crops = AugmentConfig::for_crop(size);
    if whole_slice {
        AugmentConfig {
            resize: size,
            ..crops
        }
    } else {
        crops
    }
}

/// The model's input side at evaluation: the side training slices were resized to before
/// cropping (crop · 5/4, the paper's 560/448; the crop itself with `whole_slice`), rounded to
/// the model's size multiple, so that inference sees lesions at the scale training did.
pub fn eval_side(size: usize, whole_slice: bool, model: &ModelConfig) -> usize {
    let multiple = model.size_multiple();
    let side = augment_config(size, whole_slice).resize;
    (side.div_ceil(multiple) * multiple).max(multiple)
}

/// Applies `normalise` to every slice's image.
pub fn normalise_all(slices: &mut [Slice], normalise: Normalise) {
    for s in slices {
        normalise.apply(&mut s.image, (s.height, s.width));
    }
}

/// The side training slices are brought to before augmentation (the paper's 512).
const READ_SIDE: usize = ReadOptions::paper().size;

/// The training data, each slice normalised and packed (8-bit) at its own size as it is read,
/// so that the dataset is never held as `f32` nor at the side it is trained at.
fn load_train(cfg: &RunConfig, observer: &mut dyn Observer) -> Result<Vec<PackedSlice>> {
    let finish = |mut s: Slice| {
        cfg.normalise.apply(&mut s.image, (s.height, s.width));
        s.pack()
    };
    match &cfg.train {
        TrainData::Synthetic { slices, size } => Ok(d2a_data::synthetic::phantoms_with(
            *slices,
            *size,
            cfg.seed.wrapping_mul(1_000_003),
            &finish,
        )),
        TrainData::Folder { path, also } => {
            let native = ReadOptions {
                size: 0,
                soft_labels: cfg.soft_labels,
                ..ReadOptions::paper()
            };
            let mut slices = Vec::new();
            for path in std::iter::once(path).chain(also) {
                observer.message(&format!("reading {}", path.display()));
                let read =
                    read_dataset_with(path, &native, &finish).map_err(|source| Error::Data {
                        what: "reading the training data",
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                if cfg.soft_labels && !read.iter().any(PackedSlice::has_soft) {
                    observer.message(&format!(
                        "no soft masks in {}: its slices train on their hard masks",
                        path.display()
                    ));
                }
                slices.extend(read);
            }
            Ok(slices)
        }
    }
}

/// `metrics.jsonl` from the whole history, rewritten atomically (so a resumed run never
/// duplicates or loses a line).
fn write_metrics(history: &[EpochRecord], path: &Path) -> Result<()> {
    let mut text = String::new();
    for r in history {
        text += &serde_json::to_string(r).map_err(|source| Error::Json {
            what: "metrics",
            path: path.to_path_buf(),
            source,
        })?;
        text.push('\n');
    }
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Writes `value` as pretty JSON (with a final newline) to `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        what: "JSON output",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(write_atomic(path, (text + "\n").as_bytes())?)
}
