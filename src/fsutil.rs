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
    readable_by_all(&tmp_path)?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Gives a file mode 0644: temporary files are created 0600, and the files they become
/// (cache entries, run folders) are meant to be read by other users and tools.
pub fn readable_by_all(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).at(path)
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

/// Writes tensors as a safetensors file, atomically, streaming each tensor's bytes from
/// memory (no second copy) so that a full disk surfaces as the operating system's error.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &tch::Tensor)]) -> Result<()> {
    use std::io::Write;
    let tensors: Vec<(&str, tch::Tensor)> =
        tensors.iter().map(|(n, t)| (*n, t.to_device(tch::Device::Cpu).contiguous())).collect();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in &tensors {
        let dtype = match t.kind() {
            tch::Kind::Float => "F32",
            tch::Kind::Double => "F64",
            tch::Kind::Half => "F16",
            tch::Kind::BFloat16 => "BF16",
            tch::Kind::Int64 => "I64",
            tch::Kind::Int => "I32",
            tch::Kind::Int16 => "I16",
            tch::Kind::Int8 => "I8",
            tch::Kind::Uint8 => "U8",
            tch::Kind::Bool => "BOOL",
            k => return Err(crate::Error::bad_input(path, format!("tensor '{name}': cannot store dtype {k:?}"))),
        };
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).expect("a header always serialises");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    write_atomic_with(path, |tmp| {
        let file = std::fs::File::create(tmp).at(tmp)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        w.write_all(&(json.len() as u64).to_le_bytes()).at(tmp)?;
        w.write_all(&json).at(tmp)?;
        for (_, t) in &tensors {
            let len = t.numel() * t.kind().elt_size_in_bytes();
            if len > 0 {
                // SAFETY: `t` is a contiguous CPU tensor that outlives the slice; `len` is its
                // size in bytes.
                let data = unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) };
                w.write_all(data).at(tmp)?;
            }
        }
        w.into_inner().map_err(|e| e.into_error()).at(tmp)?.sync_all().at(tmp)
    })
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
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
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
    fn safetensors_written_here_read_back_with_the_reference_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let a = tch::Tensor::arange(12, (tch::Kind::Float, tch::Device::Cpu)).view([3, 4]);
        let b = tch::Tensor::from_slice(&[7i64, -1, 3]);
        let c = a.tr(); // not contiguous: written in row-major order of its shape
        write_safetensors(&p, &[("a", &a), ("labels", &b), ("c", &c)]).unwrap();
        let back = tch::Tensor::read_safetensors(&p).unwrap();
        let get = |n: &str| back.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        assert!(get("a").equal(&a) && get("labels").equal(&b) && get("c").equal(&c));
        assert_eq!(get("labels").kind(), tch::Kind::Int64);
    }

    #[test]
    fn sha256_matches_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
