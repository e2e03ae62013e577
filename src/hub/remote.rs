//! One file from the Hub into the HF cache, with lastlayer's own HTTP client rather than
//! hf-hub's (which has no timeouts and fails outright when a proxy ignores `Range`).
//!
//! As `huggingface_hub` does: a `HEAD` of `{endpoint}/{repo}/resolve/{revision}/{file}`,
//! following same-host redirects (the Hub's relative 307 to `/api/resolve-cache/...`) but not
//! the 302 to the CDN, gives the commit (`x-repo-commit`), the blob name and sha256
//! (`x-linked-etag`, else `etag`) and the size (`x-linked-size`). Then a `GET` of the same URL,
//! redirects followed, fills `blobs/<etag>.part`, resuming it with `Range` across retries and
//! runs. The token goes to the Hub's host only, never to the CDN.

use std::path::PathBuf;

use super::hf_cache::{endpoint, token, RepoCache};
use super::registry::is_hex;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::sha256_file;
use crate::net::{download_resumable, send, with_retries, Auth, Method, NetConfig, NetError};
use crate::progress::{Progress, Unit};

/// What the Hub said about a file before its bytes were fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubMetadata {
    /// The commit the revision resolved to.
    pub commit: String,
    /// The blob's name in the cache: `x-linked-etag` (the sha256) for LFS files, else `etag`.
    pub etag: String,
    /// The size, when the Hub gave it.
    pub size: Option<u64>,
}

impl HubMetadata {
    /// The sha256 the Hub vouches for: the etag of an LFS file.
    pub fn sha256(&self) -> Option<&str> {
        is_hex(&self.etag, 64).then_some(self.etag.as_str())
    }
}

/// A downloaded, verified file in the HF cache.
#[derive(Debug, Clone)]
pub struct HubDownload {
    /// `snapshots/<commit>/<file>`.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// The commit it was taken from.
    pub commit: String,
    /// The sha256 the Hub gave (`x-linked-etag`), if any.
    pub hub_sha256: Option<String>,
}

/// Downloads `file` of `repo` (`timm/x` for a model, `datasets/owner/name` for a data set: the
/// path of its files on the Hub) at `revision` into `cache` and checks its sha256 against
/// `expected`, else the Hub's `x-linked-etag`. A mismatch removes the download and is an
/// [`Error::Checksum`]; if the file had been resumed from an earlier run's bytes, it is first
/// downloaded once more from scratch.
#[allow(clippy::too_many_arguments)]
pub fn download(
    cache: &RepoCache,
    repo: &str,
    revision: &str,
    file: &str,
    expected: Option<&str>,
    net: &NetConfig,
    progress: &Progress,
    describe: &str,
) -> Result<HubDownload> {
    let agent = net.agent();
    let base = endpoint();
    // A revision with a slash (`refs/convert/parquet`) is one path segment, as
    // `huggingface_hub` quotes it.
    let url = format!("{base}/{repo}/resolve/{}/{file}", revision.replace('/', "%2F"));
    let auth = token().and_then(|t| Auth::for_url(&base, t));
    let fail = |message: String| Error::Download {
        what: describe.to_string(),
        message: format!("{message}; check the network (or HF_ENDPOINT, HTTPS_PROXY), or use --offline with a filled cache"),
    };
    let meta = with_retries(net, describe, || metadata(&agent, net, &url, auth.as_ref(), revision)).map_err(|e| fail(e.message))?;
    let hub_sha256 = meta.sha256().map(str::to_string);
    let want = expected.map(str::to_string).or_else(|| hub_sha256.clone());

    let blob = cache.blob(&meta.etag);
    let part = cache.blob(&format!("{}.part", meta.etag));
    let blobs = blob.parent().unwrap_or(&blob);
    std::fs::create_dir_all(blobs).at(blobs)?;
    // One download of a blob at a time, across processes (a job array fetching the same
    // weights): the others wait here, then find the blob in place.
    let _lock = BlobLock::acquire(&cache.blob(&format!("{}.lock", meta.etag)), describe)?;
    if blob.is_file() {
        // Another process or snapshot already has these bytes: check them and link them.
        let sha = sha256_file(&blob)?;
        if want.as_deref().is_none_or(|w| w == sha) {
            let path = cache.link(&meta.etag, revision, &meta.commit, file)?;
            return Ok(HubDownload { path, sha256: sha, commit: meta.commit, hub_sha256 });
        }
        tracing::warn!("{}: sha256 {sha} is not the expected one; downloading it again", blob.display());
        std::fs::remove_file(&blob).at(&blob)?;
    }
    let fetch = || -> Result<u64> {
        let mut task = progress.task(&format!("download {}", file_label(file, describe)), meta.size.unwrap_or(0), Unit::Bytes);
        let got = download_resumable(&agent, net, &url, auth.as_ref(), &part, meta.size, &mut task, describe).map_err(|e| match e {
            Error::Download { message, .. } => fail(message),
            other => other,
        })?;
        task.finish();
        Ok(got.carried_over)
    };
    let carried_over = fetch()?;
    let mut sha = sha256_file(&part)?;
    if let Some(want) = &want {
        if *want != sha && carried_over > 0 {
            tracing::warn!("{describe}: the sha256 of the resumed download does not match; downloading it afresh");
            std::fs::remove_file(&part).at(&part)?;
            fetch()?;
            sha = sha256_file(&part)?;
        }
        if *want != sha {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Checksum {
                path: cache.snapshot_file(&meta.commit, file),
                algorithm: "sha256",
                expected: want.clone(),
                actual: sha,
                action: "the download was incomplete or altered and was removed; run the command again to download it afresh".into(),
            });
        }
    }
    let path = cache.install(&part, &meta.etag, revision, &meta.commit, file)?;
    Ok(HubDownload { path, sha256: sha, commit: meta.commit, hub_sha256 })
}

/// An exclusive lock on `blobs/<etag>.lock` (released by the OS if the holder dies; the file
/// stays, as hf-hub's and `huggingface_hub`'s do).
struct BlobLock(std::fs::File);

impl BlobLock {
    fn acquire(path: &std::path::Path, describe: &str) -> Result<Self> {
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path).at(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!("waiting: another lastlayer process is downloading {describe} ({})", path.display());
                file.lock().at(path)?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e).at(path),
        }
        Ok(BlobLock(file))
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn file_label<'a>(file: &'a str, describe: &'a str) -> &'a str {
    describe.split(' ').next().filter(|s| !s.is_empty()).unwrap_or(file)
}

/// `HEAD` of the resolve URL: commit, etag and size, from the Hub's answers (not the CDN's).
fn metadata(agent: &ureq::Agent, net: &NetConfig, url: &str, auth: Option<&Auth>, revision: &str) -> Result<HubMetadata, NetError> {
    let sent = send(agent, net, Method::Head, url, None, auth, false)?;
    let status = sent.response.status().as_u16();
    let redirected_away = (300..400).contains(&status);
    if !(200..300).contains(&status) && !redirected_away {
        return Err(NetError::from_status(status, &sent.url));
    }
    let commit = sent
        .header("x-repo-commit")
        .map(|c| c.trim().to_string())
        .filter(|c| is_hex(c, 40))
        .or_else(|| is_hex(revision, 40).then(|| revision.to_string()))
        .ok_or_else(|| NetError::permanent(format!("{url} gave no x-repo-commit header (is HF_ENDPOINT a Hugging Face Hub?)")))?;
    let etag = sent
        .header("x-linked-etag")
        .or_else(|| sent.header("etag"))
        .map(|e| normalize_etag(&e))
        .filter(|e| !e.is_empty() && !e.contains(['/', '\\']) && e != "." && e != "..")
        .ok_or_else(|| NetError::permanent(format!("{url} gave no etag header (is HF_ENDPOINT a Hugging Face Hub?)")))?;
    let size = sent.header("x-linked-size").or_else(|| (200..300).contains(&status).then(|| sent.header("content-length")).flatten());
    Ok(HubMetadata { commit, etag, size: size.and_then(|s| s.trim().parse().ok()) })
}

/// `W/"abc"` → `abc`.
fn normalize_etag(e: &str) -> String {
    e.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_quotes_and_weakness() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        let sha = "a".repeat(64);
        let m = HubMetadata { commit: "c".repeat(40), etag: sha.clone(), size: None };
        assert_eq!(m.sha256(), Some(sha.as_str()));
        let m = HubMetadata { etag: "b".repeat(40), ..m };
        assert_eq!(m.sha256(), None);
    }
}
