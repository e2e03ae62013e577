//! Training a head on features bigger than memory: minibatches are read from the cached
//! `features.safetensors` as they are needed, so resident memory does not grow with the rows
//! (only the labels, 8 bytes a row, and a row mask are held).
//!
//! The file is read with positioned reads (`pread`) rather than a memory map: the pages of a
//! map that were touched count in the process's resident memory until the kernel reclaims them,
//! and an epoch touches all of them; read pages stay in the page cache, shared and reclaimable.
//!
//! The method is the tuned L2 path of [`super::path`] (the default) or a fixed penalty, on
//! standardised features, with these differences, for one pass over the disk per epoch:
//! - each penalty runs a few epochs of minibatch Adam ([`L2_EPOCHS_PER_STEP`] at least), not
//!   L-BFGS to convergence as in memory: a full-batch iteration would be a pass over the disk,
//!   so at scale its points are not converged (docs/performance.md, "The head on the full
//!   CIFAR-10"); no penalty between the grid's is tried;
//! - the standardisation statistics come from a streaming pass over the training rows;
//! - an epoch visits blocks of [`BLOCK_ROWS`] consecutive rows in a new random order, reading
//!   [`GROUP_BLOCKS`] blocks at a time and shuffling their rows together into minibatches;
//! - the validation rows (chosen by picture, as in memory) are scored in a streaming pass,
//!   their logits kept (a few per class) so that a penalty's candidate is judged at its best
//!   temperature, as in memory; the refit then streams every row.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::class_weight::{class_weights, weighted_cross_entropy};
use super::path::calibrated_cross_entropy;
use super::train::{EpochRecord, RefitRecord, TrainConfig, TrainReport, ViewLayout};
use super::metrics::{evaluate_logits, Evaluation};
use super::{LinearHead, L2_PATH, L2_PATIENCE_STEPS};
use crate::cache::shards::safetensors_layout;
use crate::data::sample::stratified_holdout;
use crate::error::{Error, IoContext, Result};
use crate::progress::{Progress, Unit};

/// Epochs of Adam at each penalty of [`L2_PATH`], at least (the learning rate follows a
/// cosine within each). Unlike the in-memory path ([`super::path`], L-BFGS to convergence a
/// penalty), the streamed one reads the rows from disk for every pass and keeps minibatches.
pub const L2_EPOCHS_PER_STEP: usize = 2;
/// Optimiser updates at each penalty, at least: small data sets get more epochs per penalty.
pub const L2_UPDATES_PER_STEP: usize = 300;
/// Rows of a minibatch, at least (unless `--batch-size` is larger).
pub const L2_BATCH_ROWS: usize = 256;
/// Consecutive rows read together for an epoch's minibatches.
pub const BLOCK_ROWS: usize = 64;
/// Blocks (in random order) whose rows are shuffled together into minibatches.
pub const GROUP_BLOCKS: usize = 16;
/// Rows read at a time by the statistics and validation passes.
const PASS_ROWS: usize = 8192;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// A `features.safetensors` file opened for reading rows.
#[derive(Debug)]
pub struct FeatureFile {
    file: File,
    path: std::path::PathBuf,
    /// Rows.
    pub rows: usize,
    /// Feature width.
    pub width: usize,
    offset: u64,
    /// Every row's label.
    pub labels: Vec<i64>,
}

impl FeatureFile {
    /// Opens `path` (F32 `features` `[N, D]`, I64 `labels` `[N]`), reading the labels only.
    pub fn open(path: &Path) -> Result<Self> {
        let layout = safetensors_layout(path)?;
        let (f, l) = match (layout.get("features"), layout.get("labels")) {
            (Some(f), Some(l)) if f.0 == "F32" && f.1.len() == 2 && l.0 == "I64" && l.1.len() == 1 && l.1[0] == f.1[0] => (f.clone(), l.clone()),
            _ => return Err(Error::bad_input(path, "needs F32 features [N, D] and I64 labels [N]; delete this cache entry")),
        };
        let bad = || Error::bad_input(path, "tensor sizes disagree with their shapes; delete this cache entry");
        let (rows, width) = (usize::try_from(f.1[0]).map_err(|_| bad())?, usize::try_from(f.1[1]).map_err(|_| bad())?);
        let feature_bytes = rows.checked_mul(width).and_then(|n| n.checked_mul(4)).ok_or_else(bad)?;
        if f.3 - f.2 != feature_bytes as u64 || l.3 - l.2 != (rows as u64) * 8 {
            return Err(Error::bad_input(path, "tensor sizes disagree with their shapes; delete this cache entry"));
        }
        let file = File::open(path).at(path)?;
        let mut bytes = vec![0u8; rows * 8];
        file.read_exact_at(&mut bytes, l.2).at(path)?;
        let labels = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        Ok(FeatureFile { file, path: path.to_path_buf(), rows, width, offset: f.2, labels })
    }

    /// Rows `start..start + len` as a `[len, D]` f32 tensor.
    pub fn read(&self, start: usize, len: usize) -> Result<Tensor> {
        let mut bytes = vec![0u8; len * self.width * 4];
        self.file.read_exact_at(&mut bytes, self.offset + (start * self.width * 4) as u64).at(&self.path)?;
        Ok(Tensor::from_data_size(&bytes, &[len as i64, self.width as i64], Kind::Float))
    }

    /// Calls `f(rows, x)` for every pass block holding some row where `keep` is true, with
    /// those rows' indices and features.
    fn pass(&self, keep: &[bool], mut f: impl FnMut(&[usize], Tensor)) -> Result<()> {
        for start in (0..self.rows).step_by(PASS_ROWS) {
            let len = PASS_ROWS.min(self.rows - start);
            let picked: Vec<usize> = (start..start + len).filter(|&r| keep[r]).collect();
            if picked.is_empty() {
                continue;
            }
            let x = self.read(start, len)?;
            let local: Vec<i64> = picked.iter().map(|&r| (r - start) as i64).collect();
            f(&picked, x.index_select(0, &Tensor::from_slice(&local)));
        }
        Ok(())
    }
}

/// Weights in the standardised space and their Adam moments.
struct Model {
    w: Tensor,
    b: Tensor,
    m: [Tensor; 4],
    t: i32,
}

impl Model {
    fn logits(&self, z: &Tensor) -> Tensor {
        z.matmul(&self.w.tr()) + &self.b
    }

    /// One Adam step on standardised `z` with `labels`, rows weighted by their class's
    /// `class_weights` (see [`super::class_weight`]); returns the summed (weighted) loss and
    /// the correct predictions.
    fn step(&mut self, z: &Tensor, labels: &Tensor, classes: i64, class_weights: Option<&Tensor>, l2: f64, lr: f64) -> (f64, i64) {
        let n = z.size()[0];
        let onehot = labels.one_hot(classes).to_kind(Kind::Float);
        let logits = self.logits(z);
        let logp = logits.log_softmax(-1, Kind::Float);
        let correct = logits.argmax(-1, false).eq_tensor(labels).sum(Kind::Int64).int64_value(&[]);
        let (loss, g) = match class_weights {
            None => (-(&logp * &onehot).sum(Kind::Float).double_value(&[]), (logp.exp() - &onehot) / n as f64),
            Some(cw) => {
                let w = cw.index_select(0, labels);
                let per_row = -(&logp * &onehot).sum_dim_intlist(1, false, Kind::Float);
                ((per_row * &w).sum(Kind::Float).double_value(&[]), (logp.exp() - &onehot) * w.unsqueeze(1) / n as f64)
            }
        };
        let gw = g.tr().matmul(z) + &self.w * l2;
        let gb = g.sum_dim_intlist(0, false, Kind::Float);
        self.t += 1;
        let (c1, c2) = (1.0 - BETA1.powi(self.t), 1.0 - BETA2.powi(self.t));
        let [mw, vw, mb, vb] = &mut self.m;
        for (p, m, v, g) in [(&mut self.w, mw, vw, &gw), (&mut self.b, mb, vb, &gb)] {
            *m = &*m * BETA1 + g * (1.0 - BETA1);
            *v = &*v * BETA2 + g.square() * (1.0 - BETA2);
            *p = &*p - (&*m / c1) / ((&*v / c2).sqrt() + EPS) * lr;
        }
        (loss, correct)
    }
}

/// Trains a head on the features in `path` (a cache entry's `features.safetensors`) without
/// loading them: see the module docs. `cfg.weight_decay_auto` walks the L2 path; otherwise
/// `cfg.weight_decay` is the L2 penalty on standardised features, for `cfg.epochs` epochs
/// with `cfg.patience`, the epoch of lowest validation loss kept.
///
/// With rows laid out as `layout` says (`--augment`, picture-major), the validation split is
/// drawn by picture and a validation picture is judged on the mean of its views
/// `layout.validate_on`, as in memory (the mean of their logits, which is the logits of their
/// mean features).
pub fn train_head_streamed(path: &Path, classes: usize, cfg: &TrainConfig, layout: &ViewLayout, progress: &Progress) -> Result<(LinearHead, TrainReport)> {
    cfg.validate()?;
    let start = Instant::now();
    // One libtorch thread, as on the in-memory path (see `path::OneThread`).
    let _threads = super::path::OneThread::set();
    let file = FeatureFile::open(path)?;
    if file.rows == 0 {
        return Err(Error::usage("--data", "the training split has no rows"));
    }
    if let Some(&bad) = file.labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        return Err(Error::usage("--data", format!("label {bad} is outside the {classes} classes")));
    }
    let v = layout.views.max(1);
    if !file.rows.is_multiple_of(v) || layout.validate_on.iter().any(|&w| w >= v) || layout.validate_on.is_empty() {
        return Err(Error::usage("--augment", format!("{} rows are not whole pictures of {v} views", file.rows)));
    }
    let picture_labels: Vec<i64> = file.labels.iter().step_by(v).copied().collect();
    let class_weights = class_weights(cfg.class_weight, &picture_labels, classes)?;
    let (train_pictures, val_pictures) = stratified_holdout(&picture_labels, cfg.val_fraction, cfg.seed);
    let (mut is_train, mut is_val) = (vec![false; file.rows], vec![false; file.rows]);
    for &p in &train_pictures {
        is_train[p * v..(p + 1) * v].fill(true);
    }
    for &p in &val_pictures {
        for &w in &layout.validate_on {
            is_val[p * v + w] = true;
        }
    }
    let (nt, nv) = (train_pictures.len() * v, val_pictures.len());
    let d = file.width as i64;

    // Standardisation statistics of the training rows, in f64, streamed.
    let mut sum = Tensor::zeros([d], (Kind::Double, tch::Device::Cpu));
    let mut sumsq = Tensor::zeros([d], (Kind::Double, tch::Device::Cpu));
    file.pass(&is_train, |_, x| {
        let x = x.to_kind(Kind::Double);
        sum += x.sum_dim_intlist(0, false, Kind::Double);
        sumsq += x.square().sum_dim_intlist(0, false, Kind::Double);
    })?;
    let mean64 = &sum / nt as f64;
    let var = (&sumsq / nt as f64 - mean64.square()).clamp_min(0.0);
    let mean = mean64.to_kind(Kind::Float);
    let std = (var + 1e-6).sqrt().to_kind(Kind::Float);
    let labels_t = Tensor::from_slice(&file.labels);

    let c = classes as i64;
    let z = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, tch::Device::Cpu));
    let mut model = Model { w: z(&[c, d]), b: z(&[c]), m: [z(&[c, d]), z(&[c, d]), z(&[c]), z(&[c])], t: 0 };
    let batch = cfg.batch_size.max(L2_BATCH_ROWS);
    let steps_per_epoch = nt.div_ceil(batch).max(1);
    let (penalties, epochs_per): (Vec<f64>, usize) = if cfg.weight_decay_auto {
        (L2_PATH.to_vec(), L2_EPOCHS_PER_STEP.max(L2_UPDATES_PER_STEP.div_ceil(steps_per_epoch)))
    } else {
        (vec![cfg.weight_decay], cfg.epochs)
    };
    let refit_planned = cfg.refit && nv > 0;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let data = Streamed {
        file: &file,
        mean: &mean,
        std: &std,
        labels: &labels_t,
        batch,
        classes: c,
        class_weights: class_weights.as_ref(),
        judged_views: layout.validate_on.len() as i64,
    };
    let total_epochs = penalties.len() * epochs_per + if refit_planned { epochs_per } else { 0 };
    let mut task = progress.task("train head (streamed)", total_epochs as u64, Unit::Epochs);
    let mut history = Vec::new();
    // (judged loss, epoch, penalty, w, b, logit scale)
    let mut best: Option<(f64, usize, usize, Tensor, Tensor, f64)> = None;
    let mut stopped_early = false;
    'path: for (k, &l2) in penalties.iter().enumerate() {
        let cycle = epochs_per * steps_per_epoch;
        let mut since_best = 0;
        for e in 0..epochs_per {
            let epoch_start = Instant::now();
            let (loss, correct) = data.epoch(&mut model, &is_train, l2, |s| cosine(cfg, e * steps_per_epoch + s, cycle), &mut rng)?;
            let (train_loss, train_accuracy) = (loss / nt as f64, correct as f64 / nt as f64);
            let last_of_penalty = e + 1 == epochs_per;
            let (val_loss, val_accuracy, calibrated) = if nv == 0 {
                (None, None, None)
            } else {
                let (logits, labels) = data.logits(&model, &is_val)?;
                let acc = logits.argmax(-1, false).eq_tensor(&labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
                // As in memory: a penalty's last epoch is a candidate, judged at its best
                // temperature; with a fixed penalty every epoch is, judged on its plain loss,
                // and the kept one's temperature is folded in.
                let calibrated = (!cfg.weight_decay_auto || last_of_penalty).then(|| calibrated_cross_entropy(&logits, &labels, class_weights.as_ref()));
                (Some(weighted_cross_entropy(&logits, &labels, class_weights.as_ref()).double_value(&[])), Some(acc), calibrated)
            };
            let epoch = history.len() + 1;
            let (secs, val) = (epoch_start.elapsed().as_secs_f64(), val_accuracy.map(|a| format!(", val accuracy {:.2}%", 100.0 * a)).unwrap_or_default());
            // A line an epoch when epochs are long (a pass over a big file); with small data
            // the path runs hundreds of short epochs a penalty, and only a penalty's last one
            // (its candidate) is worth a line.
            if secs >= 1.0 || last_of_penalty {
                tracing::info!("head (streamed): epoch {epoch}, L2 {l2:e}, train loss {train_loss:.4}{val}, {secs:.1}s");
            } else {
                tracing::debug!("head (streamed): epoch {epoch}, L2 {l2:e}, train loss {train_loss:.4}{val}, {secs:.1}s");
            }
            let recorded = calibrated.filter(|_| cfg.weight_decay_auto);
            history.push(EpochRecord { epoch, train_loss, train_accuracy, val_loss, val_accuracy, l2: Some(l2), val_loss_calibrated: recorded });
            task.inc(1);
            let scale = calibrated.map_or(1.0, |c| c.1);
            let judged = recorded.map_or(val_loss.unwrap_or(train_loss), |c| c.0);
            if (!cfg.weight_decay_auto || last_of_penalty) && best.as_ref().is_none_or(|b| judged < b.0) {
                best = Some((judged, epoch, k, model.w.copy(), model.b.copy(), scale));
                since_best = 0;
            } else if !cfg.weight_decay_auto {
                since_best += 1;
                if since_best >= cfg.patience {
                    stopped_early = true;
                    break 'path;
                }
            }
        }
        let best_k = best.as_ref().map_or(k, |b| b.2);
        if cfg.weight_decay_auto && k - best_k >= L2_PATIENCE_STEPS && k + 1 < penalties.len() {
            stopped_early = true;
            break 'path;
        }
    }
    let (_, best_epoch, best_k, w, b, scale) = best.expect("an epoch ran");
    let record = &history[best_epoch - 1];
    let best_val_accuracy = record.val_accuracy.unwrap_or(record.train_accuracy);
    let l2 = penalties[best_k];
    // Refit, as in memory: the chosen weights trained once more, with the chosen penalty, on
    // the training and the validation pictures (every view), for a penalty's epochs.
    let (w, b, refit) = if refit_planned {
        let all = vec![true; file.rows];
        let (rows, steps) = (file.rows, file.rows.div_ceil(batch).max(1));
        model = Model { w, b, m: [z(&[c, d]), z(&[c, d]), z(&[c]), z(&[c])], t: 0 };
        let mut last = (0.0, 0.0);
        for e in 0..epochs_per {
            let (loss, correct) = data.epoch(&mut model, &all, l2, |s| cosine(cfg, e * steps + s, epochs_per * steps), &mut rng)?;
            last = (loss / rows as f64, correct as f64 / rows as f64);
            task.inc(1);
        }
        let refit = RefitRecord { rows, epochs: epochs_per, l2: Some(l2), train_loss: last.0, train_accuracy: last.1 };
        (model.w, model.b, Some(refit))
    } else {
        (w, b, None)
    };
    task.finish();
    let report = TrainReport {
        best_val_accuracy,
        history,
        unit: super::train::HistoryUnit::Epoch,
        best_epoch,
        stopped_early,
        l2: Some(l2),
        logit_scale: Some(scale).filter(|_| nv > 0),
        train_rows: nt,
        val_rows: nv,
        refit,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((LinearHead::unstandardised(&w, &b, scale, &mean, &std), report))
}

/// Evaluates `head` on the features in `path` (a cache entry's `features.safetensors`) without
/// loading them: the logits (`[rows, classes]`) are computed a block of rows at a time. With
/// the head's `logit_scale`, the calibration error before its temperature is reported too.
pub fn evaluate_streamed(head: &LinearHead, path: &Path, classes: &[String], logit_scale: Option<f64>) -> Result<Evaluation> {
    let file = FeatureFile::open(path)?;
    if file.width as i64 != head.feature_width() {
        return Err(Error::bad_input(path, format!("holds {}-wide features; the head takes {}", file.width, head.feature_width())));
    }
    let mut logits = vec![Tensor::zeros([0, head.classes()], (Kind::Float, tch::Device::Cpu))];
    file.pass(&vec![true; file.rows], |_, x| logits.push(head.logits(&x)))?;
    Ok(evaluate_logits(&Tensor::cat(&logits, 0), &Tensor::from_slice(&file.labels), classes, logit_scale))
}

/// The learning rate of step `step` of a cosine cycle of `cycle` steps (or the constant one).
fn cosine(cfg: &TrainConfig, step: usize, cycle: usize) -> f64 {
    match cfg.schedule {
        super::Schedule::Cosine => cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / cycle as f64).cos()),
        super::Schedule::Constant => cfg.lr,
    }
}

/// The features on disk with what an epoch needs to standardise and batch them.
struct Streamed<'a> {
    file: &'a FeatureFile,
    mean: &'a Tensor,
    std: &'a Tensor,
    labels: &'a Tensor,
    batch: usize,
    classes: i64,
    /// Each class's weight in the loss (`--class-weight`).
    class_weights: Option<&'a Tensor>,
    /// Consecutive validation rows averaged into one picture's logits.
    judged_views: i64,
}

impl Streamed<'_> {
    /// One epoch over the rows where `keep` is true: blocks of rows in a random order, read a
    /// group at a time and shuffled together into minibatches; step `s` of the epoch at
    /// learning rate `lr_at(s)`. Returns the summed loss and the correct predictions.
    fn epoch(&self, model: &mut Model, keep: &[bool], l2: f64, lr_at: impl Fn(usize) -> f64, rng: &mut ChaCha8Rng) -> Result<(f64, i64)> {
        let file = self.file;
        let mut order: Vec<usize> = (0..file.rows.div_ceil(BLOCK_ROWS)).collect();
        order.shuffle(rng);
        let (mut loss, mut correct, mut step) = (0.0, 0i64, 0);
        for group in order.chunks(GROUP_BLOCKS) {
            let mut parts = Vec::with_capacity(group.len());
            let mut rows = Vec::new();
            for &blk in group {
                let (s, len) = (blk * BLOCK_ROWS, BLOCK_ROWS.min(file.rows - blk * BLOCK_ROWS));
                let local: Vec<usize> = (s..s + len).filter(|&r| keep[r]).collect();
                if local.is_empty() {
                    continue;
                }
                let idx: Vec<i64> = local.iter().map(|&r| (r - s) as i64).collect();
                parts.push(file.read(s, len)?.index_select(0, &Tensor::from_slice(&idx)));
                rows.extend(local.iter().map(|&r| r as i64));
            }
            if rows.is_empty() {
                continue;
            }
            let mut perm: Vec<usize> = (0..rows.len()).collect();
            perm.shuffle(rng);
            let perm_t = Tensor::from_slice(&perm.iter().map(|&p| p as i64).collect::<Vec<_>>());
            let x = (Tensor::cat(&parts, 0).index_select(0, &perm_t) - self.mean) / self.std;
            let y = self.labels.index_select(0, &Tensor::from_slice(&rows).index_select(0, &perm_t));
            let n = rows.len() as i64;
            for s in (0..n).step_by(self.batch) {
                let len = (self.batch as i64).min(n - s);
                let (l, c) = model.step(&x.narrow(0, s, len), &y.narrow(0, s, len), self.classes, self.class_weights, l2, lr_at(step));
                loss += l;
                correct += c;
                step += 1;
            }
        }
        Ok((loss, correct))
    }

    /// The model's logits `[pictures, classes]` of the validation rows (where `keep` is true),
    /// each run of `judged_views` rows (one picture's judged views) averaged, and their labels.
    /// Validation pictures are a few per class: their logits fit in memory.
    fn logits(&self, model: &Model, keep: &[bool]) -> Result<(Tensor, Tensor)> {
        let (mut logits, mut labels) = (Vec::new(), Vec::new());
        self.file.pass(keep, |rows, x| {
            logits.push(model.logits(&((x - self.mean) / self.std)));
            labels.push(self.labels.index_select(0, &Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>())));
        })?;
        let (logits, labels) = (Tensor::cat(&logits, 0), Tensor::cat(&labels, 0));
        let g = self.judged_views;
        if g == 1 {
            return Ok((logits, labels));
        }
        Ok((logits.view([-1, g, self.classes]).mean_dim(1, false, Kind::Float), labels.view([-1, g]).select(1, 0)))
    }
}

/// Whether `train` should stream a features file of `bytes` bytes: `LASTLAYER_HEAD_STREAM` =
/// `always` or `never`, else when the in-memory trainer's copies (about three times the file)
/// would not fit in half of the available memory.
pub fn should_stream(bytes: u64) -> bool {
    match std::env::var("LASTLAYER_HEAD_STREAM").as_deref() {
        Ok("always") => true,
        Ok("never") => false,
        _ => available_memory().is_some_and(|avail| bytes.saturating_mul(3) > avail / 2),
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_safetensors;

    /// Three separable classes in 32 dimensions, class-sorted rows (as a folder's are).
    fn blobs(n_per: i64) -> (Tensor, Tensor) {
        tch::manual_seed(3);
        let centers = Tensor::randn([3, 32], (Kind::Float, tch::Device::Cpu)) * 3.0 + 5.0;
        let y = Tensor::arange(3, (Kind::Int64, tch::Device::Cpu)).repeat_interleave_self_int(n_per, 0, None);
        let x = centers.index_select(0, &y) + Tensor::randn([3 * n_per, 32], (Kind::Float, tch::Device::Cpu));
        (x, y)
    }

    #[test]
    fn streamed_head_learns_class_sorted_rows_read_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let (x, y) = blobs(700);
        write_safetensors(&path, &[("features", &x), ("labels", &y)]).unwrap();
        let f = FeatureFile::open(&path).unwrap();
        assert_eq!((f.rows, f.width), (2100, 32));
        assert!(f.read(1000, 7).unwrap().equal(&x.narrow(0, 1000, 7)));
        for auto in [true, false] {
            let cfg = TrainConfig { weight_decay_auto: auto, weight_decay: 1e-4, epochs: 8, ..TrainConfig::default() };
            let (head, report) = train_head_streamed(&path, 3, &cfg, &ViewLayout::single(), &Progress::hidden()).unwrap();
            let acc = head.logits(&x).argmax(-1, false).eq_tensor(&y).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
            assert!(acc > 0.97, "auto {auto}: accuracy {acc}");
            assert_eq!(report.train_rows + report.val_rows, 2100);
            assert!(report.best_val_accuracy > 0.97, "{report:?}");
        }
    }

    #[test]
    fn validation_pictures_are_judged_on_the_mean_of_their_judged_views_as_in_memory() {
        // Two views a picture: view 0 is noise, view 1 carries the class. Judged on view 0
        // alone, validation is near chance (1/3); on the mean of views 0 and 1 (`--tta flip`
        // with a mirror view), it sees the class. Streamed and in memory alike.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let (signal, y) = blobs(200);
        tch::manual_seed(5);
        let noise = Tensor::randn([600, 32], (Kind::Float, tch::Device::Cpu)) * 3.0 + 5.0;
        let x = Tensor::stack(&[noise, signal], 1).view([1200, 32]);
        let y = y.repeat_interleave_self_int(2, 0, None);
        write_safetensors(&path, &[("features", &x), ("labels", &y)]).unwrap();
        let cfg = TrainConfig { val_fraction: 0.25, refit: false, ..TrainConfig::default() };
        let mut accuracy = Vec::new();
        for validate_on in [vec![0], vec![0, 1]] {
            let layout = ViewLayout { views: 2, validate_on };
            let (_, streamed) = train_head_streamed(&path, 3, &cfg, &layout, &Progress::hidden()).unwrap();
            let (_, memory) = super::super::train_head_views(&x, &y, 3, &cfg, &layout, &Progress::hidden()).unwrap();
            assert_eq!((streamed.train_rows, streamed.val_rows), (900, 150), "{streamed:?}");
            accuracy.push((layout.validate_on, streamed.best_val_accuracy, memory.best_val_accuracy));
        }
        println!("validation accuracy (judged views, streamed, in memory): {accuracy:?}");
        let [(_, s0, m0), (_, s01, m01)] = [accuracy[0].clone(), accuracy[1].clone()];
        assert!(s0 < 0.6 && m0 < 0.6, "{accuracy:?}");
        assert!(s01 > 0.9 && m01 > 0.9, "{accuracy:?}");
    }

    #[test]
    fn headers_with_impossible_shapes_are_refused_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        for header in [
            r#"{"features":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]},"labels":{"dtype":"I64","shape":[-1],"data_offsets":[0,0]}}"#,
            r#"{"features":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]},"labels":{"dtype":"I64","shape":[4611686018427387904],"data_offsets":[0,0]}}"#,
            r#"{"features":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]},"labels":{"dtype":"I64","shape":[1],"data_offsets":[4,99]}}"#,
            r#"not json"#,
        ] {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(&[0u8; 12]);
            std::fs::write(&path, &bytes).unwrap();
            let err = FeatureFile::open(&path).unwrap_err().to_string();
            assert!(err.contains("features.safetensors"), "{header}: {err}");
        }
    }

    #[test]
    fn a_file_that_is_not_features_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.safetensors");
        let x = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        write_safetensors(&path, &[("features", &x)]).unwrap();
        let err = FeatureFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("features.safetensors") && err.contains("labels"), "{err}");
    }
}
