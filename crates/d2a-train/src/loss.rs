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

/// The Tversky loss over the whole batch: `1 − (I + ε/2) / (I + (1 − β)·FP + β·FN + ε/2)` with
/// soft counts `I = Σ p·y`, `FP = Σ p·(1 − y)`, `FN = Σ (1 − p)·y`, ε = 1. β = 0.5 is the soft
/// Dice loss; β > 0.5 weighs missed lesion above false alarms (a cure for under-segmentation).
pub fn tversky_loss(logits: &Tensor, t: &Tensor, beta: f64) -> Result<Tensor> {
    const HALF_EPS: f64 = 0.5;
    let p = candle_nn::ops::sigmoid(logits)?;
    let inter = (&p * t)?.sum_all()?;
    let fp = (p.sum_all()? - &inter)?;
    let fn_ = (t.sum_all()? - &inter)?;
    let denom = (((&inter + (fp * (1.0 - beta))?)? + (fn_ * beta)?)? + HALF_EPS)?;
    ((inter + HALF_EPS)? / denom)?.affine(-1.0, 1.0)
}

/// The training loss: [`dice_bce`] when `beta` is 0.5 (the paper's), else
/// `tversky_loss(beta) + lambda · bce_with_logits`.
pub fn region_bce(logits: &Tensor, t: &Tensor, lambda: f64, beta: f64) -> Result<Tensor> {
    if beta == 0.5 {
        return dice_bce(logits, t, lambda);
    }
    tversky_loss(logits, t, beta)? + (bce_with_logits(logits, t)? * lambda)?
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn tversky_at_one_half_is_dice_and_weighs_misses_above_it() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[2.0f32, -1.0, 0.5, -3.0, 1.5, 0.0]], &dev)?;
        let t = Tensor::new(&[[1.0f32, 1.0, 0.0, 1.0, 1.0, 0.0]], &dev)?;
        let dice = soft_dice_loss(&x, &t)?.to_scalar::<f32>()?;
        let half = tversky_loss(&x, &t, 0.5)?.to_scalar::<f32>()?;
        assert!((dice - half).abs() < 1e-6, "{dice} {half}");
        // By hand, in f64: the soft counts and the index at β = 0.8.
        let p: Vec<f64> = [2.0f64, -1.0, 0.5, -3.0, 1.5, 0.0]
            .iter()
            .map(|v| 1.0 / (1.0 + (-v).exp()))
            .collect();
        let y = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0];
        let i: f64 = p.iter().zip(&y).map(|(p, y)| p * y).sum();
        let (fp, fn_) = (p.iter().sum::<f64>() - i, y.iter().sum::<f64>() - i);
        let want = 1.0 - (i + 0.5) / (i + 0.2 * fp + 0.8 * fn_ + 0.5);
        let got = tversky_loss(&x, &t, 0.8)?.to_scalar::<f32>()?;
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} {want}");
        // This batch misses more lesion than it invents, so β = 0.8 costs more than Dice.
        assert!(fn_ > fp && f64::from(got) > f64::from(dice));
        let both = region_bce(&x, &t, 1.0, 0.8)?.to_scalar::<f32>()?;
        let bce = bce_with_logits(&x, &t)?.to_scalar::<f32>()?;
        assert!((both - got - bce).abs() < 1e-6);
        assert_eq!(
            region_bce(&x, &t, 1.0, 0.5)?.to_scalar::<f32>()?,
            dice_bce(&x, &t, 1.0)?.to_scalar::<f32>()?
        );
        Ok(())
    }

    /// PyTorch's `binary_cross_entropy_with_logits` on a `[2, 1, 6, 5]` batch with logits of
    /// ±40 and 25 (`shared/fixtures/ops_io.safetensors`, keys `bce.*`, carried here so the test
    /// always runs): inputs, targets, the mean loss and its gradient.
    const BCE_X: [f32; 60] = [
        4e+01,
        -4e+01,
        -3.781412,
        -3.4994352,
        -3.2996707,
        -4.546709,
        2.4301326,
        -2.4327064,
        -0.021322865,
        2.50409,
        1.9309773,
        -4.7165112,
        2.0657115,
        -2.3961835,
        -3.4615574,
        -4.5238147,
        -3.851754,
        -2.6899695,
        0.7542554,
        -8.325644,
        -6.58046,
        9.383693,
        3.4595373,
        -1.1631532,
        -4.3022914,
        -6.8703303,
        -6.0375357,
        5.4475284,
        -7.5315576,
        -6.868125,
        0.4046625,
        -1.0047122,
        -3.0122333,
        -3.0932412,
        -2.2962358,
        0.65967464,
        5.0345263,
        -1.4425431,
        1.5379943,
        2.8506465,
        4.1395693,
        -3.6672847,
        25.0,
        -2.5334225,
        -0.9355783,
        -3.8633845,
        -3.572887,
        1.565612,
        -0.49599642,
        -3.3557737,
        -1.2061261,
        1.4016808,
        1.3837802,
        7.9031186,
        4.0342383,
        -0.16551818,
        -0.3466839,
        -3.1910446,
        2.7120235,
        4.077771,
    ];
    const BCE_T: [f32; 60] = [
        0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0,
        1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0,
        0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 1.0, 0.0, 1.0,
    ];
    const BCE_Y: f32 = 4.0243587;
    const BCE_GX: [f32; 60] = [
        0.016666668,
        -0.016666668,
        0.00037137762,
        -0.016177861,
        0.0005930414,
        -0.01649182,
        0.015318273,
        -0.01532146,
        0.008244491,
        0.015407135,
        -0.0021107078,
        -0.016518883,
        0.014792094,
        -0.015275597,
        -0.016159566,
        -0.016487814,
        -0.01631999,
        0.0010594638,
        -0.00533158,
        4.0361056e-06,
        -0.016643578,
        -1.4007092e-06,
        -0.00050809485,
        0.003968247,
        -0.016444055,
        -0.016649382,
        -0.01662697,
        0.016595192,
        -0.01665774,
        -0.016649345,
        -0.006669878,
        -0.012199733,
        0.000781271,
        0.00072311517,
        -0.015142747,
        0.010986456,
        0.01655888,
        -0.013480802,
        -0.002947118,
        -0.0009107987,
        0.016405335,
        -0.01625151,
        0.016666668,
        0.0012258018,
        -0.0119700935,
        -0.016323917,
        0.0004551337,
        0.013785954,
        -0.0103586335,
        -0.01610489,
        0.0038397866,
        0.013374175,
        0.013326624,
        0.01666051,
        0.016376812,
        0.0076452447,
        0.0069031133,
        -0.016008265,
        0.015628872,
        -0.00027771492,
    ];

    #[test]
    fn bce_matches_pytorch_including_logits_of_40() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&BCE_X, &dev)?.reshape((2, 1, 6, 5))?)?;
        let t = Tensor::new(&BCE_T, &dev)?.reshape((2, 1, 6, 5))?;
        let y = bce_with_logits(x.as_tensor(), &t)?;
        assert!((y.to_scalar::<f32>()? - BCE_Y).abs() < 1e-5);
        let g = y
            .backward()?
            .get(&x)
            .unwrap()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let diff = g
            .iter()
            .zip(BCE_GX)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
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
