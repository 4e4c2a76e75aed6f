//! Loading and saving weights with an account of every key.
//!
//! A model is built over a [`VarMap`] (fresh weights), then [`load`] copies a checkpoint's
//! tensors into it by name and reports what did not fit: keys the model wants that the file lacks,
//! keys the file has that the model does not use, and shape mismatches. PyTorch `.pth` files
//! (torchvision `state_dict`s) and safetensors are both read.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::{Error, Result};

pub mod format;

/// What a load did, key by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Keys copied into the model.
    pub loaded: usize,
    /// Model keys the file lacks (they keep their fresh values).
    pub missing: Vec<String>,
    /// File keys the model does not use, other than those the caller said to ignore.
    pub unexpected: Vec<String>,
    /// `(key, model shape, file shape)` for keys present in both with different shapes.
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl LoadReport {
    /// Whether every model key was loaded and every file key used.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} loaded", self.loaded)?;
        let list = |keys: &[String]| {
            let shown: Vec<&str> = keys.iter().take(8).map(String::as_str).collect();
            let more = keys.len().saturating_sub(8);
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        if !self.missing.is_empty() {
            write!(
                f,
                "; {} missing: {}",
                self.missing.len(),
                list(&self.missing)
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "; {} unexpected: {}",
                self.unexpected.len(),
                list(&self.unexpected)
            )?;
        }
        for (key, model, file) in self.mismatched.iter().take(8) {
            write!(f, "; {key}: model {model:?} vs file {file:?}")?;
        }
        Ok(())
    }
}

/// The trainable variables of `varmap`, sorted by name: everything but BatchNorm's running
/// statistics, which training updates without gradients.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    let Ok(data) = varmap.data().lock() else {
        return Vec::new();
    };
    let mut vars: Vec<(String, candle_core::Var)> = data
        .iter()
        .filter(|(k, _)| !k.ends_with("running_mean") && !k.ends_with("running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The kinds of checkpoint file, told apart by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    /// PyTorch's zip container (`torch.save` since 1.6).
    TorchZip,
    /// A bare pickle (older `torch.save`).
    Pickle,
    Unknown,
}

impl Format {
    fn sniff(path: &Path) -> Result<Self> {
        let mut file = open_regular(path)?;
        let mut head = [0u8; 9];
        let n = std::io::Read::read(&mut file, &mut head).map_err(|source| Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let head = &head[..n];
        // safetensors: a little-endian u64 header length, then the JSON header's `{`.
        Ok(if n == 9 && head[8] == b'{' {
            Self::Safetensors
        } else if head.starts_with(b"PK\x03\x04") {
            Self::TorchZip
        } else if head.first() == Some(&0x80) {
            Self::Pickle
        } else {
            Self::Unknown
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::TorchZip => "a PyTorch checkpoint (zip)",
            Self::Pickle => "a PyTorch pickle",
            Self::Unknown => "neither safetensors nor a PyTorch checkpoint",
        }
    }
}

/// Opens `path` if it is a regular file: a FIFO or device would block or never end, so it is
/// refused before it is opened.
fn open_regular(path: &Path) -> Result<std::fs::File> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if !std::fs::metadata(path).map_err(io("read"))?.is_file() {
        return Err(Error::Invalid(format!(
            "{} is not a regular file (a folder, FIFO, socket or device)",
            path.display()
        )));
    }
    std::fs::File::open(path).map_err(io("open"))
}

/// Reads every tensor of a `.safetensors` or PyTorch (`.pth`, `.pt`, `.bin`) file, by name. The
/// file's first bytes must match its extension: a PyTorch file named `.safetensors` (or the
/// reverse) is refused, saying what it holds.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let wrap = |source| Error::ReadCheckpoint {
        path: path.to_path_buf(),
        source,
    };
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let found = Format::sniff(path)?;
    let fits = match found {
        Format::Safetensors => is_safetensors,
        Format::TorchZip | Format::Pickle => !is_safetensors,
        Format::Unknown => false,
    };
    if !fits {
        return Err(Error::Invalid(format!(
            "{} is {}; expected {} by its extension",
            path.display(),
            found.name(),
            if is_safetensors {
                "safetensors"
            } else {
                "a PyTorch checkpoint"
            }
        )));
    }
    if is_safetensors {
        candle_core::safetensors::load(path, &Device::Cpu).map_err(wrap)
    } else {
        Ok(candle_core::pickle::read_all(path)
            .map_err(wrap)?
            .into_iter()
            .collect())
    }
}

/// Copies the tensors of `path` into `varmap`.
///
/// A file key `k` is looked up in the model as `prefix + k` (e.g. prefix `"encoder."` to load
/// an ImageNet backbone into the D2A U-Net). File keys starting with any of `ignore` (e.g.
/// `"fc."`) and BatchNorm's `num_batches_tracked` counters are skipped silently. Model keys
/// outside `prefix` are not reported missing. Shape mismatches are reported and not copied.
pub fn load(varmap: &VarMap, path: &Path, prefix: &str, ignore: &[&str]) -> Result<LoadReport> {
    let file = read_tensors(path)?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("the model's VarMap lock is poisoned".into()))?;
    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    let mut model_keys: Vec<&String> = vars.keys().filter(|k| k.starts_with(prefix)).collect();
    model_keys.sort();
    for key in model_keys {
        let var = &vars[key];
        let file_key = &key[prefix.len()..];
        let Some(t) = file.get(file_key) else {
            report.missing.push(key.clone());
            continue;
        };
        used.insert(file_key.to_string());
        if t.dims() != var.dims() {
            report
                .mismatched
                .push((key.clone(), var.dims().to_vec(), t.dims().to_vec()));
            continue;
        }
        let t = t.to_dtype(var.dtype())?;
        // t·0 is 0 where t is finite and NaN where it is not: one sum tells.
        let poisoned = t.dtype().is_float()
            && !t
                .affine(0.0, 0.0)?
                .sum_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?
                .is_finite();
        if poisoned {
            return Err(Error::Invalid(format!(
                "{}: tensor {file_key} holds NaN or infinite values",
                path.display()
            )));
        }
        var.set(&t.to_device(var.device())?)?;
        report.loaded += 1;
    }
    let mut unexpected: Vec<String> = file
        .keys()
        .filter(|k| {
            !used.contains(*k)
                && !k.ends_with("num_batches_tracked")
                && !ignore.iter().any(|p| k.starts_with(p))
        })
        .cloned()
        .collect();
    unexpected.sort();
    report.unexpected = unexpected;
    Ok(report)
}

/// Loads `path` and fails unless every model key under `prefix` was loaded with its shape
/// (unexpected keys are allowed only where `ignore` covers them).
pub fn load_exact(
    varmap: &VarMap,
    path: &Path,
    prefix: &str,
    ignore: &[&str],
) -> Result<LoadReport> {
    let report = load(varmap, path, prefix, ignore)?;
    if report.is_exact() {
        Ok(report)
    } else {
        Err(Error::CheckpointMismatch {
            path: path.to_path_buf(),
            report: Box::new(report),
        })
    }
}

/// Every variable of `varmap` (weights and BatchNorm statistics), sorted by name.
pub fn tensors_of(varmap: &VarMap) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = varmap
        .data()
        .lock()
        .map_err(|_| Error::Invalid("the model's VarMap lock is poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect::<Vec<_>>();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// Saves every variable of `varmap` (weights and BatchNorm statistics) as safetensors, through a
/// temporary file so that an interrupted save never leaves a truncated checkpoint.
pub fn save(varmap: &VarMap, path: &Path) -> Result<()> {
    save_tensors(&tensors_of(varmap)?, &HashMap::new(), path)
}

/// Writes `tensors` and string `metadata` as one safetensors file, atomically: to a temporary
/// file beside `path` (removed if anything fails), then renamed over `path`.
pub fn save_tensors(
    tensors: &[(String, Tensor)],
    metadata: &HashMap<String, String>,
    path: &Path,
) -> Result<()> {
    let cpu = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?)))
        .collect::<Result<Vec<_>>>()?;
    let metadata = (!metadata.is_empty()).then(|| metadata.clone());
    let bytes = safetensors::serialize(cpu, metadata).map_err(|e| {
        Error::Invalid(format!(
            "cannot serialise checkpoint {}: {e}",
            path.display()
        ))
    })?;
    write_atomic(path, &bytes)
}

/// Removes the temporaries [`write_atomic`] left in `dir` when a process was killed mid-write
/// (`.d2a-*.partial`, older than a minute: a live writer's file is younger); returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60);
        if name.starts_with(".d2a-") && name.ends_with(".partial") && old {
            std::fs::remove_file(entry.path()).map_err(|source| Error::Io {
                op: "remove the stale temporary",
                path: entry.path(),
                source,
            })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same folder, synced, then
/// renamed over `path`, so that a reader (or a run killed half-way) never sees a partial file
/// and a failed write leaves nothing behind. The one atomic file write of d2a: the other
/// crates call this one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let io = |op, p: &Path| {
        let path = p.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".d2a-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(io("create a temporary file in", dir))?;
    // A temporary file is created private (0600); the output gets a plain file's mode.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io("write", path))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("write", path))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .map_err(io("write", path))?;
    Ok(())
}

/// The string metadata of a safetensors file's header (empty if it has none), read without
/// loading the tensors.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let wrap = |e: String| Error::ReadCheckpoint {
        path: path.to_path_buf(),
        source: candle_core::Error::Msg(e),
    };
    let found = Format::sniff(path)?;
    if found != Format::Safetensors {
        return Err(Error::Invalid(format!(
            "{} is {}, not safetensors",
            path.display(),
            found.name()
        )));
    }
    let mut file = open_regular(path)?;
    let mut len = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut len)
        .map_err(|e| wrap(format!("no safetensors header ({e})")))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(wrap(format!("a header of {len} bytes is not safetensors")));
    }
    let mut header = vec![0u8; len as usize];
    std::io::Read::read_exact(&mut file, &mut header)
        .map_err(|e| wrap(format!("truncated safetensors header ({e})")))?;
    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| wrap(format!("corrupt safetensors header ({e})")))?;
    Ok(value
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}
