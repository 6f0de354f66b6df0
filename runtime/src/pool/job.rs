//! A job (one `apply_async`, one `map`, one `imap`) and the handles that wait on it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::module::Module;
use crate::packed::Packed;
use crate::process::outcome_error;
use crate::protocol::{Limits, Outcome};
use crate::values::decode_result;

/// How one item of a job ended.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Pending,
    Done(Outcome),
    /// A success whose encoded result is item `.1` of a batch's shared result buffer (no
    /// copy per item).
    Ok(Arc<Packed>, u32),
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
    /// Already handed to an iterator.
    Taken,
}

impl Slot {
    pub fn into_bytes(self, task: &str, module: &Module) -> Result<Vec<u8>> {
        match self {
            Slot::Done(Outcome::Ok(bytes)) => Ok(bytes),
            Slot::Ok(results, i) => Ok(results.get(i as usize).unwrap_or_default().to_vec()),
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
            Slot::RestartLimit(losses) => Err(Error::RestartLimit {
                task: task.to_string(),
                losses,
            }),
            Slot::Pending => Err(Error::State("not ready".into())),
            Slot::Taken => Err(Error::State("this result was already taken".into())),
        }
    }

    fn is_ok(&self) -> bool {
        matches!(self, Slot::Done(Outcome::Ok(_)) | Slot::Ok(..))
    }
}

pub(crate) type Completion = Box<dyn FnOnce(&Job, usize) + Send>;

/// How a job's items are run: set per pool, overridable per submission
/// ([`Pool::with_retries`](super::Pool::with_retries), [`Pool::with_limits`](super::Pool::with_limits)).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TaskOptions {
    /// How many times an item whose worker died under it is run again.
    pub retries: u32,
    /// Time and memory limits for each item.
    pub limits: Limits,
}

/// The shared state of one job.
pub(crate) struct Job {
    pub task: Arc<str>,
    pub module: Module,
    pub opts: TaskOptions,
    state: Mutex<JobState>,
    changed: Condvar,
    /// Run on the pool's callback thread, in completion order, once per finished item.
    pub on_complete: Mutex<Option<Completion>>,
    /// Async tasks waiting on this job (the executor's futures and streams).
    wakers: Mutex<Vec<std::task::Waker>>,
    /// Fuel its finished items used, in a pool that meters fuel.
    fuel_used: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("task", &self.task)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct JobState {
    /// Items `base..base + slots.len()`; items before `base` were taken by an iterator and
    /// forgotten, so an endless `imap` keeps only a window of slots.
    base: usize,
    slots: VecDeque<Slot>,
    done: usize,
    /// Items finished, in completion order (for `imap_unordered`).
    arrivals: VecDeque<usize>,
    /// The first failed item, in completion order (what `map` reports, as Python does).
    first_error: Option<usize>,
}

impl Job {
    pub fn new(task: Arc<str>, module: Module, opts: TaskOptions, items: usize) -> Arc<Job> {
        Arc::new(Job {
            task,
            module,
            opts,
            state: Mutex::new(JobState {
                slots: std::iter::repeat_n(Slot::Pending, items).collect(),
                ..JobState::default()
            }),
            changed: Condvar::new(),
            on_complete: Mutex::new(None),
            wakers: Mutex::new(Vec::new()),
            fuel_used: Mutex::new(None),
        })
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

    /// Adds `n` more pending items (for `imap`, fed lazily); returns the first new index.
    pub fn grow(&self, n: usize) -> usize {
        let mut s = self.lock();
        let first = s.base + s.slots.len();
        s.slots.extend(std::iter::repeat_n(Slot::Pending, n));
        first
    }

    /// Records the outcome of item `index`; returns whether it was still pending.
    pub fn complete(&self, index: usize, slot: Slot) -> bool {
        self.complete_run(index, std::iter::once(slot)) == 1
    }

    /// Records the outcomes of items `first`, `first + 1`, … under one lock, and wakes the
    /// waiters once: a chunk of 25,000 answers costs one wake-up, not 25,000. Returns how
    /// many of them were still pending.
    pub fn complete_run(&self, first: usize, slots: impl IntoIterator<Item = Slot>) -> usize {
        let mut s = self.lock();
        let mut recorded = 0;
        for (i, slot) in slots.into_iter().enumerate() {
            let index = first + i;
            let Some(at) = index.checked_sub(s.base) else {
                continue;
            };
            if let Some(existing @ Slot::Pending) = s.slots.get_mut(at) {
                let ok = slot.is_ok();
                *existing = slot;
                s.done += 1;
                s.arrivals.push_back(index);
                if !ok && s.first_error.is_none() {
                    s.first_error = Some(index);
                }
                recorded += 1;
            }
        }
        drop(s);
        if recorded > 0 {
            self.changed.notify_all();
            let wakers =
                std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
            for w in wakers {
                w.wake();
            }
        }
        recorded
    }

    /// Whether a completion hook (a callback) is still to run.
    pub fn has_hook(&self) -> bool {
        self.on_complete.lock().map_or(true, |h| h.is_some())
    }

    /// Wakes `waker` at the next completion of any item.
    pub fn register(&self, waker: &std::task::Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Whether item `index` has finished (and not been taken).
    pub fn item_ready(&self, index: usize) -> bool {
        let s = self.lock();
        index
            .checked_sub(s.base)
            .and_then(|at| s.slots.get(at))
            .is_some_and(|slot| !matches!(slot, Slot::Pending))
    }

    pub fn is_done(&self) -> bool {
        let s = self.lock();
        s.done == s.base + s.slots.len()
    }

    /// Waits until every item is finished, or the deadline passes; returns whether done.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut s = self.lock();
        while s.done < s.base + s.slots.len() {
            s = match deadline {
                None => self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
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
            let Some(at) = index.checked_sub(s.base) else {
                return Slot::Taken;
            };
            match s.slots.get(at) {
                None => return Slot::Aborted("no such item".into()),
                Some(Slot::Pending) => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(_) => return take_at(&mut s, at),
            }
        }
    }

    /// Waits for the next item to finish, in completion order, and takes it.
    pub fn take_next_arrival(&self) -> Option<(usize, Slot)> {
        let mut s = self.lock();
        loop {
            if let Some(index) = s.arrivals.pop_front() {
                let Some(at) = index.checked_sub(s.base) else {
                    continue;
                };
                return Some((index, take_at(&mut s, at)));
            }
            if s.done == s.base + s.slots.len() {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A copy of item `index`'s outcome, once finished.
    pub fn peek(&self, index: usize) -> Slot {
        let s = self.lock();
        index
            .checked_sub(s.base)
            .and_then(|at| s.slots.get(at).cloned())
            .unwrap_or(Slot::Taken)
    }

    /// Every item's result, decoded in place, or the first error in completion order.
    pub fn decode_all<R: DeserializeOwned>(&self) -> Result<Vec<R>> {
        let s = self.lock();
        if let Some(slot) = s
            .first_error
            .and_then(|i| i.checked_sub(s.base))
            .and_then(|at| s.slots.get(at))
        {
            return slot
                .clone()
                .into_bytes(&self.task, &self.module)
                .map(|_| Vec::new());
        }
        s.slots
            .iter()
            .map(|slot| match slot {
                Slot::Done(Outcome::Ok(bytes)) => decode_result(&self.task, bytes),
                Slot::Ok(results, i) => {
                    decode_result(&self.task, results.get(*i as usize).unwrap_or_default())
                }
                other => other
                    .clone()
                    .into_bytes(&self.task, &self.module)
                    .and_then(|bytes| decode_result(&self.task, &bytes)),
            })
            .collect()
    }

    pub fn successful(&self) -> bool {
        self.lock().first_error.is_none()
    }
}

/// Takes the slot at position `at` and forgets the taken slots at the front of the window.
fn take_at(s: &mut JobState, at: usize) -> Slot {
    let slot = std::mem::replace(&mut s.slots[at], Slot::Taken);
    while matches!(s.slots.front(), Some(Slot::Taken)) {
        s.slots.pop_front();
        s.base += 1;
    }
    slot
}

/// The result of [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async): Python's `AsyncResult`.
///
/// `get` waits for the value; `get_timeout` gives up with [`Error::Timeout`] after a while,
/// and the work goes on (a later `get` still returns it).
pub struct AsyncResult<T> {
    job: Arc<Job>,
    finish: fn(&Job) -> Result<T>,
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
    pub(crate) fn new(job: Arc<Job>, finish: fn(&Job) -> Result<T>) -> Self {
        AsyncResult {
            job,
            finish,
            _t: PhantomData,
        }
    }

    /// Waits for the result and returns it (or the task's error).
    pub fn get(&self) -> Result<T> {
        self.job.wait(None);
        (self.finish)(&self.job)
    }

    /// As [`get`](AsyncResult::get), but fails with [`Error::Timeout`] after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        if !self.job.wait(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout(timeout));
        }
        (self.finish)(&self.job)
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        self.job.wait(None);
    }

    /// Waits at most `timeout` for the result; returns whether it is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait(Some(Instant::now() + timeout))
    }

    /// Whether the result is ready.
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

    /// Whether the work succeeded; an error if it is not ready yet, as in Python.
    pub fn successful(&self) -> Result<bool> {
        if !self.ready() {
            return Err(Error::State("the result is not ready".into()));
        }
        Ok(self.job.successful())
    }
}

pub(crate) fn finish_one<R: DeserializeOwned>(job: &Job) -> Result<R> {
    let bytes = job.peek(0).into_bytes(&job.task, &job.module)?;
    decode_result(&job.task, &bytes)
}

pub(crate) fn finish_all<R: DeserializeOwned>(job: &Job) -> Result<Vec<R>> {
    job.decode_all()
}
