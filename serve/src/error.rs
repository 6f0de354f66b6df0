//! The library's error: what can stop the service from starting or a helper from working.

use std::path::PathBuf;

/// What can go wrong starting or running the service, or managing its tenants file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The tenants file is unreadable or invalid.
    #[error("tenants file {}: {message}", path.display())]
    Tenants {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The state store (SQLite) failed.
    #[error("state store: {0}")]
    Store(#[from] rusqlite::Error),
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the service was doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The task runtime failed.
    #[error(transparent)]
    Runtime(#[from] wasmpool::Error),
}

impl ServeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServeError::Io {
            context: context.into(),
            source,
        }
    }
}
