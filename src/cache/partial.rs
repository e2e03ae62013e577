//! Resumable extraction: while a split is being extracted, its features are saved chunk by
//! chunk in `<entry>.partial/`, each chunk written atomically, so that a killed run continues
//! from the last completed chunk. The chunks are joined into the entry once all are there.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{write_json_atomic, write_safetensors};

/// `progress.json` of a partial entry: what the chunks were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialPlan {
    /// The entry's key digest.
    pub digest: String,
    /// Rows in all.
    pub rows: usize,
    /// Rows per chunk (the last may be shorter).
    pub chunk_rows: usize,
    /// Backbone batch size (a resumed run must use the same, for identical features).
    pub batch_size: usize,
}

impl PartialPlan {
    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.rows.div_ceil(self.chunk_rows)
    }

    /// Rows of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> std::ops::Range<usize> {
        i * self.chunk_rows..((i + 1) * self.chunk_rows).min(self.rows)
    }
}

/// A partial entry on disk.
#[derive(Debug)]
pub struct Partial {
    dir: PathBuf,
    plan: PartialPlan,
}

fn chunk_name(i: usize) -> String {
    format!("chunk-{i:06}.safetensors")
}

impl Partial {
    /// Opens `dir` for `plan`, keeping chunks made with the same plan and discarding others.
    pub fn open(dir: &Path, plan: PartialPlan) -> Result<Self> {
        let plan_path = dir.join("progress.json");
        let old: Option<PartialPlan> = std::fs::read(&plan_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if old.as_ref().is_some_and(|o| *o != plan) {
            tracing::warn!("{}: made with other settings (batch or chunk size); starting it over", dir.display());
            std::fs::remove_dir_all(dir).at(dir)?;
        }
        std::fs::create_dir_all(dir).at(dir)?;
        if old.as_ref() != Some(&plan) {
            write_json_atomic(&plan_path, &plan)?;
        }
        Ok(Partial { dir: dir.to_path_buf(), plan })
    }

    /// The plan.
    pub fn plan(&self) -> &PartialPlan {
        &self.plan
    }

    /// True when chunk `i` is on disk (chunks are written atomically, so one that exists is
    /// whole; [`Partial::join`] still checks every chunk's rows).
    pub fn has_chunk(&self, i: usize) -> bool {
        self.dir.join(chunk_name(i)).is_file()
    }

    /// Writes chunk `i` atomically.
    pub fn write_chunk(&self, i: usize, features: &Tensor, labels: &Tensor) -> Result<()> {
        let path = self.dir.join(chunk_name(i));
        let (f, l) = (features.to_kind(Kind::Float).contiguous(), labels.to_kind(Kind::Int64).contiguous());
        write_safetensors(&path, &[("features", &f), ("labels", &l)])
    }

    /// Reads chunk `i`, checking its row count.
    pub fn read_chunk(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let path = self.dir.join(chunk_name(i));
        let tensors = Tensor::read_safetensors(&path).map_err(|e| Error::bad_input(&path, e.to_string()))?;
        let get = |n: &str| tensors.iter().find(|(k, _)| k == n).map(|(_, t)| t.shallow_clone());
        let rows = self.plan.chunk_range(i).len() as i64;
        match (get("features"), get("labels")) {
            (Some(f), Some(l)) if f.size()[0] == rows && l.size() == [rows] => Ok((f, l)),
            _ => Err(Error::bad_input(&path, "incomplete chunk")),
        }
    }

    /// Joins every chunk, in order.
    pub fn join(&self) -> Result<(Tensor, Tensor)> {
        let mut fs = Vec::with_capacity(self.plan.chunks());
        let mut ls = Vec::with_capacity(self.plan.chunks());
        for i in 0..self.plan.chunks() {
            let (f, l) = self.read_chunk(i)?;
            fs.push(f);
            ls.push(l);
        }
        Ok((Tensor::cat(&fs, 0), Tensor::cat(&ls, 0)))
    }

    /// Deletes the partial entry.
    pub fn remove(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).at(&self.dir)
    }
}
