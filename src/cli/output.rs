//! Human-readable tables for stdout (results only; logs and progress go to stderr).

use lastlayer::head::Evaluation;
use lastlayer::pipeline::{FeatureSet, Prediction};

/// Accuracy, per-class accuracy and the confusion matrix.
pub fn evaluation(title: &str, e: &Evaluation) -> String {
    let mut s = format!("{title}: accuracy {:.2}% ({} pictures)\n\n", 100.0 * e.accuracy, e.rows);
    let width = e.per_class.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
    s += &format!("{:<width$}  {:>8}  {:>7}\n", "class", "accuracy", "correct");
    for c in &e.per_class {
        s += &format!("{:<width$}  {:>7.2}%  {:>3}/{:<3}\n", c.class, 100.0 * c.accuracy, c.correct, c.total);
    }
    s += "\nconfusion matrix (rows: true class, columns: predicted)\n";
    s += &format!("{:<width$} ", "");
    for c in &e.per_class {
        s += &format!(" {:>5}", abbreviate(&c.class));
    }
    s.push('\n');
    for (c, row) in e.per_class.iter().zip(&e.confusion) {
        s += &format!("{:<width$} ", c.class);
        for v in row {
            s += &format!(" {v:>5}");
        }
        s.push('\n');
    }
    s
}

fn abbreviate(name: &str) -> String {
    name.chars().take(5).collect()
}

/// Where each split's features are.
pub fn features(fs: &FeatureSet) -> String {
    let mut s = format!("model {} ({:?}), weights sha256 {}\n", fs.model, fs.precision, fs.weights_sha256);
    for sp in &fs.splits {
        s += &format!("{:<5} {:>6} rows  {:<9} {}\n", sp.split, sp.rows, sp.source, sp.features.display());
    }
    s
}

/// Top-k lines per picture.
pub fn predictions(preds: &[Prediction]) -> String {
    let mut s = String::new();
    for p in preds {
        s += &format!("{}\n", p.path.display());
        for c in &p.top {
            s += &format!("  {:>6.2}%  {} ({})\n", 100.0 * c.probability, c.class, c.index);
        }
    }
    s
}
