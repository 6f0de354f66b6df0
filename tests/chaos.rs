//! The chaos test: `imap` over 10,000 tasks while a random worker is killed every ~100 ms.
//! Every task not killed returns its correct result, in order; killed ones report "worker
//! lost" (or succeed on retry, when retries are on); nothing hangs; and the host's memory
//! stays bounded: its heap peaks low while the run lasts, and a run leaves nothing behind.
//!
//! A test binary of its own, so the allocator counts this test's host and nothing else.

// A failed unwrap is a failed test, with its location: what a test should do.
#![allow(clippy::unwrap_used)]

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, Ordering};
use std::time::Duration;

use wasmpool::{Error, Pool};

use util::{killer, testkit, within};

const LIMIT: Duration = Duration::from_secs(240);

/// Items per round.
const ITEMS: u64 = 10_000;

/// The most heap the host may hold at any moment of a round, beyond what it held before the
/// round began. A round holds a pool, its jobs' bookkeeping and the chunks in flight; the
/// results are consumed as they arrive, so nothing in it grows with the number of items.
const PEAK_BUDGET: isize = 32 << 20;

/// The most heap that rounds after the first may leave behind, together. Anything kept per
/// item or per kill (about 55 kills a round) would exceed it.
const LEAK_BUDGET: isize = 256 << 10;

// ---- Counting the host's heap ------------------------------------------------------------

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

/// Counts the bytes the whole process holds, and the most it held.
fn count(delta: isize) {
    let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: util::CountingAlloc = util::CountingAlloc(count);

// ---- The chaos ---------------------------------------------------------------------------

/// One round: a pool of 4 under a worker kill every 100 ms maps `ITEMS` tasks. Returns the
/// most heap the host held during the round beyond what it held before.
fn chaos(retries: u32) -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let pool = Pool::builder(&testkit())
        .processes(4)
        .retries(retries)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = killer(pool.clone(), Duration::from_millis(100), stop.clone());
    let lost = AtomicU32::new(0);
    for (i, r) in pool
        .imap::<_, u64>("square_slowly", 0..ITEMS)
        .unwrap()
        .enumerate()
    {
        match r {
            Ok(v) => assert_eq!(v, (i as u64) * (i as u64), "item {i} in order"),
            Err(Error::WorkerLost { .. }) if retries == 0 => {
                lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    let lost = lost.into_inner();
    assert!(kills >= 5, "the chaos happened ({kills} kills)");
    assert!(
        lost <= kills,
        "at most one item lost per kill ({lost} lost, {kills} kills)"
    );
    pool.wait_for_workers();
    let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
    assert_eq!(squares[99], 9801, "the pool keeps working");
    let peak = PEAK.load(Ordering::Relaxed) - before;
    eprintln!("chaos(retries {retries}): {kills} kills, {lost} lost, heap peak +{peak} bytes");
    peak
}

#[test]
fn chaos_loses_only_the_killed_tasks_and_host_memory_stays_bounded() {
    within(LIMIT, || {
        // The first round of each kind warms up what lives as long as the program (the
        // compiled module, the spawner, the broker, thread-locals); later rounds add none.
        for retries in [0, 3] {
            let peak = chaos(retries);
            assert!(peak < PEAK_BUDGET, "heap peak +{peak} bytes in one round");
        }
        let settled = LIVE.load(Ordering::Relaxed);
        for retries in [0, 3] {
            let peak = chaos(retries);
            assert!(peak < PEAK_BUDGET, "heap peak +{peak} bytes in one round");
        }
        let left = LIVE.load(Ordering::Relaxed) - settled;
        eprintln!("two more rounds left {left} bytes on the heap");
        assert!(
            left < LEAK_BUDGET,
            "two rounds of chaos left {left} bytes on the host's heap"
        );
    });
}
