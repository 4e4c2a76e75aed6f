//! Inference at a model's input size, scored or returned at each slice's own size.

use candle_core::{Device, Result, Tensor};
use d2a_data::Slice;
use d2a_data::slice::resize_bilinear;
use d2a_metrics::{Confusion, Report};
use d2a_model::D2AUNet;

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
    model: &D2AUNet,
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
    model: &D2AUNet,
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
