//! Inference at a model's input size, scored or returned at each slice's own size.

use candle_core::{Device, Result, Tensor};
use d2a_data::Slice;
use d2a_data::slice::resize_bilinear;
use d2a_metrics::{Confusion, Report};
use d2a_model::{Model, ModelConfig};

/// A slice's name in reports: the file stem of a 2-D file, `<stem>_<index>` within a volume.
pub fn slice_name(slice: &Slice) -> String {
    let p = &slice.provenance;
    let stem = p
        .file
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = stem
        .trim_end_matches(".gz")
        .rsplit_once('.')
        .map_or(stem.as_str(), |(s, _)| s)
        .to_string();
    if d2a_data::readers::is_nifti(&p.file) {
        format!("{stem}_{:03}", p.slice_idx)
    } else {
        stem
    }
}

/// Logits of `model` (eval mode) for every slice: each is resized to `input x input`, predicted
/// in batches of `batch`, and its logit map resized back (bilinear) to the slice's own size.
pub fn predict_logits(
    model: &Model,
    slices: &[Slice],
    input: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(slices.len());
    for chunk in slices.chunks(batch.max(1)) {
        let mut pixels = Vec::with_capacity(chunk.len() * input * input);
        for s in chunk {
            if s.height == input && s.width == input {
                pixels.extend_from_slice(&s.image);
            } else {
                pixels.extend(resize_bilinear(
                    &s.image,
                    (s.height, s.width),
                    (input, input),
                ));
            }
        }
        let x = Tensor::from_vec(pixels, (chunk.len(), 1, input, input), device)?;
        let logits = model
            .forward_t(&x, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (s, map) in chunk.iter().zip(logits.chunks_exact(input * input)) {
            if s.height == input && s.width == input {
                out.push(map.to_vec());
            } else {
                out.push(resize_bilinear(map, (input, input), (s.height, s.width)));
            }
        }
    }
    Ok(out)
}

/// The paper's metrics of `model` on `slices`, predicted at `input` and scored at each slice's
/// own size (lesion where the logit is ≥ 0, i.e. probability ≥ 0.5).
pub fn evaluate_slices(
    model: &Model,
    slices: &[Slice],
    input: usize,
    batch: usize,
    device: &Device,
) -> Result<Report> {
    let logits = predict_logits(model, slices, input, batch, device)?;
    let named = slices
        .iter()
        .zip(&logits)
        .map(|(s, l)| {
            let truth: Vec<bool> = s.mask.iter().map(|&m| m != 0).collect();
            let counts =
                Confusion::from_scores(l, 0.0, &truth).map_err(candle_core::Error::wrap)?;
            Ok((slice_name(s), counts))
        })
        .collect::<Result<Vec<_>>>()?;
    Report::new(named).map_err(candle_core::Error::wrap)
}

/// A model loaded for inference: the network, its preset name and its input side.
pub struct LoadedModel {
    /// The network (eval mode is chosen per call).
    pub model: Model,
    /// Preset name.
    pub name: String,
    /// Input side the model was trained for.
    pub input: usize,
}

/// Builds the model a checkpoint was trained as (preset and input side from its metadata, or
/// from `model` / `input` where given; these win) and loads its weights, which must fit exactly.
/// Training checkpoints (`last.safetensors`, with optimiser moments) load too.
pub fn load_for_inference(
    checkpoint: &std::path::Path,
    model: Option<&str>,
    input: Option<usize>,
    device: &Device,
) -> std::result::Result<LoadedModel, Box<dyn std::error::Error + Send + Sync>> {
    use crate::run::{INPUT_SIZE_KEY, MODEL_KEY};
    let meta = d2a_model::checkpoint::read_metadata(checkpoint)?;
    let name = match model.or(meta.get(MODEL_KEY).map(String::as_str)) {
        Some(n) => n.to_string(),
        None => {
            return Err(format!(
                "{} does not say which model it holds; pass --model ({})",
                checkpoint.display(),
                ModelConfig::NAMES.join(", ")
            )
            .into());
        }
    };
    let cfg = ModelConfig::by_name(&name).ok_or_else(|| {
        format!(
            "unknown model {name:?}; known: {}",
            ModelConfig::NAMES.join(", ")
        )
    })?;
    let input = match input.or_else(|| meta.get(INPUT_SIZE_KEY).and_then(|s| s.parse().ok())) {
        Some(s) if s > 0 && s % cfg.size_multiple() == 0 => s,
        Some(s) => {
            return Err(format!(
                "input size {s} is not a positive multiple of {} for {name}",
                cfg.size_multiple()
            )
            .into());
        }
        None => 512,
    };
    let varmap = candle_nn::VarMap::new();
    let net = Model::new(
        &cfg,
        d2a_model::init::seeded_var_builder(&varmap, 0, candle_core::DType::F32, device),
    )?;
    d2a_model::checkpoint::load_exact(&varmap, checkpoint, "", &["optim."])?;
    Ok(LoadedModel {
        model: net,
        name,
        input,
    })
}
