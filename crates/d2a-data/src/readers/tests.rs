//! Readers on NIfTI volumes written here (HU values, labels 1–3) and on real slices.

use std::path::{Path, PathBuf};

use ndarray::Array3;
use nifti::writer::WriterOptions;

use super::*;

/// Writes an `[x, y, z]` volume.
fn write_volume(path: &Path, vol: &Array3<f32>) {
    WriterOptions::new(path).write_nifti(vol).unwrap();
}

/// A 6 (x) by 4 (y) by 5 (z) HU volume: air (-1000) with a marker of -500 HU at x = 5, y = 0 on
/// every slice; lesion labels 1 on slice 1 and 3 on slice 3 (at x = 2, y = 3).
fn hu_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mut img = Array3::<f32>::from_elem((6, 4, 5), -1000.0);
    let mut msk = Array3::<f32>::zeros((6, 4, 5));
    for z in 0..5 {
        img[[5, 0, z]] = -500.0;
    }
    msk[[2, 3, 1]] = 1.0;
    msk[[2, 3, 3]] = 3.0;
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    let (i, m) = (dir.join("images").join(name), dir.join("masks").join(name));
    write_volume(&i, &img);
    write_volume(&m, &msk);
    (i, m)
}

fn opts(size: usize, keep_empty: bool) -> ReadOptions {
    ReadOptions {
        intensity: Intensity::Auto,
        size,
        keep_empty,
        soft_labels: false,
    }
}

#[test]
fn nifti_counts_orientation_window_and_merge() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["a.nii", "b.nii.gz"] {
        let (i, m) = hu_pair(tmp.path(), name);
        let r = read_nifti_pair(
            &i,
            &m,
            &ReadOptions {
                intensity: Intensity::Auto,
                size: 6,
                keep_empty: true,
                soft_labels: false,
            },
        )?;
        assert_eq!(r.n_slices_total, 5);
        assert_eq!(r.slices.len(), 5);
        let s1 = &r.slices[1];
        assert_eq!(s1.provenance.volume, name.split('.').next().unwrap());
        assert_eq!(s1.provenance.slice_idx, 1);
        // Without keep_empty only the slices with labels 1 and 3 remain: both count as lesion.
        let r = read_nifti_pair(&i, &m, &opts(6, false))?;
        assert_eq!(r.n_slices_total, 5);
        assert_eq!(
            r.slices
                .iter()
                .map(|s| s.provenance.slice_idx)
                .collect::<Vec<_>>(),
            [1, 3]
        );
    }
    Ok(())
}

#[test]
fn nifti_display_orientation_is_the_transpose() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (i, m) = hu_pair(tmp.path(), "v.nii");
    // A 6 x 4 slice resized to 6 x 6 stretches rows only, so columns keep their x index.
    let r = read_nifti_pair(&i, &m, &opts(6, false))?;
    let s = &r.slices[0];
    assert_eq!((s.height, s.width), (6, 6));
    // Marker at stored (x = 5, y = 0): display row 0, column 5, at -500 HU = 0.5 in the window.
    assert!((s.image[5] - 0.5).abs() < 1e-6, "{:?}", &s.image[..6]);
    // Air (-1000 HU) is (−1000 + 1250) / 1500.
    assert!((s.image[0] - 250.0 / 1500.0).abs() < 1e-6);
    // Lesion at stored (x = 2, y = 3): display row 3 of 4; nearest resizing to 6 rows takes
    // source row floor(o · 4 / 6), which is 3 only for row 5. Column 2 stays column 2.
    let lesion: Vec<(usize, usize)> = (0..36)
        .filter(|&k| s.mask[k] == 1)
        .map(|k| (k / 6, k % 6))
        .collect();
    assert_eq!(lesion, [(5, 2)]);
    Ok(())
}

#[test]
fn u8_volumes_are_divided_by_255() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let img = Array3::<f32>::from_elem((4, 4, 1), 51.0);
    let mut msk = Array3::<f32>::zeros((4, 4, 1));
    msk[[0, 0, 0]] = 2.0;
    write_volume(&tmp.path().join("i.nii"), &img);
    write_volume(&tmp.path().join("m.nii"), &msk);
    let r = read_nifti_pair(
        &tmp.path().join("i.nii"),
        &tmp.path().join("m.nii"),
        &opts(4, false),
    )?;
    assert!(r.slices[0].image.iter().all(|&v| (v - 0.2).abs() < 1e-6));
    let r = read_nifti_pair(
        &tmp.path().join("i.nii"),
        &tmp.path().join("m.nii"),
        &ReadOptions {
            intensity: Intensity::Hu,
            size: 4,
            keep_empty: false,
            soft_labels: false,
        },
    )?;
    assert!(
        r.slices[0]
            .image
            .iter()
            .all(|&v| (v - (51.0 + 1250.0) / 1500.0).abs() < 1e-6)
    );
    Ok(())
}

#[test]
fn folders_of_volumes_pair_by_name() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    hu_pair(tmp.path(), "p1.nii.gz");
    hu_pair(tmp.path(), "p2.nii");
    let r = read_source(
        &tmp.path().join("images"),
        &tmp.path().join("masks"),
        &opts(8, false),
    )?;
    assert_eq!((r.n_volumes, r.n_slices_total, r.slices.len()), (2, 10, 4));
    assert_eq!(r.sources.len(), 4);
    std::fs::remove_file(tmp.path().join("masks/p2.nii")).unwrap();
    let err = read_source(
        &tmp.path().join("images"),
        &tmp.path().join("masks"),
        &opts(8, false),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("p2.nii") && err.contains("no mask"), "{err}");
    Ok(())
}

#[test]
fn bad_volumes_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (i, m) = hu_pair(tmp.path(), "t.nii.gz");
    // Truncated gzip.
    let bytes = std::fs::read(&i).unwrap();
    std::fs::write(&i, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_nifti_pair(&i, &m, &opts(8, false))
        .unwrap_err()
        .to_string();
    // Named, in words (it once read `Io(Custom { kind: UnexpectedEof, .. })`).
    assert!(
        err.contains("t.nii.gz") && !err.contains("Custom") && !err.contains("kind:"),
        "{err}"
    );
    // Mask of another shape.
    let (i, _) = hu_pair(tmp.path(), "s.nii");
    let small = tmp.path().join("small.nii");
    write_volume(&small, &Array3::<f32>::zeros((6, 4, 4)));
    let err = read_nifti_pair(&i, &small, &opts(8, false))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("small.nii") && err.contains("[6, 4, 4]"),
        "{err}"
    );
    // 4-D volume.
    let four = tmp.path().join("four.nii");
    WriterOptions::new(&four)
        .write_nifti(&ndarray::Array4::<f32>::zeros((4, 4, 2, 3)))
        .unwrap();
    let err = read_nifti_pair(&four, &four, &opts(8, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("four.nii") && err.contains("4-D"), "{err}");
    // NaN voxel.
    let mut img = Array3::<f32>::zeros((4, 4, 3));
    img[[1, 1, 2]] = f32::NAN;
    let nan = tmp.path().join("nan.nii");
    write_volume(&nan, &img);
    let err = read_nifti_pair(&nan, &nan, &opts(8, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nan.nii") && err.contains("slice 2"), "{err}");
}

#[test]
fn volume_ids_of_slice_files() {
    assert_eq!(
        volume_of_stem("Data-1_coronacases_org_001_17"),
        "Data-1_coronacases_org_001"
    );
    assert_eq!(volume_of_stem("007"), "007");
    assert_eq!(volume_of_stem("scan-3"), "scan");
    assert_eq!(volume_of_stem("abc"), "abc");
}

#[test]
fn real_slice_folders_load() -> Result<()> {
    let Some(data) = d2a_tests::shared_data() else {
        return Ok(());
    };
    let dir = data.join("medseg100-infnet");
    // The multi-class masks (0, 1, 2) and the binary ones (0, 255) give the same lesions.
    let a = read_slice_folders(&dir.join("images"), &dir.join("masks"), &opts(64, true))?;
    let b = read_slice_folders(
        &dir.join("images"),
        &dir.join("masks_binary"),
        &opts(64, true),
    )?;
    assert_eq!((a.n_slices_total, a.slices.len()), (98, 98));
    assert!(
        a.slices
            .iter()
            .zip(&b.slices)
            .all(|(x, y)| x.mask == y.mask && x.has_lesion())
    );
    assert!(
        a.slices
            .iter()
            .all(|s| s.image.iter().all(|v| (0.0..=1.0).contains(v)))
    );
    Ok(())
}

/// A valid 4 x 4 x 3 f32 `.nii` with `patch(bytes)` applied to its bytes.
fn patched(dir: &Path, name: &str, patch: impl Fn(&mut Vec<u8>)) -> PathBuf {
    let path = dir.join(name);
    write_volume(&path, &Array3::<f32>::zeros((4, 4, 3)));
    let mut bytes = std::fs::read(&path).unwrap();
    patch(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn set_i16(bytes: &mut [u8], at: usize, v: i16) {
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn read_err(path: &Path) -> String {
    read_volume(path).err().expect("refused").to_string()
}

#[test]
fn hostile_volumes_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Non-scalar datatypes (the nifti crate panicked on complex and RGB24, read RGBA as grey).
    for (code, name) in [
        (32, "complex64"),
        (128, "RGB24"),
        (1792, "complex128"),
        (2304, "RGBA32"),
    ] {
        let path = patched(dir, &format!("dt{code}.nii"), |b| set_i16(b, 70, code));
        let err = read_err(&path);
        assert!(
            err.contains(&format!("dt{code}.nii")) && err.contains(name),
            "{err}"
        );
    }
    // bitpix disagreeing with the datatype (the nifti crate panicked; found by tests/fuzz.rs).
    let path = patched(dir, "bitpix.nii", |b| set_i16(b, 72, 16));
    let err = read_err(&path);
    assert!(
        err.contains("bitpix.nii") && err.contains("bitpix 16"),
        "{err}"
    );
    // A header claiming 2048 x 2048 x 256 voxels: refused before anything is allocated.
    let path = patched(dir, "huge.nii", |b| {
        for (i, d) in [2048i16, 2048, 256].into_iter().enumerate() {
            set_i16(b, 42 + 2 * i, d);
        }
    });
    let err = read_err(&path);
    assert!(
        err.contains("huge.nii") && err.contains("D2A_MAX_VOXELS"),
        "{err}"
    );
    // More bytes than the header describes, and fewer.
    let path = patched(dir, "long.nii", |b| b.extend_from_slice(&[0; 64]));
    assert!(read_err(&path).contains("more data than its header"));
    let path = patched(dir, "short.nii", |b| b.truncate(b.len() - 10));
    assert!(read_err(&path).contains("truncated"));
    // A NaN voxel size.
    let path = patched(dir, "nanvox.nii", |b| {
        b[80..84].copy_from_slice(&f32::NAN.to_le_bytes())
    });
    let err = read_err(&path);
    assert!(
        err.contains("nanvox.nii") && err.contains("voxel size NaN"),
        "{err}"
    );
    // A .nii.gz whose gzip trailer is wrong (bit rot in the CRC) or missing.
    let gz = dir.join("crc.nii.gz");
    write_volume(&gz, &Array3::<f32>::zeros((4, 4, 3)));
    let good = std::fs::read(&gz).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    std::fs::write(&gz, &bad).unwrap();
    let err = read_err(&gz);
    assert!(err.contains("crc.nii.gz") && err.contains("gzip"), "{err}");
    std::fs::write(&gz, &good[..n - 8]).unwrap();
    assert!(read_err(&gz).contains("gzip"));
    std::fs::write(&gz, &good).unwrap();
    assert!(read_volume(&gz).is_ok());
}

#[test]
fn a_nan_label_is_refused_naming_the_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let (i, m) = hu_pair(tmp.path(), "v.nii");
    let mut msk = Array3::<f32>::zeros((6, 4, 5));
    msk[[1, 2, 4]] = f32::NAN;
    write_volume(&m, &msk);
    let err = read_nifti_pair(&i, &m, &opts(8, true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("masks/v.nii") && err.contains("slice 4"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_is_refused_before_it_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("pipe.nii");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        panic!("mkfifo is part of coreutils and must be available");
    }
    // Opening a FIFO for reading blocks until a writer comes: this would hang without the check.
    let err = read_err(&fifo);
    assert!(
        err.contains("pipe.nii") && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn soft_maps_are_kept_when_asked_and_only_where_soft() -> Result<()> {
    let map = |values: Vec<u16>, depth_max: u16| GrayMap {
        width: values.len() as u32,
        height: 1,
        values,
        depth_max,
    };
    // Label maps and two-valued masks have nothing soft; 8-bit levels are kept as they are.
    assert_eq!(soft_levels(&map(vec![0, 1, 2, 3], 255)), None);
    assert_eq!(soft_levels(&map(vec![0, 255, 255, 0], 255)), None);
    assert_eq!(soft_levels(&map(vec![9, 9], 255)), None);
    assert_eq!(
        soft_levels(&map(vec![0, 7, 127, 128, 255], 255)),
        Some(vec![0, 7, 127, 128, 255])
    );
    // 16-bit maps are scaled to 0..=255, rounding to nearest.
    assert_eq!(
        soft_levels(&map(vec![0, 257, 32896, 65535], 65535)),
        Some(vec![0, 1, 128, 255])
    );

    let tmp = tempfile::tempdir().unwrap();
    let (images, masks) = (tmp.path().join("images"), tmp.path().join("masks"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    let save = |dir: &Path, name: &str, f: &dyn Fn(u32) -> u8| {
        image::GrayImage::from_fn(4, 2, |x, y| image::Luma([f(x + 4 * y)]))
            .save(dir.join(name))
            .unwrap();
    };
    save(&images, "v_1.png", &|i| (i * 30) as u8);
    save(&masks, "v_1.png", &|i| (i * 36) as u8);
    save(&images, "v_2.png", &|i| (i * 10) as u8);
    save(&masks, "v_2.png", &|i| if i > 4 { 255 } else { 0 });
    let soft = ReadOptions {
        soft_labels: true,
        ..opts(0, true)
    };
    let read = read_slice_folders(&images, &masks, &soft)?.slices;
    let levels: Vec<u8> = (0..8).map(|i| (i * 36) as u8).collect();
    assert_eq!(read[0].soft.as_deref(), Some(&levels[..]));
    // The hard mask is still the soft map cut at half scale.
    let cut: Vec<u8> = levels.iter().map(|&v| u8::from(v >= 128)).collect();
    assert_eq!(read[0].mask, cut);
    assert_eq!(read[1].soft, None, "a binary mask keeps no soft map");
    // Not asked: no soft maps, the same masks.
    let plain = read_slice_folders(&images, &masks, &opts(0, true))?.slices;
    assert!(plain.iter().all(|s| s.soft.is_none()));
    assert_eq!(plain[0].mask, read[0].mask);
    // Resized on reading, the soft map follows the mask.
    let resized = read_slice_folders(&images, &masks, &ReadOptions { size: 8, ..soft })?.slices;
    let soft8 = resized[0].soft.as_ref().unwrap();
    assert_eq!(
        resized[0].mask,
        soft8
            .iter()
            .map(|&v| u8::from(v >= 128))
            .collect::<Vec<_>>()
    );
    Ok(())
}
