//! Training the head: softmax regression on standardised features, with a stratified
//! validation split held out of train.
//!
//! With `weight_decay_auto` (the CLI's default, `--weight-decay auto`), the L2 penalty is tuned
//! on the validation split along a regularisation path, and the head is then refit on all of
//! train: see [`super::path`]. With a fixed weight decay (what `sweep` tries), minibatch AdamW
//! (or Adam, SGD) with a cosine learning-rate schedule runs for up to `epochs`, the epoch with
//! the lowest validation loss is kept (early stopping after `patience` epochs without a lower
//! one), and with `refit` the same training is run again on all of train, for as many epochs
//! as the kept one had. Zero initialisation and seeded shuffles make the same seed give the
//! same head.
//!
//! Every path weighs the rows by class as `class_weight` says ([`super::class_weight`]) and
//! folds the temperature fitted on the validation split into the head it returns (the module
//! documentation of [`super`], "Calibration"); the refit keeps the temperature found before it.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use super::class_weight::{class_weights, weighted_cross_entropy, ClassWeight};
use super::LinearHead;
use crate::data::sample::stratified_holdout;
use crate::data::views::average_views;
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
    /// After choosing (the penalty, or the epoch), train once more on train and validation
    /// rows together with that choice (`--no-refit` turns it off; head.json files written
    /// before it existed read as `false`, which is what they did).
    #[serde(default)]
    pub refit: bool,
    /// How much each class's rows count in the loss (`--class-weight`; see
    /// [`super::class_weight`]).
    #[serde(default)]
    pub class_weight: ClassWeight,
    /// The share of in-class validation pictures the unknown threshold keeps (`--keep`, in
    /// (0, 1]; see [`super::unknown`]). head.json files written before it existed read as
    /// the default, 0.95.
    #[serde(default = "default_keep")]
    pub keep: f64,
}

fn default_keep() -> f64 {
    super::unknown::DEFAULT_KEEP
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
            refit: true,
            class_weight: ClassWeight::None,
            keep: super::unknown::DEFAULT_KEEP,
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
        super::unknown::check_keep(self.keep)
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
    /// logit scale (tuned penalties only, the last epoch of each penalty: the candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_calibrated: Option<(f64, f64)>,
}

/// What one record of [`TrainReport::history`] stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryUnit {
    /// An epoch of minibatches (a fixed weight decay, the streamed head; head.json files
    /// written before the unit was recorded).
    #[default]
    Epoch,
    /// An iteration of full-batch L-BFGS, about one pass over the rows (the tuned path in
    /// memory).
    Iteration,
}

impl HistoryUnit {
    /// The unit's name, singular.
    pub fn name(self) -> &'static str {
        match self {
            HistoryUnit::Epoch => "epoch",
            HistoryUnit::Iteration => "L-BFGS iteration",
        }
    }
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Every epoch run (or L-BFGS iteration: see `unit`).
    pub history: Vec<EpochRecord>,
    /// What a record of `history` (and `best_epoch`) counts.
    #[serde(default)]
    pub unit: HistoryUnit,
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
    /// The refit on train and validation rows after the choice, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit: Option<RefitRecord>,
    /// Wall-clock seconds (path and refit).
    pub seconds: f64,
}

/// The refit on all training rows (train and validation) that produced the kept head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefitRecord {
    /// Rows it trained on.
    pub rows: usize,
    /// Epochs it ran; for the tuned path's L-BFGS refit, its objective evaluations (each a
    /// full pass over the rows, as an epoch is).
    pub epochs: usize,
    /// The L2 penalty it used (tuned penalties only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// Mean training loss of its last epoch.
    pub train_loss: f64,
    /// Training accuracy of its last epoch.
    pub train_accuracy: f64,
}

/// How the rows of a training matrix relate to pictures: `views` consecutive rows a picture
/// (`--augment`, see [`crate::data::views`]). The validation split is drawn by picture, so no
/// view of a validation picture is trained on before the refit; a validation picture is
/// judged on the mean of its views `validate_on` (view 0, the picture itself; with `--tta
/// flip` and a mirror view, views 0 and 1, as test pictures are). Every picture has the same
/// number of views, so the mean loss over rows weighs every picture once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewLayout {
    /// Rows a picture.
    pub views: usize,
    /// Views averaged for validation.
    pub validate_on: Vec<usize>,
}

impl ViewLayout {
    /// One row a picture.
    pub fn single() -> Self {
        ViewLayout { views: 1, validate_on: vec![0] }
    }
}

/// Trains a head on `features` `[N, D]` and `labels` `[N]` (values in `0..classes`), one row a
/// picture.
pub fn train_head(features: &Tensor, labels: &Tensor, classes: usize, cfg: &TrainConfig, progress: &Progress) -> Result<(LinearHead, TrainReport)> {
    train_head_views(features, labels, classes, cfg, &ViewLayout::single(), progress)
}

/// Validation rows as they are judged: features `[pictures, D]` and labels.
pub(super) type ValidationSet = (Tensor, Tensor);

/// Trains a head on rows laid out as `layout` says (see [`ViewLayout`]). Training runs on the
/// device `features` are on (the CPU, unless the caller moved them to a GPU); the head
/// returned is on the CPU.
pub fn train_head_views(features: &Tensor, labels: &Tensor, classes: usize, cfg: &TrainConfig, layout: &ViewLayout, progress: &Progress) -> Result<(LinearHead, TrainReport)> {
    cfg.validate()?;
    let penalties = cfg.weight_decay_auto.then_some(&super::L2_PATH[..]);
    let (head, report) = train_on_device(features, labels, classes, cfg, layout, penalties, progress)?;
    Ok((head.into_cpu(), report))
}

/// Trains a head as the tuned path does, but at the one L2 penalty `l2` instead of a search
/// along [`super::L2_PATH`] (`cfg.weight_decay_auto` and `cfg.weight_decay` are not used):
/// the validation rows (`cfg.val_fraction`, drawn by picture) fit only the temperature, and
/// the refit (`cfg.refit`) adds them. `review`'s fold heads use it with a run's chosen
/// penalty, so that K heads cost K fits, not K searches.
pub fn train_head_l2(features: &Tensor, labels: &Tensor, classes: usize, cfg: &TrainConfig, layout: &ViewLayout, l2: f64, progress: &Progress) -> Result<(LinearHead, TrainReport)> {
    cfg.validate()?;
    if !(l2.is_finite() && l2 >= 0.0) {
        return Err(Error::usage("report.l2", format!("{l2} is not an L2 penalty (a number >= 0)")));
    }
    let (head, report) = train_on_device(features, labels, classes, cfg, layout, Some(&[l2]), progress)?;
    Ok((head.into_cpu(), report))
}

#[allow(clippy::too_many_arguments)]
fn train_on_device(
    features: &Tensor,
    labels: &Tensor,
    classes: usize,
    cfg: &TrainConfig,
    layout: &ViewLayout,
    penalties: Option<&[f64]>,
    progress: &Progress,
) -> Result<(LinearHead, TrainReport)> {
    let x = features.to_kind(Kind::Float);
    let device = x.device();
    let labels = labels.to_kind(Kind::Int64).to_device(Device::Cpu);
    let label_vec: Vec<i64> = Vec::<i64>::try_from(&labels).map_err(Error::Torch)?;
    let y = labels.to_device(device);
    if label_vec.is_empty() {
        return Err(Error::usage("--data", "the training split has no rows"));
    }
    if let Some(&bad) = label_vec.iter().find(|&&l| l < 0 || l as usize >= classes) {
        return Err(Error::usage("--data", format!("label {bad} is outside the {classes} classes")));
    }
    let v = layout.views.max(1);
    if !label_vec.len().is_multiple_of(v) || layout.validate_on.iter().any(|&w| w >= v) || layout.validate_on.is_empty() {
        return Err(Error::usage("--augment", format!("{} rows are not whole pictures of {v} views", label_vec.len())));
    }
    let picture_labels: Vec<i64> = label_vec.iter().step_by(v).copied().collect();
    let weights = class_weights(cfg.class_weight, &picture_labels, classes)?.map(|w| w.to_device(device));
    let (train_pictures, val_pictures) = stratified_holdout(&picture_labels, cfg.val_fraction, cfg.seed);
    let rows_of = |pictures: &[usize]| -> Vec<usize> { pictures.iter().flat_map(|&p| p * v..(p + 1) * v).collect() };
    let (train_rows, val_rows) = (rows_of(&train_pictures), rows_of(&val_pictures));
    let validation: Option<ValidationSet> = (v > 1 && !val_pictures.is_empty()).then(|| {
        let idx = index_on(device, val_rows.iter().copied());
        let judged = average_views(&x.index_select(0, &idx), v, &layout.validate_on);
        let idx = index_on(device, val_pictures.iter().map(|&p| p * v));
        (judged, y.index_select(0, &idx))
    });
    if let Some(penalties) = penalties {
        return Ok(tch::no_grad(|| super::path::fit(&x, &y, &train_rows, &val_rows, validation.as_ref(), classes, weights.as_ref(), cfg, penalties, progress)));
    }
    let start = Instant::now();
    let (head, mut report) = fit_fixed(&x, &y, &train_rows, &val_rows, validation.as_ref(), classes, weights.as_ref(), cfg, None, progress)?;
    if cfg.refit && !val_rows.is_empty() {
        let all: Vec<usize> = (0..label_vec.len()).collect();
        let (refit_head, refit_report) = fit_fixed(&x, &y, &all, &[], None, classes, weights.as_ref(), cfg, Some(report.best_epoch), progress)?;
        // The temperature fitted on validation before the refit, folded into the refit head.
        let refit_head = match report.logit_scale {
            Some(s) => LinearHead { weight: refit_head.weight * s, bias: refit_head.bias * s },
            None => refit_head,
        };
        let last = refit_report.history.last().expect("the refit ran");
        report.refit = Some(RefitRecord {
            rows: all.len(),
            epochs: refit_report.history.len(),
            l2: None,
            train_loss: last.train_loss,
            train_accuracy: last.train_accuracy,
        });
        report.seconds = start.elapsed().as_secs_f64();
        return Ok((refit_head, report));
    }
    Ok((head, report))
}

/// Minibatch training with a fixed weight decay on `train_rows`, the epoch of lowest
/// validation loss kept (on `validation` when given, else on `val_rows`); or, with
/// `refit_epochs`, exactly that many epochs (of the same schedule), the last kept. With
/// validation rows, the temperature that fits them best is folded into the kept head (its
/// logit scale in the report). Rows are weighted by `class_weights`.
#[allow(clippy::too_many_arguments)]
fn fit_fixed(
    x: &Tensor,
    y: &Tensor,
    train_rows: &[usize],
    val_rows: &[usize],
    validation: Option<&ValidationSet>,
    classes: usize,
    class_weights: Option<&Tensor>,
    cfg: &TrainConfig,
    refit_epochs: Option<usize>,
    progress: &Progress,
) -> Result<(LinearHead, TrainReport)> {
    let start = Instant::now();
    let take = |rows: &[usize]| {
        let idx = index_on(x.device(), rows.iter().copied());
        (x.index_select(0, &idx), y.index_select(0, &idx))
    };
    let (xt, yt) = take(train_rows);
    let (xv, yv) = match validation {
        Some((xv, yv)) => (xv.shallow_clone(), yv.shallow_clone()),
        None => take(val_rows),
    };

    // Standardise with the training rows' statistics; folded into the weights at the end.
    let mean = xt.mean_dim(0, false, Kind::Float);
    let std = (xt.var_dim(0, false, false) + 1e-6).sqrt();
    let xt = (&xt - &mean) / &std;
    let xv = (&xv - &mean) / &std;

    let d = x.size()[1];
    let vs = nn::VarStore::new(x.device());
    let root = vs.root();
    let w = root.zeros("weight", &[classes as i64, d]);
    let b = root.zeros("bias", &[classes as i64]);
    let wd = cfg.weight_decay;
    let mut opt = match cfg.optimizer {
        OptimizerKind::Adamw => nn::AdamW { wd, ..Default::default() }.build(&vs, cfg.lr),
        OptimizerKind::Adam => nn::Adam { wd, ..Default::default() }.build(&vs, cfg.lr),
        OptimizerKind::Sgd => nn::Sgd { momentum: 0.9, nesterov: true, wd, ..Default::default() }.build(&vs, cfg.lr),
    }?;

    let n = train_rows.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let epochs = refit_epochs.unwrap_or(cfg.epochs);
    let cycle_steps = (cfg.epochs * steps_per_epoch) as f64;
    let mut order: Vec<i64> = (0..n as i64).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut history = Vec::new();
    let mut best: Option<(f64, f64, usize, Tensor, Tensor)> = None; // (acc, loss, epoch, w, b)
    let label = if refit_epochs.is_some() { "refit head" } else { "train head" };
    let mut task = progress.task(label, epochs as u64, Unit::Epochs);
    let mut stopped_early = false;
    for epoch in 1..=epochs {
        order.shuffle(&mut rng);
        let perm = Tensor::from_slice(&order).to_device(x.device());
        let (mut loss_sum, mut correct) = (0.0, 0i64);
        for start in (0..n).step_by(cfg.batch_size) {
            let len = cfg.batch_size.min(n - start) as i64;
            let idx = perm.narrow(0, start as i64, len);
            let (xb, yb) = (xt.index_select(0, &idx), yt.index_select(0, &idx));
            let logits = xb.matmul(&w.tr()) + &b;
            // (1/len) Σ w_i CE_i, as the tuned path (see `super::class_weight`).
            let loss = match class_weights {
                None => logits.cross_entropy_for_logits(&yb),
                Some(cw) => {
                    let ce = -logits.log_softmax(-1, Kind::Float).gather(1, &yb.unsqueeze(1), false).squeeze_dim(1);
                    (ce * cw.index_select(0, &yb)).mean(Kind::Float)
                }
            };
            if cfg.schedule == Schedule::Cosine {
                let step = ((epoch - 1) * steps_per_epoch + start / cfg.batch_size) as f64;
                opt.set_lr(cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step / cycle_steps).cos()));
            }
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * len as f64;
            correct += logits.argmax(-1, false).eq_tensor(&yb).sum(Kind::Int64).int64_value(&[]);
        }
        let (train_loss, train_accuracy) = (loss_sum / n as f64, correct as f64 / n as f64);
        let (val_loss, val_accuracy) = if val_rows.is_empty() {
            (None, None)
        } else {
            tch::no_grad(|| {
                let logits = xv.matmul(&w.tr()) + &b;
                let acc = logits.argmax(-1, false).eq_tensor(&yv).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                (Some(weighted_cross_entropy(&logits, &yv, class_weights).double_value(&[])), Some(acc))
            })
        };
        history.push(EpochRecord { epoch, train_loss, train_accuracy, val_loss, val_accuracy, l2: None, val_loss_calibrated: None });
        let score = val_accuracy.unwrap_or(train_accuracy);
        let tie = val_loss.unwrap_or(train_loss);
        // The epoch with the lowest validation loss is kept: a smoother criterion than accuracy
        // on a small validation split, so near-identical features give near-identical heads.
        // A refit keeps its last epoch.
        let better = match refit_epochs {
            Some(_) => epoch == epochs,
            None => best.as_ref().is_none_or(|(_, l, ..)| tie < *l),
        };
        if better {
            best = Some((score, tie, epoch, w.detach().copy(), b.detach().copy()));
        }
        task.set_message(match val_accuracy {
            Some(va) => format!("loss {train_loss:.4} val_acc {:.2}%", 100.0 * va),
            None => format!("loss {train_loss:.4} acc {:.2}%", 100.0 * train_accuracy),
        });
        task.inc(1);
        let best_epoch = best.as_ref().map_or(epoch, |b| b.2);
        if refit_epochs.is_none() && epoch - best_epoch >= cfg.patience && epoch < epochs {
            stopped_early = true;
            break;
        }
    }
    task.finish();
    let (best_acc, _, best_epoch, bw, bb) = best.expect("at least one epoch ran");
    // Temperature scaling on the validation rows, as the tuned path does.
    let scale = (!val_rows.is_empty()).then(|| tch::no_grad(|| super::path::calibrated_cross_entropy(&(xv.matmul(&bw.tr()) + &bb), &yv, class_weights).1));
    let report = TrainReport {
        history,
        unit: HistoryUnit::Epoch,
        best_epoch,
        best_val_accuracy: best_acc,
        stopped_early,
        l2: None,
        logit_scale: scale,
        train_rows: n,
        val_rows: val_rows.len(),
        refit: None,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((LinearHead::unstandardised(&bw, &bb, scale.unwrap_or(1.0), &mean, &std), report))
}

/// Row indices as an int64 tensor on `device` (where the rows they select are).
pub(super) fn index_on(device: Device, rows: impl Iterator<Item = usize>) -> Tensor {
    Tensor::from_slice(&rows.map(|r| r as i64).collect::<Vec<_>>()).to_device(device)
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

    /// Cross-entropy of `head` on the rows `rows` of `(x, y)`.
    fn loss_on(head: &LinearHead, x: &Tensor, y: &Tensor, rows: &[usize]) -> f64 {
        let idx = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
        head.logits(&x.index_select(0, &idx)).cross_entropy_for_logits(&y.index_select(0, &idx)).double_value(&[])
    }

    /// The refit trains on the validation rows too (recorded in the report), with the penalty
    /// the path chose; `refit: false` keeps the head that never saw them.
    #[test]
    fn refit_trains_on_the_validation_rows_with_the_chosen_penalty() {
        // Overlapping classes, so that no head fits the validation rows perfectly.
        let centers = randn(&mut ChaCha8Rng::seed_from_u64(4), [3, 16]) * 0.5;
        let y = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(60, None, None);
        let x = centers.index_select(0, &y) + randn(&mut ChaCha8Rng::seed_from_u64(40), [180, 16]);
        let cfg = TrainConfig::default();
        assert!(cfg.refit, "refit is the default");
        let (refit, a) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        let (kept, b) = train_head(&x, &y, 3, &TrainConfig { refit: false, ..cfg.clone() }, &Progress::hidden()).unwrap();
        let r = a.refit.as_ref().expect("refit recorded");
        assert_eq!((r.rows, a.train_rows + a.val_rows), (180, 180));
        assert_eq!(r.l2, a.l2);
        assert!(r.epochs >= 1);
        assert!(b.refit.is_none());
        // The same path chose the same penalty; only the refit differs.
        assert_eq!((a.l2, a.best_epoch), (b.l2, b.best_epoch));
        let labels: Vec<i64> = Vec::try_from(&y).unwrap();
        let (_, val_rows) = stratified_holdout(&labels, cfg.val_fraction, cfg.seed);
        let (with, without) = (loss_on(&refit, &x, &y, &val_rows), loss_on(&kept, &x, &y, &val_rows));
        println!("validation-row loss: refit head {with:.4}, head without refit {without:.4}");
        assert!(with < without, "refit {with} vs {without}");
    }

    /// The refit minimises the chosen penalty's objective on every row (mean cross-entropy +
    /// λ/2 · |W|², on features standardised with the training rows' statistics): taken back
    /// to that space (temperature and standardisation undone), the head's gradient there is
    /// within 1e-4 of zero (the refit stops at 1e-5), where the head without the refit is not.
    #[test]
    fn the_refit_reaches_the_optimum_of_the_chosen_penalty() {
        let centers = randn(&mut ChaCha8Rng::seed_from_u64(4), [3, 16]) * 0.5;
        let y = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(100, None, None);
        let x = (centers.index_select(0, &y) + randn(&mut ChaCha8Rng::seed_from_u64(41), [300, 16])) * 20.0 + 5.0;
        let cfg = TrainConfig::default();
        let labels: Vec<i64> = Vec::try_from(&y).unwrap();
        let (train_rows, _) = stratified_holdout(&labels, cfg.val_fraction, cfg.seed);
        let xa = x.index_select(0, &index_on(Device::Cpu, train_rows.iter().copied()));
        let (mean, std) = (xa.mean_dim(0, false, Kind::Float), (xa.var_dim(0, false, false) + 1e-6).sqrt());
        let z = (&x - &mean) / &std;
        let gradient_max = |refit: bool| {
            let (head, report) = train_head(&x, &y, 3, &TrainConfig { refit, ..cfg.clone() }, &Progress::hidden()).unwrap();
            let scale = report.logit_scale.unwrap();
            let (w, b) = (&head.weight * &std / scale, (&head.bias + head.weight.matmul(&mean)) / scale);
            let objective = super::super::lbfgs::Objective { z: &z, labels: &y, classes: 3, row_weight: None, l2: report.l2.unwrap() };
            let (_, g) = objective.value_and_gradient(&super::super::lbfgs::Objective::join(&w, &b));
            g.abs().max().double_value(&[])
        };
        let (with, without) = (gradient_max(true), gradient_max(false));
        println!("largest gradient entry on all rows: refit head {with:.2e}, head without refit {without:.2e}");
        assert!(with < 1e-4, "{with}");
        assert!(without > 10.0 * with, "{without} vs {with}");
    }

    /// Every point of the path is converged, not only the refit: without the refit, the kept
    /// head, taken back to the standardised space, is the optimum of its penalty's objective on
    /// the training rows (largest gradient entry within 1e-4 of zero; the path stops at 1e-5),
    /// at whichever penalty the path chose.
    #[test]
    fn the_kept_point_of_the_path_is_the_optimum_of_its_penalty() {
        let centers = randn(&mut ChaCha8Rng::seed_from_u64(7), [4, 32]) * 0.4;
        let y = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(150, None, None);
        let x = (centers.index_select(0, &y) + randn(&mut ChaCha8Rng::seed_from_u64(70), [600, 32])) * 3.0 - 2.0;
        let cfg = TrainConfig { refit: false, ..TrainConfig::default() };
        let (head, report) = train_head(&x, &y, 4, &cfg, &Progress::hidden()).unwrap();
        let labels: Vec<i64> = Vec::try_from(&y).unwrap();
        let (train_rows, _) = stratified_holdout(&labels, cfg.val_fraction, cfg.seed);
        let idx = index_on(Device::Cpu, train_rows.iter().copied());
        let (xa, ya) = (x.index_select(0, &idx), y.index_select(0, &idx));
        let (mean, std) = (xa.mean_dim(0, false, Kind::Float), (xa.var_dim(0, false, false) + 1e-6).sqrt());
        let scale = report.logit_scale.unwrap();
        let (w, b) = (&head.weight * &std / scale, (&head.bias + head.weight.matmul(&mean)) / scale);
        let l2 = report.l2.unwrap();
        let objective = super::super::lbfgs::Objective { z: &((&xa - &mean) / &std), labels: &ya, classes: 4, row_weight: None, l2 };
        let (_, g) = objective.value_and_gradient(&super::super::lbfgs::Objective::join(&w, &b));
        let gradient_max = g.abs().max().double_value(&[]);
        println!("kept penalty {l2}: largest gradient entry {gradient_max:.2e}");
        assert_eq!(report.unit, HistoryUnit::Iteration, "the tuned path records L-BFGS iterations");
        assert!(gradient_max < 1e-4, "{gradient_max}");
        // Every penalty tried is a candidate, judged at its calibrated validation loss.
        let judged: Vec<f64> = report.history.iter().filter_map(|r| r.val_loss_calibrated.map(|c| c.0)).collect();
        assert!(judged.len() >= 3, "{judged:?}");
        let kept = report.history[report.best_epoch - 1].val_loss_calibrated.expect("the kept record is a candidate").0;
        assert!(judged.iter().all(|&j| kept <= j), "kept {kept} of {judged:?}");
    }

    /// At a given penalty the path is one step: the report keeps that penalty, runs one
    /// penalty's epochs (and the refit), and at the penalty the tuned path chose the head
    /// scores as that path's does.
    #[test]
    fn a_given_l2_penalty_is_used_without_a_search() {
        let (x, y) = blobs(60, 6, 60);
        let (xt, yt) = blobs(40, 6, 61);
        let classes: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let cfg = TrainConfig::default();
        let (tuned, report) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        let chosen = report.l2.unwrap();
        let (fixed, fixed_report) = train_head_l2(&x, &y, 3, &cfg, &ViewLayout::single(), chosen, &Progress::hidden()).unwrap();
        assert_eq!(fixed_report.l2, Some(chosen));
        assert!(fixed_report.history.iter().all(|e| e.l2 == Some(chosen)));
        assert!(fixed_report.history.len() < report.history.len() || report.history.iter().all(|e| e.l2 == Some(chosen)));
        let (a, b) = (super::super::evaluate(&tuned, &xt, &yt, &classes).accuracy, super::super::evaluate(&fixed, &xt, &yt, &classes).accuracy);
        println!("test accuracy: tuned path {a:.3}, its penalty {chosen} given {b:.3}");
        assert!((a - b).abs() <= 0.03, "{a} vs {b}");
        let err = train_head_l2(&x, &y, 3, &cfg, &ViewLayout::single(), f64::NAN, &Progress::hidden()).unwrap_err();
        assert!(err.to_string().contains("L2 penalty"), "{err}");
    }

    /// With a fixed weight decay the refit repeats the kept epoch count on all rows.
    #[test]
    fn fixed_weight_decay_refit_runs_the_kept_number_of_epochs() {
        let (x, y) = blobs(40, 5, 50);
        let cfg = TrainConfig { weight_decay_auto: false, epochs: 8, ..Default::default() };
        let (_, report) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
        let r = report.refit.expect("refit recorded");
        assert_eq!((r.rows, r.epochs, r.l2), (120, report.best_epoch, None));
        assert_eq!(report.unit, HistoryUnit::Epoch, "a fixed weight decay records epochs");
        let (_, no_val) = train_head(&x, &y, 3, &TrainConfig { val_fraction: 0.0, ..cfg }, &Progress::hidden()).unwrap();
        assert!(no_val.refit.is_none(), "nothing to refit on without validation rows");
    }

    /// Views of one picture never sit on both sides of the validation split. Each picture here
    /// is a random point with a random label, repeated as its three views: a head that has
    /// trained on a view has memorised its label, so a split by row would score validation far
    /// above chance; split by picture it stays near chance (the labels cannot be learnt).
    #[test]
    fn views_of_a_picture_stay_on_one_side_of_the_validation_split() {
        let (pictures, views) = (200i64, 3usize);
        let x = randn(&mut ChaCha8Rng::seed_from_u64(11), [pictures, 256]).repeat_interleave_self_int(views as i64, 0, None);
        let y: Vec<i64> = {
            use rand::Rng;
            let mut rng = ChaCha8Rng::seed_from_u64(12);
            (0..pictures).map(|_| rng.gen_range(0..2)).collect()
        };
        let y = Tensor::from_slice(&y).repeat_interleave_self_int(views as i64, 0, None);
        let layout = ViewLayout { views, validate_on: vec![0] };
        let cfg = TrainConfig { val_fraction: 0.3, ..Default::default() };
        let (_, by_picture) = train_head_views(&x, &y, 2, &cfg, &layout, &Progress::hidden()).unwrap();
        let (_, by_row) = train_head(&x, &y, 2, &cfg, &Progress::hidden()).unwrap();
        println!("validation accuracy: split by picture {:.3}, by row {:.3}", by_picture.best_val_accuracy, by_row.best_val_accuracy);
        assert_eq!(by_picture.train_rows % views, 0);
        assert!(by_row.best_val_accuracy > 0.9, "the control: rows of seen pictures are memorised ({})", by_row.best_val_accuracy);
        assert!(by_picture.best_val_accuracy < 0.7, "validation saw views of trained pictures ({})", by_picture.best_val_accuracy);
        let odd = train_head_views(&x.narrow(0, 0, 10), &y.narrow(0, 0, 10), 2, &cfg, &layout, &Progress::hidden()).unwrap_err();
        assert!(odd.to_string().contains("not whole pictures of 3 views"), "{odd}");
    }

    /// A known answer: features that say nothing about the class (every row the same) leave
    /// the head only the class prior. Without weights the best probabilities are the class
    /// shares (0.6, 0.3, 0.1); with balanced weights every class weighs the same in the loss,
    /// and the best probabilities are uniform. Every head path alike: tuned, fixed penalty,
    /// streamed (a learning rate high enough for the bias to converge). A class with no
    /// picture cannot be balanced; the error names it.
    #[test]
    fn class_weights_move_the_prior_of_uninformative_features_as_documented() {
        let y = Tensor::from_slice(&[vec![0i64; 120], vec![1; 60], vec![2; 20]].concat());
        let x = Tensor::ones([200, 4], (Kind::Float, Device::Cpu)) * 7.0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        crate::fsutil::write_safetensors(&path, &[("features", &x), ("labels", &y)]).unwrap();
        for (mode, want) in [(ClassWeight::None, [0.6, 0.3, 0.1]), (ClassWeight::Balanced, [1.0 / 3.0; 3])] {
            for auto in [true, false] {
                let cfg = TrainConfig { class_weight: mode, weight_decay_auto: auto, lr: 5e-2, epochs: 100, ..Default::default() };
                let (memory, _) = train_head(&x, &y, 3, &cfg, &Progress::hidden()).unwrap();
                let (streamed, _) = super::super::train_head_streamed(&path, 3, &cfg, &ViewLayout::single(), &Progress::hidden()).unwrap();
                for (name, head) in [("in memory", memory), ("streamed", streamed)] {
                    let p: Vec<f32> = Vec::try_from(head.probabilities(&x.narrow(0, 0, 1)).squeeze()).unwrap();
                    println!("{mode:?}, tuned {auto}, {name}: probabilities {p:?}");
                    for (a, b) in p.iter().zip(want) {
                        assert!((*a as f64 - b).abs() < 0.02, "{mode:?}, tuned {auto}, {name}: {p:?} against {want:?}");
                    }
                }
            }
        }
        let cfg = TrainConfig { class_weight: ClassWeight::Balanced, ..Default::default() };
        let err = train_head(&x, &y, 4, &cfg, &Progress::hidden()).unwrap_err().to_string();
        assert!(err.contains("class 3 has none"), "{err}");
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
