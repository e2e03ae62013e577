//! Progress reporting that suits where the output goes: a bar on a terminal, plain periodic
//! log lines (what, how far, rate, ETA) when stderr is a file or a pipe (`nohup ... > log`),
//! nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars on stderr.
    Bars,
    /// A log line every `interval`, and one at the end.
    Lines,
    /// Nothing.
    Hidden,
}

/// What a task counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Pictures.
    Images,
    /// Bytes of a download.
    Bytes,
    /// Training epochs.
    Epochs,
    /// Heads trained (`review`'s fold heads).
    Heads,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Images => "images",
            Unit::Bytes => "bytes",
            Unit::Epochs => "epochs",
            Unit::Heads => "heads",
        }
    }
}

/// Makes [`Task`]s in one [`Mode`], optionally also recording them in a run's `status.json`.
#[derive(Debug, Clone)]
pub struct Progress {
    mode: Mode,
    interval: Duration,
    status: Option<Arc<crate::status::StatusFile>>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::hidden()
    }
}

impl Progress {
    /// Bars when stderr is a terminal (and `TERM` is not `dumb`), lines otherwise; hidden when
    /// `quiet`. `LASTLAYER_LOG_INTERVAL` (seconds) sets how often lines are written (default 10).
    pub fn for_stderr(quiet: bool, no_bars: bool) -> Self {
        let interval = std::env::var("LASTLAYER_LOG_INTERVAL")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(10));
        let tty = std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        let mode = if quiet {
            Mode::Hidden
        } else if tty && !no_bars {
            Mode::Bars
        } else {
            Mode::Lines
        };
        Progress { mode, interval, status: None }
    }

    /// The same, also recording progress in `status`.
    pub fn with_status(&self, status: Arc<crate::status::StatusFile>) -> Self {
        Progress { status: Some(status), ..self.clone() }
    }

    /// Shows nothing.
    pub fn hidden() -> Self {
        Progress { mode: Mode::Hidden, interval: Duration::from_secs(10), status: None }
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Starts a task of `total` units called `what`.
    pub fn task(&self, what: &str, total: u64, unit: Unit) -> Task {
        let bar = (self.mode == Mode::Bars).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let template = match unit {
                Unit::Bytes => "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                _ => "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(what.to_string());
            bar
        });
        Task {
            bar,
            lines: self.mode == Mode::Lines,
            what: what.to_string(),
            unit,
            total,
            pos: 0,
            start: Instant::now(),
            last_line: Instant::now(),
            interval: self.interval,
            message: String::new(),
            status: self.status.clone(),
        }
    }
}

/// One unit of work being reported.
#[derive(Debug)]
pub struct Task {
    bar: Option<ProgressBar>,
    lines: bool,
    what: String,
    unit: Unit,
    total: u64,
    pos: u64,
    start: Instant,
    last_line: Instant,
    interval: Duration,
    message: String,
    status: Option<Arc<crate::status::StatusFile>>,
}

impl Task {
    /// Advances by `n` units.
    pub fn inc(&mut self, n: u64) {
        self.set_position(self.pos + n);
    }

    /// Sets the absolute position (for resumed work).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
        if self.lines && self.last_line.elapsed() >= self.interval {
            self.log_line();
        }
        if let Some(status) = &self.status {
            status.progress(&self.what, pos, self.total, pos as f64 / self.start.elapsed().as_secs_f64().max(1e-9));
        }
    }

    /// Sets a short status shown after the counts (loss, accuracy).
    pub fn set_message(&mut self, msg: impl Into<String>) {
        self.message = msg.into();
        if let Some(bar) = &self.bar {
            bar.set_message(self.message.clone());
        }
    }

    /// Sets the total once it is known (downloads).
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(bar) = &self.bar {
            bar.set_length(total);
        }
    }

    /// Units done so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Ends the task, leaving a final line.
    pub fn finish(mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        if self.lines {
            self.log_line();
        }
    }

    fn log_line(&mut self) {
        self.last_line = Instant::now();
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let rate = self.pos as f64 / secs;
        let pct = if self.total > 0 { 100.0 * self.pos as f64 / self.total as f64 } else { 100.0 };
        let eta = if rate > 0.0 && self.total >= self.pos {
            format!("{:.0}s", (self.total - self.pos) as f64 / rate)
        } else {
            "?".to_string()
        };
        let (pos, total, rate) = match self.unit {
            Unit::Bytes => (mib(self.pos), mib(self.total), format!("{:.1} MiB/s", rate / 1048576.0)),
            u => (self.pos.to_string(), self.total.to_string(), format!("{rate:.1} {}/s", u.name())),
        };
        let unit = if self.unit == Unit::Bytes { "" } else { self.unit.name() };
        let msg = if self.message.is_empty() { String::new() } else { format!(", {}", self.message) };
        tracing::info!(
            "{}: {pos}/{total} {unit} ({pct:.1}%), {rate}, elapsed {secs:.0}s, ETA {eta}{msg}",
            self.what
        );
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}
