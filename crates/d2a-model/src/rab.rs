//! The residual attention block RAB (SPEC §2.4): hybrid dilated convolution (3x3 with dilation
//! 1, 2, 5; receptive field 17x17), optional DAM, and a residual shortcut.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::Dam;
use crate::cost::{Cost, Shape4};
use crate::nn::ConvBn;
use crate::ops::{Conv2dConfig, add_relu};

/// `relu(DAM(HDC(x)) + shortcut(x))`, `c_in -> c_out`.
#[derive(Debug, Clone)]
pub struct Rab {
    hdc: [ConvBn; 3],
    dam: Option<Dam>,
    shortcut: Option<ConvBn>,
}

impl Rab {
    /// Dilations of the three 3x3 convolutions.
    pub const DILATIONS: [usize; 3] = [1, 2, 5];

    /// A block `c_in -> c_out`, with DAM if `dam`. The shortcut is the identity when
    /// `c_in == c_out`, else a 1x1 conv + BN.
    pub fn new(c_in: usize, c_out: usize, dam: bool, vb: VarBuilder) -> Result<Self> {
        let [d1, d2, d5] = Self::DILATIONS;
        let hdc = [
            ConvBn::same(c_in, c_out, 3, d1, vb.pp("hdc.0"))?,
            ConvBn::same(c_out, c_out, 3, d2, vb.pp("hdc.1"))?,
            // No ReLU after the third: the sum with the shortcut is rectified instead.
            ConvBn::same(c_out, c_out, 3, d5, vb.pp("hdc.2"))?.without_relu(),
        ];
        let dam = if dam {
            Some(Dam::new(c_out, vb.pp("dam"))?)
        } else {
            None
        };
        let shortcut = if c_in == c_out {
            None
        } else {
            let vb = vb.pp("shortcut");
            Some(
                ConvBn::new(
                    (c_in, c_out, 1),
                    Conv2dConfig::plain(),
                    vb.pp("conv"),
                    vb.pp("bn"),
                )?
                .without_relu(),
            )
        };
        Ok(Self { hdc, dam, shortcut })
    }

    /// Adds the block's layer costs for an input of shape `x`; returns the output shape.
    pub fn cost(&self, cost: &mut Cost, name: &str, x: Shape4) -> Shape4 {
        let mut y = x;
        for (i, unit) in self.hdc.iter().enumerate() {
            y = unit.cost(cost, &format!("{name}.hdc.{i}"), y);
        }
        if let Some(dam) = &self.dam {
            dam.cost(cost, &format!("{name}.dam"), y);
        }
        if let Some(sc) = &self.shortcut {
            sc.cost(cost, &format!("{name}.shortcut"), x);
        }
        y
    }
}

impl ModuleT for Rab {
    /// `[B, C_in, H, W] -> [B, C_out, H, W]`
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for unit in &self.hdc {
            y = unit.forward_t(&y, train)?;
        }
        if let Some(dam) = &self.dam {
            y = dam.forward(&y)?;
        }
        let shortcut = match &self.shortcut {
            Some(sc) => sc.forward_t(x, train)?,
            None => x.clone(),
        };
        add_relu(&y, &shortcut)
    }
}
