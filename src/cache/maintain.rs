//! `cache verify` and `cache prune`: checking everything cached, and dropping what no split has
//! used for a while.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use super::store::{store_dirs, Damaged, FeatureStore, PruneReport};
use super::{with_suffix, EntryLock, FeatureCache, Listed};
use crate::error::{IoContext, Result};

/// One checked item of `cache verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// `store` or `entry`.
    pub kind: &'static str,
    /// Its folder.
    pub dir: PathBuf,
    /// True when nothing is damaged.
    pub ok: bool,
    /// What is wrong, if anything.
    pub error: Option<String>,
    /// For a store: records checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<usize>,
    /// For a store: its damaged records (their rows are computed again when next needed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<Damaged>,
}

/// Checks every store record against its checksum and every entry against its manifest.
pub fn verify_all(cache: &FeatureCache) -> Result<Vec<Verified>> {
    let mut out = Vec::new();
    for dir in store_dirs(cache.cache_dir())? {
        let report = FeatureStore::open_dir(&dir).and_then(|s| s.verify());
        out.push(match report {
            Ok(r) => Verified {
                kind: "store",
                ok: r.damaged.is_empty(),
                error: (!r.damaged.is_empty()).then(|| {
                    let rows: u32 = r.damaged.iter().map(|d| d.rows).sum();
                    format!("{} damaged record(s), {rows} rows (first: {})", r.damaged.len(), r.damaged[0].error)
                }),
                records: Some(r.records),
                damaged: r.damaged,
                dir,
            },
            Err(e) => Verified { kind: "store", dir, ok: false, error: Some(e.to_string()), records: None, damaged: Vec::new() },
        });
    }
    for l in cache.list()? {
        if let Listed::Entry { dir, .. } = l {
            let result = FeatureCache::verify_dir(&dir);
            out.push(Verified { kind: "entry", dir, ok: result.is_ok(), error: result.err().map(|e| e.to_string()), records: None, damaged: Vec::new() });
        }
    }
    Ok(out)
}

/// What `cache prune` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    /// Per store.
    pub stores: Vec<PruneReport>,
    /// Split entries deleted (not used within the window; rebuilt from the store if needed).
    pub entries_removed: Vec<PathBuf>,
    /// Their bytes.
    pub entry_bytes: u64,
}

/// Drops the rows no split used since `since` from every store, and the split entries not used
/// since then (an entry made before `since` and never recorded as used since). Rows being
/// extracted, segments being written and entries being written are kept.
pub fn prune_all(cache: &FeatureCache, since: SystemTime) -> Result<Pruned> {
    let mut out = Pruned::default();
    let mut used: Vec<(String, String)> = Vec::new(); // (model, entry name)
    for dir in store_dirs(cache.cache_dir())? {
        let Ok(store) = FeatureStore::open_dir(&dir) else { continue };
        let model = store.recipe().model.clone();
        used.extend(store.entries_used_since(since).into_iter().map(|n| (model.clone(), n)));
        out.stores.push(store.prune(since)?);
    }
    for l in cache.list()? {
        let Listed::Entry { dir, bytes, .. } = l else { continue };
        let name = file_name(&dir);
        let model = dir.parent().map(file_name).unwrap_or_default();
        if used.iter().any(|(m, n)| *m == model && *n == name) {
            continue;
        }
        let made = std::fs::metadata(&dir).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
        if made >= since {
            continue;
        }
        let lock = with_suffix(&dir, ".lock");
        if EntryLock::holder(&lock).is_some() {
            continue;
        }
        std::fs::remove_dir_all(&dir).at(&dir)?;
        let _ = std::fs::remove_file(&lock);
        out.entry_bytes += bytes;
        out.entries_removed.push(dir);
    }
    Ok(out)
}

/// Parses a duration like `30d`, `12h`, `90m`, `45s` or `0s` (`--older-than`).
pub fn parse_age(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (n, unit) = t.split_at(split);
    let n: f64 = n.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let seconds = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "w" => 7.0 * 86400.0,
        _ => return None,
    };
    Some(std::time::Duration::from_secs_f64(n * seconds))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_their_units() {
        assert_eq!(parse_age("30d"), Some(std::time::Duration::from_secs(30 * 86400)));
        assert_eq!(parse_age("12h"), Some(std::time::Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("0s"), Some(std::time::Duration::ZERO));
        assert_eq!(parse_age("1.5m"), Some(std::time::Duration::from_secs(90)));
        for bad in ["", "30", "d", "-1d", "3 weeks", "5y"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
    }
}
