//! Deadlines of blocked calls: one thread sleeps until the earliest and expires it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// (deadline, object id, waiter id)
type Entry = Reverse<(Instant, u64, u64)>;

#[derive(Debug, Default)]
pub(crate) struct Timer {
    heap: Mutex<BinaryHeap<Entry>>,
    wake: Condvar,
}

impl Timer {
    /// The process's timer; its thread starts with the first deadline.
    pub fn get() -> &'static Timer {
        static TIMER: OnceLock<&'static Timer> = OnceLock::new();
        TIMER.get_or_init(|| {
            let timer: &'static Timer = Box::leak(Box::default());
            let spawned = std::thread::Builder::new()
                .name("wasmpool-broker-timer".into())
                .spawn(move || timer.run());
            if let Err(e) = spawned {
                tracing::error!("cannot start the broker's timer thread: {e}");
            }
            timer
        })
    }

    /// Expires waiter `waiter` of object `object` after `after`.
    pub fn schedule(&self, after: Duration, object: u64, waiter: u64) {
        // A deadline past what an Instant can hold is no deadline.
        let Some(deadline) = Instant::now().checked_add(after) else {
            return;
        };
        if let Ok(mut heap) = self.heap.lock() {
            heap.push(Reverse((deadline, object, waiter)));
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let Ok(mut heap) = self.heap.lock() else {
            return;
        };
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, object, waiter))) = heap.peek().copied() {
                if at > now {
                    break;
                }
                heap.pop();
                due.push((object, waiter));
            }
            if !due.is_empty() {
                drop(heap);
                for (object, waiter) in due {
                    super::broker().expire(object, waiter);
                }
                heap = match self.heap.lock() {
                    Ok(h) => h,
                    Err(_) => return,
                };
                continue;
            }
            let wait = heap
                .peek()
                .map(|Reverse((at, _, _))| at.saturating_duration_since(now));
            heap = match wait {
                Some(d) => match self.wake.wait_timeout(heap, d) {
                    Ok((h, _)) => h,
                    Err(_) => return,
                },
                None => match self.wake.wait(heap) {
                    Ok(h) => h,
                    Err(_) => return,
                },
            };
        }
    }
}
