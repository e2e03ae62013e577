//! Data sets: CIFAR-10 (downloaded, or an existing `cifar-10-batches-bin`), a user's folders
//! of pictures, WebDataset tars, and image-classification data sets on the Hugging Face Hub
//! (parquet); stratified sampling; and turning rows into normalised input batches.

pub mod cifar10;
pub mod content;
pub mod decode;
pub mod download;
pub mod folder;
pub mod heif;
pub mod huggingface;
pub mod metadata;
pub mod on_device;
pub mod parquet;
pub mod preprocess;
pub mod sample;
pub mod views;
pub mod webdataset;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use image::metadata::Orientation;
use tch::Tensor;

use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use content::{ContentKey, HashIndex, RowKey};
use on_device::Pixels;
use preprocess::Preprocessing;
use views::{ViewOp, Views};

/// What `--data` (with `--data-dir`, `--test-fraction`) names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// CIFAR-10, downloaded into the cache unless `data_dir` points at an unpacked copy.
    Cifar10 {
        /// `--data-dir`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_dir: Option<PathBuf>,
    },
    /// A folder of pictures, labelled by its class subfolders or by a metadata file (see
    /// [`folder`] and [`metadata`]).
    Folder {
        /// The folder (absolute).
        root: PathBuf,
        /// Share of pictures hashed into test when the folder has no train/test subfolders.
        test_fraction: f64,
        /// Unreadable pictures are an error instead of being skipped.
        #[serde(default)]
        strict: bool,
        /// `--labels`: a `.csv` or `.jsonl` labels file (absolute), instead of the folder's
        /// metadata files or class folders.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<PathBuf>,
        /// `--label-column`: the column of the labels file that holds the class.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label_column: Option<String>,
    },
    /// WebDataset tar shards (see [`webdataset`]): train and test shard sets.
    WebDataset {
        /// The train shards: a folder of tars, a brace pattern or a tar (absolute); or a folder
        /// with `train/` and `test/` folders of tars when `test` is `None`.
        train: String,
        /// The test shards (`--test-data`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<String>,
        /// Unusable samples are an error instead of being skipped.
        #[serde(default)]
        strict: bool,
    },
    /// An image-classification data set on the Hugging Face Hub, read from its parquet files
    /// (see [`huggingface`]).
    HuggingFace {
        /// The repository, revision and config.
        #[serde(flatten)]
        request: crate::hub::DatasetRequest,
        /// `--image-column`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_column: Option<String>,
        /// `--label-column`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label_column: Option<String>,
    },
}

impl DataSpec {
    /// Interprets `--data VALUE` with `--data-dir` and `--test-fraction`.
    pub fn parse(value: &str, data_dir: Option<&Path>, test_fraction: f64, strict: bool) -> Result<Self> {
        Self::parse_with_test(value, None, data_dir, test_fraction, strict)
    }

    /// As [`DataSpec::parse`], with `--test-data` (WebDataset test shards).
    pub fn parse_with_test(value: &str, test_data: Option<&str>, data_dir: Option<&Path>, test_fraction: f64, strict: bool) -> Result<Self> {
        if let Some(request) = huggingface::parse_request(value) {
            if data_dir.is_some() {
                return Err(Error::usage("--data-dir", "only applies to --data cifar10"));
            }
            if let Some(t) = test_data {
                return Err(Error::usage("--test-data", format!("'{t}': a Hub data set has its own test split")));
            }
            return Ok(DataSpec::HuggingFace { request: request?, image_column: None, label_column: None });
        }
        if webdataset::looks_like_webdataset(value) {
            if data_dir.is_some() {
                return Err(Error::usage("--data-dir", "only applies to --data cifar10"));
            }
            let abs = |v: &str| std::path::absolute(v).at(v).map(|p| p.display().to_string());
            return Ok(DataSpec::WebDataset { train: abs(value)?, test: test_data.map(abs).transpose()?, strict });
        }
        if let Some(t) = test_data {
            return Err(Error::usage("--test-data", format!("'{t}': only WebDataset --data (tar shards) takes separate test shards")));
        }
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(Error::usage("--test-fraction", format!("{test_fraction} is not in [0, 1)")));
        }
        if value.eq_ignore_ascii_case("cifar10") || value.eq_ignore_ascii_case("cifar-10") {
            let data_dir = data_dir.map(|d| std::path::absolute(d).at(d)).transpose()?;
            return Ok(DataSpec::Cifar10 { data_dir });
        }
        if data_dir.is_some() {
            return Err(Error::usage("--data-dir", "only applies to --data cifar10; a folder data set is given as --data PATH"));
        }
        let root = Path::new(value);
        if !root.is_dir() {
            return Err(Error::usage(
                "--data",
                format!("'{value}' is neither `cifar10` nor a folder (one subfolder per class, picture files)"),
            ));
        }
        Ok(DataSpec::Folder { root: std::path::absolute(root).at(root)?, test_fraction, strict, labels: None, label_column: None })
    }

    /// Adds `--labels FILE` and `--label-column NAME` to a folder data set (see [`metadata`]);
    /// other data sets take neither.
    pub fn with_labels(self, file: Option<&Path>, column: Option<&str>) -> Result<Self> {
        if file.is_none() && column.is_none() {
            return Ok(self);
        }
        let flag = if file.is_some() { "--labels" } else { "--label-column" };
        match self {
            DataSpec::Folder { root, test_fraction, strict, .. } => {
                let labels = match file {
                    Some(f) => {
                        if metadata::Format::of(f).is_none() {
                            return Err(Error::usage("--labels", format!("'{}': a .csv or .jsonl file is expected", f.display())));
                        }
                        if !f.is_file() {
                            return Err(Error::bad_input(f, "--labels: no such file (a .csv or .jsonl file whose file_name column is relative to --data)"));
                        }
                        Some(std::path::absolute(f).at(f)?)
                    }
                    None => None,
                };
                if column.is_some_and(|c| c.trim().is_empty()) {
                    return Err(Error::usage("--label-column", "is empty; name the column that holds the class"));
                }
                Ok(DataSpec::Folder { root, test_fraction, strict, labels, label_column: column.map(str::to_string) })
            }
            DataSpec::HuggingFace { request, image_column, .. } if file.is_none() => {
                if column.is_some_and(|c| c.trim().is_empty()) {
                    return Err(Error::usage("--label-column", "is empty; name the column that holds the class"));
                }
                Ok(DataSpec::HuggingFace { request, image_column, label_column: column.map(str::to_string) })
            }
            _ => Err(Error::usage(flag, "only a folder data set (--data PATH) takes a labels file, and a folder or a Hub data set (hf:OWNER/NAME) a label column")),
        }
    }

    /// Adds `--image-column NAME`, which only a Hub data set takes.
    pub fn with_image_column(self, column: Option<&str>) -> Result<Self> {
        let Some(column) = column else { return Ok(self) };
        if column.trim().is_empty() {
            return Err(Error::usage("--image-column", "is empty; name the column that holds the pictures"));
        }
        match self {
            DataSpec::HuggingFace { request, label_column, .. } => Ok(DataSpec::HuggingFace { request, image_column: Some(column.to_string()), label_column }),
            _ => Err(Error::usage("--image-column", "only a Hub data set (--data hf:OWNER/NAME) has columns of pictures")),
        }
    }

    /// For a folder labelled by a file (`--labels`, or a metadata file in it), checks every
    /// row without opening a picture (see [`folder::check_labels`]), so that a command can
    /// refuse bad labels before it writes anything; other data sets are checked when opened.
    pub fn check_labels(&self) -> Result<()> {
        match self {
            DataSpec::Folder { root, test_fraction, labels, label_column, .. } => {
                folder::check_labels(root, *test_fraction, &metadata::LabelSource { file: labels.clone(), column: label_column.clone() })
            }
            _ => Ok(()),
        }
    }
}

/// Rows' pictures.
#[derive(Debug, Clone)]
enum Pictures {
    /// CIFAR-10 records (shared) and the rows used.
    Cifar(Arc<cifar10::Records>, Vec<usize>),
    /// Picture files.
    Files(Vec<folder::Entry>),
    /// Samples in WebDataset tars.
    Tar(Vec<webdataset::Sample>),
    /// Rows of a Hub data set's parquet files.
    Parquet(Arc<huggingface::HfPictures>, Vec<huggingface::HfRow>),
}

/// One split (train or test), possibly a sample of it.
#[derive(Debug, Clone)]
pub struct Split {
    /// `train` or `test`.
    pub name: String,
    /// Class index of each row.
    pub labels: Vec<i64>,
    pictures: Pictures,
    /// With views, each picture is `views.count()` rows (see [`views`]).
    views: Option<Views>,
    /// `(picture, view)` of each row when the rows are a selection of them (the rows the
    /// feature store lacks, say); `None`: every view of every picture, picture-major.
    selected: Option<Arc<Vec<(u32, u16)>>>,
}

/// A batch's input and the store key of each of its rows, computed from the very bytes that
/// were decoded.
pub type KeyedBatch = (Tensor, Vec<RowKey>);

impl Split {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows `rows` (indices into this split, which has no views yet), in that order.
    pub fn subset(&self, rows: &[usize]) -> Split {
        debug_assert!(self.views.is_none() && self.selected.is_none(), "a sample is taken of pictures, before their views");
        let pictures = match &self.pictures {
            Pictures::Cifar(rec, idx) => Pictures::Cifar(rec.clone(), rows.iter().map(|&r| idx[r]).collect()),
            Pictures::Files(entries) => Pictures::Files(rows.iter().map(|&r| entries[r].clone()).collect()),
            Pictures::Tar(samples) => Pictures::Tar(rows.iter().map(|&r| samples[r].clone()).collect()),
            Pictures::Parquet(files, hf) => Pictures::Parquet(files.clone(), rows.iter().map(|&r| hf[r]).collect()),
        };
        Split { name: self.name.clone(), labels: rows.iter().map(|&r| self.labels[r]).collect(), pictures, views: None, selected: None }
    }

    /// This split with `views` of every picture: row `p * V + v` is view `v` of picture `p`.
    pub fn with_views(&self, views: Views) -> Split {
        let v = views.count();
        let labels = self.labels.iter().flat_map(|&l| std::iter::repeat_n(l, v)).collect();
        Split { name: self.name.clone(), labels, pictures: self.pictures.clone(), views: Some(views), selected: None }
    }

    /// Only the rows `rows` (indices into this split's rows), in that order: for extracting
    /// just the rows the feature store lacks. The result's rows are views of the same pictures.
    pub fn select(&self, rows: &[usize]) -> Split {
        let selected = rows.iter().map(|&r| {
            let (p, v) = self.row(r);
            (p as u32, v as u16)
        });
        Split {
            name: self.name.clone(),
            labels: rows.iter().map(|&r| self.labels[r]).collect(),
            pictures: self.pictures.clone(),
            views: self.views,
            selected: Some(Arc::new(selected.collect())),
        }
    }

    /// The views of its pictures, if any.
    pub fn views(&self) -> Option<&Views> {
        self.views.as_ref()
    }

    /// Number of pictures.
    pub fn pictures(&self) -> usize {
        match &self.pictures {
            Pictures::Cifar(_, idx) => idx.len(),
            Pictures::Files(entries) => entries.len(),
            Pictures::Tar(samples) => samples.len(),
            Pictures::Parquet(_, rows) => rows.len(),
        }
    }

    /// Row `r`'s picture and view.
    pub fn row(&self, r: usize) -> (usize, usize) {
        match (&self.selected, &self.views) {
            (Some(sel), _) => (sel[r].0 as usize, sel[r].1 as usize),
            (None, Some(views)) => (r / views.count(), r % views.count()),
            (None, None) => (r, 0),
        }
    }

    /// The store key of every row, given the content key of every picture.
    pub fn row_keys(&self, content: &[ContentKey]) -> Vec<RowKey> {
        (0..self.len())
            .map(|r| {
                let (p, v) = self.row(r);
                match &self.views {
                    Some(views) => views.row_key(content[p], v),
                    None => RowKey::plain(content[p]),
                }
            })
            .collect()
    }

    /// The file picture `p` is read from (a picture file, or the tar holding a sample); `None`
    /// for a CIFAR-10 record.
    pub fn picture_file(&self, p: usize) -> Option<&Path> {
        match &self.pictures {
            Pictures::Cifar(..) => None,
            Pictures::Files(entries) => Some(&entries[p].path),
            Pictures::Tar(samples) => Some(samples[p].tar.as_path()),
            Pictures::Parquet(files, rows) => Some(files.local(&rows[p])),
        }
    }

    /// How a user finds picture `p`: a folder picture by its path relative to the data folder
    /// (`train/cat/0001.jpg`), a CIFAR-10 record as `data_batch_3.bin#1234`, a WebDataset
    /// sample as `<tar file>#<key>`.
    pub fn picture_name(&self, p: usize) -> String {
        match &self.pictures {
            Pictures::Cifar(rec, idx) => rec.record_name(idx[p]),
            Pictures::Files(entries) => entries[p].name.clone(),
            Pictures::Tar(samples) => samples[p].key.replacen('/', "#", 1),
            Pictures::Parquet(files, rows) => files.name(&rows[p]),
        }
    }

    /// The content key of every picture (see [`content`]), in order: unchanged files' keys come
    /// from `index` unread; files are read and hashed in parallel.
    pub fn content_keys(&self, index: &HashIndex) -> Result<Vec<ContentKey>> {
        match &self.pictures {
            Pictures::Cifar(rec, idx) => Ok(idx.par_iter().map(|&i| ContentKey::of(rec.pixels(i))).collect()),
            Pictures::Files(entries) => entries.par_iter().map(|e| index.file_key(&e.path)).collect(),
            Pictures::Tar(samples) => {
                samples.par_iter().map(|s| index.member_key(s.tar.as_path(), s.offset, s.len, || s.read())).collect()
            }
            Pictures::Parquet(files, rows) => files.content_keys(rows),
        }
    }

    /// True when [`Split::identity`] needs the pictures' content keys (a folder's files);
    /// CIFAR-10 records and WebDataset samples have theirs without them.
    pub fn identity_needs_content(&self) -> bool {
        matches!(self.pictures, Pictures::Files(_) | Pictures::Parquet(..))
    }

    /// A content hash of exactly these rows, given their pictures' `keys`
    /// ([`Split::content_keys`]): the pictures' bytes and labels (and, for files, their
    /// `<class>/<file>` names; never where the folder is). For WebDataset samples, their tar
    /// member headers, keys and labels (see [`webdataset`]); `keys` may then be empty.
    pub fn identity(&self, keys: &[ContentKey]) -> Result<String> {
        let mut h = blake3::Hasher::new();
        match &self.pictures {
            Pictures::Cifar(rec, idx) => {
                h.update(b"cifar10-binary\0");
                for &i in idx {
                    h.update(&rec.bytes[i * cifar10::RECORD_BYTES..(i + 1) * cifar10::RECORD_BYTES]);
                }
            }
            Pictures::Files(entries) => {
                if keys.len() != entries.len() {
                    return Err(Error::usage("--data", format!("{} content keys for {} pictures", keys.len(), entries.len())));
                }
                h.update(b"folder\0");
                for (e, key) in entries.iter().zip(keys) {
                    h.update(e.key.as_bytes());
                    h.update(&[0]);
                    h.update(&e.label.to_le_bytes());
                    h.update(&key.0);
                }
            }
            Pictures::Tar(samples) => {
                // Member headers, not picture bytes: see `webdataset`.
                h.update(b"webdataset\0");
                for s in samples {
                    h.update(s.key.as_bytes());
                    h.update(&[0]);
                    h.update(&s.label.to_le_bytes());
                    h.update(&s.fingerprint);
                }
            }
            Pictures::Parquet(files, rows) => {
                if keys.len() != rows.len() {
                    return Err(Error::usage("--data", format!("{} content keys for {} pictures", keys.len(), rows.len())));
                }
                h.update(b"hf-parquet\0");
                for (r, key) in rows.iter().zip(keys) {
                    h.update(files.name(r).as_bytes());
                    h.update(&[0]);
                    h.update(&r.label.to_le_bytes());
                    h.update(&key.0);
                }
            }
        }
        Ok(h.finalize().to_hex().to_string())
    }

    /// Picture `p`, decoded `[1, 3, h, w]` uint8, with the content key of the bytes decoded.
    pub fn picture(&self, p: usize) -> Result<(Tensor, ContentKey)> {
        match &self.pictures {
            Pictures::Cifar(rec, idx) => Ok((cifar_pixels(rec, &idx[p..p + 1]), ContentKey::of(rec.pixels(idx[p])))),
            Pictures::Files(entries) => read_picture(&entries[p].path),
            Pictures::Tar(samples) => tar_picture(&samples[p]),
            Pictures::Parquet(files, rows) => files.picture(&rows[p]),
        }
    }

    /// The rows `rows` grouped by picture: `(picture, first row, end row)` for each run of
    /// consecutive rows of one picture, so that each picture is decoded once for its views.
    fn picture_runs(&self, rows: Range<usize>) -> Vec<(usize, usize, usize)> {
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for r in rows {
            let (p, _) = self.row(r);
            match runs.last_mut() {
                Some(last) if last.0 == p => last.2 = r + 1,
                _ => runs.push((p, r, r + 1)),
            }
        }
        runs
    }

    /// True when every row is a picture as it is (no views, or only view 0 selected).
    fn plain_rows(&self) -> bool {
        match (&self.views, &self.selected) {
            (None, _) => true,
            (Some(_), Some(sel)) => sel.iter().all(|&(_, v)| v == 0),
            (Some(_), None) => false,
        }
    }

    /// Normalised input `[len, 3, S, S]` for `rows`.
    pub fn batch(&self, rows: Range<usize>, pre: &Preprocessing) -> Result<Tensor> {
        Ok(self.batch_keyed(rows, pre)?.0)
    }

    /// Normalised input `[len, 3, S, S]` for `rows`, with each row's store key. Pictures are
    /// decoded in parallel, each once for all of its rows here.
    pub fn batch_keyed(&self, rows: Range<usize>, pre: &Preprocessing) -> Result<KeyedBatch> {
        if let (Pictures::Cifar(rec, idx), true) = (&self.pictures, self.plain_rows()) {
            // CIFAR records: one batched resize for the whole batch.
            let pictures: Vec<usize> = rows.clone().map(|r| idx[self.row(r).0]).collect();
            let keys = pictures.iter().map(|&i| RowKey::plain(ContentKey::of(rec.pixels(i)))).collect();
            return Ok((pre.batch(&cifar_pixels(rec, &pictures)), keys));
        }
        let per_picture: Vec<Result<Vec<(Tensor, RowKey)>>> = self
            .picture_runs(rows)
            .into_par_iter()
            .map(|(p, start, end)| {
                let (picture, content) = self.picture(p)?;
                Ok((start..end)
                    .map(|r| {
                        let v = self.row(r).1;
                        match &self.views {
                            Some(views) => (views.input(&picture, content, v, pre), views.row_key(content, v)),
                            None => (pre.batch(&picture), RowKey::plain(content)),
                        }
                    })
                    .collect())
            })
            .collect();
        let (inputs, keys): (Vec<Tensor>, Vec<RowKey>) = per_picture.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten().unzip();
        Ok((Tensor::cat(&inputs, 0), keys))
    }

    /// The decoded uint8 pictures of `rows`, at their stored size, for
    /// [`Preprocessing::batch_on`] (files are decoded in parallel). Rows that are views have
    /// [`Split::view_pixels`] instead.
    pub fn pixels(&self, rows: Range<usize>) -> Result<Pixels> {
        Ok(self.pixels_keyed(rows)?.0)
    }

    /// [`Split::pixels`] with each row's store key.
    pub fn pixels_keyed(&self, rows: Range<usize>) -> Result<(Pixels, Vec<RowKey>)> {
        if !self.plain_rows() {
            return Err(Error::usage("--augment", "this split's rows are views, not plain pictures: see `Split::view_pixels`"));
        }
        let pictures: Vec<usize> = rows.map(|r| self.row(r).0).collect();
        match &self.pictures {
            Pictures::Cifar(rec, idx) => {
                let records: Vec<usize> = pictures.iter().map(|&p| idx[p]).collect();
                let keys = records.iter().map(|&i| RowKey::plain(ContentKey::of(rec.pixels(i)))).collect();
                Ok((Pixels::batch(&cifar_pixels(rec, &records))?, keys))
            }
            _ => {
                let decoded: Vec<Result<(Tensor, ContentKey)>> = pictures.par_iter().map(|&p| self.picture(p)).collect();
                let (decoded, keys): (Vec<Tensor>, Vec<RowKey>) =
                    decoded.into_iter().collect::<Result<Vec<_>>>()?.into_iter().map(|(t, k)| (t, RowKey::plain(k))).unzip();
                Ok((Pixels::pictures(&decoded)?, keys))
            }
        }
    }

    /// For the device path of a split with views: the pictures of view rows `rows` (each
    /// decoded once) as uint8 [`Pixels`], and for every row the index of its picture among them
    /// and what its view does. [`Preprocessing::views_on`] makes the views from them on the
    /// backbone's device; [`Split::batch`] makes the same ones here.
    pub fn view_pixels(&self, rows: Range<usize>) -> Result<(Pixels, Vec<(usize, ViewOp)>)> {
        let (pixels, ops, _) = self.view_pixels_keyed(rows)?;
        Ok((pixels, ops))
    }

    /// [`Split::view_pixels`] with each row's store key.
    pub fn view_pixels_keyed(&self, rows: Range<usize>) -> Result<KeyedViewPixels> {
        let views = self.views.ok_or_else(|| Error::usage("--augment", "this split's rows are plain pictures, not views"))?;
        let runs = self.picture_runs(rows);
        let decoded: Vec<Result<(Tensor, ContentKey)>> = runs.par_iter().map(|&(p, _, _)| self.picture(p)).collect();
        let decoded = decoded.into_iter().collect::<Result<Vec<_>>>()?;
        let (mut ops, mut keys) = (Vec::new(), Vec::new());
        for (i, (&(_, start, end), (picture, content))) in runs.iter().zip(&decoded).enumerate() {
            let size = picture.size();
            for r in start..end {
                let v = self.row(r).1;
                ops.push((i, views.op(*content, v, size[2], size[3])));
                keys.push(views.row_key(*content, v));
            }
        }
        let pictures: Vec<Tensor> = decoded.into_iter().map(|(t, _)| t).collect();
        Ok((Pixels::pictures(&pictures)?, ops, keys))
    }

    /// Where the split may be cut between `--shard`s: `0 = b₀ < b₁ < … = len`, with the name of
    /// the unit. Backbone batches of `batch_size` rows, or for WebDataset the tar files (rows of
    /// one tar stay together).
    pub fn shard_units(&self, batch_size: usize) -> (Vec<usize>, &'static str) {
        // With views, units are whole pictures: tar files, or as many pictures as make a whole
        // number of backbone batches of view rows. Bounds are in the rows the entry stores (one
        // a picture when the views are averaged).
        let (v, stored) = match &self.views {
            Some(views) => (views.count(), if views.averaged() { 1 } else { views.count() }),
            None => (1, 1),
        };
        let n = self.pictures();
        let per_unit = batch_size.max(1) / gcd(batch_size.max(1), v);
        let (mut b, unit) = match &self.pictures {
            Pictures::Tar(samples) => {
                let mut b = vec![0];
                b.extend((1..n).filter(|&i| samples[i].tar_index != samples[i - 1].tar_index));
                (b, "tar file")
            }
            Pictures::Parquet(_, rows) => {
                let mut b = vec![0];
                b.extend((1..n).filter(|&i| (rows[i].file, rows[i].group) != (rows[i - 1].file, rows[i - 1].group)));
                (b, "row group")
            }
            _ => ((0..n).step_by(per_unit).collect(), "batch"),
        };
        b.push(n);
        (b.into_iter().map(|p| p * stored).collect(), unit)
    }

    /// The rows `start..end` of the entry this split makes (see [`Split::shard_units`]): with
    /// views, the pictures those rows are views of, with their views.
    pub fn stored_rows(&self, start: usize, end: usize) -> Split {
        match self.views {
            None => self.subset(&(start..end).collect::<Vec<_>>()),
            Some(views) => {
                let stored = if views.averaged() { 1 } else { views.count() };
                let v = views.count();
                let pictures: Vec<usize> = (start / stored..end / stored).collect();
                let plain = Split { name: self.name.clone(), labels: self.labels.iter().step_by(v).copied().collect(), pictures: self.pictures.clone(), views: None, selected: None };
                plain.subset(&pictures).with_views(views)
            }
        }
    }
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The decoded pictures of some view rows, each row's `(picture index, view)`, and the rows'
/// store keys ([`Split::view_pixels_keyed`]).
pub type KeyedViewPixels = (Pixels, Vec<(usize, ViewOp)>, Vec<RowKey>);

/// A WebDataset sample's picture as a `[1, 3, h, w]` uint8 RGB tensor, with its content key.
fn tar_picture(s: &webdataset::Sample) -> Result<(Tensor, ContentKey)> {
    let bytes = s.read()?;
    let picture = decode_picture(&bytes).map_err(|e| Error::bad_input(s.tar.as_path(), format!("sample {}: {e}", s.key)))?;
    Ok((picture, ContentKey::of_picture(&bytes)))
}

/// A picture file as a `[1, 3, h, w]` uint8 RGB tensor, upright ([`decode`]), with the content
/// key of the bytes decoded (read once for both).
pub fn read_picture(path: &Path) -> Result<(Tensor, ContentKey)> {
    let bytes = std::fs::read(path).at(path)?;
    Ok((decode_file(path, &bytes)?, ContentKey::of_picture(&bytes)))
}

/// The records `rows` as one `[N, 3, 32, 32]` uint8 batch.
fn cifar_pixels(rec: &cifar10::Records, rows: &[usize]) -> Tensor {
    let mut bytes = Vec::with_capacity(rows.len() * cifar10::PIXEL_BYTES);
    for &i in rows {
        bytes.extend_from_slice(rec.pixels(i));
    }
    Tensor::from_slice(&bytes).view([rows.len() as i64, 3, 32, 32])
}

/// Decodes a picture file into a `[1, 3, h, w]` uint8 RGB tensor, upright: any format of
/// [`decode::FORMATS`], its EXIF orientation applied, alpha composited on white ([`decode`]).
pub fn load_picture(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).at(path)?;
    decode_file(path, &bytes)
}

/// The bytes of the file at `path` decoded ([`decode`]), or an error naming the file.
fn decode_file(path: &Path, bytes: &[u8]) -> Result<Tensor> {
    let (picture, orientation) = decode::decode_stored(bytes).map_err(|e| Error::bad_input(path, format!("cannot decode as a picture ({e})")))?;
    Ok(rgb_tensor(picture, orientation))
}

/// Decodes the bytes of a picture (an upload, say) into a `[1, 3, h, w]` uint8 RGB tensor, as
/// [`load_picture`] does a file. Other bytes give [`Error::BadPicture`].
pub fn decode_picture(bytes: &[u8]) -> Result<Tensor> {
    if bytes.is_empty() {
        return Err(Error::BadPicture { message: format!("no picture: the body is empty; send the bytes of a picture ({})", decode::FORMATS) });
    }
    match decode::decode_stored(bytes) {
        Ok((picture, orientation)) => Ok(rgb_tensor(picture, orientation)),
        Err(e @ decode::DecodeError::UnknownFormat(_)) => Err(Error::BadPicture { message: format!("not a picture: {e}") }),
        Err(e) => Err(Error::BadPicture { message: format!("cannot decode as a picture ({e}); send a picture in one of {}", decode::FORMATS) }),
    }
}

/// An 8-bit RGB picture as stored as a `[1, 3, h, w]` uint8 tensor, turned upright by
/// `orientation`. For a 90° turn the channels are split into planes in the same pass that
/// turns the picture, tile by tile so that reads and writes stay within the caches (libtorch's
/// strided copy of a 12-megapixel photo took 0.11 s, as long as decoding it). The picture is
/// dropped before the tensor is made, so that a big photo is held twice at most.
fn rgb_tensor(img: image::RgbImage, orientation: Orientation) -> Tensor {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // Where the stored pixel (y, x) goes in the upright picture, for the turns; the rest
    // (untouched, mirrored, upside down) keep their rows, and libtorch's copy is faster there.
    let to: fn(usize, usize, usize, usize) -> (usize, usize) = match orientation {
        Orientation::Rotate90FlipH => |y, x, _, _| (x, y),
        Orientation::Rotate90 => |y, x, h, _| (x, h - 1 - y),
        Orientation::Rotate270FlipH => |y, x, h, w| (w - 1 - x, h - 1 - y),
        Orientation::Rotate270 => |y, x, _, w| (w - 1 - x, y),
        kept => {
            let hwc = Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]);
            drop(img);
            let x = hwc.permute([2, 0, 1]).unsqueeze(0);
            let x = match kept {
                Orientation::FlipHorizontal => x.flip([3]),
                Orientation::Rotate180 => x.flip([2, 3]),
                Orientation::FlipVertical => x.flip([2]),
                _ => x,
            };
            return x.contiguous();
        }
    };
    let (oh, ow) = (w, h);
    const TILE: usize = 64;
    let n = w * h;
    let mut planes = vec![0u8; 3 * n];
    let src = img.as_raw();
    for ty in (0..h).step_by(TILE) {
        for tx in (0..w).step_by(TILE) {
            for y in ty..(ty + TILE).min(h) {
                for x in tx..(tx + TILE).min(w) {
                    let (oy, ox) = to(y, x, h, w);
                    let (s, o) = ((y * w + x) * 3, oy * ow + ox);
                    planes[o] = src[s];
                    planes[n + o] = src[s + 1];
                    planes[2 * n + o] = src[s + 2];
                }
            }
        }
    }
    drop(img);
    Tensor::from_slice(&planes).view([1, 3, oh as i64, ow as i64])
}

/// How the data set's pictures are resized (see [`preprocess`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PictureKind {
    /// 32x32 CIFAR-10 pictures: stretched.
    Cifar,
    /// A user's photos: shorter side resized, centre crop.
    Photos,
}

/// An opened data set.
#[derive(Debug)]
pub struct Dataset {
    /// The spec it was opened from.
    pub spec: DataSpec,
    /// A short name: `cifar10`, or the folder's name.
    pub name: String,
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// How pictures are resized.
    pub picture_kind: PictureKind,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Cifar(PathBuf),
    Folder(folder::FolderData),
    WebDataset(webdataset::WebData),
    Hf(huggingface::HfData),
}

/// Options for opening a data set.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Where downloads go (`<cache>/data`).
    pub data_root: PathBuf,
    /// No downloads.
    pub offline: bool,
    /// Download progress.
    pub progress: Progress,
}

impl Dataset {
    /// Opens (downloading CIFAR-10 if needed) and lists the data set.
    pub fn open(spec: &DataSpec, opts: &OpenOptions) -> Result<Self> {
        Self::open_indexed(spec, opts, &HashIndex::none())
    }

    /// [`Dataset::open`], where the pictures of a folder that `known` remembers unchanged are
    /// not read again to check that they decode.
    pub fn open_indexed(spec: &DataSpec, opts: &OpenOptions, known: &HashIndex) -> Result<Self> {
        match spec {
            DataSpec::Cifar10 { data_dir } => {
                let dir = match data_dir {
                    Some(d) => cifar10::locate(d)?,
                    None => download::ensure_cifar10(&opts.data_root, &download::Source::from_env(), opts.offline, &opts.progress)?,
                };
                Ok(Dataset {
                    spec: spec.clone(),
                    name: "cifar10".into(),
                    classes: cifar10::class_names(&dir),
                    picture_kind: PictureKind::Cifar,
                    source: Source::Cifar(dir),
                })
            }
            DataSpec::Folder { root, test_fraction, strict, labels, label_column } => {
                let source = metadata::LabelSource { file: labels.clone(), column: label_column.clone() };
                let data = folder::scan_labelled(root, *test_fraction, *strict, &source, known)?;
                Ok(Dataset {
                    spec: spec.clone(),
                    name: root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "folder".into()),
                    classes: data.classes.clone(),
                    picture_kind: PictureKind::Photos,
                    source: Source::Folder(data),
                })
            }
            DataSpec::HuggingFace { request, image_column, label_column } => {
                let opts = crate::hub::DatasetOptions {
                    cache_dir: opts.data_root.parent().map(Path::to_path_buf).unwrap_or_else(|| opts.data_root.clone()),
                    offline: opts.offline,
                    progress: opts.progress.clone(),
                };
                let data = huggingface::open(request, image_column.as_deref(), label_column.as_deref(), &opts)?;
                Ok(Dataset {
                    spec: spec.clone(),
                    name: request.repo.rsplit('/').next().unwrap_or(&request.repo).to_string(),
                    classes: data.classes.clone(),
                    picture_kind: PictureKind::Photos,
                    source: Source::Hf(data),
                })
            }
            DataSpec::WebDataset { train, test, strict } => {
                let data = webdataset::scan(train, test.as_deref(), *strict)?;
                let name = Path::new(train.split('{').next().unwrap_or(train))
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(['-', '_', '.']).to_string())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "webdataset".into());
                Ok(Dataset {
                    spec: spec.clone(),
                    name,
                    classes: data.classes.clone(),
                    picture_kind: PictureKind::Photos,
                    source: Source::WebDataset(data),
                })
            }
        }
    }

    /// Reads split `name` (`train` or `test`).
    pub fn split(&self, name: &str) -> Result<Split> {
        let (labels, pictures) = match &self.source {
            Source::Cifar(dir) => {
                let rec = cifar10::read_split(dir, name)?;
                let labels = (0..rec.len()).map(|i| rec.label(i)).collect();
                let idx = (0..rec.len()).collect();
                (labels, Pictures::Cifar(Arc::new(rec), idx))
            }
            Source::Folder(data) => {
                let entries = match name {
                    "train" => data.train.clone(),
                    "test" => data.test.clone(),
                    other => return Err(Error::usage("--split", format!("splits are train and test, not '{other}'"))),
                };
                if entries.is_empty() {
                    return Err(Error::bad_input(
                        self.root(),
                        format!("the {name} split is empty; add pictures or change --test-fraction"),
                    ));
                }
                (entries.iter().map(|e| e.label).collect(), Pictures::Files(entries))
            }
            Source::WebDataset(data) => {
                let samples = match name {
                    "train" => data.train.clone(),
                    "test" => data.test.clone(),
                    other => return Err(Error::usage("--split", format!("splits are train and test, not '{other}'"))),
                };
                (samples.iter().map(|s| s.label).collect(), Pictures::Tar(samples))
            }
            Source::Hf(data) => {
                let rows = match name {
                    "train" => data.train.clone(),
                    "test" => data.test.clone(),
                    other => return Err(Error::usage("--split", format!("splits are train and test, not '{other}'"))),
                };
                if rows.is_empty() {
                    return Err(Error::bad_input(self.root(), format!("the {name} split has no labelled rows")));
                }
                (rows.iter().map(|r| r.label).collect(), Pictures::Parquet(data.pictures.clone(), rows))
            }
        };
        Ok(Split { name: name.to_string(), labels, pictures, views: None, selected: None })
    }

    fn root(&self) -> PathBuf {
        match &self.source {
            Source::Cifar(d) => d.clone(),
            Source::Folder(_) | Source::WebDataset(_) | Source::Hf(_) => match &self.spec {
                DataSpec::Folder { root, .. } => root.clone(),
                DataSpec::WebDataset { train, .. } => PathBuf::from(train),
                DataSpec::HuggingFace { request, .. } => PathBuf::from(format!("hf:{}", request.repo)),
                DataSpec::Cifar10 { .. } => PathBuf::new(),
            },
        }
    }
}
