//! The `d2a` binary as a user runs it: output, files written, exit codes and error messages.

use std::path::Path;
use std::process::{Command, Output};

use image::{GrayImage, Luma};

fn d2a(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_d2a"))
        .args(args)
        .output()
        .expect("running d2a")
}

/// Fails the test with d2a's stderr unless the run succeeded.
fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `d2a train` on 16 phantoms of 32², one epoch, into `run`, plus `extra` arguments.
fn train_tiny(run: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train", "--epochs", "1", "--slices", "16", "--size", "32", "--out",
    ];
    args.push(run.to_str().unwrap());
    args.extend_from_slice(extra);
    d2a(&args)
}

fn write_mask(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_fn(w, h, |x, y| Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

#[test]
fn eval_masks_prints_a_table_and_writes_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, truth) = (tmp.path().join("pred"), tmp.path().join("truth"));
    // 4x4 truth with 4 lesion pixels (left column); prediction finds 2 of them and adds 2.
    write_mask(
        &truth.join("s1.png"),
        4,
        4,
        |x, _| if x == 0 { 255 } else { 0 },
    );
    write_mask(&pred.join("s1.png"), 4, 4, |x, y| {
        if (x == 0 || x == 3) && y < 2 { 200 } else { 0 }
    });
    write_mask(&truth.join("s0.png"), 4, 4, |_, _| 0);
    write_mask(&pred.join("s0.png"), 4, 4, |_, _| 0);
    let json = tmp.path().join("out/report.json");
    std::fs::create_dir_all(json.parent().unwrap()).unwrap();
    let out = d2a(&[
        "eval-masks",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dice")
            && stdout.contains("per-slice mean")
            && stdout.contains("slices: 2"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["n_slices"], 2);
    assert_eq!(report["slices"][0]["name"], "s0");
    assert_eq!(report["slices"][1]["tp"], 2);
    assert_eq!(report["slices"][1]["fp"], 2);
    assert_eq!(report["slices"][1]["fn"], 2);
    assert_eq!(report["slices"][1]["tn"], 10);
    assert_eq!(report["slices"][1]["dice"], 0.5);
    // Mean of Dice 1 (both empty) and 0.5; global Dice is that of slice s1 alone.
    assert_eq!(report["per_slice_mean"]["dice"], 0.75);
    assert_eq!(report["global"]["dice"], 0.5);
    assert_eq!(report["global"]["pixel_error"], 4.0 / 32.0);
}

#[test]
fn eval_masks_fails_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, truth) = (tmp.path().join("pred"), tmp.path().join("truth"));
    write_mask(&truth.join("s1.png"), 4, 4, |_, _| 0);
    write_mask(&pred.join("s1.png"), 5, 4, |_, _| 0);
    let out = d2a(&[
        "eval-masks",
        "--pred",
        pred.to_str().unwrap(),
        "--truth",
        truth.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("s1.png") && stderr.contains("5x4"),
        "{stderr}"
    );

    let out = d2a(&[
        "eval-masks",
        "--pred",
        "/nonexistent/pred",
        "--truth",
        truth.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/pred"));
}

#[test]
fn train_on_phantoms_writes_a_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train_tiny(&run, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("validation Dice"), "{stdout}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(line["epoch"], 1);
    assert!(line["val_dice"].as_f64().unwrap() >= 0.0);
    for file in ["last.safetensors", "best.safetensors", "config.json"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    assert!(run.join("curves.png").is_file());
    // The folder holds a finished run now: refused without --resume or --force.
    let again = train_tiny(&run, &[]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("already holds a run"),
        "{stderr}"
    );
    // Training data that is not a dataset: named in the error.
    let out = d2a(&[
        "train",
        "--train",
        "/some/data",
        "--out",
        tmp.path().join("r2").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/some/data"),
        "{stderr}"
    );
    // A weights-only checkpoint cannot be resumed from.
    std::fs::copy(run.join("best.safetensors"), run.join("last.safetensors")).unwrap();
    let out = d2a(&["train", "--resume", run.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("weights-only checkpoint"),
        "{stderr}"
    );
}

#[test]
fn repeats_report_mean_and_std_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("rep");
    let out = train_tiny(&base, &["--repeats", "2", "--seed", "5", "-q"]);
    assert_success(&out);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("summary.json")).unwrap()).unwrap();
    let dice: Vec<f64> = ["seed-5", "seed-6"]
        .iter()
        .map(|s| {
            let line = std::fs::read_to_string(base.join(s).join("metrics.jsonl")).unwrap();
            serde_json::from_str::<serde_json::Value>(line.trim()).unwrap()["val_dice"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let mean = (dice[0] + dice[1]) / 2.0;
    let std = ((dice[0] - mean).powi(2) + (dice[1] - mean).powi(2)).sqrt(); // n - 1 = 1
    let got = &summary["best_val_dice"];
    assert!(
        (got["mean"].as_f64().unwrap() - mean).abs() < 1e-12,
        "{summary}"
    );
    assert!(
        (got["std"].as_f64().unwrap() - std).abs() < 1e-12,
        "{summary}"
    );
}

/// Every tensor of a safetensors file, as raw bytes by name.
fn tensors(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.data().to_vec()))
        .collect()
}

/// A run killed (SIGKILL) after its first checkpoint and resumed ends with the same weights,
/// BatchNorm statistics, optimiser moments and metrics as an uninterrupted run, bit for bit.
#[test]
fn a_killed_run_resumes_to_the_same_weights_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let (straight, killed) = (tmp.path().join("straight"), tmp.path().join("killed"));
    let args = |out: &Path| {
        [
            "train", "--epochs", "6", "--slices", "16", "--size", "32", "--seed", "3", "-q",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect::<Vec<_>>()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_d2a"))
        .args(args(&straight))
        .output()
        .unwrap();
    assert_success(&out);

    let mut child = Command::new(env!("CARGO_BIN_EXE_d2a"))
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = killed.join("metrics.jsonl");
    let epochs_done = || std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count());
    let start = std::time::Instant::now();
    while epochs_done() < 1 {
        assert!(
            start.elapsed().as_secs() < 300,
            "no epoch finished in 5 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let done = epochs_done();
    assert!(done < 6, "the run finished before it could be killed");

    let out = d2a(&["train", "--resume", killed.to_str().unwrap(), "-q"]);
    assert_success(&out);
    let (a, b) = (
        tensors(&straight.join("last.safetensors")),
        tensors(&killed.join("last.safetensors")),
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    assert!(
        a.keys().any(|k| k.starts_with("optim.m.")) && a.keys().any(|k| k.ends_with("running_var"))
    );
    for (name, bytes) in &a {
        assert!(
            bytes == &b[name],
            "{name} differs after resuming from epoch {done}"
        );
    }
    // The same metrics, but for the timings.
    let strip = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("seconds");
                v
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&straight), strip(&killed));
    assert_eq!(strip(&killed).len(), 6);
}

#[test]
fn info_prints_the_spec_counts() {
    for (model, params, macs_g) in [
        ("d2a-vgg-tiny", 2_414_439u64, 20.6),
        ("d2a-vgg", 38_486_817, 313.3),
        ("d2a-resnext50", 100_834_833, 227.2),
    ] {
        let out = d2a(&["info", "--model", model, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["model"], model);
        assert_eq!(v["params"], params);
        assert!(
            (v["macs"].as_f64().unwrap() / 1e9 - macs_g).abs() < 0.05,
            "{v}"
        );
        assert_eq!(v["input"], serde_json::json!([1, 1, 512, 512]));
    }
    let out = d2a(&["info", "--model", "d2a-vgg-tiny", "--size", "100"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 16"));
    let out = d2a(&["info", "--model", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("d2a-resnext50"));
}

#[test]
fn info_all_lists_every_model() {
    let out = d2a(&["info", "--all", "--json"]);
    assert_success(&out);
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in [
        "unet",
        "attention-unet",
        "unet-pp",
        "fcn8s-resnet101",
        "deeplabv3-resnet101",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
}

#[test]
fn baselines_train_from_the_cli_and_pretrained_ones_need_their_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("unet");
    let out = train_tiny(&run, &["--model", "unet-tiny", "-q"]);
    assert_success(&out);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model"], "unet-tiny");
    // The checkpoint says which model it holds: inference rebuilds the U-Net from it alone.
    let loaded = d2a_model::Segmenter::from_checkpoint(&run.join("best.safetensors")).unwrap();
    assert_eq!(loaded.name(), "unet-tiny");
    assert_eq!(
        loaded.model().config(),
        &d2a_model::ModelConfig::by_name("unet-tiny").unwrap()
    );

    // A ResNet-101 baseline from scratch needs no weights.
    let out = train_tiny(
        &tmp.path().join("fcn"),
        &["--model", "fcn8s-resnet101-tiny+scratch", "-q"],
    );
    assert_success(&out);
    // No ImageNet weights where the model looks for them: refused before anything is written,
    // with the ways out named.
    let missing = tmp.path().join("nothing.safetensors");
    let run = tmp.path().join("deeplab");
    let out = d2a(&[
        "train",
        "--model",
        "deeplabv3-resnet101",
        "--backbone",
        missing.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in [
        "nothing.safetensors",
        "convert-weights",
        "deeplabv3-resnet101+scratch",
    ] {
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
    }
    assert!(!run.exists());
}

#[test]
fn prepare_counts_slice_folders_and_refuses_truncated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, masks) = (tmp.path().join("images"), tmp.path().join("masks"));
    // Three slices of volume "vol" (two with lesion) and one empty slice of volume "other".
    for (name, lesion) in [
        ("vol_1", true),
        ("vol_2", false),
        ("vol_3", true),
        ("other_1", false),
    ] {
        write_mask(&images.join(format!("{name}.png")), 20, 12, |x, y| {
            ((x * 7 + y * 3) % 256) as u8
        });
        write_mask(&masks.join(format!("{name}.png")), 20, 12, |x, y| {
            if lesion && x > 10 && y > 5 { 255 } else { 0 }
        });
    }
    let out = tmp.path().join("prepared");
    let args = |out: &Path| {
        vec![
            "prepare".to_string(),
            "--images".into(),
            images.to_str().unwrap().into(),
            "--masks".into(),
            masks.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            "--size".into(),
            "16".into(),
            "--json".into(),
        ]
    };
    let run = |a: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_d2a"))
            .args(a)
            .output()
            .unwrap()
    };
    let o = run(args(&out));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"n_volumes": 2, "n_slices_total": 4, "n_slices_kept": 2, "size": 16, "out": out.to_str().unwrap()})
    );
    assert!(out.join("manifest.json").is_file());
    // A truncated image fails with its name, and leaves no prepared folder behind.
    let bytes = std::fs::read(images.join("vol_3.png")).unwrap();
    std::fs::write(images.join("vol_3.png"), &bytes[..bytes.len() / 2]).unwrap();
    let out2 = tmp.path().join("prepared2");
    let o = run(args(&out2));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("vol_3.png"));
    assert!(!out2.exists());
}

/// Writes phantom `seed` as `images/<name>.png` and `masks/<name>.png` under `dir`.
fn write_phantom(dir: &Path, name: &str, seed: u64, size: usize) {
    let s = d2a_data::synthetic::phantom(seed, size);
    write_mask(
        &dir.join(format!("images/{name}.png")),
        size as u32,
        size as u32,
        |x, y| (s.image[y as usize * size + x as usize] * 255.0).round() as u8,
    );
    write_mask(
        &dir.join(format!("masks/{name}.png")),
        size as u32,
        size as u32,
        |x, y| s.mask[y as usize * size + x as usize] * 255,
    );
}

#[test]
fn eval_and_predict_a_trained_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train_tiny(&run, &["-q"]);
    assert_success(&out);
    let best = run.join("best.safetensors");
    let data = tmp.path().join("data");
    for i in 0..3 {
        write_phantom(&data, &format!("vol_{i}"), 100 + i, 32);
    }

    // eval: the eval-masks JSON schema, one overlay per slice.
    let (json, overlays) = (tmp.path().join("eval.json"), tmp.path().join("overlays"));
    let out = d2a(&[
        "eval",
        "--checkpoint",
        best.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--overlays",
        overlays.to_str().unwrap(),
    ]);
    assert_success(&out);
    let report: d2a_metrics::Report =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report.n_slices, 3);
    assert_eq!(report.slices[0].name, "vol_0");
    let overlay = image::open(overlays.join("vol_1.png")).unwrap();
    // Slices are scored at their own size.
    assert_eq!((overlay.width(), overlay.height()), (32, 32));
    // The truth outline (green or yellow) is drawn where the truth has lesion.
    let truth = d2a_data::synthetic::phantom(101, 32);
    assert!(truth.has_lesion());
    let rgb = overlay.to_rgb8();
    assert!(
        rgb.pixels()
            .any(|p| p.0 == [40, 220, 40] || p.0 == [255, 230, 0])
    );

    // predict: a PNG and a NIfTI volume.
    let png = data.join("images/vol_2.png");
    let volume = tmp.path().join("scan.nii.gz");
    let arr = ndarray::Array3::from_shape_fn((32, 32, 3), |(x, y, z)| {
        let s = d2a_data::synthetic::phantom(200 + z as u64, 32);
        -1250.0f32 + 1500.0 * s.image[y * 32 + x]
    });
    let header = nifti::NiftiHeader {
        pixdim: [1.0, 0.8, 0.8, 5.0, 1.0, 1.0, 1.0, 1.0],
        ..Default::default()
    };
    nifti::writer::WriterOptions::new(&volume)
        .reference_header(&header)
        .write_nifti(&arr)
        .unwrap();
    let pred = tmp.path().join("pred");
    let args = [
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        png.to_str().unwrap(),
        volume.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
    ];
    let out = d2a(&args);
    assert_success(&out);
    let mask = image::open(pred.join("vol_2_mask.png")).unwrap().to_luma8();
    assert_eq!(mask.dimensions(), (32, 32));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    assert!(pred.join("vol_2_overlay.png").is_file());
    // d2a-model's one-call segmenter, given the slice as an embedder reads it (8-bit / 255),
    // draws exactly predict's mask (the slice is resized 32 -> 48 -> 32 on the way).
    let pixels: Vec<f32> = image::open(&png)
        .unwrap()
        .to_luma8()
        .pixels()
        .map(|p| f32::from(p.0[0]) / 255.0)
        .collect();
    let segmenter = d2a_model::Segmenter::from_checkpoint(&best).unwrap();
    assert_eq!(segmenter.input_size(), 48);
    let ours = segmenter
        .segment(d2a_model::Image::new(&pixels, 32, 32).unwrap())
        .unwrap();
    let theirs: Vec<u8> = mask.pixels().map(|p| p.0[0] / 255).collect();
    assert_eq!(ours, theirs);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pred.join("scan.json")).unwrap()).unwrap();
    let pixels = summary["lesion_pixels"].as_u64().unwrap();
    let ml = summary["lesion_ml"].as_f64().unwrap();
    assert!(
        (ml - pixels as f64 * 0.8 * 0.8 * 5.0 / 1000.0).abs() < 1e-6,
        "{summary}"
    );
    assert_eq!(summary["slices"].as_array().unwrap().len(), 3);
    let back = nifti::ReaderOptions::new()
        .read_file(pred.join("scan_mask.nii.gz"))
        .unwrap();
    use nifti::NiftiObject as _;
    assert_eq!(back.header().pixdim, header.pixdim);
    assert_eq!(&back.header().dim[1..4], &[32, 32, 3]);

    // Bad input: clear errors, nothing overwritten.
    let again = d2a(&args);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("--force"),
        "{stderr}"
    );
    let text = tmp.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let out = d2a(&[
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        text.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("notes.png"),
        "{stderr}"
    );
    let out = d2a(&[
        "eval",
        "--checkpoint",
        best.to_str().unwrap(),
        "--model",
        "d2a-vgg",
        "--data",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not fit"),
        "{stderr}"
    );
    let truncated = tmp.path().join("cut.safetensors");
    let bytes = std::fs::read(&best).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = d2a(&[
        "eval",
        "--checkpoint",
        truncated.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("cut.safetensors"),
        "{stderr}"
    );
}

#[test]
fn bench_reports_json_for_models_ops_and_the_candle_kernel() {
    for (args, name) in [
        (
            &["--model", "d2a-vgg-tiny", "--size", "32", "--mode", "train"][..],
            "d2a-vgg-tiny",
        ),
        (
            &["--model", "unet-tiny", "--size", "32", "--candle"][..],
            "unet-tiny/candle",
        ),
        (
            &["--op", "conv-grouped", "--mode", "train"][..],
            "conv-grouped",
        ),
        (
            &["--op", "conv-dilated", "--candle"][..],
            "conv-dilated/candle",
        ),
    ] {
        let mut all = vec!["bench", "--runs", "1", "--json"];
        all.extend_from_slice(args);
        let out = d2a(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["model"], name);
        assert!(v["median_s"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["min_s"].as_f64() <= v["max_s"].as_f64(), "{v}");
    }
    let out = d2a(&["bench", "--model", "d2a-vgg-tiny", "--size", "40"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of 16"));
}

/// Runs `d2a args`, expects a failure whose message holds every one of `needles`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let out = d2a(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{args:?}: {n:?} not in {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn hostile_inputs_get_clear_errors_and_nothing_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    assert!(train_tiny(&run, &["-q"]).status.success());
    let best = run.join("best.safetensors");
    let best_s = best.to_str().unwrap();
    let original = std::fs::read(&best).unwrap();
    let data = tmp.path().join("data");
    write_phantom(&data, "vol_0", 100, 32);
    write_phantom(&data, "vol_1", 101, 32);
    let data_s = data.to_str().unwrap();
    let truth = data.join("masks/vol_0.png");
    let truth_before = std::fs::read(&truth).unwrap();

    // Outputs never land on inputs.
    fails_with(
        &[
            "eval",
            "--checkpoint",
            best_s,
            "--data",
            data_s,
            "--json",
            best_s,
        ],
        &["--json", "best.safetensors", "input"],
    );
    let masks = data.join("masks");
    fails_with(
        &[
            "eval",
            "--checkpoint",
            best_s,
            "--data",
            data_s,
            "--overlays",
            masks.to_str().unwrap(),
        ],
        &["--overlays", "input"],
    );
    fails_with(
        &[
            "eval-masks",
            "--pred",
            masks.to_str().unwrap(),
            "--truth",
            masks.to_str().unwrap(),
            "--json",
            truth.to_str().unwrap(),
        ],
        &["--json", "input"],
    );
    assert_eq!(std::fs::read(&best).unwrap(), original);
    assert_eq!(std::fs::read(&truth).unwrap(), truth_before);

    // train --force with a mistyped path keeps the old run; a wrong --test fails up front.
    fails_with(
        &[
            "train",
            "--force",
            "--train",
            "/no/such/data",
            "--out",
            run.to_str().unwrap(),
        ],
        &["/no/such/data"],
    );
    assert_eq!(std::fs::read(&best).unwrap(), original);
    let other = tmp.path().join("other");
    fails_with(
        &[
            "train",
            "--test",
            "/no/such/test",
            "--out",
            other.to_str().unwrap(),
        ],
        &["/no/such/test", "does not exist"],
    );
    assert!(!other.join("last.safetensors").exists());

    // --resume: --epochs extends the run (recorded), other settings are refused.
    fails_with(
        &["train", "--resume", run.to_str().unwrap(), "--lr", "1"],
        &["--lr"],
    );
    let out = d2a(&[
        "train",
        "-q",
        "--resume",
        run.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert_success(&out);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["fit"]["epochs"], 2);
    let lines = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let original = std::fs::read(&best).unwrap();
    // Logs carry no colour codes when stderr is not a terminal.
    let out = d2a(&["train", "--resume", run.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("resuming"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");

    // predict never writes over one of its inputs, even with --force.
    let inputs = tmp.path().join("in");
    write_phantom(&inputs, "x", 7, 32);
    let x = inputs.join("images/x.png");
    let x_mask = inputs.join("images/x_mask.png");
    std::fs::copy(&x, &x_mask).unwrap();
    let before = std::fs::read(&x_mask).unwrap();
    fails_with(
        &[
            "predict",
            "--checkpoint",
            best_s,
            x.to_str().unwrap(),
            x_mask.to_str().unwrap(),
            "--out",
            inputs.join("images").to_str().unwrap(),
            "--force",
        ],
        &["x_mask.png", "input"],
    );
    assert_eq!(std::fs::read(&x_mask).unwrap(), before);
    // The OS message appears once, after the path and the operation.
    let out = d2a(&[
        "eval",
        "--checkpoint",
        "/no/such.safetensors",
        "--data",
        data_s,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("/no/such.safetensors"), "{stderr}");
    // A resumed config.json with impossible values is named.
    let broken = tmp.path().join("broken");
    assert!(train_tiny(&broken, &["-q"]).status.success());
    let cfg_path = broken.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["batch"] = serde_json::json!(0);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    fails_with(
        &["train", "--resume", broken.to_str().unwrap()],
        &["config.json", "--batch"],
    );

    // Numbers out of range are named.
    fails_with(&["bench", "--runs", "0"], &["--runs"]);
    fails_with(&["info", "--size", "1099511627776"], &["--size"]);
    fails_with(
        &[
            "predict",
            "--checkpoint",
            best_s,
            "--size",
            "1048576",
            x.to_str().unwrap(),
            "--out",
            other.to_str().unwrap(),
        ],
        &["--size", "16384"],
    );
    fails_with(
        &[
            "eval",
            "--checkpoint",
            best_s,
            "--data",
            data_s,
            "--batch",
            "0",
        ],
        &["--batch"],
    );
    fails_with(
        &[
            "train",
            "--weight-decay=-1",
            "--out",
            other.to_str().unwrap(),
        ],
        &["weight decay"],
    );

    // Checkpoints: non-finite weights, a PyTorch file under a safetensors name, a huge input
    // side, a FIFO.
    let tensors = candle_core::safetensors::load(&best, &candle_core::Device::Cpu).unwrap();
    let meta = d2a_model::checkpoint::read_metadata(&best).unwrap();
    let mut poisoned: Vec<(String, candle_core::Tensor)> = tensors.into_iter().collect();
    poisoned.sort_by(|a, b| a.0.cmp(&b.0));
    let (name, t) = poisoned
        .iter_mut()
        .find(|(k, _)| k.ends_with("weight"))
        .unwrap();
    *t = (&*t * f64::NAN).unwrap();
    let name = name.clone();
    let nan = tmp.path().join("nan.safetensors");
    d2a_model::checkpoint::save_tensors(&poisoned, &meta, &nan).unwrap();
    fails_with(
        &[
            "eval",
            "--checkpoint",
            nan.to_str().unwrap(),
            "--data",
            data_s,
        ],
        &["nan.safetensors", &name, "NaN"],
    );
    let pth = tmp.path().join("weights.safetensors");
    std::fs::write(&pth, b"PK\x03\x04 a zip archive, as torch.save writes").unwrap();
    fails_with(
        &[
            "eval",
            "--checkpoint",
            pth.to_str().unwrap(),
            "--data",
            data_s,
        ],
        &["weights.safetensors", "PyTorch"],
    );
    let mut big = meta.clone();
    big.insert("d2a.input_size".into(), "1048576".into());
    let huge = tmp.path().join("huge.safetensors");
    d2a_model::checkpoint::save_tensors(
        &candle_core::safetensors::load(&best, &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        &big,
        &huge,
    )
    .unwrap();
    fails_with(
        &[
            "eval",
            "--checkpoint",
            huge.to_str().unwrap(),
            "--data",
            data_s,
        ],
        &["huge.safetensors", "1048576"],
    );
    #[cfg(unix)]
    {
        let fifo = tmp.path().join("fifo.safetensors");
        assert!(
            Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        fails_with(
            &[
                "eval",
                "--checkpoint",
                fifo.to_str().unwrap(),
                "--data",
                data_s,
            ],
            &["fifo.safetensors", "not a regular file"],
        );
    }
    assert_eq!(std::fs::read(&best).unwrap(), original);
}

#[test]
fn cosine_schedule_threshold_on_validation_and_tta() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = d2a(&[
        "train",
        "-q",
        "--epochs",
        "2",
        "--slices",
        "16",
        "--size",
        "32",
        "--schedule",
        "cosine",
        "--lr",
        "0.002",
        "--threshold-on-val",
        "--normalise",
        "percentile",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_success(&out);
    // Cosine over 2 epochs: 2e-3, then 1e-3.
    let lrs: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        (lrs[0] - 2e-3).abs() < 1e-12 && (lrs[1] - 1e-3).abs() < 1e-12,
        "{lrs:?}"
    );
    let best = run.join("best.safetensors");
    let meta = d2a_model::checkpoint::read_metadata(&best).unwrap();
    let p: f64 = meta["d2a.threshold"].parse().unwrap();
    assert!(
        p > 0.0 && p < 1.0 && ((p * 20.0).round() - p * 20.0).abs() < 1e-9,
        "{p}"
    );
    assert_eq!(meta["d2a.normalise"], "percentile");
    let segmenter = d2a_model::Segmenter::from_checkpoint(&best).unwrap();
    assert_eq!(segmenter.threshold(), p);
    assert_eq!(segmenter.normalise(), d2a_model::Normalise::Percentile);

    let data = tmp.path().join("data");
    write_phantom(&data, "vol_0", 100, 32);
    let (best_s, data_s) = (best.to_str().unwrap(), data.to_str().unwrap());
    let out = d2a(&["eval", "--checkpoint", best_s, "--data", data_s]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("threshold {p}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = d2a(&[
        "eval",
        "--checkpoint",
        best_s,
        "--data",
        data_s,
        "--threshold",
        "0.3",
        "--tta",
    ]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("threshold 0.3"));
    let out = d2a(&[
        "eval",
        "--checkpoint",
        best_s,
        "--data",
        data_s,
        "--threshold",
        "1.5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threshold"));
    let pred = tmp.path().join("pred");
    let png = data.join("images/vol_0.png");
    let out = d2a(&[
        "predict",
        "--checkpoint",
        best_s,
        "--tta",
        png.to_str().unwrap(),
        "--out",
        pred.to_str().unwrap(),
    ]);
    assert_success(&out);
    assert!(pred.join("vol_0_mask.png").is_file());
    // The Segmenter, given the raw slice, normalises as training did and draws predict's mask.
    let raw: Vec<f32> = image::open(&png)
        .unwrap()
        .to_luma8()
        .pixels()
        .map(|q| f32::from(q.0[0]) / 255.0)
        .collect();
    let ours = segmenter
        .with_tta(d2a_model::Tta::Flip)
        .segment(d2a_model::Image::new(&raw, 32, 32).unwrap())
        .unwrap();
    let theirs: Vec<u8> = image::open(pred.join("vol_0_mask.png"))
        .unwrap()
        .to_luma8()
        .pixels()
        .map(|q| q.0[0] / 255)
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn recipe_options_are_recorded_and_bad_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let out = train_tiny(
        &run,
        &[
            "-q",
            "--normalise",
            "clahe",
            "--tversky-beta",
            "0.7",
            "--intensity-augment",
            "--soft-labels",
            "--val-volumes",
            "phantom-1",
            "--device",
            "cpu",
        ],
    );
    assert_success(&out);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["normalise"], "clahe");
    assert_eq!(cfg["fit"]["tversky_beta"], 0.7);
    assert_eq!(cfg["intensity_augment"], true);
    assert_eq!(cfg["soft_labels"], true);
    assert_eq!(cfg["val_volumes"], serde_json::json!(["phantom-1"]));
    let meta = d2a_model::checkpoint::read_metadata(&run.join("best.safetensors")).unwrap();
    assert_eq!(meta["d2a.normalise"], "clahe");

    let other = tmp.path().join("other");
    let other_s = other.to_str().unwrap();
    let base = [
        "train", "--epochs", "1", "--slices", "16", "--size", "32", "--out", other_s,
    ];
    let with =
        |extra: &[&'static str]| -> Vec<&str> { base.iter().chain(extra).copied().collect() };
    fails_with(
        &with(&["--val-volumes", "phantom-9"]),
        &["\"phantom-9\" is not in the training data", "phantom-0"],
    );
    fails_with(
        &with(&["--tversky-beta", "1.5"]),
        &["--tversky-beta", "between 0 and 1"],
    );
    fails_with(&with(&["--device", "gpu"]), &["unknown device \"gpu\""]);
    #[cfg(not(feature = "cuda"))]
    fails_with(
        &with(&["--device", "cuda:1"]),
        &["cuda:1", "--features cuda"],
    );
    assert!(!other.exists(), "a refused run left a folder");
}

#[test]
fn the_cpu_hour_recipe_fills_in_what_no_flag_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for i in 0..4 {
        write_phantom(&data, &format!("case{i}_1"), 200 + i, 32);
    }
    let data_s = data.to_str().unwrap();
    let config_of = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
    };
    // `--recipe cpu-hour` with `extra`, one epoch of 32-pixel slices, into `run`.
    let train = |run: &Path, extra: &[&str]| {
        let mut args = vec![
            "train", "-q", "--train", data_s, "--recipe", "cpu-hour", "--epochs", "1", "--size",
            "32", "--batch", "2", "--out",
        ];
        args.push(run.to_str().unwrap());
        args.extend_from_slice(extra);
        assert_success(&d2a(&args));
        let meta = d2a_model::checkpoint::read_metadata(&run.join("best.safetensors")).unwrap();
        (config_of(run), meta)
    };
    let (cfg, meta) = train(&tmp.path().join("run"), &["--whole-slice"]);
    assert_eq!(cfg["fit"]["adam"]["lr"], 1e-3);
    assert_eq!(cfg["fit"]["epochs"], 1);
    assert_eq!(cfg["size"], 32);
    assert_eq!(cfg["normalise"], "percentile");
    assert_eq!(cfg["threshold_on_val"], true);
    assert_eq!(cfg["whole_slice"], true);
    assert_eq!(cfg["fit"]["schedule"], "cosine");
    assert_eq!(cfg["soft_labels"], true);
    assert_eq!(cfg["intensity_augment"], true);
    // Whole slices: inference at the training side, not 5/4 of it.
    assert_eq!(meta["d2a.input_size"], "32");
    assert!(meta.contains_key("d2a.threshold"), "{meta:?}");

    // A flag overrides the recipe, the switches with `=false`.
    let (cfg, meta) = train(
        &tmp.path().join("other"),
        &[
            "--normalise",
            "none",
            "--schedule",
            "plateau",
            "--soft-labels=false",
            "--intensity-augment=false",
        ],
    );
    assert_eq!(cfg["normalise"], "none");
    assert_eq!(cfg["fit"]["schedule"], "plateau");
    assert_eq!(cfg["soft_labels"], false);
    assert_eq!(cfg["intensity_augment"], false);
    assert_eq!(cfg["whole_slice"], false);
    assert_eq!(meta["d2a.input_size"], "48");
    fails_with(
        &["train", "--recipe", "cpu-hour", "--epochs", "1"],
        &["--recipe is for real data"],
    );
}

#[test]
fn predict_reads_a_dicom_series_and_writes_a_mask_aligned_with_it() {
    use d2a_data::dicom::write::{CtSlice, write_ct_slice};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    assert_success(&train_tiny(&run, &["-q"]));
    let best = run.join("best.safetensors");
    // Four 32x40 phantom slices, 3 mm apart along z, written in reverse name order.
    let series = tmp.path().join("1.2.840.99.7");
    std::fs::create_dir_all(&series).unwrap();
    let (rows, columns) = (32usize, 40usize);
    for k in 0..4 {
        let p = d2a_data::synthetic::phantom(300 + k as u64, 40);
        let slice = CtSlice {
            series: "1.2.840.99.7".into(),
            sop: format!("1.2.840.99.7.{k}"),
            instance: k + 1,
            position: [-12.0, -9.6, 50.0 + 3.0 * k as f64],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            rows,
            columns,
            intercept: -1024.0,
            // The phantom's first 32 rows, its [0, 1] intensities as HU over the lung window.
            stored: p.image[..rows * columns]
                .iter()
                .map(|&v| (1024.0 - 1250.0 + 1500.0 * v) as i16)
                .collect(),
            rle: k % 2 == 1,
        };
        write_ct_slice(&series.join(format!("slice{}.dcm", 9 - k)), &slice).unwrap();
    }
    let out_dir = tmp.path().join("pred");
    let out = d2a(&[
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        series.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_success(&out);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("1.2.840.99.7.json")).unwrap())
            .unwrap();
    assert_eq!(summary["dicom"]["series_instance_uid"], "1.2.840.99.7");
    assert_eq!(summary["slices"].as_array().unwrap().len(), 4);
    assert!((summary["voxel_ml"].as_f64().unwrap() - 0.7 * 0.6 * 3.0 / 1000.0).abs() < 1e-9);
    // The mask's affine is the series' (RAS): x and y negated from DICOM's LPS.
    use nifti::NiftiObject as _;
    let mask = nifti::ReaderOptions::new()
        .read_file(out_dir.join("1.2.840.99.7_mask.nii.gz"))
        .unwrap();
    let h = mask.header();
    assert_eq!(&h.dim[..4], &[3, 40, 32, 4]);
    assert_eq!(h.srow_x, [-0.6, 0.0, 0.0, 12.0]);
    assert_eq!(h.srow_y, [0.0, -0.7, 0.0, 9.6]);
    assert_eq!(h.srow_z, [0.0, 0.0, 3.0, 50.0]);
    let mask_voxels = {
        use nifti::IntoNdArray as _;
        mask.into_volume().into_ndarray::<u8>().unwrap()
    };

    // The DICOM SEG: one frame per slice, each referencing its source instance in slice order,
    // its bits the NIfTI mask's.
    use dicom_dictionary_std::tags;
    let seg_path = out_dir.join("1.2.840.99.7_seg.dcm");
    let seg = dicom_object::open_file(&seg_path).unwrap();
    let text = |obj: &dicom_object::InMemDicomObject, tag| {
        obj.element(tag)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    };
    assert_eq!(
        text(&seg, tags::SOP_CLASS_UID),
        "1.2.840.10008.5.1.4.1.1.66.4"
    );
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), "4");
    let frames = seg
        .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    let referenced: Vec<String> = frames
        .iter()
        .map(|f| {
            let derivation = &f
                .element(tags::DERIVATION_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            let source = &derivation
                .element(tags::SOURCE_IMAGE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            text(source, tags::REFERENCED_SOP_INSTANCE_UID)
        })
        .collect();
    let want: Vec<String> = (0..4).map(|k| format!("1.2.840.99.7.{k}")).collect();
    assert_eq!(referenced, want);
    let bits = seg.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    for k in 0..4 {
        for r in 0..rows {
            for c in 0..columns {
                let i = (k * rows + r) * columns + c;
                let bit = (bits[i / 8] >> (i % 8)) & 1;
                assert_eq!(bit, mask_voxels[[c, r, k]], "frame {k} pixel {r},{c}");
            }
        }
    }
    // pydicom and highdicom, where installed, read it as a SEG of 4 frames over the series.
    let check = r#"
import sys, pydicom, highdicom
ds = pydicom.dcmread(sys.argv[1])
seg = highdicom.seg.Segmentation.from_dataset(ds)
assert int(ds.NumberOfFrames) == 4, ds.NumberOfFrames
assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.840.99.7"
assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 4
assert seg.get_segment_numbers() == [1]
print("highdicom ok")
"#;
    match Command::new("python3")
        .args(["-c", check, seg_path.to_str().unwrap()])
        .output()
    {
        Ok(out) if out.status.success() => {
            assert!(String::from_utf8_lossy(&out.stdout).contains("highdicom ok"));
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("ModuleNotFoundError") => {
            d2a_tests::skip("the SEG check with pydicom/highdicom (pip install pydicom highdicom)");
        }
        Ok(out) => panic!(
            "highdicom refused the SEG: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => d2a_tests::skip("the SEG check with pydicom/highdicom (no python3)"),
    }
    // Both outputs serve as the series' mask for `d2a prepare`, giving the same slices.
    let mut manifests = Vec::new();
    for (name, mask) in [
        ("from-seg", seg_path.clone()),
        ("from-nifti", out_dir.join("1.2.840.99.7_mask.nii.gz")),
    ] {
        let prep = tmp.path().join(name);
        let out = d2a(&[
            "prepare",
            "--images",
            series.to_str().unwrap(),
            "--masks",
            mask.to_str().unwrap(),
            "--out",
            prep.to_str().unwrap(),
            "--size",
            "32",
            "--keep-empty",
            "--json",
        ]);
        assert_success(&out);
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["n_volumes"], 1);
        assert_eq!(summary["n_slices_total"], 4);
        assert_eq!(summary["n_slices_kept"], 4);
        manifests.push(std::fs::read(prep.join("shard-0000.safetensors")).unwrap());
    }
    assert_eq!(manifests[0], manifests[1]);
}

/// pydicom's own CT test slice (a real scanner file that ships with pydicom), where pydicom is
/// installed: read, segmented, and its mask's affine against the one computed from the file by
/// pydicom in the dicom2nifti way.
#[test]
fn predict_reads_pydicoms_ct_test_file() {
    let locate = "import pydicom.data; print(pydicom.data.get_testdata_file('CT_small.dcm'))";
    let Some(file) = Command::new("python3")
        .args(["-c", locate])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        d2a_tests::skip("pydicom's CT_small.dcm (pip install pydicom)");
        return;
    };
    let affine = r#"
import sys, pydicom
ds = pydicom.dcmread(sys.argv[1])
r, c = [float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in ds.ImageOrientationPatient[3:]]
dr, dc = [float(v) for v in ds.PixelSpacing]
t = [float(v) for v in ds.ImagePositionPatient]
sign = [-1, -1, 1]
for i in range(3):
    print(sign[i] * r[i] * dc, sign[i] * c[i] * dr, sign[i] * t[i])
"#;
    let out = Command::new("python3")
        .args(["-c", affine, &file])
        .output()
        .unwrap();
    let want: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    assert_success(&train_tiny(&run, &["-q"]));
    let out_dir = tmp.path().join("pred");
    let best = run.join("best.safetensors");
    assert_success(&d2a(&[
        "predict",
        "--checkpoint",
        best.to_str().unwrap(),
        &file,
        "--out",
        out_dir.to_str().unwrap(),
    ]));
    use nifti::NiftiObject as _;
    let mask = nifti::ReaderOptions::new()
        .read_file(out_dir.join("CT_small_mask.nii.gz"))
        .unwrap();
    let h = mask.header();
    assert_eq!(&h.dim[..4], &[3, 128, 128, 1]);
    for (i, row) in [h.srow_x, h.srow_y, h.srow_z].iter().enumerate() {
        for (j, col) in [0, 1, 3].into_iter().enumerate() {
            let (got, want) = (f64::from(row[col]), want[i * 3 + j]);
            assert!(
                (got - want).abs() < 1e-3,
                "affine[{i}][{col}] {got} vs {want}"
            );
        }
    }
    assert!(out_dir.join("CT_small_seg.dcm").is_file());
}
