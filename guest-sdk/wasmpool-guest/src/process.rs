//! The identity of the OS process a task runs in.
//!
//! Each wasmpool worker is an OS process of its own; these are the numbers a Python task
//! gets from `os.getpid()`, `os.getppid()` and `multiprocessing.current_process().name`.

use crate::bindings::wasmpool::task::host;

/// Identity of the worker process running the current task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The worker's OS process id.
    pub pid: u32,
    /// The host's OS process id (the worker's parent).
    pub ppid: u32,
    /// The name the host gave this process, e.g. `Process-1` or `PoolWorker-2`.
    pub name: String,
}

/// Returns the identity of the worker process running this task.
pub fn current() -> ProcessInfo {
    let info = host::process_info();
    ProcessInfo {
        pid: info.pid,
        ppid: info.ppid,
        name: info.name,
    }
}

/// The worker's OS process id, as Python's `os.getpid()`.
pub fn getpid() -> u32 {
    host::process_info().pid
}

/// The host's OS process id, as Python's `os.getppid()` in a child process.
pub fn getppid() -> u32 {
    host::process_info().ppid
}

/// The worker process's name, as Python's `multiprocessing.current_process().name`.
pub fn name() -> String {
    host::process_info().name
}
