//! `Executor`: Python's `concurrent.futures.ProcessPoolExecutor`, for async programs.
//!
//! Futures here are plain `std::future::Future`s woken by the thread that records their
//! results (a local pool's supervisor threads, a cluster pool's result reader): they work
//! under tokio or any other executor, and waiting on one never blocks a thread.
//!
//! An executor runs over a local [`Pool`] or a [`ClusterPool`]: both record results in the
//! same jobs, so everything here but submitting, cancelling queued work and stopping is
//! the same code for both.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::job::{CancelQueued, Hook, Job, Slot, finish_one};
use super::submit::pack;
use super::{Pool, check_chunksize, decode_slot};
use crate::cluster::ClusterPool;
use crate::error::{Error, Result};
use crate::module::Module;
use crate::protocol::packed::Packed;
use crate::values::encode_arg_into;

/// A pool for async code, as Python's `ProcessPoolExecutor`: `submit` returns a future of the
/// task's typed result, `map` a stream of results in input order, [`as_completed`] yields
/// futures' results as they finish, and `shutdown` stops it.
///
/// ```no_run
/// # async fn demo() -> wasmpool::Result<()> {
/// let module = wasmpool::Module::load("examples/testkit")?;
/// let ex = wasmpool::Executor::new(&module, 2)?;
/// let fut = ex.submit::<_, u64>("square", &(9u64,))?;
/// assert_eq!(fut.await?, 81);
/// let mut squares = ex.map::<u64, u64>("square", 0..10, None)?;
/// while let Some(r) = squares.next().await {
///     println!("{}", r?);
/// }
/// ex.shutdown(true, false)?;
/// # Ok(()) }
/// ```
///
/// Dropping an executor is Python's `shutdown(wait=False)`: no new work, and the work
/// already submitted finishes in the background (its futures resolve), after which the
/// workers exit.
///
/// On a cluster ([`Executor::from_cluster`], [`ClusterBuilder::executor`]) it is the same
/// executor: the same futures, streams and shutdown, its work run by the cluster's hosts.
///
/// [`ClusterBuilder::executor`]: crate::cluster::ClusterBuilder::executor
#[derive(Debug)]
pub struct Executor {
    pool: Backend,
    /// Set by `shutdown`, which has done what dropping would.
    shut_down: bool,
}

/// What an executor runs its work on.
#[derive(Debug, Clone)]
enum Backend {
    Local(Pool),
    Cluster(ClusterPool),
}

impl Backend {
    fn submit_call<A: Serialize + ?Sized>(&self, task: &str, args: &A) -> Result<Arc<Job>> {
        match self {
            Backend::Local(p) => p.submit_call(task, args, None),
            Backend::Cluster(p) => p.submit_call(task, args, None),
        }
    }

    fn submit_packed(
        &self,
        task: &str,
        items: Packed,
        chunksize: Option<usize>,
    ) -> Result<Arc<Job>> {
        match self {
            Backend::Local(p) => p.submit_packed(task, items, chunksize),
            Backend::Cluster(p) => p.submit_packed(task, items, chunksize),
        }
    }

    /// What cancels its queued work (without keeping the pool alive).
    fn canceller(&self) -> Weak<dyn CancelQueued> {
        match self {
            Backend::Local(p) => {
                let weak: Weak<super::scheduler::Scheduler> = Arc::downgrade(&p.scheduler);
                weak
            }
            Backend::Cluster(p) => p.queued_canceller(),
        }
    }

    fn close(&self) {
        match self {
            Backend::Local(p) => p.close(),
            Backend::Cluster(p) => p.close(),
        }
    }

    fn join(&self) -> Result<()> {
        match self {
            Backend::Local(p) => p.join(),
            Backend::Cluster(p) => p.join(),
        }
    }
}

impl Executor {
    /// An executor with `workers` worker processes running tasks from `module`: from 1 to
    /// [`Pool::MAX_PROCESSES`], or this fails with [`Error::State`] before any starts (as
    /// Python refuses `max_workers=0`).
    pub fn new(module: &Module, workers: usize) -> Result<Executor> {
        Ok(Executor::from_pool(Pool::new(module, workers)?))
    }

    /// An executor over a pool built with [`Pool::builder`] (for limits, initializer, …).
    pub fn from_pool(pool: Pool) -> Executor {
        Executor {
            pool: Backend::Local(pool),
            shut_down: false,
        }
    }

    /// An executor whose work runs on the hosts of a cluster (also
    /// [`ClusterBuilder::executor`](crate::cluster::ClusterBuilder::executor)): the same
    /// API and semantics as over a local pool. Work not started, which `cancel` and
    /// `shutdown` with `cancel_futures` cancel, is work no host has claimed yet (a host
    /// claims a little ahead of its slots, as a local pool sends a little ahead to its
    /// workers and Python's executor to its call queue). `shutdown(true, _)` returns once
    /// the work is done and its callbacks have run (the hosts stay, for other pools).
    ///
    /// ```no_run
    /// # async fn demo() -> wasmpool::Result<()> {
    /// use wasmpool::{Executor, Module, Pool};
    ///
    /// let module = Module::load("examples/testkit")?;
    /// // Hosts joined with `wasmpool worker --join redis://127.0.0.1:6379 --slots 4`.
    /// let pool = Pool::builder(&module).cluster("redis://127.0.0.1:6379").build()?;
    /// let ex = Executor::from_cluster(pool);
    /// assert_eq!(ex.submit::<_, u64>("square", &(9u64,))?.await?, 81);
    /// let mut squares = ex.map::<u64, u64>("square", 0..1000, None)?;
    /// while let Some(r) = squares.next().await {
    ///     println!("{}", r?);
    /// }
    /// ex.shutdown(true, false)?;
    /// # Ok(()) }
    /// ```
    pub fn from_cluster(pool: ClusterPool) -> Executor {
        Executor {
            pool: Backend::Cluster(pool),
            shut_down: false,
        }
    }

    /// Queues `task(*args)`; the future resolves to its result.
    pub fn submit<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<TaskFuture<R>> {
        let job = self.pool.submit_call(task, args)?;
        Ok(TaskFuture {
            job,
            canceller: self.pool.canceller(),
            _r: PhantomData,
        })
    }

    /// Queues `task(item)` for every item; the stream yields the results in input order.
    /// `chunksize`, if given, is from 1 to [`Pool::MAX_CHUNKSIZE`] (default: Python's, the
    /// items spread over four chunks per worker).
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<MapStream<R>> {
        if let Some(c) = chunksize {
            check_chunksize(c)?;
        }
        // Every item is encoded before any is queued: one that cannot be fails the call
        // with nothing run.
        let encoded = pack(items, |buf, a| encode_arg_into(buf, &a))?;
        let len = encoded.len();
        let job = self.pool.submit_packed(task, encoded, chunksize)?;
        Ok(MapStream {
            job,
            next: 0,
            len,
            _r: PhantomData,
        })
    }

    /// Stops the executor, as Python's `shutdown(wait, cancel_futures)`: no new work is
    /// accepted. With `cancel_futures`, work not yet started is cancelled (its futures
    /// resolve to [`Error::Cancelled`]); the rest runs to the end either way. With `wait`,
    /// this returns once that work is done, its done callbacks have run and the workers
    /// have exited; without it, this returns at once and the work finishes in the
    /// background (the workers exit after it). Dropping the executor is
    /// `shutdown(false, false)`. With `wait`, this call blocks: from async code, run it on
    /// a blocking thread (e.g. `spawn_blocking`). On a cluster, `cancel_futures` cancels
    /// what no host has claimed (one Redis round trip), and `wait` waits for the rest.
    pub fn shutdown(mut self, wait: bool, cancel_futures: bool) -> Result<()> {
        self.shut_down = true;
        if cancel_futures && let Some(queued) = self.pool.canceller().upgrade() {
            queued.cancel_queued(None);
        }
        self.pool.close();
        if wait {
            self.pool.join()
        } else {
            finish_in_background(self.pool.clone());
            Ok(())
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if !self.shut_down {
            self.pool.close();
            finish_in_background(self.pool.clone());
        }
    }
}

/// Lets a closed pool's work finish on a thread of its own, which holds the pool until
/// then (the pool stops when its last handle goes). Without a thread, it is waited for
/// here rather than cut short.
fn finish_in_background(pool: Backend) {
    let held = pool.clone();
    let spawned = std::thread::Builder::new()
        .name("wasmpool-shutdown".into())
        .spawn(move || {
            let _ = held.join();
        });
    if spawned.is_err() {
        let _ = pool.join();
    }
}

/// The future of one submitted task, with the API of Python's `concurrent.futures.Future`
/// besides `.await`: [`done`](TaskFuture::done), [`cancel`](TaskFuture::cancel),
/// [`cancelled`](TaskFuture::cancelled), [`result`](TaskFuture::result) /
/// [`result_timeout`](TaskFuture::result_timeout) (blocking) and
/// [`add_done_callback`](TaskFuture::add_done_callback). Clones are handles to the same
/// task, each of which may be awaited or asked for the result.
#[must_use = "a TaskFuture does nothing unless awaited (the task runs either way)"]
pub struct TaskFuture<R> {
    job: Arc<Job>,
    /// Its pool's queue (a local scheduler's, or a cluster's), to cancel it there.
    canceller: Weak<dyn CancelQueued>,
    _r: PhantomData<fn() -> R>,
}

impl<R> Clone for TaskFuture<R> {
    fn clone(&self) -> Self {
        TaskFuture {
            job: self.job.clone(),
            canceller: self.canceller.clone(),
            _r: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for TaskFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFuture")
            .field("task", &self.job.task)
            .field("done", &self.done())
            .finish()
    }
}

impl<R> TaskFuture<R> {
    pub(crate) fn job(&self) -> &Arc<Job> {
        &self.job
    }

    /// Whether the task has finished, or was cancelled.
    pub fn done(&self) -> bool {
        self.job.is_done()
    }

    /// Cancels the task if it has not started: it is removed from the queue and the future
    /// resolves to [`Error::Cancelled`]. Returns whether the task is cancelled, as Python's
    /// `Future.cancel`: true also for one cancelled before, false for one running or
    /// finished, which is left alone. Nothing else is affected either way. On a cluster,
    /// not started means not claimed by a host yet (see [`Executor::from_cluster`]).
    pub fn cancel(&self) -> bool {
        self.cancelled()
            || self
                .canceller
                .upgrade()
                .is_some_and(|q| q.cancel_queued(Some(&self.job)) > 0)
    }

    /// Whether the task was cancelled (by [`cancel`](TaskFuture::cancel), or by
    /// [`Executor::shutdown`] with `cancel_futures`).
    pub fn cancelled(&self) -> bool {
        self.job.item_cancelled(0)
    }

    /// Runs `f` with this future once it is done (finished or cancelled), as Python's
    /// `add_done_callback`: at once, on this thread, if it is done already; otherwise on
    /// the pool's callback thread, after the other callbacks added before it. A callback
    /// that panics is logged (with `tracing`, and by the panic hook) and not propagated,
    /// as Python logs a callback's exception.
    pub fn add_done_callback<F>(&self, f: F)
    where
        F: FnOnce(&TaskFuture<R>) + Send + 'static,
        R: 'static,
    {
        let me = self.clone();
        let run: super::job::Completion = Box::new(move |_: &Job| call_logged(&me, f));
        if let Some(hook) = self.job.add_hook(Hook { run, gating: false }) {
            (hook.run)(self.job.as_ref());
        }
    }
}

/// Runs a done callback; a panic in it is logged, not propagated.
fn call_logged<R, F: FnOnce(&TaskFuture<R>)>(fut: &TaskFuture<R>, f: F) {
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(fut)));
    if let Err(panic) = ran {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        tracing::error!(task = %fut.job.task, "a done callback of a future panicked: {message}");
    }
}

impl<R: DeserializeOwned> TaskFuture<R> {
    /// Waits for the task and returns its result (Python's `Future.result()`):
    /// [`Error::Cancelled`] if it was cancelled. This blocks the thread: in async code,
    /// `.await` the future instead.
    pub fn result(&self) -> Result<R> {
        self.job.wait(None);
        finish_one(&self.job)
    }

    /// As [`result`](TaskFuture::result), giving up with [`Error::Timeout`] after
    /// `timeout` (Python's `result(timeout)`); the task goes on, and a later call can
    /// still return its result.
    pub fn result_timeout(&self, timeout: Duration) -> Result<R> {
        if !self.job.wait(Some(Instant::now() + timeout)) {
            return Err(Error::Timeout(timeout));
        }
        finish_one(&self.job)
    }
}

impl<R: DeserializeOwned> Future for TaskFuture<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        if self.job.is_done() {
            return Poll::Ready(finish_one(&self.job));
        }
        self.job.register(cx.waker());
        // A result may have arrived between the check and the registration.
        if self.job.is_done() {
            Poll::Ready(finish_one(&self.job))
        } else {
            Poll::Pending
        }
    }
}

/// The results of [`Executor::map`], in input order.
#[derive(Debug)]
pub struct MapStream<R> {
    job: Arc<Job>,
    next: usize,
    len: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> MapStream<R> {
    /// The next result, or `None` after the last.
    pub async fn next(&mut self) -> Option<Result<R>> {
        if self.next == self.len {
            return None;
        }
        let index = self.next;
        let job = self.job.clone();
        std::future::poll_fn(|cx| {
            if !job.item_ready(index) {
                job.register(cx.waker());
                if !job.item_ready(index) {
                    return Poll::Pending;
                }
            }
            Poll::Ready(())
        })
        .await;
        self.next += 1;
        let slot = self.job.take(index);
        Some(decode_slot(&self.job, slot))
    }
}

/// Yields the results of `futures` as they finish, each with its position in `futures`
/// (Python's `as_completed`).
pub fn as_completed<R: DeserializeOwned>(futures: Vec<TaskFuture<R>>) -> AsCompleted<R> {
    AsCompleted {
        pending: futures.into_iter().enumerate().collect(),
    }
}

/// The stream returned by [`as_completed`].
#[derive(Debug)]
pub struct AsCompleted<R> {
    pending: Vec<(usize, TaskFuture<R>)>,
}

impl<R: DeserializeOwned> AsCompleted<R> {
    /// The next result to finish, with the index of its future; `None` when all are out.
    pub async fn next(&mut self) -> Option<(usize, Result<R>)> {
        if self.pending.is_empty() {
            return None;
        }
        let pending = &mut self.pending;
        let at = std::future::poll_fn(|cx| {
            if let Some(at) = pending.iter().position(|(_, f)| f.done()) {
                return Poll::Ready(at);
            }
            for (_, f) in pending.iter() {
                f.job.register(cx.waker());
            }
            match pending.iter().position(|(_, f)| f.done()) {
                Some(at) => Poll::Ready(at),
                None => Poll::Pending,
            }
        })
        .await;
        let (index, fut) = self.pending.swap_remove(at);
        let result = match fut.job.peek(0) {
            Slot::Pending => Err(Error::State("not ready".into())),
            _ => finish_one(&fut.job),
        };
        Some((index, result))
    }
}
