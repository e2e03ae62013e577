//! Verified weight downloads from the Hugging Face Hub into the standard HF cache
//! (`$HF_HOME/hub`, honoured through hf-hub), or a local `--weights FILE`.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

use super::pins::Pins;
use super::registry::{is_hex, ModelEntry};
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use crate::progress::{Progress, Task, Unit};

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// lastlayer's cache folder (pins live there).
    pub cache_dir: PathBuf,
    /// Use the local Hugging Face cache only.
    pub offline: bool,
    /// Progress reporting for downloads.
    pub progress: Progress,
}

/// Where a set of weights came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WeightsOrigin {
    /// A Hub repository at a commit.
    Hub {
        /// `timm/resnet50.tv_in1k`.
        repo: String,
        /// The commit the file was taken from.
        revision: String,
        /// The file in the repository.
        file: String,
    },
    /// A file given with `--weights`.
    Local {
        /// Its path as given.
        path: PathBuf,
    },
}

/// A weights file on disk whose sha256 has been verified.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedWeights {
    /// The file (inside the HF cache for Hub weights).
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Where it came from.
    pub origin: WeightsOrigin,
    /// True when this call downloaded it.
    pub downloaded: bool,
}

/// `--weights FILE` when given, else the registry's Hub weights (see [`fetch_weights`]).
pub fn resolve_weights(entry: &ModelEntry, weights_file: Option<&Path>, opts: &FetchOptions) -> Result<ResolvedWeights> {
    match weights_file {
        Some(path) => {
            if !path.is_file() {
                return Err(Error::bad_input(path, "--weights: no such file; give a safetensors file with the registry's key names"));
            }
            Ok(ResolvedWeights {
                path: path.to_path_buf(),
                sha256: sha256_file(path)?,
                origin: WeightsOrigin::Local { path: path.to_path_buf() },
                downloaded: false,
            })
        }
        None => fetch_weights(entry, opts),
    }
}

/// Returns the verified weights of `entry`, from the HF cache when there, else downloaded.
///
/// The expected sha256 is the registry's, else the one pinned on first use. A first download is
/// checked against the Hub's etag (the sha256 of an LFS file) and then pinned with its commit.
/// A file that fails its check is deleted from the HF cache and reported.
pub fn fetch_weights(entry: &ModelEntry, opts: &FetchOptions) -> Result<ResolvedWeights> {
    let mut pins = Pins::load(&opts.cache_dir)?;
    let pin = pins.get(&entry.hub_repo, &entry.file).cloned();
    let expected = entry.sha256.clone().or_else(|| pin.as_ref().map(|p| p.sha256.clone()));
    let revision = entry
        .revision
        .clone()
        .or_else(|| pin.as_ref().map(|p| p.revision.clone()))
        .unwrap_or_else(|| "main".to_string());
    let repo = Repo::with_revision(entry.hub_repo.clone(), RepoType::Model, revision.clone());
    let describe = format!("{} ({}@{}, {})", entry.name, entry.hub_repo, revision, entry.file);

    if let Some(path) = cached_file(&repo, &revision, &entry.file) {
        let sha = sha256_file(&path)?;
        let want = expected.clone().or_else(|| blob_etag(&path).filter(|e| is_hex(e, 64)));
        match want {
            Some(want) if want == sha => {
                let commit = snapshot_commit(&path).unwrap_or(revision);
                if pin.is_none() && entry.sha256.is_none() {
                    pins.record(&entry.hub_repo, &entry.file, &commit, &sha)?;
                }
                return Ok(hub_weights(entry, path, sha, commit, false));
            }
            Some(want) => {
                remove_cached(&path);
                let err = Error::Checksum {
                    path: path.clone(),
                    algorithm: "sha256",
                    expected: want,
                    actual: sha.clone(),
                    action: "the damaged file was removed from the Hugging Face cache; run `lastlayer fetch` again to download it".into(),
                };
                if opts.offline {
                    return Err(err);
                }
                tracing::warn!("{err}");
            }
            None => {
                return Err(Error::bad_input(
                    &path,
                    "cached weights have no known sha256 (not pinned, and the cache does not name the blob by it); \
                     delete this file from the Hugging Face cache and fetch again",
                ))
            }
        }
    }

    if opts.offline {
        return Err(Error::Offline {
            what: describe,
            hint: format!(
                "run `lastlayer fetch {}` where the Hub is reachable, fill $HF_HOME/hub with a Hugging Face cache, \
                 or pass --weights FILE",
                entry.name
            ),
        });
    }

    let api = ApiBuilder::from_env()
        .with_progress(false)
        .with_retries(2)
        .build()
        .map_err(|e| Error::Download { what: describe.clone(), message: e.to_string() })?;
    let task = opts.progress.task(&format!("download {}", entry.name), 0, Unit::Bytes);
    let path = api
        .repo(repo)
        .download_with_progress(&entry.file, HubProgress(Some(task)))
        .map_err(|e| Error::Download {
            what: describe.clone(),
            message: format!("{e}; check the network (or HF_ENDPOINT), or use --offline with a filled cache"),
        })?;
    let sha = sha256_file(&path)?;
    let etag = blob_etag(&path);
    let want = match (&expected, etag.as_deref().filter(|e| is_hex(e, 64))) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(etag)) => Some(etag.to_string()),
        (None, None) => None,
    };
    if let Some(want) = want {
        if want != sha {
            remove_cached(&path);
            return Err(Error::Checksum {
                path,
                algorithm: "sha256",
                expected: want,
                actual: sha,
                action: "the download was incomplete or altered and was removed; run the command again to download it afresh".into(),
            });
        }
    } else {
        tracing::warn!("the Hub gave no sha256 for {describe}; pinning the sha256 computed here, {sha}");
    }
    let commit = snapshot_commit(&path).unwrap_or(revision);
    if entry.sha256.is_none() {
        pins.record(&entry.hub_repo, &entry.file, &commit, &sha)?;
    }
    Ok(hub_weights(entry, path, sha, commit, true))
}

fn hub_weights(entry: &ModelEntry, path: PathBuf, sha256: String, revision: String, downloaded: bool) -> ResolvedWeights {
    ResolvedWeights {
        path,
        sha256,
        origin: WeightsOrigin::Hub { repo: entry.hub_repo.clone(), revision, file: entry.file.clone() },
        downloaded,
    }
}

/// The cached file for `repo` at `revision`: through `refs/<revision>`, or straight from
/// `snapshots/<revision>/` when the revision is a commit.
fn cached_file(repo: &Repo, revision: &str, file: &str) -> Option<PathBuf> {
    let cache = Cache::from_env().repo(repo.clone());
    if let Some(p) = cache.get(file) {
        return Some(p);
    }
    if is_hex(revision, 40) {
        let p = cache.pointer_path(revision).join(file);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// The blob name behind a snapshot link: the etag the Hub served for it.
fn blob_etag(path: &Path) -> Option<String> {
    let target = std::fs::canonicalize(path).ok()?;
    let in_blobs = target.parent()?.file_name()? == "blobs";
    in_blobs.then(|| target.file_name().map(|n| n.to_string_lossy().into_owned())).flatten()
}

/// The commit of `snapshots/<commit>/<file>`.
fn snapshot_commit(path: &Path) -> Option<String> {
    let commit = path.parent()?.file_name()?.to_string_lossy().into_owned();
    is_hex(&commit, 40).then_some(commit)
}

fn remove_cached(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}

/// Adapts a [`Task`] to hf-hub's progress callbacks.
struct HubProgress(Option<Task>);

impl hf_hub::api::Progress for HubProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        if let Some(task) = &mut self.0 {
            task.set_total(size as u64);
        }
    }
    fn update(&mut self, size: usize) {
        if let Some(task) = &mut self.0 {
            task.inc(size as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(task) = self.0.take() {
            task.finish();
        }
    }
}
