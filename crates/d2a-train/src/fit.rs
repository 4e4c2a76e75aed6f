//! The training loop: epochs of Dice + BCE with Adam, validation after each, a record per epoch.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use d2a_data::loader::Loader;
use d2a_data::{HasProvenance, PackedSlice};
use d2a_metrics::{Confusion, Summary};
use d2a_model::checkpoint::format::{MOMENT_PREFIXES, TRAIN_STATE, read_train_state};
use d2a_model::checkpoint::{load_exact, read_tensors, save_tensors, tensors_of, trainable_vars};
use d2a_model::{Model, Tta};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::loss::region_bce;
use crate::optim::{Adam, AdamConfig};
use crate::schedule::{PlateauConfig, ReduceOnPlateau, Schedule};
use crate::score::{confusion, for_each_prediction};
use crate::{Error, Result};

/// What a [`Trainer`] does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Optimiser settings.
    pub adam: AdamConfig,
    /// Weight of BCE in the loss (λ, 1 in the paper).
    pub lambda: f64,
    /// Reduce-on-plateau of the learning rate on the validation loss.
    pub plateau: PlateauConfig,
    /// Which schedule sets the learning rate (plateau unless a config says otherwise).
    #[serde(default)]
    pub schedule: Schedule,
    /// β of the loss's region term: 0.5 is soft Dice (the paper's), more weighs missed lesion
    /// above false alarms (the Tversky loss, [`crate::loss::tversky_loss`]).
    #[serde(default = "dice_beta")]
    pub tversky_beta: f64,
}

/// The β at which the Tversky loss is the soft Dice loss.
pub const fn dice_beta() -> f64 {
    0.5
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Mean validation loss.
    pub val_loss: f64,
    /// Validation Dice, mean over slices.
    pub val_dice: f64,
    /// Validation Dice over summed counts.
    pub val_dice_global: f64,
    /// Validation recall, mean over slices.
    pub val_recall: f64,
    /// Validation pixel error, mean over slices.
    pub val_pixel_error: f64,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Seconds the epoch took, validation included.
    pub seconds: f64,
}

/// Splits slices by volume (never by slice): whole volumes, chosen by `seed`, go to validation
/// until it holds at least `val_fraction` of the slices. Returns `(train, val)`.
pub fn split_by_volume<S: HasProvenance>(
    slices: Vec<S>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<S>, Vec<S>) {
    let mut volumes: Vec<String> = slices
        .iter()
        .map(|s| s.provenance().volume.clone())
        .collect();
    volumes.sort();
    volumes.dedup();
    volumes.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let target = (slices.len() as f64 * val_fraction).ceil() as usize;
    let mut val_volumes = std::collections::BTreeSet::new();
    let mut n_val = 0;
    // Keep at least one volume for training.
    for v in volumes.iter().take(volumes.len().saturating_sub(1)) {
        if n_val >= target {
            break;
        }
        n_val += slices
            .iter()
            .filter(|s| &s.provenance().volume == v)
            .count();
        val_volumes.insert(v.clone());
    }
    slices
        .into_iter()
        .partition(|s| !val_volumes.contains(&s.provenance().volume))
}

/// Splits slices by volume: the volumes named in `val` go to validation, the rest to
/// training. Returns `(train, val)`, or an error naming a volume the data do not hold.
pub fn split_named<S: HasProvenance>(slices: Vec<S>, val: &[String]) -> Result<(Vec<S>, Vec<S>)> {
    let held: std::collections::BTreeSet<&str> = slices
        .iter()
        .map(|s| s.provenance().volume.as_str())
        .collect();
    if let Some(missing) = val.iter().find(|v| !held.contains(v.as_str())) {
        let some: Vec<&str> = held.iter().copied().take(8).collect();
        return Err(Error::Config(format!(
            "validation volume {missing:?} is not in the training data, whose {} volumes \
             include {}",
            held.len(),
            some.join(", ")
        )));
    }
    Ok(slices
        .into_iter()
        .partition(|s| !val.contains(&s.provenance().volume)))
}

/// Validation data: slices at their own size, predicted at the model's input side.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The slices, at their own size (masks are scored there, never resampled), packed:
    /// unpacked a batch at a time as they are scored.
    pub slices: Vec<PackedSlice>,
    /// The model input side.
    pub input: usize,
    /// Slices per forward pass.
    pub batch: usize,
    /// Where the model runs.
    pub device: Device,
}

/// Mean per-slice loss and the metrics of `model` (eval mode) on `val`: each slice predicted at
/// the input side, its logits resized back to the slice's size, and scored there (as the test
/// set is).
pub fn evaluate(
    model: &Model,
    val: &Validation,
    (lambda, beta): (f64, f64),
) -> Result<(f64, Summary)> {
    let mut counts: Vec<Confusion> = Vec::with_capacity(val.slices.len());
    let mut loss_sum = 0.0;
    let device = &val.device;
    let sizes = (val.input, val.batch);
    for_each_prediction(model, &val.slices, sizes, Tta::None, device, |s, l| {
        counts.push(confusion(s, &l)?);
        let shape = (1, 1, s.height, s.width);
        let target: Vec<f32> = s.mask.iter().map(|&m| f32::from(m)).collect();
        let loss = region_bce(
            &Tensor::from_vec(l, shape, device)?,
            &Tensor::from_vec(target, shape, device)?,
            lambda,
            beta,
        )?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?);
        Ok::<_, Error>(())
    })?;
    let summary = Summary::from_confusions(&counts)?;
    Ok((loss_sum / counts.len().max(1) as f64, summary))
}

/// Everything of a training run that is not a model variable: where it stands, the schedule,
/// and the history. Saved with every checkpoint, so that a resumed run continues exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Adam steps taken.
    pub adam_step: i32,
    /// Learning rate for the next epoch.
    pub lr: f64,
    /// The plateau scheduler.
    pub plateau: ReduceOnPlateau,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
}

impl TrainState {
    /// The epoch with the best validation Dice (mean over slices), if any.
    pub fn best(&self) -> Option<&EpochRecord> {
        self.history.iter().max_by(|a, b| {
            a.val_dice
                .total_cmp(&b.val_dice)
                .then(b.epoch.cmp(&a.epoch))
        })
    }
}

/// A model in training: its variables, the optimiser and the [`TrainState`].
///
/// The data order and every augmentation are functions of the loader's seed and the epoch
/// number, so a trainer restored from a checkpoint after epoch `e` continues bit for bit as the
/// uninterrupted run would have.
pub struct Trainer {
    model: Model,
    varmap: VarMap,
    /// Where the variables live; batches are moved there.
    device: Device,
    names: Vec<String>,
    opt: Adam,
    cfg: FitConfig,
    /// Where training stands.
    pub state: TrainState,
}

impl Trainer {
    /// A trainer for `model`, built over `varmap`, with fresh optimiser state.
    pub fn new(model: Model, varmap: VarMap, cfg: FitConfig) -> Result<Self> {
        let (names, vars): (Vec<String>, Vec<Var>) = trainable_vars(&varmap).into_iter().unzip();
        let device = vars.first().map_or(Device::Cpu, |v| v.device().clone());
        let opt = Adam::new(vars, cfg.adam)?;
        Ok(Self {
            model,
            device,
            varmap,
            names,
            opt,
            state: TrainState {
                epoch: 0,
                adam_step: 0,
                lr: cfg.adam.lr,
                plateau: ReduceOnPlateau::new(cfg.plateau),
                history: Vec::new(),
            },
            cfg,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's variables (weights and BatchNorm statistics).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Trains one epoch and validates; `on_batch(done, total, loss)` is called after every
    /// batch. A NaN or infinite loss is an error, raised before the update that would spread it.
    pub fn run_epoch(
        &mut self,
        train: &Loader,
        val: &Validation,
        mut on_batch: impl FnMut(usize, usize, f64),
    ) -> Result<EpochRecord> {
        let start = Instant::now();
        let epoch = self.state.epoch + 1;
        self.opt.cfg.lr = self.state.lr;
        let (mut loss_sum, mut n) = (0.0, 0);
        let total = train.n_batches();
        for batch in train.epoch(epoch as u64) {
            let batch = batch?;
            let loss = region_bce(
                &self
                    .model
                    .forward_t(&batch.images.to_device(&self.device)?, true)?,
                &batch.masks.to_device(&self.device)?,
                self.cfg.lambda,
                self.cfg.tversky_beta,
            )?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(Error::NonFiniteLoss {
                    value,
                    epoch,
                    batch: n + 1,
                });
            }
            self.opt.backward_step(&loss)?;
            loss_sum += value;
            n += 1;
            on_batch(n, total, value);
        }
        let (val_loss, summary) =
            evaluate(&self.model, val, (self.cfg.lambda, self.cfg.tversky_beta))?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / n.max(1) as f64,
            val_loss,
            val_dice: summary.per_slice_mean.dice,
            val_dice_global: summary.global.dice,
            val_recall: summary.per_slice_mean.recall,
            val_pixel_error: summary.per_slice_mean.pixel_error,
            lr: self.state.lr,
            seconds: start.elapsed().as_secs_f64(),
        };
        self.state.epoch = epoch;
        self.state.adam_step = self.opt.steps();
        self.state.lr = match self.cfg.schedule {
            Schedule::Plateau => self.state.plateau.step(val_loss, self.state.lr),
            Schedule::Cosine => Schedule::cosine(self.cfg.adam.lr, epoch, self.cfg.epochs),
        };
        self.state.history.push(record.clone());
        Ok(record)
    }

    /// Saves weights, BatchNorm statistics, optimiser moments and the [`TrainState`] (plus the
    /// caller's `metadata`) to `path`, atomically.
    pub fn save_checkpoint(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        let mut tensors = self.weights()?;
        let (m, v) = self.opt.moments();
        for (prefix, moments) in MOMENT_PREFIXES.iter().zip([m, v]) {
            for (name, t) in self.names.iter().zip(moments) {
                tensors.push((format!("{prefix}{name}"), t.clone()));
            }
        }
        let mut metadata = metadata.clone();
        let state = serde_json::to_string(&self.state).map_err(|source| Error::Json {
            what: "training state",
            path: path.to_path_buf(),
            source,
        })?;
        metadata.insert(TRAIN_STATE.into(), state);
        Ok(save_tensors(&tensors, &metadata, path)?)
    }

    /// Saves the weights and BatchNorm statistics only (what evaluation needs), atomically.
    pub fn save_weights(&self, path: &Path, metadata: &HashMap<String, String>) -> Result<()> {
        Ok(save_tensors(&self.weights()?, metadata, path)?)
    }

    fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(tensors_of(&self.varmap)?)
    }

    /// Restores everything [`Trainer::save_checkpoint`] wrote to `path`. The file must fit the
    /// model exactly and hold the optimiser moments and the state.
    pub fn restore(&mut self, path: &Path) -> Result<()> {
        let state = read_train_state(path)?;
        let state: TrainState = serde_json::from_str(&state).map_err(|source| Error::Json {
            what: "training state",
            path: path.to_path_buf(),
            source,
        })?;
        load_exact(&self.varmap, path, "", &MOMENT_PREFIXES)?;
        let tensors = read_tensors(path)?;
        let moments = |prefix: &str| -> Result<Vec<Tensor>> {
            self.names
                .iter()
                .map(|name| {
                    tensors
                        .get(&format!("{prefix}{name}"))
                        .cloned()
                        .ok_or_else(|| Error::Checkpoint {
                            path: path.to_path_buf(),
                            problem: format!("lacks the optimiser moment {prefix}{name}"),
                        })
                })
                .collect()
        };
        let (m, v) = (moments(MOMENT_PREFIXES[0])?, moments(MOMENT_PREFIXES[1])?);
        self.opt.set_moments(m, v, state.adam_step)?;
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose loss is NaN (here: a weight gone NaN) stops the epoch with an error naming
    /// it, before any update, and the trainer's state still says no epoch finished.
    #[test]
    fn a_nan_loss_stops_training() -> Result<()> {
        use candle_core::DType;
        use d2a_data::loader::LoaderConfig;
        let slices = d2a_data::synthetic::phantoms(8, 16, 0);
        let varmap = VarMap::new();
        let model = Model::new(
            &d2a_model::ModelConfig::D2A(d2a_model::D2AUNetConfig::tiny()),
            d2a_model::init::seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu),
        )?;
        let (_, head) = trainable_vars(&varmap)
            .into_iter()
            .find(|(name, _)| name.starts_with("head"))
            .expect("the model has a head");
        head.set(&(head.as_tensor() * f64::NAN)?)?;
        let cfg = FitConfig {
            epochs: 1,
            adam: AdamConfig::paper(),
            lambda: 1.0,
            plateau: PlateauConfig::paper(),
            tversky_beta: dice_beta(),
            schedule: Schedule::Plateau,
        };
        let mut trainer = Trainer::new(model, varmap, cfg)?;
        let loader = Loader::new(slices.clone(), LoaderConfig::eval(4))?;
        let val = Validation {
            slices: slices.into_iter().map(d2a_data::Slice::pack).collect(),
            input: 16,
            batch: 4,
            device: Device::Cpu,
        };
        let err = trainer.run_epoch(&loader, &val, |_, _, _| {}).unwrap_err();
        assert!(
            err.to_string().contains("loss is NaN at epoch 1, batch 1"),
            "{err}"
        );
        assert_eq!((trainer.state.epoch, trainer.opt.steps()), (0, 0));
        Ok(())
    }

    #[test]
    fn split_keeps_volumes_whole() {
        let slices = d2a_data::synthetic::phantoms(40, 8, 0);
        let (train, val) = split_by_volume(slices, 0.2, 1);
        assert_eq!(train.len() + val.len(), 40);
        assert!(val.len() >= 8 && !train.is_empty());
        for v in &val {
            assert!(
                train
                    .iter()
                    .all(|t| t.provenance.volume != v.provenance.volume)
            );
        }
        let (_, val2) = split_by_volume(d2a_data::synthetic::phantoms(40, 8, 0), 0.2, 1);
        assert_eq!(val.len(), val2.len());
    }

    #[test]
    fn named_split_holds_out_exactly_the_named_volumes() {
        let slices = d2a_data::synthetic::phantoms(40, 8, 0);
        let names: Vec<String> = {
            let mut v: Vec<String> = slices.iter().map(|s| s.provenance.volume.clone()).collect();
            v.dedup();
            v
        };
        let held = vec![names[1].clone(), names[3].clone()];
        let (train, val) = split_named(slices.clone(), &held).unwrap();
        assert_eq!((train.len(), val.len()), (24, 16));
        assert!(val.iter().all(|s| held.contains(&s.provenance.volume)));
        assert!(train.iter().all(|s| !held.contains(&s.provenance.volume)));
        let err = split_named(slices, &["no-such-volume".to_string()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"no-such-volume\" is not in the training data")
        );
    }
}
