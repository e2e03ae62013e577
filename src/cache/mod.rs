//! The feature cache: each split's features and labels, written once per [`FeatureKey`].
//!
//! Layout: `<cache-dir>/features/<model>/<split>-<digest>/` holding
//! - `features.safetensors`: `features` (N x D, f32) and `labels` (N, int64), rows in the data
//!   files' order; any safetensors reader opens it;
//! - `manifest.json`: the full key, the shape, and the file's size and blake3, written last,
//!   atomically. An entry without a valid manifest does not exist; one whose file does not match
//!   its manifest is reported and recomputed, never used.
//!
//! Beside an entry: `<entry>.lock` (see [`EntryLock`]), held while it is written.
//!
//! Entries are made from the rows of the feature [`store`], where every picture's features
//! are kept by content; a split's entry is what readers (the head, Python) open.

mod lock;
pub mod maintain;
pub mod shards;
pub mod store;

pub use lock::EntryLock;
pub use shards::ShardOf;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::backbone::Precision;
use crate::data::preprocess::Preprocessing;
use crate::data::sample::Subset;
use crate::data::views::Views;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{blake3_file, write_json_atomic, write_safetensors};
use crate::backbone::Architecture;

/// Version of the cache layout; part of every key.
pub const FORMAT_VERSION: u32 = 1;
const FEATURES_FILE: &str = "features.safetensors";
const MANIFEST_FILE: &str = "manifest.json";

/// Everything that determines a split's features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureKey {
    /// Cache layout version.
    pub format: u32,
    /// Registry name of the backbone.
    pub model: String,
    /// Its architecture.
    pub architecture: Architecture,
    /// sha256 of the weights file.
    pub weights_sha256: String,
    /// How pictures became input tensors.
    pub preprocessing: Preprocessing,
    /// Backbone precision.
    pub precision: Precision,
    /// Data set name (`cifar10`, a folder's name); informative.
    pub dataset: String,
    /// Content hash of exactly the rows extracted (see `Split::identity`).
    pub data_identity: String,
    /// `train` or `test`.
    pub split: String,
    /// The sample taken of the split.
    pub sample: Subset,
    /// Its seed.
    pub sample_seed: u64,
    /// Number of rows.
    pub rows: usize,
    /// The views of each picture (`--augment` rows, or `--tta flip` averaged); absent: one
    /// row a picture, as before views existed (so older entries keep their digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Views>,
    /// `content` for `--augment` views seeded by each picture's content (since the feature
    /// store); absent in earlier entries, whose crops were seeded by the picture's name and are
    /// therefore never taken for today's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views_seeded_by: Option<String>,
    /// For a shard entry, which rows it holds (see [`shards`]); absent for a whole split, so
    /// that whole splits' digests are those of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardOf>,
}

impl FeatureKey {
    /// A hex digest of the whole key.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("keys always serialise");
        blake3::hash(&json).to_hex()[..32].to_string()
    }
}

/// What `manifest.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The key the features were computed for.
    pub key: FeatureKey,
    /// Its digest (the folder name's suffix).
    pub digest: String,
    /// Rows.
    pub rows: usize,
    /// Feature width.
    pub feature_width: i64,
    /// Storage dtype of `features` (`f32`).
    pub dtype: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Size of `features.safetensors` in bytes.
    pub file_bytes: u64,
    /// blake3 of `features.safetensors`.
    pub file_blake3: String,
    /// Seconds the backbone took.
    pub extract_seconds: f64,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// lastlayer's version.
    pub lastlayer_version: String,
}

/// A verified cache entry.
#[derive(Debug, Clone, Serialize)]
pub struct CachedFeatures {
    /// The entry's folder.
    pub dir: PathBuf,
    /// `features.safetensors`.
    pub features_path: PathBuf,
    /// `manifest.json`.
    pub manifest_path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl CachedFeatures {
    /// Loads `(features [N, D] f32, labels [N] i64)`.
    pub fn load(&self) -> Result<(Tensor, Tensor)> {
        let tensors = Tensor::read_safetensors(&self.features_path)
            .map_err(|e| Error::bad_input(&self.features_path, format!("unreadable cache file ({e}); `lastlayer cache rm` it")))?;
        let get = |name: &str| {
            tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t.shallow_clone()).ok_or_else(|| {
                Error::bad_input(&self.features_path, format!("has no '{name}' tensor; delete this cache entry"))
            })
        };
        let (x, y) = (get("features")?, get("labels")?);
        let m = &self.manifest;
        if x.size() != [m.rows as i64, m.feature_width] || y.size() != [m.rows as i64] || x.kind() != Kind::Float || y.kind() != Kind::Int64 {
            return Err(Error::bad_input(&self.features_path, "tensor shapes or dtypes disagree with manifest.json; delete this cache entry"));
        }
        Ok((x, y))
    }
}

/// The cache under `<cache-dir>/features`.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    root: PathBuf,
    cache_dir: PathBuf,
}

impl FeatureCache {
    /// The feature cache inside `cache_dir`.
    pub fn new(cache_dir: &Path) -> Self {
        FeatureCache { root: cache_dir.join("features"), cache_dir: cache_dir.to_path_buf() }
    }

    /// The folder of `key`'s entry.
    pub fn entry_dir(&self, key: &FeatureKey) -> PathBuf {
        self.root.join(&key.model).join(shards::entry_name(key))
    }

    /// The lock file of `key`'s entry.
    pub fn lock_path(&self, key: &FeatureKey) -> PathBuf {
        with_suffix(&self.entry_dir(key), ".lock")
    }

    /// The cache folder this cache lives in.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Every feature store, then every entry folder (with a manifest or not) and earlier
    /// versions' partial folders, by model.
    pub fn list(&self) -> Result<Vec<Listed>> {
        let mut out: Vec<Listed> = store::list_stores(&self.cache_dir)?.into_iter().map(Listed::Store).collect();
        let models = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&self.root),
        };
        for m in models {
            let m = m.at(&self.root)?.path();
            if !m.is_dir() {
                continue;
            }
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&m).at(&m)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            for dir in entries {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.ends_with(".lock") || !dir.is_dir() {
                    continue;
                }
                if name.ends_with(".partial") {
                    // An earlier lastlayer's unfinished extraction: the feature store resumes
                    // extractions now, so its chunks are not used.
                    out.push(Listed::Leftover { bytes: dir_bytes(&dir), dir });
                    continue;
                }
                let manifest: Option<Manifest> =
                    std::fs::read(dir.join(MANIFEST_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
                out.push(Listed::Entry { bytes: dir_bytes(&dir), dir, manifest });
            }
        }
        Ok(out)
    }

    /// Verifies the entry in `dir` against its own manifest (size and blake3).
    pub fn verify_dir(dir: &Path) -> Result<CachedFeatures> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read(&manifest_path).at(&manifest_path)?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| Error::bad_input(&manifest_path, format!("not a valid manifest ({e})")))?;
        verify(dir, &manifest.key)
    }

    /// The verified entry for `key`, or `None` when absent. An entry that fails verification
    /// is reported (warning) and treated as absent, so that it is recomputed.
    pub fn lookup(&self, key: &FeatureKey) -> Result<Option<CachedFeatures>> {
        let dir = self.entry_dir(key);
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Ok(None);
        }
        match verify(&dir, key) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!("cache entry {} failed verification and will be recomputed: {e}", dir.display());
                Ok(None)
            }
        }
    }

    /// Makes `key`'s entry folder ready to be written: `(folder, features file, manifest)`,
    /// with any old manifest deleted first, since a new manifest must never describe an old
    /// file (the features file and then the manifest are written next, each atomically).
    pub(crate) fn begin_entry(&self, key: &FeatureKey) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = self.entry_dir(key);
        std::fs::create_dir_all(&dir).at(&dir)?;
        let (features_path, manifest_path) = (dir.join(FEATURES_FILE), dir.join(MANIFEST_FILE));
        match std::fs::remove_file(&manifest_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&manifest_path),
            _ => {}
        }
        Ok((dir, features_path, manifest_path))
    }

    /// Writes an entry: the features file first, then the manifest, each atomically.
    pub fn store(&self, key: &FeatureKey, features: &Tensor, labels: &Tensor, classes: &[String], extract_seconds: f64) -> Result<CachedFeatures> {
        let (dir, features_path, manifest_path) = self.begin_entry(key)?;
        let features = features.to_kind(Kind::Float).contiguous();
        let labels = labels.to_kind(Kind::Int64).contiguous();
        write_safetensors(&features_path, &[("features", &features), ("labels", &labels)])?;
        let manifest = Manifest {
            key: key.clone(),
            digest: key.digest(),
            rows: features.size()[0] as usize,
            feature_width: features.size()[1],
            dtype: "f32".into(),
            classes: classes.to_vec(),
            file_bytes: std::fs::metadata(&features_path).at(&features_path)?.len(),
            file_blake3: blake3_file(&features_path)?,
            extract_seconds,
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            lastlayer_version: env!("CARGO_PKG_VERSION").into(),
        };
        write_json_atomic(&manifest_path, &manifest)?;
        Ok(CachedFeatures { dir, features_path, manifest_path, manifest })
    }
}

/// What `cache ls` shows.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a few per `cache ls`: boxing buys nothing
pub enum Listed {
    /// A cache entry (manifest `None` when missing or unreadable: not usable).
    Entry {
        /// Its folder.
        dir: PathBuf,
        /// Its manifest.
        manifest: Option<Manifest>,
        /// Bytes on disk.
        bytes: u64,
    },
    /// A feature store (one recipe's rows).
    Store(store::StoreInfo),
    /// An earlier lastlayer's unfinished extraction (`<entry>.partial/`), no longer used:
    /// `cache rm --partial` deletes it.
    Leftover {
        /// Its folder.
        dir: PathBuf,
        /// Bytes on disk.
        bytes: u64,
    },
}

pub(crate) fn with_suffix(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
}

fn verify(dir: &Path, key: &FeatureKey) -> Result<CachedFeatures> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let features_path = dir.join(FEATURES_FILE);
    let text = std::fs::read(&manifest_path).at(&manifest_path)?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| Error::bad_input(&manifest_path, format!("not a valid manifest ({e})")))?;
    if &manifest.key != key {
        return Err(Error::bad_input(&manifest_path, "describes other features than its folder name says"));
    }
    let bytes = std::fs::metadata(&features_path).at(&features_path)?.len();
    if bytes != manifest.file_bytes {
        return Err(Error::bad_input(&features_path, format!("is {bytes} bytes, the manifest says {}", manifest.file_bytes)));
    }
    let digest = blake3_file(&features_path)?;
    if digest != manifest.file_blake3 {
        return Err(Error::Checksum {
            path: features_path,
            algorithm: "blake3",
            expected: manifest.file_blake3,
            actual: digest,
            action: "the cached features are damaged and will be recomputed".into(),
        });
    }
    Ok(CachedFeatures { dir: dir.to_path_buf(), features_path, manifest_path, manifest })
}
