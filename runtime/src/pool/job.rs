//! A job (one `apply_async`, one `map`, one `imap`) and the handles that wait on it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::items::{Item, Items};
use super::scheduler::Scheduler;
use super::tenant::Tenant;
use crate::error::{Error, Result};
use crate::module::Module;
use crate::process::outcome_error;
use crate::protocol::packed::BatchAnswers;
use crate::protocol::{Limits, Outcome};
use crate::values::decode_result;

/// How one item of a job ended.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Pending,
    Done(Outcome),
    /// The worker running it died.
    Lost {
        pid: u32,
        signal: Option<i32>,
        reason: String,
    },
    /// The pool was terminated, or could not run it (e.g. its initializer failed).
    Aborted(String),
    /// Not run (or not retried): the task took down this many workers in a row, the pool's
    /// restart limit.
    RestartLimit(u32),
    /// Cancelled before it started ([`TaskFuture::cancel`](crate::TaskFuture::cancel),
    /// [`Executor::shutdown`](crate::Executor::shutdown) with `cancel_futures`).
    Cancelled,
    /// Already handed to an iterator.
    Taken,
}

impl Slot {
    pub fn into_bytes(self, task: &str, module: &Module) -> Result<Vec<u8>> {
        match self {
            Slot::Done(Outcome::Ok(bytes)) => Ok(bytes),
            Slot::Done(other) => Err(outcome_error(task, &other, module)),
            Slot::Lost {
                pid,
                signal,
                reason,
            } => Err(Error::WorkerLost {
                pid,
                task: task.to_string(),
                signal,
                reason,
            }),
            Slot::Aborted(message) => Err(Error::State(message)),
            Slot::Cancelled => Err(Error::Cancelled {
                task: task.to_string(),
            }),
            Slot::RestartLimit(losses) => Err(Error::RestartLimit {
                task: task.to_string(),
                losses,
            }),
            Slot::Pending => Err(Error::State("not ready".into())),
            Slot::Taken => Err(Error::State("this result was already taken".into())),
        }
    }

    fn is_ok(&self) -> bool {
        matches!(self, Slot::Done(Outcome::Ok(_)))
    }
}

/// Code run on the pool's callback thread once every item of a job has finished.
pub(crate) type Completion = Box<dyn FnOnce(&Job) + Send>;

/// A completion hook, and whether the job's readiness waits for it (an `apply_async` or
/// `map_async` callback does, as in Python; a future's done callback does not).
pub(crate) struct Hook {
    pub run: Completion,
    pub gating: bool,
}

/// How a job's items are run: set per pool, overridable per submission
/// ([`Pool::with_retries`](super::Pool::with_retries), [`Pool::with_limits`](super::Pool::with_limits)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TaskOptions {
    /// How many times an item whose worker died under it is run again.
    pub retries: u32,
    /// Time and memory limits for each item.
    pub limits: Limits,
    /// Whose work it is: the queue its chunks wait in (see
    /// [`QueuePolicy`](super::queue_policy::QueuePolicy)).
    pub tenant: Tenant,
    /// Keep the output its items write with the job (see [`Pool::with_captured_output`](super::Pool::with_captured_output)).
    pub capture_output: bool,
}

/// The shared state of one job.
pub(crate) struct Job {
    pub task: Arc<str>,
    pub module: Module,
    pub opts: TaskOptions,
    state: Mutex<JobState>,
    changed: Condvar,
    /// Run on the pool's callback thread once every item has finished (see
    /// [`Job::add_hook`]).
    hooks: Mutex<Vec<Hook>>,
    /// The pool's callback thread: a wait made on it does not wait for callbacks.
    callback_thread: Option<std::thread::ThreadId>,
    /// Async tasks waiting on this job (the executor's futures and streams).
    wakers: Mutex<Vec<std::task::Waker>>,
    /// Fuel its finished items used, in a pool that meters fuel.
    fuel_used: Mutex<Option<u64>>,
    /// Set once the job is cancelled: none of its chunks is run or retried from then on.
    cancelled: std::sync::atomic::AtomicBool,
    /// Worker time its answered chunks took, in microseconds.
    worker_micros: std::sync::atomic::AtomicU64,
    /// The largest peak memory of its answered chunks' calls, in bytes.
    peak_memory: std::sync::atomic::AtomicU64,
    /// The output its items wrote, when `opts.capture_output`.
    captured: Mutex<crate::output::Captured>,
    /// When it was submitted.
    submitted: Instant,
    /// How long after `submitted` a worker was first given one of its chunks, in
    /// nanoseconds plus one (0: not yet).
    first_given: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct JobState {
    items: Items,
    done: usize,
    /// Items finished, in completion order (for `imap_unordered`), as runs of consecutive
    /// indices: a batch's items arrive together.
    arrivals: VecDeque<Range<usize>>,
    /// The first failed item, in completion order (what `map` reports, as Python does).
    first_error: Option<usize>,
    /// The least count of finished items (`done`) a waiter waits for; `None` if nobody
    /// waits.
    wake_at: Option<usize>,
    /// Gating hooks (callbacks) added and not yet run: the job is ready once every item
    /// has finished and this is 0.
    unsettled: usize,
}

/// How many items the job has (taken ones included).
fn total(s: &JobState) -> usize {
    s.items.len()
}

impl Job {
    pub fn new(
        task: Arc<str>,
        module: Module,
        opts: TaskOptions,
        items: usize,
        callback_thread: Option<std::thread::ThreadId>,
    ) -> Arc<Job> {
        Arc::new(Job {
            task,
            module,
            opts,
            state: Mutex::new(JobState {
                items: Items::new(items),
                done: 0,
                arrivals: VecDeque::new(),
                first_error: None,
                wake_at: None,
                unsettled: 0,
            }),
            changed: Condvar::new(),
            hooks: Mutex::new(Vec::new()),
            callback_thread,
            wakers: Mutex::new(Vec::new()),
            fuel_used: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            worker_micros: std::sync::atomic::AtomicU64::new(0),
            peak_memory: std::sync::atomic::AtomicU64::new(0),
            captured: Mutex::new(crate::output::Captured::default()),
            submitted: Instant::now(),
            first_given: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Records that a worker is being given one of its chunks (the first such moment is
    /// kept: what [`queue_wait`](Self::queue_wait) reports).
    pub fn mark_given(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.first_given.load(Relaxed) == 0 {
            let nanos = u64::try_from(self.submitted.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .first_given
                .compare_exchange(0, nanos.saturating_add(1), Relaxed, Relaxed);
        }
    }

    /// How long it waited, from its submission, before a worker was first given one of its
    /// chunks; `None` until then.
    pub fn queue_wait(&self) -> Option<Duration> {
        match self.first_given.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }

    /// Keeps `data`, which one of its items wrote to `stream`, when the job captures its
    /// output: at most the output limit in all (a worker stops a task past it; the bound
    /// also holds across retries).
    pub fn capture(&self, stream: crate::output::Stream, data: &[u8]) {
        if !self.opts.capture_output {
            return;
        }
        let mut c = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        let kept = (c.stdout.len() + c.stderr.len()) as u64;
        let room = self.opts.limits.output_bytes.saturating_sub(kept);
        let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let into = match stream {
            crate::output::Stream::Stdout => &mut c.stdout,
            crate::output::Stream::Stderr => &mut c.stderr,
        };
        into.extend_from_slice(&data[..take]);
    }

    /// The output kept so far (see [`Job::capture`]).
    pub fn captured(&self) -> crate::output::Captured {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds fuel its items used (recorded before their outcomes, so it is there when a
    /// waiter wakes).
    pub fn add_fuel(&self, fuel: u64) {
        let mut used = self.fuel_used.lock().unwrap_or_else(|p| p.into_inner());
        *used = Some(used.unwrap_or(0).saturating_add(fuel));
    }

    /// Fuel its finished items used so far, in a pool that meters fuel.
    pub fn fuel_used(&self) -> Option<u64> {
        *self.fuel_used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the worker time one of its chunks took (recorded before the chunk's outcomes).
    pub fn add_worker_micros(&self, micros: u64) {
        self.worker_micros
            .fetch_add(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// The worker time its answered chunks took.
    pub fn worker_time(&self) -> Duration {
        Duration::from_micros(
            self.worker_micros
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Records the peak memory of one of its chunks' calls (recorded before the chunk's
    /// outcomes).
    pub fn raise_peak_memory(&self, bytes: u64) {
        self.peak_memory
            .fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest peak memory of its answered chunks' calls, in bytes (0 before any).
    pub fn peak_memory(&self) -> u64 {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the job cancelled (see [`Job::is_cancelled`]).
    pub fn mark_cancelled(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the job was cancelled: its chunks still queued or in a worker's pipeline
    /// are dropped, not run, and one a worker was stopped under is not retried.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many items the job has.
    pub fn len(&self) -> usize {
        total(&self.lock())
    }

    /// Adds `n` more pending items (for `imap`, fed lazily); returns the first new index.
    pub fn grow(&self, n: usize) -> usize {
        self.lock().items.grow(n)
    }

    /// Forgets the items from `len` on; none of them may have been submitted.
    pub fn truncate(&self, len: usize) {
        let mut s = self.lock();
        s.items.truncate(len);
        self.wake(s, 0);
    }

    /// Records the outcome of item `index`; returns whether it was still pending.
    pub fn complete(&self, index: usize, slot: Slot) -> bool {
        self.complete_run(index, 1, slot) == 1
    }

    /// Records the same outcome for items `first..first + n` under one lock, and wakes the
    /// waiters once: a chunk of 25,000 answers costs one wake-up, not 25,000. Returns how
    /// many of them were still pending.
    pub fn complete_run(&self, first: usize, n: usize, slot: Slot) -> usize {
        let mut s = self.lock();
        let recorded = s.record(first..first.saturating_add(n), slot);
        self.wake(s, recorded)
    }

    /// Records the answers to a batch of `n` items starting at `first` (an item the worker
    /// did not answer fails). The successes keep their bytes in the batch's own buffer, not
    /// one allocation each. Returns how many items were still pending.
    pub fn complete_batch(&self, first: usize, n: usize, answers: BatchAnswers) -> usize {
        let mut s = self.lock();
        let recorded = s.record_batch(first, n, answers);
        self.wake(s, recorded)
    }

    /// Wakes whoever waits on the job, if `recorded` items finished and a waiter's count
    /// of finished items is reached; returns `recorded`.
    fn wake(&self, mut s: MutexGuard<'_, JobState>, recorded: usize) -> usize {
        let notify = s.wake_at.is_some_and(|at| s.done >= at);
        if notify {
            s.wake_at = None;
        }
        drop(s);
        if notify {
            // Only then: a notification is a system call, even with nobody waiting.
            self.changed.notify_all();
        }
        if recorded > 0 {
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
        recorded
    }

    /// Waits until `at` items have finished (or a spurious wake-up).
    fn wait_until_done<'a>(
        &self,
        mut s: MutexGuard<'a, JobState>,
        at: usize,
    ) -> MutexGuard<'a, JobState> {
        s.wake_when(at);
        self.changed.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a hook to run once every item has finished. If they all have already, the hook
    /// is handed back for the caller to run (a gating one still counts as unsettled until
    /// it has run: see [`settle`](Job::settle)).
    pub fn add_hook(&self, hook: Hook) -> Option<Hook> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        let finished = {
            let mut s = self.lock();
            if hook.gating {
                s.unsettled += 1;
            }
            s.done == total(&s)
        };
        if finished {
            return Some(hook);
        }
        hooks.push(hook);
        None
    }

    /// Takes the hooks, if every item has finished (under the hooks' lock, so that a hook
    /// added meanwhile is either taken here or handed back by `add_hook`).
    pub fn take_hooks_if_finished(&self) -> Vec<Hook> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner());
        if hooks.is_empty() || !self.finished() {
            return Vec::new();
        }
        std::mem::take(&mut *hooks)
    }

    /// Counts a gating hook as run (or dropped unrun): once none is left, the job is ready.
    pub fn settle(&self) {
        {
            let mut s = self.lock();
            s.unsettled = s.unsettled.saturating_sub(1);
        }
        self.changed.notify_all();
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    /// Wakes `waker` at the next completion of any item.
    pub fn register(&self, waker: &std::task::Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Whether item `index` can be taken without waiting: it has finished (or it was
    /// taken, or there is no such item, which taking reports).
    pub fn item_ready(&self, index: usize) -> bool {
        !matches!(self.lock().items.get(index), Some(Item::Pending))
    }

    /// Whether item `index` was cancelled.
    pub fn item_cancelled(&self, index: usize) -> bool {
        matches!(
            self.lock().items.get(index),
            Some(Item::Done(Slot::Cancelled))
        )
    }

    /// Whether item `index` finished with an error (not cancelled; taken items do not
    /// count).
    pub fn item_failed(&self, index: usize) -> bool {
        match self.lock().items.get(index) {
            Some(Item::Done(slot)) => !slot.is_ok() && !matches!(slot, Slot::Cancelled),
            _ => false,
        }
    }

    /// Whether every item has finished (its callbacks may still be to run).
    pub fn finished(&self) -> bool {
        let s = self.lock();
        s.done == total(&s)
    }

    /// Whether the job is ready: every item has finished and its callbacks have run.
    pub fn is_done(&self) -> bool {
        let s = self.lock();
        s.done == total(&s) && s.unsettled == 0
    }

    /// Whether a wait made now waits for the callbacks too: not on the pool's callback
    /// thread, where they run (it would wait for itself, or for callbacks queued behind the
    /// one running).
    fn waits_for_callbacks(&self) -> bool {
        self.callback_thread != Some(std::thread::current().id())
    }

    /// Waits until the job is ready (every item finished and, except on the callback
    /// thread, its callbacks run), or the deadline passes; returns whether it is.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        self.wait_for(deadline, self.waits_for_callbacks())
    }

    /// Waits until every item has finished, not for the callbacks, or the deadline passes;
    /// returns whether they have.
    pub fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        self.wait_for(deadline, false)
    }

    fn wait_for(&self, deadline: Option<Instant>, callbacks: bool) -> bool {
        let mut s = self.lock();
        while s.done < total(&s) || (callbacks && s.unsettled > 0) {
            let all = total(&s);
            s = match deadline {
                None => self.wait_until_done(s, all),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s.wake_when(all);
                    self.changed
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Waits for item `index` and takes its outcome (each item is taken once).
    pub fn take(&self, index: usize) -> Slot {
        let mut s = self.lock();
        loop {
            if index >= total(&s) {
                return Slot::Aborted("no such item".into());
            }
            match s.items.take(index) {
                Some(slot) => return slot,
                None => {
                    let next = s.done + 1;
                    s = self.wait_until_done(s, next)
                }
            }
        }
    }

    /// Waits for the next item to finish, in completion order, and takes it.
    pub fn take_next_arrival(&self) -> Option<(usize, Slot)> {
        let mut s = self.lock();
        loop {
            if let Some(run) = s.arrivals.front_mut() {
                let index = run.start;
                run.start += 1;
                if run.start >= run.end {
                    s.arrivals.pop_front();
                }
                // An item already taken (by `take`) is not handed out again.
                match s.items.take(index) {
                    Some(Slot::Taken) | None => continue,
                    Some(slot) => return Some((index, slot)),
                }
            }
            if s.done == total(&s) {
                return None;
            }
            let next = s.done + 1;
            s = self.wait_until_done(s, next);
        }
    }

    /// A copy of item `index`'s outcome, once finished.
    pub fn peek(&self, index: usize) -> Slot {
        self.lock().items.slot(index)
    }

    /// Every item's result, or the first error in completion order; waits for every item.
    ///
    /// Items are decoded in order as they finish, while later ones still run, so little
    /// decoding is left once the last item is in. A batch's results are decoded outside the
    /// job's lock, which the scheduler needs to record the next batch.
    pub fn decode_all<R: DeserializeOwned>(&self) -> Result<Vec<R>> {
        let mut out: Vec<R> = Vec::new();
        let mut decode_error = None;
        let mut s = self.lock();
        out.reserve(total(&s));
        loop {
            if decode_error.is_some() || s.first_error.is_some() {
                // Nothing more to decode: wait for the rest, as Python's `map` does.
                while s.done < total(&s) {
                    let all = total(&s);
                    s = self.wait_until_done(s, all);
                }
                break;
            }
            match s.items.get(out.len()) {
                None => break,
                Some(Item::Taken) => {
                    return Err(Error::State("these results were already taken".into()));
                }
                Some(Item::Pending) => {
                    // Woken when an eighth of what is left has finished (or all of it), not
                    // at every item: a map of tiny chunks would pay a wake-up per item.
                    let left = total(&s) - s.done;
                    let at = s.done + (left / 8).max(1);
                    s = self.wait_until_done(s, at);
                }
                Some(Item::Ok {
                    results,
                    index,
                    more,
                }) => {
                    // This item and the successes that follow it in the same batch,
                    // decoded unlocked.
                    let results = results.clone();
                    drop(s);
                    for i in index..=index + more {
                        match decode_result(&self.task, results.get(i).unwrap_or_default()) {
                            Ok(v) => out.push(v),
                            Err(e) => {
                                decode_error = Some(e);
                                break;
                            }
                        }
                    }
                    s = self.lock();
                }
                Some(Item::Done(slot)) => {
                    let decoded = match slot {
                        Slot::Done(Outcome::Ok(bytes)) => decode_result(&self.task, bytes),
                        other => other
                            .clone()
                            .into_bytes(&self.task, &self.module)
                            .and_then(|bytes| decode_result(&self.task, &bytes)),
                    };
                    match decoded {
                        Ok(v) => out.push(v),
                        Err(e) => decode_error = Some(e),
                    }
                }
            }
        }
        if let Some(i) = s.first_error {
            return s
                .items
                .slot(i)
                .into_bytes(&self.task, &self.module)
                .map(|_| Vec::new());
        }
        match decode_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    pub fn successful(&self) -> bool {
        self.lock().first_error.is_none()
    }
}

impl JobState {
    /// Asks to be woken once `at` items have finished.
    fn wake_when(&mut self, at: usize) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// See [`Job::complete_batch`].
    fn record_batch(&mut self, first: usize, n: usize, answers: BatchAnswers) -> usize {
        let BatchAnswers {
            results,
            mut errors,
        } = answers;
        // From the worker: in increasing order, but a broken list must not lose an item (of
        // two for one item, the later counts, as the sort is stable).
        errors.sort_by_key(|(i, _)| *i);
        let answered = results.len().min(n);
        let batch = self.items.add_batch(results);
        let no_answer = || Slot::Aborted("the worker gave no answer".into());
        let mut recorded = 0;
        // Items `next..` of the batch are still to record.
        let mut next = 0;
        let mut errors = errors.into_iter().peekable();
        while let Some((at, outcome)) = errors.next() {
            let at = at as usize;
            if at >= n {
                break;
            }
            if errors.peek().is_some_and(|(a, _)| *a as usize == at) {
                continue;
            }
            if next < at.min(answered) {
                recorded += self.record_ok(first + next..first + at.min(answered), batch, next);
            }
            if next.max(answered) < at {
                recorded += self.record(first + next.max(answered)..first + at, no_answer());
            }
            recorded += self.record(first + at..first + at + 1, Slot::Done(outcome));
            next = at + 1;
        }
        if next < answered {
            recorded += self.record_ok(first + next..first + answered, batch, next);
        }
        if next.max(answered) < n {
            recorded += self.record(first + next.max(answered)..first + n, no_answer());
        }
        self.items.drop_unused_batch();
        recorded
    }

    /// Gives the still pending items of `range` the outcome `slot`; returns how many were
    /// pending.
    fn record(&mut self, range: Range<usize>, slot: Slot) -> usize {
        let ok = slot.is_ok();
        let before = self.done;
        self.items.record(range, slot, |r| {
            note_finished(
                &mut self.done,
                &mut self.arrivals,
                &mut self.first_error,
                r,
                ok,
            )
        });
        self.done - before
    }

    /// Records the still pending items of `range` as successes, their results being items
    /// `at..` of batch `batch`; returns how many were pending.
    fn record_ok(&mut self, range: Range<usize>, batch: u64, at: usize) -> usize {
        let before = self.done;
        self.items.record_ok(range, batch, at, |r| {
            note_finished(
                &mut self.done,
                &mut self.arrivals,
                &mut self.first_error,
                r,
                true,
            )
        });
        self.done - before
    }
}

/// Counts the items of `range` as finished, in completion order, and the first of them as
/// the job's first failure if they failed and none did before.
fn note_finished(
    done: &mut usize,
    arrivals: &mut VecDeque<Range<usize>>,
    first_error: &mut Option<usize>,
    range: Range<usize>,
    ok: bool,
) {
    *done += range.len();
    if !ok && first_error.is_none() {
        *first_error = Some(range.start);
    }
    match arrivals.back_mut() {
        Some(run) if run.end == range.start => run.end = range.end,
        _ => arrivals.push_back(range),
    }
}

/// What cancels a job's work: a local pool's scheduler, or a cluster pool (which tells
/// the hosts).
pub(crate) trait CancelJobs: Send + Sync {
    /// Cancels `job` (see [`AsyncResult::cancel`]); returns how many items were cancelled.
    fn cancel_job(&self, job: &Arc<Job>) -> usize;
}

impl CancelJobs for Scheduler {
    fn cancel_job(&self, job: &Arc<Job>) -> usize {
        Scheduler::cancel_job(self, job)
    }
}

/// What cancels work not started, as Python's `Future.cancel` and `shutdown(cancel_futures)`
/// do: a local pool's scheduler (the chunks still in its queue), or a cluster pool (the
/// chunks no host has claimed). Work running, or already handed to a worker (or host), is
/// left alone.
pub(crate) trait CancelQueued: Send + Sync {
    /// Cancels the chunks of `job` (of every job, with `None`) not started, whose items
    /// fail with [`Error::Cancelled`]; returns how many items were cancelled.
    fn cancel_queued(&self, job: Option<&Arc<Job>>) -> usize;
}

impl CancelQueued for Scheduler {
    fn cancel_queued(&self, job: Option<&Arc<Job>>) -> usize {
        Scheduler::cancel_queued(self, job)
    }
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async): Python's `AsyncResult`.
///
/// `get` waits for the value; `get_timeout` gives up with [`Error::Timeout`] after a while,
/// and the work goes on (a later `get` still returns it).
///
/// With callbacks ([`Pool::apply_async_with`](crate::Pool::apply_async_with),
/// [`Pool::map_async_with`](crate::Pool::map_async_with)), the result is ready only once
/// its callback has run, as in Python: `get`, `wait` and their timed forms return, and
/// `ready` turns true, after it, so what the callback did is there to see. The callbacks
/// run on the pool's callback thread. Called on that thread (from a callback), `get` and
/// `wait` wait for the work only, not for callbacks, which could only run after the one
/// running: they return as soon as the work is done (where Python would hang), even if
/// this result's callback has not run or is the one running; `ready` stays false until it
/// has run.
pub struct AsyncResult<T> {
    job: Arc<Job>,
    finish: fn(&Job) -> Result<T>,
    /// Its pool's scheduler (or cluster pool), to cancel the work (the result does not keep
    /// the pool alive).
    scheduler: Weak<dyn CancelJobs>,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("task", &self.job.task)
            .field("ready", &self.ready())
            .finish()
    }
}

impl<T> AsyncResult<T> {
    pub(crate) fn new(
        job: Arc<Job>,
        finish: fn(&Job) -> Result<T>,
        scheduler: Weak<dyn CancelJobs>,
    ) -> Self {
        AsyncResult {
            job,
            finish,
            scheduler,
            _t: PhantomData,
        }
    }

    pub(crate) fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// Waits for the result (and its callback) and returns it, or the task's error.
    pub fn get(&self) -> Result<T> {
        // `finish` waits for the work (a `map` decodes its items as they finish); then the
        // callback, if any, is waited for.
        let result = (self.finish)(&self.job);
        self.job.wait(None);
        result
    }

    /// As [`get`](AsyncResult::get), but fails with [`Error::Timeout`] after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if !self.job.wait(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout(timeout));
        }
        (self.finish)(&self.job)
    }

    /// Waits until the result is ready (its callback, if any, has run).
    pub fn wait(&self) {
        self.job.wait(None);
    }

    /// Waits at most `timeout` for the result; returns whether it is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(Some(Instant::now() + timeout))
    }

    /// Whether the result is ready: the work is done and its callback, if any, has run.
    pub fn ready(&self) -> bool {
        self.job.is_done()
    }

    /// The fuel the work used, in a pool built with a fuel limit ([`Limits::fuel`]); `None`
    /// otherwise. For `apply_async`, the task's fuel once it is ready (all of its budget if
    /// it ran out): the same on every run for the same task and arguments. For `map_async`,
    /// the total of the items finished so far (an item whose worker died counts nothing).
    pub fn fuel_used(&self) -> Option<u64> {
        self.job.fuel_used()
    }

    /// Cancels the work (Python's `AsyncResult` has no such method; `concurrent.futures`
    /// cancels only work not started). Items still queued never run, nor do those already
    /// sent ahead into a worker's pipeline (the worker is told, and skips them); an item
    /// running is stopped: its worker writes the answers it had of other work and exits, and
    /// is replaced as after a crash, and the pool's other work goes on (a chunk of another
    /// task that was waiting in that worker's pipeline runs on another worker; nothing of it
    /// is lost or run twice). Every item not finished
    /// fails with [`Error::Cancelled`]; finished items keep their results. Returns whether
    /// anything was cancelled: false when all of it had finished already, or its pool is
    /// gone.
    ///
    /// On a cluster ([`ClusterPool`](crate::cluster::ClusterPool)) the same: chunks still
    /// in Redis are deleted and fenced (a host that claims a redelivered copy drops it, and
    /// a result that comes anyway is refused, as a late result is), and a host running one
    /// stops it within about 50 ms (it polls the fence of what it runs) as a local cancel
    /// does.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 2)?;
    /// let r = pool.apply_async::<_, u64>("sleep_ms", &(60_000u64,))?;
    /// assert!(r.cancel());
    /// assert!(matches!(r.get(), Err(wasmpool::Error::Cancelled { .. })));
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        match self.scheduler.upgrade() {
            Some(scheduler) => scheduler.cancel_job(&self.job) > 0,
            None => false,
        }
    }

    /// The time workers spent running the work so far: each answered call's run time in its
    /// worker, from the call's start to its answer (not the time it waited in the queue).
    /// For `apply_async`, the task's run time once it is ready; for `map_async`, the sum
    /// over its chunks answered so far (a chunk lost with its worker counts nothing). What
    /// fair queuing charges a tenant, and what a service can meter.
    pub fn worker_time(&self) -> Duration {
        self.job.worker_time()
    }

    /// The largest linear memory, in bytes, that a task's instance had while it ran this
    /// work (the guest's memory, all its memories together; not the host's or the worker
    /// process's): for `apply_async`, the task's call once it is ready; for `map_async`, the
    /// largest over its chunks answered so far (a chunk's items run in one call); 0 before
    /// any answered. On a cluster, what the hosts measured, carried back with each chunk's
    /// results (as are [`worker_time`](AsyncResult::worker_time) and
    /// [`fuel_used`](AsyncResult::fuel_used)).
    ///
    /// A worker reuses its instance from call to call and a wasm memory never shrinks, so
    /// this is the instance's size while the call ran, not what the call itself allocated:
    /// it counts what the init and earlier calls on that worker left, and a small task after
    /// a large one on the same worker reports the large one's size. A task that grew past
    /// its memory limit reports the size it had when the growth was refused.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 1)?;
    /// let r = pool.apply_async::<_, u64>("alloc_mib", &(40u64,))?;
    /// r.wait();
    /// assert!(r.peak_memory() >= 40 << 20);
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn peak_memory(&self) -> u64 {
        self.job.peak_memory()
    }

    /// How long the work waited in the pool's queue: from its submission until a worker
    /// was first given any of it (for `map_async`, its first chunk); `None` while all of it
    /// is still queued. It counts the wait behind other work and behind other tenants' turns
    /// ([`Pool::with_tenant`](super::Pool::with_tenant)), not the run or the result's trip
    /// back; what fair queuing bounds. A cluster pool's results report `None`.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 1)?;
    /// let r = pool.apply_async::<_, u64>("square", &(3u64,))?;
    /// r.wait();
    /// assert!(r.queue_wait().is_some());
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn queue_wait(&self) -> Option<Duration> {
        self.job.queue_wait()
    }

    /// What the work wrote to stdout and stderr, when it was submitted through a handle
    /// from [`Pool::with_captured_output`](super::Pool::with_captured_output) (empty
    /// otherwise): at most its output limit in all. For `apply_async`, the task's output
    /// (of every attempt, when its worker died and it was retried); for `map_async`, its
    /// items' together, in the order the workers wrote it.
    pub fn captured_output(&self) -> crate::output::Captured {
        self.job.captured()
    }

    /// Whether the work succeeded; an error if it is not ready yet, as in Python.
    pub fn successful(&self) -> Result<bool> {
        if !self.ready() {
            return Err(Error::State("the result is not ready".into()));
        }
        Ok(self.job.successful())
    }
}

/// Waits for a one-item job (not for its callbacks) and returns its result undecoded.
pub(crate) fn finish_one_bytes(job: &Job) -> Result<Vec<u8>> {
    job.wait_finished(None);
    job.peek(0).into_bytes(&job.task, &job.module)
}

/// Waits for a one-item job (not for its callbacks) and decodes its result.
pub(crate) fn finish_one<R: DeserializeOwned>(job: &Job) -> Result<R> {
    job.wait_finished(None);
    let bytes = job.peek(0).into_bytes(&job.task, &job.module)?;
    decode_result(&job.task, &bytes)
}

/// Waits for every item of a job, decoding them as they finish.
pub(crate) fn finish_all<R: DeserializeOwned>(job: &Job) -> Result<Vec<R>> {
    job.decode_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: usize) -> JobState {
        JobState {
            items: Items::new(n),
            done: 0,
            arrivals: VecDeque::new(),
            first_error: None,
            wake_at: None,
            unsettled: 0,
        }
    }

    fn answers(results: &[&[u8]], errors: Vec<(u32, Outcome)>) -> BatchAnswers {
        BatchAnswers {
            results: results.iter().map(|r| r.to_vec()).collect(),
            errors,
        }
    }

    fn ok_bytes(slot: Slot) -> Vec<u8> {
        match slot {
            Slot::Done(Outcome::Ok(bytes)) => bytes,
            other => panic!("expected a success, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_keeps_each_items_outcome_whatever_order_the_errors_come_in() {
        let mut s = pending(6);
        // Items 1..6: five of them, errors listed out of order, and only four answers.
        let batch = answers(
            &[b"a", b"", b"c", b""],
            vec![
                (3, Outcome::Failed("three".into())),
                (1, Outcome::Failed("one".into())),
            ],
        );
        assert_eq!(s.record_batch(1, 5, batch), 5);
        assert_eq!(s.done, 5);
        assert_eq!(ok_bytes(s.items.slot(1)), b"a");
        assert!(matches!(s.items.slot(2), Slot::Done(Outcome::Failed(m)) if m == "one"));
        assert_eq!(ok_bytes(s.items.slot(3)), b"c");
        assert!(matches!(s.items.slot(4), Slot::Done(Outcome::Failed(m)) if m == "three"));
        assert!(matches!(s.items.slot(5), Slot::Aborted(m) if m.contains("no answer")));
        assert!(matches!(s.items.slot(0), Slot::Pending));
        // The first failure in completion order is item 2.
        assert_eq!(s.first_error, Some(2));
        // An item already finished is not overwritten by a late batch.
        assert_eq!(s.record_batch(0, 2, answers(&[b"x", b"y"], vec![])), 1);
        assert!(matches!(s.items.slot(1), Slot::Done(Outcome::Ok(b)) if b == b"a"));
        assert_eq!(ok_bytes(s.items.slot(0)), b"x");
    }

    #[test]
    fn of_two_errors_for_one_item_the_later_counts_and_stray_ones_are_ignored() {
        let mut s = pending(3);
        let batch = answers(
            &[b"a", b"b", b"c"],
            vec![
                (1, Outcome::Failed("first".into())),
                (7, Outcome::Failed("past the end".into())),
                (1, Outcome::Failed("second".into())),
            ],
        );
        assert_eq!(s.record_batch(0, 3, batch), 3);
        assert_eq!(ok_bytes(s.items.slot(0)), b"a");
        assert!(matches!(s.items.slot(1), Slot::Done(Outcome::Failed(m)) if m == "second"));
        assert_eq!(ok_bytes(s.items.slot(2)), b"c");
    }

    #[test]
    fn a_whole_batch_of_successes_is_one_segment() {
        let mut s = pending(200_000);
        let results: Vec<Vec<u8>> = (0..25_000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        let refs: Vec<&[u8]> = results.iter().map(|r| r.as_slice()).collect();
        assert_eq!(
            s.record_batch(25_000, 25_000, answers(&refs, vec![])),
            25_000
        );
        // Pending before, the batch, pending after.
        assert_eq!(s.items.segment_count(), 3);
        assert_eq!(ok_bytes(s.items.slot(25_000 + 1234)), 1234u32.to_le_bytes());
        assert_eq!(s.arrivals.iter().collect::<Vec<_>>(), [&(25_000..50_000)]);
    }

    #[test]
    fn taking_every_item_of_a_batch_frees_its_buffer() {
        let mut s = pending(4);
        s.record_batch(0, 2, answers(&[b"0", b"1"], vec![]));
        s.record_batch(2, 2, answers(&[b"2", b"3"], vec![]));
        assert_eq!(s.items.batch_count(), 2);
        assert_eq!(s.items.take(0).map(ok_bytes), Some(b"0".to_vec()));
        assert_eq!(
            s.items.batch_count(),
            2,
            "item 1 still needs the first buffer"
        );
        // Taken out of order: the second buffer is freed at once, forgotten with the first.
        assert_eq!(s.items.take(3).map(ok_bytes), Some(b"3".to_vec()));
        assert_eq!(s.items.take(2).map(ok_bytes), Some(b"2".to_vec()));
        assert_eq!(s.items.batch_count(), 2);
        assert!(matches!(s.items.take(2), Some(Slot::Taken)));
        assert_eq!(s.items.take(1).map(ok_bytes), Some(b"1".to_vec()));
        assert_eq!(s.items.batch_count(), 0);
        assert_eq!(s.items.segment_count(), 0);
        assert_eq!(s.items.base(), 4);
    }

    #[test]
    fn items_taken_out_of_order_do_not_pile_up_as_segments() {
        let mut s = pending(100);
        let results: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i]).collect();
        let refs: Vec<&[u8]> = results.iter().map(|r| r.as_slice()).collect();
        s.record_batch(0, 100, answers(&refs, vec![]));
        // Every item but the first, from the back: one taken segment after the first item.
        for i in (1..100).rev() {
            assert_eq!(s.items.take(i).map(ok_bytes), Some(vec![i as u8]));
        }
        assert_eq!(s.items.segment_count(), 2);
        assert_eq!(s.items.take(0).map(ok_bytes), Some(vec![0]));
        assert_eq!(s.items.segment_count(), 0);
    }

    #[test]
    fn a_pending_item_is_not_taken() {
        let mut s = pending(2);
        assert!(s.items.take(1).is_none());
        assert_eq!(s.record(1..2, Slot::Aborted("x".into())), 1);
        assert!(matches!(s.items.take(1), Some(Slot::Aborted(m)) if m == "x"));
        assert!(s.items.take(0).is_none());
    }

    #[test]
    fn growing_and_truncating_keep_the_pending_tail() {
        let mut s = pending(2);
        assert_eq!(s.items.grow(3), 2);
        assert_eq!(s.items.len(), 5);
        assert_eq!(s.record(1..4, Slot::Aborted("x".into())), 3);
        s.items.truncate(4);
        assert_eq!(s.items.len(), 4);
        assert!(matches!(s.items.slot(3), Slot::Aborted(_)));
        assert!(s.items.get(4).is_none());
        assert_eq!(s.items.grow(1), 4);
        assert!(matches!(s.items.slot(4), Slot::Pending));
    }

    #[test]
    fn arrivals_keep_completion_order_in_runs() {
        let mut s = pending(6);
        s.record_batch(3, 3, answers(&[b"", b"", b""], vec![]));
        assert_eq!(s.record(0..1, Slot::Aborted("x".into())), 1);
        assert_eq!(s.record(1..2, Slot::Aborted("y".into())), 1);
        assert_eq!(s.arrivals, [3..6, 0..2]);
    }
}
