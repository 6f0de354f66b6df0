//! Shared memory between the host and its workers: where the messages of pipes and of
//! unbounded queues travel, so that neither a send nor a receive is a round trip through
//! the host's broker.
//!
//! A [`SharedPipe`] is one sealed memfd segment per pipe ([`segment`]), holding a ring per
//! direction ([`ring`]); a [`SharedQueue`] is one ring; a [`SharedLock`] is one word; a
//! [`SharedDict`] is a hash table and its arena ([`dict`]). Waits are futexes on words of
//! the segment ([`futex`]), and each ring or dict is guarded by short mutexes ([`mutex`]).
//! The broker creates the segment with the object and hands its descriptor to each worker
//! that uses it (over the worker's socket, with the answer to its `Attach`); it keeps deciding who holds which pipe end and whether a queue is closed, and
//! clears the mutexes (and frees the lock) of a worker that died holding them. Bounded and
//! joinable queues, whose rules count items across processes, and the other synchronisation
//! objects, whose waits are ordered by the broker, stay with the broker.
//!
//! Everything read from a segment is checked: a worker that scribbles on it can corrupt
//! only the pipes it was given, and a reader that finds nonsense reports it as an error.

mod dict;
mod futex;
mod lock;
mod mutex;
mod pipe;
mod queue;
mod ring;
mod segment;

use std::time::{Duration, Instant};

use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};

pub(crate) use dict::SharedDict;
pub(crate) use lock::SharedLock;
pub(crate) use pipe::SharedPipe;
pub(crate) use queue::SharedQueue;
pub(crate) use segment::SegmentBudget;

/// How long a receiver spins on an empty ring before it sleeps: longer than a quick
/// answer takes, short enough that an idle receiver costs nothing.
const SPIN: Duration = Duration::from_micros(20);
/// How long a sender waits for room in a full ring before it spills it.
const ROOM_WAIT: Duration = Duration::from_millis(1);

/// A deadline 50 ms away, for tests of waits that time out.
#[cfg(test)]
fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(50))
}

/// An operation done in place, or to be asked of the broker (the ring is spilled).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Local<T> {
    Done(T),
    Broker,
}

impl<T> Local<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Local<U> {
        match self {
            Local::Done(t) => Local::Done(f(t)),
            Local::Broker => Local::Broker,
        }
    }
}

/// An object's segment, as the broker hands it out and a worker keeps it.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    Pipe(std::sync::Arc<SharedPipe>),
    Queue(std::sync::Arc<SharedQueue>),
    Lock(std::sync::Arc<SharedLock>),
    Dict(std::sync::Arc<SharedDict>),
}

/// Which kind of segment came with an `Attached` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum SegmentKind {
    Pipe,
    Queue,
    Lock,
    Dict,
}

/// Whether `req` is done in place when its object has a segment. A dict operation that
/// stores a handle is not: the broker counts the dict's references to the objects it holds
/// (see [`stores_handles`](crate::rules::stores_handles)), so it takes the dict over.
pub(crate) fn in_place(req: &Request) -> bool {
    matches!(
        req,
        Request::ConnSend(_)
            | Request::ConnRecv
            | Request::ConnPoll
            | Request::QueuePut(_)
            | Request::QueueGet
            | Request::Acquire
            | Request::Release
            | Request::Locked
    ) || (dict_request(req) && !crate::rules::stores_handles(req))
}

/// Whether `req` is a dict operation.
pub(crate) fn dict_request(req: &Request) -> bool {
    matches!(
        req,
        Request::DictGet(_)
            | Request::DictSet(_)
            | Request::DictDelete(_)
            | Request::DictContains(_)
            | Request::DictKeys
            | Request::DictValues
            | Request::DictItems
            | Request::DictLen
            | Request::DictUpdate(_)
            | Request::DictSetdefault(_)
            | Request::DictPop(_)
            | Request::DictIncrement(..)
            | Request::DictCompareAndSwap { .. }
            | Request::DictPopitem
            | Request::DictClear
    )
}

impl Shared {
    /// Maps a segment of `kind` the host created.
    pub fn open(kind: SegmentKind, fd: std::os::fd::OwnedFd) -> std::io::Result<Shared> {
        Ok(match kind {
            SegmentKind::Pipe => Shared::Pipe(std::sync::Arc::new(SharedPipe::open(fd)?)),
            SegmentKind::Queue => Shared::Queue(std::sync::Arc::new(SharedQueue::open(fd)?)),
            SegmentKind::Lock => Shared::Lock(std::sync::Arc::new(SharedLock::open(fd)?)),
            SegmentKind::Dict => Shared::Dict(std::sync::Arc::new(SharedDict::open(fd)?)),
        })
    }

    pub fn kind(&self) -> SegmentKind {
        match self {
            Shared::Pipe(_) => SegmentKind::Pipe,
            Shared::Queue(_) => SegmentKind::Queue,
            Shared::Lock(_) => SegmentKind::Lock,
            Shared::Dict(_) => SegmentKind::Dict,
        }
    }

    /// Does `req` on `target` in place, as process `tag`, waiting until `deadline`;
    /// `Broker` if it has to go through the broker (a spilled ring, or a request this kind
    /// of object does not do in place).
    pub fn run(
        &self,
        target: Handle,
        tag: u32,
        req: &Request,
        deadline: Option<Instant>,
    ) -> Result<Local<Response>, ObjectError> {
        let end = (target.id & 1) as u8;
        Ok(match (self, req) {
            (Shared::Pipe(p), Request::ConnSend(v)) => {
                p.send(end, tag, v)?.map(|()| Response::Unit)
            }
            (Shared::Pipe(p), Request::ConnRecv) => {
                p.recv(end, tag, deadline)?.map(Response::Value)
            }
            (Shared::Pipe(p), Request::ConnPoll) => p.poll(end, tag, deadline)?.map(Response::Flag),
            (Shared::Queue(q), Request::QueuePut(v)) => q.put(tag, v)?.map(|()| Response::Unit),
            (Shared::Queue(q), Request::QueueGet) => q.get(tag, deadline)?.map(Response::Value),
            (Shared::Lock(l), Request::Acquire) => {
                Local::Done(Response::Flag(l.acquire(tag, deadline)))
            }
            (Shared::Lock(l), Request::Release) => {
                Local::Done(l.release().map(|()| Response::Unit)?)
            }
            (Shared::Lock(l), Request::Locked) => Local::Done(Response::Flag(l.locked())),
            (Shared::Dict(d), req) if dict_request(req) => d.run(tag, req)?,
            _ => Local::Broker,
        })
    }

    /// The descriptor to hand to a worker (only the host, which made it, has it).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Shared::Pipe(p) => p.fd(),
            Shared::Queue(q) => q.fd(),
            Shared::Lock(l) => l.fd(),
            Shared::Dict(d) => d.fd(),
        }
    }
}
