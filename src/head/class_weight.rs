//! `--class-weight`: how much each class's rows count in the head's loss.
//!
//! With weights `w_c`, the training objective is `(1/N) Σ_i w_{y_i} · CE_i + λ/2 · |W|²` (every
//! head path, in memory and streamed): scikit-learn's `LogisticRegression(class_weight=...)`
//! objective divided by `C · N`. `balanced` gives `w_c = N / (K · N_c)`, as scikit-learn's
//! `compute_class_weight("balanced")`, from the class counts of the whole training split
//! (pictures, not views): every class then weighs as much in the loss as any other, and
//! `Σ_i w_{y_i} = N`. The validation loss that chooses the penalty, the epoch and the
//! temperature is weighted the same way, `Σ w_{y_i} CE_i / Σ w_{y_i}`.

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use crate::error::{Error, Result};

/// `--class-weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeight {
    /// Every row counts once (head.json files written before the flag existed read as this).
    #[default]
    None,
    /// `N / (K · N_c)` for a row of class `c`: rare classes count more.
    Balanced,
}

/// The weight of each of `classes` classes, given the labels of the training pictures, as an f32
/// tensor `[classes]` (`None` with [`ClassWeight::None`]). Balanced weights need every class
/// to have a picture; the error names the first that has none.
pub fn class_weights(mode: ClassWeight, picture_labels: &[i64], classes: usize) -> Result<Option<Tensor>> {
    if mode == ClassWeight::None {
        return Ok(None);
    }
    let mut counts = vec![0usize; classes];
    for &l in picture_labels {
        if let Some(c) = usize::try_from(l).ok().and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    if let Some(empty) = counts.iter().position(|&n| n == 0) {
        return Err(Error::usage("--class-weight", format!("balanced weights need a training picture of every class, and class {empty} has none")));
    }
    let n = picture_labels.len() as f64;
    let w: Vec<f32> = counts.iter().map(|&c| (n / (classes as f64 * c as f64)) as f32).collect();
    Ok(Some(Tensor::from_slice(&w)))
}

/// The weighted mean cross-entropy `Σ w_{y_i} CE_i / Σ w_{y_i}` of `logits` against `labels`
/// (the plain mean without weights).
pub fn weighted_cross_entropy(logits: &Tensor, labels: &Tensor, weights: Option<&Tensor>) -> Tensor {
    match weights {
        None => logits.cross_entropy_for_logits(labels),
        Some(w) => logits.to_kind(Kind::Float).cross_entropy_loss(labels, Some(w.to_device(logits.device())), Reduction::Mean, -100, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn's `compute_class_weight("balanced", classes=[0,1,2], y=[0]*6+[1]*3+[2])`
    /// is `[10/18, 10/9, 10/3]`.
    #[test]
    fn balanced_weights_are_scikit_learns() {
        let labels: Vec<i64> = [vec![0; 6], vec![1; 3], vec![2]].concat();
        let w: Vec<f32> = Vec::try_from(class_weights(ClassWeight::Balanced, &labels, 3).unwrap().unwrap()).unwrap();
        for (a, b) in w.iter().zip([10.0 / 18.0, 10.0 / 9.0, 10.0 / 3.0]) {
            assert!((*a as f64 - b).abs() < 1e-6, "{w:?}");
        }
        assert!(class_weights(ClassWeight::None, &labels, 3).unwrap().is_none());
        let err = class_weights(ClassWeight::Balanced, &labels, 4).unwrap_err().to_string();
        assert!(err.contains("--class-weight") && err.contains("class 3 has none"), "{err}");
    }

    /// Two rows: one of class 0 predicted at p = 0.8, one of class 1 at p = 0.5. Plain mean
    /// `-(ln 0.8 + ln 0.5)/2`; weights (1, 3): `-(ln 0.8 + 3 ln 0.5)/4`.
    #[test]
    fn weights_change_the_loss_as_documented() {
        let logits = Tensor::from_slice(&[4f32.ln(), 0.0, 0.0, 0.0]).view([2, 2]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let plain = weighted_cross_entropy(&logits, &labels, None).double_value(&[]);
        let w = Tensor::from_slice(&[1f32, 3.0]);
        let weighted = weighted_cross_entropy(&logits, &labels, Some(&w)).double_value(&[]);
        assert!((plain + (0.8f64.ln() + 0.5f64.ln()) / 2.0).abs() < 1e-6, "{plain}");
        assert!((weighted + (0.8f64.ln() + 3.0 * 0.5f64.ln()) / 4.0).abs() < 1e-6, "{weighted}");
    }
}
