//! `lastlayer serve`: real HTTP requests against the binary (health, predict equal to
//! `lastlayer predict`, the 4xx answers, the queue's 503, SIGTERM), and the page in headless
//! Chromium (Debian's `chromium` and `chromium-driver`, driven over WebDriver): a picture is
//! picked, the table fills with predict's top class, and a screenshot is checked. Then dynamic
//! batching: pictures that arrive together share forward passes and each answer equals
//! `predict`'s; `--timeout` answers 503 in time; slow and idle clients do not hold the model;
//! SIGTERM with batches in flight answers every request; and `GET /metrics`, parsed by the
//! Prometheus project's own Python parser, counts exactly the requests sent.


use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

/// A child process killed when dropped, even on a panic.
struct Killed {
    child: Child,
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lastlayer serve` running in the sandbox, and the URL it printed.
struct ServeProcess {
    proc: Killed,
    url: String,
    log: PathBuf,
}

impl ServeProcess {
    fn start(sb: &Sandbox, args: &[&str]) -> ServeProcess {
        let log = sb.path().join("serve.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lastlayer"));
        cmd.arg("serve").args(args).current_dir(sb.path()).env_remove("RUST_BACKTRACE");
        for (k, v) in &sb.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let proc = Killed { child };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .rsplit_once(" on ")
            .map(|(_, u)| u.to_string())
            .unwrap_or_else(|| panic!("no address in serve's first line {line:?}; stderr:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
        assert!(url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"), "{url}");
        println!("{line}", line = line.trim());
        ServeProcess { proc, url, log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// `(status, JSON body)` of a request.
fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, json)
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Value) {
    answer(agent.post(url).header("content-type", "application/octet-stream").send(body))
}

/// `(status, JSON body, Retry-After header)` of a POST.
fn post_retry_after(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Value, Option<String>) {
    let resp = agent.post(url).header("content-type", "application/octet-stream").send(body);
    let retry = resp.as_ref().ok().and_then(|r| r.headers().get("retry-after")).map(|v| v.to_str().unwrap().to_string());
    let (status, json) = answer(resp);
    (status, json, retry)
}

/// A run folder `run` in the sandbox: random ResNet-18 weights, a head trained on 40 rows
/// per split of the shared CIFAR-10 sample.
fn trained_run(sb: &Sandbox) {
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = cifar_sample_dir();
    sb.run_json(&["--json", "train", "--model", "resnet18", "--weights", &w, "--data", "cifar10", "--data-dir", data.to_str().unwrap(),
        "--limit", "40", "--precision", "fp32", "--out", "run"]);
}

fn chelsea() -> PathBuf {
    shared_data().join("imagenet-check/chelsea.png").canonicalize().unwrap()
}

#[test]
fn decode_picture_refuses_what_is_not_a_picture_and_names_the_formats() {
    use lastlayer::data::decode_picture;
    let bytes = std::fs::read(chelsea()).unwrap();
    let t = decode_picture(&bytes).unwrap();
    assert_eq!(t.size(), lastlayer::data::load_picture(&chelsea()).unwrap().size());
    // A truncated GIF is a GIF that cannot be decoded; text is no format at all.
    for (bytes, needle) in [(&b""[..], "empty"), (&b"hello, this is text"[..], "no picture format"), (&bytes[..1000], "cannot decode"), (&b"GIF89a\x01\x00"[..], "cannot decode")] {
        let e = decode_picture(bytes).unwrap_err();
        assert!(matches!(e, lastlayer::Error::BadPicture { .. }), "{e:?}");
        assert_eq!(e.category(), lastlayer::error::Category::Input);
        assert!(e.to_string().contains(needle) && e.to_string().contains("JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF or AVIF"), "{e}");
    }
}

#[test]
fn serve_refuses_a_bad_run_folder_and_bad_flags_before_listening() {
    let sb = Sandbox::new();
    assert_fails(&sb.run(&["serve", "no-such-run", "--port", "0"]), 3, &["no-such-run", "head.json"]);
    std::fs::create_dir(sb.path().join("empty")).unwrap();
    assert_fails(&sb.run(&["serve", "empty", "--port", "0"]), 3, &["empty", "head.json"]);
    assert_fails(&sb.run(&["serve", "empty", "--port", "0", "--max-body-mb", "0"]), 2, &["--max-body-mb"]);
    assert_fails(&sb.run(&["serve", "empty", "--port", "0", "--max-batch", "0"]), 2, &["--max-batch"]);
    assert_fails(&sb.run(&["serve", "empty", "--port", "0", "--timeout", "0"]), 2, &["--timeout"]);
    assert_fails(&sb.run(&["serve", "empty", "--port", "0", "--timeout", "1", "--max-wait-ms", "1000"]), 2, &["--max-wait-ms", "--timeout"]);
    let out = sb.run(&["serve", "empty", "--port", "0", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
}

#[test]
fn serve_answers_http_like_predict_and_its_page_works_in_chromium() {
    let sb = Sandbox::new();
    let t0 = Instant::now();
    trained_run(&sb);
    println!("trained the run in {:.1}s", t0.elapsed().as_secs_f64());
    let classes: Vec<String> = {
        let card: Value = serde_json::from_slice(&std::fs::read(sb.path().join("run/head.json")).unwrap()).unwrap();
        serde_json::from_value(card["classes"].clone()).unwrap()
    };
    let picture = chelsea();
    let predicted = sb.run_json(&["--json", "predict", "run", picture.to_str().unwrap(), "-k", "3"]);
    let expected = predicted[0]["top"].as_array().unwrap().clone();

    let server = ServeProcess::start(&sb, &["run", "--port", "0", "--max-body-mb", "1", "--queue", "1"]);
    let (url, http) = (server.url.clone(), agent());

    // GET /health
    let (status, health) = answer(http.get(format!("{url}/health")).call());
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["model"], "resnet18");
    assert_eq!(health["classes"], serde_json::json!(classes));

    // POST /predict: the same classes and probabilities as `lastlayer predict`.
    let bytes = std::fs::read(&picture).unwrap();
    let (status, got) = post(&http, &format!("{url}/predict?k=3"), &bytes);
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["model"], "resnet18");
    assert!(got["elapsed_ms"].as_f64().unwrap() > 0.0, "{got}");
    let top = got["top"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    let mut max_diff = 0.0f64;
    for (g, e) in top.iter().zip(&expected) {
        assert_eq!(g["class"], e["class"]);
        assert_eq!(g["index"], e["index"]);
        max_diff = max_diff.max((g["probability"].as_f64().unwrap() - e["probability"].as_f64().unwrap()).abs());
    }
    println!("POST /predict: top {} ({:.4}), max |difference| from predict {max_diff:.1e}, {} ms", top[0]["class"], top[0]["probability"], got["elapsed_ms"]);
    assert!(max_diff <= 1e-6, "probabilities differ from predict by {max_diff}");
    // The unknown verdict and score, as predict gives them.
    assert_eq!(got["unknown"], predicted[0]["unknown"], "{got}");
    let score_diff = (got["score"].as_f64().expect("an in-class score") - predicted[0]["score"].as_f64().unwrap()).abs();
    assert!(score_diff <= 1e-5, "score {} differs from predict's {} by {score_diff}", got["score"], predicted[0]["score"]);
    // No ?k: 5 classes; a k over the class count: all of them.
    assert_eq!(post(&http, &format!("{url}/predict"), &bytes).1["top"].as_array().unwrap().len(), 5);
    assert_eq!(post(&http, &format!("{url}/predict?k=99"), &bytes).1["top"].as_array().unwrap().len(), classes.len());

    // The 4xx answers, each JSON with a useful message.
    let (status, e) = post(&http, &format!("{url}/predict"), b"this is not a picture at all");
    assert_eq!(status, 400, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("JPEG, PNG") && msg.contains("not a picture"), "{msg}");
    println!("text body: 400 {msg}");
    let (status, e) = post(&http, &format!("{url}/predict"), &bytes[..bytes.len() / 2]);
    assert_eq!(status, 400, "{e}");
    println!("half a PNG: 400 {}", e["error"]);
    let (status, e) = post(&http, &format!("{url}/predict"), b"");
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("empty"), "{e}");
    let (status, e) = post(&http, &format!("{url}/predict?k=0"), &bytes);
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("at least 1"), "{e}");
    let (status, e) = post(&http, &format!("{url}/predict?k=many"), &bytes);
    assert_eq!(status, 400, "{e}");
    // Over the limit: 413, every time (the rest of the body is read, so the client that is
    // still sending it sees the answer, not a reset connection).
    let big = vec![0u8; 2 << 20];
    for _ in 0..5 {
        let (status, e) = post(&http, &format!("{url}/predict"), &big);
        assert_eq!(status, 413, "{e}");
        assert!(e["error"].as_str().unwrap().contains("1 MiB"), "{e}");
    }
    let (_, e) = post(&http, &format!("{url}/predict"), &big);
    println!("2 MiB body: 413 {}", e["error"]);
    assert_eq!(answer(http.get(format!("{url}/predict")).call()).0, 405);
    assert_eq!(answer(http.get(format!("{url}/nothing-here")).call()).0, 404);

    // --queue 1: pictures sent together beyond the one waiting get 503, the others 200.
    let barrier = std::sync::Barrier::new(12);
    let statuses: Vec<(u16, Value, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let http = agent();
                    barrier.wait();
                    post_retry_after(&http, &format!("{url}/predict"), &bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, ..)| *s == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|(s, ..)| *s == 503).collect();
    println!("12 requests at once with --queue 1: {ok} answered, {} refused with 503", busy.len());
    assert_eq!(ok + busy.len(), 12, "{statuses:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{statuses:?}");
    for (_, e, retry) in &busy {
        assert!(e["error"].as_str().unwrap().contains("busy"), "{e}");
        assert_eq!(retry.as_deref(), Some("1"), "a 503 without Retry-After: {e}");
    }

    // GET /: the page, self-contained.
    let mut page = http.get(format!("{url}/")).call().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = page.body_mut().read_to_string().unwrap();
    assert!(html.contains("id=\"results\"") && html.contains("type=\"file\""));
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("//cdn"), "the page must load nothing from elsewhere");

    // The page in headless Chromium.
    let first_row = browse(&sb, &url, &picture);
    assert_eq!(first_row, expected[0]["class"].as_str().unwrap(), "the page's first row is not predict's top-1");

    // The log has a line per request, with method, path, status and time.
    let log = server.stderr();
    assert!(log.lines().any(|l| l.contains("POST /predict 413")), "{log}");
    assert!(log.lines().any(|l| l.contains("GET /health 200") && l.contains(" ms")), "{log}");

    // SIGTERM: a graceful stop, exit status 0.
    let mut server = server;
    unsafe { libc::kill(server.proc.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = server.proc.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "serve did not stop within 20 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status} after SIGTERM:\n{}", server.stderr());
}

/// Opens the page in headless Chromium, picks `picture`, waits for the results, checks and
/// saves a screenshot (`target/serve-page.png`). Returns the first row's class.
fn browse(sb: &Sandbox, url: &str, picture: &Path) -> String {
    let browser = headless_chromium(sb, "900,700");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (first, png, bar_area) = rt.block_on(async {
        use fantoccini::Locator;
        let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(browser.capabilities.clone())
            .connect(&browser.url)
            .await
            .expect("cannot start a Chromium session through chromedriver");
        let result = async {
            client.goto(&format!("{url}/")).await?;
            client.find(Locator::Css("#file")).await?.send_keys(picture.to_str().unwrap()).await?;
            let t = Instant::now();
            let cell = client.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css("#results tbody tr td.class")).await?;
            let first = cell.text().await?;
            let rows = client.find_all(Locator::Css("#results tbody tr")).await?.len();
            let status = client.find(Locator::Css("#status")).await?.text().await?;
            println!("page: {rows} rows after {:.1}s, first {first:?}; status line {status:?}", t.elapsed().as_secs_f64());
            assert_eq!(rows, 5);
            assert!(!status.starts_with("error"), "{status}");
            // Let the preview finish drawing before the screenshot.
            client
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("#preview:not([hidden])"))
                .await?;
            let area = client
                .execute(
                    "const r = window.devicePixelRatio; return [...document.querySelectorAll('#results .bar')]\
                     .reduce((a, b) => { const q = b.getBoundingClientRect(); return a + q.width * q.height * r * r; }, 0);",
                    vec![],
                )
                .await?;
            let png = client.screenshot().await?;
            Ok::<_, fantoccini::error::CmdError>((first, png, area.as_f64().unwrap_or(0.0)))
        }
        .await;
        let _ = client.close().await;
        result.expect("the page did not show results")
    });

    let out = Path::new(env!("CARGO_BIN_EXE_lastlayer")).parent().unwrap().parent().unwrap().join("serve-page.png");
    std::fs::write(&out, &png).unwrap();
    println!("screenshot: {}", out.display());
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let bar = img.pixels().filter(|p| p.0.iter().zip([0x2a, 0x7a, 0xe2]).all(|(&a, b)| (a as i32 - b).abs() <= 3)).count();
    println!("screenshot {w}x{h}, {} colours, {bar} bar-coloured pixels (the bars cover {bar_area:.0})", colours.len());
    assert!(w == 900 && (500..=700).contains(&h), "screenshot is {w}x{h}, expected the 900x700 window's viewport");
    assert!(colours.len() > 1000, "the screenshot looks blank: {} colours", colours.len());
    assert!(bar_area > 100.0, "the bars cover {bar_area} pixels");
    let ratio = bar as f64 / bar_area;
    assert!((0.7..=1.1).contains(&ratio), "{bar} pixels have the bars' colour, the bars cover {bar_area:.0}");
    first
}

/// Every sample of `GET /metrics`, parsed by the Prometheus project's own text-format parser
/// (Python's `prometheus_client`, pinned in scripts/requirements-test.txt).
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn get(url: &str) -> Scrape {
        let mut resp = agent().get(format!("{url}/metrics")).call().unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let kind = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "content type {kind}");
        let text = resp.body_mut().read_to_string().unwrap();
        let parser = "import json, sys\n\
                      from prometheus_client.parser import text_string_to_metric_families\n\
                      print(json.dumps([[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))";
        let mut child = Command::new(python()).args(["-c", parser]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "prometheus_client cannot parse /metrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
        Scrape(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The sample `name` whose labels include `labels` (0 when there is none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.2)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {} samples", found.len());
        found.first().copied().unwrap_or(0.0)
    }
}

/// The top classes of an answer, as (class, index, probability).
fn tops(v: &Value) -> Vec<(String, u64, f64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["class"].as_str().unwrap().to_string(), t["index"].as_u64().unwrap(), t["probability"].as_f64().unwrap()))
        .collect()
}

/// The largest probability difference between `got` and `expected`, after checking that they
/// name the same classes in the same order.
fn difference(got: &Value, expected: &[(String, u64, f64)], what: &str) -> f64 {
    let got = tops(got);
    assert_eq!(got.len(), expected.len(), "{what}: {got:?} against {expected:?}");
    let mut max = 0.0f64;
    for (g, e) in got.iter().zip(expected) {
        assert_eq!((&g.0, g.1), (&e.0, e.1), "{what}: top classes differ from predict's: {got:?} against {expected:?}");
        max = max.max((g.2 - e.2).abs());
    }
    max
}

/// Waits (at most `within`) for the process to exit and returns its status.
fn exit_status(server: &mut ServeProcess, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = server.proc.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "serve did not stop within {within:?} of SIGTERM:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_batches_pictures_that_arrive_together_answers_each_like_predict_and_drains_on_sigterm() {
    let sb = Sandbox::new();
    trained_run(&sb);
    // Two photographs and six CIFAR-10 JPEGs of different classes: different sizes and formats.
    let mut pictures = vec![chelsea(), shared_data().join("imagenet-check/coffee.png").canonicalize().unwrap()];
    for class in ["airplane", "cat", "dog", "frog", "ship", "truck"] {
        let dir = shared_data().join("imagefolder-sample/val").join(class);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        pictures.push(files[0].canonicalize().unwrap());
    }
    let mut args = vec!["--json", "predict", "run", "-k", "3"];
    args.extend(pictures.iter().map(|p| p.to_str().unwrap()));
    let predicted = sb.run_json(&args);
    let expected: Vec<Vec<(String, u64, f64)>> = predicted.as_array().unwrap().iter().map(|p| tops(&p["top"])).collect();
    assert_eq!(expected.len(), pictures.len());
    let bodies: Vec<Vec<u8>> = pictures.iter().map(|p| std::fs::read(p).unwrap()).collect();

    // A long --max-wait-ms, so that pictures sent together surely meet in a batch.
    let mut server = ServeProcess::start(&sb, &["run", "--port", "0", "--max-batch", "8", "--max-wait-ms", "5000", "--queue", "64"]);
    let url = server.url.clone();
    let predict_url = format!("{url}/predict?k=3");

    // A picture alone, with nothing on its way, does not wait for --max-wait-ms.
    let (status, got) = post(&agent(), &predict_url, &bodies[0]);
    assert_eq!(status, 200, "{got}");
    let lone_ms = got["elapsed_ms"].as_f64().unwrap();
    println!("a lone picture: {lone_ms} ms (--max-wait-ms 5000)");
    assert!(lone_ms < 5000.0, "a lone picture waited {lone_ms} ms: it waited for a batch to fill");
    let mut max_diff = difference(&got["top"], &expected[0], "lone picture");
    assert!(server.stderr().contains("batches of at most 8 pictures"), "{}", server.stderr());

    // Rounds of 16 requests at once (each picture twice, in a different order each round).
    let mut sent = 1;
    for round in 0..3 {
        let order: Vec<usize> = (0..16).map(|i| (i * (round + 3) + round) % pictures.len()).collect();
        let barrier = std::sync::Barrier::new(order.len());
        let answers: Vec<(usize, u16, Value)> = std::thread::scope(|s| {
            let handles: Vec<_> = order
                .iter()
                .map(|&p| {
                    let (barrier, body, predict_url) = (&barrier, &bodies[p], &predict_url);
                    s.spawn(move || {
                        let http = agent();
                        barrier.wait();
                        let (status, got) = post(&http, predict_url, body);
                        (p, status, got)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (p, status, got) in &answers {
            assert_eq!(*status, 200, "{got}");
            max_diff = max_diff.max(difference(&got["top"], &expected[*p], &pictures[*p].display().to_string()));
        }
        sent += answers.len();
    }
    println!("{sent} answers, max |probability difference| from predict {max_diff:.1e}");
    assert!(max_diff <= 1e-6, "probabilities differ from predict by {max_diff}");
    assert_eq!(answer(agent().get(format!("{url}/health")).call()).0, 200);

    // The metrics count exactly what was sent, and show the shared forward passes.
    let m = Scrape::get(&url);
    let batches = m.value("lastlayer_batch_size_count", &[]);
    println!(
        "/metrics: {} /predict 200s, {batches} forward passes for {} pictures",
        m.value("lastlayer_http_requests_total", &[("path", "/predict"), ("status", "200")]),
        m.value("lastlayer_batch_size_sum", &[])
    );
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/predict"), ("status", "200")]), sent as f64);
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/health"), ("status", "200")]), 1.0);
    assert_eq!(m.value("lastlayer_http_request_duration_seconds_count", &[("path", "/predict")]), sent as f64);
    assert_eq!(m.value("lastlayer_http_request_duration_seconds_bucket", &[("path", "/predict"), ("le", "+Inf")]), sent as f64);
    assert!(m.value("lastlayer_http_request_duration_seconds_sum", &[("path", "/predict")]) > 0.0);
    assert_eq!(m.value("lastlayer_batch_size_sum", &[]), sent as f64, "every picture in exactly one forward pass");
    assert!(batches < sent as f64, "{batches} forward passes for {sent} pictures: none was shared");
    assert_eq!(m.value("lastlayer_batch_size_bucket", &[("le", "8")]), batches, "a batch over --max-batch 8");
    assert_eq!(m.value("lastlayer_batch_duration_seconds_count", &[]), batches);
    assert_eq!(m.value("lastlayer_queue_depth", &[]), 0.0);
    assert_eq!(m.value("lastlayer_queue_limit", &[]), 64.0);
    assert_eq!(m.value("lastlayer_refused_total", &[("reason", "queue_full")]), 0.0);
    assert_eq!(m.value("lastlayer_refused_total", &[("reason", "timeout")]), 0.0);

    // SIGTERM while batches are in flight: every request already sent is answered, then exit 0.
    let n = 48;
    let barrier = std::sync::Barrier::new(n + 1);
    let signalled = std::sync::OnceLock::new();
    let answers: Vec<(usize, u16, Value, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let p = i % bodies.len();
                let (barrier, body, predict_url) = (&barrier, &bodies[p], &predict_url);
                s.spawn(move || {
                    let http = agent();
                    barrier.wait();
                    let (status, got) = post(&http, predict_url, body);
                    (p, status, got, Instant::now())
                })
            })
            .collect();
        barrier.wait();
        // Once the first of these batches is done, the rest are queued or running.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Scrape::get(&url).value("lastlayer_batch_size_count", &[]) <= batches {
            assert!(Instant::now() < deadline, "no batch ran within 60 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        unsafe { libc::kill(server.proc.child.id() as i32, libc::SIGTERM) };
        signalled.set(Instant::now()).unwrap();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let signalled = *signalled.get().unwrap();
    let after = answers.iter().filter(|a| a.3 > signalled).count();
    println!("SIGTERM with {n} requests sent: {after} answered after the signal");
    for (p, status, got, _) in &answers {
        assert_eq!(*status, 200, "a request in flight at SIGTERM was not answered: {got}");
        assert!(difference(&got["top"], &expected[*p], "after SIGTERM") <= 1e-6);
    }
    assert!(after > 0, "every answer came before SIGTERM: nothing was in flight");
    let status = exit_status(&mut server, Duration::from_secs(40));
    assert!(status.success(), "serve exited with {status} after SIGTERM:\n{}", server.stderr());
    assert!(server.stderr().contains("shutting down"), "{}", server.stderr());
}

#[test]
fn serve_answers_503_past_its_timeout_keeps_slow_clients_off_the_model_and_stays_up() {
    let sb = Sandbox::new();
    trained_run(&sb);
    let bytes = std::fs::read(chelsea()).unwrap();
    let server = ServeProcess::start(&sb, &["run", "--port", "0", "--max-batch", "1", "--max-wait-ms", "0", "--queue", "256", "--timeout", "1"]);
    let url = server.url.clone();
    let predict_url = format!("{url}/predict");
    let http = agent();
    let (status, got) = post(&http, &predict_url, &bytes);
    assert_eq!(status, 200, "{got}");
    let (status, got) = post(&http, &predict_url, &bytes);
    assert_eq!(status, 200, "{got}");
    let one_ms = got["elapsed_ms"].as_f64().unwrap().max(1.0);

    // A client that sends its headers and a little of its body, then stalls, and one that
    // connects and sends nothing: neither holds up another client's picture.
    let mut slow = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    write!(slow, "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n").unwrap();
    slow.write_all(&bytes[..100]).unwrap();
    let _idle = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    let t = Instant::now();
    let (status, got) = post(&http, &predict_url, &bytes);
    println!("with a stalled upload and an idle connection open: {status} in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(status, 200, "{got}");
    // The stalled upload gets 408 once --timeout has passed, and its connection is closed.
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 408"), "the stalled upload got {reply:?}");
    assert!(reply.contains("--timeout"), "{reply}");

    // More pictures at once than the model gets through in --timeout (1 s): the ones that
    // would wait longer get 503 with Retry-After, none hangs; /health answers meanwhile.
    let n = ((3000.0 / one_ms).ceil() as usize).clamp(16, 200);
    let barrier = std::sync::Barrier::new(n + 1);
    let (answers, health_ms) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (barrier, bytes, predict_url) = (&barrier, &bytes, &predict_url);
                s.spawn(move || {
                    let http = agent();
                    barrier.wait();
                    let t = Instant::now();
                    let (status, got, retry) = post_retry_after(&http, predict_url, bytes);
                    (status, got, retry, t.elapsed())
                })
            })
            .collect();
        barrier.wait();
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let (status, health) = answer(agent().get(format!("{url}/health")).call());
        assert_eq!(status, 200, "{health}");
        let health_ms = t.elapsed().as_secs_f64() * 1e3;
        (handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>(), health_ms)
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let late: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    let slowest = answers.iter().map(|a| a.3).max().unwrap();
    println!(
        "{n} pictures at once (one takes {one_ms} ms alone), --timeout 1: {ok} answered, {} 503s, slowest answer after {:.2} s; /health took {health_ms:.0} ms meanwhile",
        late.len(),
        slowest.as_secs_f64()
    );
    assert_eq!(ok + late.len(), n, "answers other than 200 and 503: {:?}", answers.iter().filter(|a| a.0 != 200 && a.0 != 503).collect::<Vec<_>>());
    assert!(ok >= 1 && !late.is_empty(), "{ok} answered, {} timed out", late.len());
    for (_, e, retry, _) in &late {
        assert!(e["error"].as_str().unwrap().contains("--timeout"), "{e}");
        assert_eq!(retry.as_deref(), Some("1"), "a 503 without Retry-After: {e}");
    }
    assert!(slowest < Duration::from_secs(5), "an answer took {slowest:?} with --timeout 1");
    assert!(health_ms < 2000.0, "/health took {health_ms:.0} ms under load");

    // Still up, and the metrics count every answer by status.
    let (status, got) = post(&http, &predict_url, &bytes);
    assert_eq!(status, 200, "{got}");
    let m = Scrape::get(&url);
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/predict"), ("status", "200")]), (ok + 4) as f64);
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/predict"), ("status", "503")]), late.len() as f64);
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/predict"), ("status", "408")]), 1.0);
    assert_eq!(m.value("lastlayer_http_requests_total", &[("path", "/health"), ("status", "200")]), 1.0);
    assert_eq!(m.value("lastlayer_refused_total", &[("reason", "timeout")]), late.len() as f64);
    assert_eq!(m.value("lastlayer_http_request_duration_seconds_count", &[("path", "/predict")]), (ok + late.len() + 5) as f64);
    assert_eq!(m.value("lastlayer_batch_size_bucket", &[("le", "1")]), m.value("lastlayer_batch_size_count", &[]), "--max-batch 1");
    assert_eq!(m.value("lastlayer_queue_depth", &[]), 0.0);
}
