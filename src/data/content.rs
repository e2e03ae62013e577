//! Content keys: what names a picture in the feature store, whatever its file name, folder,
//! label or data set. A key is the blake3 of the picture's bytes: a file's bytes, a CIFAR-10
//! record's 3,072 pixel bytes (not its label byte), or a WebDataset member's bytes; but a
//! picture file whose EXIF orientation tag turns it has a key of its own
//! ([`ContentKey::of_picture`]).
//!
//! Hashing every file on every run would cost a read of the whole data set. [`HashIndex`]
//! remembers each file's (size, modification time, inode) with its key, as git's index does,
//! so that an unchanged file is not read again; it lives in `<cache-dir>/store/file-hashes.json`.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result};
use crate::fsutil::write_atomic;

/// blake3 of a picture's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey(pub [u8; 32]);

impl ContentKey {
    /// The key of `bytes`.
    pub fn of(bytes: &[u8]) -> ContentKey {
        ContentKey(*blake3::hash(bytes).as_bytes())
    }

    /// The key of a picture file's `bytes`: [`ContentKey::of`] them, unless an EXIF
    /// orientation tag turns the picture (any value but 1). Before lastlayer applied that tag,
    /// such pictures were decoded as stored, lying on their side or mirrored, and their rows in
    /// a feature store were computed that way; keyed apart, they are computed again, upright,
    /// while every other picture's rows stay valid.
    pub fn of_picture(bytes: &[u8]) -> ContentKey {
        match super::decode::orientation(bytes) {
            image::metadata::Orientation::NoTransforms => ContentKey::of(bytes),
            turned => {
                let mut h = blake3::Hasher::new();
                h.update(b"lastlayer-upright\0");
                h.update(&[turned.to_exif()]);
                h.update(bytes);
                ContentKey(*h.finalize().as_bytes())
            }
        }
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        blake3::Hash::from(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<ContentKey> {
        blake3::Hash::from_hex(s).ok().map(|h| ContentKey(*h.as_bytes()))
    }
}

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentKey({})", &self.hex()[..16])
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Serialize for ContentKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for ContentKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ContentKey::from_hex(&s).ok_or_else(|| serde::de::Error::custom(format!("'{s}' is not a 64-digit hex key")))
    }
}

/// What names one row of the feature store: a picture's content key and which view of it.
/// The plain view's key is the content key itself; another view's is blake3 of the content key
/// and the view's tag (see [`crate::data::views::Views::row_key`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey(pub [u8; 32]);

impl RowKey {
    /// The row of the picture itself.
    pub fn plain(content: ContentKey) -> RowKey {
        RowKey(content.0)
    }

    /// The row of a view of the picture, named by `tag` (`mirror`, `crop:...`).
    pub fn view(content: ContentKey, tag: &str) -> RowKey {
        let mut h = blake3::Hasher::new();
        h.update(b"lastlayer-row\0");
        h.update(&content.0);
        h.update(tag.as_bytes());
        RowKey(*h.finalize().as_bytes())
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        ContentKey(self.0).hex()
    }
}

impl fmt::Debug for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowKey({})", &self.hex()[..16])
    }
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i64,
    ino: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp { size: meta.len(), mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()), ino: meta.ino() }
    }

    /// True when the file was modified so recently that another change within the file
    /// system's timestamp resolution could go unseen ("racily clean", in git's words): such a
    /// stamp is not remembered, and the file is hashed again next time.
    fn racy(&self) -> bool {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as i64;
        now - self.mtime_ns < RACY_NS
    }
}

/// Files modified less than this long ago are hashed every time.
const RACY_NS: i64 = 2_000_000_000;

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    /// `path` (or `tar path#offset` for a tar member) -> stamp and key.
    entries: HashMap<String, (Stamp, ContentKey)>,
}

/// 2: picture files' keys are [`ContentKey::of_picture`] (version 1 remembered plain
/// [`ContentKey::of`] keys, wrong for pictures with an orientation tag: they are read again).
const INDEX_VERSION: u32 = 2;

/// Remembered content keys of files, by path and stamp (see the module docs). Shared between
/// threads; [`HashIndex::save`] writes what was learnt.
#[derive(Debug)]
pub struct HashIndex {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    file: IndexFile,
    changed: bool,
    hashed: usize,
    hashed_bytes: u64,
    reused: usize,
}

/// How much work the keys of a data set took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HashCounts {
    /// Files (or tar members) read and hashed.
    pub hashed: usize,
    /// Their bytes.
    pub hashed_bytes: u64,
    /// Files whose key came from the index, unread.
    pub reused: usize,
}

impl HashIndex {
    /// An index that remembers nothing and saves nowhere.
    pub fn none() -> HashIndex {
        HashIndex { path: None, inner: Mutex::new(Inner::default()) }
    }

    /// The index in `<cache_dir>/store/file-hashes.json`; a missing, unreadable or old one
    /// starts empty (every file is then hashed once more).
    pub fn open(cache_dir: &Path) -> HashIndex {
        let path = cache_dir.join("store").join("file-hashes.json");
        let file = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<IndexFile>(&b).ok())
            .filter(|f| f.version == INDEX_VERSION)
            .unwrap_or_default();
        HashIndex { path: Some(path), inner: Mutex::new(Inner { file, ..Inner::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the picture file at `path` ([`ContentKey::of_picture`]): remembered when its
    /// stamp is unchanged, else read and hashed (and remembered).
    pub fn file_key(&self, path: &Path) -> Result<ContentKey> {
        let name = path.display().to_string();
        let stamp = Stamp::of(&std::fs::metadata(path).at(path)?);
        if let Some(key) = self.remembered(&name, stamp) {
            return Ok(key);
        }
        let bytes = std::fs::read(path).at(path)?;
        let key = ContentKey::of_picture(&bytes);
        self.learn(name, stamp, key, bytes.len() as u64);
        Ok(key)
    }

    /// The key of the `len` bytes at `offset` of the file at `path` (a tar member), read with
    /// `read` when the file's stamp is not remembered with this member.
    pub fn member_key(&self, path: &Path, offset: u64, len: u64, read: impl FnOnce() -> Result<Vec<u8>>) -> Result<ContentKey> {
        let name = format!("{}#{offset}+{len}", path.display());
        let stamp = Stamp::of(&std::fs::metadata(path).at(path)?);
        if let Some(key) = self.remembered(&name, stamp) {
            return Ok(key);
        }
        let bytes = read()?;
        let key = ContentKey::of_picture(&bytes);
        self.learn(name, stamp, key, bytes.len() as u64);
        Ok(key)
    }

    /// Forgets what is remembered of `path` (and of the members of the tar at `path`): its bytes
    /// are read again next time. For a file found changed although its stamp was not.
    pub fn forget(&self, path: &Path) {
        let name = path.display().to_string();
        let mut inner = self.lock();
        let before = inner.file.entries.len();
        inner.file.entries.retain(|k, _| k != &name && !(k.starts_with(&name) && k[name.len()..].starts_with('#')));
        if inner.file.entries.len() != before {
            inner.changed = true;
        }
    }

    /// True when `path`'s stamp is remembered: the file was read whole before, unchanged since.
    pub fn knows(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else { return false };
        let stamp = Stamp::of(&meta);
        self.lock().file.entries.get(&path.display().to_string()).is_some_and(|(s, _)| *s == stamp)
    }

    fn remembered(&self, name: &str, stamp: Stamp) -> Option<ContentKey> {
        let mut inner = self.lock();
        let key = inner.file.entries.get(name).filter(|(s, _)| *s == stamp).map(|(_, k)| *k);
        if key.is_some() {
            inner.reused += 1;
        }
        key
    }

    fn learn(&self, name: String, stamp: Stamp, key: ContentKey, bytes: u64) {
        let mut inner = self.lock();
        inner.hashed += 1;
        inner.hashed_bytes += bytes;
        if stamp.racy() {
            inner.file.entries.remove(&name);
        } else {
            inner.file.entries.insert(name, (stamp, key));
        }
        inner.changed = true;
    }

    /// What was hashed and what was reused so far.
    pub fn counts(&self) -> HashCounts {
        let inner = self.lock();
        HashCounts { hashed: inner.hashed, hashed_bytes: inner.hashed_bytes, reused: inner.reused }
    }

    /// Writes the index (atomically) when something was learnt. Entries of files that no
    /// longer exist are dropped while they are few enough to check (up to 100,000 stats).
    pub fn save(&self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut inner = self.lock();
        if !inner.changed {
            return Ok(());
        }
        inner.file.version = INDEX_VERSION;
        if inner.file.entries.len() <= 100_000 {
            inner.file.entries.retain(|name, _| {
                let file = name.rsplit_once('#').filter(|(_, m)| m.contains('+')).map_or(name.as_str(), |(f, _)| f);
                Path::new(file).exists()
            });
        }
        let bytes = serde_json::to_vec(&inner.file).expect("the hash index always serialises");
        write_atomic(path, &bytes)?;
        inner.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_are_not_read_again_and_changed_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let f = dir.path().join("a.png");
        std::fs::write(&f, b"first version").unwrap();
        // An old modification time: not racy.
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
        let idx = HashIndex::open(&cache);
        assert_eq!(idx.file_key(&f).unwrap(), ContentKey::of(b"first version"));
        assert_eq!(idx.counts(), HashCounts { hashed: 1, hashed_bytes: 13, reused: 0 });
        idx.save().unwrap();

        let idx = HashIndex::open(&cache);
        assert_eq!(idx.file_key(&f).unwrap(), ContentKey::of(b"first version"));
        assert_eq!(idx.counts(), HashCounts { hashed: 0, hashed_bytes: 0, reused: 1 });

        // Same size, same modification time, other bytes: a new inode (written by rename, as
        // editors and `cp` onto a new file do) is still seen.
        let tmp = dir.path().join("b.tmp");
        std::fs::write(&tmp, b"other version").unwrap();
        std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(old).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(idx.file_key(&f).unwrap(), ContentKey::of(b"other version"));
        assert_eq!(idx.counts().hashed, 1);
    }

    #[test]
    fn a_file_changed_just_now_is_hashed_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.png");
        std::fs::write(&f, b"fresh").unwrap();
        let idx = HashIndex::open(dir.path());
        idx.file_key(&f).unwrap();
        idx.save().unwrap();
        let idx = HashIndex::open(dir.path());
        idx.file_key(&f).unwrap();
        assert_eq!(idx.counts().hashed, 1, "a racily clean file must not be trusted");
    }

    #[test]
    fn a_damaged_index_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store/file-hashes.json"), b"{not json").unwrap();
        let f = dir.path().join("a.png");
        std::fs::write(&f, b"x").unwrap();
        let idx = HashIndex::open(dir.path());
        assert_eq!(idx.file_key(&f).unwrap(), ContentKey::of(b"x"));
    }
}
