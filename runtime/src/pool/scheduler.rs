//! The scheduler: submission and dispatch. Submitted chunks wait in the queue policy
//! ([`QueuePolicy`]: fair across tenants, FIFO within one) until a worker has room; what a worker answers is recorded
//! in its job, and a chunk a worker died under is retried or failed here. The worker set
//! (starting, replacing and watching workers) is in `workers.rs`, the callbacks in
//! `callbacks.rs`, the pipeline's depth in `pipeline.rs`.
//!
//! There is no scheduler thread. Work is dispatched by whoever changes the state: the
//! submitting thread, or a worker's supervisor thread when that worker finishes a chunk.
//! Frames are written under the pool lock, which cannot block for long because every worker
//! drains its socket continuously. A worker gets a second chunk ahead of time (pipelining)
//! only while chunks finish in well under a millisecond; long tasks are handed out one at a
//! time, so a free worker always takes the next queued task (Python's FIFO behaviour).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Instant;

use super::callbacks::Callbacks;
use super::chunk::{Chunk, SendAs};
use super::job::{Job, Slot};
use super::pipeline::{Timing, ewma, pipeline_depth};
use super::queue_policy::{Cost, CostHint, Fair, QueueKey, QueuePolicy};
use super::workers::{InFlight, PoolWorker};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::grants::Grants;
use crate::module::Module;
use crate::output::Output;
use crate::protocol::packed::BatchAnswers;
use crate::protocol::{
    CallRequest, Control, Limits, MAX_FRAME, Outcome, PART_BYTES, ToWorker, describe_bytes,
    encode_frame,
};

/// A worker's answer to one call.
pub(super) enum Answers {
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
pub(super) struct Ran {
    /// Fuel used, on a metered worker.
    pub fuel: Option<u64>,
    /// How long it ran in the worker.
    pub micros: u64,
    /// The largest linear memory its instance had while it ran, in bytes.
    pub peak_memory: u64,
}

/// The scheduler's state, under its lock.
#[derive(Debug)]
pub(super) struct SchedulerState {
    /// The worker set: every live worker (ready, starting its initializer, or retiring).
    pub workers: Vec<PoolWorker>,
    /// The chunks waiting for a worker.
    pub queue: Box<dyn QueuePolicy>,
    /// The id of the next call sent to a worker.
    pub next_id: u64,
    pub closed: bool,
    pub terminated: bool,
    /// Why the pool can run nothing more (its initializer failed, no worker can start).
    pub broken: Option<String>,
    /// Workers being started, not yet in `workers`.
    pub starting: usize,
    /// The number of the last worker named (`PoolWorker-N`).
    pub next_worker: u64,
    /// Per task: how long its chunks take, which sets how deep they are pipelined (a pool
    /// that runs tiny tasks and then long ones does not queue the long ones as deep).
    pub timing: HashMap<Arc<str>, Timing>,
    /// Per task: workers that died running it since one of its calls last finished.
    pub losses: HashMap<Arc<str>, u32>,
    /// Threads waiting on `changed` (join, wait_for_workers): a finished call
    /// notifies only when there is one, since a notification is a system call.
    pub waiters: usize,
}

impl SchedulerState {
    fn new(queue: Box<dyn QueuePolicy>) -> SchedulerState {
        SchedulerState {
            workers: Vec::new(),
            queue,
            next_id: 0,
            closed: false,
            terminated: false,
            broken: None,
            starting: 0,
            next_worker: 0,
            timing: HashMap::new(),
            losses: HashMap::new(),
            waiters: 0,
        }
    }
}

/// Everything a pool needs to know to run: shared with the workers' supervisor threads.
pub(crate) struct PoolConfig {
    pub processes: usize,
    pub initializer: Option<(String, Vec<u8>)>,
    pub maxtasksperchild: Option<u64>,
    pub output: Output,
    /// Limits for the initializer (each job carries its own).
    pub limits: Limits,
    /// The engine the workers run on: metered with a fuel limit, interruptible with a time
    /// limit (or when asked for).
    pub engine: EngineKind,
    /// Workers a task may take down in a row before its work is failed instead of run.
    pub restart_limit: u32,
    /// Capabilities for every worker's tasks (already resolved).
    pub grants: Grants,
}

/// A pool's scheduler: its queue of chunks, its workers, and its callbacks. Every handle of
/// the pool, and every worker's supervisor thread, holds it.
pub(crate) struct Scheduler {
    pub module: Module,
    pub config: PoolConfig,
    state: Mutex<SchedulerState>,
    pub(super) changed: Condvar,
    /// The callback thread, where completion hooks run.
    pub callbacks: Callbacks,
    /// Whether the thread that kills silent workers runs (see `watch_silence`).
    pub(super) silence_watched: std::sync::atomic::AtomicBool,
    pub(super) me: Weak<Scheduler>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.config.processes)
            .finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler with no workers yet (see `start_workers`), queuing fairly across
    /// tenants and first in, first out within one.
    pub fn new(module: Module, config: PoolConfig) -> Arc<Scheduler> {
        let callbacks = Callbacks::start();
        Arc::new_cyclic(|me| Scheduler {
            module,
            config,
            state: Mutex::new(SchedulerState::new(Box::new(Fair::default()))),
            changed: Condvar::new(),
            callbacks,
            silence_watched: std::sync::atomic::AtomicBool::new(false),
            me: me.clone(),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SchedulerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pool can run nothing more (see `SchedulerState::broken`).
    pub fn is_broken(&self) -> bool {
        self.lock().broken.is_some()
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
        // The run time its task's chunks take, for the cost hint, looked up when the task
        // changes.
        let mut micros_for: Option<(Arc<str>, Option<u64>)> = None;
        for chunk in chunks {
            let micros = match &micros_for {
                Some((task, micros)) if Arc::ptr_eq(task, &chunk.job.task) => *micros,
                _ => {
                    let micros = s
                        .timing
                        .get(&chunk.job.task)
                        .and_then(|t| t.run)
                        .map(|run| (run * 1e6) as u64);
                    micros_for = Some((chunk.job.task.clone(), micros));
                    micros
                }
            };
            // A chunk too large for a frame is cut by bytes, so the items that fit run.
            if chunk.items.len() > 1 && chunk.items.data.len() > PART_BYTES {
                for part in chunk.cut_by_bytes(PART_BYTES) {
                    queue(&mut s, part, micros);
                }
            } else {
                queue(&mut s, chunk, micros);
            }
        }
        self.dispatch(&mut s);
        Ok(())
    }

    /// Hands queued chunks to workers with room for them, as many as they have room for.
    pub(super) fn dispatch(&self, s: &mut SchedulerState) {
        let max_tasks = self.config.maxtasksperchild;
        // The depth for the task at the front of the queue, looked up when it changes.
        let mut depth_for: Option<(Arc<str>, usize)> = None;
        // Frames for each worker, written in one go after the loop.
        let mut out: Vec<Vec<u8>> = vec![Vec::new(); s.workers.len()];
        while let Some(front) = s.queue.peek() {
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
                        && !w.doomed()
                        && w.inflight.len() < depth
                        && max_tasks.is_none_or(|m| w.given < m)
                })
                .min_by_key(|(_, w)| w.inflight.len())
            else {
                break;
            };
            let Some(chunk) = s.queue.pop() else {
                break;
            };
            if chunk.job.is_cancelled() {
                // Put back after its job was cancelled (its items are answered already).
                continue;
            }
            chunk.job.mark_given();
            let id = s.next_id;
            s.next_id += 1;
            let frame = if chunk.send_as == SendAs::Call {
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

    pub(super) fn finish_call(&self, pid: u32, id: u64, answers: Answers, ran: Ran, more: bool) {
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
        let now = Instant::now();
        s.workers[wi].heard = now;
        // How long the worker was held since its previous answer (or since this call was
        // sent, if later): what it ran and what it spent between calls.
        let held = now.saturating_duration_since(flight.sent.max(s.workers[wi].answered_at));
        s.workers[wi].answered_at = now;
        let Ran {
            fuel,
            micros,
            peak_memory,
        } = ran;
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
            Some(chunk) if chunk.job.is_cancelled() => {
                // Its items are answered already (cancelled): what the worker says of them,
                // run or skipped unrun, changes nothing, and a skipped call's zero run time
                // is no measure of the task. What it ran is still its tenant's cost.
                drop(answers);
                if let Some(fuel) = fuel {
                    chunk.job.add_fuel(fuel);
                }
                chunk.job.add_worker_micros(micros);
                chunk.job.raise_peak_memory(peak_memory);
                s.workers[wi].burst.add(
                    held,
                    chunk.key(),
                    Cost {
                        items: chunk.items.len() - flight.answered,
                        micros,
                        fuel,
                        typical: false,
                    },
                );
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
                chunk.job.add_worker_micros(micros);
                chunk.job.raise_peak_memory(peak_memory);
                // Items after those answered in parts.
                let (first, n) = (
                    chunk.first + flight.answered,
                    chunk.items.len() - flight.answered,
                );
                // Charged what it cost the pool, not only what it ran (see `Burst`).
                s.workers[wi].burst.add(
                    held,
                    chunk.key(),
                    Cost {
                        items: n,
                        micros,
                        fuel,
                        typical: true,
                    },
                );
                match answers {
                    Answers::One(outcome) => {
                        self.complete_run(&chunk.job, first, n, Slot::Done(outcome))
                    }
                    Answers::Batch(batch) => {
                        let answered = batch.len().min(n);
                        if chunk.job.complete_batch(first, answered, batch) > 0 {
                            self.callbacks.run_hooks(&chunk.job);
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
                            s.queue.requeue(chunk.split_for_retry_from(skip));
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
        if !more || s.workers[wi].burst.is_full() {
            let burst = std::mem::take(&mut s.workers[wi].burst);
            for (key, cost) in burst.settle() {
                s.queue.charge(key, cost);
            }
        }
        if !more {
            self.dispatch(&mut s);
        }
        if s.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// The next answers of batch call `id`, before its last: they are recorded now, and
    /// the call stays in flight for the rest.
    pub(super) fn part_of_call(&self, pid: u32, id: u64, answers: BatchAnswers) {
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
            self.callbacks.run_hooks(&chunk.job);
        }
        flight.answered += answered;
    }

    /// Records one outcome for `n` items in one go, and runs the job's hooks if that
    /// finished it.
    fn complete_run(&self, job: &Arc<Job>, first: usize, n: usize, slot: Slot) {
        if job.complete_run(first, n, slot) > 0 {
            self.callbacks.run_hooks(job);
        }
    }

    pub(super) fn abort_chunk(&self, chunk: Chunk, slot: &Slot) {
        let n = chunk.items.len();
        self.complete_run(&chunk.job, chunk.first, n, slot.clone());
    }

    /// A worker died running `chunk`: retry it, fail it, or, past the restart limit, fail
    /// it and every queued chunk of its task, so a task that kills every worker it meets
    /// cannot make the pool start worker after worker.
    pub(super) fn lose_chunk(
        &self,
        s: &mut SchedulerState,
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
            let stopped = s.queue.remove(&mut |c| c.job.task == task);
            let slot = Slot::RestartLimit(losses);
            for chunk in stopped {
                self.abort_chunk(chunk, &slot);
            }
        } else if chunk.attempt < chunk.job.opts.retries {
            s.queue.requeue(chunk.split_for_retry());
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

    pub(super) fn break_pool(&self, s: &mut SchedulerState, message: String) {
        s.broken = Some(message.clone());
        let slot = Slot::Aborted(message);
        for chunk in s.queue.take_all() {
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
        for chunk in s.queue.take_all() {
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
        // A callback that joins its own pool would wait for itself: on the callback thread,
        // this does not wait.
        self.callbacks.wait_all_run();
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
    pub(super) fn wait<'a>(
        &self,
        mut s: MutexGuard<'a, SchedulerState>,
    ) -> MutexGuard<'a, SchedulerState> {
        s.waiters += 1;
        let mut s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        s.waiters -= 1;
        s
    }

    /// Removes `job`'s queued (not yet started) chunks, or every queued chunk when `job` is
    /// `None`, failing their items as cancelled; returns how many items were cancelled.
    pub fn cancel_queued(&self, job: Option<&Arc<Job>>) -> usize {
        let mut s = self.lock();
        let cancelled = s
            .queue
            .remove(&mut |c| job.is_none_or(|j| Arc::ptr_eq(j, &c.job)));
        let slot = Slot::Cancelled;
        let mut n = 0;
        for chunk in cancelled {
            n += chunk.items.len();
            self.abort_chunk(chunk, &slot);
        }
        self.changed.notify_all();
        n
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.callbacks.stop();
    }
}

/// Queues a newly submitted chunk, with what it is expected to cost.
fn queue(s: &mut SchedulerState, chunk: Chunk, micros: Option<u64>) {
    let hint = CostHint {
        items: chunk.items.len(),
        bytes: chunk.items.data.len(),
        micros,
    };
    s.queue.push(chunk.key(), hint, chunk);
}

/// The answers read from one worker since it last went quiet, charged together once its
/// buffered answers are all handled.
///
/// A task costs the pool more than its run time in the worker: the worker's reading of the
/// call and writing of the answer between calls, which for tiny tasks is most of it (a flood
/// charged only its ~1 µs run time a task would take turns of thousands of tasks). The wall
/// time the worker was held, from answer to answer, shows it; but a worker writes its
/// answers when it runs out of work, so they come in bursts, and the first answer of a burst
/// carries the time of every call in it, whoever's. So a burst's time is shared out: each
/// chunk pays its own run time and an equal share of what the burst spent beyond the run
/// times.
#[derive(Debug, Default)]
pub(super) struct Burst {
    held: std::time::Duration,
    chunks: Vec<(QueueKey, Cost)>,
}

/// Answers charged together at most: a worker that never goes quiet is charged in bursts
/// of this many.
const BURST_MAX: usize = 256;

impl Burst {
    /// One more answer: the worker was held `held` since the one before.
    pub(super) fn add(&mut self, held: std::time::Duration, key: QueueKey, cost: Cost) {
        self.held = self.held.saturating_add(held);
        self.chunks.push((key, cost));
    }

    pub(super) fn is_full(&self) -> bool {
        self.chunks.len() >= BURST_MAX
    }

    /// What each chunk of the burst is charged: its run time and its share of the rest.
    pub(super) fn settle(self) -> impl Iterator<Item = (QueueKey, Cost)> {
        let held = u64::try_from(self.held.as_micros()).unwrap_or(u64::MAX);
        let ran: u64 = self.chunks.iter().map(|(_, c)| c.micros).sum();
        let share = held.saturating_sub(ran) / self.chunks.len().max(1) as u64;
        self.chunks.into_iter().map(move |(key, cost)| {
            (
                key,
                Cost {
                    micros: cost.micros.saturating_add(share),
                    ..cost
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cost(micros: u64) -> Cost {
        Cost {
            items: 1,
            micros,
            fuel: None,
            typical: true,
        }
    }

    #[test]
    fn a_burst_charges_each_chunk_its_run_time_and_an_equal_share_of_the_rest() {
        // A light tenant's 1 µs chunk answered first in a burst, with a heavy tenant's
        // 100 ms one behind it: the first answer carries the whole burst's time.
        let (light, heavy) = (QueueKey(1), QueueKey(2));
        let mut b = Burst::default();
        b.add(Duration::from_micros(100_060), light, cost(1));
        b.add(Duration::from_micros(0), heavy, cost(100_000));
        let charged: Vec<(QueueKey, u64)> = b.settle().map(|(k, c)| (k, c.micros)).collect();
        // 59 µs beyond the run times, shared: 29 each.
        assert_eq!(charged, [(light, 30), (heavy, 100_029)]);

        // A flood's tiny chunks: each pays its share of the time between calls.
        let mut b = Burst::default();
        b.add(Duration::from_micros(3_000), light, cost(1));
        for _ in 1..1000 {
            b.add(Duration::ZERO, light, cost(1));
        }
        let total: u64 = b.settle().map(|(_, c)| c.micros).sum();
        assert_eq!(total, 3_000);
    }
}
