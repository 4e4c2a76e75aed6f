//! Every model can learn: each, at a reduced width, overfits four synthetic 64x64 slices (bright
//! blobs on noise) to Dice > 0.9 in eval mode, with the paper's loss and Adam.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use d2a_metrics::{Summary, confusions_from_tensors};
use d2a_model::checkpoint::trainable_vars;
use d2a_model::init::seeded_var_builder;
use d2a_model::{Model, ModelConfig};
use d2a_train::loss::dice_bce;
use d2a_train::optim::{Adam, AdamConfig};

/// Four 64x64 slices: uniform noise in [0, 0.4] with one or two discs of brightness 0.7–1.0, and
/// their masks.
fn blobs() -> anyhow::Result<(Tensor, Tensor)> {
    let (n, size) = (4usize, 64usize);
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    let mut image = vec![0f32; n * size * size];
    let mut mask = vec![0f32; n * size * size];
    for s in 0..n {
        let discs: Vec<(f32, f32, f32, f32)> = (0..1 + s % 2)
            .map(|_| {
                (
                    12.0 + 40.0 * next(),
                    12.0 + 40.0 * next(),
                    5.0 + 7.0 * next(),
                    0.7 + 0.3 * next(),
                )
            })
            .collect();
        for y in 0..size {
            for x in 0..size {
                let i = s * size * size + y * size + x;
                image[i] = 0.4 * next();
                for &(cx, cy, r, v) in &discs {
                    if (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2) <= r * r {
                        image[i] = v;
                        mask[i] = 1.0;
                    }
                }
            }
        }
    }
    let dims = (n, 1, size, size);
    Ok((
        Tensor::from_vec(image, dims, &Device::Cpu)?,
        Tensor::from_vec(mask, dims, &Device::Cpu)?,
    ))
}

/// Trains model `name` on the four slices with the paper's Adam (lr 3e-3, no weight decay) until its eval-mode Dice passes
/// `target`, checking every 25 steps, for at most 300 steps.
fn overfits(name: &str, target: f64) -> anyhow::Result<()> {
    let (x, y) = blobs()?;
    let cfg = ModelConfig::parse(name)?;
    let varmap = VarMap::new();
    let model = Model::new(
        &cfg,
        seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu),
    )?;
    let adam = AdamConfig {
        lr: 3e-3,
        weight_decay: 0.0,
        ..AdamConfig::paper()
    };
    let vars = trainable_vars(&varmap)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let mut opt = Adam::new(vars, adam)?;
    let start = Instant::now();
    let mut dice = 0.0;
    for step in 1..=300 {
        let loss = dice_bce(&model.forward_t(&x, true)?, &y, 1.0)?;
        opt.backward_step(&loss)?;
        if step % 25 == 0 {
            let logits = model.forward_t(&x, false)?;
            dice = Summary::from_confusions(&confusions_from_tensors(&logits, &y, 0.0)?)?
                .per_slice_mean
                .dice;
            eprintln!(
                "{name} step {step}: loss {:.4}, eval Dice {dice:.4}, {:.1} s",
                loss.to_scalar::<f32>()?,
                start.elapsed().as_secs_f64()
            );
            if dice > target {
                return Ok(());
            }
        }
    }
    anyhow::bail!("{name}: eval Dice {dice} after 300 steps")
}

#[test]
fn d2a_vgg_tiny_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("d2a-vgg-tiny", 0.9)
}

#[test]
fn unet_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("unet-tiny", 0.9)
}

#[test]
fn attention_unet_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("attention-unet-tiny", 0.9)
}

#[test]
fn unet_pp_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("unet-pp-tiny", 0.9)
}

#[test]
fn fcn8s_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("fcn8s-resnet101-tiny", 0.9)
}

#[test]
fn deeplabv3_overfits_four_synthetic_slices() -> anyhow::Result<()> {
    overfits("deeplabv3-resnet101-tiny", 0.9)
}
