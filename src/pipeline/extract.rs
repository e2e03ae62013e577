//! Running the backbone over a split's rows: batches prepared on another thread, and each
//! batch's features handed over as soon as it is computed, with the store key of every row
//! (computed from the very bytes that were decoded).

use std::ops::Range;
use std::sync::mpsc;
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use crate::backbone::{Backbone, Engine, Precision};
use crate::cache::store::segment::SegmentWriter;
use crate::data::content::{HashIndex, RowKey};
use crate::data::on_device::{self, Pixels};
use crate::data::preprocess::Preprocessing;
use crate::data::views::ViewOp;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::progress::{Progress, Task, Unit};

/// A batch on its way to the backbone, with its rows' store keys.
enum Prepared {
    /// Normalised on the CPU.
    Input(Tensor, Vec<RowKey>),
    /// uint8 pictures, staged for the backbone's device, to be preprocessed there.
    Pixels(Pixels, Vec<RowKey>),
    /// uint8 pictures and each row's view of one of them, staged likewise.
    Views(Pixels, Vec<(usize, ViewOp)>, Vec<RowKey>),
}

/// Prepares rows `rows` of `split` for a backbone on `device`: preprocessed here on the CPU,
/// or decoded and staged (pinned) for preprocessing on a GPU (see [`on_device`]).
fn prepare(split: &Split, rows: Range<usize>, pre: &Preprocessing, device: Device) -> Result<Prepared> {
    if !on_device::preprocesses_on(device) {
        let (input, keys) = split.batch_keyed(rows, pre)?;
        return Ok(Prepared::Input(input, keys));
    }
    Ok(match split.views() {
        None => {
            let (pixels, keys) = split.pixels_keyed(rows)?;
            Prepared::Pixels(pixels.staged_for(device)?, keys)
        }
        Some(_) => {
            let (pixels, ops, keys) = split.view_pixels_keyed(rows)?;
            Prepared::Views(pixels.staged_for(device)?, ops, keys)
        }
    })
}

/// Runs the backbone over rows `rows` of `split`, in batches of `batch_size`, preparing the
/// next batch (decoding; on the CPU also resizing) on another thread while the current one is
/// computed, and hands each batch's `(first row, features [n, D], keys)` to `on_batch`. On a
/// GPU the pictures are resized and normalised there ([`on_device`]). A short batch is padded
/// to `pad_to` rows (see [`padded_rows`]).
#[allow(clippy::too_many_arguments)]
fn run_backbone(
    backbone: &Backbone,
    split: &Split,
    pre: &Preprocessing,
    batch_size: usize,
    pad_to: usize,
    rows: Range<usize>,
    task: &mut Task,
    mut on_batch: impl FnMut(usize, Tensor, Vec<RowKey>) -> Result<()>,
) -> Result<()> {
    let device = backbone.device();
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<(usize, Result<Prepared>)>(2);
        let all = rows.clone();
        scope.spawn(move || {
            for start in all.clone().step_by(batch_size) {
                let end = (start + batch_size).min(all.end);
                let batch = prepare(split, start..end, pre, device);
                let failed = batch.is_err();
                if tx.send((start, batch)).is_err() || failed {
                    return;
                }
            }
        });
        for (start, batch) in rx {
            let (batch, keys) = match batch? {
                Prepared::Input(input, keys) => (input, keys),
                Prepared::Pixels(pixels, keys) => (pre.batch_on(&pixels, device)?, keys),
                Prepared::Views(pixels, ops, keys) => (pre.views_on(&pixels, &ops, device)?, keys),
            };
            let n = batch.size()[0];
            let input = pad_rows(&batch, pad_to as i64);
            let features = backbone.features(&input)?.narrow(0, 0, n);
            task.inc(n as u64);
            on_batch(start, features, keys)?;
        }
        Ok(())
    })
}

/// `batch` with its last row repeated up to `rows` rows, so that every batch the backbone sees
/// has one shape.
fn pad_rows(batch: &Tensor, rows: i64) -> Tensor {
    let n = batch.size()[0];
    if n >= rows || n == 0 {
        return batch.shallow_clone();
    }
    let mut shape = batch.size();
    shape[0] = rows - n;
    Tensor::cat(&[batch.shallow_clone(), batch.narrow(0, n - 1, 1).expand(&shape, false)], 0)
}

/// True when every batch the backbone sees must have the same number of rows. The frozen
/// engine profiles each new shape (two unfused runs), so a short batch is padded for it; in
/// bf16 a kernel may round differently for another batch size.
pub fn needs_fixed_shape(engine: Engine, precision: Precision) -> bool {
    engine == Engine::Frozen || precision == Precision::Bf16
}

/// The rows a short batch is padded to: the whole batch where the shape must stay fixed
/// ([`needs_fixed_shape`]), else 2. The eager engine in fp32 computes each row on its own, and
/// a batch of 2 or more rows gives every row the features it has in any other batch (measured
/// on ResNet-18 and -50: batches of 2 to 32 agree bit for bit, docs/performance.md), while a
/// batch of one row takes another convolution path (3e-7 apart). So a short batch costs about
/// its own rows, not a whole batch's.
pub fn padded_rows(engine: Engine, precision: Precision, batch_size: usize) -> usize {
    if needs_fixed_shape(engine, precision) {
        batch_size
    } else {
        2
    }
}

/// Runs the backbone over every row of `split` (no cache involved). Returns
/// `(features [N, D], labels [N])`.
pub fn extract_split(backbone: &Backbone, split: &Split, pre: &Preprocessing, batch_size: usize, progress: &Progress) -> Result<(Tensor, Tensor)> {
    let n = split.len();
    let mut task = progress.task(&format!("extract {}", split.name), n as u64, Unit::Images);
    let mut parts = Vec::new();
    let pad_to = padded_rows(backbone.engine(), backbone.precision(), batch_size.max(1));
    run_backbone(backbone, split, pre, batch_size.max(1), pad_to, 0..n, &mut task, |_, f, _| {
        parts.push(f);
        Ok(())
    })?;
    task.finish();
    if parts.is_empty() {
        return Err(Error::usage("--data", format!("the {} split has no rows", split.name)));
    }
    Ok((Tensor::cat(&parts, 0), Tensor::from_slice(&split.labels)))
}

/// What [`extract_into_store`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extracted {
    /// Rows that went through the backbone.
    pub rows: usize,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs the backbone over every row of `todo` (the rows the store lacks, one per distinct
/// key, `expected` their keys) and appends them to `writer`, a record of at most
/// `record_rows` rows at a time: a killed run loses at most the record being written. A row
/// whose picture changed since its key was computed is an error naming the picture, and
/// `hashes` forgets that file so that the next run reads it afresh.
#[allow(clippy::too_many_arguments)]
pub(super) fn extract_into_store(
    backbone: &Backbone,
    todo: &Split,
    expected: &[RowKey],
    pre: &Preprocessing,
    batch_size: usize,
    record_rows: usize,
    writer: &mut SegmentWriter,
    task: &mut Task,
    hashes: &HashIndex,
) -> Result<Extracted> {
    let start = Instant::now();
    let pad_to = padded_rows(backbone.engine(), backbone.precision(), batch_size);
    let record_rows = record_rows.div_ceil(batch_size).max(1) * batch_size;
    let mut pending: (Vec<RowKey>, Vec<f32>) = (Vec::new(), Vec::new());
    run_backbone(backbone, todo, pre, batch_size, pad_to, 0..todo.len(), task, |first, features, keys| {
        for (i, k) in keys.iter().enumerate() {
            if *k != expected[first + i] {
                let (p, _) = todo.row(first + i);
                if let Some(file) = todo.picture_file(p) {
                    hashes.forget(file);
                }
                return Err(Error::bad_input(
                    std::path::Path::new(&todo.picture_name(p)),
                    "changed while lastlayer was reading it (its bytes differ from a moment before); run the command again",
                ));
            }
        }
        let flat: Vec<f32> = Vec::<f32>::try_from(features.to_kind(Kind::Float).contiguous().view([-1]))?;
        pending.0.extend(keys);
        pending.1.extend(flat);
        if pending.0.len() >= record_rows {
            writer.append(&pending.0, &pending.1)?;
            pending = (Vec::new(), Vec::new());
        }
        Ok(())
    })?;
    writer.append(&pending.0, &pending.1)?;
    writer.sync()?;
    Ok(Extracted { rows: todo.len(), seconds: start.elapsed().as_secs_f64() })
}
