//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching or listing models.
///
/// Each variant displays as one line that says what failed and, where there is
/// one, what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// Neither `SEMBASE_HOME` nor `HOME` is set, so the store has no default place.
    #[error("cannot locate the model store: set SEMBASE_HOME (or HOME)")]
    NoHome,

    /// A store name was asked for that has not been pulled.
    #[error("model '{name}' is not in the store ({}); run `sembase model pull {name}`", models_dir.display())]
    NotInstalled {
        /// The name (or repo id) as given.
        name: String,
        /// The store's `models/` directory.
        models_dir: PathBuf,
    },

    /// A directory was given that does not hold a model.
    #[error("{} is not a model directory (it has no config.json or adapter_config.json)", .0.display())]
    NotAModelDir(PathBuf),

    /// A path was given that does not exist.
    #[error("no such model directory: {}", .0.display())]
    NoSuchDir(PathBuf),

    /// The name cannot be used as a directory name in the store.
    #[error("'{0}' cannot be a model name in the store (use letters, digits, '.', '_' and '-')")]
    BadName(String),

    /// The spec is neither a directory, a Hugging Face repo id nor a known mirror.
    #[error("unknown model '{spec}': not a directory, a Hugging Face repo id (org/name[@revision]) or a known mirror ({known})")]
    UnknownModel {
        /// The spec as given.
        spec: String,
        /// The catalogue's names, comma separated.
        known: String,
    },

    /// Offline mode is on and no local source had the model.
    #[error("model '{spec}' is not available offline ({tried}); unset SEMBASE_OFFLINE and HF_HUB_OFFLINE to download it")]
    Offline {
        /// The spec as given.
        spec: String,
        /// What was looked at.
        tried: String,
    },

    /// Every source was tried and each failed.
    #[error("could not pull '{spec}': {tried}")]
    PullFailed {
        /// The spec as given.
        spec: String,
        /// Each source and why it failed, separated by "; ".
        tried: String,
    },

    /// The Hugging Face Hub does not know the repo or revision (or refuses access).
    #[error("Hugging Face repo '{repo}' (revision '{revision}') is not available from {endpoint}: HTTP {status}{hint}")]
    RepoNotFound {
        /// `org/name`.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The Hub endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// A hint such as "; set HF_TOKEN for gated or private repos" (may be empty).
        hint: String,
    },

    /// A server answered with an unexpected HTTP status.
    #[error("GET {url}: HTTP {status}")]
    HttpStatus {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },

    /// The connection failed or broke off.
    #[error("GET {url}: {message}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },

    /// A file's digest is not the expected one; the file was discarded.
    #[error("{file}: {kind} {actual} does not match the expected {expected}; the download was discarded")]
    Checksum {
        /// The file's name.
        file: String,
        /// Which digest: `sha256` or `git blob sha1`.
        kind: &'static str,
        /// The expected digest (hex).
        expected: String,
        /// The digest of what arrived (hex).
        actual: String,
    },

    /// Neither a pin nor the source gives a digest for a file, so it cannot be
    /// checked; it was discarded.
    #[error("{file}: {url} gives no sha256 or git blob id to check the file against; sembase installs verified files only (pull the model from a local directory you trust instead)")]
    Unverifiable {
        /// The file's name.
        file: String,
        /// Where it was fetched from.
        url: String,
    },

    /// A file's size is not the expected one.
    #[error("{file}: {actual} bytes where {expected} were expected")]
    Size {
        /// The file's name.
        file: String,
        /// The expected size.
        expected: u64,
        /// The size found.
        actual: u64,
    },

    /// Content that should have a known shape does not (JSON answer, archive, weights file).
    #[error("{what}: {message}")]
    Invalid {
        /// What was being read.
        what: String,
        /// What is wrong with it.
        message: String,
    },

    /// A file-system operation failed.
    #[error("cannot {action} {}: {err}", path.display())]
    Io {
        /// What was being done ("read", "create", "rename", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        err: io::Error,
    },
}

impl From<sembase_embed::durable::FileError> for HubError {
    fn from(e: sembase_embed::durable::FileError) -> Self {
        HubError::io("write", e.path, e.source)
    }
}

impl HubError {
    /// Builds an [`HubError::Io`].
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, err: io::Error) -> HubError {
        HubError::Io { action, path: path.into(), err }
    }

    /// Builds an [`HubError::Invalid`].
    pub(crate) fn invalid(what: impl Into<String>, message: impl ToString) -> HubError {
        HubError::Invalid { what: what.into(), message: message.to_string() }
    }

    /// True for failures that a later attempt may get past (the network broke off),
    /// whose partial downloads are worth keeping for a resumed attempt.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            HubError::Http { .. } => true,
            HubError::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = HubError> = std::result::Result<T, E>;
