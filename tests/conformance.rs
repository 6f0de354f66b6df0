//! Python's multiprocessing semantics where wasmpool used to differ without saying so:
//! `it.next(timeout)`, `#[task]` on an alias of `Result`, settings on a started process.

use std::time::Duration;

use wasmpool::{Error, Event, Grants, Limits, Manager, Output, Pool, Process, encode_args};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(90);
/// Long enough for a result that is ready to come in on a loaded machine.
const LONG: Duration = Duration::from_secs(30);
/// What a wait for a result that cannot be ready (its task waits on an unset event) waits.
const SHORT: Duration = Duration::from_millis(200);

/// `gated_square` over `1..=3`: every item waits for `gate`.
fn gated<'a>(pool: &'a Pool, gate: &'a Event, ordered: bool) -> wasmpool::Imap<'a, u64> {
    let items = (1..=3u64).map(move |x| encode_args(&(gate, x)));
    pool.imap_encoded::<u64>("gated_square", items, 1, ordered)
        .unwrap()
}

fn assert_timeout(r: Option<wasmpool::Result<u64>>, what: &str) {
    match r {
        Some(Err(Error::Timeout(t))) => assert_eq!(t, SHORT, "{what}"),
        other => panic!("{what}: expected a timeout, got {other:?}"),
    }
}

#[test]
fn imap_next_timeout_times_out_and_the_iteration_goes_on_with_nothing_lost() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let gate = Manager::new().event();
        let mut it = gated(&pool, &gate, true);
        assert_timeout(it.next_timeout(SHORT), "before the gate opens");
        assert_timeout(it.next_timeout(SHORT), "again");
        gate.set().unwrap();
        let mut got = Vec::new();
        while let Some(r) = it.next_timeout(LONG) {
            got.push(r.unwrap());
        }
        assert_eq!(got, [1, 4, 9], "in order, the timed-out item first");
        assert!(
            it.next_timeout(SHORT).is_none(),
            "exhausted stays exhausted"
        );
    });
}

#[test]
fn imap_unordered_next_timeout_loses_nothing_and_mixes_with_next() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        let gate = Manager::new().event();
        let mut it = gated(&pool, &gate, false);
        assert_timeout(it.next_timeout(SHORT), "before the gate opens");
        gate.set().unwrap();
        // A blocking `next` after a timed-out wait gets the item that wait asked for.
        let mut got = vec![it.next().unwrap().unwrap()];
        got.push(it.next_timeout(LONG).unwrap().unwrap());
        got.extend(it.by_ref().map(|r| r.unwrap()));
        got.sort_unstable();
        assert_eq!(got, [1, 4, 9], "every item once");
        assert!(it.next_timeout(SHORT).is_none());
    });
}

#[test]
fn next_timeout_hands_out_a_task_failure_as_that_items_result() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 2).unwrap();
        for ordered in [true, false] {
            let items = [3u64, 13, 4].map(|x| encode_args(&(x,)));
            let mut it = pool
                .imap_encoded::<u64>("square_or_panic", items.into_iter(), 1, ordered)
                .unwrap();
            let mut ok = Vec::new();
            let mut failed = 0;
            while let Some(r) = it.next_timeout(LONG) {
                match r {
                    Ok(v) => ok.push(v),
                    Err(Error::Task { .. }) => failed += 1,
                    Err(e) => panic!("ordered {ordered}: {e}"),
                }
            }
            ok.sort_unstable();
            assert_eq!((ok, failed), (vec![9, 16], 1), "ordered {ordered}");
        }
    });
}

#[test]
fn a_task_returning_an_alias_of_result_fails_with_its_err() {
    within(LIMIT, || {
        let pool = Pool::new(&testkit(), 1).unwrap();
        for task in ["alias_checked", "alias_forced"] {
            assert_eq!(pool.apply::<_, u64>(task, &(5u64,)).unwrap(), 5, "{task}");
            match pool.apply::<_, u64>(task, &(0u64,)) {
                Err(Error::Task { message, .. }) => {
                    assert_eq!(message, "zero is refused", "{task}")
                }
                other => panic!("{task}: expected the task's Err, got {other:?}"),
            }
        }
        // `#[task(infallible)]` sends the `Result` whole, as a value.
        let whole: Result<u64, String> = pool.apply("alias_as_value", &(0u64,)).unwrap();
        assert_eq!(whole, Err("zero is refused".to_string()));
    });
}

/// Runs `square(3)`, applies `set` to the started process, and checks the setting is
/// refused: reported once by the next join, naming what was set, and nothing else lost.
fn refused_after_start(what: &str, set: impl FnOnce(Process) -> Process) {
    let p = Process::new(&testkit(), "square", &(3u64,)).unwrap();
    let name = p.name().to_string();
    p.start().unwrap();
    let p = set(p);
    match p.join() {
        Err(Error::State(message)) => {
            assert!(message.contains(what), "{what}: {message}");
            assert!(message.contains("already started"), "{what}: {message}");
            assert!(message.contains(&name), "{what}: {message}");
        }
        other => panic!("{what}: expected the late setting refused, got {other:?}"),
    }
    // Reported once; the process and its result are as they were.
    p.join().unwrap();
    assert_eq!(p.name(), name, "{what}");
    assert!(!p.is_daemon(), "{what}");
    assert_eq!(p.exitcode(), Some(0), "{what}");
    assert_eq!(p.result::<u64>().unwrap(), 9, "{what}");
}

#[test]
fn settings_on_a_started_process_are_refused_not_ignored() {
    within(LIMIT, || {
        refused_after_start("daemon", |p| p.with_daemon(true));
        refused_after_start("name", |p| p.with_name("late"));
        refused_after_start("limits", |p| {
            p.with_limits(Limits::default().timeout(Duration::from_secs(1)))
        });
        refused_after_start("grants", |p| p.with_grants(Grants::new()));
        refused_after_start("output", |p| p.with_output(Output::Discard));
    });
}

#[test]
fn a_late_setting_is_reported_by_result_and_join_timeout_too() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "square", &(4u64,)).unwrap();
        p.start().unwrap();
        let p = p.with_daemon(true);
        assert!(matches!(p.join_timeout(LONG), Err(Error::State(_))));
        assert!(p.join_timeout(LONG).unwrap());
        let p = p.with_output(Output::Discard);
        assert!(matches!(p.result::<u64>(), Err(Error::State(m)) if m.contains("output")));
        assert_eq!(p.result::<u64>().unwrap(), 16);
        // Before start, the settings apply as ever.
        let q = Process::new(&testkit(), "square", &(5u64,))
            .unwrap()
            .with_name("early")
            .with_daemon(true);
        assert_eq!((q.name(), q.is_daemon()), ("early", true));
        q.start().unwrap();
        q.join().unwrap();
        assert_eq!(q.result::<u64>().unwrap(), 25);
    });
}
