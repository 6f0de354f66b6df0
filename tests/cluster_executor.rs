//! The `Executor` (Python's `ProcessPoolExecutor`) on a cluster: the same futures, streams
//! and shutdown as over a local pool, its work run by real `wasmpool worker --join` hosts
//! through a real `redis-server` of the test's own.

use std::sync::mpsc;
use std::time::Duration;

use wasmpool::cluster::ClusterPool;
use wasmpool::{Error, Executor, Pool, as_completed};

use crate::cluster::redis::RedisServer;
use crate::cluster::{TASKS, WorkerHost, wait_for_hosts};
use crate::util::{eventually, testkit, within};

/// Long enough for any task to have started, however busy the machine.
const LONG: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// A cluster pool on `redis`, once `hosts` hosts have joined.
fn pool_on(redis: &RedisServer, hosts: usize) -> ClusterPool {
    let pool = Pool::builder(&testkit())
        .cluster(&redis.url())
        .build()
        .expect("a cluster pool");
    wait_for_hosts(&pool, hosts);
    pool
}

/// How many entries of the task stream hosts have claimed and not committed (the consumer
/// group's count of pending entries; -1 if Redis answers something else).
fn claimed(redis: &RedisServer) -> i64 {
    redis
        .command(&format!("XPENDING {TASKS} hosts"))
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn a_cluster_executor_submits_maps_and_calls_back_as_a_local_one() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 2);
        let local = Executor::new(&testkit(), 2).unwrap();
        rt().block_on(async {
            let ex = Pool::builder(&testkit())
                .cluster(&redis.url())
                .executor()
                .unwrap();
            let a = ex.submit::<_, u64>("square", &(9u64,)).unwrap();
            let b = ex.submit::<_, i64>("add", &(2i64, 3i64)).unwrap();
            assert_eq!(a.await.unwrap(), 81);
            assert_eq!(b.clone().await.unwrap(), 5);
            assert!(b.done() && !b.cancelled());
            assert_eq!(b.result().unwrap(), 5, "a clone's result, again");

            // A task's error is the future's error, the one it is locally.
            let err = ex
                .submit::<_, u64>("fail", &("no",))
                .unwrap()
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::Task { ref message, .. } if message == "no"),
                "{err}"
            );
            let here = local
                .submit::<_, u64>("fail", &("no",))
                .unwrap()
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), here.to_string());

            // A done callback runs once the result is in, with the future.
            let (tx, rx) = mpsc::channel();
            let f = ex.submit::<_, u64>("sleep_ms", &(200u64,)).unwrap();
            f.add_done_callback(move |f| {
                let _ = tx.send(f.result().map_err(|e| e.to_string()));
            });
            assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok(200));

            // `map`: the results in input order, whatever host ran which chunk.
            let mut stream = ex.map::<u64, u64>("square", 0..100, Some(7)).unwrap();
            let mut got = Vec::new();
            while let Some(r) = stream.next().await {
                got.push(r.unwrap());
            }
            assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
            // With the default chunk size, and an item that fails among the others.
            let mut stream = ex.map::<&str, u64>("fail", ["a", "b", "c"], None).unwrap();
            let mut errors = Vec::new();
            while let Some(r) = stream.next().await {
                match r {
                    Err(Error::Task { message, .. }) => errors.push(message),
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(errors, ["a", "b", "c"]);
            let e = ex.map::<u64, u64>("square", 0..3, Some(0)).unwrap_err();
            assert!(matches!(e, Error::State(_)), "{e:?}");

            ex.shutdown(true, false).unwrap();
        });
        local.shutdown(true, false).unwrap();
    });
}

#[test]
fn as_completed_on_a_cluster_yields_in_completion_order() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 3);
        let ex = Executor::from_cluster(pool_on(&redis, 1));
        rt().block_on(async {
            let futs = [1500u64, 20, 700]
                .iter()
                .map(|ms| ex.submit::<_, u64>("sleep_ms", &(*ms,)).unwrap())
                .collect();
            let mut done = as_completed(futs);
            let mut order = Vec::new();
            while let Some((i, r)) = done.next().await {
                order.push((i, r.unwrap()));
            }
            assert_eq!(order, [(1, 20), (2, 700), (0, 1500)]);
        });
    });
}

/// A one-slot host holds two entries (its room while a long task runs): `hold_lock`,
/// which runs for `ms` once it has set the event, and a short one behind it. Answers
/// both futures; whatever is submitted next stays in Redis, unclaimed, for `ms`.
fn fill_the_host(
    ex: &Executor,
    redis: &RedisServer,
    m: &wasmpool::cluster::ClusterManager,
    ms: u64,
) -> (wasmpool::TaskFuture<()>, wasmpool::TaskFuture<u64>) {
    let (lock, started) = (m.lock().unwrap(), m.event().unwrap());
    let running = ex
        .submit::<_, ()>("hold_lock", &(&lock, &started, ms))
        .unwrap();
    assert!(started.wait_timeout(Some(LONG)).unwrap(), "never started");
    let held = ex.submit::<_, u64>("square", &(3u64,)).unwrap();
    assert!(
        eventually(LONG, || claimed(redis) == 2),
        "the host did not claim the second task: {}",
        redis.command(&format!("XPENDING {TASKS} hosts"))
    );
    (running, held)
}

#[test]
fn cancelling_a_queued_cluster_future_removes_it_and_spares_the_running_one() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 1);
        let pool = pool_on(&redis, 1);
        let m = pool.manager().unwrap();
        let filled = m.dict::<String, u64>().unwrap();
        let ex = Executor::from_cluster(pool.clone());
        rt().block_on(async {
            let (running, held) = fill_the_host(&ex, &redis, &m, 5_000);
            let queued = ex
                .submit::<_, u64>("dict_fill", &(&filled, "queued-", 1u64))
                .unwrap();
            let kept = ex
                .submit::<_, u64>("dict_fill", &(&filled, "kept-", 1u64))
                .unwrap();
            assert!(queued.cancel(), "a task no host claimed can be cancelled");
            assert!(queued.cancel(), "true again for one cancelled before");
            assert!(queued.cancelled() && queued.done());
            assert!(!running.cancel(), "a running task is not cancelled");
            assert!(!held.cancel(), "nor one its host holds");
            let e = queued.clone().await.unwrap_err();
            assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
            running.await.unwrap();
            assert_eq!(held.await.unwrap(), 9);
            assert_eq!(kept.await.unwrap(), 1, "the other queued task ran");
            assert_eq!(filled.keys().unwrap(), ["kept-0".to_string()]);
        });
        ex.shutdown(true, false).unwrap();
        assert_eq!(
            pool.stats().unwrap().committed,
            3,
            "the cancelled one never ran"
        );
        assert_eq!(redis.command(&format!("XLEN {TASKS}")).trim(), ":0");
    });
}

#[test]
fn shutdown_with_cancel_futures_on_a_cluster_cancels_unclaimed_work_and_waits_for_the_rest() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 1);
        let pool = pool_on(&redis, 1);
        let m = pool.manager().unwrap();
        let filled = m.dict::<String, u64>().unwrap();
        let ex = Executor::from_cluster(pool.clone());
        rt().block_on(async {
            let (running, held) = fill_the_host(&ex, &redis, &m, 3_000);
            let queued: Vec<_> = (0..5)
                .map(|i| {
                    ex.submit::<_, u64>("dict_fill", &(&filled, format!("q{i}-"), 1u64))
                        .unwrap()
                })
                .collect();
            let mut mapped = ex.map::<u64, u64>("square", 0..6, Some(2)).unwrap();
            ex.shutdown(true, true).unwrap();
            // `wait`: every future is done when it returns.
            assert!(running.done() && held.done());
            assert!(queued.iter().all(|q| q.done()));
            running.await.unwrap();
            assert_eq!(held.await.unwrap(), 9, "the work a host held ran");
            for q in queued {
                let e = q.await.unwrap_err();
                assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
            }
            let mut n = 0;
            while let Some(r) = mapped.next().await {
                assert!(matches!(r, Err(Error::Cancelled { .. })), "{r:?}");
                n += 1;
            }
            assert_eq!(n, 6);
        });
        // Nothing cancelled ran, then or since: the host is free and has run only the two.
        let after = pool_on(&redis, 1);
        let len: u64 = after
            .apply("dict_fill", &(&filled, "after-", 1u64))
            .unwrap();
        assert_eq!(
            len,
            1,
            "only the work not cancelled ran: {:?}",
            filled.keys()
        );
        assert_eq!(pool.stats().unwrap().committed, 3);
        assert_eq!(redis.command(&format!("XLEN {TASKS}")).trim(), ":0");
        let e = pool.apply::<_, u64>("square", &(1u64,)).unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
    });
}

#[test]
fn a_dropped_cluster_executor_still_finishes_what_was_submitted() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 1);
        let pool = pool_on(&redis, 1);
        let ex = Executor::from_cluster(pool.clone());
        let (tx, rx) = mpsc::channel();
        // More than the one-slot host holds at once: most wait in Redis when it is dropped.
        let futs: Vec<_> = (0..6u64)
            .map(|i| ex.submit::<_, u64>("sleep_ms", &(100 + i,)).unwrap())
            .collect();
        futs[5].add_done_callback(move |f| {
            let _ = tx.send(f.result().map_err(|e| e.to_string()));
        });
        let mut mapped = ex.map::<u64, u64>("square", 0..10, Some(3)).unwrap();
        drop(pool);
        drop(ex);
        rt().block_on(async {
            for (i, f) in futs.into_iter().enumerate() {
                assert_eq!(f.await.unwrap(), 100 + i as u64);
            }
            let mut got = Vec::new();
            while let Some(r) = mapped.next().await {
                got.push(r.unwrap());
            }
            assert_eq!(got, (0..10u64).map(|x| x * x).collect::<Vec<_>>());
        });
        assert_eq!(rx.recv_timeout(LONG).unwrap(), Ok(105), "its callback ran");
    });
}
