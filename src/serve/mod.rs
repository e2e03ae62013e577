//! `lastlayer serve`: a trained run behind HTTP.
//!
//! - `POST /predict[?k=N]`: the body is the bytes of a picture (JPEG, PNG, HEIC... any format
//!   `crate::data::decode` reads); the answer is
//!   `{"model", "top": [{"class", "index", "probability"}...], "elapsed_ms"}`.
//! - `GET /health`: `{"status": "ok", "model", "classes"}`.
//! - `GET /metrics`: request counts, latency and batch-size histograms and the queue's depth,
//!   in Prometheus text format ([`metrics`]).
//! - `GET /`: a small page (no external scripts, styles or fonts) to try pictures in a browser.
//! - `GET /review.html`: the run's `lastlayer review` page, once `review` has written it (the
//!   page at `/` links to it then).
//!
//! Errors are JSON `{"error": "..."}`: 400 for a body that is not a picture or a bad `k`, 408
//! for a body that has not arrived within `--timeout`, 413 for a body over the limit, 503 (with
//! `Retry-After`) when `--queue` pictures are already waiting for the model or when the answer
//! is not ready within `--timeout`.
//!
//! The rest of lastlayer is synchronous; only this module runs an async (tokio) runtime, and
//! no model work happens on its threads. A request's body is read (at most `--queue` +
//! `--max-batch` bodies at once), decoded and resized on tokio's blocking pool (as many at once
//! as [`decoders_for`] says: a core less than there are, on the CPU) and queued (at most `--queue` pictures); one dedicated thread owns the
//! [`Classifier`] (libtorch modules are not `Sync`) and runs the queued pictures in batches
//! ([`batcher`]), answering each request through its own one-shot channel. Memory is bounded by
//! those limits whatever the load: the bodies being read (each at most `--max-body-mb`), the
//! pictures being decoded, and `--queue` + `--max-batch` prepared pictures. A slow or idle
//! client holds at most a body slot, until `--timeout`, and never the model thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{oneshot, Semaphore};

use crate::backbone::{default_batch_size, Engine};
use crate::data::decode_picture;
use crate::error::{Error, Result};
use crate::pipeline::{Classifier, Preparer, Session};

mod batcher;
pub mod metrics;

use batcher::{Arriving, Batching, Job};
use metrics::Metrics;

/// The page served at `GET /`.
const PAGE: &str = include_str!("page.html");

/// Classes returned when the request has no `?k=`.
pub const DEFAULT_TOP_K: usize = 5;

/// How much of a body over the limit is still read (and thrown away), and for how long, so
/// that a client that sends the whole body before reading the answer gets the 413 rather than
/// a connection reset. Bigger bodies get the 413 at once and the connection is closed.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How long after `--timeout` the server still waits, after Ctrl-C or SIGTERM, for the
/// requests in flight (each of which is answered within `--timeout` of its arrival).
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Pictures decoded at once with `cores` cores when the model runs on `device`: one a core on a
/// GPU; on the CPU one fewer (at least one), since the model thread's forward pass keeps the
/// cores busy and more decoding threads than that only take turns with it. Measured with 16
/// clients on 2 cores (docs/performance.md, "Serving under load"): one decoding thread served
/// 26.2 pictures/s on average over 7 rounds, at least 0.93x `extract` in each; two served 25.2
/// over 9 rounds, under 0.9x in 4.
pub fn decoders_for(cores: usize, device: tch::Device) -> usize {
    if device.is_cuda() {
        cores.max(1)
    } else {
        cores.saturating_sub(1).max(1)
    }
}

/// `--max-wait-ms`'s default: how long a picture may wait for the requests still being decoded
/// to join its batch (measured in docs/performance.md).
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(5);

/// `--timeout`'s default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server listens and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address or host name to listen on.
    pub host: String,
    /// Port; 0 lets the system choose one (see [`Server::local_addr`]).
    pub port: u16,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Pictures that may wait for the model; requests beyond get 503.
    pub queue: usize,
    /// Most pictures per forward pass; `None`: the extraction batch size of the run's device
    /// ([`default_batch_size`]).
    pub max_batch: Option<usize>,
    /// Longest a picture waits for others on their way to join its batch.
    pub max_wait: Duration,
    /// Longest a request may take from its arrival to its answer; past it, 503 (or 408 while
    /// its body is still arriving).
    pub timeout: Duration,
    /// Whether answers carry the run's unknown verdict (`--reject`).
    pub reject: crate::pipeline::Reject,
}

impl ServeOptions {
    /// The defaults (`lastlayer serve`'s), listening on `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> ServeOptions {
        ServeOptions {
            host: host.into(),
            port,
            max_body_bytes: 16 << 20,
            queue: 32,
            max_batch: None,
            max_wait: DEFAULT_MAX_WAIT,
            timeout: DEFAULT_TIMEOUT,
            reject: crate::pipeline::Reject::On,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_body_bytes == 0 {
            return Err(Error::usage("--max-body-mb", "must be at least 1"));
        }
        if self.queue == 0 {
            return Err(Error::usage("--queue", "must be at least 1"));
        }
        if self.max_batch == Some(0) {
            return Err(Error::usage("--max-batch", "must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(Error::usage("--timeout", "must be more than 0 seconds"));
        }
        if self.max_wait >= self.timeout {
            return Err(Error::usage(
                "--max-wait-ms",
                format!(
                    "{} ms is not shorter than --timeout ({}); a few milliseconds is usual",
                    self.max_wait.as_millis(),
                    seconds(self.timeout)
                ),
            ));
        }
        Ok(())
    }
}

/// What the inference thread reports once the run is loaded.
struct Loaded {
    model: String,
    classes: Vec<String>,
    preparer: Preparer,
    device: tch::Device,
    engine: Engine,
}

/// What the handlers and the inference thread share.
struct Shared {
    arriving: Arriving,
    metrics: Metrics,
}

/// What the inference thread needs to start batching, sent once the socket is bound.
struct Start {
    queue: std::sync::mpsc::Receiver<Job>,
    batching: Batching,
    shared: Arc<Shared>,
}

/// What every handler shares.
struct AppState {
    jobs: SyncSender<Job>,
    model: String,
    classes: Vec<String>,
    preparer: Preparer,
    max_body_bytes: usize,
    queue: usize,
    timeout: Duration,
    /// Bodies being read or decoded: `--queue` + `--max-batch` at once.
    bodies: Arc<Semaphore>,
    /// Pictures being decoded at once: [`decoders_for`].
    decoders: Arc<Semaphore>,
    shared: Arc<Shared>,
}

/// A server bound to its address with the run loaded, not yet answering: [`Server::run`]
/// serves until Ctrl-C or SIGTERM.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: Router,
    model: String,
    run_dir: PathBuf,
    batching: Batching,
    engine: Engine,
    timeout: Duration,
    worker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).field("model", &self.model).field("run_dir", &self.run_dir).finish()
    }
}

impl Server {
    /// Loads the run `run_dir` (on its own inference thread) and binds the listening socket.
    /// A bad run folder or a bad option fails here, before anything listens.
    pub fn bind(session: &Session, run_dir: &Path, opts: &ServeOptions) -> Result<Server> {
        opts.validate()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Loaded>>();
        let (start_tx, start_rx) = std::sync::mpsc::channel::<Start>();
        let (session, dir, reject) = (session.clone(), run_dir.to_path_buf(), opts.reject);
        let worker = std::thread::Builder::new()
            .name("lastlayer-inference".into())
            .spawn(move || {
                // A server sees many pictures: the engine extraction would use for many of them
                // (the frozen one on the CPU, for the networks it speeds up), warmed up on a
                // blank picture before anything listens.
                let opened = Classifier::open_with(&session, &dir, reject).and_then(|mut classifier| {
                    classifier.set_engine(Engine::choose(classifier.device(), usize::MAX, classifier.architecture()));
                    classifier.warm_up()?;
                    Ok(classifier)
                });
                let classifier = match opened {
                    Ok(classifier) => classifier,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let loaded = Loaded {
                    model: classifier.model().to_string(),
                    classes: classifier.classes().to_vec(),
                    preparer: classifier.preparer(),
                    device: classifier.device(),
                    engine: classifier.engine(),
                };
                let _ = ready_tx.send(Ok(loaded));
                // Nothing comes when binding failed: the thread ends.
                if let Ok(Start { queue, batching, shared }) = start_rx.recv() {
                    batcher::run(&classifier, queue, batching, &shared.arriving, &shared.metrics);
                }
            })
            .map_err(|e| Error::Server { message: format!("cannot start the inference thread ({e})") })?;
        let ready = ready_rx.recv().map_err(|_| Error::Server { message: "the inference thread stopped while loading the run".into() });
        let loaded = match ready {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) | Err(e) => {
                let _ = worker.join();
                return Err(e);
            }
        };
        let batching = Batching { max_batch: opts.max_batch.unwrap_or_else(|| default_batch_size(loaded.device)), max_wait: opts.max_wait };
        let engine = loaded.engine;
        let bound = Self::listen(opts, batching, loaded);
        let (runtime, listener, addr, state, queue) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                drop(start_tx);
                let _ = worker.join();
                return Err(e);
            }
        };
        let model = state.model.clone();
        start_tx
            .send(Start { queue, batching, shared: state.shared.clone() })
            .map_err(|_| Error::Server { message: "the inference thread stopped after loading the run".into() })?;
        Ok(Server { runtime, listener, addr, app: router(state, run_dir), model, run_dir: run_dir.to_path_buf(), batching, engine, timeout: opts.timeout, worker })
    }

    /// The runtime, the bound socket, the handlers' state and the queue's receiving end.
    #[allow(clippy::type_complexity)] // used once, by `bind`
    fn listen(
        opts: &ServeOptions,
        batching: Batching,
        loaded: Loaded,
    ) -> Result<(tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr, Arc<AppState>, std::sync::mpsc::Receiver<Job>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("lastlayer-http")
            .build()
            .map_err(|e| Error::Server { message: format!("cannot start the async runtime ({e})") })?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))).map_err(|e| {
            let flag = if e.kind() == std::io::ErrorKind::AddrInUse { "--port" } else { "--host" };
            Error::usage(flag, format!("cannot listen on {}:{} ({e}); choose another --host or --port (--port 0 picks a free one)", opts.host, opts.port))
        })?;
        let addr = listener.local_addr().map_err(|e| Error::Server { message: format!("cannot read the listening address ({e})") })?;
        let (jobs, queue) = sync_channel::<Job>(opts.queue);
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let state = Arc::new(AppState {
            jobs,
            model: loaded.model,
            classes: loaded.classes,
            preparer: loaded.preparer,
            max_body_bytes: opts.max_body_bytes,
            queue: opts.queue,
            timeout: opts.timeout,
            bodies: Arc::new(Semaphore::new(opts.queue.saturating_add(batching.max_batch).min(Semaphore::MAX_PERMITS))),
            decoders: Arc::new(Semaphore::new(decoders_for(cores, loaded.device))),
            shared: Arc::new(Shared { arriving: Arriving::default(), metrics: Metrics::new(opts.queue, batching.max_batch)? }),
        });
        Ok((runtime, listener, addr, state, queue))
    }

    /// The address listened on (with the port the system chose for `--port 0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The run's backbone (registry name).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Most pictures per forward pass (`--max-batch`, or its default for the run's device).
    pub fn max_batch(&self) -> usize {
        self.batching.max_batch
    }

    /// Serves until Ctrl-C or SIGTERM, then lets the requests in flight finish: each is
    /// answered within `--timeout` of its arrival, and the server waits at most that plus
    /// [`SHUTDOWN_MARGIN`] (or until a second Ctrl-C).
    pub fn run(self) -> Result<()> {
        let Server { runtime, listener, addr, app, model, run_dir, batching, engine, timeout, worker } = self;
        let shapes = match engine {
            Engine::Frozen => " (a power of two or the most; the rest waits for the next)",
            Engine::Eager => "",
        };
        tracing::info!(
            "serving {} ({model}, engine {engine:?}) on http://{addr}: batches of at most {} pictures{shapes}, waiting at most {} ms for one to fill; --timeout {}",
            run_dir.display(),
            batching.max_batch,
            batching.max_wait.as_millis(),
            seconds(timeout)
        );
        let grace = timeout + SHUTDOWN_MARGIN;
        let served = runtime.block_on(async move {
            let stopping = Arc::new(tokio::sync::Notify::new());
            let signalled = stopping.clone();
            let server = axum::serve(listener, app).with_graceful_shutdown(async move {
                shutdown_signal().await;
                signalled.notify_one();
            });
            tokio::select! {
                served = server => served,
                _ = async {
                    stopping.notified().await;
                    tokio::select! {
                        _ = tokio::time::sleep(grace) => {}
                        _ = shutdown_signal() => {}
                    }
                } => {
                    tracing::warn!("stopping without waiting for the requests still in flight");
                    Ok(())
                }
            }
        });
        // The router (and with it the queue's sender) is gone: the inference thread finishes
        // what is queued (skipping pictures nobody waits for) and ends.
        drop(runtime);
        let _ = worker.join();
        served.map_err(|e| Error::Server { message: format!("stopped with an error ({e})") })
    }
}

fn router(state: Arc<AppState>, run_dir: &Path) -> Router {
    let limit = state.max_body_bytes;
    let review = crate::pipeline::page_path(run_dir);
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/review.html", get(move || review_page(review.clone())))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/predict", post(predict))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page; there are GET /, GET /health, GET /metrics and POST /predict") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method; there are GET /, GET /health, GET /metrics and POST /predict")
        })
        // The limit for axum's own body extractors; /predict reads its body itself (see
        // `read_body`) to answer an oversized one cleanly.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// `GET /review.html`: the run's `lastlayer review` page, read when asked for (404 until
/// `review` has written it).
async fn review_page(path: PathBuf) -> Response {
    let read = path.clone();
    match tokio::task::spawn_blocking(move || std::fs::read_to_string(read)).await {
        Ok(Ok(page)) => Html(page).into_response(),
        _ => error(StatusCode::NOT_FOUND, format!("no review page yet: run `lastlayer review {}`", path.parent().unwrap_or(&path).display())),
    }
}

/// A JSON error answer.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// A 503 with `Retry-After`, counted under `reason` in `lastlayer_refused_total`.
fn unavailable(st: &AppState, reason: &str, message: impl Into<String>) -> Response {
    st.shared.metrics.refused.with_label_values(&[reason]).inc();
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message);
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// The 503 of a request that waited longer than `--timeout`.
fn timed_out(st: &AppState, waiting_for: &str) -> Response {
    unavailable(
        st,
        "timeout",
        format!("timed out: {waiting_for} for longer than --timeout ({}); the server is busy, try again shortly", seconds(st.timeout)),
    )
}

/// `response` with `Connection: close`, for a request whose body was not read.
fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

/// One log line per request (method, path, status, milliseconds), and its count and latency
/// in the metrics, by route.
async fn observe(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let (method, path, start) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let response = next.run(req).await;
    let secs = start.elapsed().as_secs_f64();
    let status = response.status();
    tracing::info!("{method} {path} {} {:.1} ms", status.as_u16(), secs * 1e3);
    let metrics = &st.shared.metrics;
    metrics.requests.with_label_values(&[route.as_str(), status.as_str()]).inc();
    metrics.latency.with_label_values(&[route.as_str()]).observe(secs);
    response
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "status": "ok", "model": st.model, "classes": st.classes })).into_response()
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    match st.shared.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    k: Option<usize>,
}

async fn predict(State(st): State<Arc<AppState>>, query: std::result::Result<Query<PredictQuery>, QueryRejection>, req: Request) -> Response {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + st.timeout;
    // A slot for the body (bounded memory); while none is free the body stays unread.
    let body_slot = match tokio::time::timeout_at(deadline, st.bodies.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_)) => return closing(unavailable(&st, "shutting_down", "the server is shutting down")),
        Err(_) => return closing(timed_out(&st, "waited for a slot to read the picture")),
    };
    // The body first, whatever the answer: a connection is left clean only once it is read.
    let body = match read_body(req, st.max_body_bytes, deadline, st.timeout).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let n = st.classes.len();
    let k = match query {
        Ok(Query(q)) => q.k.unwrap_or(DEFAULT_TOP_K),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query string ({}); use ?k=N, N from 1 to {n}", e.body_text())),
    };
    if k == 0 {
        return error(StatusCode::BAD_REQUEST, format!("k must be at least 1 (it is at most the number of classes, {n})"));
    }
    // On its way to the queue: the model thread may wait (--max-wait-ms) for it to join a batch.
    let arriving = st.shared.arriving.enter();
    let decode_slot = match tokio::time::timeout_at(deadline, st.decoders.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        Ok(Err(_)) => return unavailable(&st, "shutting_down", "the server is shutting down"),
        Err(_) => return timed_out(&st, "waited to be decoded"),
    };
    let preparer = st.preparer.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let _slots = (body_slot, decode_slot);
        decode_picture(&body).and_then(|picture| preparer.prepare(&picture))
    })
    .await;
    let input = match decoded {
        Ok(Ok(input)) => input,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding failed ({e})")),
    };
    let (reply, answer) = oneshot::channel();
    let depth = &st.shared.metrics.queue_depth;
    depth.inc();
    match st.jobs.try_send(Job { input, k: k.min(n), queued: Instant::now(), reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            depth.dec();
            return unavailable(&st, "queue_full", format!("busy: {} pictures are already waiting for the model (--queue); try again shortly", st.queue));
        }
        Err(TrySendError::Disconnected(_)) => {
            depth.dec();
            return unavailable(&st, "shutting_down", "the model is not running (shutting down)");
        }
    }
    drop(arriving);
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(Ok(answer))) => {
            let mut body = json!({
                "model": st.model,
                "top": answer.top,
                "elapsed_ms": (start.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            });
            if let Some(v) = answer.verdict {
                body["unknown"] = json!(v.unknown);
                body["score"] = json!(v.score);
            }
            Json(body).into_response()
        }
        Ok(Ok(Err(e))) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("classification failed: {e}")),
        Ok(Err(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped before answering"),
        Err(_) => timed_out(&st, "waited for the model"),
    }
}

/// `d` in seconds, as a user writes it (`30 s`, `0.5 s`).
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Reads a request body of at most `limit` bytes. A longer one is answered with 413, at once
/// when its declared length is far over (or the client waits for `100 Continue`), otherwise
/// after reading and discarding the rest, within [`DRAIN_BYTES`] and [`DRAIN_TIME`]. A body
/// not all there by `deadline` (`timeout` after the request's arrival) is answered with 408.
async fn read_body(req: Request, limit: usize, deadline: tokio::time::Instant, timeout: Duration) -> std::result::Result<Bytes, Response> {
    let too_large = || {
        error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over the limit of {} (--max-body-mb); send a smaller picture", mib(limit)))
    };
    let too_slow = || {
        closing(error(
            StatusCode::REQUEST_TIMEOUT,
            format!("the body did not arrive within --timeout ({}); send it at once, or raise --timeout", seconds(timeout)),
        ))
    };
    let (declared, expects_continue) = {
        let header = |name| req.headers().get(name).and_then(|v: &header::HeaderValue| v.to_str().ok()).map(str::to_ascii_lowercase);
        let declared = header(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<usize>().ok());
        (declared, header(header::EXPECT).is_some_and(|v| v.contains("100-continue")))
    };
    if let Some(len) = declared.filter(|&len| len > limit) {
        if expects_continue || len > limit.saturating_add(DRAIN_BYTES) {
            return Err(closing(too_large()));
        }
    }
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let mut over = 0usize;
    let mut drain_until = None;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx));
        let frame = match drain_until {
            None => match tokio::time::timeout_at(deadline, next).await {
                Ok(frame) => frame,
                Err(_) => return Err(too_slow()),
            },
            Some(until) => match tokio::time::timeout_at(until, next).await {
                Ok(frame) => frame,
                Err(_) => return Err(closing(too_large())),
            },
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| error(StatusCode::BAD_REQUEST, format!("cannot read the body ({e})")))?;
        let Ok(data) = frame.into_data() else { continue };
        if over == 0 && buf.len() + data.len() <= limit {
            buf.extend_from_slice(&data);
            continue;
        }
        if over == 0 {
            drain_until = Some(tokio::time::Instant::now() + DRAIN_TIME);
            buf = Vec::new();
        }
        over += data.len();
        if over > DRAIN_BYTES {
            return Err(closing(too_large()));
        }
    }
    if over > 0 {
        return Err(too_large());
    }
    Ok(Bytes::from(buf))
}

fn mib(bytes: usize) -> String {
    let m = bytes as f64 / 1048576.0;
    if m.fract() == 0.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.2} MiB")
    }
}

/// Resolves on Ctrl-C or SIGTERM (never, for a signal whose handler cannot be installed).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

#[cfg(test)]
mod decoder_tests {
    #[test]
    fn decoding_leaves_the_model_a_core_on_the_cpu_only() {
        assert_eq!(super::decoders_for(2, tch::Device::Cpu), 1);
        assert_eq!(super::decoders_for(1, tch::Device::Cpu), 1);
        assert_eq!(super::decoders_for(16, tch::Device::Cpu), 15);
        assert_eq!(super::decoders_for(16, tch::Device::Cuda(0)), 16);
    }
}
