//! One shared object's state and the rules of every operation on it.
//!
//! An operation either completes at once or leaves a [`Waiter`] on its object. After every
//! change the object is pumped: each waiter is retried in arrival order until none can
//! proceed, so a release, a put or a set wakes exactly the waiters it lets through.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use wasmpool_objects::wire::{Kind, ObjectError, Request, Response};

use super::refs::RefLog;
use super::{Owner, Responder};
use crate::rules::add_to_int;
use crate::shm::{SharedDict, SharedLock, SharedPipe, SharedQueue};

pub(crate) type OpResult = Result<Response, ObjectError>;

/// What a blocked caller is waiting for.
#[derive(Debug)]
pub(crate) enum Pending {
    /// The request itself, retried as the object changes.
    Op(Request),
    /// A condition waiter not yet notified; it holds `count` levels of the lock when it wakes.
    Notify { count: u32 },
    /// A condition waiter re-acquiring the lock; answers whether it was notified.
    Reacquire { count: u32, notified: bool },
    /// A barrier party, by arrival index, in a generation of the barrier; `action`: it
    /// offered to run the round's action.
    Barrier {
        index: u32,
        generation: u64,
        action: bool,
    },
}

/// A blocked caller.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub id: u64,
    pub owner: Owner,
    pub end: u8,
    pub pending: Pending,
    pub responder: Responder,
}

/// Who keeps a pipe end open besides the host program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Hold {
    /// A worker process that was given the end or used it.
    Pid(u32),
    /// Arguments encoded for a process that has not started yet.
    Grant(u64),
}

#[derive(Debug)]
pub(crate) struct LockState {
    pub owner: Option<Owner>,
    pub count: u32,
    pub recursive: bool,
}

#[derive(Debug)]
pub(crate) enum State {
    Queue {
        items: VecDeque<Vec<u8>>,
        bytes: usize,
        maxsize: usize,
        closed: bool,
        joinable: bool,
        unfinished: u64,
        /// The ring where an unbounded, non-joinable queue's items go without the broker,
        /// while it is not spilled (see `crate::shm`).
        shared: Option<Arc<SharedQueue>>,
    },
    Pipe {
        /// `inbox[e]`: messages waiting to be received on end `e`.
        inbox: [VecDeque<Vec<u8>>; 2],
        bytes: usize,
        /// Worker processes that closed their copy of an end.
        closed: HashSet<(u8, u32)>,
        host_closed: [bool; 2],
        duplex: bool,
        /// The rings where the ends exchange messages without the broker, while they are
        /// not spilled (see `crate::shm`); `None` if the segment could not be made.
        shared: Option<Arc<SharedPipe>>,
    },
    Lock(LockState),
    /// A `Lock` whose word is in shared memory: acquired and released in place by everyone.
    SharedLock(Arc<SharedLock>),
    Semaphore {
        value: u64,
        initial: u64,
        bounded: bool,
        held: HashMap<Owner, u64>,
    },
    Event(bool),
    Barrier {
        parties: u32,
        arrived: u32,
        generation: u64,
        broken: bool,
        /// The party running this round's action: the round's parties wait until it is
        /// done, and parties of the next round wait to arrive (as `Pending::Op`).
        running: Option<ActionRun>,
    },
    Condition(LockState),
    Dict(indexmap::IndexMap<Vec<u8>, Vec<u8>>),
    /// A dict in shared memory, used in place by everyone until it spills; the broker's
    /// first operation on it takes its entries over (it becomes a `Dict`).
    SharedDict(Arc<SharedDict>),
    List(Vec<Vec<u8>>),
}

impl State {
    /// The object's segment in shared memory, if it has one (and has not been taken over).
    pub fn shared(&self) -> Option<crate::shm::Shared> {
        use crate::shm::Shared;
        match self {
            State::Pipe {
                shared: Some(p), ..
            } => Some(Shared::Pipe(p.clone())),
            State::Queue {
                shared: Some(q), ..
            } => Some(Shared::Queue(q.clone())),
            State::SharedLock(l) => Some(Shared::Lock(l.clone())),
            State::SharedDict(d) => Some(Shared::Dict(d.clone())),
            _ => None,
        }
    }
}

/// The party running a barrier round's action, and its arrival index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActionRun {
    pub owner: Owner,
    pub index: u32,
}

#[derive(Debug)]
pub(crate) struct Object {
    pub kind: Kind,
    pub tokens: [u64; 2],
    /// Copies of each end's handle alive in the host program.
    pub host_refs: [usize; 2],
    /// Processes that hold each end (were given it, or used it), keeping it alive and open.
    pub holds: [HashMap<Hold, u32>; 2],
    /// What a dict's or list's contents cost the host, as [`entry_cost`] and [`item_cost`]
    /// count it (queues and pipes count their own).
    pub stored: usize,
    /// References to each end from the values of dicts and lists that hold its handle (see
    /// `broker::refs`): the object lives, and a pipe end stays open, while it has one.
    pub contained: [usize; 2],
    /// The handles the last operation stored in this dict or list, or took out of it.
    pub refs: RefLog,
    pub state: State,
    pub waiters: VecDeque<Waiter>,
}

/// What an operation does now.
pub(crate) enum Step {
    Done(OpResult),
    Wait(Pending),
}

/// The most bytes one queue, pipe, dict or list may cost the host, its items' bytes and the
/// host's overhead for each counted (see [`item_cost`], [`entry_cost`]): a guest that floods
/// one cannot take the host's memory with it.
pub(crate) const MAX_OBJECT_BYTES: usize = 256 << 20;

/// What the host's containers cost for each item of a queue, pipe or list, on top of the
/// item's own buffer: its 24-byte `Vec` header in a `VecDeque` or `Vec`, twice over for the
/// spare capacity a doubling leaves. Measured (glibc, `mallinfo2`): 25 to 48 bytes an item.
pub(crate) const SLOT_OVERHEAD: usize = 48;

/// What the host's `IndexMap` costs for each dict entry, on top of its key's and value's
/// buffers: a 56-byte bucket and an 8-byte index with its control byte, with the spare
/// capacity growth leaves. Measured (glibc, `mallinfo2`): 76 to 133 bytes an entry.
pub(crate) const ENTRY_OVERHEAD: usize = 144;

/// The bytes the allocator holds for a buffer of `capacity` bytes (glibc's malloc: an
/// 8-byte header, 16-byte granules, 32 bytes at least; nothing for an empty `Vec`).
pub(crate) fn heap_bytes(capacity: usize) -> usize {
    if capacity == 0 {
        0
    } else {
        capacity.saturating_add(8 + 15).max(32) & !15
    }
}

/// What a stored queue, pipe or list item costs the host.
pub(crate) fn item_cost(item: &Vec<u8>) -> usize {
    heap_bytes(item.capacity()) + SLOT_OVERHEAD
}

/// What a stored dict entry costs the host.
pub(crate) fn entry_cost(key: &Vec<u8>, value: &Vec<u8>) -> usize {
    heap_bytes(key.capacity()) + heap_bytes(value.capacity()) + ENTRY_OVERHEAD
}

/// The most a dict or list request can add to what its object costs the host.
fn growth(req: &Request) -> usize {
    match req {
        Request::DictSet((k, v)) | Request::DictSetdefault((k, v)) => entry_cost(k, v),
        Request::DictUpdate(entries) => entries.iter().map(|(k, v)| entry_cost(k, v)).sum(),
        // The integer `increment` writes: at most 9 bytes of MessagePack.
        Request::DictIncrement(k, _) => entry_cost(k, &Vec::new()) + heap_bytes(9),
        Request::DictCompareAndSwap { key, new, .. } => entry_cost(key, new),
        Request::ListAppend(v) | Request::ListSet(_, v) | Request::ListInsert(_, v) => item_cost(v),
        Request::ListExtend(items) => items.iter().map(item_cost).sum(),
        _ => 0,
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

/// Python's index rules: negative counts from the end.
fn index(len: usize, i: i64) -> Option<usize> {
    let i = if i < 0 { len as i64 + i } else { i };
    usize::try_from(i).ok().filter(|&i| i < len)
}

/// Python's slice rules for one bound: `None` is `default`, negative counts from the end,
/// and the result is clamped to `0..=len`.
fn bound(len: usize, i: Option<i64>, default: usize) -> usize {
    let Some(i) = i else { return default };
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let i = if i < 0 { i.saturating_add(len_i) } else { i };
    usize::try_from(i.clamp(0, len_i)).unwrap_or(len)
}

fn too_big(kind: Kind, bytes: usize) -> OpResult {
    Err(ObjectError::TooLarge(format!(
        "the {} already costs the host {bytes} bytes (its items and the host's overhead for \
         each); the limit is {MAX_OBJECT_BYTES}: take items out first, or keep large data \
         in a file",
        kind.name()
    )))
}

impl LockState {
    fn try_acquire(&mut self, owner: Owner, levels: u32) -> bool {
        match self.owner {
            None => {
                self.owner = Some(owner);
                self.count = levels;
                true
            }
            Some(o) if self.recursive && o == owner => {
                self.count += levels;
                true
            }
            Some(_) => false,
        }
    }

    fn release(&mut self, owner: Owner) -> OpResult {
        match self.owner {
            None => Err(ObjectError::NotOwner("release of an unlocked lock".into())),
            Some(o) if self.recursive && o != owner => Err(ObjectError::NotOwner(
                "cannot release a lock held by another process".into(),
            )),
            Some(_) => {
                self.count = self.count.saturating_sub(1);
                if self.count == 0 || !self.recursive {
                    self.owner = None;
                    self.count = 0;
                }
                Ok(Response::Unit)
            }
        }
    }
}

impl Object {
    pub fn new(kind: Kind, tokens: [u64; 2], state: State) -> Self {
        let host_refs = if kind == Kind::Connection {
            [1, 1]
        } else {
            [1, 0]
        };
        Object {
            kind,
            tokens,
            host_refs,
            holds: [HashMap::new(), HashMap::new()],
            stored: 0,
            contained: [0, 0],
            refs: RefLog::default(),
            state,
            waiters: VecDeque::new(),
        }
    }

    /// Whether `req` on this object can never wait (an unbounded queue's put, a pipe send,
    /// a dict set, a list append): a worker may post it without waiting for the answer.
    pub fn never_waits(&self, req: &Request) -> bool {
        match (&self.state, req) {
            (State::Queue { maxsize, .. }, Request::QueuePut(_)) => *maxsize == 0,
            (State::Pipe { .. }, Request::ConnSend(_))
            | (State::Dict(_), Request::DictSet(_))
            | (State::List(_), Request::ListAppend(_)) => true,
            _ => false,
        }
    }

    /// Whether an end of a pipe is still held by anyone.
    pub fn end_open(&self, end: u8) -> bool {
        let e = usize::from(end & 1);
        let host_closed = match &self.state {
            State::Pipe { host_closed, .. } => host_closed[e],
            _ => false,
        };
        (self.host_refs[e] > 0 && !host_closed)
            || !self.holds[e].is_empty()
            || self.contained[e] > 0
    }

    /// Whether nothing can reach this object any more.
    pub fn unreachable(&self) -> bool {
        !self.end_open(0) && !self.end_open(1) && self.waiters.is_empty()
    }

    /// Starts `req` from `owner` on end `end`.
    pub fn start(
        &mut self,
        owner: Owner,
        end: u8,
        req: Request,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        let kind = self.kind;
        // A closed copy of a pipe end is unusable; a worker using an object holds it.
        if let State::Pipe {
            closed,
            host_closed,
            ..
        } = &self.state
        {
            let shut = match owner {
                Owner::Pid(pid) => closed.contains(&(end, pid)),
                Owner::Host(_) => host_closed[usize::from(end)],
            };
            if shut {
                return Step::Done(Err(ObjectError::Closed("the connection is closed".into())));
            }
        }
        if let Owner::Pid(pid) = owner {
            self.holds[usize::from(end)]
                .entry(Hold::Pid(pid))
                .or_insert(1);
        }
        if let State::SharedDict(shared) = &self.state
            && crate::shm::dict_request(&req)
        {
            // The dict spilled (or a process could not use it in place): the broker keeps
            // its entries from now on. If a process stays inside its mutex, nothing changes
            // and the caller hears so.
            let entries = match shared.take_over(super::host_tag()) {
                Ok(entries) => entries,
                Err(e) => return Step::Done(Err(e)),
            };
            let mut map = Map::default();
            self.stored = 0;
            for (k, v) in entries {
                store(&mut map, &mut self.stored, &mut self.refs, k, v);
            }
            self.state = State::Dict(map);
        }
        let tag = match owner {
            Owner::Pid(pid) => pid,
            Owner::Host(_) => super::host_tag(),
        };
        match (&mut self.state, req) {
            (State::SharedLock(lock), Request::Release) => {
                Step::Done(lock.release().map(|()| Response::Unit))
            }
            (State::SharedLock(lock), Request::Acquire) => {
                Step::Done(match lock.acquire(tag, Some(std::time::Instant::now())) {
                    true => Ok(Response::Flag(true)),
                    false => Err(ObjectError::Invalid(
                        "a lock in shared memory is acquired in place, not through the host".into(),
                    )),
                })
            }
            (State::Queue { maxsize, .. }, Request::QueueMaxsize) => {
                Step::Done(Ok(Response::Count(*maxsize as u64)))
            }
            (State::Queue { items, shared, .. }, Request::QueueQsize) => {
                let in_ring = shared.as_ref().map_or(0, |s| s.len());
                Step::Done(Ok(Response::Count(
                    (items.len() as u64).saturating_add(in_ring),
                )))
            }
            (State::Queue { closed, shared, .. }, Request::QueueClose) => {
                // The ring is closed once, when the queue is: its wait for the writers'
                // mutex (bounded) happens under the registry's lock, so a worker cannot
                // make the broker wait again and again.
                if !*closed && let Some(shared) = shared {
                    shared.close(super::host_tag());
                }
                *closed = true;
                Step::Done(Ok(Response::Unit))
            }
            (
                State::Queue {
                    joinable,
                    unfinished,
                    ..
                },
                Request::QueueTaskDone,
            ) => Step::Done(if !*joinable {
                Err(ObjectError::Invalid(
                    "task_done() needs a JoinableQueue".into(),
                ))
            } else if *unfinished == 0 {
                Err(ObjectError::Invalid(
                    "task_done() called too many times".into(),
                ))
            } else {
                *unfinished -= 1;
                Ok(Response::Unit)
            }),
            (
                State::Queue {
                    joinable: false, ..
                },
                Request::QueueJoin,
            ) => Step::Done(Err(ObjectError::Invalid(
                "join() needs a JoinableQueue".into(),
            ))),
            (
                State::Queue { .. },
                req @ (Request::QueuePut(_) | Request::QueueGet | Request::QueueJoin),
            )
            | (
                State::Pipe { .. },
                req @ (Request::ConnSend(_) | Request::ConnRecv | Request::ConnPoll),
            )
            | (
                State::Lock(_) | State::Semaphore { .. } | State::Condition(_),
                req @ Request::Acquire,
            )
            | (State::Event(_), req @ Request::EventWait) => {
                let mut pending = Pending::Op(req);
                match self.attempt(owner, end, &mut pending) {
                    Some(result) => Step::Done(result),
                    None => Step::Wait(pending),
                }
            }
            (
                State::Pipe {
                    closed,
                    host_closed,
                    ..
                },
                Request::ConnClose,
            ) => {
                let e = usize::from(end);
                match owner {
                    Owner::Pid(pid) => {
                        self.holds[e].remove(&Hold::Pid(pid));
                        closed.insert((end, pid));
                    }
                    Owner::Host(_) => host_closed[e] = true,
                }
                Step::Done(Ok(Response::Unit))
            }
            (State::Lock(lock) | State::Condition(lock), Request::Release) => {
                Step::Done(lock.release(owner))
            }
            (
                State::Semaphore {
                    value,
                    initial,
                    bounded,
                    held,
                },
                Request::Release,
            ) => {
                if *bounded && *value >= *initial {
                    return Step::Done(Err(ObjectError::NotOwner(
                        "semaphore or lock released too many times".into(),
                    )));
                }
                *value += 1;
                // Released by its holder, or on a holder's behalf: either way one outstanding
                // acquisition is gone, so a holder's death cannot give it back twice.
                let from = if held.contains_key(&owner) {
                    Some(owner)
                } else {
                    held.keys().next().copied()
                };
                if let Some(from) = from
                    && let Some(n) = held.get_mut(&from)
                {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(&from);
                    }
                }
                Step::Done(Ok(Response::Unit))
            }
            (State::Semaphore { value, .. }, Request::SemaphoreValue) => {
                Step::Done(Ok(Response::Count(*value)))
            }
            (State::Event(set), Request::EventSet) => {
                *set = true;
                Step::Done(Ok(Response::Unit))
            }
            (State::Event(set), Request::EventClear) => {
                *set = false;
                Step::Done(Ok(Response::Unit))
            }
            (State::Event(set), Request::EventIsSet) => Step::Done(Ok(Response::Flag(*set))),
            (State::Barrier { .. }, req @ (Request::BarrierWait | Request::BarrierWaitAction)) => {
                self.arrive(owner, req, out)
            }
            (State::Barrier { .. }, Request::BarrierActionDone(ok)) => {
                self.action_done(owner, ok, out)
            }
            (State::Barrier { parties, .. }, Request::BarrierParties) => {
                Step::Done(Ok(Response::Count(u64::from(*parties))))
            }
            (State::Barrier { broken, .. }, Request::BarrierBroken) => {
                Step::Done(Ok(Response::Flag(*broken)))
            }
            (State::Lock(lock), Request::Locked) => {
                Step::Done(Ok(Response::Flag(lock.owner.is_some())))
            }
            (State::SharedLock(lock), Request::Locked) => {
                Step::Done(Ok(Response::Flag(lock.locked())))
            }
            (State::Barrier { .. }, Request::BarrierAbort) => {
                self.break_barrier(true, out);
                Step::Done(Ok(Response::Unit))
            }
            (State::Barrier { .. }, Request::BarrierReset) => {
                self.break_barrier(false, out);
                Step::Done(Ok(Response::Unit))
            }
            (State::Barrier { arrived, .. }, Request::BarrierNWaiting) => {
                Step::Done(Ok(Response::Count(u64::from(*arrived))))
            }
            (State::Condition(lock), Request::ConditionWait) => {
                if lock.owner != Some(owner) {
                    return Step::Done(Err(ObjectError::NotOwner(
                        "cannot wait on an un-acquired condition".into(),
                    )));
                }
                let count = lock.count;
                lock.owner = None;
                lock.count = 0;
                Step::Wait(Pending::Notify { count })
            }
            (
                State::Condition(lock),
                req @ (Request::ConditionNotify(_) | Request::ConditionNotifyAll),
            ) => {
                if lock.owner != Some(owner) {
                    return Step::Done(Err(ObjectError::NotOwner(
                        "cannot notify on an un-acquired condition".into(),
                    )));
                }
                let mut n = match req {
                    Request::ConditionNotify(n) => n,
                    _ => u32::MAX,
                };
                for w in self.waiters.iter_mut() {
                    if n == 0 {
                        break;
                    }
                    if let Pending::Notify { count } = w.pending {
                        w.pending = Pending::Reacquire {
                            count,
                            notified: true,
                        };
                        n -= 1;
                    }
                }
                Step::Done(Ok(Response::Unit))
            }
            (State::Dict(_) | State::List(_), req)
                if self.stored.saturating_add(growth(&req)) > MAX_OBJECT_BYTES =>
            {
                Step::Done(too_big(kind, self.stored))
            }
            (State::Dict(map), req) => {
                Step::Done(dict_op(map, &mut self.stored, &mut self.refs, req))
            }
            (State::List(list), req) => {
                Step::Done(list_op(list, &mut self.stored, &mut self.refs, req))
            }
            (_, req) => Step::Done(invalid(kind, &req)),
        }
    }

    /// Tries a blocked operation again; `None` while it still cannot proceed.
    pub fn attempt(&mut self, owner: Owner, end: u8, pending: &mut Pending) -> Option<OpResult> {
        let open_other = self.end_open(1 - (end & 1));
        match (&mut self.state, pending) {
            (
                State::Queue {
                    items,
                    bytes,
                    maxsize,
                    closed,
                    unfinished,
                    ..
                },
                Pending::Op(req),
            ) => match req {
                Request::QueuePut(v) => {
                    if *closed {
                        Some(Err(ObjectError::Closed("the queue is closed".into())))
                    } else if *bytes + item_cost(v) > MAX_OBJECT_BYTES {
                        Some(too_big(Kind::Queue, *bytes))
                    } else if *maxsize == 0 || items.len() < *maxsize {
                        *bytes += item_cost(v);
                        *unfinished += 1;
                        items.push_back(std::mem::take(v));
                        Some(Ok(Response::Unit))
                    } else {
                        None
                    }
                }
                Request::QueueGet => match items.pop_front() {
                    Some(v) => {
                        *bytes = bytes.saturating_sub(item_cost(&v));
                        Some(Ok(Response::Value(v)))
                    }
                    None if *closed => Some(Err(ObjectError::Closed(
                        "the queue is closed and empty".into(),
                    ))),
                    None => None,
                },
                Request::QueueJoin => (*unfinished == 0).then_some(Ok(Response::Unit)),
                _ => None,
            },
            (
                State::Pipe {
                    inbox,
                    bytes,
                    duplex,
                    ..
                },
                Pending::Op(req),
            ) => {
                let e = usize::from(end & 1);
                match req {
                    Request::ConnSend(_) if !*duplex && e == 0 => Some(Err(ObjectError::Invalid(
                        "this end of a one-way pipe only receives".into(),
                    ))),
                    Request::ConnRecv | Request::ConnPoll if !*duplex && e == 1 => Some(Err(
                        ObjectError::Invalid("this end of a one-way pipe only sends".into()),
                    )),
                    Request::ConnSend(_) if !open_other => Some(Err(ObjectError::Closed(
                        "broken pipe: the other end is closed".into(),
                    ))),
                    Request::ConnSend(v) => {
                        if *bytes + item_cost(v) > MAX_OBJECT_BYTES {
                            return Some(too_big(Kind::Connection, *bytes));
                        }
                        *bytes += item_cost(v);
                        inbox[1 - e].push_back(std::mem::take(v));
                        Some(Ok(Response::Unit))
                    }
                    Request::ConnRecv => match inbox[e].pop_front() {
                        Some(v) => {
                            *bytes = bytes.saturating_sub(item_cost(&v));
                            Some(Ok(Response::Value(v)))
                        }
                        None if !open_other => Some(Err(ObjectError::Closed(
                            "end of file: the other end of the pipe is closed".into(),
                        ))),
                        None => None,
                    },
                    Request::ConnPoll => {
                        (!inbox[e].is_empty() || !open_other).then_some(Ok(Response::Flag(true)))
                    }
                    _ => None,
                }
            }
            (State::Lock(lock) | State::Condition(lock), Pending::Op(Request::Acquire)) => lock
                .try_acquire(owner, 1)
                .then_some(Ok(Response::Flag(true))),
            (State::Condition(lock), Pending::Reacquire { count, notified }) => lock
                .try_acquire(owner, *count)
                .then_some(Ok(Response::Flag(*notified))),
            (State::Semaphore { value, held, .. }, Pending::Op(Request::Acquire)) => {
                if *value == 0 {
                    return None;
                }
                *value -= 1;
                *held.entry(owner).or_insert(0) += 1;
                Some(Ok(Response::Flag(true)))
            }
            (State::Event(set), Pending::Op(Request::EventWait)) => {
                set.then_some(Ok(Response::Flag(true)))
            }
            (
                State::Barrier {
                    generation, broken, ..
                },
                Pending::Barrier {
                    index,
                    generation: g,
                    ..
                },
            ) => {
                if *broken {
                    Some(Err(ObjectError::Broken))
                } else if *generation != *g {
                    Some(Ok(Response::Int(i64::from(*index))))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Retries every waiter, in arrival order, until none can proceed.
    pub fn pump(&mut self, out: &mut Vec<(Responder, OpResult)>) {
        loop {
            let mut progressed = false;
            let mut i = 0;
            while i < self.waiters.len() {
                let (owner, end) = (self.waiters[i].owner, self.waiters[i].end);
                let mut pending =
                    std::mem::replace(&mut self.waiters[i].pending, Pending::Notify { count: 0 });
                let result = self.attempt(owner, end, &mut pending);
                match result {
                    Some(result) => {
                        if let Some(w) = self.waiters.remove(i) {
                            out.push((w.responder, result));
                        }
                        progressed = true;
                    }
                    None => {
                        self.waiters[i].pending = pending;
                        i += 1;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if let State::Pipe {
            shared: Some(shared),
            ..
        } = &self.state
        {
            shared.set_open([self.end_open(0), self.end_open(1)]);
        }
    }

    /// A party arrives at the barrier (`BarrierWait`, or `BarrierWaitAction` offering to
    /// run the round's action). The last of a round completes it: it runs the action if it
    /// offered one, else the earliest waiting party that offered one is told to run it;
    /// with no action the round's parties are released at once. While an action runs, a
    /// party of the next round waits to arrive until it is done.
    fn arrive(&mut self, owner: Owner, req: Request, out: &mut Vec<(Responder, OpResult)>) -> Step {
        let State::Barrier {
            parties,
            arrived,
            generation,
            broken,
            running,
        } = &mut self.state
        else {
            return Step::Done(invalid(self.kind, &req));
        };
        if *broken {
            return Step::Done(Err(ObjectError::Broken));
        }
        if running.is_some() {
            return Step::Wait(Pending::Op(req));
        }
        let offers = req == Request::BarrierWaitAction;
        let index = *arrived;
        *arrived += 1;
        let waiting = Pending::Barrier {
            index,
            generation: *generation,
            action: offers,
        };
        if *arrived < *parties {
            return Step::Wait(waiting);
        }
        if offers {
            *running = Some(ActionRun { owner, index });
            return Step::Done(Ok(Response::RunAction(index)));
        }
        let g = *generation;
        let runner = self
            .waiters
            .iter()
            .enumerate()
            .find_map(|(pos, w)| match w.pending {
                Pending::Barrier {
                    index,
                    generation,
                    action: true,
                } if generation == g => Some((pos, index)),
                _ => None,
            });
        match runner.and_then(|(pos, theirs)| Some((self.waiters.remove(pos)?, theirs))) {
            Some((w, theirs)) => {
                if let State::Barrier { running, .. } = &mut self.state {
                    *running = Some(ActionRun {
                        owner: w.owner,
                        index: theirs,
                    });
                }
                out.push((w.responder, Ok(Response::RunAction(theirs))));
                Step::Wait(waiting)
            }
            None => {
                if let State::Barrier {
                    arrived,
                    generation,
                    ..
                } = &mut self.state
                {
                    *arrived = 0;
                    *generation += 1;
                }
                Step::Done(Ok(Response::Int(i64::from(index))))
            }
        }
    }

    /// The party running the round's action reports it done: on success the round's
    /// parties are released (by the pump) and the parties waiting to arrive arrive, in
    /// order; on failure the barrier breaks.
    fn action_done(
        &mut self,
        owner: Owner,
        ok: bool,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        let State::Barrier {
            arrived,
            generation,
            running,
            ..
        } = &mut self.state
        else {
            return Step::Done(invalid(self.kind, &Request::BarrierActionDone(ok)));
        };
        let run = match *running {
            Some(run) if run.owner == owner => run,
            Some(_) => {
                return Step::Done(Err(ObjectError::Invalid(
                    "another party runs this round's barrier action".into(),
                )));
            }
            // Aborted or reset while the action ran: the round is over for everyone.
            None => return Step::Done(Err(ObjectError::Broken)),
        };
        if !ok {
            self.break_barrier(true, out);
            return Step::Done(Ok(Response::Unit));
        }
        *running = None;
        *arrived = 0;
        *generation += 1;
        // The next round's parties that waited to arrive, in arrival order.
        let waiters = std::mem::take(&mut self.waiters);
        for mut w in waiters {
            let req = match &w.pending {
                Pending::Op(req @ (Request::BarrierWait | Request::BarrierWaitAction)) => {
                    req.clone()
                }
                _ => {
                    self.waiters.push_back(w);
                    continue;
                }
            };
            match self.arrive(w.owner, req, out) {
                Step::Done(result) => out.push((w.responder, result)),
                Step::Wait(pending) => {
                    w.pending = pending;
                    self.waiters.push_back(w);
                }
            }
        }
        Step::Done(Ok(Response::Int(i64::from(run.index))))
    }

    /// Breaks the barrier: every party waiting gets `Broken`. `abort` leaves it broken;
    /// otherwise (reset) it is ready for a new round.
    pub fn break_barrier(&mut self, abort: bool, out: &mut Vec<(Responder, OpResult)>) {
        if let State::Barrier {
            arrived,
            generation,
            broken,
            running,
            ..
        } = &mut self.state
        {
            *arrived = 0;
            *generation += 1;
            *broken = abort;
            *running = None;
        }
        let waiters = std::mem::take(&mut self.waiters);
        for w in waiters {
            out.push((w.responder, Err(ObjectError::Broken)));
        }
    }

    /// The waiter `id` timed out: answer it as Python would, or move it on.
    pub fn expire(&mut self, id: u64, out: &mut Vec<(Responder, OpResult)>) {
        let Some(pos) = self.waiters.iter().position(|w| w.id == id) else {
            return;
        };
        let Some(mut w) = self.waiters.remove(pos) else {
            return;
        };
        match w.pending {
            Pending::Op(Request::BarrierWait | Request::BarrierWaitAction) => {
                // Timed out waiting to arrive while a round's action ran: a barrier wait's
                // timeout breaks the barrier, as in the round itself.
                out.push((w.responder, Err(ObjectError::Broken)));
                self.break_barrier(true, out);
            }
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
                self.waiters.push_back(w);
            }
            Pending::Barrier { .. } => {
                out.push((w.responder, Err(ObjectError::Broken)));
                self.break_barrier(true, out);
            }
            Pending::Reacquire { .. } => self.waiters.insert(pos, w),
        }
        self.pump(out);
    }

    /// Worker `pid` is gone: forget its waiters and give back what it held.
    pub fn worker_exited(&mut self, pid: u32, out: &mut Vec<(Responder, OpResult)>) {
        let gone = Owner::Pid(pid);
        let before = self.waiters.len();
        let mut was_at_barrier = false;
        self.waiters.retain(|w| {
            let keep = w.owner != gone;
            if !keep && matches!(w.pending, Pending::Barrier { .. }) {
                was_at_barrier = true;
            }
            keep
        });
        let mut changed = self.waiters.len() != before;
        match &mut self.state {
            State::Lock(lock) | State::Condition(lock) if lock.owner == Some(gone) => {
                lock.owner = None;
                lock.count = 0;
                changed = true;
            }
            State::Semaphore {
                value,
                initial,
                bounded,
                held,
            } => {
                if let Some(n) = held.remove(&gone) {
                    *value += n;
                    if *bounded {
                        *value = (*value).min(*initial);
                    }
                    changed = true;
                }
            }
            State::SharedLock(lock) => changed |= lock.release_if_held_by(pid),
            State::SharedDict(dict) => dict.release_locks_of(pid, super::host_tag()),
            State::Pipe { closed, shared, .. } => {
                closed.retain(|&(_, p)| p != pid);
                if let Some(shared) = shared {
                    shared.release_locks_of(pid);
                }
            }
            State::Queue {
                shared: Some(shared),
                ..
            } => shared.release_locks_of(pid),
            _ => {}
        }
        for h in self.holds.iter_mut() {
            changed |= h.remove(&Hold::Pid(pid)).is_some();
        }
        if let State::Barrier {
            running: Some(run), ..
        } = &self.state
            && run.owner == gone
        {
            // It died running the round's action: the round can never end.
            was_at_barrier = true;
        }
        if was_at_barrier {
            self.break_barrier(true, out);
        }
        if changed {
            self.pump(out);
        }
    }
}

type Map = indexmap::IndexMap<Vec<u8>, Vec<u8>>;

/// Sets `k` to `v`, keeping `stored` (what the entries cost, as [`entry_cost`] counts it)
/// and `refs` (the handles stored and let go of) exact.
fn store(map: &mut Map, stored: &mut usize, refs: &mut RefLog, k: Vec<u8>, v: Vec<u8>) {
    let cost = entry_cost(&k, &v);
    let value = heap_bytes(v.capacity());
    // An existing key keeps its stored buffer (the new one is dropped): only the value
    // changes.
    if !map.contains_key(&k) {
        refs.added(&k);
    }
    refs.added(&v);
    match map.insert(k, v) {
        Some(old) => {
            refs.removed(&old);
            *stored = (*stored + value).saturating_sub(heap_bytes(old.capacity()))
        }
        None => *stored += cost,
    }
}

/// Removes the entry of `k`, keeping `stored` and `refs` exact for its key; answers its
/// value, which the caller logs as removed or taken.
fn unstore(map: &mut Map, stored: &mut usize, refs: &mut RefLog, k: &[u8]) -> Option<Vec<u8>> {
    let (key, v) = map.shift_remove_entry(k)?;
    *stored = stored.saturating_sub(entry_cost(&key, &v));
    refs.removed(&key);
    Some(v)
}

fn dict_op(map: &mut Map, stored: &mut usize, refs: &mut RefLog, req: Request) -> OpResult {
    Ok(match req {
        Request::DictGet(k) => Response::Maybe(map.get(&k).cloned()),
        Request::DictSet((k, v)) => {
            store(map, stored, refs, k, v);
            Response::Unit
        }
        Request::DictDelete(k) => match unstore(map, stored, refs, &k) {
            Some(v) => {
                refs.removed(&v);
                Response::Unit
            }
            None => return Err(ObjectError::Missing("KeyError: no such key".into())),
        },
        Request::DictContains(k) => Response::Flag(map.contains_key(&k)),
        Request::DictKeys => Response::Values(map.keys().cloned().collect()),
        Request::DictValues => Response::Values(map.values().cloned().collect()),
        Request::DictItems => {
            Response::Entries(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        Request::DictLen => Response::Count(map.len() as u64),
        Request::DictUpdate(entries) => {
            for (k, v) in entries {
                store(map, stored, refs, k, v);
            }
            Response::Unit
        }
        Request::DictSetdefault((k, v)) => match map.get(&k) {
            Some(existing) => Response::Value(existing.clone()),
            None => {
                store(map, stored, refs, k, v.clone());
                Response::Value(v)
            }
        },
        Request::DictPop(k) => {
            let v = unstore(map, stored, refs, &k);
            if let Some(v) = &v {
                refs.taken(v);
            }
            Response::Maybe(v)
        }
        Request::DictPopitem => match map.pop() {
            Some((k, v)) => {
                *stored = stored.saturating_sub(entry_cost(&k, &v));
                refs.taken(&k);
                refs.taken(&v);
                Response::Entries(vec![(k, v)])
            }
            None => {
                return Err(ObjectError::Missing(
                    "KeyError: 'popitem(): dictionary is empty'".into(),
                ));
            }
        },
        Request::DictClear => {
            for (k, v) in map.drain(..) {
                refs.removed(&k);
                refs.removed(&v);
            }
            *stored = 0;
            Response::Unit
        }
        Request::DictIncrement(k, delta) => {
            let (new, encoded) = add_to_int(map.get(&k).map(Vec::as_slice), delta)?;
            store(map, stored, refs, k, encoded);
            Response::Int(new)
        }
        Request::DictCompareAndSwap { key, expected, new } => {
            let matches = map.get(&key) == expected.as_ref();
            if matches {
                store(map, stored, refs, key, new);
            }
            Response::Flag(matches)
        }
        req => return invalid(Kind::Dict, &req),
    })
}

fn list_op(
    list: &mut Vec<Vec<u8>>,
    stored: &mut usize,
    refs: &mut RefLog,
    req: Request,
) -> OpResult {
    let out_of_range = || ObjectError::Missing("IndexError: list index out of range".into());
    Ok(match req {
        Request::ListAppend(v) => {
            *stored += item_cost(&v);
            refs.added(&v);
            list.push(v);
            Response::Unit
        }
        Request::ListExtend(vs) => {
            *stored += vs.iter().map(item_cost).sum::<usize>();
            vs.iter().for_each(|v| refs.added(v));
            list.extend(vs);
            Response::Unit
        }
        Request::ListGet(i) => {
            let i = index(list.len(), i).ok_or_else(out_of_range)?;
            Response::Value(list[i].clone())
        }
        Request::ListSet(i, v) => {
            let i = index(list.len(), i).ok_or_else(out_of_range)?;
            *stored = (*stored + item_cost(&v)).saturating_sub(item_cost(&list[i]));
            refs.added(&v);
            refs.removed(&list[i]);
            list[i] = v;
            Response::Unit
        }
        Request::ListLen => Response::Count(list.len() as u64),
        Request::ListPop(i) => {
            let i = index(list.len(), i.unwrap_or(-1))
                .ok_or_else(|| ObjectError::Missing("IndexError: pop index out of range".into()))?;
            let v = list.remove(i);
            *stored = stored.saturating_sub(item_cost(&v));
            refs.taken(&v);
            Response::Value(v)
        }
        Request::ListIndex(v) => match list.iter().position(|x| *x == v) {
            Some(i) => Response::Count(i as u64),
            None => {
                return Err(ObjectError::Missing(
                    "ValueError: value is not in list".into(),
                ));
            }
        },
        Request::ListItems => Response::Values(list.clone()),
        Request::ListInsert(i, v) => {
            let at = bound(list.len(), Some(i), 0);
            *stored += item_cost(&v);
            refs.added(&v);
            list.insert(at, v);
            Response::Unit
        }
        Request::ListRemove(v) => match list.iter().position(|x| *x == v) {
            Some(i) => {
                let v = list.remove(i);
                *stored = stored.saturating_sub(item_cost(&v));
                refs.removed(&v);
                Response::Unit
            }
            None => {
                return Err(ObjectError::Missing(
                    "ValueError: list.remove(x): x not in list".into(),
                ));
            }
        },
        Request::ListClear => {
            for v in list.drain(..) {
                refs.removed(&v);
            }
            *stored = 0;
            Response::Unit
        }
        Request::ListSlice(start, stop) => {
            let len = list.len();
            let (start, stop) = (bound(len, start, 0), bound(len, stop, len));
            Response::Values(list.get(start..stop).unwrap_or_default().to_vec())
        }
        req => return invalid(Kind::List, &req),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Object {
        Object::new(Kind::Dict, [1, 2], State::Dict(Default::default()))
    }

    fn run(obj: &mut Object, req: Request) -> OpResult {
        match obj.start(Owner::Host(1), 0, req, &mut Vec::new()) {
            Step::Done(r) => r,
            Step::Wait(_) => panic!("a dict operation never waits"),
        }
    }

    /// A blocked request's answer, once it has one.
    type Slot = std::sync::Arc<super::super::HostSlot>;

    fn answer(slot: &Slot) -> Option<OpResult> {
        slot.result.lock().unwrap().take()
    }

    /// Submits `req` from `owner` as the broker does: a blocked one waits on the object,
    /// and the answers the change produced are delivered.
    fn submit(obj: &mut Object, owner: Owner, req: Request) -> Slot {
        let slot = Slot::default();
        let mut out = Vec::new();
        match obj.start(owner, 0, req, &mut out) {
            Step::Done(r) => out.push((Responder::Host(slot.clone()), r)),
            Step::Wait(pending) => obj.waiters.push_back(Waiter {
                id: obj.waiters.len() as u64 + 100,
                owner,
                end: 0,
                pending,
                responder: Responder::Host(slot.clone()),
            }),
        }
        obj.pump(&mut out);
        for (responder, result) in out {
            responder.deliver(result);
        }
        slot
    }

    fn barrier(parties: u32) -> Object {
        Object::new(
            Kind::Barrier,
            [1, 2],
            State::Barrier {
                parties,
                arrived: 0,
                generation: 0,
                broken: false,
                running: None,
            },
        )
    }

    #[test]
    fn the_earliest_party_offering_an_action_runs_it_before_anyone_is_released() {
        let mut b = barrier(3);
        let plain = submit(&mut b, Owner::Pid(1), Request::BarrierWait);
        let offers = submit(&mut b, Owner::Pid(2), Request::BarrierWaitAction);
        let also = submit(&mut b, Owner::Pid(3), Request::BarrierWaitAction);
        let last = submit(&mut b, Owner::Pid(4), Request::BarrierWait);
        // Pid 4 is a fourth party: it waits for the next round, not counted in this one.
        assert_eq!(
            answer(&also),
            Some(Ok(Response::RunAction(2))),
            "the last offered"
        );
        assert!(answer(&plain).is_none() && answer(&offers).is_none());
        assert!(
            answer(&last).is_none(),
            "the next round waits for the action"
        );
        let done = submit(&mut b, Owner::Pid(3), Request::BarrierActionDone(true));
        assert_eq!(answer(&done), Some(Ok(Response::Int(2))));
        assert_eq!(answer(&plain), Some(Ok(Response::Int(0))));
        assert_eq!(answer(&offers), Some(Ok(Response::Int(1))));
        assert!(answer(&last).is_none(), "arrived first in the next round");
        let State::Barrier { arrived, .. } = &b.state else {
            unreachable!()
        };
        assert_eq!(*arrived, 1);

        // The last party offers nothing: the earliest that offered runs the action.
        let mut b = barrier(3);
        let first = submit(&mut b, Owner::Pid(1), Request::BarrierWaitAction);
        let second = submit(&mut b, Owner::Pid(2), Request::BarrierWaitAction);
        let third = submit(&mut b, Owner::Pid(3), Request::BarrierWait);
        assert_eq!(answer(&first), Some(Ok(Response::RunAction(0))));
        assert!(answer(&second).is_none() && answer(&third).is_none());
        // Only the runner may say it is done.
        let wrong = submit(&mut b, Owner::Pid(2), Request::BarrierActionDone(true));
        assert!(matches!(answer(&wrong), Some(Err(ObjectError::Invalid(_)))));
        submit(&mut b, Owner::Pid(1), Request::BarrierActionDone(true));
        assert_eq!(answer(&second), Some(Ok(Response::Int(1))));
        assert_eq!(answer(&third), Some(Ok(Response::Int(2))));
    }

    #[test]
    fn a_failed_or_dead_action_breaks_the_barrier() {
        for dies in [false, true] {
            let mut b = barrier(2);
            let runner = submit(&mut b, Owner::Pid(1), Request::BarrierWaitAction);
            let other = submit(&mut b, Owner::Pid(2), Request::BarrierWait);
            assert_eq!(answer(&runner), Some(Ok(Response::RunAction(0))));
            let next = submit(&mut b, Owner::Pid(3), Request::BarrierWait);
            if dies {
                let mut out = Vec::new();
                b.worker_exited(1, &mut out);
                for (responder, result) in out {
                    responder.deliver(result);
                }
            } else {
                submit(&mut b, Owner::Pid(1), Request::BarrierActionDone(false));
            }
            assert_eq!(answer(&other), Some(Err(ObjectError::Broken)));
            assert_eq!(answer(&next), Some(Err(ObjectError::Broken)));
            assert_eq!(
                answer(&submit(&mut b, Owner::Pid(2), Request::BarrierBroken)),
                Some(Ok(Response::Flag(true)))
            );
        }
    }

    #[test]
    fn a_round_without_an_action_releases_at_once_and_parties_is_answered() {
        let mut b = barrier(2);
        let first = submit(&mut b, Owner::Pid(1), Request::BarrierWait);
        let second = submit(&mut b, Owner::Pid(2), Request::BarrierWait);
        assert_eq!(answer(&second), Some(Ok(Response::Int(1))));
        assert_eq!(answer(&first), Some(Ok(Response::Int(0))));
        assert_eq!(
            answer(&submit(&mut b, Owner::Pid(1), Request::BarrierParties)),
            Some(Ok(Response::Count(2)))
        );
        assert_eq!(
            answer(&submit(&mut b, Owner::Pid(1), Request::BarrierBroken)),
            Some(Ok(Response::Flag(false)))
        );
    }

    #[test]
    fn a_lock_in_the_broker_answers_locked() {
        for recursive in [false, true] {
            let state = State::Lock(LockState {
                owner: None,
                count: 0,
                recursive,
            });
            let mut l = Object::new(Kind::Lock, [1, 2], state);
            let locked = |l: &mut Object| answer(&submit(l, Owner::Pid(9), Request::Locked));
            assert_eq!(locked(&mut l), Some(Ok(Response::Flag(false))));
            submit(&mut l, Owner::Pid(1), Request::Acquire);
            assert_eq!(locked(&mut l), Some(Ok(Response::Flag(true))));
            submit(&mut l, Owner::Pid(1), Request::Release);
            assert_eq!(locked(&mut l), Some(Ok(Response::Flag(false))));
        }
    }

    #[test]
    fn list_insert_remove_clear_and_slice_follow_python() {
        let mut l = Object::new(Kind::List, [1, 2], State::List(Vec::new()));
        let item = |n: u8| vec![n];
        for n in [0, 1, 2] {
            run(&mut l, Request::ListAppend(item(n))).unwrap();
        }
        let items = |l: &mut Object| run(l, Request::ListItems).unwrap();
        let of = |ns: &[u8]| Response::Values(ns.iter().map(|&n| item(n)).collect());
        run(&mut l, Request::ListInsert(-1, item(9))).unwrap();
        assert_eq!(items(&mut l), of(&[0, 1, 9, 2]));
        run(&mut l, Request::ListInsert(100, item(7))).unwrap();
        run(&mut l, Request::ListInsert(-100, item(5))).unwrap();
        run(&mut l, Request::ListInsert(i64::MIN, item(4))).unwrap();
        run(&mut l, Request::ListInsert(i64::MAX, item(8))).unwrap();
        assert_eq!(items(&mut l), of(&[4, 5, 0, 1, 9, 2, 7, 8]));
        let slice = |l: &mut Object, a, b| run(l, Request::ListSlice(a, b)).unwrap();
        assert_eq!(slice(&mut l, Some(1), Some(-1)), of(&[5, 0, 1, 9, 2, 7]));
        assert_eq!(slice(&mut l, Some(-2), None), of(&[7, 8]));
        assert_eq!(slice(&mut l, None, Some(2)), of(&[4, 5]));
        assert_eq!(slice(&mut l, Some(5), Some(2)), of(&[]));
        assert_eq!(slice(&mut l, Some(i64::MIN), Some(i64::MAX)), items(&mut l));
        run(&mut l, Request::ListAppend(item(9))).unwrap();
        run(&mut l, Request::ListRemove(item(9))).unwrap();
        assert_eq!(items(&mut l), of(&[4, 5, 0, 1, 2, 7, 8, 9]), "the first 9");
        assert!(matches!(
            run(&mut l, Request::ListRemove(item(3))),
            Err(ObjectError::Missing(m)) if m.starts_with("ValueError")
        ));
        assert!(l.stored > 0);
        run(&mut l, Request::ListClear).unwrap();
        assert_eq!(items(&mut l), of(&[]));
        assert_eq!(l.stored, 0, "a cleared list costs nothing");
    }

    #[test]
    fn dict_popitem_is_lifo_and_clear_empties_it() {
        let mut d = dict();
        for (k, v) in [("a", 1u8), ("b", 2), ("c", 3), ("a", 4)] {
            run(&mut d, Request::DictSet((k.into(), vec![v]))).unwrap();
        }
        let entry = |k: &str, v: u8| Ok(Response::Entries(vec![(k.into(), vec![v])]));
        assert_eq!(run(&mut d, Request::DictPopitem), entry("c", 3));
        run(&mut d, Request::DictSet(("d".into(), vec![5]))).unwrap();
        assert_eq!(run(&mut d, Request::DictPopitem), entry("d", 5));
        assert_eq!(run(&mut d, Request::DictPopitem), entry("b", 2));
        assert_eq!(run(&mut d, Request::DictPopitem), entry("a", 4));
        assert_eq!(d.stored, 0);
        assert!(matches!(
            run(&mut d, Request::DictPopitem),
            Err(ObjectError::Missing(m)) if m.starts_with("KeyError")
        ));
        run(&mut d, Request::DictSet(("e".into(), vec![6]))).unwrap();
        run(&mut d, Request::DictClear).unwrap();
        assert_eq!(run(&mut d, Request::DictLen), Ok(Response::Count(0)));
        assert_eq!(d.stored, 0);
    }

    #[test]
    fn dict_bytes_are_exact_across_overwrites_and_removals() {
        let mut d = dict();
        for _ in 0..1000 {
            run(&mut d, Request::DictSet((b"k".to_vec(), vec![0; 100]))).unwrap();
        }
        assert_eq!(
            d.stored,
            heap_bytes(1) + heap_bytes(100) + ENTRY_OVERHEAD,
            "overwriting a key does not grow the account"
        );
        run(&mut d, Request::DictIncrement(b"n".to_vec(), 5)).unwrap();
        run(&mut d, Request::DictDelete(b"k".to_vec())).unwrap();
        assert_eq!(
            d.stored,
            heap_bytes(1) + heap_bytes(1) + ENTRY_OVERHEAD,
            "key `n` and the one-byte integer 5"
        );
        run(&mut d, Request::DictPop(b"n".to_vec())).unwrap();
        assert_eq!(d.stored, 0);
    }

    #[test]
    fn empty_list_items_are_charged_so_a_flood_of_them_is_refused() {
        let mut l = Object::new(Kind::List, [1, 2], State::List(Vec::new()));
        let batch = || Request::ListExtend(vec![Vec::new(); 1 << 16]);
        let most = MAX_OBJECT_BYTES / SLOT_OVERHEAD;
        let mut items = 0usize;
        while run(&mut l, batch()).is_ok() {
            items += 1 << 16;
            assert!(items <= most, "never refused");
        }
        while run(&mut l, Request::ListAppend(Vec::new())).is_ok() {
            items += 1;
            assert!(items <= most, "never refused");
        }
        assert_eq!(
            items, most,
            "the list filled its byte limit with empty items"
        );
        assert_eq!(l.stored, most * SLOT_OVERHEAD);
        run(&mut l, Request::ListPop(None)).unwrap();
        assert_eq!(l.stored, (most - 1) * SLOT_OVERHEAD);
    }

    #[test]
    fn the_cost_of_an_item_is_its_allocation_and_its_slot() {
        assert_eq!(heap_bytes(0), 0);
        assert_eq!(heap_bytes(1), 32, "glibc's smallest chunk");
        assert_eq!(heap_bytes(24), 32);
        assert_eq!(heap_bytes(25), 48);
        assert_eq!(heap_bytes(100), 112);
        assert_eq!(heap_bytes(usize::MAX), usize::MAX & !15, "no overflow");
        let mut v = Vec::with_capacity(1000);
        v.push(1u8);
        assert_eq!(item_cost(&v), 1008 + SLOT_OVERHEAD, "capacity, not length");
    }

    #[test]
    fn a_queue_of_tiny_items_is_charged_what_it_costs() {
        let mut q = Object::new(
            Kind::Queue,
            [1, 2],
            State::Queue {
                items: VecDeque::new(),
                bytes: 0,
                maxsize: 0,
                closed: false,
                joinable: false,
                unfinished: 0,
                shared: None,
            },
        );
        let mut n = 0usize;
        while run(&mut q, Request::QueuePut(vec![7])).is_ok() {
            n += 1;
        }
        // Each one-byte item: a 32-byte allocation and a 48-byte slot, not 1 + 32.
        assert_eq!(n, MAX_OBJECT_BYTES / (32 + SLOT_OVERHEAD));
        run(&mut q, Request::QueueGet).unwrap();
        let State::Queue { bytes, .. } = &q.state else {
            unreachable!()
        };
        assert_eq!(*bytes, (n - 1) * (32 + SLOT_OVERHEAD));
    }

    #[test]
    fn a_full_dict_refuses_growth_but_still_answers_reads() {
        let mut d = dict();
        d.stored = MAX_OBJECT_BYTES;
        assert!(matches!(
            run(&mut d, Request::DictSet((b"k".to_vec(), vec![1]))),
            Err(ObjectError::TooLarge(_))
        ));
        assert_eq!(
            run(&mut d, Request::DictGet(b"k".to_vec())),
            Ok(Response::Maybe(None))
        );
    }
}
