//! `eval`: a finished run's head scored again on its test split.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{features, FeatureRequest, Session, SplitFeatures, DEFAULT_CHUNK_ROWS};
use crate::backbone::PrecisionChoice;
use crate::error::{Error, Result};
use crate::export::{read_run, HeadCard, RunFiles};
use crate::head::Evaluation;
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

/// Re-evaluates a run's head on its test split (from the cache, extracting if needed).
pub fn evaluate_run(session: &Session, run_dir: &Path, batch_size: Option<usize>) -> Result<EvalOutcome> {
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
    Ok(EvalOutcome { run_dir: run_dir.to_path_buf(), test_accuracy: test.accuracy, test, features: split })
}
