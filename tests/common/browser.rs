//! Headless Chromium through chromedriver (Debian's chromium and chromium-driver, installed by
//! scripts/test.sh), for the tests of the pages `lastlayer serve` serves.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Sandbox;

/// chromedriver listening on `url`, and the capabilities that start headless Chromium through
/// it; chromedriver and the Chromium it started (its process group) are killed when dropped,
/// even on a panic.
pub struct Browser {
    child: Child,
    /// chromedriver's WebDriver address.
    pub url: String,
    /// `goog:chromeOptions` for a headless Chromium with its profile in the sandbox.
    pub capabilities: serde_json::Map<String, serde_json::Value>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group chromedriver leads (process_group(0) below).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `name` on the PATH.
pub fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|f| f.is_file()))
        .unwrap_or_else(|| panic!("`{name}` is not installed: run scripts/test.sh, which installs Debian's chromium and chromium-driver"))
}

/// Starts chromedriver (log in the sandbox) and waits up to 20 s for it to answer; Chromium
/// will open windows of `window` ("width,height"). Chromium is started with the flags that
/// keep it off the network: this machine refuses every connection beyond the registries.
pub fn headless_chromium(sb: &Sandbox, window: &str) -> Browser {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(which("chromedriver"));
    cmd.arg(format!("--port={port}"))
        .arg(format!("--log-path={}", sb.path().join("chromedriver.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
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
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--window-size={window}"), format!("--user-data-dir={}", sb.path().join("chromium-profile").display())])
    .collect();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": which("chromium"), "args": args }));
    let browser = Browser { child: cmd.spawn().unwrap(), url: format!("http://127.0.0.1:{port}"), capabilities };
    let deadline = Instant::now() + Duration::from_secs(20);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    while agent.get(format!("{}/status", browser.url)).call().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(Instant::now() < deadline, "chromedriver did not start within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    browser
}
