//! `Executor`: Python's `ProcessPoolExecutor` for async programs.

use std::time::Duration;

use wasmpool::{Error, Executor, Manager, as_completed};

use crate::util::*;

/// Long enough for any task to have started, however busy the machine.
const LONG: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn submit_returns_a_future_of_the_typed_result() {
    within(Duration::from_secs(60), || {
        rt().block_on(async {
            let ex = Executor::new(&testkit(), 2).unwrap();
            let a = ex.submit::<_, u64>("square", &(9u64,)).unwrap();
            let b = ex.submit::<_, i64>("add", &(2i64, 3i64)).unwrap();
            assert_eq!(a.await.unwrap(), 81);
            assert_eq!(b.await.unwrap(), 5);
            let err = ex
                .submit::<_, u64>("fail", &("no",))
                .unwrap()
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Task { ref message, .. } if message == "no"),
                "{err}"
            );
            ex.shutdown(true, false).unwrap();
        })
    });
}

#[test]
fn map_streams_results_in_input_order() {
    within(Duration::from_secs(60), || {
        rt().block_on(async {
            let ex = Executor::new(&testkit(), 2).unwrap();
            let mut stream = ex.map::<u64, u64>("square", 0..100, Some(7)).unwrap();
            let mut got = Vec::new();
            while let Some(r) = stream.next().await {
                got.push(r.unwrap());
            }
            assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        })
    });
}

#[test]
fn as_completed_yields_in_completion_order() {
    within(Duration::from_secs(60), || {
        rt().block_on(async {
            let ex = Executor::new(&testkit(), 3).unwrap();
            let futs = [500u64, 20, 250]
                .iter()
                .map(|ms| ex.submit::<_, u64>("sleep_ms", &(*ms,)).unwrap())
                .collect();
            let mut done = as_completed(futs);
            let mut order = Vec::new();
            while let Some((i, r)) = done.next().await {
                order.push((i, r.unwrap()));
            }
            assert_eq!(order, [(1, 20), (2, 250), (0, 500)]);
        })
    });
}

#[test]
fn cancelling_a_queued_task_removes_it_and_spares_the_running_one() {
    within(Duration::from_secs(60), || {
        rt().block_on(async {
            let ex = Executor::new(&testkit(), 1).unwrap();
            let m = Manager::new();
            let (lock, started) = (m.lock(), m.event());
            // Holds the only worker for 2 s once it has set `started`.
            let running = ex
                .submit::<_, ()>("hold_lock", &(&lock, &started, 2000u64))
                .unwrap();
            let queued = ex.submit::<_, u64>("square", &(4u64,)).unwrap();
            assert!(started.wait_timeout(Some(LONG)).unwrap());
            assert!(queued.cancel(), "a queued task can be cancelled");
            assert!(!running.cancel(), "a running task is not cancelled");
            assert!(queued.await.is_err());
            assert!(running.await.is_ok(), "the running task is unharmed");
            let after = ex.submit::<_, u64>("square", &(5u64,)).unwrap();
            assert_eq!(after.await.unwrap(), 25);
        })
    });
}

#[test]
fn shutdown_can_cancel_queued_work_and_wait_for_the_rest() {
    within(Duration::from_secs(60), || {
        rt().block_on(async {
            let ex = Executor::new(&testkit(), 1).unwrap();
            let m = Manager::new();
            let (lock, started) = (m.lock(), m.event());
            let running = ex
                .submit::<_, ()>("hold_lock", &(&lock, &started, 1000u64))
                .unwrap();
            let queued: Vec<_> = (0..5u64)
                .map(|i| ex.submit::<_, u64>("square", &(i,)).unwrap())
                .collect();
            assert!(started.wait_timeout(Some(LONG)).unwrap());
            ex.shutdown(true, true).unwrap();
            assert!(running.await.is_ok(), "the running task finishes");
            for q in queued {
                assert!(q.await.is_err(), "queued work was cancelled");
            }
        })
    });
}
