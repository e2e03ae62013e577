//! Commits and checksums learned on first use (trust on first use), kept in
//! `<cache-dir>/pins.json`, for registry entries that do not carry them yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_json_atomic;

/// What was learned about one Hub file on its first verified download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The commit the file was downloaded at.
    pub revision: String,
    /// The file's sha256 (checked against the Hub's etag when it was downloaded); empty for
    /// the pin of a data set's revision (`datasets/OWNER/NAME/@main`), which names a commit only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// When it was pinned (RFC 3339).
    pub pinned_at: String,
}

/// The pins file.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    path: PathBuf,
    entries: BTreeMap<String, Pin>,
}

impl Pins {
    /// Loads `<cache_dir>/pins.json` (empty when absent).
    pub fn load(cache_dir: &Path) -> Result<Self> {
        let path = cache_dir.join("pins.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::bad_input(&path, format!("not a valid pins file ({e}); delete it to pin again on the next fetch"))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).at(&path),
        };
        Ok(Pins { path, entries })
    }

    /// The pin of `repo`'s `file`, if any.
    pub fn get(&self, repo: &str, file: &str) -> Option<&Pin> {
        self.entries.get(&key(repo, file))
    }

    /// Records a pin and writes the file atomically.
    pub fn record(&mut self, repo: &str, file: &str, revision: &str, sha256: &str) -> Result<()> {
        let pin = Pin {
            revision: revision.to_string(),
            sha256: sha256.to_string(),
            pinned_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        };
        self.entries.insert(key(repo, file), pin);
        write_json_atomic(&self.path, &self.entries)
    }
}

fn key(repo: &str, file: &str) -> String {
    format!("{repo}/{file}")
}
