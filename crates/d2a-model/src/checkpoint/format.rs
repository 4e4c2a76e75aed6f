//! The d2a checkpoint format: one safetensors file whose tensors are the model's variables and
//! whose string metadata says how to use them. This module owns every key.
//!
//! | key | kind | written by | meaning |
//! |---|---|---|---|
//! | `<variable name>` | tensor | every checkpoint | weights and BatchNorm running statistics, PyTorch names |
//! | `optim.m.<variable>`, `optim.v.<variable>` | tensor | `last.safetensors` | Adam's first and second moments |
//! | `d2a.model` | metadata | every checkpoint | the model name ([`ModelConfig::by_name`]) |
//! | `d2a.input_size` | metadata | every checkpoint | the side of the square model input inference resizes to |
//! | `d2a.threshold` | metadata | `best.safetensors` of `train --threshold-on-val` | the lesion probability threshold chosen on validation (absent: 0.5) |
//! | `d2a.normalise` | metadata | checkpoints of runs with `--normalise` | the per-image intensity normalisation training applied (absent: none) |
//! | `d2a.train_state` | metadata | `last.safetensors` | d2a-train's `TrainState` as JSON (epoch, Adam step, learning rate, schedule, history) |
//!
//! A checkpoint of `d2a train` is read for inference with [`InferenceMeta::read`]; a missing or
//! unparsable value is an error naming the file and the key, never a default. Files without the
//! `d2a.` keys (converted ImageNet weights, other tools' safetensors) load with
//! [`load_exact`](super::load_exact) when the model name and input side are given.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{Error, ModelConfig, Result};

/// Metadata key: the model name.
pub const MODEL: &str = "d2a.model";
/// Metadata key: the side of the square model input.
pub const INPUT_SIZE: &str = "d2a.input_size";
/// Metadata key: the lesion probability threshold chosen on validation data.
pub const THRESHOLD: &str = "d2a.threshold";
/// Metadata key: the per-image intensity normalisation ([`crate::Normalise`]).
pub const NORMALISE: &str = "d2a.normalise";
/// Metadata key: the training state (JSON) of a resumable checkpoint.
pub const TRAIN_STATE: &str = "d2a.train_state";
/// Prefix of every optimiser tensor; inference ignores these.
pub const OPTIM_PREFIX: &str = "optim.";
/// Prefixes of Adam's first and second moments, each followed by the variable's name.
pub const MOMENT_PREFIXES: [&str; 2] = ["optim.m.", "optim.v."];

/// The largest model input side d2a accepts (from a checkpoint or a flag): far above CT's 512,
/// far below what would exhaust memory or overflow a count.
pub const MAX_INPUT_SIDE: usize = 16384;

/// What inference needs to know about a checkpoint: which model it holds and the input side.
#[derive(Debug, Clone, PartialEq)]
pub struct InferenceMeta {
    /// The model name ([`ModelConfig::by_name`]).
    pub model: String,
    /// The model's parsed configuration.
    pub config: ModelConfig,
    /// The side of the square input the model was trained for.
    pub input_size: usize,
    /// The lesion probability threshold chosen on validation, if one was (else 0.5 applies).
    pub threshold: Option<f64>,
    /// The intensity normalisation training applied to every image.
    pub normalise: crate::Normalise,
}

impl InferenceMeta {
    /// Checks a model name and input side: the name must be known and the side a positive
    /// multiple of the model's size multiple.
    pub fn new(model: &str, input_size: usize) -> Result<Self> {
        let config = ModelConfig::parse(model)?;
        config.check_side("model input side", input_size)?;
        if input_size > MAX_INPUT_SIDE {
            return Err(Error::Invalid(format!(
                "model input side {input_size} is larger than {MAX_INPUT_SIDE}"
            )));
        }
        Ok(Self {
            model: model.to_string(),
            config,
            input_size,
            threshold: None,
            normalise: crate::Normalise::None,
        })
    }

    /// Reads the model name and input side of the checkpoint at `path`. `model` and
    /// `input_size`, where given, replace what the file says (and need not be in it).
    pub fn read(path: &Path, model: Option<&str>, input_size: Option<usize>) -> Result<Self> {
        let metadata = super::read_metadata(path)?;
        let value = |key: &'static str| {
            metadata.get(key).ok_or_else(|| Error::Metadata {
                path: path.to_path_buf(),
                key,
                problem: "is missing (pass the model name and input side explicitly)".into(),
            })
        };
        let model = match model {
            Some(m) => m.to_string(),
            None => value(MODEL)?.clone(),
        };
        let input_size = match input_size {
            Some(s) => s,
            None => {
                let text = value(INPUT_SIZE)?;
                text.parse().map_err(|_| Error::Metadata {
                    path: path.to_path_buf(),
                    key: INPUT_SIZE,
                    problem: format!("is {text:?}, not a whole number"),
                })?
            }
        };
        let mut meta = Self::new(&model, input_size).map_err(|e| Error::Metadata {
            path: path.to_path_buf(),
            key: MODEL,
            problem: e.to_string(),
        })?;
        if let Some(text) = metadata.get(NORMALISE) {
            meta.normalise = text.parse().map_err(|problem| Error::Metadata {
                path: path.to_path_buf(),
                key: NORMALISE,
                problem,
            })?;
        }
        if let Some(text) = metadata.get(THRESHOLD) {
            meta.threshold = Some(parse_threshold(text).map_err(|problem| Error::Metadata {
                path: path.to_path_buf(),
                key: THRESHOLD,
                problem,
            })?);
        }
        Ok(meta)
    }

    /// The metadata entries to write with the weights.
    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            (MODEL.to_string(), self.model.clone()),
            (INPUT_SIZE.to_string(), self.input_size.to_string()),
        ]);
        if let Some(t) = self.threshold {
            m.insert(THRESHOLD.to_string(), t.to_string());
        }
        if self.normalise != crate::Normalise::None {
            m.insert(NORMALISE.to_string(), self.normalise.name().to_string());
        }
        m
    }
}

/// A lesion probability threshold: a number strictly between 0 and 1.
pub fn parse_threshold(text: &str) -> std::result::Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|p| is_threshold(*p))
        .ok_or_else(|| format!("is {text:?}, not a probability strictly between 0 and 1"))
}

/// Whether `p` can be a lesion probability threshold: strictly between 0 and 1.
pub fn is_threshold(p: f64) -> bool {
    p > 0.0 && p < 1.0
}

/// The logit of probability `p`: a pixel is lesion where its logit is at least this.
pub fn logit_of(p: f64) -> f32 {
    (p / (1.0 - p)).ln() as f32
}

/// The training state JSON of the checkpoint at `path`: an error naming the file if it has
/// none (a weights-only checkpoint such as `best.safetensors`).
pub fn read_train_state(path: &Path) -> Result<String> {
    super::read_metadata(path)?
        .remove(TRAIN_STATE)
        .ok_or_else(|| Error::Metadata {
            path: PathBuf::from(path),
            key: TRAIN_STATE,
            problem: "is missing: this is a weights-only checkpoint, which cannot be resumed"
                .into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::save_tensors;

    fn write(dir: &Path, meta: &[(&str, &str)]) -> PathBuf {
        let path = dir.join("c.safetensors");
        let t = candle_core::Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let meta = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        save_tensors(&[("x".into(), t)], &meta, &path).unwrap();
        path
    }

    /// A failed atomic write names the final path (never a temporary) and leaves nothing.
    #[test]
    fn a_failed_atomic_write_names_the_final_path_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-folder").join("report.json");
        let err = crate::checkpoint::write_atomic(&missing, b"{}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no-such-folder") && !text.contains(".partial"),
            "{text}"
        );
        // A folder in the way of the final name: the write fails, its temporary is gone.
        let blocked = dir.path().join("taken");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(crate::checkpoint::write_atomic(&blocked, b"{}").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["taken"], "{names:?}");
        // Outputs are readable by others, as files written directly would be.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let out = dir.path().join("ok.json");
            crate::checkpoint::write_atomic(&out, b"{}").unwrap();
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn reads_what_it_writes_and_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let meta = InferenceMeta::new("d2a-vgg-tiny", 64).unwrap();
        let pairs: Vec<(String, String)> = meta.to_metadata().into_iter().collect();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (&**k, &**v)).collect();
        let path = write(dir.path(), &pairs);
        assert_eq!(InferenceMeta::read(&path, None, None).unwrap(), meta);

        for (meta, expect) in [
            (vec![(MODEL, "d2a-vgg-tiny")], "d2a.input_size is missing"),
            (
                vec![(MODEL, "d2a-vgg-tiny"), (INPUT_SIZE, "big")],
                "d2a.input_size is \"big\", not a whole number",
            ),
            (
                vec![(MODEL, "d2a-vgg-tiny"), (INPUT_SIZE, "65")],
                "multiple of 16",
            ),
            (vec![(MODEL, "nope"), (INPUT_SIZE, "64")], "unknown model"),
        ] {
            let path = write(dir.path(), &meta);
            let err = InferenceMeta::read(&path, None, None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expect) && err.contains("c.safetensors"),
                "{err}"
            );
        }
        // Overrides need nothing from the file.
        let path = write(dir.path(), &[]);
        assert_eq!(
            InferenceMeta::read(&path, Some("d2a-vgg-tiny"), Some(64)).unwrap(),
            meta
        );
        let err = read_train_state(&path).unwrap_err().to_string();
        assert!(err.contains("weights-only"), "{err}");
    }
}
