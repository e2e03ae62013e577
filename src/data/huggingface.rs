//! `--data hf:OWNER/NAME[@REVISION][:CONFIG]` (or `hf://datasets/OWNER/NAME`): an
//! image-classification data set on the Hugging Face Hub, read from its parquet files (found
//! and downloaded by [`crate::hub::resolve_dataset`]).
//!
//! The image column (a struct of `bytes` and `path`) and the label column (a `ClassLabel`) are
//! found by type, or named with `--image-column` / `--label-column`. Class names come from the
//! file's `huggingface` metadata, else the README's `dataset_info`; string labels are mapped to
//! their sorted names. The splits are train and test, else validation as the test split. Rows
//! are in file order, then row-group order; `--shard` cuts between row groups. A picture is
//! named `hf:OWNER/NAME/<file>#<row>`; its content key is that of its bytes, as for a file.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;
use tch::Tensor;

use super::content::ContentKey;
use super::parquet::{GroupPictures, LabelValues, ParquetFile};
use crate::error::{Error, Result};
use crate::hub::{resolve_dataset, DatasetFiles, DatasetOptions, DatasetRequest};

/// Row groups whose pictures are kept in memory at once (decoding a batch touches one or two).
const CACHED_GROUPS: usize = 4;

/// Reads `hf:OWNER/NAME[@REVISION][:CONFIG]` or `hf://datasets/OWNER/NAME[@REVISION]`; `None`
/// when `value` names no Hub data set.
pub fn parse_request(value: &str) -> Option<Result<DatasetRequest>> {
    let body = value.strip_prefix("hf://datasets/").or_else(|| value.strip_prefix("hf:"))?;
    let bad = |why: &str| Error::usage("--data", format!("'{value}': {why}; write hf:OWNER/NAME, hf:OWNER/NAME@REVISION or hf:OWNER/NAME:CONFIG"));
    let (mut repo, mut revision, mut config) = (body.to_string(), None, None);
    if let Some((r, rest)) = repo.clone().split_once('@') {
        repo = r.to_string();
        match rest.split_once(':') {
            Some((rev, c)) => {
                revision = Some(rev.to_string());
                config = Some(c.to_string());
            }
            None => revision = Some(rest.to_string()),
        }
    }
    if let Some((r, c)) = repo.clone().split_once(':') {
        if config.is_some() {
            return Some(Err(bad("two configs")));
        }
        repo = r.to_string();
        config = Some(c.to_string());
    }
    let repo = repo.trim_end_matches('/').to_string();
    let ok_name = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !s.starts_with('.');
    match repo.split_once('/') {
        Some((o, n)) if ok_name(o) && ok_name(n) => {}
        _ => return Some(Err(bad("not OWNER/NAME"))),
    }
    if revision.as_deref().is_some_and(|r| r.is_empty() || r.contains("..")) || config.as_deref().is_some_and(|c| c.is_empty() || c.contains(['/', '\\'])) {
        return Some(Err(bad("an empty or bad revision or config")));
    }
    Some(Ok(DatasetRequest { repo, revision, config }))
}

/// One row: where its picture is, and its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfRow {
    /// The file, an index into [`HfPictures`]'s files.
    pub file: u32,
    /// The row group in that file.
    pub group: u32,
    /// The row in that group.
    pub index: u32,
    /// The row in the file.
    pub row: u32,
    /// Class index.
    pub label: i64,
}

/// The parquet files of a data set, with the row groups last read.
#[derive(Debug)]
pub struct HfPictures {
    /// `OWNER/NAME`.
    repo: String,
    /// `(file in the repository, the file)`.
    files: Vec<(String, ParquetFile)>,
    /// The image column.
    image: String,
    cache: Mutex<VecDeque<(GroupId, Arc<GroupSlot>)>>,
}

/// A row group read once for whoever asks first: its pictures, or why they could not be read.
type GroupSlot = OnceLock<std::result::Result<Arc<GroupPictures>, String>>;

/// `(file, row group)`.
type GroupId = (u32, u32);

impl HfPictures {
    /// The file row `r` is in, on disk.
    pub fn local(&self, r: &HfRow) -> &std::path::Path {
        &self.files[r.file as usize].1.path
    }

    /// `hf:OWNER/NAME/<file>#<row>`.
    pub fn name(&self, r: &HfRow) -> String {
        format!("hf:{}/{}#{}", self.repo, self.files[r.file as usize].0, r.row)
    }

    /// Row group `group` of `file`: from the last few read, else read (once, whoever asks at
    /// the same time).
    fn group(&self, file: u32, group: u32) -> Result<Arc<GroupPictures>> {
        let slot = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.iter().find(|(k, _)| *k == (file, group)) {
                Some((_, s)) => s.clone(),
                None => {
                    let s: Arc<GroupSlot> = Arc::default();
                    cache.push_back(((file, group), s.clone()));
                    if cache.len() > CACHED_GROUPS {
                        cache.pop_front();
                    }
                    s
                }
            }
        };
        let (_, f) = &self.files[file as usize];
        slot.get_or_init(|| f.pictures(&self.image, group as usize).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|m| Error::bad_input(&f.path, m))
    }

    /// Row `r`'s picture, decoded `[1, 3, h, w]` uint8, with its content key.
    pub fn picture(&self, r: &HfRow) -> Result<(Tensor, ContentKey)> {
        let g = self.group(r.file, r.group)?;
        let bytes = self.bytes_of(&g, r)?;
        let picture = super::decode_picture(bytes).map_err(|e| Error::bad_input(self.local(r), format!("{}: {e}", self.name(r))))?;
        Ok((picture, ContentKey::of_picture(bytes)))
    }

    fn bytes_of<'a>(&self, g: &'a GroupPictures, r: &HfRow) -> Result<&'a [u8]> {
        g.get(r.index as usize).ok_or_else(|| Error::bad_input(self.local(r), format!("{}: no picture bytes (null)", self.name(r))))
    }

    /// The content key of every row's picture, in order: each row group read once (in
    /// parallel, a few at a time), its pictures hashed.
    pub fn content_keys(&self, rows: &[HfRow]) -> Result<Vec<ContentKey>> {
        let mut groups: Vec<(u32, u32, Vec<usize>)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            match groups.iter_mut().rev().find(|(f, g, _)| (*f, *g) == (r.file, r.group)) {
                Some(g) => g.2.push(i),
                None => groups.push((r.file, r.group, vec![i])),
            }
        }
        let keyed: Vec<Result<Vec<(usize, ContentKey)>>> = groups
            .par_iter()
            .map(|(f, g, idx)| {
                let pictures = self.files[*f as usize].1.pictures(&self.image, *g as usize)?;
                idx.iter().map(|&i| Ok((i, ContentKey::of_picture(self.bytes_of(&pictures, &rows[i])?)))).collect()
            })
            .collect();
        let mut keys = vec![ContentKey([0; 32]); rows.len()];
        for part in keyed {
            for (i, k) in part? {
                keys[i] = k;
            }
        }
        Ok(keys)
    }
}

/// An opened Hub data set.
#[derive(Debug)]
pub struct HfData {
    /// Class names, in label order.
    pub classes: Vec<String>,
    /// Training rows.
    pub train: Vec<HfRow>,
    /// Test rows (the validation split's when there is no test split).
    pub test: Vec<HfRow>,
    /// The files.
    pub pictures: Arc<HfPictures>,
    /// The files found (commit, config, splits).
    pub files: DatasetFiles,
}

/// Finds, downloads (unless cached) and opens data set `req`, its columns found by type or
/// named by `image_column` / `label_column`.
pub fn open(req: &DatasetRequest, image_column: Option<&str>, label_column: Option<&str>, opts: &DatasetOptions) -> Result<HfData> {
    let files = resolve_dataset(req, opts)?;
    let (train_files, test_files, test_name) = files.train_and_test()?;
    let what = format!("hf:{}", req.repo);
    tracing::info!(
        "{what}: {} at {} ({}{}): train {} file(s), {test_name} {} file(s)",
        if files.converted { "the Hub's parquet conversion" } else { "parquet files" },
        &files.commit[..12.min(files.commit.len())],
        files.revision,
        files.config.as_deref().map(|c| format!(", config {c}")).unwrap_or_default(),
        train_files.len(),
        test_files.len()
    );
    if test_name == "validation" {
        tracing::info!("{what} has no test split: its validation split is the test split");
    }
    let mut opened = Vec::new();
    for f in train_files.iter().chain(test_files) {
        opened.push((f.clone(), ParquetFile::open(&files.local(f))?));
    }
    let first = &opened[0].1;
    let features = first.hf_features().unwrap_or(serde_json::Value::Null);
    let image = image_column_of(first, &features, image_column)?;
    let label = label_column_of(first, &features, label_column, &image)?;
    for (_, f) in &opened {
        for col in [&image, &label] {
            if !f.columns().iter().any(|(n, _)| n == col) {
                return Err(Error::bad_input(&f.path, format!("has no column '{col}', which the first file of the data set has")));
            }
        }
    }
    // Labels of every file, then the classes.
    let mut values = Vec::new();
    for (_, f) in &opened {
        values.push(f.labels(&label)?);
    }
    let ints = values.iter().all(|v| matches!(v, LabelValues::Ints(_)));
    let classes: Vec<String> = if ints {
        let names = features
            .get(&label)
            .filter(|f| f.get("_type").and_then(|t| t.as_str()) == Some("ClassLabel"))
            .and_then(|f| f.get("names"))
            .and_then(|n| serde_json::from_value::<Vec<String>>(n.clone()).ok())
            .or_else(|| files.card_classes.get(&label).cloned());
        match names {
            Some(n) => n,
            None => {
                let max = values.iter().flat_map(|v| if let LabelValues::Ints(i) = v { i.iter().flatten().copied().max() } else { None }).max().unwrap_or(-1);
                tracing::warn!("{what}: column '{label}' holds integers but is not a ClassLabel (no class names in the file or the README); classes are named by their numbers, 0 to {max}");
                (0..=max.max(0)).map(|i| i.to_string()).collect()
            }
        }
    } else {
        let set: BTreeSet<&str> = values.iter().flat_map(|v| if let LabelValues::Strings(s) = v { s.iter().flatten().map(String::as_str).collect::<Vec<_>>() } else { vec![] }).collect();
        tracing::info!("{what}: column '{label}' holds strings, not a ClassLabel: its {} distinct values, sorted, are the classes", set.len());
        set.into_iter().map(str::to_string).collect()
    };
    if classes.len() < 2 {
        return Err(Error::bad_input(&opened[0].1.path, format!("column '{label}' names {} class(es); a classifier needs at least two", classes.len())));
    }
    let mut splits: [Vec<HfRow>; 2] = [Vec::new(), Vec::new()];
    let mut missing = 0usize;
    for (fi, ((name, f), v)) in opened.iter().zip(&values).enumerate() {
        let split = usize::from(fi >= train_files.len());
        let label_of = |row: usize| -> Result<Option<i64>> {
            match v {
                LabelValues::Ints(i) => match i.get(row).copied().flatten() {
                    None | Some(-1) if i.len() > row => Ok(None),
                    None => Err(Error::bad_input(&f.path, format!("{name}: the label column has {} values for {} rows", i.len(), f.rows()))),
                    Some(-1) => Ok(None),
                    Some(l) if l >= 0 && (l as usize) < classes.len() => Ok(Some(l)),
                    Some(l) => Err(Error::bad_input(&f.path, format!("{name}#{row}: label {l} is not a class index (0 to {})", classes.len() - 1))),
                },
                LabelValues::Strings(s) => match s.get(row) {
                    Some(v) => Ok(v.as_ref().and_then(|s| classes.binary_search(s).ok()).map(|i| i as i64)),
                    None => Err(Error::bad_input(&f.path, format!("{name}: the label column has {} values for {} rows", s.len(), f.rows()))),
                },
            }
        };
        let mut row = 0usize;
        for (g, &n) in f.group_rows.iter().enumerate() {
            for index in 0..n {
                match label_of(row)? {
                    Some(label) => splits[split].push(HfRow { file: fi as u32, group: g as u32, index: index as u32, row: row as u32, label }),
                    None => missing += 1,
                }
                row += 1;
            }
        }
    }
    if missing > 0 {
        tracing::warn!("{what}: {missing} row(s) without a label (-1 or null) left out");
    }
    let [train, test] = splits;
    tracing::info!("{what}: image column '{image}', label column '{label}', {} classes; {} training and {} test rows", classes.len(), train.len(), test.len());
    let pictures = Arc::new(HfPictures { repo: req.repo.clone(), files: opened, image, cache: Mutex::new(VecDeque::new()) });
    Ok(HfData { classes, train, test, pictures, files })
}

/// True for a column that holds pictures: a struct with a binary `bytes` field, or a column
/// the `huggingface` metadata calls an `Image`.
fn is_image(name: &str, kind: &arrow_schema::DataType, features: &serde_json::Value) -> bool {
    use arrow_schema::DataType as D;
    let declared = features.get(name).and_then(|f| f.get("_type")).and_then(|t| t.as_str()) == Some("Image");
    let structural = match kind {
        D::Struct(fields) => fields.iter().any(|f| f.name() == "bytes" && matches!(f.data_type(), D::Binary | D::LargeBinary | D::BinaryView)),
        _ => false,
    };
    declared || structural
}

fn describe_columns(f: &ParquetFile) -> String {
    f.columns().iter().map(|(n, t)| format!("{n} ({t})")).collect::<Vec<_>>().join(", ")
}

fn image_column_of(f: &ParquetFile, features: &serde_json::Value, asked: Option<&str>) -> Result<String> {
    let columns = f.columns();
    if let Some(name) = asked {
        return match columns.iter().find(|(n, _)| n == name) {
            Some((n, t)) if is_image(n, t, features) || matches!(t, arrow_schema::DataType::Binary | arrow_schema::DataType::LargeBinary) => Ok(n.clone()),
            Some((n, t)) => Err(Error::bad_input(&f.path, format!("--image-column {n}: the column holds {t}, not pictures (a struct of bytes and path)"))),
            None => Err(Error::bad_input(&f.path, format!("--image-column {name}: no such column; the columns are {}", describe_columns(f)))),
        };
    }
    let found: Vec<&String> = columns.iter().filter(|(n, t)| is_image(n, t, features)).map(|(n, _)| n).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::bad_input(&f.path, format!("has no image column (a struct of bytes and path); its columns are {}; name one with --image-column", describe_columns(f)))),
        many => Err(Error::bad_input(
            &f.path,
            format!("has {} image columns ({}); choose one with --image-column", many.len(), many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        )),
    }
}

fn label_column_of(f: &ParquetFile, features: &serde_json::Value, asked: Option<&str>, image: &str) -> Result<String> {
    let columns = f.columns();
    if let Some(name) = asked {
        return match columns.iter().find(|(n, _)| n == name) {
            Some((n, _)) if n == image => Err(Error::usage("--label-column", format!("'{name}' is the image column"))),
            Some((n, _)) => Ok(n.clone()),
            None => Err(Error::bad_input(&f.path, format!("--label-column {name}: no such column; the columns are {}", describe_columns(f)))),
        };
    }
    let class_labels: Vec<&String> = columns
        .iter()
        .map(|(n, _)| n)
        .filter(|n| features.get(n.as_str()).and_then(|f| f.get("_type")).and_then(|t| t.as_str()) == Some("ClassLabel"))
        .collect();
    if let [one] = class_labels.as_slice() {
        return Ok((*one).clone());
    }
    for name in ["label", "labels"] {
        if columns.iter().any(|(n, _)| n == name) {
            return Ok(name.to_string());
        }
    }
    let why = if class_labels.len() > 1 {
        format!("has {} ClassLabel columns ({})", class_labels.len(), class_labels.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
    } else {
        "has no ClassLabel column and none named label or labels".to_string()
    };
    Err(Error::bad_input(&f.path, format!("{why}; its columns are {}; name the class column with --label-column", describe_columns(f))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_parse() {
        let r = |v: &str| parse_request(v).unwrap().unwrap();
        assert_eq!(r("hf:uoft-cs/cifar10"), DatasetRequest { repo: "uoft-cs/cifar10".into(), revision: None, config: None });
        assert_eq!(r("hf:uoft-cs/cifar10:plain_text").config.as_deref(), Some("plain_text"));
        let x = r("hf:a/b@v1.0:cfg");
        assert_eq!((x.revision.as_deref(), x.config.as_deref()), (Some("v1.0"), Some("cfg")));
        let x = r("hf:a/b:cfg@0123456789abcdef0123456789abcdef01234567");
        assert_eq!((x.revision.as_deref(), x.config.as_deref()), (Some("0123456789abcdef0123456789abcdef01234567"), Some("cfg")));
        assert_eq!(r("hf://datasets/AI-Lab-Makerere/beans").repo, "AI-Lab-Makerere/beans");
        assert!(parse_request("cifar10").is_none());
        assert!(parse_request("hf:nope").unwrap().is_err());
        assert!(parse_request("hf:a/b/c").unwrap().is_err());
        assert!(parse_request("hf:a/b@").unwrap().is_err());
    }
}
