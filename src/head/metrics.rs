//! A head's results on labelled features: accuracy, balanced accuracy, macro F1, per-class
//! recall, precision and F1, the confusion matrix, and calibration (expected calibration error
//! in [`ECE_BINS`] bins, before and after the head's temperature, and the reliability diagram's
//! bins).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::LinearHead;

/// Equal-width confidence bins of the expected calibration error and the reliability diagram.
pub const ECE_BINS: usize = 15;

/// One class's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Rows of this class predicted right.
    pub correct: u64,
    /// Rows of this class.
    pub total: u64,
    /// `correct / total`: the class's recall (0 when there are none).
    pub accuracy: f64,
    /// Of the rows predicted as this class, the share that are (0 when none is).
    #[serde(default)]
    pub precision: f64,
    /// `2 · precision · recall / (precision + recall)` (0 when both are 0).
    #[serde(default)]
    pub f1: f64,
}

/// One confidence bin of the reliability diagram: rows whose top probability is in
/// `(lower, upper]` (the first bin includes 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Lower edge.
    pub lower: f64,
    /// Upper edge.
    pub upper: f64,
    /// Rows in the bin.
    pub rows: u64,
    /// Their mean top probability (0 when empty).
    pub confidence: f64,
    /// The share of them predicted right (0 when empty).
    pub accuracy: f64,
}

/// How well the probabilities match how often the head is right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error of the head's probabilities (its temperature applied):
    /// `Σ_bins rows/N · |accuracy − confidence|` over [`ECE_BINS`] equal-width bins of the top
    /// probability.
    pub ece: f64,
    /// The same at temperature 1, the logit scale fitted on the validation split taken out
    /// (absent when the head has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ece_before_temperature: Option<f64>,
    /// The logit scale (1 / temperature) in the head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_scale: Option<f64>,
    /// The bins of `ece`, for the reliability diagram.
    pub bins: Vec<ReliabilityBin>,
}

/// A head's results on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Share of rows predicted right.
    pub accuracy: f64,
    /// Mean of the per-class recalls (classes with rows), as scikit-learn's
    /// `balanced_accuracy_score`.
    #[serde(default)]
    pub balanced_accuracy: f64,
    /// Mean of the per-class F1 scores (classes with rows or predictions), as scikit-learn's
    /// `f1_score(average="macro")`.
    #[serde(default)]
    pub macro_f1: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Rows.
    pub rows: u64,
    /// Per class, in label order.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Calibration of the probabilities (absent in runs written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// Evaluates `head` on `features` `[N, D]` with `labels` `[N]`.
pub fn evaluate(head: &LinearHead, features: &Tensor, labels: &Tensor, classes: &[String]) -> Evaluation {
    evaluate_logits(&head.logits(features), labels, classes, None)
}

/// The evaluation of class scores `logits` `[N, classes]` against `labels` `[N]`. With the
/// head's `logit_scale` (folded into `logits`), the calibration error before the temperature
/// is reported too.
pub fn evaluate_logits(logits: &Tensor, labels: &Tensor, classes: &[String], logit_scale: Option<f64>) -> Evaluation {
    let loss = logits.cross_entropy_for_logits(labels).double_value(&[]);
    let pred: Vec<i64> = Vec::<i64>::try_from(logits.argmax(-1, false)).unwrap_or_default();
    let truth: Vec<i64> = Vec::<i64>::try_from(labels.to_kind(Kind::Int64)).unwrap_or_default();
    let k = classes.len();
    let mut confusion = vec![vec![0u64; k]; k];
    for (&t, &p) in truth.iter().zip(&pred) {
        if (t as usize) < k && (p as usize) < k {
            confusion[t as usize][p as usize] += 1;
        }
    }
    let scores = ConfusionScores::of(&confusion);
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(c, name)| ClassAccuracy {
            class: name.clone(),
            correct: confusion[c][c],
            total: confusion[c].iter().sum(),
            accuracy: scores.recall[c],
            precision: scores.precision[c],
            f1: scores.f1[c],
        })
        .collect::<Vec<_>>();
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let rows = truth.len() as u64;
    let ConfusionScores { balanced_accuracy, macro_f1, .. } = scores;
    let calibration = (rows > 0).then(|| {
        let (ece, bins) = reliability(logits, labels);
        let scale = logit_scale.filter(|s| s.is_finite() && *s > 0.0);
        Calibration { ece, ece_before_temperature: scale.map(|s| reliability(&(logits / s), labels).0), logit_scale: scale, bins }
    });
    Evaluation {
        accuracy: if rows == 0 { 0.0 } else { correct as f64 / rows as f64 },
        balanced_accuracy,
        macro_f1,
        loss,
        rows,
        per_class,
        confusion,
        calibration,
    }
}

/// Per-class recall, precision and F1 of a confusion matrix (`[true][predicted]`), and their
/// means as scikit-learn takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionScores {
    /// Per class: right / rows of the class (0 without rows).
    pub recall: Vec<f64>,
    /// Per class: right / rows predicted as the class (0 without any).
    pub precision: Vec<f64>,
    /// Per class: `2 · right / (rows + predicted)` (0 without either).
    pub f1: Vec<f64>,
    /// Mean recall over the classes with rows (`balanced_accuracy_score`).
    pub balanced_accuracy: f64,
    /// Mean F1 over the classes with rows or predictions (`f1_score(average="macro")`).
    pub macro_f1: f64,
}

impl ConfusionScores {
    /// The scores of `confusion`.
    pub fn of(confusion: &[Vec<u64>]) -> ConfusionScores {
        let k = confusion.len();
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let total: Vec<u64> = confusion.iter().map(|row| row.iter().sum()).collect();
        let predicted: Vec<u64> = (0..k).map(|c| confusion.iter().map(|row| row.get(c).copied().unwrap_or(0)).sum()).collect();
        let right: Vec<u64> = (0..k).map(|c| confusion[c].get(c).copied().unwrap_or(0)).collect();
        let recall: Vec<f64> = (0..k).map(|c| ratio(right[c], total[c])).collect();
        let precision = (0..k).map(|c| ratio(right[c], predicted[c])).collect();
        let f1: Vec<f64> = (0..k).map(|c| ratio(2 * right[c], total[c] + predicted[c])).collect();
        let mean = |v: Vec<f64>| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
        let balanced_accuracy = mean((0..k).filter(|&c| total[c] > 0).map(|c| recall[c]).collect());
        let macro_f1 = mean((0..k).filter(|&c| total[c] + predicted[c] > 0).map(|c| f1[c]).collect());
        ConfusionScores { recall, precision, f1, balanced_accuracy, macro_f1 }
    }
}

/// The expected calibration error of `softmax(logits)` against `labels`, and its
/// [`ECE_BINS`] bins.
pub fn reliability(logits: &Tensor, labels: &Tensor) -> (f64, Vec<ReliabilityBin>) {
    let probs = logits.to_kind(Kind::Double).softmax(-1, Kind::Double);
    let (top, pred) = probs.max_dim(-1, false);
    let right: Vec<bool> = Vec::<bool>::try_from(pred.eq_tensor(&labels.to_kind(Kind::Int64))).unwrap_or_default();
    let top: Vec<f64> = Vec::<f64>::try_from(top).unwrap_or_default();
    let mut sums = vec![(0u64, 0.0f64, 0u64); ECE_BINS];
    for (&p, &r) in top.iter().zip(&right) {
        // (lower, upper] bins, as the usual definition; p = 0 cannot occur for a top probability.
        let b = ((p * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += r as u64;
    }
    let n = top.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = sums
        .iter()
        .enumerate()
        .map(|(b, &(rows, conf, right))| {
            let (confidence, accuracy) = if rows == 0 { (0.0, 0.0) } else { (conf / rows as f64, right as f64 / rows as f64) };
            ece += rows as f64 / n * (accuracy - confidence).abs();
            ReliabilityBin { lower: b as f64 / ECE_BINS as f64, upper: (b + 1) as f64 / ECE_BINS as f64, rows, confidence, accuracy }
        })
        .collect();
    (ece, bins)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|c| format!("class {c}")).collect()
    }

    /// Logits that predict `pred` with a top probability of about `p`.
    fn logits_for(pred: &[i64], k: i64, p: f64) -> Tensor {
        let margin = ((k - 1) as f64 * p / (1.0 - p)).ln();
        Tensor::from_slice(pred).one_hot(k).to_kind(Kind::Float) * margin
    }

    /// Hand-computed: 3 classes, truth [0,0,0,0,1,1,2,2], predicted [0,0,0,1,1,2,2,2].
    /// Recalls 3/4, 1/2, 1: balanced accuracy 0.75; precisions 1, 1/2, 2/3; F1 6/7, 1/2, 4/5.
    #[test]
    fn balanced_accuracy_macro_f1_and_per_class_figures_by_hand() {
        let truth = Tensor::from_slice(&[0i64, 0, 0, 0, 1, 1, 2, 2]);
        let e = evaluate_logits(&logits_for(&[0, 0, 0, 1, 1, 2, 2, 2], 3, 0.9), &truth, &names(3), None);
        assert!((e.accuracy - 6.0 / 8.0).abs() < 1e-12);
        assert!((e.balanced_accuracy - (0.75 + 0.5 + 1.0) / 3.0).abs() < 1e-12, "{}", e.balanced_accuracy);
        assert!((e.macro_f1 - (6.0 / 7.0 + 0.5 + 0.8) / 3.0).abs() < 1e-12, "{}", e.macro_f1);
        let precision: Vec<f64> = e.per_class.iter().map(|c| c.precision).collect();
        assert!((precision[2] - 2.0 / 3.0).abs() < 1e-12 && precision[0] == 1.0, "{precision:?}");
    }

    /// A class never predicted and never present does not count (as scikit-learn leaves it out).
    #[test]
    fn absent_classes_are_left_out_of_the_means() {
        let truth = Tensor::from_slice(&[0i64, 1]);
        let e = evaluate_logits(&logits_for(&[0, 1], 3, 0.9), &truth, &names(3), None);
        assert_eq!((e.balanced_accuracy, e.macro_f1), (1.0, 1.0));
    }

    /// Every row right at confidence 0.9: ECE 0.1, all in the bin (0.867, 0.933]. The same
    /// logits at scale 2 (temperature 0.5) were taken out: before, the confidence was lower.
    #[test]
    fn expected_calibration_error_of_known_confidences() {
        let truth = Tensor::from_slice(&[0i64, 1, 2, 0]);
        let logits = logits_for(&[0, 1, 2, 0], 3, 0.9);
        let e = evaluate_logits(&logits, &truth, &names(3), Some(2.0));
        let c = e.calibration.expect("calibration");
        assert!((c.ece - 0.1).abs() < 1e-6, "{}", c.ece);
        assert_eq!(c.bins.len(), ECE_BINS);
        assert_eq!(c.bins[13].rows, 4);
        // At half the logits, the top probability is e^m/(e^m + 2) with e^(2m) = 18.
        let before = 18f64.sqrt() / (18f64.sqrt() + 2.0);
        assert!((c.ece_before_temperature.unwrap() - (1.0 - before)).abs() < 1e-6);
        // Half right at confidence 0.9: |0.5 - 0.9|.
        let half = evaluate_logits(&logits, &Tensor::from_slice(&[0i64, 1, 0, 1]), &names(3), None);
        assert!((half.calibration.unwrap().ece - 0.4).abs() < 1e-6);
    }
}
