//! Adam with PyTorch's `torch.optim.Adam` semantics: L2 weight decay is added to the gradient
//! before the moment updates (candle only ships AdamW, whose decay is decoupled).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// Hyper-parameters of [`Adam`] (SPEC §4 defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// L2 penalty added to the gradient.
    pub weight_decay: f64,
}

impl AdamConfig {
    /// The paper's protocol: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 1e-4.
    pub const fn paper() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// Adam over a fixed list of variables.
#[derive(Debug)]
pub struct Adam {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i32,
    /// Current hyper-parameters (the learning rate may be changed by a scheduler).
    pub cfg: AdamConfig,
}

impl Adam {
    /// An optimiser for `vars` with zeroed moments.
    pub fn new(vars: Vec<Var>, cfg: AdamConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            cfg,
        })
    }

    /// One update from `grads`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step);
        let bias2 = 1.0 - c.beta2.powi(self.step);
        for ((var, m), v) in self.vars.iter().zip(&mut self.m).zip(&mut self.v) {
            let Some(g) = grads.get(var) else { continue };
            // Detached: gradients and the variable's own tensor carry autograd history, and
            // moments built from them would chain every step's graph to the next (a leak of
            // the whole forward pass per step).
            let theta = var.as_tensor().detach();
            let g = g.detach();
            let g = if c.weight_decay != 0.0 {
                (g + (&theta * c.weight_decay)?)?
            } else {
                g
            };
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&*m / bias1)?;
            let v_hat = (&*v / bias2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            var.set(&(theta - (update * c.lr)?)?)?;
        }
        Ok(())
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i32 {
        self.step
    }

    /// The first and second moments, one per variable in order.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
    }

    /// Replaces the moments and the step count (to resume); shapes must match the variables.
    pub fn set_moments(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, step: i32) -> Result<()> {
        if m.len() != self.vars.len() || v.len() != self.vars.len() {
            candle_core::bail!(
                "Adam state has {} and {} moments for {} variables",
                m.len(),
                v.len(),
                self.vars.len()
            )
        }
        for ((var, m), v) in self.vars.iter().zip(&m).zip(&v) {
            if m.dims() != var.dims() || v.dims() != var.dims() {
                candle_core::bail!(
                    "Adam moments of shape {:?} and {:?} for a variable of shape {:?}",
                    m.dims(),
                    v.dims(),
                    var.dims()
                )
            }
        }
        self.m = m;
        self.v = v;
        self.step = step;
        Ok(())
    }

    /// `backward` of `loss`, then [`Adam::step`].
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The moments must not hold autograd history: each step would otherwise keep the previous
    /// step's whole graph alive (it leaked about 95 MB per step of `d2a-vgg-tiny`).
    #[test]
    fn moments_carry_no_graph() -> Result<()> {
        let theta = Var::new(&[1.0f64, -2.0], &Device::Cpu)?;
        let mut opt = Adam::new(vec![theta.clone()], AdamConfig::paper())?;
        for _ in 0..3 {
            let loss = (theta.as_tensor().sqr()? * theta.as_tensor())?.sum_all()?;
            opt.backward_step(&loss)?;
        }
        let (m, v) = opt.moments();
        assert!(m.iter().chain(v).all(|t| !t.track_op()));
        Ok(())
    }

    #[test]
    fn two_steps_by_hand_with_weight_decay() -> Result<()> {
        // f(θ) = θ², θ0 = 1, wd 0.1: g1 = 2 + 0.1 = 2.1.
        let theta = Var::new(&[1.0f64], &Device::Cpu)?;
        let cfg = AdamConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = Adam::new(vec![theta.clone()], cfg)?;
        opt.backward_step(&theta.as_tensor().sqr()?.sum_all()?)?;
        // First step of Adam moves by lr · g/|g| (bias-corrected): 1 − 0.1.
        let t1 = theta.as_tensor().to_vec1::<f64>()?[0];
        assert!((t1 - 0.9).abs() < 1e-7, "{t1}");
        opt.backward_step(&theta.as_tensor().sqr()?.sum_all()?)?;
        let (g1, g2) = (2.1, 2.0 * t1 + 0.1 * t1);
        let m = (0.1 * 0.9 * g1 + 0.1 * g2) / (1.0 - 0.81);
        let v = (0.001 * 0.999 * g1 * g1 + 0.001 * g2 * g2) / (1.0 - 0.999f64.powi(2));
        let want = t1 - 0.1 * m / (v.sqrt() + 1e-8);
        let t2 = theta.as_tensor().to_vec1::<f64>()?[0];
        assert!((t2 - want).abs() < 1e-10, "{t2} vs {want}");
        Ok(())
    }
}
