//! The object lane of a cluster host's workers for cluster objects: a worker's operation on
//! a handle made in Redis is performed there, by a thread of that worker's own (an operation
//! may block for as long as its timeout; the supervisor's reader must not), and answered on
//! the worker's socket. What a worker held is given back when it exits.
//!
//! A lane is admitted at a time (Redis's, in ms) that its workers' owner names carry: once
//! the reaper has declared the host dead after that time, Redis refuses every operation
//! through this lane (`OBJECT_OP`), so a task of a host that was only cut off, and comes
//! back, cannot release a lock another task now holds, or change any object. The host then
//! runs new work in new worker processes, through a lane admitted anew.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use wasmpool_objects::wire::{Handle, Request};

use super::ClusterObjects;
use crate::broker::{ObjectBackend, WorkerLine, reply_attached, reply_to_worker};
use crate::protocol::ObjectCall;

/// One operation a worker asked for.
struct Op {
    req: u64,
    target: Handle,
    request: Request,
    timeout_ms: Option<u64>,
    writer: Arc<Mutex<UnixStream>>,
}

/// The thread serving one worker's cluster operations.
struct WorkerOps {
    ops: Sender<Op>,
    gone: Arc<AtomicBool>,
}

/// Serves the cluster objects of one host's workers (see the module's doc).
pub(crate) struct ClusterLane {
    objects: Arc<ClusterObjects>,
    /// The host's id in the cluster.
    host: String,
    /// When (Redis time, ms) this lane was admitted.
    since: u64,
    workers: Mutex<HashMap<u32, WorkerOps>>,
}

impl std::fmt::Debug for ClusterLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLane")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl ClusterLane {
    /// The lane of host `host`'s workers, admitted at `since` (Redis time, ms: later than
    /// any time the host was declared dead).
    pub fn new(objects: Arc<ClusterObjects>, host: &str, since: u64) -> ClusterLane {
        ClusterLane {
            objects,
            host: host.to_string(),
            since,
            workers: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, WorkerOps>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The owner name of worker `pid` of this host, as the holders of objects record it
    /// (what is given back when the worker exits: every owner name that starts so).
    fn owner(host: &str, pid: u32) -> String {
        format!("h:{host}/{pid}/")
    }

    fn release(objects: &ClusterObjects, host: &str, pid: u32) {
        if let Err(e) = objects.release_owner(host, &Self::owner(host, pid)) {
            tracing::warn!("cluster host: {e}");
        }
    }

    /// The sender to worker `pid`'s thread, started on first use.
    fn ops_of(&self, pid: u32) -> Option<Sender<Op>> {
        let mut workers = self.lock();
        if let Some(w) = workers.get(&pid) {
            return Some(w.ops.clone());
        }
        let (tx, rx) = channel::<Op>();
        let gone = Arc::new(AtomicBool::new(false));
        let (objects, host, gone2) = (self.objects.clone(), self.host.clone(), gone.clone());
        let since = self.since;
        let spawned = std::thread::Builder::new()
            .name(format!("wasmpool-cluster-objects-{pid}"))
            .spawn(move || {
                // The operations' owner: the worker's, and when its lane was admitted.
                let owner = format!("{}{since}", Self::owner(&host, pid));
                let is_gone = || gone2.load(Ordering::Relaxed);
                for op in rx {
                    let result = objects.invoke(
                        &owner,
                        op.target,
                        op.request,
                        op.timeout_ms.map(Duration::from_millis),
                        &is_gone,
                    );
                    if is_gone() {
                        // It took something for a worker that has gone meanwhile: given
                        // back at once.
                        Self::release(&objects, &host, pid);
                        continue;
                    }
                    reply_to_worker(&op.writer, op.req, result, false);
                }
            });
        match spawned {
            Ok(_) => {
                workers.insert(
                    pid,
                    WorkerOps {
                        ops: tx.clone(),
                        gone,
                    },
                );
                Some(tx)
            }
            Err(e) => {
                tracing::warn!("cluster host: cannot start a thread for worker {pid}: {e}");
                None
            }
        }
    }
}

impl ObjectBackend for ClusterLane {
    fn serve(&self, pid: u32, call: ObjectCall, line: &WorkerLine) {
        match call {
            ObjectCall::Invoke {
                req,
                target,
                request,
                timeout_ms,
                posted: _,
            } => {
                let op = Op {
                    req,
                    target,
                    request,
                    timeout_ms,
                    writer: line.writer().clone(),
                };
                match self.ops_of(pid) {
                    Some(ops) => {
                        if let Err(std::sync::mpsc::SendError(op)) = ops.send(op) {
                            reply_to_worker(
                                &op.writer,
                                op.req,
                                Err(wasmpool_objects::ObjectError::Stale(
                                    "the host's object thread is gone".into(),
                                )),
                                false,
                            );
                        }
                    }
                    None => reply_to_worker(
                        &op.writer,
                        op.req,
                        Err(wasmpool_objects::ObjectError::Stale(
                            "the host cannot serve cluster objects now".into(),
                        )),
                        false,
                    ),
                }
            }
            // A cluster object has no segment: every operation comes through `Invoke`.
            ObjectCall::Attach { req, target: _ } => reply_attached(line.writer(), req, Ok(None)),
            ObjectCall::Sync { req } => reply_to_worker(
                line.writer(),
                req,
                Ok(wasmpool_objects::wire::Response::Unit),
                false,
            ),
            ObjectCall::InstanceLost => {
                if self.lock().contains_key(&pid) {
                    Self::release(&self.objects, &self.host, pid)
                }
            }
        }
    }

    fn worker_exited(&self, pid: u32) {
        // A worker that never used a cluster object held none.
        let Some(w) = self.lock().remove(&pid) else {
            return;
        };
        w.gone.store(true, Ordering::Relaxed);
        Self::release(&self.objects, &self.host, pid);
    }
}
