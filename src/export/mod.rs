//! The run folder: what a trained head needs to be used later, without lastlayer's cache.
//!
//! - `head.safetensors`: `weight` `[classes, feature_width]` and `bias` `[classes]`, f32,
//!   applied to the backbone's raw pooled features: `logits = features · weightᵀ + bias`;
//! - `head.json` ([`HeadCard`]): class names, feature width, the backbone (name, Hub repo,
//!   revision, weights' sha256, precision), the exact preprocessing, the data and training
//!   settings, and the metrics;
//! - `metrics.json`: the metrics and the per-epoch history alone, for scripts;
//! - `curves.png`, `confusion.png`, `recall.png` and `reliability.png` (see [`plots`]).

pub mod onnx;
pub mod plots;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::Precision;
use crate::data::preprocess::Preprocessing;
use crate::data::sample::Subset;
use crate::data::views::{Augment, Tta};
use crate::data::DataSpec;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_json_atomic;
use crate::head::{Evaluation, LinearHead, TrainConfig, TrainReport};
use crate::backbone::traced::TracedModule;
use crate::backbone::Architecture;
use crate::hub::WeightsOrigin;

/// `format` of every `head.json`.
pub const HEAD_FORMAT: &str = "lastlayer-head";
/// Its version.
pub const HEAD_FORMAT_VERSION: u32 = 1;

/// The backbone a head belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneCard {
    /// Registry name.
    pub model: String,
    /// Architecture.
    pub architecture: Architecture,
    /// Hub repository of the registry entry.
    pub hub_repo: String,
    /// Commit the weights were taken at (Hub weights).
    pub revision: Option<String>,
    /// sha256 of the weights file.
    pub weights_sha256: String,
    /// Where the weights came from.
    pub weights: WeightsOrigin,
    /// Precision the features were computed in.
    pub precision: Precision,
}

/// The data a head was trained and tested on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCard {
    /// `--data` and friends.
    pub spec: DataSpec,
    /// The sample of each split.
    pub sample: Subset,
    /// Its seed.
    pub sample_seed: u64,
    /// Rows of train used (training + validation).
    pub train_rows: usize,
    /// Rows of test.
    pub test_rows: usize,
    /// `--augment`: the views of each training picture (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// `--tta`: test features averaged with their mirror's; predict, serve and the exports do
    /// the same (absent: none).
    #[serde(default, skip_serializing_if = "Tta::is_none")]
    pub tta: Tta,
}

/// Headline figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Best validation accuracy (the epoch kept).
    pub val_accuracy: f64,
    /// The full test evaluation.
    pub test: Evaluation,
}

/// `head.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadCard {
    /// Always [`HEAD_FORMAT`].
    pub format: String,
    /// [`HEAD_FORMAT_VERSION`].
    pub format_version: u32,
    /// Class names, in output order.
    pub classes: Vec<String>,
    /// Width of the features the head takes.
    pub feature_width: i64,
    /// The backbone.
    pub backbone: BackboneCard,
    /// How pictures become the backbone's input.
    pub preprocessing: Preprocessing,
    /// The data.
    pub data: DataCard,
    /// Training settings.
    pub training: TrainConfig,
    /// What training did.
    pub report: TrainReport,
    /// Results.
    pub metrics: Metrics,
    /// When it was written.
    pub created_at: String,
    /// lastlayer's version.
    pub lastlayer_version: String,
    /// The in-class score's constants and threshold (`unknown.safetensors` holds its
    /// tensors); absent in runs trained before it existed, or without a validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<crate::head::unknown::UnknownCard>,
}

/// The files of a run folder.
#[derive(Debug, Clone)]
pub struct RunFiles {
    /// `head.safetensors`.
    pub head: PathBuf,
    /// `head.json`.
    pub card: PathBuf,
    /// `metrics.json`.
    pub metrics: PathBuf,
}

impl RunFiles {
    /// The files in `run_dir`.
    pub fn in_dir(run_dir: &Path) -> Self {
        RunFiles { head: run_dir.join("head.safetensors"), card: run_dir.join("head.json"), metrics: run_dir.join("metrics.json") }
    }
}

/// Writes `head.safetensors`, `metrics.json` and, last, `head.json`, each atomically.
pub fn write_run(run_dir: &Path, head: &LinearHead, card: &HeadCard) -> Result<RunFiles> {
    std::fs::create_dir_all(run_dir).at(run_dir)?;
    let files = RunFiles::in_dir(run_dir);
    head.save(&files.head)?;
    let metrics = serde_json::json!({
        "test_accuracy": card.metrics.test_accuracy,
        "val_accuracy": card.metrics.val_accuracy,
        "test": card.metrics.test,
        "best_epoch": card.report.best_epoch,
        "history": card.report.history,
    });
    write_json_atomic(&files.metrics, &metrics)?;
    write_png(&run_dir.join("curves.png"), |p| plots::training_curves(&card.report, p))?;
    write_png(&run_dir.join("confusion.png"), |p| plots::confusion_matrix(&card.metrics.test, p))?;
    write_png(&run_dir.join("recall.png"), |p| plots::class_recall(&card.metrics.test, p))?;
    if card.metrics.test.calibration.is_some() {
        write_png(&run_dir.join("reliability.png"), |p| plots::reliability_diagram(&card.metrics.test, p))?;
    }
    write_json_atomic(&files.card, card)?;
    Ok(files)
}

/// Draws a PNG atomically: plotters picks the encoder by extension, so it draws into a
/// `.png`-named temporary file in the same folder, which is then renamed into place.
fn write_png(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".plot.").suffix(".png").tempfile_in(dir).at(dir)?;
    draw(tmp.path())?;
    crate::fsutil::readable_by_all(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    Ok(())
}

/// Reads a run folder's `head.json` and `head.safetensors`, checking they agree.
pub fn read_run(run_dir: &Path) -> Result<(HeadCard, LinearHead)> {
    let files = RunFiles::in_dir(run_dir);
    if !files.card.is_file() {
        return Err(Error::bad_input(run_dir, "no head.json here: not a lastlayer run folder (or its training did not finish)"));
    }
    let text = std::fs::read(&files.card).at(&files.card)?;
    let card: HeadCard = serde_json::from_slice(&text).map_err(|e| Error::bad_input(&files.card, format!("not a valid head.json ({e})")))?;
    if card.format != HEAD_FORMAT || card.format_version != HEAD_FORMAT_VERSION {
        return Err(Error::bad_input(
            &files.card,
            format!("format {} v{} is not {HEAD_FORMAT} v{HEAD_FORMAT_VERSION}", card.format, card.format_version),
        ));
    }
    let head = LinearHead::load(&files.head, card.classes.len() as i64, card.feature_width)?;
    Ok((card, head))
}

/// The run's in-class score ([`crate::head::unknown`]), when it was trained with one.
pub fn read_unknown(run_dir: &Path, card: &HeadCard) -> Result<Option<crate::head::unknown::UnknownScore>> {
    match &card.unknown {
        None => Ok(None),
        Some(u) => {
            let path = run_dir.join(&u.file);
            if !path.is_file() {
                return Err(Error::bad_input(&path, "missing, though head.json has an unknown threshold: copy the whole run folder, or retrain"));
            }
            crate::head::unknown::UnknownScore::load(&path, u.clone(), card.classes.len() as i64, card.feature_width).map(Some)
        }
    }
}

/// `lastlayer export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// TorchScript, for `torch.jit.load` (Python) and `torch::jit::load` (C++).
    Torchscript,
    /// ONNX (opset 17), for onnxruntime and the other ONNX runtimes.
    Onnx,
}

impl ExportFormat {
    /// The file name an export is written to in the run folder by default.
    pub fn default_file_name(self) -> &'static str {
        match self {
            ExportFormat::Torchscript => "model.pt",
            ExportFormat::Onnx => "model.onnx",
        }
    }
}

/// The whole classifier as one TorchScript module: input `[N, 3, S, S]` float32 RGB values in
/// 0-255, already resized (and cropped) as `head.json`'s `preprocessing` says; output `[N,
/// classes]` probabilities. Normalisation, the backbone (fp32, BatchNorm folded) and the head
/// are inside, and with `--tta flip` the mirror image's features averaged in. Written
/// atomically.
///
/// With an unknown score (`unknown`), the module returns a tuple: the probabilities and the
/// in-class score `[N]` (higher = more like the training classes; below `card.unknown`'s
/// threshold, unknown), as `predict` computes them.
pub fn export_torchscript(
    backbone: &crate::backbone::Backbone,
    head: &LinearHead,
    unknown: Option<&crate::head::unknown::UnknownScore>,
    card: &HeadCard,
    out: &Path,
) -> Result<()> {
    let size = card.preprocessing.input_size;
    let example = tch::Tensor::full([2, 3, size, size], 128.0, (tch::Kind::Float, tch::Device::Cpu));
    // Every constant is made before tracing: tensors created from Rust data inside a trace are
    // recorded without their values. One run outside the trace computes the folded BatchNorm
    // weights, which then enter the trace as constants too.
    let (mean, scale) = card.preprocessing.normalization();
    let _ = backbone.features(&card.preprocessing.normalize(&example))?;
    let mut failure = None;
    let tta = card.data.tta;
    let forward = |input: &tch::Tensor| -> Vec<tch::Tensor> {
        let x = (input - &mean) * &scale;
        match backbone.features_with(&x, tta) {
            Ok(f) => {
                let mut outputs = vec![head.probabilities(&f)];
                if let Some(u) = unknown {
                    outputs.push(tch::no_grad(|| u.scores_traceable(&f)));
                }
                outputs
            }
            Err(e) => {
                failure = Some(e);
                vec![input.shallow_clone()]
            }
        }
    };
    let module = TracedModule::trace_outputs(c"lastlayer_classifier", "the classifier", &example, forward)?;
    if let Some(e) = failure {
        return Err(e);
    }
    // Serialised in memory and written here: libtorch's own file writer aborts the process
    // when a write fails (a full disk), where this reports the error and leaves no file.
    let bytes = module.to_bytes()?;
    crate::fsutil::write_atomic_with(out, |tmp| std::fs::write(tmp, &bytes).at(tmp))
}
