//! The commands' work, end to end: resolve the model and data, find each split's features in
//! the cache or extract them (running the backbone only for what is missing), train and
//! evaluate a head, write the run folder, and predict with a finished run.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;
use tch::Tensor;

use crate::backbone::{Backbone, DeviceChoice, Engine, Precision, PrecisionChoice};
use crate::cache::{CachedFeatures, EntryLock, FeatureCache, FeatureKey, Partial, PartialPlan, FORMAT_VERSION};
use crate::data::preprocess::Preprocessing;
use crate::data::sample::{stratified_subset, Subset};
use crate::data::{load_picture, DataSpec, Dataset, OpenOptions, PictureKind, Split};
use crate::error::{Error, IoContext, Result};
use crate::export::{read_run, write_run, BackboneCard, DataCard, HeadCard, Metrics, RunFiles, HEAD_FORMAT, HEAD_FORMAT_VERSION};
use crate::head::{evaluate, train_head, Evaluation, TrainConfig, TrainReport};
use crate::hub::{fetch_weights, resolve_weights, FetchOptions, ModelEntry, Pins, Registry, ResolvedWeights, WeightsOrigin};
use crate::progress::{Progress, Task, Unit};

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

/// Default rows per saved extraction chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 512;

/// Which features to get.
#[derive(Debug, Clone)]
pub struct FeatureRequest {
    /// Registry name of the backbone.
    pub model: String,
    /// The data set.
    pub data: DataSpec,
    /// Splits, in order (`train`, `test`).
    pub splits: Vec<String>,
    /// The sample of each split.
    pub subset: Subset,
    /// Its seed.
    pub sample_seed: u64,
    /// Backbone precision.
    pub precision: PrecisionChoice,
    /// `--weights FILE` instead of the Hub.
    pub weights: Option<PathBuf>,
    /// Pictures per backbone batch.
    pub batch_size: usize,
    /// Rows per saved chunk during extraction (rounded up to whole batches): how much a
    /// killed run can lose.
    pub chunk_rows: usize,
}

impl FeatureRequest {
    /// Checks the values, naming the flag at fault.
    pub fn validate(&self) -> Result<()> {
        match self.subset {
            Subset::Fraction(f) if !(f > 0.0 && f <= 1.0) => {
                return Err(Error::usage("--sample", format!("{f} is not in (0, 1]; use e.g. --sample 0.05 for 5% of each class")))
            }
            Subset::Limit(0) => return Err(Error::usage("--limit", "must be at least 1")),
            _ => {}
        }
        if self.batch_size == 0 {
            return Err(Error::usage("--extract-batch-size", "must be at least 1"));
        }
        if self.chunk_rows == 0 {
            return Err(Error::usage("--chunk-rows", "must be at least 1"));
        }
        if self.splits.is_empty() {
            return Err(Error::usage("--split", "name at least one split (train, test)"));
        }
        Ok(())
    }
}

/// One split's features.
#[derive(Debug, Clone, Serialize)]
pub struct SplitFeatures {
    /// `train` or `test`.
    pub split: String,
    /// Rows.
    pub rows: usize,
    /// `cache` when found, `extracted` when the backbone ran now.
    pub source: &'static str,
    /// The safetensors file.
    pub features: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Seconds spent in the backbone (0 for a cache hit).
    pub seconds: f64,
    #[serde(skip)]
    entry: CachedFeatures,
}

impl SplitFeatures {
    /// Loads `(features, labels)`.
    pub fn load(&self) -> Result<(Tensor, Tensor)> {
        self.entry.load()
    }
}

/// The features of the requested splits, and what produced them.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureSet {
    /// Registry name.
    pub model: String,
    /// Precision of the backbone.
    pub precision: Precision,
    /// sha256 of the weights.
    pub weights_sha256: String,
    /// Where the weights come from.
    pub weights: WeightsOrigin,
    /// The preprocessing used.
    pub preprocessing: Preprocessing,
    /// Class names.
    pub classes: Vec<String>,
    /// Per split, in request order.
    pub splits: Vec<SplitFeatures>,
    /// How many splits the backbone had to run for.
    pub backbone_runs: usize,
}

impl FeatureSet {
    /// The features of `split`.
    pub fn split(&self, split: &str) -> Option<&SplitFeatures> {
        self.splits.iter().find(|s| s.split == split)
    }
}

/// The Hub weights' sha256 and origin when known without reading the file: the registry's
/// sha256, or a pin.
fn pinned_weights(entry: &ModelEntry, session: &Session) -> Result<Option<(String, WeightsOrigin)>> {
    let pins = Pins::load(&session.cache_dir)?;
    let pin = pins.get(&entry.hub_repo, &entry.file);
    let sha = entry.sha256.clone().or_else(|| pin.map(|p| p.sha256.clone()));
    let revision = entry.revision.clone().or_else(|| pin.map(|p| p.revision.clone()));
    Ok(sha.zip(revision).map(|(sha, revision)| {
        (sha, WeightsOrigin::Hub { repo: entry.hub_repo.clone(), revision, file: entry.file.clone() })
    }))
}

/// Finds or extracts the features of every requested split. The backbone is loaded (and its
/// weights fetched) only when some split is not in the cache.
pub fn features(session: &Session, req: &FeatureRequest) -> Result<FeatureSet> {
    req.validate()?;
    let entry = session.registry.get(&req.model)?.clone();
    let device = session.device.resolve()?;
    let precision = req.precision.resolve(device, entry.architecture);
    // `--weights FILE` is hashed once, here; Hub weights are read only if something must be
    // extracted (their sha256 is known from the registry or a pin otherwise).
    let mut local = req.weights.as_deref().map(|p| resolve_weights(&entry, Some(p), &session.fetch_options())).transpose()?;
    let mut known = match &local {
        Some(w) => Some((w.sha256.clone(), w.origin.clone())),
        None => pinned_weights(&entry, session)?,
    };
    let open = OpenOptions { data_root: session.cache_dir.join("data"), offline: session.offline, progress: session.progress.clone() };
    let dataset = Dataset::open(&req.data, &open)?;
    let preprocessing = match dataset.picture_kind {
        PictureKind::Cifar => Preprocessing::stretch(&entry),
        PictureKind::Photos => Preprocessing::center_crop(&entry),
    };
    let cache = FeatureCache::new(&session.cache_dir);
    let mut splits: Vec<(Split, String)> = Vec::new();
    for name in &req.splits {
        let split = dataset.split(name)?;
        let rows = stratified_subset(&split.labels, req.subset, req.sample_seed);
        let split = split.subset(&rows);
        let identity = split.identity()?;
        splits.push((split, identity));
    }
    let key_for = |split: &Split, identity: &str, sha: &str| FeatureKey {
        format: FORMAT_VERSION,
        model: entry.name.clone(),
        architecture: entry.architecture,
        weights_sha256: sha.to_string(),
        preprocessing: preprocessing.clone(),
        precision,
        dataset: dataset.name.clone(),
        data_identity: identity.to_string(),
        split: split.name.clone(),
        sample: req.subset,
        sample_seed: req.sample_seed,
        rows: split.len(),
    };

    let mut found: Vec<Option<SplitFeatures>> = Vec::new();
    for (split, identity) in &splits {
        let hit = match &known {
            Some((sha, _)) => cache.lookup(&key_for(split, identity, sha))?,
            None => None,
        };
        found.push(hit.map(|entry| {
            tracing::info!("{} features: {} rows from the cache ({})", split.name, split.len(), entry.dir.display());
            split_features(&split.name, "cache", 0.0, entry)
        }));
    }
    let mut backbone_runs = 0;
    if found.iter().any(Option::is_none) {
        let weights = match local.take() {
            Some(w) => w,
            None => fetch_weights(&entry, &session.fetch_options())?,
        };
        if let Some((sha, _)) = &known {
            if sha != &weights.sha256 {
                return Err(Error::Checksum {
                    path: weights.path.clone(),
                    algorithm: "sha256",
                    expected: sha.clone(),
                    actual: weights.sha256.clone(),
                    action: "the weights differ from the pinned ones; delete <cache-dir>/pins.json to re-pin".into(),
                });
            }
        }
        let mut backbone = load_backbone(&entry, &weights, device, precision)?;
        // The whole splits count, not what a resumed run has left, so that every chunk of an
        // entry comes from the same engine.
        let pictures: usize = splits.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|((s, _), _)| s.len()).sum();
        backbone.set_engine(Engine::choose(device, pictures));
        tracing::info!("backbone {} in {precision:?} on {device:?}, engine {:?}", entry.name, backbone.engine());
        for ((split, identity), slot) in splits.iter().zip(found.iter_mut()) {
            let key = key_for(split, identity, &weights.sha256);
            if slot.is_none() {
                if let Some(hit) = cache.lookup(&key)? {
                    *slot = Some(split_features(&split.name, "cache", 0.0, hit));
                    continue;
                }
                let _lock = EntryLock::acquire(&cache.lock_path(&key))?;
                if let Some(hit) = cache.lookup(&key)? {
                    tracing::info!("{} features: finished by another process meanwhile", split.name);
                    *slot = Some(split_features(&split.name, "cache", 0.0, hit));
                    continue;
                }
                let (stored, resumed, secs) = extract_resumable(
                    &backbone,
                    split,
                    &preprocessing,
                    req.batch_size,
                    req.chunk_rows,
                    &cache,
                    &key,
                    &dataset.classes,
                    &session.progress,
                )?;
                let fresh = split.len() - resumed;
                tracing::info!(
                    "{} features: {fresh} rows extracted in {secs:.1}s ({:.1} images/s){}, cached in {}",
                    split.name,
                    fresh as f64 / secs.max(1e-9),
                    if resumed > 0 { format!(", {resumed} resumed") } else { String::new() },
                    stored.dir.display()
                );
                backbone_runs += 1;
                *slot = Some(split_features(&split.name, "extracted", secs, stored));
            }
        }
        known = Some((weights.sha256.clone(), weights.origin.clone()));
    }
    let (weights_sha256, weights) = known.expect("weights are known once every split is found");
    Ok(FeatureSet {
        model: entry.name.clone(),
        precision,
        weights_sha256,
        weights,
        preprocessing,
        classes: dataset.classes.clone(),
        splits: found.into_iter().map(|s| s.expect("every split was found or extracted")).collect(),
        backbone_runs,
    })
}

fn split_features(split: &str, source: &'static str, seconds: f64, entry: CachedFeatures) -> SplitFeatures {
    SplitFeatures {
        split: split.to_string(),
        rows: entry.manifest.rows,
        source,
        features: entry.features_path.clone(),
        manifest: entry.manifest_path.clone(),
        seconds,
        entry,
    }
}

fn load_backbone(entry: &ModelEntry, weights: &ResolvedWeights, device: tch::Device, precision: Precision) -> Result<Backbone> {
    let backbone = Backbone::load(entry.architecture, &weights.path, device, precision)?;
    if backbone.feature_width() != entry.feature_width {
        return Err(Error::bad_input(
            Path::new("pretrained/models.toml"),
            format!("model '{}' declares feature_width {}, the network gives {}", entry.name, entry.feature_width, backbone.feature_width()),
        ));
    }
    Ok(backbone)
}

/// Runs the backbone over `chunks` (row ranges of `split`, each a whole number of batches),
/// preparing the next batch (decoding, resizing) on another thread while the current one is
/// computed, and hands each chunk's features to `on_chunk` as soon as it is complete.
fn run_backbone(
    backbone: &Backbone,
    split: &Split,
    pre: &Preprocessing,
    batch_size: usize,
    chunks: &[(usize, Range<usize>)],
    task: &mut Task,
    mut on_chunk: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<(usize, bool, Result<Tensor>)>(2);
        scope.spawn(move || {
            for (chunk, rows) in chunks {
                for start in rows.clone().step_by(batch_size) {
                    let end = (start + batch_size).min(rows.end);
                    let batch = split.batch(start..end, pre);
                    let failed = batch.is_err();
                    if tx.send((*chunk, end == rows.end, batch)).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let mut parts = Vec::new();
        for (chunk, last, batch) in rx {
            let batch = batch?;
            let rows = batch.size()[0] as u64;
            parts.push(backbone.features(&batch)?);
            task.inc(rows);
            if last {
                on_chunk(chunk, Tensor::cat(&std::mem::take(&mut parts), 0))?;
            }
        }
        Ok(())
    })
}

/// Runs the backbone over every row of `split` (no cache involved). Returns
/// `(features [N, D], labels [N])`.
pub fn extract_split(backbone: &Backbone, split: &Split, pre: &Preprocessing, batch_size: usize, progress: &Progress) -> Result<(Tensor, Tensor)> {
    let n = split.len();
    let mut task = progress.task(&format!("extract {}", split.name), n as u64, Unit::Images);
    let mut features = None;
    run_backbone(backbone, split, pre, batch_size.max(1), &[(0, 0..n)], &mut task, |_, f| {
        features = Some(f);
        Ok(())
    })?;
    task.finish();
    let features = features.ok_or_else(|| Error::usage("--data", format!("the {} split has no rows", split.name)))?;
    Ok((features, Tensor::from_slice(&split.labels)))
}

/// Extracts `split` into the cache entry of `key`, chunk by chunk, resuming from the chunks a
/// killed run left. Returns the stored entry and how many rows were already done.
#[allow(clippy::too_many_arguments)]
fn extract_resumable(
    backbone: &Backbone,
    split: &Split,
    pre: &Preprocessing,
    batch_size: usize,
    chunk_rows: usize,
    cache: &FeatureCache,
    key: &FeatureKey,
    classes: &[String],
    progress: &Progress,
) -> Result<(CachedFeatures, usize, f64)> {
    let n = split.len();
    let chunk_rows = chunk_rows.div_ceil(batch_size).max(1) * batch_size;
    let plan = PartialPlan { digest: key.digest(), rows: n, chunk_rows, batch_size };
    let partial = Partial::open(&cache.partial_dir(key), plan)?;
    let todo: Vec<(usize, Range<usize>)> =
        (0..partial.plan().chunks()).filter(|&i| !partial.has_chunk(i)).map(|i| (i, partial.plan().chunk_range(i))).collect();
    let done = n - todo.iter().map(|(_, r)| r.len()).sum::<usize>();
    if done > 0 {
        tracing::info!("{}: resuming, {done} of {n} rows were extracted by an earlier run", split.name);
    }
    let mut task = progress.task(&format!("extract {}", split.name), n as u64, Unit::Images);
    task.set_position(done as u64);
    let start = Instant::now();
    run_backbone(backbone, split, pre, batch_size, &todo, &mut task, |chunk, features| {
        let rows = partial.plan().chunk_range(chunk);
        partial.write_chunk(chunk, &features, &Tensor::from_slice(&split.labels[rows]))
    })?;
    task.finish();
    let secs = start.elapsed().as_secs_f64();
    let (features, labels) = partial.join()?;
    let stored = cache.store(key, &features, &labels, classes, secs)?;
    partial.remove()?;
    Ok((stored, done, secs))
}

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
}

/// Gets train and test features (extracting what the cache lacks), trains a head, evaluates it
/// on test, and writes the run folder `out`.
pub fn train(session: &Session, req: &FeatureRequest, cfg: &TrainConfig, out: &Path) -> Result<TrainOutcome> {
    cfg.validate()?;
    if out.is_file() {
        return Err(Error::usage("--out", format!("{} is a file; give a folder for the run", out.display())));
    }
    let req = FeatureRequest { splits: vec!["train".into(), "test".into()], ..req.clone() };
    let fs = features(session, &req)?;
    let (xtr, ytr) = fs.split("train").expect("train was requested").load()?;
    let (xte, yte) = fs.split("test").expect("test was requested").load()?;
    let (head, report) = train_head(&xtr, &ytr, fs.classes.len(), cfg, &session.progress)?;
    let test = evaluate(&head, &xte, &yte, &fs.classes);
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
        },
        training: cfg.clone(),
        report: report.clone(),
        metrics: Metrics { test_accuracy: test.accuracy, val_accuracy: report.best_val_accuracy, test: test.clone() },
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        lastlayer_version: env!("CARGO_PKG_VERSION").into(),
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
    })
}

/// An outcome whose test accuracy ends a run's `status.json`.
pub trait Finished {
    /// Test accuracy of the exported head.
    fn test_accuracy(&self) -> f64;
}

impl Finished for TrainOutcome {
    fn test_accuracy(&self) -> f64 {
        self.test_accuracy
    }
}

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
/// at most once, to fill the cache), ranks them by validation accuracy, and exports the best
/// to `out` (with `sweep.json`). The test split is used only for the best head's report.
pub fn sweep(session: &Session, req: &FeatureRequest, grid: &[TrainConfig], out: &Path) -> Result<SweepOutcome> {
    if grid.is_empty() {
        return Err(Error::usage("--lr", "the grid is empty"));
    }
    let fs = features(session, req)?;
    let (x, y) = fs.split("train").ok_or_else(|| Error::usage("--split", "sweep needs the train split"))?.load()?;
    let mut trials = Vec::with_capacity(grid.len());
    for cfg in grid {
        let (_, report) = train_head(&x, &y, fs.classes.len(), cfg, &Progress::hidden())?;
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

fn weights_file_of(card: &HeadCard) -> Option<PathBuf> {
    match &card.backbone.weights {
        WeightsOrigin::Local { path } => Some(path.clone()),
        WeightsOrigin::Hub { .. } => None,
    }
}

/// Re-evaluates a run's head on its test split (from the cache, extracting if needed).
pub fn evaluate_run(session: &Session, run_dir: &Path, batch_size: usize) -> Result<EvalOutcome> {
    let (card, head) = read_run(run_dir)?;
    let req = FeatureRequest {
        model: card.backbone.model.clone(),
        data: card.data.spec.clone(),
        splits: vec!["test".into()],
        subset: card.data.sample,
        sample_seed: card.data.sample_seed,
        precision: PrecisionChoice::Fixed(card.backbone.precision),
        weights: weights_file_of(&card),
        batch_size,
        chunk_rows: DEFAULT_CHUNK_ROWS,
    };
    let fs = features(session, &req)?;
    if fs.weights_sha256 != card.backbone.weights_sha256 {
        return Err(Error::bad_input(
            RunFiles::in_dir(run_dir).card,
            format!(
                "the head was trained on features of weights {}, but the weights now resolve to {}",
                card.backbone.weights_sha256, fs.weights_sha256
            ),
        ));
    }
    let split = fs.split("test").expect("test was requested").clone();
    let (x, y) = split.load()?;
    let test = evaluate(&head, &x, &y, &card.classes);
    Ok(EvalOutcome { run_dir: run_dir.to_path_buf(), test_accuracy: test.accuracy, test, features: split })
}

/// One class and its probability.
#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    /// Class name.
    pub class: String,
    /// Class index.
    pub index: usize,
    /// Softmax probability.
    pub probability: f64,
}

/// The top classes of one picture.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The picture.
    pub path: PathBuf,
    /// Best first.
    pub top: Vec<ClassScore>,
}

/// Expands files and folders (recursively) into picture files, in the order given, folders
/// sorted.
pub fn collect_pictures(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).at(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).is_some_and(|e| crate::data::folder::EXTENSIONS.contains(&e.as_str())) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::bad_input(p, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(Error::usage("IMAGE", "no JPEG or PNG pictures found in the paths given"));
    }
    Ok(out)
}

/// A finished run loaded for classifying: its card, head and backbone (with the weights checked
/// against `head.json`'s sha256). Holds libtorch tensors, so it is `Send` at most, not `Sync`:
/// a server keeps it on one thread.
pub struct Classifier {
    card: HeadCard,
    head: crate::head::LinearHead,
    backbone: Backbone,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier").field("model", &self.model()).field("classes", &self.classes()).finish()
    }
}

impl Classifier {
    /// Loads the run folder `run_dir` (written by `train`, `run` or `sweep`) and its backbone,
    /// in the precision it was trained with, on the session's device.
    pub fn open(session: &Session, run_dir: &Path) -> Result<Classifier> {
        let (card, head) = read_run(run_dir)?;
        Classifier::with_run(session, card, head)
    }

    fn with_run(session: &Session, card: HeadCard, head: crate::head::LinearHead) -> Result<Classifier> {
        let backbone = run_backbone_of(session, &card, card.backbone.precision)?;
        Ok(Classifier { card, head, backbone })
    }

    /// Class names, in the head's order.
    pub fn classes(&self) -> &[String] {
        &self.card.classes
    }

    /// The backbone's registry name.
    pub fn model(&self) -> &str {
        &self.card.backbone.model
    }

    /// The run's `head.json`.
    pub fn card(&self) -> &HeadCard {
        &self.card
    }

    /// The `top_k` classes (at most as many as there are) of each of `pictures`, decoded
    /// `[1, 3, h, w]` uint8 RGB tensors as [`crate::data::decode_picture`] gives, run through
    /// the backbone together (one batch).
    pub fn classify(&self, pictures: &[Tensor], top_k: usize) -> Result<Vec<Vec<ClassScore>>> {
        if top_k == 0 {
            return Err(Error::usage("top_k", "must be at least 1"));
        }
        if pictures.is_empty() {
            return Ok(Vec::new());
        }
        let classes = &self.card.classes;
        let k = top_k.min(classes.len());
        let inputs: Vec<Tensor> = pictures.iter().map(|p| self.card.preprocessing.batch(p)).collect();
        let probs = self.head.probabilities(&self.backbone.features(&Tensor::cat(&inputs, 0))?);
        let (values, indices) = probs.topk(k as i64, -1, true, true);
        (0..pictures.len())
            .map(|i| {
                let v: Vec<f64> = Vec::<f64>::try_from(values.get(i as i64).to_kind(tch::Kind::Double)).map_err(Error::Torch)?;
                let ix: Vec<i64> = Vec::<i64>::try_from(indices.get(i as i64)).map_err(Error::Torch)?;
                Ok(ix
                    .iter()
                    .zip(v)
                    .map(|(&c, p)| ClassScore { class: classes[c as usize].clone(), index: c as usize, probability: p })
                    .collect())
            })
            .collect()
    }
}

/// Classifies pictures with a run's backbone, preprocessing and head.
pub fn predict(session: &Session, run_dir: &Path, paths: &[PathBuf], top_k: usize, batch_size: usize) -> Result<Vec<Prediction>> {
    if top_k == 0 {
        return Err(Error::usage("--top-k", "must be at least 1"));
    }
    let (card, head) = read_run(run_dir)?;
    let pictures = collect_pictures(paths)?;
    let classifier = Classifier::with_run(session, card, head)?;
    let mut out = Vec::with_capacity(pictures.len());
    for chunk in pictures.chunks(batch_size.max(1)) {
        let decoded = chunk.iter().map(|p| load_picture(p)).collect::<Result<Vec<_>>>()?;
        for (path, top) in chunk.iter().zip(classifier.classify(&decoded, top_k)?) {
            out.push(Prediction { path: path.clone(), top });
        }
    }
    Ok(out)
}

/// The backbone a run was trained with (weights checked against `head.json`'s sha256).
fn run_backbone_of(session: &Session, card: &HeadCard, precision: Precision) -> Result<Backbone> {
    let entry = session.registry.get(&card.backbone.model)?;
    let weights = match weights_file_of(card) {
        Some(path) => resolve_weights(entry, Some(&path), &session.fetch_options())?,
        None => fetch_weights(entry, &session.fetch_options())?,
    };
    if weights.sha256 != card.backbone.weights_sha256 {
        return Err(Error::Checksum {
            path: weights.path.clone(),
            algorithm: "sha256",
            expected: card.backbone.weights_sha256.clone(),
            actual: weights.sha256.clone(),
            action: "these are not the weights the head was trained with".into(),
        });
    }
    load_backbone(entry, &weights, session.device.resolve()?, precision)
}

/// Writes a run's whole classifier (backbone + head) as TorchScript to `out`, in fp32 on the
/// CPU (see [`crate::export::export_torchscript`] for its input and output).
pub fn export(session: &Session, run_dir: &Path, format: crate::export::ExportFormat, out: &Path) -> Result<PathBuf> {
    let (card, head) = read_run(run_dir)?;
    let session = Session { device: DeviceChoice::Cpu, ..session.clone() };
    let backbone = run_backbone_of(&session, &card, Precision::Fp32)?;
    match format {
        crate::export::ExportFormat::Torchscript => crate::export::export_torchscript(&backbone, &head, &card, out)?,
        crate::export::ExportFormat::Onnx => crate::export::onnx::export_onnx(&backbone, &head, &card, out)?,
    }
    Ok(out.to_path_buf())
}

/// Downloads (or finds) and verifies a model's weights.
pub fn fetch(session: &Session, model: &str) -> Result<ResolvedWeights> {
    let entry = session.registry.get(model)?;
    fetch_weights(entry, &session.fetch_options())
}
