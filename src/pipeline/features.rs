//! Finding or making the features of the requested splits.
//!
//! A split's features are a cache entry ([`FeatureCache`]: one `features.safetensors` for
//! exactly that split, its labels and sample), made from the rows of the feature store
//! ([`FeatureStore`]: every picture's features by content, per recipe). Only the rows the
//! store lacks go through the backbone; a label fix, a rename, a move, a new sample or a new
//! split of known pictures costs none.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Tensor};

use super::extract::{extract_into_store, needs_fixed_shape, Extracted};
use super::shard::{find_or_merge, ShardSpec};
use super::Session;
use crate::backbone::{default_batch_size, Architecture, Backbone, Engine, Precision, PrecisionChoice};
use crate::cache::shards::entry_name;
use crate::cache::store::segment::SegmentWriter;
use crate::cache::store::{FeatureStore, Recipe, STORE_FORMAT};
use crate::cache::{CachedFeatures, EntryLock, FeatureCache, FeatureKey, ShardOf, FORMAT_VERSION};
use crate::data::content::{ContentKey, HashCounts, HashIndex, RowKey};
use crate::data::on_device;
use crate::data::preprocess::{InputSpec, Preprocessing};
use crate::data::sample::{stratified_subset, Subset};
use crate::data::views::{average_views, Augment, Tta, Views};
use crate::data::{DataSpec, Dataset, OpenOptions, PictureKind, Split};
use crate::error::{Error, Result};
use crate::hub::{fetch_weights, resolve_weights, ModelEntry, Pins, ResolvedWeights, WeightsOrigin};
use crate::progress::Unit;

/// Default rows per saved extraction record when `--chunk-rows` is not given: one backbone
/// batch (rounded up to whole batches), so a killed run loses at most the batch in flight.
pub const DEFAULT_CHUNK_ROWS: usize = 1;

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
    /// Rows per saved store record during extraction (rounded up to whole batches): how much
    /// a killed run can lose.
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
    /// `cache` when the split's entry was found, `store` when it was made from the feature
    /// store without the backbone, `extracted` when the backbone ran for some of its rows.
    pub source: &'static str,
    /// Rows (pictures and views) that went through the backbone for this split now.
    pub backbone_rows: usize,
    /// Rows that came from the feature store (computed earlier, or by another process); 0 when
    /// the split's entry was found whole (`source` is `cache`).
    pub store_rows: usize,
    /// The safetensors file.
    pub features: PathBuf,
    /// Its manifest.
    pub manifest: PathBuf,
    /// Seconds spent in the backbone (0 when it did not run).
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
    /// Rows (pictures and views) that went through the backbone, all splits together.
    pub backbone_rows: usize,
    /// Files (or tar members) read to compute their content keys, and those whose key was
    /// remembered unread.
    pub hashing: HashCounts,
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

/// A requested split: its pictures (and views), their content keys, and its identity.
struct Planned {
    split: Split,
    /// Content keys of its pictures; computed when first needed (a WebDataset split's identity
    /// does not need them).
    content: Option<Vec<ContentKey>>,
    identity: String,
    /// Rows of the whole split, before `--sample` or `--limit` (views included): what chooses
    /// the engine of a bf16 recipe, so that a sample and the full data share one store.
    unsampled_rows: usize,
}

impl Planned {
    fn content(&mut self, hashes: &HashIndex) -> Result<&[ContentKey]> {
        if self.content.is_none() {
            self.content = Some(self.split.content_keys(hashes)?);
        }
        Ok(self.content.as_deref().expect("set above"))
    }
}

/// The backbone, loaded (and its weights fetched) the first time a row must be computed.
struct LazyBackbone<'a> {
    entry: &'a ModelEntry,
    session: &'a Session,
    local: Option<ResolvedWeights>,
    known: Option<(String, WeightsOrigin)>,
    input_size: i64,
    device: Device,
    precision: Precision,
    loaded: Option<Backbone>,
    /// This process's segment, per store: one file for all the splits it extracts.
    writers: Vec<(PathBuf, SegmentWriter)>,
}

impl LazyBackbone<'_> {
    /// The weights' sha256, fetching the weights when neither `--weights`, the registry nor a
    /// pin tells it.
    fn weights_sha256(&mut self) -> Result<String> {
        if self.known.is_none() {
            let w = self.weights()?;
            self.known = Some((w.sha256.clone(), w.origin.clone()));
        }
        Ok(self.known.as_ref().expect("set above").0.clone())
    }

    fn weights(&mut self) -> Result<ResolvedWeights> {
        if let Some(w) = &self.local {
            return Ok(w.clone());
        }
        let w = fetch_weights(self.entry, &self.session.fetch_options())?;
        if let Some((sha, _)) = &self.known {
            if sha != &w.sha256 {
                return Err(Error::Checksum {
                    path: w.path.clone(),
                    algorithm: "sha256",
                    expected: sha.clone(),
                    actual: w.sha256.clone(),
                    action: "the weights differ from the pinned ones; delete <cache-dir>/pins.json to re-pin".into(),
                });
            }
        }
        self.local = Some(w.clone());
        Ok(w)
    }

    /// The loaded backbone, set to `engine`.
    fn get(&mut self, engine: Engine, batch_size: usize) -> Result<&Backbone> {
        if self.loaded.is_none() {
            let weights = self.weights()?;
            let backbone = load_backbone(self.entry, &weights, self.input_size, self.device, self.precision)?;
            tracing::info!("backbone {} in {:?} on {:?}", self.entry.name, self.precision, self.device);
            tracing::info!("{}; batches of {batch_size}, the next one decoded on another thread", on_device::describe(self.device));
            self.loaded = Some(backbone);
        }
        let backbone = self.loaded.as_mut().expect("loaded above");
        if backbone.engine() != engine {
            backbone.set_engine(engine);
        }
        Ok(self.loaded.as_ref().expect("loaded above"))
    }
}

/// Finds or makes the features of every requested split. The backbone is loaded (and its
/// weights fetched) only when some picture's features are in no store.
pub fn features(session: &Session, req: &FeatureRequest) -> Result<FeatureSet> {
    req.validate()?;
    let hashes = HashIndex::open(&session.cache_dir);
    let result = features_with(session, req, &hashes);
    // What was learnt of the files is kept whatever happened (a file found changed is forgotten).
    if let Err(e) = hashes.save() {
        tracing::warn!("could not save the file hash index ({e}); files will be read again next time");
    }
    result
}

fn features_with(session: &Session, req: &FeatureRequest, hashes: &HashIndex) -> Result<FeatureSet> {
    let entry = session.registry.get(&req.model)?.clone();
    let device = session.device.resolve()?;
    let precision = req.precision.resolve(device, entry.architecture);
    // `--weights FILE` is hashed once, here; Hub weights are read only if something must be
    // extracted (their sha256 is known from the registry or a pin otherwise).
    let local = req.weights.as_deref().map(|p| resolve_weights(&entry, Some(p), &session.fetch_options())).transpose()?;
    let known = match &local {
        Some(w) => Some((w.sha256.clone(), w.origin.clone())),
        None => pinned_weights(&entry, session)?,
    };
    let open = OpenOptions { data_root: session.cache_dir.join("data"), offline: session.offline, progress: session.progress.clone() };
    let dataset = Dataset::open_indexed(&req.data, &open, hashes)?;
    let input = model_input(&entry, req.input_size)?;
    let preprocessing = match dataset.picture_kind {
        PictureKind::Cifar => Preprocessing::stretch(&input),
        PictureKind::Photos => Preprocessing::center_crop(&input),
    };
    let cache = FeatureCache::new(&session.cache_dir);
    let mut planned: Vec<Planned> = Vec::new();
    for name in &req.splits {
        let split = dataset.split(name)?;
        let unsampled_rows = split.len() * views_of(name, req).map_or(1, |v| v.count());
        let rows = stratified_subset(&split.labels, req.subset, req.sample_seed);
        let split = split.subset(&rows);
        let content = if split.identity_needs_content() {
            let (start, before) = (std::time::Instant::now(), hashes.counts());
            let keys = split.content_keys(hashes)?;
            let after = hashes.counts();
            tracing::info!(
                "{name}: content keys of {} pictures in {:.2}s ({} files read and hashed, {} unchanged files not read)",
                keys.len(),
                start.elapsed().as_secs_f64(),
                after.hashed - before.hashed,
                after.reused - before.reused
            );
            Some(keys)
        } else {
            None
        };
        let identity = split.identity(content.as_deref().unwrap_or(&[]))?;
        let split = match views_of(name, req) {
            Some(views) => split.with_views(views),
            None => split,
        };
        planned.push(Planned { split, content, identity, unsampled_rows });
    }
    let batch_size = req.batch_size.unwrap_or_else(|| default_batch_size(device));
    let ctx = Context { session, req, entry: &entry, dataset: &dataset, preprocessing: &preprocessing, precision, device, batch_size, cache: &cache };

    let mut lazy = LazyBackbone { entry: &entry, session, local, known, input_size: input.input_size, device, precision, loaded: None, writers: Vec::new() };
    let mut found: Vec<Option<SplitFeatures>> = Vec::new();
    for p in &mut planned {
        let hit = match lazy.known.clone() {
            Some((sha, _)) => ctx.find(&p.split, ctx.whole_key(&p.split, &p.identity, &sha))?,
            None => None,
        };
        found.push(match hit {
            Some(hit) => {
                tracing::info!("{} features: {} rows from the cache ({})", p.split.name, hit.manifest.rows, hit.dir.display());
                let sha = lazy.known.as_ref().expect("a hit needs the weights' sha256").0.clone();
                ctx.note_hit(p, &hit, &sha, hashes)?;
                Some(split_features(&p.split.name, "cache", 0.0, 0, 0, hit))
            }
            None => None,
        });
    }
    let mut backbone_runs = 0;
    let mut backbone_rows = 0;
    for (p, slot) in planned.iter_mut().zip(found.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let sha = lazy.weights_sha256()?;
        let whole = ctx.whole_key(&p.split, &p.identity, &sha);
        if let Some(hit) = ctx.find(&p.split, whole.clone())? {
            ctx.note_hit(p, &hit, &sha, hashes)?;
            *slot = Some(split_features(&p.split.name, "cache", 0.0, 0, 0, hit));
            continue;
        }
        let (key, shard) = ctx.target(&p.split, whole)?;
        let content = p.content(hashes)?.to_vec();
        let (part, part_content) = match shard {
            Some(s) => {
                tracing::info!("{} features: shard {}/{}, rows {}..{} of the entry's {}", p.split.name, s.index, s.count, s.start, s.end, whole_rows(&p.split));
                let stored = stored_per_picture(&p.split);
                (p.split.stored_rows(s.start, s.end), content[s.start / stored..s.end / stored].to_vec())
            }
            None => (p.split.clone(), content),
        };
        let recipe = ctx.recipe(p, &sha);
        let made = ctx.make_entry(&part, &part_content, &key, recipe, &mut lazy, hashes)?;
        if made.extracted.rows > 0 {
            backbone_runs += 1;
            backbone_rows += made.extracted.rows;
        }
        let source = if made.extracted.rows > 0 { "extracted" } else { "store" };
        *slot = Some(split_features(&p.split.name, source, made.extracted.seconds, made.extracted.rows, made.store_rows, made.entry));
    }
    let (weights_sha256, weights) = lazy.known.clone().expect("weights are known once every split is found");
    Ok(FeatureSet {
        model: entry.name.clone(),
        precision,
        weights_sha256,
        weights,
        preprocessing,
        classes: dataset.classes.clone(),
        splits: found.into_iter().map(|s| s.expect("every split was found or made")).collect(),
        backbone_runs,
        backbone_rows,
        hashing: hashes.counts(),
        augment: req.augment,
        tta: req.tta,
    })
}

/// What one [`features`] call shares between its splits.
struct Context<'a> {
    session: &'a Session,
    req: &'a FeatureRequest,
    entry: &'a ModelEntry,
    dataset: &'a Dataset,
    preprocessing: &'a Preprocessing,
    precision: Precision,
    device: Device,
    batch_size: usize,
    cache: &'a FeatureCache,
}

/// An entry made from the store.
struct Made {
    entry: CachedFeatures,
    extracted: Extracted,
    store_rows: usize,
}

impl Context<'_> {
    fn whole_key(&self, split: &Split, identity: &str, sha: &str) -> FeatureKey {
        FeatureKey {
            format: FORMAT_VERSION,
            model: self.entry.name.clone(),
            architecture: self.entry.architecture,
            weights_sha256: sha.to_string(),
            preprocessing: self.preprocessing.clone(),
            precision: self.precision,
            dataset: self.dataset.name.clone(),
            data_identity: identity.to_string(),
            split: split.name.clone(),
            sample: self.req.subset,
            sample_seed: self.req.sample_seed,
            rows: whole_rows(split),
            views: split.views().copied(),
            views_seeded_by: match split.views() {
                Some(Views::Augment(_)) => Some("content".into()),
                _ => None,
            },
            shard: None,
        }
    }

    /// The key of what this request makes of `split`: the whole split, or this worker's shard.
    fn target(&self, split: &Split, whole: FeatureKey) -> Result<(FeatureKey, Option<ShardOf>)> {
        match self.req.shard {
            None => Ok((whole, None)),
            Some(spec) => {
                let (bounds, unit) = split.shard_units(self.batch_size);
                let shard = spec.rows(&split.name, &bounds, unit, self.batch_size)?;
                Ok((whole.for_shard(shard), Some(shard)))
            }
        }
    }

    /// A finished entry for `whole` (merging complete shards), or for this worker's shard. A
    /// worker (`--shard`) takes a finished whole entry, never merges.
    fn find(&self, split: &Split, whole: FeatureKey) -> Result<Option<CachedFeatures>> {
        if self.req.shard.is_some() {
            if let Some(hit) = self.cache.lookup(&whole)? {
                return Ok(Some(hit));
            }
        } else if let Some((hit, merged)) = find_or_merge(self.session, self.req, self.cache, &whole)? {
            if merged {
                tracing::info!("{} features: merged from their shards into {}", split.name, hit.dir.display());
            }
            return Ok(Some(hit));
        }
        match self.target(split, whole)? {
            (key, Some(_)) => self.cache.lookup(&key),
            (_, None) => Ok(None),
        }
    }

    /// The recipe of `p`'s rows: the engine is part of it only where it changes the numbers
    /// beyond 1e-6 (bf16), and is then chosen by the size of the whole split before any
    /// `--sample` or `--limit` (docs/performance.md, "A sample, then the full data, in bf16").
    fn recipe(&self, p: &Planned, sha: &str) -> Recipe {
        Recipe {
            format: STORE_FORMAT,
            model: self.entry.name.clone(),
            architecture: self.entry.architecture,
            weights_sha256: sha.to_string(),
            preprocessing: self.preprocessing.clone(),
            precision: self.precision,
            engine: recipe_engine(self.precision, self.device, p.unsampled_rows, self.entry.architecture),
        }
    }

    /// Records that the entry `hit` of `p` was used (for `cache prune`), and brings its rows
    /// into the store when an earlier lastlayer made the entry and the store lacks them.
    fn note_hit(&self, p: &mut Planned, hit: &CachedFeatures, sha: &str, hashes: &HashIndex) -> Result<()> {
        let store = FeatureStore::new(&self.session.cache_dir, self.recipe(p, sha));
        let name = entry_dir_name(hit);
        if store.touch_use(&name)? {
            return Ok(());
        }
        let content = p.content(hashes)?.to_vec();
        let keys = p.split.row_keys(&content);
        store.record_use(&name, &keys)?;
        // Plain rows in fp32 (where the engine does not change the numbers beyond 1e-6) are
        // the store's rows: import them once, so that a later edit of the data set reuses them.
        if p.split.views().is_some() || self.precision != Precision::Fp32 || hit.manifest.key.shard.is_some() {
            return Ok(());
        }
        let index = store.read()?;
        let missing: Vec<usize> = first_rows_of_missing(&keys, &index);
        if missing.is_empty() {
            return Ok(());
        }
        let (features, _) = hit.load()?;
        let width = features.size()[1] as u32;
        let rows = Tensor::from_slice(&missing.iter().map(|&r| r as i64).collect::<Vec<_>>());
        let picked = features.index_select(0, &rows).contiguous();
        let flat = Vec::<f32>::try_from(picked.view([-1]))?;
        let mut writer = store.writer(width)?;
        let mine: Vec<RowKey> = missing.iter().map(|&r| keys[r]).collect();
        for (k, f) in mine.chunks(1024).zip(flat.chunks(1024 * width as usize)) {
            writer.append(k, f)?;
        }
        tracing::info!("{} features: {} rows of an earlier lastlayer's entry added to the feature store", p.split.name, missing.len());
        Ok(())
    }

    /// Makes the entry `key` of `split` from the store, extracting the rows it lacks.
    fn make_entry(&self, split: &Split, content: &[ContentKey], key: &FeatureKey, recipe: Recipe, lazy: &mut LazyBackbone, hashes: &HashIndex) -> Result<Made> {
        let store = FeatureStore::new(&self.session.cache_dir, recipe);
        let keys = split.row_keys(content);
        let name = crate::cache::shards::entry_name(key);
        // Recorded first, so that `cache prune` never drops rows this run is about to use.
        store.record_use(&name, &keys)?;
        let mut extracted = Extracted::default();
        let mut task = None;
        loop {
            let start = std::time::Instant::now();
            let index = store.read()?;
            let missing = first_rows_of_missing(&keys, &index);
            tracing::debug!(
                "{}: {} row keys looked up in a store of {} rows ({} segments) in {:.3}s: {} missing",
                split.name,
                keys.len(),
                index.rows(),
                index.segments(),
                start.elapsed().as_secs_f64(),
                missing.len()
            );
            if missing.is_empty() {
                if let Some(t) = task.take() {
                    crate::progress::Task::finish(t);
                }
                let _lock = EntryLock::acquire(&self.cache.lock_path(key))?;
                if let Some(hit) = self.cache.lookup(key)? {
                    tracing::info!("{} features: made by another process meanwhile", split.name);
                    return Ok(Made { entry: hit, extracted, store_rows: keys.len() - extracted.rows });
                }
                let gathered = match index.gather(&keys) {
                    // A segment replaced by `cache prune` since the store was read: read again.
                    Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                    other => other?,
                };
                match gathered {
                    Ok(features) => {
                        let entry = self.store_entry(split, key, features, extracted.seconds)?;
                        let from_store = keys.len().saturating_sub(extracted.rows);
                        tracing::info!(
                            "{} features: {} rows, {from_store} from the feature store, {} extracted now{}, cached in {}",
                            split.name,
                            keys.len(),
                            extracted.rows,
                            if extracted.rows > 0 { format!(" in {:.1}s ({:.1} rows/s)", extracted.seconds, extracted.rows as f64 / extracted.seconds.max(1e-9)) } else { String::new() },
                            entry.dir.display()
                        );
                        return Ok(Made { entry, extracted, store_rows: from_store });
                    }
                    Err(damaged) => {
                        for d in &damaged {
                            tracing::warn!("{}; its {} rows will be computed again", d.error, d.rows);
                        }
                        store.quarantine(&damaged)?;
                        continue;
                    }
                }
            }
            let wanted: Vec<RowKey> = missing.iter().map(|&r| keys[r]).collect();
            let outcome = store.claim(&wanted)?;
            if !outcome.mine.is_empty() {
                let mine: HashSet<RowKey> = outcome.mine.iter().copied().collect();
                let rows: Vec<usize> = missing.iter().copied().filter(|&r| mine.contains(&keys[r])).collect();
                let todo = split.select(&rows);
                let expected: Vec<RowKey> = rows.iter().map(|&r| keys[r]).collect();
                // A frozen module already warmed up in this process has paid its fixed cost:
                // the next split keeps it, however few its rows.
                let warm = lazy.loaded.as_ref().is_some_and(Backbone::ran_frozen);
                let engine = store.recipe().engine.unwrap_or_else(|| {
                    if warm { Engine::Frozen } else { Engine::choose(self.device, rows.len(), self.entry.architecture) }
                });
                let width = lazy.get(engine, self.batch_size)?.feature_width() as u32;
                if !lazy.writers.iter().any(|(dir, _)| dir == store.dir()) {
                    let w = store.writer(width)?;
                    lazy.writers.push((store.dir().to_path_buf(), w));
                }
                let LazyBackbone { loaded, writers, .. } = &mut *lazy;
                let backbone = loaded.as_ref().expect("loaded above");
                let writer = &mut writers.iter_mut().find(|(dir, _)| dir == store.dir()).expect("made above").1;
                let t = task.get_or_insert_with(|| {
                    let mut t = self.session.progress.task(&format!("extract {}", split.name), keys.len() as u64, Unit::Images);
                    t.set_position((keys.len() - missing.len()) as u64);
                    t
                });
                let found = keys.len() - missing.len();
                let engine = format!(
                    "engine {:?}{}",
                    backbone.engine(),
                    if needs_fixed_shape(backbone.engine(), self.precision) { ", batches padded to one shape" } else { "" }
                );
                if found > 0 {
                    tracing::info!(
                        "{}: resuming, {found} of {} rows are in the feature store already (an earlier run's, or other data's); extracting the other {} ({engine})",
                        split.name,
                        keys.len(),
                        rows.len()
                    );
                } else {
                    tracing::info!("{}: extracting {} rows ({engine})", split.name, rows.len());
                }
                let done = extract_into_store(backbone, &todo, &expected, self.preprocessing, self.batch_size, self.req.chunk_rows, writer, t, hashes)?;
                extracted.rows += done.rows;
                extracted.seconds += done.seconds;
                drop(outcome.claim);
            }
            if !outcome.others.is_empty() {
                let theirs: HashSet<RowKey> = wanted.iter().copied().filter(|k| !outcome.mine.contains(k)).collect();
                store.wait_for_claims(&theirs)?;
            }
        }
    }

    /// Writes `split`'s entry from its rows' features (averaging `--tta flip` views).
    fn store_entry(&self, split: &Split, key: &FeatureKey, features: Tensor, seconds: f64) -> Result<CachedFeatures> {
        let labels = Tensor::from_slice(&split.labels);
        let (features, labels) = match split.views().filter(|v| v.averaged()) {
            Some(views) => {
                // `--tta flip`: the picture's and its mirror's features, averaged into its row.
                let v = views.count();
                (average_views(&features, v, &(0..v).collect::<Vec<_>>()), labels.view([-1, v as i64]).select(1, 0).contiguous())
            }
            None => (features, labels),
        };
        self.cache.store(key, &features, &labels, &self.dataset.classes, seconds)
    }
}

/// The engine a recipe names: none in fp32, where the engines' features agree within 1e-6
/// (4.4e-7 relative for ResNet-50, docs/performance.md) and any may compute a row; in bf16 the
/// one chosen for the whole split of `rows` rows (before sampling), so that every row of a
/// store comes from one engine, and a sample's rows are the full data's.
fn recipe_engine(precision: Precision, device: Device, rows: usize, architecture: Architecture) -> Option<Engine> {
    match precision {
        Precision::Fp32 => None,
        Precision::Bf16 => Some(Engine::choose(device, rows, architecture)),
    }
}

/// For each distinct key of `keys` that `index` lacks, the first row that has it, in order.
fn first_rows_of_missing(keys: &[RowKey], index: &crate::cache::store::StoreIndex) -> Vec<usize> {
    let mut seen: HashSet<RowKey> = HashSet::new();
    keys.iter()
        .enumerate()
        .filter(|(_, k)| !index.contains(k) && seen.insert(**k))
        .map(|(r, _)| r)
        .collect()
}

fn entry_dir_name(hit: &CachedFeatures) -> String {
    hit.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| entry_name(&hit.manifest.key))
}

/// Rows of the entry `split` makes: one a view, or one a picture when the views are averaged.
fn whole_rows(split: &Split) -> usize {
    if split.views().is_some_and(Views::averaged) {
        split.pictures()
    } else {
        split.len()
    }
}

/// Rows the entry has per picture.
fn stored_per_picture(split: &Split) -> usize {
    match split.views() {
        Some(v) if !v.averaged() => v.count(),
        _ => 1,
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

fn split_features(split: &str, source: &'static str, seconds: f64, backbone_rows: usize, store_rows: usize, entry: CachedFeatures) -> SplitFeatures {
    SplitFeatures {
        split: split.to_string(),
        rows: entry.manifest.rows,
        source,
        backbone_rows,
        store_rows,
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
