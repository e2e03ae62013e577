//! A user's own pictures: a folder of picture files (any format of
//! [`super::decode::FORMATS`]), labelled by class folders or by a metadata file.
//!
//! The labels come from, in this order: the `--labels` file; a `metadata.csv` or
//! `metadata.jsonl` in the data folder or its split folders (the Hugging Face `imagefolder`
//! layout, see [`super::metadata`]); else one subfolder per class.
//!
//! Split folders follow Hugging Face `datasets`: a training folder (`train/` or `training/`)
//! and a test folder, the first present of [`TEST_DIR_NAMES`] (test names before validation
//! names). With both, the split is the folders'. Without a training folder (`ROOT/<class>/…`),
//! or with a training folder alone, each picture goes to test when a hash of its key
//! (`<class>/<file name>`) falls below `--test-fraction`, else to train, so the split never
//! depends on where the folder is, on the order files are listed in, or on other files being
//! added.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::content::HashIndex;
use super::metadata::{self, LabelSource};
use crate::error::{Error, IoContext, Result};

/// File extensions read as pictures (case-insensitive): what phones and cameras write
/// (`super::decode` reads each by its content, whatever the name says).
pub const EXTENSIONS: [&str; 13] = ["jpg", "jpeg", "jpe", "png", "webp", "tif", "tiff", "bmp", "gif", "heic", "heif", "hif", "avif"];

/// Names of a training folder, as Hugging Face `datasets` reads them.
pub const TRAIN_DIR_NAMES: [&str; 2] = ["train", "training"];

/// Names of a test folder, in order of preference: Hugging Face `datasets`' test names, then
/// its validation names (a data set with `test/` and `val/` is tested on `test/`).
pub const TEST_DIR_NAMES: [&str; 8] = ["test", "testing", "eval", "evaluation", "validation", "valid", "val", "dev"];

/// The split folders of a data folder (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitDirs {
    /// The training folder's name (`train` or `training`).
    pub train: String,
    /// The test folder's name; `None`: the test split is drawn from the training folder by
    /// the hash rule.
    pub test: Option<String>,
    /// Other split folders that are present but not used (`val/` beside `test/`).
    pub unused: Vec<String>,
}

impl SplitDirs {
    /// Finds the split folders of `root`; `None` when it has no training folder.
    pub fn find(root: &Path) -> Result<Option<SplitDirs>> {
        let present = |names: &[&str]| names.iter().filter(|n| root.join(n).is_dir()).map(|n| n.to_string()).collect::<Vec<_>>();
        let train = present(&TRAIN_DIR_NAMES);
        if train.len() > 1 {
            return Err(Error::bad_input(root, "has both train/ and training/; keep one training folder"));
        }
        let Some(train) = train.into_iter().next() else { return Ok(None) };
        let mut tests = present(&TEST_DIR_NAMES).into_iter();
        let test = tests.next();
        Ok(Some(SplitDirs { train, test, unused: tests.collect() }))
    }

    /// Which folders are used, for the log.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![match &self.test {
            Some(t) => format!("split folders: {}/ for training, {t}/ for test", self.train),
            None => format!("split folders: {}/ alone; the test split is drawn from it (--test-fraction)", self.train),
        }];
        for u in &self.unused {
            out.push(format!("{u}/ is not used: {}/ is the test split", self.test.as_deref().unwrap_or_default()));
        }
        out
    }
}

/// One labelled picture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path.
    pub path: PathBuf,
    /// `<class>/<file name>`, independent of where the folder is (the class is the label's
    /// name, also when it comes from a metadata file).
    pub key: String,
    /// The path relative to the data folder (`train/cat/0001.jpg`, or `cat/0001.jpg` without
    /// split folders): how a user finds the picture.
    pub name: String,
    /// Class index.
    pub label: i64,
}

/// The classes and the entries of each split.
#[derive(Debug, Clone)]
pub struct FolderData {
    /// Class names (subfolder names or metadata labels, sorted).
    pub classes: Vec<String>,
    /// Training pictures.
    pub train: Vec<Entry>,
    /// Test pictures.
    pub test: Vec<Entry>,
    /// Picture files skipped because they could not be read.
    pub skipped: Vec<PathBuf>,
    /// What the listing found that the log should say: the split folders used, the labels
    /// file and column.
    pub notes: Vec<String>,
}

/// Lists `root` (see the module docs for the layouts), labelled by its class folders or its
/// metadata files. Every picture's header is read, but for files that `known` remembers
/// unchanged since they were read whole: one that cannot be read as a picture is skipped with
/// a warning (and counted in [`FolderData::skipped`]), or is an error when `strict`.
pub fn scan(root: &Path, test_fraction: f64, strict: bool, known: &HashIndex) -> Result<FolderData> {
    scan_labelled(root, test_fraction, strict, &LabelSource::default(), known)
}

/// [`scan`], with the labels from `labels` (`--labels`, `--label-column`).
pub fn scan_labelled(root: &Path, test_fraction: f64, strict: bool, labels: &LabelSource, known: &HashIndex) -> Result<FolderData> {
    let mut data = scan_names(root, test_fraction, labels)?;
    for note in &data.notes {
        tracing::info!("{note}");
    }
    for split in [&mut data.train, &mut data.test] {
        let bad: Vec<(usize, String)> = split
            .par_iter()
            .enumerate()
            .filter(|(_, e)| !known.knows(&e.path))
            .filter_map(|(i, e)| probe(&e.path).err().map(|why| (i, why)))
            .collect();
        if let (true, Some((i, why))) = (strict, bad.first()) {
            return Err(Error::bad_input(
                &split[*i].path,
                format!("not a readable picture ({why}); remove it, or drop --strict to skip such files with a warning"),
            ));
        }
        for (i, why) in bad.iter().rev() {
            let e = split.remove(*i);
            tracing::warn!("skipping {}: not a readable picture ({why})", e.path.display());
            data.skipped.push(e.path);
        }
    }
    if !data.skipped.is_empty() {
        tracing::warn!("{} unreadable picture file(s) skipped (--strict makes this an error)", data.skipped.len());
    }
    for class in 0..data.classes.len() as i64 {
        if !data.train.iter().any(|e| e.label == class) {
            return Err(Error::bad_input(
                root,
                format!("class '{}' has no readable training pictures; add some, or remove its folder (or its metadata rows)", data.classes[class as usize]),
            ));
        }
    }
    Ok(data)
}

/// Reads a picture's header (format and size) without decoding it: a format lastlayer reads,
/// a size within [`super::decode::MAX_PIXELS`].
fn probe(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (w, h) = super::decode::probe(&bytes).map_err(|e| e.to_string())?;
    if w == 0 || h == 0 {
        return Err("empty picture".into());
    }
    super::decode::check_size(w, h).map_err(|e| e.to_string())
}

/// Checks the labels of `root` where they come from a file (`--labels`, or a metadata file in
/// the folder): every row, and that every picture it names exists, without opening one; and
/// that `--label-column` is not given for class folders. The commands call this before they
/// write anything, so that a bad row leaves no run folder or cache entry behind. Class folders
/// are checked when the data set is opened, as before.
pub fn check_labels(root: &Path, test_fraction: f64, labels: &LabelSource) -> Result<()> {
    if !root.is_dir() {
        return Ok(());
    }
    let splits = SplitDirs::find(root)?;
    match metadata::scan_names(root, splits.as_ref(), labels, test_fraction)? {
        Some(_) => Ok(()),
        None => class_folders_only(root, labels),
    }
}

/// With no labels file, `--label-column` has nothing to name.
fn class_folders_only(root: &Path, labels: &LabelSource) -> Result<()> {
    match &labels.column {
        Some(column) => Err(Error::usage(
            "--label-column",
            format!("'{column}': {} has no metadata.csv or metadata.jsonl and no --labels file was given; its class folders are the labels", root.display()),
        )),
        None => Ok(()),
    }
}

/// [`scan_labelled`] without opening the pictures.
pub(super) fn scan_names(root: &Path, test_fraction: f64, labels: &LabelSource) -> Result<FolderData> {
    if !root.is_dir() {
        return Err(Error::bad_input(root, "--data: not a folder (give `cifar10` or a folder with one subfolder per class)"));
    }
    let splits = SplitDirs::find(root)?;
    let notes = splits.as_ref().map(SplitDirs::describe).unwrap_or_default();
    if let Some(mut data) = metadata::scan_names(root, splits.as_ref(), labels, test_fraction)? {
        data.notes.splice(0..0, notes);
        return Ok(data);
    }
    class_folders_only(root, labels)?;
    match splits {
        Some(SplitDirs { train, test: Some(test), .. }) => {
            let (train_dir, test_dir) = (root.join(&train), root.join(&test));
            let classes = class_dirs(&train_dir)?;
            let test_classes = class_dirs(&test_dir)?;
            if test_classes.iter().any(|c| !classes.contains(c)) {
                return Err(Error::bad_input(&test_dir, format!("has class folders that {} lacks; both need the same classes", train_dir.display())));
            }
            Ok(FolderData {
                train: entries(&train_dir, &format!("{train}/"), &classes, true)?,
                test: entries(&test_dir, &format!("{test}/"), &classes, false)?,
                classes,
                skipped: Vec::new(),
                notes,
            })
        }
        Some(SplitDirs { train, test: None, .. }) => {
            let train_dir = root.join(&train);
            let classes = class_dirs(&train_dir)?;
            let (train, test) = hash_split(entries(&train_dir, &format!("{train}/"), &classes, true)?, test_fraction);
            Ok(FolderData { classes, train, test, skipped: Vec::new(), notes })
        }
        None => {
            let classes = class_dirs(root)?;
            let (train, test) = hash_split(entries(root, "", &classes, true)?, test_fraction);
            Ok(FolderData { classes, train, test, skipped: Vec::new(), notes })
        }
    }
}

/// `(train, test)`: each entry goes to test when the hash of its key falls below
/// `test_fraction`; order is kept.
pub(super) fn hash_split(all: Vec<Entry>, test_fraction: f64) -> (Vec<Entry>, Vec<Entry>) {
    let (test, train) = all.into_iter().partition(|e| hash_fraction(&e.key) < test_fraction);
    (train, test)
}

/// A number in [0, 1) fixed by `key` alone.
fn hash_fraction(key: &str) -> f64 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn class_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut classes = Vec::new();
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if e.file_type().at(e.path())?.is_dir() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                classes.push(name);
            }
        }
    }
    classes.sort();
    if classes.len() < 2 {
        return Err(Error::bad_input(
            dir,
            format!("found {} class folder(s); a classifier needs at least two subfolders, one per class", classes.len()),
        ));
    }
    Ok(classes)
}

/// True when `p`'s name ends in one of [`EXTENSIONS`].
pub(super) fn is_picture(p: &Path) -> bool {
    p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Picture files of each class folder under `dir` (which is `prefix` in the data folder),
/// sorted by key. With `require`, an empty class folder is an error.
fn entries(dir: &Path, prefix: &str, classes: &[String], require: bool) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let cdir = dir.join(class);
        if !cdir.is_dir() {
            continue;
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for e in std::fs::read_dir(&cdir).at(&cdir)? {
            let p = e.at(&cdir)?.path();
            if p.is_file() && is_picture(&p) {
                files.push(p);
            }
        }
        if files.is_empty() && require {
            return Err(Error::bad_input(
                &cdir,
                format!("class folder '{class}' holds no pictures ({}); add some or remove the folder", EXTENSIONS.join(", ")),
            ));
        }
        files.sort();
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let path = std::path::absolute(&path).at(&path)?;
            out.push(Entry { key: format!("{class}/{name}"), name: format!("{prefix}{class}/{name}"), path, label: label as i64 });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn hash_split_does_not_depend_on_the_folders_location() {
        let a = tempfile::tempdir().unwrap();
        for c in ["cats", "dogs"] {
            for i in 0..40 {
                touch(&a.path().join(c).join(format!("{i}.jpg")));
            }
        }
        touch(&a.path().join("cats/notes.txt"));
        let d1 = scan_names(a.path(), 0.25, &LabelSource::default()).unwrap();
        let b = tempfile::tempdir().unwrap();
        let moved = b.path().join("moved");
        std::fs::rename(a.path(), &moved).unwrap();
        let d2 = scan_names(&moved, 0.25, &LabelSource::default()).unwrap();
        let keys = |v: &[Entry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&d1.test), keys(&d2.test));
        assert_eq!(d1.train.len() + d1.test.len(), 80);
        assert!((8..=32).contains(&d1.test.len()), "{}", d1.test.len());
        assert_eq!(d1.classes, vec!["cats", "dogs"]);
    }

    #[test]
    fn empty_class_and_single_class_are_errors_naming_the_folder() {
        let a = tempfile::tempdir().unwrap();
        touch(&a.path().join("cats/1.jpg"));
        let err = scan(a.path(), 0.2, false, &HashIndex::none()).unwrap_err().to_string();
        assert!(err.contains("at least two"), "{err}");
        std::fs::create_dir_all(a.path().join("dogs")).unwrap();
        let err = scan(a.path(), 0.2, false, &HashIndex::none()).unwrap_err().to_string();
        assert!(err.contains("dogs") && err.contains("no pictures"), "{err}");
    }

    #[test]
    fn unreadable_pictures_are_skipped_and_counted_or_refused_with_strict() {
        let a = tempfile::tempdir().unwrap();
        let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagenet-check/chelsea.png");
        for c in ["cats", "dogs"] {
            std::fs::create_dir_all(a.path().join("train").join(c)).unwrap();
            std::fs::create_dir_all(a.path().join("test").join(c)).unwrap();
            std::fs::copy(&png, a.path().join("train").join(c).join("ok.png")).unwrap();
            std::fs::copy(&png, a.path().join("test").join(c).join("ok.png")).unwrap();
        }
        std::fs::write(a.path().join("train/cats/broken.jpg"), b"not a jpeg at all").unwrap();
        std::fs::write(a.path().join("train/dogs/notes.txt"), b"ignored: not a picture name").unwrap();
        let d = scan(a.path(), 0.2, false, &HashIndex::none()).unwrap();
        assert_eq!(d.train.len(), 2);
        assert_eq!(d.skipped.len(), 1);
        assert!(d.skipped[0].ends_with("train/cats/broken.jpg"));
        let err = scan(a.path(), 0.2, true, &HashIndex::none()).unwrap_err().to_string();
        assert!(err.contains("broken.jpg") && err.contains("--strict"), "{err}");
    }

    #[test]
    fn split_folders_take_hugging_face_names_test_before_validation() {
        let dirs = |names: &[&str]| {
            let a = tempfile::tempdir().unwrap();
            for n in names {
                std::fs::create_dir_all(a.path().join(n)).unwrap();
            }
            SplitDirs::find(a.path())
        };
        let d = dirs(&["training", "dev", "eval", "cats"]).unwrap().unwrap();
        assert_eq!((d.train.as_str(), d.test.as_deref(), d.unused.clone()), ("training", Some("eval"), vec!["dev".to_string()]));
        let d = dirs(&["train", "val", "test"]).unwrap().unwrap();
        assert_eq!((d.test.as_deref(), d.unused.clone()), (Some("test"), vec!["val".to_string()]));
        assert_eq!(dirs(&["train"]).unwrap().unwrap().test, None);
        // No training folder: class folders at the top, whatever their names.
        assert_eq!(dirs(&["test", "val"]).unwrap(), None);
        let err = dirs(&["train", "training"]).unwrap_err().to_string();
        assert!(err.contains("train/ and training/"), "{err}");
    }

    #[test]
    fn train_alone_is_split_by_the_hash_rule_as_a_flat_folder() {
        let flat = tempfile::tempdir().unwrap();
        let alone = tempfile::tempdir().unwrap();
        for c in ["cats", "dogs"] {
            for i in 0..20 {
                touch(&flat.path().join(c).join(format!("{i}.jpg")));
                touch(&alone.path().join("train").join(c).join(format!("{i}.jpg")));
            }
        }
        let a = scan_names(flat.path(), 0.3, &LabelSource::default()).unwrap();
        let b = scan_names(alone.path(), 0.3, &LabelSource::default()).unwrap();
        let keys = |v: &[Entry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!((keys(&a.train), keys(&a.test)), (keys(&b.train), keys(&b.test)));
        assert!(!b.test.is_empty() && b.test.iter().all(|e| e.name.starts_with("train/")));
    }

    #[test]
    fn shared_imagefolder_uses_its_train_and_val_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/imagefolder-sample");
        let d = scan(&root, 0.2, true, &HashIndex::none()).unwrap();
        assert_eq!(d.classes.len(), 10);
        assert_eq!((d.train.len(), d.test.len()), (300, 100));
    }
}
