//! One shared object: what every kind has (its waiters, the processes that hold it, its
//! tokens and references) and the order of an operation on it. What each kind keeps and
//! the rules of its operations are in [`kinds`](super::kinds), one file per kind.
//!
//! An operation either completes at once or leaves a [`Waiter`] on its object. After every
//! change the object is pumped: each waiter is retried in arrival order until none can
//! proceed, so a release, a put or a set wakes exactly the waiters it lets through.

use std::collections::{HashMap, VecDeque};

use wasmpool_objects::wire::{Kind, ObjectError, Request, Response};

use super::kinds::{Common, ObjectKind, ObjectState};
use super::refs::RefLog;
use super::{Owner, Responder};

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
    /// What its kind keeps.
    pub state: ObjectState,
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
pub(crate) fn growth(req: &Request) -> usize {
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

/// The refusal of an item or entry that a queue, pipe, dict or list already costing the
/// host `bytes` has no room for.
pub(crate) fn too_big(kind: Kind, bytes: usize) -> OpResult {
    Err(ObjectError::TooLarge(format!(
        "the {} already costs the host {bytes} bytes (its items and the host's overhead for \
         each); the limit is {MAX_OBJECT_BYTES}: take items out first, or keep large data \
         in a file",
        kind.name()
    )))
}

/// Whether end `e` is still held by anyone: the host program (unless it closed its copy,
/// `host_closed`), a process, or a container's value.
pub(crate) fn open(
    host_refs: &[usize; 2],
    holds: &[HashMap<Hold, u32>; 2],
    contained: &[usize; 2],
    e: usize,
    host_closed: bool,
) -> bool {
    (host_refs[e] > 0 && !host_closed) || !holds[e].is_empty() || contained[e] > 0
}

impl Object {
    pub fn new(kind: Kind, tokens: [u64; 2], state: ObjectState) -> Self {
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

    /// The kind's state, and what of the object its operations may see and change.
    fn split(&mut self) -> (&mut ObjectState, Common<'_>) {
        let Object {
            kind,
            host_refs,
            holds,
            stored,
            contained,
            refs,
            state,
            waiters,
            ..
        } = self;
        let common = Common {
            kind: *kind,
            host_refs,
            holds,
            contained,
            stored,
            refs,
            waiters,
        };
        (state, common)
    }

    /// Whether `req` on this object can never wait (an unbounded queue's put, a pipe send,
    /// a dict set, a list append): a worker may post it without waiting for the answer.
    pub fn never_waits(&self, req: &Request) -> bool {
        self.state.never_waits(req)
    }

    /// Whether an end of a pipe is still held by anyone.
    pub fn end_open(&self, end: u8) -> bool {
        let e = usize::from(end & 1);
        open(
            &self.host_refs,
            &self.holds,
            &self.contained,
            e,
            self.state.host_closed(e),
        )
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
        if let Err(e) = self.state.admit(owner, end) {
            return Step::Done(Err(e));
        }
        // A worker using an object holds it.
        if let Owner::Pid(pid) = owner {
            self.holds[usize::from(end)]
                .entry(Hold::Pid(pid))
                .or_insert(1);
        }
        let (state, mut cx) = self.split();
        state.start(&mut cx, owner, end, req, out)
    }

    /// Tries a blocked operation again; `None` while it still cannot proceed.
    pub fn attempt(&mut self, owner: Owner, end: u8, pending: &mut Pending) -> Option<OpResult> {
        let (state, mut cx) = self.split();
        state.attempt(&mut cx, owner, end, pending)
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
        self.state.pumped([self.end_open(0), self.end_open(1)]);
    }

    /// The waiter `id` timed out: answer it as Python would, or move it on.
    pub fn expire(&mut self, id: u64, out: &mut Vec<(Responder, OpResult)>) {
        let Some(pos) = self.waiters.iter().position(|w| w.id == id) else {
            return;
        };
        let Some(w) = self.waiters.remove(pos) else {
            return;
        };
        let (state, mut cx) = self.split();
        state.expire(&mut cx, w, pos, out);
        self.pump(out);
    }

    /// Worker `pid` is gone: forget its waiters and give back what it held.
    pub fn worker_exited(&mut self, pid: u32, out: &mut Vec<(Responder, OpResult)>) {
        let gone = Owner::Pid(pid);
        let (lost, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| w.owner == gone);
        self.waiters = kept.into();
        let mut changed = !lost.is_empty();
        let (state, mut cx) = self.split();
        changed |= state.worker_exited(&mut cx, pid, &lost, out);
        for h in self.holds.iter_mut() {
            changed |= h.remove(&Hold::Pid(pid)).is_some();
        }
        if changed {
            self.pump(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Object {
        Object::new(Kind::Dict, [1, 2], ObjectState::dict())
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
        Object::new(Kind::Barrier, [1, 2], ObjectState::barrier(parties))
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
        let ObjectState::Barrier(round) = &b.state else {
            unreachable!()
        };
        assert_eq!(round.arrived, 1);

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
            let mut l = Object::new(Kind::Lock, [1, 2], ObjectState::lock(recursive));
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
        let mut l = Object::new(Kind::List, [1, 2], ObjectState::list());
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
        let mut l = Object::new(Kind::List, [1, 2], ObjectState::list());
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
        let mut q = Object::new(Kind::Queue, [1, 2], ObjectState::queue(0, false, None));
        let mut n = 0usize;
        while run(&mut q, Request::QueuePut(vec![7])).is_ok() {
            n += 1;
        }
        // Each one-byte item: a 32-byte allocation and a 48-byte slot, not 1 + 32.
        assert_eq!(n, MAX_OBJECT_BYTES / (32 + SLOT_OVERHEAD));
        run(&mut q, Request::QueueGet).unwrap();
        let ObjectState::Queue(queue) = &q.state else {
            unreachable!()
        };
        assert_eq!(queue.bytes, (n - 1) * (32 + SLOT_OVERHEAD));
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
