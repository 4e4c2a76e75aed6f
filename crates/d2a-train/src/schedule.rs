//! Reduce-on-plateau with PyTorch's `ReduceLROnPlateau` semantics (mode `min`, relative
//! threshold 1e-4, no cooldown): after more than `patience` epochs without improvement of the
//! monitored value, the learning rate is multiplied by `factor`.

use serde::{Deserialize, Serialize};

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Reduce on plateau of the validation loss (the paper's, [`ReduceOnPlateau`]).
    #[default]
    Plateau,
    /// Cosine decay from the initial rate towards 0 over the run's epochs (no restarts):
    /// epoch `e` (0-based) trains at `lr0 · (1 + cos(π e / E)) / 2`.
    Cosine,
}

impl std::str::FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plateau" => Ok(Self::Plateau),
            "cosine" => Ok(Self::Cosine),
            other => Err(format!("unknown schedule {other:?}: plateau or cosine")),
        }
    }
}

impl Schedule {
    /// The rate of epoch `epoch` (0-based) of `epochs` under a cosine decay from `lr0`.
    pub fn cosine(lr0: f64, epoch: usize, epochs: usize) -> f64 {
        let t = epoch as f64 / epochs.max(1) as f64;
        lr0 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

/// Settings of [`ReduceOnPlateau`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlateauConfig {
    /// Multiplier of the learning rate on a plateau.
    pub factor: f64,
    /// Epochs without improvement tolerated before reducing.
    pub patience: usize,
    /// Relative improvement that counts: `value < best · (1 − threshold)`.
    pub threshold: f64,
}

impl PlateauConfig {
    /// The paper's: factor 0.1, patience 10 (PyTorch's threshold 1e-4).
    pub const fn paper() -> Self {
        Self {
            factor: 0.1,
            patience: 10,
            threshold: 1e-4,
        }
    }
}

/// The scheduler's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReduceOnPlateau {
    /// Its settings.
    pub cfg: PlateauConfig,
    /// Best value seen (`None` before the first).
    pub best: Option<f64>,
    /// Epochs since the best.
    pub bad_epochs: usize,
}

impl ReduceOnPlateau {
    /// A scheduler that has seen nothing.
    pub fn new(cfg: PlateauConfig) -> Self {
        Self {
            cfg,
            best: None,
            bad_epochs: 0,
        }
    }

    /// Records this epoch's `value` and returns the learning rate for the next epoch.
    /// A non-finite value never counts as an improvement.
    pub fn step(&mut self, value: f64, lr: f64) -> f64 {
        let improved = value.is_finite()
            && self
                .best
                .is_none_or(|best| value < best * (1.0 - self.cfg.threshold));
        if improved {
            self.best = Some(value);
            self.bad_epochs = 0;
            return lr;
        }
        self.bad_epochs += 1;
        if self.bad_epochs > self.cfg.patience {
            self.bad_epochs = 0;
            let reduced = lr * self.cfg.factor;
            // PyTorch skips changes smaller than eps = 1e-8.
            if lr - reduced > 1e-8 {
                return reduced;
            }
        }
        lr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0)` with lr 1 steps
    /// through 1, 0.8536, 0.5, 0.1464.
    #[test]
    fn cosine_matches_pytorch() {
        let got: Vec<f64> = (0..4).map(|e| Schedule::cosine(1.0, e, 4)).collect();
        for (g, w) in got
            .iter()
            .zip([1.0, 0.853_553_390_593_273_8, 0.5, 0.146_446_609_406_726_2])
        {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn reduces_after_patience_bad_epochs_like_pytorch() {
        // torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=2), lr 1:
        // values 5, 4, 4, 4.0001, 4 -> lr stays 1 until the third bad epoch, then 0.1;
        // the counter restarts, so three more bad epochs are needed for 0.01.
        let mut s = ReduceOnPlateau::new(PlateauConfig {
            patience: 2,
            ..PlateauConfig::paper()
        });
        let mut lr = 1.0;
        let mut lrs = Vec::new();
        for v in [5.0, 4.0, 4.0, 4.0001, 4.0, 3.9999, 3.9999, 3.9999, 1.0] {
            lr = s.step(v, lr);
            lrs.push(lr);
        }
        // 3.9999 is not < 4·(1 − 1e-4) = 3.9996: still bad.
        let want = [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01];
        for (got, want) in lrs.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{lrs:?}");
        }
        assert_eq!(s.best, Some(1.0));
        assert!(s.step(f64::NAN, 1.0) == 1.0 && s.bad_epochs == 1);
    }
}
