//! Who extracts which rows: so that two processes that need overlapping rows compute each at
//! most once, a process claims the missing rows it will compute before it starts.
//!
//! A claim is a file `claims/<host>-<pid>-<n>.claim` holding the claimed row keys, locked
//! exclusively by its process for as long as it extracts them (the operating system drops the
//! lock when the process dies, so a killed process's claim is dead at once). Claims are made
//! under the store's lock (`store.lock`), after the store has been read again, so that no two
//! live claims share a row and no claim names a row already stored.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::data::content::RowKey;
use crate::error::{IoContext, Result};

/// A live claim of this process; released (file deleted, lock dropped) on drop.
#[derive(Debug)]
pub struct Claim {
    path: PathBuf,
    file: Option<File>,
}

impl Claim {
    /// Writes and locks a claim of `keys` in `dir`.
    pub(super) fn create(dir: &Path, keys: &[RowKey]) -> Result<Claim> {
        std::fs::create_dir_all(dir).at(dir)?;
        let nonce: u32 = rand::random();
        let path = dir.join(format!("{}-{nonce:08x}.claim", std::process::id()));
        let mut bytes = Vec::with_capacity(keys.len() * 32);
        for k in keys {
            bytes.extend_from_slice(&k.0);
        }
        std::fs::write(&path, &bytes).at(&path)?;
        let file = File::open(&path).at(&path)?;
        file.try_lock().map_err(|e| crate::Error::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
        Ok(Claim { path, file: Some(file) })
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(f) = self.file.take() {
            let _ = f.unlock();
        }
    }
}

/// The claims in `dir` that a live process holds: `(pid, keys)`. Dead claims (their process
/// is gone) are deleted.
pub(super) fn live_claims(dir: &Path) -> Result<Vec<(u32, HashSet<RowKey>)>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(dir),
    };
    let mut out = Vec::new();
    for entry in listing {
        let path = entry.at(dir)?.path();
        if path.extension().is_none_or(|e| e != "claim") {
            continue;
        }
        let Ok(file) = File::open(&path) else { continue };
        if file.try_lock_shared().is_ok() {
            // Nobody holds it: its process died. Remove it (we hold the store lock).
            let _ = file.unlock();
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let pid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split('-').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
        let keys = bytes.chunks_exact(32).map(|c| {
            let mut k = [0u8; 32];
            k.copy_from_slice(c);
            RowKey(k)
        });
        out.push((pid, keys.collect()));
    }
    Ok(out)
}
