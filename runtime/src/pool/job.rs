//! A job (one `apply_async`, one `map`, one `imap`) and the handles that wait on it.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::module::Module;
use crate::packed::{BatchAnswers, Packed};
use crate::process::outcome_error;
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

/// How one item of a job is stored: 16 bytes, so a `map` of 200k items costs little to
/// set up, fill and drop.
#[derive(Debug, Clone)]
enum Entry {
    Pending,
    /// A success: item `index` of run `run`'s result buffer (see [`JobState::runs`]).
    Ok {
        run: u64,
        index: u32,
    },
    /// Any other outcome.
    Done(Box<Slot>),
    /// Already handed to an iterator.
    Taken,
}

/// The result buffer of one batch, shared by its successful items.
#[derive(Debug, Default)]
struct Run {
    results: Arc<Packed>,
    /// Its items not yet taken; the buffer is freed when none is left.
    live: u32,
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
    slots: VecDeque<Entry>,
    /// Result buffers of batches: run `runs_base + i` is `runs[i]`. Runs whose items were
    /// all taken are freed, and forgotten once at the front.
    runs: VecDeque<Run>,
    runs_base: u64,
    done: usize,
    /// Items finished, in completion order (for `imap_unordered`), as runs of consecutive
    /// indices: a batch's items arrive together.
    arrivals: VecDeque<Range<usize>>,
    /// The first failed item, in completion order (what `map` reports, as Python does).
    first_error: Option<usize>,
    /// The least count of finished items (`done`) a waiter waits for; `None` if nobody
    /// waits.
    wake_at: Option<usize>,
}

/// How many items the job has (taken ones included).
fn total(s: &JobState) -> usize {
    s.base + s.slots.len()
}

impl Job {
    pub fn new(task: Arc<str>, module: Module, opts: TaskOptions, items: usize) -> Arc<Job> {
        Arc::new(Job {
            task,
            module,
            opts,
            state: Mutex::new(JobState {
                // Made, not cloned: `repeat_n` would clone (and match on) each entry.
                slots: (0..items).map(|_| Entry::Pending).collect(),
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
        s.slots.extend((0..n).map(|_| Entry::Pending));
        first
    }

    /// Forgets the items from `len` on; none of them may have been submitted.
    pub fn truncate(&self, len: usize) {
        let mut s = self.lock();
        if let Some(at) = len.checked_sub(s.base) {
            s.slots.truncate(at);
        }
        self.wake(s, 0);
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
            let ok = slot.is_ok();
            if s.record(first + i, ok, || Entry::Done(Box::new(slot))) {
                recorded += 1;
            }
        }
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

    /// Whether a completion hook (a callback) is still to run.
    pub fn has_hook(&self) -> bool {
        self.on_complete.lock().map_or(true, |h| h.is_some())
    }

    /// Takes the completion hook, if it is still to run.
    pub fn take_hook(&self) -> Option<Completion> {
        self.on_complete.lock().ok().and_then(|mut h| h.take())
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
            .is_some_and(|entry| !matches!(entry, Entry::Pending))
    }

    pub fn is_done(&self) -> bool {
        let s = self.lock();
        s.done == s.base + s.slots.len()
    }

    /// Waits until every item is finished, or the deadline passes; returns whether done.
    pub fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut s = self.lock();
        while s.done < total(&s) {
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
            let Some(at) = index.checked_sub(s.base) else {
                return Slot::Taken;
            };
            match s.slots.get(at) {
                None => return Slot::Aborted("no such item".into()),
                Some(Entry::Pending) => {
                    let next = s.done + 1;
                    s = self.wait_until_done(s, next)
                }
                Some(_) => return s.take_at(at),
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
                let Some(at) = index.checked_sub(s.base) else {
                    continue;
                };
                return Some((index, s.take_at(at)));
            }
            if s.done == s.base + s.slots.len() {
                return None;
            }
            let next = s.done + 1;
            s = self.wait_until_done(s, next);
        }
    }

    /// A copy of item `index`'s outcome, once finished.
    pub fn peek(&self, index: usize) -> Slot {
        let s = self.lock();
        index
            .checked_sub(s.base)
            .and_then(|at| s.slots.get(at))
            .map_or(Slot::Taken, |entry| s.resolve(entry))
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
        out.reserve(s.slots.len());
        loop {
            if decode_error.is_some() || s.first_error.is_some() {
                // Nothing more to decode: wait for the rest, as Python's `map` does.
                while s.done < total(&s) {
                    let all = total(&s);
                    s = self.wait_until_done(s, all);
                }
                break;
            }
            let Some(at) = out.len().checked_sub(s.base) else {
                return Err(Error::State("these results were already taken".into()));
            };
            match s.slots.get(at) {
                None => break,
                Some(Entry::Pending) => {
                    // Woken when an eighth of what is left has finished (or all of it), not
                    // at every item: a map of tiny chunks would pay a wake-up per item.
                    let left = total(&s) - s.done;
                    let at = s.done + (left / 8).max(1);
                    s = self.wait_until_done(s, at);
                }
                Some(&Entry::Ok { run, index }) => {
                    // The finished items of this run from here on, decoded unlocked.
                    let len = s
                        .slots
                        .range(at..)
                        .zip(index..)
                        .take_while(|(e, i)| matches!(e, Entry::Ok { run: r, index: j } if *r == run && j == i))
                        .count();
                    let results = s.run(run).map(|r| r.results.clone()).unwrap_or_default();
                    drop(s);
                    for i in index as usize..index as usize + len {
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
                Some(other) => {
                    let decoded = s
                        .resolve(other)
                        .into_bytes(&self.task, &self.module)
                        .and_then(|bytes| decode_result(&self.task, &bytes));
                    match decoded {
                        Ok(v) => out.push(v),
                        Err(e) => decode_error = Some(e),
                    }
                }
            }
        }
        if let Some(entry) = s
            .first_error
            .and_then(|i| i.checked_sub(s.base))
            .and_then(|at| s.slots.get(at))
        {
            return s
                .resolve(entry)
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
        // From the worker: in increasing order, but a broken list must not lose an item.
        errors.sort_by_key(|(i, _)| *i);
        let mut errors = errors.into_iter().peekable();
        let answered = results.len();
        let run = self.runs_base + self.runs.len() as u64;
        let mut live = 0u32;
        let mut recorded = 0;
        for i in 0..n {
            let mut failed = None;
            while let Some((at, outcome)) = errors.next_if(|(at, _)| *at as usize <= i) {
                if at as usize == i {
                    failed = Some(outcome);
                }
            }
            let entry = match failed {
                Some(outcome) => Entry::Done(Box::new(Slot::Done(outcome))),
                None if i < answered => Entry::Ok {
                    run,
                    index: i as u32,
                },
                None => Entry::Done(Box::new(Slot::Aborted("the worker gave no answer".into()))),
            };
            let ok = matches!(entry, Entry::Ok { .. });
            if self.record(first + i, ok, || entry) {
                recorded += 1;
                live += u32::from(ok);
            }
        }
        if live > 0 {
            self.runs.push_back(Run {
                results: Arc::new(results),
                live,
            });
        }
        recorded
    }

    /// Stores item `index`'s outcome (made by `entry`) if it is still pending; returns
    /// whether it was.
    fn record(&mut self, index: usize, ok: bool, entry: impl FnOnce() -> Entry) -> bool {
        let Some(at) = index.checked_sub(self.base) else {
            return false;
        };
        let Some(existing @ Entry::Pending) = self.slots.get_mut(at) else {
            return false;
        };
        *existing = entry();
        self.done += 1;
        match self.arrivals.back_mut() {
            Some(run) if run.end == index => run.end += 1,
            _ => self.arrivals.push_back(index..index + 1),
        }
        if !ok && self.first_error.is_none() {
            self.first_error = Some(index);
        }
        true
    }

    /// The encoded result of item `index` of run `run`.
    fn result(&self, run: u64, index: u32) -> Option<&[u8]> {
        self.run(run)?.results.get(index as usize)
    }

    fn run(&self, run: u64) -> Option<&Run> {
        let at = usize::try_from(run.checked_sub(self.runs_base)?).ok()?;
        self.runs.get(at)
    }

    /// A copy of an entry's outcome.
    fn resolve(&self, entry: &Entry) -> Slot {
        match entry {
            Entry::Pending => Slot::Pending,
            Entry::Ok { run, index } => Slot::Done(Outcome::Ok(
                self.result(*run, *index).unwrap_or_default().to_vec(),
            )),
            Entry::Done(slot) => (**slot).clone(),
            Entry::Taken => Slot::Taken,
        }
    }

    /// Takes the outcome at position `at`, and forgets the taken items at the front of the
    /// window and the result buffers no item needs any more.
    fn take_at(&mut self, at: usize) -> Slot {
        let Some(entry) = self.slots.get_mut(at) else {
            return Slot::Taken;
        };
        let entry = std::mem::replace(entry, Entry::Taken);
        let slot = self.resolve(&entry);
        if let Entry::Ok { run, .. } = entry
            && let Some(r) = run
                .checked_sub(self.runs_base)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.runs.get_mut(i))
        {
            r.live = r.live.saturating_sub(1);
            if r.live == 0 {
                r.results = Arc::default();
            }
        }
        while self.runs.front().is_some_and(|r| r.live == 0) {
            self.runs.pop_front();
            self.runs_base += 1;
        }
        while matches!(self.slots.front(), Some(Entry::Taken)) {
            self.slots.pop_front();
            self.base += 1;
        }
        slot
    }
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
        // `finish` waits (a `map` decodes its items as they finish).
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

/// Waits for a one-item job and decodes its result.
pub(crate) fn finish_one<R: DeserializeOwned>(job: &Job) -> Result<R> {
    job.wait(None);
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
            slots: (0..n).map(|_| Entry::Pending).collect(),
            ..JobState::default()
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
        assert_eq!(ok_bytes(s.resolve(&s.slots[1])), b"a");
        assert!(matches!(s.resolve(&s.slots[2]), Slot::Done(Outcome::Failed(m)) if m == "one"));
        assert_eq!(ok_bytes(s.resolve(&s.slots[3])), b"c");
        assert!(matches!(s.resolve(&s.slots[4]), Slot::Done(Outcome::Failed(m)) if m == "three"));
        assert!(matches!(s.resolve(&s.slots[5]), Slot::Aborted(m) if m.contains("no answer")));
        assert!(matches!(s.slots[0], Entry::Pending));
        // The first failure in completion order is item 2.
        assert_eq!(s.first_error, Some(2));
        // An item already finished is not overwritten by a late batch.
        assert_eq!(s.record_batch(0, 2, answers(&[b"x", b"y"], vec![])), 1);
        assert!(matches!(s.resolve(&s.slots[1]), Slot::Done(Outcome::Ok(b)) if b == b"a"));
    }

    #[test]
    fn taking_every_item_of_a_batch_frees_its_buffer() {
        let mut s = pending(4);
        s.record_batch(0, 2, answers(&[b"0", b"1"], vec![]));
        s.record_batch(2, 2, answers(&[b"2", b"3"], vec![]));
        assert_eq!(s.runs.len(), 2);
        assert_eq!(ok_bytes(s.take_at(0)), b"0");
        assert_eq!(s.runs.len(), 2, "item 1 still needs the first buffer");
        // Taken out of order: the second buffer is freed at once, forgotten with the first.
        assert_eq!(ok_bytes(s.take_at(3 - s.base)), b"3");
        assert_eq!(ok_bytes(s.take_at(2 - s.base)), b"2");
        assert!(s.runs[1].results.is_empty());
        assert_eq!(s.runs.len(), 2);
        assert_eq!(ok_bytes(s.take_at(1 - s.base)), b"1");
        assert!(s.runs.is_empty());
        assert_eq!(s.runs_base, 2);
        assert!(s.slots.is_empty());
        assert_eq!(s.base, 4);
    }

    #[test]
    fn arrivals_keep_completion_order_in_runs() {
        let mut s = pending(6);
        s.record_batch(3, 3, answers(&[b"", b"", b""], vec![]));
        assert!(s.record(0, true, || Entry::Done(Box::new(Slot::Aborted("x".into())))));
        assert!(s.record(1, true, || Entry::Done(Box::new(Slot::Aborted("y".into())))));
        assert_eq!(s.arrivals, [3..6, 0..2]);
    }
}
