//! The queue policy: which queued chunk a free worker takes next.
//!
//! The scheduler keeps its chunks waiting for a worker in a [`QueuePolicy`] and asks it for
//! the next one whenever a worker has room. [`Fifo`], first in first out across every
//! submission, is Python's order and the pool's today. The seam is shaped for fair queuing
//! across tenants (deficit round robin): each chunk is pushed under a [`QueueKey`] (its
//! job's) with a [`CostHint`], and what it really cost is reported back with
//! [`QueuePolicy::charge`] once a worker has answered it.

use std::collections::VecDeque;

use super::chunk::Chunk;

/// Which queue a submission's chunks wait in: what a fair policy shares the workers
/// between (a tenant). Every submission has the default key today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct QueueKey(pub u64);

/// What a chunk is expected to cost, known when it is queued.
///
/// FIFO reads none of it; a fair policy (deficit round robin across tenants) does.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CostHint {
    /// Its items.
    pub items: usize,
    /// Its items' encoded size.
    pub bytes: usize,
    /// The average run time in a worker of its task's recent chunks, in microseconds;
    /// `None` until one has run.
    pub micros: Option<u64>,
}

/// What a chunk really cost, reported once a worker has answered it.
///
/// FIFO reads none of it; a fair policy (deficit round robin across tenants) does.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// The items it answered.
    pub items: usize,
    /// How long it ran in the worker, in microseconds.
    pub micros: u64,
    /// The fuel it used, on a metered worker.
    pub fuel: Option<u64>,
}

/// The chunks waiting for a worker, and the order in which workers take them.
///
/// The scheduler calls it under its lock, so a call must not block. Between a
/// [`peek`](QueuePolicy::peek) and the next [`pop`](QueuePolicy::pop), with no other call in
/// between, `pop` returns the chunk `peek` showed (the scheduler looks at the next chunk to
/// pick a worker for it, then takes it).
pub(crate) trait QueuePolicy: Send + std::fmt::Debug {
    /// Queues a newly submitted chunk under `key` (its job's), expected to cost `hint`.
    fn push(&mut self, key: QueueKey, hint: CostHint, chunk: Chunk);

    /// The chunk a worker should take next, if any.
    fn peek(&mut self) -> Option<&Chunk>;

    /// Takes the chunk a worker should take next.
    fn pop(&mut self) -> Option<Chunk>;

    /// Puts chunks back ahead of everything queued, in the order given: they were taken
    /// and did not run (their worker died first, or stopped a batch part way), or are a lost
    /// chunk's retries. They run next, before anything queued after them. Each chunk's key
    /// is [`Chunk::key`].
    fn requeue(&mut self, chunks: Vec<Chunk>);

    /// Removes and returns, in queue order, every queued chunk `which` is true of (a
    /// cancelled job's, a task's past its restart limit).
    fn remove(&mut self, which: &mut dyn FnMut(&Chunk) -> bool) -> Vec<Chunk>;

    /// Removes and returns every queued chunk, in queue order.
    fn take_all(&mut self) -> Vec<Chunk> {
        self.remove(&mut |_| true)
    }

    /// How many chunks are queued.
    fn len(&self) -> usize;

    /// Whether no chunk is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A chunk taken from under `key` has been answered and cost `cost`. A fair policy
    /// charges the key by it; FIFO has nothing to charge.
    fn charge(&mut self, key: QueueKey, cost: Cost) {
        let _ = (key, cost);
    }
}

/// First in, first out across every submission: Python's order.
#[derive(Debug, Default)]
pub(crate) struct Fifo {
    queue: VecDeque<Chunk>,
}

impl QueuePolicy for Fifo {
    fn push(&mut self, _key: QueueKey, _hint: CostHint, chunk: Chunk) {
        self.queue.push_back(chunk);
    }

    fn peek(&mut self) -> Option<&Chunk> {
        self.queue.front()
    }

    fn pop(&mut self) -> Option<Chunk> {
        self.queue.pop_front()
    }

    fn requeue(&mut self, chunks: Vec<Chunk>) {
        for chunk in chunks.into_iter().rev() {
            self.queue.push_front(chunk);
        }
    }

    fn remove(&mut self, which: &mut dyn FnMut(&Chunk) -> bool) -> Vec<Chunk> {
        let (removed, kept): (Vec<Chunk>, Vec<Chunk>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|c| which(c));
        self.queue = kept.into();
        removed
    }

    fn take_all(&mut self) -> Vec<Chunk> {
        std::mem::take(&mut self.queue).into()
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}
