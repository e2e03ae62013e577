//! Human-readable tables for stdout (results only; logs and progress go to stderr).

use std::path::Path;

use lastlayer::cache::Listed;
use lastlayer::head::Evaluation;
use lastlayer::status::{RunStatus, State};
use lastlayer::pipeline::{FeatureSet, Prediction, Trial};

/// Accuracy, balanced accuracy, macro F1, calibration error, per-class recall, precision and
/// F1, and the confusion matrix.
pub fn evaluation(title: &str, e: &Evaluation) -> String {
    let mut s = format!(
        "{title}: accuracy {:.2}%, balanced accuracy {:.2}%, macro F1 {:.3} ({} pictures)\n",
        100.0 * e.accuracy,
        100.0 * e.balanced_accuracy,
        e.macro_f1,
        e.rows
    );
    if let Some(c) = &e.calibration {
        let before = c.ece_before_temperature.map(|b| format!(" (before the temperature {:.2}%, logit scale {:.3})", 100.0 * b, c.logit_scale.unwrap_or(1.0))).unwrap_or_default();
        s += &format!("expected calibration error ({} bins): {:.2}%{before}\n", c.bins.len(), 100.0 * c.ece);
    }
    s.push('\n');
    let width = e.per_class.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
    s += &format!("{:<width$}  {:>7}  {:>7}  {:>9}  {:>5}\n", "class", "recall", "correct", "precision", "F1");
    for c in &e.per_class {
        s += &format!("{:<width$}  {:>6.2}%  {:>3}/{:<3}  {:>8.2}%  {:>5.3}\n", c.class, 100.0 * c.accuracy, c.correct, c.total, 100.0 * c.precision, c.f1);
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
        s += &format!(
            "{:<5} {:>6} rows  {:<9} {:>6} through the backbone  {}\n",
            sp.split,
            sp.rows,
            sp.source,
            sp.backbone_rows,
            sp.features.display()
        );
    }
    s
}

/// `eval`'s unknown threshold lines.
pub fn unknown_eval(u: &lastlayer::pipeline::UnknownEval) -> String {
    let mut s = format!(
        "\nunknown threshold {:.4} (keeps {:.0}% of validation pictures): {:.1}% of test pictures kept, accuracy on them {:.2}% (on all {:.2}%)\n",
        u.threshold,
        100.0 * u.keep,
        100.0 * u.test.kept,
        100.0 * u.test.accuracy_kept,
        100.0 * u.test.accuracy_all
    );
    if let (Some(n), Some(r), Some(a), Some(b)) = (u.unknown_pictures, u.unknown_rejected, u.score, u.softmax) {
        s += &format!("{n} pictures of no trained class: {:.1}% answered unknown\n", 100.0 * r);
        s += "                          AUROC   FPR95\n";
        s += &format!("  lastlayer's score      {:>6.3}  {:>6.3}\n", a.auroc, a.fpr95);
        s += &format!("  top softmax (baseline) {:>6.3}  {:>6.3}\n", b.auroc, b.fpr95);
    }
    s += &format!("accuracy against share kept: {}\n", u.plot.display());
    s
}

/// Top-k lines per picture.
pub fn predictions(preds: &[Prediction]) -> String {
    let mut s = String::new();
    for p in preds {
        s += &format!("{}\n", p.path.display());
        if let (Some(true), Some(best)) = (p.unknown, p.top.first()) {
            s += &format!("  unknown (closest: {} {:.2}; score {:.2})\n", best.class, best.probability, p.score.unwrap_or(f64::NAN));
        }
        for c in &p.top {
            s += &format!("  {:>6.2}%  {} ({})\n", 100.0 * c.probability, c.class, c.index);
        }
    }
    s
}

/// `lastlayer status`.
pub fn status(run_dir: &Path, st: &RunStatus) -> String {
    let state = match st.state {
        State::Running => format!("running (pid {})", st.pid),
        State::Finished => "finished".to_string(),
        State::Failed => "failed".to_string(),
        State::Died => format!("died: process {} is gone; run the same command again to resume", st.pid),
    };
    let mut s = format!("{}: {state}\n  started {}, last update {}\n", run_dir.display(), st.started_at, st.updated_at);
    if let Some(stage) = &st.stage {
        let pct = if st.total > 0 { 100.0 * st.done as f64 / st.total as f64 } else { 0.0 };
        s += &format!("  {stage}: {}/{} ({pct:.1}%)", st.done, st.total);
        if let Some(rate) = st.rate {
            s += &format!(", {rate:.1}/s");
        }
        if let (Some(eta), State::Running) = (st.eta_seconds, st.state) {
            s += &format!(", ETA {eta:.0}s");
        }
        s.push('\n');
    }
    if let Some(e) = &st.error {
        s += &format!("  error: {e}\n");
    }
    if let Some(acc) = st.test_accuracy {
        s += &format!("  test accuracy {:.2}%\n", 100.0 * acc);
    }
    s
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// `lastlayer cache ls`.
pub fn cache_listing(listed: &[Listed]) -> String {
    let mut s = String::new();
    let mut total = 0;
    for l in listed {
        match l {
            Listed::Entry { dir, manifest: Some(m), bytes } => {
                total += bytes;
                s += &format!(
                    "{:<12} {:<5} {:>6} x {:<5} {:<4} {:<10} {:>10}  {}\n",
                    m.key.model,
                    m.key.split,
                    m.rows,
                    m.feature_width,
                    format!("{:?}", m.key.precision).to_lowercase(),
                    m.key.dataset,
                    mib(*bytes),
                    dir.display()
                );
            }
            Listed::Entry { dir, manifest: None, bytes } => {
                total += bytes;
                s += &format!("(no manifest: unusable, `cache rm` it) {:>10}  {}\n", mib(*bytes), dir.display());
            }
            Listed::Store(st) => {
                total += st.bytes;
                let recipe = match &st.recipe {
                    Some(r) => format!(
                        "{} {} {}px {} weights {}",
                        r.model,
                        format!("{:?}", r.precision).to_lowercase(),
                        r.preprocessing.input_size,
                        r.engine.map_or("any engine".to_string(), |e| format!("{e:?} engine").to_lowercase()),
                        &r.weights_sha256[..r.weights_sha256.len().min(12)]
                    ),
                    None => "(no store.json: unusable, `cache rm` it)".to_string(),
                };
                let writers = if st.writers > 0 { format!(", {} extracting now", st.writers) } else { String::new() };
                s += &format!("store: {recipe}: {} rows x {}, {} segment(s){writers} {:>10}  {}\n", st.rows, st.width.unwrap_or(0), st.segments, mib(st.bytes), st.dir.display());
            }
            Listed::Leftover { dir, bytes } => {
                total += bytes;
                s += &format!("unused: an earlier lastlayer's unfinished extraction (`cache rm --partial`) {:>10}  {}\n", mib(*bytes), dir.display());
            }
        }
    }
    s += &format!("{} items, {} in all\n", listed.len(), mib(total));
    s
}

/// `lastlayer sweep`: every setting, best validation accuracy first.
pub fn sweep(trials: &[Trial]) -> String {
    let mut s = format!("{:>10} {:>12} {:>9} {:>9} {:>6} {:>8}\n", "lr", "weight_decay", "val_acc", "val_loss", "epoch", "seconds");
    for t in trials {
        s += &format!(
            "{:>10.1e} {:>12.1e} {:>8.2}% {:>9.4} {:>6} {:>8.2}\n",
            t.lr,
            t.weight_decay,
            100.0 * t.val_accuracy,
            t.val_loss.unwrap_or(f64::NAN),
            t.best_epoch,
            t.seconds
        );
    }
    s + "\n"
}

/// `lastlayer models` for people: one aligned row per model (cost, measured rate, published
/// CIFAR-10 linear-probe accuracy with numbered sources below, the Hub repo and the pinned
/// sha256 from `rows`' `sha256`), then the sources.
pub fn models_table(models: &[lastlayer::hub::ModelEntry], rows: &[serde_json::Value]) -> String {
    use comfy_table::{presets::NOTHING, CellAlignment, Table};
    let mut sources: Vec<&str> = Vec::new();
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(["model", "features", "input", "GFLOPs", "img/s here", "CIFAR-10 linear", "hub repo", "sha256"]);
    for (m, r) in models.iter().zip(rows) {
        let probe = match &m.cifar10_linear_probe {
            Some(p) => {
                let n = match sources.iter().position(|s| *s == p.source) {
                    Some(i) => i + 1,
                    None => {
                        sources.push(&p.source);
                        sources.len()
                    }
                };
                format!("{:.1}% [{n}]", p.accuracy)
            }
            None => "-".into(),
        };
        let sha = r["sha256"].as_str().map(|s| s.chars().take(12).collect::<String>() + "…").unwrap_or_else(|| "(pinned at first fetch)".into());
        table.add_row([
            m.name.clone(),
            m.feature_width.to_string(),
            m.input_size.to_string(),
            m.gflops.map_or("-".into(), |g| format!("{g:.1}")),
            m.cpu_images_per_second.map_or("-".into(), |r| format!("{r:.1}")),
            probe,
            m.hub_repo.clone(),
            sha,
        ]);
    }
    for col in 1..=5 {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = table.trim_fmt();
    out.push('\n');
    for (i, s) in sources.iter().enumerate() {
        out.push_str(&format!("[{}] {s}\n", i + 1));
    }
    out
}

/// `lastlayer review`: the counts, then the first `show` rows of each list.
pub fn review(r: &lastlayer::review::Review, show: usize) -> String {
    let s = &r.summary;
    let d = &s.duplicates;
    let mut out = format!(
        "{}: test accuracy {:.2}% (balanced {:.2}%, macro F1 {:.3}; {} pictures), out-of-fold accuracy {:.2}% ({} training pictures, {} folds{})\n",
        s.model,
        100.0 * s.test_accuracy,
        100.0 * s.test_balanced_accuracy,
        s.test_macro_f1,
        s.test_pictures,
        100.0 * s.out_of_fold_accuracy,
        s.train_pictures,
        s.folds,
        s.l2.map(|l| format!(", L2 {l:e}")).unwrap_or_default()
    );
    out += &format!(
        "{} mistakes; {} label issues ({} train, {} test; estimated wrong labels {} train, {} test); \
         {} test pictures ({:.2}%) with a copy in train (similarity >= {}; {} more with only a look-alike, >= {})\n",
        s.mistakes,
        s.label_issues.train + s.label_issues.test,
        s.label_issues.train,
        s.label_issues.test,
        s.estimated_wrong_labels.train,
        s.estimated_wrong_labels.test,
        d.test_pictures_with_train_copy,
        100.0 * d.test_copy_share,
        d.copy_similarity,
        d.test_pictures_with_train_duplicate - d.test_pictures_with_train_copy,
        d.min_similarity
    );
    if let Some(w) = &s.label_issues_warning {
        out += &format!("warning: {w}\n");
    }
    let width = s.per_class.iter().map(|c| c.class.len()).max().unwrap_or(5).max(5);
    out += &format!("\n{:<width$}  {:>6} {:>6} {:>7} {:>8} {:>13} {:>13} {:>7}\n", "class", "train", "test", "recall", "mistakes", "issues tr/te", "est. wrong", "copied");
    for c in &s.per_class {
        out += &format!(
            "{:<width$}  {:>6} {:>6} {:>6.1}% {:>8} {:>13} {:>13} {:>7}\n",
            c.class,
            c.train,
            c.test,
            100.0 * c.recall,
            c.mistakes,
            format!("{}/{}", c.label_issues.train, c.label_issues.test),
            format!("{}/{}", c.estimated_wrong_labels.train, c.estimated_wrong_labels.test),
            c.test_with_train_duplicate
        );
    }
    let more = |n: usize| if n > show { format!(" (first {show} of {n}; --json has all)") } else { String::new() };
    out += &format!("\nconfident mistakes{}\n", more(r.mistakes.len()));
    for m in r.mistakes.iter().take(show) {
        out += &format!("  {:>6.2}%  {} -> {}  {}\n", 100.0 * m.probability, m.given, m.predicted, m.picture);
    }
    out += &format!("\nlikely label errors, ranked by {}{}\n", s.rank_by.name(), more(r.label_issues.len()));
    for i in r.label_issues.iter().take(show) {
        out += &format!("  {:.3}  {:<5}  {} -> {}?  {}\n", i.score, i.split, i.given, i.suggested, i.picture);
    }
    out += &format!(
        "\nduplicates: {} test-train ({} the same bytes), {} within train, {} within test; similarity >= {}{}\n",
        d.test_train,
        d.test_train_exact,
        d.within_train,
        d.within_test,
        d.min_similarity,
        more(r.duplicates.len())
    );
    for p in r.duplicates.iter().take(show) {
        let kind = match p.kind {
            lastlayer::review::PairKind::TestTrain => "test-train",
            lastlayer::review::PairKind::WithinTrain => "train",
            lastlayer::review::PairKind::WithinTest => "test",
        };
        out += &format!("  {:.3}{}  {:<10}  {}  {}\n", p.similarity, if p.exact { " same bytes" } else { "" }, kind, p.test, p.train);
    }
    if let Some(page) = &s.page {
        out += &format!("\npage: {}\n", page.display());
    }
    out
}
