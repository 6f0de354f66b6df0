//! The fairness rows: tenants sharing one pool (`Pool::with_tenant`).
//!
//! A flood: one tenant submits 100k tiny tasks at once while nine light tenants each submit
//! one task at a time, steadily; the light tenants' waits (submit → result, while the flood
//! is still queued) are reported as p50/p99, with Jain's fairness index over the nine
//! tenants' mean waits, and the same light task's wait behind the same flood with no tenants
//! named (first in, first out: what a Python `Pool` does). Backlogged: four equal tenants
//! queue the same work one after the other; Jain's index over the work each had done when
//! the first finished (first in, first out would give 0.25).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use wasmpool::{AsyncResult, Module, Pool, Tenant};

/// What the flood measured, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Jain's index over the light tenants' mean waits (1 = all waited alike).
    pub jain: f64,
    /// The light task's wait behind the same flood without tenants.
    pub fifo_ms: f64,
}

/// Jain's fairness index of `xs`: (Σx)² / (n·Σx²), 1 when all are equal, 1/n at worst.
pub fn jain(xs: &[f64]) -> f64 {
    let sum: f64 = xs.iter().sum();
    let squares: f64 = xs.iter().map(|x| x * x).sum();
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

/// Submits `n` tiny tasks as `pool`'s tenant, at once.
fn flood_of(pool: &Pool, n: u64) -> Vec<AsyncResult<u64>> {
    (0..n)
        .map(|i| pool.apply_async::<_, u64>("square", &(i,)).expect("flood"))
        .collect()
}

/// The flood scenario on two workers (see the module's doc).
pub fn flood(testkit: &Module, smoke: bool) -> Flood {
    let (flood_n, per_light) = if smoke { (20_000, 5) } else { (100_000, 60) };
    let pool = Pool::new(testkit, 2).expect("pool");
    let _: Vec<u64> = pool.map("square", 0..1000u64).expect("warm-up");

    let flooder = pool.with_tenant(Tenant::new(1, 1).expect("tenant"));
    let flood = flood_of(&flooder, flood_n);
    let last = Arc::new(flood.into_iter().last().expect("a flood"));
    let start = Arc::new(Barrier::new(LIGHT_TENANTS as usize));
    let threads: Vec<_> = (0..LIGHT_TENANTS)
        .map(|t| {
            let light = pool.with_tenant(Tenant::new(10 + t, 1).expect("tenant"));
            let (last, start) = (last.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut waits = Vec::new();
                for i in 0..per_light {
                    let t0 = Instant::now();
                    let r: u64 = light.apply("square", &(i,)).expect("light task");
                    let wait = t0.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(r, i * i);
                    if last.ready() {
                        // The flood is over: no contention left to measure.
                        break;
                    }
                    waits.push(wait);
                    std::thread::sleep(Duration::from_millis(2));
                }
                waits
            })
        })
        .collect();
    let per_tenant: Vec<Vec<f64>> = threads
        .into_iter()
        .map(|t| t.join().expect("light tenant"))
        .collect();
    last.wait();
    let means: Vec<f64> = per_tenant
        .iter()
        .filter(|w| !w.is_empty())
        .map(|w| w.iter().sum::<f64>() / w.len() as f64)
        .collect();
    let mut all: Vec<f64> = per_tenant.into_iter().flatten().collect();
    all.sort_by(f64::total_cmp);

    // The same light task behind the same flood, with no tenants: it waits for all of it.
    let flood = flood_of(&pool, flood_n);
    let t0 = Instant::now();
    let _: u64 = pool.apply("square", &(3u64,)).expect("fifo task");
    let fifo_ms = t0.elapsed().as_secs_f64() * 1e3;
    for r in &flood {
        r.wait();
    }
    Flood {
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        jain: jain(&means),
        fifo_ms,
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
