//! Submission: how each entry point's items become a job and its chunks. Every one of them
//! (`apply`/`apply_async*`, `map*`, `starmap*`, `map_encoded`, `imap*`, and the
//! `Executor`'s `submit` and `map`) hands its chunks to the scheduler through one function,
//! [`Pool::submit`], and so through [`Scheduler::submit`](super::scheduler::Scheduler::submit),
//! the only way work enters the queue.

use std::sync::Arc;

use serde::Serialize;

use super::Pool;
use super::chunk::{Chunk, SendAs};
use super::job::{Hook, Job};
use crate::error::{Error, Result};
use crate::protocol::packed::Packed;
use crate::values::encode_args;

/// Encodes every item straight into one buffer (no allocation per item).
pub(crate) fn pack<A>(
    items: impl IntoIterator<Item = A>,
    mut encode: impl FnMut(&mut Vec<u8>, A) -> Result<()>,
) -> Result<Packed> {
    let items = items.into_iter();
    let mut packed = Packed::with_capacity(items.size_hint().0, items.size_hint().0 * 4);
    for item in items {
        encode(&mut packed.data, item)?;
        packed.close_item();
    }
    Ok(packed)
}

/// A `map` hands its first encoded chunks to the scheduler once they hold this many items,
/// and doubles that for each later group, up to [`MAX_GROUP_ITEMS`].
const FIRST_GROUP_ITEMS: usize = 64;
const MAX_GROUP_ITEMS: usize = 8192;

/// Python's default `map` chunk size: the items spread over four chunks per worker.
pub(crate) fn default_chunksize(items: usize, workers: usize) -> usize {
    let per = workers.max(1) * 4;
    let (q, r) = (items / per, items % per);
    (q + usize::from(r != 0)).max(1)
}

impl Pool {
    fn check(&self, task: &str) -> Result<()> {
        self.scheduler.module.check_task(task)
    }

    /// A new job of `items` items of `task`, run as this handle says (retries, limits).
    pub(super) fn job(&self, task: &str, items: usize) -> Result<Arc<Job>> {
        self.check(task)?;
        self.opts.limits.check().map_err(Error::State)?;
        if let Some(fuel) = self.opts.limits.fuel
            && self.scheduler.config.limits.fuel.is_none()
        {
            return Err(Error::State(format!(
                "a fuel limit ({fuel}) needs a pool whose workers meter fuel: build the pool \
                 with one (PoolBuilder::limits with Limits::fuel); this one was built without"
            )));
        }
        Ok(Job::new(
            Arc::from(task),
            self.scheduler.module.clone(),
            self.opts,
            items,
            self.scheduler.callbacks.thread(),
        ))
    }

    /// Hands `parts`, consecutive runs of `job`'s items from item `first` on, to the
    /// scheduler as one chunk each: the one way every entry point submits work. It fails,
    /// queuing nothing, when the pool is closed or broken (also for no parts, which is how
    /// a submission asks before it encodes anything).
    pub(super) fn submit(
        &self,
        job: &Arc<Job>,
        first: usize,
        parts: impl IntoIterator<Item = Packed>,
        send_as: SendAs,
    ) -> Result<()> {
        let mut next = first;
        self.scheduler.submit(parts.into_iter().map(|part| {
            let chunk_first = next;
            next += part.len();
            Chunk::new(job.clone(), chunk_first, part, send_as)
        }))
    }

    /// Submits `task(*args)` as a job of one call (`apply`, `apply_async`, `Executor::submit`),
    /// with `hook` added before it can finish.
    pub(super) fn submit_call<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
        hook: Option<Hook>,
    ) -> Result<Arc<Job>> {
        let job = self.job(task, 1)?;
        let args = encode_args(args)?;
        if let Some(hook) = hook {
            // Not finished before it is submitted: never handed back.
            let _ = job.add_hook(hook);
        }
        self.submit(&job, 0, [Packed::one(&args)], SendAs::Call)?;
        Ok(job)
    }

    /// Submits encoded argument arrays as one job, in chunks of `chunksize` (default:
    /// Python's), from 1 to [`Pool::MAX_CHUNKSIZE`].
    pub(super) fn submit_packed(
        &self,
        task: &str,
        items: Packed,
        chunksize: Option<usize>,
    ) -> Result<Arc<Job>> {
        if let Some(c) = chunksize {
            super::check_chunksize(c)?;
        }
        let job = self.job(task, items.len())?;
        let chunksize =
            chunksize.unwrap_or_else(|| default_chunksize(items.len(), self.processes()));
        self.submit_items(&job, 0, items, chunksize)?;
        Ok(job)
    }

    /// Submits encoded argument arrays, items `first..` of `job`, in chunks.
    fn submit_items(
        &self,
        job: &Arc<Job>,
        first: usize,
        items: Packed,
        chunksize: usize,
    ) -> Result<()> {
        let parts = if items.len() <= chunksize {
            vec![items]
        } else {
            items.split(chunksize)
        };
        self.submit(job, first, parts, SendAs::Batch)
    }

    /// Encodes `items` and submits them as one job. When the iterator knows its length
    /// (a range, a `Vec`, a slice), each chunk is submitted as soon as it is encoded, so the
    /// workers start on the first chunk while the rest is still being encoded; otherwise the
    /// default chunk size needs the length, and everything is encoded first. If an item
    /// fails to encode, the chunks already submitted still run (as in Python), those not yet
    /// started are cancelled, and the error is returned.
    pub(super) fn submit_streamed<A>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        mut encode: impl FnMut(&mut Vec<u8>, A) -> Result<()>,
    ) -> Result<Arc<Job>> {
        if let Some(c) = chunksize {
            super::check_chunksize(c)?;
        }
        let items = items.into_iter();
        let n = match items.size_hint() {
            (lo, Some(hi)) if lo == hi => lo,
            _ => return self.submit_packed(task, pack(items, encode)?, chunksize),
        };
        let job = self.job(task, n)?;
        // A closed or broken pool fails before anything is encoded, even for no items.
        self.submit(&job, 0, std::iter::empty(), SendAs::Batch)?;
        let chunksize = chunksize
            .unwrap_or_else(|| default_chunksize(n, self.processes()))
            .clamp(1, n.max(1));
        let fail = |e: Error| {
            self.scheduler.cancel_queued(Some(&job));
            Err(e)
        };
        // Chunks are handed over in groups: the first small, so the workers start early,
        // then larger, so tiny chunks cost one lock and one write per group, not each.
        let mut flush_at = FIRST_GROUP_ITEMS;
        // The chunks encoded and not yet handed over, items `ready_first..next`.
        let mut ready: Vec<Packed> = Vec::new();
        let mut ready_first = 0;
        let mut ready_items = 0;
        // Slots the job has: the promised length, grown if the iterator yields more.
        let mut slots = n;
        let mut next = 0;
        let mut part = Packed::default();
        let mut stage = |part: Packed, next: &mut usize, ready: &mut Vec<Packed>| {
            let len = part.len();
            if *next + len > slots {
                job.grow(*next + len - slots);
                slots = *next + len;
            }
            ready.push(part);
            *next += len;
            len
        };
        for item in items {
            if part.ends.capacity() == 0 {
                part = Packed::with_capacity(chunksize, chunksize * 4);
            }
            if let Err(e) = encode(&mut part.data, item) {
                return fail(e);
            }
            part.close_item();
            if part.len() == chunksize {
                ready_items += stage(std::mem::take(&mut part), &mut next, &mut ready);
                if ready_items >= flush_at {
                    if let Err(e) = self.submit(&job, ready_first, ready.drain(..), SendAs::Batch) {
                        return fail(e);
                    }
                    ready_first = next;
                    ready_items = 0;
                    flush_at = (flush_at * 2).min(MAX_GROUP_ITEMS);
                }
            }
        }
        if !part.is_empty() {
            stage(part, &mut next, &mut ready);
        }
        if !ready.is_empty()
            && let Err(e) = self.submit(&job, ready_first, ready, SendAs::Batch)
        {
            return fail(e);
        }
        // An iterator may yield fewer items than its size_hint promised (a bug, but not
        // unsafe): the job ends where the items did.
        job.truncate(next);
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::default_chunksize;

    #[test]
    fn chunksize_follows_python() {
        // Python: chunksize, extra = divmod(len, workers * 4); if extra: chunksize += 1
        assert_eq!(default_chunksize(200_000, 2), 25_000);
        assert_eq!(default_chunksize(10, 3), 1);
        assert_eq!(default_chunksize(25, 3), 3);
        assert_eq!(default_chunksize(0, 2), 1);
    }
}
