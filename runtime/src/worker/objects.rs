//! The worker's side of the `objects` import: each `invoke` becomes an `Object` frame to the
//! host's broker, and the task blocks until the `ObjectReply` arrives (the frames thread
//! routes replies here). Only the calling task blocks; the worker's socket keeps flowing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use wasmpool_objects::wire::{self, ObjectError};

use super::output::Channel;
use crate::bindings::objects as wit;
use crate::broker::MESSAGE_CAP;
use crate::protocol::FromWorker;

/// Sends requests to the broker and waits for their replies.
#[derive(Debug)]
pub(crate) struct ObjectClient {
    channel: Arc<Channel>,
    replies: Mutex<Receiver<(u64, Result<wire::Response, ObjectError>)>>,
    next: AtomicU64,
}

impl ObjectClient {
    pub fn new(
        channel: Arc<Channel>,
        replies: Receiver<(u64, Result<wire::Response, ObjectError>)>,
    ) -> Self {
        ObjectClient {
            channel,
            replies: Mutex::new(replies),
            next: AtomicU64::new(1),
        }
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
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let frame = FromWorker::Object {
            req: id,
            target: wire::Handle {
                id: target.id,
                token: target.token,
            },
            request,
            timeout_ms,
        };
        let gone = || wit::ObjectError::Stale("the host is gone".into());
        // Sent at once, with any answers queued before it: the host may be waiting on them.
        if let Err(e) = self.channel.send(&frame) {
            return Err(wit::ObjectError::TooLarge(e.to_string()));
        }
        let replies = self.replies.lock().map_err(|_| gone())?;
        loop {
            match replies.recv() {
                Ok((req, result)) if req == id => {
                    return result.map(response).map_err(error);
                }
                // A reply to a request of a call that was abandoned: nobody waits for it.
                Ok(_) => continue,
                Err(_) => return Err(gone()),
            }
        }
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
