//! Shared objects: what tasks and the host program do with them, and that nothing a dead,
//! trapped or hostile worker held can hang anyone. Every test runs under an outer timeout.

use std::time::Duration;

use wasmpool::{Error, Manager, ObjectError, Pool, Process};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);
const LONG: u64 = 60_000;

#[test]
fn host_producer_guest_consumer_and_back() {
    within(LIMIT, || {
        let q = Manager::new().queue::<Option<u64>>();
        for i in 0..100u64 {
            q.put(&Some(i)).unwrap();
        }
        q.put(&None).unwrap();
        assert_eq!(run::<u64>("queue_consume", &(&q,)).unwrap(), 4950);
        assert!(q.empty().unwrap());

        let p = Process::new(&testkit(), "queue_produce", &(&q, 1000u64)).unwrap();
        p.start().unwrap();
        let mut got = Vec::new();
        while let Some(v) = q.get().unwrap() {
            got.push(v);
        }
        p.join().unwrap();
        assert_eq!(
            got,
            (0..1000).collect::<Vec<_>>(),
            "FIFO order, nothing lost"
        );
    });
}

#[test]
fn a_guest_put_on_a_full_bounded_queue_waits_for_room() {
    within(LIMIT, || {
        let q = Manager::new().bounded_queue::<Option<u64>>(1);
        let p = Process::new(&testkit(), "queue_produce", &(&q, 5u64)).unwrap();
        p.start().unwrap();
        // Puts on a bounded queue are never posted: the producer waits for room, and keeps
        // every item it could not put yet.
        assert!(eventually(Duration::from_secs(30), || q.qsize().unwrap() == 1));
        std::thread::sleep(Duration::from_millis(300));
        assert!(p.is_alive(), "the producer waits on the full queue");
        assert_eq!(q.qsize().unwrap(), 1);
        let mut got = Vec::new();
        while let Some(v) = q.get().unwrap() {
            got.push(v);
        }
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    });
}

#[test]
fn puts_of_a_worker_killed_mid_stream_are_a_whole_prefix() {
    within(LIMIT, || {
        let q = Manager::new().queue::<Option<u64>>();
        let p = Process::new(&testkit(), "queue_produce", &(&q, 10_000_000u64)).unwrap();
        p.start().unwrap();
        // Killed while its puts stream in without waiting: each is in the queue whole or
        // not at all, in order, with none missing before the last.
        assert!(eventually(Duration::from_secs(30), || q.qsize().unwrap() >= 1000));
        p.kill();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(-9));
        let mut got = Vec::new();
        while let Ok(v) = q.get_nowait() {
            got.push(v.expect("no sentinel: the producer was killed first"));
        }
        assert!(got.len() >= 1000);
        assert!(
            got.iter().copied().eq(0..got.len() as u64),
            "a whole prefix, in order"
        );
    });
}

#[test]
fn a_posted_put_the_host_refuses_is_reported_not_lost() {
    within(LIMIT, || {
        // `check`: the task puts once more after the refused put (which reports it), or not
        // (the task fails at its end). A first put larger than the queue's shared ring
        // spills it, so that the later puts are posted to the host; with the ring, the
        // refused put fails at once.
        let big = "1".repeat(300 << 10);
        for (first, check, says) in [
            (&big, true, "an earlier put"),
            (&big, false, "the task made"),
            (&"1".to_string(), true, "the queue is closed"),
        ] {
            let m = Manager::new();
            let (q, go, lock) = (m.queue::<String>(), m.event(), m.lock());
            let args = (&q, first, &go, &lock, check);
            let p = Process::new(&testkit(), "put_across_close", &args).unwrap();
            p.start().unwrap();
            assert_eq!(q.get().unwrap(), *first);
            q.close().unwrap();
            go.set().unwrap();
            p.join().unwrap();
            // The refusal did not stand in for the lock's release.
            assert!(lock.try_acquire().unwrap(), "the task released its lock");
            lock.release().unwrap();
            assert!(matches!(q.get_nowait(), Err(ObjectError::Closed(_))));
            match p.result::<u32>() {
                Err(Error::Task { message, .. }) => {
                    assert!(message.contains(says), "{message}");
                    assert!(message.contains("the queue is closed"), "{message}");
                }
                other => panic!("expected the refused put to fail the task, got {other:?}"),
            }
        }
    });
}

#[test]
fn a_put_after_the_task_closed_the_queue_itself_fails_at_once() {
    within(LIMIT, || {
        let q = Manager::new().queue::<u32>();
        let errors = run::<Vec<String>>("put_after_own_close", &(&q,)).unwrap();
        assert_eq!(errors, vec!["the queue is closed"; 2]);
        assert_eq!(q.get().unwrap(), 1);
    });
}

#[test]
fn timeouts_answer_as_python_does() {
    within(LIMIT, || {
        let m = Manager::new();
        let q = m.queue::<String>();
        assert_eq!(
            q.get_timeout(Some(Duration::from_millis(50))),
            Err(ObjectError::Empty)
        );
        assert_eq!(q.get_nowait(), Err(ObjectError::Empty));
        let bounded = m.bounded_queue::<u8>(1);
        bounded.put(&1).unwrap();
        assert!(bounded.full().unwrap());
        assert_eq!(bounded.put_nowait(&2), Err(ObjectError::Full));
        let lock = m.lock();
        lock.acquire().unwrap();
        let other = lock.clone();
        let blocked =
            std::thread::spawn(move || other.acquire_timeout(Some(Duration::from_millis(50))));
        assert!(!blocked.join().unwrap().unwrap(), "a held lock times out");
        let ev = m.event();
        assert!(!ev.wait_timeout(Some(Duration::from_millis(20))).unwrap());
        ev.set().unwrap();
        assert!(ev.wait_timeout(Some(Duration::from_millis(20))).unwrap());
        // A task's get with a timeout on an empty queue fails with Empty, it does not hang.
        match run::<String>("get_timeout", &(&q, 100u64)) {
            Err(Error::Task { message, .. }) => assert!(message.contains("empty"), "{message}"),
            other => panic!("expected the task to fail with Empty, got {other:?}"),
        }
    });
}

#[test]
fn lock_held_by_a_killed_process_is_released() {
    within(LIMIT, || {
        let m = Manager::new();
        let (lock, held) = (m.lock(), m.event());
        let p = Process::new(&testkit(), "hold_lock", &(&lock, &held, LONG)).unwrap();
        p.start().unwrap();
        assert!(held.wait_timeout(Some(Duration::from_secs(30))).unwrap());
        assert!(!lock.try_acquire().unwrap(), "the task holds the lock");
        p.kill();
        p.join().unwrap();
        assert!(lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
    });
}

#[test]
fn lock_held_by_a_panicking_pool_task_is_released_and_the_pool_goes_on() {
    within(LIMIT, || {
        let lock = Manager::new().lock();
        let pool = Pool::new(&testkit(), 1).unwrap();
        let err = pool
            .apply::<_, ()>("lock_then_panic", &(&lock,))
            .unwrap_err();
        assert!(
            err.to_string().contains("dying with the lock held"),
            "{err}"
        );
        assert!(lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
        lock.release().unwrap();
        assert_eq!(pool.apply::<_, u64>("square", &(9u64,)).unwrap(), 81);
    });
}

#[test]
fn a_trapped_tasks_lock_is_freed_before_the_next_task_on_that_worker_takes_it() {
    within(LIMIT, || {
        let m = Manager::new();
        let (lock, held) = (m.lock(), m.event());
        let pool = Pool::new(&testkit(), 1).unwrap();
        // Both go to the one worker: the second takes the lock (in shared memory, under the
        // same pid) right after the first dies holding it; the host's freeing of the first
        // one's must come before, never after.
        let dying = pool
            .apply_async::<_, ()>("lock_then_panic", &(&lock,))
            .unwrap();
        let holder = pool
            .apply_async::<_, ()>("hold_lock", &(&lock, &held, 300u64))
            .unwrap();
        assert!(dying.get().is_err());
        assert!(held.wait_timeout(Some(Duration::from_secs(30))).unwrap());
        holder.get().unwrap();
        // The next task returned holding the lock: freeing the first one's must not have
        // freed it too.
        assert!(
            !lock.try_acquire().unwrap(),
            "the second task's lock was taken from it"
        );
        lock.release().unwrap();
        assert!(lock.try_acquire().unwrap());
    });
}

#[test]
fn semaphore_acquisitions_of_a_killed_process_are_returned() {
    within(LIMIT, || {
        let m = Manager::new();
        let (sem, held) = (m.semaphore(3), m.event());
        let p = Process::new(&testkit(), "hold_semaphore", &(&sem, 2u32, &held, LONG)).unwrap();
        p.start().unwrap();
        assert!(held.wait_timeout(Some(Duration::from_secs(30))).unwrap());
        assert_eq!(sem.value().unwrap(), 1);
        p.kill();
        p.join().unwrap();
        assert_eq!(sem.value().unwrap(), 3);
    });
}

#[test]
fn barrier_breaks_when_a_waiting_party_dies() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(3);
        let p = Process::new(&testkit(), "barrier_wait", &(&barrier, None::<u64>)).unwrap();
        p.start().unwrap();
        assert!(eventually(Duration::from_secs(30), || barrier
            .n_waiting()
            .unwrap()
            == 1));
        p.kill();
        p.join().unwrap();
        assert_eq!(
            barrier.wait_timeout(Some(Duration::from_secs(10))),
            Err(ObjectError::Broken)
        );
    });
}

#[test]
fn barrier_releases_every_party_with_distinct_indexes() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(3);
        let ps: Vec<_> = (0..2)
            .map(|_| {
                let p =
                    Process::new(&testkit(), "barrier_wait", &(&barrier, Some(30_000u64))).unwrap();
                p.start().unwrap();
                p
            })
            .collect();
        let mine = barrier.wait_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut indexes = vec![mine];
        for p in &ps {
            p.join().unwrap();
            indexes.push(p.result::<u32>().unwrap());
        }
        indexes.sort();
        assert_eq!(indexes, vec![0, 1, 2]);
    });
}

#[test]
fn pipe_end_held_by_a_killed_process_reads_as_closed() {
    within(LIMIT, || {
        let (a, b) = Manager::new().pipe::<String>(true);
        let p = Process::new(&testkit(), "hold_conn", &(&b, LONG)).unwrap();
        p.start().unwrap();
        drop(b);
        // The child still holds the other end: nothing to read, but no end of file either.
        assert!(!a.poll(Some(Duration::from_millis(200))).unwrap());
        p.kill();
        p.join().unwrap();
        assert!(matches!(
            a.recv_timeout(Some(Duration::from_secs(10))),
            Err(ObjectError::Closed(_))
        ));
        assert!(matches!(a.send(&"x".into()), Err(ObjectError::Closed(_))));
    });
}

#[test]
fn pipe_reader_sees_everything_then_end_of_file() {
    within(LIMIT, || {
        let (a, b) = Manager::new().pipe::<String>(true);
        for s in ["one", "two", "three"] {
            a.send(&s.to_string()).unwrap();
        }
        let p = Process::new(&testkit(), "recv_all", &(&b,)).unwrap();
        p.start().unwrap();
        a.close().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<Vec<String>>().unwrap(), ["one", "two", "three"]);
        assert!(
            matches!(a.recv(), Err(ObjectError::Closed(_))),
            "a closed end is unusable"
        );
    });
}

/// Message `i` of the testkit's numbered streams.
fn numbered(i: u64, size: usize) -> String {
    format!("{i}:{}", "x".repeat(size))
}

#[test]
fn pipe_backlog_past_its_shared_ring_arrives_whole_and_in_order() {
    within(LIMIT, || {
        // Nobody reads while the child sends ~600 KB, one message of them larger than the
        // shared ring: the ring fills, spills, and the rest goes through the host.
        let (a, b) = Manager::new().pipe::<String>(true);
        let (count, size, big_at, big) = (3000u64, 200usize, 1500u64, 300 << 10);
        let sender =
            Process::new(&testkit(), "send_numbered", &(&a, count, size, big_at, big)).unwrap();
        sender.start().unwrap();
        drop(a);
        sender.join().unwrap();
        assert_eq!(sender.exitcode(), Some(0));
        let receiver = Process::new(&testkit(), "recv_all", &(&b,)).unwrap();
        receiver.start().unwrap();
        drop(b);
        receiver.join().unwrap();
        let got = receiver.result::<Vec<String>>().unwrap();
        assert_eq!(got.len(), count as usize);
        for (i, msg) in got.iter().enumerate() {
            let i = i as u64;
            let want = numbered(i, if i == big_at { big } else { size });
            assert!(*msg == want, "message {i} is not what was sent");
        }
    });
}

#[test]
fn two_processes_play_ping_pong_over_a_pipe_without_the_host() {
    within(LIMIT, || {
        let (a, b) = Manager::new().pipe::<u64>(true);
        let n = 5000u64;
        let ping = Process::new(&testkit(), "pipe_ping", &(&a, n)).unwrap();
        let pong = Process::new(&testkit(), "pipe_pong", &(&b, n)).unwrap();
        ping.start().unwrap();
        pong.start().unwrap();
        ping.join().unwrap();
        pong.join().unwrap();
        assert_eq!(ping.result::<u64>().unwrap(), n);
        assert_eq!(pong.exitcode(), Some(0));
    });
}

#[test]
fn pipe_sender_killed_mid_stream_leaves_whole_messages_in_order_then_end_of_file() {
    within(LIMIT, || {
        let (a, b) = Manager::new().pipe::<String>(true);
        let size = 3000;
        let p = Process::new(&testkit(), "send_numbered_forever", &(&b, size)).unwrap();
        p.start().unwrap();
        drop(b);
        let mut next = 0u64;
        let mut check = |msg: String| {
            assert!(
                msg == numbered(next, size),
                "message {next} is torn or out of order"
            );
            next += 1;
        };
        for _ in 0..2000 {
            check(a.recv().unwrap());
        }
        // Killed wherever it is: maybe halfway through copying a message into the ring.
        p.kill();
        p.join().unwrap();
        loop {
            match a.recv_timeout(Some(Duration::from_secs(20))) {
                Ok(msg) => check(msg),
                Err(ObjectError::Closed(_)) => break,
                Err(e) => panic!("after {next} messages: {e}"),
            }
        }
        assert!(next >= 2000);
    });
}

#[test]
fn one_way_pipe_refuses_the_wrong_direction() {
    let (r, w) = Manager::new().pipe::<u8>(false);
    w.send(&1).unwrap();
    assert_eq!(r.recv().unwrap(), 1);
    assert!(matches!(r.send(&1), Err(ObjectError::Invalid(_))));
    assert!(matches!(w.recv(), Err(ObjectError::Invalid(_))));
}

#[test]
fn forged_stale_and_mistyped_handles_are_clear_errors() {
    within(LIMIT, || {
        let m = Manager::new();
        // A handle with a guessed token.
        let forged = serde_json::json!(["wasmpool:lock", 2, 12345]);
        let p = Process::with_encoded_args(
            &testkit(),
            "try_lock",
            wasmpool::json_args(&[forged]).unwrap(),
        )
        .unwrap();
        p.start().unwrap();
        p.join().unwrap();
        let err = p.result::<bool>().unwrap_err().to_string();
        assert!(err.contains("no such object"), "{err}");
        // A handle to an object the host dropped.
        let lock = m.lock();
        let stale = serde_json::to_value(&lock).unwrap();
        drop(lock);
        let p = Process::with_encoded_args(
            &testkit(),
            "try_lock",
            wasmpool::json_args(&[stale]).unwrap(),
        )
        .unwrap();
        p.start().unwrap();
        p.join().unwrap();
        let err = p.result::<bool>().unwrap_err().to_string();
        assert!(err.contains("no such object"), "{err}");
        // A queue where a lock is expected.
        let q = m.queue::<u8>();
        let err = run::<bool>("try_lock", &(&q,)).unwrap_err();
        assert!(
            matches!(err, Error::BadArgs(_) | Error::Task { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("expected a Lock handle"), "{err}");
        // A recursive lock works re-entrantly inside a task.
        let reentrant = run::<()>("rlock_twice", &(&m.rlock(),));
        assert!(reentrant.is_ok(), "{reentrant:?}");
    });
}

#[test]
fn a_flood_of_tiny_items_is_refused_by_its_size_with_overheads() {
    within(LIMIT, || {
        // Two million one-byte items make a 4 MB frame but would cost the host ~100 MB:
        // each item is charged its overhead, so the message is over every limit.
        let l = Manager::new().list::<()>();
        let err = run::<()>("extend_units", &(&l, 2_000_000usize)).unwrap_err();
        // Refused by the worker (over the 60 MiB any host limit is capped at), before the
        // host decodes it.
        assert!(
            err.to_string()
                .contains("66000000 bytes is over the message size limit of 62914560 bytes"),
            "{err}"
        );
        assert_eq!(
            l.len().unwrap(),
            0,
            "nothing of the refused extend is stored"
        );
        run::<()>("extend_units", &(&l, 1000usize)).unwrap();
        assert_eq!(l.len().unwrap(), 1000);
    });
}

#[test]
fn oversized_message_is_refused_and_the_queue_still_works() {
    within(LIMIT, || {
        let q = Manager::new().queue::<String>();
        let err = run::<()>("put_big", &(&q, wasmpool::DEFAULT_MAX_MESSAGE_BYTES + 1)).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(
            q.empty().unwrap(),
            "nothing of the refused message is visible"
        );
        run::<()>("put_big", &(&q, 1000usize)).unwrap();
        assert_eq!(q.get().unwrap().len(), 1000);
    });
}

#[test]
fn dict_and_list_operations() {
    within(LIMIT, || {
        let m = Manager::new();
        let (d, l) = (m.dict::<String, i64>(), m.list::<String>());
        let seen = run::<Vec<String>>("dict_list_ops", &(&d, &l)).unwrap();
        assert_eq!(
            seen,
            [
                "len=3",
                r#"keys=["a", "b", "c"]"#,
                "setdefault=1",
                "pop=Some(2)",
                "contains_b=false",
                "cas_ok=true",
                "cas_stale=false",
                "incr=5",
                "delete_missing=true",
                "last=z",
                "index_z=2",
                "pop=z",
                r#"items=["w", "y"]"#,
                "out_of_range=true",
            ]
        );
        // The host sees what the task left.
        assert_eq!(
            d.items().unwrap(),
            [
                ("a".to_string(), 1),
                ("c".to_string(), 30),
                ("n".to_string(), 5)
            ]
        );
        assert_eq!(l.items().unwrap(), ["w", "y"]);
    });
}

#[test]
fn a_dict_outgrowing_shared_memory_moves_to_the_host_whole_and_in_order() {
    within(LIMIT, || {
        let m = Manager::new();
        let d = m.dict::<String, u64>();
        for i in 0..100 {
            d.set(&format!("h{i}"), &i).unwrap();
        }
        // More keys than the shared table holds: the dict spills to the broker midway.
        let n = 5000;
        assert_eq!(run::<u64>("dict_fill", &(&d, "w", n)).unwrap(), 100 + n);
        let keys = d.keys().unwrap();
        let expected: Vec<String> = (0..100)
            .map(|i| format!("h{i}"))
            .chain((0..n).map(|i| format!("w{i}")))
            .collect();
        assert_eq!(keys, expected, "every key, in insertion order");
        assert_eq!(d.get(&"w4999".into()).unwrap(), Some(4999));
        assert_eq!(d.get(&"h7".into()).unwrap(), Some(7));
        // Another task, and the host, go on using it through the broker.
        assert_eq!(run::<u64>("dict_fill", &(&d, "x", 3u64)).unwrap(), 103 + n);
        assert_eq!(d.increment(&"x2".into(), 5).unwrap(), 7);

        // A value larger than the shared arena spills a fresh dict too, and arrives whole.
        let big = m.dict::<String, String>();
        big.set(&"small".into(), &"s".into()).unwrap();
        let huge = "y".repeat(3 << 20);
        big.set(&"huge".into(), &huge).unwrap();
        assert_eq!(
            big.get(&"huge".into()).unwrap().map(|v| v.len()),
            Some(3 << 20)
        );
        assert_eq!(big.keys().unwrap(), ["small", "huge"]);
    });
}

#[test]
fn condition_wakes_a_waiting_task() {
    within(LIMIT, || {
        let m = Manager::new();
        let (cond, d) = (m.condition(), m.dict::<String, i64>());
        let p = Process::new(&testkit(), "condition_wait", &(&cond, &d)).unwrap();
        p.start().unwrap();
        assert!(eventually(Duration::from_secs(30), || d
            .contains(&"waiting".into())
            .unwrap()));
        {
            // Holding the lock means the task is inside wait().
            let _held = cond.lock().unwrap();
            d.set(&"ready".into(), &1).unwrap();
            cond.notify_all().unwrap();
        }
        p.join().unwrap();
        assert!(p.result::<bool>().unwrap(), "woken by the notification");
    });
}

#[test]
fn ownership_and_bounds_are_checked() {
    let m = Manager::new();
    let rlock = m.rlock();
    assert!(matches!(rlock.release(), Err(ObjectError::NotOwner(_))));
    rlock.acquire().unwrap();
    rlock.acquire().unwrap();
    rlock.release().unwrap();
    rlock.release().unwrap();
    let bounded = m.bounded_semaphore(1);
    assert!(matches!(bounded.release(), Err(ObjectError::NotOwner(_))));
    let q = m.joinable_queue::<u8>(0);
    q.put(&1).unwrap();
    assert_eq!(
        q.join_timeout(Some(Duration::from_millis(20))),
        Err(ObjectError::Timeout)
    );
    q.get().unwrap();
    q.task_done().unwrap();
    q.join().unwrap();
    assert!(matches!(q.task_done(), Err(ObjectError::Invalid(_))));
    let d = m.dict::<String, String>();
    d.set(&"k".into(), &"text".into()).unwrap();
    assert!(matches!(
        d.increment(&"k".into(), 1),
        Err(ObjectError::Invalid(_))
    ));
}

#[test]
fn locked_and_atomic_counters_are_exact_even_when_a_worker_dies() {
    within(Duration::from_secs(120), || {
        let m = Manager::new();
        let (d, lock) = (m.dict::<String, i64>(), m.lock());
        let ps: Vec<_> = (0..2)
            .map(|_| {
                let p =
                    Process::new(&testkit(), "locked_increments", &(&d, &lock, 500u64)).unwrap();
                p.start().unwrap();
                p
            })
            .collect();
        let doomed =
            Process::new(&testkit(), "locked_increments", &(&d, &lock, 1_000_000u64)).unwrap();
        doomed.start().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        doomed.kill();
        for p in &ps {
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
        }
        doomed.join().unwrap();
        let after_locked = d.get(&"count".into()).unwrap().unwrap();
        assert!(after_locked >= 1000, "{after_locked}");

        d.set(&"count".into(), &0).unwrap();
        let ps: Vec<_> = (0..2)
            .map(|_| {
                let p = Process::new(&testkit(), "atomic_increments", &(&d, 500u64)).unwrap();
                p.start().unwrap();
                p
            })
            .collect();
        for p in &ps {
            p.join().unwrap();
        }
        assert_eq!(d.get(&"count".into()).unwrap(), Some(1000));
    });
}
