//! U-Net++: Z. Zhou, M. M. Rahman Siddiquee, N. Tajbakhsh, J. Liang, "UNet++: A Nested U-Net
//! Architecture for Medical Image Segmentation", DLMIA 2018 (arXiv:1807.10165).
//!
//! Nodes `X(i, j)`: `X(i, 0)` are the five stages of the VGG-style encoder (the U-Net's), and for
//! `j ≥ 1`, `X(i, j) = DoubleConv(concat(X(i, 0), ..., X(i, j−1), up2(X(i+1, j−1))))` with the
//! width of level `i` (the nested dense skips). A 1x1 conv on `X(0, 4)` gives the logits; with
//! deep supervision, 1x1 convs on `X(0, 1..4)` give four outputs ([`UNetPlusPlus::heads`]) whose
//! mean is the model's output (the paper's "accurate mode"). Upsampling is bilinear ×2 keeping
//! the channels, as in our U-Net. Weight names follow the reference implementation
//! (`conv{i}_{j}`, `final` or `final{1..4}`).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cost::{Cost, Shape4};
use crate::encoders::{DoubleConv, Vgg, VggConfig};
use crate::nn::Conv2d;
use crate::ops::{Conv2dConfig, up2};

/// What to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetPlusPlusConfig {
    /// The encoder (its widths set every level's).
    pub encoder: VggConfig,
    /// One head per `X(0, j)`, averaged (off in the paper's comparison).
    pub deep_supervision: bool,
}

impl UNetPlusPlusConfig {
    /// Width 64, no deep supervision: the baseline of the D2A U-Net paper.
    pub const fn paper() -> Self {
        Self {
            encoder: VggConfig {
                in_channels: 1,
                base_width: 64,
            },
            deep_supervision: false,
        }
    }

    /// Width 8: for tests and quick runs.
    pub const fn tiny() -> Self {
        Self {
            encoder: VggConfig {
                in_channels: 1,
                base_width: 8,
            },
            deep_supervision: false,
        }
    }
}

/// U-Net++.
#[derive(Debug, Clone)]
pub struct UNetPlusPlus {
    encoder: Vgg,
    /// `(i, j, block)` in the order they are computed (by column `j`, then level `i`).
    nodes: Vec<(usize, usize, DoubleConv)>,
    /// One head, or four with deep supervision (for `X(0, 1..4)`).
    heads: Vec<Conv2d>,
}

impl UNetPlusPlus {
    /// Builds the model; weights at `encoder.stages.*`, `conv{i}_{j}.*`, `final` (or
    /// `final1..final4` with deep supervision).
    pub fn new(cfg: &UNetPlusPlusConfig, vb: VarBuilder) -> Result<Self> {
        let c = cfg.encoder.channels();
        let encoder = Vgg::new(&cfg.encoder, vb.pp("encoder"))?;
        let mut nodes = Vec::new();
        for j in 1..5 {
            for i in 0..5 - j {
                let c_in = c[i] * j + c[i + 1];
                nodes.push((
                    i,
                    j,
                    DoubleConv::new(c_in, c[i], vb.pp(format!("conv{i}_{j}")))?,
                ));
            }
        }
        let head = |name: String| Conv2d::with_bias(c[0], 1, 1, Conv2dConfig::plain(), vb.pp(name));
        let heads = if cfg.deep_supervision {
            (1..5)
                .map(|j| head(format!("final{j}")))
                .collect::<Result<_>>()?
        } else {
            vec![head("final".into())?]
        };
        Ok(Self {
            encoder,
            nodes,
            heads,
        })
    }

    /// The logits of every head: one, or four (`X(0, 1..4)`) with deep supervision, for a loss
    /// on each.
    ///
    /// # Shapes
    /// `[B, 1, H, W] -> [[B, 1, H, W]; 1 or 4]`; H and W multiples of 16.
    pub fn heads(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        // grid[i][j] = X(i, j)
        let mut grid: Vec<Vec<Tensor>> = self
            .encoder
            .features(x, train)?
            .into_iter()
            .map(|f| vec![f])
            .collect();
        for (i, _, block) in &self.nodes {
            let i = *i;
            let deeper = grid[i + 1].last().cloned();
            let Some(deeper) = deeper else {
                candle_core::bail!("U-Net++: node X({}, ..) computed out of order", i + 1)
            };
            let up = up2(&deeper)?;
            let mut inputs: Vec<&Tensor> = grid[i].iter().collect();
            inputs.push(&up);
            let node = block.forward_t(&Tensor::cat(&inputs, 1)?, train)?;
            grid[i].push(node);
        }
        let top = &grid[0];
        if self.heads.len() == 1 {
            Ok(vec![self.heads[0].forward(&top[4])?])
        } else {
            self.heads
                .iter()
                .zip(&top[1..])
                .map(|(head, node)| head.forward(node))
                .collect()
        }
    }

    /// Parameters and MACs per layer for an `h x w` single-channel input.
    pub fn cost(&self, h: usize, w: usize) -> Cost {
        let mut cost = Cost::default();
        let feats = self
            .encoder
            .cost(&mut cost, "encoder", Shape4 { b: 1, c: 1, h, w });
        for (i, j, block) in &self.nodes {
            let (i, j) = (*i, *j);
            let c_in = feats[i].c * j + feats[i + 1].c;
            block.cost(
                &mut cost,
                &format!("conv{i}_{j}"),
                Shape4 {
                    c: c_in,
                    ..feats[i]
                },
            );
        }
        let names: Vec<String> = if self.heads.len() == 1 {
            vec!["final".into()]
        } else {
            (1..5).map(|j| format!("final{j}")).collect()
        };
        for (head, name) in self.heads.iter().zip(names) {
            head.cost(&mut cost, &name, feats[0]);
        }
        cost
    }
}

impl ModuleT for UNetPlusPlus {
    /// `[B, 1, H, W] -> [B, 1, H, W]` logits (the mean of the heads with deep supervision).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let heads = self.heads(x, train)?;
        let n = heads.len();
        let sum = Tensor::stack(&heads, 0)?.sum(0)?;
        if n == 1 { Ok(sum) } else { sum / n as f64 }
    }
}
