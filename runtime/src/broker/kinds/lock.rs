//! A lock (`Lock`, `RLock`): in the broker, or, for a `Lock`, a word in shared memory that
//! every process acquires and releases in place.

use std::sync::Arc;

use wasmpool_objects::wire::{ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{OpResult, Pending, Step, Waiter};
use crate::broker::{Owner, Responder, host_tag};
use crate::shm::{Shared, SharedLock};

/// A lock the broker keeps: a `Lock`'s, an `RLock`'s or a `Condition`'s.
#[derive(Debug)]
pub(crate) struct LockState {
    pub owner: Option<Owner>,
    pub count: u32,
    pub recursive: bool,
}

impl LockState {
    /// A lock no one holds (`recursive`: an `RLock`'s, re-entered by its owner).
    pub fn free(recursive: bool) -> LockState {
        LockState {
            owner: None,
            count: 0,
            recursive,
        }
    }

    pub(super) fn try_acquire(&mut self, owner: Owner, levels: u32) -> bool {
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

    pub(super) fn release(&mut self, owner: Owner) -> OpResult {
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

    /// The owner `gone` is gone: a lock it held is free. Answers whether it held it.
    pub(super) fn free_if_held_by(&mut self, gone: Owner) -> bool {
        if self.owner != Some(gone) {
            return false;
        }
        self.owner = None;
        self.count = 0;
        true
    }
}

/// A `Lock` or an `RLock`, by where its state is.
#[derive(Debug)]
pub(crate) enum Lock {
    InBroker(LockState),
    /// A `Lock` whose word is in shared memory: acquired and released in place by everyone.
    InPlace(Arc<SharedLock>),
}

impl ObjectKind for Lock {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match self {
            Lock::InPlace(lock) => match req {
                Request::Release => Step::Done(lock.release().map(|()| Response::Unit)),
                Request::Acquire => {
                    let tag = match owner {
                        Owner::Pid(pid) => pid,
                        Owner::Host(_) => host_tag(),
                    };
                    Step::Done(match lock.acquire(tag, Some(std::time::Instant::now())) {
                        true => Ok(Response::Flag(true)),
                        false => Err(ObjectError::Invalid(
                            "a lock in shared memory is acquired in place, not through the host"
                                .into(),
                        )),
                    })
                }
                Request::Locked => Step::Done(Ok(Response::Flag(lock.locked()))),
                req => Step::Done(invalid(cx.kind, &req)),
            },
            Lock::InBroker(lock) => match req {
                req @ Request::Acquire => now_or_wait(self, cx, owner, end, req),
                Request::Release => Step::Done(lock.release(owner)),
                Request::Locked => Step::Done(Ok(Response::Flag(lock.owner.is_some()))),
                req => Step::Done(invalid(cx.kind, &req)),
            },
        }
    }

    fn attempt(
        &mut self,
        _cx: &mut Common<'_>,
        owner: Owner,
        _end: u8,
        pending: &mut Pending,
    ) -> Option<OpResult> {
        match (self, pending) {
            (Lock::InBroker(lock), Pending::Op(Request::Acquire)) => lock
                .try_acquire(owner, 1)
                .then_some(Ok(Response::Flag(true))),
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
        match self {
            Lock::InBroker(lock) => lock.free_if_held_by(Owner::Pid(pid)),
            Lock::InPlace(lock) => lock.release_if_held_by(pid),
        }
    }

    fn shared(&self) -> Option<Shared> {
        match self {
            Lock::InPlace(lock) => Some(Shared::Lock(lock.clone())),
            Lock::InBroker(_) => None,
        }
    }
}
