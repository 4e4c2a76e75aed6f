//! Prepared datasets: slices written once as compact safetensors shards with a manifest, read
//! back in seconds by training.
//!
//! Layout of a prepared folder:
//! - `manifest.json`: [`Manifest`] (format version, options, counts, sources, shards, and each
//!   slice's provenance);
//! - `shard-NNNN.safetensors`: `images` and `masks`, both `u8` `[n, size, size]` (images are
//!   intensities in [0, 1] quantised to 1/255; masks are 0/1).
//!
//! Writing goes to a sibling temporary folder that is renamed into place at the end, so an
//! interrupted `prepare` never leaves a folder that looks complete, and an existing folder is
//! never overwritten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::readers::{Finish, ReadOptions, ReadResult};
use crate::slice::{Provenance, Slice, quantise};
use crate::{Error, Result};

/// The version of the prepared layout this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Slices per shard (about 64 MiB at 512x512).
const SHARD_SLICES: usize = 128;

/// One source file and its size in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// Path as given.
    pub path: PathBuf,
    /// Size in bytes when read.
    pub bytes: u64,
}

/// `manifest.json` of a prepared folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Options the slices were read with.
    pub options: ReadOptions,
    /// Volumes read.
    pub n_volumes: usize,
    /// Slices seen.
    pub n_slices_total: usize,
    /// Slices kept and written.
    pub n_slices_kept: usize,
    /// Source files.
    pub sources: Vec<SourceFile>,
    /// Shard file names, in order, with their slice counts.
    pub shards: Vec<(String, usize)>,
    /// Provenance of every kept slice, in shard order.
    pub slices: Vec<Provenance>,
}

/// Writes `read` to the new folder `out`; fails if `out` exists.
pub fn write(read: &ReadResult, options: &ReadOptions, out: &Path) -> Result<Manifest> {
    if options.size == 0 {
        return Err(Error::Invalid(
            "a prepared dataset needs one slice size: choose a positive size".into(),
        ));
    }
    if out.exists() {
        return Err(Error::Prepared {
            path: out.to_path_buf(),
            reason: "already exists; choose a new folder or remove it".into(),
        });
    }
    let name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} has no folder name", out.display())))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    remove_stale_partials(parent, &name.to_string_lossy())?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
    let result = write_into(read, options, &tmp);
    match result {
        Ok(manifest) => {
            std::fs::rename(&tmp, out).map_err(io_err("rename the finished dataset to", out))?;
            Ok(manifest)
        }
        Err(e) => {
            // Best effort: the temporary folder's name already marks it as incomplete.
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(read: &ReadResult, options: &ReadOptions, dir: &Path) -> Result<Manifest> {
    let size = options.size;
    let mut shards = Vec::new();
    for (k, chunk) in read.slices.chunks(SHARD_SLICES).enumerate() {
        let n = chunk.len();
        let mut images = Vec::with_capacity(n * size * size);
        let mut masks = Vec::with_capacity(n * size * size);
        for s in chunk {
            if (s.height, s.width) != (size, size) {
                return Err(Error::Invalid(format!(
                    "slice from {} is {}x{}, not {size}x{size}",
                    s.provenance.file.display(),
                    s.height,
                    s.width
                )));
            }
            images.extend(s.image.iter().map(|&v| quantise(v)));
            masks.extend_from_slice(&s.mask);
        }
        let file = format!("shard-{k:04}.safetensors");
        let tensors: HashMap<String, Tensor> = [
            (
                "images".to_string(),
                Tensor::from_vec(images, (n, size, size), &Device::Cpu)?,
            ),
            (
                "masks".to_string(),
                Tensor::from_vec(masks, (n, size, size), &Device::Cpu)?,
            ),
        ]
        .into();
        candle_core::safetensors::save(&tensors, dir.join(&file))?;
        shards.push((file, n));
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        options: *options,
        n_volumes: read.n_volumes,
        n_slices_total: read.n_slices_total,
        n_slices_kept: read.slices.len(),
        sources: read
            .sources
            .iter()
            .map(|(path, bytes)| SourceFile {
                path: path.clone(),
                bytes: *bytes,
            })
            .collect(),
        shards,
        slices: read.slices.iter().map(|s| s.provenance.clone()).collect(),
    };
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?;
    // The manifest is written last: a folder without it is never taken for a prepared one.
    let path = dir.join("manifest.json");
    std::fs::write(&path, text).map_err(|source| Error::Io {
        op: "write",
        path,
        source,
    })?;
    Ok(manifest)
}

/// Removes the temporary folders `.NAME.partial-PID` that killed runs of [`write`] left in
/// `parent` (a live run's own folder is never there: each run names its folder by its pid and
/// renames it when done).
fn remove_stale_partials(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.partial-");
    let own = format!("{prefix}{}", std::process::id());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let pid_alive = |pid: &str| Path::new("/proc").join(pid).exists();
        if let Some(pid) = file_name.strip_prefix(&prefix)
            && file_name != own
            && !pid_alive(pid)
        {
            std::fs::remove_dir_all(entry.path()).map_err(|source| Error::Io {
                op: "remove the stale temporary folder",
                path: entry.path(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Whether `dir` looks like a prepared folder (has a manifest).
pub fn is_prepared(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// Reads a prepared folder: its manifest and every slice.
pub fn read(dir: &Path) -> Result<(Manifest, Vec<Slice>)> {
    read_with(dir, &|s| s)
}

/// [`read`], each slice passed through `finish` as soon as it is read.
pub fn read_with<T>(dir: &Path, finish: Finish<T>) -> Result<(Manifest, Vec<T>)> {
    let bad = |path: &Path, reason: String| Error::Prepared {
        path: path.to_path_buf(),
        reason,
    };
    let manifest_path = dir.join("manifest.json");
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut crate::readers::open_regular(&manifest_path)?,
        &mut text,
    )
    .map_err(|source| Error::Io {
        op: "read",
        path: manifest_path.clone(),
        source,
    })?;
    let version: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad(&manifest_path, format!("not valid JSON: {e}")))?;
    let found = version.get("format_version").and_then(|v| v.as_u64());
    if found != Some(u64::from(FORMAT_VERSION)) {
        return Err(bad(
            dir,
            format!(
                "written in format version {found:?}, this d2a reads version {FORMAT_VERSION}; run d2a prepare again"
            ),
        ));
    }
    let manifest: Manifest = serde_json::from_value(version)
        .map_err(|e| bad(&manifest_path, format!("malformed manifest: {e}")))?;
    let size = manifest.options.size;
    // Counts are checked against each other (the slice records are bounded by the file's size)
    // before anything is allocated from them.
    let in_shards = manifest
        .shards
        .iter()
        .try_fold(0usize, |sum, (_, n)| sum.checked_add(*n));
    if in_shards != Some(manifest.n_slices_kept) || manifest.slices.len() != manifest.n_slices_kept
    {
        return Err(bad(
            &manifest_path,
            format!(
                "claims {} slices, its shards {in_shards:?} and its slice records {}",
                manifest.n_slices_kept,
                manifest.slices.len()
            ),
        ));
    }
    if size == 0 || size > crate::slice_files::MAX_IMAGE_SIDE as usize {
        return Err(bad(
            &manifest_path,
            format!("slice side {size} is not usable"),
        ));
    }
    let mut slices = Vec::with_capacity(manifest.slices.len());
    let mut provenance = manifest.slices.iter();
    for (file, n) in &manifest.shards {
        let path = dir.join(file);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| bad(&path, e.to_string()))?;
        let get = |key: &str| -> Result<Vec<u8>> {
            let t = tensors
                .get(key)
                .ok_or_else(|| bad(&path, format!("no tensor {key:?}")))?;
            if t.dims() != [*n, size, size] || t.dtype() != DType::U8 {
                return Err(bad(
                    &path,
                    format!(
                        "{key} is {:?} {:?}, expected u8 [{n}, {size}, {size}]",
                        t.dtype(),
                        t.dims()
                    ),
                ));
            }
            Ok(t.flatten_all()?.to_vec1::<u8>()?)
        };
        let (images, masks) = (get("images")?, get("masks")?);
        for k in 0..*n {
            let plane = k * size * size..(k + 1) * size * size;
            let prov = provenance
                .next()
                .ok_or_else(|| bad(&manifest_path, "fewer slice records than slices".into()))?;
            slices.push(finish(Slice {
                height: size,
                width: size,
                image: images[plane.clone()]
                    .iter()
                    .map(|&v| f32::from(v) / 255.0)
                    .collect(),
                mask: masks[plane].to_vec(),
                soft: None,
                provenance: prov.clone(),
            }));
        }
    }
    if slices.len() != manifest.n_slices_kept {
        return Err(bad(
            dir,
            format!(
                "{} slices in the shards, {} in the manifest",
                slices.len(),
                manifest.n_slices_kept
            ),
        ));
    }
    Ok((manifest, slices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slice::Intensity;

    fn sample(n: usize, size: usize) -> ReadResult {
        let slices = (0..n)
            .map(|i| Slice {
                height: size,
                width: size,
                image: (0..size * size)
                    .map(|k| ((k + i) % 256) as f32 / 255.0)
                    .collect(),
                mask: (0..size * size).map(|k| u8::from(k % 3 == i % 3)).collect(),
                soft: None,
                provenance: Provenance {
                    file: format!("f{i}.nii").into(),
                    volume: format!("v{}", i / 2),
                    slice_idx: i,
                },
            })
            .collect();
        ReadResult {
            n_volumes: n.div_ceil(2),
            n_slices_total: n + 3,
            slices,
            sources: vec![("f.nii".into(), 42)],
        }
    }

    /// Automatic intensity, 4x4, lesion slices only.
    fn options_4() -> ReadOptions {
        ReadOptions {
            intensity: Intensity::Auto,
            size: 4,
            keep_empty: false,
            soft_labels: false,
        }
    }

    #[test]
    fn round_trip_is_exact_for_8_bit_data() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("prep");
        let options = ReadOptions {
            intensity: Intensity::Auto,
            size: 8,
            keep_empty: false,
            soft_labels: false,
        };
        let data = sample(SHARD_SLICES + 3, 8);
        let manifest = write(&data, &options, &out)?;
        assert_eq!(manifest.shards.len(), 2);
        let (m2, slices) = read(&out)?;
        assert_eq!(m2, manifest);
        assert_eq!(slices, data.slices);
        // Never overwritten.
        let err = write(&data, &options, &out).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        Ok(())
    }

    /// A manifest that claims a huge slice count is refused before anything is allocated
    /// (it aborted with "memory allocation failed").
    #[test]
    fn a_manifest_claiming_a_huge_count_is_refused() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("prep");
        let options = options_4();
        write(&sample(3, 4), &options, &out)?;
        let manifest = out.join("manifest.json");
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        value["n_slices_kept"] = serde_json::json!(1u64 << 60);
        std::fs::write(&manifest, value.to_string()).unwrap();
        let err = read(&out).unwrap_err().to_string();
        assert!(
            err.contains("manifest.json") && err.contains("claims"),
            "{err}"
        );
        Ok(())
    }

    /// The temporary folder of a killed `prepare` is removed by the next one.
    #[test]
    fn a_stale_partial_folder_is_removed() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let stale = tmp.path().join(".prep.partial-999999");
        std::fs::create_dir_all(stale.join("x")).unwrap();
        let options = options_4();
        write(&sample(3, 4), &options, &tmp.path().join("prep"))?;
        assert!(!stale.exists());
        Ok(())
    }

    #[test]
    fn other_versions_and_damaged_shards_are_refused() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("prep");
        let options = options_4();
        write(&sample(3, 4), &options, &out)?;
        let shard = out.join("shard-0000.safetensors");
        let bytes = std::fs::read(&shard).unwrap();
        std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
        let err = read(&out).unwrap_err().to_string();
        assert!(err.contains("shard-0000.safetensors"), "{err}");
        let manifest = out.join("manifest.json");
        let text = std::fs::read_to_string(&manifest)
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(&manifest, text).unwrap();
        let err = read(&out).unwrap_err().to_string();
        assert!(
            err.contains("version Some(99)") && err.contains("prepare again"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_failed_write_leaves_nothing_that_looks_prepared() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("prep");
        let options = ReadOptions {
            intensity: Intensity::Auto,
            size: 5,
            keep_empty: false,
            soft_labels: false,
        };
        // Slices of size 4 cannot go into a size-5 dataset: the write fails midway.
        assert!(write(&sample(3, 4), &options, &out).is_err());
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "temporary folder left behind"
        );
    }
}
