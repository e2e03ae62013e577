//! WebDataset input: pictures in tar shards (as img2dataset writes and timm reads), each sample
//! a `key.{jpg,jpeg,png,webp}` member with a `key.cls` member holding its class index in ASCII.
//!
//! A shard set is a folder of `.tar` files (sorted by name), a brace pattern
//! (`shards-{000000..000099}.tar`, `{a,b}` lists too), or one `.tar` file. Each tar is read once
//! to index its members (name, offset, size); a picture is later read by seeking to its offset
//! in the tar: nothing is unpacked to disk. Rows are in shard order, then member order.
//! Class names come from a `classes.txt` (one per line, in label order) beside the tars or in
//! their parent folder; without one, classes are named by their index.
//!
//! Indexing reads each member's 512-byte header (seeking past the data), each `.cls`, and the
//! first 4 KiB of each picture (its format and size, to skip undecodable ones): every worker of
//! a sharded extraction indexes every tar, since the split's rows and key depend on all of them,
//! but none reads other workers' pictures. For the same reason the data's identity (the cache
//! key) hashes each sample's member headers (name, size, modification time, checksum), key and
//! label, not its picture's bytes: rewriting a tar member changes its header.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};

/// Class indices from `.cls` members must be below this (a head has a row per class).
pub const MAX_CLASSES: i64 = 100_000;

/// Picture extensions of a sample (lower case): those of a user's folders.
pub const PICTURE_EXTENSIONS: [&str; 13] = super::folder::EXTENSIONS;

/// One sample: where its picture's bytes are in which tar, and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The tar file.
    pub tar: Arc<PathBuf>,
    /// Its position in the shard set (the unit of `--shard`).
    pub tar_index: usize,
    /// Offset of the picture's bytes in the tar.
    pub offset: u64,
    /// Their length.
    pub len: u64,
    /// `<tar file name>/<member key>`: names the sample, independent of where the tars are.
    pub key: String,
    /// Class index.
    pub label: i64,
    /// blake3 of the sample's tar member headers (name, size, modification time, checksum) and
    /// its `.cls` text: what the data's identity hashes instead of the picture's bytes.
    pub fingerprint: [u8; 32],
}

impl Sample {
    /// The picture's bytes, read from the tar.
    pub fn read(&self) -> Result<Vec<u8>> {
        self.read_prefix(self.len)
    }

    /// The first `n` bytes of the picture (all of it when shorter).
    fn read_prefix(&self, n: u64) -> Result<Vec<u8>> {
        let path = self.tar.as_path();
        let mut f = std::fs::File::open(path).at(path)?;
        f.seek(SeekFrom::Start(self.offset)).at(path)?;
        let mut bytes = vec![0u8; n.min(self.len) as usize];
        f.read_exact(&mut bytes).at(path)?;
        Ok(bytes)
    }
}

/// The classes and the samples of each split.
#[derive(Debug, Clone)]
pub struct WebData {
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Training samples.
    pub train: Vec<Sample>,
    /// Test samples.
    pub test: Vec<Sample>,
    /// `<tar>:<key>: why` of every sample skipped.
    pub skipped: Vec<String>,
}

/// Expands the brace groups of `pattern`: `{000..012}` (numbers, zero-padded to the wider
/// end) and `{a,b,c}`; several groups multiply.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|c| open + c).ok_or_else(|| Error::usage("--data", format!("'{pattern}': a '{{' without its '}}'")))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let items: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let bad = || Error::usage("--data", format!("'{pattern}': {{{body}}} is not a range of whole numbers like {{000000..000099}}"));
        let (lo, hi) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
        if lo > hi || hi - lo > 10_000_000 {
            return Err(bad());
        }
        let width = if a.starts_with('0') || b.starts_with('0') { a.len().max(b.len()) } else { 0 };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let rest = expand_braces(tail)?;
    Ok(items.iter().flat_map(|i| rest.iter().map(move |r| format!("{head}{i}{r}"))).collect())
}

/// True when `value` names WebDataset shards: a brace pattern or a `.tar` file, or a folder
/// holding `.tar` files (directly or in `train/`).
pub fn looks_like_webdataset(value: &str) -> bool {
    let p = Path::new(value);
    if value.contains('{') || value.ends_with(".tar") {
        return true;
    }
    p.is_dir() && (has_tars(p) || has_tars(&p.join("train")))
}

fn has_tars(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "tar"))).unwrap_or(false)
}

/// The tar files of a shard set (see the module docs), in order.
pub fn shard_files(spec: &str) -> Result<Vec<PathBuf>> {
    let p = Path::new(spec);
    let files: Vec<PathBuf> = if p.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .at(p)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "tar"))
            .collect();
        v.sort();
        v
    } else {
        expand_braces(spec)?.into_iter().map(PathBuf::from).collect()
    };
    if files.is_empty() {
        return Err(Error::bad_input(p, "holds no .tar files; give a folder of WebDataset .tar shards or a pattern like shards-{000000..000009}.tar"));
    }
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::bad_input(missing, format!("no such tar file (from --data/--test-data '{spec}')")));
    }
    Ok(files)
}

/// Indexes one tar: its samples in member order, and the samples that cannot be used
/// (`<tar>:<key>: why`). The pictures' headers are read to find undecodable ones.
fn index_tar(path: &Path, tar_index: usize) -> Result<(Vec<Sample>, Vec<String>)> {
    let file = std::fs::File::open(path).at(path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let tar_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // key -> (picture (offset, len, header), cls (text, header))
    type Parts = (Option<(u64, u64, Vec<u8>)>, Option<(Vec<u8>, Vec<u8>)>);
    let mut order: Vec<String> = Vec::new();
    let mut parts: HashMap<String, Parts> = HashMap::new();
    let bad_tar = |e: std::io::Error| Error::bad_input(path, format!("not a readable tar file ({e})"));
    // Seeking past members' data: only the headers and the .cls texts are read.
    for entry in archive.entries_with_seek().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad_tar)?.to_string_lossy().into_owned();
        let (dir, base) = match name.rfind('/') {
            Some(i) => (&name[..=i], &name[i + 1..]),
            None => ("", name.as_str()),
        };
        let Some((stem, ext)) = base.split_once('.') else { continue };
        let key = format!("{dir}{stem}");
        let ext = ext.to_ascii_lowercase();
        let slot = parts.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            (None, None)
        });
        let header = entry.header().as_bytes().to_vec();
        if PICTURE_EXTENSIONS.contains(&ext.as_str()) {
            slot.0 = Some((entry.raw_file_position(), entry.size(), header));
        } else if ext == "cls" {
            let mut text = Vec::new();
            entry.by_ref().take(64).read_to_end(&mut text).map_err(bad_tar)?;
            slot.1 = Some((text, header));
        }
    }
    let tar = Arc::new(path.to_path_buf());
    let tar_bytes = std::fs::metadata(path).at(path)?.len();
    let mut samples = Vec::new();
    let mut bad = Vec::new();
    for key in order {
        let (pic, cls) = parts.remove(&key).unwrap_or_default();
        let label = cls.as_ref().map(|(t, _)| std::str::from_utf8(t).ok().and_then(|s| s.trim().parse::<i64>().ok()).filter(|&l| l >= 0));
        match (pic, label) {
            (None, _) => bad.push(format!("{tar_name}:{key}: no picture member ({})", PICTURE_EXTENSIONS.join(", "))),
            (_, None) => bad.push(format!("{tar_name}:{key}: no {key}.cls member")),
            (_, Some(None)) => bad.push(format!("{tar_name}:{key}: {key}.cls is not a class index (a whole number)")),
            (_, Some(Some(l))) if l >= MAX_CLASSES => bad.push(format!("{tar_name}:{key}: class index {l} in {key}.cls is not below {MAX_CLASSES}")),
            (Some((offset, len, _)), _) if offset.checked_add(len).is_none_or(|end| end > tar_bytes) => {
                bad.push(format!("{tar_name}:{key}: the picture member runs past the end of the tar (truncated file)"))
            }
            (Some((offset, len, pic_header)), Some(Some(label))) => {
                let mut h = blake3::Hasher::new();
                h.update(&pic_header);
                if let Some((text, cls_header)) = &cls {
                    h.update(cls_header);
                    h.update(text);
                }
                let fingerprint = *h.finalize().as_bytes();
                samples.push(Sample { tar: tar.clone(), tar_index, offset, len, key: format!("{tar_name}/{key}"), label, fingerprint })
            }
        }
    }
    // Pictures that do not decode: read each header.
    let probed: Vec<Option<String>> = samples.par_iter().map(|s| probe(s).err()).collect();
    let mut kept = Vec::with_capacity(samples.len());
    for (s, why) in samples.into_iter().zip(probed) {
        match why {
            Some(why) => bad.push(format!("{}: not a readable picture ({why})", s.key.replacen('/', ":", 1))),
            None => kept.push(s),
        }
    }
    Ok((kept, bad))
}

/// Reads a picture's header (format and size), from its first 4 KiB when they hold it, else
/// from all its bytes.
fn probe(s: &Sample) -> std::result::Result<(), String> {
    let dims = |bytes: Vec<u8>| -> std::result::Result<(u32, u32), String> {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
        if reader.format().is_none() {
            return Err("unknown format".into());
        }
        reader.into_dimensions().map_err(|e| e.to_string())
    };
    let found = match dims(s.read_prefix(4096).map_err(|e| e.to_string())?) {
        Ok(d) => Ok(d),
        Err(_) if s.len > 4096 => dims(s.read().map_err(|e| e.to_string())?),
        Err(e) => Err(e),
    };
    match found? {
        (0, _) | (_, 0) => Err("empty picture".into()),
        _ => Ok(()),
    }
}

/// Indexes a shard set: samples in order, and the unusable ones.
fn index_set(spec: &str) -> Result<(Vec<PathBuf>, Vec<Sample>, Vec<String>)> {
    let files = shard_files(spec)?;
    let indexed: Vec<Result<(Vec<Sample>, Vec<String>)>> = files.par_iter().enumerate().map(|(i, f)| index_tar(f, i)).collect();
    let (mut samples, mut bad) = (Vec::new(), Vec::new());
    for r in indexed {
        let (s, b) = r?;
        samples.extend(s);
        bad.extend(b);
    }
    Ok((files, samples, bad))
}

/// Reads the train and test shard sets. `train` is a shard set, or a folder with `train/` and
/// `test/` (or `val/`) folders of tars when `test` is `None`. Unusable samples are skipped with a
/// warning naming each (and listed in [`WebData::skipped`]), or are an error when `strict`.
pub fn scan(train: &str, test: Option<&str>, strict: bool) -> Result<WebData> {
    let (train, test) = match test {
        Some(t) => (train.to_string(), t.to_string()),
        None => {
            let root = Path::new(train);
            let test_dir = ["test", "val"].iter().map(|d| root.join(d)).find(|d| d.is_dir());
            match (root.join("train").is_dir(), test_dir) {
                (true, Some(t)) => (root.join("train").display().to_string(), t.display().to_string()),
                _ => {
                    return Err(Error::usage(
                        "--test-data",
                        format!("WebDataset '{train}' is one shard set; give the test shards with --test-data (or a folder with train/ and test/ folders of tars)"),
                    ))
                }
            }
        }
    };
    let (train_files, train_samples, mut bad) = index_set(&train)?;
    let (_, test_samples, test_bad) = index_set(&test)?;
    bad.extend(test_bad);
    if let (true, Some(first)) = (strict, bad.first()) {
        return Err(Error::bad_input(Path::new(&train), format!("unusable sample {first}; remove it, or drop --strict to skip such samples with a warning")));
    }
    for b in &bad {
        tracing::warn!("skipping {b}");
    }
    if !bad.is_empty() {
        tracing::warn!("{} unusable WebDataset sample(s) skipped (--strict makes this an error)", bad.len());
    }
    if train_samples.is_empty() {
        return Err(Error::bad_input(Path::new(&train), "holds no usable samples (key.jpg with key.cls)"));
    }
    if test_samples.is_empty() {
        return Err(Error::bad_input(Path::new(&test), "holds no usable samples (key.jpg with key.cls)"));
    }
    let max = train_samples.iter().chain(&test_samples).map(|s| s.label).max().unwrap_or(0);
    let classes = class_names(&train_files[0], max as usize + 1)?;
    Ok(WebData { classes, train: train_samples, test: test_samples, skipped: bad })
}

/// `classes.txt` beside `first_tar` or in its parent folder, else `0`, `1`, …
fn class_names(first_tar: &Path, needed: usize) -> Result<Vec<String>> {
    let dir = first_tar.parent().unwrap_or(Path::new("."));
    for file in [dir.join("classes.txt"), dir.parent().unwrap_or(dir).join("classes.txt")] {
        if file.is_file() {
            let text = std::fs::read_to_string(&file).at(&file)?;
            let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
            if names.len() < needed {
                return Err(Error::bad_input(&file, format!("names {} classes, but a .cls member says class {}; one name per line, in label order", names.len(), needed - 1)));
            }
            return Ok(names);
        }
    }
    if needed < 2 {
        return Err(Error::bad_input(dir, "every sample has class 0; a classifier needs at least two classes"));
    }
    Ok((0..needed).map(|i| i.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_with_padding_and_lists() {
        assert_eq!(expand_braces("s-{000..002}.tar").unwrap(), vec!["s-000.tar", "s-001.tar", "s-002.tar"]);
        assert_eq!(expand_braces("{a,b}-{8..10}.tar").unwrap(), vec!["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar", "b-9.tar", "b-10.tar"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), vec!["plain.tar"]);
        for bad in ["s-{3..1}.tar", "s-{x..2}.tar", "s-{000.tar"] {
            let err = expand_braces(bad).unwrap_err().to_string();
            assert!(err.contains("--data") && err.contains(bad), "{err}");
        }
    }
}
