//! Scoring a model on labelled slices: predictions through d2a-model's inference pipeline
//! ([`d2a_model::predict_logits`], the one `d2a predict` uses), counted at each slice's own
//! size, a batch at a time so that the logits of a large dataset are never all in memory.

use candle_core::Device;
use d2a_data::readers::{file_stem, is_nifti};
use d2a_data::{Slice, SliceView};
use d2a_metrics::{Confusion, Report};
use d2a_model::{Image, LESION_LOGIT, Model, Tta, predict_logits};

use crate::Result;

/// A slice's name in reports: the file stem of a 2-D file, `<stem>_<index>` within a volume.
pub fn slice_name(slice: &Slice) -> String {
    let p = &slice.provenance;
    if is_nifti(&p.file) {
        format!("{}_{:03}", file_stem(&p.file), p.slice_idx)
    } else {
        file_stem(&p.file)
    }
}

/// A slice's image as the model crate takes it.
pub fn image_of(slice: &Slice) -> Result<Image<'_>> {
    Ok(Image::new(&slice.image, slice.height, slice.width)?)
}

/// The confusion counts of a logit map against a slice's mask (lesion where the logit is at
/// least [`LESION_LOGIT`]).
pub fn confusion(slice: &Slice, logits: &[f32]) -> Result<Confusion> {
    confusion_at(slice, logits, LESION_LOGIT)
}

/// [`confusion`] at logit threshold `at`.
pub fn confusion_at(slice: &Slice, logits: &[f32], at: f32) -> Result<Confusion> {
    let truth: Vec<bool> = slice.mask.iter().map(|&m| m != 0).collect();
    Ok(Confusion::from_scores(logits, at, &truth)?)
}

/// Calls `each(slice, logits)` for every slice, in order, with the logits of `model` (eval
/// mode) predicted at `input x input` (under `tta`) and resized back to the slice's size;
/// `batch` slices per forward pass. The first error (of the prediction, or of `each`) stops it.
pub fn for_each_prediction<E: From<crate::Error>, S: SliceView>(
    model: &Model,
    slices: &[S],
    (input, batch): (usize, usize),
    tta: Tta,
    device: &Device,
    mut each: impl FnMut(&Slice, Vec<f32>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    for chunk in slices.chunks(batch.max(1)) {
        // Packed slices are unpacked a batch at a time.
        let chunk: Vec<std::borrow::Cow<'_, Slice>> = chunk.iter().map(SliceView::view).collect();
        let images = chunk
            .iter()
            .map(|s| image_of(s))
            .collect::<Result<Vec<_>>>()?;
        let logits = predict_logits(model, &images, (input, batch), tta, device)
            .map_err(crate::Error::from)?;
        for (s, l) in chunk.iter().zip(logits) {
            each(s, l)?;
        }
    }
    Ok(())
}

/// The paper's metrics of `model` on `slices`, predicted at `input` (`batch` at a time) and
/// scored at each slice's own size, lesion where the logit is at least `at`.
pub fn evaluate_slices(
    model: &Model,
    slices: &[Slice],
    (input, batch): (usize, usize),
    at: f32,
    device: &Device,
) -> Result<Report> {
    let mut named = Vec::with_capacity(slices.len());
    for_each_prediction(model, slices, (input, batch), Tta::None, device, |s, l| {
        named.push((slice_name(s), confusion_at(s, &l, at)?));
        Ok::<_, crate::Error>(())
    })?;
    Ok(Report::new(named)?)
}
