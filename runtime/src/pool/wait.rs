//! Waiting on several objects at once: Python's `concurrent.futures.wait` and
//! `multiprocessing.connection.wait`.

use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::executor::TaskFuture;
use super::job::AsyncResult;
use crate::error::Result;
use crate::process::Process;
use wasmpool_objects::Connection;

/// When [`futures::wait`](crate::futures::wait) returns, as Python's `return_when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any future is done (finished or cancelled): `FIRST_COMPLETED`.
    FirstCompleted,
    /// As soon as any future finishes with an error (a cancelled one does not count), or
    /// when all are done: `FIRST_EXCEPTION`.
    FirstException,
    /// When every future is done: `ALL_COMPLETED`.
    AllCompleted,
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

/// The time left before `deadline`, `None` for no deadline; `Some(ZERO)` once past.
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// Waits until the futures are done as `return_when` asks, or `timeout` passes (`None`:
/// no limit), and returns `(done, not_done)`: clones of the futures, each list in the
/// order given (Python's `concurrent.futures.wait`, whose sets these are). A timeout is not
/// an error: what is done by then is in `done`. The thread sleeps until a future finishes
/// (no polling); from async code, use [`as_completed`](crate::as_completed) or `.await`.
pub fn wait_futures<R>(
    futures: &[TaskFuture<R>],
    timeout: Option<Duration>,
    return_when: ReturnWhen,
) -> (Vec<TaskFuture<R>>, Vec<TaskFuture<R>>) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    loop {
        let ready = |f: &TaskFuture<R>| f.done();
        let enough = |futures: &[TaskFuture<R>]| {
            let done = futures.iter().filter(|f| ready(f)).count();
            done == futures.len()
                || match return_when {
                    ReturnWhen::FirstCompleted => done > 0,
                    ReturnWhen::FirstException => {
                        futures.iter().any(|f| ready(f) && f.job().item_failed(0))
                    }
                    ReturnWhen::AllCompleted => false,
                }
        };
        if enough(futures) || left(deadline).is_some_and(|l| l.is_zero()) {
            break;
        }
        for f in futures.iter().filter(|f| !ready(f)) {
            f.job().register(&waker);
        }
        // A future may have finished between the check and the registration.
        if enough(futures) {
            break;
        }
        match left(deadline) {
            Some(l) => std::thread::park_timeout(l),
            None => std::thread::park(),
        }
    }
    futures.iter().cloned().partition(|f| f.done())
}

/// An object [`connection::wait`](crate::connection::wait) can wait on: a pipe end
/// ([`Connection`]: readable, that is, a message is waiting or the other end is closed),
/// a started [`Process`] (ended), a [`TaskFuture`] (done) or an [`AsyncResult`] (ready).
pub trait Waitable: sealed::Sealed {}

mod sealed {
    use std::task::Waker;
    use std::time::Duration;

    use crate::error::Result;

    /// What [`Waitable`](super::Waitable) needs; not for other types to implement.
    pub trait Sealed {
        /// Whether the object is ready now, without waiting.
        fn ready_now(&self) -> Result<bool>;
        /// Waits at most `timeout` (`None`: no limit) for the object alone; returns whether
        /// it is ready.
        fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool>;
        /// Asks to have `waker` woken when the object may have become ready; returns
        /// whether it will be (otherwise the object must be polled).
        fn register(&self, waker: &Waker) -> bool;
    }
}

impl<T> sealed::Sealed for Connection<T> {
    fn ready_now(&self) -> Result<bool> {
        Ok(self.poll(Some(Duration::ZERO))?)
    }

    fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool> {
        Ok(self.poll(timeout)?)
    }

    fn register(&self, _: &Waker) -> bool {
        false
    }
}
impl<T> Waitable for Connection<T> {}

impl sealed::Sealed for Process {
    fn ready_now(&self) -> Result<bool> {
        self.wait_until(Some(Instant::now()))
    }

    fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool> {
        self.wait_until(timeout.map(|t| Instant::now() + t))
    }

    fn register(&self, _: &Waker) -> bool {
        false
    }
}
impl Waitable for Process {}

impl<R> sealed::Sealed for TaskFuture<R> {
    fn ready_now(&self) -> Result<bool> {
        Ok(self.done())
    }

    fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool> {
        Ok(self.job().wait(timeout.map(|t| Instant::now() + t)))
    }

    fn register(&self, waker: &Waker) -> bool {
        self.job().register(waker);
        true
    }
}
impl<R> Waitable for TaskFuture<R> {}

impl<T> sealed::Sealed for AsyncResult<T> {
    fn ready_now(&self) -> Result<bool> {
        Ok(self.ready())
    }

    fn wait_ready(&self, timeout: Option<Duration>) -> Result<bool> {
        Ok(self.job().wait(timeout.map(|t| Instant::now() + t)))
    }

    fn register(&self, waker: &Waker) -> bool {
        self.job().register(waker);
        true
    }
}
impl<T> Waitable for AsyncResult<T> {}

/// The first pause between two looks at objects that cannot wake a waiter (pipe ends,
/// processes), doubled after each look up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(1);
const MAX_POLL: Duration = Duration::from_millis(20);

/// Waits until at least one of `objects` is ready, or `timeout` passes (`None`: no
/// limit), and returns the positions in `objects` of those ready, in order: empty after a
/// timeout (Python's `multiprocessing.connection.wait`, which returns the objects). A pipe
/// end is ready when `recv` would not block (a message is waiting, or the other end is
/// closed: end of file), a process when it has ended, a future or an async result when it
/// is done. A process never started, or a pipe end this program closed, is an error
/// ([`Error::State`](crate::Error::State), [`Error::Object`](crate::Error::Object)), as
/// Python raises for them. No objects: an empty list at once (Python would block).
///
/// A single object is waited for with its own wake-up. Of several, futures and async
/// results wake the waiting thread as they finish; pipe ends and processes are looked at
/// again after a pause that grows from 1 ms to 20 ms, so one of them may be seen ready up
/// to 20 ms late.
pub fn wait_objects(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let ready_ones = || -> Result<Vec<usize>> {
        let mut ready = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if o.ready_now()? {
                ready.push(i);
            }
        }
        Ok(ready)
    };
    let ready = ready_ones()?;
    if !ready.is_empty() || objects.is_empty() {
        // Python's `wait([])` with no timeout would block for ever; nothing can become
        // ready here, so it returns at once.
        return Ok(ready);
    }
    if let [one] = objects {
        let is = one.wait_ready(left(deadline))?;
        return Ok(if is { vec![0] } else { Vec::new() });
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut pause = FIRST_POLL;
    loop {
        if left(deadline).is_some_and(|l| l.is_zero()) {
            return Ok(Vec::new());
        }
        let mut all_wake = true;
        for o in objects {
            all_wake &= o.register(&waker);
        }
        let ready = ready_ones()?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        let sleep = if all_wake {
            left(deadline)
        } else {
            Some(left(deadline).map_or(pause, |l| l.min(pause)))
        };
        match sleep {
            Some(d) => std::thread::park_timeout(d),
            None => std::thread::park(),
        }
        if !all_wake {
            pause = (pause * 2).min(MAX_POLL);
        }
    }
}
