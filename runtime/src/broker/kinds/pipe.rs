//! A pipe: two connected ends (one-way or duplex), each with the messages waiting to be
//! received on it; the ends also exchange messages in shared memory without the broker
//! while its rings are not spilled.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use wasmpool_objects::wire::{Kind, ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid, now_or_wait};
use crate::broker::object::{
    Hold, MAX_OBJECT_BYTES, OpResult, Pending, Step, Waiter, item_cost, too_big,
};
use crate::broker::{Owner, Responder};
use crate::shm::{Shared, SharedPipe};

#[derive(Debug)]
pub(crate) struct Pipe {
    /// `inbox[e]`: messages waiting to be received on end `e`.
    pub inbox: [VecDeque<Vec<u8>>; 2],
    /// What the messages cost the host, as [`item_cost`] counts it.
    pub bytes: usize,
    /// Worker processes that closed their copy of an end.
    pub closed: HashSet<(u8, u32)>,
    pub host_closed: [bool; 2],
    pub duplex: bool,
    /// The rings where the ends exchange messages without the broker, while they are
    /// not spilled (see `crate::shm`); `None` if the segment could not be made.
    pub shared: Option<Arc<SharedPipe>>,
}

impl ObjectKind for Pipe {
    fn admit(&self, owner: Owner, end: u8) -> Result<(), ObjectError> {
        // A closed copy of a pipe end is unusable.
        let shut = match owner {
            Owner::Pid(pid) => self.closed.contains(&(end, pid)),
            Owner::Host(_) => self.host_closed[usize::from(end)],
        };
        if shut {
            return Err(ObjectError::Closed("the connection is closed".into()));
        }
        Ok(())
    }

    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match req {
            req @ (Request::ConnSend(_) | Request::ConnRecv | Request::ConnPoll) => {
                now_or_wait(self, cx, owner, end, req)
            }
            Request::ConnClose => {
                let e = usize::from(end);
                match owner {
                    Owner::Pid(pid) => {
                        cx.holds[e].remove(&Hold::Pid(pid));
                        self.closed.insert((end, pid));
                    }
                    Owner::Host(_) => self.host_closed[e] = true,
                }
                Step::Done(Ok(Response::Unit))
            }
            req => Step::Done(invalid(cx.kind, &req)),
        }
    }

    fn attempt(
        &mut self,
        cx: &mut Common<'_>,
        _owner: Owner,
        end: u8,
        pending: &mut Pending,
    ) -> Option<OpResult> {
        let Pending::Op(req) = pending else {
            return None;
        };
        let e = usize::from(end & 1);
        let open_other = cx.end_open(1 - e, self.host_closed[1 - e]);
        match req {
            Request::ConnSend(_) if !self.duplex && e == 0 => Some(Err(ObjectError::Invalid(
                "this end of a one-way pipe only receives".into(),
            ))),
            Request::ConnRecv | Request::ConnPoll if !self.duplex && e == 1 => Some(Err(
                ObjectError::Invalid("this end of a one-way pipe only sends".into()),
            )),
            Request::ConnSend(_) if !open_other => Some(Err(ObjectError::Closed(
                "broken pipe: the other end is closed".into(),
            ))),
            Request::ConnSend(v) => {
                if self.bytes + item_cost(v) > MAX_OBJECT_BYTES {
                    return Some(too_big(Kind::Connection, self.bytes));
                }
                self.bytes += item_cost(v);
                self.inbox[1 - e].push_back(std::mem::take(v));
                Some(Ok(Response::Unit))
            }
            Request::ConnRecv => match self.inbox[e].pop_front() {
                Some(v) => {
                    self.bytes = self.bytes.saturating_sub(item_cost(&v));
                    Some(Ok(Response::Value(v)))
                }
                None if !open_other => Some(Err(ObjectError::Closed(
                    "end of file: the other end of the pipe is closed".into(),
                ))),
                None => None,
            },
            Request::ConnPoll => {
                (!self.inbox[e].is_empty() || !open_other).then_some(Ok(Response::Flag(true)))
            }
            _ => None,
        }
    }

    fn pumped(&self, open: [bool; 2]) {
        if let Some(shared) = &self.shared {
            shared.set_open(open);
        }
    }

    fn worker_exited(
        &mut self,
        _cx: &mut Common<'_>,
        pid: u32,
        _gone: &[Waiter],
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        self.closed.retain(|&(_, p)| p != pid);
        if let Some(shared) = &self.shared {
            shared.release_locks_of(pid);
        }
        false
    }

    fn never_waits(&self, req: &Request) -> bool {
        matches!(req, Request::ConnSend(_))
    }

    fn host_closed(&self, e: usize) -> bool {
        self.host_closed[e]
    }

    fn shared(&self) -> Option<Shared> {
        self.shared.as_ref().map(|p| Shared::Pipe(p.clone()))
    }
}
