//! The standard Hugging Face cache, read and written the way `huggingface_hub` and hf-hub do:
//! `models--org--name/{blobs/<etag>, refs/<revision>, snapshots/<commit>/<file>}`, the
//! snapshot entry a relative symlink to its blob, or (a cache copied without symlinks, or
//! made on Windows) a regular file. Also where the Hub is (`HF_ENDPOINT`) and the token.

use std::path::{Path, PathBuf};

use super::registry::is_hex;
use crate::error::{IoContext, Result};

/// `$HF_HOME`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    match std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home),
        None => home_dir().join(".cache/huggingface"),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// The Hub's address: `HF_ENDPOINT`, else `https://huggingface.co` (no trailing slash).
pub fn endpoint() -> String {
    let e = std::env::var("HF_ENDPOINT").ok().filter(|v| !v.trim().is_empty());
    e.unwrap_or_else(|| "https://huggingface.co".to_string()).trim().trim_end_matches('/').to_string()
}

/// The Hub token: `HF_TOKEN`, else the file `$HF_HOME/token` (where `huggingface-cli login`
/// writes it). Never logged.
pub fn token() -> Option<String> {
    let from_env = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
    from_env.or_else(|| {
        std::fs::read_to_string(hf_home().join("token")).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
    })
}

/// The cache folder itself: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
pub fn hub_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => hf_home().join("hub"),
    }
}

/// One repository's folder in the cache (a model's, or a data set's).
#[derive(Debug, Clone)]
pub struct RepoCache {
    dir: PathBuf,
}

impl RepoCache {
    /// The folder of model repository `repo` (`timm/resnet50.tv_in1k`) under `HF_HUB_CACHE`,
    /// else `$HF_HOME/hub`.
    pub fn from_env(repo: &str) -> Self {
        RepoCache { dir: hub_cache().join(format!("models--{}", repo.replace('/', "--"))) }
    }

    /// The folder of data set repository `repo` (`uoft-cs/cifar10`):
    /// `datasets--uoft-cs--cifar10`, beside the models, as `huggingface_hub` names it.
    pub fn dataset_from_env(repo: &str) -> Self {
        RepoCache { dir: hub_cache().join(format!("datasets--{}", repo.replace('/', "--"))) }
    }

    /// The commit `refs/<revision>` names, if the cache has that ref.
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        let c = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        let c = c.trim().to_string();
        is_hex(&c, 40).then_some(c)
    }

    /// Writes `refs/<revision>` = `commit` (nothing when the revision is the commit).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if revision == commit {
            return Ok(());
        }
        let r = self.dir.join("refs").join(revision);
        if let Some(parent) = r.parent() {
            std::fs::create_dir_all(parent).at(parent)?;
        }
        std::fs::write(&r, commit).at(&r)
    }

    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// `snapshots/<commit>/<file>`.
    pub fn snapshot_file(&self, commit: &str, file: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit).join(file)
    }

    /// The cached `file` at `revision`: through `refs/<revision>`, or straight from
    /// `snapshots/<revision>/` when the revision is a commit. A symlink or a regular file.
    pub fn cached_file(&self, revision: &str, file: &str) -> Option<PathBuf> {
        let commit = match std::fs::read_to_string(self.dir.join("refs").join(revision)) {
            Ok(c) => c.trim().to_string(),
            Err(_) if is_hex(revision, 40) => revision.to_string(),
            Err(_) => return None,
        };
        let path = self.snapshot_file(&commit, file);
        path.is_file().then_some(path)
    }

    /// Moves a finished, verified download into place: `part` becomes `blobs/<etag>`,
    /// `refs/<revision>` names `commit` (unless the revision is the commit), and
    /// `snapshots/<commit>/<file>` links to the blob (or, where symlinks fail, is the file).
    pub fn install(&self, part: &Path, etag: &str, revision: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let blob = self.blob(etag);
        std::fs::rename(part, &blob).at(&blob)?;
        self.link(etag, revision, commit, file)
    }

    /// Points `refs/<revision>` at `commit` and `snapshots/<commit>/<file>` at `blobs/<etag>`,
    /// which must exist.
    pub fn link(&self, etag: &str, revision: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let blob = self.blob(etag);
        self.write_ref(revision, commit)?;
        let link = self.snapshot_file(commit, file);
        let parent = link.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).at(parent)?;
        if std::fs::symlink_metadata(&link).is_ok() {
            std::fs::remove_file(&link).at(&link)?;
        }
        // snapshots/<commit>/<a/b/file> → ../../(../)blobs/<etag>
        let depth = file.split('/').count() + 1;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        if symlink(&target, &link).is_err() {
            std::fs::rename(&blob, &link).at(&link)?;
        }
        Ok(link)
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn symlink(_target: &Path, _link: &Path) -> std::io::Result<()> {
    Err(std::io::Error::other("no symlinks here"))
}

/// The blob name behind a snapshot symlink (the etag the Hub served for it); `None` for a
/// regular file.
pub fn blob_etag(path: &Path) -> Option<String> {
    let target = std::fs::canonicalize(path).ok()?;
    let in_blobs = target.parent()?.file_name()? == "blobs";
    in_blobs.then(|| target.file_name().map(|n| n.to_string_lossy().into_owned())).flatten()
}

/// The commit of `snapshots/<commit>/<file>`.
pub fn snapshot_commit(path: &Path, file: &str) -> Option<String> {
    let mut dir = path.parent()?;
    for _ in 1..file.split('/').count() {
        dir = dir.parent()?;
    }
    let commit = dir.file_name()?.to_string_lossy().into_owned();
    is_hex(&commit, 40).then_some(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_links_the_snapshot_to_the_blob_and_writes_the_ref() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache { dir: dir.path().join("models--timm--x") };
        std::fs::create_dir_all(cache.blob("e").parent().unwrap()).unwrap();
        let part = cache.blob("e.part");
        std::fs::write(&part, b"weights").unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let path = cache.install(&part, "e", "main", commit, "sub/model.bin").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"weights");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
        assert_eq!(blob_etag(&path).as_deref(), Some("e"));
        assert_eq!(snapshot_commit(&path, "sub/model.bin").as_deref(), Some(commit));
        assert_eq!(cache.cached_file("main", "sub/model.bin"), Some(path.clone()));
        assert_eq!(cache.cached_file(commit, "sub/model.bin"), Some(path));
        assert_eq!(cache.cached_file("v2", "sub/model.bin"), None);
    }
}
