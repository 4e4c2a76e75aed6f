//! Inference as `d2a predict` and `d2a eval` run it, for any program: [`Segmenter`].
//!
//! The pipeline: each grey image (pixels in [0, 1], any size) is resized bilinearly
//! (`align_corners = false`) to the model's square input side, predicted in eval mode, and its
//! logit map resized back to the image's own size; a pixel is lesion where its logit is at least
//! [`LESION_LOGIT`] (probability ≥ 0.5).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("best.safetensors");
//! # d2a_model::Segmenter::untrained("d2a-vgg-tiny", 64)?.save(&path)?;
//! use d2a_model::{Image, Segmenter};
//!
//! // A checkpoint written by `d2a train` (best.safetensors) knows its model and input side.
//! let segmenter = Segmenter::from_checkpoint(&path)?;
//! // A 100 x 120 CT slice, windowed to [0, 1] (as `d2a predict` reads images: u8 / 255).
//! let pixels = vec![0.5f32; 100 * 120];
//! let mask = segmenter.segment(Image::new(&pixels, 100, 120)?)?;
//! assert_eq!(mask.len(), 100 * 120); // 1 = lesion, 0 = background
//! # Ok(())
//! # }
//! ```

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;

use crate::checkpoint::format::{InferenceMeta, OPTIM_PREFIX};
use crate::checkpoint::{load_exact, save_tensors, tensors_of};
use crate::init::seeded_var_builder;
use crate::ops::resize_bilinear;
use crate::{Error, Model, Normalise, Result};

/// A pixel is lesion where its logit is at least this (probability ≥ 0.5).
pub const LESION_LOGIT: f32 = 0.0;

/// The binary mask (1 = lesion) of a logit map at logit threshold `at` ([`LESION_LOGIT`] for
/// probability 0.5; [`crate::checkpoint::format::logit_of`] for others).
pub fn mask_of_logits(logits: &[f32], at: f32) -> Vec<u8> {
    logits.iter().map(|&l| u8::from(l >= at)).collect()
}

/// A borrowed grey image: `height x width` pixels, row by row, in [0, 1].
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pixels: &'a [f32],
    height: usize,
    width: usize,
}

impl<'a> Image<'a> {
    /// An image of `pixels`, which must hold `height * width` finite values (both positive).
    pub fn new(pixels: &'a [f32], height: usize, width: usize) -> Result<Self> {
        if height == 0 || width == 0 || pixels.len() != height * width {
            return Err(Error::Invalid(format!(
                "an image of {height} x {width} pixels needs {} values, got {}",
                height * width,
                pixels.len()
            )));
        }
        if let Some(i) = pixels.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "image pixel {i} is {}: pixels must be finite",
                pixels[i]
            )));
        }
        Ok(Self {
            pixels,
            height,
            width,
        })
    }

    /// The pixels, row by row.
    pub fn pixels(&self) -> &'a [f32] {
        self.pixels
    }

    /// `(height, width)`.
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }
}

/// Test-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tta {
    /// One forward pass per batch.
    #[default]
    None,
    /// The mean of the logits of the image and of its left-right mirror (mirrored back): two
    /// passes per batch.
    Flip,
}

/// The model's logits for a batch `x` under `tta`.
fn forward(model: &Model, x: &Tensor, tta: Tta) -> Result<Tensor> {
    let y = model.forward_t(x, false)?;
    match tta {
        Tta::None => Ok(y),
        Tta::Flip => {
            let w = x.dim(3)?;
            let reversed: Vec<u32> = (0..w as u32).rev().collect();
            let idx = Tensor::new(reversed.as_slice(), x.device())?;
            let mirrored = model.forward_t(&x.index_select(&idx, 3)?, false)?;
            Ok(((y + mirrored.index_select(&idx, 3)?)? * 0.5)?)
        }
    }
}

/// Logits of `model` (eval mode) for every image, each at its own size: images are resized to
/// `input x input`, predicted `batch` at a time (under `tta`), and their logit maps resized
/// back. The one implementation of the inference pipeline (validation in training uses it too).
pub fn predict_logits(
    model: &Model,
    images: &[Image],
    (input, batch): (usize, usize),
    tta: Tta,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(batch.max(1)) {
        let inputs = chunk
            .iter()
            .map(|im| {
                let x = Tensor::from_slice(im.pixels, (1, 1, im.height, im.width), device)?;
                if im.size() == (input, input) {
                    Ok(x)
                } else {
                    resize_bilinear(&x, (input, input))
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let logits = forward(model, &Tensor::cat(&inputs, 0)?, tta)?;
        for (i, im) in chunk.iter().enumerate() {
            let map = logits.narrow(0, i, 1)?;
            let map = if im.size() == (input, input) {
                map
            } else {
                resize_bilinear(&map, im.size())?
            };
            out.push(map.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    Ok(out)
}

/// A trained model ready to segment: the network, its name and its input side.
pub struct Segmenter {
    model: Model,
    varmap: VarMap,
    meta: InferenceMeta,
    batch: usize,
    tta: Tta,
    device: Device,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("meta", &self.meta)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Segmenter {
    /// Slices per forward pass unless [`Segmenter::with_batch`] says otherwise.
    pub const DEFAULT_BATCH: usize = 4;

    /// Loads a checkpoint written by `d2a train` on the CPU: the model and input side come from
    /// its metadata ([`crate::checkpoint::format`]).
    pub fn from_checkpoint(path: &Path) -> Result<Self> {
        Self::load(path, None, None, &Device::Cpu)
    }

    /// Loads a checkpoint on `device`; `model` and `input_size`, where given, replace what its
    /// metadata says (for files without it). The weights must fit the model exactly; training
    /// checkpoints (`last.safetensors`, with optimiser moments) load too.
    pub fn load(
        path: &Path,
        model: Option<&str>,
        input_size: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let segmenter = Self::fresh(InferenceMeta::read(path, model, input_size)?, device)?;
        load_exact(&segmenter.varmap, path, "", &[OPTIM_PREFIX])?;
        Ok(segmenter)
    }

    /// A segmenter of freshly initialised weights (seed 0), for tests and examples.
    pub fn untrained(model: &str, input_size: usize) -> Result<Self> {
        Self::fresh(InferenceMeta::new(model, input_size)?, &Device::Cpu)
    }

    /// The model `meta` names, with seed-0 weights, on `device`.
    fn fresh(meta: InferenceMeta, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let model = Model::new(
            &meta.config,
            seeded_var_builder(&varmap, 0, DType::F32, device),
        )?;
        Ok(Self {
            model,
            varmap,
            meta,
            batch: Self::DEFAULT_BATCH,
            tta: Tta::None,
            device: device.clone(),
        })
    }

    /// Saves the weights with the metadata [`Segmenter::from_checkpoint`] reads back.
    pub fn save(&self, path: &Path) -> Result<()> {
        save_tensors(&tensors_of(&self.varmap)?, &self.meta.to_metadata(), path)
    }

    /// Predicts `batch` slices per forward pass (at least 1).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Predicts under test-time augmentation `tta`.
    pub fn with_tta(mut self, tta: Tta) -> Self {
        self.tta = tta;
        self
    }

    /// The test-time augmentation in force.
    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// The network.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.meta.model
    }

    /// The side of the square model input.
    pub fn input_size(&self) -> usize {
        self.meta.input_size
    }

    /// Uses lesion probability threshold `p` (strictly between 0 and 1) instead of the one the
    /// checkpoint records.
    pub fn with_threshold(mut self, p: f64) -> Result<Self> {
        if !crate::checkpoint::format::is_threshold(p) {
            return Err(Error::Invalid(format!(
                "threshold {p} is not a probability strictly between 0 and 1"
            )));
        }
        self.meta.threshold = Some(p);
        Ok(self)
    }

    /// The lesion probability threshold in force: the checkpoint's (or the override), else 0.5.
    pub fn threshold(&self) -> f64 {
        self.meta.threshold.unwrap_or(0.5)
    }

    /// [`Segmenter::threshold`] as a logit.
    pub fn threshold_logit(&self) -> f32 {
        match self.meta.threshold {
            Some(p) => crate::checkpoint::format::logit_of(p),
            None => LESION_LOGIT,
        }
    }

    /// The normalisation the checkpoint was trained with (applied by [`Segmenter::logits`]).
    pub fn normalise(&self) -> Normalise {
        self.meta.normalise
    }

    /// Logit maps of `images`, each at its image's size (normalised first as in training).
    pub fn logits(&self, images: &[Image]) -> Result<Vec<Vec<f32>>> {
        let sizes = (self.meta.input_size, self.batch);
        if self.meta.normalise == Normalise::None {
            return predict_logits(&self.model, images, sizes, self.tta, &self.device);
        }
        let normalised: Vec<Vec<f32>> = images
            .iter()
            .map(|im| {
                let mut px = im.pixels.to_vec();
                self.meta.normalise.apply(&mut px, im.size());
                px
            })
            .collect();
        let images = normalised
            .iter()
            .zip(images)
            .map(|(px, im)| Image::new(px, im.height, im.width))
            .collect::<Result<Vec<_>>>()?;
        predict_logits(&self.model, &images, sizes, self.tta, &self.device)
    }

    /// Masks (1 = lesion) of `images`, each at its image's size.
    pub fn segment_all(&self, images: &[Image]) -> Result<Vec<Vec<u8>>> {
        let at = self.threshold_logit();
        Ok(self
            .logits(images)?
            .iter()
            .map(|l| mask_of_logits(l, at))
            .collect())
    }

    /// The mask (1 = lesion) of one image, at its size.
    pub fn segment(&self, image: Image) -> Result<Vec<u8>> {
        Ok(self.segment_all(&[image])?.remove(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirrored(px: &[f32], w: usize) -> Vec<f32> {
        px.chunks(w)
            .flat_map(|row| row.iter().rev().copied())
            .collect()
    }

    /// Flip TTA is the mean of the plain logits and the mirrored image's logits mirrored back,
    /// on a non-square image that is resized on the way.
    #[test]
    fn flip_tta_averages_the_mirrored_prediction() -> Result<()> {
        let (h, w) = (20, 28);
        let px: Vec<f32> = (0..h * w)
            .map(|i| ((i * 37 % 101) as f32 / 101.0).sin().abs())
            .collect();
        let plain = Segmenter::untrained("d2a-vgg-tiny", 32)?;
        let a = plain.logits(&[Image::new(&px, h, w)?])?.remove(0);
        let m = mirrored(&px, w);
        let b = mirrored(&plain.logits(&[Image::new(&m, h, w)?])?.remove(0), w);
        let tta = plain.with_tta(Tta::Flip);
        let got = tta.logits(&[Image::new(&px, h, w)?])?.remove(0);
        let worst = got
            .iter()
            .zip(a.iter().zip(&b))
            .map(|(g, (a, b))| (g - 0.5 * (a + b)).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{worst}");
        assert!(a.iter().zip(&got).any(|(a, g)| (a - g).abs() > 1e-6));
        Ok(())
    }

    #[test]
    fn images_must_fit_their_size_and_be_finite() {
        assert!(Image::new(&[0.0; 5], 2, 3).is_err());
        assert!(Image::new(&[0.0, f32::NAN], 1, 2).is_err());
        assert!(Image::new(&[], 0, 0).is_err());
        assert!(Image::new(&[0.5; 6], 2, 3).is_ok());
    }
}
