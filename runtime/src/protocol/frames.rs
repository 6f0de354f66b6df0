//! The frames between the host and a worker process, each way: [`ToWorker`] and
//! [`FromWorker`], each in three lanes (control, calls, object operations), with what they
//! carry ([`Load`], [`Outcome`], [`Stream`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};

use super::Limits;
use crate::engine::EngineKind;

/// The exit status of a worker whose watchdog stopped a task stuck past its time limit. It
/// answered that task first, so no task was running when it exited.
pub(crate) const WATCHDOG_EXIT: i32 = 75;

/// The exit status of a worker that stopped itself because the call it was running was
/// cancelled (`Control::Skip` named it): that call's work was cancelled, nothing else ran.
pub(crate) const CANCELLED_EXIT: i32 = 76;

/// Which output stream of the guest a chunk of bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

/// How the message of a task that called `exit` with a non-zero status begins
/// (`Outcome::Failed`): a `Process` does not report it as an error, as Python's
/// `sys.exit(1)` prints nothing.
pub(crate) const EXIT_STATUS: &str = "exited with status ";

/// How one call ended, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded (MessagePack) return value.
    Ok(#[serde(with = "crate::wire_bytes::bytes")] Vec<u8>),
    /// The task returned `Err` or panicked.
    Failed(String),
    /// The module has no such task.
    UnknownTask,
    /// The arguments did not decode.
    BadArgs(String),
    /// The guest trapped; the instance was discarded.
    Trap(String),
    /// The task hit a limit (time, memory); the instance was discarded. The text names it.
    Limit(String),
}

/// What a worker needs to start serving tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Load {
    /// The precompiled component artifact to map.
    pub artifact: PathBuf,
    /// The process name tasks see (`Process-1`, `PoolWorker-3`, …).
    pub name: String,
    /// The engine kind `artifact` was compiled for: the worker must deserialize it with an
    /// engine of that kind.
    pub engine: EngineKind,
    /// The stack limit of the engine to load it into: the one its tasks are likely to ask
    /// for (the pool's or process's), so the first call need not load it again.
    pub stack_bytes: u64,
    /// The limits the first instance is made and its init run under: the memory and time
    /// limits of the pool or process the worker is for.
    pub init_limits: Limits,
}

/// Host → worker, in three lanes: the worker's setup and end ([`Control`]), the calls it
/// runs ([`CallRequest`]), and the answers to its shared-object operations
/// ([`ObjectAnswer`]). Whoever starts workers speaks the control lane, the pool or
/// `Process` the call lane, and the objects' backend (the broker) the object lane.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Setup and end.
    Control(Control),
    /// Work to run.
    Call(CallRequest),
    /// An answer of the objects' backend.
    Object(ObjectAnswer),
}

/// The control lane, host → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Map the module, instantiate it and run its init; answered by `Ready` or `LoadFailed`.
    Load(Load),
    /// Rename the process (a warm spare takes the name of the `Process` that claims it).
    Rename(String),
    /// Give the tasks these capabilities (directories, environment) from the next call on.
    Grant(crate::grants::Grants),
    /// Exit now, with status 0.
    Shutdown,
    /// These calls' work was cancelled after they were sent: each not started yet is
    /// answered unrun (with a `Failed` outcome the host ignores), and if one is running the
    /// worker exits at once with [`CANCELLED_EXIT`]. One answered already is not affected.
    Skip(Vec<u64>),
}

/// The call lane, host → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CallRequest {
    /// Run one task. With `exit_after`, the worker exits once it has answered
    /// (status 0 on success, 1 on failure), as a Python `Process` does.
    One {
        id: u64,
        task: String,
        #[serde(with = "crate::wire_bytes::bytes")]
        args: Vec<u8>,
        exit_after: bool,
        limits: Limits,
    },
    /// Run one task per item, in order, in one crossing into the guest.
    Batch {
        id: u64,
        task: String,
        items: super::packed::Packed,
        limits: Limits,
    },
}

/// The object lane, host → worker: the backend's answers to [`ObjectCall`]s.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ObjectAnswer {
    /// The answer to the worker's `Invoke` request `req` (or `Sync`). For a posted request
    /// only a refusal is answered. `postable`: the request was a put or a send on an
    /// object where those never wait, so later ones on this handle may be posted.
    Reply {
        req: u64,
        result: Result<Response, ObjectError>,
        postable: bool,
    },
    /// The host refused the posted request `req` on `target`. Until the worker sends a
    /// request on `target` that it waits for, every later posted one is refused the same.
    Refused {
        req: u64,
        target: Handle,
        error: ObjectError,
    },
    /// The answer to the worker's `Attach` request `req`: the kind of the object's shared
    /// segment, which came with this frame (a descriptor passed on the socket), or `None`
    /// when the object is used through the broker only.
    Attached {
        req: u64,
        result: Result<Option<crate::shm::SegmentKind>, ObjectError>,
    },
}

/// Worker → host, in the same three lanes as [`ToWorker`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// How the worker is.
    Control(Status),
    /// What a call did.
    Call(CallEvent),
    /// An operation on the shared objects.
    Object(ObjectCall),
}

/// The control lane, worker → host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Status {
    /// The module is loaded; these are its tasks.
    Ready { tasks: Vec<String> },
    /// The module could not be loaded or its init failed; the worker exits.
    LoadFailed(String),
    /// The worker is alive, running a call with a time limit: sent when it has sent
    /// nothing else for a second, so the host can tell a stopped or wedged worker (which
    /// sends nothing) from a long call, and replace it.
    Alive,
}

/// The call lane, worker → host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum CallEvent {
    /// Bytes the guest wrote to stdout or stderr during call `id`.
    Output {
        id: u64,
        stream: Stream,
        #[serde(with = "crate::wire_bytes::bytes")]
        data: Vec<u8>,
    },
    /// Call `id` finished. `fuel`: what it used, on a metered worker; `micros`: how long
    /// it ran in the worker (what the pool's pipelining is based on); `peak_memory`: the
    /// largest linear memory, in bytes, the instance running it had while it ran (all its
    /// memories together; what it started with counts, since an instance is reused and its
    /// memory never shrinks; 0 if it was refused before it ran).
    Done {
        id: u64,
        outcome: Outcome,
        fuel: Option<u64>,
        micros: u64,
        peak_memory: u64,
    },
    /// The next `answers.len()` items of batch call `id` (after those of earlier parts)
    /// finished; more answers follow. A batch's answers come in parts when they are large
    /// (see [`PART_BYTES`](super::PART_BYTES)).
    BatchPart {
        id: u64,
        answers: super::packed::BatchAnswers,
    },
    /// Batch call `id` finished: one outcome per item after those of its parts. Fewer
    /// answers than items means the rest never ran (the worker's watchdog stopped the batch
    /// in a host call): they are to be run again. `fuel`: what the items used together, on
    /// a metered worker; `micros`: how long the batch ran in the worker; `peak_memory`: as
    /// `Done`'s, over the whole batch (the largest of the instances it ran in, when one was
    /// replaced after a trap).
    BatchDone {
        id: u64,
        answers: super::packed::BatchAnswers,
        fuel: Option<u64>,
        micros: u64,
        peak_memory: u64,
    },
}

/// The object lane, worker → host: what the objects' backend serves.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ObjectCall {
    /// The running task performs `request` on a shared object; the worker blocks until
    /// the `Reply` for `req` arrives. A `posted` request (a put or a send the host said
    /// never waits) is not waited for: the host answers it only if it refuses it.
    Invoke {
        req: u64,
        target: Handle,
        request: Request,
        timeout_ms: Option<u64>,
        posted: bool,
    },
    /// Answered at once with an empty `Reply` for `req`: once it arrives, every refusal of
    /// a request posted before it has arrived too.
    Sync { req: u64 },
    /// The running task is about to use object `target` (a pipe end or a queue): the worker
    /// holds it from now on, and asks for its shared segment to use it in place (see
    /// `crate::shm`).
    Attach { req: u64, target: Handle },
    /// The last call trapped or hit a limit and its instance was discarded: whatever the
    /// worker held of the shared objects (locks, semaphores, pipe ends) is given back, as
    /// if the process had exited. Sent before the call's answer.
    InstanceLost,
}
