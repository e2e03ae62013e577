//! `RUN_DIR/status.json`: what a run is doing, written as it goes, so that a user who comes
//! back to a background run can tell whether it is running, finished or died, and how far it
//! got (`lastlayer status RUN_DIR`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_json_atomic;

/// The life of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Started and, as far as the file knows, still going.
    Running,
    /// Done; `head.json` holds the results.
    Finished,
    /// Ended with an error (`error` says which).
    Failed,
    /// Written by no process: `status` reports a run whose process is gone as died.
    Died,
}

/// The contents of `status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// State.
    pub state: State,
    /// The process writing it.
    pub pid: u32,
    /// The command line.
    pub command: Vec<String>,
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When this file was last written (RFC 3339).
    pub updated_at: String,
    /// Seconds since the Unix epoch at `updated_at`.
    pub updated_unix: u64,
    /// What it is doing (`extract train`, `train head`).
    pub stage: Option<String>,
    /// Units done in the stage.
    pub done: u64,
    /// Units in the stage.
    pub total: u64,
    /// Units per second in the stage.
    pub rate: Option<f64>,
    /// Seconds left in the stage at that rate.
    pub eta_seconds: Option<f64>,
    /// The error that ended a failed run.
    pub error: Option<String>,
    /// Test accuracy of a finished run.
    pub test_accuracy: Option<f64>,
}

fn now() -> (String, u64) {
    let t = SystemTime::now();
    (humantime::format_rfc3339_seconds(t).to_string(), t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Writes `status.json` for one run, at most once a second for progress.
#[derive(Debug)]
pub struct StatusFile {
    path: PathBuf,
    inner: Mutex<(RunStatus, Option<Instant>)>,
}

impl StatusFile {
    /// Starts `RUN_DIR/status.json` in state running.
    pub fn start(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir).at(run_dir)?;
        let (at, unix) = now();
        let status = RunStatus {
            state: State::Running,
            pid: std::process::id(),
            command: std::env::args().collect(),
            started_at: at.clone(),
            updated_at: at,
            updated_unix: unix,
            stage: None,
            done: 0,
            total: 0,
            rate: None,
            eta_seconds: None,
            error: None,
            test_accuracy: None,
        };
        let file = StatusFile { path: run_dir.join("status.json"), inner: Mutex::new((status, None)) };
        file.write(true)?;
        Ok(file)
    }

    fn write(&self, force: bool) -> Result<()> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !force && guard.1.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return Ok(());
        }
        let (at, unix) = now();
        guard.0.updated_at = at;
        guard.0.updated_unix = unix;
        guard.1 = Some(Instant::now());
        write_json_atomic(&self.path, &guard.0)
    }

    /// Records progress in a stage (throttled).
    pub fn progress(&self, stage: &str, done: u64, total: u64, rate: f64) {
        {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut guard.0;
            let new_stage = s.stage.as_deref() != Some(stage);
            s.stage = Some(stage.to_string());
            s.done = done;
            s.total = total;
            s.rate = (rate > 0.0).then_some(rate);
            s.eta_seconds = (rate > 0.0 && total >= done).then(|| (total - done) as f64 / rate);
            if new_stage {
                guard.1 = None;
            }
        }
        if let Err(e) = self.write(false) {
            tracing::warn!("cannot update {}: {e}", self.path.display());
        }
    }

    /// Marks the run finished.
    pub fn finish(&self, test_accuracy: f64) -> Result<()> {
        {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            guard.0.state = State::Finished;
            guard.0.test_accuracy = Some(test_accuracy);
        }
        self.write(true)
    }

    /// Marks the run failed with `error`.
    pub fn fail(&self, error: &str) -> Result<()> {
        {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            guard.0.state = State::Failed;
            guard.0.error = Some(error.to_string());
        }
        self.write(true)
    }
}

/// Reads `RUN_DIR/status.json`; a run marked running whose process is gone is reported as
/// [`State::Died`].
pub fn read_status(run_dir: &Path) -> Result<RunStatus> {
    let path = run_dir.join("status.json");
    let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::bad_input(run_dir, "no status.json: not a run folder started by `lastlayer train` or `run`"),
        _ => Error::Io { path: path.clone(), source: e },
    })?;
    let mut status: RunStatus =
        serde_json::from_slice(&bytes).map_err(|e| Error::bad_input(&path, format!("not a valid status file ({e})")))?;
    if status.state == State::Running && !process_alive(status.pid) {
        status.state = State::Died;
    }
    Ok(status)
}

/// True when a process with `pid` exists and is a lastlayer.
fn process_alive(pid: u32) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains("lastlayer"),
        Err(_) => false,
    }
}
