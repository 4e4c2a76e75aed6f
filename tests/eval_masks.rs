//! `d2a eval-masks` against an independent implementation of SPEC §5, on synthetic and real masks.

use std::collections::BTreeMap;
use std::path::Path;

use d2a_cli::commands::eval_masks::evaluate;
use d2a_metrics::Report;
use d2a_tests::{shared_data, write_gray};
use image::GrayImage;

/// SPEC §5 written again from scratch, sharing no code with d2a: per-slice metrics in the order
/// dice, iou, pixel error, recall, precision, specificity, then the per-slice mean and the global
/// metrics.
struct Reference {
    slices: BTreeMap<String, [f64; 6]>,
    mean: [f64; 6],
    global: [f64; 6],
}

fn metrics(tp: f64, fp: f64, tn: f64, fn_: f64) -> [f64; 6] {
    let r = |n: f64, d: f64| if d == 0.0 { 1.0 } else { n / d };
    [
        r(2.0 * tp, 2.0 * tp + fp + fn_),
        r(tp, tp + fp + fn_),
        r(fp + fn_, tp + fp + tn + fn_),
        r(tp, tp + fn_),
        r(tp, tp + fp),
        r(tn, tn + fp),
    ]
}

fn reference(pred_dir: &Path, truth_dir: &Path, threshold: f64) -> Reference {
    let mut slices = BTreeMap::new();
    let mut sums = [0.0f64; 4];
    for entry in std::fs::read_dir(truth_dir).unwrap() {
        let truth_path = entry.unwrap().path();
        let stem = truth_path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let pred_path = pred_dir.join(format!("{stem}.png"));
        let truth = image::open(&truth_path).unwrap().to_luma8();
        let pred = image::open(&pred_path).unwrap().to_luma8();
        let binary = pred.pixels().all(|p| p.0[0] <= 1);
        let mut c = [0.0f64; 4]; // tp, fp, tn, fn
        for (p, t) in pred.pixels().zip(truth.pixels()) {
            let scale = if binary { 1.0 } else { 255.0 };
            let p = f64::from(p.0[0]) >= threshold * scale;
            let t = t.0[0] != 0;
            c[match (p, t) {
                (true, true) => 0,
                (true, false) => 1,
                (false, false) => 2,
                (false, true) => 3,
            }] += 1.0;
        }
        for k in 0..4 {
            sums[k] += c[k];
        }
        slices.insert(stem, metrics(c[0], c[1], c[2], c[3]));
    }
    let n = slices.len() as f64;
    let mut mean = [0.0; 6];
    for m in slices.values() {
        for k in 0..6 {
            mean[k] += m[k] / n;
        }
    }
    Reference {
        slices,
        mean,
        global: metrics(sums[0], sums[1], sums[2], sums[3]),
    }
}

fn as_array(s: &d2a_metrics::Scores) -> [f64; 6] {
    [
        s.dice,
        s.iou,
        s.pixel_error,
        s.recall,
        s.precision,
        s.specificity,
    ]
}

fn assert_agrees(what: &str, report: &Report, reference: &Reference) {
    assert_eq!(report.n_slices, reference.slices.len(), "{what}");
    for slice in &report.slices {
        let want = reference.slices[&slice.name];
        let got = as_array(&slice.scores);
        for k in 0..6 {
            assert!(
                (got[k] - want[k]).abs() <= 1e-9,
                "{what}: slice {} metric {k}: {} vs {}",
                slice.name,
                got[k],
                want[k]
            );
        }
    }
    for (agg, got, want) in [
        ("mean", as_array(&report.per_slice_mean), reference.mean),
        ("global", as_array(&report.global), reference.global),
    ] {
        for k in 0..6 {
            assert!(
                (got[k] - want[k]).abs() <= 1e-9,
                "{what}: {agg} metric {k}: {} vs {}",
                got[k],
                want[k]
            );
        }
    }
}

/// The value of a predicted pixel `(x, y)` made from a truth mask.
type Perturb = Box<dyn Fn(&GrayImage, u32, u32) -> u8>;

/// Ways to turn a truth mask into a prediction: the cases a segmentation model produces.
fn perturbations() -> Vec<(&'static str, Perturb)> {
    let lesion = |m: &GrayImage, x: i64, y: i64| {
        x >= 0
            && y >= 0
            && (x as u32) < m.width()
            && (y as u32) < m.height()
            && m.get_pixel(x as u32, y as u32).0[0] != 0
    };
    let any_within = move |m: &GrayImage, x: u32, y: u32, r: i64, want: bool| {
        (-r..=r).any(|dy| (-r..=r).any(|dx| lesion(m, x as i64 + dx, y as i64 + dy) == want))
    };
    vec![
        (
            "identity",
            Box::new(move |m, x, y| {
                if lesion(m, x.into(), y.into()) {
                    255
                } else {
                    0
                }
            }),
        ),
        ("empty", Box::new(|_, _, _| 0)),
        (
            "zero-one",
            Box::new(move |m, x, y| u8::from(lesion(m, x.into(), y.into()))),
        ),
        (
            "dilated",
            Box::new(move |m, x, y| if any_within(m, x, y, 2, true) { 255 } else { 0 }),
        ),
        (
            "eroded",
            Box::new(move |m, x, y| {
                if any_within(m, x, y, 2, false) {
                    0
                } else {
                    255
                }
            }),
        ),
        (
            "shifted",
            Box::new(move |m, x, y| {
                if lesion(m, i64::from(x) - 7, i64::from(y) + 4) {
                    255
                } else {
                    0
                }
            }),
        ),
        (
            // A soft map: the fraction of lesion pixels in a 5x5 window, scaled to 0..255, so
            // values land on both sides of 128 near every boundary.
            "soft",
            Box::new(move |m, x, y| {
                let mut n = 0u32;
                for dy in -2..=2i64 {
                    for dx in -2..=2i64 {
                        n += u32::from(lesion(m, x as i64 + dx, y as i64 + dy));
                    }
                }
                (n * 255 / 25) as u8
            }),
        ),
        (
            "noisy",
            Box::new(move |m, x, y| {
                let h =
                    (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)).rotate_left(13) % 17;
                if lesion(m, x.into(), y.into()) != (h == 0) {
                    200
                } else {
                    3
                }
            }),
        ),
    ]
}

/// Writes each perturbation of the truth masks in `truth_dir` and checks d2a against the reference.
fn check_perturbations(truth_dir: &Path, thresholds: &[f64]) {
    let truths: Vec<(String, GrayImage)> = std::fs::read_dir(truth_dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                image::open(&path).unwrap().to_luma8(),
            )
        })
        .collect();
    for (name, perturb) in perturbations() {
        let pred_dir = tempfile::tempdir().unwrap();
        for (stem, truth) in &truths {
            write_gray(
                &pred_dir.path().join(format!("{stem}.png")),
                truth.width(),
                truth.height(),
                |x, y| perturb(truth, x, y),
            );
        }
        for &t in thresholds {
            let report = evaluate(pred_dir.path(), truth_dir, t).unwrap();
            assert_agrees(
                &format!("{name} at threshold {t}"),
                &report,
                &reference(pred_dir.path(), truth_dir, t),
            );
            match (name, t) {
                ("identity" | "zero-one", 0.5) => assert_eq!(report.per_slice_mean.dice, 1.0),
                ("empty", 0.5) => {
                    assert_eq!(
                        (
                            report.global.dice,
                            report.global.recall,
                            report.global.precision
                        ),
                        (0.0, 0.0, 1.0)
                    )
                }
                _ => {}
            }
        }
    }
}

#[test]
fn synthetic_perturbations_agree_with_reference() {
    let truth = tempfile::tempdir().unwrap();
    // Round lesions of several sizes, one empty slice, one non-square slice.
    write_gray(&truth.path().join("a.png"), 40, 30, |x, y| {
        if (x as i32 - 20).pow(2) + (y as i32 - 15).pow(2) < 60 {
            255
        } else {
            0
        }
    });
    write_gray(&truth.path().join("b.png"), 25, 50, |x, y| {
        if x > 5 && x < 12 && y > 10 { 1 } else { 0 }
    });
    write_gray(&truth.path().join("c.png"), 16, 16, |_, _| 0);
    write_gray(&truth.path().join("d.png"), 33, 33, |x, y| {
        if (x / 4 + y / 4) % 3 == 0 { 2 } else { 0 }
    });
    check_perturbations(truth.path(), &[0.5, 0.3, 0.0, 1.0]);
}

#[test]
fn real_masks_perturbed_agree_with_reference() {
    let Some(data) = shared_data() else { return };
    // Every fourth radiologist mask (25 slices of all sizes) keeps the unoptimised test quick.
    let truth = tempfile::tempdir().unwrap();
    let masks = data.join("medseg100-infnet/masks_binary");
    let mut names: Vec<_> = std::fs::read_dir(&masks)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names.iter().step_by(4) {
        std::fs::copy(masks.join(name), truth.path().join(name)).unwrap();
    }
    check_perturbations(truth.path(), &[0.5, 0.25]);
}

#[test]
fn real_truth_against_itself_and_against_nothing() {
    let Some(data) = shared_data() else { return };
    let binary = data.join("medseg100-infnet/masks_binary");
    // The multi-class masks (0, 1, 2) are lesion wherever non-zero: the binary masks exactly.
    let report = evaluate(&binary, &data.join("medseg100-infnet/masks"), 0.5).unwrap();
    assert_eq!(report.n_slices, 98);
    assert_eq!(
        (
            report.per_slice_mean.dice,
            report.global.dice,
            report.global.pixel_error
        ),
        (1.0, 1.0, 0.0)
    );

    let empty = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&binary).unwrap() {
        let path = entry.unwrap().path();
        let (w, h) = image::image_dimensions(&path).unwrap();
        write_gray(
            &empty.path().join(path.file_name().unwrap()),
            w,
            h,
            |_, _| 0,
        );
    }
    let report = evaluate(empty.path(), &binary, 0.5).unwrap();
    assert_eq!(
        (report.per_slice_mean.recall, report.per_slice_mean.dice),
        (0.0, 0.0)
    );
    assert_eq!(
        (
            report.global.recall,
            report.global.dice,
            report.global.precision
        ),
        (0.0, 0.0, 1.0)
    );
}

/// The peers' published masks scored by d2a give the figures computed independently in
/// `shared/data/infnet-predictions/README.md` (4 decimals).
#[test]
fn peer_predictions_match_published_scores() {
    let Some(data) = shared_data() else { return };
    // model, per-slice mean Dice, recall, pixel error, global Dice, global recall
    let table = [
        ("unet", 0.5413, 0.5342, 0.1248, 0.6091, 0.6021),
        ("unetpp", 0.7058, 0.7301, 0.0787, 0.7661, 0.8120),
        ("inf-net", 0.7377, 0.7185, 0.0632, 0.8010, 0.7910),
        ("semi-inf-net", 0.7702, 0.7453, 0.0560, 0.8222, 0.8036),
    ];
    // Truth for the 48 test slices only, so that every file pairs.
    let truth = tempfile::tempdir().unwrap();
    let preds = data.join("infnet-predictions/inf-net");
    for entry in std::fs::read_dir(&preds).unwrap() {
        let name = entry.unwrap().file_name();
        std::fs::copy(
            data.join("medseg100-infnet/masks_binary").join(&name),
            truth.path().join(&name),
        )
        .unwrap();
    }
    for (model, dice, recall, pixel_error, global_dice, global_recall) in table {
        let pred_dir = data.join("infnet-predictions").join(model);
        let report = evaluate(&pred_dir, truth.path(), 0.5).unwrap();
        assert_eq!(report.n_slices, 48);
        let got = [
            report.per_slice_mean.dice,
            report.per_slice_mean.recall,
            report.per_slice_mean.pixel_error,
            report.global.dice,
            report.global.recall,
        ];
        for (g, want) in
            got.into_iter()
                .zip([dice, recall, pixel_error, global_dice, global_recall])
        {
            assert!(
                (g - want).abs() <= 5e-5,
                "{model}: {got:?} vs published {want}"
            );
        }
        assert_agrees(model, &report, &reference(&pred_dir, truth.path(), 0.5));
    }
}

#[test]
fn errors_name_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, truth) = (tmp.path().join("pred"), tmp.path().join("truth"));
    write_gray(&pred.join("001.png"), 10, 12, |_, _| 0);
    write_gray(&truth.join("001.png"), 12, 10, |_, _| 0);
    let err = format!("{:#}", evaluate(&pred, &truth, 0.5).unwrap_err());
    assert!(
        err.contains("10x12")
            && err.contains("12x10")
            && err.contains("pred/001.png")
            && err.contains("truth/001.png"),
        "{err}"
    );

    write_gray(&truth.join("001.png"), 10, 12, |_, _| 0);
    write_gray(&truth.join("002.png"), 10, 12, |_, _| 0);
    let err = format!("{:#}", evaluate(&pred, &truth, 0.5).unwrap_err());
    assert!(
        err.contains("truth file(s)") && err.contains("002.png") && err.contains("no prediction"),
        "{err}"
    );

    std::fs::remove_file(truth.join("002.png")).unwrap();
    write_gray(&pred.join("003.png"), 10, 12, |_, _| 0);
    let err = format!("{:#}", evaluate(&pred, &truth, 0.5).unwrap_err());
    assert!(
        err.contains("prediction file(s)") && err.contains("003.png") && err.contains("no truth"),
        "{err}"
    );

    // Truncated: the size check never runs, the decoder's complaint names the file.
    let bytes = std::fs::read(pred.join("001.png")).unwrap();
    std::fs::write(pred.join("003.png"), &bytes[..bytes.len() / 2]).unwrap();
    write_gray(&truth.join("003.png"), 10, 12, |_, _| 0);
    let err = format!("{:#}", evaluate(&pred, &truth, 0.5).unwrap_err());
    assert!(err.contains("003.png") && err.contains("decode"), "{err}");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = format!("{:#}", evaluate(&empty, &truth, 0.5).unwrap_err());
    assert!(
        err.contains("empty") && err.contains("holds no image"),
        "{err}"
    );

    let err = format!("{:#}", evaluate(&pred, &truth, 2.0).unwrap_err());
    assert!(err.contains("threshold"), "{err}");
}
