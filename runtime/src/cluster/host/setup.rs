//! A host's local pools are set up off its claim thread: an entry whose pool does not
//! exist yet waits here, by pool key, while a setup thread (of [`SETUP_THREADS`] per host)
//! takes a seat for the pool, fetches the module from Redis and compiles it, then starts
//! the entries that waited for it. The claim thread goes on claiming for the pools that
//! exist, so one tenant's new module (or a host whose pools are all busy) does not stall
//! the others; and the other setup threads set up other pools meanwhile, so a module that
//! takes long to compile (a Python component's first compile is ~10 CPU-s) or a setup
//! waiting for a seat does not hold up another's new pool.
//!
//! Entries waiting here are in flight (claimed, not yet committed) but take none of the
//! host's room for chunks that run: the claim thread bounds them apart, by stream
//! (`Streams::at_bound`). A setup that fails fails each with its error, a cancel fails them as cancelled (the commit
//! script refuses a cancelled chunk's result), and a host that stops still sets them up
//! and runs them, as it runs every chunk it claimed.
//!
//! An entry runs only in a pool of the runtime it was claimed under (its `since`): one
//! claimed before the host was declared dead is given back unrun (its failure goes to the
//! commit, whose fence gives it back: the reaper may have given it to another host), at
//! the readmit or when its setup ends; one claimed after a readmit that let its new pool
//! go waits for a pool of the new runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Claimed, HostInner, MAX_POOLS, PoolKey, SEAT_WAIT, Seat, seat, sha256_hex};
use crate::cluster::reconnect::with_connection;
use crate::cluster::wire::{ChunkResult, ChunkSpec};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::protocol::Limits;

/// How many setup threads a host runs: pools of this many keys are set up at once.
pub(super) const SETUP_THREADS: usize = 3;

/// A seat taken for a pool being set up, counted (in `HostInner::seating`) until the pool is
/// in the table or its setup failed: so setups running at once never take more seats than
/// there are.
struct SeatTaken<'a>(&'a AtomicUsize);

impl Drop for SeatTaken<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A claimed chunk, decoded, until it starts in its local pool.
#[derive(Debug)]
pub(super) struct Waiting {
    pub(super) claimed: Claimed,
    pub(super) spec: ChunkSpec,
    /// How many times its tasks may be retried.
    pub(super) retries: u32,
}

/// The entries waiting for their local pool to be set up.
#[derive(Debug, Default)]
pub(super) struct Setups {
    /// The keys of the pools to set up, in the order first asked for, each once.
    queue: VecDeque<PoolKey>,
    /// The entries waiting, by their pool's key, in claim order.
    waiting: HashMap<PoolKey, Vec<Waiting>>,
}

impl HostInner {
    fn lock_setups(&self) -> MutexGuard<'_, Setups> {
        self.setups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The local pool for `key`, if it is set up and can run chunks (marked used now).
    pub(super) fn ready_pool(&self, key: &PoolKey) -> Option<Pool> {
        let mut pools = self.lock_pools();
        match pools.get_mut(key) {
            Some((p, used)) if !p.is_broken() => {
                *used = Instant::now();
                Some(p.clone())
            }
            _ => None,
        }
    }

    /// Hands a claimed entry whose pool is not set up to the setup threads.
    pub(super) fn wait_for_setup(&self, key: PoolKey, waiting: Waiting) {
        let mut setups = self.lock_setups();
        if !setups.waiting.contains_key(&key) {
            setups.queue.push_back(key.clone());
        }
        setups.waiting.entry(key).or_default().push(waiting);
        drop(setups);
        self.setup_wake.notify_all();
    }

    /// The stream each chunk waiting for a setup was claimed from, one per chunk (what the
    /// claim thread bounds them by).
    pub(super) fn waiting_streams(&self) -> Vec<std::sync::Arc<str>> {
        self.lock_setups()
            .waiting
            .values()
            .flatten()
            .map(|w| w.claimed.stream.clone())
            .collect()
    }

    /// The chunks waiting for a setup, by job, chunk and attempt (what a cancel looks for).
    pub(super) fn waiting_keys(&self) -> Vec<(String, u32, String)> {
        self.lock_setups()
            .waiting
            .values()
            .flatten()
            .map(|w| {
                let c = &w.claimed;
                (c.job.clone(), c.chunk, c.attempt.clone())
            })
            .collect()
    }

    /// Takes the chunk `key` (job, chunk, attempt) out of the setup's wait, cancelled: its
    /// result goes to the commit thread, which finds it cancelled. Whether it waited.
    pub(super) fn cancel_waiting(&self, key: &(String, u32, String)) -> bool {
        let taken = {
            let mut setups = self.lock_setups();
            let mut taken = None;
            for list in setups.waiting.values_mut() {
                if let Some(i) = list.iter().position(|w| {
                    w.claimed.job == key.0 && w.claimed.chunk == key.1 && w.claimed.attempt == key.2
                }) {
                    taken = Some(list.remove(i));
                    break;
                }
            }
            // A key left with no entry stays queued: its setup finds nothing to start.
            taken
        };
        let Some(w) = taken else { return false };
        let n = w.spec.items.len();
        let _ = self.done.send((
            w.claimed,
            ChunkResult::failed(n, "the chunk was cancelled before its pool was set up"),
        ));
        true
    }

    /// Sets up the pools asked for, one at a time, and starts the entries that waited for
    /// each; until the host stops and holds nothing. What each setup thread runs: a key is
    /// queued once, so no two set up the same pool.
    pub(super) fn setup_loop(&self) {
        let mut con: Option<redis::Connection> = None;
        loop {
            let key = {
                let mut setups = self.lock_setups();
                loop {
                    if let Some(key) = setups.queue.pop_front() {
                        break key;
                    }
                    if self.stop.load(Ordering::Relaxed) && *self.lock_inflight() == 0 {
                        return;
                    }
                    setups = self
                        .setup_wake
                        .wait_timeout(setups, Duration::from_millis(200))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            };
            let made = self.pool_for(&mut con, &key);
            // Taken after the pool is in the table: an entry of this key claimed during the
            // setup joined this list; one claimed after finds the pool (or, if the setup
            // failed, queues the key again).
            let waiting = self.lock_setups().waiting.remove(&key).unwrap_or_default();
            let mut later = Vec::new();
            for w in waiting {
                match &made {
                    // Each entry runs only in workers of the lane it was claimed under:
                    // its `since` is what the commit fences it by.
                    Ok((pool, since)) => match w.claimed.since.cmp(since) {
                        std::cmp::Ordering::Equal => self.launch(pool, w),
                        // Claimed before the host was declared dead (the pool is of the
                        // runtime that replaced its lane): the reaper may have given it to
                        // another host already, and here its object operations would be
                        // accepted. It does not run: its failure goes to the commit, whose
                        // fence gives it back.
                        std::cmp::Ordering::Less => self.give_back(w),
                        // Claimed after a readmit that let this pool go: it waits for a
                        // pool of its own runtime.
                        std::cmp::Ordering::Greater => later.push(w),
                    },
                    Err(e) => {
                        let n = w.spec.items.len();
                        let _ = self
                            .done
                            .send((w.claimed, ChunkResult::failed(n, &e.to_string())));
                    }
                }
            }
            for w in later {
                self.wait_for_setup(key.clone(), w);
            }
            // The claim thread may read again the streams it skipped for them.
            self.room.notify_all();
        }
    }

    /// Sends an entry claimed before the host was last declared dead to the commit thread,
    /// unrun: the commit script, fenced by its `since`, gives it back (redelivered, or
    /// failed as lost), as it does a chunk stopped by a readmit.
    fn give_back(&self, w: Waiting) {
        let n = w.spec.items.len();
        let _ = self.done.send((
            w.claimed,
            ChunkResult::failed(
                n,
                "the host was declared dead while the chunk waited for its pool to be set up",
            ),
        ));
    }

    /// After a readmit to `since`: gives back at once each entry waiting for a setup that
    /// was claimed before it (see [`give_back`](HostInner::give_back)), rather than after
    /// its setup. Answers how many.
    pub(super) fn give_back_waiting_before(&self, since: u64) -> usize {
        let stale: Vec<Waiting> = {
            let mut setups = self.lock_setups();
            let mut stale = Vec::new();
            for list in setups.waiting.values_mut() {
                let (old, kept): (Vec<Waiting>, Vec<Waiting>) =
                    list.drain(..).partition(|w| w.claimed.since < since);
                *list = kept;
                stale.extend(old);
            }
            // A key left with no entry stays queued: its setup finds nothing to start.
            stale
        };
        let n = stale.len();
        for w in stale {
            self.give_back(w);
        }
        n
    }

    /// The local pool for a module, metering and worker setup, loading the module from
    /// Redis (and compiling it into this host's cache) the first time. Its workers run the
    /// setup's initializer before their first task, and are replaced after its
    /// `maxtasksperchild`, as the submitting pool's would be.
    ///
    /// A pool whose initializer failed (it can run nothing more) is let go here, so this
    /// chunk gets a fresh one. A new pool takes a seat of [`MAX_POOLS`] first
    /// ([`take_seat`](HostInner::take_seat)). A pool built while the host was readmitted
    /// (its runtime replaced) is built again, in the new runtime.
    ///
    /// Answers the pool and the `since` of the runtime it runs in (when its
    /// object lane was admitted): only entries claimed under that `since` may run in it.
    fn pool_for(&self, con: &mut Option<redis::Connection>, key: &PoolKey) -> Result<(Pool, u64)> {
        let broken = {
            let mut pools = self.lock_pools();
            match pools.get_mut(key) {
                // The table holds pools of the current runtime only: a readmit stores the
                // new `since` and empties it under this lock.
                Some((p, used)) if !p.is_broken() => {
                    *used = Instant::now();
                    return Ok((p.clone(), self.since.load(Ordering::Relaxed)));
                }
                Some(_) => pools.remove(key),
                None => None,
            }
        };
        if broken.is_some() {
            tracing::info!(
                "cluster host: a local pool's initializer failed; the next chunk of its \
                 module and setup gets a new pool"
            );
        }
        // Outside the lock: the last handle's drop stops its workers.
        drop(broken);
        let (sha, engine, setup) = key;
        // Before a seat or the module: a grant this host refuses costs it nothing.
        let grants = self.allowed.admit(&setup.grants, &self.id)?;
        // Held until the pool is in the table (or the setup failed).
        let _seat = self.take_seat();
        // The connection may have been idle for hours (Redis's `timeout` closes it), or
        // the slot moved: connected again, once, before the chunks waiting fail.
        let module = self.keys.module(sha);
        let bytes: Option<Vec<u8>> = with_connection(con, &self.url, "fetching a module", |c| {
            redis::cmd("GET").arg(&module).query(c)
        })?;
        let Some(bytes) = bytes else {
            return Err(Error::Cluster(format!(
                "module {sha} is not in Redis (expired, or stored under another layout)"
            )));
        };
        if sha256_hex(&bytes) != *sha {
            return Err(Error::Cluster(format!(
                "the bytes stored for module {sha} have another SHA-256"
            )));
        }
        loop {
            let since = self.since.load(Ordering::Relaxed);
            let runtime = self
                .runtime
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let module = runtime.module_from_bytes(&bytes, format!("cluster module {sha}"))?;
            let mut builder = Pool::builder(&module)
                .processes(self.slots)
                .output(setup.output.output())
                .grants(grants.clone())
                .interruptible(engine.interruptible);
            if engine.metered {
                builder = builder.limits(Limits::default().fuel(u64::MAX));
            }
            if let Some((task, args)) = &setup.initializer {
                builder = builder.initializer_encoded(task.clone(), args.clone());
            }
            if let Some(n) = setup.maxtasksperchild {
                builder = builder.maxtasksperchild(n);
            }
            let pool = builder.build()?;
            let mut pools = self.lock_pools();
            // A readmit replaces the runtime, then stores `since` and empties the table under
            // this lock: a pool of the old runtime is never kept.
            if self.since.load(Ordering::Relaxed) == since {
                pools.insert(key.clone(), (pool.clone(), Instant::now()));
                return Ok((pool, since));
            }
        }
    }

    /// Makes room for one more local pool within [`MAX_POOLS`], counting the pools let go
    /// whose chunks still run (they keep their workers until then): lets go the idle pool
    /// used least recently, or, with every pool running chunks, waits for one to finish,
    /// up to [`SEAT_WAIT`]. The seats of setups still running count as taken.
    fn take_seat(&self) -> SeatTaken<'_> {
        let deadline = Instant::now() + SEAT_WAIT;
        loop {
            let evicted = {
                let mut pools = self.lock_pools();
                let running = self.lock_running();
                let mut let_go: Vec<&Pool> = Vec::new();
                for (p, _) in running.values() {
                    let kept = pools.values().any(|(q, _)| q.same_pool(p));
                    if !kept && !let_go.iter().any(|q| q.same_pool(p)) {
                        let_go.push(p);
                    }
                }
                let listed: Vec<(PoolKey, Instant, bool)> = pools
                    .iter()
                    .map(|(k, (p, used))| {
                        let busy = running.values().any(|(q, _)| q.same_pool(p));
                        (k.clone(), *used, busy)
                    })
                    .collect();
                let taken = let_go.len() + self.seating.load(Ordering::Relaxed);
                match seat(&listed, taken, MAX_POOLS) {
                    // Counted under the pools' lock, which every setup's look takes.
                    Seat::Free => return self.seat_taken(),
                    Seat::Evict(k) => pools.remove(&k),
                    Seat::Wait
                        if Instant::now() >= deadline || self.stop.load(Ordering::Relaxed) =>
                    {
                        tracing::warn!(
                            "cluster host: every one of its {MAX_POOLS} local pools still runs \
                             chunks after {SEAT_WAIT:?}; starting one more"
                        );
                        return self.seat_taken();
                    }
                    Seat::Wait => None,
                }
            };
            match evicted {
                // Let go outside the locks: the last handle's drop stops its workers.
                Some(e) => drop(e),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn seat_taken(&self) -> SeatTaken<'_> {
        self.seating.fetch_add(1, Ordering::Relaxed);
        SeatTaken(&self.seating)
    }
}
