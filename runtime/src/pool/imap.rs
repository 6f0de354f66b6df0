//! `imap` / `imap_unordered`: lazy iteration with bounded memory.

use std::marker::PhantomData;
use std::sync::{Arc, mpsc};
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::chunk::SendAs;
use super::job::{Job, Slot};
use super::{Pool, decode_slot};
use crate::error::{Error, Result};
use crate::protocol::Outcome;
use crate::protocol::packed::Packed;

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`]: one `Result` per
/// item. Items are drawn from the input only while fewer than a few chunks per worker are
/// in flight or waiting to be read, so memory stays bounded whatever the input's length
/// and however slowly results are consumed.
///
/// [`next_timeout`](Imap::next_timeout) is Python's `it.next(timeout)`: it gives up with
/// [`Error::Timeout`] when the next result is not in within the time, and the iteration
/// goes on (the result comes with a later call).
pub struct Imap<'a, R> {
    pool: &'a dyn ImapSink,
    job: Arc<Job>,
    input: Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a>,
    chunksize: usize,
    window: usize,
    ordered: bool,
    exhausted: bool,
    submitted: usize,
    consumed: usize,
    /// Wakes this (the iterating) thread when an item finishes, for `next_timeout` in
    /// input order; made at its first use.
    waker: Option<Waker>,
    /// Takes the next arrival for `next_timeout` in completion order (a wait that can
    /// give up), on a thread of its own; started at its first use.
    taker: Option<Taker>,
    _r: PhantomData<fn() -> R>,
}

/// Where an [`Imap`] sends its chunks: a local [`Pool`], or a cluster's
/// ([`ClusterPool`](crate::cluster::ClusterPool)).
pub(crate) trait ImapSink {
    /// How many workers take the chunks (sets how far ahead the input is drawn).
    fn slots(&self) -> usize;

    /// What cancels its jobs: a pool's scheduler, or a cluster pool.
    fn scheduler(&self) -> std::sync::Weak<dyn super::job::CancelJobs>;

    /// Submits items `first..first + part.len()` of `job` as one chunk.
    fn submit_part(&self, job: &Arc<Job>, first: usize, part: Packed) -> Result<()>;
}

impl ImapSink for Pool {
    fn slots(&self) -> usize {
        self.processes()
    }

    fn submit_part(&self, job: &Arc<Job>, first: usize, part: Packed) -> Result<()> {
        self.submit(job, first, [part], SendAs::Batch)
    }

    fn scheduler(&self) -> std::sync::Weak<dyn super::job::CancelJobs> {
        let weak: std::sync::Weak<super::scheduler::Scheduler> = Arc::downgrade(&self.scheduler);
        weak
    }
}

/// Cancels an [`Imap`]'s work from another thread (the iterating one may be waiting for
/// its next result): see [`Imap::canceller`].
#[derive(Clone)]
pub struct ImapCanceller {
    job: Arc<Job>,
    scheduler: std::sync::Weak<dyn super::job::CancelJobs>,
}

impl std::fmt::Debug for ImapCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapCanceller")
            .field("task", &self.job.task)
            .finish()
    }
}

impl ImapCanceller {
    /// Cancels the items not finished, as [`AsyncResult::cancel`](crate::AsyncResult::cancel)
    /// does: the queued ones never run, a running one's worker is stopped, and each comes
    /// out of the iterator as [`Error::Cancelled`]. Whether anything was cancelled (false
    /// when all had finished, or the pool is gone).
    pub fn cancel(&self) -> bool {
        match self.scheduler.upgrade() {
            Some(scheduler) => scheduler.cancel_job(&self.job) > 0,
            None => false,
        }
    }
}

/// Unparks a thread: a [`Waker`] for a thread that waits with `park_timeout`.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A thread that takes the next item in completion order when asked, so that the
/// iterating thread can wait for it with a timeout. The one it takes while nobody waits
/// any more stays in the channel for the next call: nothing is lost.
struct Taker {
    ask: mpsc::Sender<()>,
    answers: mpsc::Receiver<Option<(usize, Slot)>>,
    /// Whether an item was asked for and not yet received.
    asked: bool,
}

impl Taker {
    fn start(job: Arc<Job>) -> Result<Taker> {
        let (ask, asked) = mpsc::channel::<()>();
        let (answer, answers) = mpsc::channel();
        thread::Builder::new()
            .name("wasmpool-imap".into())
            .spawn(move || {
                // Ends when the iterator is dropped (its sender goes), after the item it
                // is waiting for, if any, has finished or the pool was terminated.
                while asked.recv().is_ok() {
                    if answer.send(job.take_next_arrival()).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| {
                Error::io(
                    "starting the thread imap_unordered's next_timeout waits on",
                    e,
                )
            })?;
        Ok(Taker {
            ask,
            answers,
            asked: false,
        })
    }

    fn ask(&mut self) -> Result<()> {
        if !self.asked {
            self.ask.send(()).map_err(|_| gone())?;
            self.asked = true;
        }
        Ok(())
    }
}

fn gone() -> Error {
    Error::State("the thread waiting for imap_unordered's results is gone".into())
}

impl<R> std::fmt::Debug for Imap<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("task", &self.job.task)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

impl<'a, R> Imap<'a, R> {
    pub(crate) fn new(
        pool: &'a dyn ImapSink,
        job: Arc<Job>,
        input: Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a>,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        let chunksize = chunksize.max(1);
        let window = chunksize * pool.slots() * 8;
        Imap {
            pool,
            job,
            input,
            chunksize,
            window,
            ordered,
            exhausted: false,
            submitted: 0,
            consumed: 0,
            waker: None,
            taker: None,
            _r: PhantomData,
        }
    }

    /// Draws items from the input until the window is full; an item that cannot be encoded
    /// becomes a bad-arguments result in its place.
    fn top_up(&mut self) {
        while !self.exhausted && self.submitted - self.consumed < self.window {
            let mut items = Vec::with_capacity(self.chunksize);
            let mut bad = Vec::new();
            for item in self.input.by_ref().take(self.chunksize) {
                match item {
                    Ok(bytes) => items.push(bytes),
                    Err(e) => bad.push((items.len() + bad.len(), e.to_string())),
                }
            }
            let n = items.len() + bad.len();
            if n == 0 {
                self.exhausted = true;
                break;
            }
            let first = self.job.grow(n);
            self.submitted += n;
            if self.job.is_cancelled() {
                // Cancelled (by an `ImapCanceller`) before these were drawn: never run.
                self.job.complete_run(first, n, Slot::Cancelled);
                continue;
            }
            if bad.is_empty() {
                let part: Packed = items.into_iter().collect();
                if let Err(e) = self.pool.submit_part(&self.job, first, part) {
                    for i in 0..n {
                        self.job.complete(first + i, Slot::Aborted(e.to_string()));
                    }
                }
                continue;
            }
            // Rare: keep positions by sending the good items one by one.
            let mut good = items.into_iter();
            for i in 0..n {
                match bad.iter().find(|(at, _)| *at == i) {
                    Some((_, message)) => {
                        self.job
                            .complete(first + i, Slot::Done(Outcome::BadArgs(message.clone())));
                    }
                    None => {
                        let Some(bytes) = good.next() else { break };
                        let part = Packed::one(&bytes);
                        if let Err(e) = self.pool.submit_part(&self.job, first + i, part) {
                            self.job.complete(first + i, Slot::Aborted(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}

impl<R> Imap<'_, R> {
    /// The fuel the items finished so far used together, in a pool built with a fuel limit.
    pub fn fuel_used(&self) -> Option<u64> {
        self.job.fuel_used()
    }

    /// The time workers spent running its chunks answered so far (see
    /// [`AsyncResult::worker_time`](crate::AsyncResult::worker_time)).
    pub fn worker_time(&self) -> Duration {
        self.job.worker_time()
    }

    /// The largest linear memory a task's instance had while running its chunks answered
    /// so far, in bytes (see [`AsyncResult::peak_memory`](crate::AsyncResult::peak_memory)).
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 2)?;
    /// let mut it = pool.imap::<u64, u64>("alloc_mib", [1u64, 40])?;
    /// let held: Vec<u64> = it.by_ref().collect::<Result<_, _>>()?;
    /// assert!(it.peak_memory() >= 40 << 20);
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn peak_memory(&self) -> u64 {
        self.job.peak_memory()
    }

    /// A handle that cancels this iterator's work from another thread.
    pub fn canceller(&self) -> ImapCanceller {
        ImapCanceller {
            job: self.job.clone(),
            scheduler: self.pool.scheduler(),
        }
    }

    fn next_slot(&mut self) -> Option<(usize, Slot)> {
        self.top_up();
        if self.consumed == self.submitted {
            return None;
        }
        let (index, slot) = match &mut self.taker {
            // An item a `next_timeout` asked for and gave up on comes first.
            Some(taker) if taker.asked => {
                taker.asked = false;
                match taker.answers.recv() {
                    Ok(answer) => answer?,
                    Err(_) => {
                        // Not expected: the thread ends only with the iterator.
                        self.taker = None;
                        self.job.take_next_arrival()?
                    }
                }
            }
            _ if self.ordered => {
                let index = self.consumed;
                (index, self.job.take(index))
            }
            _ => self.job.take_next_arrival()?,
        };
        self.consumed += 1;
        Some((index, slot))
    }

    /// As [`next_slot`](Imap::next_slot), but gives up with [`Error::Timeout`] at the
    /// deadline; the item is then taken by a later call.
    fn next_slot_until(
        &mut self,
        timeout: Duration,
        deadline: Instant,
    ) -> Option<Result<(usize, Slot)>> {
        self.top_up();
        if self.consumed == self.submitted {
            return None;
        }
        let taken = if self.ordered {
            let index = self.consumed;
            if !self.wait_ready(index, deadline) {
                return Some(Err(Error::Timeout(timeout)));
            }
            // Finished: taking it does not wait.
            Some((index, self.job.take(index)))
        } else {
            if self.taker.is_none() {
                match Taker::start(self.job.clone()) {
                    Ok(taker) => self.taker = Some(taker),
                    Err(e) => return Some(Err(e)),
                }
            }
            let taker = self.taker.as_mut()?;
            if let Err(e) = taker.ask() {
                return Some(Err(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match taker.answers.recv_timeout(left) {
                Ok(answer) => {
                    taker.asked = false;
                    answer
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Some(Err(Error::Timeout(timeout)));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.taker = None;
                    return Some(Err(gone()));
                }
            }
        };
        let (index, slot) = taken?;
        self.consumed += 1;
        Some(Ok((index, slot)))
    }

    /// Waits until item `index` has finished or the deadline passes; returns whether it
    /// finished.
    fn wait_ready(&mut self, index: usize, deadline: Instant) -> bool {
        if self.job.item_ready(index) {
            return true;
        }
        // One waker for the iterator's life: the job keeps each one registered until the
        // next completion, and the same one is not registered twice.
        let waker = self
            .waker
            .get_or_insert_with(|| Waker::from(Arc::new(Unpark(thread::current()))));
        loop {
            // Registered before looking, so a completion in between unparks the park.
            self.job.register(waker);
            if self.job.item_ready(index) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            thread::park_timeout(deadline - now);
        }
    }

    /// The next result as raw MessagePack, with the index of its item.
    pub fn next_indexed_bytes(&mut self) -> Option<(usize, Result<Vec<u8>>)> {
        self.next_slot()
            .map(|(i, slot)| (i, slot.into_bytes(&self.job.task, &self.job.module)))
    }
}

impl<R: DeserializeOwned> Imap<'_, R> {
    /// The next result with the index of its item (in input order for `imap`, in completion
    /// order for `imap_unordered`).
    pub fn next_indexed(&mut self) -> Option<(usize, Result<R>)> {
        self.next_slot()
            .map(|(i, slot)| (i, decode_slot(&self.job, slot)))
    }
}

impl<R: DeserializeOwned> Imap<'_, R> {
    /// The next result, waiting at most `timeout` for it: Python's `it.next(timeout)`.
    ///
    /// `None` once every item has been returned, as [`next`](Iterator::next). If the next
    /// result (in input order for `imap`, the next to finish for `imap_unordered`) is not
    /// in within `timeout`, `Some(Err(Error::Timeout(timeout)))`, and nothing is lost: the
    /// work goes on and a later `next_timeout` or `next` returns that result. A task's own
    /// failures are other variants ([`Error::Limit`] for its time limit), so a timeout is
    /// told apart by matching.
    ///
    /// ```no_run
    /// # fn demo(pool: &wasmpool::Pool) -> wasmpool::Result<()> {
    /// use std::time::Duration;
    /// let mut it = pool.imap::<u64, u64>("square", 0..10)?;
    /// loop {
    ///     match it.next_timeout(Duration::from_secs(1)) {
    ///         None => break,
    ///         Some(Err(wasmpool::Error::Timeout(_))) => eprintln!("still waiting"),
    ///         Some(r) => println!("{}", r?),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        // A timeout past what an `Instant` holds (`Duration::MAX`) waits a century.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365 * 100));
        self.next_slot_until(timeout, deadline)
            .map(|r| r.and_then(|(_, slot)| decode_slot(&self.job, slot)))
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_indexed().map(|(_, r)| r)
    }
}
