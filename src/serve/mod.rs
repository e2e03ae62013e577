//! `lastlayer serve`: a trained run behind HTTP.
//!
//! - `POST /predict[?k=N]`: the body is the bytes of a JPEG or PNG picture; the answer is
//!   `{"model", "top": [{"class", "index", "probability"}...], "elapsed_ms"}`.
//! - `GET /health`: `{"status": "ok", "model", "classes"}`.
//! - `GET /`: a small page (no external scripts, styles or fonts) to try pictures in a browser.
//! - `GET /review.html`: the run's `lastlayer review` page, once `review` has written it (the
//!   page at `/` links to it then).
//!
//! Errors are JSON `{"error": "..."}`: 400 for a body that is not a picture or a bad `k`, 413
//! for a body over the limit, 503 when too many pictures are already waiting for the model.
//!
//! The rest of lastlayer is synchronous; only this module runs an async (tokio) runtime, and
//! no model work happens on its threads: pictures are decoded on tokio's blocking pool and
//! classified on one dedicated thread that owns the [`Classifier`] (libtorch modules are not
//! `Sync`), fed through a bounded queue with a one-shot reply per request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Bytes, HttpBody};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use crate::data::decode_picture;
use crate::error::{Error, Result};
use crate::pipeline::{ClassScore, Classifier, Session};

/// The page served at `GET /`.
const PAGE: &str = include_str!("page.html");

/// Classes returned when the request has no `?k=`.
pub const DEFAULT_TOP_K: usize = 5;

/// How much of a body over the limit is still read (and thrown away), and for how long, so
/// that a client that sends the whole body before reading the answer gets the 413 rather than
/// a connection reset. Bigger bodies get the 413 at once and the connection is closed.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// How long the requests in flight may take to finish after Ctrl-C or SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
}

/// A picture waiting for the model, and where its answer goes.
struct Job {
    picture: Tensor,
    k: usize,
    reply: oneshot::Sender<Result<Vec<ClassScore>>>,
}

/// What every handler shares.
struct AppState {
    jobs: mpsc::Sender<Job>,
    model: String,
    classes: Vec<String>,
    max_body_bytes: usize,
    queue: usize,
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
    worker: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).field("model", &self.model).field("run_dir", &self.run_dir).finish()
    }
}

impl Server {
    /// Loads the run `run_dir` (on its own inference thread) and binds the listening socket.
    /// A bad run folder fails here, before anything listens.
    pub fn bind(session: &Session, run_dir: &Path, opts: &ServeOptions) -> Result<Server> {
        if opts.max_body_bytes == 0 {
            return Err(Error::usage("--max-body-mb", "must be at least 1"));
        }
        if opts.queue == 0 {
            return Err(Error::usage("--queue", "must be at least 1"));
        }
        let (jobs, queue) = mpsc::channel::<Job>(opts.queue);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(String, Vec<String>)>>();
        let (session, dir) = (session.clone(), run_dir.to_path_buf());
        let worker = std::thread::Builder::new()
            .name("lastlayer-inference".into())
            .spawn(move || match Classifier::open(&session, &dir) {
                Ok(classifier) => {
                    let _ = ready_tx.send(Ok((classifier.model().to_string(), classifier.classes().to_vec())));
                    inference_loop(&classifier, queue);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| Error::Server { message: format!("cannot start the inference thread ({e})") })?;
        let ready = ready_rx.recv().map_err(|_| Error::Server { message: "the inference thread stopped while loading the run".into() });
        let (model, classes) = match ready {
            Ok(Ok(loaded)) => loaded,
            Ok(Err(e)) | Err(e) => {
                let _ = worker.join();
                return Err(e);
            }
        };
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
        let state = Arc::new(AppState { jobs, model: model.clone(), classes, max_body_bytes: opts.max_body_bytes, queue: opts.queue });
        Ok(Server { runtime, listener, addr, app: router(state, run_dir), model, run_dir: run_dir.to_path_buf(), worker })
    }

    /// The address listened on (with the port the system chose for `--port 0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The run's backbone (registry name).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Serves until Ctrl-C or SIGTERM, then lets the requests in flight finish (for at most
    /// [`SHUTDOWN_GRACE`], or until a second Ctrl-C).
    pub fn run(self) -> Result<()> {
        let Server { runtime, listener, addr, app, model, run_dir, worker } = self;
        tracing::info!("serving {} ({model}) on http://{addr}", run_dir.display());
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
                        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
                        _ = shutdown_signal() => {}
                    }
                } => {
                    tracing::warn!("stopping without waiting for the requests still in flight");
                    Ok(())
                }
            }
        });
        // The router (and with it the queue's sender) is gone: the inference thread ends.
        drop(runtime);
        let _ = worker.join();
        served.map_err(|e| Error::Server { message: format!("stopped with an error ({e})") })
    }
}

/// The inference thread: classifies queued pictures one at a time until every sender is gone.
fn inference_loop(classifier: &Classifier, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        if job.reply.is_closed() {
            continue; // the client went away while the picture waited
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| classifier.classify(std::slice::from_ref(&job.picture), job.k)))
            .unwrap_or_else(|_| Err(Error::Server { message: "libtorch failed on this picture".into() }))
            .map(|mut tops| tops.pop().unwrap_or_default());
        let _ = job.reply.send(result);
    }
}

fn router(state: Arc<AppState>, run_dir: &Path) -> Router {
    let limit = state.max_body_bytes;
    let review = crate::pipeline::page_path(run_dir);
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/review.html", get(move || review_page(review.clone())))
        .route("/health", get(health))
        .route("/predict", post(predict))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page; there are GET /, GET /health and POST /predict") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "wrong method; there are GET /, GET /health and POST /predict")
        })
        // The limit for axum's own body extractors; /predict reads its body itself (see
        // `read_body`) to answer an oversized one cleanly.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(log_request))
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

/// One log line per request: method, path, status, milliseconds.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path, start) = (req.method().clone(), req.uri().path().to_string(), Instant::now());
    let response = next.run(req).await;
    tracing::info!("{method} {path} {} {:.1} ms", response.status().as_u16(), start.elapsed().as_secs_f64() * 1e3);
    response
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({ "status": "ok", "model": st.model, "classes": st.classes })).into_response()
}

#[derive(Debug, Deserialize)]
struct PredictQuery {
    k: Option<usize>,
}

async fn predict(State(st): State<Arc<AppState>>, query: std::result::Result<Query<PredictQuery>, QueryRejection>, req: Request) -> Response {
    let start = Instant::now();
    // The body first, whatever the answer: a connection is left clean only once it is read.
    let body = match read_body(req, st.max_body_bytes).await {
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
    let picture = match tokio::task::spawn_blocking(move || decode_picture(&body)).await {
        Ok(Ok(picture)) => picture,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding failed ({e})")),
    };
    let (reply, answer) = oneshot::channel();
    match st.jobs.try_send(Job { picture, k: k.min(n), reply }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("busy: {} pictures are already waiting for the model (--queue); try again shortly", st.queue),
            );
            r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return r;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, "the model is not running (shutting down)"),
    }
    match answer.await {
        Ok(Ok(top)) => Json(json!({
            "model": st.model,
            "top": top,
            "elapsed_ms": (start.elapsed().as_secs_f64() * 1e4).round() / 10.0,
        }))
        .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("classification failed: {e}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped before answering"),
    }
}

/// Reads a request body of at most `limit` bytes. A longer one is answered with 413, at once
/// when its declared length is far over (or the client waits for `100 Continue`), otherwise
/// after reading and discarding the rest, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn read_body(req: Request, limit: usize) -> std::result::Result<Bytes, Response> {
    let too_large = || {
        error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over the limit of {} (--max-body-mb); send a smaller JPEG or PNG", mib(limit)))
    };
    let closing = |mut r: Response| {
        r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        r
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
            None => next.await,
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
