//! An event: a flag that waiters wait to see set.

use wasmpool_objects::wire::{Request, Response};

use super::{Common, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{OpResult, Pending, Step};
use crate::broker::{Owner, Responder};

#[derive(Debug)]
pub(crate) struct Event {
    pub set: bool,
}

impl ObjectKind for Event {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match req {
            req @ Request::EventWait => now_or_wait(self, cx, owner, end, req),
            Request::EventSet => {
                self.set = true;
                Step::Done(Ok(Response::Unit))
            }
            Request::EventClear => {
                self.set = false;
                Step::Done(Ok(Response::Unit))
            }
            Request::EventIsSet => Step::Done(Ok(Response::Flag(self.set))),
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
        match pending {
            Pending::Op(Request::EventWait) => self.set.then_some(Ok(Response::Flag(true))),
            _ => None,
        }
    }
}
