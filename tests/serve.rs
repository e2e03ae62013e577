//! `lastlayer serve`: real HTTP requests against the binary (health, predict equal to
//! `lastlayer predict`, the 4xx answers, the queue's 503, SIGTERM), and the page in headless
//! Chromium (Debian's `chromium` and `chromium-driver`, driven over WebDriver): a picture is
//! picked, the table fills with predict's top class, and a screenshot is checked.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A child process killed (with its process group) when dropped, even on a panic.
struct Killed {
    child: Child,
    group: bool,
}

impl Drop for Killed {
    fn drop(&mut self) {
        if self.group {
            // The group holds what the child started (chromedriver's Chromium).
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
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
        let proc = Killed { child, group: false };
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
fn decode_picture_refuses_what_is_not_a_jpeg_or_png() {
    use lastlayer::data::decode_picture;
    let bytes = std::fs::read(chelsea()).unwrap();
    let t = decode_picture(&bytes).unwrap();
    assert_eq!(t.size(), lastlayer::data::load_picture(&chelsea()).unwrap().size());
    for (bytes, needle) in [(&b""[..], "empty"), (&b"hello, this is text"[..], "JPEG or PNG"), (&bytes[..1000], "JPEG or PNG"), (&b"GIF89a\x01\x00"[..], "JPEG or PNG")] {
        let e = decode_picture(bytes).unwrap_err();
        assert!(matches!(e, lastlayer::Error::BadPicture { .. }), "{e:?}");
        assert_eq!(e.category(), lastlayer::error::Category::Input);
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn serve_refuses_a_bad_run_folder_and_bad_flags_before_listening() {
    let sb = Sandbox::new();
    assert_fails(&sb.run(&["serve", "no-such-run", "--port", "0"]), 3, &["no-such-run", "head.json"]);
    std::fs::create_dir(sb.path().join("empty")).unwrap();
    assert_fails(&sb.run(&["serve", "empty", "--port", "0"]), 3, &["empty", "head.json"]);
    assert_fails(&sb.run(&["serve", "empty", "--port", "0", "--max-body-mb", "0"]), 2, &["--max-body-mb"]);
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
    let expected = sb.run_json(&["--json", "predict", "run", picture.to_str().unwrap(), "-k", "3"]);
    let expected = expected[0]["top"].as_array().unwrap().clone();

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
    // No ?k: 5 classes; a k over the class count: all of them.
    assert_eq!(post(&http, &format!("{url}/predict"), &bytes).1["top"].as_array().unwrap().len(), 5);
    assert_eq!(post(&http, &format!("{url}/predict?k=99"), &bytes).1["top"].as_array().unwrap().len(), classes.len());

    // The 4xx answers, each JSON with a useful message.
    let (status, e) = post(&http, &format!("{url}/predict"), b"this is not a picture at all");
    assert_eq!(status, 400, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("JPEG or PNG") && msg.contains("not a picture"), "{msg}");
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
    let statuses: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let http = agent();
                    barrier.wait();
                    post(&http, &format!("{url}/predict"), &bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    println!("12 requests at once with --queue 1: {ok} answered, {} refused with 503", busy.len());
    assert_eq!(ok + busy.len(), 12, "{statuses:?}");
    assert!(ok >= 1 && !busy.is_empty(), "{statuses:?}");
    assert!(busy[0].1["error"].as_str().unwrap().contains("busy"), "{:?}", busy[0]);

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
    let which = |name: &str| {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
            .unwrap_or_else(|| {
                panic!("`{name}` is not installed: run scripts/test.sh, which installs Debian's chromium and chromium-driver")
            })
    };
    let (chromium, chromedriver) = (which("chromium"), which("chromedriver"));
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(&chromedriver);
    cmd.arg(format!("--port={port}"))
        .arg(format!("--log-path={}", sb.path().join("chromedriver.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let _driver = Killed { child: cmd.spawn().unwrap(), group: true };
    let driver_url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent().get(format!("{driver_url}/status")).call().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "chromedriver did not start within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let profile = sb.path().join("chromium-profile");
    let args: Vec<String> = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=900,700",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect();
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": chromium, "args": args }));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (first, png, bar_area) = rt.block_on(async {
        use fantoccini::Locator;
        let client = fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver_url)
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
