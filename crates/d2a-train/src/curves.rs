//! `curves.png`: the training curves of a run, drawn without any plotting dependency.
//!
//! Left panel: training loss (blue) and validation loss (orange), from 0 to the largest loss.
//! Right panel: validation Dice, mean over slices (green) and global (purple), from 0 to 1.
//! The x axis of both is the epoch, from 1 to the last; grid lines mark tenths of the y range.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::fit::EpochRecord;

const PANEL: (u32, u32) = (400, 300);
const MARGIN: u32 = 20;

/// Colours of the four curves: train loss, validation loss, Dice, global Dice.
pub const COLOURS: [[u8; 3]; 4] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [148, 103, 189],
];

/// Draws `records` into a PNG at `path` (atomically). No records: an empty frame.
pub fn write_curves(records: &[EpochRecord], path: &Path) -> crate::Result<()> {
    let width = 2 * PANEL.0;
    let mut img = RgbImage::from_pixel(width, PANEL.1, Rgb([255, 255, 255]));
    let max_loss = records
        .iter()
        .flat_map(|r| [r.train_loss, r.val_loss])
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6);
    let series = |f: fn(&EpochRecord) -> f64| records.iter().map(f).collect::<Vec<f64>>();
    panel(
        &mut img,
        0,
        max_loss,
        &[
            (series(|r| r.train_loss), COLOURS[0]),
            (series(|r| r.val_loss), COLOURS[1]),
        ],
    );
    panel(
        &mut img,
        PANEL.0,
        1.0,
        &[
            (series(|r| r.val_dice), COLOURS[2]),
            (series(|r| r.val_dice_global), COLOURS[3]),
        ],
    );
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| crate::Error::Config(format!("cannot encode {}: {e}", path.display())))?;
    Ok(d2a_model::checkpoint::write_atomic(path, png.get_ref())?)
}

/// One panel at horizontal offset `x0`: frame, grid, and each series scaled to `[0, y_max]`.
fn panel(img: &mut RgbImage, x0: u32, y_max: f64, series: &[(Vec<f64>, [u8; 3])]) {
    let (left, right) = (x0 + MARGIN, x0 + PANEL.0 - MARGIN);
    let (top, bottom) = (MARGIN, PANEL.1 - MARGIN);
    let grey = Rgb([225, 225, 225]);
    for i in 0..=10 {
        let y = bottom - (bottom - top) * i / 10;
        line(img, (left as f64, y as f64), (right as f64, y as f64), grey);
    }
    let black = Rgb([0, 0, 0]);
    line(
        img,
        (left as f64, top as f64),
        (left as f64, bottom as f64),
        black,
    );
    line(
        img,
        (left as f64, bottom as f64),
        (right as f64, bottom as f64),
        black,
    );
    for (values, colour) in series {
        let n = values.len();
        let at = |i: usize, v: f64| {
            let fx = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.5
            };
            let fy = (v / y_max).clamp(0.0, 1.0);
            (
                left as f64 + fx * (right - left) as f64,
                bottom as f64 - fy * (bottom - top) as f64,
            )
        };
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| at(i, v))
            .collect();
        for w in points.windows(2) {
            line(img, w[0], w[1], Rgb(*colour));
        }
        for &(x, y) in &points {
            for dy in -2i32..=2 {
                for dx in -2i32..=2 {
                    put(img, x + dx as f64, y + dy as f64, Rgb(*colour));
                }
            }
        }
    }
}

/// A two-pixel-wide straight line.
fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), colour: Rgb<u8>) {
    let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0) as usize;
    for s in 0..=steps {
        let t = s as f64 / steps as f64;
        let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
        put(img, x, y, colour);
        put(img, x + 1.0, y, colour);
    }
}

fn put(img: &mut RgbImage, x: f64, y: f64, colour: Rgb<u8>) {
    let (x, y) = (x.round(), y.round());
    if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, colour);
    }
}
