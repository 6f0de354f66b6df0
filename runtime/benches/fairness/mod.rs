//! The fairness rows: tenants sharing one pool (`Pool::with_tenant`).
//!
//! A flood: one tenant queues 100k tiny tasks at once (a map of chunksize 1) while nine light tenants each submit
//! one task at a time, steadily; the light tenants' waits (submit → result, while the flood
//! is still queued) are reported as p50/p99, with Jain's fairness index over the nine
//! tenants' mean waits, and the same light task's wait behind the same flood with no tenants
//! named (first in, first out: what a Python `Pool` does). Backlogged: four equal tenants
//! queue the same work one after the other; Jain's index over the work each had done when
//! the first finished (first in, first out would give 0.25).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wasmpool::{AsyncResult, Module, Pool, Tenant};

/// What the flood measured, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// A light task's queue wait ([`AsyncResult::queue_wait`]: from submission until a
    /// worker was given it), median and 99th percentile.
    pub queue_p50_ms: f64,
    pub queue_p99_ms: f64,
    /// A light task's round trip (submit → result, as its submitter saw it), 99th
    /// percentile.
    pub trip_p99_ms: f64,
    /// Jain's index over the light tenants' mean queue waits (1 = all waited alike).
    pub jain: f64,
    /// The light task's queue wait behind the same flood without tenants.
    pub fifo_ms: f64,
    /// Light tasks measured (all tenants together).
    pub samples: usize,
}

/// One measured flood shared by the rows that report it: the first of them to run in a
/// repetition measures it, the others read what it measured (whichever rows `--only`
/// keeps).
#[derive(Debug, Default)]
pub struct SharedFlood(std::cell::RefCell<Option<(Flood, Vec<usize>)>>);

impl SharedFlood {
    /// The flood row `row`'s view: the flood measured in this repetition, or a new one
    /// when this row has read the last one already.
    pub fn get(&self, row: usize, measure: impl FnOnce() -> Flood) -> Flood {
        let mut cell = self.0.borrow_mut();
        match cell.as_mut() {
            Some((flood, read)) if !read.contains(&row) => {
                read.push(row);
                *flood
            }
            _ => {
                let flood = measure();
                *cell = Some((flood, vec![row]));
                flood
            }
        }
    }
}

/// Jain's fairness index of `xs`: (Σx)² / (n·Σx²), 1 when all are equal, 1/n at worst;
/// NaN for no `xs`.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
    if xs.is_empty() {
        // Nothing measured is not a fair share.
        return f64::NAN;
    }
    if squares == 0.0 {
        return 1.0;
    }
    sum * sum / (xs.len() as f64 * squares)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

const LIGHT_TENANTS: u64 = 9;

/// Queues `n` tiny tasks as `pool`'s tenant, in one go: a map of chunksize 1, each item a
/// task of its own (as many chunks as `apply_async` calls), queued faster than two workers
/// answer them, so the backlog is really there.
fn flood_of(pool: &Pool, n: u64) -> AsyncResult<Vec<u64>> {
    pool.map_async::<_, u64>("square", 0..n, Some(1))
        .expect("flood")
}

/// The flood scenario on two workers (see the module's doc). The light tenants start once
/// the flood is queued, and a light task's wait counts while the flood is not yet all
/// answered.
///
/// # Panics
///
/// When a light tenant ran no task while the flood lasted: there is nothing to measure, and
/// an empty measurement must not read as a perfectly fair one.
pub fn flood(testkit: &Module, smoke: bool) -> Flood {
    let (flood_n, per_light) = if smoke {
        (20_000, 200)
    } else {
        (100_000, 2_000)
    };
    let pool = Pool::new(testkit, 2).expect("pool");
    let _: Vec<u64> = pool.map("square", 0..1000u64).expect("warm-up");

    let start = Arc::new(Barrier::new(LIGHT_TENANTS as usize + 1));
    let over = Arc::new(AtomicBool::new(false));
    let flooder = {
        let flooder = pool.with_tenant(Tenant::new(1, 1).expect("tenant"));
        let (start, over) = (start.clone(), over.clone());
        std::thread::spawn(move || {
            let flood = flood_of(&flooder, flood_n);
            start.wait();
            flood.wait();
            over.store(true, Ordering::SeqCst);
        })
    };
    let threads: Vec<_> = (0..LIGHT_TENANTS)
        .map(|t| {
            let light = pool.with_tenant(Tenant::new(10 + t, 1).expect("tenant"));
            let (over, start) = (over.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                // (queue wait, round trip) of each light task, in ms.
                let mut waits = Vec::new();
                for i in 0..per_light {
                    let t0 = Instant::now();
                    let r = light
                        .apply_async::<_, u64>("square", &(i,))
                        .expect("light task");
                    assert_eq!(r.get().expect("light task"), i * i);
                    let trip = t0.elapsed().as_secs_f64() * 1e3;
                    if over.load(Ordering::SeqCst) {
                        // The flood is over: no contention left to measure.
                        break;
                    }
                    let queued = r.queue_wait().expect("it ran").as_secs_f64() * 1e3;
                    waits.push((queued, trip));
                    std::thread::sleep(Duration::from_millis(2));
                }
                waits
            })
        })
        .collect();
    let per_tenant: Vec<Vec<(f64, f64)>> = threads
        .into_iter()
        .map(|t| t.join().expect("light tenant"))
        .collect();
    flooder.join().expect("the flood");
    // Smoke sizes on a loaded machine may leave a tenant no task during the flood; their
    // figures mean nothing anyway.
    assert!(
        smoke || per_tenant.iter().all(|w| !w.is_empty()),
        "a light tenant ran no task while the flood lasted: {:?}",
        per_tenant.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let means: Vec<f64> = per_tenant
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| w.iter().map(|(q, _)| q).sum::<f64>() / w.len() as f64)
        .collect();
    let all: Vec<(f64, f64)> = per_tenant.into_iter().flatten().collect();
    let mut queued: Vec<f64> = all.iter().map(|(q, _)| *q).collect();
    let mut trips: Vec<f64> = all.iter().map(|(_, t)| *t).collect();
    queued.sort_by(f64::total_cmp);
    trips.sort_by(f64::total_cmp);

    // The same light task behind the same flood, with no tenants: it waits for all of it.
    let flood = flood_of(&pool, flood_n);
    let fifo = pool
        .apply_async::<_, u64>("square", &(3u64,))
        .expect("fifo task");
    fifo.get().expect("fifo task");
    let fifo_ms = fifo.queue_wait().expect("it ran").as_secs_f64() * 1e3;
    flood.wait();
    Flood {
        queue_p50_ms: percentile(&queued, 0.5),
        queue_p99_ms: percentile(&queued, 0.99),
        trip_p99_ms: percentile(&trips, 0.99),
        jain: jain(&means),
        fifo_ms,
        samples: all.len(),
    }
}

/// Jain's index over the work each of four equal tenants did between the moment all had
/// queued theirs and the moment the first of them finished, each having queued the same
/// work (1 ms tasks) one after the other.
pub fn backlogged(testkit: &Module, smoke: bool) -> f64 {
    let n = if smoke { 100 } else { 1_000 };
    let pool = Pool::new(testkit, 2).expect("pool");
    let _: Vec<u64> = pool.map("square", 0..1000u64).expect("warm-up");
    let tenants: Vec<Pool> = (0..4)
        .map(|t| pool.with_tenant(Tenant::new(100 + t, 1).expect("tenant")))
        .collect();
    // Each tenant queues all of its work before the next one does: first in, first out
    // would finish the first tenant before the others start.
    let work: Vec<Vec<AsyncResult<u64>>> = tenants
        .iter()
        .map(|p| {
            (0..n)
                .map(|_| p.apply_async::<_, u64>("sleep_ms", &(1u64,)).expect("task"))
                .collect()
        })
        .collect();
    let done = |w: &Vec<AsyncResult<u64>>| w.iter().filter(|r| r.ready()).count() as f64;
    // What ran while the later tenants were still queuing does not count.
    let before: Vec<f64> = work.iter().map(done).collect();
    let after = loop {
        if work.iter().any(|w| w.last().is_some_and(|r| r.ready())) {
            break work.iter().map(done).collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    for w in &work {
        for r in w {
            r.wait();
        }
    }
    let shares: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    jain(&shares)
}
