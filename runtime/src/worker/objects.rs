//! The worker's side of the `objects` import: each `invoke` becomes an `Object` frame to the
//! host's broker, and the task blocks until the `ObjectReply` arrives (the frames thread
//! routes replies here). Only the calling task blocks; the worker's socket keeps flowing.
//!
//! Posting: a put on an unbounded queue, a pipe send, a dict set or a list append can never
//! wait, and the host says so in its answer to the first one on a handle. Later ones on
//! that handle, during a task call (not a batch: a refusal would have no one item to fail),
//! are posted: sent without waiting, as Python's `Queue.put` hands its item to a feeder
//! thread. The host answers a posted request only to refuse it (the queue was closed
//! meanwhile, say). A refusal is reported by the first object operation the task starts
//! after the refusal reached the worker (which is then not performed): at the latest, the
//! one after the next operation that waits. If the task makes none, the refusal fails the
//! task at its end. Nothing refused is lost silently.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use wasmpool_objects::wire::{self, ObjectError};

use super::output::Channel;
use crate::bindings::objects as wit;
use crate::broker::MESSAGE_CAP;
use crate::protocol::FromWorker;

/// One answer from the broker: request id, result, and whether later puts or sends on the
/// handle may be posted.
pub(crate) type Reply = (u64, Result<wire::Response, ObjectError>, bool);

/// Request ids of posted requests have this bit set, so a refusal is told from an answer.
const POSTED: u64 = 1 << 63;

/// Sends requests to the broker and waits for their replies.
#[derive(Debug)]
pub(crate) struct ObjectClient {
    channel: Arc<Channel>,
    replies: Mutex<Receiver<Reply>>,
    next: AtomicU64,
    /// Handles (id, token) on which puts or sends never wait, as the host answered.
    postable: Mutex<HashSet<(u64, u64)>>,
    /// Whether requests may be posted now: only while a single task call runs.
    posting: AtomicBool,
    /// Requests were posted since the last answer waited for (the host may refuse them).
    unsynced: AtomicBool,
    /// The first refusal of a posted request, not yet reported.
    refused: Mutex<Option<ObjectError>>,
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
            refused: Mutex::new(None),
        }
    }

    /// A task call starts: its puts and sends may be posted.
    pub fn begin_call(&self) {
        self.posting.store(true, Ordering::Relaxed);
    }

    /// The task call ended: answers the refusal of a request it posted that it was not told
    /// of yet, after waiting (one round trip, only if it posted any) for the host to have
    /// seen them all.
    pub fn end_call(&self) -> Option<String> {
        self.posting.store(false, Ordering::Relaxed);
        if self.unsynced.load(Ordering::Relaxed) {
            let req = self.next.fetch_add(1, Ordering::Relaxed);
            if self.channel.send(&FromWorker::ObjectSync { req }).is_ok() {
                // The host gone, the task's answer is lost anyway.
                let _ = self.wait_for(req);
            }
        }
        let refused = self.refused.lock().ok()?.take()?;
        Some(format!(
            "a put or send the task made without waiting was refused: {}",
            refused
        ))
    }

    pub fn invoke(
        &self,
        target: wit::Handle,
        req: wit::Request,
        timeout_ms: Option<u64>,
    ) -> Result<wit::Response, wit::ObjectError> {
        let request = request(req);
        // The host refuses anything over its limit; what is over any limit it can have is
        // refused here, before the host decodes it (a list of millions of empty items is a
        // small frame that decodes into a large allocation).
        let len = request.payload_len();
        if len > MESSAGE_CAP {
            return Err(wit::ObjectError::TooLarge(format!(
                "a message of {len} bytes is over the {MESSAGE_CAP} byte limit"
            )));
        }
        if let Some(refused) = self.take_refusal() {
            return Err(error(earlier(refused)));
        }
        let target = wire::Handle {
            id: target.id,
            token: target.token,
        };
        let posted = self.posting.load(Ordering::Relaxed)
            && matches!(
                request,
                wire::Request::QueuePut(_)
                    | wire::Request::ConnSend(_)
                    | wire::Request::DictSet(_)
                    | wire::Request::ListAppend(_)
            )
            && self
                .postable
                .lock()
                .is_ok_and(|p| p.contains(&(target.id, target.token)));
        // A task that closes a queue or a pipe end itself hears of a later put or send at
        // once, as in Python.
        if matches!(
            request,
            wire::Request::QueueClose | wire::Request::ConnClose
        ) && let Ok(mut p) = self.postable.lock()
        {
            p.remove(&(target.id, target.token));
        }
        let mut id = self.next.fetch_add(1, Ordering::Relaxed);
        if posted {
            id |= POSTED;
        }
        let frame = FromWorker::Object {
            req: id,
            target,
            request,
            timeout_ms,
            posted,
        };
        // Sent at once, with any answers queued before it: the host may be waiting on them.
        if let Err(e) = self.channel.send(&frame) {
            return Err(wit::ObjectError::TooLarge(e.to_string()));
        }
        if posted {
            self.unsynced.store(true, Ordering::Relaxed);
            return Ok(wit::Response::Unit);
        }
        let (result, postable) = self.wait_for(id)?;
        if postable && let Ok(mut p) = self.postable.lock() {
            p.insert((target.id, target.token));
        }
        // A refusal of a request posted before this one may have arrived with this answer:
        // it is kept for the next operation, since this one was performed.
        result.map(response).map_err(error)
    }

    /// Waits for the answer to request `id`, keeping refusals of posted requests that
    /// arrive first. Once it arrives, every earlier request has been answered.
    fn wait_for(
        &self,
        id: u64,
    ) -> Result<(Result<wire::Response, ObjectError>, bool), wit::ObjectError> {
        let gone = || wit::ObjectError::Stale("the host is gone".into());
        let replies = self.replies.lock().map_err(|_| gone())?;
        loop {
            match replies.recv() {
                Ok((req, result, postable)) if req == id => {
                    self.unsynced.store(false, Ordering::Relaxed);
                    return Ok((result, postable));
                }
                Ok((req, Err(e), _)) if req & POSTED != 0 => self.keep_refusal(e),
                // A reply to a request of a call that was abandoned: nobody waits for it.
                Ok(_) => continue,
                Err(_) => return Err(gone()),
            }
        }
    }

    fn keep_refusal(&self, e: ObjectError) {
        if let Ok(mut refused) = self.refused.lock() {
            refused.get_or_insert(e);
        }
    }

    /// A refusal not yet reported: one kept, or one that has arrived since.
    fn take_refusal(&self) -> Option<ObjectError> {
        if self.unsynced.load(Ordering::Relaxed)
            && let Ok(replies) = self.replies.lock()
        {
            while let Ok((req, result, _)) = replies.try_recv() {
                if let (true, Err(e)) = (req & POSTED != 0, result) {
                    self.keep_refusal(e);
                }
            }
        }
        self.refused.lock().ok()?.take()
    }
}

/// A refusal of an earlier posted request, reported by a later operation: the same kind
/// of error, saying which operation it was about.
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

fn response(r: wire::Response) -> wit::Response {
    use wire::Response as W;
    use wit::Response as R;
    match r {
        W::Unit => R::Unit,
        W::Value(v) => R::Value(v),
        W::Maybe(v) => R::Maybe(v),
        W::Values(vs) => R::Values(vs),
        W::Entries(es) => R::Entries(es),
        W::Count(n) => R::Count(n),
        W::Int(n) => R::Int(n),
        W::Flag(b) => R::Flag(b),
    }
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
    }
}
