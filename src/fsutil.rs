//! Small file-system helpers shared by the cache, the exports and the downloads: atomic writes
//! (temporary file in the same folder, fsync, rename) and streaming checksums.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::error::{IoContext, Result};

/// Writes `bytes` to `path` atomically: readers see the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| std::fs::write(tmp, bytes).at(tmp))
}

/// Lets `write` fill a temporary path next to `path`, fsyncs it and renames it over `path`.
/// On any failure the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(&dir).at(&dir)?;
    let tmp_path = tmp.path().to_path_buf();
    write(&tmp_path)?;
    std::fs::File::open(&tmp_path).and_then(|f| f.sync_all()).at(&tmp_path)?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("lastlayer's JSON types always serialise");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = sha2::Sha256::new();
    stream(path, |chunk| hasher.update(chunk))?;
    Ok(hex(&hasher.finalize()))
}

/// blake3 of a file, as lowercase hex.
pub fn blake3_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    stream(path, |chunk| {
        hasher.update(chunk);
    })?;
    Ok(hasher.finalize().to_hex().to_string())
}

fn stream(path: &Path, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut file = std::fs::File::open(path).at(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).at(path)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default cache folder: `$LASTLAYER_CACHE`, else `$XDG_CACHE_HOME/lastlayer`, else
/// `~/.cache/lastlayer`, else `.lastlayer-cache` in the current folder.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LASTLAYER_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("lastlayer");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(home).join(".cache").join("lastlayer");
    }
    PathBuf::from(".lastlayer-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").unwrap();
        write_atomic(&p, b"new content").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failed_atomic_write_keeps_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"old").unwrap();
        let r = write_atomic_with(&p, |_| Err(crate::Error::bad_input("x", "simulated failure")));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn sha256_matches_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
