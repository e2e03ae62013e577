//! The feature store: every picture's features, computed once per [`Recipe`] and kept by the
//! picture's content, so that a label fix, a rename, a move, a sample or a new split of the
//! same pictures costs no forward pass, and adding pictures costs only theirs.
//!
//! Layout: `<cache-dir>/store/<model>/<recipe digest>/` holding
//! - `store.json`: the recipe and the feature width;
//! - `seg-<host>-<pid>-<n>.rows`: segments, one per extracting process, of checksummed records
//!   (see [`segment`]); a row is named by its [`RowKey`] (the picture's content key, and which
//!   view), never by a file name, folder or label;
//! - `claims/`: the rows live processes are extracting now (see [`claims`]);
//! - `uses/<split>-<digest>.keys`: the row keys of each split entry that used the store, whose
//!   modification time is its last use (what `cache prune` keeps);
//! - `damaged.txt`: records found damaged (segment and offset), ignored from then on;
//! - `store.lock`: held while claims are made and while the store is pruned.
//!
//! The split entries of [`super::FeatureCache`] (one `features.safetensors` per split) are
//! made from the store's rows and stay what readers open.

mod claims;
pub mod segment;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use claims::Claim;
use segment::{SegmentHeader, SegmentReader, SegmentWriter};

use crate::backbone::{Architecture, Engine, Precision};
use crate::data::content::RowKey;
use crate::data::preprocess::Preprocessing;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_json_atomic;

/// Version of the store's layout; part of every recipe.
pub const STORE_FORMAT: u32 = 1;

/// From this many finished segments on, `cache prune` rewrites them all into one.
pub const CONSOLIDATE_SEGMENTS: usize = 8;

/// Everything that determines a picture's features, but the picture and its view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Store layout version.
    pub format: u32,
    /// Registry name of the backbone.
    pub model: String,
    /// Its architecture.
    pub architecture: Architecture,
    /// sha256 of the weights file.
    pub weights_sha256: String,
    /// How pictures become input tensors (resize mode, input size, mean and std).
    pub preprocessing: Preprocessing,
    /// Backbone precision.
    pub precision: Precision,
    /// The engine, where it changes the numbers (see [`Recipe::engine_for`]); `None` where
    /// every engine gives the same features.
    pub engine: Option<Engine>,
}

impl Recipe {
    /// A hex digest of the whole recipe (the store's folder name).
    pub fn digest(&self) -> String {
        blake3::hash(&serde_json::to_vec(self).expect("recipes always serialise")).to_hex()[..32].to_string()
    }

    fn header_tag(&self) -> [u8; 16] {
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&blake3::hash(&serde_json::to_vec(self).expect("recipes always serialise")).as_bytes()[..16]);
        tag
    }
}

/// `store.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreMeta {
    /// The recipe.
    pub recipe: Recipe,
    /// Feature width.
    pub width: u32,
    /// When the store was made (RFC 3339).
    pub created_at: String,
}

/// One recipe's store.
#[derive(Debug, Clone)]
pub struct FeatureStore {
    dir: PathBuf,
    recipe: Recipe,
}

/// Where a row is: segment, record, row within the record.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u32,
    record: u32,
    row: u32,
}

/// What the store holds, read at one moment: its segments' records and where each row is. A
/// segment that `cache prune` replaces meanwhile is gone when its rows are read
/// ([`StoreIndex::gather`] then fails with the file not found, and the caller reads again).
#[derive(Debug)]
pub struct StoreIndex {
    segments: Vec<SegmentReader>,
    map: HashMap<RowKey, Loc>,
    width: Option<u32>,
}

/// A record found damaged while reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damaged {
    /// The segment file.
    pub segment: PathBuf,
    /// The record's offset in it.
    pub offset: u64,
    /// Rows it held.
    pub rows: u32,
    /// What was wrong.
    pub error: String,
}

impl StoreIndex {
    /// True when the store holds row `key`.
    pub fn contains(&self, key: &RowKey) -> bool {
        self.map.contains_key(key)
    }

    /// Distinct rows held.
    pub fn rows(&self) -> usize {
        self.map.len()
    }

    /// Feature width (`None` while the store is empty).
    pub fn width(&self) -> Option<u32> {
        self.width
    }

    /// Every row key held.
    pub fn keys(&self) -> impl Iterator<Item = &RowKey> {
        self.map.keys()
    }

    /// Segments read.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// The rows `keys` as `[keys.len(), width]` f32, each record read once and checked against
    /// its checksum. `Ok(Err(damaged))` names the damaged records among those needed (none of
    /// the rows is returned then: the caller quarantines them and computes their rows again).
    /// Every key must be held ([`StoreIndex::contains`]).
    pub fn gather(&self, keys: &[RowKey]) -> Result<std::result::Result<Tensor, Vec<Damaged>>> {
        let width = self.width.unwrap_or(0) as usize;
        if keys.is_empty() || width == 0 {
            return Ok(Ok(Tensor::zeros([keys.len() as i64, width as i64], (tch::Kind::Float, tch::Device::Cpu))));
        }
        let mut by_record: HashMap<(u32, u32), Vec<(usize, u32)>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            let loc = self.map.get(k).ok_or_else(|| Error::bad_input(Path::new("store"), format!("row {} is not in the store", k.hex())))?;
            by_record.entry((loc.segment, loc.record)).or_default().push((i, loc.row));
        }
        let mut order: Vec<(u32, u32)> = by_record.keys().copied().collect();
        order.sort_unstable();
        // Filled in place: the rows are held once, not once here and once more in a tensor.
        let result = Tensor::zeros([keys.len() as i64, width as i64], (tch::Kind::Float, tch::Device::Cpu));
        // SAFETY: `result` is a new, contiguous f32 CPU tensor of exactly `keys.len() * width`
        // elements, owned here and not shared until it is returned.
        let out: &mut [f32] = unsafe { std::slice::from_raw_parts_mut(result.data_ptr() as *mut f32, keys.len() * width) };
        let mut damaged = Vec::new();
        let mut open: Option<(u32, File)> = None;
        for (s, r) in order {
            let seg = &self.segments[s as usize];
            if open.as_ref().is_none_or(|(o, _)| *o != s) {
                open = Some((s, seg.open_file()?));
            }
            let file = &open.as_ref().expect("opened above").1;
            match seg.read_features_from(file, r as usize) {
                Ok(features) => {
                    for &(i, row) in &by_record[&(s, r)] {
                        let src = &features[row as usize * width..(row as usize + 1) * width];
                        out[i * width..(i + 1) * width].copy_from_slice(src);
                    }
                }
                Err(e @ Error::Checksum { .. }) => {
                    let rec = &seg.records[r as usize];
                    damaged.push(Damaged { segment: seg.path.clone(), offset: rec.offset, rows: rec.rows, error: e.to_string() })
                }
                Err(e) => return Err(e),
            }
        }
        if !damaged.is_empty() {
            return Ok(Err(damaged));
        }
        Ok(Ok(result))
    }
}

/// The outcome of [`FeatureStore::claim`].
#[derive(Debug)]
pub struct ClaimOutcome {
    /// Rows this process must extract now (held by its claim), in the order asked for.
    pub mine: Vec<RowKey>,
    /// The claim on them (`None` when `mine` is empty).
    pub claim: Option<Claim>,
    /// Rows that other live processes are extracting: `(pid, how many of the rows asked for)`.
    pub others: Vec<(u32, usize)>,
}

/// Held while claims are made or the store is pruned.
#[derive(Debug)]
pub struct StoreLock {
    file: File,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

impl FeatureStore {
    /// The store of `recipe` under `cache_dir` (nothing is created until rows are written).
    pub fn new(cache_dir: &Path, recipe: Recipe) -> FeatureStore {
        let dir = stores_root(cache_dir).join(&recipe.model).join(recipe.digest());
        FeatureStore { dir, recipe }
    }

    /// Opens the store in `dir` from its `store.json`.
    pub fn open_dir(dir: &Path) -> Result<FeatureStore> {
        let meta = read_meta(dir)?;
        Ok(FeatureStore { dir: dir.to_path_buf(), recipe: meta.recipe })
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its recipe.
    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Reads what the store holds now: every segment's record headers and keys (not their
    /// features). Records listed in `damaged.txt` are left out; a segment made for another
    /// recipe or width is reported and left out.
    pub fn read(&self) -> Result<StoreIndex> {
        let damaged = self.damaged_list();
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_segment(p)).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).at(&self.dir),
        };
        names.sort();
        let tag = self.recipe.header_tag();
        let mut index = StoreIndex { segments: Vec::new(), map: HashMap::new(), width: None };
        for path in names {
            let seg = match SegmentReader::open(&path) {
                Ok(s) => s,
                // Deleted by a prune meanwhile: its rows are in the segment that replaced it.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!("{e}; its rows are ignored and will be computed again where needed");
                    continue;
                }
            };
            if seg.header.recipe != tag {
                tracing::warn!("{}: made for another recipe than its folder's; ignored", path.display());
                continue;
            }
            match index.width {
                Some(w) if w != seg.header.width => {
                    tracing::warn!("{}: {} features a row, the store's other segments {w}; ignored", path.display(), seg.header.width);
                    continue;
                }
                _ => index.width = Some(seg.header.width),
            }
            let s = index.segments.len() as u32;
            let name = file_name(&path);
            for (r, rec) in seg.records.iter().enumerate() {
                if damaged.contains(&(name.clone(), rec.offset)) {
                    continue;
                }
                for (row, k) in rec.keys.iter().enumerate() {
                    index.map.entry(*k).or_insert(Loc { segment: s, record: r as u32, row: row as u32 });
                }
            }
            index.segments.push(seg);
        }
        Ok(index)
    }

    /// Takes the store's lock, waiting for another process that holds it.
    pub fn lock(&self) -> Result<StoreLock> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let path = self.dir.join("store.lock");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
        file.lock().at(&path)?;
        Ok(StoreLock { file })
    }

    /// Claims the rows of `wanted` (distinct keys, in order) that the store lacks and no live
    /// process is extracting, under the store's lock and against a fresh read of the store.
    pub fn claim(&self, wanted: &[RowKey]) -> Result<ClaimOutcome> {
        let _lock = self.lock()?;
        let index = self.read()?;
        let live = claims::live_claims(&self.dir.join("claims"))?;
        let mut others: Vec<(u32, usize)> = Vec::new();
        let mut mine = Vec::new();
        for k in wanted {
            if index.contains(k) {
                continue;
            }
            match live.iter().find(|(_, keys)| keys.contains(k)) {
                Some((pid, _)) => match others.iter_mut().find(|(p, _)| p == pid) {
                    Some(o) => o.1 += 1,
                    None => others.push((*pid, 1)),
                },
                None => mine.push(*k),
            }
        }
        let claim = if mine.is_empty() { None } else { Some(Claim::create(&self.dir.join("claims"), &mine)?) };
        Ok(ClaimOutcome { mine, claim, others })
    }

    /// Waits until no live claim holds any of `keys` (another process finished or died).
    pub fn wait_for_claims(&self, keys: &HashSet<RowKey>) -> Result<()> {
        let start = Instant::now();
        let mut told = false;
        loop {
            let busy: Vec<(u32, usize)> = {
                let _lock = self.lock()?;
                claims::live_claims(&self.dir.join("claims"))?
                    .into_iter()
                    .map(|(pid, claimed)| (pid, claimed.iter().filter(|k| keys.contains(k)).count()))
                    .filter(|(_, n)| *n > 0)
                    .collect()
            };
            if busy.is_empty() {
                if told {
                    tracing::info!("the other process's rows are in the store after {:.0}s", start.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            if !told {
                let who: Vec<String> = busy.iter().map(|(pid, n)| format!("{n} by pid {pid}")).collect();
                tracing::warn!("waiting: rows this run needs are being extracted by another lastlayer process ({}); they are not computed twice", who.join(", "));
                told = true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A new segment to append rows of `width` features to (writing `store.json` first when
    /// the store is new).
    pub fn writer(&self, width: u32) -> Result<SegmentWriter> {
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        match read_meta(&self.dir) {
            Ok(meta) if meta.width != width || meta.recipe != self.recipe => {
                return Err(Error::bad_input(
                    self.dir.join("store.json"),
                    format!("describes {} features of another recipe; this run makes {width}; delete the folder", meta.width),
                ))
            }
            Ok(_) => {}
            Err(_) => write_json_atomic(
                &self.dir.join("store.json"),
                &StoreMeta {
                    recipe: self.recipe.clone(),
                    width,
                    created_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                },
            )?,
        }
        SegmentWriter::create(&self.dir, SegmentHeader { width, recipe: self.recipe.header_tag() })
    }

    /// Marks damaged records so that no later read uses them (their rows are computed again).
    pub fn quarantine(&self, damaged: &[Damaged]) -> Result<()> {
        use std::io::Write;
        let path = self.dir.join("damaged.txt");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).at(&path)?;
        let mut text = String::new();
        for d in damaged {
            text.push_str(&format!("{} {}\n", file_name(&d.segment), d.offset));
        }
        f.write_all(text.as_bytes()).at(&path)
    }

    fn damaged_list(&self) -> HashSet<(String, u64)> {
        std::fs::read_to_string(self.dir.join("damaged.txt"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once(' ').and_then(|(n, o)| Some((n.to_string(), o.parse().ok()?))))
            .collect()
    }

    /// Marks the use record of split entry `name` as used now; false when it has none.
    pub fn touch_use(&self, name: &str) -> Result<bool> {
        let path = self.dir.join("uses").join(format!("{name}.keys"));
        match File::options().write(true).open(&path) {
            Ok(f) => f.set_modified(SystemTime::now()).at(&path).map(|_| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Records that the split entry `name` (`<split>-<digest>`) uses the rows `keys` now:
    /// `cache prune` keeps the rows of entries used within its window.
    pub fn record_use(&self, name: &str, keys: &[RowKey]) -> Result<()> {
        let dir = self.dir.join("uses");
        let path = dir.join(format!("{name}.keys"));
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == keys.len() as u64 * 32) {
            let f = File::options().write(true).open(&path).at(&path)?;
            return f.set_modified(SystemTime::now()).at(&path);
        }
        let mut bytes = Vec::with_capacity(keys.len() * 32);
        for k in keys {
            bytes.extend_from_slice(&k.0);
        }
        crate::fsutil::write_atomic(&path, &bytes)
    }

    /// The keys of every use recorded since `since`, and the names of those older.
    fn uses_since(&self, since: SystemTime) -> Result<(HashSet<RowKey>, Vec<PathBuf>)> {
        let dir = self.dir.join("uses");
        let mut keep = HashSet::new();
        let mut stale = Vec::new();
        let listing = match std::fs::read_dir(&dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((keep, stale)),
            Err(e) => return Err(e).at(&dir),
        };
        for e in listing {
            let path = e.at(&dir)?.path();
            let used = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            if used < since {
                stale.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).at(&path)?;
            keep.extend(bytes.chunks_exact(32).map(|c| {
                let mut k = [0u8; 32];
                k.copy_from_slice(c);
                RowKey(k)
            }));
        }
        Ok((keep, stale))
    }

    /// The names (`<split>-<digest>`) of the split entries used since `since`.
    pub fn entries_used_since(&self, since: SystemTime) -> Vec<String> {
        let Ok(d) = std::fs::read_dir(self.dir.join("uses")) else { return Vec::new() };
        d.filter_map(|e| e.ok())
            .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".keys")).map(str::to_string))
            .collect()
    }

    /// Drops the rows that no split entry used since `since` and no live process is
    /// extracting, and the damaged records, by rewriting the segments that hold them into one
    /// new segment, a record at a time (segments being written are left alone). With
    /// [`CONSOLIDATE_SEGMENTS`] or more finished segments, all of them are rewritten into one, so
    /// that a store used by many processes does not keep many small files. Nothing else is
    /// touched.
    pub fn prune(&self, since: SystemTime) -> Result<PruneReport> {
        let _lock = self.lock()?;
        let (mut keep, stale) = self.uses_since(since)?;
        for (_, claimed) in claims::live_claims(&self.dir.join("claims"))? {
            keep.extend(claimed);
        }
        let index = self.read()?;
        let before = self.usage()?;
        let damaged = self.damaged_list();
        let mut report = PruneReport { dir: self.dir.clone(), rows_before: index.rows(), bytes_before: before.1, ..PruneReport::default() };
        let width = index.width.unwrap_or(0);
        let w = width as usize;
        let (live, finished): (Vec<&SegmentReader>, Vec<&SegmentReader>) = index.segments.iter().partition(|s| segment::is_being_written(&s.path));
        report.segments_skipped = live.len();
        // Rows in segments being written stay where they are.
        let mut seen: HashSet<RowKey> = live.iter().flat_map(|s| s.records.iter().flat_map(|r| r.keys.iter().copied())).collect();
        let consolidate = finished.len() >= CONSOLIDATE_SEGMENTS;
        let mut writer: Option<SegmentWriter> = None;
        let mut replaced: Vec<&Path> = Vec::new();
        for seg in finished {
            let name = file_name(&seg.path);
            let is_damaged = |offset: u64| damaged.contains(&(name.clone(), offset));
            let changed = consolidate
                || seg.tail_bytes > 0
                || seg.records.iter().any(|rec| is_damaged(rec.offset) || rec.keys.iter().any(|k| !keep.contains(k) || seen.contains(k)));
            if !changed {
                seen.extend(seg.records.iter().flat_map(|r| r.keys.iter().copied()));
                continue;
            }
            let file = seg.open_file()?;
            for (r, rec) in seg.records.iter().enumerate() {
                let wanted: Vec<usize> = (0..rec.keys.len()).filter(|&i| keep.contains(&rec.keys[i]) && !seen.contains(&rec.keys[i])).collect();
                if wanted.is_empty() || is_damaged(rec.offset) {
                    continue;
                }
                let features = match seg.read_features_from(&file, r) {
                    Ok(f) => f,
                    Err(Error::Checksum { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let keys: Vec<RowKey> = wanted.iter().map(|&i| rec.keys[i]).collect();
                let rows: Vec<f32> = wanted.iter().flat_map(|&i| features[i * w..(i + 1) * w].iter().copied()).collect();
                if writer.is_none() {
                    writer = Some(SegmentWriter::create(&self.dir, SegmentHeader { width, recipe: self.recipe.header_tag() })?);
                }
                writer.as_mut().expect("made above").append(&keys, &rows)?;
                seen.extend(keys);
            }
            replaced.push(&seg.path);
        }
        // The new segment is whole on disk before any old one goes.
        if let Some(w) = &writer {
            w.sync()?;
        }
        drop(writer);
        for path in &replaced {
            std::fs::remove_file(path).at(path)?;
        }
        report.segments_rewritten = replaced.len();
        for path in stale {
            let _ = std::fs::remove_file(path);
        }
        // Damaged records were in rewritten segments, which are gone: nothing left to skip.
        if report.segments_rewritten > 0 {
            let still: Vec<String> = damaged
                .iter()
                .filter(|(n, _)| self.dir.join(n).exists())
                .map(|(n, o)| format!("{n} {o}\n"))
                .collect();
            crate::fsutil::write_atomic(&self.dir.join("damaged.txt"), still.concat().as_bytes())?;
        }
        let after = self.read()?;
        report.rows_after = after.rows();
        report.bytes_after = self.usage()?.1;
        Ok(report)
    }

    /// `(segments, bytes)` on disk.
    pub fn usage(&self) -> Result<(usize, u64)> {
        segments_usage(&self.dir)
    }

    /// Reads every record of every segment and checks its checksum.
    pub fn verify(&self) -> Result<VerifyReport> {
        let index = self.read()?;
        let mut report = VerifyReport { dir: self.dir.clone(), rows: index.rows(), ..VerifyReport::default() };
        for seg in &index.segments {
            report.segments += 1;
            if seg.tail_bytes > 0 && !segment::is_being_written(&seg.path) {
                report.cut_tails.push(format!("{}: {} bytes after the last whole record (a killed writer's last batch; ignored)", seg.path.display(), seg.tail_bytes));
            }
            let file = seg.open_file()?;
            for r in 0..seg.records.len() {
                report.records += 1;
                if let Err(e) = seg.read_features_from(&file, r) {
                    let rec = &seg.records[r];
                    report.damaged.push(Damaged { segment: seg.path.clone(), offset: rec.offset, rows: rec.rows, error: e.to_string() });
                }
            }
        }
        Ok(report)
    }
}

/// What [`FeatureStore::prune`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// The store.
    pub dir: PathBuf,
    /// Distinct rows before and after.
    pub rows_before: usize,
    /// Distinct rows after.
    pub rows_after: usize,
    /// Segment bytes before.
    pub bytes_before: u64,
    /// Segment bytes after.
    pub bytes_after: u64,
    /// Segments rewritten without their unused rows (or deleted).
    pub segments_rewritten: usize,
    /// Segments left alone because a live process is writing them.
    pub segments_skipped: usize,
}

/// What [`FeatureStore::verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The store.
    pub dir: PathBuf,
    /// Segments read.
    pub segments: usize,
    /// Records checked.
    pub records: usize,
    /// Distinct rows.
    pub rows: usize,
    /// Records whose checksum failed.
    pub damaged: Vec<Damaged>,
    /// Segments that end in a partial record.
    pub cut_tails: Vec<String>,
}

/// A store as `cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoreInfo {
    /// Its folder.
    pub dir: PathBuf,
    /// Its recipe (absent when `store.json` is unreadable).
    pub recipe: Option<Recipe>,
    /// Feature width.
    pub width: Option<u32>,
    /// Distinct rows (pictures and views).
    pub rows: usize,
    /// Segment files.
    pub segments: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Processes extracting into it now.
    pub writers: usize,
}

/// `<cache-dir>/store`.
pub fn stores_root(cache_dir: &Path) -> PathBuf {
    cache_dir.join("store")
}

/// Every store under `cache_dir`, with its size.
pub fn list_stores(cache_dir: &Path) -> Result<Vec<StoreInfo>> {
    let mut out = Vec::new();
    for dir in store_dirs(cache_dir)? {
        let meta = read_meta(&dir).ok();
        let (rows, width, writers) = match &meta {
            Some(m) => {
                let store = FeatureStore { dir: dir.clone(), recipe: m.recipe.clone() };
                let index = store.read()?;
                let writers = index.segments.iter().filter(|s| segment::is_being_written(&s.path)).count();
                (index.rows(), Some(m.width), writers)
            }
            None => (0, None, 0),
        };
        let (segments, bytes) = segments_usage(&dir)?;
        out.push(StoreInfo { dir, recipe: meta.map(|m| m.recipe), width, rows, segments, bytes, writers });
    }
    Ok(out)
}

/// The store folders under `cache_dir` (`store/<model>/<digest>`).
pub fn store_dirs(cache_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = stores_root(cache_dir);
    let models = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&root),
    };
    let mut out = Vec::new();
    for m in models.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()) {
        for d in std::fs::read_dir(&m).at(&m)?.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()) {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

/// `(segments, bytes)` of the segment files in `dir`.
fn segments_usage(dir: &Path) -> Result<(usize, u64)> {
    let listing = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e).at(dir),
    };
    let (mut n, mut bytes) = (0, 0);
    for e in listing.filter_map(|e| e.ok()) {
        if is_segment(&e.path()) {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    Ok((n, bytes))
}

fn read_meta(dir: &Path) -> Result<StoreMeta> {
    let path = dir.join("store.json");
    let bytes = std::fs::read(&path).at(&path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::bad_input(&path, format!("not a valid store.json ({e})")))
}

fn is_segment(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seg-") && n.ends_with(segment::SUFFIX))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::preprocess::{InputSpec, Interpolation};

    fn store(dir: &Path) -> FeatureStore {
        let input = InputSpec { input_size: 32, interpolation: Interpolation::Bilinear, crop_pct: 1.0, mean: [0.5; 3], std: [0.5; 3] };
        FeatureStore::new(
            dir,
            Recipe {
                format: STORE_FORMAT,
                model: "m".into(),
                architecture: Architecture::Resnet18,
                weights_sha256: "0".repeat(64),
                preprocessing: Preprocessing::stretch(&input),
                precision: Precision::Fp32,
                engine: None,
            },
        )
    }

    fn key(i: u8) -> RowKey {
        RowKey([i; 32])
    }

    #[test]
    fn prune_keeps_used_rows_drops_the_rest_and_folds_many_segments_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        for i in 0..10u8 {
            let mut w = st.writer(2).unwrap();
            w.append(&[key(i)], &[i as f32, -(i as f32)]).unwrap();
        }
        // Rows 0-4 are used by an entry; 5-9 by nobody.
        st.record_use("train-x", &(0..5).map(key).collect::<Vec<_>>()).unwrap();
        assert_eq!(st.read().unwrap().segments(), 10);
        let r = st.prune(SystemTime::now() - Duration::from_secs(60)).unwrap();
        assert_eq!((r.rows_before, r.rows_after, r.segments_rewritten), (10, 5, 10));
        let index = st.read().unwrap();
        assert_eq!(index.segments(), 1);
        let rows = index.gather(&[key(3), key(0)]).unwrap().unwrap();
        assert_eq!(Vec::<f32>::try_from(rows.view([-1])).unwrap(), vec![3.0, -3.0, 0.0, 0.0]);
        assert!(!index.contains(&key(7)));
    }

    #[test]
    fn a_live_writers_segment_and_claimed_rows_are_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let mut live = st.writer(2).unwrap();
        live.append(&[key(1)], &[1.0, 1.0]).unwrap();
        {
            let mut done = st.writer(2).unwrap();
            done.append(&[key(2), key(3)], &[2.0, 2.0, 3.0, 3.0]).unwrap();
        }
        let claim = st.claim(&[key(3), key(4)]).unwrap();
        assert_eq!(claim.mine, vec![key(4)], "3 is stored already");
        // Nobody used anything: the claim keeps nothing stored (4 is not stored yet), the live
        // segment keeps row 1, and rows 2 and 3 go.
        let r = st.prune(SystemTime::now()).unwrap();
        assert_eq!((r.segments_skipped, r.rows_after), (1, 1), "{r:?}");
        assert!(st.read().unwrap().contains(&key(1)));
        drop(live);
        drop(claim);
    }
}
