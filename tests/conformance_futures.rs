//! Async results, futures and waits as Python's `multiprocessing` and `concurrent.futures`
//! have them: callbacks before readiness, `map_async` callbacks, `shutdown(wait=False)`,
//! `Future`'s API, `concurrent.futures.wait`, `multiprocessing.connection.wait`, and
//! `maxtasksperchild` counting a chunk as one task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use wasmpool::futures::ReturnWhen;
use wasmpool::{AsyncResult, Error, Event, Executor, Manager, Pool, Process};

use crate::util::*;

/// The outer limit of every test.
const LIMIT: Duration = Duration::from_secs(120);
/// Long enough for a result that is ready to come in on a loaded machine.
const LONG: Duration = Duration::from_secs(30);
/// What a wait for something that cannot be ready waits.
const SHORT: Duration = Duration::from_millis(200);

/// The testkit's `Misdeed`, as the host encodes it.
#[derive(Debug, Clone, Copy, Serialize)]
enum Misdeed {
    Panic,
}

/// `gated_square(gate, x)` submitted to an executor: done once `gate` is set.
fn gated(ex: &Executor, gate: &Event, x: u64) -> wasmpool::TaskFuture<u64> {
    ex.submit::<_, u64>("gated_square", &(gate, x)).unwrap()
}

#[test]
fn apply_async_is_ready_only_after_its_callback_has_run() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let r = pool
            .apply_async_with::<_, u64, _, _>(
                "square",
                &(7u64,),
                move |v| {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    sink.lock().unwrap().push(v);
                },
                |e| panic!("no error expected: {e}"),
            )
            .unwrap();
        // The task is done and its callback runs (held here): not ready yet.
        started.recv_timeout(LONG).unwrap();
        assert!(!r.ready(), "ready before the callback has run");
        assert!(!r.wait_timeout(SHORT), "wait returned before the callback");
        assert!(matches!(r.get_timeout(SHORT), Err(Error::Timeout(_))));
        assert!(
            r.successful().is_err(),
            "successful() before ready is an error"
        );
        go.send(()).unwrap();
        assert_eq!(r.get().unwrap(), 49);
        // What the callback collected is there once get() has returned.
        assert_eq!(*seen.lock().unwrap(), [49]);
        assert!(r.ready());
        assert!(r.successful().unwrap());
    });
}

#[test]
fn apply_async_error_callback_runs_before_get_returns_the_error() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 1).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let r = pool
            .apply_async_with::<_, u64, _, _>(
                "fail",
                &("refused",),
                |v| panic!("no value expected: {v}"),
                move |e| sink.lock().unwrap().push(e.to_string()),
            )
            .unwrap();
        let err = r.get().unwrap_err();
        assert!(matches!(err, Error::Task { ref message, .. } if message == "refused"));
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            1,
            "the error callback ran once, before get: {seen:?}"
        );
        assert!(seen[0].contains("refused"), "{seen:?}");
        assert!(!r.successful().unwrap());
    });
}

#[test]
fn get_inside_a_callback_returns_the_result_instead_of_deadlocking() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let cell: Arc<OnceLock<AsyncResult<u64>>> = Arc::new(OnceLock::new());
        let (tx, rx) = mpsc::channel();
        let inside = cell.clone();
        let r = pool
            .apply_async_with::<_, u64, _, _>(
                "gated_square",
                &(&gate, 5u64),
                move |v| {
                    // The callback's own result: get() waits for the work only, here.
                    let own = inside.get().unwrap();
                    let _ = tx.send((v, own.get().unwrap(), own.ready(), own.wait_timeout(SHORT)));
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        // Only now may the task finish, so the callback finds its result in the cell.
        let _ = cell.set(r);
        gate.set().unwrap();
        let (v, got, ready, waited) = rx.recv_timeout(LONG).unwrap();
        assert_eq!((v, got), (25, 25));
        assert!(
            !ready,
            "ready() is false until its callback has run, as in Python"
        );
        assert!(
            waited,
            "a wait on the callback thread waits for the work only"
        );
        assert_eq!(cell.get().unwrap().get().unwrap(), 25);
        assert!(cell.get().unwrap().ready());
    });
}

#[test]
fn map_async_callback_gets_the_whole_list_once_before_get_returns() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        let r = pool
            .map_async_with::<_, u64, _, _>(
                "square",
                0..50u64,
                Some(3),
                move |v| {
                    c.fetch_add(1, Ordering::SeqCst);
                    *s.lock().unwrap() = v;
                },
                |e| panic!("{e}"),
            )
            .unwrap();
        let expected: Vec<u64> = (0..50u64).map(|x| x * x).collect();
        assert_eq!(r.get().unwrap(), expected);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one call, with every result"
        );
        assert_eq!(*seen.lock().unwrap(), expected);
        pool.close();
        pool.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn map_async_error_callback_gets_the_first_error_once_after_every_chunk() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let runs = Manager::new().dict::<String, i64>();
        let (tx, rx) = mpsc::channel();
        let in_cb = runs.clone();
        let items: Vec<_> = (0..20u64)
            .map(|x| (runs.clone(), x, 0u64, Misdeed::Panic))
            .collect();
        let r = pool
            .starmap_async_with::<_, u64, _, _>(
                "counted",
                items,
                Some(1),
                |v| panic!("no list expected: {v:?}"),
                move |e| tx.send((e.to_string(), in_cb.len().unwrap())).unwrap(),
            )
            .unwrap();
        let err = r.get().unwrap_err();
        assert!(err.to_string().contains("misbehaving on purpose"), "{err}");
        let (message, ran) = rx.recv_timeout(LONG).unwrap();
        assert!(message.contains("misbehaving on purpose"), "{message}");
        assert_eq!(ran, 20, "the error callback ran after every chunk had run");
        pool.close();
        pool.join().unwrap();
        assert!(rx.try_recv().is_err(), "the error callback ran once");
    });
}

#[test]
fn starmap_async_callback_gets_the_results_in_order() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = pool
            .starmap_async_with::<_, i64, _, _>(
                "add",
                vec![(1i64, 2i64), (3, 4), (5, 6)],
                None,
                move |v| tx.send(v).unwrap(),
                |e| panic!("{e}"),
            )
            .unwrap();
        assert_eq!(r.get().unwrap(), [3, 7, 11]);
        assert_eq!(
            rx.try_recv().unwrap(),
            [3, 7, 11],
            "the callback ran before get returned"
        );
    });
}

#[test]
fn map_async_of_no_items_calls_the_callback_with_an_empty_list() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 1).unwrap();
        let (tx, rx) = mpsc::channel();
        let r = pool
            .map_async_with::<u64, u64, _, _>(
                "square",
                Vec::new(),
                None,
                move |v| tx.send(v).unwrap(),
                |e| panic!("{e}"),
            )
            .unwrap();
        assert!(r.get().unwrap().is_empty());
        assert!(rx.try_recv().unwrap().is_empty());
    });
}

#[test]
fn shutdown_without_wait_lets_submitted_work_finish_in_the_background() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let futs: Vec<_> = (1..=3u64).map(|x| gated(&ex, &gate, x)).collect();
        // Returns while the work cannot finish: it does not wait for it.
        ex.shutdown(false, false).unwrap();
        assert!(futs.iter().all(|f| !f.done()));
        gate.set().unwrap();
        let got: Vec<u64> = futs.iter().map(|f| f.result().unwrap()).collect();
        assert_eq!(got, [1, 4, 9], "the work submitted before shutdown ran");
    });
}

#[test]
fn dropping_an_executor_lets_submitted_work_finish() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let futs: Vec<_> = (1..=3u64).map(|x| gated(&ex, &gate, x)).collect();
        drop(ex);
        gate.set().unwrap();
        for (f, x) in futs.iter().zip(1..=3u64) {
            assert_eq!(f.result_timeout(LONG).unwrap(), x * x);
        }
    });
}

#[test]
fn shutdown_with_cancel_futures_cancels_only_what_has_not_started() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let m = Manager::new();
        let (run_gate, gate) = (m.event(), m.event());
        // Sent to the idle worker at once; the others wait in the queue (one task at a
        // time goes to a worker until the task's run time is known).
        let running = gated(&ex, &run_gate, 1);
        let queued: Vec<_> = (0..3u64).map(|x| gated(&ex, &gate, x)).collect();
        ex.shutdown(false, true).unwrap();
        run_gate.set().unwrap();
        assert_eq!(
            running.result_timeout(LONG).unwrap(),
            1,
            "the running task finishes"
        );
        for q in &queued {
            assert!(q.cancelled());
            assert!(q.done());
            assert!(
                matches!(q.result(), Err(Error::Cancelled { ref task }) if task == "gated_square")
            );
        }
    });
}

#[test]
fn cancel_answers_as_python_and_the_error_is_matchable() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let blocker = gated(&ex, &gate, 2);
        let queued = gated(&ex, &gate, 3);
        assert!(!queued.cancelled());
        assert!(queued.cancel(), "a queued task is cancelled");
        assert!(
            queued.cancel(),
            "cancelling a cancelled future answers true, as Python"
        );
        assert!(queued.clone().cancelled(), "a clone is the same future");
        let err = queued.result().unwrap_err();
        assert!(matches!(err, Error::Cancelled { .. }), "{err}");
        gate.set().unwrap();
        assert_eq!(blocker.result().unwrap(), 4);
        assert!(!blocker.cancel(), "a finished future is not cancelled");
        assert!(!blocker.cancelled());
    });
}

#[test]
fn result_timeout_times_out_and_a_later_call_gets_the_result() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let f = gated(&ex, &gate, 6);
        assert!(matches!(f.result_timeout(SHORT), Err(Error::Timeout(t)) if t == SHORT));
        gate.set().unwrap();
        assert_eq!(f.result_timeout(LONG).unwrap(), 36);
        assert_eq!(f.result().unwrap(), 36, "asked again");
    });
}

#[test]
fn add_done_callback_runs_at_once_if_done_else_when_done_and_panics_are_contained() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 1).unwrap();
        let gate = Manager::new().event();
        let f = gated(&ex, &gate, 4);
        let (tx, rx) = mpsc::channel();
        let later = tx.clone();
        f.add_done_callback(|_| panic!("a callback that panics"));
        f.add_done_callback(move |f| {
            later
                .send(("later", std::thread::current().id(), f.result().unwrap()))
                .unwrap()
        });
        assert!(rx.recv_timeout(SHORT).is_err(), "not done: not called yet");
        gate.set().unwrap();
        let (_, thread, v) = rx.recv_timeout(LONG).unwrap();
        assert_eq!(v, 16, "called once done, after a callback that panicked");
        assert_ne!(thread, std::thread::current().id());
        // Done: called at once, on this thread; a panic is logged, not propagated.
        f.add_done_callback(|_| panic!("another that panics"));
        let now = tx.clone();
        f.add_done_callback(move |f| {
            now.send(("now", std::thread::current().id(), f.result().unwrap()))
                .unwrap()
        });
        let (when, thread, v) = rx.try_recv().unwrap();
        assert_eq!((when, v), ("now", 16));
        assert_eq!(thread, std::thread::current().id());
        // A cancelled future is done too.
        let gate2 = Manager::new().event();
        let _blocker = gated(&ex, &gate2, 1);
        let queued = gated(&ex, &gate2, 2);
        let cancelled = tx.clone();
        queued.add_done_callback(move |f| {
            let _ = cancelled.send((
                "cancelled",
                std::thread::current().id(),
                u64::from(f.cancelled()),
            ));
        });
        assert!(queued.cancel());
        let (when, _, flag) = rx.recv_timeout(LONG).unwrap();
        assert_eq!((when, flag), ("cancelled", 1));
        gate2.set().unwrap();
    });
}

#[test]
fn futures_wait_returns_as_return_when_says() {
    within(LIMIT, || {
        let ex = Executor::new(&testkit(), 3).unwrap();
        let gate = Manager::new().event();
        let slow = gated(&ex, &gate, 3);
        let quick = ex.submit::<_, u64>("square", &(2u64,)).unwrap();
        let failing = ex.submit::<_, u64>("fail", &("no",)).unwrap();

        let (done, not_done) = wasmpool::futures::wait(
            &[slow.clone(), quick.clone()],
            None,
            ReturnWhen::FirstCompleted,
        );
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result().unwrap(), 4);
        assert_eq!(not_done.len(), 1);
        assert!(!not_done[0].done());

        let all = [slow.clone(), quick.clone(), failing.clone()];
        let (done, not_done) = wasmpool::futures::wait(&all, None, ReturnWhen::FirstException);
        assert_eq!(done.len(), 2, "the quick one and the failure");
        assert!(done.iter().any(|f| f.result().is_err()));
        assert_eq!(not_done.len(), 1);

        // Timed out: no error, what is not done is in not_done.
        let (done, not_done) = wasmpool::futures::wait(&all, Some(SHORT), ReturnWhen::AllCompleted);
        assert_eq!((done.len(), not_done.len()), (2, 1));

        // No exception among them: FIRST_EXCEPTION waits for all, as ALL_COMPLETED.
        let pair = [slow.clone(), quick.clone()];
        gate.set().unwrap();
        let (done, not_done) = wasmpool::futures::wait(&pair, None, ReturnWhen::FirstException);
        assert_eq!((done.len(), not_done.len()), (2, 0));
        assert_eq!(done[0].result().unwrap(), 9, "in the order given");
    });
}

#[test]
fn connection_wait_returns_the_ready_pipe_ends_processes_and_futures() {
    within(LIMIT, || {
        let m = Manager::new();
        let (a, b) = m.pipe::<u64>(true);
        let (c, _d) = m.pipe::<u64>(true);
        let gate = m.event();
        let p = Process::new(&testkit(), "gated_square", &(&gate, 3u64)).unwrap();
        p.start().unwrap();
        let ex = Executor::new(&testkit(), 1).unwrap();
        let f = gated(&ex, &gate, 4);
        let objects: [&dyn wasmpool::connection::Waitable; 4] = [&a, &c, &p, &f];

        assert!(
            wasmpool::connection::wait(&objects, Some(SHORT))
                .unwrap()
                .is_empty()
        );
        b.send(&1).unwrap();
        assert_eq!(
            wasmpool::connection::wait(&objects, None).unwrap(),
            [0],
            "a is readable"
        );
        assert_eq!(a.recv().unwrap(), 1);
        assert!(
            wasmpool::connection::wait(&objects, Some(SHORT))
                .unwrap()
                .is_empty()
        );
        gate.set().unwrap();
        // The process ends and the future is done; either may be seen first.
        let first = wasmpool::connection::wait(&objects, None).unwrap();
        assert!(
            !first.is_empty() && first.iter().all(|i| [2, 3].contains(i)),
            "{first:?}"
        );
        p.join().unwrap();
        assert_eq!(f.result().unwrap(), 16);
        assert_eq!(wasmpool::connection::wait(&objects, None).unwrap(), [2, 3]);
        // A closed other end: readable (end of file).
        b.close().unwrap();
        assert_eq!(wasmpool::connection::wait(&[&a], None).unwrap(), [0]);
        // One object: its own wait.
        assert!(
            wasmpool::connection::wait(&[&c], Some(SHORT))
                .unwrap()
                .is_empty()
        );
        // A process never started is an error, as in Python.
        let unstarted = Process::new(&testkit(), "square", &(1u64,)).unwrap();
        assert!(matches!(
            wasmpool::connection::wait(&[&unstarted, &c], Some(SHORT)),
            Err(Error::State(_))
        ));
    });
}

#[test]
fn maxtasksperchild_counts_a_map_chunk_as_one_task() {
    within(LIMIT, || {
        let pool = Pool::builder(&testkit())
            .processes(1)
            .maxtasksperchild(2)
            .build()
            .unwrap();
        // Three chunks of four: the first worker runs two chunks (two tasks), its
        // replacement the third.
        let pids: Vec<u32> = pool.map_chunked("pid_after", vec![0u64; 12], 4).unwrap();
        assert!(pids[..8].iter().all(|p| *p == pids[0]), "{pids:?}");
        assert!(pids[8..].iter().all(|p| *p == pids[8]), "{pids:?}");
        assert_ne!(
            pids[0], pids[8],
            "the worker was replaced after two tasks: {pids:?}"
        );
    });
}
