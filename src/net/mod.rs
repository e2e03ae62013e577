//! HTTP downloads that survive real networks: a connect timeout and a stall timeout (no bytes
//! for N seconds) on every request, redirects followed by hand so that a token is only ever
//! sent to the host it belongs to, bounded retries with exponential backoff, and resumption
//! of a `.part` file with `Range`. Used by [`crate::hub`] (weights) and [`crate::data`]
//! (the CIFAR-10 archive).
//!
//! Settings come from the environment ([`NetConfig::from_env`]): `LASTLAYER_TIMEOUT`
//! (seconds without a byte before a request is abandoned, also the connect timeout; default
//! 30), `LASTLAYER_RETRIES` (default 5) and `LASTLAYER_RETRY_BASE_MS` (the first backoff;
//! it doubles each time; default 1000).

mod redirect;
mod resume;

use std::time::Duration;

pub use redirect::{send, Auth, Hop, Method, Sent};
pub(crate) use redirect::join as join_url;
pub use resume::{download_resumable, Downloaded};

use crate::error::{Error, Result};

/// Timeouts and retry policy for downloads.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// Abandon a request after this long without a byte (also the connect timeout).
    pub stall: Duration,
    /// How many times a failed request is tried again.
    pub retries: u32,
    /// The first wait before a retry; each later wait doubles it.
    pub retry_base: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig { stall: Duration::from_secs(30), retries: 5, retry_base: Duration::from_secs(1) }
    }
}

impl NetConfig {
    /// The defaults, overridden by `LASTLAYER_TIMEOUT`, `LASTLAYER_RETRIES` and
    /// `LASTLAYER_RETRY_BASE_MS`. A value that is not a number is a usage error naming it.
    pub fn from_env() -> Result<Self> {
        let mut cfg = NetConfig::default();
        if let Some(secs) = env_number("LASTLAYER_TIMEOUT", "a number of seconds, such as 30")? {
            if !(secs > 0.0 && secs.is_finite()) {
                return Err(Error::Usage { flag: "LASTLAYER_TIMEOUT".into(), message: format!("{secs} is not a positive number of seconds") });
            }
            cfg.stall = Duration::from_secs_f64(secs);
        }
        if let Some(n) = env_number("LASTLAYER_RETRIES", "a whole number of retries, such as 5")? {
            if n < 0.0 || n.fract() != 0.0 || n > 100.0 {
                return Err(Error::Usage { flag: "LASTLAYER_RETRIES".into(), message: format!("{n} is not a whole number from 0 to 100") });
            }
            cfg.retries = n as u32;
        }
        if let Some(ms) = env_number("LASTLAYER_RETRY_BASE_MS", "milliseconds, such as 1000")? {
            if !(ms >= 0.0 && ms.is_finite()) {
                return Err(Error::Usage { flag: "LASTLAYER_RETRY_BASE_MS".into(), message: format!("{ms} is not a number of milliseconds") });
            }
            cfg.retry_base = Duration::from_secs_f64(ms / 1000.0);
        }
        Ok(cfg)
    }

    /// A ureq agent with these timeouts, no automatic redirects (see [`send`]), HTTP status
    /// codes returned rather than raised, and `Accept-Encoding: identity` so that bodies
    /// arrive as the file's own bytes. Proxies come from `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`.
    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_connect(Some(self.stall))
            .timeout_per_read(Some(self.stall))
            .timeout_per_write(Some(self.stall))
            .max_redirects(0)
            .http_status_as_error(false)
            .accept_encoding("identity")
            .user_agent(concat!("lastlayer/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent()
    }

    /// The wait before retry number `attempt` (1-based): `retry_base * 2^(attempt-1)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.retry_base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
    }
}

fn env_number(name: &str, want: &str) -> Result<Option<f64>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| Error::Usage { flag: name.to_string(), message: format!("'{v}' is not {want}") }),
        _ => Ok(None),
    }
}

/// A failed request: what went wrong, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetError {
    /// What went wrong, for a person ("connection reset", "no data for 30 s").
    pub message: String,
    /// True for failures a retry may cure (timeouts, resets, 5xx, 429).
    pub retryable: bool,
}

impl NetError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> Self {
        NetError { message: message.into(), retryable: true }
    }

    /// A failure a retry will not cure (404, 401, a bad URL).
    pub fn permanent(message: impl Into<String>) -> Self {
        NetError { message: message.into(), retryable: false }
    }

    /// Classifies a ureq error.
    pub fn from_ureq(e: ureq::Error, stall: Duration) -> Self {
        match e {
            ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
                NetError::transient(format!("could not connect within {} (LASTLAYER_TIMEOUT)", secs(stall)))
            }
            ureq::Error::Timeout(_) => NetError::transient(format!("no data for {} (LASTLAYER_TIMEOUT)", secs(stall))),
            ureq::Error::Io(io) => NetError::from_io(io, stall),
            ureq::Error::HostNotFound => NetError::transient("host not found (DNS)"),
            ureq::Error::ConnectionFailed => NetError::transient("connection failed"),
            ureq::Error::BadUri(u) => NetError::permanent(format!("bad URL: {u}")),
            other => NetError::transient(other.to_string()),
        }
    }

    /// Classifies an I/O error met while reading a body.
    pub fn from_io(e: std::io::Error, stall: Duration) -> Self {
        use std::io::ErrorKind as K;
        // ureq wraps its own errors (a timeout) in io::Error::other while a body is read.
        if e.get_ref().is_some_and(|inner| inner.is::<ureq::Error>()) {
            if let Some(Ok(inner)) = e.into_inner().map(|b| b.downcast::<ureq::Error>()) {
                return NetError::from_ureq(*inner, stall);
            }
            return NetError::transient("connection failed");
        }
        let text = e.to_string();
        match e.kind() {
            K::TimedOut | K::WouldBlock => NetError::transient(format!("no data for {} (LASTLAYER_TIMEOUT)", secs(stall))),
            K::ConnectionReset => NetError::transient("connection reset"),
            K::ConnectionRefused => NetError::transient("connection refused"),
            K::ConnectionAborted => NetError::transient("connection aborted"),
            K::UnexpectedEof => NetError::transient("connection closed early"),
            _ if text.contains("timeout") || text.contains("timed out") => {
                NetError::transient(format!("no data for {} (LASTLAYER_TIMEOUT)", secs(stall)))
            }
            _ => NetError::transient(text),
        }
    }

    /// Classifies an HTTP status that is not a success.
    pub fn from_status(status: u16, url: &str) -> Self {
        let message = format!("{url} answered HTTP {status}");
        match status {
            408 | 425 | 429 | 500..=599 => NetError::transient(message),
            401 | 403 => NetError::permanent(format!("{message} (not allowed: a gated or private repository needs HF_TOKEN)")),
            404 => NetError::permanent(format!("{message} (not found)")),
            _ => NetError::permanent(message),
        }
    }
}

impl std::fmt::Display for NetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or `cfg.retries` retries are spent,
/// logging "retrying in 4 s (2 of 5): connection reset" before each wait.
pub fn with_retries<T>(cfg: &NetConfig, what: &str, mut attempt: impl FnMut() -> Result<T, NetError>) -> Result<T, NetError> {
    let mut retry = 0;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable && retry < cfg.retries => {
                retry += 1;
                let wait = cfg.backoff(retry);
                tracing::warn!("{what}: retrying in {} ({retry} of {}): {e}", secs(wait), cfg.retries);
                std::thread::sleep(wait);
            }
            Err(e) if e.retryable && cfg.retries > 0 => {
                return Err(NetError { message: format!("{e} (gave up after {} retries; LASTLAYER_RETRIES)", cfg.retries), retryable: true })
            }
            Err(e) => return Err(e),
        }
    }
}

/// A duration for people: "4 s", "0.25 s".
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 || s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{} s", format!("{s:.2}").trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base() {
        let cfg = NetConfig { retry_base: Duration::from_millis(500), ..NetConfig::default() };
        let waits: Vec<u128> = (1..=4).map(|a| cfg.backoff(a).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000]);
    }

    #[test]
    fn retries_stop_at_the_limit_and_on_permanent_errors() {
        let cfg = NetConfig { retries: 3, retry_base: Duration::ZERO, ..NetConfig::default() };
        let mut calls = 0;
        let r: Result<(), _> = with_retries(&cfg, "x", || {
            calls += 1;
            Err(NetError::transient("connection reset"))
        });
        assert_eq!(calls, 4);
        assert!(r.unwrap_err().message.contains("gave up after 3 retries"));
        let mut calls = 0;
        let r: Result<(), _> = with_retries(&cfg, "x", || {
            calls += 1;
            Err(NetError::permanent("404"))
        });
        assert_eq!((calls, r.unwrap_err().message.as_str()), (1, "404"));
        let mut calls = 0;
        let r = with_retries(&cfg, "x", || {
            calls += 1;
            if calls < 3 { Err(NetError::transient("reset")) } else { Ok(calls) }
        });
        assert_eq!(r, Ok(3));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(secs(Duration::from_secs(4)), "4 s");
        assert_eq!(secs(Duration::from_millis(250)), "0.25 s");
        assert_eq!(secs(Duration::from_millis(12_400)), "12 s");
    }
}
