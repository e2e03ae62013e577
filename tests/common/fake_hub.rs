//! A fake Hugging Face Hub and CIFAR-10 host on 127.0.0.1 that answer as the real ones do,
//! on two ports: the "Hub" and the "CDN".
//!
//! - An LFS file (`serve_hub_file*`, any file over 1 KiB): `GET`/`HEAD
//!   /{repo}/resolve/{rev}/{file}` answers **302** to the CDN host with `x-linked-etag` (the
//!   sha256, quoted), `x-linked-size`, `x-repo-commit`, and a plain `etag` that is a 40-hex git
//!   object id, *not* the sha256. The CDN serves the bytes with and without `Range`.
//! - A small file (`serve_hub_small_file`): a **relative 307** to
//!   `/api/resolve-cache/models/{repo}/{commit}/{file}` on the Hub, which serves it with a
//!   40-hex `etag` and no `x-linked-etag`.
//! - A data set (`serve_dataset`): the API routes `/api/datasets/{repo}/revision/{rev}`, the
//!   recursive tree `/api/datasets/{repo}/tree/{rev}[/{dir}]` paginated by `Link` headers,
//!   `/api/datasets/{repo}/parquet` (`serve_parquet_listing`), and its files as LFS 302s;
//!   `gate` answers 401 without the token, as for a gated repository.
//! - An archive (`serve_archive`): the Hub host redirects (302) across hosts to the CDN,
//!   which may label it `Content-Encoding: gzip` as some servers do.
//!
//! Faults, for the next N responses that carry a file's bytes: [`Fault::CutAt`] (close the
//! connection at a fraction of the file), [`Fault::StallAt`] (send that much, then nothing);
//! and, for all of them, `ignore_range` (answer 200 with the whole file, as some proxies do).
//! Every request is logged with its headers, and every body response with the bytes sent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sha256;

/// A file the fake server serves.
#[derive(Clone)]
pub struct Served {
    pub bytes: Vec<u8>,
    /// Sent as `etag` (quoted) when set.
    pub etag: Option<String>,
    /// Sent as `x-repo-commit` when set.
    pub commit: Option<String>,
}

/// A failure the server plays on the next responses that carry file bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Close the connection once this fraction of the whole file has been sent.
    CutAt(f64),
    /// Send up to this fraction of the file, then nothing (until the client gives up).
    StallAt(f64),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// "hub" or "cdn".
    pub host: &'static str,
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    /// Status answered.
    pub status: u16,
    /// Body bytes written (for file responses: what the client was sent).
    pub body_sent: usize,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

enum Route {
    /// 200 with these bytes (and headers).
    File { bytes: Arc<Vec<u8>>, headers: Vec<(String, String)> },
    /// A redirect; `location` is relative or absolute.
    Redirect { status: u16, location: String, headers: Vec<(String, String)> },
}

#[derive(Default)]
struct State {
    hub: HashMap<String, Route>,
    cdn: HashMap<String, Route>,
    log: Vec<Logged>,
    faults: Vec<Fault>,
    ignore_range: bool,
    slow: bool,
    /// Path prefixes (`/api/datasets/o/n/`, `/datasets/o/n/`) answered 401 without this token.
    gated: Vec<(String, String)>,
}

/// The two servers. Dropping it stops them (and ends any stalled answer).
pub struct FakeServer {
    /// The Hub's address (`http://127.0.0.1:PORT`): HF_ENDPOINT.
    pub base: String,
    /// The CDN's address, another port.
    pub cdn_base: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    addrs: Vec<std::net::SocketAddr>,
}

impl FakeServer {
    pub fn start() -> Self {
        let state: Arc<Mutex<State>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        let mut bases = Vec::new();
        for host in ["hub", "cdn"] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            addrs.push(addr);
            bases.push(format!("http://{addr}"));
            let (state, stop) = (state.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (state, stop) = (state.clone(), stop.clone());
                    std::thread::spawn(move || handle(host, conn, &state, &stop));
                }
            }));
        }
        let cdn_base = bases.pop().unwrap();
        let base = bases.pop().unwrap();
        FakeServer { base, cdn_base, state, stop, threads, addrs }
    }

    /// Serves `bytes` at `path` on the Hub host, 200, with Range support (a plain mirror).
    pub fn serve(&self, path: &str, served: Served) {
        let mut headers = Vec::new();
        if let Some(etag) = &served.etag {
            headers.push(("etag".to_string(), format!("\"{etag}\"")));
        }
        if let Some(commit) = &served.commit {
            headers.push(("x-repo-commit".to_string(), commit.clone()));
        }
        self.state.lock().unwrap().hub.insert(path.to_string(), Route::File { bytes: Arc::new(served.bytes), headers });
    }

    /// Serves `bytes` as a Hub repo's LFS file at revision `main` and at `commit`: a 302 to
    /// the CDN with its sha256 as `x-linked-etag`.
    pub fn serve_hub_file(&self, repo: &str, file: &str, bytes: Vec<u8>, commit: &str) {
        let etag = sha256(&bytes);
        self.serve_hub_file_with_etag(repo, file, bytes, commit, &etag);
    }

    /// As [`serve_hub_file`], with `linked_etag` as `x-linked-etag` (a wrong one, to test).
    pub fn serve_hub_file_with_etag(&self, repo: &str, file: &str, bytes: Vec<u8>, commit: &str, linked_etag: &str) {
        self.serve_lfs(repo, file, bytes, commit, &["main", commit], linked_etag);
    }

    /// Serves `bytes` as a small (non-LFS) file: a relative 307 to `/api/resolve-cache/...`.
    pub fn serve_hub_small_file(&self, repo: &str, file: &str, bytes: Vec<u8>, commit: &str) {
        let cache_path = format!("/api/resolve-cache/models/{repo}/{commit}/{file}");
        let id = git_like_id(&bytes);
        let mut st = self.state.lock().unwrap();
        for rev in ["main", commit] {
            let headers = vec![("x-repo-commit".to_string(), commit.to_string()), ("etag".to_string(), format!("\"{id}\""))];
            st.hub.insert(format!("/{repo}/resolve/{rev}/{file}"), Route::Redirect { status: 307, location: cache_path.clone(), headers });
        }
        let headers = vec![("x-repo-commit".to_string(), commit.to_string()), ("etag".to_string(), format!("\"{id}\""))];
        st.hub.insert(cache_path, Route::File { bytes: Arc::new(bytes), headers });
    }

    /// Serves an archive at `path` on the Hub host as a 302 to the CDN host (another port),
    /// which serves the bytes, labelled `Content-Encoding: gzip` when `gzip_label`.
    pub fn serve_archive(&self, path: &str, bytes: Vec<u8>, gzip_label: bool) {
        let cdn_path = format!("/mirror{path}");
        let mut headers = vec![("content-type".to_string(), "application/x-gzip".to_string())];
        if gzip_label {
            headers.push(("content-encoding".to_string(), "gzip".to_string()));
        }
        let mut st = self.state.lock().unwrap();
        st.cdn.insert(cdn_path.clone(), Route::File { bytes: Arc::new(bytes), headers });
        let location = format!("{}{cdn_path}", self.cdn_base);
        st.hub.insert(path.to_string(), Route::Redirect { status: 302, location, headers: vec![] });
    }

    /// Serves data set `repo` at `revision` (`main`, or `refs/convert/parquet`) = `commit` as
    /// the real Hub does: `/api/datasets/{repo}/revision/{rev}` (sha, siblings, cardData),
    /// the recursive tree `/api/datasets/{repo}/tree/{rev}[/{dir}]` in pages of `page` entries
    /// linked by `Link: <...>; rel="next"`, and each file at `/datasets/{repo}/resolve/{rev}/{file}`
    /// (an LFS 302 to the CDN). The revision is quoted in URLs (`refs%2Fconvert%2Fparquet`).
    pub fn serve_dataset(&self, repo: &str, revision: &str, commit: &str, files: &[(String, Vec<u8>)], card: serde_json::Value, page: usize) {
        let rev = revision.replace('/', "%2F");
        for (path, bytes) in files {
            self.serve_lfs(&format!("datasets/{repo}"), path, bytes.clone(), commit, &[&rev, commit], &sha256(bytes));
        }
        let siblings: Vec<serde_json::Value> = files.iter().map(|(p, _)| serde_json::json!({"rfilename": p})).collect();
        let info = serde_json::json!({"id": repo, "sha": commit, "private": false, "gated": false, "siblings": siblings, "cardData": card});
        for r in [rev.as_str(), commit] {
            self.serve_json(&format!("/api/datasets/{repo}/revision/{r}"), &info, vec![]);
        }
        // The tree: directories and files, under every folder, paginated.
        let mut dirs: Vec<String> = vec![String::new()];
        for (p, _) in files {
            let parts: Vec<&str> = p.split('/').collect();
            for i in 1..parts.len() {
                dirs.push(parts[..i].join("/"));
            }
        }
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            let under = |p: &str| dir.is_empty() || p.starts_with(&format!("{dir}/"));
            let mut entries: Vec<serde_json::Value> = dirs
                .iter()
                .filter(|d| !d.is_empty() && *d != dir && under(d))
                .map(|d| serde_json::json!({"type": "directory", "oid": git_like_id(d.as_bytes()), "size": 0, "path": d}))
                .collect();
            for (p, bytes) in files.iter().filter(|(p, _)| under(p)) {
                entries.push(serde_json::json!({"type": "file", "oid": git_like_id(bytes), "size": bytes.len(), "path": p,
                    "lfs": {"oid": super::sha256(bytes), "size": bytes.len(), "pointerSize": 134}}));
            }
            for r in [rev.as_str(), commit] {
                let path = if dir.is_empty() { format!("/api/datasets/{repo}/tree/{r}") } else { format!("/api/datasets/{repo}/tree/{r}/{dir}") };
                let pages: Vec<&[serde_json::Value]> = entries.chunks(page.max(1)).collect();
                for (i, chunk) in pages.iter().enumerate() {
                    let key = if i == 0 { path.clone() } else { format!("{path}?recursive=true&expand=false&cursor={i}") };
                    let mut headers = vec![];
                    if i + 1 < pages.len() {
                        headers.push(("link".to_string(), format!("<{}{path}?recursive=true&expand=false&cursor={}>; rel=\"next\"", self.base, i + 1)));
                    }
                    self.serve_json(&key, &serde_json::Value::Array(chunk.to_vec()), headers);
                }
                if pages.is_empty() {
                    self.serve_json(&path, &serde_json::json!([]), vec![]);
                }
            }
        }
    }

    /// Serves `/api/datasets/{repo}/parquet`: the Hub's list of its conversion,
    /// `{config: {split: [urls]}}`, built from the files `{config}/{split}/NNNN.parquet`.
    pub fn serve_parquet_listing(&self, repo: &str, files: &[String]) {
        let mut listing = serde_json::Map::new();
        for f in files {
            let parts: Vec<&str> = f.split('/').collect();
            let (config, split, name) = (parts[0], parts[1], parts[2]);
            let n: usize = name.trim_end_matches(".parquet").parse().unwrap();
            let url = format!("{}/api/datasets/{repo}/parquet/{config}/{split}/{n}.parquet", self.base);
            let c = listing.entry(config.to_string()).or_insert_with(|| serde_json::json!({}));
            c.as_object_mut().unwrap().entry(split.to_string()).or_insert_with(|| serde_json::json!([])).as_array_mut().unwrap().push(url.into());
        }
        self.serve_json(&format!("/api/datasets/{repo}/parquet"), &serde_json::Value::Object(listing), vec![]);
    }

    /// Answers 401 to every request about data set `repo` that lacks `Authorization: Bearer
    /// {token}`, as the Hub does for a gated repository.
    pub fn gate(&self, repo: &str, token: &str) {
        let mut st = self.state.lock().unwrap();
        st.gated.push((format!("/api/datasets/{repo}/"), token.to_string()));
        st.gated.push((format!("/datasets/{repo}/"), token.to_string()));
    }

    /// Replaces the bytes the CDN serves for a file already served (a damaged upstream copy).
    pub fn replace_cdn_bytes(&self, old: &[u8], new: Vec<u8>) {
        let mut st = self.state.lock().unwrap();
        for route in st.cdn.values_mut() {
            if let Route::File { bytes, .. } = route {
                if bytes.as_slice() == old {
                    *bytes = Arc::new(new.clone());
                }
            }
        }
    }

    fn serve_json(&self, path: &str, body: &serde_json::Value, mut headers: Vec<(String, String)>) {
        headers.push(("content-type".to_string(), "application/json; charset=utf-8".to_string()));
        self.state.lock().unwrap().hub.insert(path.to_string(), Route::File { bytes: Arc::new(body.to_string().into_bytes()), headers });
    }

    /// An LFS file at `/{repo_path}/resolve/{rev}/{file}` for each of `revs`: a 302 to the CDN,
    /// with `linked_etag` as `x-linked-etag` (the Hub's: the file's sha256).
    fn serve_lfs(&self, repo_path: &str, file: &str, bytes: Vec<u8>, commit: &str, revs: &[&str], linked_etag: &str) {
        let size = bytes.len();
        let cdn_path = format!("/repos/{}/{linked_etag}", &sha256(repo_path.as_bytes())[..8]);
        let location = format!("{}{cdn_path}?X-Amz-Signature=fake&response-content-disposition=attachment", self.cdn_base);
        let headers = vec![
            ("x-repo-commit".to_string(), commit.to_string()),
            ("x-linked-etag".to_string(), format!("\"{linked_etag}\"")),
            ("x-linked-size".to_string(), size.to_string()),
            // The real Hub's plain etag of an LFS file is the git object id of its pointer file.
            ("etag".to_string(), format!("\"{}\"", git_like_id(&bytes))),
        ];
        let mut st = self.state.lock().unwrap();
        let cdn_headers = vec![("etag".to_string(), format!("\"{}\"", &sha256(&bytes)[..32]))];
        st.cdn.insert(cdn_path, Route::File { bytes: Arc::new(bytes), headers: cdn_headers });
        for rev in revs {
            st.hub.insert(format!("/{repo_path}/resolve/{rev}/{file}"), Route::Redirect { status: 302, location: location.clone(), headers: headers.clone() });
        }
    }

    /// Plays `fault` on the next `times` responses that carry file bytes.
    pub fn fault(&self, fault: Fault, times: usize) {
        self.state.lock().unwrap().faults.extend(std::iter::repeat_n(fault, times));
    }

    /// From now on, answer every `Range` request with 200 and the whole file.
    pub fn ignore_range(&self, yes: bool) {
        self.state.lock().unwrap().ignore_range = yes;
    }

    /// From now on, send file bytes in 64 KiB pieces 50 ms apart (about 1.3 MiB/s).
    pub fn slow(&self, yes: bool) {
        self.state.lock().unwrap().slow = yes;
    }

    /// Requests for `path` on either host (query ignored).
    pub fn hits(&self, path: &str) -> usize {
        self.state.lock().unwrap().log.iter().filter(|l| l.path == path).count()
    }

    /// Every request so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// The `GET`s that carried file bytes (status 200 or 206), in order.
    pub fn body_gets(&self) -> Vec<Logged> {
        self.log().into_iter().filter(|l| l.method == "GET" && matches!(l.status, 200 | 206)).collect()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for addr in &self.addrs {
            let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A 40-hex id that stands for the git object id the real Hub sends as the plain `etag`:
/// deliberately not the file's sha256.
fn git_like_id(bytes: &[u8]) -> String {
    let mut blob = format!("blob {}\0", bytes.len()).into_bytes();
    blob.extend_from_slice(&bytes[..bytes.len().min(4096)]);
    sha256(&blob)[..40].to_string()
}

fn handle(host: &'static str, conn: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut out = conn;
    let range_from = headers
        .iter()
        .find(|(k, _)| k == "range")
        .and_then(|(_, v)| v.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse::<usize>().ok());

    let mut st = state.lock().unwrap();
    let authorized = |prefix: &str, token: &str| headers.iter().any(|(k, v)| k == "authorization" && v == &format!("Bearer {token}")) || !path.starts_with(prefix);
    if host == "hub" && !st.gated.iter().all(|(prefix, token)| authorized(prefix, token)) {
        // The real Hub: 401 for a gated repository without a token.
        st.log.push(Logged { host, method: method.clone(), path: path.clone(), headers, status: 401, body_sent: 0 });
        drop(st);
        let body = "{\"error\":\"Access to this dataset is restricted. You must be authenticated to access it.\"}";
        let _ = write!(out, "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        return;
    }
    let routes = if host == "hub" { &st.hub } else { &st.cdn };
    let mut logged = Logged { host, method: method.clone(), path: path.clone(), headers, status: 404, body_sent: 0 };
    // A route for the whole target (a page of a listing, `?cursor=`) before one for the path.
    match routes.get(&target).or_else(|| routes.get(&path)) {
        None if host == "hub" && (path.starts_with("/api/datasets/") || path.starts_with("/datasets/")) && !logged.headers.iter().any(|(k, _)| k == "authorization") => {
            // The real Hub answers 401, not 404, for a data set it does not know when no
            // token is sent (it cannot tell a missing repository from a private one).
            logged.status = 401;
            st.log.push(logged);
            drop(st);
            let body = "{\"error\":\"Repository not found\"}";
            let _ = write!(out, "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: RepoNotFound\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
        None => {
            drop(st);
            let _ = write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
            state.lock().unwrap().log.push(logged);
        }
        Some(Route::Redirect { status, location, headers }) => {
            let mut head = format!("HTTP/1.1 {status} Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n");
            for (k, v) in headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            logged.status = *status;
            st.log.push(logged);
            drop(st);
            let _ = out.write_all(format!("{head}\r\n").as_bytes());
        }
        Some(Route::File { bytes, headers }) => {
            let (bytes, extra) = (bytes.clone(), headers.clone());
            let total = bytes.len();
            let start = match range_from {
                Some(s) if !st.ignore_range => Some(s.min(total)),
                _ => None,
            };
            if start.is_some_and(|s| s >= total) {
                logged.status = 416;
                st.log.push(logged);
                drop(st);
                let _ = write!(out, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
            // Faults are for files, not for the API's JSON answers.
            let json = extra.iter().any(|(k, v)| k == "content-type" && v.starts_with("application/json"));
            let fault = if method == "GET" && !json && !st.faults.is_empty() { Some(st.faults.remove(0)) } else { None };
            let slow = st.slow;
            let (status, from) = match start {
                Some(s) => (206u16, s),
                None => (200, 0),
            };
            let mut head = match start {
                Some(s) => format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{total}\r\nContent-Length: {}\r\n",
                    total.max(1) - 1,
                    total - s
                ),
                None => format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n"),
            };
            head.push_str("Accept-Ranges: bytes\r\nConnection: close\r\n");
            for (k, v) in &extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let until = match fault {
                Some(Fault::CutAt(f)) | Some(Fault::StallAt(f)) => ((total as f64 * f) as usize).max(from),
                None => total,
            };
            logged.status = status;
            logged.body_sent = if method == "GET" { until - from } else { 0 };
            st.log.push(logged);
            drop(st);
            let _ = out.write_all(head.as_bytes());
            if method != "GET" {
                return;
            }
            for piece in bytes[from..until].chunks(if slow { 64 << 10 } else { usize::MAX >> 1 }) {
                if out.write_all(piece).is_err() {
                    break;
                }
                if slow {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = out.flush();
            if let Some(Fault::StallAt(_)) = fault {
                // Hold the connection open, sending nothing, until the client hangs up or the
                // server stops (bounded: 60 s).
                let t = Instant::now();
                let _ = out.set_read_timeout(Some(Duration::from_millis(50)));
                let mut b = [0u8; 64];
                while !stop.load(Ordering::SeqCst) && t.elapsed() < Duration::from_secs(60) {
                    if let Ok(0) = out.read(&mut b) {
                        break;
                    }
                }
            }
        }
    }
    let _ = out.shutdown(std::net::Shutdown::Both);
}
