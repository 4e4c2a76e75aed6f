//! `cargo xtask fetch-data`: downloads the paper's datasets into `data/raw/`, checks every file,
//! unpacks the archives, and prepares `data/prepared/{train,test}` with the paper's split.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use d2a_data::{Intensity, ReadOptions, ReadResult, prepared, read_source};

use crate::datasets::{self, Checksum, Dataset, RemoteFile, Role};
use crate::download::{self, part_path, verify};

/// Environment variable that sets `--mirror`.
pub const MIRROR_ENV: &str = "D2A_DATA_MIRROR";

/// Arguments of `cargo xtask fetch-data`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Root of the data folder: files go to DATA/raw, prepared sets to DATA/prepared.
    #[arg(long, default_value = "data", value_name = "DATA")]
    pub data: PathBuf,
    /// Replace the upstream hosts by this URL (scheme, host and an optional path prefix), for a
    /// proxy or a local copy laid out like upstream. Also D2A_DATA_MIRROR.
    #[arg(long, value_name = "URL", env = MIRROR_ENV)]
    pub mirror: Option<String>,
    /// Take the files from this folder (downloaded by hand, with their upstream names) instead
    /// of the network; they are checked like downloads.
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Only this dataset: medseg (test), medseg-rp or covid20 (train).
    #[arg(long, value_name = "NAME")]
    pub only: Option<String>,
    /// Download and check only; do not prepare.
    #[arg(long)]
    pub no_prepare: bool,
    /// Side of the prepared slices (the paper's 512).
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Print the datasets, their files, URLs, checksums and licences, and exit.
    #[arg(long)]
    pub list: bool,
    /// A JSON file of checksums by file name ({"name": {"md5": hex} | {"sha256": hex} |
    /// "record"}) that replaces the known ones (for tests and changed upstream files).
    #[arg(long, value_name = "FILE", hide = true)]
    pub checksums: Option<PathBuf>,
}

/// Where the SHA-256 of files without a known checksum are recorded, in `DATA/raw`.
const RECORDED: &str = "checksums.json";

impl Args {
    /// Runs the fetch.
    pub fn run(self) -> Result<()> {
        let mut all = datasets::all();
        if let Some(path) = &self.checksums {
            override_checksums(&mut all, path)?;
        }
        if self.list {
            list(&all);
            return Ok(());
        }
        let chosen: Vec<Dataset> = match &self.only {
            None => all,
            Some(name) => {
                let names: Vec<&str> = all.iter().map(|d| d.name).collect();
                let Some(d) = all.iter().find(|d| d.name == name) else {
                    bail!("unknown dataset {name:?}; known: {}", names.join(", "))
                };
                vec![d.clone()]
            }
        };
        let raw = self.data.join("raw");
        fs::create_dir_all(&raw).with_context(|| format!("cannot create {}", raw.display()))?;
        let agent = download::agent();
        let mut recorded = read_recorded(&raw)?;
        for dataset in &chosen {
            for file in [&dataset.images, &dataset.masks] {
                self.obtain(&agent, file, &raw, &mut recorded)?;
            }
        }
        if self.no_prepare {
            return Ok(());
        }
        let datasets = datasets::all();
        let present = |role: Role| -> Vec<&Dataset> {
            datasets
                .iter()
                .filter(|d| d.role == role)
                .filter(|d| {
                    [&d.images, &d.masks]
                        .iter()
                        .all(|f| raw.join(f.name).is_file())
                })
                .collect()
        };
        let touched = |role: Role| chosen.iter().any(|d| d.role == role);
        for (role, name, keep_empty) in [(Role::Train, "train", false), (Role::Test, "test", true)]
        {
            let sets = present(role);
            if touched(role) && !sets.is_empty() {
                self.prepare(&sets, &raw, name, keep_empty)?;
            }
        }
        Ok(())
    }

    /// Makes `raw/<file>` present and verified: already there, copied from `--from`, or
    /// downloaded.
    /// `recorded`: the SHA-256 recorded at first downloads (`raw/checksums.json`), updated here.
    fn obtain(
        &self,
        agent: &ureq::Agent,
        file: &RemoteFile,
        raw: &Path,
        recorded: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        let dest = raw.join(file.name);
        let known = recorded.get(file.name).cloned();
        let known = known.as_deref();
        if dest.is_file() {
            verify(&dest, &file.checksum, known)
                .with_context(|| format!("delete {} to download it again", dest.display()))?;
            eprintln!("{}: present, checksum verified", file.name);
            return Ok(());
        }
        let part = part_path(&dest);
        let start = Instant::now();
        match &self.from {
            Some(dir) => {
                let source = dir.join(file.name);
                if !source.is_file() {
                    bail!(
                        "--from {}: {} is not there (expected the upstream file name)",
                        dir.display(),
                        file.name
                    )
                }
                fs::copy(&source, &part).with_context(|| {
                    format!("cannot copy {} to {}", source.display(), part.display())
                })?;
            }
            None => {
                let url = match &self.mirror {
                    Some(m) => datasets::mirrored(file.url, m),
                    None => file.url.to_string(),
                };
                download::download(agent, &url, &dest, file.name)?;
            }
        }
        let sha = match verify(&part, &file.checksum, known) {
            Ok(sha) => sha,
            Err(e) => {
                let _ = fs::remove_file(&part);
                return Err(e.context(format!("{} failed its checksum and was removed", file.name)));
            }
        };
        fs::rename(&part, &dest)
            .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
        if file.checksum == Checksum::Record && known.is_none() {
            recorded.insert(file.name.to_string(), sha.clone());
            write_recorded(raw, recorded)?;
            eprintln!(
                "{}: no published checksum; recorded sha256 {sha}",
                file.name
            );
        }
        eprintln!(
            "{}: {} bytes, checked, in {:.1} s",
            file.name,
            fs::metadata(&dest).map(|m| m.len()).unwrap_or(0),
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Reads every dataset of `sets` and writes them together as `DATA/prepared/<name>`.
    fn prepare(&self, sets: &[&Dataset], raw: &Path, name: &str, keep_empty: bool) -> Result<()> {
        let start = Instant::now();
        let options = ReadOptions {
            intensity: Intensity::Auto,
            size: self.size,
            keep_empty,
            soft_labels: false,
        };
        let mut read = ReadResult::default();
        for set in sets {
            let images = volumes(raw, set.images.name)?;
            let masks = volumes(raw, set.masks.name)?;
            let part = read_source(&images, &masks, &options).with_context(|| {
                format!(
                    "preparing {}: reading {} with {}",
                    set.name,
                    images.display(),
                    masks.display()
                )
            })?;
            read.n_volumes += part.n_volumes;
            read.n_slices_total += part.n_slices_total;
            read.slices.extend(part.slices);
            read.sources.extend(part.sources);
        }
        let root = self.data.join("prepared");
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let out = root.join(name);
        let partial = root.join(format!("{name}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?;
        }
        let manifest = prepared::write(&read, &options, &partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        if out.exists() {
            fs::remove_dir_all(&out)
                .with_context(|| format!("cannot replace {}", out.display()))?;
        }
        fs::rename(&partial, &out)
            .with_context(|| format!("cannot move {} to {}", partial.display(), out.display()))?;
        let names: Vec<&str> = sets.iter().map(|s| s.name).collect();
        println!(
            "prepared {} from {}: {} volume(s), {} slices, {} kept ({}x{}) in {:.1} s",
            out.display(),
            names.join(" + "),
            manifest.n_volumes,
            manifest.n_slices_total,
            manifest.n_slices_kept,
            self.size,
            self.size,
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

/// The NIfTI image or mask source of a raw file: the volume itself, or the folder holding the
/// volumes of an archive (unpacked to `raw/<stem>/` on first use, through a temporary folder).
fn volumes(raw: &Path, name: &str) -> Result<PathBuf> {
    let path = raw.join(name);
    let Some(stem) = name.strip_suffix(".zip") else {
        return Ok(path);
    };
    let dir = raw.join(stem);
    if !dir.is_dir() {
        let tmp = raw.join(format!("{stem}.unpacking"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
        }
        let file =
            fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut archive = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a readable zip archive", path.display()))?;
        archive
            .extract(&tmp)
            .with_context(|| format!("cannot unpack {} into {}", path.display(), tmp.display()))?;
        fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), dir.display()))?;
    }
    nifti_folder(&dir).with_context(|| format!("{} holds no NIfTI volumes", path.display()))
}

/// `dir`, or the one folder below it (two levels at most) that holds the `.nii(.gz)` files:
/// archives put their volumes at the top or inside a folder named like the archive.
fn nifti_folder(dir: &Path) -> Result<PathBuf> {
    let mut current = dir.to_path_buf();
    for _ in 0..3 {
        let mut subdirs = Vec::new();
        let mut has_nifti = false;
        for entry in
            fs::read_dir(&current).with_context(|| format!("cannot list {}", current.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                if !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("__MACOSX"))
                {
                    subdirs.push(path);
                }
            } else if d2a_data::readers::is_nifti(&path) {
                has_nifti = true;
            }
        }
        if has_nifti {
            return Ok(current);
        }
        match <[PathBuf; 1]>::try_from(subdirs) {
            Ok([only]) => current = only,
            Err(_) => break,
        }
    }
    bail!("no folder of .nii/.nii.gz files under {}", dir.display())
}

fn read_recorded(raw: &Path) -> Result<BTreeMap<String, String>> {
    let path = raw.join(RECORDED);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt; delete it to record again", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_recorded(raw: &Path, recorded: &BTreeMap<String, String>) -> Result<()> {
    let path = raw.join(RECORDED);
    let text = serde_json::to_string_pretty(recorded)? + "\n";
    Ok(d2a_model::checkpoint::write_atomic(&path, text.as_bytes())?)
}

fn override_checksums(all: &mut [Dataset], path: &Path) -> Result<()> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let map: BTreeMap<String, Checksum> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{}: expected {{\"file\": {{\"md5\"|\"sha256\": hex}} | \"record\"}}",
            path.display()
        )
    })?;
    for (name, checksum) in map {
        let file = all
            .iter_mut()
            .flat_map(|d| [&mut d.images, &mut d.masks])
            .find(|f| f.name == name);
        match file {
            Some(f) => f.checksum = checksum,
            None => bail!("{}: no dataset file is called {name:?}", path.display()),
        }
    }
    Ok(())
}

fn list(all: &[Dataset]) {
    for d in all {
        println!("{} — {}\n  licence: {}", d.name, d.title, d.licence);
        for f in [&d.images, &d.masks] {
            let check = match &f.checksum {
                Checksum::Md5(h) => format!("md5 {h}"),
                Checksum::Sha256(h) => format!("sha256 {h}"),
                Checksum::Record => {
                    "no published checksum (sha256 recorded on first download)".into()
                }
            };
            println!("  {}  {}\n      {check}", f.name, f.url);
        }
    }
}
