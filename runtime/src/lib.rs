//! Python's `multiprocessing`, rebuilt so that every worker is an isolated OS process running
//! tasks compiled to WebAssembly inside wasmtime.
//!
//! Tasks are written with the `wasmpool-guest` SDK (or any language that targets the
//! `wasmpool:task` WIT world) and built for `wasm32-wasip2`. The host loads the component
//! once, compiles it into a content-addressed cache, and starts worker processes that map
//! the compiled artifact and run tasks on request.
//!
//! ```no_run
//! use wasmpool::{Module, Process};
//!
//! fn main() -> wasmpool::Result<()> {
//!     // Lets this program serve as its own worker binary (as Python's `freeze_support`).
//!     wasmpool::run_worker_if_requested();
//!
//!     // A guest Cargo project is built for you; a `.wasm` component file works too.
//!     let module = Module::load("examples/testkit")?;
//!     let p = Process::new(&module, "add", &(2, 3))?;
//!     p.start()?;
//!     p.join()?;
//!     println!("{} exited with {:?} and returned {}", p.name(), p.exitcode(), p.result::<i64>()?);
//!     Ok(())
//! }
//! ```
//!
//! Modules are private; the API is re-exported here, flat.

#![deny(missing_docs)]

mod bindings;
mod broker;
pub mod cluster;
mod component_bytes;
mod engine;
mod error;
mod fdpass;
mod fork_client;
mod function_cache;
mod grants;
mod guest_build;
mod http_denied;
mod launch;
pub mod lines;
mod manager;
mod module;
mod output;
mod pool;
mod process;
mod protocol;
mod python_build;
mod rules;
mod runtime;
mod scalars;
mod shm;
mod spawn;
mod stamps;
mod supervisor;
mod values;
mod wire_bytes;
mod worker;

pub use broker::{DEFAULT_MAX_MESSAGE_BYTES, set_max_message_bytes};
pub use error::{Error, Result};
pub use fork_client::{
    DEFAULT_FORK_SERVER_IDLE_TIMEOUT, StartMethod, set_start_method, start_method,
};
pub use function_cache::CompileStats;
pub use grants::Grants;
pub use manager::Manager;
pub use module::{BuildOptions, DEFAULT_CACHE_MAX_BYTES, MAX_MODULE_BYTES, Module, cache_dir};
pub use output::{Captured, Output, OutputEvent, Stream, TAGGED_PIECE_BYTES};
pub use pool::{
    AsCompleted, AsyncResult, Executor, Imap, ImapCanceller, MapStream, Pool, PoolBuilder,
    TaskFuture, Tenant, as_completed,
};
pub use process::{ChildInfo, Process, active_children, cpu_count};
pub use runtime::{DEFAULT_MAX_SHARED_SEGMENTS, Runtime, RuntimeBuilder};

/// Python's `concurrent.futures` functions over [`TaskFuture`]s.
pub mod futures {
    pub use crate::pool::ReturnWhen;
    pub use crate::pool::wait_futures as wait;
    pub use crate::pool::{AsCompleted, TaskFuture, as_completed};
}

/// Python's `multiprocessing.connection.wait`: waiting on pipe ends, processes and
/// futures at once.
pub mod connection {
    pub use crate::pool::Waitable;
    pub use crate::pool::wait_objects as wait;
    pub use wasmpool_objects::Connection;
}
pub use protocol::Limits;
/// Frame-decoder entry points for the fuzzer (`fuzz/`); not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::protocol::fuzzing::*;

    /// Sets how long the host waits inside a frame for a worker's next byte before it takes
    /// the worker for broken (default 10 s), for the global runtime's workers: tests of a
    /// stalled worker need not wait that long.
    pub fn set_frame_stall_limit(limit: std::time::Duration) {
        crate::Runtime::global().set_frame_stall_limit(limit);
    }
}
pub use spawn::set_worker_exe;
pub use values::{MAX_JSON_DEPTH, check_json, encode_args, json_args, msgpack_to_json, write_json};
pub use wasmpool_objects::{
    Barrier, Condition, ConditionGuard, Connection, Dict, Event, List, Lock, LockGuard,
    ObjectError, Queue, RLock, RLockGuard, Semaphore, SemaphoreGuard,
};
pub use worker::run_worker_if_requested;
