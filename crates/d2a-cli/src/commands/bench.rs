//! `d2a bench`: times a model's forward pass or training step on the CPU and reports the median,
//! minimum and maximum seconds after a warm-up, and the process's peak resident memory.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use d2a_model::checkpoint::trainable_vars;
use d2a_model::init::seeded_var_builder;
use d2a_model::{Model, ModelConfig};
use d2a_train::loss::dice_bce;
use d2a_train::optim::{Adam, AdamConfig};
use serde::Serialize;

/// What one benchmark run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inference: eval-mode forward pass.
    Forward,
    /// One training step: forward, Dice + BCE, backward, Adam update.
    Train,
}

/// Arguments of `d2a bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model preset.
    #[arg(long, default_value = "d2a-vgg-tiny")]
    pub model: String,
    /// Side of the square one-channel model input, in pixels.
    #[arg(long, default_value_t = 256, value_parser = super::side)]
    pub size: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 1, value_parser = super::positive)]
    pub batch: usize,
    /// Forward pass or training step.
    #[arg(long, value_enum, default_value_t = Mode::Forward)]
    pub mode: Mode,
    /// Timed runs after one warm-up run.
    #[arg(long, default_value_t = 5, value_parser = super::positive)]
    pub runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Time one convolution instead of a model (batch 1, 128 channels, 64x64, 3x3): `forward`
    /// or `train` (forward + both gradients).
    #[arg(long, value_enum)]
    pub op: Option<Op>,
    /// Where it runs: cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: d2a_model::DeviceSpec,
    /// Every convolution on candle 0.11's own conv2d instead of d2a's kernel, for comparison
    /// (a model's other ops stay d2a's).
    #[arg(long)]
    pub candle: bool,
    /// Every op composed of candle's tensor ops, the path a GPU runs, instead of d2a's CPU
    /// kernels (what `--device cuda` always runs), to time that path on the CPU.
    #[arg(long, conflicts_with = "candle")]
    pub composed: bool,
}

/// The convolutions `docs/performance.md` times against PyTorch (`bench/compare.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// 128 -> 128, padding 1.
    ConvDense,
    /// 128 -> 128, 32 groups, padding 1.
    ConvGrouped,
    /// 128 -> 128, dilation 5, padding 5.
    ConvDilated,
}

impl Op {
    /// `(groups, dilation)`.
    fn geometry(self) -> (usize, usize) {
        match self {
            Op::ConvDense => (1, 1),
            Op::ConvGrouped => (32, 1),
            Op::ConvDilated => (1, 5),
        }
    }
}

/// The figures `d2a bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model preset, or the op with its implementation (`conv-dense`, `conv-dense/candle`, ...).
    pub model: String,
    /// Forward or train.
    pub mode: Mode,
    /// Batch size.
    pub batch: usize,
    /// Input side.
    pub size: usize,
    /// Timed runs.
    pub runs: usize,
    /// Median seconds per run.
    pub median_s: f64,
    /// Fastest run.
    pub min_s: f64,
    /// Slowest run.
    pub max_s: f64,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`), if known.
    pub peak_rss_mib: Option<f64>,
    /// Threads used by the kernels.
    pub threads: usize,
}

impl Args {
    /// Runs the benchmark and prints the report.
    pub fn run(self) -> Result<()> {
        let report = self.measure()?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} {:?} batch {} x 1 x {}²: median {:.4} s, min {:.4} s, max {:.4} s over {} runs; peak RSS {}; {} threads",
                report.model,
                report.mode,
                report.batch,
                report.size,
                report.median_s,
                report.min_s,
                report.max_s,
                report.runs,
                report
                    .peak_rss_mib
                    .map_or("unknown".into(), |m| format!("{m:.0} MiB")),
                report.threads
            );
        }
        Ok(())
    }

    /// Times `runs` runs after one warm-up.
    pub fn measure(&self) -> Result<BenchReport> {
        use d2a_model::ops::{ConvBackend, set_conv_backend};
        set_conv_backend(if self.candle {
            ConvBackend::Candle
        } else if self.composed {
            ConvBackend::Composed
        } else {
            ConvBackend::D2a
        });
        if let Some(op) = self.op {
            return self.measure_op(op);
        }
        let cfg = ModelConfig::parse(&self.model)?;
        cfg.check_side("--size", self.size)?;
        let dev = self.device.open()?;
        let varmap = VarMap::new();
        let model = Model::new(&cfg, seeded_var_builder(&varmap, 0, DType::F32, &dev))?;
        let shape = (self.batch, 1, self.size, self.size);
        let x = Tensor::randn(0f32, 1f32, shape, &dev)?;
        let y = Tensor::rand(0f32, 1f32, shape, &dev)?
            .ge(0.7)?
            .to_dtype(DType::F32)?;
        let vars = trainable_vars(&varmap)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut opt = Adam::new(vars, AdamConfig::paper())?;
        let once = || -> Result<f64> {
            let start = Instant::now();
            match self.mode {
                Mode::Forward => {
                    model.forward_t(&x, false)?;
                }
                Mode::Train => {
                    let loss = dice_bce(&model.forward_t(&x, true)?, &y, 1.0)?;
                    opt.backward_step(&loss)?;
                }
            }
            dev.synchronize()?;
            Ok(start.elapsed().as_secs_f64())
        };
        let name = format!("{}{}", self.model, self.suffix());
        self.report(name, (self.batch, self.size), once)
    }

    /// One 3x3 convolution, batch 1, 128 channels, 64x64.
    fn measure_op(&self, op: Op) -> Result<BenchReport> {
        let dev = self.device.open()?;
        let (groups, dilation) = op.geometry();
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1f32, (1, 128, 64, 64), &dev)?)?;
        let w = candle_core::Var::from_tensor(&Tensor::randn(
            0f32,
            0.1f32,
            (128, 128 / groups, 3, 3),
            &dev,
        )?)?;
        let cfg = d2a_model::ops::Conv2dConfig::square(1, dilation, dilation, groups);
        let once = || -> Result<f64> {
            let start = Instant::now();
            let y = d2a_model::ops::conv2d(&x, &w, cfg)?;
            if self.mode == Mode::Train {
                y.sum_all()?.backward()?;
            }
            dev.synchronize()?;
            Ok(start.elapsed().as_secs_f64())
        };
        let name = serde_json::to_value(op)?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = format!("{name}{}", self.suffix());
        self.report(name, (1, 64), once)
    }

    /// The implementation's mark on a report's name: `/candle`, `/composed` or none.
    fn suffix(&self) -> &'static str {
        match (self.candle, self.composed) {
            (true, _) => "/candle",
            (_, true) => "/composed",
            _ => "",
        }
    }

    fn report(
        &self,
        model: String,
        (batch, size): (usize, usize),
        mut once: impl FnMut() -> Result<f64>,
    ) -> Result<BenchReport> {
        once()?;
        let mut times = (0..self.runs).map(|_| once()).collect::<Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        Ok(BenchReport {
            model,
            mode: self.mode,
            batch,
            size,
            runs: self.runs,
            median_s: times[times.len() / 2],
            min_s: times[0],
            max_s: times[times.len() - 1],
            peak_rss_mib: peak_rss_mib(),
            threads: rayon::current_num_threads(),
        })
    }
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
