//! A fuzz round per reader on the stable toolchain: valid seed files, mutated by a seeded
//! generator (bytes flipped, header fields set to extreme values, truncated, extended), read
//! back; every reader must return (an error or a value) and never panic. Allocation is bounded
//! by the readers' own limits: an aborted allocation would end this process, failing the run.
//!
//! `D2A_FUZZ_ROUNDS=N` sets the inputs per reader (default 150, a few seconds); the closing
//! notes give the long rounds' counts and results.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use d2a_data::inputs::read_input;
use d2a_data::{Intensity, ReadOptions};

/// A small seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation of `seed`: most touch the first 512 bytes, where headers are.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let head = b.len().min(512);
        match rng.below(6) {
            0 | 1 => {
                let i = rng.below(head);
                b[i] ^= 1 << rng.below(8);
            }
            2 => {
                // An extreme little-endian field: 0, -1, the largest, a sign flip.
                if head < 4 {
                    continue;
                }
                let i = rng.below(head - 4);
                let v: [u8; 4] = match rng.below(4) {
                    0 => [0; 4],
                    1 => [0xff; 4],
                    2 => [0xff, 0xff, 0xff, 0x7f],
                    _ => [0, 0, 0, 0x80],
                };
                let w = 2 + 2 * rng.below(2);
                b[i..i + w].copy_from_slice(&v[..w]);
            }
            3 => {
                let n = rng.below(b.len());
                b.truncate(n);
            }
            4 => {
                let extra: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
                b.extend(extra);
            }
            _ => {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

fn rounds() -> usize {
    std::env::var("D2A_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Writes `rounds()` mutations of `seed` to `dir/name` and calls `read` on each; returns how
/// many were refused with an error.
fn fuzz(dir: &Path, name: &str, seed: &[u8], read: impl Fn(&Path) -> bool) -> usize {
    fuzz_rounds(dir, name, seed, rounds(), read)
}

/// [`fuzz`] with its own number of rounds.
fn fuzz_rounds(
    dir: &Path,
    name: &str,
    seed: &[u8],
    rounds: usize,
    read: impl Fn(&Path) -> bool,
) -> usize {
    let path = dir.join(name);
    let mut rng = Rng(name.len() as u64 * 7919 + seed.len() as u64);
    let mut refused = 0;
    for round in 0..rounds {
        let bytes = mutate(seed, &mut rng);
        std::fs::write(&path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(|| read(&path))) {
            Ok(ok) => refused += usize::from(!ok),
            Err(_) => {
                let kept = dir.join(format!("panic-{name}"));
                std::fs::write(&kept, &bytes).unwrap();
                panic!(
                    "{name}: round {round} panicked (input kept at {})",
                    kept.display()
                );
            }
        }
    }
    eprintln!("fuzz {name}: {rounds} inputs, {refused} refused, no panic");
    refused
}

fn nifti_seed(dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    let vol = ndarray::Array3::from_shape_fn((8, 6, 3), |(x, y, z)| (x + y * 8 + z) as f32 - 700.0);
    nifti::writer::WriterOptions::new(&path)
        .write_nifti(&vol)
        .unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn nifti_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["v.nii", "v.nii.gz"] {
        let seed = nifti_seed(tmp.path(), &format!("seed-{name}"));
        let refused = fuzz(tmp.path(), name, &seed, |p| {
            read_input(p, Intensity::Auto).is_ok()
        });
        assert!(refused > 0, "{name}: every mutation was accepted");
    }
}

#[test]
fn dicom_slices() {
    use d2a_data::dicom::write::{CtSlice, write_ct_slice};
    let tmp = tempfile::tempdir().unwrap();
    for rle in [false, true] {
        let seed_path = tmp.path().join(format!("seed-{rle}.dcm"));
        let slice = CtSlice {
            series: "1.2.3".into(),
            sop: "1.2.3.1".into(),
            instance: 1,
            position: [0.0, 0.0, 10.0],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            rows: 6,
            columns: 5,
            intercept: -1024.0,
            stored: (0..30).map(|v| v * 40).collect(),
            rle,
        };
        write_ct_slice(&seed_path, &slice).unwrap();
        let seed = std::fs::read(&seed_path).unwrap();
        let name = if rle { "rle.dcm" } else { "ct.dcm" };
        // A third of the rounds: a damaged element length makes dicom-rs allocate that much
        // before it fails (system time, not a crash), which makes each round slow.
        let refused = fuzz_rounds(tmp.path(), name, &seed, rounds().div_ceil(3), |p| {
            read_input(p, Intensity::Auto).is_ok()
        });
        assert!(refused > 0, "{name}: every mutation was accepted");
    }
}

#[test]
fn slice_images() {
    let tmp = tempfile::tempdir().unwrap();
    let img = image::GrayImage::from_fn(24, 16, |x, y| image::Luma([(x * 9 + y * 5) as u8]));
    for (name, format) in [
        ("s.png", image::ImageFormat::Png),
        ("s.jpg", image::ImageFormat::Jpeg),
    ] {
        let mut seed = std::io::Cursor::new(Vec::new());
        img.write_to(&mut seed, format).unwrap();
        fuzz(tmp.path(), name, seed.get_ref(), |p| {
            d2a_data::slice_files::GrayMap::read(p).is_ok()
        });
    }
}

#[test]
fn checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let seed_path = tmp.path().join("seed.safetensors");
    let w = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((2, 3, 4))
        .unwrap();
    let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let meta = d2a_model::checkpoint::format::InferenceMeta::new("d2a-vgg-tiny", 64)
        .unwrap()
        .to_metadata();
    d2a_model::checkpoint::save_tensors(&[("w".into(), w), ("b".into(), b)], &meta, &seed_path)
        .unwrap();
    let seed = std::fs::read(&seed_path).unwrap();
    fuzz(tmp.path(), "c.safetensors", &seed, |p| {
        let tensors = d2a_model::checkpoint::read_tensors(p).is_ok();
        let meta = d2a_model::checkpoint::read_metadata(p).is_ok();
        let inference = d2a_model::checkpoint::format::InferenceMeta::read(p, None, None).is_ok();
        tensors && meta && inference
    });
    if let Some(pth) = d2a_tests::shared_fixture("resnext_tiny.pth") {
        let seed = std::fs::read(pth).unwrap();
        fuzz(tmp.path(), "c.pth", &seed, |p| {
            d2a_model::checkpoint::read_tensors(p).is_ok()
        });
    }
}

#[test]
fn prepared_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    let prepared = tmp.path().join("prep");
    let read = d2a_data::ReadResult {
        n_volumes: 1,
        n_slices_total: 2,
        slices: d2a_data::synthetic::phantoms(2, 8, 0),
        sources: Vec::new(),
    };
    let options = ReadOptions {
        intensity: Intensity::Auto,
        size: 8,
        keep_empty: true,
        soft_labels: false,
    };
    d2a_data::prepared::write(&read, &options, &prepared).unwrap();
    let manifest = prepared.join("manifest.json");
    let seed = std::fs::read(&manifest).unwrap();
    assert!(
        d2a_data::prepared::read(&prepared).is_ok(),
        "the seed reads"
    );
    let mut rng = Rng(5);
    let mut refused = 0;
    for _ in 0..rounds() {
        std::fs::write(&manifest, mutate(&seed, &mut rng)).unwrap();
        let result = catch_unwind(AssertUnwindSafe(|| {
            d2a_data::prepared::read(&prepared).is_ok()
        }));
        refused += usize::from(!result.expect("prepared::read panicked"));
    }
    eprintln!(
        "fuzz manifest.json: {} inputs, {refused} refused, no panic",
        rounds()
    );
}
