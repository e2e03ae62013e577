//! Benchmark helper for `benches/review.sh`: `lastlayer review`'s work (fold heads, confident
//! learning, exact and near duplicates) on features from safetensors files, without pictures:
//! the run's head is trained first (as `train` would, not timed as review), pictures are
//! named by row, and each gets a distinct content key. Prints one JSON line: the seconds of
//! each part, what was found, the peak resident memory, and a reference speed of this machine
//! (a 2048 x 2048 x 2048 f32 matrix product, GFLOP/s) measured in the same process.
//!
//!   cargo run --release --example review_features -- TRAIN.safetensors TEST.safetensors [TRAIN_ROWS TEST_ROWS]

use std::path::Path;
use std::time::Instant;

use lastlayer::data::content::ContentKey;
use lastlayer::head::{train_head, TrainConfig};
use lastlayer::progress::Progress;
use lastlayer::review::{review, RankBy, Settings, SplitData, DEFAULT_MIN_SIMILARITY};
use tch::{Kind, Tensor};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).map_or(f64::NAN, |kb| kb / 1024.0)
}

fn load(path: &str, rows: Option<i64>) -> anyhow::Result<(Tensor, Vec<i64>)> {
    let t = Tensor::read_safetensors(Path::new(path))?;
    let get = |n: &str| t.iter().find(|(k, _)| k == n).map(|(_, v)| v.shallow_clone()).ok_or_else(|| anyhow::anyhow!("{path}: no '{n}'"));
    let (mut x, mut y) = (get("features")?.to_kind(Kind::Float), get("labels")?);
    if let Some(r) = rows {
        x = x.narrow(0, 0, r.min(x.size()[0]));
        y = y.narrow(0, 0, r.min(y.size()[0]));
    }
    Ok((x.contiguous(), Vec::<i64>::try_from(y.to_kind(Kind::Int64))?))
}

fn split(x: Tensor, labels: Vec<i64>, tag: &str) -> SplitData {
    let n = labels.len();
    SplitData {
        features: x,
        views: 1,
        labels,
        names: (0..n).map(|i| format!("{tag}#{i}")).collect(),
        keys: (0..n).map(|i| ContentKey::of(format!("{tag}#{i}").as_bytes())).collect(),
    }
}

/// GFLOP/s of a 2048-cubed f32 matrix product (best of three).
fn reference_gflops() -> f64 {
    tch::manual_seed(0);
    let a = Tensor::randn([2048, 2048], (Kind::Float, tch::Device::Cpu));
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let _ = a.matmul(&a).sum(Kind::Float).double_value(&[]);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * 2048f64.powi(3) / best / 1e9
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (train_path, test_path) = match args.as_slice() {
        [a, b, ..] => (a.clone(), b.clone()),
        _ => anyhow::bail!("usage: review_features TRAIN.safetensors TEST.safetensors [TRAIN_ROWS TEST_ROWS]"),
    };
    let rows = |i: usize| args.get(i).map(|v| v.parse::<i64>()).transpose();
    let (xtr, ytr) = load(&train_path, rows(2)?)?;
    let (xte, yte) = load(&test_path, rows(3)?)?;
    let classes = ytr.iter().chain(&yte).copied().max().unwrap_or(0) as usize + 1;
    let names: Vec<String> = (0..classes).map(|c| format!("class{c}")).collect();
    let gflops = reference_gflops();
    let t = Instant::now();
    let cfg = TrainConfig::default();
    let (head, report) = train_head(&xtr, &Tensor::from_slice(&ytr), classes, &cfg, &Progress::hidden())?;
    let head_seconds = t.elapsed().as_secs_f64();
    let (n, d) = (xtr.size()[0], xtr.size()[1]);
    let (train, test) = (split(xtr, ytr, "train"), split(xte, yte, "test"));
    let settings = Settings {
        folds: 5,
        rank_by: RankBy::SelfConfidence,
        min_similarity: DEFAULT_MIN_SIMILARITY,
        train: cfg,
        l2: report.l2,
        judged_views: vec![0],
        seed: 0,
    };
    let t = Instant::now();
    let r = review("synthetic", &names, &head, &train, &test, &settings, &Progress::hidden())?;
    let total = t.elapsed().as_secs_f64();
    let s = &r.summary;
    println!(
        "{}",
        serde_json::json!({
            "train_rows": n, "test_rows": test.pictures(), "width": d, "threads": tch::get_num_threads(),
            "reference_gflops": gflops, "run_head_seconds": head_seconds,
            "review_seconds": total, "folds_seconds": s.seconds.folds, "label_issues_seconds": s.seconds.label_issues,
            "duplicates_seconds": s.seconds.duplicates, "mistakes": s.mistakes, "label_issues": s.label_issues,
            "duplicates": s.duplicates, "out_of_fold_accuracy": s.out_of_fold_accuracy, "test_accuracy": s.test_accuracy,
            "peak_rss_mib": peak_rss_mib(), "features_mib": ((n as f64 + test.pictures() as f64) * d as f64 * 4.0) / (1u64 << 20) as f64,
        })
    );
    Ok(())
}
