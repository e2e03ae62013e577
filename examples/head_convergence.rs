//! Convergence diagnostic of the default head's L2 path (issue 29): is the point the path
//! keeps at its chosen penalty the optimum of its own objective?
//!
//! Trains the default head without the refit (`train_head`, seed `--seed`), takes the kept
//! point back to the standardised space the path works in (temperature and standardisation
//! taken out), and minimises the same objective (mean cross-entropy on the training rows +
//! λ/2 · |W|², at the chosen λ) with full-batch L-BFGS from that point to a gradient of
//! 1e-5 ([`lastlayer::head::lbfgs`]). Prints one JSON line: the objective at the path's point
//! and at the optimum (their gap), the L-BFGS iterations and seconds it took, and validation
//! and test accuracy of both. With `--every-penalty`, also the optimum at every penalty of
//! `L2_PATH` (or the list `--penalties`, warm-started down it), its validation accuracy and
//! calibrated loss (what a converged path would judge), its test accuracy, and the test
//! accuracy of the converged refit (the same objective on every training row), one JSON line
//! each.
//!
//! ```sh
//! cargo run --release --example head_convergence -- train.safetensors test.safetensors [--seed N] [--every-penalty [--penalties A,B,..]] [--max-iter N]
//! ```

use std::time::Instant;

use lastlayer::data::sample::stratified_holdout;
use lastlayer::head::lbfgs::{minimise, Objective};
use lastlayer::head::{train_head, TrainConfig, L2_PATH};
use lastlayer::progress::Progress;
use tch::{Kind, Tensor};

fn load(path: &str) -> anyhow::Result<(Tensor, Tensor)> {
    let t = Tensor::read_safetensors(path)?;
    let get = |n: &str| t.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone()).ok_or_else(|| anyhow::anyhow!("{path}: no '{n}'"));
    Ok((get("features")?.to_kind(Kind::Float), get("labels")?.to_kind(Kind::Int64)))
}

fn accuracy(z: &Tensor, y: &Tensor, w: &Tensor, b: &Tensor) -> f64 {
    (z.matmul(&w.tr()) + b).argmax(-1, false).eq_tensor(y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut seed, mut every, mut max_iter, mut files, mut penalties) = (0u64, false, 1000usize, Vec::new(), L2_PATH.to_vec());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => seed = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("--seed needs a number"))?,
            "--max-iter" => max_iter = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("--max-iter needs a number"))?,
            "--every-penalty" => every = true,
            "--penalties" => {
                penalties = it.next().map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect()).ok_or_else(|| anyhow::anyhow!("--penalties needs a list"))?
            }
            _ => files.push(a.clone()),
        }
    }
    let [train, test] = files.as_slice() else { anyhow::bail!("usage: head_convergence TRAIN TEST [--seed N] [--every-penalty [--penalties A,B,..]] [--max-iter N]") };
    let (x, y) = load(train)?;
    let (xt, yt) = load(test)?;
    let classes = y.max().int64_value(&[]) + 1;
    let cfg = TrainConfig { refit: false, seed, ..TrainConfig::default() };
    let start = Instant::now();
    let (head, report) = train_head(&x, &y, classes as usize, &cfg, &Progress::hidden())?;
    let path_seconds = start.elapsed().as_secs_f64();
    tch::set_num_threads(1);
    let labels: Vec<i64> = Vec::try_from(&y)?;
    let (train_rows, val_rows) = stratified_holdout(&labels, cfg.val_fraction, cfg.seed);
    let idx = |rows: &[usize]| Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
    let (xa, ya) = (x.index_select(0, &idx(&train_rows)), y.index_select(0, &idx(&train_rows)));
    let (xv, yv) = (x.index_select(0, &idx(&val_rows)), y.index_select(0, &idx(&val_rows)));
    // The path's standardisation: the training rows' mean and (biased) variance.
    let mean = xa.mean_dim(0, false, Kind::Float);
    let std = (xa.var_dim(0, false, false) + 1e-6).sqrt();
    let (za, zv, zt, zall) = ((&xa - &mean) / &std, (&xv - &mean) / &std, (&xt - &mean) / &std, (&x - &mean) / &std);
    // The refit's optimum: the same objective on every training row, warm-started from `theta`.
    let refit = |l2: f64, theta: &Tensor| {
        let all = Objective { z: &zall, labels: &y, classes, row_weight: None, l2 };
        let sol = minimise(&all, theta, 1e-5, max_iter);
        let (w, b) = all.split(&sol.theta);
        accuracy(&zt, &yt, &w, &b)
    };
    // The head is W·s/std, b·s - (W·s/std)·mean: undo it.
    let scale = report.logit_scale.unwrap_or(1.0);
    let w = &head.weight * &std / scale;
    let b = (&head.bias + head.weight.matmul(&mean)) / scale;
    let l2 = report.l2.expect("the tuned path reports its penalty");
    let objective = Objective { z: &za, labels: &ya, classes, row_weight: None, l2 };
    let theta = Objective::join(&w, &b);
    let (f_path, g_path) = objective.value_and_gradient(&theta);
    let t = Instant::now();
    let opt = minimise(&objective, &theta, 1e-5, max_iter);
    let lbfgs_seconds = t.elapsed().as_secs_f64();
    let (wo, bo) = objective.split(&opt.theta);
    println!(
        "{}",
        serde_json::json!({
            "rows": x.size()[0], "width": x.size()[1], "seed": seed, "l2": l2, "path_seconds": path_seconds, "path_epochs": report.history.len(),
            "objective_path": f_path, "gradient_max_path": g_path.abs().max().double_value(&[]),
            "objective_optimum": opt.value, "gap": f_path - opt.value, "relative_gap": (f_path - opt.value) / opt.value,
            "gradient_max_optimum": opt.gradient_max, "lbfgs_iterations": opt.iterations, "lbfgs_evaluations": opt.evaluations, "lbfgs_seconds": lbfgs_seconds,
            "val_accuracy_path": accuracy(&zv, &yv, &w, &b), "val_accuracy_optimum": accuracy(&zv, &yv, &wo, &bo),
            "test_accuracy_path": accuracy(&zt, &yt, &w, &b), "test_accuracy_optimum": accuracy(&zt, &yt, &wo, &bo),
            "test_accuracy_refit_optimum": if every { Some(refit(l2, &opt.theta)) } else { None },
        })
    );
    if every {
        let mut theta = Tensor::zeros([classes * (x.size()[1] + 1)], (Kind::Float, tch::Device::Cpu));
        for &l2 in penalties.iter() {
            let objective = Objective { z: &za, labels: &ya, classes, row_weight: None, l2 };
            let t = Instant::now();
            let opt = minimise(&objective, &theta, 1e-5, max_iter);
            let (wo, bo) = objective.split(&opt.theta);
            let logits = zv.matmul(&wo.tr()) + &bo;
            let calibrated = calibrated_loss(&logits, &yv);
            println!(
                "{}",
                serde_json::json!({
                    "l2": l2, "objective": opt.value, "gradient_max": opt.gradient_max, "iterations": opt.iterations, "seconds": t.elapsed().as_secs_f64(),
                    "val_accuracy": accuracy(&zv, &yv, &wo, &bo), "val_loss_calibrated": calibrated, "test_accuracy": accuracy(&zt, &yt, &wo, &bo),
                    "test_accuracy_refit": refit(l2, &opt.theta),
                })
            );
            theta = opt.theta;
        }
    }
    Ok(())
}

/// Validation cross-entropy at the best temperature (a grid on the log scale, as the path's
/// golden-section search finds it to within its step).
fn calibrated_loss(logits: &Tensor, y: &Tensor) -> f64 {
    (0..=200).map(|i| (0.05f64.ln() + i as f64 * (20f64.ln() - 0.05f64.ln()) / 200.0).exp()).map(|s| (logits * s).cross_entropy_for_logits(y).double_value(&[])).fold(f64::INFINITY, f64::min)
}
