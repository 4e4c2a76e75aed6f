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
use crate::{Error, Model, Result};

/// A pixel is lesion where its logit is at least this (probability ≥ 0.5).
pub const LESION_LOGIT: f32 = 0.0;

/// The binary mask (1 = lesion) of a logit map.
pub fn mask_of_logits(logits: &[f32]) -> Vec<u8> {
    logits
        .iter()
        .map(|&l| u8::from(l >= LESION_LOGIT))
        .collect()
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

/// Logits of `model` (eval mode) for every image, each at its own size: images are resized to
/// `input x input`, predicted `batch` at a time, and their logit maps resized back. The one
/// implementation of the inference pipeline (validation in training uses it too).
pub fn predict_logits(
    model: &Model,
    images: &[Image],
    input: usize,
    batch: usize,
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
        let logits = model.forward_t(&Tensor::cat(&inputs, 0)?, false)?;
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
        let meta = InferenceMeta::read(path, model, input_size)?;
        let varmap = VarMap::new();
        let net = Model::new(
            &meta.config,
            seeded_var_builder(&varmap, 0, DType::F32, device),
        )?;
        load_exact(&varmap, path, "", &[OPTIM_PREFIX])?;
        Ok(Self {
            model: net,
            varmap,
            meta,
            batch: Self::DEFAULT_BATCH,
            device: device.clone(),
        })
    }

    /// A segmenter of freshly initialised weights (seed 0), for tests and examples.
    pub fn untrained(model: &str, input_size: usize) -> Result<Self> {
        let meta = InferenceMeta::new(model, input_size)?;
        let varmap = VarMap::new();
        let device = Device::Cpu;
        let net = Model::new(
            &meta.config,
            seeded_var_builder(&varmap, 0, DType::F32, &device),
        )?;
        Ok(Self {
            model: net,
            varmap,
            meta,
            batch: Self::DEFAULT_BATCH,
            device,
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

    /// Logit maps of `images`, each at its image's size.
    pub fn logits(&self, images: &[Image]) -> Result<Vec<Vec<f32>>> {
        predict_logits(
            &self.model,
            images,
            self.meta.input_size,
            self.batch,
            &self.device,
        )
    }

    /// Masks (1 = lesion) of `images`, each at its image's size.
    pub fn segment_all(&self, images: &[Image]) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .logits(images)?
            .iter()
            .map(|l| mask_of_logits(l))
            .collect())
    }

    /// The mask (1 = lesion) of one image, at its size.
    pub fn segment(&self, image: Image) -> Result<Vec<u8>> {
        Ok(self.segment_all(&[image])?.remove(0))
    }
}
