//! Each kind of shared object, in a file of its own, behind one trait: [`ObjectKind`].
//!
//! A kind keeps its own state (a queue's items, a lock's owner, a barrier's round) and the
//! rules of its operations; what every object has, whatever its kind (its waiters, holds,
//! tokens, references), is the [`Object`](super::object::Object)'s, which a kind reaches
//! through [`Common`]. [`ObjectState`] holds one kind's state and hands each operation to
//! it, so a kind can get another backend (a second implementation of the trait, as the
//! lock and the dict already have one in shared memory) without touching the others.

mod barrier;
mod condition;
mod dict;
mod event;
mod list;
mod lock;
mod pipe;
mod queue;
mod semaphore;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request};

pub(crate) use self::barrier::Barrier;
pub(crate) use self::condition::Condition;
pub(crate) use self::dict::Dict;
pub(crate) use self::event::Event;
pub(crate) use self::list::List;
pub(crate) use self::lock::{Lock, LockState};
pub(crate) use self::pipe::Pipe;
pub(crate) use self::queue::Queue;
pub(crate) use self::semaphore::Semaphore;
use super::object::{Hold, OpResult, Pending, Step, Waiter, open};
use super::refs::RefLog;
use super::{Owner, Responder};
use crate::shm::{Shared, SharedDict, SharedLock, SharedPipe, SharedQueue};

/// What of its object an operation of a kind may see and change besides the kind's own
/// state: everything all kinds have.
pub(crate) struct Common<'a> {
    pub kind: Kind,
    pub host_refs: &'a [usize; 2],
    pub holds: &'a mut [HashMap<Hold, u32>; 2],
    pub contained: &'a [usize; 2],
    /// What a dict's or list's contents cost the host (see `Object::stored`).
    pub stored: &'a mut usize,
    /// The handles the operation stored in a dict or list, or took out of it.
    pub refs: &'a mut RefLog,
    pub waiters: &'a mut VecDeque<Waiter>,
}

impl Common<'_> {
    /// Whether end `e` is still held by anyone, given whether the host program closed it.
    pub fn end_open(&self, e: usize, host_closed: bool) -> bool {
        open(self.host_refs, self.holds, self.contained, e, host_closed)
    }
}

/// The operations of one kind of shared object (or one backend of a kind), on its own
/// state; the registry calls them through [`ObjectState`].
pub(crate) trait ObjectKind {
    /// Whether `owner` may use end `end` at all (a closed copy of a pipe end may not); asked
    /// before anything else, so a refused owner is not counted as holding the object.
    fn admit(&self, _owner: Owner, _end: u8) -> Result<(), ObjectError> {
        Ok(())
    }

    /// Starts `req` from `owner` on end `end`: done now, or a wait.
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step;

    /// Tries a blocked operation again; `None` while it still cannot proceed.
    fn attempt(
        &mut self,
        _cx: &mut Common<'_>,
        _owner: Owner,
        _end: u8,
        _pending: &mut Pending,
    ) -> Option<OpResult> {
        None
    }

    /// The waiters were retried; `open`: whether each end is open now.
    fn pumped(&self, _open: [bool; 2]) {}

    /// Waiter `w`, taken from position `pos` of the waiters, timed out: answer it as Python
    /// would, or put it back (the object is pumped afterwards).
    fn expire(
        &mut self,
        cx: &mut Common<'_>,
        w: Waiter,
        pos: usize,
        out: &mut Vec<(Responder, OpResult)>,
    ) {
        expire_waiter(cx, w, pos, out);
    }

    /// Worker `pid` is gone, and its waiters (`gone`) with it: give back what it held.
    /// Answers whether that may let a waiter through.
    fn worker_exited(
        &mut self,
        _cx: &mut Common<'_>,
        _pid: u32,
        _gone: &[Waiter],
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        false
    }

    /// Whether `req` can never wait (an unbounded queue's put, a pipe send, a dict set, a
    /// list append): a worker may post it without waiting for the answer.
    fn never_waits(&self, _req: &Request) -> bool {
        false
    }

    /// Whether the host program closed its copy of end `e` (only a pipe's ends close).
    fn host_closed(&self, _e: usize) -> bool {
        false
    }

    /// The object's segment in shared memory, if it has one (and has not been taken over).
    fn shared(&self) -> Option<Shared> {
        None
    }

    /// Every handle the object's stored values (and keys) hold, as counted when they were
    /// stored (see `broker::refs`).
    fn contents(&self) -> Vec<Handle> {
        Vec::new()
    }
}

/// What a timed-out waiter is answered, for every kind but the barrier's.
pub(crate) fn expire_waiter(
    cx: &mut Common<'_>,
    mut w: Waiter,
    pos: usize,
    out: &mut Vec<(Responder, OpResult)>,
) {
    use wasmpool_objects::wire::Response;
    match w.pending {
        Pending::Op(ref req) => {
            let result = match req {
                Request::QueueGet => Err(ObjectError::Empty),
                Request::QueuePut(_) => Err(ObjectError::Full),
                Request::Acquire | Request::EventWait | Request::ConnPoll => {
                    Ok(Response::Flag(false))
                }
                _ => Err(ObjectError::Timeout),
            };
            out.push((w.responder, result));
        }
        Pending::Notify { count } => {
            // Not notified in time: the waiter still re-acquires the lock before it returns.
            w.pending = Pending::Reacquire {
                count,
                notified: false,
            };
            cx.waiters.push_back(w);
        }
        Pending::Barrier { .. } => out.push((w.responder, Err(ObjectError::Broken))),
        Pending::Reacquire { .. } => cx.waiters.insert(pos, w),
    }
}

/// Starts an operation that may wait: done if it can proceed now, else a wait.
fn now_or_wait<K: ObjectKind>(
    k: &mut K,
    cx: &mut Common<'_>,
    owner: Owner,
    end: u8,
    req: Request,
) -> Step {
    let mut pending = Pending::Op(req);
    match k.attempt(cx, owner, end, &mut pending) {
        Some(result) => Step::Done(result),
        None => Step::Wait(pending),
    }
}

/// Collects at most 40 bytes of formatted text, then stops the formatting.
struct Short(String);

impl std::fmt::Write for Short {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if self.0.len() + s.len() > 40 {
            return Err(std::fmt::Error);
        }
        self.0.push_str(s);
        Ok(())
    }
}

/// The refusal of a request that is not an operation of this kind.
fn invalid(kind: Kind, req: &Request) -> OpResult {
    // Only the operation's name: its payload may be megabytes.
    let mut short = Short(String::new());
    let _ = std::fmt::Write::write_fmt(&mut short, format_args!("{req:?}"));
    let op = short
        .0
        .split(['(', ' ', '{'])
        .next()
        .unwrap_or("?")
        .to_string();
    Err(ObjectError::Invalid(format!(
        "{op} is not an operation of a {}",
        kind.name()
    )))
}

/// One object's own state, by kind.
#[derive(Debug)]
pub(crate) enum ObjectState {
    Queue(Queue),
    Pipe(Pipe),
    /// A `Lock` or an `RLock`.
    Lock(Lock),
    Semaphore(Semaphore),
    Event(Event),
    Barrier(Barrier),
    Condition(Condition),
    Dict(Dict),
    List(List),
}

/// Hands a call to the kind's state.
macro_rules! each {
    ($state:expr, $k:ident => $call:expr) => {
        match $state {
            ObjectState::Queue($k) => $call,
            ObjectState::Pipe($k) => $call,
            ObjectState::Lock($k) => $call,
            ObjectState::Semaphore($k) => $call,
            ObjectState::Event($k) => $call,
            ObjectState::Barrier($k) => $call,
            ObjectState::Condition($k) => $call,
            ObjectState::Dict($k) => $call,
            ObjectState::List($k) => $call,
        }
    };
}

impl ObjectKind for ObjectState {
    fn admit(&self, owner: Owner, end: u8) -> Result<(), ObjectError> {
        each!(self, k => k.admit(owner, end))
    }

    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        each!(self, k => k.start(cx, owner, end, req, out))
    }

    fn attempt(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        pending: &mut Pending,
    ) -> Option<OpResult> {
        each!(self, k => k.attempt(cx, owner, end, pending))
    }

    fn pumped(&self, open: [bool; 2]) {
        each!(self, k => k.pumped(open))
    }

    fn expire(
        &mut self,
        cx: &mut Common<'_>,
        w: Waiter,
        pos: usize,
        out: &mut Vec<(Responder, OpResult)>,
    ) {
        each!(self, k => k.expire(cx, w, pos, out))
    }

    fn worker_exited(
        &mut self,
        cx: &mut Common<'_>,
        pid: u32,
        gone: &[Waiter],
        out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        each!(self, k => k.worker_exited(cx, pid, gone, out))
    }

    fn never_waits(&self, req: &Request) -> bool {
        each!(self, k => k.never_waits(req))
    }

    fn host_closed(&self, e: usize) -> bool {
        each!(self, k => k.host_closed(e))
    }

    fn shared(&self) -> Option<Shared> {
        each!(self, k => k.shared())
    }

    fn contents(&self) -> Vec<Handle> {
        each!(self, k => k.contents())
    }
}

/// A new object of each kind, as the manager makes them.
impl ObjectState {
    /// A queue of at most `maxsize` items (0: unbounded); `shared` is the ring an
    /// unbounded, non-joinable queue's items go through without the broker.
    pub fn queue(maxsize: usize, joinable: bool, shared: Option<Arc<SharedQueue>>) -> Self {
        ObjectState::Queue(Queue {
            items: VecDeque::new(),
            bytes: 0,
            maxsize,
            closed: false,
            joinable,
            unfinished: 0,
            shared,
        })
    }

    /// A pipe's two ends; `shared` is `None` if its segment could not be made.
    pub fn pipe(duplex: bool, shared: Option<Arc<SharedPipe>>) -> Self {
        ObjectState::Pipe(Pipe {
            inbox: Default::default(),
            bytes: 0,
            closed: HashSet::new(),
            host_closed: [false; 2],
            duplex,
            shared,
        })
    }

    /// A lock kept by the broker (`recursive`: an `RLock`).
    pub fn lock(recursive: bool) -> Self {
        ObjectState::Lock(Lock::InBroker(LockState::free(recursive)))
    }

    /// A lock whose word is in shared memory: acquired and released in place by everyone.
    pub fn shared_lock(lock: Arc<SharedLock>) -> Self {
        ObjectState::Lock(Lock::InPlace(lock))
    }

    /// A semaphore with initial value `value`; `bounded` refuses releases above it.
    pub fn semaphore(value: u64, bounded: bool) -> Self {
        ObjectState::Semaphore(Semaphore {
            value,
            initial: value,
            bounded,
            held: HashMap::new(),
        })
    }

    /// An event, clear.
    pub fn event() -> Self {
        ObjectState::Event(Event { set: false })
    }

    /// A barrier for `parties` (at least 1).
    pub fn barrier(parties: u32) -> Self {
        ObjectState::Barrier(Barrier {
            parties: parties.max(1),
            arrived: 0,
            generation: 0,
            broken: false,
            running: None,
        })
    }

    /// A condition variable with its own recursive lock.
    pub fn condition() -> Self {
        ObjectState::Condition(Condition {
            lock: LockState::free(true),
        })
    }

    /// An empty dict kept by the broker.
    pub fn dict() -> Self {
        ObjectState::Dict(Dict::InBroker(Default::default()))
    }

    /// A dict in shared memory, used in place by everyone until it spills.
    pub fn shared_dict(dict: Arc<SharedDict>) -> Self {
        ObjectState::Dict(Dict::InPlace(dict))
    }

    /// An empty list.
    pub fn list() -> Self {
        ObjectState::List(List { items: Vec::new() })
    }
}
