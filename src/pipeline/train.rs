//! `train` and `run`: features, a head, its test evaluation, and the run folder.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::{features, FeatureRequest, FeatureSet, Finished, Session, SplitFeatures};
use crate::data::sample::stratified_holdout;
use crate::data::views::average_views;
use crate::error::{Error, IoContext, Result};
use crate::head::unknown::{coverage, Coverage, UnknownCard, UnknownScore, UNKNOWN_FILE};
use crate::progress::Progress;
use crate::export::{write_run, BackboneCard, DataCard, HeadCard, Metrics, HEAD_FORMAT, HEAD_FORMAT_VERSION};
use crate::data::views::{Augment, Tta};
use crate::head::{evaluate_logits, evaluate_streamed, ClassWeight, FeatureFile, should_stream, train_head_streamed, train_head_views, Evaluation, LinearHead, TrainConfig, TrainReport, ViewLayout};
use crate::hub::WeightsOrigin;

/// What [`train`] did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Test accuracy.
    pub test_accuracy: f64,
    /// Best validation accuracy.
    pub val_accuracy: f64,
    /// The full test evaluation.
    pub test: Evaluation,
    /// Training report.
    pub report: TrainReport,
    /// The features used.
    pub features: FeatureSet,
    /// `head.safetensors`.
    pub head: PathBuf,
    /// `head.json`.
    pub head_json: PathBuf,
    /// The unknown threshold (absent without a validation split).
    pub unknown: Option<UnknownCard>,
    /// What the threshold does to the test split (every test picture is of a trained class);
    /// absent when the test features are streamed from disk.
    pub test_coverage: Option<Coverage>,
}

/// Gets train and test features (extracting what the cache lacks), trains a head, evaluates it
/// on test, and writes the run folder `out`.
pub fn train(session: &Session, req: &FeatureRequest, cfg: &TrainConfig, out: &Path) -> Result<TrainOutcome> {
    cfg.validate()?;
    if out.is_file() {
        return Err(Error::usage("--out", format!("{} is a file; give a folder for the run", out.display())));
    }
    let device = head_device(session)?;
    let req = FeatureRequest { splits: vec!["train".into(), "test".into()], ..req.clone() };
    let fs = features(session, &req)?;
    let train_split = fs.split("train").expect("train was requested");
    if cfg.class_weight == ClassWeight::Balanced {
        every_class_has_a_picture(&FeatureFile::open(&train_split.features)?.labels, &fs.classes)?;
    }
    let unknown;
    let (head, report) = if streams(train_split) {
        tracing::info!("head: trained on the CPU, {} rows read from {} in minibatches (streamed)", train_split.rows, train_split.features.display());
        let trained = train_head_streamed(&train_split.features, fs.classes.len(), cfg, &view_layout(&fs), &session.progress)?;
        unknown = fit_unknown_streamed(&train_split.features, &fs, cfg, &trained.0)?;
        trained
    } else {
        let (xtr, ytr) = train_split.load()?;
        tracing::info!("head: trained on {}, {} x {} features", where_(device), xtr.size()[0], xtr.size().get(1).copied().unwrap_or(0));
        let trained = train_head_views(&xtr.to_device(device), &ytr, fs.classes.len(), cfg, &view_layout(&fs), &session.progress)?;
        unknown = fit_unknown(&xtr, &ytr, &fs, cfg, &trained.0, device)?;
        trained
    };
    let test_split = fs.split("test").expect("test was requested");
    let test = evaluate_split(&head, test_split, &fs.classes, report.logit_scale)?;
    let test_coverage = match &unknown {
        Some(u) if !streams(test_split) => {
            let (x, y) = test_split.load()?;
            Some(test_coverage_of(&head, u, &x, &y)?)
        }
        _ => None,
    };
    if let (Some(u), Some(c)) = (&unknown, &test_coverage) {
        tracing::info!(
            "unknown threshold {:.4} keeps {:.1}% of validation pictures (--keep {}); on test: {:.1}% kept, accuracy on them {:.2}% (all {:.2}%)",
            u.card.threshold,
            100.0 * u.card.validation_kept,
            u.card.keep,
            100.0 * c.kept,
            100.0 * c.accuracy_kept,
            100.0 * c.accuracy_all
        );
    }
    std::fs::create_dir_all(out).at(out)?;
    match &unknown {
        Some(u) => u.save(&out.join(UNKNOWN_FILE))?,
        None => {
            // A retrained run without a score must not keep an old one's file.
            let _ = std::fs::remove_file(out.join(UNKNOWN_FILE));
        }
    }
    let entry = session.registry.get(&req.model)?;
    let card = HeadCard {
        format: HEAD_FORMAT.into(),
        format_version: HEAD_FORMAT_VERSION,
        classes: fs.classes.clone(),
        feature_width: head.feature_width(),
        backbone: BackboneCard {
            model: entry.name.clone(),
            architecture: entry.architecture,
            hub_repo: entry.hub_repo.clone(),
            revision: match &fs.weights {
                WeightsOrigin::Hub { revision, .. } => Some(revision.clone()),
                WeightsOrigin::Local { .. } => None,
            },
            weights_sha256: fs.weights_sha256.clone(),
            weights: fs.weights.clone(),
            precision: fs.precision,
        },
        preprocessing: fs.preprocessing.clone(),
        data: DataCard {
            spec: req.data.clone(),
            sample: req.subset,
            sample_seed: req.sample_seed,
            train_rows: fs.split("train").map_or(0, |s| s.rows),
            test_rows: fs.split("test").map_or(0, |s| s.rows),
            augment: fs.augment,
            tta: fs.tta,
        },
        training: cfg.clone(),
        report: report.clone(),
        metrics: Metrics { test_accuracy: test.accuracy, val_accuracy: report.best_val_accuracy, test: test.clone() },
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        lastlayer_version: env!("CARGO_PKG_VERSION").into(),
        unknown: unknown.as_ref().map(|u| u.card.clone()),
    };
    let files = write_run(out, &head, &card)?;
    Ok(TrainOutcome {
        run_dir: out.to_path_buf(),
        test_accuracy: test.accuracy,
        val_accuracy: report.best_val_accuracy,
        test,
        report,
        features: fs,
        head: files.head,
        head_json: files.card,
        unknown: unknown.map(|u| u.card),
        test_coverage,
    })
}

/// Fits the in-class score ([`crate::head::unknown`]) on the training pictures outside the
/// validation split (the head's own, drawn by picture), with the head trained without them as
/// its score head, and its threshold on the validation pictures. None without a validation
/// split.
fn fit_unknown(x: &Tensor, y: &Tensor, fs: &FeatureSet, cfg: &TrainConfig, head: &LinearHead, device: Device) -> Result<Option<UnknownScore>> {
    let layout = view_layout(fs);
    let v = layout.views.max(1);
    let labels: Vec<i64> = Vec::<i64>::try_from(y.to_kind(Kind::Int64)).map_err(Error::Torch)?;
    let picture_labels: Vec<i64> = labels.iter().step_by(v).copied().collect();
    let (fit_pictures, val_pictures) = stratified_holdout(&picture_labels, cfg.val_fraction, cfg.seed);
    if val_pictures.is_empty() || fit_pictures.is_empty() {
        tracing::warn!("no validation split (--val-fraction {}): no unknown threshold; predict answers every picture with a class", cfg.val_fraction);
        return Ok(None);
    }
    let pictures = if v > 1 { average_views(x, v, &layout.validate_on) } else { x.shallow_clone() };
    let index = |p: &[usize]| Tensor::from_slice(&p.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let fit_x = pictures.index_select(0, &index(&fit_pictures));
    let fit_y = Tensor::from_slice(&picture_labels).index_select(0, &index(&fit_pictures));
    let val_x = pictures.index_select(0, &index(&val_pictures));
    // The score head must not have seen the validation pictures: with a refit, the head as it
    // was before it (the same training, deterministic, without the refit).
    let score_head = if cfg.refit {
        let before = TrainConfig { refit: false, ..cfg.clone() };
        train_head_views(&x.to_device(device), y, fs.classes.len(), &before, &layout, &Progress::hidden())?.0.into_cpu()
    } else {
        LinearHead { weight: head.weight.to_device(Device::Cpu).copy(), bias: head.bias.to_device(Device::Cpu).copy() }
    };
    UnknownScore::fit(&fit_x, &fit_y, fs.classes.len(), &val_x, &score_head, cfg.keep).map(Some)
}

/// Pictures of each side (fit, validation) the streamed score reads at most, evenly spaced.
const STREAMED_PICTURES: usize = 20_000;

/// [`fit_unknown`] for training features streamed from disk: the class means and covariance
/// from at most [`STREAMED_PICTURES`] of the fit pictures, the threshold from at most as many
/// validation pictures (evenly spaced in file order), read from the file; the score head
/// trained streamed as the run's head is, without its refit.
fn fit_unknown_streamed(path: &Path, fs: &FeatureSet, cfg: &TrainConfig, head: &LinearHead) -> Result<Option<UnknownScore>> {
    let file = FeatureFile::open(path)?;
    let layout = view_layout(fs);
    let v = layout.views.max(1);
    let picture_labels: Vec<i64> = file.labels.iter().step_by(v).copied().collect();
    let (fit_pictures, val_pictures) = stratified_holdout(&picture_labels, cfg.val_fraction, cfg.seed);
    if val_pictures.is_empty() || fit_pictures.is_empty() {
        tracing::warn!("no validation split (--val-fraction {}): no unknown threshold; predict answers every picture with a class", cfg.val_fraction);
        return Ok(None);
    }
    let spaced = |p: &[usize]| -> Vec<usize> {
        let m = p.len().min(STREAMED_PICTURES);
        (0..m).map(|i| p[i * p.len() / m]).collect()
    };
    let read = |p: &[usize]| -> Result<Tensor> {
        let rows = p
            .iter()
            .map(|&q| {
                let x = file.read(q * v, v)?;
                Ok(if v > 1 { average_views(&x, v, &layout.validate_on) } else { x })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0))
    };
    let (fit_pictures, val_pictures) = (spaced(&fit_pictures), spaced(&val_pictures));
    let fit_x = read(&fit_pictures)?;
    let fit_y = Tensor::from_slice(&fit_pictures.iter().map(|&p| picture_labels[p]).collect::<Vec<_>>());
    let val_x = read(&val_pictures)?;
    let score_head = if cfg.refit {
        let before = TrainConfig { refit: false, ..cfg.clone() };
        train_head_streamed(path, fs.classes.len(), &before, &layout, &Progress::hidden())?.0
    } else {
        LinearHead { weight: head.weight.copy(), bias: head.bias.copy() }
    };
    UnknownScore::fit(&fit_x, &fit_y, fs.classes.len(), &val_x, &score_head, cfg.keep).map(Some)
}

/// What `unknown`'s threshold does to pictures `x` of the trained classes `y`, judged by `head`.
pub(super) fn test_coverage_of(head: &LinearHead, unknown: &UnknownScore, x: &Tensor, y: &Tensor) -> Result<Coverage> {
    let scores: Vec<f64> = unknown.verdicts(x)?.iter().map(|v| v.score).collect();
    let predicted = head.logits(x).argmax(-1, false);
    let correct: Vec<bool> = Vec::<bool>::try_from(predicted.eq_tensor(&y.to_kind(Kind::Int64))).map_err(Error::Torch)?;
    Ok(coverage(&scores, &correct, unknown.card.threshold))
}

/// `--class-weight balanced` weighs a class by the inverse of its training pictures: one
/// without any is an error naming it (the head's own check only knows its number).
pub(super) fn every_class_has_a_picture(labels: &[i64], classes: &[String]) -> Result<()> {
    let mut seen = vec![false; classes.len()];
    for &l in labels {
        if let Some(s) = usize::try_from(l).ok().and_then(|l| seen.get_mut(l)) {
            *s = true;
        }
    }
    match seen.iter().position(|s| !s) {
        Some(c) => Err(Error::usage(
            "--class-weight",
            format!("class '{}' has no training picture, so it cannot be balanced; add pictures of it, take a larger sample, or use --class-weight none", classes[c]),
        )),
        None => Ok(()),
    }
}

/// Whether `split`'s features are too big for memory, so that its head is trained, and its
/// evaluation computed, from the file a block of rows at a time (see [`should_stream`]).
pub(super) fn streams(split: &SplitFeatures) -> bool {
    should_stream(std::fs::metadata(&split.features).map(|m| m.len()).unwrap_or(0))
}

/// `head` scored on `split`: loaded into memory, or streamed from its file when it is too big.
/// `logit_scale` is the temperature folded into the head, for the calibration error before it.
pub(super) fn evaluate_split(head: &LinearHead, split: &SplitFeatures, classes: &[String], logit_scale: Option<f64>) -> Result<Evaluation> {
    if streams(split) {
        tracing::info!("{} features: {} rows scored from {} in blocks (streamed)", split.split, split.rows, split.features.display());
        return evaluate_streamed(head, &split.features, classes, logit_scale);
    }
    let (x, y) = split.load()?;
    Ok(evaluate_logits(&head.logits(&x), &y, classes, logit_scale))
}

/// Where a head trains on features in memory: the CPU, whatever `--device` is, unless
/// `LASTLAYER_HEAD_DEVICE=backbone` puts it on the backbone's device, so that `benches/gpu.sh`
/// can time the two (`=cpu` is the default). The streamed head stays on the CPU.
pub(super) fn head_device(session: &Session) -> Result<Device> {
    match std::env::var("LASTLAYER_HEAD_DEVICE").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => Ok(Device::Cpu),
        Ok("backbone") => session.device.resolve(),
        Ok(other) => Err(Error::usage("LASTLAYER_HEAD_DEVICE", format!("'{other}' is neither `cpu` (the default) nor `backbone` (the device of --device)"))),
    }
}

/// A device in words, for the log.
fn where_(device: Device) -> String {
    match device {
        Device::Cpu => "the CPU".into(),
        other => format!("{other:?}"),
    }
}

/// How `fs`'s training rows relate to pictures: with `--augment`, its views; a validation
/// picture is judged as a test picture is (with `--tta flip` and a mirror view, on the mean of
/// the picture and its mirror).
pub(super) fn view_layout(fs: &FeatureSet) -> ViewLayout {
    view_layout_of(fs.augment, fs.tta)
}

/// [`view_layout`] of a run trained with `augment` and `tta`.
pub(super) fn view_layout_of(augment: Option<Augment>, tta: Tta) -> ViewLayout {
    match augment {
        None => ViewLayout::single(),
        Some(a) => ViewLayout { views: a.views(), validate_on: if a.flip && tta == Tta::Flip { vec![0, 1] } else { vec![0] } },
    }
}

impl Finished for TrainOutcome {
    fn test_accuracy(&self) -> f64 {
        self.test_accuracy
    }
}
