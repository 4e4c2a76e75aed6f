//! `cargo xtask align-labels`: the radiologists' masks of `ma20-radiologist-256` carried onto
//! the Inf-Net images of `covid20-infnet-pseudo` (the same 20 patients), written as a dataset
//! folder (`images/`, `masks/`, `index.csv`) that `d2a train --train` reads.
//!
//! Each Inf-Net image, turned a quarter turn and scaled to the 256x256 frames' pixel size, is
//! searched for among the frames ([`d2a_data::align`]); the scale is found once per volume on
//! its middle slice (1/2 for the 512x512 coronacases scans), and the volume's other slices are
//! searched among the frames near that slice's match. A slice is kept when its correlation is at
//! least `--min-score` and no other slice of its volume matched the same frame better: Inf-Net
//! kept slices that the radiologist-labelled copy dropped (its first and last 20% of each
//! volume, and slices with no lesion), and those find only a neighbour.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use d2a_data::align::{Frames, Located, Plane, as_template, transfer_mask};
use d2a_data::readers::volume_of_stem;
use d2a_data::slice_files::{GrayMap, list_slices, pair_by_stem};
use rayon::prelude::*;

/// Arguments of `cargo xtask align-labels`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The folder whose images get masks: covid20-infnet-pseudo (its `images/`).
    #[arg(long, default_value = "../shared/data/covid20-infnet-pseudo")]
    pub images: PathBuf,
    /// The folder whose masks are carried over: ma20-radiologist-256 (`images/` and `masks/`,
    /// 256x256 frames).
    #[arg(long, default_value = "../shared/data/ma20-radiologist-256")]
    pub labels: PathBuf,
    /// Output dataset folder; must not exist yet (it is written beside it and renamed into
    /// place when complete).
    #[arg(long, default_value = "data/covid20-radiologist")]
    pub out: PathBuf,
    /// Least correlation coefficient for a slice to be kept.
    #[arg(long, default_value_t = 0.7)]
    pub min_score: f32,
}

/// Scales tried for a volume whose middle slice is not found at 1/2: 0.30, 0.32, ..., 0.70.
fn other_scales() -> impl Iterator<Item = f32> {
    (15..=35).map(|k| k as f32 / 50.0)
}

/// One image slice and what was found for it.
struct Found {
    stem: String,
    path: PathBuf,
    image: Plane,
    located: Option<Located>,
}

/// One volume's outcome.
struct VolumeReport {
    name: String,
    scale: f32,
    slices: usize,
    kept: Vec<Found>,
}

impl Args {
    /// Runs the task.
    pub fn run(self) -> Result<()> {
        ensure!(
            !self.out.exists(),
            "{} already exists: align-labels writes a new folder and never replaces one",
            self.out.display()
        );
        ensure!(
            self.min_score > 0.0 && self.min_score <= 1.0,
            "--min-score must be in (0, 1], not {}",
            self.min_score
        );
        let Labelled {
            frames,
            names: frame_names,
            masks: frame_masks,
        } = read_frames(&self.labels)?;
        let frame_size = (frames[0].width, frames[0].height);
        eprintln!(
            "{} frames of {}x{} from {}",
            frames.len(),
            frame_size.0,
            frame_size.1,
            self.labels.display()
        );
        let frames = Frames::new(frames);
        let volumes = read_volumes(&self.images.join("images"))?;
        let mut reports = Vec::new();
        for (name, slices) in volumes {
            let report = align_volume(&frames, name, slices, self.min_score)?;
            eprintln!(
                "{}: {} of {} slices at scale {:.2}",
                report.name,
                report.kept.len(),
                report.slices,
                report.scale
            );
            reports.push(report);
        }
        let partial = partial_path(&self.out);
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("removing the unfinished {}", partial.display()))?;
        }
        let summary = write_dataset(
            &partial,
            &reports,
            &frame_names,
            &frame_masks,
            frame_size,
            &self.images,
        )?;
        std::fs::rename(&partial, &self.out)
            .with_context(|| format!("renaming {} to {}", partial.display(), self.out.display()))?;
        println!("{summary}wrote {}", self.out.display());
        Ok(())
    }
}

/// `<out>.partial`, beside `out`.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// The labelled frames, all of one size.
struct Labelled {
    frames: Vec<Plane>,
    /// Their file stems.
    names: Vec<String>,
    /// Their masks, lesion where `true`.
    masks: Vec<Vec<bool>>,
}

/// The frames of `dir` (`images/` and `masks/`).
fn read_frames(dir: &Path) -> Result<Labelled> {
    let pairs = pair_by_stem((&dir.join("images"), "image"), (&dir.join("masks"), "mask"))?;
    let read: Vec<(Plane, Vec<bool>)> = pairs
        .par_iter()
        .map(|p| {
            let image = GrayMap::read(&p.left)?;
            let mask = GrayMap::read(&p.right)?;
            ensure!(
                image.size() == mask.size(),
                "{} is {:?} but its mask {} is {:?}",
                p.left.display(),
                image.size(),
                p.right.display(),
                mask.size()
            );
            Ok((Plane::from_gray(&image), mask.at_least(0.5)?))
        })
        .collect::<Result<_>>()?;
    let size = (read[0].0.width, read[0].0.height);
    if let Some((i, _)) = read
        .iter()
        .enumerate()
        .find(|(_, (f, _))| (f.width, f.height) != size)
    {
        bail!(
            "{} is not {}x{} like {}: the frames must share one size",
            pairs[i].left.display(),
            size.0,
            size.1,
            pairs[0].left.display()
        );
    }
    let names = pairs.into_iter().map(|p| p.stem).collect();
    let (frames, masks) = read.into_iter().unzip();
    Ok(Labelled {
        frames,
        names,
        masks,
    })
}

/// The images of `dir` by volume, each volume's slices in the order of their slice numbers.
fn read_volumes(dir: &Path) -> Result<BTreeMap<String, Vec<(String, PathBuf)>>> {
    let mut volumes: BTreeMap<String, Vec<(String, PathBuf)>> = BTreeMap::new();
    for file in list_slices(dir)? {
        volumes
            .entry(volume_of_stem(&file.stem))
            .or_default()
            .push((file.stem, file.path));
    }
    for slices in volumes.values_mut() {
        slices.sort_by_key(|(stem, _)| {
            let number = stem.rsplit(['_', '-']).next().and_then(|n| n.parse().ok());
            (number.unwrap_or(u64::MAX), stem.clone())
        });
    }
    Ok(volumes)
}

/// Finds the scale of a volume on its middle slice, then every slice among the frames near it.
fn align_volume(
    frames: &Frames,
    name: String,
    slices: Vec<(String, PathBuf)>,
    min_score: f32,
) -> Result<VolumeReport> {
    let images: Vec<Plane> = slices
        .par_iter()
        .map(|(_, path)| Ok(Plane::from_gray(&GrayMap::read(path)?)))
        .collect::<Result<_>>()?;
    let middle = &images[images.len() / 2];
    let all = 0..frames.len();
    let at = |s: f32| frames.locate(&as_template(middle, s), all.clone());
    let mut best = at(0.5).map(|l| (0.5, l));
    if best.is_none_or(|(_, l)| l.at.score < min_score) {
        for s in other_scales() {
            if let Some(l) = at(s)
                && best.is_none_or(|(_, b)| l.at.score > b.at.score)
            {
                best = Some((s, l));
            }
        }
    }
    let Some((scale, anchor)) = best else {
        return Ok(VolumeReport {
            name,
            scale: f32::NAN,
            slices: slices.len(),
            kept: Vec::new(),
        });
    };
    // A volume's slices lie within as many frames of its middle one as it has slices.
    let reach = slices.len() + 20;
    let window = anchor.frame.saturating_sub(reach)..anchor.frame + reach + 1;
    let mut found: Vec<Found> = slices
        .into_iter()
        .zip(images)
        .map(|((stem, path), image)| {
            let located = frames
                .locate(&as_template(&image, scale), window.clone())
                .filter(|l| l.at.score >= min_score);
            Found {
                stem,
                path,
                image,
                located,
            }
        })
        .collect();
    // One frame, one slice: where several matched a frame, only the best keeps it.
    let mut owner: BTreeMap<usize, (f32, usize)> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        if let Some(l) = f.located {
            let e = owner.entry(l.frame).or_insert((l.at.score, i));
            if l.at.score > e.0 {
                *e = (l.at.score, i);
            }
        }
    }
    for (i, f) in found.iter_mut().enumerate() {
        if f.located.is_some_and(|l| owner[&l.frame].1 != i) {
            f.located = None;
        }
    }
    let n = found.len();
    found.retain(|f| f.located.is_some());
    Ok(VolumeReport {
        name,
        scale,
        slices: n,
        kept: found,
    })
}

/// Writes `images/` (the image files as they are), `masks/` (0/255 PNGs) and `index.csv`;
/// returns a per-volume summary with the lesion share of the new masks and of the folder's own
/// `pseudo_masks/` (cut at 128) where it has them.
fn write_dataset(
    out: &Path,
    reports: &[VolumeReport],
    frame_names: &[String],
    frame_masks: &[Vec<bool>],
    frame_size: (usize, usize),
    source: &Path,
) -> Result<String> {
    let (images_dir, masks_dir) = (out.join("images"), out.join("masks"));
    for dir in [&images_dir, &masks_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut index =
        String::from("name,source_volume,label_frame,score,frame_x,frame_y,scale,lesion_pixels\n");
    let mut summary = String::from(
        "volume | slices | kept | scale | lesion share: these masks | pseudo_masks >= 128\n",
    );
    for r in reports {
        let rows: Vec<(String, usize, usize)> = r
            .kept
            .par_iter()
            .map(|f| {
                let l = f.located.expect("kept slices are located");
                let (w, h) = (f.image.width, f.image.height);
                let mask = transfer_mask(&frame_masks[l.frame], frame_size, (w, h), l.at, r.scale);
                let lesion = mask.iter().filter(|&&m| m).count();
                let png = masks_dir.join(format!("{}.png", f.stem));
                image::GrayImage::from_raw(
                    w as u32,
                    h as u32,
                    mask.iter().map(|&m| if m { 255 } else { 0 }).collect(),
                )
                .expect("one value per pixel")
                .save(&png)
                .with_context(|| format!("writing {}", png.display()))?;
                let file_name = f.path.file_name().expect("listed files have names");
                let copy = images_dir.join(file_name);
                std::fs::copy(&f.path, &copy).with_context(|| {
                    format!("copying {} to {}", f.path.display(), copy.display())
                })?;
                let pseudo = pseudo_lesion(source, &f.stem)?;
                let row = format!(
                    "{},{},{},{:.4},{},{},{},{}\n",
                    f.stem,
                    r.name,
                    frame_names[l.frame],
                    l.at.score,
                    l.at.x,
                    l.at.y,
                    r.scale,
                    lesion
                );
                Ok((row, lesion, pseudo.unwrap_or(0)))
            })
            .collect::<Result<_>>()?;
        let pixels: usize = r
            .kept
            .iter()
            .map(|f| f.image.values.len())
            .sum::<usize>()
            .max(1);
        let (lesion, pseudo) = rows
            .iter()
            .fold((0, 0), |(a, b), &(_, l, p)| (a + l, b + p));
        rows.iter().for_each(|(row, _, _)| index.push_str(row));
        writeln!(
            summary,
            "{} | {} | {} | {:.2} | {:.2}% | {:.2}%",
            r.name,
            r.slices,
            r.kept.len(),
            r.scale,
            100.0 * lesion as f64 / pixels as f64,
            100.0 * pseudo as f64 / pixels as f64
        )?;
    }
    let csv = out.join("index.csv");
    std::fs::write(&csv, index).with_context(|| format!("writing {}", csv.display()))?;
    Ok(summary)
}

/// Lesion pixels of `<source>/pseudo_masks/<stem>.png` cut at 128, if that file exists.
fn pseudo_lesion(source: &Path, stem: &str) -> Result<Option<usize>> {
    let path = source.join("pseudo_masks").join(format!("{stem}.png"));
    if !path.is_file() {
        return Ok(None);
    }
    let map = GrayMap::read(&path)?;
    Ok(Some(map.at_least(0.5)?.into_iter().filter(|&m| m).count()))
}
