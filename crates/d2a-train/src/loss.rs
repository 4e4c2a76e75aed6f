//! The training loss `L = L_dice + λ · L_bce` (SPEC §4), on logits.
//!
//! candle 0.11's `binary_cross_entropy_with_logit` computes `log(sigmoid(x))` directly and
//! returns NaN beyond about ±17; [`bce_with_logits`] uses the stable form
//! `max(x, 0) − x·t + log(1 + exp(−|x|))`, finite for every finite logit.

use candle_core::{Result, Tensor};

/// Mean binary cross-entropy of `logits` against targets `t` in [0, 1], numerically stable.
///
/// # Shapes
/// `logits` and `t`: the same shape (e.g. `[B, 1, H, W]`); returns a scalar.
pub fn bce_with_logits(logits: &Tensor, t: &Tensor) -> Result<Tensor> {
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * t)?)? + softplus_neg_abs)?.mean_all()
}

/// Soft Dice loss over the whole batch: `1 − (2·Σ p·y + ε) / (Σ p + Σ y + ε)`, `p = sigmoid`,
/// ε = 1 (SPEC §4 decision).
pub fn soft_dice_loss(logits: &Tensor, t: &Tensor) -> Result<Tensor> {
    const EPS: f64 = 1.0;
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * t)?.sum_all()?;
    let denom = ((p.sum_all()? + t.sum_all()?)? + EPS)?;
    (((inter * 2.0)? + EPS)? / denom)?.affine(-1.0, 1.0)
}

/// `soft_dice_loss + lambda · bce_with_logits` (the paper uses λ = 1).
pub fn dice_bce(logits: &Tensor, t: &Tensor, lambda: f64) -> Result<Tensor> {
    soft_dice_loss(logits, t)? + (bce_with_logits(logits, t)? * lambda)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn fixture() -> Option<std::collections::HashMap<String, Tensor>> {
        let path = d2a_tests::shared_fixture("ops_io.safetensors")?;
        Some(candle_core::safetensors::load(&path, &Device::Cpu).expect("reading the fixture"))
    }

    #[test]
    fn bce_matches_pytorch_including_logits_of_40() -> Result<()> {
        let Some(fx) = fixture() else { return Ok(()) };
        let x = Var::from_tensor(&fx["bce.x"])?;
        let y = bce_with_logits(x.as_tensor(), &fx["bce.t"])?;
        let want = fx["bce.y"].flatten_all()?.to_vec1::<f32>()?[0];
        assert!((y.to_scalar::<f32>()? - want).abs() < 1e-5);
        let g = y.backward()?.get(&x).unwrap().clone();
        let diff = (g - &fx["bce.gx"])?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6, "gradient differs from PyTorch by {diff}");
        Ok(())
    }

    #[test]
    fn losses_are_finite_for_huge_logits_and_have_the_right_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[-1000f64, -40.0, -0.3, 0.0, 0.7, 40.0, 1000.0], &dev)?;
        let t = Tensor::new(&[0f64, 1.0, 1.0, 0.5, 0.0, 1.0, 0.0], &dev)?;
        let v = dice_bce(&x, &t, 1.0)?.to_scalar::<f64>()?;
        assert!(v.is_finite());
        // Central differences in f64 on moderate logits.
        let x = Tensor::new(&[-3f64, -0.3, 0.0, 0.7, 2.5], &dev)?;
        let t = Tensor::new(&[0f64, 1.0, 1.0, 0.0, 1.0], &dev)?;
        let var = Var::from_tensor(&x)?;
        let g = dice_bce(var.as_tensor(), &t, 1.0)?
            .backward()?
            .get(&var)
            .unwrap()
            .to_vec1::<f64>()?;
        let base = x.to_vec1::<f64>()?;
        for i in 0..base.len() {
            let at = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += d;
                dice_bce(&Tensor::new(v, &dev)?, &t, 1.0)?.to_scalar::<f64>()
            };
            let numeric = (at(1e-6)? - at(-1e-6)?) / 2e-6;
            assert!(
                (numeric - g[i]).abs() < 1e-7,
                "element {i}: {} vs {numeric}",
                g[i]
            );
        }
        Ok(())
    }

    #[test]
    fn dice_loss_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        // Logits of ±100 give p of exactly 0 or 1 in f64: p = [1, 1, 0, 0], y = [1, 0, 1, 0].
        let x = Tensor::new(&[100f64, 100.0, -100.0, -100.0], &dev)?;
        let y = Tensor::new(&[1f64, 0.0, 1.0, 0.0], &dev)?;
        let d = soft_dice_loss(&x, &y)?.to_scalar::<f64>()?;
        assert!((d - (1.0 - 3.0 / 5.0)).abs() < 1e-12, "{d}");
        // Empty truth, empty prediction: loss 0 thanks to ε. Logits 0 (p = 1/2) on empty truth:
        // 1 − 1 / (4 · 1/2 + 1).
        let empty = y.zeros_like()?;
        assert_eq!(
            soft_dice_loss(&(x.ones_like()? * -100.0)?, &empty)?.to_scalar::<f64>()?,
            0.0
        );
        let d = soft_dice_loss(&x.zeros_like()?, &empty)?.to_scalar::<f64>()?;
        assert!((d - 2.0 / 3.0).abs() < 1e-12, "{d}");
        Ok(())
    }
}
