//! `eval`: a finished run's head scored again on its test split.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{features, FeatureRequest, Session, SplitFeatures, DEFAULT_CHUNK_ROWS};
use crate::backbone::PrecisionChoice;
use crate::error::{Error, Result};
use super::predict::{collect_pictures, Classifier, Reject};
use crate::data::load_picture;
use crate::export::{read_run, read_unknown, HeadCard, RunFiles};
use crate::head::unknown::{auroc, coverage, coverage_curve, fpr_at_95, Coverage, UnknownScore};
use crate::head::{Evaluation, LinearHead};
use crate::hub::WeightsOrigin;

/// What [`evaluate_run`] found.
#[derive(Debug, Clone, Serialize)]
pub struct EvalOutcome {
    /// The run folder.
    pub run_dir: PathBuf,
    /// Test accuracy now.
    pub test_accuracy: f64,
    /// The full evaluation.
    pub test: Evaluation,
    /// The test features used.
    pub features: SplitFeatures,
    /// What the run's unknown threshold does (absent for runs without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<UnknownEval>,
}

/// How well a score tells pictures of no trained class from the test pictures (higher = more
/// in-class for both).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Separation {
    /// Area under the ROC curve: the chance that an in-class picture scores above an unknown one.
    pub auroc: f64,
    /// The share of unknown pictures kept at the threshold that keeps 95% of the in-class ones.
    pub fpr95: f64,
}

/// `eval`'s view of the unknown threshold.
#[derive(Debug, Clone, Serialize)]
pub struct UnknownEval {
    /// The run's threshold.
    pub threshold: f64,
    /// The share of validation pictures it was chosen to keep (`--keep`).
    pub keep: f64,
    /// On the test pictures (all of trained classes): share kept, accuracy on them and on all.
    pub test: Coverage,
    /// Pictures in `--unknown-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_pictures: Option<usize>,
    /// Of those, the share answered as unknown at the threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_rejected: Option<f64>,
    /// The run's in-class score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<Separation>,
    /// The top softmax probability, the baseline (Hendrycks & Gimpel 2017).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub softmax: Option<Separation>,
    /// `coverage.png`.
    pub plot: PathBuf,
}

pub(super) fn weights_file_of(card: &HeadCard) -> Option<PathBuf> {
    match &card.backbone.weights {
        WeightsOrigin::Local { path } => Some(path.clone()),
        WeightsOrigin::Hub { .. } => None,
    }
}

/// Refuses features of other weights than those the run's head was trained on.
pub(super) fn same_weights(fs: &super::FeatureSet, card: &HeadCard, run_dir: &Path) -> Result<()> {
    if fs.weights_sha256 != card.backbone.weights_sha256 {
        return Err(Error::bad_input(
            RunFiles::in_dir(run_dir).card,
            format!(
                "the head was trained on features of weights {}, but the weights now resolve to {}",
                card.backbone.weights_sha256, fs.weights_sha256
            ),
        ));
    }
    Ok(())
}

/// Re-evaluates a run's head on its test split (from the cache, extracting if needed); with an
/// unknown threshold, what it keeps, and with `unknown_dir` (pictures of no trained class),
/// how well the run's score and the top softmax probability tell them apart.
pub fn evaluate_run(session: &Session, run_dir: &Path, batch_size: Option<usize>, unknown_dir: Option<&Path>) -> Result<EvalOutcome> {
    let (card, head) = read_run(run_dir)?;
    let req = FeatureRequest {
        model: card.backbone.model.clone(),
        data: card.data.spec.clone(),
        splits: vec!["test".into()],
        subset: card.data.sample,
        sample_seed: card.data.sample_seed,
        precision: PrecisionChoice::Fixed(card.backbone.precision),
        weights: weights_file_of(&card),
        input_size: Some(card.preprocessing.input_size),
        batch_size,
        chunk_rows: DEFAULT_CHUNK_ROWS,
        augment: None,
        tta: card.data.tta,
        shard: None,
    };
    let fs = features(session, &req)?;
    same_weights(&fs, &card, run_dir)?;
    let split = fs.split("test").expect("test was requested").clone();
    let test = super::train::evaluate_split(&head, &split, &card.classes, card.report.logit_scale)?;
    let score = read_unknown(run_dir, &card)?;
    if let Some(dir) = unknown_dir {
        if score.is_none() {
            return Err(Error::usage(
                "--unknown-dir",
                format!("{} has no unknown threshold to judge (trained before lastlayer had one): run its train command again", run_dir.display()),
            ));
        }
        if !dir.is_dir() {
            return Err(Error::bad_input(dir, "no such folder (--unknown-dir takes a folder of pictures of no trained class)"));
        }
    }
    let unknown = match &score {
        None => None,
        Some(u) if super::train::streams(&split) => {
            tracing::warn!("test features streamed from disk: the unknown threshold is not evaluated");
            let _ = u;
            None
        }
        Some(u) => Some(unknown_eval(session, run_dir, &head, u, &split, batch_size, unknown_dir)?),
    };
    Ok(EvalOutcome { run_dir: run_dir.to_path_buf(), test_accuracy: test.accuracy, test, features: split, unknown })
}

fn to_f64(t: &tch::Tensor) -> Result<Vec<f64>> {
    Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).reshape([-1])).map_err(Error::Torch)
}

fn separation(in_class: &[f64], unknown: &[f64]) -> Separation {
    Separation { auroc: auroc(in_class, unknown), fpr95: fpr_at_95(in_class, unknown) }
}

fn unknown_eval(
    session: &Session,
    run_dir: &Path,
    head: &LinearHead,
    score: &UnknownScore,
    split: &SplitFeatures,
    batch_size: Option<usize>,
    unknown_dir: Option<&Path>,
) -> Result<UnknownEval> {
    let (x, y) = split.load()?;
    let scores = to_f64(&score.scores(&x))?;
    let probs = head.probabilities(&x);
    let (top, predicted) = probs.max_dim(-1, false);
    let msp = to_f64(&top)?;
    let correct: Vec<bool> = Vec::<bool>::try_from(predicted.eq_tensor(&y.to_kind(tch::Kind::Int64))).map_err(Error::Torch)?;
    let test = coverage(&scores, &correct, score.card.threshold);
    let mut out = UnknownEval {
        threshold: score.card.threshold,
        keep: score.card.keep,
        test,
        unknown_pictures: None,
        unknown_rejected: None,
        score: None,
        softmax: None,
        plot: run_dir.join("coverage.png"),
    };
    if let Some(dir) = unknown_dir {
        let pictures = collect_pictures(&[dir.to_path_buf()])?;
        let classifier = Classifier::open_with(session, run_dir, Reject::On)?;
        let mut features = Vec::new();
        for chunk in pictures.chunks(batch_size.unwrap_or(32).max(1)) {
            let decoded = chunk.iter().map(|p| load_picture(p)).collect::<Result<Vec<_>>>()?;
            features.push(classifier.features(&decoded)?);
        }
        let xu = tch::Tensor::cat(&features, 0);
        let su = to_f64(&score.scores(&xu))?;
        let mu = to_f64(&head.probabilities(&xu).amax([-1i64].as_slice(), false))?;
        out.unknown_pictures = Some(su.len());
        out.unknown_rejected = Some(su.iter().filter(|&&s| s < score.card.threshold).count() as f64 / su.len().max(1) as f64);
        out.score = Some(separation(&scores, &su));
        out.softmax = Some(separation(&msp, &mu));
    }
    let curves = vec![
        ("lastlayer's score".to_string(), coverage_curve(&scores, &correct)),
        ("top softmax probability".to_string(), coverage_curve(&msp, &correct)),
    ];
    crate::export::plots::coverage_curves(&curves, Some((test.kept, test.accuracy_kept)), &out.plot)?;
    Ok(out)
}
