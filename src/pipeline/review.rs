//! `review`: a finished run's mistakes, likely label errors and duplicates, from its splits'
//! cached features (extracted first if the cache lacks them, as `eval` does), written as
//! `RUN_DIR/review.html` too. The work is in [`crate::review`]; this file finds its inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use super::evaluate::{same_weights, weights_file_of};
use super::train::streams;
use super::{features, FeatureRequest, Session, DEFAULT_CHUNK_ROWS};
use crate::backbone::PrecisionChoice;
use crate::data::content::HashIndex;
use crate::data::sample::stratified_subset;
use crate::data::{Dataset, OpenOptions, Split};
use crate::error::{Error, Result};
use crate::export::read_run;
use crate::review::page::{pictures_needed, render, thumbnail, PageLimits, Which};
use crate::review::{review, RankBy, Review, Settings, SplitData};

/// The page's file name in the run folder.
pub const PAGE_FILE: &str = "review.html";

/// What `review` is asked for.
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// Folds for the out-of-fold probabilities (K).
    pub folds: usize,
    /// How label issues are ranked.
    pub rank_by: RankBy,
    /// Near-duplicate threshold.
    pub min_similarity: f64,
    /// Write `RUN_DIR/review.html`.
    pub page: bool,
    /// Pictures per backbone batch, if features must be extracted.
    pub batch_size: Option<usize>,
}

/// Reviews the run in `run_dir` (see [`crate::review`]) and writes its page.
pub fn review_run(session: &Session, run_dir: &Path, opts: &ReviewOptions) -> Result<Review> {
    let start = Instant::now();
    let (card, head) = read_run(run_dir)?;
    let req = FeatureRequest {
        model: card.backbone.model.clone(),
        data: card.data.spec.clone(),
        splits: vec!["train".into(), "test".into()],
        subset: card.data.sample,
        sample_seed: card.data.sample_seed,
        precision: PrecisionChoice::Fixed(card.backbone.precision),
        weights: weights_file_of(&card),
        input_size: Some(card.preprocessing.input_size),
        batch_size: opts.batch_size,
        chunk_rows: DEFAULT_CHUNK_ROWS,
        augment: card.data.augment,
        tta: card.data.tta,
        shard: None,
    };
    let settings = Settings {
        folds: opts.folds,
        rank_by: opts.rank_by,
        min_similarity: opts.min_similarity,
        train: card.training.clone(),
        l2: card.report.l2,
        judged_views: super::train::view_layout_of(card.data.augment, card.data.tta).validate_on,
        seed: card.training.seed,
    };
    settings.validate()?;
    let fs = features(session, &req)?;
    same_weights(&fs, &card, run_dir)?;
    // The pictures behind the rows: the same data set, split and sample the features are of.
    let open = OpenOptions { data_root: session.cache_dir.join("data"), offline: session.offline, progress: session.progress.clone() };
    let dataset = Dataset::open(&card.data.spec, &open)?;
    let hashes = HashIndex::open(&session.cache_dir);
    let views = card.data.augment.map_or(1, |a| a.views());
    let mut splits: Vec<(Split, SplitData)> = Vec::new();
    for (name, v) in [("train", views), ("test", 1)] {
        let cached = fs.split(name).expect("both splits were requested");
        if streams(cached) {
            return Err(Error::bad_input(
                &cached.features,
                format!("review holds both splits' features in memory, and these {} rows do not fit in half of the available memory", cached.rows),
            ));
        }
        let split = dataset.split(name)?;
        let rows = stratified_subset(&split.labels, card.data.sample, card.data.sample_seed);
        let split = split.subset(&rows);
        let (x, y) = cached.load()?;
        let labels: Vec<i64> = Vec::<i64>::try_from(y.f_view([-1, v as i64])?.f_select(1, 0)?)?;
        if labels != split.labels {
            return Err(Error::bad_input(
                &cached.features,
                format!("the cached {name} labels are not those of the data set's {} pictures now; `lastlayer cache rm` the entry and review again", split.len()),
            ));
        }
        let names = (0..split.len()).map(|p| split.picture_name(p)).collect();
        let keys = split.content_keys(&hashes)?;
        splits.push((split, SplitData { features: x, views: v, labels, names, keys }));
    }
    if let Err(e) = hashes.save() {
        tracing::warn!("could not save the file hash index ({e}); the next run hashes the files again");
    }
    let feature_seconds = start.elapsed().as_secs_f64();
    let (test_split, test) = splits.pop().expect("two splits");
    let (train_split, train) = splits.pop().expect("two splits");
    tracing::info!(
        "review of {}: {} training pictures ({} rows), {} test pictures; {} fold heads at L2 {}",
        run_dir.display(),
        train.pictures(),
        train.features.size()[0],
        test.pictures(),
        opts.folds,
        card.report.l2.map_or("(the run's fixed weight decay)".to_string(), |l| format!("{l:e}"))
    );
    let mut result = review(&card.backbone.model, &card.classes, &head, &train, &test, &settings, &session.progress)?;
    result.summary.seconds.features = feature_seconds;
    if opts.page {
        let t = Instant::now();
        let path = run_dir.join(PAGE_FILE);
        write_page(&result, run_dir, &train_split, &test_split, &path)?;
        result.summary.page = Some(path);
        result.summary.seconds.page = t.elapsed().as_secs_f64();
    }
    result.summary.seconds.total = start.elapsed().as_secs_f64();
    Ok(result)
}

/// Decodes the pictures the page shows (in parallel) into thumbnails and writes the page.
fn write_page(review: &Review, run_dir: &Path, train: &Split, test: &Split, path: &Path) -> Result<()> {
    let limits = PageLimits::for_classes(review.summary.classes.len());
    let needed = pictures_needed(review, limits);
    let thumbs: Vec<Result<((Which, usize), String)>> = needed
        .par_iter()
        .map(|&(which, i)| {
            let split = if which == Which::Train { train } else { test };
            Ok(((which, i), thumbnail(&split.picture(i)?.0)?))
        })
        .collect();
    let thumbs: BTreeMap<(Which, usize), String> = thumbs.into_iter().collect::<Result<_>>()?;
    let title = run_dir.file_name().map_or_else(|| run_dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    crate::fsutil::write_atomic(path, render(&title, review, &thumbs, limits).as_bytes())?;
    tracing::info!("wrote {} ({} thumbnails)", path.display(), thumbs.len());
    Ok(())
}

/// `RUN_DIR/review.html`.
pub fn page_path(run_dir: &Path) -> PathBuf {
    run_dir.join(PAGE_FILE)
}
