//! The worker set: starting a pool's workers, adding one (and its replacement when one
//! exits), what each holds in flight, and the thread that kills a worker silent far past
//! its call's time limit. A worker's supervisor thread reports here (`WorkerEvents`); its
//! answers are recorded by the scheduler.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::chunk::Chunk;
use super::job::{Job, Slot};
use super::scheduler::{Answers, Ran, Scheduler, SchedulerState};
use crate::error::{Error, Result};
use crate::output::{OutputEvent, OutputRouter};
use crate::protocol::{CANCELLED_EXIT, CallEvent, CallRequest, Control, ToWorker, WATCHDOG_EXIT};
use crate::spawn::start_worker;
use crate::supervisor::{WorkerEvents, WorkerHandle, describe_exit};

/// A call sent to a worker and not yet answered.
#[derive(Debug)]
pub(super) struct InFlight {
    pub id: u64,
    /// The chunk it runs; `None` for the initializer.
    pub chunk: Option<Chunk>,
    /// The chunk's first items answered already, in parts (`BatchPart`).
    pub answered: usize,
    pub sent: Instant,
    /// Sent to a worker with nothing else in flight, and nothing sent to it since: from
    /// sending to answer, everything but its run time is overhead.
    pub alone: bool,
}

/// One worker of the pool, as the scheduler sees it.
#[derive(Debug)]
pub(super) struct PoolWorker {
    pub handle: WorkerHandle,
    pub name: String,
    /// Its calls in flight, oldest (the running one) first.
    pub inflight: VecDeque<InFlight>,
    /// Tasks given to this worker so far (for `maxtasksperchild`): a chunk counts as one.
    pub given: u64,
    /// Set once the initializer (if any) has succeeded.
    pub ready: bool,
    /// No more work: it is being shut down (maxtasksperchild, close).
    pub retiring: bool,
    /// Output routing has its own lock: a slow reader of the output never holds up the pool.
    router: Arc<Mutex<OutputRouter>>,
    /// When the worker last sent a frame, or was sent work while idle: a worker running a
    /// call with a time limit that is silent far longer (see [`SILENCE_GRACE`]) is stopped
    /// or wedged, and is killed.
    pub heard: Instant,
    /// When it last answered a call: a chunk answered after another held the worker since
    /// that answer (or since it was sent, if later).
    pub answered_at: Instant,
    /// The answers read since the worker last went quiet, not yet charged: see
    /// [`Burst`](super::scheduler::Burst).
    pub burst: super::scheduler::Burst,
    /// Why the pool killed the worker, if it did.
    killed_for: Option<String>,
    /// Set while its output is handed to the caller's callback: a slow callback holds up
    /// the reading of the worker's frames, and the worker is not silent meanwhile.
    routing: Arc<std::sync::atomic::AtomicBool>,
}

/// How long past its time limit a worker running a timed call may send nothing before the
/// pool kills it. A live worker says it is alive every second while such a call runs, and
/// its own watchdog ends a call stuck past the limit: only a stopped or wedged worker is
/// silent this long.
const SILENCE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the pool checks its workers' silence.
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

impl Scheduler {
    /// Starts the pool's workers, in parallel, and waits until they are ready.
    pub fn start_workers(&self) -> Result<()> {
        let n = self.config.processes;
        let names: Vec<String> = {
            let mut s = self.lock();
            s.starting += n;
            (0..n)
                .map(|_| {
                    s.next_worker += 1;
                    format!("PoolWorker-{}", s.next_worker)
                })
                .collect()
        };
        let results: Vec<Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = names
                .into_iter()
                .map(|name| {
                    std::thread::Builder::new()
                        .name("wasmpool-start".into())
                        .spawn_scoped(scope, move || self.add_worker(name))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h
                        .join()
                        .unwrap_or_else(|_| Err(Error::Worker("worker start panicked".into()))),
                    // No thread, so no `add_worker` to release its slot: released here.
                    Err(e) => {
                        self.lock().starting -= 1;
                        self.changed.notify_all();
                        Err(Error::Worker(format!(
                            "cannot start a thread to start a worker: {e}"
                        )))
                    }
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// Starts one worker and adds it to the pool (its slot in `starting` is released).
    fn add_worker(&self, name: String) -> Result<()> {
        let engine = self.config.engine;
        let started = self.module.artifact_for(engine).and_then(|artifact| {
            start_worker(
                self.module.runtime(),
                &artifact,
                &name,
                engine,
                &self.config.limits,
            )
        });
        if let Ok(worker) = &started {
            // Later submissions of a task the module lacks then fail before they are queued.
            self.module.learn_tasks(&worker.tasks);
        }
        let events: Arc<dyn WorkerEvents> = match self.me.upgrade() {
            Some(me) => me,
            None => return Ok(()),
        };
        let attached = started.and_then(|w| {
            WorkerHandle::attach(w, events).map_err(|e| Error::Worker(e.to_string()))
        });
        let mut s = self.lock();
        s.starting -= 1;
        let handle = match attached {
            Ok(h) => h,
            Err(e) => {
                if s.workers.is_empty() && s.starting == 0 {
                    let message = format!("the pool cannot start a worker: {e}");
                    self.break_pool(&mut s, message);
                }
                self.changed.notify_all();
                return Err(e);
            }
        };
        if s.terminated {
            handle.signal(libc::SIGKILL);
        }
        let mut worker = PoolWorker {
            handle,
            name,
            inflight: VecDeque::new(),
            given: 0,
            ready: self.config.initializer.is_none(),
            retiring: false,
            router: Arc::default(),
            heard: Instant::now(),
            answered_at: Instant::now(),
            burst: Default::default(),
            killed_for: None,
            routing: Arc::default(),
        };
        if !self.config.grants.is_empty() {
            // Before any call: the worker's instances are made with these from then on.
            let _ = worker.handle.send(&ToWorker::Control(Control::Grant(
                self.config.grants.clone(),
            )));
        }
        if let Some((task, args)) = &self.config.initializer {
            let id = s.next_id;
            s.next_id += 1;
            let frame = ToWorker::Call(CallRequest::One {
                id,
                task: task.clone(),
                args: args.clone(),
                exit_after: false,
                limits: self.config.limits,
            });
            if worker.handle.send(&frame).is_ok() {
                worker.inflight.push_back(InFlight {
                    id,
                    chunk: None,
                    answered: 0,
                    sent: Instant::now(),
                    alone: true,
                });
            }
        }
        s.workers.push(worker);
        self.dispatch(&mut s);
        self.changed.notify_all();
        Ok(())
    }

    /// Notes that worker `pid` sent a frame.
    fn heard_from(&self, s: &mut SchedulerState, pid: u32) {
        if let Some(w) = s.workers.iter_mut().find(|w| w.handle.pid == pid) {
            w.heard = Instant::now();
        }
    }

    /// Starts, once, the thread that kills a worker silent far past its call's time limit
    /// (stopped, or wedged): its own watchdog cannot end such a call, so the host does,
    /// and the call is lost (retried, if the task allows it) as if the worker had died.
    pub(super) fn watch_silence(&self) {
        if self
            .silence_watched
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("wasmpool-deadlines".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SILENCE_CHECK);
                    let Some(scheduler) = me.upgrade() else {
                        return;
                    };
                    let mut s = scheduler.lock();
                    if s.terminated || (s.closed && s.workers.is_empty()) {
                        return;
                    }
                    for w in &mut s.workers {
                        let Some(limit) = w
                            .inflight
                            .front()
                            .and_then(|f| f.chunk.as_ref())
                            .and_then(|c| c.job.opts.limits.timeout)
                        else {
                            continue;
                        };
                        let silent = w.heard.elapsed();
                        let routing = w.routing.load(std::sync::atomic::Ordering::Relaxed);
                        if !routing
                            && w.killed_for.is_none()
                            && silent > limit.saturating_add(SILENCE_GRACE)
                        {
                            w.killed_for = Some(format!(
                                "sent nothing for {silent:.1?}, past its task's time limit of \
                                 {limit:?} (it was stopped or wedged), and was killed"
                            ));
                            w.handle.signal(libc::SIGKILL);
                        }
                    }
                }
            });
        if spawned.is_err() {
            // Without the thread, a stopped worker holds its call as before; try next time.
            self.silence_watched
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The worker processes' pids.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().workers.iter().map(|w| w.handle.pid).collect()
    }

    /// Waits until the pool has its full complement of workers (after replacements).
    pub fn wait_for_workers(&self, n: usize) {
        let mut s = self.lock();
        while s.workers.iter().filter(|w| !w.retiring).count() < n
            && s.broken.is_none()
            && !s.terminated
        {
            s = self.wait(s);
        }
    }
}

impl WorkerEvents for Scheduler {
    fn on_call(&self, pid: u32, event: CallEvent, more: bool) {
        match event {
            CallEvent::Done {
                id,
                outcome,
                fuel,
                micros,
                peak_memory,
            } => {
                let ran = Ran {
                    fuel,
                    micros,
                    peak_memory,
                };
                self.finish_call(pid, id, Answers::One(outcome), ran, more)
            }
            CallEvent::BatchDone {
                id,
                answers,
                fuel,
                micros,
                peak_memory,
            } => {
                let ran = Ran {
                    fuel,
                    micros,
                    peak_memory,
                };
                self.finish_call(pid, id, Answers::Batch(answers), ran, more)
            }
            CallEvent::BatchPart { id, answers } => self.part_of_call(pid, id, answers),
            CallEvent::Output { id, stream, data } => {
                let found = {
                    let mut s = self.lock();
                    self.heard_from(&mut s, pid);
                    s.workers.iter().find(|w| w.handle.pid == pid).map(|w| {
                        let task = w
                            .inflight
                            .front()
                            .and_then(|f| f.chunk.as_ref().map(|c| c.job.task.to_string()))
                            .or_else(|| self.config.initializer.as_ref().map(|(t, _)| t.clone()))
                            .unwrap_or_default();
                        // The call that wrote it keeps it too, if its job captures output.
                        let job = w
                            .inflight
                            .iter()
                            .find(|f| f.id == id)
                            .and_then(|f| f.chunk.as_ref())
                            .filter(|c| c.job.opts.capture_output)
                            .map(|c| c.job.clone());
                        (
                            w.router.clone(),
                            w.name.clone(),
                            task,
                            w.routing.clone(),
                            job,
                        )
                    })
                };
                if let Some((router, name, task, routing, job)) = found {
                    if let Some(job) = job {
                        job.capture(stream, &data);
                    }
                    let event = OutputEvent {
                        pid,
                        process: &name,
                        task: &task,
                        stream,
                        data: &data,
                    };
                    routing.store(true, std::sync::atomic::Ordering::Relaxed);
                    router
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .route(&self.config.output, event);
                    // What the worker sent meanwhile waits to be read: it was not silent.
                    let mut s = self.lock();
                    self.heard_from(&mut s, pid);
                    routing.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    fn on_alive(&self, pid: u32) {
        let mut s = self.lock();
        self.heard_from(&mut s, pid);
    }

    fn on_exit(&self, pid: u32, status: Option<ExitStatus>, protocol_error: Option<String>) {
        let mut s = self.lock();
        let Some(wi) = s.workers.iter().position(|w| w.handle.pid == pid) else {
            return;
        };
        let mut worker = s.workers.remove(wi);
        worker
            .router
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finish(&self.config.output, pid, &worker.name, "");
        // A worker stopped by its watchdog had already answered its running task, so nothing
        // of it is lost; one that broke the protocol is not believed about anything.
        let watchdog =
            protocol_error.is_none() && status.and_then(|s| s.code()) == Some(WATCHDOG_EXIT);
        let (signal, reason) = match protocol_error {
            Some(e) => (
                None,
                format!("sent a malformed frame ({e}) and was stopped"),
            ),
            None => match worker.killed_for.take() {
                Some(why) => (Some(libc::SIGKILL), why),
                None if status.and_then(|s| s.code()) == Some(CANCELLED_EXIT) => {
                    (None, "stopped itself: the task it ran was cancelled".into())
                }
                None => describe_exit(status),
            },
        };
        let mut flights = std::mem::take(&mut worker.inflight).into_iter();
        // The first chunk in flight was running when the worker died: it is lost. The others
        // never started: they go back to the front of the queue, in order. A cancelled
        // job's chunks (its items are answered already) are neither retried nor run.
        let lost = if watchdog {
            None
        } else {
            // Of it, only the items not answered in parts.
            flights
                .next()
                .and_then(|running| running.chunk?.rest(running.answered))
                .filter(|chunk| !chunk.job.is_cancelled())
        };
        s.queue.requeue(
            flights
                .filter_map(|f| f.chunk)
                .filter(|chunk| !chunk.job.is_cancelled())
                .collect(),
        );
        if let Some(chunk) = lost {
            self.lose_chunk(&mut s, chunk, pid, signal, reason);
        }
        let replace = !s.terminated && s.broken.is_none() && !(s.closed && s.queue.is_empty());
        if replace {
            s.starting += 1;
            s.next_worker += 1;
            let name = format!("PoolWorker-{}", s.next_worker);
            if let Some(me) = self.me.upgrade() {
                let spawned = std::thread::Builder::new()
                    .name("wasmpool-replace".into())
                    .spawn(move || {
                        let _ = me.add_worker(name);
                    });
                if spawned.is_err() {
                    s.starting -= 1;
                }
            } else {
                s.starting -= 1;
            }
        } else if s.workers.is_empty() && s.starting == 0 && !s.queue.is_empty() {
            let slot = Slot::Aborted("the pool has no workers left".into());
            for chunk in s.queue.take_all() {
                self.abort_chunk(chunk, &slot);
            }
        }
        self.dispatch(&mut s);
        self.changed.notify_all();
    }
}

impl Scheduler {
    /// Cancels `job`: its queued chunks are dropped, the workers it was sent to are told
    /// (`Control::Skip`) and skip those of its calls they have not started, a worker running
    /// one stops itself (and is replaced, as after a crash: what else it held goes back to
    /// the queue, not started), and every item not finished fails as cancelled. Returns
    /// how many items were cancelled.
    ///
    /// The worker, not the pool, decides what is running: the pool's view lags by the
    /// answers in transit, and a kill decided on it could land on a call started since,
    /// of other work (lost with it), or after the worker had run cancelled calls sent ahead.
    pub fn cancel_job(&self, job: &Arc<Job>) -> usize {
        job.mark_cancelled();
        let mut s = self.lock();
        // Dropped: their items are answered below, with the rest.
        drop(s.queue.remove(&mut |c| Arc::ptr_eq(&c.job, job)));
        for w in &s.workers {
            let ids: Vec<u64> = w
                .inflight
                .iter()
                .filter(|f| f.chunk.as_ref().is_some_and(|c| Arc::ptr_eq(&c.job, job)))
                .map(|f| f.id)
                .collect();
            if !ids.is_empty() {
                // A failed write means the worker is dying: its exit drops the chunks.
                let _ = w.handle.send(&ToWorker::Control(Control::Skip(ids)));
            }
        }
        let cancelled = job.complete_run(0, job.len(), Slot::Cancelled);
        if cancelled > 0 {
            self.callbacks.run_hooks(job);
        }
        self.changed.notify_all();
        cancelled
    }
}

impl PoolWorker {
    /// Whether the pool has killed it (it is dying): it is given no more work.
    pub(super) fn doomed(&self) -> bool {
        self.killed_for.is_some()
    }
}
