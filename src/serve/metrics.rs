//! `GET /metrics`: the server's counters in Prometheus text format (version 0.0.4), kept and
//! encoded by TiKV's `prometheus` crate in a registry of the server's own.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `lastlayer_http_requests_total` | counter | `path`, `status` | answered requests |
//! | `lastlayer_http_request_duration_seconds` | histogram | `path` | from the request's arrival to its answer |
//! | `lastlayer_refused_total` | counter | `reason` | 503s: `queue_full`, `timeout`, `shutting_down` |
//! | `lastlayer_batch_size` | histogram | | pictures per forward pass |
//! | `lastlayer_batch_duration_seconds` | histogram | | one forward pass (backbone and head) |
//! | `lastlayer_queue_depth` | gauge | | pictures waiting for the model, not yet in a batch |
//! | `lastlayer_queue_limit`, `lastlayer_max_batch` | gauge | | `--queue`, `--max-batch` |

use prometheus::{exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::error::{Error, Result};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Every metric the server keeps, in its own registry.
pub(super) struct Metrics {
    registry: Registry,
    /// Answered requests by route (`/predict`, `/health`, `/metrics`, `/`, or `other`) and
    /// status code.
    pub requests: IntCounterVec,
    /// Seconds from a request's arrival to its answer, by route.
    pub latency: HistogramVec,
    /// 503 answers by reason.
    pub refused: IntCounterVec,
    /// Pictures per forward pass.
    pub batch_size: Histogram,
    /// Seconds per forward pass.
    pub batch_seconds: Histogram,
    /// Pictures in the queue (accepted, decoded, not yet taken into a batch).
    pub queue_depth: IntGauge,
}

impl Metrics {
    /// The metrics of a server whose queue holds `queue` pictures and whose batches hold at
    /// most `max_batch`.
    pub fn new(queue: usize, max_batch: usize) -> Result<Metrics> {
        let failed = |e: prometheus::Error| Error::Server { message: format!("cannot set up the metrics ({e})") };
        // 5 ms to 41 s, doubling.
        let seconds = exponential_buckets(0.005, 2.0, 14).map_err(failed)?;
        let requests = IntCounterVec::new(Opts::new("lastlayer_http_requests_total", "HTTP requests answered, by route and status code"), &["path", "status"])
            .map_err(failed)?;
        let latency = HistogramVec::new(
            HistogramOpts::new("lastlayer_http_request_duration_seconds", "Seconds from a request's arrival to its answer, by route").buckets(seconds.clone()),
            &["path"],
        )
        .map_err(failed)?;
        let refused = IntCounterVec::new(
            Opts::new("lastlayer_refused_total", "Requests answered 503: queue_full (--queue), timeout (--timeout), shutting_down"),
            &["reason"],
        )
        .map_err(failed)?;
        let batch_size =
            Histogram::with_opts(HistogramOpts::new("lastlayer_batch_size", "Pictures per forward pass of the model").buckets(size_buckets(max_batch)))
                .map_err(failed)?;
        let batch_seconds = Histogram::with_opts(
            HistogramOpts::new("lastlayer_batch_duration_seconds", "Seconds per forward pass of the model (backbone and head)").buckets(seconds),
        )
        .map_err(failed)?;
        let queue_depth = IntGauge::new("lastlayer_queue_depth", "Pictures waiting for the model, not yet in a batch").map_err(failed)?;
        let queue_limit = IntGauge::new("lastlayer_queue_limit", "Pictures that may wait for the model (--queue)").map_err(failed)?;
        let batch_limit = IntGauge::new("lastlayer_max_batch", "Most pictures per forward pass (--max-batch)").map_err(failed)?;
        queue_limit.set(queue as i64);
        batch_limit.set(max_batch as i64);
        let registry = Registry::new();
        registry.register(Box::new(requests.clone())).map_err(failed)?;
        registry.register(Box::new(latency.clone())).map_err(failed)?;
        registry.register(Box::new(refused.clone())).map_err(failed)?;
        registry.register(Box::new(batch_size.clone())).map_err(failed)?;
        registry.register(Box::new(batch_seconds.clone())).map_err(failed)?;
        registry.register(Box::new(queue_depth.clone())).map_err(failed)?;
        registry.register(Box::new(queue_limit)).map_err(failed)?;
        registry.register(Box::new(batch_limit)).map_err(failed)?;
        // The reasons and the main answers appear at 0 before they first happen, so that a
        // scraper's rate() sees them from the start.
        for reason in ["queue_full", "timeout", "shutting_down"] {
            refused.with_label_values(&[reason]);
        }
        Ok(Metrics { registry, requests, latency, refused, batch_size, batch_seconds, queue_depth })
    }

    /// Everything, in Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String> {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(|e| Error::Server { message: format!("cannot encode the metrics ({e})") })
    }
}

/// 1, 2, 4, ... below `max_batch`, then `max_batch`: a full batch has a bucket of its own.
fn size_buckets(max_batch: usize) -> Vec<f64> {
    let mut b: Vec<f64> = std::iter::successors(Some(1usize), |&n| n.checked_mul(2)).take_while(|&n| n < max_batch).map(|n| n as f64).collect();
    b.push(max_batch.max(1) as f64);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_buckets_end_at_the_largest_batch() {
        assert_eq!(size_buckets(1), vec![1.0]);
        assert_eq!(size_buckets(8), vec![1.0, 2.0, 4.0, 8.0]);
        assert_eq!(size_buckets(12), vec![1.0, 2.0, 4.0, 8.0, 12.0]);
    }

    #[test]
    fn the_text_has_every_metric_with_its_type() {
        let m = Metrics::new(32, 8).unwrap();
        m.requests.with_label_values(&["/predict", "200"]).inc_by(3);
        m.batch_size.observe(3.0);
        m.queue_depth.set(2);
        let text = m.encode().unwrap();
        for line in [
            "# TYPE lastlayer_http_requests_total counter",
            "lastlayer_http_requests_total{path=\"/predict\",status=\"200\"} 3",
            "# TYPE lastlayer_batch_size histogram",
            "lastlayer_batch_size_bucket{le=\"2\"} 0",
            "lastlayer_batch_size_bucket{le=\"4\"} 1",
            "lastlayer_batch_size_sum 3",
            "lastlayer_queue_depth 2",
            "lastlayer_queue_limit 32",
            "lastlayer_max_batch 8",
            "lastlayer_refused_total{reason=\"timeout\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }
}
