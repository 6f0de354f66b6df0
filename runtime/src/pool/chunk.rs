//! A chunk: a run of consecutive items of one job, the unit that is queued, sent to a worker
//! in one frame, and cut up again when it is too large or lost with its worker.

use std::sync::Arc;

use super::job::Job;
#[cfg(doc)]
use super::job::TaskOptions;
use super::queue_policy::QueueKey;
use crate::protocol::packed::Packed;

/// How a chunk's items are sent to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendAs {
    /// Its one item as a single `Call` (`apply`, `Executor::submit`).
    Call,
    /// Its items as a `CallBatch` (`map`, `imap` and the like).
    Batch,
}

/// A run of consecutive items of one job, sent to a worker in one frame.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub job: Arc<Job>,
    pub first: usize,
    pub items: Packed,
    pub send_as: SendAs,
    /// Runs before this one that a worker died under (see [`TaskOptions::retries`]).
    pub attempt: u32,
}

impl Chunk {
    pub fn new(job: Arc<Job>, first: usize, items: Packed, send_as: SendAs) -> Chunk {
        Chunk {
            job,
            first,
            items,
            send_as,
            attempt: 0,
        }
    }

    /// The queue the chunk waits in: its job's tenant's.
    pub fn key(&self) -> QueueKey {
        QueueKey(self.job.opts.tenant.id())
    }

    /// Its tenant's weight.
    pub fn weight(&self) -> u32 {
        self.job.opts.tenant.weight()
    }

    /// The chunk's items as chunks of one, for a retry: a worker died under the chunk, and
    /// only one of its items may be to blame, so each is run again on its own.
    pub fn split_for_retry(self) -> Vec<Chunk> {
        let attempt = self.attempt + 1;
        let mut retries = self.split_for_retry_from(0);
        for r in &mut retries {
            r.attempt = attempt;
        }
        retries
    }

    /// The chunk as runs of consecutive items of at most `budget` bytes each (an item
    /// larger than that alone in its run), in order.
    pub fn cut_by_bytes(self, budget: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut part = Packed::default();
        let mut part_first = self.first;
        for item in self.items.iter() {
            if !part.is_empty() && part.data.len() + item.len() > budget {
                let len = part.len();
                out.push(Chunk {
                    first: part_first,
                    items: std::mem::take(&mut part),
                    ..self.clone_empty()
                });
                part_first += len;
            }
            part.push(item);
        }
        if !part.is_empty() {
            out.push(Chunk {
                first: part_first,
                items: part,
                ..self.clone_empty()
            });
        }
        out
    }

    /// A chunk of the same job, attempt and kind with no items.
    fn clone_empty(&self) -> Chunk {
        Chunk {
            job: self.job.clone(),
            first: self.first,
            items: Packed::default(),
            send_as: self.send_as,
            attempt: self.attempt,
        }
    }

    /// The chunk without its first `skip` items (answered already), if any are left.
    pub fn rest(self, skip: usize) -> Option<Chunk> {
        if skip == 0 {
            return Some(self);
        }
        if skip >= self.items.len() {
            return None;
        }
        let mut items = Packed::with_capacity(self.items.len() - skip, 0);
        for i in skip..self.items.len() {
            items.push(self.items.get(i).unwrap_or_default());
        }
        Some(Chunk {
            first: self.first + skip,
            items,
            ..self
        })
    }

    /// Items `skip..` of the chunk as chunks of one, each to run on its own.
    pub fn split_for_retry_from(&self, skip: usize) -> Vec<Chunk> {
        (skip..self.items.len())
            .map(|i| Chunk {
                first: self.first + i,
                items: Packed::one(self.items.get(i).unwrap_or_default()),
                ..self.clone_empty()
            })
            .collect()
    }
}
