//! The objects wasmpool tasks share, as typed handles: [`Queue`], [`Connection`] (one end of
//! a pipe), [`Lock`], [`RLock`], [`Semaphore`], [`Event`], [`Barrier`], [`Condition`],
//! [`Dict`] and [`List`], with Python's `multiprocessing` names and semantics.
//!
//! The host owns every object; a handle is a reference to it (an id and an unguessable
//! token). Handles travel inside task arguments as `[tag, id, token]` MessagePack arrays, so
//! a task receives a `Queue<String>` argument exactly as Python passes a queue in
//! `Process(args=(q,))`. The same types serve the host program (through the `wasmpool` crate,
//! whose `Manager` creates them) and guest tasks (through `wasmpool-guest`): each side
//! installs the [`Transport`] that carries operations to the host's broker.
//!
//! Every blocking operation has a `_timeout` form; a blocking call blocks only its caller.

#![deny(missing_docs)]

mod dict;
mod handle;
mod pipe;
mod queue;
mod sync;
mod transport;
pub mod wire;

pub use dict::{Dict, List};
pub use pipe::Connection;
pub use queue::Queue;
pub use sync::{
    Barrier, Condition, ConditionGuard, Event, Lock, LockGuard, RLock, RLockGuard, Semaphore,
    SemaphoreGuard,
};
pub use transport::{Transport, install};
pub use wire::ObjectError;
