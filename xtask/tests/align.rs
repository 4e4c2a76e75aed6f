//! `cargo xtask align-labels` end to end: on frames and crops made here, whose answer is known,
//! and on one small volume of the real data, whose carried masks must agree with Inf-Net's own
//! pseudo-labels of those images (they could not if the masks landed elsewhere).

use std::path::Path;
use std::process::{Command, Output};

use image::GrayImage;

fn align(images: &Path, labels: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("align-labels")
        .arg("--images")
        .arg(images)
        .arg("--labels")
        .arg(labels)
        .arg("--out")
        .arg(out)
        .output()
        .expect("xtask runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A smooth 8-bit image of Gaussian blobs placed by a seeded linear congruential generator.
fn blobs(side: u32, seed: u64) -> GrayImage {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let side_f = side as f32;
    let centres: Vec<(f32, f32, f32)> = (0..30)
        .map(|_| (next() * side_f, next() * side_f, 2.0 + 5.0 * next()))
        .collect();
    GrayImage::from_fn(side, side, |x, y| {
        let v: f32 = centres
            .iter()
            .map(|&(cx, cy, r)| {
                (-((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)) / (r * r)).exp()
            })
            .sum();
        image::Luma([(60.0 * v).min(255.0) as u8])
    })
}

/// What an Inf-Net copy of the crop `(x, y, w, h)` of `frame` looks like to align-labels: the
/// crop enlarged twice and turned a quarter turn clockwise (so a counter-clockwise turn and
/// halving give the crop back), its grey levels windowed differently.
fn infnet_copy(frame: &GrayImage, (x, y, w, h): (u32, u32, u32, u32)) -> GrayImage {
    let crop = image::imageops::crop_imm(frame, x, y, w, h).to_image();
    let big = image::imageops::resize(&crop, 2 * w, 2 * h, image::imageops::FilterType::Nearest);
    let turned = image::imageops::rotate90(&big);
    GrayImage::from_fn(turned.width(), turned.height(), |i, j| {
        let v = f32::from(turned.get_pixel(i, j).0[0]);
        image::Luma([(0.8 * v + 30.0) as u8])
    })
}

#[test]
fn crops_of_frames_get_their_frames_masks_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let (labels, images, out) = (
        dir.path().join("labels"),
        dir.path().join("infnet"),
        dir.path().join("aligned"),
    );
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(labels.join(sub)).unwrap();
    }
    std::fs::create_dir_all(images.join("images")).unwrap();
    let side = 64;
    let frames: Vec<GrayImage> = (0..6).map(|s| blobs(side, s)).collect();
    for (i, f) in frames.iter().enumerate() {
        f.save(labels.join(format!("images/f{i}.png"))).unwrap();
        // Each frame's mask: a square whose corner moves with the frame index.
        let m = GrayImage::from_fn(side, side, |x, y| {
            let c = 20 + 2 * i as u32;
            image::Luma([if (c..c + 10).contains(&x) && (c..c + 10).contains(&y) {
                255
            } else {
                0
            }])
        });
        m.save(labels.join(format!("masks/f{i}.png"))).unwrap();
    }
    // Volume "a": slices 1-3 are crops of frames 0-2; volume "b": slices 1-2 of frames 4-5,
    // and slice 3 is noise that matches no frame.
    let crop = (12, 9, 36, 44);
    let slices = [("a_1", 0), ("a_2", 1), ("a_3", 2), ("b_1", 4), ("b_2", 5)];
    for (name, f) in slices {
        infnet_copy(&frames[f], crop)
            .save(images.join(format!("images/{name}.png")))
            .unwrap();
    }
    let noise = GrayImage::from_fn(88, 72, |x, y| {
        image::Luma([((x * 7919 + y * 104729) % 251) as u8])
    });
    noise.save(images.join("images/b_3.png")).unwrap();

    let run = align(&images, &labels, &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    let rows: Vec<Vec<&str>> = index
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let found: Vec<(&str, &str, &str, &str)> =
        rows.iter().map(|r| (r[0], r[2], r[4], r[5])).collect();
    let expected: Vec<(String, String)> = slices
        .iter()
        .map(|&(name, f)| (name.to_string(), format!("f{f}")))
        .collect();
    assert_eq!(
        found
            .iter()
            .map(|&(n, f, _, _)| (n.to_string(), f.to_string()))
            .collect::<Vec<_>>(),
        expected,
        "{index}"
    );
    assert!(
        found.iter().all(|&(_, _, x, y)| (x, y) == ("12", "9")),
        "{index}"
    );
    assert!(!out.join("images/b_3.png").exists());

    // The mask of a_2 is frame 1's square (22..32 in the frame, 10..20 in the crop) enlarged
    // and turned like the image: its lesion pixels are within a pixel's rim of 20 x 20.
    let mask = image::open(out.join("masks/a_2.png")).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (88, 72));
    let lesion = mask.pixels().filter(|p| p.0[0] == 255).count();
    assert!(
        (19 * 19..=21 * 21).contains(&lesion),
        "{lesion} lesion pixels"
    );
    let copied = std::fs::read(out.join("images/a_2.png")).unwrap();
    assert_eq!(
        copied,
        std::fs::read(images.join("images/a_2.png")).unwrap()
    );

    // A second run refuses the existing folder and leaves it as it was.
    let again = align(&images, &labels, &out);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("index.csv")).unwrap(),
        index
    );

    // A labels folder with a missing mask is refused by name.
    std::fs::remove_file(labels.join("masks/f3.png")).unwrap();
    let broken = align(&images, &labels, &dir.path().join("other"));
    assert!(!broken.status.success());
    assert!(stderr(&broken).contains("f3"), "{}", stderr(&broken));
    assert!(!dir.path().join("other").exists());
}

#[test]
fn a_real_volume_gets_masks_that_agree_with_its_pseudo_labels() {
    let Some(data) = d2a_tests::shared_data() else {
        return;
    };
    // radiopaedia 4_85506_1: 13 slices, a 630-pixel scan (scale about 256 / 630).
    let volume = "Data-1_radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm";
    let source = data.join("covid20-infnet-pseudo");
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("infnet");
    for sub in ["images", "pseudo_masks"] {
        std::fs::create_dir_all(images.join(sub)).unwrap();
    }
    for entry in std::fs::read_dir(source.join("images")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{volume}_")) {
            std::fs::copy(&path, images.join("images").join(&name)).unwrap();
            let mask = name.replace(".jpg", ".png");
            std::fs::copy(
                source.join("pseudo_masks").join(&mask),
                images.join("pseudo_masks").join(&mask),
            )
            .unwrap();
        }
    }
    let out = dir.path().join("aligned");
    let run = align(&images, &data.join("ma20-radiologist-256"), &out);
    assert!(run.status.success(), "{}", stderr(&run));
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    let rows: Vec<Vec<String>> = index
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert!(rows.len() >= 12, "{index}");
    let mut dice = Vec::new();
    for r in &rows {
        let scale: f32 = r[6].parse().unwrap();
        assert!((0.38..=0.42).contains(&scale), "{index}");
        let read = |p: &Path| image::open(p).unwrap().to_luma8();
        let ours = read(&out.join("masks").join(format!("{}.png", r[0])));
        let pseudo = read(&images.join("pseudo_masks").join(format!("{}.png", r[0])));
        let (mut both, mut total) = (0, 0);
        for (a, b) in ours.pixels().zip(pseudo.pixels()) {
            let (a, b) = (a.0[0] == 255, b.0[0] >= 128);
            both += usize::from(a && b);
            total += usize::from(a) + usize::from(b);
        }
        dice.push(2.0 * both as f64 / total.max(1) as f64);
    }
    let mean = dice.iter().sum::<f64>() / dice.len() as f64;
    // Measured 0.68 over this volume (0.35-0.85 over the others); a mask carried to the wrong
    // place or frame overlaps the pseudo-labels at about the lesion share, a few per cent.
    assert!(
        mean > 0.5,
        "mean Dice against the pseudo-labels {mean:.3}: {dice:?}"
    );
}
