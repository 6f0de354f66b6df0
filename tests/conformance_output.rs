//! Python's behaviour for output, error reports, message sizes and objects held by
//! containers (issue 24): a last line without a newline is not lost, a failed `Process`
//! prints its error, a message of exactly the size limit is accepted, and an object stored
//! only in a dict or list lives while the container holds it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpool::{
    Connection, DEFAULT_MAX_MESSAGE_BYTES as LIMIT_BYTES, Manager, ObjectError, Output, Pool,
    Process, Stream,
};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(120);
const SOON: Option<Duration> = Some(Duration::from_secs(30));

/// What a recorder saw on each stream, joined.
type Seen = Arc<Mutex<(String, String)>>;

fn recorder() -> (Output, Seen) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let output = Output::Callback(Arc::new(move |e: wasmpool::OutputEvent<'_>| {
        let mut s = sink.lock().unwrap();
        let text = String::from_utf8_lossy(e.data);
        match e.stream {
            Stream::Stdout => s.0.push_str(&text),
            Stream::Stderr => s.1.push_str(&text),
        }
    }));
    (output, seen)
}

fn process(task: &str, args: &impl serde::Serialize) -> Process {
    Process::new(&testkit(), task, args).unwrap()
}

// --- 1. Output is whole when a call ends ---------------------------------------------

#[test]
fn a_process_tasks_last_line_without_a_newline_reaches_the_caller_however_it_ends() {
    within(LIMIT, || {
        for (how, ends) in [(0u8, "returns"), (1, "fails"), (2, "panics")] {
            let text = format!("tail-{how}");
            let p = process("print_partial", &(&text, how))
                .with_output(Output::Capture)
                .with_error_report(false);
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(p.result::<u8>().is_ok(), how == 0, "{ends}");
            let out = p.captured_output();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                text,
                "stdout of a task that {ends}"
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                text,
                "stderr of a task that {ends}"
            );
        }
    });
}

#[test]
fn a_pool_tasks_last_line_without_a_newline_reaches_the_caller_with_apply_and_map() {
    within(LIMIT, || {
        let (output, seen) = recorder();
        let pool = Pool::builder(&testkit())
            .processes(1)
            .output(output)
            .build()
            .unwrap();
        let _: u8 = pool.apply("print_partial", &("apply;", 0u8)).unwrap();
        let failed = pool.apply::<_, u8>("print_partial", &("failed;", 1u8));
        assert!(failed.is_err(), "{failed:?}");
        let items = [("m0;", 0u8), ("m1;", 0), ("m2;", 0)];
        let _: Vec<u8> = pool.starmap("print_partial", items).unwrap();
        // Every answer came after the output its call wrote: nothing is waited for here.
        let (stdout, stderr) = seen.lock().unwrap().clone();
        assert_eq!(stdout, "apply;failed;m0;m1;m2;");
        assert_eq!(stderr, "apply;failed;m0;m1;m2;");
        pool.close();
        pool.join().unwrap();
    });
}

// --- 2. A failed Process reports its error on its stderr -----------------------------

#[test]
fn a_failed_process_writes_its_error_and_location_to_stderr_as_python_does() {
    within(LIMIT, || {
        let p = process("boom", &("no luck",)).with_output(Output::Capture);
        p.start().unwrap();
        p.join().unwrap();
        let name = p.name().to_string();
        let stderr = String::from_utf8(p.captured_output().stderr).unwrap();
        assert!(
            stderr.starts_with(&format!(
                "Process {name}:\ntask `boom` failed: panicked at "
            )),
            "{stderr}"
        );
        assert!(
            stderr.contains("src/lib.rs:"),
            "the panic's location: {stderr}"
        );
        assert!(stderr.ends_with("no luck\n"), "{stderr}");
        // The error is in `result` as before.
        assert!(p.result::<u64>().is_err());

        let p = process("fail", &("refused",)).with_output(Output::Capture);
        p.start().unwrap();
        p.join().unwrap();
        let stderr = String::from_utf8(p.captured_output().stderr).unwrap();
        assert_eq!(
            stderr,
            format!("Process {}:\ntask `fail` failed: refused\n", p.name())
        );
    });
}

#[test]
fn the_error_report_can_be_turned_off_and_success_or_exit_reports_nothing() {
    within(LIMIT, || {
        let quiet = process("fail", &("refused",))
            .with_output(Output::Capture)
            .with_error_report(false);
        let fine = process("square", &(3u64,)).with_output(Output::Capture);
        // Python prints nothing for `sys.exit(3)` either.
        let exits = process("exit_with", &(3i32,)).with_output(Output::Capture);
        for p in [&quiet, &fine, &exits] {
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(p.captured_output().stderr, b"", "{}", p.name());
        }
        assert!(quiet.result::<u64>().is_err());
        assert_eq!(exits.exitcode(), Some(1));
    });
}

#[test]
fn the_cli_run_command_prints_a_failed_tasks_error_once() {
    within(LIMIT, || {
        testkit();
        let wasm = wasm_of("testkit");
        let out = run_cli(&["run", wasm.to_str().unwrap(), "fail", r#""refused""#]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches("refused").count(), 1, "{err}");
        assert!(!err.contains("Process Process-"), "{err}");
    });
}

// --- 3. The message size limit is on what the caller sent -----------------------------

fn assert_too_large(err: &ObjectError, len: usize) {
    assert!(matches!(err, ObjectError::TooLarge(_)), "{err:?}");
    let expected =
        format!("a message of {len} bytes is over the message size limit of {LIMIT_BYTES} bytes");
    assert!(err.to_string().contains(&expected), "{err}");
}

#[test]
fn a_message_of_exactly_the_limit_is_sent_on_a_pipe_and_one_more_byte_is_refused() {
    within(LIMIT, || {
        let (a, b) = Manager::new().pipe::<()>(true);
        a.send_bytes(&vec![1u8; LIMIT_BYTES]).unwrap();
        assert_eq!(b.recv_bytes_timeout(SOON).unwrap().len(), LIMIT_BYTES);
        let err = a.send_bytes(&vec![1u8; LIMIT_BYTES + 1]).unwrap_err();
        assert_too_large(&err, LIMIT_BYTES + 1);
        // The pipe still works, and nothing of the refused message arrives.
        a.send_bytes(b"after").unwrap();
        assert_eq!(b.recv_bytes_timeout(SOON).unwrap(), b"after");
    });
}

#[test]
fn a_message_of_exactly_the_limit_is_put_or_stored_and_one_more_byte_is_refused() {
    within(LIMIT, || {
        let m = Manager::new();
        let q = m.queue::<String>();
        q.put(&"q".repeat(LIMIT_BYTES)).unwrap();
        assert_eq!(q.get_timeout(SOON).unwrap().len(), LIMIT_BYTES);
        assert_too_large(
            &q.put(&"q".repeat(LIMIT_BYTES + 1)).unwrap_err(),
            LIMIT_BYTES + 1,
        );

        // A dict entry counts its key and its value; a list item its value.
        let d = m.dict::<String, String>();
        d.set(&"k".to_string(), &"d".repeat(LIMIT_BYTES - 1))
            .unwrap();
        assert_eq!(
            d.get(&"k".to_string()).unwrap().unwrap().len(),
            LIMIT_BYTES - 1
        );
        let err = d
            .set(&"k".to_string(), &"d".repeat(LIMIT_BYTES))
            .unwrap_err();
        assert_too_large(&err, LIMIT_BYTES + 1);
        let l = m.list::<String>();
        l.append(&"l".repeat(LIMIT_BYTES)).unwrap();
        assert_too_large(
            &l.append(&"l".repeat(LIMIT_BYTES + 1)).unwrap_err(),
            LIMIT_BYTES + 1,
        );
        assert_eq!(l.len().unwrap(), 1);
    });
}

#[test]
fn a_task_sends_and_puts_exactly_the_limit_and_is_refused_one_more_byte() {
    within(LIMIT, || {
        let m = Manager::new();
        let run = |task: &str, args: &dyn erased::Args| {
            let p = args.process(task);
            p.start().unwrap();
            p.join().unwrap();
            p.result::<()>()
        };
        let (a, b) = m.pipe::<()>(true);
        run("send_bytes_of", &(&a, LIMIT_BYTES)).unwrap();
        assert_eq!(b.recv_bytes_timeout(SOON).unwrap().len(), LIMIT_BYTES);
        let err = run("send_bytes_of", &(&a, LIMIT_BYTES + 1)).unwrap_err();
        let expected = format!(
            "a message of {} bytes is over the message size limit of {LIMIT_BYTES} bytes",
            LIMIT_BYTES + 1
        );
        assert!(err.to_string().contains(&expected), "{err}");

        let q = m.queue::<String>();
        run("put_big", &(&q, LIMIT_BYTES)).unwrap();
        assert_eq!(q.get_timeout(SOON).unwrap().len(), LIMIT_BYTES);
        let err = run("put_big", &(&q, LIMIT_BYTES + 1)).unwrap_err();
        assert!(err.to_string().contains(&expected), "{err}");
    });
}

/// Task arguments of different types behind one closure.
mod erased {
    pub trait Args {
        fn process(&self, task: &str) -> wasmpool::Process;
    }

    impl<T: serde::Serialize> Args for T {
        fn process(&self, task: &str) -> wasmpool::Process {
            wasmpool::Process::new(&crate::util::testkit(), task, self)
                .unwrap()
                .with_error_report(false)
        }
    }
}

// --- 4. A dict or list holds the objects stored in it ---------------------------------

/// Whether the peer of `end` is still open somewhere: `poll` answers at once with `true`
/// only at end of file (nothing is ever sent here).
fn peer_open(end: &Connection<u32>) -> bool {
    !end.poll(Some(Duration::ZERO)).unwrap()
}

/// Waits until the peer of `end` is closed everywhere: `recv` answers end of file.
fn assert_peer_closes(end: &Connection<u32>) {
    match end.recv_timeout(SOON) {
        Err(ObjectError::Closed(_)) => {}
        other => panic!("expected end of file, got {other:?}"),
    }
}

#[test]
fn a_queue_stored_only_in_a_dict_lives_while_the_dict_holds_it() {
    within(LIMIT, || {
        let m = Manager::new();
        let d = m.dict::<String, wasmpool::Queue<u32>>();
        {
            let q = m.queue::<u32>();
            q.put(&7).unwrap();
            d.set(&"q".to_string(), &q).unwrap();
        }
        let q = d.get(&"q".to_string()).unwrap().expect("stored");
        assert_eq!(q.get_timeout(SOON).unwrap(), 7, "the queue is alive");
    });
}

#[test]
fn a_queue_a_task_stored_in_a_dict_outlives_the_task_and_its_creator_handle() {
    within(LIMIT, || {
        let m = Manager::new();
        let d = m.dict::<String, wasmpool::Queue<u32>>();
        let q = m.queue::<u32>();
        q.put(&9).unwrap();
        let p = process("stash_queue", &(&d, "g", &q));
        drop(q);
        p.start().unwrap();
        p.join().unwrap();
        p.result::<()>().unwrap();
        drop(p);
        let q = d
            .get(&"g".to_string())
            .unwrap()
            .expect("stored by the task");
        assert_eq!(q.get_timeout(SOON).unwrap(), 9, "the queue is alive");
    });
}

#[test]
fn a_pipe_end_in_a_list_or_dict_stays_open_until_the_container_lets_go_of_it() {
    within(LIMIT, || {
        let m = Manager::new();
        // Overwritten in a list.
        let l = m.list::<Connection<u32>>();
        let (a, b) = m.pipe::<u32>(true);
        let (c, _d) = m.pipe::<u32>(true);
        l.append(&a).unwrap();
        drop(a);
        assert!(peer_open(&b), "the list holds the end");
        l.set(0, &c).unwrap();
        assert_peer_closes(&b);

        // Popped from a list, then the popped handle dropped.
        let (a, b) = m.pipe::<u32>(true);
        l.append(&a).unwrap();
        drop(a);
        let a = l.pop(None).unwrap();
        assert!(peer_open(&b));
        a.send(&5).unwrap();
        assert_eq!(b.recv_timeout(SOON).unwrap(), 5);
        drop(a);
        assert_peer_closes(&b);

        // Deleted from a dict, and overwritten in one.
        let d = m.dict::<String, Connection<u32>>();
        let (a, b) = m.pipe::<u32>(true);
        let (e, f) = m.pipe::<u32>(true);
        d.set(&"x".to_string(), &a).unwrap();
        d.set(&"y".to_string(), &e).unwrap();
        drop((a, e));
        assert!(peer_open(&b) && peer_open(&f));
        d.delete(&"x".to_string()).unwrap();
        assert_peer_closes(&b);
        d.set(&"y".to_string(), &c).unwrap();
        assert_peer_closes(&f);

        // The container dropped: what it held goes with it.
        let (a, b) = m.pipe::<u32>(true);
        d.set(&"z".to_string(), &a).unwrap();
        drop(a);
        assert!(peer_open(&b));
        drop(d);
        assert_peer_closes(&b);
        drop(l);
    });
}

#[test]
fn insert_remove_clear_and_popitem_keep_a_containers_hold_exact() {
    within(LIMIT, || {
        let m = Manager::new();
        // Inserted into a list, then removed from it.
        let l = m.list::<Connection<u32>>();
        let (a, b) = m.pipe::<u32>(true);
        l.insert(0, &a).unwrap();
        drop(a);
        assert!(peer_open(&b), "the list holds the inserted end");
        let a = l.get(0).unwrap();
        l.remove(&a).unwrap();
        drop(a);
        assert_peer_closes(&b);

        // Inserted, then the list cleared.
        let (a, b) = m.pipe::<u32>(true);
        l.insert(-1, &a).unwrap();
        drop(a);
        assert!(peer_open(&b));
        l.clear().unwrap();
        assert_peer_closes(&b);

        // Popped as an item from a dict: the popped handle holds it, then lets go.
        let d = m.dict::<String, Connection<u32>>();
        let (a, b) = m.pipe::<u32>(true);
        d.set(&"x".to_string(), &a).unwrap();
        drop(a);
        let (_, a) = d.popitem().unwrap();
        assert!(peer_open(&b), "the popped handle holds the end");
        drop(a);
        assert_peer_closes(&b);

        // A dict cleared.
        let (a, b) = m.pipe::<u32>(true);
        d.set(&"y".to_string(), &a).unwrap();
        drop(a);
        assert!(peer_open(&b));
        d.clear().unwrap();
        assert_peer_closes(&b);
    });
}

#[test]
fn a_list_that_holds_itself_is_still_freed_when_its_last_handle_goes() {
    within(LIMIT, || {
        let m = Manager::new();
        let l = m.list::<serde_json::Value>();
        let (a, b) = m.pipe::<u32>(true);
        l.append(&serde_json::to_value(&l).unwrap()).unwrap();
        l.append(&serde_json::to_value(&a).unwrap()).unwrap();
        drop(a);
        assert!(peer_open(&b), "the list holds the end");
        drop(l);
        // Had the list kept itself alive, it would hold the end for ever.
        assert_peer_closes(&b);
    });
}
