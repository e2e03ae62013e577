//! One extraction per cache entry at a time: an exclusive lock on `<entry>.lock` (released by
//! the operating system when the holder dies), holding the holder's pid for messages.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{IoContext, Result};

/// A held lock; released on drop.
#[derive(Debug)]
pub struct EntryLock {
    file: File,
    path: PathBuf,
}

impl EntryLock {
    /// Takes the lock at `path`, waiting for another process that holds it (logging who).
    pub fn acquire(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).at(path)?;
        let start = Instant::now();
        let mut told = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !told {
                        let mut holder = String::new();
                        let _ = file.read_to_string(&mut holder);
                        tracing::warn!(
                            "waiting: {} is being extracted by another lastlayer process (pid {}); this one continues when it is done",
                            path.display(),
                            holder.trim()
                        );
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e).at(path),
            }
        }
        if told {
            tracing::info!("lock on {} acquired after {:.0}s", path.display(), start.elapsed().as_secs_f64());
        }
        file.set_len(0).at(path)?;
        file.rewind().at(path)?;
        write!(file, "{}", std::process::id()).at(path)?;
        Ok(EntryLock { file, path: path.to_path_buf() })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pid written in a lock file that some process holds now, if any.
    pub fn holder(path: &Path) -> Option<u32> {
        let file = File::open(path).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => std::fs::read_to_string(path).ok()?.trim().parse().ok(),
        }
    }
}

impl Drop for EntryLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}
