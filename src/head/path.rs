//! The tuned L2 path (`--weight-decay auto`, the default): a converged regularisation path.
//!
//! Softmax regression on standardised features, `mean cross-entropy + λ/2 · |W|²`, minimised
//! at each penalty of [`L2_PATH`], strongest first, by full-batch L-BFGS ([`super::lbfgs`])
//! warm-started from the last penalty's point: at least [`PATH_LBFGS_ITERATIONS`] iterations a
//! penalty on large data, more on small ([`PATH_LBFGS_ROW_ITERATIONS`], up to
//! [`PATH_LBFGS_MAX_ITERATIONS`]), or until no gradient entry exceeds [`PATH_GRADIENT_TOL`].
//! Each penalty's point is a candidate, judged by its *calibrated* validation loss: the loss at
//! the softmax temperature that fits the validation rows best, a temperature then folded into
//! the head. (A strong penalty gives underconfident probabilities whose raw cross-entropy is
//! high even where its accuracy is the best; the calibrated loss judges the ranking, and is
//! smoother than accuracy on a small split.) After [`L2_PATIENCE_STEPS`] penalties without a
//! better candidate the weaker ones are skipped. The grid is then refined once: the penalty
//! halfway (geometrically) between the best one and its better neighbour is a candidate too.
//!
//! Why not minibatches: at 45,000 rows, the few Adam epochs a penalty that the path once ran
//! left every point far from its optimum (an objective 29% above it at the kept penalty on the
//! real Lite0 features of CIFAR-10), and the least regularised point looked the best; the
//! converged path chooses a stronger penalty and scores 0.8 points higher on that test set
//! (docs/performance.md, "The head on the full CIFAR-10").
//!
//! With class weights (`--class-weight balanced`), every row's loss and gradient are multiplied
//! by its class's weight, and the validation losses that judge the candidates and fit the
//! temperature are weighted means (see [`super::class_weight`]).
//!
//! **Refit** (`refit`, the default): the kept penalty's objective, on train and validation rows
//! together, is then minimised by the same L-BFGS, warm-started from the kept point, for at
//! most [`REFIT_LBFGS_ITERATIONS`] iterations on large data, more on small
//! ([`REFIT_LBFGS_ROW_ITERATIONS`]), or until no gradient entry exceeds
//! [`REFIT_GRADIENT_TOL`], as scikit-learn users refit on all of train after tuning `C`. The
//! temperature found on validation is folded in.
//!
//! **Speed.** The rows are standardised once, into one matrix (the training rows, then the
//! validation rows, which the refit simply includes). An L-BFGS iteration is about one
//! evaluation of the objective: two matrix products over the rows and element-wise work on
//! `[rows, classes]`, no autograd. Small problems run on one libtorch thread (see `OneThread`:
//! their operations are too short for threads to pay); from [`THREADED_ELEMENTS`] the matrix
//! products use libtorch's threads.

use std::time::Instant;

use tch::{Kind, Tensor};

use super::class_weight::weighted_cross_entropy;
use super::lbfgs::{self, Objective};
use super::train::{EpochRecord, RefitRecord, TrainConfig, TrainReport, ValidationSet};
use super::LinearHead;
use crate::progress::{Progress, Unit};

/// The L2 penalties (`λ` in `mean cross-entropy + λ/2 · |W|²`, on standardised features)
/// that the path walks down, strongest first. scikit-learn's `C` is `1 / (λ · n)`.
pub const L2_PATH: [f64; 9] = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4];
/// Penalties of [`L2_PATH`] without a better head after which the weaker ones are skipped.
pub const L2_PATIENCE_STEPS: usize = 2;
/// L-BFGS iterations at each penalty, at most, on large data: warm-started down the path,
/// 15 iterations rank the penalties as converged points do on the 45,000 training rows of
/// CIFAR-10 (docs/performance.md, "The head on the full CIFAR-10").
pub const PATH_LBFGS_ITERATIONS: usize = 10;
/// Small data get more iterations a penalty, up to this many rows times iterations (at most
/// [`PATH_LBFGS_MAX_ITERATIONS`]): enough to reach [`PATH_GRADIENT_TOL`] on a few thousand rows.
pub const PATH_LBFGS_ROW_ITERATIONS: usize = 400_000;
/// A penalty's L-BFGS iterations, however small the data.
pub const PATH_LBFGS_MAX_ITERATIONS: usize = 200;
/// A penalty's L-BFGS stops once no gradient entry of its objective is larger.
pub const PATH_GRADIENT_TOL: f64 = 1e-5;

/// L-BFGS iterations of the refit, at most, on large data (each about one pass over the rows;
/// see [`super::lbfgs`]): on 50,000 rows, 25 iterations bring the objective within 0.3% of
/// the optimum (docs/performance.md, "Convergence of the L2 path").
pub const REFIT_LBFGS_ITERATIONS: usize = 25;
/// Small data get more refit iterations, up to this many rows times iterations (at most
/// [`REFIT_LBFGS_MAX_ITERATIONS`]): enough to reach [`REFIT_GRADIENT_TOL`] on a few thousand rows.
pub const REFIT_LBFGS_ROW_ITERATIONS: usize = 400_000;
/// The refit's L-BFGS iterations, however small the data.
pub const REFIT_LBFGS_MAX_ITERATIONS: usize = 200;
/// The refit stops once no gradient entry of its objective is larger.
pub const REFIT_GRADIENT_TOL: f64 = 1e-5;
/// Rows times feature width from which the path and the refit use libtorch's threads.
pub const THREADED_ELEMENTS: i64 = 1 << 22;

/// `v` (> 0) to two significant digits: the refined penalty reads as `0.0055`, not
/// `0.005477225575051661`.
fn two_digits(v: f64) -> f64 {
    // Through the decimal text, so that the value is the double nearest `5.5e-3` itself.
    format!("{v:.1e}").parse().unwrap_or(v)
}

/// Iterations for `rows` rows: `row_iterations / rows`, within `[least, most]`.
fn iterations_for(rows: i64, row_iterations: usize, least: usize, most: usize) -> usize {
    (row_iterations / rows.max(1) as usize).clamp(least, most)
}

/// libtorch's intra-op threads set to one while it lives, then restored. Small problems' steps
/// are short matrix products and element-wise operations; with two OpenMP threads spinning at
/// every barrier, a busy machine (one thread descheduled) made minibatch epochs ten times
/// slower (`benches/head.sh`, docs/performance.md), and an idle one gains little from them.
pub(super) struct OneThread(i32);

impl OneThread {
    pub(super) fn set() -> OneThread {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        OneThread(before)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

/// A candidate of the path: a penalty's point and how it was judged.
struct Candidate {
    /// Calibrated validation loss (the training loss without validation rows).
    judged: f64,
    /// Its record in the history (1-based).
    epoch: usize,
    l2: f64,
    theta: Tensor,
    /// Logit scale (inverse temperature) fitted on validation.
    scale: f64,
}

/// Runs the path `penalties` (strongest first; [`L2_PATH`] when tuning, one penalty for a
/// head at a known penalty) and the refit on `x` `[N, D]` (f32, on the CPU or a GPU) and `y`
/// `[N]` (on the same device), split into `train_rows` and `val_rows` (which the refit adds);
/// the penalties (and the temperature) are judged on `validation` when given (views averaged
/// per picture), else on `val_rows`. `class_weights` (`[classes]`, see [`super::class_weight`])
/// weigh every row's loss, the validation loss's too. `cfg` is already validated; `penalties`
/// is not empty. One history record is one L-BFGS iteration (about a pass over the rows).
#[allow(clippy::too_many_arguments)]
pub(super) fn fit(
    x: &Tensor,
    y: &Tensor,
    train_rows: &[usize],
    val_rows: &[usize],
    validation: Option<&ValidationSet>,
    classes: usize,
    class_weights: Option<&Tensor>,
    cfg: &TrainConfig,
    penalties: &[f64],
    progress: &Progress,
) -> (LinearHead, TrainReport) {
    let start = Instant::now();
    let idx = super::train::index_on(x.device(), train_rows.iter().chain(val_rows).copied());
    let (nt, nv) = (train_rows.len() as i64, val_rows.len() as i64);
    let d = x.size()[1];
    let _threads = (nt * d < THREADED_ELEMENTS).then(OneThread::set);
    // Standardise with the training rows' statistics, in place; folded into the weights at the end.
    let mut z = x.index_select(0, &idx);
    let mean = z.narrow(0, 0, nt).mean_dim(0, false, Kind::Float);
    let std = (z.narrow(0, 0, nt).var_dim(0, false, false) + 1e-6).sqrt();
    let _ = z.g_sub_(&mean);
    let _ = z.g_div_(&std);
    let labels = y.index_select(0, &idx);
    let class_weights = class_weights.map(|w| w.to_device(x.device()));
    let weight = class_weights.as_ref().map(|w| w.index_select(0, &labels));
    let all = nt + nv;
    let (zv, yv) = match validation {
        Some((xv, yv)) => ((xv - &mean) / &std, yv.shallow_clone()),
        None => (z.narrow(0, nt, nv), labels.narrow(0, nt, nv)),
    };
    let (z_train, y_train) = (z.narrow(0, 0, nt), labels.narrow(0, 0, nt));
    let w_train = weight.as_ref().map(|w| w.narrow(0, 0, nt));

    let tuning = penalties.len() > 1;
    let per_penalty = iterations_for(nt, PATH_LBFGS_ROW_ITERATIONS, PATH_LBFGS_ITERATIONS, PATH_LBFGS_MAX_ITERATIONS);
    let refit_planned = cfg.refit && nv > 0;
    let refit_iterations = iterations_for(all, REFIT_LBFGS_ROW_ITERATIONS, REFIT_LBFGS_ITERATIONS, REFIT_LBFGS_MAX_ITERATIONS);
    let planned = (penalties.len() + usize::from(tuning)) * per_penalty + if refit_planned { refit_iterations } else { 0 };
    let mut task = progress.task("train head", planned as u64, Unit::Epochs);
    let mut history: Vec<EpochRecord> = Vec::new();

    // One penalty: L-BFGS from `theta0`, a record an iteration, the end point judged.
    let mut memory = lbfgs::Memory::default();
    let mut run_penalty = |l2: f64, theta0: &Tensor, history: &mut Vec<EpochRecord>| -> Candidate {
        let objective = Objective { z: &z_train, labels: &y_train, classes: classes as i64, row_weight: w_train.as_ref(), l2 };
        let validate = |theta: &Tensor| -> (Option<Tensor>, Option<f64>, Option<f64>) {
            if zv.size()[0] == 0 {
                return (None, None, None);
            }
            let (w, b) = objective.split(theta);
            let logits = zv.matmul(&w.tr()) + b;
            let acc = logits.argmax(-1, false).eq_tensor(&yv).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            let loss = weighted_cross_entropy(&logits, &yv, class_weights.as_ref()).double_value(&[]);
            (Some(logits), Some(loss), Some(acc))
        };
        let record = |history: &mut Vec<EpochRecord>, theta: &Tensor, train_loss: f64, correct: i64| {
            let (_, val_loss, val_accuracy) = validate(theta);
            let train_accuracy = correct as f64 / nt as f64;
            history.push(EpochRecord { epoch: history.len() + 1, train_loss, train_accuracy, val_loss, val_accuracy, l2: Some(l2), val_loss_calibrated: None });
        };
        let sol = lbfgs::minimise_observed(&objective, theta0, PATH_GRADIENT_TOL, per_penalty, &mut memory, |_, theta, e| {
            record(history, theta, e.loss, e.correct);
            let last = history.last().expect("just recorded");
            task.set_message(match last.val_accuracy {
                Some(va) => format!("L2 {l2:e} loss {:.4} val_acc {:.2}%", last.train_loss, 100.0 * va),
                None => format!("L2 {l2:e} loss {:.4} acc {:.2}%", last.train_loss, 100.0 * last.train_accuracy),
            });
            task.inc(1);
        });
        if sol.iterations == 0 {
            // Already converged where it started: the start is the penalty's point.
            record(history, &sol.theta, sol.loss, sol.correct);
        }
        task.inc((per_penalty - sol.iterations.min(per_penalty)) as u64);
        let last = history.last_mut().expect("a record a penalty");
        let (judged, scale) = match validate(&sol.theta).0 {
            Some(logits) => {
                let calibrated = calibrated_cross_entropy(&logits, &yv, class_weights.as_ref());
                last.val_loss_calibrated = Some(calibrated);
                calibrated
            }
            None => (last.train_loss, 1.0),
        };
        Candidate { judged, epoch: last.epoch, l2, theta: sol.theta, scale }
    };

    let mut theta = Tensor::zeros([classes as i64 * (d + 1)], (Kind::Float, x.device()));
    let mut judged: Vec<(usize, f64)> = Vec::new(); // (index in penalties, judged loss)
    let mut best: Option<Candidate> = None;
    let mut best_k = 0;
    let mut stopped_early = false;
    for (k, &l2) in penalties.iter().enumerate() {
        let candidate = run_penalty(l2, &theta, &mut history);
        theta = candidate.theta.shallow_clone();
        judged.push((k, candidate.judged));
        if best.as_ref().is_none_or(|b| candidate.judged < b.judged) {
            best = Some(candidate);
            best_k = k;
        }
        if k - best_k >= L2_PATIENCE_STEPS && k + 1 < penalties.len() {
            stopped_early = true;
            break;
        }
    }
    let mut best = best.expect("the path ran");
    if tuning {
        // Refine the grid once: halfway (on the log scale) towards the better neighbour.
        let neighbour = judged.iter().filter(|(k, _)| k.abs_diff(best_k) == 1).min_by(|a, b| a.1.total_cmp(&b.1)).map(|&(k, _)| penalties[k]);
        if let Some(other) = neighbour {
            let candidate = run_penalty(two_digits((best.l2 * other).sqrt()), &best.theta, &mut history);
            if candidate.judged < best.judged {
                best = candidate;
            }
        } else {
            task.inc(per_penalty as u64);
        }
    }
    let l2 = best.l2;
    let record = &history[best.epoch - 1];
    let best_val_accuracy = record.val_accuracy.unwrap_or(record.train_accuracy);
    let objective_all = Objective { z: &z, labels: &labels, classes: classes as i64, row_weight: weight.as_ref(), l2 };
    let (w, b, refit) = if refit_planned {
        // The refit: full-batch L-BFGS on every row at the chosen penalty, from the kept point.
        task.set_message(format!("refit on {all} rows, L2 {l2:e} (L-BFGS)"));
        let sol = lbfgs::minimise(&objective_all, &best.theta, REFIT_GRADIENT_TOL, refit_iterations);
        task.inc(refit_iterations as u64);
        let (w, b) = objective_all.split(&sol.theta);
        let logits = z.matmul(&w.tr()) + &b;
        let train_accuracy = logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let train_loss = weighted_cross_entropy(&logits, &labels, class_weights.as_ref()).double_value(&[]);
        let refit = RefitRecord { rows: all as usize, epochs: sol.evaluations, l2: Some(l2), train_loss, train_accuracy };
        (w.copy(), b.copy(), Some(refit))
    } else {
        let (w, b) = objective_all.split(&best.theta);
        (w.copy(), b.copy(), None)
    };
    task.finish();
    let report = TrainReport {
        history,
        unit: super::train::HistoryUnit::Iteration,
        best_epoch: best.epoch,
        best_val_accuracy,
        stopped_early,
        l2: Some(l2),
        logit_scale: Some(best.scale).filter(|_| nv > 0 || validation.is_some()),
        train_rows: nt as usize,
        val_rows: nv as usize,
        refit,
        seconds: start.elapsed().as_secs_f64(),
    };
    (LinearHead::unstandardised(&w, &b, best.scale, &mean, &std), report)
}

/// Temperature scaling: the cross-entropy of `logits · s` (weighted by class, with
/// `class_weights`) at the scale `s` (inverse temperature) in [0.05, 20] that minimises it, and
/// that `s`. The loss is convex in `s`, so a golden-section search on `ln s` finds it.
pub(super) fn calibrated_cross_entropy(logits: &Tensor, labels: &Tensor, class_weights: Option<&Tensor>) -> (f64, f64) {
    let loss = |ln_s: f64| weighted_cross_entropy(&(logits * ln_s.exp()), labels, class_weights).double_value(&[]);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let (mut c, mut d) = (b - phi * (b - a), a + phi * (b - a));
    let (mut fc, mut fd) = (loss(c), loss(d));
    for _ in 0..30 {
        if fc <= fd {
            (b, d, fd) = (d, c, fc);
            c = b - phi * (b - a);
            fc = loss(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + phi * (b - a);
            fd = loss(d);
        }
    }
    let ln_s = (a + b) / 2.0;
    (loss(ln_s), ln_s.exp())
}

#[cfg(test)]
mod tests {
    use super::two_digits;

    /// The refined penalty halfway between two of the grid is written as people write it.
    #[test]
    fn refined_penalties_have_two_significant_digits() {
        for (v, want) in [((0.01f64 * 0.003).sqrt(), 0.0055), ((0.3f64 * 0.1).sqrt(), 0.17), ((1.0f64 * 0.3).sqrt(), 0.55), (1e-4, 1e-4)] {
            assert_eq!(two_digits(v), want, "{v}");
            assert_eq!(two_digits(v).to_string(), want.to_string());
        }
    }
}
