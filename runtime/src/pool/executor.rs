//! `Executor`: Python's `concurrent.futures.ProcessPoolExecutor`, for async programs.
//!
//! Futures here are plain `std::future::Future`s woken by the pool's supervisor threads when
//! results arrive: they work under tokio or any other executor, and waiting on one never
//! blocks a thread.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::job::{Job, Slot, finish_one};
use super::sched::Chunk;
use super::{Pool, check_chunksize, decode_slot, default_chunksize};
use crate::error::{Error, Result};
use crate::module::Module;
use crate::packed::Packed;
use crate::values::{encode_arg_into, encode_args};

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
#[derive(Debug)]
pub struct Executor {
    pool: Pool,
}

impl Executor {
    /// An executor with `workers` worker processes running tasks from `module`: from 1 to
    /// [`Pool::MAX_PROCESSES`], or this fails with [`Error::State`] before any starts (as
    /// Python refuses `max_workers=0`).
    pub fn new(module: &Module, workers: usize) -> Result<Executor> {
        Ok(Executor {
            pool: Pool::new(module, workers)?,
        })
    }

    /// An executor over a pool built with [`Pool::builder`] (for limits, initializer, …).
    pub fn from_pool(pool: Pool) -> Executor {
        Executor { pool }
    }

    /// Queues `task(*args)`; the future resolves to its result.
    pub fn submit<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<TaskFuture<R>> {
        let job = self.pool.job(task, 1)?;
        let args = encode_args(args)?;
        self.pool
            .shared
            .submit([Chunk::new(job.clone(), 0, Packed::one(&args), true)])?;
        Ok(TaskFuture {
            job,
            pool: self.pool.shared.clone(),
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
        let encoded = super::pack(items, |buf, a| encode_arg_into(buf, &a))?;
        let len = encoded.len();
        let job = self.pool.job(task, len)?;
        let chunksize = chunksize.unwrap_or_else(|| default_chunksize(len, self.pool.processes()));
        self.pool.submit_items(&job, 0, encoded, chunksize)?;
        Ok(MapStream {
            job,
            next: 0,
            len,
            _r: PhantomData,
        })
    }

    /// Stops the executor. With `cancel_futures`, work not yet started is cancelled (its
    /// futures resolve to an error); with `wait`, this returns once running work is done and
    /// the workers have exited; without it, the workers are terminated at once. This call
    /// blocks: from async code, run it on a blocking thread (e.g. `spawn_blocking`).
    pub fn shutdown(self, wait: bool, cancel_futures: bool) -> Result<()> {
        if cancel_futures {
            self.pool.shared.cancel_queued(None);
        }
        if wait {
            self.pool.close();
        } else {
            self.pool.terminate();
        }
        self.pool.join()
    }
}

/// The future of one submitted task.
#[must_use = "a TaskFuture does nothing unless awaited (the task runs either way)"]
pub struct TaskFuture<R> {
    job: Arc<Job>,
    pool: Arc<super::sched::Shared>,
    _r: PhantomData<fn() -> R>,
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
    /// Whether the task has finished.
    pub fn done(&self) -> bool {
        self.job.is_done()
    }

    /// Cancels the task if it has not started: it is removed from the queue and the future
    /// resolves to an error. Returns whether it was cancelled (as Python's `Future.cancel`);
    /// a running task is left alone, and nothing else is affected either way.
    pub fn cancel(&self) -> bool {
        self.pool.cancel_queued(Some(&self.job)) > 0
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
