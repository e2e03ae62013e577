//! A download into a `.part` file that continues from the bytes already there: it asks for
//! `Range: bytes=N-`, appends on a 206, starts over on a 200 (a server or proxy that ignores
//! ranges), and retries stalls and dropped connections with backoff. Checking the finished
//! file (md5, sha256) is the caller's job.

use std::io::{Read, Write};
use std::path::Path;

use super::{send, with_retries, Auth, Method, NetConfig, NetError};
use crate::error::{Error, Result};
use crate::progress::Task;

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The file's size.
    pub size: u64,
    /// Bytes that were already in the `.part` file before this call and were kept: when a
    /// finished file fails its checksum, these may be stale, so download once more afresh.
    pub carried_over: u64,
    /// Requests made (1 when nothing failed; 0 when the `.part` file was already complete).
    pub requests: u32,
}

/// Downloads `url` into `part`, continuing from its current length. `expected_size`, when
/// known, lets a complete `.part` file skip the request. `auth` goes only to its own host.
#[allow(clippy::too_many_arguments)]
pub fn download_resumable(
    agent: &ureq::Agent,
    cfg: &NetConfig,
    url: &str,
    auth: Option<&Auth>,
    part: &Path,
    expected_size: Option<u64>,
    task: &mut Task,
    what: &str,
) -> Result<Downloaded> {
    let mut carried_over = part_len(part);
    let mut requests = 0u32;
    if carried_over > 0 {
        tracing::info!("{what}: resuming from {} bytes already downloaded ({})", carried_over, part.display());
    }
    let outcome = with_retries(cfg, what, || {
        let mut have = part_len(part);
        if let Some(size) = expected_size {
            if have == size && size > 0 {
                return Ok(Ok(size));
            }
            if have > size {
                have = 0;
            }
        }
        requests += 1;
        let sent = send(agent, cfg, Method::Get, url, (have > 0).then_some(have), auth, true)?;
        let status = sent.response.status().as_u16();
        let headers = sent.response.headers();
        let number = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let (offset, total) = match status {
            206 => {
                let range = headers.get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                match parse_content_range(range) {
                    Some((start, total)) if start == have => (start, total.or(expected_size)),
                    _ => {
                        truncate(part);
                        carried_over = 0;
                        return Err(NetError::transient(format!(
                            "{} answered range '{range}' to a request from byte {have}; starting over",
                            sent.url
                        )));
                    }
                }
            }
            200 => {
                if have > 0 {
                    tracing::info!("{what}: the server ignores Range; downloading from the beginning");
                }
                carried_over = 0;
                (0, number("content-length").or(expected_size))
            }
            416 => {
                // `bytes */TOTAL`: the .part file may already be the whole file (a run stopped
                // between the last byte and the checksum).
                let range = headers.get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                let total = range.trim().strip_prefix("bytes */").and_then(|t| t.trim().parse::<u64>().ok());
                if total == Some(have) {
                    return Ok(Ok(have));
                }
                truncate(part);
                carried_over = 0;
                return Err(NetError::transient(format!("{} cannot serve from byte {have} (HTTP 416); starting over", sent.url)));
            }
            s => return Err(NetError::from_status(s, &sent.url)),
        };
        match receive(sent.response.into_body(), part, offset, total, task, cfg) {
            Ok(size) => Ok(Ok(size)),
            Err(NetOrDisk::Net(e)) => Err(e),
            Err(NetOrDisk::Disk(e)) => Ok(Err(e)),
        }
    });
    match outcome {
        Ok(Ok(size)) => Ok(Downloaded { size, carried_over, requests }),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(Error::Download { what: what.to_string(), message: e.message }),
    }
}

enum NetOrDisk {
    Net(NetError),
    Disk(Error),
}

/// Writes the body into `part` from `offset` (truncating first when 0). A broken connection is
/// a [`NetError`] raised through `?` by the caller's retry loop.
fn receive(body: ureq::Body, part: &Path, offset: u64, total: Option<u64>, task: &mut Task, cfg: &NetConfig) -> Result<u64, NetOrDisk> {
    let disk = |e: std::io::Error| NetOrDisk::Disk(Error::Io { path: part.to_path_buf(), source: e });
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(offset > 0)
        .truncate(offset == 0)
        .open(part)
        .map_err(disk)?;
    if let Some(total) = total {
        task.set_total(total);
    }
    task.set_position(offset);
    let mut reader = body.into_with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = offset;
    let result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                out.write_all(&buf[..n]).map_err(disk)?;
                got += n as u64;
                task.set_position(got);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(NetError::from_io(e, cfg.stall)),
        }
    };
    // Keep what arrived, even on a broken connection: the next attempt resumes from it.
    out.flush().map_err(disk)?;
    out.sync_all().map_err(disk)?;
    if let Err(mut e) = result {
        e.message = format!("{} after {got} bytes", e.message);
        return Err(NetOrDisk::Net(e));
    }
    if let Some(total) = total {
        if got < total {
            return Err(NetOrDisk::Net(NetError::transient(format!("connection closed after {got} of {total} bytes"))));
        }
    }
    Ok(got)
}

fn part_len(part: &Path) -> u64 {
    std::fs::metadata(part).map(|m| m.len()).unwrap_or(0)
}

fn truncate(part: &Path) {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(part) {
        let _ = f.set_len(0);
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) → (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (start, _) = span.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_read() {
        assert_eq!(parse_content_range("bytes 600-999/1000"), Some((600, Some(1000))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
