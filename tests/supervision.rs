//! Supervision: a worker killed under a task is retried when asked, and a task that takes
//! down every worker it meets is stopped by the restart limit. The chaos test, which also
//! measures the host's memory, is a test binary of its own (`tests/chaos.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmpool::{Error, Pool};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_task_whose_worker_dies_is_retried_when_asked_and_lost_otherwise() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 1).unwrap();
        for retries in [0, 1] {
            let r = pool
                .with_retries(retries)
                .apply_async::<_, u64>("sleep_ms", &(600u64,))
                .unwrap();
            std::thread::sleep(Duration::from_millis(200));
            let victim = pool.pids()[0];
            kill(victim);
            match (retries, r.get()) {
                (0, Err(Error::WorkerLost { pid, .. })) => assert_eq!(pid, victim),
                (1, Ok(ms)) => assert_eq!(ms, 600, "the retry ran on the replacement"),
                (_, other) => panic!("retries({retries}): unexpected {other:?}"),
            }
            pool.wait_for_workers();
        }
    });
}

#[test]
fn a_retried_chunk_is_rerun_item_by_item() {
    within(LIMIT, || {
        let pool = Pool::builder(&testkit())
            .processes(1)
            .retries(1)
            .build()
            .unwrap();
        // One chunk of 200 slow items (about 0.2 s); the worker dies in the middle of it.
        let job = pool
            .map_async::<_, u64>("square_slowly", 0..200u64, Some(200))
            .unwrap();
        std::thread::sleep(Duration::from_millis(80));
        kill(pool.pids()[0]);
        let squares = job.get().unwrap();
        assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    });
}

#[test]
fn the_restart_limit_stops_a_task_that_takes_down_every_worker() {
    within(LIMIT, || {
        let pool = Pool::builder(&testkit())
            .processes(2)
            .retries(100)
            .restart_limit(3)
            .build()
            .unwrap();
        // Every worker that runs `sleep_ms` dies under it: a task that kills its workers.
        let stop = Arc::new(AtomicBool::new(false));
        let killer = killer(pool.clone(), Duration::from_millis(60), stop.clone());
        let results: Vec<_> = (0..20)
            .map(|_| {
                pool.apply_async::<_, u64>("sleep_ms", &(10_000u64,))
                    .unwrap()
            })
            .collect();
        let results: Vec<_> = results.into_iter().map(|r| r.get()).collect();
        stop.store(true, Ordering::Relaxed);
        let kills = killer.join().unwrap();
        let lost = results
            .iter()
            .filter(|r| matches!(r, Err(Error::WorkerLost { .. })))
            .count();
        let stopped = results
            .iter()
            .filter(|r| matches!(r, Err(Error::RestartLimit { losses: 3.., .. })))
            .count();
        assert!(
            lost >= 1 && lost + stopped == 20,
            "every call failed, none was retried forever: {results:?}"
        );
        assert!(
            kills < 20 * 3,
            "the pool stopped feeding workers to the task ({kills} kills)"
        );
        let text = results
            .iter()
            .find_map(|r| {
                r.as_ref()
                    .err()
                    .filter(|e| matches!(e, Error::WorkerLost { .. }))
            })
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(text.contains("restart limit"), "{text}");
        pool.wait_for_workers();
        assert_eq!(pool.apply::<_, u64>("square", &(12u64,)).unwrap(), 144);
    });
}
