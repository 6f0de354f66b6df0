//! The contract between the host that starts a worker process and the worker: how the binary
//! is told to serve (its arguments), where its socket is (a file descriptor), what its
//! environment carries, and the frames a fork server exchanges with the host. Both sides
//! import it from here and from nowhere else, so neither can drift from the other.
//!
//! The frames between a running worker and the host are in `crate::protocol`.

use serde::{Deserialize, Serialize};

use crate::protocol::Load;

/// The first argument that puts the binary in worker mode.
pub(crate) const WORKER_ARG: &str = "__wasmpool-worker";
/// The argument after [`WORKER_ARG`] that makes the worker binary a fork server.
pub(crate) const FORKSERVER_ARG: &str = "forkserver";
/// The file descriptor the worker's (or fork server's) socket is passed on.
pub(crate) const WORKER_FD: i32 = 3;
/// The environment variable carrying the host's pid, for the worker's watchdog.
pub(crate) const PARENT_ENV: &str = "WASMPOOL_PARENT_PID";
/// The environment variable passed through to workers to set their log filter.
pub(crate) const LOG_ENV: &str = "WASMPOOL_LOG";

/// Host → fork server, with the new worker's socket attached.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToForkServer {
    /// Fork a worker that loads `load` and serves on the attached socket.
    Fork { id: u64, load: Load },
}

/// Fork server → host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromForkServer {
    /// Request `id` forked worker `pid`; it answers on its socket (`Ready` or `LoadFailed`).
    Forked { id: u64, pid: u32 },
    /// Request `id` could not be served: the module would not load, or fork failed.
    Failed { id: u64, message: String },
    /// Worker `pid` exited with this raw wait status.
    Exited { pid: u32, status: i32 },
}
