//! Python's shared-object APIs that wasmpool lacked: `Lock.locked()`, `RLock.locked()`,
//! `Barrier.parties`, `Barrier.broken` and a barrier's action, `Condition.wait_for`,
//! `list.insert`/`remove`/`clear` and slicing, `dict.popitem`/`clear`; each from the host
//! program and from a task. Every test runs under an outer timeout.

use std::sync::mpsc;
use std::time::Duration;

use wasmpool::{Manager, ObjectError, Process};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(90);
/// Long enough for anything that will happen to happen on a loaded machine.
const LONG: Duration = Duration::from_secs(30);

fn started(task: &str, args: &impl serde::Serialize) -> Process {
    let p = Process::new(&testkit(), task, args).unwrap();
    p.start().unwrap();
    p
}

// ---- Lock.locked(), RLock.locked() ----

#[test]
fn lock_and_rlock_say_whether_they_are_held() {
    within(LIMIT, || {
        let m = Manager::new();
        let (lock, rlock) = (m.lock(), m.rlock());
        assert!(!lock.locked().unwrap());
        assert!(!rlock.locked().unwrap());
        lock.acquire().unwrap();
        assert!(lock.locked().unwrap());
        // Held by another thread of the host: still locked, for everyone.
        let other = rlock.clone();
        std::thread::spawn(move || other.acquire().unwrap())
            .join()
            .unwrap();
        assert!(rlock.locked().unwrap(), "held by another thread");
        assert!(
            !rlock.try_acquire().unwrap(),
            "and not by this one: locked() is about anyone"
        );
        lock.release().unwrap();
        assert!(!lock.locked().unwrap());
    });
}

#[test]
fn a_task_sees_locked_and_its_release_of_the_hosts_lock_is_seen() {
    within(LIMIT, || {
        let m = Manager::new();
        let (lock, rlock) = (m.lock(), m.rlock());
        lock.acquire().unwrap();
        let seen = run::<Vec<bool>>("conform_locked", &(&lock, &rlock)).unwrap();
        // The host's lock held; the RLock free, held twice, once, not at all; the host's
        // lock released by the task.
        assert_eq!(seen, [true, false, true, true, false, false]);
        assert!(
            !lock.locked().unwrap(),
            "the task's release is seen by the host"
        );
        assert!(!rlock.locked().unwrap());
    });
}

// ---- Barrier.parties, Barrier.broken ----

#[test]
fn barrier_parties_and_broken_follow_abort_and_reset() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(3);
        assert_eq!(barrier.parties().unwrap(), 3);
        assert!(!barrier.broken().unwrap());
        assert_eq!(
            run::<(u32, bool)>("barrier_info", &(&barrier,)).unwrap(),
            (3, false)
        );
        barrier.abort().unwrap();
        assert!(barrier.broken().unwrap());
        assert_eq!(
            run::<(u32, bool)>("barrier_info", &(&barrier,)).unwrap(),
            (3, true)
        );
        barrier.reset().unwrap();
        assert!(!barrier.broken().unwrap(), "reset mends it");
        // A timeout breaks it, as in Python.
        assert_eq!(
            barrier.wait_timeout(Some(Duration::from_millis(50))),
            Err(ObjectError::Broken)
        );
        assert!(barrier.broken().unwrap());
    });
}

// ---- A barrier's action ----

#[test]
fn a_barrier_action_runs_once_per_round_before_any_party_is_released() {
    within(LIMIT, || {
        let m = Manager::new();
        let (barrier, log) = (m.barrier(3), m.list::<String>());
        const ROUNDS: u32 = 4;
        // Two tasks offer the action every round; the host offers it in even rounds.
        let tasks: Vec<_> = (0..2)
            .map(|_| started("barrier_rounds", &(&barrier, &log, ROUNDS)))
            .collect();
        let mut mine = Vec::new();
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                barrier
                    .wait_with(|| log.append(&format!("round {round}")))
                    .unwrap();
            } else {
                barrier.wait_timeout(Some(LONG)).unwrap();
            }
            mine.push(log.len().unwrap());
        }
        // Every party, when released from round r, saw the action of round r done, and
        // only it: exactly one action per round.
        let each_round: Vec<usize> = (1..=ROUNDS as usize).collect();
        assert_eq!(mine, each_round);
        for p in &tasks {
            p.join().unwrap();
            assert_eq!(p.result::<Vec<usize>>().unwrap(), each_round);
        }
        let expected: Vec<String> = (0..ROUNDS).map(|r| format!("round {r}")).collect();
        assert_eq!(log.items().unwrap(), expected);
        assert!(!barrier.broken().unwrap());
    });
}

#[test]
fn the_last_party_runs_its_action_else_the_earliest_that_offered_one() {
    within(LIMIT, || {
        let m = Manager::new();
        let barrier = m.barrier(4);
        let ran = m.list::<String>();
        // A party on its own thread, offering an action that logs `name` (or none); it is
        // waiting at the barrier when this returns, so the parties arrive in call order.
        let arrive = |name: &str, offers: bool| {
            let (b, ran, name) = (barrier.clone(), ran.clone(), name.to_string());
            let n = barrier.n_waiting().unwrap();
            let t = std::thread::spawn(move || match offers {
                true => b.wait_with(|| ran.append(&name)),
                false => b.wait_timeout(Some(LONG)),
            });
            assert!(eventually(LONG, || barrier.n_waiting().unwrap() > n));
            t
        };
        let joined = |ts: Vec<std::thread::JoinHandle<Result<u32, ObjectError>>>| {
            ts.into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect::<Vec<_>>()
        };
        // The last party offers an action: it runs its own.
        let ts = vec![
            arrive("first", true),
            arrive("none", false),
            arrive("third", true),
        ];
        assert_eq!(barrier.wait_with(|| ran.append(&"last".into())), Ok(3));
        assert_eq!(joined(ts), [0, 1, 2]);
        assert_eq!(ran.items().unwrap(), ["last"]);
        // The last offers none: the earliest that offered runs its action.
        ran.clear().unwrap();
        let ts = vec![
            arrive("none", false),
            arrive("earliest", true),
            arrive("later", true),
        ];
        assert_eq!(barrier.wait_timeout(Some(LONG)), Ok(3));
        assert_eq!(joined(ts), [0, 1, 2]);
        assert_eq!(ran.items().unwrap(), ["earliest"]);
    });
}

#[test]
fn a_failing_action_breaks_the_barrier_and_its_party_gets_the_error() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(2);
        let runner = {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait_with(|| Err(ObjectError::Invalid("the action failed".into())))
            })
        };
        assert!(eventually(LONG, || barrier.n_waiting().unwrap() == 1));
        assert_eq!(barrier.wait_timeout(Some(LONG)), Err(ObjectError::Broken));
        assert_eq!(
            runner.join().unwrap(),
            Err(ObjectError::Invalid("the action failed".into()))
        );
        assert!(barrier.broken().unwrap());

        // The same from a task: the host waits, the task's action fails.
        barrier.reset().unwrap();
        let p = started("barrier_failing_action", &(&barrier, false));
        assert!(eventually(LONG, || barrier.n_waiting().unwrap() == 1));
        assert_eq!(barrier.wait_timeout(Some(LONG)), Err(ObjectError::Broken));
        p.join().unwrap();
        assert_eq!(p.result::<String>().unwrap(), "the action failed");
    });
}

#[test]
fn a_host_action_that_panics_breaks_the_barrier() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(2);
        let runner = {
            let barrier = barrier.clone();
            std::thread::spawn(move || barrier.wait_with(|| panic!("the action panicked")))
        };
        assert!(eventually(LONG, || barrier.n_waiting().unwrap() == 1));
        assert_eq!(barrier.wait_timeout(Some(LONG)), Err(ObjectError::Broken));
        assert!(runner.join().is_err(), "the panic reached its thread");
        assert!(barrier.broken().unwrap());
    });
}

#[test]
fn a_task_that_traps_in_its_action_breaks_the_barrier_for_the_others() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(2);
        let p = started("barrier_failing_action", &(&barrier, true));
        assert!(eventually(LONG, || barrier.n_waiting().unwrap() == 1));
        // The host offers nothing, so the task runs its action, and traps in it: the host
        // is not left waiting for a round that cannot end.
        assert_eq!(barrier.wait(), Err(ObjectError::Broken));
        p.join().unwrap();
        assert!(p.result::<String>().is_err(), "the task trapped");
        assert!(barrier.broken().unwrap());
    });
}

#[test]
fn a_party_of_the_next_round_waits_while_the_action_runs() {
    within(LIMIT, || {
        let barrier = Manager::new().barrier(2);
        let (running_tx, running) = mpsc::channel();
        let (finish, finish_rx) = mpsc::channel::<()>();
        let runner = {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait_with(|| {
                    running_tx.send(()).unwrap();
                    finish_rx.recv().unwrap();
                    Ok(())
                })
            })
        };
        assert!(eventually(LONG, || barrier.n_waiting().unwrap() == 1));
        let second = {
            let barrier = barrier.clone();
            std::thread::spawn(move || barrier.wait_timeout(Some(LONG)))
        };
        running.recv().unwrap();
        // A third party arrives while the action runs: it belongs to the next round.
        let next = {
            let barrier = barrier.clone();
            std::thread::spawn(move || barrier.wait_timeout(Some(LONG)))
        };
        finish.send(()).unwrap();
        assert_eq!(runner.join().unwrap(), Ok(0));
        assert_eq!(second.join().unwrap(), Ok(1));
        // Whenever the third arrived, it belongs to the next round, which it and the host
        // complete (in either order).
        let host = barrier.wait_timeout(Some(LONG)).unwrap();
        let mut indexes = [host, next.join().unwrap().unwrap()];
        indexes.sort();
        assert_eq!(indexes, [0, 1]);
    });
}

// ---- Condition.wait_for ----

#[test]
fn wait_for_checks_the_predicate_first_and_after_every_wakeup() {
    within(LIMIT, || {
        let m = Manager::new();
        let (cond, d) = (m.condition(), m.dict::<String, i64>());
        // True at once: no wait at all, even without a timeout.
        cond.acquire().unwrap();
        assert_eq!(cond.wait_for(|| Ok(true), None), Ok(true));
        // Never true: the timeout bounds the whole wait, the lock is held again after it.
        let mut calls = 0;
        let got = cond.wait_for(
            || {
                calls += 1;
                Ok(false)
            },
            Some(Duration::from_millis(100)),
        );
        assert_eq!(got, Ok(false));
        assert!(calls >= 2, "evaluated before and after waiting");
        cond.release().unwrap();
        assert!(
            cond.release().is_err(),
            "held exactly once again after wait_for"
        );

        // From a task: woken three times, true only the third.
        let p = started("condition_wait_for", &(&cond, &d, 3i64, None::<u64>));
        assert!(eventually(LONG, || d.contains(&"waiting".into()).unwrap()));
        for n in 1..=3 {
            // Holding the lock means the task is inside wait_for's wait.
            let _held = cond.lock().unwrap();
            d.set(&"n".into(), &n).unwrap();
            cond.notify_all().unwrap();
        }
        p.join().unwrap();
        assert_eq!(p.result::<(bool, i64)>().unwrap(), (true, 3));
    });
}

#[test]
fn a_tasks_wait_for_times_out_with_the_lock_held() {
    within(LIMIT, || {
        let m = Manager::new();
        let (cond, d) = (m.condition(), m.dict::<String, i64>());
        // The task releases the lock at its end: that fails unless wait_for re-acquired it.
        let got = run::<(bool, i64)>("condition_wait_for", &(&cond, &d, 1i64, Some(100u64)));
        assert_eq!(got.unwrap(), (false, 0));
        d.set(&"n".into(), &1).unwrap();
        let got = run::<(bool, i64)>("condition_wait_for", &(&cond, &d, 1i64, Some(0u64)));
        assert_eq!(got.unwrap(), (true, 1), "true at once: no wait needed");
    });
}

// ---- list.insert, remove, clear, slicing ----

#[test]
fn list_insert_remove_clear_and_slice_follow_python() {
    within(LIMIT, || {
        let l = Manager::new().list::<i64>();
        l.extend(&[0, 1, 2]).unwrap();
        l.insert(-1, &9).unwrap();
        assert_eq!(l.items().unwrap(), [0, 1, 9, 2]);
        l.insert(100, &7).unwrap();
        l.insert(-100, &5).unwrap();
        l.insert(i64::MIN, &4).unwrap();
        assert_eq!(l.items().unwrap(), [4, 5, 0, 1, 9, 2, 7]);
        assert_eq!(l.slice(Some(1), Some(-1)).unwrap(), [5, 0, 1, 9, 2]);
        assert_eq!(l.slice(None, Some(2)).unwrap(), [4, 5]);
        assert_eq!(l.slice(Some(-2), None).unwrap(), [2, 7]);
        assert_eq!(l.slice(Some(-100), Some(100)).unwrap(), l.items().unwrap());
        assert!(l.slice(Some(5), Some(2)).unwrap().is_empty());
        assert!(l.slice(Some(100), None).unwrap().is_empty());
        l.append(&9).unwrap();
        l.remove(&9).unwrap();
        assert_eq!(
            l.items().unwrap(),
            [4, 5, 0, 1, 2, 7, 9],
            "the first 9 only"
        );
        match l.remove(&42) {
            Err(ObjectError::Missing(m)) => assert!(m.contains("ValueError"), "{m}"),
            other => panic!("expected ValueError, got {other:?}"),
        }
        l.clear().unwrap();
        assert!(l.is_empty().unwrap());
        l.insert(3, &1).unwrap();
        assert_eq!(l.items().unwrap(), [1], "insert into an empty list");
    });
}

#[test]
fn a_task_inserts_removes_clears_and_slices_a_list() {
    within(LIMIT, || {
        let l = Manager::new().list::<i64>();
        l.extend(&[0, 1, 2]).unwrap();
        let seen = run::<Vec<String>>("conform_list", &(&l,)).unwrap();
        assert_eq!(
            seen,
            [
                "[5, 0, 1, 9, 2, 7]",
                "[0, 1, 9, 2]",
                "[2, 7]",
                "[]",
                "[5, 0, 1, 2, 7, 9]",
                "ValueError: list.remove(x): x not in list",
                "len=0",
            ]
        );
        assert!(
            l.is_empty().unwrap(),
            "the task's clear is seen by the host"
        );
    });
}

// ---- dict.popitem, dict.clear ----

#[test]
fn dict_popitem_is_lifo_and_clear_empties_it() {
    within(LIMIT, || {
        let d = Manager::new().dict::<String, i64>();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            d.set(&k.into(), &v).unwrap();
        }
        d.set(&"a".into(), &10).unwrap();
        assert_eq!(d.popitem().unwrap(), ("c".into(), 3));
        d.set(&"d".into(), &4).unwrap();
        assert_eq!(d.popitem().unwrap(), ("d".into(), 4));
        assert_eq!(d.popitem().unwrap(), ("b".into(), 2));
        assert_eq!(
            d.popitem().unwrap(),
            ("a".into(), 10),
            "a kept its first place"
        );
        match d.popitem() {
            Err(ObjectError::Missing(m)) => assert!(m.contains("KeyError"), "{m}"),
            other => panic!("expected KeyError, got {other:?}"),
        }
        d.update([(&"x".to_string(), &1), (&"y".to_string(), &2)])
            .unwrap();
        d.clear().unwrap();
        assert_eq!(d.len().unwrap(), 0);
        assert!(d.keys().unwrap().is_empty());
        d.set(&"z".into(), &3).unwrap();
        assert_eq!(d.items().unwrap(), [("z".to_string(), 3)]);
    });
}

#[test]
fn a_task_pops_items_from_and_clears_a_dict() {
    within(LIMIT, || {
        let d = Manager::new().dict::<String, i64>();
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            d.set(&k.into(), &v).unwrap();
        }
        let seen = run::<Vec<String>>("conform_dict", &(&d,)).unwrap();
        assert_eq!(
            seen,
            [
                r#"("c", 3)"#,
                r#"("d", 4)"#,
                "len=0",
                "KeyError: 'popitem(): dictionary is empty'",
            ]
        );
        assert_eq!(d.items().unwrap(), [("after".to_string(), 5)]);
    });
}

#[test]
fn popitem_and_clear_work_on_a_dict_that_moved_to_the_host() {
    within(LIMIT, || {
        let d = Manager::new().dict::<String, i64>();
        // More keys than half of the shared table holds: the dict moves to the broker.
        const N: i64 = 5000;
        for i in 0..N {
            d.set(&format!("k{i}"), &i).unwrap();
        }
        assert_eq!(d.popitem().unwrap(), (format!("k{}", N - 1), N - 1));
        assert_eq!(d.popitem().unwrap(), (format!("k{}", N - 2), N - 2));
        assert_eq!(d.len().unwrap(), N as usize - 2);
        d.clear().unwrap();
        assert!(d.is_empty().unwrap());
        assert!(matches!(d.popitem(), Err(ObjectError::Missing(_))));
        // And from a task, through the broker.
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            d.set(&k.into(), &v).unwrap();
        }
        let seen = run::<Vec<String>>("conform_dict", &(&d,)).unwrap();
        assert_eq!(seen[..2], [r#"("c", 3)"#, r#"("d", 4)"#]);
        assert_eq!(d.items().unwrap(), [("after".to_string(), 5)]);
    });
}
