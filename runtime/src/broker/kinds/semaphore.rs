//! A semaphore, optionally bounded (released no higher than its initial value); what each
//! owner acquired is kept, so a dead worker's acquisitions are given back.

use std::collections::HashMap;

use wasmpool_objects::wire::{ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{OpResult, Pending, Step, Waiter};
use crate::broker::{Owner, Responder};

#[derive(Debug)]
pub(crate) struct Semaphore {
    pub value: u64,
    pub initial: u64,
    pub bounded: bool,
    /// Outstanding acquisitions, by owner.
    pub held: HashMap<Owner, u64>,
}

impl ObjectKind for Semaphore {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match req {
            req @ Request::Acquire => now_or_wait(self, cx, owner, end, req),
            Request::Release => {
                if self.bounded && self.value >= self.initial {
                    return Step::Done(Err(ObjectError::NotOwner(
                        "semaphore or lock released too many times".into(),
                    )));
                }
                self.value += 1;
                // Released by its holder, or on a holder's behalf: either way one outstanding
                // acquisition is gone, so a holder's death cannot give it back twice.
                let from = if self.held.contains_key(&owner) {
                    Some(owner)
                } else {
                    self.held.keys().next().copied()
                };
                if let Some(from) = from
                    && let Some(n) = self.held.get_mut(&from)
                {
                    *n -= 1;
                    if *n == 0 {
                        self.held.remove(&from);
                    }
                }
                Step::Done(Ok(Response::Unit))
            }
            Request::SemaphoreValue => Step::Done(Ok(Response::Count(self.value))),
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
        if !matches!(pending, Pending::Op(Request::Acquire)) || self.value == 0 {
            return None;
        }
        self.value -= 1;
        *self.held.entry(owner).or_insert(0) += 1;
        Some(Ok(Response::Flag(true)))
    }

    fn worker_exited(
        &mut self,
        _cx: &mut Common<'_>,
        pid: u32,
        _gone: &[Waiter],
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        let Some(n) = self.held.remove(&Owner::Pid(pid)) else {
            return false;
        };
        self.value += n;
        if self.bounded {
            self.value = self.value.min(self.initial);
        }
        true
    }
}
