//! Segment files: where a store's rows live. Each extracting process appends to a segment of
//! its own, one record per backbone batch, so that writers never share a file and a killed
//! process loses at most the record it was writing.
//!
//! Layout, little-endian:
//! - header (32 bytes): `LLSTORE1`, format version (u32), feature width (u32), the first 16
//!   bytes of the recipe's blake3;
//! - records, one after another: `RCRD`, rows `n` (u32), blake3 of the rest of the record
//!   (32 bytes), then `n` row keys (32 bytes each), then `n` rows of `width` f32.
//!
//! A reader stops at the first record that is cut short or does not start with `RCRD` (a
//! killed writer's last record, or one being written now); a record whose checksum fails is
//! named and its rows are treated as absent, to be computed again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::data::content::RowKey;
use crate::error::{Error, IoContext, Result};

const MAGIC: &[u8; 8] = b"LLSTORE1";
const RECORD_MAGIC: &[u8; 4] = b"RCRD";
/// Format version of segment files.
pub const SEGMENT_VERSION: u32 = 1;
/// Bytes of a segment's header.
pub const HEADER_BYTES: u64 = 32;
/// Bytes of a record's header.
pub const RECORD_HEADER_BYTES: u64 = 40;
/// Most rows one record may hold (a sanity bound for readers of damaged files).
pub const MAX_RECORD_ROWS: u32 = 1 << 20;
/// File name suffix of segments.
pub const SUFFIX: &str = ".rows";

/// One record's place in a segment.
#[derive(Debug, Clone)]
pub struct RecordInfo {
    /// Offset of the record's header.
    pub offset: u64,
    /// Rows.
    pub rows: u32,
    /// Its row keys.
    pub keys: Vec<RowKey>,
    /// The checksum its header holds.
    pub checksum: [u8; 32],
}

impl RecordInfo {
    /// Bytes of the whole record for feature width `width`.
    pub fn bytes(&self, width: u32) -> u64 {
        record_bytes(self.rows, width)
    }
}

/// Bytes of a record of `rows` rows of `width` features.
pub fn record_bytes(rows: u32, width: u32) -> u64 {
    RECORD_HEADER_BYTES + rows as u64 * (32 + 4 * width as u64)
}

/// A segment's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Feature width.
    pub width: u32,
    /// First 16 bytes of the recipe's blake3.
    pub recipe: [u8; 16],
}

impl SegmentHeader {
    fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut b = [0u8; HEADER_BYTES as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.width.to_le_bytes());
        b[16..32].copy_from_slice(&self.recipe);
        b
    }

    fn decode(b: &[u8; HEADER_BYTES as usize], path: &Path) -> Result<SegmentHeader> {
        if &b[..8] != MAGIC {
            return Err(Error::bad_input(path, "not a lastlayer store segment (bad magic); `lastlayer cache verify` lists such files"));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != SEGMENT_VERSION {
            return Err(Error::bad_input(path, format!("segment format {version}, this lastlayer reads {SEGMENT_VERSION}")));
        }
        let mut recipe = [0u8; 16];
        recipe.copy_from_slice(&b[16..32]);
        Ok(SegmentHeader { width: u32::from_le_bytes([b[12], b[13], b[14], b[15]]), recipe })
    }
}

/// A segment's records, as read at one moment (the file is opened again to read features, so
/// that a store of many segments holds no file open).
#[derive(Debug)]
pub struct SegmentReader {
    /// Its path.
    pub path: PathBuf,
    /// Its header.
    pub header: SegmentHeader,
    /// Whole records, in file order.
    pub records: Vec<RecordInfo>,
    /// Bytes after the last whole record (a record being written, or cut short by a kill).
    pub tail_bytes: u64,
}

impl SegmentReader {
    /// Opens `path` and lists its records (headers and keys only; features are not read).
    pub fn open(path: &Path) -> Result<SegmentReader> {
        let mut file = File::open(path).at(path)?;
        let len = file.metadata().at(path)?.len();
        let mut hb = [0u8; HEADER_BYTES as usize];
        if len < HEADER_BYTES {
            return Err(Error::bad_input(path, format!("{len} bytes: shorter than a segment header")));
        }
        file.read_exact(&mut hb).at(path)?;
        let header = SegmentHeader::decode(&hb, path)?;
        let mut records = Vec::new();
        let mut offset = HEADER_BYTES;
        let mut reader = std::io::BufReader::with_capacity(1 << 16, &mut file);
        loop {
            if offset + RECORD_HEADER_BYTES > len {
                break;
            }
            let mut rh = [0u8; RECORD_HEADER_BYTES as usize];
            reader.read_exact(&mut rh).at(path)?;
            let rows = u32::from_le_bytes([rh[4], rh[5], rh[6], rh[7]]);
            if &rh[..4] != RECORD_MAGIC || rows == 0 || rows > MAX_RECORD_ROWS {
                break;
            }
            let total = record_bytes(rows, header.width);
            if offset + total > len {
                break;
            }
            let mut keys = vec![RowKey([0; 32]); rows as usize];
            for k in keys.iter_mut() {
                reader.read_exact(&mut k.0).at(path)?;
            }
            let feature_bytes = rows as i64 * 4 * header.width as i64;
            reader.seek_relative(feature_bytes).at(path)?;
            let mut checksum = [0u8; 32];
            checksum.copy_from_slice(&rh[8..40]);
            records.push(RecordInfo { offset, rows, keys, checksum });
            offset += total;
        }
        Ok(SegmentReader { path: path.to_path_buf(), header, records, tail_bytes: len - offset })
    }

    /// Opens the segment's file for [`SegmentReader::read_features`].
    pub fn open_file(&self) -> Result<File> {
        File::open(&self.path).at(&self.path)
    }

    /// Reads record `i`'s features from `file` (this segment's, [`SegmentReader::open_file`]),
    /// checking its checksum: `[rows * width]` f32. A mismatch is [`Error::Checksum`] naming
    /// the segment and the record's offset.
    pub fn read_features_from(&self, file: &File, i: usize) -> Result<Vec<f32>> {
        let rec = &self.records[i];
        let width = self.header.width as usize;
        let keys_bytes = rec.rows as usize * 32;
        let mut buf = vec![0u8; keys_bytes + rec.rows as usize * width * 4];
        file.read_exact_at(&mut buf, rec.offset + RECORD_HEADER_BYTES).at(&self.path)?;
        let actual = blake3::hash(&buf);
        if actual.as_bytes() != &rec.checksum {
            return Err(Error::Checksum {
                path: self.path.clone(),
                algorithm: "blake3",
                expected: blake3::Hash::from(rec.checksum).to_hex().to_string(),
                actual: format!("{} for the record at byte {}", actual.to_hex(), rec.offset),
                action: format!("its {} rows are damaged and will be computed again", rec.rows),
            });
        }
        Ok(buf[keys_bytes..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// [`SegmentReader::read_features_from`] on a newly opened file.
    pub fn read_features(&self, i: usize) -> Result<Vec<f32>> {
        self.read_features_from(&self.open_file()?, i)
    }
}

/// A segment this process appends to. It holds an exclusive lock on the file for as long as
/// it is open, so that `cache prune` leaves it alone.
#[derive(Debug)]
pub struct SegmentWriter {
    path: PathBuf,
    file: File,
    len: u64,
    width: u32,
    /// Rows appended.
    pub rows: usize,
}

impl SegmentWriter {
    /// Creates a new segment in `dir` (a name no other process uses) with `header`.
    pub fn create(dir: &Path, header: SegmentHeader) -> Result<SegmentWriter> {
        std::fs::create_dir_all(dir).at(dir)?;
        let host = hostname();
        for attempt in 0..100u32 {
            let nonce: u32 = rand::random();
            let path = dir.join(format!("seg-{host}-{}-{nonce:08x}{SUFFIX}", std::process::id()));
            let file = match std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 99 => continue,
                Err(e) => return Err(e).at(&path),
            };
            file.try_lock().map_err(|e| Error::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
            let mut w = SegmentWriter { path, file, len: 0, width: header.width, rows: 0 };
            if let Err(e) = w.write_at_end(&header.encode()) {
                let _ = std::fs::remove_file(&w.path);
                return Err(e);
            }
            crate::fsutil::readable_by_all(&w.path)?;
            return Ok(w);
        }
        unreachable!("the loop returns")
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record: `keys` and their `features` (`keys.len() * width` values, row-major).
    /// On failure (a full disk, say) the file is cut back to where the record began, so the
    /// segment stays valid, and the error is returned.
    pub fn append(&mut self, keys: &[RowKey], features: &[f32]) -> Result<()> {
        let rows = keys.len() as u32;
        assert_eq!(features.len(), keys.len() * self.width as usize, "features do not match keys x width");
        if rows == 0 {
            return Ok(());
        }
        let mut body = Vec::with_capacity(keys.len() * 32 + features.len() * 4);
        for k in keys {
            body.extend_from_slice(&k.0);
        }
        for x in features {
            body.extend_from_slice(&x.to_le_bytes());
        }
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES as usize + body.len());
        record.extend_from_slice(RECORD_MAGIC);
        record.extend_from_slice(&rows.to_le_bytes());
        record.extend_from_slice(blake3::hash(&body).as_bytes());
        record.extend_from_slice(&body);
        self.write_at_end(&record)?;
        self.rows += keys.len();
        Ok(())
    }

    fn write_at_end(&mut self, bytes: &[u8]) -> Result<()> {
        let start = self.len;
        let written = self.file.seek(SeekFrom::Start(start)).and_then(|_| self.file.write_all(bytes)).and_then(|_| self.file.flush());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(start);
                Err(e).at(&self.path)
            }
        }
    }

    /// Flushes the segment to the disk (fsync).
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().at(&self.path)
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        let _ = self.file.sync_data();
        if self.rows == 0 {
            // Nothing was extracted: no empty segment is left behind.
            let _ = std::fs::remove_file(&self.path);
        }
        let _ = self.file.unlock();
    }
}

/// True when some live process holds `path` open for appending.
pub fn is_being_written(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => match f.try_lock_shared() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    }
}

/// This machine's name, for segment names (shared caches on NFS have writers on many hosts).
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| std::fs::read_to_string("/etc/hostname")).unwrap_or_default();
    let name: String = raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(32).collect();
    if name.is_empty() {
        "host".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> RowKey {
        RowKey([i; 32])
    }

    #[test]
    fn records_are_read_back_and_a_cut_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader { width: 3, recipe: [7; 16] };
        let mut w = SegmentWriter::create(dir.path(), header).unwrap();
        w.append(&[key(1), key(2)], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        w.append(&[key(3)], &[7.0, 8.0, 9.0]).unwrap();
        let path = w.path().to_path_buf();
        assert!(is_being_written(&path));
        std::mem::forget(w); // as a killed process: the lock goes with the process, not here
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.header, header);
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.records[0].keys, vec![key(1), key(2)]);
        assert_eq!(r.read_features(1).unwrap(), vec![7.0, 8.0, 9.0]);

        // A record cut short (killed mid-write): the whole records before it remain.
        let full = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 5).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.tail_bytes, record_bytes(1, 3) - 5);
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_checksum_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::create(dir.path(), SegmentHeader { width: 2, recipe: [0; 16] }).unwrap();
        w.append(&[key(1)], &[1.0, 2.0]).unwrap();
        w.append(&[key(2)], &[3.0, 4.0]).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let r = SegmentReader::open(&path).unwrap();
        assert_eq!(r.read_features(0).unwrap(), vec![1.0, 2.0]);
        let err = r.read_features(1).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains(&format!("byte {}", r.records[1].offset)), "{err}");
    }

    #[test]
    fn an_empty_segment_is_not_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let w = SegmentWriter::create(dir.path(), SegmentHeader { width: 2, recipe: [0; 16] }).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        assert!(!path.exists());
    }
}
