//! Trains a head on features stored as safetensors (`features` N x D, `labels` N) with the
//! library's defaults (or without the refit, with `--no-refit`; another seed of the validation
//! split and shuffles with `--seed N`; classes weighted with `--class-weight balanced`),
//! evaluates it on a test file (accuracy, balanced accuracy, macro F1, calibration error),
//! and prints one JSON line: seconds, test accuracy, and the validation rows it held out (so
//! that a reference can use the same split).
//!
//! ```sh
//! cargo run --release --example head_from_features -- train.safetensors test.safetensors [--no-refit] [--seed N] [--class-weight balanced|none]
//! ```

use std::time::Instant;

use lastlayer::data::sample::stratified_holdout;
use lastlayer::head::{evaluate_logits, train_head, ClassWeight, TrainConfig};
use lastlayer::progress::Progress;
use tch::Tensor;

fn load(path: &str) -> anyhow::Result<(Tensor, Tensor)> {
    let t = Tensor::read_safetensors(path)?;
    let get = |n: &str| t.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone()).ok_or_else(|| anyhow::anyhow!("{path}: no '{n}'"));
    Ok((get("features")?, get("labels")?))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: head_from_features TRAIN TEST [--no-refit] [--seed N] [--class-weight balanced|none]";
    let (mut refit, mut seed, mut files, mut class_weight) = (true, 0u64, Vec::new(), ClassWeight::None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-refit" => refit = false,
            "--class-weight" => {
                class_weight = match it.next().map(String::as_str) {
                    Some("balanced") => ClassWeight::Balanced,
                    Some("none") => ClassWeight::None,
                    _ => anyhow::bail!("--class-weight needs balanced or none; {usage}"),
                }
            }
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("--seed needs a number; {usage}"))?,
            _ => files.push(a.clone()),
        }
    }
    let [train, test] = files.as_slice() else { anyhow::bail!("{usage}") };
    let (x, y) = load(train)?;
    let (xt, yt) = load(test)?;
    let classes = y.max().int64_value(&[]) as usize + 1;
    let cfg = TrainConfig { refit, seed, class_weight, ..TrainConfig::default() };
    let start = Instant::now();
    let (head, report) = train_head(&x, &y, classes, &cfg, &Progress::hidden())?;
    let seconds = start.elapsed().as_secs_f64();
    if std::env::var_os("HEAD_HISTORY").is_some() {
        for e in &report.history {
            eprintln!(
                "epoch {:3} l2 {:?} train_loss {:.4} val_loss {:.4?} calibrated {:.4?} val_acc {:.4?}",
                e.epoch, e.l2, e.train_loss, e.val_loss, e.val_loss_calibrated, e.val_accuracy
            );
        }
    }
    let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    let eval = evaluate_logits(&head.logits(&xt), &yt, &names, report.logit_scale);
    let calibration = eval.calibration.as_ref();
    let labels: Vec<i64> = Vec::try_from(&y)?;
    let (_, val_rows) = stratified_holdout(&labels, cfg.val_fraction, cfg.seed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds, "test_accuracy": eval.accuracy, "val_accuracy": report.best_val_accuracy,
            "test_balanced_accuracy": eval.balanced_accuracy, "test_macro_f1": eval.macro_f1,
            "test_recall": eval.per_class.iter().map(|c| c.accuracy).collect::<Vec<_>>(),
            "test_ece": calibration.map(|c| c.ece), "test_ece_before_temperature": calibration.and_then(|c| c.ece_before_temperature),
            "logit_scale": report.logit_scale,
            "best_epoch": report.best_epoch, "epochs_run": report.history.len(), "l2": report.l2, "val_rows": val_rows,
            "refit_rows": report.refit.as_ref().map(|r| r.rows), "refit_epochs": report.refit.as_ref().map(|r| r.epochs),
        })
    );
    Ok(())
}
