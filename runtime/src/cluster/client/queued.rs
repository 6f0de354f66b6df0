//! Cancelling a cluster pool's work that has not started (an executor's `TaskFuture::cancel`
//! and its `shutdown` with `cancel_futures`): chunks not sent yet, and chunks whose stream
//! entry no host has claimed. A chunk a host holds is left to run, as a local pool leaves
//! what it sent ahead to a worker: whether it started is the host's to know.
//!
//! While Redis is known to be down a cancel does not wait for it: it cancels what is still
//! in the outbox, and leaves (not cancelled) the chunks the sender is trying to send and
//! those in the stream, which only Redis could say no host has claimed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, MutexGuard, TryLockError};
use std::time::Duration;

use redis::Script;

use super::{Inner, Outgoing};
use crate::cluster::keys::GROUP;
use crate::pool::job::{CancelQueued, Job, Slot};

/// Deletes each given entry of the task stream that no host has claimed (in the stream,
/// and not pending with the consumer group), and sets its chunk's fence to `x` (so that a
/// copy of it sent twice, by a submission retried on a new connection, is refused too). In
/// one script, so no host claims an entry between the look and the delete.
///
/// KEYS: the task stream, then the record of each entry's job. ARGV: group, ttl (ms), then
/// each entry's id and chunk. Returns, for each entry, 1 if it was deleted, 0 if a host had
/// it (or it is gone: committed, or taken back from a dead host).
const CANCEL_UNCLAIMED: &str = r#"
local out = {}
for i = 2, #KEYS do
  local id = ARGV[2 * i - 1]
  local claimed = redis.pcall('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  -- No group (Redis lost its data and no host made it again): nobody claimed anything.
  local held = type(claimed) == 'table' and not claimed.err and #claimed > 0
  if not held and #redis.call('XRANGE', KEYS[1], id, id) > 0 then
    redis.call('XDEL', KEYS[1], id)
    redis.call('HSET', KEYS[i], 'd:' .. ARGV[2 * i], 'x')
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"#;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CANCEL_UNCLAIMED));

/// Entries looked at in one script at most (Redis runs nothing else meanwhile).
const PER_SCRIPT: usize = 512;

impl CancelQueued for Inner {
    fn cancel_queued(&self, only: Option<&Arc<Job>>) -> usize {
        let wanted = |job: &Arc<Job>| only.is_none_or(|j| Arc::ptr_eq(j, job));
        // The sender is not between the outbox and the stream meanwhile (unless it waits
        // for a Redis that is down: then what it holds is on its way, not cancelled).
        let sending = self.sending_unless_down();
        let unsent: Vec<Outgoing> = {
            let mut out = self.lock_outbox();
            let (take, keep) = std::mem::take(&mut *out)
                .into_iter()
                .partition(|o| wanted(&o.job));
            *out = keep;
            take
        };
        // (job, first item, items) of each chunk cancelled.
        let mut runs: Vec<(Arc<Job>, usize, usize)> = Vec::new();
        let mut touched: Vec<String> = Vec::new();
        // (job id, chunk, entry) of each chunk in the stream.
        let sent: Vec<(String, u32, String)> = {
            let mut jobs = self.lock_jobs();
            for o in &unsent {
                if let Some(r) = jobs.by_id.get_mut(&o.id) {
                    for c in o.first_chunk..o.first_chunk + o.parts.len() as u32 {
                        if let Some((first, n)) = r.chunks.remove(&c) {
                            runs.push((r.job.clone(), first, n));
                        }
                    }
                }
                touched.push(o.id.clone());
            }
            jobs.by_id
                .iter()
                .filter(|(_, r)| wanted(&r.job))
                .flat_map(|(id, r)| {
                    r.entries
                        .iter()
                        .map(move |(c, e)| (id.clone(), *c, e.clone()))
                })
                .collect()
        };
        if !sent.is_empty() && sending.is_some() && !self.redis_down.load(Ordering::Relaxed) {
            let deleted = self.delete_unclaimed(&sent);
            let mut jobs = self.lock_jobs();
            for ((id, chunk, _), gone) in sent.iter().zip(deleted) {
                if !gone {
                    continue;
                }
                if let Some(r) = jobs.by_id.get_mut(id) {
                    r.entries.remove(chunk);
                    if let Some((first, n)) = r.chunks.remove(chunk) {
                        runs.push((r.job.clone(), first, n));
                    }
                }
                touched.push(id.clone());
            }
        }
        let mut cancelled = 0;
        for (job, first, n) in &runs {
            cancelled += job.complete_run(*first, *n, Slot::Cancelled);
        }
        let mut hooked: Vec<&Arc<Job>> = Vec::new();
        for (job, _, _) in &runs {
            if !hooked.iter().any(|j| Arc::ptr_eq(j, job)) {
                hooked.push(job);
                self.callbacks.run_hooks(job);
            }
        }
        {
            let mut jobs = self.lock_jobs();
            touched.sort_unstable();
            touched.dedup();
            for id in &touched {
                jobs.forget_if_done(id);
            }
        }
        self.changed.notify_all();
        cancelled
    }
}

impl Inner {
    /// The sender's lock, once it is free; `None` at once if Redis is down, while the
    /// sender holds it (it may for as long as the Redis timeout).
    fn sending_unless_down(&self) -> Option<MutexGuard<'_, ()>> {
        // The sender takes no new batch while a cancel waits (see `cancels_waiting`).
        self.cancels_waiting.fetch_add(1, Ordering::Relaxed);
        let got = loop {
            match self.sending.try_lock() {
                Ok(guard) => break Some(guard),
                Err(TryLockError::Poisoned(p)) => break Some(p.into_inner()),
                Err(TryLockError::WouldBlock) if self.redis_down.load(Ordering::Relaxed) => {
                    break None;
                }
                // A send takes a round trip: polled, as the lock has no timed wait.
                Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        self.cancels_waiting.fetch_sub(1, Ordering::Relaxed);
        got
    }

    /// Deletes the entries of `sent` (job id, chunk, entry) no host has claimed; answers,
    /// for each, whether it was. An entry Redis could not be asked about is not (it runs).
    fn delete_unclaimed(&self, sent: &[(String, u32, String)]) -> Vec<bool> {
        let mut deleted = Vec::with_capacity(sent.len());
        for part in sent.chunks(PER_SCRIPT) {
            let mut inv = SCRIPT.prepare_invoke();
            inv.key(&self.tasks_key);
            for (job, _, _) in part {
                inv.key(self.keys.job(job));
            }
            inv.arg(GROUP).arg(self.result_ttl.as_millis() as u64);
            for (_, chunk, entry) in part {
                inv.arg(entry).arg(*chunk);
            }
            match self.with_con("cancelling queued work", |c| inv.invoke::<Vec<i64>>(c)) {
                Ok(got) => {
                    let mut flags: Vec<bool> = got.iter().map(|g| *g == 1).collect();
                    // One answer an entry (a short answer would leave the rest to run).
                    flags.resize(part.len(), false);
                    deleted.extend(flags);
                }
                Err(e) => {
                    tracing::warn!("cluster: cancelling queued work: {e}");
                    deleted.resize(deleted.len() + part.len(), false);
                }
            }
        }
        deleted
    }
}
