//! Accuracy, per-class accuracy and the confusion matrix of a head on labelled features.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::LinearHead;

/// One class's accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Class name.
    pub class: String,
    /// Rows of this class predicted right.
    pub correct: u64,
    /// Rows of this class.
    pub total: u64,
    /// `correct / total` (0 when there are none).
    pub accuracy: f64,
}

/// A head's results on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Share of rows predicted right.
    pub accuracy: f64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Rows.
    pub rows: u64,
    /// Per class, in label order.
    pub per_class: Vec<ClassAccuracy>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates `head` on `features` `[N, D]` with `labels` `[N]`.
pub fn evaluate(head: &LinearHead, features: &Tensor, labels: &Tensor, classes: &[String]) -> Evaluation {
    evaluate_logits(&head.logits(features), labels, classes)
}

/// The evaluation of class scores `logits` `[N, classes]` against `labels` `[N]`.
pub fn evaluate_logits(logits: &Tensor, labels: &Tensor, classes: &[String]) -> Evaluation {
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
    let per_class = classes
        .iter()
        .enumerate()
        .map(|(c, name)| {
            let total: u64 = confusion[c].iter().sum();
            let correct = confusion[c][c];
            ClassAccuracy { class: name.clone(), correct, total, accuracy: if total == 0 { 0.0 } else { correct as f64 / total as f64 } }
        })
        .collect::<Vec<_>>();
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();
    let rows = truth.len() as u64;
    Evaluation { accuracy: if rows == 0 { 0.0 } else { correct as f64 / rows as f64 }, loss, rows, per_class, confusion }
}
