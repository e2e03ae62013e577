//! The new last layer: a linear softmax classifier trained on cached features only, and its
//! evaluation (accuracy, balanced accuracy, macro F1, per-class recall, confusion matrix,
//! calibration error).
//!
//! **Calibration.** Every head path (tuned, fixed penalty, streamed) fits a temperature on the
//! validation split, the logit scale `s = 1 / T` in [0.05, 20] that minimises the validation
//! cross-entropy of `s · logits` (temperature scaling; `report.logit_scale` in head.json), and
//! folds it into the saved weights: `head.safetensors`, and so `predict`, `serve` and both
//! exports, give the calibrated probabilities `softmax(s · logits)`. `eval` reports the
//! expected calibration error on test before (`s` taken out) and after it.

pub mod class_weight;
pub mod lbfgs;
mod metrics;
mod path;
mod streamed;
mod train;
pub mod unknown;

pub use class_weight::{class_weights, weighted_cross_entropy, ClassWeight};
pub use metrics::{evaluate, evaluate_logits, reliability, Calibration, ClassAccuracy, ConfusionScores, Evaluation, ReliabilityBin, ECE_BINS};
pub use path::{
    L2_PATH, L2_PATIENCE_STEPS, PATH_GRADIENT_TOL, PATH_LBFGS_ITERATIONS, PATH_LBFGS_MAX_ITERATIONS, PATH_LBFGS_ROW_ITERATIONS, REFIT_GRADIENT_TOL, REFIT_LBFGS_ITERATIONS,
    REFIT_LBFGS_MAX_ITERATIONS, REFIT_LBFGS_ROW_ITERATIONS, THREADED_ELEMENTS,
};
pub use streamed::{evaluate_streamed, should_stream, train_head_streamed, FeatureFile, BLOCK_ROWS, GROUP_BLOCKS, L2_BATCH_ROWS, L2_EPOCHS_PER_STEP, L2_UPDATES_PER_STEP};
pub use train::{train_head, train_head_l2, train_head_views, EpochRecord, HistoryUnit, OptimizerKind, RefitRecord, Schedule, TrainConfig, TrainReport, ViewLayout};

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// `logits = features · weightᵀ + bias`, on raw (unstandardised) backbone features.
#[derive(Debug)]
pub struct LinearHead {
    /// `[classes, feature_width]`.
    pub weight: Tensor,
    /// `[classes]`.
    pub bias: Tensor,
}

impl LinearHead {
    /// The head on raw features of one trained on standardised features `(x - mean) / std`,
    /// with weights `w`, `b` and the logit scale (inverse temperature) `scale` folded in:
    /// `W' = s · W / std`, `b' = s · b - W' · mean`.
    pub(crate) fn unstandardised(w: &Tensor, b: &Tensor, scale: f64, mean: &Tensor, std: &Tensor) -> LinearHead {
        let weight = w * scale / std.unsqueeze(0);
        let bias = b * scale - weight.matmul(mean);
        LinearHead { weight, bias }
    }

    /// The same head with its tensors on the CPU (where it is saved and used).
    pub(crate) fn into_cpu(self) -> LinearHead {
        LinearHead { weight: self.weight.to_device(tch::Device::Cpu), bias: self.bias.to_device(tch::Device::Cpu) }
    }

    /// Class scores for `[N, D]` features.
    pub fn logits(&self, features: &Tensor) -> Tensor {
        tch::no_grad(|| features.to_kind(Kind::Float).matmul(&self.weight.tr()) + &self.bias)
    }

    /// Class probabilities for `[N, D]` features.
    pub fn probabilities(&self, features: &Tensor) -> Tensor {
        self.logits(features).softmax(-1, Kind::Float)
    }

    /// Number of classes.
    pub fn classes(&self) -> i64 {
        self.weight.size()[0]
    }

    /// Feature width it expects.
    pub fn feature_width(&self) -> i64 {
        self.weight.size()[1]
    }

    /// Writes `weight` and `bias` (f32) as safetensors, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_safetensors(path, &[("weight", &self.weight), ("bias", &self.bias)])
    }

    /// Reads a head written by [`LinearHead::save`], checking names, shapes and dtypes.
    pub fn load(path: &Path, classes: i64, feature_width: i64) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_input(path, format!("cannot read as safetensors ({e})")))?;
        let get = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| Error::bad_input(path, format!("has no '{name}' tensor; is it a lastlayer head?")))?;
            if t.size() != shape {
                return Err(Error::bad_input(path, format!("tensor '{name}' has shape {:?}, head.json implies {shape:?}", t.size())));
            }
            if t.kind() != Kind::Float {
                return Err(Error::bad_input(path, format!("tensor '{name}' has dtype {:?}, expected f32", t.kind())));
            }
            Ok(t)
        };
        Ok(LinearHead { weight: get("weight", &[classes, feature_width])?, bias: get("bias", &[classes])? })
    }
}
