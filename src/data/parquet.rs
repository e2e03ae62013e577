//! Parquet files as Hugging Face `datasets` writes them, read with arrow-rs: the footer once,
//! then one row group at a time with a projection onto the one column needed, so memory stays
//! bounded by a row group's pictures whatever the file's size.
//!
//! An image column is `struct<bytes: binary, path: string>`; a `ClassLabel` is an integer
//! column whose class names are in the file's key-value metadata under `huggingface`
//! (`{"info": {"features": {"label": {"_type": "ClassLabel", "names": [...]}}}}`).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::error::{Error, IoContext, Result};

/// One parquet file, its footer read.
#[derive(Debug, Clone)]
pub struct ParquetFile {
    /// Where it is on disk.
    pub path: PathBuf,
    /// Rows in each row group.
    pub group_rows: Vec<usize>,
    meta: ArrowReaderMetadata,
}

/// What a label column holds.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValues {
    /// Integers (a `ClassLabel`: -1 or null is a missing label).
    Ints(Vec<Option<i64>>),
    /// Strings (null is a missing label).
    Strings(Vec<Option<String>>),
}

impl ParquetFile {
    /// Reads the footer of `path`. A file that is not parquet, or is cut short, is refused
    /// naming it.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| damaged(path, &e))?;
        let group_rows = meta.metadata().row_groups().iter().map(|g| g.num_rows().max(0) as usize).collect();
        Ok(ParquetFile { path: path.to_path_buf(), group_rows, meta })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.group_rows.iter().sum()
    }

    /// The top-level columns and their types.
    pub fn columns(&self) -> Vec<(String, DataType)> {
        self.meta.schema().fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
    }

    /// `info.features` of the `huggingface` key-value metadata, if any.
    pub fn hf_features(&self) -> Option<serde_json::Value> {
        let kv = self.meta.metadata().file_metadata().key_value_metadata()?;
        let json = kv.iter().find(|k| k.key == "huggingface")?.value.as_deref()?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v.pointer("/info/features").cloned()
    }

    fn column_index(&self, name: &str) -> Result<usize> {
        self.meta.schema().index_of(name).map_err(|_| Error::bad_input(&self.path, format!("has no column '{name}'")))
    }

    /// Column `name` of row groups `groups`, as arrays (one a batch).
    fn read(&self, name: &str, groups: Vec<usize>, batch: usize) -> Result<Vec<ArrayRef>> {
        let idx = self.column_index(name)?;
        let file = File::open(&self.path).at(&self.path)?;
        let mask = ProjectionMask::roots(self.meta.parquet_schema(), [idx]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, self.meta.clone())
            .with_projection(mask)
            .with_row_groups(groups)
            .with_batch_size(batch.max(1))
            .build()
            .map_err(|e| damaged(&self.path, &e))?;
        let mut out = Vec::new();
        for b in reader {
            let b = b.map_err(|e| damaged(&self.path, &e))?;
            out.push(b.column(0).clone());
        }
        Ok(out)
    }

    /// The labels in column `name`, every row group in turn.
    pub fn labels(&self, name: &str) -> Result<LabelValues> {
        let arrays = self.read(name, (0..self.group_rows.len()).collect(), 64 * 1024)?;
        let kind = self.columns().into_iter().find(|(n, _)| n == name).map(|(_, t)| t).unwrap_or(DataType::Null);
        if kind.is_integer() {
            let mut out = Vec::with_capacity(self.rows());
            for a in arrays {
                let a = arrow_cast_i64(&a).ok_or_else(|| not_labels(&self.path, name, &kind))?;
                out.extend(a);
            }
            Ok(LabelValues::Ints(out))
        } else if matches!(kind, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            let mut out = Vec::with_capacity(self.rows());
            for a in arrays {
                match a.data_type() {
                    DataType::Utf8 => out.extend(a.as_string::<i32>().iter().map(|s| s.map(str::to_string))),
                    DataType::LargeUtf8 => out.extend(a.as_string::<i64>().iter().map(|s| s.map(str::to_string))),
                    _ => out.extend(a.as_string_view().iter().map(|s| s.map(str::to_string))),
                }
            }
            Ok(LabelValues::Strings(out))
        } else {
            Err(not_labels(&self.path, name, &kind))
        }
    }

    /// The picture bytes of row group `group` in image column `name` (the struct's `bytes`
    /// field, or the column itself when it is binary).
    pub fn pictures(&self, name: &str, group: usize) -> Result<GroupPictures> {
        let rows = self.group_rows.get(group).copied().unwrap_or(0);
        let arrays = self.read(name, vec![group], rows)?;
        let mut parts = Vec::with_capacity(arrays.len());
        for a in arrays {
            let bytes = match a.as_struct_opt() {
                Some(s) => s.column_by_name("bytes").cloned().ok_or_else(|| Error::bad_input(&self.path, format!("column '{name}' has no 'bytes' field")))?,
                None => a,
            };
            if !matches!(bytes.data_type(), DataType::Binary | DataType::LargeBinary | DataType::BinaryView) {
                return Err(Error::bad_input(&self.path, format!("column '{name}' holds {}, not picture bytes", bytes.data_type())));
            }
            parts.push(bytes);
        }
        Ok(GroupPictures { parts })
    }
}

/// The picture bytes of one row group.
#[derive(Debug)]
pub struct GroupPictures {
    parts: Vec<ArrayRef>,
}

impl GroupPictures {
    /// Row `i` of the group's bytes; `None` when null.
    pub fn get(&self, mut i: usize) -> Option<&[u8]> {
        for p in &self.parts {
            if i < p.len() {
                if p.is_null(i) {
                    return None;
                }
                return Some(match p.data_type() {
                    DataType::Binary => p.as_binary::<i32>().value(i),
                    DataType::LargeBinary => p.as_binary::<i64>().value(i),
                    _ => p.as_binary_view().value(i),
                });
            }
            i -= p.len();
        }
        None
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// True when the group has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.parts.iter().map(|p| p.get_array_memory_size()).sum()
    }
}

/// An integer array as i64 values (nulls `None`).
fn arrow_cast_i64(a: &ArrayRef) -> Option<Vec<Option<i64>>> {
    use arrow_array::types::*;
    macro_rules! ints {
        ($t:ty) => {
            a.as_primitive_opt::<$t>().map(|p| p.iter().map(|v| v.map(|v| v as i64)).collect())
        };
    }
    match a.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => ints!(UInt64Type),
        _ => None,
    }
}

fn not_labels(path: &Path, name: &str, kind: &DataType) -> Error {
    Error::bad_input(
        path,
        format!("column '{name}' holds {kind}, not class labels (a ClassLabel integer or a string); name the class column with --label-column"),
    )
}

fn damaged(path: &Path, e: &dyn std::fmt::Display) -> Error {
    let text = e.to_string();
    if text.contains("Disabled feature at compile time") || text.contains("not supported") {
        return Error::bad_input(
            path,
            format!("uses a compression lastlayer is built without ({text}); it reads snappy (what `datasets` writes) and uncompressed files: rewrite it with pyarrow, compression='snappy'"),
        );
    }
    Error::bad_input(
        path,
        format!("not a readable parquet file ({e}); it is damaged or cut short: delete it (in the Hugging Face cache, its blob too) and run again to download it"),
    )
}
