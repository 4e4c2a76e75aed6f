//! The training loop: epochs of Dice + BCE with Adam, validation after each, a record per epoch.

use std::time::Instant;

use candle_core::{Result, Var, bail};
use d2a_data::Slice;
use d2a_data::loader::Loader;
use d2a_metrics::{Confusion, Summary, confusions_from_tensors};
use d2a_model::D2AUNet;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::loss::dice_bce;
use crate::optim::{Adam, AdamConfig};

/// What [`fit`] does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Optimiser settings.
    #[serde(skip)]
    pub adam: AdamConfig,
    /// Weight of BCE in the loss (λ, 1 in the paper).
    pub lambda: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// Learning rate used.
    pub lr: f64,
    /// Seconds the epoch took, validation included.
    pub seconds: f64,
}

/// Splits slices by volume (never by slice): whole volumes, chosen by `seed`, go to validation
/// until it holds at least `val_fraction` of the slices. Returns `(train, val)`.
pub fn split_by_volume(
    slices: Vec<Slice>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<Slice>, Vec<Slice>) {
    let mut volumes: Vec<String> = slices.iter().map(|s| s.provenance.volume.clone()).collect();
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
        n_val += slices.iter().filter(|s| &s.provenance.volume == v).count();
        val_volumes.insert(v.clone());
    }
    slices
        .into_iter()
        .partition(|s| !val_volumes.contains(&s.provenance.volume))
}

/// Mean loss and metrics of `model` (eval mode) on every batch of `loader`.
pub fn evaluate(model: &D2AUNet, loader: &Loader, lambda: f64) -> Result<(f64, Summary)> {
    let mut counts: Vec<Confusion> = Vec::with_capacity(loader.len());
    let mut loss_sum = 0.0;
    let mut n_batches = 0;
    for batch in loader.epoch(0) {
        let batch = batch.map_err(candle_core::Error::wrap)?;
        let logits = model.forward_t(&batch.images, false)?;
        loss_sum += dice_bce(&logits, &batch.masks, lambda)?.to_scalar::<f32>()? as f64;
        n_batches += 1;
        counts.extend(
            confusions_from_tensors(&logits, &batch.masks, 0.0)
                .map_err(candle_core::Error::wrap)?,
        );
    }
    let summary = Summary::from_confusions(&counts).map_err(candle_core::Error::wrap)?;
    Ok((loss_sum / n_batches.max(1) as f64, summary))
}

/// Trains `model` (whose trainable variables are `vars`) for `cfg.epochs`, validating after each
/// epoch and handing each record to `on_epoch` (to log or checkpoint). A NaN or infinite loss
/// stops training with an error.
pub fn fit(
    model: &D2AUNet,
    vars: Vec<Var>,
    train: &Loader,
    val: &Loader,
    cfg: &FitConfig,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<()>,
) -> Result<Vec<EpochRecord>> {
    let mut opt = Adam::new(vars, cfg.adam)?;
    let mut records = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let (mut loss_sum, mut n) = (0.0, 0);
        for batch in train.epoch(epoch as u64) {
            let batch = batch.map_err(candle_core::Error::wrap)?;
            let loss = dice_bce(
                &model.forward_t(&batch.images, true)?,
                &batch.masks,
                cfg.lambda,
            )?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                bail!(
                    "loss is {value} at epoch {epoch}, batch {}: training stopped; the last good checkpoint is kept",
                    n + 1
                );
            }
            opt.backward_step(&loss)?;
            loss_sum += value;
            n += 1;
        }
        let (val_loss, summary) = evaluate(model, val, cfg.lambda)?;
        let record = EpochRecord {
            epoch,
            train_loss: loss_sum / n.max(1) as f64,
            val_loss,
            val_dice: summary.per_slice_mean.dice,
            val_dice_global: summary.global.dice,
            lr: opt.cfg.lr,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_epoch(&record)?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
