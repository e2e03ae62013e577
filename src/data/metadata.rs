//! Labels from a file: a `metadata.csv` or `metadata.jsonl` in the data folder (the Hugging Face
//! `imagefolder` layout), or the file given with `--labels`.
//!
//! Each row names a picture in its `file_name` column (or the one column whose name ends in
//! `_file_name`, as `datasets` accepts) and its class in the label column:
//! - `--label-column NAME` when given;
//! - else a column named `label`, else one named `labels`;
//! - else the only column besides the file name's;
//! - else an error that lists the candidates and names `--label-column`.
//!
//! Where the files are, and what `file_name` is relative to:
//! - `--labels FILE` (`.csv` or `.jsonl`, anywhere): relative to the data folder; metadata files
//!   in the data folder are then not read;
//! - else `metadata.csv` or `metadata.jsonl` at the data folder's top and at the top of the
//!   split folders in use ([`SplitDirs`]), each relative to its own folder, as `datasets` does.
//!
//! A row's split is its picture's split folder (a picture under a validation folder that is
//! not the test split is left out); a picture outside split folders, or under the training
//! folder when there is no test folder, goes through the hash rule of a class-folder layout.
//! Pictures no row names are not used. A row that names a missing file or one outside the data
//! folder (`..`, an absolute path, a URL), an empty label, or a picture listed twice with two
//! labels is an error naming the file and the line.
//!
//! Class names are the labels, sorted as folder names are (numerically when every label is an
//! integer). Each picture's [`Entry`] is the one the class-folder layout would give it: key
//! `<label>/<file name>` (so the hash split is the same), name its path in the data folder.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::folder::{hash_split, Entry, FolderData, SplitDirs};
use crate::error::{Error, IoContext, Result};

/// The metadata file names looked for in the data folder and its split folders.
pub const METADATA_FILES: [&str; 2] = ["metadata.csv", "metadata.jsonl"];

/// Where labels come from besides class folders: `--labels` and `--label-column`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSource {
    /// `--labels`: a `.csv` or `.jsonl` file whose `file_name`s are relative to the data folder.
    pub file: Option<PathBuf>,
    /// `--label-column`: the column that holds the class.
    pub column: Option<String>,
}

/// The two formats of a labels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON object a line.
    Jsonl,
}

impl Format {
    /// The format a file name's extension says (`.csv`, `.jsonl`; case-insensitive).
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_string_lossy().to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// One row of a labels file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The line it starts on (1 is the first line; a CSV's header is line 1).
    pub line: u64,
    /// Its `file_name`, as written.
    pub file_name: String,
    /// Its label, trimmed; never empty.
    pub label: String,
}

/// A labels file read: which columns were used, and the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The file name's column.
    pub file_column: String,
    /// The label's column.
    pub label_column: String,
    /// The rows, in file order.
    pub rows: Vec<Row>,
}

/// Reads a labels file (`source` names it in errors) of `format` from `text`, with the label
/// column `column` or the one chosen by the rule of the module docs.
pub fn parse(text: &[u8], format: Format, column: Option<&str>, source: &Path) -> Result<Table> {
    match format {
        Format::Csv => parse_csv(text, column, source),
        Format::Jsonl => parse_jsonl(text, column, source),
    }
}

fn line_error(source: &Path, line: u64, message: impl std::fmt::Display) -> Error {
    Error::bad_input(source, format!("line {line}: {message}"))
}

fn parse_csv(text: &[u8], column: Option<&str>, source: &Path) -> Result<Table> {
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text);
    let csv_error = |e: csv::Error| match e.position() {
        Some(p) => line_error(source, p.line(), format!("{e}; a CSV file with a header line and the same number of fields on every line is expected")),
        None => Error::bad_input(source, format!("not a readable CSV file: {e}")),
    };
    let headers: Vec<String> = reader.headers().map_err(csv_error)?.iter().map(|h| h.trim().to_string()).collect();
    let (file_column, label_column) = columns(&headers, column, source)?;
    let fi = headers.iter().position(|h| *h == file_column).unwrap_or_default();
    let li = headers.iter().position(|h| *h == label_column).unwrap_or_default();
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    while reader.read_record(&mut record).map_err(csv_error)? {
        let line = record.position().map(|p| p.line()).unwrap_or_default();
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let field = |i: usize| record.get(i).unwrap_or_default().trim().to_string();
        rows.push(row(source, line, field(fi), field(li), &label_column)?);
    }
    Ok(Table { file_column, label_column, rows })
}

fn parse_jsonl(text: &[u8], column: Option<&str>, source: &Path) -> Result<Table> {
    let text = std::str::from_utf8(text).map_err(|e| Error::bad_input(source, format!("not UTF-8 text ({e}); a JSON Lines file is expected")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut objects = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| line_error(source, line_no, format!("not JSON ({e}); one JSON object a line is expected")))?;
        let serde_json::Value::Object(object) = value else {
            return Err(line_error(source, line_no, "not a JSON object; one object a line is expected, like {\"file_name\": \"a.jpg\", \"label\": \"cat\"}"));
        };
        for k in object.keys() {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
        objects.push((line_no, object));
    }
    let (file_column, label_column) = columns(&keys, column, source)?;
    let mut rows = Vec::with_capacity(objects.len());
    for (line, object) in objects {
        let file_name = match object.get(&file_column) {
            Some(serde_json::Value::String(s)) => s.trim().to_string(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => return Err(line_error(source, line, format!("'{file_column}' is {other}, not a string naming a picture"))),
        };
        let label = match object.get(&label_column) {
            Some(serde_json::Value::String(s)) => s.trim().to_string(),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => {
                return Err(line_error(
                    source,
                    line,
                    format!("the label ('{label_column}') is {other}; a class is a string or an integer, one a picture"),
                ))
            }
        };
        rows.push(row(source, line, file_name, label, &label_column)?);
    }
    Ok(Table { file_column, label_column, rows })
}

fn row(source: &Path, line: u64, file_name: String, label: String, label_column: &str) -> Result<Row> {
    if file_name.is_empty() {
        return Err(line_error(source, line, "the file name is empty; name a picture in every row, or remove the row"));
    }
    if label.is_empty() {
        return Err(line_error(
            source,
            line,
            format!("the label of '{file_name}' (column '{label_column}') is empty; give every picture a class, or remove the row"),
        ));
    }
    Ok(Row { line, file_name, label })
}

/// The file name's and the label's columns among `names` (see the module docs).
fn columns(names: &[String], asked: Option<&str>, source: &Path) -> Result<(String, String)> {
    let list = |v: &[&String]| v.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ");
    let file_column = if names.iter().any(|c| c == "file_name") {
        "file_name".to_string()
    } else {
        let ends: Vec<&String> = names.iter().filter(|c| c.ends_with("_file_name")).collect();
        match ends.as_slice() {
            [one] => one.to_string(),
            _ => {
                return Err(Error::bad_input(
                    source,
                    format!(
                        "has no 'file_name' column (its columns: {}); each row names its picture in 'file_name', relative to the metadata file's folder",
                        list(&names.iter().collect::<Vec<_>>())
                    ),
                ))
            }
        }
    };
    let others: Vec<&String> = names.iter().filter(|c| **c != file_column).collect();
    if let Some(asked) = asked {
        if others.iter().any(|c| *c == asked) {
            return Ok((file_column, asked.to_string()));
        }
        return Err(Error::usage(
            "--label-column",
            format!("'{asked}' is not a label column of {}; its columns besides '{file_column}': {}", source.display(), list(&others)),
        ));
    }
    for preferred in ["label", "labels"] {
        if others.iter().any(|c| *c == preferred) {
            return Ok((file_column, preferred.to_string()));
        }
    }
    match others.as_slice() {
        [one] => Ok((file_column, one.to_string())),
        [] => Err(Error::bad_input(source, format!("has no column besides '{file_column}'; add a 'label' column with each picture's class"))),
        several => Err(Error::bad_input(
            source,
            format!("has several columns that could hold the class ({}) and none is named 'label'; choose one with --label-column", list(several)),
        )),
    }
}

/// `file_name` as path components inside its folder (`.` and empty ones dropped, `\` read as
/// `/` as `datasets` does), or why it cannot be one.
pub fn relative_components(file_name: &str) -> std::result::Result<Vec<String>, String> {
    if file_name.contains("://") {
        return Err("is a URL; name a file inside the data folder".into());
    }
    let unified = file_name.replace('\\', "/");
    let drive = unified.len() >= 2 && unified.as_bytes()[1] == b':' && unified.as_bytes()[0].is_ascii_alphabetic();
    if unified.starts_with('/') || drive {
        return Err("is an absolute path; file names are relative to the metadata file's folder".into());
    }
    let mut parts = Vec::new();
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err("uses '..'; file names must stay inside the data folder".into()),
            p => parts.push(p.to_string()),
        }
    }
    if parts.is_empty() {
        return Err("names no file".into());
    }
    Ok(parts)
}

/// Class names in label order: sorted as strings, or numerically when every label is an
/// integer.
pub fn class_order(labels: &BTreeSet<String>) -> Vec<String> {
    let numbers: Option<Vec<(i128, &String)>> = labels.iter().map(|l| l.parse::<i128>().ok().map(|n| (n, l))).collect();
    match numbers {
        Some(mut n) => {
            n.sort();
            n.into_iter().map(|(_, l)| l.clone()).collect()
        }
        None => labels.iter().cloned().collect(),
    }
}

/// A labels file to read: where it is, and where its rows' pictures are.
struct Source {
    file: PathBuf,
    /// The folder `file_name`s are relative to, as a prefix of the data folder (`""`, `train/`).
    prefix: String,
    /// The split folder it lies in, if any.
    split_dir: Option<String>,
}

/// Where a row's picture goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Train,
    Test,
    /// Outside split folders, or in a training folder without a test folder: the hash rule.
    Hashed,
}

/// The metadata files of `root` (see the module docs), or the `--labels` file.
fn sources(root: &Path, splits: Option<&SplitDirs>, labels: &LabelSource) -> Result<Vec<Source>> {
    if let Some(file) = &labels.file {
        if Format::of(file).is_none() {
            return Err(Error::usage("--labels", format!("'{}': a .csv or .jsonl file is expected", file.display())));
        }
        return Ok(vec![Source { file: file.clone(), prefix: String::new(), split_dir: None }]);
    }
    let mut dirs: Vec<(String, Option<String>)> = vec![(String::new(), None)];
    if let Some(s) = splits {
        for d in std::iter::once(&s.train).chain(&s.test) {
            dirs.push((format!("{d}/"), Some(d.clone())));
        }
    }
    let mut out = Vec::new();
    for (prefix, split_dir) in dirs {
        let found: Vec<PathBuf> = METADATA_FILES.iter().map(|f| root.join(&prefix).join(f)).filter(|p| p.is_file()).collect();
        if found.len() > 1 {
            return Err(Error::bad_input(root.join(&prefix), "has both metadata.csv and metadata.jsonl; keep one"));
        }
        out.extend(found.into_iter().map(|file| Source { file, prefix: prefix.clone(), split_dir: split_dir.clone() }));
    }
    Ok(out)
}

/// Lists `root` from its labels files (the `--labels` file, else its metadata files), with
/// `splits` its split folders; `None` when there is no labels file (class folders label it).
/// Pictures are not opened here (see [`super::folder::scan_labelled`]).
pub fn scan_names(root: &Path, splits: Option<&SplitDirs>, labels: &LabelSource, test_fraction: f64) -> Result<Option<FolderData>> {
    let sources = sources(root, splits, labels)?;
    if sources.is_empty() {
        return Ok(None);
    }
    // The picture's path in the data folder -> (label, file, line), and its place.
    let mut seen: HashMap<String, (String, PathBuf, u64)> = HashMap::new();
    let mut listed: Vec<(String, String, Place)> = Vec::new();
    let mut label_columns: Vec<(String, &Path)> = Vec::new();
    let mut unused = 0usize;
    let mut notes = Vec::new();
    for src in &sources {
        let format = Format::of(&src.file).unwrap_or(Format::Csv);
        let text = std::fs::read(&src.file).at(&src.file)?;
        let table = parse(&text, format, labels.column.as_deref(), &src.file)?;
        let base = root.join(&src.prefix);
        notes.push(format!("labels: {} (column '{}'), {} rows", src.file.display(), table.label_column, table.rows.len()));
        label_columns.push((table.label_column.clone(), &src.file));
        for r in table.rows {
            let parts = relative_components(&r.file_name)
                .map_err(|why| line_error(&src.file, r.line, format!("file name '{}' {why}", r.file_name)))?;
            let name = format!("{}{}", src.prefix, parts.join("/"));
            let path = root.join(&name);
            if !path.is_file() {
                let what = if path.exists() { "is not a file" } else { "does not exist" };
                return Err(line_error(
                    &src.file,
                    r.line,
                    format!("'{}' {what} (looked for {}; file names are relative to {}); fix the row or remove it", r.file_name, path.display(), base.display()),
                ));
            }
            if let Some((label, file, line)) = seen.get(&name) {
                if *label != r.label {
                    let there = if *file == src.file { format!("line {line}") } else { format!("{} line {line}", file.display()) };
                    return Err(line_error(
                        &src.file,
                        r.line,
                        format!("'{name}' is listed twice with two labels: '{}' here and '{label}' on {there}; keep one row", r.label),
                    ));
                }
                continue;
            }
            seen.insert(name.clone(), (r.label.clone(), src.file.clone(), r.line));
            let first = parts.first().map(String::as_str);
            let place = match (splits, &src.split_dir) {
                (None, _) => Place::Hashed,
                (Some(s), Some(d)) => place_in(s, d),
                (Some(s), None) => match first {
                    Some(d) if parts.len() > 1 && s.unused.iter().any(|u| u == d) => {
                        unused += 1;
                        continue;
                    }
                    Some(d) if parts.len() > 1 && (*d == s.train || s.test.as_deref() == Some(d)) => place_in(s, d),
                    _ => Place::Hashed,
                },
            };
            listed.push((name, r.label, place));
        }
    }
    if let Some((first, file)) = label_columns.first() {
        if let Some((other, other_file)) = label_columns.iter().find(|(c, _)| c != first) {
            return Err(Error::usage(
                "--label-column",
                format!(
                    "the metadata files disagree on the label column: '{first}' in {} and '{other}' in {}; name it with --label-column",
                    file.display(),
                    other_file.display()
                ),
            ));
        }
    }
    if unused > 0 {
        notes.push(format!("{unused} listed picture(s) in split folders other than the training and test ones left out"));
    }
    let source_names = sources.iter().map(|s| s.file.display().to_string()).collect::<Vec<_>>().join(", ");
    let named = seen.keys().filter(|n| super::folder::is_picture(Path::new(n))).count();
    let unlisted = count_pictures(root, 0).saturating_sub(named);
    if unlisted > 0 {
        notes.push(format!("{unlisted} picture file(s) in {} that {source_names} does not name are not used", root.display()));
    }
    let classes = class_order(&listed.iter().map(|(_, l, _)| l.clone()).collect());
    if classes.len() < 2 {
        return Err(Error::bad_input(
            &sources[0].file,
            format!("names {} class(es) in column '{}'; a classifier needs at least two", classes.len(), label_columns[0].0),
        ));
    }
    let index: HashMap<&str, i64> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as i64)).collect();
    let (mut train, mut test, mut hashed) = (Vec::new(), Vec::new(), Vec::new());
    for (name, label, place) in &listed {
        let file = name.rsplit('/').next().unwrap_or(name);
        let path = std::path::absolute(root.join(name)).at(root.join(name))?;
        let entry = Entry { path, key: format!("{label}/{file}"), name: name.clone(), label: index[label.as_str()] };
        match place {
            Place::Train => train.push(entry),
            Place::Test => test.push(entry),
            Place::Hashed => hashed.push(entry),
        }
    }
    if let Some(t) = splits.and_then(|s| s.test.as_ref()) {
        if test.is_empty() {
            return Err(Error::bad_input(
                root.join(t),
                format!("is the test folder, but no row of {source_names} names a picture in it; list its pictures (in {t}/metadata.csv, say)"),
            ));
        }
    }
    let by_label_and_name = |a: &Entry, b: &Entry| (a.label, &a.name).cmp(&(b.label, &b.name));
    hashed.sort_by(by_label_and_name);
    let (hashed_train, hashed_test) = hash_split(hashed, test_fraction);
    train.extend(hashed_train);
    test.extend(hashed_test);
    train.sort_by(by_label_and_name);
    test.sort_by(by_label_and_name);
    notes.push(format!("{} pictures labelled by {source_names}: {} classes, {} train, {} test", train.len() + test.len(), classes.len(), train.len(), test.len()));
    Ok(Some(FolderData { classes, train, test, skipped: Vec::new(), notes }))
}

/// Picture files (by name, [`super::folder::EXTENSIONS`]) under `dir`, hidden folders left
/// out, at most 32 folders deep.
fn count_pictures(dir: &Path, depth: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && depth < 32 && !e.file_name().to_string_lossy().starts_with('.') => n += count_pictures(&p, depth + 1),
            Ok(t) if !t.is_dir() && super::folder::is_picture(&p) => n += 1,
            _ => {}
        }
    }
    n
}

/// Where a picture in split folder `dir` goes.
fn place_in(splits: &SplitDirs, dir: &str) -> Place {
    match &splits.test {
        Some(t) if t == dir => Place::Test,
        Some(_) => Place::Train,
        None => Place::Hashed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str, column: Option<&str>) -> Result<Table> {
        parse(text.as_bytes(), Format::Csv, column, Path::new("metadata.csv"))
    }

    fn jsonl(text: &str, column: Option<&str>) -> Result<Table> {
        parse(text.as_bytes(), Format::Jsonl, column, Path::new("metadata.jsonl"))
    }

    fn rows(t: &Table) -> Vec<(u64, &str, &str)> {
        t.rows.iter().map(|r| (r.line, r.file_name.as_str(), r.label.as_str())).collect()
    }

    #[test]
    fn csv_and_jsonl_give_the_same_rows_with_their_line_numbers() {
        let c = csv("file_name,label\na/1.jpg,cat\n\"b,2.jpg\",dog\n", None).unwrap();
        assert_eq!(rows(&c), vec![(2, "a/1.jpg", "cat"), (3, "b,2.jpg", "dog")]);
        let j = jsonl("{\"file_name\": \"a/1.jpg\", \"label\": \"cat\"}\n\n{\"file_name\": \"b,2.jpg\", \"label\": \"dog\"}\n", None).unwrap();
        assert_eq!(rows(&j), vec![(1, "a/1.jpg", "cat"), (3, "b,2.jpg", "dog")]);
        assert_eq!((c.file_column.as_str(), c.label_column.as_str()), ("file_name", "label"));
        // A byte-order mark (Excel's CSV, say) is not part of the first column's name.
        let bom = csv("\u{feff}file_name,label\nx.jpg,cat\n", None).unwrap();
        assert_eq!(bom.file_column, "file_name");
        let bom = jsonl("\u{feff}{\"file_name\": \"x.jpg\", \"label\": 3}\n", None).unwrap();
        assert_eq!(rows(&bom), vec![(1, "x.jpg", "3")]);
    }

    #[test]
    fn the_label_column_is_the_flag_then_label_then_the_only_other_column() {
        assert_eq!(csv("file_name,text,labels\nx.jpg,a,b\n", None).unwrap().label_column, "labels");
        assert_eq!(csv("file_name,label,labels\nx.jpg,a,b\n", None).unwrap().label_column, "label");
        assert_eq!(csv("species,file_name\nowl,x.jpg\n", None).unwrap().label_column, "species");
        assert_eq!(csv("image_file_name,species\nx.jpg,owl\n", None).unwrap().file_column, "image_file_name");
        let t = csv("file_name,species,colour\nx.jpg,owl,brown\n", Some("colour")).unwrap();
        assert_eq!(rows(&t), vec![(2, "x.jpg", "brown")]);
        let err = csv("file_name,species,colour\nx.jpg,owl,brown\n", None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'species'") && msg.contains("'colour'") && msg.contains("--label-column"), "{msg}");
        assert_eq!(err.category(), crate::error::Category::Input);
        let err = csv("file_name,species\nx.jpg,owl\n", Some("kind")).unwrap_err();
        assert!(err.to_string().contains("--label-column") && err.to_string().contains("'species'"), "{err}");
        assert_eq!(err.category(), crate::error::Category::Usage);
        let err = csv("path,label\nx.jpg,owl\n", None).unwrap_err().to_string();
        assert!(err.contains("no 'file_name' column") && err.contains("'path'"), "{err}");
        let err = csv("file_name\nx.jpg\n", None).unwrap_err().to_string();
        assert!(err.contains("no column besides 'file_name'"), "{err}");
    }

    #[test]
    fn bad_rows_are_errors_naming_the_line() {
        for (text, needles) in [
            ("file_name,label\na.jpg,cat\nb.jpg,\n", &["metadata.csv", "line 3", "'b.jpg'", "empty"][..]),
            ("file_name,label\na.jpg,cat\nb.jpg, \n", &["line 3", "empty"][..]),
            ("file_name,label\na.jpg,cat\nb.jpg,dog,extra\n", &["line 3"][..]),
            ("file_name,label\n,cat\n", &["line 2", "file name is empty"][..]),
        ] {
            let err = csv(text, None).unwrap_err();
            assert_eq!(err.category(), crate::error::Category::Input);
            let msg = err.to_string();
            assert!(needles.iter().all(|n| msg.contains(n)), "{msg} lacks one of {needles:?}");
        }
        for (text, needles) in [
            ("{\"file_name\": \"a.jpg\", \"label\": \"cat\"}\n{\"file_name\": \"b.jpg\"}\n", &["metadata.jsonl", "line 2", "empty"][..]),
            ("{\"file_name\": \"a.jpg\", \"label\": \"cat\"}\n{\"file_name\": \"b.jpg\", \"label\": null}\n", &["line 2", "empty"][..]),
            ("{\"file_name\": \"a.jpg\", \"label\": 1.5}\n", &["line 1", "string or an integer"][..]),
            ("{\"file_name\": \"a.jpg\", \"label\": [\"a\", \"b\"]}\n", &["line 1", "one a picture"][..]),
            ("{\"file_name\": \"a.jpg\", \"label\": \"cat\"}\nnot json\n", &["line 2", "not JSON"][..]),
            ("[1, 2]\n", &["line 1", "not a JSON object"][..]),
            ("{\"file_name\": 7, \"label\": \"cat\"}\n", &["line 1", "not a string"][..]),
        ] {
            let msg = jsonl(text, None).unwrap_err().to_string();
            assert!(needles.iter().all(|n| msg.contains(n)), "{msg} lacks one of {needles:?}");
        }
    }

    #[test]
    fn file_names_stay_inside_the_folder() {
        assert_eq!(relative_components("./a//b\\c.jpg").unwrap(), vec!["a", "b", "c.jpg"]);
        for (bad, why) in [
            ("../x.jpg", ".."),
            ("a/../../x.jpg", ".."),
            ("/etc/x.jpg", "absolute"),
            ("\\\\server\\x.jpg", "absolute"),
            ("C:\\x.jpg", "absolute"),
            ("https://example.com/x.jpg", "URL"),
            ("./", "no file"),
        ] {
            let err = relative_components(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn classes_sort_as_strings_or_as_integers() {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(class_order(&set(&["dog", "cat", "10"])), vec!["10", "cat", "dog"]);
        assert_eq!(class_order(&set(&["10", "9", "-1", "0"])), vec!["-1", "0", "9", "10"]);
    }

    fn touch(root: &Path, names: &[&str]) {
        for n in names {
            let p = root.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
    }

    fn keys(v: &[Entry]) -> Vec<(&str, &str, i64)> {
        v.iter().map(|e| (e.key.as_str(), e.name.as_str(), e.label)).collect()
    }

    #[test]
    fn metadata_gives_the_entries_of_the_class_folder_layout() {
        // The same pictures as class folders, and flat with a metadata file listing them out of
        // order: the same classes, keys, labels and split.
        let folders = tempfile::tempdir().unwrap();
        let flat = tempfile::tempdir().unwrap();
        let mut lines = vec!["file_name,label".to_string()];
        for i in (0..30).rev() {
            for c in ["dog", "cat"] {
                touch(folders.path(), &[&format!("{c}/{i}.jpg")]);
                touch(flat.path(), &[&format!("pics/{c}/{i}.jpg")]);
                lines.push(format!("pics/{c}/{i}.jpg,{c}"));
            }
        }
        std::fs::write(flat.path().join("metadata.csv"), lines.join("\n")).unwrap();
        let a = super::super::folder::scan_names(folders.path(), 0.3, &LabelSource::default()).unwrap();
        let b = super::super::folder::scan_names(flat.path(), 0.3, &LabelSource::default()).unwrap();
        assert_eq!(a.classes, b.classes);
        let strip = |v: &[Entry]| v.iter().map(|e| (e.key.clone(), e.label)).collect::<Vec<_>>();
        assert_eq!(strip(&a.train), strip(&b.train));
        assert_eq!(strip(&a.test), strip(&b.test));
        assert!(!b.test.is_empty());
        assert!(b.train.iter().all(|e| e.name.starts_with("pics/") && e.path.is_absolute() && e.path.ends_with(&e.name)));
    }

    #[test]
    fn metadata_in_split_folders_is_relative_to_them() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["training/a.jpg", "training/b.jpg", "validation/c.jpg", "testing/d.jpg", "testing/e.jpg"]);
        std::fs::write(d.path().join("training/metadata.jsonl"), "{\"file_name\": \"a.jpg\", \"label\": 1}\n{\"file_name\": \"b.jpg\", \"label\": 0}\n").unwrap();
        std::fs::write(d.path().join("testing/metadata.csv"), "file_name,label\nd.jpg,0\ne.jpg,1\n").unwrap();
        let splits = SplitDirs::find(d.path()).unwrap().unwrap();
        assert_eq!((splits.train.as_str(), splits.test.as_deref(), splits.unused.clone()), ("training", Some("testing"), vec!["validation".to_string()]));
        let data = scan_names(d.path(), Some(&splits), &LabelSource::default(), 0.2).unwrap().unwrap();
        assert_eq!(data.classes, vec!["0", "1"]);
        assert_eq!(keys(&data.train), vec![("0/b.jpg", "training/b.jpg", 0), ("1/a.jpg", "training/a.jpg", 1)]);
        assert_eq!(keys(&data.test), vec![("0/d.jpg", "testing/d.jpg", 0), ("1/e.jpg", "testing/e.jpg", 1)]);
    }

    #[test]
    fn a_root_file_places_rows_by_their_split_folder_and_the_test_folder_needs_rows() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["train/a.jpg", "train/b.jpg", "test/c.jpg", "val/v.jpg", "test/d.jpg"]);
        let text = "file_name,label\ntrain/a.jpg,x\ntrain/b.jpg,y\ntest/c.jpg,x\nval/v.jpg,y\ntest/d.jpg,y\ntrain/a.jpg,x\n";
        std::fs::write(d.path().join("metadata.csv"), text).unwrap();
        let splits = SplitDirs::find(d.path()).unwrap();
        let data = scan_names(d.path(), splits.as_ref(), &LabelSource::default(), 0.2).unwrap().unwrap();
        assert_eq!(data.train.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["train/a.jpg", "train/b.jpg"]);
        assert_eq!(data.test.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["test/c.jpg", "test/d.jpg"]);
        // Every picture on disk is named (val/v.jpg too, left out as unused): nothing unlisted.
        assert!(!data.notes.iter().any(|n| n.contains("does not name")), "{:?}", data.notes);
        touch(d.path(), &["train/extra.jpg", "train/notes.txt"]);
        let data = scan_names(d.path(), splits.as_ref(), &LabelSource::default(), 0.2).unwrap().unwrap();
        assert!(data.notes.iter().any(|n| n.starts_with("1 picture file(s)") && n.contains("does not name")), "{:?}", data.notes);
        assert!(data.notes.iter().any(|n| n.starts_with("1 listed picture(s) in split folders")), "{:?}", data.notes);
        // No row in test/: an error naming it.
        std::fs::write(d.path().join("metadata.csv"), "file_name,label\ntrain/a.jpg,x\ntrain/b.jpg,y\n").unwrap();
        let err = scan_names(d.path(), splits.as_ref(), &LabelSource::default(), 0.2).unwrap_err().to_string();
        assert!(err.contains("test") && err.contains("no row"), "{err}");
    }

    #[test]
    fn bad_rows_of_a_folder_name_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["a.jpg", "b.jpg", "sub/c.jpg"]);
        let outside = d.path().parent().unwrap().join("outside.jpg");
        for (rows, needles) in [
            ("a.jpg,x\nmissing.jpg,y\n", &["line 3", "'missing.jpg' does not exist"][..]),
            ("a.jpg,x\nsub,y\n", &["line 3", "not a file"][..]),
            ("a.jpg,x\n../outside.jpg,y\n", &["line 3", ".."][..]),
            (&format!("a.jpg,x\n{},y\n", outside.display()), &["line 3", "absolute"][..]),
            ("a.jpg,x\nb.jpg,y\n./a.jpg,y\n", &["line 4", "listed twice", "'x'", "line 2"][..]),
            ("a.jpg,x\nb.jpg,x\n", &["1 class", "at least two"][..]),
        ] {
            std::fs::write(d.path().join("metadata.csv"), format!("file_name,label\n{rows}")).unwrap();
            let err = scan_names(d.path(), None, &LabelSource::default(), 0.2).unwrap_err();
            assert_eq!(err.category(), crate::error::Category::Input, "{err}");
            let msg = err.to_string();
            assert!(msg.contains("metadata.csv") && needles.iter().all(|n| msg.contains(n)), "{msg} lacks one of {needles:?}");
        }
        // The same picture twice with the same label is read once.
        std::fs::write(d.path().join("metadata.csv"), "file_name,label\na.jpg,x\nb.jpg,y\na.jpg,x\n").unwrap();
        let data = scan_names(d.path(), None, &LabelSource::default(), 0.0).unwrap().unwrap();
        assert_eq!(data.train.len(), 2);
        // Both formats side by side: which one is meant is unclear.
        std::fs::write(d.path().join("metadata.jsonl"), "").unwrap();
        let err = scan_names(d.path(), None, &LabelSource::default(), 0.0).unwrap_err().to_string();
        assert!(err.contains("both metadata.csv and metadata.jsonl"), "{err}");
    }

    #[test]
    fn a_labels_file_elsewhere_is_relative_to_the_data_folder_and_wins() {
        let d = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        touch(d.path(), &["p/a.jpg", "p/b.jpg"]);
        std::fs::write(d.path().join("metadata.csv"), "file_name,label\np/a.jpg,x\np/b.jpg,x\n").unwrap();
        let labels = elsewhere.path().join("labels.jsonl");
        std::fs::write(&labels, "{\"file_name\": \"p/a.jpg\", \"kind\": \"x\", \"note\": \"\"}\n{\"file_name\": \"p/b.jpg\", \"kind\": \"y\", \"note\": \"\"}\n").unwrap();
        let src = LabelSource { file: Some(labels.clone()), column: Some("kind".into()) };
        let data = scan_names(d.path(), None, &src, 0.0).unwrap().unwrap();
        assert_eq!(data.classes, vec!["x", "y"]);
        assert_eq!(keys(&data.train), vec![("x/a.jpg", "p/a.jpg", 0), ("y/b.jpg", "p/b.jpg", 1)]);
        let txt = elsewhere.path().join("labels.txt");
        let err = scan_names(d.path(), None, &LabelSource { file: Some(txt), column: None }, 0.0).unwrap_err();
        assert_eq!(err.category(), crate::error::Category::Usage);
    }

    #[test]
    fn no_metadata_means_class_folders() {
        let d = tempfile::tempdir().unwrap();
        touch(d.path(), &["cat/a.jpg", "dog/b.jpg"]);
        assert!(scan_names(d.path(), None, &LabelSource::default(), 0.2).unwrap().is_none());
    }
}
