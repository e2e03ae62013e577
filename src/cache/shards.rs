//! Shard entries: one worker's share of a split, cached beside where the whole split's entry
//! will be, and their merge into that entry.
//!
//! A shard entry is an ordinary entry (features file, manifest, partial chunks, lock) whose key
//! is the whole split's key with [`FeatureKey::shard`] set; its folder is
//! `<split>-<whole digest>.shard-<i>-of-<n>`, so that the shards of a split are found by name.
//! [`merge_shards`] joins a complete set, in row order, into the whole split's entry — the same
//! bytes an unsharded extraction writes — and then deletes the shard entries.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{CachedFeatures, FeatureCache, FeatureKey, Manifest, MANIFEST_FILE};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{write_atomic_with, write_json_atomic};

/// Which share of a split's rows a shard entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardOf {
    /// Shard index, `0..count`.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
    /// First row (of the whole split, after sampling).
    pub start: usize,
    /// One past the last row.
    pub end: usize,
    /// The backbone batch size the shard boundaries were cut with (see `--shard`).
    pub batch_size: usize,
}

impl FeatureKey {
    /// The whole split's key (this key without its shard).
    pub fn whole(&self) -> FeatureKey {
        FeatureKey { shard: None, ..self.clone() }
    }

    /// The key of shard `shard` of this (whole split's) key.
    pub fn for_shard(&self, shard: ShardOf) -> FeatureKey {
        FeatureKey { shard: Some(shard), ..self.clone() }
    }
}

/// The folder name of an entry: `<split>-<digest>`, or for a shard
/// `<split>-<whole digest>.shard-<i>-of-<n>`.
pub fn entry_name(key: &FeatureKey) -> String {
    match &key.shard {
        None => format!("{}-{}", key.split, key.digest()),
        Some(s) => format!("{}-{}.shard-{}-of-{}", key.split, key.whole().digest(), s.index, s.count),
    }
}

/// A shard that a merge needs and cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardProblem {
    /// Its index.
    pub index: usize,
    /// Shards in the set.
    pub count: usize,
    /// Its entry folder.
    pub dir: PathBuf,
    /// `missing`, or what is wrong with it.
    pub reason: String,
}

/// The shard entries (with a manifest) on disk for `whole`, by shard count: `(count, index,
/// folder)`, sorted.
pub fn shard_dirs(cache: &FeatureCache, whole: &FeatureKey) -> Result<Vec<(usize, usize, PathBuf)>> {
    let model_dir = cache.root.join(&whole.model);
    let prefix = format!("{}-{}.shard-", whole.split, whole.digest());
    let listing = match std::fs::read_dir(&model_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&model_dir),
    };
    let mut out = Vec::new();
    for e in listing {
        let dir = e.at(&model_dir)?.path();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(rest) = name.strip_prefix(&prefix) else { continue };
        let Some((i, n)) = rest.split_once("-of-") else { continue };
        if let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) {
            if i < n && dir.join(MANIFEST_FILE).is_file() {
                out.push((n, i, dir));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Looks for a complete set of shards of `whole` and merges it into `whole`'s entry.
///
/// Returns `Ok(None)` when there is no shard of `whole` at all. When some set is complete and
/// every shard verifies, writes the whole entry (rows in order; the same bytes an unsharded
/// extraction writes), deletes the shard entries, and returns it. Otherwise returns the
/// problems of the most complete set (missing or damaged shards), for the caller to report.
/// The caller holds the whole entry's lock.
pub fn merge_shards(cache: &FeatureCache, whole: &FeatureKey) -> Result<Option<std::result::Result<CachedFeatures, Vec<ShardProblem>>>> {
    let found = shard_dirs(cache, whole)?;
    if found.is_empty() {
        return Ok(None);
    }
    let mut counts: Vec<usize> = found.iter().map(|(n, _, _)| *n).collect();
    counts.dedup();
    // The most complete set; on a tie, the one with fewer shards.
    let best = counts
        .iter()
        .copied()
        .max_by_key(|&n| {
            let have = found.iter().filter(|(c, _, _)| *c == n).count();
            (have * 1_000_000 / n, usize::MAX - n)
        })
        .expect("found is not empty");
    let name = |i: usize| {
        cache.root.join(&whole.model).join(format!("{}-{}.shard-{i}-of-{best}", whole.split, whole.digest()))
    };
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut next_row = 0;
    for i in 0..best {
        let dir = name(i);
        if !dir.join(MANIFEST_FILE).is_file() {
            problems.push(ShardProblem { index: i, count: best, dir, reason: "missing".into() });
            continue;
        }
        match FeatureCache::verify_dir(&dir) {
            Err(e) => problems.push(ShardProblem { index: i, count: best, dir, reason: format!("damaged ({e})") }),
            Ok(entry) => {
                let key = &entry.manifest.key;
                let shard = key.shard.filter(|s| s.index == i && s.count == best);
                match shard {
                    _ if key.whole() != *whole => {
                        problems.push(ShardProblem { index: i, count: best, dir, reason: "made for other features than its folder name says".into() })
                    }
                    None => problems.push(ShardProblem { index: i, count: best, dir, reason: "its manifest names another shard".into() }),
                    Some(s) if s.start != next_row || s.end - s.start != entry.manifest.rows => problems.push(ShardProblem {
                        index: i,
                        count: best,
                        dir,
                        reason: format!(
                            "holds rows {}..{} but the shard before it ends at row {next_row} (the workers used different \
                             --extract-batch-size values)",
                            s.start, s.end
                        ),
                    }),
                    Some(s) => {
                        next_row = s.end;
                        entries.push(entry);
                    }
                }
            }
        }
    }
    if problems.is_empty() && next_row != whole.rows {
        let dir = name(best - 1);
        problems.push(ShardProblem {
            index: best - 1,
            count: best,
            dir,
            reason: format!("the shards end at row {next_row}, the split has {} rows", whole.rows),
        });
    }
    if !problems.is_empty() {
        return Ok(Some(Err(problems)));
    }
    let merged = write_merged(cache, whole, &entries)?;
    for entry in entries {
        if let Err(e) = std::fs::remove_dir_all(&entry.dir) {
            tracing::warn!("merged, but could not delete shard {}: {e}", entry.dir.display());
        }
    }
    Ok(Some(Ok(merged)))
}

/// One tensor's place in a safetensors file: `(dtype, shape, start, end)` of its bytes, from the
/// start of the file.
type Placed = (String, Vec<i64>, u64, u64);

/// Reads the header of a safetensors file: each tensor's dtype, shape and byte range.
pub fn safetensors_layout(path: &Path) -> Result<std::collections::BTreeMap<String, Placed>> {
    let mut f = std::fs::File::open(path).at(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).at(path)?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().at(path)?.len();
    if len > size.saturating_sub(8) || len > 100 << 20 {
        return Err(Error::bad_input(path, "not a safetensors file (header length out of range)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).at(path)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| Error::bad_input(path, format!("not a safetensors header ({e})")))?;
    let base = 8 + len;
    let mut out = std::collections::BTreeMap::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = || Error::bad_input(path, format!("tensor '{name}' has a malformed header entry"));
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(bad)?.to_string();
        let shape: Vec<i64> = v.get("shape").and_then(|s| s.as_array()).ok_or_else(bad)?.iter().map(|d| d.as_i64().ok_or_else(bad)).collect::<Result<_>>()?;
        let offs = v.get("data_offsets").and_then(|s| s.as_array()).ok_or_else(bad)?;
        let (a, b) = match offs.as_slice() {
            [a, b] => (a.as_u64().ok_or_else(bad)?, b.as_u64().ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        if a > b || base + b > size {
            return Err(bad());
        }
        out.insert(name, (dtype, shape, base + a, base + b));
    }
    Ok(out)
}

/// Writes `whole`'s entry from the shard entries, in order, streaming their bytes (nothing is
/// held in memory): the header is the one [`crate::fsutil::write_safetensors`] writes for the
/// joined tensors, so the file is byte-identical to an unsharded extraction's.
fn write_merged(cache: &FeatureCache, whole: &FeatureKey, shards: &[CachedFeatures]) -> Result<CachedFeatures> {
    let first = shards.first().ok_or_else(|| Error::bad_input(cache.entry_dir(whole), "no shards to merge"))?;
    let width = first.manifest.feature_width;
    let rows: usize = shards.iter().map(|s| s.manifest.rows).sum();
    let mut layouts = Vec::new();
    for s in shards {
        let l = safetensors_layout(&s.features_path)?;
        let (f, y) = match (l.get("features"), l.get("labels")) {
            (Some(f), Some(y)) if f.0 == "F32" && y.0 == "I64" && f.1 == [s.manifest.rows as i64, width] => (f.clone(), y.clone()),
            _ => return Err(Error::bad_input(&s.features_path, "features or labels disagree with the other shards; delete this shard and extract it again")),
        };
        layouts.push((s.features_path.clone(), f, y));
    }
    let feature_bytes = rows * width as usize * 4;
    let label_bytes = rows * 8;
    let mut header = serde_json::Map::new();
    header.insert("features".into(), serde_json::json!({"dtype": "F32", "shape": [rows as i64, width], "data_offsets": [0, feature_bytes]}));
    header.insert(
        "labels".into(),
        serde_json::json!({"dtype": "I64", "shape": [rows as i64], "data_offsets": [feature_bytes, feature_bytes + label_bytes]}),
    );
    let mut json = serde_json::to_vec(&header).expect("a header always serialises");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let (dir, features_path, manifest_path) = cache.begin_entry(whole)?;
    let mut hasher = blake3::Hasher::new();
    write_atomic_with(&features_path, |tmp| {
        let file = std::fs::File::create(tmp).at(tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, Hashing { inner: file, hasher: &mut hasher });
        out.write_all(&(json.len() as u64).to_le_bytes()).at(tmp)?;
        out.write_all(&json).at(tmp)?;
        for part in [1, 2] {
            for (path, f, y) in &layouts {
                let (_, _, a, b) = if part == 1 { f } else { y };
                let mut src = std::fs::File::open(path).at(path)?;
                src.seek(SeekFrom::Start(*a)).at(path)?;
                let copied = std::io::copy(&mut src.take(b - a), &mut out).at(tmp)?;
                if copied != b - a {
                    return Err(Error::bad_input(path, "shorter than its header says; delete this shard and extract it again"));
                }
            }
        }
        out.flush().at(tmp)
    })?;
    let manifest = Manifest {
        key: whole.clone(),
        digest: whole.digest(),
        rows,
        feature_width: width,
        dtype: "f32".into(),
        classes: first.manifest.classes.clone(),
        file_bytes: std::fs::metadata(&features_path).at(&features_path)?.len(),
        // Hashed as written (the temporary file was fsynced and renamed, not changed).
        file_blake3: hasher.finalize().to_hex().to_string(),
        extract_seconds: shards.iter().map(|s| s.manifest.extract_seconds).sum(),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        lastlayer_version: env!("CARGO_PKG_VERSION").into(),
    };
    write_json_atomic(&manifest_path, &manifest)?;
    Ok(CachedFeatures { dir, features_path, manifest_path, manifest })
}

/// A writer that hashes what it writes.
struct Hashing<'a, W> {
    inner: W,
    hasher: &'a mut blake3::Hasher,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What [`merge_all`] did with one split's shards.
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// The model.
    pub model: String,
    /// The split.
    pub split: String,
    /// The whole split's entry folder.
    pub dir: PathBuf,
    /// `merged`, `already merged` (the shards are redundant), or `incomplete`.
    pub status: &'static str,
    /// Shards in the set.
    pub shards: usize,
    /// For `incomplete`: `shard I/N: why (folder)` of each missing or damaged shard.
    pub problems: Vec<String>,
}

/// Merges every complete set of shard entries in the cache (see [`merge_shards`]), each under
/// its whole entry's lock.
pub fn merge_all(cache: &FeatureCache) -> Result<Vec<MergeReport>> {
    let mut wholes: Vec<FeatureKey> = Vec::new();
    for listed in cache.list()? {
        if let super::Listed::Entry { dir, manifest: Some(m), .. } = listed {
            if m.key.shard.is_some() && dir.file_name().is_some_and(|n| n.to_string_lossy().contains(".shard-")) {
                let whole = m.key.whole();
                if !wholes.contains(&whole) {
                    wholes.push(whole);
                }
            }
        }
    }
    let mut out = Vec::new();
    for whole in wholes {
        let _lock = super::EntryLock::acquire(&cache.lock_path(&whole))?;
        let count = shard_dirs(cache, &whole)?.iter().map(|(n, _, _)| *n).max().unwrap_or(0);
        let (status, problems) = if cache.lookup(&whole)?.is_some() {
            ("already merged", Vec::new())
        } else {
            match merge_shards(cache, &whole)? {
                None => continue,
                Some(Ok(_)) => ("merged", Vec::new()),
                Some(Err(p)) => ("incomplete", p.iter().map(|p| format!("shard {}/{}: {} ({})", p.index, p.count, p.reason, p.dir.display())).collect()),
            }
        };
        out.push(MergeReport { model: whole.model.clone(), split: whole.split.clone(), dir: cache.entry_dir(&whole), status, shards: count, problems });
    }
    Ok(out)
}
