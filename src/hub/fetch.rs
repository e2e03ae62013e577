//! Verified weight downloads from the Hugging Face Hub into the standard HF cache
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`), or a local `--weights FILE`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::hf_cache::{blob_etag, snapshot_commit, RepoCache};
use super::pins::Pins;
use super::registry::{is_hex, ModelEntry};
use super::remote;
use crate::error::{Error, Result};
use crate::fsutil::sha256_file;
use crate::net::NetConfig;
use crate::progress::Progress;

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
/// checked against the Hub's `x-linked-etag` (the sha256 of an LFS file) and then pinned with
/// its commit. A file that fails its check is deleted from the HF cache and reported. The
/// download itself (see [`super::remote`]) has timeouts, retries and resumption.
pub fn fetch_weights(entry: &ModelEntry, opts: &FetchOptions) -> Result<ResolvedWeights> {
    let mut pins = Pins::load(&opts.cache_dir)?;
    let pin = pins.get(&entry.hub_repo, &entry.file).cloned();
    let expected = entry.sha256.clone().or_else(|| pin.as_ref().map(|p| p.sha256.clone()));
    let revision = entry
        .revision
        .clone()
        .or_else(|| pin.as_ref().map(|p| p.revision.clone()))
        .unwrap_or_else(|| "main".to_string());
    let cache = RepoCache::from_env(&entry.hub_repo);
    let describe = format!("{} ({}@{}, {})", entry.name, entry.hub_repo, revision, entry.file);

    if let Some(path) = cache.cached_file(&revision, &entry.file) {
        let sha = sha256_file(&path)?;
        let want = expected.clone().or_else(|| blob_etag(&path).filter(|e| is_hex(e, 64)));
        let commit = snapshot_commit(&path, &entry.file).unwrap_or_else(|| revision.clone());
        match want {
            Some(want) if want == sha => {
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
                // A cache copied without symlinks (or made on Windows), or a blob not named by
                // its sha256: nothing to check against yet, so pin what is there (trust on
                // first use, as for a download the Hub gave no sha256 for).
                tracing::warn!(
                    "{}: no sha256 known for this cached file (a Hugging Face cache without symlinks?); pinning the sha256 computed here, {sha}",
                    path.display()
                );
                pins.record(&entry.hub_repo, &entry.file, &commit, &sha)?;
                return Ok(hub_weights(entry, path, sha, commit, false));
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

    let net = NetConfig::from_env()?;
    let download = remote::download(&cache, &entry.hub_repo, &revision, &entry.file, expected.as_deref(), &net, &opts.progress, &describe)?;
    let (path, sha) = (download.path, download.sha256);
    if expected.is_none() && download.hub_sha256.is_none() {
        tracing::warn!("the Hub gave no sha256 for {describe}; pinning the sha256 computed here, {sha}");
    }
    if entry.sha256.is_none() {
        pins.record(&entry.hub_repo, &entry.file, &download.commit, &sha)?;
    }
    Ok(hub_weights(entry, path, sha, download.commit, true))
}

fn hub_weights(entry: &ModelEntry, path: PathBuf, sha256: String, revision: String, downloaded: bool) -> ResolvedWeights {
    ResolvedWeights {
        path,
        sha256,
        origin: WeightsOrigin::Hub { repo: entry.hub_repo.clone(), revision, file: entry.file.clone() },
        downloaded,
    }
}

/// Removes a snapshot entry and the blob it links to.
fn remove_cached(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}
