//! The pool's scheduler: a FIFO queue of chunks, the workers, and what happens when a
//! worker answers or dies.
//!
//! There is no scheduler thread. Work is dispatched by whoever changes the state: the
//! submitting thread, or a worker's supervisor thread when that worker finishes a chunk.
//! Frames are written under the pool lock, which cannot block for long because every worker
//! drains its socket continuously. A worker gets a second chunk ahead of time (pipelining)
//! only while chunks finish in well under a millisecond; long tasks are handed out one at a
//! time, so a free worker always takes the next queued task (Python's FIFO behaviour).

use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

#[cfg(doc)]
use super::job::TaskOptions;
use super::job::{Hook, Job, Slot};
use crate::error::{Error, Result};
use crate::grants::Grants;
use crate::module::Module;
use crate::output::{Output, OutputEvent, OutputRouter};
use crate::protocol::packed::{BatchAnswers, Packed};
use crate::protocol::{
    CallEvent, CallRequest, Control, Limits, MAX_FRAME, Outcome, PART_BYTES, ToWorker,
    WATCHDOG_EXIT, describe_bytes, encode_frame,
};
use crate::spawn::start_worker;
use crate::supervisor::{WorkerEvents, WorkerHandle, describe_exit};

/// Chunks a worker may hold ahead when tasks are short.
const PIPELINE_DEPTH: usize = 4;
/// Below this average chunk run time, workers are given chunks ahead of time.
const PIPELINE_BELOW_SECS: f64 = 0.002;
/// Below this average chunk run time, workers get the deep pipeline: as many chunks as run
/// for about `DEEP_PIPELINE_SECS`, within `DEEP_PIPELINE_DEPTH..=MAX_PIPELINE_DEPTH`, so
/// frames travel in batches. A worker writes its answers when it runs out of work, and waits
/// for the next batch for a round trip; the more tiny tasks a batch holds, the less of its
/// time that is (chunksize-1 map of 20k: 47 ms at 64 chunks, 43 at 256, 39 at 1024).
const DEEP_PIPELINE_BELOW_SECS: f64 = 0.000_1;
const DEEP_PIPELINE_SECS: f64 = 0.001;
const DEEP_PIPELINE_DEPTH: usize = 64;
const MAX_PIPELINE_DEPTH: usize = 512;
/// Longer chunks still get one chunk ahead when the time a chunk spends outside the worker
/// (travelling both ways, and being recorded) is more than this fraction of its run time:
/// a large batch of tiny items takes as long to send and record as to run, and without a
/// chunk ahead its worker would sit idle for that long after each one.
const OVERHEAD_FRACTION: f64 = 0.125;

/// A worker's answer to one call.
enum Answers {
    /// A single call's outcome; or, from a worker whose watchdog stopped a batch, the one
    /// outcome that stands for every item of it.
    One(Outcome),
    /// A batch's outcomes, one per item.
    Batch(BatchAnswers),
}

impl Answers {
    /// The first item's outcome.
    fn first(self) -> Option<Outcome> {
        match self {
            Answers::One(outcome) => Some(outcome),
            Answers::Batch(answers) => answers.into_outcomes().next(),
        }
    }
}

/// What a worker says of the run behind an answer.
struct Ran {
    /// Fuel used, on a metered worker.
    fuel: Option<u64>,
    /// How long it ran in the worker.
    micros: u64,
}

/// How many chunks a worker may hold (running and queued), given the average run time of a
/// chunk and the time one spends outside the worker. A chunk queued behind a long one waits
/// even if another worker is idle, so long chunks are not queued unless they would leave
/// their worker idle for a good part of the time.
fn pipeline_depth(run: Option<f64>, overhead: Option<f64>) -> usize {
    match run {
        Some(run) if run < DEEP_PIPELINE_BELOW_SECS => ((DEEP_PIPELINE_SECS / run.max(1e-7))
            as usize)
            .clamp(DEEP_PIPELINE_DEPTH, MAX_PIPELINE_DEPTH),
        Some(run) if run < PIPELINE_BELOW_SECS => PIPELINE_DEPTH,
        Some(run) if overhead.is_some_and(|o| o > run * OVERHEAD_FRACTION) => 2,
        _ => 1,
    }
}

/// How long a task's chunks take: exponentially weighted averages, in seconds, `None` until
/// measured.
#[derive(Debug, Default, Clone, Copy)]
struct Timing {
    /// Run time in the worker.
    run: Option<f64>,
    /// Time a chunk sent to an idle worker, and answered before another was sent to it,
    /// spends outside it (from sending to answer, less its run time). Only such a chunk
    /// shows it: one queued behind another waits for that one, and one with another queued
    /// behind it is answered after that one too.
    overhead: Option<f64>,
}

/// An exponentially weighted average updated with `sample`.
fn ewma(avg: Option<f64>, sample: f64) -> f64 {
    avg.map_or(sample, |a| 0.8 * a + 0.2 * sample)
}

/// A user callback, run on the pool's callback thread.
type Callback = Box<dyn FnOnce() + Send>;

/// A run of consecutive items of one job, sent to a worker in one frame.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub job: Arc<Job>,
    pub first: usize,
    pub items: Packed,
    /// Sent as a single `Call` (apply) rather than a `CallBatch`.
    pub single: bool,
    /// Runs before this one that a worker died under (see [`TaskOptions::retries`]).
    pub attempt: u32,
}

impl Chunk {
    pub fn new(job: Arc<Job>, first: usize, items: Packed, single: bool) -> Chunk {
        Chunk {
            job,
            first,
            items,
            single,
            attempt: 0,
        }
    }

    /// The chunk's items as chunks of one, for a retry: a worker died under the chunk, and
    /// only one of its items may be to blame, so each is run again on its own.
    fn split_for_retry(self) -> Vec<Chunk> {
        let attempt = self.attempt + 1;
        let mut retries = self.split_for_retry_from(0);
        for r in &mut retries {
            r.attempt = attempt;
        }
        retries
    }

    /// The chunk as runs of consecutive items of at most `budget` bytes each (an item
    /// larger than that alone in its run), in order.
    fn cut_by_bytes(self, budget: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut part = Packed::default();
        let mut part_first = self.first;
        for item in self.items.iter() {
            if !part.is_empty() && part.data.len() + item.len() > budget {
                let len = part.len();
                out.push(Chunk {
                    first: part_first,
                    items: std::mem::take(&mut part),
                    ..self.clone_empty()
                });
                part_first += len;
            }
            part.push(item);
        }
        if !part.is_empty() {
            out.push(Chunk {
                first: part_first,
                items: part,
                ..self.clone_empty()
            });
        }
        out
    }

    /// A chunk of the same job, attempt and kind with no items.
    fn clone_empty(&self) -> Chunk {
        Chunk {
            job: self.job.clone(),
            first: self.first,
            items: Packed::default(),
            single: self.single,
            attempt: self.attempt,
        }
    }

    /// The chunk without its first `skip` items (answered already), if any are left.
    fn rest(self, skip: usize) -> Option<Chunk> {
        if skip == 0 {
            return Some(self);
        }
        if skip >= self.items.len() {
            return None;
        }
        let mut items = Packed::with_capacity(self.items.len() - skip, 0);
        for i in skip..self.items.len() {
            items.push(self.items.get(i).unwrap_or_default());
        }
        Some(Chunk {
            first: self.first + skip,
            items,
            ..self
        })
    }

    /// Items `skip..` of the chunk as chunks of one, each to run on its own.
    fn split_for_retry_from(&self, skip: usize) -> Vec<Chunk> {
        (skip..self.items.len())
            .map(|i| Chunk {
                first: self.first + i,
                items: Packed::one(self.items.get(i).unwrap_or_default()),
                ..self.clone_empty()
            })
            .collect()
    }
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    chunk: Option<Chunk>,
    /// The chunk's first items answered already, in parts (`BatchPart`).
    answered: usize,
    sent: Instant,
    /// Sent to a worker with nothing else in flight, and nothing sent to it since: from
    /// sending to answer, everything but its run time is overhead.
    alone: bool,
}

#[derive(Debug)]
struct PoolWorker {
    handle: WorkerHandle,
    name: String,
    inflight: VecDeque<InFlight>,
    /// Tasks given to this worker so far (for `maxtasksperchild`): a chunk counts as one.
    given: u64,
    /// Set once the initializer (if any) has succeeded.
    ready: bool,
    /// No more work: it is being shut down (maxtasksperchild, close).
    retiring: bool,
    /// Output routing has its own lock: a slow reader of the output never holds up the pool.
    router: Arc<Mutex<OutputRouter>>,
    /// When the worker last sent a frame, or was sent work while idle: a worker running a
    /// call with a time limit that is silent far longer (see [`SILENCE_GRACE`]) is stopped
    /// or wedged, and is killed.
    heard: Instant,
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

#[derive(Debug, Default)]
struct Sched {
    workers: Vec<PoolWorker>,
    queue: VecDeque<Chunk>,
    next_id: u64,
    closed: bool,
    terminated: bool,
    broken: Option<String>,
    starting: usize,
    next_worker: u64,
    /// Per task: how long its chunks take, which sets how deep they are pipelined (a pool
    /// that runs tiny tasks and then long ones does not queue the long ones as deep).
    timing: HashMap<Arc<str>, Timing>,
    /// Per task: workers that died running it since one of its calls last finished.
    losses: HashMap<Arc<str>, u32>,
    /// Threads waiting on `changed` (join, wait_for_workers): a finished call
    /// notifies only when there is one, since a notification is a system call.
    waiters: usize,
}

/// Everything a pool needs to know to run: shared with the workers' supervisor threads.
pub(crate) struct PoolConfig {
    pub processes: usize,
    pub initializer: Option<(String, Vec<u8>)>,
    pub maxtasksperchild: Option<u64>,
    pub output: Output,
    /// Limits for the initializer (each job carries its own). With a fuel limit, the
    /// workers run on the metered engine.
    pub limits: Limits,
    /// Workers a task may take down in a row before its work is failed instead of run.
    pub restart_limit: u32,
    /// Capabilities for every worker's tasks (already resolved).
    pub grants: Grants,
}

pub(crate) struct Shared {
    pub module: Module,
    pub config: PoolConfig,
    state: Mutex<Sched>,
    changed: Condvar,
    callbacks: Mutex<Option<Sender<Callback>>>,
    /// Callbacks sent to the callback thread and not yet run.
    pending: Arc<Pending>,
    /// The callback thread, if it started.
    callback_thread: Option<std::thread::ThreadId>,
    /// Whether the thread that kills silent workers runs (see `watch_silence`).
    silence_watched: std::sync::atomic::AtomicBool,
    me: Weak<Shared>,
}

/// Counts a job's gating hook run when dropped (run, panicked, or dropped unrun).
struct Settle(Option<Arc<Job>>);

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(job) = &self.0 {
            job.settle();
        }
    }
}

/// Counts a callback done when dropped.
struct Done<'a>(&'a Pending);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// A count of callbacks queued and not yet run, and a way to wait until there are none.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    none: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn done(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.none.notify_all();
        }
    }

    fn wait_none(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.none.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.config.processes)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(module: Module, config: PoolConfig) -> Arc<Shared> {
        let (tx, rx) = std::sync::mpsc::channel::<Callback>();
        let pending = Arc::new(Pending::default());
        let counted = pending.clone();
        // Callbacks run here, in the host, one at a time, in completion order.
        let callback_thread = std::thread::Builder::new()
            .name("wasmpool-callbacks".into())
            .spawn(move || {
                for f in rx {
                    // Counted done however it ends: a callback that panics is reported
                    // (by the panic hook) and the next one runs.
                    let _done = Done(&counted);
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                }
            })
            .ok()
            .map(|t| t.thread().id());
        Arc::new_cyclic(|me| Shared {
            module,
            config,
            state: Mutex::new(Sched::default()),
            changed: Condvar::new(),
            callbacks: Mutex::new(Some(tx)),
            pending,
            callback_thread,
            silence_watched: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

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
        let metered = self.config.limits.fuel.is_some();
        let started = self.module.artifact_for(metered).and_then(|artifact| {
            start_worker(
                self.module.runtime(),
                &artifact,
                &name,
                metered,
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

    /// Queues chunks and dispatches them.
    pub fn submit(&self, chunks: impl IntoIterator<Item = Chunk>) -> Result<()> {
        let mut s = self.lock();
        if s.closed || s.terminated {
            return Err(Error::State(
                "the pool is closed: no new work is accepted".into(),
            ));
        }
        if let Some(message) = &s.broken {
            return Err(Error::State(message.clone()));
        }
        for chunk in chunks {
            // A chunk too large for a frame is cut by bytes, so the items that fit run.
            if chunk.items.len() > 1 && chunk.items.data.len() > PART_BYTES {
                s.queue.extend(chunk.cut_by_bytes(PART_BYTES));
            } else {
                s.queue.push_back(chunk);
            }
        }
        self.dispatch(&mut s);
        Ok(())
    }

    fn dispatch(&self, s: &mut Sched) {
        let max_tasks = self.config.maxtasksperchild;
        // The depth for the task at the front of the queue, looked up when it changes.
        let mut depth_for: Option<(Arc<str>, usize)> = None;
        // Frames for each worker, written in one go after the loop.
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); s.workers.len()];
        while let Some(front) = s.queue.front() {
            let depth = match &depth_for {
                Some((task, depth)) if Arc::ptr_eq(task, &front.job.task) => *depth,
                _ => {
                    let t = s.timing.get(&front.job.task).copied().unwrap_or_default();
                    let depth = pipeline_depth(t.run, t.overhead);
                    depth_for = Some((front.job.task.clone(), depth));
                    depth
                }
            };
            let Some((wi, _)) = s
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| {
                    w.ready
                        && !w.retiring
                        && w.inflight.len() < depth
                        && max_tasks.is_none_or(|m| w.given < m)
                })
                .min_by_key(|(_, w)| w.inflight.len())
            else {
                break;
            };
            let Some(chunk) = s.queue.pop_front() else {
                break;
            };
            let id = s.next_id;
            s.next_id += 1;
            let frame = if chunk.single {
                ToWorker::Call(CallRequest::One {
                    id,
                    task: chunk.job.task.to_string(),
                    args: chunk.items.get(0).unwrap_or_default().to_vec(),
                    exit_after: false,
                    limits: chunk.job.opts.limits,
                })
            } else {
                ToWorker::Call(CallRequest::Batch {
                    id,
                    task: chunk.job.task.to_string(),
                    items: chunk.items.clone(),
                    limits: chunk.job.opts.limits,
                })
            };
            if let Err(e) = encode_frame(&mut out[wi], &frame) {
                // Too large to send: fail the chunk (an item alone, as chunks are cut by
                // bytes) rather than the worker.
                let message = format!(
                    "its arguments ({}) are over the message limit of {}: {e}",
                    describe_bytes(chunk.items.data.len() as u64),
                    describe_bytes(MAX_FRAME as u64)
                );
                self.abort_chunk(chunk, &Slot::Done(Outcome::BadArgs(message)));
                continue;
            }
            if chunk.job.opts.limits.timeout.is_some() {
                self.watch_silence();
            }
            let w = &mut s.workers[wi];
            if w.inflight.is_empty() {
                w.heard = Instant::now();
            }
            // A chunk is one task, whatever its items, as Python counts a `map` chunk.
            w.given += 1;
            // The chunk in flight alone no longer is: its answer waits for this one.
            if let Some(first) = w.inflight.front_mut() {
                first.alone = false;
            }
            w.inflight.push_back(InFlight {
                alone: w.inflight.is_empty(),
                id,
                answered: 0,
                chunk: Some(chunk),
                sent: Instant::now(),
            });
        }
        for (w, frames) in s.workers.iter().zip(&out) {
            if !frames.is_empty() {
                // A failed write means the worker is dying: its exit requeues or fails the chunks.
                let _ = w.handle.send_encoded(frames);
            }
        }
    }

    fn finish_call(&self, pid: u32, id: u64, answers: Answers, ran: Ran, more: bool) {
        let mut s = self.lock();
        let Some(wi) = s.workers.iter().position(|w| w.handle.pid == pid) else {
            return;
        };
        let Some(pos) = s.workers[wi].inflight.iter().position(|f| f.id == id) else {
            return;
        };
        let Some(flight) = s.workers[wi].inflight.remove(pos) else {
            return;
        };
        s.workers[wi].heard = Instant::now();
        let Ran { fuel, micros } = ran;
        match flight.chunk {
            None => {
                // The initializer's answer.
                match answers.first() {
                    Some(Outcome::Ok(_)) => s.workers[wi].ready = true,
                    other => {
                        let task = self
                            .config
                            .initializer
                            .as_ref()
                            .map(|(t, _)| t.as_str())
                            .unwrap_or("initializer");
                        let why = match other {
                            Some(o) => {
                                crate::process::outcome_error(task, &o, &self.module).to_string()
                            }
                            None => "no answer".into(),
                        };
                        self.break_pool(&mut s, format!("the pool's initializer failed: {why}"));
                    }
                }
            }
            Some(chunk) => {
                let run = micros as f64 / 1e6;
                let t = s.timing.entry(chunk.job.task.clone()).or_default();
                t.run = Some(ewma(t.run, run));
                if flight.alone {
                    let overhead = (flight.sent.elapsed().as_secs_f64() - run).max(0.0);
                    t.overhead = Some(ewma(t.overhead, overhead));
                }
                // The task ran to an answer: whatever took workers down before, it is not this.
                if !s.losses.is_empty() {
                    s.losses.remove(&chunk.job.task);
                }
                if let Some(fuel) = fuel {
                    chunk.job.add_fuel(fuel);
                }
                // Items after those answered in parts.
                let (first, n) = (
                    chunk.first + flight.answered,
                    chunk.items.len() - flight.answered,
                );
                match answers {
                    Answers::One(outcome) => {
                        self.complete_run(&chunk.job, first, n, Slot::Done(outcome))
                    }
                    Answers::Batch(batch) => {
                        let answered = batch.len().min(n);
                        if chunk.job.complete_batch(first, answered, batch) > 0 {
                            self.run_hooks(&chunk.job);
                        }
                        if answered < n && n == 1 {
                            // A lone item always gets an answer from a worker that keeps
                            // to the protocol; without one it is not run again and again.
                            self.complete_run(
                                &chunk.job,
                                first,
                                1,
                                Slot::Done(Outcome::Trap("the worker gave it no answer".into())),
                            );
                        } else if answered < n {
                            // The worker's watchdog stopped the batch in a host call: the
                            // items it did not answer never ran, or ran past the time limit
                            // with others; each runs again on its own, with its own limit.
                            let skip = flight.answered + answered;
                            for retry in chunk.split_for_retry_from(skip).into_iter().rev() {
                                s.queue.push_front(retry);
                            }
                        }
                    }
                }
            }
        }
        let w = &mut s.workers[wi];
        if let Some(max) = self.config.maxtasksperchild
            && w.given >= max
            && w.inflight.is_empty()
            && !w.retiring
        {
            w.retiring = true;
            let _ = w.handle.send(&ToWorker::Control(Control::Shutdown));
        }
        // Refill once this worker's buffered answers are all handled: one write, not one per answer.
        if !more {
            self.dispatch(&mut s);
        }
        if s.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// The next answers of batch call `id`, before its last: they are recorded now, and
    /// the call stays in flight for the rest.
    fn part_of_call(&self, pid: u32, id: u64, answers: BatchAnswers) {
        let mut s = self.lock();
        let Some(w) = s.workers.iter_mut().find(|w| w.handle.pid == pid) else {
            return;
        };
        w.heard = Instant::now();
        let Some(flight) = w.inflight.iter_mut().find(|f| f.id == id) else {
            return;
        };
        let Some(chunk) = flight.chunk.as_ref() else {
            return;
        };
        // Recorded under the pool's lock, as `finish_call` records the last answers.
        let answered = answers.len().min(chunk.items.len() - flight.answered);
        let first = chunk.first + flight.answered;
        if answered > 0 && chunk.job.complete_batch(first, answered, answers) > 0 {
            self.run_hooks(&chunk.job);
        }
        flight.answered += answered;
    }

    /// Notes that worker `pid` sent a frame.
    fn heard_from(&self, s: &mut Sched, pid: u32) {
        if let Some(w) = s.workers.iter_mut().find(|w| w.handle.pid == pid) {
            w.heard = Instant::now();
        }
    }

    /// Starts, once, the thread that kills a worker silent far past its call's time limit
    /// (stopped, or wedged): its own watchdog cannot end such a call, so the host does,
    /// and the call is lost (retried, if the task allows it) as if the worker had died.
    fn watch_silence(&self) {
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
                    let Some(shared) = me.upgrade() else {
                        return;
                    };
                    let mut s = shared.lock();
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

    /// The pool's callback thread, if it started.
    pub fn callback_thread(&self) -> Option<std::thread::ThreadId> {
        self.callback_thread
    }

    /// Runs the job's completion hooks on the callback thread, if every item of it has
    /// finished and they are still to run.
    pub fn run_hooks(&self, job: &Arc<Job>) {
        for hook in job.take_hooks_if_finished() {
            self.run_hook(job, hook);
        }
    }

    /// Runs one completion hook of `job` on the callback thread. A gating hook is counted
    /// run however it ends, and also if it never runs (the callback thread is gone), so a
    /// `get` cannot hang on it.
    pub fn run_hook(&self, job: &Arc<Job>, hook: Hook) {
        let settle = Settle(hook.gating.then(|| job.clone()));
        let job = job.clone();
        let f = hook.run;
        let run: Callback = Box::new(move || {
            let _settle = settle;
            f(job.as_ref())
        });
        if let Some(tx) = self.callbacks.lock().ok().and_then(|t| t.clone()) {
            self.pending.add();
            if tx.send(run).is_err() {
                self.pending.done();
            }
        }
    }

    /// Records one outcome for `n` items in one go, and runs the job's hooks if that
    /// finished it.
    fn complete_run(&self, job: &Arc<Job>, first: usize, n: usize, slot: Slot) {
        if job.complete_run(first, n, slot) > 0 {
            self.run_hooks(job);
        }
    }

    fn abort_chunk(&self, chunk: Chunk, slot: &Slot) {
        let n = chunk.items.len();
        self.complete_run(&chunk.job, chunk.first, n, slot.clone());
    }

    /// A worker died running `chunk`: retry it, fail it, or, past the restart limit, fail
    /// it and every queued chunk of its task, so a task that kills every worker it meets
    /// cannot make the pool start worker after worker.
    fn lose_chunk(
        &self,
        s: &mut Sched,
        chunk: Chunk,
        pid: u32,
        signal: Option<i32>,
        reason: String,
    ) {
        let task = chunk.job.task.clone();
        let losses = {
            let n = s.losses.entry(task.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        if losses >= self.config.restart_limit {
            self.abort_chunk(
                chunk,
                &Slot::Lost {
                    pid,
                    signal,
                    reason: format!(
                        "{reason}; it has taken down {losses} workers in a row, the pool's \
                         restart limit, so it is not retried"
                    ),
                },
            );
            let (stopped, kept): (Vec<Chunk>, Vec<Chunk>) = std::mem::take(&mut s.queue)
                .into_iter()
                .partition(|c| c.job.task == task);
            s.queue = kept.into();
            let slot = Slot::RestartLimit(losses);
            for chunk in stopped {
                self.abort_chunk(chunk, &slot);
            }
        } else if chunk.attempt < chunk.job.opts.retries {
            for retry in chunk.split_for_retry().into_iter().rev() {
                s.queue.push_front(retry);
            }
        } else {
            self.abort_chunk(
                chunk,
                &Slot::Lost {
                    pid,
                    signal,
                    reason,
                },
            );
        }
    }

    fn break_pool(&self, s: &mut Sched, message: String) {
        s.broken = Some(message.clone());
        let slot = Slot::Aborted(message);
        for chunk in std::mem::take(&mut s.queue) {
            self.abort_chunk(chunk, &slot);
        }
    }

    /// Stops accepting work; queued work still runs.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Stops at once: kills the workers; queued and running work fails.
    pub fn terminate(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.terminated = true;
        let slot = Slot::Aborted("the pool was terminated".into());
        for chunk in std::mem::take(&mut s.queue) {
            self.abort_chunk(chunk, &slot);
        }
        for w in &mut s.workers {
            for flight in std::mem::take(&mut w.inflight) {
                if let Some(chunk) = flight.chunk {
                    self.abort_chunk(chunk, &slot);
                }
            }
            w.handle.signal(libc::SIGKILL);
        }
        self.changed.notify_all();
    }

    /// Waits until all work is done, then (after `close`) shuts the workers down and waits
    /// for them to exit, and for the callbacks of the work done to have run (as Python's
    /// `join` waits for its result handler). An error before `close` or `terminate`, as in
    /// Python.
    pub fn join(&self) -> Result<()> {
        self.join_workers()?;
        // A callback that joins its own pool would wait for itself.
        if self.callback_thread != Some(std::thread::current().id()) {
            self.pending.wait_none();
        }
        Ok(())
    }

    /// As [`join`](Self::join), without waiting for the callbacks.
    pub fn join_workers(&self) -> Result<()> {
        let mut s = self.lock();
        if !s.closed {
            return Err(Error::State(
                "join() needs close() or terminate() first".into(),
            ));
        }
        while !(s.queue.is_empty()
            && s.workers.iter().all(|w| w.inflight.is_empty())
            && s.starting == 0)
        {
            s = self.wait(s);
        }
        for w in &mut s.workers {
            if !w.retiring {
                w.retiring = true;
                let _ = w.handle.send(&ToWorker::Control(Control::Shutdown));
            }
        }
        while !s.workers.is_empty() || s.starting > 0 {
            s = self.wait(s);
        }
        Ok(())
    }

    /// Waits for a change of the scheduler's state.
    fn wait<'a>(&self, mut s: MutexGuard<'a, Sched>) -> MutexGuard<'a, Sched> {
        s.waiters += 1;
        let mut s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        s.waiters -= 1;
        s
    }

    /// Removes `job`'s queued (not yet started) chunks, or every queued chunk when `job` is
    /// `None`, failing their items as cancelled; returns how many items were cancelled.
    pub fn cancel_queued(&self, job: Option<&Arc<Job>>) -> usize {
        let mut s = self.lock();
        let (cancelled, kept): (Vec<Chunk>, Vec<Chunk>) = std::mem::take(&mut s.queue)
            .into_iter()
            .partition(|c| job.is_none_or(|j| Arc::ptr_eq(j, &c.job)));
        s.queue = kept.into();
        let slot = Slot::Cancelled;
        let mut n = 0;
        for chunk in cancelled {
            n += chunk.items.len();
            self.abort_chunk(chunk, &slot);
        }
        self.changed.notify_all();
        n
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

impl WorkerEvents for Shared {
    fn on_call(&self, pid: u32, event: CallEvent, more: bool) {
        match event {
            CallEvent::Done {
                id,
                outcome,
                fuel,
                micros,
            } => self.finish_call(pid, id, Answers::One(outcome), Ran { fuel, micros }, more),
            CallEvent::BatchDone {
                id,
                answers,
                fuel,
                micros,
            } => self.finish_call(pid, id, Answers::Batch(answers), Ran { fuel, micros }, more),
            CallEvent::BatchPart { id, answers } => self.part_of_call(pid, id, answers),
            CallEvent::Output { stream, data, .. } => {
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
                        (w.router.clone(), w.name.clone(), task, w.routing.clone())
                    })
                };
                if let Some((router, name, task, routing)) = found {
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
                None => describe_exit(status),
            },
        };
        let mut flights = std::mem::take(&mut worker.inflight).into_iter();
        // The first chunk in flight was running when the worker died: it is lost. The others
        // never started: they go back to the front of the queue, in order.
        let lost = if watchdog {
            None
        } else {
            // Of it, only the items not answered in parts.
            flights
                .next()
                .and_then(|running| running.chunk?.rest(running.answered))
        };
        let requeue: Vec<Chunk> = flights.filter_map(|f| f.chunk).collect();
        for chunk in requeue.into_iter().rev() {
            s.queue.push_front(chunk);
        }
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
            for chunk in std::mem::take(&mut s.queue) {
                self.abort_chunk(chunk, &slot);
            }
        }
        self.dispatch(&mut s);
        self.changed.notify_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut cb) = self.callbacks.lock() {
            cb.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_deepens_as_chunks_shorten_and_long_ones_queue_only_when_overhead_is_large() {
        // Nothing measured yet: one chunk at a time.
        assert_eq!(pipeline_depth(None, None), 1);
        // Tiny: about a millisecond of them, within bounds.
        assert_eq!(pipeline_depth(Some(0.0), None), MAX_PIPELINE_DEPTH);
        assert_eq!(pipeline_depth(Some(0.000_004), None), 250);
        assert_eq!(pipeline_depth(Some(0.000_05), None), DEEP_PIPELINE_DEPTH);
        // Short.
        assert_eq!(pipeline_depth(Some(0.001), None), PIPELINE_DEPTH);
        // Long: a second chunk only if each would otherwise leave its worker idle a while.
        assert_eq!(pipeline_depth(Some(0.01), Some(0.005)), 2);
        assert_eq!(pipeline_depth(Some(0.01), Some(0.000_1)), 1);
        assert_eq!(pipeline_depth(Some(0.01), None), 1);
    }
}
