//! The tuned L2 path (`--weight-decay auto`, the default), written to be compute-bound.
//!
//! Softmax regression on standardised features, `mean cross-entropy + λ/2 · |W|²`, walked down
//! [`L2_PATH`] strongest penalty first, every penalty warm-started from the last (a
//! regularisation path), at least [`L2_EPOCHS_PER_STEP`] epochs and [`L2_UPDATES_PER_STEP`]
//! updates of Adam a penalty, with a cosine learning rate within each. Each penalty's last
//! epoch (the learning rate has decayed, the weights have settled) is a candidate, and the candidate with the lowest *calibrated*
//! validation loss is kept: the loss at the softmax temperature that fits the validation rows
//! best, a temperature then folded into the head. (A strong penalty gives underconfident
//! probabilities whose raw cross-entropy is high even where its accuracy is the best; the
//! calibrated loss judges the ranking, and is smoother than accuracy on a small split.) After
//! [`L2_PATIENCE_STEPS`] penalties without a better candidate the weaker ones are skipped.
//!
//! With class weights (`--class-weight balanced`), every row's loss and gradient are multiplied
//! by its class's weight, and the validation losses that judge the candidates and fit the
//! temperature are weighted means (see [`super::class_weight`]).
//!
//! **Refit** (`refit`, the default): the kept penalty is then trained once more, warm-started
//! from the kept weights, on train and validation rows together, with a penalty's budget of
//! epochs and updates (the chosen penalty, the path's number of updates), as scikit-learn users
//! refit on all of train after tuning `C`. The temperature found on validation is folded in.
//!
//! **Speed.** The rows are standardised and shuffled once, into one matrix (the training rows,
//! then the validation rows, which the refit simply includes); a minibatch is a contiguous
//! slice of it (batches visited in a new order every epoch), so no step copies rows. The
//! gradient and the Adam update are written out: two matrix products of the batch and a few
//! element-wise operations on `[batch, classes]` and `[classes, features]` tensors a step, no
//! autograd graph and no optimiser bookkeeping; batches grow with the data up to
//! [`L2_BATCH_ROWS`] rows, so the matrix products, not the per-step overhead, take the time;
//! and libtorch runs it on one thread (see `OneThread`).

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::class_weight::weighted_cross_entropy;
use super::train::{EpochRecord, RefitRecord, Schedule, TrainConfig, TrainReport, ValidationSet};
use super::LinearHead;
use crate::progress::{Progress, Unit};

/// The L2 penalties (`λ` in `mean cross-entropy + λ/2 · |W|²`, on standardised features)
/// that the path walks down, strongest first. scikit-learn's `C` is `1 / (λ · n)`.
pub const L2_PATH: [f64; 9] = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4];
/// Epochs at each penalty of [`L2_PATH`], at least (the learning rate follows a cosine
/// within each).
pub const L2_EPOCHS_PER_STEP: usize = 2;
/// Optimiser updates at each penalty, at least: small data sets get more epochs per penalty.
pub const L2_UPDATES_PER_STEP: usize = 300;
/// Penalties of [`L2_PATH`] without a better head after which the weaker ones are skipped.
pub const L2_PATIENCE_STEPS: usize = 2;
/// Rows of a minibatch on the path, at most (unless `--batch-size` is larger): batches grow
/// from `--batch-size` with the data, to make [`L2_BATCHES_PER_EPOCH`] a epoch, up to this.
pub const L2_BATCH_ROWS: usize = 256;
/// Minibatches an epoch on the path, at least while batches can grow (see [`L2_BATCH_ROWS`]).
pub const L2_BATCHES_PER_EPOCH: usize = 16;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// The rows, standardised, in training order: `[0, train)` train, then validation.
struct Rows {
    z: Tensor,
    onehot: Tensor,
    labels: Tensor,
    /// Each row's class weight (`--class-weight`), when classes are weighted.
    weight: Option<Tensor>,
    all: i64,
}

/// Weights in the standardised space and their Adam moments.
struct Model {
    w: Tensor,
    b: Tensor,
    mw: Tensor,
    vw: Tensor,
    mb: Tensor,
    vb: Tensor,
    t: i32,
}

impl Model {
    fn zeros(classes: i64, d: i64, device: Device) -> Model {
        let z = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, device));
        Model { w: z(&[classes, d]), b: z(&[classes]), mw: z(&[classes, d]), vw: z(&[classes, d]), mb: z(&[classes]), vb: z(&[classes]), t: 0 }
    }

    fn logits(&self, z: &Tensor) -> Tensor {
        z.matmul(&self.w.tr()) + &self.b
    }

    /// One Adam step on `rows[start..start + len]`; returns the batch's summed cross-entropy and
    /// correct predictions, as tensors (read once an epoch).
    fn step(&mut self, rows: &Rows, start: i64, len: i64, l2: f64, lr: f64) -> (Tensor, Tensor) {
        let xb = rows.z.narrow(0, start, len);
        let yb = rows.onehot.narrow(0, start, len);
        let logits = self.logits(&xb);
        let logp = logits.log_softmax(-1, Kind::Float);
        let correct = logits.argmax(-1, false).eq_tensor(&rows.labels.narrow(0, start, len)).sum(Kind::Int64);
        // The gradient of (1/len) Σ w_i CE_i (w_i = 1 without class weights).
        let (loss, g) = match &rows.weight {
            None => (-(&logp * &yb).sum(Kind::Float), (logp.exp() - &yb) / len as f64),
            Some(w) => {
                let wb = w.narrow(0, start, len);
                let per_row = -(&logp * &yb).sum_dim_intlist(1, false, Kind::Float);
                ((per_row * &wb).sum(Kind::Float), (logp.exp() - &yb) * wb.unsqueeze(1) / len as f64)
            }
        };
        let gw = g.tr().matmul(&xb) + &self.w * l2;
        let gb = g.sum_dim_intlist(0, false, Kind::Float);
        self.t += 1;
        let (c1, c2) = (1.0 - BETA1.powi(self.t), 1.0 - BETA2.powi(self.t));
        let update = |p: &mut Tensor, m: &mut Tensor, v: &mut Tensor, g: &Tensor| {
            *m = &*m * BETA1 + g * (1.0 - BETA1);
            *v = &*v * BETA2 + g.square() * (1.0 - BETA2);
            *p = &*p - (&*m / c1) / ((&*v / c2).sqrt() + EPS) * lr;
        };
        update(&mut self.w, &mut self.mw, &mut self.vw, &gw);
        update(&mut self.b, &mut self.mb, &mut self.vb, &gb);
        (loss, correct)
    }

    /// One epoch over rows `[0, n)` in batches of `batch`, batch order from `rng`; the learning
    /// rate of step `s` of the epoch is `lr_at(s)`. Returns the mean training loss and accuracy.
    fn epoch(&mut self, rows: &Rows, n: i64, batch: i64, l2: f64, lr_at: impl Fn(usize) -> f64, rng: &mut ChaCha8Rng) -> (f64, f64) {
        let mut starts: Vec<i64> = (0..n).step_by(batch as usize).collect();
        starts.shuffle(rng);
        let mut loss = Tensor::zeros([], (Kind::Float, rows.z.device()));
        let mut correct = Tensor::zeros([], (Kind::Int64, rows.z.device()));
        for (s, &start) in starts.iter().enumerate() {
            let (l, c) = self.step(rows, start, batch.min(n - start), l2, lr_at(s));
            loss += l;
            correct += c;
        }
        (loss.double_value(&[]) / n as f64, correct.int64_value(&[]) as f64 / n as f64)
    }
}

/// libtorch's intra-op threads set to one while it lives, then restored. The steps are
/// memory-bound matrix products and small element-wise operations; with two OpenMP threads
/// spinning at every barrier, a busy machine (one thread descheduled) made an epoch ten times
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

/// Runs the path `penalties` (strongest first; [`L2_PATH`] when tuning, one penalty for a
/// head at a known penalty) and the refit on `x` `[N, D]` (f32, on the CPU or a GPU) and `y`
/// `[N]` (on the same device), split into `train_rows` and `val_rows` (which the refit adds);
/// the penalties (and the temperature) are judged on `validation` when given (views averaged
/// per picture), else on `val_rows`. `class_weights` (`[classes]`, see [`super::class_weight`])
/// weigh every row's loss, the validation loss's too. `cfg` is already validated; `penalties`
/// is not empty.
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
    let _threads = OneThread::set();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut shuffled = train_rows.to_vec();
    shuffled.shuffle(&mut rng);
    let idx = super::train::index_on(x.device(), shuffled.iter().chain(val_rows).copied());
    let (nt, nv) = (train_rows.len() as i64, val_rows.len() as i64);
    // Standardise with the training rows' statistics, in place; folded into the weights at the end.
    let mut z = x.index_select(0, &idx);
    let mean = z.narrow(0, 0, nt).mean_dim(0, false, Kind::Float);
    let std = (z.narrow(0, 0, nt).var_dim(0, false, false) + 1e-6).sqrt();
    let _ = z.g_sub_(&mean);
    let _ = z.g_div_(&std);
    let labels = y.index_select(0, &idx);
    let onehot = labels.one_hot(classes as i64).to_kind(Kind::Float);
    let class_weights = class_weights.map(|w| w.to_device(x.device()));
    let weight = class_weights.as_ref().map(|w| w.index_select(0, &labels));
    let rows = Rows { z, onehot, labels, weight, all: nt + nv };
    let (zv, yv) = match validation {
        Some((xv, yv)) => ((xv - &mean) / &std, yv.shallow_clone()),
        None => (rows.z.narrow(0, nt, nv), rows.labels.narrow(0, nt, nv)),
    };

    let batch = train_rows.len().div_ceil(L2_BATCHES_PER_EPOCH).clamp(cfg.batch_size, L2_BATCH_ROWS.max(cfg.batch_size)).min(train_rows.len()) as i64;
    let per_step = |n: i64| L2_EPOCHS_PER_STEP.max(L2_UPDATES_PER_STEP.div_ceil((n as usize).div_ceil(batch as usize)));
    let lr_at = |cycle_step: usize, cycle_steps: usize| match cfg.schedule {
        Schedule::Cosine => cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * cycle_step as f64 / cycle_steps as f64).cos()),
        Schedule::Constant => cfg.lr,
    };
    let epochs_per_l2 = per_step(nt);
    let steps_per_epoch = (nt as usize).div_ceil(batch as usize);
    let mut model = Model::zeros(classes as i64, x.size()[1], x.device());
    let mut history = Vec::new();
    // (calibrated loss, epoch, penalty index, w, b, logit scale)
    let mut best: Option<(f64, usize, usize, Tensor, Tensor, f64)> = None;
    let refit_planned = cfg.refit && nv > 0;
    let refit_epochs = per_step(rows.all);
    let mut task = progress.task("train head", (penalties.len() * epochs_per_l2 + if refit_planned { refit_epochs } else { 0 }) as u64, Unit::Epochs);
    let mut stopped_early = false;
    'path: for (k, &l2) in penalties.iter().enumerate() {
        for e in 0..epochs_per_l2 {
            let epoch = history.len() + 1;
            let cycle = epochs_per_l2 * steps_per_epoch;
            let (train_loss, train_accuracy) = model.epoch(&rows, nt, batch, l2, |s| lr_at(e * steps_per_epoch + s, cycle), &mut rng);
            let (val_loss, val_accuracy, val_loss_calibrated) = if nv == 0 {
                (None, None, None)
            } else {
                let logits = model.logits(&zv);
                let acc = logits.argmax(-1, false).eq_tensor(&yv).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                // Only a penalty's last epoch is a candidate, so only it is calibrated.
                let calibrated = (e + 1 == epochs_per_l2).then(|| calibrated_cross_entropy(&logits, &yv, class_weights.as_ref()));
                (Some(weighted_cross_entropy(&logits, &yv, class_weights.as_ref()).double_value(&[])), Some(acc), calibrated)
            };
            history.push(EpochRecord { epoch, train_loss, train_accuracy, val_loss, val_accuracy, l2: Some(l2), val_loss_calibrated });
            task.set_message(match val_accuracy {
                Some(va) => format!("L2 {l2:e} loss {train_loss:.4} val_acc {:.2}%", 100.0 * va),
                None => format!("L2 {l2:e} loss {train_loss:.4} acc {:.2}%", 100.0 * train_accuracy),
            });
            task.inc(1);
        }
        let last = history.last().expect("an epoch ran");
        let (tie, scale) = last.val_loss_calibrated.unwrap_or((last.train_loss, 1.0));
        if best.as_ref().is_none_or(|b| tie < b.0) {
            best = Some((tie, last.epoch, k, model.w.copy(), model.b.copy(), scale));
        }
        let best_k = best.as_ref().map_or(k, |b| b.2);
        if k - best_k >= L2_PATIENCE_STEPS && k + 1 < penalties.len() {
            stopped_early = true;
            break 'path;
        }
    }
    let (_, best_epoch, best_k, w, b, scale) = best.expect("the path ran");
    let l2 = penalties[best_k];
    let record = &history[best_epoch - 1];
    let best_val_accuracy = record.val_accuracy.unwrap_or(record.train_accuracy);
    let (w, b, refit) = if refit_planned {
        model.w = w;
        model.b = b;
        let steps = (rows.all as usize).div_ceil(batch as usize);
        let cycle = refit_epochs * steps;
        let mut last = (0.0, 0.0);
        for e in 0..refit_epochs {
            last = model.epoch(&rows, rows.all, batch, l2, |s| lr_at(e * steps + s, cycle), &mut rng);
            task.set_message(format!("refit on {} rows, L2 {l2:e} loss {:.4}", rows.all, last.0));
            task.inc(1);
        }
        let refit = RefitRecord { rows: rows.all as usize, epochs: refit_epochs, l2: Some(l2), train_loss: last.0, train_accuracy: last.1 };
        (model.w, model.b, Some(refit))
    } else {
        (w, b, None)
    };
    task.finish();
    let report = TrainReport {
        history,
        best_epoch,
        best_val_accuracy,
        stopped_early,
        l2: Some(l2),
        logit_scale: Some(scale).filter(|_| nv > 0),
        train_rows: nt as usize,
        val_rows: nv as usize,
        refit,
        seconds: start.elapsed().as_secs_f64(),
    };
    (LinearHead::unstandardised(&w, &b, scale, &mean, &std), report)
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
