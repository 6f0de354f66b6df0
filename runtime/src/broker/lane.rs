//! The object lane of a worker, as the broker serves it: the seam where a worker's shared
//! object operations leave the supervisor. The supervisor hands every object-lane frame to
//! its worker's [`ObjectBackend`] and never looks inside; the broker is today's backend,
//! and another (objects kept in Redis, for a cluster) implements the same trait.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpool_objects::wire::Response;

use super::{Broker, Owner, Refusals, Responder, reply_attached, reply_to_worker};
use crate::protocol::ObjectCall;

/// Where the answers to one worker's object lane go: its socket, and the handles on which
/// its posted requests are being refused.
#[derive(Debug)]
pub(crate) struct WorkerLine {
    writer: Arc<Mutex<UnixStream>>,
    refused: Arc<Refusals>,
}

impl WorkerLine {
    /// The line to the worker whose socket `writer` writes.
    pub fn new(writer: Arc<Mutex<UnixStream>>) -> WorkerLine {
        WorkerLine {
            writer,
            refused: Arc::new(Refusals::default()),
        }
    }
}

/// What serves the object lane of the workers: the operations they perform on shared
/// objects, and the clean-up when one of them goes.
pub(crate) trait ObjectBackend: Send + Sync {
    /// Serves one object-lane frame of worker `pid`, in the order the worker sent it; the
    /// answers go to `line`, now or later.
    fn serve(&self, pid: u32, call: ObjectCall, line: &WorkerLine);
    /// Worker `pid` is gone: its waiters are dropped and what it held is given back.
    fn worker_exited(&self, pid: u32);
}

impl ObjectBackend for Broker {
    fn serve(&self, pid: u32, call: ObjectCall, line: &WorkerLine) {
        match call {
            ObjectCall::Invoke {
                req,
                target,
                request,
                timeout_ms,
                posted,
            } => {
                let writer = line.writer.clone();
                let responder = if posted {
                    if line.refused.refused_again(&writer, req, target) {
                        return;
                    }
                    Responder::Posted {
                        writer,
                        req,
                        target,
                        refused: line.refused.clone(),
                    }
                } else {
                    line.refused.clear(target);
                    Responder::Worker {
                        writer,
                        req,
                        postable: false,
                    }
                };
                self.submit(
                    Owner::Pid(pid),
                    target,
                    request,
                    timeout_ms.map(Duration::from_millis),
                    responder,
                )
            }
            // Every request before it was answered (or, posted and accepted, needs no
            // answer): the sync's answer comes after all of theirs.
            ObjectCall::Sync { req } => {
                reply_to_worker(&line.writer, req, Ok(Response::Unit), false)
            }
            ObjectCall::Attach { req, target } => {
                reply_attached(&line.writer, req, self.attach(pid, target))
            }
            ObjectCall::InstanceLost => Broker::worker_exited(self, pid),
        }
    }

    fn worker_exited(&self, pid: u32) {
        Broker::worker_exited(self, pid);
    }
}
