//! The library's error type. Every message names what was wrong (the file, flag or model) and
//! what to do about it; the binary prints it and maps [`Error::category`] to an exit status.

use std::path::{Path, PathBuf};

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Broad classes of failure, so that a caller can choose an exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// A flag or argument is out of range or names something unknown.
    Usage,
    /// An input file or folder is missing, unreadable or malformed.
    Input,
    /// A download failed, or the data is not cached and `--offline` was given.
    Network,
    /// A checksum or manifest did not match: data is damaged or not what was expected.
    Integrity,
    /// Anything else (libtorch failures, disk errors while writing).
    Internal,
}

/// Everything that can go wrong in lastlayer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is out of range or inconsistent with another flag.
    #[error("invalid {flag}: {message}")]
    Usage {
        /// The flag, as the user typed it (`--sample`).
        flag: String,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// A model name that the registry does not list.
    #[error("unknown model '{name}': the registry lists {known}; `lastlayer models` shows them")]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The registry's names, comma separated.
        known: String,
    },
    /// An input file or folder with content that cannot be used.
    #[error("{}: {message}", path.display())]
    BadInput {
        /// The offending file or folder.
        path: PathBuf,
        /// What is wrong with it and what to do.
        message: String,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}{}", path.display(), disk_hint(source))]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A download failed.
    #[error("download of {what} failed: {message}")]
    Download {
        /// What was being downloaded (a URL or a Hub file).
        what: String,
        /// Why, and what to do.
        message: String,
    },
    /// Something is needed from the network but `--offline` was given.
    #[error("{what} is not in the local cache and --offline was given: {hint}")]
    Offline {
        /// What was missing.
        what: String,
        /// What to run to get it.
        hint: String,
    },
    /// A checksum did not match the expected value.
    #[error("{}: {algorithm} is {actual}, expected {expected}; {action}", path.display())]
    Checksum {
        /// The file that was checked.
        path: PathBuf,
        /// `sha256`, `md5`, `blake3`.
        algorithm: &'static str,
        /// The value it should have had.
        expected: String,
        /// The value it had.
        actual: String,
        /// What lastlayer did and what the user can do.
        action: String,
    },
    /// Bytes (an upload, say) that are not a picture lastlayer can decode.
    #[error("{message}")]
    BadPicture {
        /// What was wrong, naming the formats lastlayer reads.
        message: String,
    },
    /// The HTTP server could not start or stopped with an error.
    #[error("server: {message}")]
    Server {
        /// What failed.
        message: String,
    },
    /// A model could not be exported.
    #[error("export: {message}")]
    Export {
        /// What failed.
        message: String,
    },
    /// A split was extracted in shards, and one of them is missing or damaged.
    #[error("the {split} split's features are in shards and shard {shard} is {reason}; make it with:\n    {command}")]
    Shard {
        /// The split.
        split: String,
        /// The first bad shard, `I/N`.
        shard: String,
        /// Its entry folder.
        dir: std::path::PathBuf,
        /// `missing (<folder>)`, or what is wrong with it, and the other bad shards if any.
        reason: String,
        /// The `lastlayer extract … --shard I/N` command that makes the first one.
        command: String,
    },
    /// A libtorch operation failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// The broad class of this error.
    pub fn category(&self) -> Category {
        match self {
            Error::Usage { .. } | Error::UnknownModel { .. } => Category::Usage,
            Error::BadInput { .. } | Error::BadPicture { .. } | Error::Shard { .. } => Category::Input,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Category::Input,
            Error::Io { .. } | Error::Torch(_) | Error::Server { .. } | Error::Export { .. } => Category::Internal,
            Error::Download { .. } | Error::Offline { .. } => Category::Network,
            Error::Checksum { .. } => Category::Integrity,
        }
    }

    /// A [`Error::Usage`] for `flag`.
    pub fn usage(flag: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Usage { flag: flag.into(), message: message.into() }
    }

    /// A [`Error::BadInput`] for `path`.
    pub fn bad_input(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::BadInput { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}

/// What to do when the disk (or the file-size limit) is full.
fn disk_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) | Some(27) | Some(122) => {
            "; the disk is full or a size limit was hit: free space, or put that file on another disk (--cache-dir \
             for cached features, --out for runs and exports), then run the same command again (finished work is kept)"
        }
        _ => "",
    }
}

/// Attaches a path to an [`std::io::Error`].
pub trait IoContext<T> {
    /// Turns the error into an [`Error::Io`] naming `path`.
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.as_ref().to_path_buf(), source })
    }
}
