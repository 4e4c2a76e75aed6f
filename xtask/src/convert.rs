//! `cargo xtask convert-weights`: ImageNet ResNeXt-50 (32x4d) or ResNet-101 weights, from the
//! Hugging Face Hub (`timm/*.tv_in1k`, the standard cache honoured) or a torchvision `.pth`, to
//! `weights/<name>.safetensors` with torchvision's names, `fc` dropped, every encoder key checked
//! for presence and shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use d2a_model::checkpoint::{read_tensors, save_tensors};
use d2a_model::encoders::{ResNeXt, ResNeXtConfig};

use crate::download::digests;

/// The architectures there are weights for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// ResNeXt-50 (32x4d): the D2A U-Net's encoder.
    #[value(name = "resnext50_32x4d")]
    ResNeXt50,
    /// ResNet-101: the FCN-8s and DeepLab v3 backbones.
    #[value(name = "resnet101")]
    ResNet101,
    /// The tiny ResNeXt of `shared/fixtures` (one block per stage, 8 groups of 4): for tests.
    #[value(name = "resnext_tiny")]
    ResNeXtTiny,
}

impl Arch {
    /// torchvision's model name, also the output's file stem.
    pub fn name(self) -> &'static str {
        match self {
            Self::ResNeXt50 => "resnext50_32x4d",
            Self::ResNet101 => "resnet101",
            Self::ResNeXtTiny => "resnext_tiny",
        }
    }

    /// The Hub repository of its torchvision ImageNet weights (timm's copy).
    pub fn repo(self) -> Option<&'static str> {
        match self {
            Self::ResNeXt50 => Some("timm/resnext50_32x4d.tv_in1k"),
            Self::ResNet101 => Some("timm/resnet101.tv_in1k"),
            Self::ResNeXtTiny => None,
        }
    }

    fn config(self) -> ResNeXtConfig {
        match self {
            Self::ResNeXt50 => ResNeXtConfig::resnext50_32x4d(),
            Self::ResNet101 => ResNeXtConfig::resnet101(),
            Self::ResNeXtTiny => ResNeXtConfig::tiny(),
        }
    }
}

/// Arguments of `cargo xtask convert-weights`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Which weights.
    #[arg(long, value_enum, default_value = "resnext50_32x4d")]
    pub model: Arch,
    /// A torchvision state dict (`.pth`) or safetensors file instead of the Hub.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// A Hub repository instead of the default (timm's copy of torchvision's weights); its
    /// `model.safetensors` is used.
    #[arg(long, value_name = "ID")]
    pub repo: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "weights", value_name = "DIR")]
    pub out: PathBuf,
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The output file.
    pub path: PathBuf,
    /// Tensors written (weights, BatchNorm statistics and counters).
    pub tensors: usize,
    /// The output's SHA-256, hex.
    pub sha256: String,
}

impl Args {
    /// Finds the source, converts it, prints the output's path, tensor count and SHA-256.
    pub fn run(self) -> Result<()> {
        let source = match (&self.from, &self.repo, self.model.repo()) {
            (Some(file), _, _) => file.clone(),
            (None, Some(repo), _) => hub_file(repo)?,
            (None, None, Some(repo)) => hub_file(repo)?,
            (None, None, None) => bail!(
                "{} has no Hub repository: pass --from FILE or --repo ID",
                self.model.name()
            ),
        };
        let out = self.out.join(format!("{}.safetensors", self.model.name()));
        let done = convert(self.model, &source, &out)?;
        println!(
            "wrote {}: {} tensors, sha256 {}",
            done.path.display(),
            done.tensors,
            done.sha256
        );
        Ok(())
    }
}

/// `model.safetensors` of a Hub repository, from the cache (`HF_HOME`) when it is there, else
/// downloaded into it (`HF_ENDPOINT` honoured).
fn hub_file(repo: &str) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("cannot set up the Hugging Face Hub client")?;
    api.model(repo.to_string())
        .get("model.safetensors")
        .with_context(|| {
            format!(
                "cannot get model.safetensors of {repo} from the Hugging Face Hub (or its cache): \
                 without network, pass a torchvision .pth with --from FILE"
            )
        })
}

/// Checks `source` against the encoder of `arch` and writes the encoder's tensors to `out`.
pub fn convert(arch: Arch, source: &Path, out: &Path) -> Result<Converted> {
    let file = read_tensors(source).with_context(|| format!("reading {}", source.display()))?;
    let wanted = expected(arch)?;
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (key, shape) in &wanted {
        match file.get(key) {
            None => missing.push(key.clone()),
            Some(t) if t.dims() != shape.as_slice() => {
                mismatched.push(format!(
                    "{key}: expected {shape:?}, file has {:?}",
                    t.dims()
                ));
            }
            Some(t) => tensors.push((key.clone(), t.to_dtype(DType::F32)?)),
        }
    }
    let mut unexpected = Vec::new();
    for (key, t) in &file {
        if wanted.contains_key(key) || key.starts_with("fc.") {
            continue;
        }
        // BatchNorm's step counters (int64 in torchvision files) travel unchanged.
        match key.strip_suffix("num_batches_tracked") {
            Some(bn) if wanted.contains_key(&format!("{bn}running_mean")) => {
                tensors.push((key.clone(), t.clone()));
            }
            _ => unexpected.push(key.clone()),
        }
    }
    if !(missing.is_empty() && mismatched.is_empty() && unexpected.is_empty()) {
        missing.sort();
        unexpected.sort();
        let show = |v: &[String]| {
            let head: Vec<&str> = v.iter().take(10).map(String::as_str).collect();
            match v.len() {
                0 => "none".to_string(),
                n if n > 10 => format!("{} and {} more", head.join(", "), n - 10),
                _ => head.join(", "),
            }
        };
        bail!(
            "{} is not a torchvision {} state dict: missing {}; mis-shaped {}; unexpected {}",
            source.display(),
            arch.name(),
            show(&missing),
            show(&mismatched),
            show(&unexpected)
        )
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let metadata = HashMap::from([
        ("d2a.weights".to_string(), arch.name().to_string()),
        (
            "d2a.source".to_string(),
            source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ]);
    save_tensors(&tensors, &metadata, out)?;
    let (_, sha256) = digests(out)?;
    Ok(Converted {
        path: out.to_path_buf(),
        tensors: tensors.len(),
        sha256,
    })
}

/// Every key of the encoder of `arch`, with its shape (weights and BatchNorm statistics).
fn expected(arch: Arch) -> Result<HashMap<String, Vec<usize>>> {
    let varmap = VarMap::new();
    ResNeXt::new(
        &arch.config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("the VarMap lock is poisoned"))?;
    Ok(data
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect())
}
