//! The worker's side of the `objects` import: each `invoke` becomes an `Object` frame to the
//! host's broker, and the task blocks until the `ObjectReply` arrives (the frames thread
//! routes replies here). Only the calling task blocks; the worker's socket keeps flowing.
//!
//! Posting: a put on an unbounded queue, a pipe send, a dict set or a list append can never
//! wait, and the host says so in its answer to the first one on a handle that succeeds.
//! Later ones on that handle, during a task call (not a batch: a refusal would have no one
//! item to fail), are posted: sent without waiting, as Python's `Queue.put` hands its item to
//! a feeder thread. The host answers a posted request only to refuse it (the queue was closed
//! meanwhile, it is over the object's size limit, …), and then refuses every later posted
//! one on that handle too, so what lands is a prefix of what was sent. The refusal is
//! reported once, by the task's next put or send on that handle (which is not performed),
//! or, if there is none before the task ends, it fails the task. Other calls, a lock guard's
//! release say, are never failed by it.
//!
//! Pipes, unbounded queues, locks and dicts: the first send, receive or poll on a pipe end,
//! put or get on a queue, acquire or release, or dict operation attaches the object (one
//! round trip, which also makes this worker a holder) and maps its shared segment; from
//! then on those run in place, in the segment (see `crate::shm`), until its ring or dict
//! spills. Other objects answer the attach with no segment, and go through the broker.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmpool_objects::wire::{self, ObjectError};

use super::output::Channel;
use crate::bindings::objects as wit;
use crate::broker::MESSAGE_CAP;
use crate::protocol::{FromWorker, ObjectCall};
use crate::shm::{Local, SegmentKind, Shared};

/// What the broker sends the waiting task (the frames thread routes it here).
#[derive(Debug)]
pub(crate) enum Reply {
    /// The answer to request `req`; `postable`: later puts or sends on the handle may be
    /// posted.
    Answer {
        req: u64,
        result: Result<wire::Response, ObjectError>,
        postable: bool,
    },
    /// The host refused posted request `req` on `target`.
    Refused {
        req: u64,
        target: wire::Handle,
        error: ObjectError,
    },
    /// The answer to `Attach` request `req`: the object's segment, or `None` to use it
    /// through the broker.
    Attached {
        req: u64,
        result: Result<Option<(SegmentKind, std::os::fd::OwnedFd)>, ObjectError>,
    },
}

/// Request ids of posted requests have this bit set.
const POSTED: u64 = 1 << 63;

type Key = (u64, u64);

fn key(h: wire::Handle) -> Key {
    (h.id, h.token)
}

/// Hashes a [`Key`] with a multiply and a rotate per word. Every put and get in place
/// looks its object up by key, and SipHash (the default, made to resist keys chosen to
/// collide) was a twentieth of a put; here the keys come from this worker's own guest,
/// which can only slow itself down.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type KeyMap<V> = HashMap<Key, V, std::hash::BuildHasherDefault<KeyHasher>>;

/// Refusals of posted requests, per handle.
#[derive(Debug, Default)]
struct Refusals {
    /// Not reported yet: the first refusal on each handle.
    pending: HashMap<Key, ObjectError>,
    /// Reported when the request id counter stood at this value: refusals of requests
    /// posted before then are the same refusal, already reported.
    reported: HashMap<Key, u64>,
}

/// Sends requests to the broker and waits for their replies.
#[derive(Debug)]
pub(crate) struct ObjectClient {
    channel: Arc<Channel>,
    replies: Mutex<Receiver<Reply>>,
    next: AtomicU64,
    /// Handles on which puts or sends never wait, as the host answered.
    postable: Mutex<HashSet<Key>>,
    /// Whether requests may be posted now: only while a single task call runs.
    posting: AtomicBool,
    /// Requests were posted since the last answer waited for (the host may refuse them).
    unsynced: AtomicBool,
    refusals: Mutex<Refusals>,
    /// This process's id, as it marks the ring mutexes it takes.
    pid: u32,
    /// Objects attached: their segment, or `None` for one used through the broker.
    attached: Mutex<KeyMap<Option<Shared>>>,
}

/// Whether a request is of a kind that may be posted.
fn postable_kind(request: &wire::Request) -> bool {
    matches!(
        request,
        wire::Request::QueuePut(_)
            | wire::Request::ConnSend(_)
            | wire::Request::DictSet(_)
            | wire::Request::ListAppend(_)
    )
}

impl ObjectClient {
    pub fn new(channel: Arc<Channel>, replies: Receiver<Reply>) -> Self {
        ObjectClient {
            channel,
            replies: Mutex::new(replies),
            next: AtomicU64::new(1),
            postable: Mutex::new(HashSet::new()),
            posting: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
            refusals: Mutex::new(Refusals::default()),
            pid: std::process::id(),
            attached: Mutex::new(KeyMap::default()),
        }
    }

    /// Forgets every attached segment (the host was told this worker holds nothing, and
    /// attaching again makes it a holder again). Objects known to have no segment stay
    /// known: attaching one registers nothing, and it never gets a segment later.
    ///
    /// After a lost instance this also orders the next task's use of shared memory after
    /// the host's clean-up: its first in-place operation attaches again, on the same socket
    /// as the `InstanceLost` before it, so the host has freed the lost instance's locks
    /// (the words holding this process's pid) before the next task can take one.
    pub fn forget_attachments(&self) {
        if let Ok(mut a) = self.attached.lock() {
            a.retain(|_, shared| shared.is_none());
        }
    }

    /// The segment of object `target`, attaching it on first use.
    fn shared(&self, target: wire::Handle) -> Result<Option<Shared>, ObjectError> {
        if let Some(known) = self
            .attached
            .lock()
            .ok()
            .and_then(|a| a.get(&key(target)).cloned())
        {
            return Ok(known);
        }
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        self.channel
            .send(&FromWorker::Object(ObjectCall::Attach { req, target }))
            .map_err(|e| ObjectError::Stale(format!("the host is gone: {e}")))?;
        let segment = match self.wait_for(req) {
            Ok(Reply::Attached { result, .. }) => result?,
            Ok(_) => return Err(ObjectError::Invalid("a wrong answer to an attach".into())),
            Err(_) => return Err(ObjectError::Stale("the host is gone".into())),
        };
        let shared = match segment {
            Some((kind, fd)) => Some(Shared::open(kind, fd).map_err(|e| {
                ObjectError::Invalid(format!("cannot map the object's shared segment: {e}"))
            })?),
            None => None,
        };
        if let Ok(mut a) = self.attached.lock() {
            a.insert(key(target), shared.clone());
        }
        Ok(shared)
    }

    /// A put or get, or a pipe's send, receive or poll, in place if the object is attached
    /// to a segment; `Broker` (with what is left of the timeout) when it has to go through
    /// the broker.
    fn shared_op(
        &self,
        target: wire::Handle,
        request: &wire::Request,
        timeout_ms: &mut Option<u64>,
    ) -> Result<Local<wire::Response>, ObjectError> {
        let Some(shared) = self.shared(target)? else {
            return Ok(Local::Broker);
        };
        // A timeout too long to be a point in time is no deadline at all.
        let deadline =
            timeout_ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let local = shared.run(target, self.pid, request, deadline)?;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now()).as_millis();
            *timeout_ms = Some(u64::try_from(left).unwrap_or(u64::MAX));
        }
        Ok(local)
    }

    /// A task call starts: its puts and sends may be posted.
    pub fn begin_call(&self) {
        self.posting.store(true, Ordering::Relaxed);
    }

    /// The task call ended: answers the refusal of a request it posted that it was not told
    /// of, after waiting (one round trip, only if it posted any) for the host to have seen
    /// them all.
    pub fn end_call(&self) -> Option<String> {
        self.posting.store(false, Ordering::Relaxed);
        if self.unsynced.load(Ordering::Relaxed) {
            let req = self.next.fetch_add(1, Ordering::Relaxed);
            if self
                .channel
                .send(&FromWorker::Object(ObjectCall::Sync { req }))
                .is_ok()
            {
                // The host gone, the task's answer is lost anyway.
                let _ = self.wait_for(req);
            }
        }
        let mut refusals = self.refusals.lock().ok()?;
        let unreported = refusals.pending.drain().next();
        *refusals = Refusals::default();
        let (_, error) = unreported?;
        Some(format!(
            "a put or send the task made without waiting was refused: {error}"
        ))
    }

    /// The guest's `invoke`.
    pub fn invoke(
        &self,
        target: wit::Handle,
        req: wit::Request,
        timeout_ms: Option<u64>,
    ) -> Result<wit::Response, wit::ObjectError> {
        self.call(target, request(req), timeout_ms)
            .and_then(response)
    }

    /// The guest's `invoke-more`.
    pub fn invoke_more(
        &self,
        target: wit::Handle,
        req: wit::MoreRequest,
        timeout_ms: Option<u64>,
    ) -> Result<wit::MoreResponse, wit::ObjectError> {
        match self.call(target, more_request(req), timeout_ms)? {
            wire::Response::RunAction(index) => Ok(wit::MoreResponse::RunAction(index)),
            r => response(r).map(wit::MoreResponse::Plain),
        }
    }

    fn call(
        &self,
        target: wit::Handle,
        request: wire::Request,
        mut timeout_ms: Option<u64>,
    ) -> Result<wire::Response, wit::ObjectError> {
        // The host refuses anything over its limit; what is over any limit it can have is
        // refused here, before the host decodes it (a list of millions of empty items is a
        // small frame that decodes into a large allocation).
        let len = request.payload_len();
        if len > MESSAGE_CAP {
            return Err(error(crate::broker::too_large(len, MESSAGE_CAP)));
        }
        let target = wire::Handle {
            id: target.id,
            token: target.token,
        };
        if crate::shm::in_place(&request)
            && let Local::Done(r) = self
                .shared_op(target, &request, &mut timeout_ms)
                .map_err(error)?
        {
            return Ok(r);
        }
        let kind = postable_kind(&request);
        if kind && let Some(refused) = self.take_refusal(target) {
            return Err(error(earlier(refused)));
        }
        // A task that closes a queue or a pipe end itself hears of a later put or send at
        // once, as in Python.
        if matches!(
            request,
            wire::Request::QueueClose | wire::Request::ConnClose
        ) {
            if let Ok(mut p) = self.postable.lock() {
                p.remove(&key(target));
            }
            if let Ok(mut a) = self.attached.lock() {
                a.remove(&key(target));
            }
        }
        let posted = kind
            && self.posting.load(Ordering::Relaxed)
            && self.postable.lock().is_ok_and(|p| p.contains(&key(target)));
        let mut id = self.next.fetch_add(1, Ordering::Relaxed);
        if posted {
            id |= POSTED;
        }
        let frame = FromWorker::Object(ObjectCall::Invoke {
            req: id,
            target,
            request,
            timeout_ms,
            posted,
        });
        // Sent at once, with any answers queued before it: the host may be waiting on them.
        if let Err(e) = self.channel.send(&frame) {
            return Err(wit::ObjectError::TooLarge(e.to_string()));
        }
        if posted {
            self.unsynced.store(true, Ordering::Relaxed);
            return Ok(wire::Response::Unit);
        }
        let (result, postable) = match self.wait_for(id)? {
            Reply::Answer {
                result, postable, ..
            } => (result, postable),
            _ => return Err(wit::ObjectError::Invalid("a wrong answer".into())),
        };
        if postable && let Ok(mut p) = self.postable.lock() {
            p.insert(key(target));
        }
        result.map_err(error)
    }

    /// Waits for the answer to request `id` (an `Answer` or `Attached`), keeping refusals
    /// of posted requests that arrive first. Once it arrives, every earlier request has been
    /// answered.
    fn wait_for(&self, id: u64) -> Result<Reply, wit::ObjectError> {
        let gone = || wit::ObjectError::Stale("the host is gone".into());
        let replies = self.replies.lock().map_err(|_| gone())?;
        loop {
            match replies.recv() {
                Ok(reply @ (Reply::Answer { req, .. } | Reply::Attached { req, .. }))
                    if req == id =>
                {
                    self.unsynced.store(false, Ordering::Relaxed);
                    return Ok(reply);
                }
                Ok(Reply::Refused { req, target, error }) => self.keep(req, target, error),
                // A reply to a request of a call that was abandoned: nobody waits for it.
                Ok(Reply::Answer { .. } | Reply::Attached { .. }) => continue,
                Err(_) => return Err(gone()),
            }
        }
    }

    /// Keeps a refusal until it is reported; puts and sends on its handle wait from now on.
    fn keep(&self, req: u64, target: wire::Handle, error: ObjectError) {
        if let Ok(mut p) = self.postable.lock() {
            p.remove(&key(target));
        }
        let Ok(mut refusals) = self.refusals.lock() else {
            return;
        };
        let seen = refusals.reported.get(&key(target)).copied();
        if seen.is_some_and(|upto| req & !POSTED < upto) {
            return;
        }
        refusals.pending.entry(key(target)).or_insert(error);
    }

    /// The refusal on `target` not reported yet, if one has arrived.
    fn take_refusal(&self, target: wire::Handle) -> Option<ObjectError> {
        if self.unsynced.load(Ordering::Relaxed)
            && let Ok(replies) = self.replies.lock()
        {
            while let Ok(reply) = replies.try_recv() {
                if let Reply::Refused { req, target, error } = reply {
                    self.keep(req, target, error);
                }
            }
        }
        let mut refusals = self.refusals.lock().ok()?;
        let error = refusals.pending.remove(&key(target))?;
        let upto = self.next.load(Ordering::Relaxed);
        refusals.reported.insert(key(target), upto);
        Some(error)
    }
}

/// A refusal of an earlier posted request, reported by a later put or send on its handle:
/// the same kind of error, saying which operation it was about.
fn earlier(e: ObjectError) -> ObjectError {
    let say = |m: String| format!("an earlier put or send, made without waiting, was refused: {m}");
    match e {
        ObjectError::Closed(m) => ObjectError::Closed(say(m)),
        ObjectError::Missing(m) => ObjectError::Missing(say(m)),
        ObjectError::Invalid(m) => ObjectError::Invalid(say(m)),
        ObjectError::TooLarge(m) => ObjectError::TooLarge(say(m)),
        ObjectError::Stale(m) => ObjectError::Stale(say(m)),
        other => ObjectError::Invalid(say(other.to_string())),
    }
}

fn request(r: wit::Request) -> wire::Request {
    use wire::Request as W;
    use wit::Request as R;
    match r {
        R::QueuePut(v) => W::QueuePut(v),
        R::QueueGet => W::QueueGet,
        R::QueueQsize => W::QueueQsize,
        R::QueueMaxsize => W::QueueMaxsize,
        R::QueueClose => W::QueueClose,
        R::QueueTaskDone => W::QueueTaskDone,
        R::QueueJoin => W::QueueJoin,
        R::ConnSend(v) => W::ConnSend(v),
        R::ConnRecv => W::ConnRecv,
        R::ConnPoll => W::ConnPoll,
        R::ConnClose => W::ConnClose,
        R::Acquire => W::Acquire,
        R::Release => W::Release,
        R::SemaphoreValue => W::SemaphoreValue,
        R::EventSet => W::EventSet,
        R::EventClear => W::EventClear,
        R::EventIsSet => W::EventIsSet,
        R::EventWait => W::EventWait,
        R::BarrierWait => W::BarrierWait,
        R::BarrierAbort => W::BarrierAbort,
        R::BarrierReset => W::BarrierReset,
        R::BarrierNWaiting => W::BarrierNWaiting,
        R::ConditionWait => W::ConditionWait,
        R::ConditionNotify(n) => W::ConditionNotify(n),
        R::ConditionNotifyAll => W::ConditionNotifyAll,
        R::DictGet(k) => W::DictGet(k),
        R::DictSet(e) => W::DictSet(e),
        R::DictDelete(k) => W::DictDelete(k),
        R::DictContains(k) => W::DictContains(k),
        R::DictKeys => W::DictKeys,
        R::DictValues => W::DictValues,
        R::DictItems => W::DictItems,
        R::DictLen => W::DictLen,
        R::DictUpdate(es) => W::DictUpdate(es),
        R::DictSetdefault(e) => W::DictSetdefault(e),
        R::DictPop(k) => W::DictPop(k),
        R::DictIncrement((k, d)) => W::DictIncrement(k, d),
        R::DictCompareAndSwap(s) => W::DictCompareAndSwap {
            key: s.key,
            expected: s.expected,
            new: s.new,
        },
        R::ListAppend(v) => W::ListAppend(v),
        R::ListExtend(vs) => W::ListExtend(vs),
        R::ListGet(i) => W::ListGet(i),
        R::ListSet((i, v)) => W::ListSet(i, v),
        R::ListLen => W::ListLen,
        R::ListPop(i) => W::ListPop(i),
        R::ListIndex(v) => W::ListIndex(v),
        R::ListItems => W::ListItems,
    }
}

fn more_request(r: wit::MoreRequest) -> wire::Request {
    use wire::Request as W;
    use wit::MoreRequest as R;
    match r {
        R::Locked => W::Locked,
        R::BarrierParties => W::BarrierParties,
        R::BarrierBroken => W::BarrierBroken,
        R::BarrierWaitAction => W::BarrierWaitAction,
        R::BarrierActionDone(ok) => W::BarrierActionDone(ok),
        R::DictPopitem => W::DictPopitem,
        R::DictClear => W::DictClear,
        R::ListInsert((i, v)) => W::ListInsert(i, v),
        R::ListRemove(v) => W::ListRemove(v),
        R::ListClear => W::ListClear,
        R::ListSlice((start, stop)) => W::ListSlice(start, stop),
    }
}

/// An answer `invoke` can give (`RunAction` answers only `invoke-more`'s
/// `barrier-wait-action`).
fn response(r: wire::Response) -> Result<wit::Response, wit::ObjectError> {
    use wire::Response as W;
    use wit::Response as R;
    Ok(match r {
        W::Unit => R::Unit,
        W::Value(v) => R::Value(v),
        W::Maybe(v) => R::Maybe(v),
        W::Values(vs) => R::Values(vs),
        W::Entries(es) => R::Entries(es),
        W::Count(n) => R::Count(n),
        W::Int(n) => R::Int(n),
        W::Flag(b) => R::Flag(b),
        W::RunAction(_) => {
            return Err(wit::ObjectError::Invalid(
                "a barrier action to run, in answer to a request that offered none".into(),
            ));
        }
    })
}

fn error(e: ObjectError) -> wit::ObjectError {
    use wit::ObjectError as R;
    match e {
        ObjectError::Timeout => R::Timeout,
        ObjectError::Empty => R::Empty,
        ObjectError::Full => R::Full,
        ObjectError::Closed(m) => R::Closed(m),
        ObjectError::Broken => R::Broken,
        ObjectError::NotOwner(m) => R::NotOwner(m),
        ObjectError::Missing(m) => R::Missing(m),
        ObjectError::Invalid(m) => R::Invalid(m),
        ObjectError::TooLarge(m) => R::TooLarge(m),
        ObjectError::Stale(m) => R::Stale(m),
        ObjectError::Encode(m) | ObjectError::Decode(m) => R::Invalid(m),
        // The WIT world has no case for it: the handle cannot be used now, as `stale` says.
        ObjectError::Unavailable(m) => R::Stale(m),
    }
}
