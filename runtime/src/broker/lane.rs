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

    /// The worker's socket, where answers are written.
    pub fn writer(&self) -> &Arc<Mutex<UnixStream>> {
        &self.writer
    }
}

/// The handle an object-lane frame names, if it names one.
fn target_of(call: &ObjectCall) -> Option<wasmpool_objects::wire::Handle> {
    match call {
        ObjectCall::Invoke { target, .. } | ObjectCall::Attach { target, .. } => Some(*target),
        ObjectCall::Sync { .. } | ObjectCall::InstanceLost => None,
    }
}

/// What serves the object lane of the workers: the operations they perform on shared
/// objects, and the clean-up when one of them goes.
pub(crate) trait ObjectBackend: Send + Sync + std::fmt::Debug {
    /// Serves one object-lane frame of worker `pid`, in the order the worker sent it; the
    /// answers go to `line`, now or later.
    fn serve(&self, pid: u32, call: ObjectCall, line: &WorkerLine);
    /// Worker `pid` is gone: its waiters are dropped and what it held is given back.
    fn worker_exited(&self, pid: u32);
}

impl ObjectBackend for Broker {
    fn serve(&self, pid: u32, call: ObjectCall, line: &WorkerLine) {
        // A cluster host's workers: the objects made in Redis are served there.
        if let Some(cluster) = self.cluster()
            && target_of(&call).is_some_and(crate::cluster::is_cluster_handle)
        {
            return cluster.serve(pid, call, line);
        }
        if let (Some(cluster), ObjectCall::InstanceLost) = (self.cluster(), &call) {
            cluster.serve(pid, ObjectCall::InstanceLost, line);
        }
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
        if let Some(cluster) = self.cluster() {
            cluster.worker_exited(pid);
        }
        Broker::worker_exited(self, pid);
    }
}
