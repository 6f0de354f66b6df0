//! Tenants in one pool: each tenant's work is queued apart and the workers are shared by
//! deficit round robin, so a light tenant's task runs after about one round of a flood, not
//! behind all of it; work that names no tenant keeps Python's first-in, first-out order.
//! And cancelling: queued work never runs, running work is stopped, the rest goes on.

use std::time::Duration;

use serde::Serialize;
use wasmpool::{Error, Manager, Pool, Tenant};

use crate::util::{eventually, testkit, within};

const LIMIT: Duration = Duration::from_secs(120);

/// The testkit's `Misdeed`, as the host encodes it.
#[derive(Debug, Clone, Copy, Serialize)]
enum Misdeed {
    #[serde(rename = "None")]
    Nothing,
    Spin,
}

/// A flood of 1 ms tasks, one per chunk: 2000 of them take a worker at least 2 s.
const FLOOD: u64 = 2_000;

#[test]
fn a_light_tenants_task_runs_before_a_flood_queued_ahead_of_it_has_finished() {
    let module = testkit();
    within(LIMIT, move || {
        let pool = Pool::new(&module, 1).unwrap();
        let flood = pool.with_tenant(Tenant::new(1, 1).unwrap());
        let light = pool.with_tenant(Tenant::new(2, 1).unwrap());
        let all = flood
            .map_async::<u64, u64>("sleep_ms", std::iter::repeat_n(1, FLOOD as usize), Some(1))
            .unwrap();
        let one: u64 = light.apply("square", &(9u64,)).unwrap();
        assert_eq!(one, 81);
        assert!(
            !all.ready(),
            "the light tenant's task waited for the whole flood"
        );
        // The flood loses nothing for it.
        assert_eq!(all.get().unwrap(), vec![1; FLOOD as usize]);
    });
}

#[test]
fn without_tenants_a_pool_runs_work_in_the_order_it_was_submitted() {
    let module = testkit();
    within(LIMIT, move || {
        let pool = Pool::new(&module, 1).unwrap();
        let first = pool
            .map_async::<u64, u64>("sleep_ms", std::iter::repeat_n(1, 200), Some(1))
            .unwrap();
        let _: u64 = pool.apply("square", &(9u64,)).unwrap();
        assert!(first.ready(), "work submitted later ran first");
        // The same tenant named twice is one queue: splitting work gains nothing.
        let tenant = Tenant::new(5, 3).unwrap();
        let a = pool.with_tenant(tenant);
        let b = pool.with_tenant(tenant);
        let first = a
            .map_async::<u64, u64>("sleep_ms", std::iter::repeat_n(1, 200), Some(1))
            .unwrap();
        let _: u64 = b.apply("square", &(9u64,)).unwrap();
        assert!(first.ready(), "one tenant's later work ran first");
    });
}

#[test]
fn a_weight_of_zero_is_refused() {
    let e = Tenant::new(1, 0).unwrap_err();
    assert!(matches!(e, Error::State(_)), "{e:?}");
    assert!(e.to_string().contains("from 1 to"), "{e}");
    assert!(Tenant::new(1, Tenant::MAX_WEIGHT + 1).is_err());
}

#[test]
fn cancelling_a_running_task_stops_it_and_the_pool_and_other_work_go_on() {
    let module = testkit();
    within(LIMIT, move || {
        let manager = Manager::new();
        let runs = manager.dict::<String, i64>();
        // Retries would run a task again after its worker died: a cancel is no crash.
        let pool = Pool::builder(&module)
            .processes(2)
            .retries(3)
            .build()
            .unwrap();
        let other = pool.apply_async::<_, u64>("sleep_ms", &(300u64,)).unwrap();
        let endless = pool
            .apply_async::<_, u64>("counted", &(&runs, 7u64, 7u64, Misdeed::Spin))
            .unwrap();
        assert!(eventually(Duration::from_secs(60), || {
            runs.get(&"run:7".to_string()).unwrap() == Some(1)
        }));
        assert!(endless.cancel(), "a running task is cancelled");
        let e = endless.get().unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
        assert!(!endless.cancel(), "a second cancel finds nothing to cancel");
        assert_eq!(other.get().unwrap(), 300, "the other task is not hurt");
        // The pool replaced the worker and runs on; the cancelled task never ran again.
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares[99], 99 * 99);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(runs.get(&"run:7".to_string()).unwrap(), Some(1));
        assert_eq!(pool.pids().len(), 2);
    });
}

#[test]
fn cancelling_queued_work_runs_none_of_it_and_finished_work_keeps_its_results() {
    let module = testkit();
    within(LIMIT, move || {
        let manager = Manager::new();
        let runs = manager.dict::<String, i64>();
        let pool = Pool::new(&module, 1).unwrap();
        let busy = pool.apply_async::<_, u64>("sleep_ms", &(500u64,)).unwrap();
        let items: Vec<_> = (0..50u64)
            .map(|x| (&runs, x, u64::MAX, Misdeed::Nothing))
            .collect();
        let queued = pool
            .starmap_async::<_, u64>("counted", items, None)
            .unwrap();
        assert!(queued.cancel());
        assert!(matches!(queued.get(), Err(Error::Cancelled { .. })));
        assert_eq!(busy.get().unwrap(), 500);
        let after: u64 = pool.apply("square", &(4u64,)).unwrap();
        assert_eq!(after, 16);
        assert!(runs.items().unwrap().is_empty(), "cancelled work ran");
        // Finished work is not cancelled.
        let done = pool.apply_async::<_, u64>("square", &(3u64,)).unwrap();
        assert_eq!(done.get().unwrap(), 9);
        assert!(!done.cancel());
        assert_eq!(done.get().unwrap(), 9);
    });
}

#[test]
fn a_results_worker_time_is_what_its_calls_ran_in_workers() {
    let module = testkit();
    within(LIMIT, move || {
        let pool = Pool::new(&module, 2).unwrap();
        let slow = pool.apply_async::<_, u64>("sleep_ms", &(200u64,)).unwrap();
        assert_eq!(slow.get().unwrap(), 200);
        assert!(
            slow.worker_time() >= Duration::from_millis(200),
            "{:?}",
            slow.worker_time()
        );
        // A map sums its chunks: four chunks of 50 ms each.
        let map = pool
            .map_async::<u64, u64>("sleep_ms", [50u64; 4], Some(1))
            .unwrap();
        map.get().unwrap();
        assert!(
            map.worker_time() >= Duration::from_millis(200),
            "{:?}",
            map.worker_time()
        );
        // Work that never ran took no worker time.
        let busy = pool
            .map_async::<u64, u64>("sleep_ms", [300u64; 2], Some(1))
            .unwrap();
        let queued = pool.apply_async::<_, u64>("square", &(2u64,)).unwrap();
        assert!(queued.cancel());
        assert_eq!(queued.worker_time(), Duration::ZERO);
        busy.get().unwrap();
    });
}

#[test]
fn a_results_queue_wait_is_none_while_queued_and_then_at_least_the_wait_behind_earlier_work() {
    let module = testkit();
    within(LIMIT, move || {
        let pool = Pool::new(&module, 1).unwrap();
        let first = pool.apply_async::<_, u64>("sleep_ms", &(400u64,)).unwrap();
        let second = pool.apply_async::<_, u64>("square", &(7u64,)).unwrap();
        // The first holds the only worker, and a task of unknown length is not queued in a
        // busy worker's pipeline: the second is still in the pool's queue.
        assert!(
            eventually(Duration::from_secs(30), || first.queue_wait().is_some()),
            "the first task was never given to the worker"
        );
        assert_eq!(second.queue_wait(), None, "not yet given to a worker");
        assert_eq!(second.get().unwrap(), 49);
        let waited = second.queue_wait().expect("it ran");
        // It could not start before the first's 400 ms were over (a lower bound: the wait
        // can only be longer on a loaded machine).
        assert!(
            waited >= Duration::from_millis(350),
            "queued for only {waited:?} behind a 400 ms task"
        );
        assert!(first.get().is_ok());
        assert!(first.queue_wait().expect("it ran") <= waited);
    });
}

#[test]
fn cancelled_calls_sent_ahead_to_a_busy_worker_never_run_and_cost_no_worker() {
    let module = testkit();
    within(LIMIT, move || {
        let manager = Manager::new();
        let (warm, runs) = (manager.dict::<String, i64>(), manager.dict::<String, i64>());
        let pool = Pool::new(&module, 1).unwrap();
        // Timed as short, `counted` is pipelined: sent ahead into a busy worker.
        let items =
            |d, n: u64| -> Vec<_> { (0..n).map(|x| (d, x, u64::MAX, Misdeed::Nothing)).collect() };
        let _: Vec<u64> = pool
            .starmap_async("counted", items(&warm, 50), Some(1))
            .unwrap()
            .get()
            .unwrap();
        let pid = pool.pids();
        for round in 0..5 {
            let busy = pool.apply_async::<_, u64>("sleep_ms", &(300u64,)).unwrap();
            let queued = pool
                .starmap_async::<_, u64>("counted", items(&runs, 20), Some(1))
                .unwrap();
            assert!(queued.cancel());
            // Submitted right after the cancel, with no retries: it must not meet a
            // worker the cancel dooms.
            let next = pool.apply_async::<_, u64>("square", &(round,)).unwrap();
            assert!(matches!(queued.get(), Err(Error::Cancelled { .. })));
            assert_eq!(busy.get().unwrap(), 300);
            assert_eq!(next.get().unwrap(), round * round, "round {round}");
        }
        assert!(
            runs.items().unwrap().is_empty(),
            "cancelled calls ran: {:?}",
            runs.items().unwrap()
        );
        assert_eq!(
            pool.pids(),
            pid,
            "the worker was killed for calls it never started"
        );
    });
}
