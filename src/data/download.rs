//! Getting CIFAR-10: download the official tarball (or `LASTLAYER_CIFAR10_URL`, a mirror) with
//! progress, timeouts, retries and resumption (see [`crate::net`]) into
//! `cifar-10-binary.tar.gz.part`, check its md5, and unpack it atomically: into a temporary
//! folder beside the target, renamed into place only when complete. An interrupted download
//! continues from the `.part` file on the next run.

use std::io::Read;
use std::path::{Path, PathBuf};

use md5::Digest;

use super::cifar10::{FOLDER, OFFICIAL_MD5, OFFICIAL_URL};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::hex;
use crate::net::{download_resumable, Downloaded, NetConfig};
use crate::progress::{Progress, Unit};

/// Where CIFAR-10 is fetched from: the official URL and md5 unless `LASTLAYER_CIFAR10_URL` and
/// `LASTLAYER_CIFAR10_MD5` name a mirror.
#[derive(Debug, Clone)]
pub struct Source {
    /// URL of a `cifar-10-binary.tar.gz`.
    pub url: String,
    /// Its md5.
    pub md5: String,
}

impl Source {
    /// The official source, or the mirror named in the environment.
    pub fn from_env() -> Self {
        let url = std::env::var("LASTLAYER_CIFAR10_URL").ok().filter(|s| !s.is_empty());
        let md5 = std::env::var("LASTLAYER_CIFAR10_MD5").ok().filter(|s| !s.is_empty());
        Source {
            url: url.unwrap_or_else(|| OFFICIAL_URL.to_string()),
            md5: md5.unwrap_or_else(|| OFFICIAL_MD5.to_string()),
        }
    }
}

/// Returns `<data_root>/cifar-10-batches-bin`, downloading and unpacking it first if absent.
pub fn ensure_cifar10(data_root: &Path, source: &Source, offline: bool, progress: &Progress) -> Result<PathBuf> {
    let target = data_root.join(FOLDER);
    if target.is_dir() {
        return Ok(target);
    }
    if offline {
        return Err(Error::Offline {
            what: format!("CIFAR-10 ({})", target.display()),
            hint: "run once without --offline, or pass --data-dir with an unpacked cifar-10-batches-bin".into(),
        });
    }
    std::fs::create_dir_all(data_root).at(data_root)?;
    let tarball = data_root.join("cifar-10-binary.tar.gz.part");
    let cfg = NetConfig::from_env()?;
    let agent = cfg.agent();
    let fetch = || -> Result<Downloaded> {
        let mut task = progress.task("download cifar-10", 0, Unit::Bytes);
        let got = download_resumable(&agent, &cfg, &source.url, None, &tarball, None, &mut task, &source.url)?;
        task.finish();
        Ok(got)
    };
    let mut got = fetch()?;
    let mut md5 = md5_file(&tarball)?;
    if md5 != source.md5 && got.carried_over > 0 {
        tracing::warn!(
            "{}: the md5 of the resumed download does not match (the {} bytes kept from before may be stale); downloading it afresh",
            source.url,
            got.carried_over
        );
        std::fs::remove_file(&tarball).at(&tarball)?;
        got = fetch()?;
        md5 = md5_file(&tarball)?;
    }
    if md5 != source.md5 {
        let _ = std::fs::remove_file(&tarball);
        return Err(Error::Checksum {
            path: tarball,
            algorithm: "md5",
            expected: source.md5.clone(),
            actual: md5,
            action: format!("the download from {} was incomplete or altered and was deleted; run again", source.url),
        });
    }
    tracing::debug!("{}: {} bytes, md5 verified", source.url, got.size);
    let staging = tempfile::Builder::new().prefix(".cifar10-unpack.").tempdir_in(data_root).at(data_root)?;
    let file = std::fs::File::open(&tarball).at(&tarball)?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(staging.path())
        .map_err(|e| Error::bad_input(&tarball, format!("cannot unpack ({e}); delete it and run again")))?;
    let unpacked = staging.path().join(FOLDER);
    if !unpacked.is_dir() {
        return Err(Error::bad_input(&tarball, format!("the archive holds no {FOLDER} folder; is the URL right?")));
    }
    std::fs::rename(&unpacked, &target).at(&target)?;
    let _ = std::fs::remove_file(&tarball);
    Ok(target)
}

fn md5_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut h = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}
