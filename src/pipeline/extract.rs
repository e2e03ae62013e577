//! Running the backbone over a split: batches prepared on another thread, features handed
//! over chunk by chunk, and the resumable extraction into a cache entry.

use std::ops::Range;
use std::sync::mpsc;
use std::time::Instant;

use tch::{Device, Tensor};

use crate::backbone::Backbone;
use crate::cache::{CachedFeatures, FeatureCache, FeatureKey, Partial, PartialPlan};
use crate::data::on_device::{self, Pixels};
use crate::data::preprocess::Preprocessing;
use crate::data::views::{average_views, ViewOp};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::progress::{Progress, Task, Unit};

/// A batch on its way to the backbone.
enum Prepared {
    /// Normalised on the CPU.
    Input(Tensor),
    /// uint8 pictures, staged for the backbone's device, to be preprocessed there.
    Pixels(Pixels),
    /// uint8 pictures and each row's view of one of them, staged likewise.
    Views(Pixels, Vec<(usize, ViewOp)>),
}

/// Prepares rows `rows` of `split` for a backbone on `device`: preprocessed here on the CPU,
/// or decoded and staged (pinned) for preprocessing on a GPU (see [`on_device`]).
fn prepare(split: &Split, rows: Range<usize>, pre: &Preprocessing, device: Device) -> Result<Prepared> {
    if !on_device::preprocesses_on(device) {
        return Ok(Prepared::Input(split.batch(rows, pre)?));
    }
    Ok(match split.views() {
        None => Prepared::Pixels(split.pixels(rows)?.staged_for(device)?),
        Some(_) => {
            let (pixels, ops) = split.view_pixels(rows)?;
            Prepared::Views(pixels.staged_for(device)?, ops)
        }
    })
}

/// Runs the backbone over `chunks` (row ranges of `split`, each a whole number of batches),
/// preparing the next batch (decoding; on the CPU also resizing) on another thread while the
/// current one is computed, and hands each chunk's features to `on_chunk` as soon as it is
/// complete. On a GPU the pictures are resized and normalised there ([`on_device`]).
fn run_backbone(
    backbone: &Backbone,
    split: &Split,
    pre: &Preprocessing,
    batch_size: usize,
    chunks: &[(usize, Range<usize>)],
    task: &mut Task,
    mut on_chunk: impl FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let device = backbone.device();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<(usize, bool, Result<Prepared>)>(2);
        scope.spawn(move || {
            for (chunk, rows) in chunks {
                for start in rows.clone().step_by(batch_size) {
                    let end = (start + batch_size).min(rows.end);
                    let batch = prepare(split, start..end, pre, device);
                    let failed = batch.is_err();
                    if tx.send((*chunk, end == rows.end, batch)).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let mut parts = Vec::new();
        for (chunk, last, batch) in rx {
            let batch = match batch? {
                Prepared::Input(input) => input,
                Prepared::Pixels(pixels) => pre.batch_on(&pixels, device)?,
                Prepared::Views(pixels, ops) => pre.views_on(&pixels, &ops, device)?,
            };
            let rows = batch.size()[0];
            parts.push(backbone.features(&pad_rows(&batch, batch_size as i64))?.narrow(0, 0, rows));
            task.inc(rows as u64);
            if last {
                on_chunk(chunk, Tensor::cat(&std::mem::take(&mut parts), 0))?;
            }
        }
        Ok(())
    })
}

/// `batch` with its last row repeated up to `rows` rows. Every batch the backbone sees then has
/// one shape, so a picture's features do not depend on whether it fell in a short last batch
/// (in bf16 a kernel may round differently for another batch size), nor on where a killed run
/// resumed.
fn pad_rows(batch: &Tensor, rows: i64) -> Tensor {
    let n = batch.size()[0];
    if n >= rows || n == 0 {
        return batch.shallow_clone();
    }
    let mut shape = batch.size();
    shape[0] = rows - n;
    Tensor::cat(&[batch.shallow_clone(), batch.narrow(0, n - 1, 1).expand(&shape, false)], 0)
}

/// Runs the backbone over every row of `split` (no cache involved). Returns
/// `(features [N, D], labels [N])`.
pub fn extract_split(backbone: &Backbone, split: &Split, pre: &Preprocessing, batch_size: usize, progress: &Progress) -> Result<(Tensor, Tensor)> {
    let n = split.len();
    let mut task = progress.task(&format!("extract {}", split.name), n as u64, Unit::Images);
    let mut features = None;
    run_backbone(backbone, split, pre, batch_size.max(1), &[(0, 0..n)], &mut task, |_, f| {
        features = Some(f);
        Ok(())
    })?;
    task.finish();
    let features = features.ok_or_else(|| Error::usage("--data", format!("the {} split has no rows", split.name)))?;
    Ok((features, Tensor::from_slice(&split.labels)))
}

/// Extracts `split` into the cache entry of `key`, chunk by chunk, resuming from the chunks a
/// killed run left. Returns the stored entry and how many rows were already done.
#[allow(clippy::too_many_arguments)]
pub(super) fn extract_resumable(
    backbone: &Backbone,
    split: &Split,
    pre: &Preprocessing,
    batch_size: usize,
    chunk_rows: usize,
    cache: &FeatureCache,
    key: &FeatureKey,
    classes: &[String],
    progress: &Progress,
) -> Result<(CachedFeatures, usize, f64)> {
    let n = split.len();
    let chunk_rows = chunk_rows.div_ceil(batch_size).max(1) * batch_size;
    let plan = PartialPlan { digest: key.digest(), rows: n, chunk_rows, batch_size };
    let partial = Partial::open(&cache.partial_dir(key), plan)?;
    let todo: Vec<(usize, Range<usize>)> =
        (0..partial.plan().chunks()).filter(|&i| !partial.has_chunk(i)).map(|i| (i, partial.plan().chunk_range(i))).collect();
    let done = n - todo.iter().map(|(_, r)| r.len()).sum::<usize>();
    if done > 0 {
        tracing::info!("{}: resuming, {done} of {n} rows were extracted by an earlier run", split.name);
    }
    let mut task = progress.task(&format!("extract {}", split.name), n as u64, Unit::Images);
    task.set_position(done as u64);
    let start = Instant::now();
    run_backbone(backbone, split, pre, batch_size, &todo, &mut task, |chunk, features| {
        let rows = partial.plan().chunk_range(chunk);
        partial.write_chunk(chunk, &features, &Tensor::from_slice(&split.labels[rows]))
    })?;
    task.finish();
    let secs = start.elapsed().as_secs_f64();
    let (mut features, mut labels) = partial.join()?;
    if let Some(views) = split.views().filter(|v| v.averaged()) {
        // `--tta flip`: the picture's and its mirror's features, averaged into its row.
        let v = views.count();
        features = average_views(&features, v, &(0..v).collect::<Vec<_>>());
        labels = labels.view([-1, v as i64]).select(1, 0).contiguous();
    }
    let stored = cache.store(key, &features, &labels, classes, secs)?;
    partial.remove()?;
    Ok((stored, done, secs))
}
