//! Training the head: softmax regression on standardised features, minibatch AdamW (or Adam,
//! SGD) with a cosine learning-rate schedule, and a stratified validation split held out of
//! train for early stopping and for choosing the epoch whose weights are kept (the lowest
//! validation loss). Zero initialisation and seeded shuffles make the
//! same seed give the same head.
//!
//! With `weight_decay_auto` (the CLI's default, `--weight-decay auto`), the L2 penalty is tuned
//! on the validation split as scikit-learn users tune `C`: training walks down [`L2_PATH`],
//! strongest penalty first, [`L2_EPOCHS_PER_STEP`] epochs each (more on small data, to make
//! [`L2_UPDATES_PER_STEP`] updates), every step warm-started from the last (a regularisation
//! path). Each step's last epoch (the learning rate has decayed, the weights have settled) is
//! a candidate, and the candidate with the lowest *calibrated* validation loss is kept.
//! Calibrated: at the softmax temperature that fits the validation rows best,
//! which is then folded into the head. (A strong penalty gives underconfident probabilities
//! whose raw cross-entropy is high even where its accuracy is the best; the calibrated loss
//! judges the ranking, and is smoother than accuracy on a small split.) After
//! [`L2_PATIENCE_STEPS`] steps without a better candidate the weaker penalties are skipped.
//! `epochs` and `patience` do not apply.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use super::LinearHead;
use crate::data::sample::stratified_holdout;
use crate::error::{Error, Result};
use crate::progress::{Progress, Unit};

/// The optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay.
    Adamw,
    /// Adam with L2 weight decay.
    Adam,
    /// SGD with Nesterov momentum 0.9.
    Sgd,
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine decay from `lr` to 0 over `epochs`.
    Cosine,
    /// `lr` throughout.
    Constant,
}

/// The L2 penalties (`λ` in `mean cross-entropy + λ/2 · |W|²`, on standardised features)
/// that `weight_decay_auto` walks down, strongest first. scikit-learn's `C` is `1 / (λ · n)`.
pub const L2_PATH: [f64; 9] = [1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 3e-4, 1e-4];
/// Epochs at each penalty of [`L2_PATH`], at least (the learning rate follows a cosine
/// within each).
pub const L2_EPOCHS_PER_STEP: usize = 3;
/// Optimiser updates at each penalty, at least: small data sets get more epochs per penalty.
pub const L2_UPDATES_PER_STEP: usize = 300;
/// Steps of [`L2_PATH`] without a better head after which the weaker penalties are skipped.
pub const L2_PATIENCE_STEPS: usize = 2;

/// Head training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Most epochs to run.
    pub epochs: usize,
    /// Learning rate.
    pub lr: f64,
    /// Weight decay (the optimiser's; AdamW's is decoupled), unless `weight_decay_auto`.
    pub weight_decay: f64,
    /// Tune an L2 penalty on the validation split instead (see the module documentation);
    /// `weight_decay` is then not used.
    #[serde(default)]
    pub weight_decay_auto: bool,
    /// Minibatch size.
    pub batch_size: usize,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Share of each class of train held out for validation.
    pub val_fraction: f64,
    /// Seed of the validation split and of the shuffles.
    pub seed: u64,
    /// Stop after this many epochs without a lower validation loss.
    pub patience: usize,
    /// Learning-rate schedule.
    pub schedule: Schedule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 60,
            lr: 1e-3,
            weight_decay: 1e-4,
            weight_decay_auto: true,
            batch_size: 128,
            optimizer: OptimizerKind::Adamw,
            val_fraction: 0.1,
            seed: 0,
            patience: 10,
            schedule: Schedule::Cosine,
        }
    }
}

impl TrainConfig {
    /// Checks every value, naming the flag that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |flag: &str, msg: String| Err(Error::usage(flag, msg));
        if self.epochs == 0 {
            return bad("--epochs", "must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("--lr", format!("{} is not a positive number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("--weight-decay", format!("{} is not a number >= 0", self.weight_decay));
        }
        if self.batch_size == 0 {
            return bad("--batch-size", "must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad("--val-fraction", format!("{} is not in [0, 1)", self.val_fraction));
        }
        if self.patience == 0 {
            return bad("--patience", "must be at least 1".into());
        }
        Ok(())
    }
}

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the epoch's minibatches.
    pub train_loss: f64,
    /// Training accuracy (on the minibatches, as they were seen).
    pub train_accuracy: f64,
    /// Validation loss (none without validation rows).
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
    /// The L2 penalty of this epoch (tuned penalties only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// Validation loss at the best-fitting temperature, and that temperature's inverse as a
    /// logit scale (tuned penalties only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_calibrated: Option<(f64, f64)>,
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Every epoch run.
    pub history: Vec<EpochRecord>,
    /// The epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    /// Its validation accuracy (training accuracy when there is no validation split).
    pub best_val_accuracy: f64,
    /// True when patience ran out before `epochs`.
    pub stopped_early: bool,
    /// The tuned L2 penalty of the epoch kept (tuned penalties only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// The logit scale (1 / temperature) folded into the head (tuned penalties only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_scale: Option<f64>,
    /// Rows trained on.
    pub train_rows: usize,
    /// Rows held out for validation.
    pub val_rows: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Trains a head on `features` `[N, D]` and `labels` `[N]` (values in `0..classes`).
pub fn train_head(features: &Tensor, labels: &Tensor, classes: usize, cfg: &TrainConfig, progress: &Progress) -> Result<(LinearHead, TrainReport)> {
    cfg.validate()?;
    let start = Instant::now();
    let x = features.to_kind(Kind::Float).to_device(Device::Cpu);
    let y = labels.to_kind(Kind::Int64).to_device(Device::Cpu);
    let label_vec: Vec<i64> = Vec::<i64>::try_from(&y).map_err(Error::Torch)?;
    if label_vec.is_empty() {
        return Err(Error::usage("--data", "the training split has no rows"));
    }
    if let Some(&bad) = label_vec.iter().find(|&&l| l < 0 || l as usize >= classes) {
        return Err(Error::usage("--data", format!("label {bad} is outside the {classes} classes")));
    }
    let (train_rows, val_rows) = stratified_holdout(&label_vec, cfg.val_fraction, cfg.seed);
    let take = |rows: &[usize]| {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        (x.index_select(0, &idx), y.index_select(0, &idx))
    };
    let (xt, yt) = take(&train_rows);
    let (xv, yv) = take(&val_rows);

    // Standardise with the training rows' statistics; folded into the weights at the end.
    let mean = xt.mean_dim(0, false, Kind::Float);
    let std = (xt.var_dim(0, false, false) + 1e-6).sqrt();
    let xt = (&xt - &mean) / &std;
    let xv = (&xv - &mean) / &std;

    let d = x.size()[1];
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = root.zeros("weight", &[classes as i64, d]);
    let b = root.zeros("bias", &[classes as i64]);
    // A tuned penalty is in the loss; the optimiser then has none of its own.
    let wd = if cfg.weight_decay_auto { 0.0 } else { cfg.weight_decay };
    let mut opt = match cfg.optimizer {
        OptimizerKind::Adamw => nn::AdamW { wd, ..Default::default() }.build(&vs, cfg.lr),
        OptimizerKind::Adam => nn::Adam { wd, ..Default::default() }.build(&vs, cfg.lr),
        OptimizerKind::Sgd => nn::Sgd { momentum: 0.9, nesterov: true, wd, ..Default::default() }.build(&vs, cfg.lr),
    }?;

    let n = train_rows.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    // Epochs of one cosine cycle, and the L2 penalty of an epoch.
    let per_step = L2_EPOCHS_PER_STEP.max(L2_UPDATES_PER_STEP.div_ceil(steps_per_epoch));
    let (epochs, cycle, patience) = if cfg.weight_decay_auto {
        (L2_PATH.len() * per_step, per_step, L2_PATIENCE_STEPS * per_step)
    } else {
        (cfg.epochs, cfg.epochs, cfg.patience)
    };
    let l2_of = |epoch: usize| cfg.weight_decay_auto.then(|| L2_PATH[(epoch - 1) / per_step]);
    let cycle_steps = (cycle * steps_per_epoch) as f64;
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut history = Vec::new();
    let mut best: Option<(f64, f64, usize, Tensor, Tensor)> = None; // (acc, loss, epoch, w, b)
    let mut task = progress.task("train head", epochs as u64, Unit::Epochs);
    let mut stopped_early = false;
    for epoch in 1..=epochs {
        let l2 = l2_of(epoch);
        order.shuffle(&mut rng);
        let perm = Tensor::from_slice(&order);
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        for start in (0..n).step_by(cfg.batch_size) {
            let len = cfg.batch_size.min(n - start) as i64;
            let idx = perm.narrow(0, start as i64, len);
            let (xb, yb) = (xt.index_select(0, &idx), yt.index_select(0, &idx));
            let logits = xb.matmul(&w.tr()) + &b;
            let ce = logits.cross_entropy_for_logits(&yb);
            let loss = match l2 {
                Some(l2) => &ce + w.square().sum(Kind::Float) * (0.5 * l2),
                None => ce.shallow_clone(),
            };
            if cfg.schedule == Schedule::Cosine {
                let step = (((epoch - 1) % cycle) * steps_per_epoch + start / cfg.batch_size) as f64;
                opt.set_lr(cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step / cycle_steps).cos()));
            }
            opt.backward_step(&loss);
            loss_sum += ce.double_value(&[]) * len as f64;
            correct += logits.argmax(-1, false).eq_tensor(&yb).sum(Kind::Int64).int64_value(&[]);
        }
        let (train_loss, train_accuracy) = (loss_sum / n as f64, correct as f64 / n as f64);
        let (val_loss, val_accuracy) = if val_rows.is_empty() {
            (None, None)
        } else {
            tch::no_grad(|| {
                let logits = xv.matmul(&w.tr()) + &b;
                let acc = logits.argmax(-1, false).eq_tensor(&yv).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                (Some(logits.cross_entropy_for_logits(&yv).double_value(&[])), Some(acc))
            })
        };
        let val_loss_calibrated = (cfg.weight_decay_auto && !val_rows.is_empty())
            .then(|| tch::no_grad(|| calibrated_cross_entropy(&(xv.matmul(&w.tr()) + &b), &yv)));
        history.push(EpochRecord { epoch, train_loss, train_accuracy, val_loss, val_accuracy, l2, val_loss_calibrated });
        let score = val_accuracy.unwrap_or(train_accuracy);
        let (tie, scale) = match val_loss_calibrated {
            Some((loss, scale)) => (loss, scale),
            None => (val_loss.unwrap_or(train_loss), 1.0),
        };
        // The epoch with the lowest validation loss is kept: a smoother criterion than accuracy
        // on a small validation split, so near-identical features give near-identical heads.
        // A tuned penalty is judged at the end of its step, where the learning rate has decayed
        // and the weights have settled: fewer, steadier candidates than every epoch.
        let candidate = !cfg.weight_decay_auto || epoch % per_step == 0;
        let better = candidate && best.as_ref().is_none_or(|(_, l, ..)| tie < *l);
        if better {
            best = Some((score, tie, epoch, w.detach() * scale, b.detach() * scale));
        }
        task.set_message(match val_accuracy {
            Some(va) => format!("loss {train_loss:.4} val_acc {:.2}%", 100.0 * va),
            None => format!("loss {train_loss:.4} acc {:.2}%", 100.0 * train_accuracy),
        });
        task.inc(1);
        let best_epoch = best.as_ref().map_or(epoch, |b| b.2);
        if epoch - best_epoch >= patience && epoch < epochs {
            stopped_early = true;
            break;
        }
    }
    task.finish();
    let (best_acc, _, best_epoch, bw, bb) = best.expect("at least one epoch ran");
    // Fold the standardisation in: W' = W / std, b' = b - W' · mean.
    let weight = &bw / std.unsqueeze(0);
    let bias = &bb - weight.matmul(&mean);
    let logit_scale = history[best_epoch - 1].val_loss_calibrated.map(|(_, scale)| scale);
    let report = TrainReport {
        history,
        best_epoch,
        best_val_accuracy: best_acc,
        stopped_early,
        l2: l2_of(best_epoch),
        logit_scale,
        train_rows: n,
        val_rows: val_rows.len(),
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((LinearHead { weight, bias }, report))
}

/// The cross-entropy of `logits · s` at the scale `s` (inverse temperature) in [0.05, 20] that
/// minimises it, and that `s`. The loss is convex in `s`, so a golden-section search on `ln s`
/// finds it.
fn calibrated_cross_entropy(logits: &Tensor, labels: &Tensor) -> (f64, f64) {
    let loss = |ln_s: f64| (logits * ln_s.exp()).cross_entropy_for_logits(labels).double_value(&[]);
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
    use super::*;

    /// Standard normal samples from a local seeded generator (libtorch's global RNG is shared
    /// by tests running in parallel).
    fn randn(rng: &mut ChaCha8Rng, shape: [i64; 2]) -> Tensor {
        use rand::Rng;
        let n = (shape[0] * shape[1]) as usize;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let (u1, u2): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    /// Three Gaussian blobs in 16 dimensions (centres fixed by `seed`, noise by `noise_seed`),
    /// shifted and scaled so that standardisation matters.
    fn blobs(n_per: i64, seed: u64, noise_seed: u64) -> (Tensor, Tensor) {
        let centers = randn(&mut ChaCha8Rng::seed_from_u64(seed), [3, 16]) * 3.0;
        let y = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(n_per, None, None);
        let x = centers.index_select(0, &y) + randn(&mut ChaCha8Rng::seed_from_u64(noise_seed), [3 * n_per, 16]);
        (x * 50.0 + 1000.0, y)
    }

    #[test]
    fn learns_separable_classes_and_generalises() {
        let (x, y) = blobs(100, 1, 10);
        let cfg = TrainConfig::default();
        let (head, report) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        assert!(report.best_val_accuracy >= 0.95, "{report:?}");
        let (xt, yt) = blobs(50, 1, 11); // same centres, fresh noise
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let eval = super::super::evaluate(&head, &xt, &yt, &classes);
        assert!(eval.accuracy >= 0.95, "{}", eval.accuracy);
        assert_eq!(eval.confusion.iter().flatten().sum::<u64>(), 150);
    }

    #[test]
    fn same_seed_gives_the_same_head_other_seed_another() {
        let (x, y) = blobs(40, 2, 20);
        let cfg = TrainConfig { epochs: 5, ..Default::default() };
        let (a, _) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        let (b, _) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        assert!(a.weight.equal(&b.weight) && a.bias.equal(&b.bias));
        let (c, _) = train_head(&x, &y, 3, &TrainConfig { seed: 9, ..cfg }, &Progress::hidden()).unwrap();
        assert!(!a.weight.equal(&c.weight));
    }

    /// The tuned penalty follows the data. Few noisy rows in many dimensions need a strong one.
    /// Many rows whose class shows only in a difference of features (each feature carries a
    /// large noise that another feature repeats) need a weak one: a strong penalty pulls the
    /// weights towards the class means, which that noise swamps.
    #[test]
    fn tuned_l2_is_strong_for_noisy_small_data_and_weak_for_correlated_large_data() {
        let noisy = {
            let centers = randn(&mut ChaCha8Rng::seed_from_u64(5), [3, 300]) * 0.15;
            let y = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(30, None, None);
            (centers.index_select(0, &y) + randn(&mut ChaCha8Rng::seed_from_u64(6), [90, 300]), y)
        };
        let correlated = {
            let n = 1500;
            let centers = randn(&mut ChaCha8Rng::seed_from_u64(7), [3, 8]) * 0.3;
            let y = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(n / 3, None, None);
            let shared = randn(&mut ChaCha8Rng::seed_from_u64(8), [n, 8]) * 3.0;
            let small = randn(&mut ChaCha8Rng::seed_from_u64(9), [n, 16]) * 0.1;
            (Tensor::cat(&[centers.index_select(0, &y) + &shared, shared], 1) + small, y)
        };
        let cfg = TrainConfig::default();
        assert!(cfg.weight_decay_auto, "tuning is the default");
        let (_, a) = train_head(&noisy.0, &noisy.1, 3, &cfg, &Progress::hidden()).unwrap();
        let (_, b) = train_head(&correlated.0, &correlated.1, 3, &cfg, &Progress::hidden()).unwrap();
        let (la, lb) = (a.l2.unwrap(), b.l2.unwrap());
        println!("tuned L2: noisy small data {la}, correlated large data {lb} (validation accuracy {:.3})", b.best_val_accuracy);
        assert_eq!(a.history[a.best_epoch - 1].l2, Some(la));
        assert!(la >= 10.0 * lb, "noisy data chose {la}, correlated data {lb}");
        assert!(b.best_val_accuracy > 0.9, "{}", b.best_val_accuracy);
    }

    #[test]
    fn out_of_range_settings_name_their_flag() {
        let (x, y) = blobs(5, 3, 30);
        for (cfg, flag) in [
            (TrainConfig { lr: -1.0, ..Default::default() }, "--lr"),
            (TrainConfig { val_fraction: 1.0, ..Default::default() }, "--val-fraction"),
            (TrainConfig { batch_size: 0, ..Default::default() }, "--batch-size"),
        ] {
            let err = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
