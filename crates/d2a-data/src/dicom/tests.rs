//! Synthetic CT series written with dicom-rs: known geometry, shuffled file names and
//! InstanceNumbers, one RLE-compressed copy, and the hostile cases.

use std::path::Path;

use super::write::{CtSlice as Spec, write_ct_slice};
use super::*;

const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

/// `n` slices of `rows x columns`, 2.5 mm apart along the normal of `orientation` from
/// `origin`; slice k's stored value at (r, c) is 1024 + 100·k + 10·r + c (HU 100·k + 10·r + c).
fn series(n: usize, orientation: [f64; 6], uid: &str) -> Vec<Spec> {
    let (rows, columns) = (4, 6);
    let normal = cross(&orientation[..3], &orientation[3..]);
    let origin = [-120.5, 33.0, 410.0];
    (0..n)
        .map(|k| Spec {
            series: uid.into(),
            sop: format!("{uid}.{k}"),
            // InstanceNumbers against the position order.
            instance: (n - k) as i32,
            position: std::array::from_fn(|i| origin[i] + 2.5 * k as f64 * normal[i]),
            orientation,
            rows,
            columns,
            intercept: -1024.0,
            stored: (0..rows * columns)
                .map(|p| 1024 + 100 * k as i16 + 10 * (p / columns) as i16 + (p % columns) as i16)
                .collect(),
            rle: false,
        })
        .collect()
}

/// Writes the slices under names that sort in an order unrelated to their positions.
fn write_all(dir: &Path, specs: &[Spec]) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, s) in specs.iter().enumerate() {
        write_ct_slice(&dir.join(format!("IM{:04}", (k * 7 + 3) % 11)), s).unwrap();
    }
}

fn hu_of(k: usize, r: usize, c: usize) -> f32 {
    (100 * k + 10 * r + c) as f32
}

#[test]
fn a_shuffled_series_is_read_in_position_order_with_its_geometry() {
    let dir = tempfile::tempdir().unwrap();
    // An oblique orientation: rows along (cos 30°, sin 30°, 0), columns along -z.
    let (c30, s30) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    let oblique = [c30, s30, 0.0, 0.0, 0.0, -1.0];
    let specs = series(5, oblique, "1.2.3.4");
    write_all(dir.path(), &specs);
    std::fs::write(dir.path().join("README.txt"), "not DICOM").unwrap();
    let s = read_series(&[dir.path().to_path_buf()], None).unwrap();
    assert_eq!(s.uid, "1.2.3.4");
    assert_eq!(s.files.len(), 5);
    assert_eq!(s.skipped.len(), 1, "{:?}", s.skipped);
    // In position order, whatever the names and InstanceNumbers.
    let sops: Vec<String> = (0..5).map(|k| format!("1.2.3.4.{k}")).collect();
    assert_eq!(s.sop_instance_uids, sops);
    let g = &s.geometry;
    assert_eq!((g.rows, g.columns, g.pixel_spacing), (4, 6, [0.7, 0.6]));
    assert!((g.slice_spacing() - 2.5).abs() < 1e-5);
    for k in 0..5 {
        for (r, c) in [(0, 0), (3, 5), (2, 1)] {
            assert_eq!(s.hu[k * 24 + r * 6 + c], hu_of(k, r, c));
        }
    }
    // The affine takes voxel (column i, row j, slice k) to the RAS position of that pixel's
    // centre: slice k's ImagePositionPatient plus i column steps along the row cosine and j row
    // steps along the column cosine (x and y negated from DICOM's LPS).
    let a = g.affine_ras();
    for (k, spec) in specs.iter().enumerate() {
        for (i, j) in [(0usize, 0usize), (5, 0), (0, 3), (4, 2)] {
            let lps: Vec<f64> = (0..3)
                .map(|ax| {
                    spec.position[ax]
                        + i as f64 * 0.6 * oblique[ax]
                        + j as f64 * 0.7 * oblique[3 + ax]
                })
                .collect();
            for ax in 0..3 {
                let want = if ax < 2 { -lps[ax] } else { lps[ax] };
                let got =
                    a[ax][0] * i as f64 + a[ax][1] * j as f64 + a[ax][2] * k as f64 + a[ax][3];
                // Within the six decimals the files store.
                assert!(
                    (got - want).abs() < 1e-5,
                    "voxel {i},{j},{k} axis {ax}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn rle_compressed_slices_read_as_the_uncompressed_ones_and_padding_is_air() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = series(3, AXIAL, "1.2.3.5");
    specs[1].stored[7] = -2000; // PixelPaddingValue
    let plain = dir.path().join("plain");
    write_all(&plain, &specs);
    let packed = dir.path().join("rle");
    let rle_specs: Vec<Spec> = specs
        .iter()
        .cloned()
        .map(|s| Spec { rle: true, ..s })
        .collect();
    write_all(&packed, &rle_specs);
    let a = read_series(&[plain], None).unwrap();
    let b = read_series(&[packed], None).unwrap();
    assert_eq!(a.hu, b.hu);
    assert_eq!(a.hu[24 + 7], AIR_HU);
    assert_eq!(a.hu[24 + 8], hu_of(1, 1, 2));
}

fn fails(inputs: &[PathBuf], series: Option<&str>, needles: &[&str]) {
    let err = read_series(inputs, series).unwrap_err().to_string();
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn hostile_series_get_errors_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = |name: &str| root.path().join(name);

    // Two series in one folder: refused with both listed; one chosen by UID.
    let mut two = series(3, AXIAL, "1.9.1");
    two.extend(series(2, AXIAL, "1.9.2"));
    write_all(&dir("two"), &two);
    fails(
        &[dir("two")],
        None,
        &[
            "2 CT series",
            "--series",
            "1.9.1 (3 slices)",
            "1.9.2 (2 slices)",
        ],
    );
    assert_eq!(
        read_series(&[dir("two")], Some("1.9.2"))
            .unwrap()
            .files
            .len(),
        2
    );
    fails(&[dir("two")], Some("7.7"), &["no series 7.7", "1.9.1"]);

    // Two slices at one position.
    let mut dup = series(3, AXIAL, "1.9.3");
    dup[2].position = dup[1].position;
    write_all(&dir("dup"), &dup);
    fails(&[dir("dup")], None, &["same position", "duplicated slice"]);

    // A slice missing from the middle.
    let mut gap = series(5, AXIAL, "1.9.4");
    gap.remove(2);
    write_all(&dir("gap"), &gap);
    fails(
        &[dir("gap")],
        None,
        &["missing slices", "5.000 mm", "2.500 mm apart"],
    );

    // Mixed sizes.
    let mut mixed = series(3, AXIAL, "1.9.5");
    mixed[1].rows = 2;
    mixed[1].stored.truncate(12);
    write_all(&dir("mixed"), &mixed);
    fails(&[dir("mixed")], None, &["is 2x6", "4x6"]);

    // A localiser of another orientation is skipped and reported, not read into the volume.
    let mut scout = series(3, AXIAL, "1.9.6");
    let mut loc = series(1, [1.0, 0.0, 0.0, 0.0, 0.0, -1.0], "1.9.6").remove(0);
    loc.sop = "1.9.6.99".into();
    scout.push(loc);
    write_all(&dir("scout"), &scout);
    let s = read_series(&[dir("scout")], None).unwrap();
    assert_eq!(s.files.len(), 3);
    assert!(
        s.skipped.iter().any(|(_, why)| why.contains("orientation")),
        "{:?}",
        s.skipped
    );

    // A truncated file: an error naming it, never a panic.
    write_all(&dir("cut"), &series(3, AXIAL, "1.9.7"));
    let victim = dir("cut").join("IM0003");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() - 30]).unwrap();
    fails(&[dir("cut")], None, &["IM0003"]);

    // Pixel data shorter than Rows x Columns.
    let mut short = series(2, AXIAL, "1.9.8");
    short[0].stored.truncate(10);
    write_all(&dir("short"), &short);
    fails(&[dir("short")], None, &["pixel data", "4 x 6"]);

    // No DICOM at all.
    std::fs::create_dir_all(dir("none")).unwrap();
    std::fs::write(dir("none").join("a.txt"), "hello").unwrap();
    fails(&[dir("none")], None, &["no CT image slice", "a.txt"]);
    assert!(!is_dicom_folder(&dir("none")));
    assert!(is_dicom_folder(&dir("two")));
}

/// pydicom's test file `name`, where pydicom is installed.
fn pydicom_file(name: &str) -> Option<PathBuf> {
    let locate = format!("import pydicom.data; print(pydicom.data.get_testdata_file('{name}'))");
    std::process::Command::new("python3")
        .args(["-c", &locate])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file())
}

/// The decoders this build carries, on pydicom's real files: the same MR slice uncompressed,
/// RLE Lossless and JPEG 2000 lossless decodes to the same stored values.
#[test]
fn rle_and_jpeg_2000_lossless_decode_as_uncompressed() {
    let stored = |name: &str| -> Option<Vec<f64>> {
        let path = pydicom_file(name)?;
        let obj = open(&path, false).unwrap();
        let decoded = obj.decode_pixel_data().unwrap();
        Some(
            decoded
                .to_vec_with_options(
                    &ConvertOptions::new().with_modality_lut(ModalityLutOption::None),
                )
                .unwrap(),
        )
    };
    let Some(plain) = stored("MR_small.dcm") else {
        d2a_tests::skip("pydicom's test files (pip install pydicom)");
        return;
    };
    assert_eq!(plain.len(), 64 * 64);
    for name in ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"] {
        assert_eq!(stored(name).unwrap(), plain, "{name}");
    }
    // pydicom's CT slice reads as a one-slice series in HU.
    let ct = read_series(&[pydicom_file("CT_small.dcm").unwrap()], None).unwrap();
    assert_eq!((ct.geometry.rows, ct.geometry.columns), (128, 128));
    let (lo, hi) = ct
        .hu
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(
        lo >= AIR_HU && hi > 0.0 && hi < 4000.0,
        "HU range {lo}..{hi}"
    );
}

/// `d2a prepare` on a series: its mask as a NIfTI volume (stored as predict writes it, and with
/// the slice axis reversed and the affine saying so) or as a SEG, each giving back the mask
/// slice by slice; masks on another grid, another size or not a mask at all are refused.
#[test]
fn a_series_pairs_with_a_nifti_mask_or_a_seg() {
    use crate::ReadOptions;
    use crate::inputs::{read_input, write_mask_volume};
    use crate::slice::Intensity;
    let dir = tempfile::tempdir().unwrap();
    let series_dir = dir.path().join("series");
    let (c30, s30) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
    write_all(
        &series_dir,
        &series(5, [c30, s30, 0.0, 0.0, 0.0, -1.0], "1.2.3.9"),
    );
    // A lesion on slices 1 and 3 (of 4x6 each), different per slice.
    let truth: Vec<Vec<u8>> = (0..5)
        .map(|k| {
            (0..24)
                .map(|p| u8::from(k % 2 == 1 && p % (k + 2) == 0))
                .collect()
        })
        .collect();
    let input = read_input(&series_dir, Intensity::Auto).unwrap();
    let (volume, dicom) = (input.volume.unwrap(), input.dicom.unwrap());
    let opts = ReadOptions {
        intensity: Intensity::Auto,
        size: 8,
        keep_empty: true,
        soft_labels: false,
    };
    let masks_of = |mask: &Path| -> Vec<Vec<u8>> {
        let got = crate::readers::read_source(&series_dir, mask, &ReadOptions { size: 0, ..opts });
        let got = got.unwrap_or_else(|e| panic!("{}: {e}", mask.display()));
        assert_eq!((got.n_volumes, got.n_slices_total), (1, 5));
        assert!(got.sources.iter().any(|(p, _)| p == mask));
        got.slices.into_iter().map(|s| s.mask).collect()
    };

    let nii = dir.path().join("mask.nii.gz");
    write_mask_volume(&volume, &truth, &nii).unwrap();
    assert_eq!(masks_of(&nii), truth);

    // The same mask stored with the slice axis reversed, its affine moved to match.
    let mut flipped = volume.clone();
    let h = &mut flipped.header;
    for row in [&mut h.srow_x, &mut h.srow_y, &mut h.srow_z] {
        row[3] += 4.0 * row[2];
        row[2] = -row[2];
    }
    let reversed: Vec<Vec<u8>> = truth.iter().rev().cloned().collect();
    let nii_flipped = dir.path().join("flipped.nii");
    write_mask_volume(&flipped, &reversed, &nii_flipped).unwrap();
    assert_eq!(masks_of(&nii_flipped), truth);

    let seg = dir.path().join("mask_seg.dcm");
    seg::write_seg(&dicom.seg_source(), &truth, &seg).unwrap();
    assert_eq!(masks_of(&seg), truth);

    // Only slices with lesion are kept by default, resized to the prepared side.
    let kept = crate::readers::read_source(
        &series_dir,
        &seg,
        &ReadOptions {
            keep_empty: false,
            ..opts
        },
    )
    .unwrap();
    assert_eq!(kept.slices.len(), 2);
    assert_eq!((kept.slices[0].height, kept.slices[0].width), (8, 8));

    // Refused, naming the mask: a grid shifted by half a voxel, a series file as the mask,
    // a text file.
    let mut shifted = volume.clone();
    shifted.header.srow_x[3] += 0.3;
    let nii_shifted = dir.path().join("shifted.nii");
    write_mask_volume(&shifted, &truth, &nii_shifted).unwrap();
    let not_seg = std::fs::read_dir(&series_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = dir.path().join("mask.txt");
    std::fs::write(&text, "no").unwrap();
    for (mask, needle) in [
        (&nii_shifted, "not on the series' voxel grid"),
        (&not_seg, "not a DICOM Segmentation"),
        (&text, "must be a NIfTI volume"),
    ] {
        let err = crate::readers::read_source(&series_dir, mask, &opts)
            .err()
            .unwrap_or_else(|| panic!("{} accepted", mask.display()))
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(
            err.contains(&mask.file_name().unwrap().to_string_lossy().to_string()),
            "{err}"
        );
    }
}
