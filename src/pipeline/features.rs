//! Finding or extracting the features of the requested splits.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::Tensor;

use super::extract::extract_resumable;
use super::shard::{find_or_merge, ShardSpec};
use super::Session;
use crate::backbone::{default_batch_size, Backbone, Engine, Precision, PrecisionChoice};
use crate::cache::{CachedFeatures, EntryLock, FeatureCache, FeatureKey, ShardOf, FORMAT_VERSION};
use crate::data::content::HashIndex;
use crate::data::on_device;
use crate::data::preprocess::{InputSpec, Preprocessing};
use crate::data::sample::{stratified_subset, Subset};
use crate::data::views::{Augment, Tta, Views};
use crate::data::{DataSpec, Dataset, OpenOptions, PictureKind, Split};
use crate::error::{Error, Result};
use crate::hub::{fetch_weights, resolve_weights, ModelEntry, Pins, ResolvedWeights, WeightsOrigin};

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
    /// `--input-size N` instead of the registry's default.
    pub input_size: Option<i64>,
    /// Pictures per backbone batch; `None`: [`default_batch_size`] for the device.
    pub batch_size: Option<usize>,
    /// Rows per saved chunk during extraction (rounded up to whole batches): how much a
    /// killed run can lose.
    pub chunk_rows: usize,
    /// `--augment`: views of each training picture, each a cached row.
    pub augment: Option<Augment>,
    /// `--tta`: test features averaged with their mirror image's.
    pub tta: Tta,
    /// `--shard I/N`: extract only this worker's share of each split (see [`super::shard`]).
    pub shard: Option<ShardSpec>,
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
        if self.batch_size == Some(0) {
            return Err(Error::usage("--extract-batch-size", "must be at least 1"));
        }
        if self.chunk_rows == 0 {
            return Err(Error::usage("--chunk-rows", "must be at least 1"));
        }
        if let Some(size) = self.input_size {
            if !(32..=4096).contains(&size) {
                return Err(Error::usage("--input-size", format!("{size} pixels is out of range; give 32 to 4096")));
            }
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
    /// The training pictures' views (`--augment`): `train` has that many rows a picture.
    pub augment: Option<Augment>,
    /// Test-time augmentation of `test`.
    pub tta: Tta,
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
    let input = model_input(&entry, req.input_size)?;
    let preprocessing = match dataset.picture_kind {
        PictureKind::Cifar => Preprocessing::stretch(&input),
        PictureKind::Photos => Preprocessing::center_crop(&input),
    };
    let cache = FeatureCache::new(&session.cache_dir);
    let hashes = HashIndex::open(&session.cache_dir);
    let mut splits: Vec<(Split, String)> = Vec::new();
    for name in &req.splits {
        let split = dataset.split(name)?;
        let rows = stratified_subset(&split.labels, req.subset, req.sample_seed);
        let split = split.subset(&rows);
        let keys = split.content_keys(&hashes)?;
        let identity = split.identity(&keys)?;
        let split = match views_of(name, req) {
            Some(views) => split.with_views(views),
            None => split,
        };
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
        rows: whole_rows(split),
        views: split.views().copied(),
        shard: None,
    };
    let batch_size = req.batch_size.unwrap_or_else(|| default_batch_size(device));
    // The key of what this request extracts of `split`: the whole split, or this worker's shard.
    let target = |split: &Split, whole: FeatureKey| -> Result<(FeatureKey, Option<ShardOf>)> {
        match req.shard {
            None => Ok((whole, None)),
            Some(spec) => {
                let (bounds, unit) = split.shard_units(batch_size);
                let shard = spec.rows(&split.name, &bounds, unit, batch_size)?;
                Ok((whole.for_shard(shard), Some(shard)))
            }
        }
    };
    // A finished entry for `whole` (merging complete shards), or for this worker's shard.
    // A worker (`--shard`) takes a finished whole entry, never merges.
    let find = |split: &Split, whole: FeatureKey| -> Result<Option<CachedFeatures>> {
        if req.shard.is_some() {
            if let Some(hit) = cache.lookup(&whole)? {
                return Ok(Some(hit));
            }
        } else if let Some((hit, merged)) = find_or_merge(session, req, &cache, &whole)? {
            if merged {
                tracing::info!("{} features: merged from their shards into {}", split.name, hit.dir.display());
            }
            return Ok(Some(hit));
        }
        match target(split, whole)? {
            (key, Some(_)) => cache.lookup(&key),
            (_, None) => Ok(None),
        }
    };

    let mut found: Vec<Option<SplitFeatures>> = Vec::new();
    for (split, identity) in &splits {
        let hit = match &known {
            Some((sha, _)) => find(split, key_for(split, identity, sha))?,
            None => None,
        };
        found.push(hit.map(|entry| {
            tracing::info!("{} features: {} rows from the cache ({})", split.name, entry.manifest.rows, entry.dir.display());
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
        let mut backbone = load_backbone(&entry, &weights, input.input_size, device, precision)?;
        // The whole splits count, not what a resumed run has left, so that every chunk of an
        // entry comes from the same engine.
        let pictures: usize = splits.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|((s, _), _)| s.len()).sum();
        backbone.set_engine(Engine::choose(device, pictures, entry.architecture));
        tracing::info!("backbone {} in {precision:?} on {device:?}, engine {:?}", entry.name, backbone.engine());
        tracing::info!("{}; batches of {batch_size}, the next one decoded on another thread", on_device::describe(device));
        for ((split, identity), slot) in splits.iter().zip(found.iter_mut()) {
            let whole = key_for(split, identity, &weights.sha256);
            if slot.is_none() {
                if let Some(hit) = find(split, whole.clone())? {
                    *slot = Some(split_features(&split.name, "cache", 0.0, hit));
                    continue;
                }
                let (key, shard) = target(split, whole)?;
                let part;
                let split = match shard {
                    Some(s) => {
                        part = split.stored_rows(s.start, s.end);
                        tracing::info!("{} features: shard {}/{}, rows {}..{} of the entry's {}", split.name, s.index, s.count, s.start, s.end, whole_rows(split));
                        &part
                    }
                    None => split,
                };
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
                    batch_size,
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
        augment: req.augment,
        tta: req.tta,
    })
}

/// Rows of the entry `split` makes: one a view, or one a picture when the views are averaged.
fn whole_rows(split: &Split) -> usize {
    if split.views().is_some_and(Views::averaged) {
        split.pictures()
    } else {
        split.len()
    }
}

/// The views split `name` is extracted with: `--augment` on train, `--tta flip` on test.
fn views_of(name: &str, req: &FeatureRequest) -> Option<Views> {
    match name {
        "train" => req.augment.map(Views::Augment),
        "test" if req.tta == Tta::Flip => Some(Views::TtaFlip),
        _ => None,
    }
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

/// The registry's input for `entry`, at `size` pixels when given (which must suit the network:
/// a multiple of a Vision Transformer's patch).
pub(super) fn model_input(entry: &ModelEntry, size: Option<i64>) -> Result<InputSpec> {
    let mut input = entry.input();
    if let Some(size) = size {
        let multiple = entry.architecture.input_multiple();
        if size % multiple != 0 {
            let (lo, hi) = ((size / multiple).max(1) * multiple, (size / multiple + 1) * multiple);
            return Err(Error::usage(
                "--input-size",
                format!("{size} is not a multiple of {}'s patch size {multiple}; try {lo} or {hi}", entry.name),
            ));
        }
        input.input_size = size;
    }
    Ok(input)
}

/// Loads `entry`'s network with `weights` for `input_size` pictures and checks its width
/// against the registry.
pub(super) fn load_backbone(entry: &ModelEntry, weights: &ResolvedWeights, input_size: i64, device: tch::Device, precision: Precision) -> Result<Backbone> {
    let backbone = Backbone::load_for_size(entry.architecture, &weights.path, Some(input_size), device, precision)?;
    if backbone.feature_width() != entry.feature_width {
        return Err(Error::bad_input(
            Path::new("pretrained/models.toml"),
            format!("model '{}' declares feature_width {}, the network gives {}", entry.name, entry.feature_width, backbone.feature_width()),
        ));
    }
    Ok(backbone)
}
