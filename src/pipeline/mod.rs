//! The commands' work, end to end, one file per command family: [`features`] finds each
//! split's features in the cache or extracts them ([`extract`] runs the backbone, resumably),
//! [`train`] trains and exports a head (and [`sweep`] a grid of them), [`evaluate`] re-scores a
//! run, [`predict`] classifies pictures with one, [`export`] writes it for other runtimes, and
//! [`review_run`] finds what a run gets wrong and why (see [`crate::review`]).

mod evaluate;
mod export;
mod extract;
mod features;
mod predict;
mod review;
pub mod shard;
mod sweep;
mod train;

use std::path::PathBuf;

use crate::backbone::DeviceChoice;
use crate::error::Result;
use crate::hub::{fetch_weights, FetchOptions, Registry, ResolvedWeights};
use crate::progress::Progress;

pub use evaluate::{evaluate_run, EvalOutcome, Separation, UnknownEval};
pub use export::export;
pub use extract::extract_split;
pub use features::{features, FeatureRequest, FeatureSet, SplitFeatures, DEFAULT_CHUNK_ROWS};
pub use shard::ShardSpec;
pub use predict::{collect_pictures, predict, Answer, ClassScore, Classifier, Prediction, Preparer, Reject};
pub use review::{page_path, review_run, ReviewOptions, PAGE_FILE};
pub use sweep::{sweep, SweepOutcome, Trial};
pub use train::{train, TrainOutcome};

/// Settings shared by every command (the CLI's global flags).
#[derive(Debug, Clone)]
pub struct Session {
    /// lastlayer's cache folder (features, data, pins).
    pub cache_dir: PathBuf,
    /// No network: the caches only.
    pub offline: bool,
    /// Where the backbone runs.
    pub device: DeviceChoice,
    /// How progress is shown.
    pub progress: Progress,
    /// The model registry.
    pub registry: Registry,
}

impl Session {
    fn fetch_options(&self) -> FetchOptions {
        FetchOptions { cache_dir: self.cache_dir.clone(), offline: self.offline, progress: self.progress.clone() }
    }
}

/// An outcome whose test accuracy ends a run's `status.json`.
pub trait Finished {
    /// Test accuracy of the exported head.
    fn test_accuracy(&self) -> f64;
}

/// Downloads (or finds) and verifies a model's weights.
pub fn fetch(session: &Session, model: &str) -> Result<ResolvedWeights> {
    let entry = session.registry.get(model)?;
    fetch_weights(entry, &session.fetch_options())
}
