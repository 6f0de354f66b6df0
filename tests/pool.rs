//! `Pool`: Python's semantics, typed results, callbacks, lifecycle, failures that lose
//! nothing, dead workers replaced, bounded lazy iteration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpool::{Error, Output, Pool};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(90);

fn pool(n: usize) -> Pool {
    Pool::new(&testkit(), n).unwrap()
}

#[test]
fn map_returns_typed_results_in_order_at_any_chunksize() {
    within(LIMIT, || {
        let pool = pool(2);
        let expected: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
        assert_eq!(pool.map::<u64, u64>("square", 0..1000).unwrap(), expected);
        assert_eq!(
            pool.map_chunked::<u64, u64>("square", 0..1000, 1).unwrap(),
            expected
        );
        assert_eq!(
            pool.map_chunked::<u64, u64>("square", 0..1000, 7).unwrap(),
            expected
        );
        assert!(
            pool.map::<u64, u64>("square", Vec::new())
                .unwrap()
                .is_empty()
        );
        let sums: Vec<i64> = pool
            .starmap("add", vec![(1i64, 2i64), (3, 4), (5, 6)])
            .unwrap();
        assert_eq!(sums, [3, 7, 11]);
    });
}

#[test]
fn apply_blocks_and_apply_async_returns_at_once() {
    within(LIMIT, || {
        let pool = pool(2);
        assert_eq!(pool.apply::<_, i64>("add", &(2i64, 40i64)).unwrap(), 42);
        let slow = pool.apply_async::<_, u64>("sleep_ms", &(400u64,)).unwrap();
        assert!(!slow.ready());
        assert!(
            matches!(slow.successful(), Err(Error::State(_))),
            "successful() before ready is an error"
        );
        assert!(matches!(
            slow.get_timeout(Duration::from_millis(10)),
            Err(Error::Timeout(_))
        ));
        assert!(!slow.wait_timeout(Duration::from_millis(1)));
        assert_eq!(
            slow.get().unwrap(),
            400,
            "the result still arrives after a timeout"
        );
        assert!(slow.ready());
        assert!(slow.successful().unwrap());
        let failing = pool.apply_async::<_, u64>("fail", &("nope",)).unwrap();
        failing.wait();
        assert!(!failing.successful().unwrap());
        assert!(matches!(failing.get(), Err(Error::Task { message, .. }) if message == "nope"));
    });
}

#[test]
fn callbacks_run_in_the_host_in_completion_order() {
    within(LIMIT, || {
        let pool = pool(3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut results = Vec::new();
        for ms in [600u64, 50, 300] {
            let ok = seen.clone();
            let err = seen.clone();
            results.push(
                pool.apply_async_with::<_, u64, _, _>(
                    "sleep_ms",
                    &(ms,),
                    move |v| ok.lock().unwrap().push((v, std::process::id())),
                    move |_| err.lock().unwrap().push((0, 0)),
                )
                .unwrap(),
            );
        }
        let errors = Arc::new(Mutex::new(Vec::new()));
        let e2 = errors.clone();
        let failing = pool
            .apply_async_with::<_, u64, _, _>(
                "fail",
                &("bad",),
                |_| panic!("not a success"),
                move |e| e2.lock().unwrap().push(e.to_string()),
            )
            .unwrap();
        for r in &results {
            r.wait();
        }
        failing.wait();
        pool.close();
        // `join` returns once every callback of the work done has run.
        pool.join().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [50, 300, 600],
            "completion order"
        );
        assert!(
            seen.iter().all(|s| s.1 == std::process::id()),
            "callbacks run in this process"
        );
        assert_eq!(errors.lock().unwrap().len(), 1);
        assert!(errors.lock().unwrap()[0].contains("bad"));
    });
}

/// Squares 0, 1 and 2 on one worker, each result handed to `callback` with the record of
/// callbacks done; then closes and joins the pool and returns that record.
fn squares_then_join(callback: fn(u64, &Mutex<Vec<u64>>)) -> Vec<u64> {
    let pool = pool(1);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let results: Vec<_> = (0..3u64)
        .map(|i| {
            let ran = ran.clone();
            pool.apply_async_with::<_, u64, _, _>(
                "square",
                &(i,),
                move |v| callback(v, &ran),
                |e| panic!("{e}"),
            )
            .unwrap()
        })
        .collect();
    for r in &results {
        r.wait();
    }
    pool.close();
    pool.join().unwrap();
    ran.lock().map(|r| r.clone()).unwrap()
}

#[test]
fn join_waits_for_the_callbacks_still_to_run() {
    within(LIMIT, || {
        let ran = squares_then_join(|v, ran| {
            // Slow enough that the workers are long gone when it ends.
            std::thread::sleep(Duration::from_millis(200));
            ran.lock().unwrap().push(v);
        });
        assert_eq!(ran, [0, 1, 4], "as Python's join");
    });
}

#[test]
fn a_callback_that_panics_does_not_stop_the_others_or_hang_join() {
    within(LIMIT, || {
        let ran = squares_then_join(|v, ran| {
            if v == 1 {
                panic!("a callback's own bug");
            }
            ran.lock().unwrap().push(v);
        });
        assert_eq!(ran, [0, 4]);
    });
}

#[test]
fn a_callback_may_join_its_own_pool() {
    within(LIMIT, || {
        let pool = Arc::new(pool(1));
        let joined = Arc::new(Mutex::new(None));
        let (p, j) = (pool.clone(), joined.clone());
        let r = pool
            .apply_async_with::<_, u64, _, _>(
                "square",
                &(3u64,),
                move |_| {
                    p.close();
                    // Waits for the workers, not for this callback itself.
                    *j.lock().unwrap() = Some(p.join().is_ok());
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        assert_eq!(r.get().unwrap(), 9);
        assert!(eventually(Duration::from_secs(30), || joined
            .lock()
            .unwrap()
            .is_some()));
        assert_eq!(*joined.lock().unwrap(), Some(true));
    });
}

#[test]
fn close_join_and_terminate_follow_python() {
    within(LIMIT, || {
        let pool = pool(2);
        assert!(
            matches!(pool.join(), Err(Error::State(_))),
            "join before close is an error"
        );
        let r = pool.apply_async::<_, u64>("sleep_ms", &(200u64,)).unwrap();
        pool.close();
        assert!(
            matches!(
                pool.apply::<_, u64>("square", &(1u64,)),
                Err(Error::State(_))
            ),
            "no new work after close"
        );
        for items in [vec![1u64, 2], vec![]] {
            assert!(
                matches!(
                    pool.map::<u64, u64>("square", items.clone()),
                    Err(Error::State(_))
                ),
                "no map after close, even of {} items",
                items.len()
            );
        }
        pool.join().unwrap();
        assert_eq!(r.get().unwrap(), 200, "close lets queued work finish");
        assert!(pool.pids().is_empty(), "join waits for the workers to exit");

        let pool = Pool::new(&testkit(), 1).unwrap();
        let pids = pool.pids();
        let running = pool
            .apply_async::<_, u64>("sleep_ms", &(30_000u64,))
            .unwrap();
        let queued = pool.apply_async::<_, u64>("square", &(3u64,)).unwrap();
        pool.terminate();
        pool.join().unwrap();
        assert!(
            running.get().is_err() && queued.get().is_err(),
            "terminate fails outstanding work"
        );
        assert!(pids.iter().all(|&p| !pid_alive(p)));
    });
}

#[test]
fn dropping_a_pool_leaves_no_worker_behind() {
    within(LIMIT, || {
        let pool = pool(3);
        let pids = pool.pids();
        assert_eq!(pids.len(), 3);
        let _busy = pool
            .apply_async::<_, u64>("sleep_ms", &(30_000u64,))
            .unwrap();
        drop(pool);
        assert!(pids.iter().all(|&p| !pid_alive(p)), "{pids:?}");
    });
}

#[test]
fn a_result_of_the_wrong_type_names_the_task_and_the_type() {
    within(LIMIT, || {
        let pool = pool(1);
        match pool.map::<u64, String>("square", 0..3) {
            Err(Error::Decode { task, ty, .. }) => {
                assert_eq!(task, "square");
                assert!(ty.contains("String"), "{ty}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        assert!(matches!(
            pool.apply::<_, u64>("nope", &()),
            Err(Error::UnknownTask { .. })
        ));
        // A task's failure wins over a result that does not decode, as the first error.
        match pool.map_chunked::<u64, String>("square_or_panic", 0..30, 10) {
            Err(Error::Task { message, .. }) => assert!(message.contains("unlucky 13")),
            other => panic!("expected the task's error, got {other:?}"),
        }
    });
}

/// An iterator that claims `claimed` items (an exact `size_hint`) but yields `yields`.
struct Misreported {
    claimed: usize,
    yields: usize,
    given: usize,
}

impl Iterator for Misreported {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        (self.given < self.yields).then(|| {
            self.given += 1;
            self.given as u64
        })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.claimed.saturating_sub(self.given);
        (left, Some(left))
    }
}

#[test]
fn map_over_an_iterator_that_misreports_its_length_maps_what_it_yields() {
    within(LIMIT, || {
        let pool = pool(2);
        for (claimed, yields) in [(50, 20), (20, 50), (1, 0), (0, 3)] {
            for chunksize in [None, Some(1), Some(4)] {
                let items = Misreported {
                    claimed,
                    yields,
                    given: 0,
                };
                let out: Vec<u64> = match chunksize {
                    Some(c) => pool.map_chunked("square", items, c),
                    None => pool.map("square", items),
                }
                .unwrap_or_else(|e| panic!("claims {claimed}, yields {yields}: {e}"));
                let expected: Vec<u64> = (1..=yields as u64).map(|x| x * x).collect();
                assert_eq!(
                    out, expected,
                    "claims {claimed}, yields {yields}, {chunksize:?}"
                );
            }
        }
    });
}

#[test]
fn map_fails_with_the_first_error_and_imap_loses_nothing() {
    within(LIMIT, || {
        let pool = pool(2);
        for task in ["square_or_panic", "square_or_trap"] {
            let err = pool.map_chunked::<u64, u64>(task, 0..30, 10).unwrap_err();
            match (&err, task) {
                (Error::Task { message, .. }, "square_or_panic") => {
                    assert!(message.contains("unlucky 13"), "{message}")
                }
                (Error::Trap { message, .. }, "square_or_trap") => {
                    assert!(message.contains("unreachable"), "{message}")
                }
                _ => panic!("{task}: unexpected {err:?}"),
            }
            for chunksize in [1, 10] {
                let results: Vec<_> = pool
                    .imap_chunked::<u64, u64>(task, 0..30, chunksize)
                    .unwrap()
                    .collect();
                assert_eq!(results.len(), 30);
                for (x, r) in results.iter().enumerate() {
                    if x == 13 {
                        assert!(r.is_err(), "{task}: item 13 fails");
                    } else {
                        assert_eq!(
                            r.as_ref().unwrap(),
                            &((x * x) as u64),
                            "{task} chunk {chunksize}: item {x}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn imap_unordered_yields_every_item_once_with_its_index() {
    within(LIMIT, || {
        let pool = pool(2);
        let mut it = pool
            .imap_unordered::<u64, u64>("square", 0..200, 3)
            .unwrap();
        let mut seen = [false; 200];
        while let Some((i, r)) = it.next_indexed() {
            assert_eq!(r.unwrap(), (i * i) as u64);
            assert!(!seen[i], "item {i} twice");
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    });
}

#[test]
fn imap_over_an_endless_iterator_is_lazy() {
    within(LIMIT, || {
        let pool = pool(2);
        let drawn = Arc::new(Mutex::new(0u64));
        let d = drawn.clone();
        let endless = (0u64..).inspect(move |_| *d.lock().unwrap() += 1);
        let first: Vec<u64> = pool
            .imap::<u64, u64>("square", endless)
            .unwrap()
            .take(100)
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(first, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        let drawn = *drawn.lock().unwrap();
        assert!(
            drawn < 100 + 2 * 8 + 1,
            "only a bounded window is drawn ahead: {drawn}"
        );
    });
}

#[test]
fn a_worker_killed_mid_task_fails_that_task_and_is_replaced() {
    within(LIMIT, || {
        let pool = pool(2);
        let a = pool
            .apply_async::<_, u32>("pid_after", &(3_000u64,))
            .unwrap();
        let b = pool.apply_async::<_, u32>("pid_after", &(500u64,)).unwrap();
        let pids = pool.pids();
        std::thread::sleep(Duration::from_millis(200));
        // Kill whichever worker runs the long task: both run now, one each.
        let victim = pids[0];
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
        let (ra, rb) = (a.get(), b.get());
        let lost = [&ra, &rb].into_iter().filter(|r| r.is_err()).count();
        assert_eq!(
            lost, 1,
            "exactly the killed worker's task fails: {ra:?} {rb:?}"
        );
        for r in [&ra, &rb] {
            match r {
                Ok(pid) => assert_ne!(*pid, victim),
                Err(Error::WorkerLost { pid, signal, .. }) => {
                    assert_eq!(*pid, victim);
                    assert_eq!(*signal, Some(9));
                    let text = r.as_ref().unwrap_err().to_string();
                    assert!(
                        text.contains("worker lost")
                            && text.contains(&victim.to_string())
                            && text.contains("SIGKILL"),
                        "{text}"
                    );
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        pool.wait_for_workers();
        assert_eq!(pool.pids().len(), 2);
        assert!(!pool.pids().contains(&victim));
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares[99], 9801, "the pool keeps working");
    });
}

#[test]
fn state_persists_in_a_worker_and_maxtasksperchild_replaces_it() {
    within(LIMIT, || {
        let pool = pool(1);
        let counts: Vec<u64> = (0..3)
            .map(|_| pool.apply("counter", &()).unwrap())
            .collect();
        assert_eq!(counts, [1, 2, 3], "one instance serves the worker's tasks");

        let pool = Pool::builder(&testkit())
            .processes(1)
            .maxtasksperchild(2)
            .build()
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(pool.apply::<_, u64>("counter", &()).unwrap());
        }
        assert_eq!(seen, [1, 2, 1, 2], "a fresh worker after two tasks");
    });
}

#[test]
fn the_initializer_runs_in_each_worker_before_its_first_task() {
    within(LIMIT, || {
        let pool = Pool::builder(&testkit())
            .processes(1)
            .initializer("counter", &())
            .build()
            .unwrap();
        assert_eq!(pool.apply::<_, u64>("counter", &()).unwrap(), 2);

        let broken = Pool::builder(&testkit())
            .processes(1)
            .initializer("fail", &("no config",))
            .build()
            .unwrap();
        let err = broken
            .apply::<_, u64>("square", &(2u64,))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("initializer failed") && err.contains("no config"),
            "{err}"
        );
    });
}

#[test]
fn pool_workers_output_is_tagged_with_worker_and_task() {
    within(LIMIT, || {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let output = Output::Callback(Arc::new(move |e: wasmpool::OutputEvent<'_>| {
            s.lock().unwrap().push((
                e.process.to_string(),
                e.task.to_string(),
                String::from_utf8_lossy(e.data).into_owned(),
            ));
        }));
        let pool = Pool::builder(&testkit())
            .processes(1)
            .output(output)
            .build()
            .unwrap();
        let _: String = pool.apply("greet", &("pat",)).unwrap();
        pool.close();
        pool.join().unwrap();
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|(p, t, d)| p.starts_with("PoolWorker-")
                && t == "greet"
                && d.contains("hello, pat")),
            "{seen:?}"
        );
    });
}
