//! The gate attention module GAM (SPEC §2.2) and the decoder attention module DAM (SPEC §2.3).
//!
//! Both multiply a feature by a channel map `Mc` (`[B, C, 1, 1]`, from a two-layer MLP on a
//! global average) and a spatial map `Ms` (`[B, 1, H, W]`, from the sum of 3x3, 5x5 and 7x7
//! convolutions of a squeezed feature): `x ⊙ Mc ⊗ Ms`. GAM takes its maps from a guiding signal
//! one level deeper; DAM from the feature itself.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder, linear};

use crate::cost::{Cost, Shape4};
use crate::nn::Conv2d;
use crate::ops::{Conv2dConfig, attend, up2};

/// Hidden width of the attention MLP: `max(1, C / 16)` (SPEC §2.6).
pub fn hidden_width(c: usize) -> usize {
    (c / 16).max(1)
}

/// `Mc = sigmoid(W1 · relu(W0 · GAP(input)))`, `c_in -> hidden -> c_out`.
#[derive(Debug, Clone)]
struct ChannelMap {
    w0: Linear,
    w1: Linear,
    dims: (usize, usize, usize),
}

impl ChannelMap {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        let hidden = hidden_width(c_out);
        Ok(Self {
            w0: linear(c_in, hidden, vb.pp("mlp.0"))?,
            w1: linear(hidden, c_out, vb.pp("mlp.2"))?,
            dims: (c_in, hidden, c_out),
        })
    }

    /// `[B, C_in, H, W] -> [B, C_out, 1, 1]`
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let b = input.dim(0)?;
        let pooled = input.mean((2, 3))?; // [B, C_in]
        let m = candle_nn::ops::sigmoid(&self.w1.forward(&self.w0.forward(&pooled)?.relu()?)?)?;
        m.reshape((b, self.dims.2, 1, 1))
    }

    fn cost(&self, cost: &mut Cost, name: &str, batch: usize) {
        let (c_in, hidden, c_out) = self.dims;
        cost.linear(&format!("{name}.mlp.0"), c_in, hidden, batch);
        cost.linear(&format!("{name}.mlp.2"), hidden, c_out, batch);
    }
}

/// `sigmoid(conv3x3(s) + conv5x5(s) + conv7x7(s))`, `c_in -> 1` channel, "same" padding.
#[derive(Debug, Clone)]
struct MultiScale {
    convs: [Conv2d; 3],
}

impl MultiScale {
    const KERNELS: [usize; 3] = [3, 5, 7];

    fn new(c_in: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |k: usize| {
            Conv2d::with_bias(
                c_in,
                1,
                k,
                Conv2dConfig::square(1, k / 2, 1, 1),
                vb.pp(format!("conv{k}")),
            )
        };
        Ok(Self {
            convs: [conv(3)?, conv(5)?, conv(7)?],
        })
    }

    /// `[B, C_in, H, W] -> [B, 1, H, W]`
    fn forward(&self, s: &Tensor) -> Result<Tensor> {
        let [a, b, c] = &self.convs;
        candle_nn::ops::sigmoid(&((a.forward(s)? + b.forward(s)?)? + c.forward(s)?)?)
    }

    fn cost(&self, cost: &mut Cost, name: &str, s: Shape4) {
        for (conv, k) in self.convs.iter().zip(Self::KERNELS) {
            conv.cost(cost, &format!("{name}.conv{k}"), s);
        }
    }
}

/// Gate attention module `GAM(g, x)`: the skip feature `x` attended by maps computed from `g`
/// (channel) and from `g` and `x` together (spatial). Output: the attended `x` (SPEC decision).
#[derive(Debug, Clone)]
pub struct Gam {
    channel: ChannelMap,
    squeeze_g: Conv2d,
    squeeze_x: Conv2d,
    spatial: MultiScale,
}

impl Gam {
    /// For a guiding signal of `c_g` channels and a skip of `c_x` channels.
    pub fn new(c_g: usize, c_x: usize, vb: VarBuilder) -> Result<Self> {
        let one = Conv2dConfig::plain();
        Ok(Self {
            channel: ChannelMap::new(c_g, c_x, vb.pp("channel"))?,
            squeeze_g: Conv2d::with_bias(c_g, 1, 1, one, vb.pp("squeeze_g"))?,
            squeeze_x: Conv2d::with_bias(c_x, 1, 1, one, vb.pp("squeeze_x"))?,
            spatial: MultiScale::new(2, vb.pp("spatial"))?,
        })
    }

    /// # Shapes
    /// `g`: `[B, C_g, H/2, W/2]`, `x`: `[B, C_x, H, W]` -> `[B, C_x, H, W]`.
    pub fn forward(&self, g: &Tensor, x: &Tensor) -> Result<Tensor> {
        let mc = self.channel.forward(g)?;
        let sg = up2(&self.squeeze_g.forward(g)?)?;
        let sx = self.squeeze_x.forward(x)?;
        let ms = self.spatial.forward(&Tensor::cat(&[&sg, &sx], 1)?)?;
        attend(x, &mc, &ms)
    }

    /// Adds the layers' costs for a guide of shape `g` and a skip of shape `x`.
    pub fn cost(&self, cost: &mut Cost, name: &str, g: Shape4, x: Shape4) {
        self.channel.cost(cost, &format!("{name}.channel"), x.b);
        self.squeeze_g.cost(cost, &format!("{name}.squeeze_g"), g);
        self.squeeze_x.cost(cost, &format!("{name}.squeeze_x"), x);
        self.spatial
            .cost(cost, &format!("{name}.spatial"), Shape4 { c: 2, ..x });
    }
}

/// Decoder attention module `DAM(x)`: `x` attended by its own channel and spatial maps.
#[derive(Debug, Clone)]
pub struct Dam {
    channel: ChannelMap,
    squeeze: Conv2d,
    spatial: MultiScale,
}

impl Dam {
    /// For a feature of `c` channels.
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            channel: ChannelMap::new(c, c, vb.pp("channel"))?,
            squeeze: Conv2d::with_bias(c, 1, 1, Conv2dConfig::plain(), vb.pp("squeeze"))?,
            spatial: MultiScale::new(1, vb.pp("spatial"))?,
        })
    }

    /// # Shapes
    /// `[B, C, H, W] -> [B, C, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mc = self.channel.forward(x)?;
        let ms = self.spatial.forward(&self.squeeze.forward(x)?)?;
        attend(x, &mc, &ms)
    }

    /// Adds the layers' costs for an input of shape `x`.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) {
        self.channel.cost(cost, &format!("{name}.channel"), x.b);
        self.squeeze.cost(cost, &format!("{name}.squeeze"), x);
        self.spatial
            .cost(cost, &format!("{name}.spatial"), Shape4 { c: 1, ..x });
    }
}
