//! The one error type of the library.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong, as variants a caller can match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task ran and failed: it returned `Err`, or panicked (the message says which).
    #[error("task `{task}` failed: {message}")]
    Task {
        /// The task's name.
        task: String,
        /// The guest's error or panic message.
        message: String,
    },
    /// The guest trapped (e.g. `unreachable`, out-of-bounds access): not a panic the SDK saw.
    #[error("task `{task}` trapped: {message}")]
    Trap {
        /// The task's name.
        task: String,
        /// What wasmtime reported.
        message: String,
    },
    /// The task hit a limit (time, memory, stack, output or fuel) and was stopped; its
    /// worker carries on.
    #[error("task `{task}` {message}")]
    Limit {
        /// The task's name.
        task: String,
        /// Which limit, and its value (e.g. "exceeded its time limit of 1s").
        message: String,
    },
    /// The module has no task of that name.
    #[error("unknown task `{task}`; the module's tasks are: {}", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        task: String,
        /// The tasks the module does export.
        available: Vec<String>,
    },
    /// The arguments do not fit the task's parameters (count or types), or cannot be encoded.
    #[error("bad arguments: {0}")]
    BadArgs(String),
    /// The worker process died (killed, crashed) while it ran the task.
    #[error("worker lost: process {pid} running task `{task}` {reason}")]
    WorkerLost {
        /// The worker's OS process id.
        pid: u32,
        /// The task it was running.
        task: String,
        /// The signal that killed it, if a signal did.
        signal: Option<i32>,
        /// How it ended, in words (e.g. "was killed by signal 9 (SIGKILL)").
        reason: String,
    },
    /// The task was not run, or not run again: it had taken down this many worker processes
    /// in a row, the pool's restart limit (see
    /// [`PoolBuilder::restart_limit`](crate::PoolBuilder::restart_limit)). This keeps a task
    /// that kills every worker from making the pool start worker after worker.
    #[error(
        "task `{task}` was not run: it took down {losses} worker processes in a row (the pool's restart limit)"
    )]
    RestartLimit {
        /// The task's name.
        task: String,
        /// How many workers it took down in a row.
        losses: u32,
    },
    /// The work was cancelled: before it started
    /// ([`TaskFuture::cancel`](crate::TaskFuture::cancel), or
    /// [`Executor::shutdown`](crate::Executor::shutdown) with `cancel_futures`: Python's
    /// `CancelledError`), or queued or running ([`AsyncResult::cancel`](crate::AsyncResult::cancel),
    /// [`ImapCanceller`](crate::ImapCanceller)), its worker then stopped.
    #[error("task `{task}` was cancelled")]
    Cancelled {
        /// The task's name.
        task: String,
    },
    /// A wait ran out of time; the work itself goes on.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The task's result does not decode into the type asked for.
    #[error("cannot decode the result of task `{task}` as `{ty}`: {message}")]
    Decode {
        /// The task's name.
        task: String,
        /// The Rust type asked for.
        ty: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// The module is not a usable task component.
    #[error("{}: {message}", path.display())]
    BadModule {
        /// Where the module came from.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Building a guest Cargo project failed.
    #[error("building the guest project {}: {message}", path.display())]
    GuestBuild {
        /// The project directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// An operation not allowed in the object's current state (as Python's `ValueError` /
    /// `AssertionError`): starting a process twice, joining one never started, …
    #[error("{0}")]
    State(String),
    /// A worker process could not be started or talked to.
    #[error("worker process: {0}")]
    Worker(String),
    /// An operation on a shared object failed (empty queue, end of file on a pipe, …).
    #[error(transparent)]
    Object(#[from] wasmpool_objects::ObjectError),
    /// The cluster's Redis cannot be reached, refused a command, or holds keys this version
    /// of wasmpool does not read (see [`crate::cluster`]).
    #[error("cluster: {0}")]
    Cluster(String),
    /// An I/O error on the host (reading a module, writing the cache, …).
    #[error("{context}: {source}")]
    Io {
        /// What the host was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
