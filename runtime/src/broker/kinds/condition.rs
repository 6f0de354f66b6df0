//! A condition variable with its own recursive lock: a waiter lets go of the lock, waits to
//! be notified (or times out), then takes the lock back before it returns.

use wasmpool_objects::wire::{ObjectError, Request, Response};

use super::{Common, LockState, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{OpResult, Pending, Step, Waiter};
use crate::broker::{Owner, Responder};

#[derive(Debug)]
pub(crate) struct Condition {
    pub lock: LockState,
}

impl ObjectKind for Condition {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        let lock = &mut self.lock;
        match req {
            req @ Request::Acquire => now_or_wait(self, cx, owner, end, req),
            Request::Release => Step::Done(lock.release(owner)),
            Request::ConditionWait => {
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
            req @ (Request::ConditionNotify(_) | Request::ConditionNotifyAll) => {
                if lock.owner != Some(owner) {
                    return Step::Done(Err(ObjectError::NotOwner(
                        "cannot notify on an un-acquired condition".into(),
                    )));
                }
                let mut n = match req {
                    Request::ConditionNotify(n) => n,
                    _ => u32::MAX,
                };
                for w in cx.waiters.iter_mut() {
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
            req => Step::Done(invalid(cx.kind, &req)),
        }
    }

    fn attempt(
        &mut self,
        _cx: &mut Common<'_>,
        owner: Owner,
        _end: u8,
        pending: &mut Pending,
    ) -> Option<OpResult> {
        match pending {
            Pending::Op(Request::Acquire) => self
                .lock
                .try_acquire(owner, 1)
                .then_some(Ok(Response::Flag(true))),
            Pending::Reacquire { count, notified } => self
                .lock
                .try_acquire(owner, *count)
                .then_some(Ok(Response::Flag(*notified))),
            _ => None,
        }
    }

    fn worker_exited(
        &mut self,
        _cx: &mut Common<'_>,
        pid: u32,
        _gone: &[Waiter],
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        self.lock.free_if_held_by(Owner::Pid(pid))
    }
}
