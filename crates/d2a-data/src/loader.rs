//! Batches for training and evaluation: shuffled per epoch from a seed, augmented on background
//! threads that prefetch a bounded number of batches, delivered in order as candle tensors.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::augment::{AugmentConfig, augment};
use crate::slice::{PackedSlice, Slice};
use crate::{Error, Result};

/// How batches are made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoaderConfig {
    /// Slices per batch; the last batch of an epoch may be smaller.
    pub batch: usize,
    /// Seed of the shuffles and of every augmentation.
    pub seed: u64,
    /// Augmentation, or `None` to deliver slices as they are (evaluation).
    pub augment: Option<AugmentConfig>,
    /// Shuffle the order every epoch.
    pub shuffle: bool,
    /// Background threads.
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer (bounds memory).
    pub prefetch: usize,
    /// Side every slice is resized to (bilinear image, nearest mask) before anything else, so
    /// that the loader can hold slices at their own sizes; `None`: slices must share one size.
    pub side: Option<usize>,
}

impl LoaderConfig {
    /// Training: shuffled, augmented, two workers with two batches each in flight.
    pub const fn train(batch: usize, seed: u64, augment: AugmentConfig) -> Self {
        Self {
            batch,
            seed,
            augment: Some(augment),
            shuffle: true,
            workers: 2,
            prefetch: 2,
            side: None,
        }
    }

    /// Evaluation: in order, unchanged.
    pub const fn eval(batch: usize) -> Self {
        Self {
            batch,
            seed: 0,
            augment: None,
            shuffle: false,
            workers: 1,
            prefetch: 2,
            side: None,
        }
    }

    /// This configuration with every slice resized to `side x side` first.
    pub const fn with_side(self, side: usize) -> Self {
        Self {
            side: Some(side),
            ..self
        }
    }
}

/// One batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, 1, H, W]` f32 intensities in [0, 1].
    pub images: Tensor,
    /// `[B, 1, H, W]` f32 training targets: the 0/1 masks, or a slice's soft map / 255 where
    /// it has one ([`Slice::soft`]).
    pub masks: Tensor,
    /// Indices of the slices in the dataset, in batch order.
    pub indices: Vec<usize>,
}

/// A dataset of equally sized slices and how to batch it. The slices are held packed (8-bit
/// intensities, [`PackedSlice`]) and unpacked one batch at a time by the workers.
#[derive(Debug, Clone)]
pub struct Loader {
    slices: Arc<Vec<PackedSlice>>,
    cfg: LoaderConfig,
}

/// A seed for slice `index` in `epoch`, distinct for every pair.
fn mix(seed: u64, epoch: u64, index: u64) -> u64 {
    let mut z = seed
        ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z ^ (z >> 31)
}

impl Loader {
    /// A loader over `slices` (packed, or slices to pack), which must be non-empty and, unless
    /// [`LoaderConfig::side`] resizes them, all of one size.
    pub fn new<S: Into<PackedSlice>>(slices: Vec<S>, cfg: LoaderConfig) -> Result<Self> {
        let slices: Vec<PackedSlice> = slices.into_iter().map(Into::into).collect();
        let first = slices
            .first()
            .ok_or_else(|| Error::Invalid("no slices to load".into()))?;
        let (h, w) = (first.height, first.width);
        let mixed = slices.iter().find(|s| (s.height, s.width) != (h, w));
        if let (None, Some(s)) = (cfg.side, mixed) {
            return Err(Error::Invalid(format!(
                "slice from {} is {}x{}, others are {h}x{w}",
                s.provenance.file.display(),
                s.height,
                s.width
            )));
        }
        if cfg.batch == 0 || cfg.workers == 0 || cfg.prefetch == 0 || cfg.side == Some(0) {
            return Err(Error::Invalid(format!(
                "batch, workers and prefetch must be positive: {cfg:?}"
            )));
        }
        if let Some(aug) = &cfg.augment {
            augment(&unpack(first, &cfg), aug, 0)?;
        }
        Ok(Self {
            slices: Arc::new(slices),
            cfg,
        })
    }

    /// Number of slices.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// Whether there are no slices (never true for a built loader).
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Batches per epoch.
    pub fn n_batches(&self) -> usize {
        self.slices.len().div_ceil(self.cfg.batch)
    }

    /// The slice order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.slices.len()).collect();
        if self.cfg.shuffle {
            order.shuffle(&mut StdRng::seed_from_u64(mix(
                self.cfg.seed,
                epoch,
                u64::MAX,
            )));
        }
        order
    }

    /// The batches of `epoch`, prepared by background threads.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let order = self.order(epoch);
        let batches: Arc<Vec<Vec<usize>>> = Arc::new(
            order
                .chunks(self.cfg.batch)
                .map(<[usize]>::to_vec)
                .collect(),
        );
        let workers = self.cfg.workers.min(batches.len()).max(1);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx): (SyncSender<Result<Batch>>, Receiver<Result<Batch>>) =
                sync_channel(self.cfg.prefetch);
            let (slices, cfg, batches) = (Arc::clone(&self.slices), self.cfg, Arc::clone(&batches));
            handles.push(std::thread::spawn(move || {
                // Worker w makes batches w, w + workers, ...; the consumer reads them round-robin.
                for indices in batches.iter().skip(w).step_by(workers) {
                    if tx.send(make_batch(&slices, &cfg, indices, epoch)).is_err() {
                        return; // The epoch was dropped early.
                    }
                }
            }));
            receivers.push(rx);
        }
        Epoch {
            receivers,
            handles,
            next: 0,
            n_batches: batches.len(),
        }
    }
}

/// A packed slice as the batch uses it: unpacked, resized to the configured side.
fn unpack(slice: &PackedSlice, cfg: &LoaderConfig) -> Slice {
    let s = slice.unpack();
    match cfg.side {
        Some(side) => s.resized(side),
        None => s,
    }
}

fn make_batch(
    slices: &[PackedSlice],
    cfg: &LoaderConfig,
    indices: &[usize],
    epoch: u64,
) -> Result<Batch> {
    let mut images = Vec::new();
    let mut masks = Vec::new();
    let mut side = (0, 0);
    for &i in indices {
        let s = unpack(&slices[i], cfg);
        match &cfg.augment {
            Some(aug) => {
                let a = augment(&s, aug, mix(cfg.seed, epoch, i as u64))?;
                images.extend(a.image);
                masks.extend(targets(&a.mask, a.soft.as_deref()));
                side = (aug.crop, aug.crop);
            }
            None => {
                images.extend(s.image);
                masks.extend(targets(&s.mask, s.soft.as_deref()));
                side = (s.height, s.width);
            }
        }
    }
    let dims = (indices.len(), 1, side.0, side.1);
    Ok(Batch {
        images: Tensor::from_vec(images, dims, &Device::Cpu)?,
        masks: Tensor::from_vec(masks, dims, &Device::Cpu)?,
        indices: indices.to_vec(),
    })
}

/// A slice's training targets: its soft map's levels / 255 where it has one, else its 0/1 mask.
fn targets<'a>(mask: &'a [u8], soft: Option<&'a [u8]>) -> impl Iterator<Item = f32> + 'a {
    let (plane, scale) = match soft {
        Some(soft) => (soft, 255.0),
        None => (mask, 1.0),
    };
    plane.iter().map(move |&v| f32::from(v) / scale)
}

/// The batches of one epoch, in order; dropping it stops the workers.
pub struct Epoch {
    receivers: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    n_batches: usize,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.n_batches {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(rx.recv().unwrap_or_else(|_| {
            Err(Error::Invalid(
                "a loader thread stopped unexpectedly".into(),
            ))
        }))
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // Closing the channels first makes blocked workers return.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::phantoms;

    #[test]
    fn every_slice_once_per_epoch_reproducibly() -> Result<()> {
        let loader = Loader::new(
            phantoms(10, 32, 0),
            LoaderConfig::train(4, 9, AugmentConfig::for_crop(24)),
        )?;
        assert_eq!(loader.n_batches(), 3);
        let run = |epoch| -> Result<Vec<Batch>> { loader.epoch(epoch).collect() };
        let a = run(0)?;
        assert_eq!(
            a.iter().map(|b| b.images.dims()[0]).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        assert_eq!(a[0].images.dims(), [4, 1, 24, 24]);
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Same seed and epoch: the same batches, bit for bit; another epoch: another order.
        let b = run(0)?;
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.indices, y.indices);
            assert_eq!(
                x.images.flatten_all()?.to_vec1::<f32>()?,
                y.images.flatten_all()?.to_vec1::<f32>()?
            );
            assert_eq!(
                x.masks.flatten_all()?.to_vec1::<f32>()?,
                y.masks.flatten_all()?.to_vec1::<f32>()?
            );
        }
        assert_ne!(
            run(1)?
                .iter()
                .flat_map(|b| b.indices.clone())
                .collect::<Vec<_>>(),
            a.iter().flat_map(|b| b.indices.clone()).collect::<Vec<_>>()
        );
        // Dropping an epoch midway stops its workers (the test would hang otherwise).
        let mut e = loader.epoch(2);
        e.next();
        drop(e);
        Ok(())
    }

    #[test]
    fn eval_batches_are_the_slices_unchanged() -> Result<()> {
        let slices = phantoms(3, 16, 5);
        let loader = Loader::new(slices.clone(), LoaderConfig::eval(2))?;
        let batches: Vec<Batch> = loader.epoch(0).collect::<Result<_>>()?;
        assert_eq!(batches[0].indices, [0, 1]);
        assert_eq!(
            batches[1].images.flatten_all()?.to_vec1::<f32>()?,
            slices[2].clone().pack().unpack().image
        );
        Ok(())
    }

    #[test]
    fn slices_of_several_sizes_are_resized_to_the_side() -> Result<()> {
        let slices = vec![
            crate::synthetic::phantom(0, 24),
            crate::synthetic::phantom(1, 40),
        ];
        let want = slices[1].clone().pack().unpack().resized(32);
        let loader = Loader::new(slices, LoaderConfig::eval(2).with_side(32))?;
        let batch = loader.epoch(0).next().unwrap()?;
        assert_eq!(batch.images.dims(), [2, 1, 32, 32]);
        let second = batch
            .images
            .narrow(0, 1, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(second, want.image);
        Ok(())
    }

    #[test]
    fn soft_maps_are_the_targets_where_slices_have_them() -> Result<()> {
        let hard = crate::synthetic::phantom(0, 16);
        let levels: Vec<u8> = (0..256).map(|k| (k * 7 % 256) as u8).collect();
        let soft = Slice {
            soft: Some(levels.clone()),
            ..crate::synthetic::phantom(1, 16)
        };
        let batch = Loader::new(vec![hard.clone(), soft], LoaderConfig::eval(2))?
            .epoch(0)
            .next()
            .unwrap()?;
        let masks = batch.masks.flatten_all()?.to_vec1::<f32>()?;
        let want_hard: Vec<f32> = hard.mask.iter().map(|&m| f32::from(m)).collect();
        let want_soft: Vec<f32> = levels.iter().map(|&v| f32::from(v) / 255.0).collect();
        assert_eq!(&masks[..256], &want_hard[..]);
        assert_eq!(&masks[256..], &want_soft[..]);
        // Augmented, the targets are the augmented soft map / 255.
        let cfg = LoaderConfig::train(1, 3, AugmentConfig::for_crop(12));
        let soft = Slice {
            soft: Some(levels),
            ..crate::synthetic::phantom(1, 16)
        };
        let loader = Loader::new(vec![soft.clone()], cfg)?;
        let batch = loader.epoch(0).next().unwrap()?;
        let a = augment(&soft, &AugmentConfig::for_crop(12), mix(3, 0, 0))?;
        let want: Vec<f32> = a
            .soft
            .unwrap()
            .iter()
            .map(|&v| f32::from(v) / 255.0)
            .collect();
        assert_eq!(batch.masks.flatten_all()?.to_vec1::<f32>()?, want);
        Ok(())
    }

    #[test]
    fn bad_datasets_are_errors() {
        assert!(Loader::new(Vec::<PackedSlice>::new(), LoaderConfig::eval(2)).is_err());
        let mut slices = phantoms(2, 16, 0);
        slices.push(crate::synthetic::phantom(9, 20));
        assert!(
            Loader::new(slices, LoaderConfig::eval(2))
                .unwrap_err()
                .to_string()
                .contains("20x20")
        );
    }
}
