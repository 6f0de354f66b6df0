//! `Queue`: Python's `multiprocessing.Queue`, `JoinableQueue` and `SimpleQueue` in one type.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handle::{decode, encode, handle_type, unexpected};
use crate::wire::{Kind, ObjectError, Request, Response};

handle_type!(
    /// A FIFO queue owned by the host. A `put` that returned is seen by every `get` that
    /// follows it: in the same task, or in a process it signalled through any object, or
    /// after it ended. In a task, a `put` on an unbounded queue does not wait for the host,
    /// as Python's hands its item to a feeder thread: the host applies it before anything the
    /// task does next, and if it refuses it (the queue was closed meanwhile, say), the task's
    /// next `put` on this queue fails with that error, or the task fails at its end. A `put`
    /// interrupted by its worker's death is either wholly in the queue or not at all.
    /// `task_done`/`join` work on queues created joinable.
    Queue<T>,
    Kind::Queue
);

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Puts `item`, blocking while a bounded queue is full.
    pub fn put(&self, item: &T) -> Result<(), ObjectError> {
        self.put_timeout(item, None)
    }

    /// Puts `item`, waiting at most `timeout` for room (`None`: forever); `Full` after that.
    pub fn put_timeout(&self, item: &T, timeout: Option<Duration>) -> Result<(), ObjectError> {
        match self.raw.call(Request::QueuePut(encode(item)?), timeout)? {
            Response::Unit => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Puts `item` only if there is room now; `Full` otherwise.
    pub fn put_nowait(&self, item: &T) -> Result<(), ObjectError> {
        self.put_timeout(item, Some(Duration::ZERO))
    }

    /// Takes the oldest item, blocking until there is one. A closed, drained queue answers
    /// `Closed` instead of blocking forever.
    pub fn get(&self) -> Result<T, ObjectError> {
        self.get_timeout(None)
    }

    /// Takes the oldest item, waiting at most `timeout` (`None`: forever); `Empty` after that.
    pub fn get_timeout(&self, timeout: Option<Duration>) -> Result<T, ObjectError> {
        match self.raw.call(Request::QueueGet, timeout)? {
            Response::Value(bytes) => decode(&bytes),
            r => Err(unexpected(r)),
        }
    }

    /// Takes the oldest item if there is one now; `Empty` otherwise.
    pub fn get_nowait(&self) -> Result<T, ObjectError> {
        self.get_timeout(Some(Duration::ZERO))
    }
}

impl<T> Queue<T> {
    /// How many items are queued (exact: the host owns the queue).
    pub fn qsize(&self) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::QueueQsize, None)?)
    }

    /// The queue's capacity; 0 is unbounded.
    pub fn maxsize(&self) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::QueueMaxsize, None)?)
    }

    /// Whether the queue is empty.
    pub fn empty(&self) -> Result<bool, ObjectError> {
        Ok(self.qsize()? == 0)
    }

    /// Whether a bounded queue is at capacity.
    pub fn full(&self) -> Result<bool, ObjectError> {
        let max = self.maxsize()?;
        Ok(max > 0 && self.qsize()? >= max)
    }

    /// Refuses further puts; gets drain what is queued, then answer `Closed`.
    pub fn close(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::QueueClose, None)?)
    }

    /// Marks one item taken with `get` as processed (joinable queues).
    pub fn task_done(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::QueueTaskDone, None)?)
    }

    /// Blocks until every item put has been marked done (joinable queues).
    pub fn join(&self) -> Result<(), ObjectError> {
        self.join_timeout(None)
    }

    /// As [`join`](Self::join), giving up with `Timeout` after `timeout`.
    pub fn join_timeout(&self, timeout: Option<Duration>) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::QueueJoin, timeout)?)
    }
}

pub(crate) fn unit(r: Response) -> Result<(), ObjectError> {
    match r {
        Response::Unit => Ok(()),
        r => Err(unexpected(r)),
    }
}

pub(crate) fn count(r: Response) -> Result<usize, ObjectError> {
    match r {
        Response::Count(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        r => Err(unexpected(r)),
    }
}

pub(crate) fn flag(r: Response) -> Result<bool, ObjectError> {
    match r {
        Response::Flag(b) => Ok(b),
        r => Err(unexpected(r)),
    }
}
