//! CIFAR-10 in its binary layout (`cifar-10-batches-bin`): records of one label byte (0-9) and
//! 3072 pixel bytes (1024 red, 1024 green, 1024 blue, each 32x32 row-major). The record count
//! comes from the file size, so files with fewer than 10,000 records work too.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Bytes of one record.
pub const RECORD_BYTES: usize = 1 + PIXEL_BYTES;
/// Pixel bytes of one record.
pub const PIXEL_BYTES: usize = 3 * 32 * 32;
/// The folder name inside the official tarball.
pub const FOLDER: &str = "cifar-10-batches-bin";
/// The official download.
pub const OFFICIAL_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// md5 of the official download, as published.
pub const OFFICIAL_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The class names, in label order, for folders without `batches.meta.txt`.
pub const CLASSES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Records of one split, concatenated.
#[derive(Debug, Clone)]
pub struct Records {
    /// Raw records, `RECORD_BYTES` each.
    pub bytes: Vec<u8>,
    /// The files they came from.
    pub files: Vec<PathBuf>,
    /// Records in each of those files, in the same order.
    pub file_records: Vec<usize>,
}

impl Records {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.bytes.len() / RECORD_BYTES
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The label of record `i`.
    pub fn label(&self, i: usize) -> i64 {
        self.bytes[i * RECORD_BYTES] as i64
    }

    /// Where record `i` is, as a user finds it: `data_batch_3.bin#1234` (the file's name and
    /// the record's 0-based index in that file).
    pub fn record_name(&self, mut i: usize) -> String {
        for (file, &n) in self.files.iter().zip(&self.file_records) {
            if i < n {
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                return format!("{name}#{i}");
            }
            i -= n;
        }
        format!("record#{i}")
    }

    /// The 3072 pixel bytes (CHW) of record `i`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        &self.bytes[i * RECORD_BYTES + 1..(i + 1) * RECORD_BYTES]
    }
}

/// Reads and checks one batch file.
pub fn read_batch_file(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).at(path)?;
    check_records(&bytes, path)?;
    Ok(bytes)
}

/// Checks that `bytes` are whole records with labels 0-9.
pub fn check_records(bytes: &[u8], path: &Path) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_BYTES) {
        return Err(Error::bad_input(
            path,
            format!(
                "size {} bytes is not a positive multiple of {RECORD_BYTES} (1 label byte + 3072 pixels): the file is \
                 truncated or not a CIFAR-10 binary batch; download it again",
                bytes.len()
            ),
        ));
    }
    if let Some(i) = bytes.chunks_exact(RECORD_BYTES).position(|r| r[0] > 9) {
        return Err(Error::bad_input(
            path,
            format!("record {i} has label {}, but CIFAR-10 labels are 0-9: the file is damaged; download it again", bytes[i * RECORD_BYTES]),
        ));
    }
    Ok(())
}

/// The batch files of a split: `data_batch_1.bin` .. `data_batch_N.bin` (at least the first,
/// no gaps) for train, `test_batch.bin` for test.
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    match split {
        "test" => {
            let f = dir.join("test_batch.bin");
            if !f.is_file() {
                return Err(Error::bad_input(&f, "missing: a CIFAR-10 folder needs test_batch.bin; download the data set again"));
            }
            Ok(vec![f])
        }
        "train" => {
            let present: Vec<bool> = (1..=5).map(|i| dir.join(format!("data_batch_{i}.bin")).is_file()).collect();
            let n = present.iter().take_while(|p| **p).count();
            if n == 0 || present[n..].iter().any(|p| *p) {
                let f = dir.join(format!("data_batch_{}.bin", n + 1));
                return Err(Error::bad_input(
                    &f,
                    "missing: the training batches must be data_batch_1.bin, data_batch_2.bin, ... without gaps; \
                     download the data set again",
                ));
            }
            Ok((1..=n).map(|i| dir.join(format!("data_batch_{i}.bin"))).collect())
        }
        other => Err(Error::usage("--split", format!("CIFAR-10 has splits train and test, not '{other}'"))),
    }
}

/// Reads every record of `split` from `dir`.
pub fn read_split(dir: &Path, split: &str) -> Result<Records> {
    let files = split_files(dir, split)?;
    let mut bytes = Vec::new();
    let mut file_records = Vec::with_capacity(files.len());
    for f in &files {
        let b = read_batch_file(f)?;
        file_records.push(b.len() / RECORD_BYTES);
        bytes.extend_from_slice(&b);
    }
    Ok(Records { bytes, files, file_records })
}

/// Class names from `batches.meta.txt` when it lists ten, else the standard ones.
pub fn class_names(dir: &Path) -> Vec<String> {
    let from_file: Vec<String> = std::fs::read_to_string(dir.join("batches.meta.txt"))
        .map(|s| s.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    if from_file.len() == 10 {
        from_file
    } else {
        CLASSES.iter().map(|s| s.to_string()).collect()
    }
}

/// Resolves `--data-dir`: the `cifar-10-batches-bin` folder itself or a folder holding it.
pub fn locate(dir: &Path) -> Result<PathBuf> {
    for candidate in [dir.join(FOLDER), dir.to_path_buf()] {
        if candidate.join("test_batch.bin").is_file() || candidate.join("data_batch_1.bin").is_file() {
            return Ok(candidate);
        }
    }
    Err(Error::bad_input(
        dir,
        format!("--data-dir: no CIFAR-10 batches here (expected {FOLDER}/data_batch_1.bin or data_batch_1.bin)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn record_count_comes_from_file_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 3 * RECORD_BYTES];
        bytes[RECORD_BYTES] = 7;
        bytes[RECORD_BYTES + 1] = 200;
        write(dir.path(), "data_batch_1.bin", &bytes);
        write(dir.path(), "test_batch.bin", &bytes[..RECORD_BYTES]);
        let r = read_split(dir.path(), "train").unwrap();
        assert_eq!((r.len(), r.label(1), r.pixels(1)[0]), (3, 7, 200));
        assert_eq!(read_split(dir.path(), "test").unwrap().len(), 1);
    }

    #[test]
    fn truncated_file_is_rejected_with_its_name_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "data_batch_1.bin", &vec![0u8; RECORD_BYTES + 5]);
        let err = read_batch_file(&p).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin") && err.contains("3078") && err.contains("3073"), "{err}");
    }

    #[test]
    fn label_above_nine_is_rejected_with_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; 2 * RECORD_BYTES];
        bytes[RECORD_BYTES] = 10;
        let p = write(dir.path(), "test_batch.bin", &bytes);
        let err = read_batch_file(&p).unwrap_err().to_string();
        assert!(err.contains("record 1") && err.contains("label 10"), "{err}");
    }

    #[test]
    fn gap_in_training_batches_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "data_batch_1.bin", &vec![0u8; RECORD_BYTES]);
        write(dir.path(), "data_batch_3.bin", &vec![0u8; RECORD_BYTES]);
        let err = split_files(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("data_batch_2.bin"), "{err}");
        let err = split_files(dir.path(), "test").unwrap_err().to_string();
        assert!(err.contains("test_batch.bin"), "{err}");
    }

    #[test]
    fn shared_sample_reads_with_ten_balanced_classes() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-sample");
        let dir = locate(&dir).unwrap();
        let r = read_split(&dir, "test").unwrap();
        assert_eq!(r.len(), 1000);
        for c in 0..10 {
            assert_eq!((0..r.len()).filter(|&i| r.label(i) == c).count(), 100);
        }
        assert_eq!(class_names(&dir)[3], "cat");
    }
}
