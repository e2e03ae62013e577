//! The model thread: dynamic batching.
//!
//! It takes the first picture waiting in the queue, then whatever else is waiting, up to
//! `--max-batch`; while the batch is not full and other requests are still being decoded (they
//! will reach the queue shortly), it waits for them, until `--max-wait-ms` after the first
//! picture entered the queue. A picture alone, with nothing on its way, runs at once: a single
//! client waits for no one. For the frozen engine, which meets a few batch shapes only, the
//! largest shape the pictures fill runs and the rest goes first in the next batch
//! ([`split_for`]). The batch then runs as one forward pass, and every request gets its own
//! answer.
//!
//! Requests whose client has gone or whose `--timeout` has passed (their handler answered 503
//! and dropped the reply channel) are skipped, so they cost no forward pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use tch::Tensor;
use tokio::sync::oneshot;

use super::metrics::Metrics;
use crate::backbone::Engine;
use crate::error::{Error, Result};
use crate::pipeline::{Answer, Classifier};

/// A picture waiting for the model, and where its answer goes.
pub(super) struct Job {
    /// The picture, prepared ([`crate::pipeline::Preparer::prepare`]).
    pub input: Tensor,
    /// Classes wanted.
    pub k: usize,
    /// When it entered the queue.
    pub queued: Instant,
    /// The request's answer.
    pub reply: oneshot::Sender<Result<Answer>>,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batching {
    /// Most pictures per forward pass.
    pub max_batch: usize,
    /// Longest a picture waits in the queue for others to join its batch.
    pub max_wait: Duration,
}

/// Counts requests that have their body and are on their way to the queue (waiting to be
/// decoded, or decoding): the model thread waits for them. A guard leaves the count when
/// dropped, whatever happened to the request.
#[derive(Debug, Default)]
pub(super) struct Arriving(AtomicUsize);

impl Arriving {
    /// Counts one request until the guard is dropped.
    pub fn enter(&self) -> ArrivingGuard<'_> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ArrivingGuard(self)
    }

    fn now(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// One request in [`Arriving`].
pub(super) struct ArrivingGuard<'a>(&'a Arriving);

impl Drop for ArrivingGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs batches until every sender of `queue` is gone, the queue is empty and nothing is
/// carried over.
pub(super) fn run(classifier: &Classifier, queue: Receiver<Job>, batching: Batching, arriving: &Arriving, metrics: &Metrics) {
    // Pictures left for the next forward pass by [`split_for`]: they go first.
    let mut carried: Vec<Job> = Vec::new();
    loop {
        let waiting = if carried.is_empty() {
            match queue.recv() {
                Ok(first) => vec![first],
                Err(_) => break,
            }
        } else {
            std::mem::take(&mut carried)
        };
        let deadline = waiting[0].queued + batching.max_wait;
        let mut batch = collect(&queue, waiting, batching.max_batch, deadline, || arriving.now() > 0);
        let collected = batch.len();
        // The client went away, or its handler already answered 503 (--timeout).
        batch.retain(|job| !job.reply.is_closed());
        let take = split_for(batch.len(), batching.max_batch, classifier.engine());
        carried = batch.split_off(take);
        // A picture leaves the queue's depth when it runs or is dropped, not when carried.
        metrics.queue_depth.sub((collected - carried.len()) as i64);
        if batch.is_empty() {
            continue;
        }
        let start = Instant::now();
        let rows = rows_for(batch.len(), batching.max_batch, classifier.engine());
        let answers = classify(classifier, &batch, rows);
        metrics.batch_seconds.observe(start.elapsed().as_secs_f64());
        metrics.batch_size.observe(batch.len() as f64);
        for (job, answer) in batch.into_iter().zip(answers) {
            let _ = job.reply.send(answer);
        }
    }
}

/// How many of `n` waiting pictures run now: all of them for the eager engine; for the frozen
/// one, the largest of its batch shapes ([`rows_for`]) that `n` fills, the rest waiting for the
/// next forward pass (which starts as soon as this one ends), so that no forward pass computes
/// padding rows while pictures wait. Measured with 16 clients: docs/performance.md, "Serving
/// under load".
pub(super) fn split_for(n: usize, max_batch: usize, engine: Engine) -> usize {
    match engine {
        Engine::Eager => n,
        Engine::Frozen if n >= max_batch || n <= 1 => n.min(max_batch),
        Engine::Frozen => 1 << n.ilog2(),
    }
}

/// `waiting` (in order), then what is waiting in `queue` up to `max_batch` in all; while more
/// are `on_their_way()`, waits for them until `deadline`.
fn collect<T>(queue: &Receiver<T>, waiting: Vec<T>, max_batch: usize, deadline: Instant, on_their_way: impl Fn() -> bool) -> Vec<T> {
    let mut batch = waiting;
    while batch.len() < max_batch {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                let now = Instant::now();
                if now >= deadline || !on_their_way() {
                    break;
                }
                // Woken by the next picture; looked at again every millisecond in case the
                // requests on their way fail to decode instead.
                match queue.recv_timeout((deadline - now).min(Duration::from_millis(1))) {
                    Ok(job) => batch.push(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
        }
    }
    batch
}

/// The rows a batch of `n` pictures runs as: `n` for the eager engine; for the frozen one, `n`
/// rounded up to a power of two (at most `max_batch`, else `n`), so that it runs a few batch
/// shapes, each traced and fused once (a new shape runs unfused the first times it is seen).
pub(super) fn rows_for(n: usize, max_batch: usize, engine: Engine) -> usize {
    match engine {
        Engine::Eager => n,
        Engine::Frozen => n.checked_next_power_of_two().unwrap_or(n).min(max_batch).max(n),
    }
}

/// Every job's answer, from one forward pass of `rows` rows. Should the batch fail, each
/// picture is tried alone, so that one bad picture fails only its own request.
fn classify(classifier: &Classifier, batch: &[Job], rows: usize) -> Vec<Result<Answer>> {
    let run = |jobs: &[Job], rows: usize| -> Result<Vec<Answer>> {
        let inputs: Vec<Tensor> = jobs.iter().map(|j| j.input.shallow_clone()).collect();
        let ks: Vec<usize> = jobs.iter().map(|j| j.k).collect();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| classifier.answer_prepared(&inputs, &ks, rows)))
            .unwrap_or_else(|_| Err(Error::Server { message: "libtorch failed on this batch".into() }))
    };
    match run(batch, rows) {
        Ok(tops) => tops.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::warn!("a batch of {} pictures failed ({e}); trying them one by one", batch.len());
            batch.iter().map(|job| run(std::slice::from_ref(job), 1).map(|mut tops| tops.pop().unwrap_or_default())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn takes_what_is_waiting_up_to_the_largest_batch_without_waiting() {
        let (tx, rx) = sync_channel(10);
        for i in 1..=5 {
            tx.send(i).unwrap();
        }
        let start = Instant::now();
        let batch = collect(&rx, vec![0], 4, start + Duration::from_secs(60), || true);
        assert_eq!(batch, vec![0, 1, 2, 3]);
        assert!(start.elapsed() < Duration::from_secs(10));
        // The rest, with nothing on its way: no wait.
        assert_eq!(collect(&rx, vec![10], 4, start + Duration::from_secs(60), || false), vec![10, 4, 5]);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_frozen_engine_runs_a_few_batch_shapes_and_the_eager_one_exact_batches() {
        let frozen: Vec<usize> = (1..=12).map(|n| rows_for(n, 12, Engine::Frozen)).collect();
        assert_eq!(frozen, vec![1, 2, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12]);
        assert_eq!(rows_for(32, 32, Engine::Frozen), 32);
        assert_eq!(rows_for(17, 32, Engine::Frozen), 32);
        assert!((1..=40).all(|n| rows_for(n, 40, Engine::Eager) == n));
    }

    #[test]
    fn the_frozen_engine_runs_the_largest_full_shape_and_carries_the_rest() {
        let frozen: Vec<usize> = (0..=13).map(|n| split_for(n, 12, Engine::Frozen)).collect();
        assert_eq!(frozen, vec![0, 1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12]);
        // What runs is always one of the shapes, without padding.
        assert!((1..=32).all(|n| { let t = split_for(n, 32, Engine::Frozen); rows_for(t, 32, Engine::Frozen) == t }));
        assert!((1..=40).all(|n| split_for(n, 40, Engine::Eager) == n));
    }

    #[test]
    fn carried_pictures_go_first() {
        let (tx, rx) = sync_channel(10);
        tx.send(5).unwrap();
        let start = Instant::now();
        assert_eq!(collect(&rx, vec![1, 2, 3], 8, start, || false), vec![1, 2, 3, 5]);
        assert_eq!(collect(&rx, vec![1, 2, 3], 2, start, || false), vec![1, 2, 3]);
    }

    #[test]
    fn a_lone_picture_with_nothing_on_its_way_runs_at_once() {
        let (_tx, rx) = sync_channel::<i32>(10);
        let start = Instant::now();
        assert_eq!(collect(&rx, vec![7], 32, start + Duration::from_secs(60), || false), vec![7]);
        assert!(start.elapsed() < Duration::from_secs(10), "waited {:?}", start.elapsed());
    }

    #[test]
    fn waits_for_pictures_on_their_way_until_the_deadline() {
        let (tx, rx) = sync_channel(10);
        let start = Instant::now();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(1).unwrap();
            tx
        });
        // A picture on its way arrives within the wait: it joins the batch; then nothing
        // more comes, and the batch leaves at the deadline.
        let batch = collect(&rx, vec![0], 8, start + Duration::from_millis(400), || true);
        let waited = start.elapsed();
        assert_eq!(batch, vec![0, 1]);
        assert!(waited >= Duration::from_millis(400), "left after {waited:?}, before the deadline");
        drop(sender.join().unwrap());
    }

    #[test]
    fn stops_waiting_when_nothing_is_on_its_way_any_more() {
        let (_tx, rx) = sync_channel::<i32>(10);
        let on_way = std::sync::atomic::AtomicBool::new(true);
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                on_way.store(false, Ordering::SeqCst);
            });
            assert_eq!(collect(&rx, vec![0], 8, start + Duration::from_secs(60), || on_way.load(Ordering::SeqCst)), vec![0]);
        });
        assert!(start.elapsed() < Duration::from_secs(10), "waited {:?}", start.elapsed());
    }
}
