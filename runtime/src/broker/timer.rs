//! Deadlines of blocked calls: one thread per broker sleeps until the earliest and expires
//! it; it starts with the broker's first deadline and ends with the broker.
//!
//! Most blocked calls are answered long before their deadline (a `get` with a one-hour
//! timeout on a busy queue), so the heap is swept of answered waiters whenever it has doubled
//! since the last sweep: a guest calling in a loop cannot grow it without bound.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// (deadline, object id, waiter id)
type Entry = Reverse<(Instant, u64, u64)>;

/// The heap is never swept below this many entries.
const MIN_SWEEP: usize = 1024;

#[derive(Debug, Default)]
struct Deadlines {
    heap: BinaryHeap<Entry>,
    /// The size at which the next push sweeps answered waiters out first.
    sweep_at: usize,
    /// Set when the broker is gone: the thread leaves.
    stopped: bool,
}

#[derive(Debug)]
pub(crate) struct Timer {
    deadlines: Mutex<Deadlines>,
    wake: Condvar,
    broker: Weak<super::Broker>,
    started: AtomicBool,
}

impl Timer {
    /// The timer of `broker`; its thread starts with the first deadline.
    pub fn start(broker: Weak<super::Broker>) -> Arc<Timer> {
        Arc::new(Timer {
            deadlines: Mutex::default(),
            wake: Condvar::new(),
            broker,
            started: AtomicBool::new(false),
        })
    }

    /// The broker is gone: the thread leaves, its deadlines with it.
    pub fn stop(&self) {
        if let Ok(mut d) = self.deadlines.lock() {
            d.stopped = true;
            d.heap.clear();
        }
        self.wake.notify_all();
    }

    fn spawn_thread(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let timer = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wasmpool-broker-timer".into())
            .spawn(move || timer.run());
        if let Err(e) = spawned {
            tracing::error!("cannot start the broker's timer thread: {e}");
            // The next deadline tries again.
            self.started.store(false, Ordering::SeqCst);
        }
    }

    /// Expires waiter `waiter` of object `object` after `after`. `waiting` answers the
    /// (object, waiter) pairs still blocked, asked for only when the heap is swept.
    pub fn schedule(
        self: &Arc<Self>,
        after: Duration,
        object: u64,
        waiter: u64,
        waiting: impl FnOnce() -> HashSet<(u64, u64)>,
    ) {
        // A deadline past what an Instant can hold is no deadline.
        let Some(deadline) = Instant::now().checked_add(after) else {
            return;
        };
        if let Ok(mut d) = self.deadlines.lock() {
            if d.heap.len() >= d.sweep_at.max(MIN_SWEEP) {
                let waiting = waiting();
                d.heap
                    .retain(|Reverse((_, o, w))| waiting.contains(&(*o, *w)));
                d.sweep_at = d.heap.len().saturating_mul(2);
            }
            d.heap.push(Reverse((deadline, object, waiter)));
            self.wake.notify_one();
        }
        self.spawn_thread();
    }

    /// How many deadlines are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.deadlines.lock().map_or(0, |d| d.heap.len())
    }

    fn run(&self) {
        let Ok(mut d) = self.deadlines.lock() else {
            return;
        };
        loop {
            if d.stopped {
                return;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, object, waiter))) = d.heap.peek().copied() {
                if at > now {
                    break;
                }
                d.heap.pop();
                due.push((object, waiter));
            }
            if !due.is_empty() {
                drop(d);
                let Some(broker) = self.broker.upgrade() else {
                    return;
                };
                for (object, waiter) in due {
                    broker.expire(object, waiter);
                }
                drop(broker);
                d = match self.deadlines.lock() {
                    Ok(d) => d,
                    Err(_) => return,
                };
                continue;
            }
            let wait = d
                .heap
                .peek()
                .map(|Reverse((at, _, _))| at.saturating_duration_since(now));
            d = match wait {
                Some(t) => match self.wake.wait_timeout(d, t) {
                    Ok((d, _)) => d,
                    Err(_) => return,
                },
                None => match self.wake.wait(d) {
                    Ok(d) => d,
                    Err(_) => return,
                },
            };
        }
    }
}
