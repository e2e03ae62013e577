//! `sweep`: a grid of head settings on the same cached features, the best exported.

use std::path::Path;

use serde::Serialize;

use super::{features, train, FeatureRequest, Finished, Session, TrainOutcome};
use crate::error::{Error, Result};
use crate::head::{train_head_streamed, train_head_views, TrainConfig};
use crate::progress::Progress;

/// One setting of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Validation accuracy of the epoch kept.
    pub val_accuracy: f64,
    /// Its validation loss.
    pub val_loss: Option<f64>,
    /// The epoch kept.
    pub best_epoch: usize,
    /// Training seconds.
    pub seconds: f64,
}

/// What [`sweep`] did.
#[derive(Debug, Clone, Serialize)]
pub struct SweepOutcome {
    /// Every setting, best validation accuracy first (then lower validation loss).
    pub trials: Vec<Trial>,
    /// The best setting, retrained, evaluated on test and exported.
    pub best: TrainOutcome,
}

impl Finished for SweepOutcome {
    fn test_accuracy(&self) -> f64 {
        self.best.test_accuracy
    }
}

/// Trains a head for every setting of `grid` on the same cached features (the backbone runs
/// at most once, to fill the cache), ranks them by validation accuracy (trials are not refit),
/// and exports the best, trained again with its refit setting, to `out` (with `sweep.json`). The test split is used only for the best head's report.
pub fn sweep(session: &Session, req: &FeatureRequest, grid: &[TrainConfig], out: &Path) -> Result<SweepOutcome> {
    if grid.is_empty() {
        return Err(Error::usage("--lr", "the grid is empty"));
    }
    let device = super::train::head_device(session)?;
    let fs = features(session, req)?;
    let split = fs.split("train").ok_or_else(|| Error::usage("--split", "sweep needs the train split"))?;
    let layout = super::train::view_layout(&fs);
    if grid.iter().any(|c| c.class_weight == crate::head::ClassWeight::Balanced) {
        super::train::every_class_has_a_picture(&crate::head::FeatureFile::open(&split.features)?.labels, &fs.classes)?;
    }
    // Features too big for memory are read from the file for every trial, as `train` does.
    let in_memory = if super::train::streams(split) {
        tracing::info!("sweep: every trial reads {} rows from {} in minibatches (streamed)", split.rows, split.features.display());
        None
    } else {
        let (x, y) = split.load()?;
        Some((x.to_device(device), y))
    };
    let mut trials = Vec::with_capacity(grid.len());
    for cfg in grid {
        // A trial is judged on validation, before any refit; only the best is refit (by `train`).
        let trial = TrainConfig { refit: false, ..cfg.clone() };
        let (_, report) = match &in_memory {
            Some((x, y)) => train_head_views(x, y, fs.classes.len(), &trial, &layout, &Progress::hidden())?,
            None => train_head_streamed(&split.features, fs.classes.len(), &trial, &layout, &Progress::hidden())?,
        };
        let kept = &report.history[report.best_epoch - 1];
        tracing::info!("lr {:e} weight decay {:e}: validation accuracy {:.2}%", cfg.lr, cfg.weight_decay, 100.0 * report.best_val_accuracy);
        trials.push(Trial {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            val_accuracy: report.best_val_accuracy,
            val_loss: kept.val_loss,
            best_epoch: report.best_epoch,
            seconds: report.seconds,
        });
    }
    let order = |a: &Trial, b: &Trial| {
        b.val_accuracy.total_cmp(&a.val_accuracy).then(a.val_loss.unwrap_or(f64::MAX).total_cmp(&b.val_loss.unwrap_or(f64::MAX)))
    };
    let mut ranked: Vec<(Trial, &TrainConfig)> = trials.into_iter().zip(grid).collect();
    ranked.sort_by(|a, b| order(&a.0, &b.0));
    let best_cfg = ranked[0].1.clone();
    let trials: Vec<Trial> = ranked.into_iter().map(|(t, _)| t).collect();
    let best = train(session, req, &best_cfg, out)?;
    crate::fsutil::write_json_atomic(&out.join("sweep.json"), &trials)?;
    Ok(SweepOutcome { trials, best })
}
