//! Shared objects inside a task: the typed handles of `wasmpool-objects`, carried to the
//! host's broker by the `objects` import of the WIT world.
//!
//! A task receives handles in its arguments, as Python passes a queue to
//! `Process(args=(q,))`, and calls their blocking methods; only this task's worker blocks.
//!
//! ```no_run
//! use wasmpool_guest::objects::{Lock, Queue};
//! use wasmpool_guest::task;
//!
//! /// Puts five work items on the queue it was given.
//! #[task]
//! fn producer(queue: Queue<String>) -> Result<(), wasmpool_guest::objects::ObjectError> {
//!     for i in 0..5 {
//!         queue.put(&format!("work：{i}"))?;
//!     }
//!     Ok(())
//! }
//!
//! /// Prints under a lock, so lines from several processes never interleave.
//! #[task]
//! fn report(lock: Lock, line: String) -> Result<(), wasmpool_guest::objects::ObjectError> {
//!     let _held = lock.lock()?;
//!     println!("{line}");
//!     Ok(())
//! }
//! # wasmpool_guest::export_tasks!(producer, report);
//! # fn main() {}
//! ```

use std::time::Duration;

pub use wasmpool_objects::{
    Barrier, Condition, ConditionGuard, Connection, Dict, Event, List, Lock, LockGuard,
    ObjectError, Queue, RLock, RLockGuard, Semaphore, SemaphoreGuard,
};

use wasmpool_objects::wire::{Handle, Request, Response};

use crate::bindings::wasmpool::task::objects as wit;

/// Carries operations to the host through the `objects` import.
#[derive(Debug)]
struct Guest;

impl wasmpool_objects::Transport for Guest {
    fn invoke(
        &self,
        target: Handle,
        req: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ObjectError> {
        let timeout_ms = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let handle = wit::Handle {
            id: target.id,
            token: target.token,
        };
        crate::__private::before_effect();
        match request(req) {
            Call::Invoke(req) => wit::invoke(handle, &req, timeout_ms).map(response),
            // Operations added later go through `invoke-more`, so that a guest built
            // before them, which imports only `invoke`, still links.
            Call::More(req) => wit::invoke_more(handle, &req, timeout_ms).map(|r| match r {
                wit::MoreResponse::Plain(r) => response(r),
                wit::MoreResponse::RunAction(index) => Response::RunAction(index),
            }),
        }
        .map_err(error)
    }
}

/// Makes the handles in this guest talk to the host (before any task decodes its arguments).
pub(crate) fn install() {
    static GUEST: Guest = Guest;
    wasmpool_objects::install(&GUEST);
}

/// A request as `invoke` takes it, or as `invoke-more` does.
enum Call {
    Invoke(wit::Request),
    More(wit::MoreRequest),
}

fn request(r: Request) -> Call {
    use Request as W;
    use wit::MoreRequest as M;
    use wit::Request as R;
    Call::Invoke(match r {
        W::QueuePut(v) => R::QueuePut(v),
        W::QueueGet => R::QueueGet,
        W::QueueQsize => R::QueueQsize,
        W::QueueMaxsize => R::QueueMaxsize,
        W::QueueClose => R::QueueClose,
        W::QueueTaskDone => R::QueueTaskDone,
        W::QueueJoin => R::QueueJoin,
        W::ConnSend(v) => R::ConnSend(v),
        W::ConnRecv => R::ConnRecv,
        W::ConnPoll => R::ConnPoll,
        W::ConnClose => R::ConnClose,
        W::Acquire => R::Acquire,
        W::Release => R::Release,
        W::SemaphoreValue => R::SemaphoreValue,
        W::EventSet => R::EventSet,
        W::EventClear => R::EventClear,
        W::EventIsSet => R::EventIsSet,
        W::EventWait => R::EventWait,
        W::BarrierWait => R::BarrierWait,
        W::BarrierAbort => R::BarrierAbort,
        W::BarrierReset => R::BarrierReset,
        W::BarrierNWaiting => R::BarrierNWaiting,
        W::ConditionWait => R::ConditionWait,
        W::ConditionNotify(n) => R::ConditionNotify(n),
        W::ConditionNotifyAll => R::ConditionNotifyAll,
        W::DictGet(k) => R::DictGet(k),
        W::DictSet(e) => R::DictSet(e),
        W::DictDelete(k) => R::DictDelete(k),
        W::DictContains(k) => R::DictContains(k),
        W::DictKeys => R::DictKeys,
        W::DictValues => R::DictValues,
        W::DictItems => R::DictItems,
        W::DictLen => R::DictLen,
        W::DictUpdate(es) => R::DictUpdate(es),
        W::DictSetdefault(e) => R::DictSetdefault(e),
        W::DictPop(k) => R::DictPop(k),
        W::DictIncrement(k, d) => R::DictIncrement((k, d)),
        W::DictCompareAndSwap { key, expected, new } => {
            R::DictCompareAndSwap(wit::Swap { key, expected, new })
        }
        W::ListAppend(v) => R::ListAppend(v),
        W::ListExtend(vs) => R::ListExtend(vs),
        W::ListGet(i) => R::ListGet(i),
        W::ListSet(i, v) => R::ListSet((i, v)),
        W::ListLen => R::ListLen,
        W::ListPop(i) => R::ListPop(i),
        W::ListIndex(v) => R::ListIndex(v),
        W::ListItems => R::ListItems,
        W::Locked => return Call::More(M::Locked),
        W::BarrierParties => return Call::More(M::BarrierParties),
        W::BarrierBroken => return Call::More(M::BarrierBroken),
        W::BarrierWaitAction => return Call::More(M::BarrierWaitAction),
        W::BarrierActionDone(ok) => return Call::More(M::BarrierActionDone(ok)),
        W::DictPopitem => return Call::More(M::DictPopitem),
        W::DictClear => return Call::More(M::DictClear),
        W::ListInsert(i, v) => return Call::More(M::ListInsert((i, v))),
        W::ListRemove(v) => return Call::More(M::ListRemove(v)),
        W::ListClear => return Call::More(M::ListClear),
        W::ListSlice(start, stop) => return Call::More(M::ListSlice((start, stop))),
    })
}

fn response(r: wit::Response) -> Response {
    use wit::Response as R;
    match r {
        R::Unit => Response::Unit,
        R::Value(v) => Response::Value(v),
        R::Maybe(v) => Response::Maybe(v),
        R::Values(vs) => Response::Values(vs),
        R::Entries(es) => Response::Entries(es),
        R::Count(n) => Response::Count(n),
        R::Int(n) => Response::Int(n),
        R::Flag(b) => Response::Flag(b),
    }
}

fn error(e: wit::ObjectError) -> ObjectError {
    use wit::ObjectError as R;
    match e {
        R::Timeout => ObjectError::Timeout,
        R::Empty => ObjectError::Empty,
        R::Full => ObjectError::Full,
        R::Closed(m) => ObjectError::Closed(m),
        R::Broken => ObjectError::Broken,
        R::NotOwner(m) => ObjectError::NotOwner(m),
        R::Missing(m) => ObjectError::Missing(m),
        R::Invalid(m) => ObjectError::Invalid(m),
        R::TooLarge(m) => ObjectError::TooLarge(m),
        R::Stale(m) => ObjectError::Stale(m),
    }
}
