//! A barrier: `parties` arrive, then all are released together, after the round's action
//! if a party offered to run one; a timeout, an abort, a failed action or a dead party
//! breaks it.

use wasmpool_objects::wire::{ObjectError, Request, Response};

use super::{Common, ObjectKind, expire_waiter, invalid};
use crate::broker::object::{OpResult, Pending, Step, Waiter};
use crate::broker::{Owner, Responder};

#[derive(Debug)]
pub(crate) struct Barrier {
    pub parties: u32,
    pub arrived: u32,
    pub generation: u64,
    pub broken: bool,
    /// The party running this round's action: the round's parties wait until it is
    /// done, and parties of the next round wait to arrive (as `Pending::Op`).
    pub running: Option<ActionRun>,
}

/// The party running a barrier round's action, and its arrival index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ActionRun {
    pub owner: Owner,
    pub index: u32,
}

impl Barrier {
    /// A party arrives at the barrier (`BarrierWait`, or `BarrierWaitAction` offering to
    /// run the round's action). The last of a round completes it: it runs the action if it
    /// offered one, else the earliest waiting party that offered one is told to run it;
    /// with no action the round's parties are released at once. While an action runs, a
    /// party of the next round waits to arrive until it is done.
    fn arrive(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        req: Request,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        if self.broken {
            return Step::Done(Err(ObjectError::Broken));
        }
        if self.running.is_some() {
            return Step::Wait(Pending::Op(req));
        }
        let offers = req == Request::BarrierWaitAction;
        let index = self.arrived;
        self.arrived += 1;
        let waiting = Pending::Barrier {
            index,
            generation: self.generation,
            action: offers,
        };
        if self.arrived < self.parties {
            return Step::Wait(waiting);
        }
        if offers {
            self.running = Some(ActionRun { owner, index });
            return Step::Done(Ok(Response::RunAction(index)));
        }
        let g = self.generation;
        let runner = cx
            .waiters
            .iter()
            .enumerate()
            .find_map(|(pos, w)| match w.pending {
                Pending::Barrier {
                    index,
                    generation,
                    action: true,
                } if generation == g => Some((pos, index)),
                _ => None,
            });
        match runner.and_then(|(pos, theirs)| Some((cx.waiters.remove(pos)?, theirs))) {
            Some((w, theirs)) => {
                self.running = Some(ActionRun {
                    owner: w.owner,
                    index: theirs,
                });
                out.push((w.responder, Ok(Response::RunAction(theirs))));
                Step::Wait(waiting)
            }
            None => {
                self.arrived = 0;
                self.generation += 1;
                Step::Done(Ok(Response::Int(i64::from(index))))
            }
        }
    }

    /// The party running the round's action reports it done: on success the round's
    /// parties are released (by the pump) and the parties waiting to arrive arrive, in
    /// order; on failure the barrier breaks.
    fn action_done(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        ok: bool,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        let run = match self.running {
            Some(run) if run.owner == owner => run,
            Some(_) => {
                return Step::Done(Err(ObjectError::Invalid(
                    "another party runs this round's barrier action".into(),
                )));
            }
            // Aborted or reset while the action ran: the round is over for everyone.
            None => return Step::Done(Err(ObjectError::Broken)),
        };
        if !ok {
            self.break_barrier(cx, true, out);
            return Step::Done(Ok(Response::Unit));
        }
        self.running = None;
        self.arrived = 0;
        self.generation += 1;
        // The next round's parties that waited to arrive, in arrival order.
        let waiters = std::mem::take(cx.waiters);
        for mut w in waiters {
            let req = match &w.pending {
                Pending::Op(req @ (Request::BarrierWait | Request::BarrierWaitAction)) => {
                    req.clone()
                }
                _ => {
                    cx.waiters.push_back(w);
                    continue;
                }
            };
            match self.arrive(cx, w.owner, req, out) {
                Step::Done(result) => out.push((w.responder, result)),
                Step::Wait(pending) => {
                    w.pending = pending;
                    cx.waiters.push_back(w);
                }
            }
        }
        Step::Done(Ok(Response::Int(i64::from(run.index))))
    }

    /// Breaks the barrier: every party waiting gets `Broken`. `abort` leaves it broken;
    /// otherwise (reset) it is ready for a new round.
    fn break_barrier(
        &mut self,
        cx: &mut Common<'_>,
        abort: bool,
        out: &mut Vec<(Responder, OpResult)>,
    ) {
        self.arrived = 0;
        self.generation += 1;
        self.broken = abort;
        self.running = None;
        let waiters = std::mem::take(cx.waiters);
        for w in waiters {
            out.push((w.responder, Err(ObjectError::Broken)));
        }
    }
}

impl ObjectKind for Barrier {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        owner: Owner,
        _end: u8,
        req: Request,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        match req {
            req @ (Request::BarrierWait | Request::BarrierWaitAction) => {
                self.arrive(cx, owner, req, out)
            }
            Request::BarrierActionDone(ok) => self.action_done(cx, owner, ok, out),
            Request::BarrierParties => Step::Done(Ok(Response::Count(u64::from(self.parties)))),
            Request::BarrierBroken => Step::Done(Ok(Response::Flag(self.broken))),
            Request::BarrierAbort => {
                self.break_barrier(cx, true, out);
                Step::Done(Ok(Response::Unit))
            }
            Request::BarrierReset => {
                self.break_barrier(cx, false, out);
                Step::Done(Ok(Response::Unit))
            }
            Request::BarrierNWaiting => Step::Done(Ok(Response::Count(u64::from(self.arrived)))),
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
        let Pending::Barrier {
            index,
            generation: g,
            ..
        } = pending
        else {
            return None;
        };
        if self.broken {
            Some(Err(ObjectError::Broken))
        } else if self.generation != *g {
            Some(Ok(Response::Int(i64::from(*index))))
        } else {
            None
        }
    }

    fn expire(
        &mut self,
        cx: &mut Common<'_>,
        w: Waiter,
        pos: usize,
        out: &mut Vec<(Responder, OpResult)>,
    ) {
        match w.pending {
            // A party of the round, or one waiting to arrive while a round's action ran: a
            // barrier wait's timeout breaks the barrier.
            Pending::Barrier { .. }
            | Pending::Op(Request::BarrierWait | Request::BarrierWaitAction) => {
                out.push((w.responder, Err(ObjectError::Broken)));
                self.break_barrier(cx, true, out);
            }
            _ => expire_waiter(cx, w, pos, out),
        }
    }

    fn worker_exited(
        &mut self,
        cx: &mut Common<'_>,
        pid: u32,
        gone: &[Waiter],
        out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        let was_at_barrier = gone
            .iter()
            .any(|w| matches!(w.pending, Pending::Barrier { .. }));
        // Or it died running the round's action: the round can never end.
        let ran_action = self.running.is_some_and(|run| run.owner == Owner::Pid(pid));
        if was_at_barrier || ran_action {
            self.break_barrier(cx, true, out);
        }
        false
    }
}
