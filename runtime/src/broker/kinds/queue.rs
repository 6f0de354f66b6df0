//! A queue: FIFO items, optionally bounded, optionally joinable (`task_done`, `join`); an
//! unbounded, non-joinable one also has a ring in shared memory where its items go without
//! the broker while it is not spilled.

use std::collections::VecDeque;
use std::sync::Arc;

use wasmpool_objects::wire::{Kind, ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{
    MAX_OBJECT_BYTES, OpResult, Pending, Step, Waiter, item_cost, too_big,
};
use crate::broker::{Owner, Responder, host_tag};
use crate::shm::{Shared, SharedQueue};

#[derive(Debug)]
pub(crate) struct Queue {
    pub items: VecDeque<Vec<u8>>,
    /// What the items cost the host, as [`item_cost`] counts it.
    pub bytes: usize,
    pub maxsize: usize,
    pub closed: bool,
    pub joinable: bool,
    pub unfinished: u64,
    /// The ring where an unbounded, non-joinable queue's items go without the broker,
    /// while it is not spilled (see `crate::shm`).
    pub shared: Option<Arc<SharedQueue>>,
}

impl ObjectKind for Queue {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match req {
            Request::QueueMaxsize => Step::Done(Ok(Response::Count(self.maxsize as u64))),
            Request::QueueQsize => {
                let in_ring = self.shared.as_ref().map_or(0, |s| s.len());
                Step::Done(Ok(Response::Count(
                    (self.items.len() as u64).saturating_add(in_ring),
                )))
            }
            Request::QueueClose => {
                // The ring is closed once, when the queue is: its wait for the writers'
                // mutex (bounded) happens under the registry's lock, so a worker cannot
                // make the broker wait again and again.
                if !self.closed
                    && let Some(shared) = &self.shared
                {
                    shared.close(host_tag());
                }
                self.closed = true;
                Step::Done(Ok(Response::Unit))
            }
            Request::QueueTaskDone => Step::Done(if !self.joinable {
                Err(ObjectError::Invalid(
                    "task_done() needs a JoinableQueue".into(),
                ))
            } else if self.unfinished == 0 {
                Err(ObjectError::Invalid(
                    "task_done() called too many times".into(),
                ))
            } else {
                self.unfinished -= 1;
                Ok(Response::Unit)
            }),
            Request::QueueJoin if !self.joinable => Step::Done(Err(ObjectError::Invalid(
                "join() needs a JoinableQueue".into(),
            ))),
            req @ (Request::QueuePut(_) | Request::QueueGet | Request::QueueJoin) => {
                now_or_wait(self, cx, owner, end, req)
            }
            req => Step::Done(invalid(cx.kind, &req)),
        }
    }

    fn attempt(
        &mut self,
        _cx: &mut Common<'_>,
        _owner: Owner,
        _end: u8,
        pending: &mut Pending,
    ) -> Option<OpResult> {
        let Pending::Op(req) = pending else {
            return None;
        };
        match req {
            Request::QueuePut(v) => {
                if self.closed {
                    Some(Err(ObjectError::Closed("the queue is closed".into())))
                } else if self.bytes + item_cost(v) > MAX_OBJECT_BYTES {
                    Some(too_big(Kind::Queue, self.bytes))
                } else if self.maxsize == 0 || self.items.len() < self.maxsize {
                    self.bytes += item_cost(v);
                    self.unfinished += 1;
                    self.items.push_back(std::mem::take(v));
                    Some(Ok(Response::Unit))
                } else {
                    None
                }
            }
            Request::QueueGet => match self.items.pop_front() {
                Some(v) => {
                    self.bytes = self.bytes.saturating_sub(item_cost(&v));
                    Some(Ok(Response::Value(v)))
                }
                None if self.closed => Some(Err(ObjectError::Closed(
                    "the queue is closed and empty".into(),
                ))),
                None => None,
            },
            Request::QueueJoin => (self.unfinished == 0).then_some(Ok(Response::Unit)),
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
        if let Some(shared) = &self.shared {
            shared.release_locks_of(pid);
        }
        false
    }

    fn never_waits(&self, req: &Request) -> bool {
        matches!(req, Request::QueuePut(_)) && self.maxsize == 0
    }

    fn shared(&self) -> Option<Shared> {
        self.shared.as_ref().map(|q| Shared::Queue(q.clone()))
    }
}
