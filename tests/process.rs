//! `Process`: Python's semantics, the task's result, errors, signals, daemons.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmpool::{Error, Output, Process, Stream, active_children, cpu_count};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn process_runs_a_task_and_returns_its_result_with_exitcode_zero() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "square", &(7u64,)).unwrap();
        assert_eq!(p.exitcode(), None);
        assert!(!p.is_alive());
        assert!(p.pid().is_none());
        p.start().unwrap();
        assert!(p.pid().is_some());
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        assert!(!p.is_alive());
        assert_eq!(p.result::<u64>().unwrap(), 49);
    });
}

#[test]
fn arguments_larger_than_a_socket_buffer_reach_a_new_process_whole() {
    within(LIMIT, || {
        // A module of its own, with no spare: each start forks a worker, and part of the
        // call is written before the worker exists, the rest once it does.
        testkit();
        let module = wasmpool::Module::load(wasm_of("testkit")).unwrap();
        module.set_keep_spare(false);
        for len in [100 << 10, 4 << 20] {
            let text = "x".repeat(len);
            let p = Process::new(&module, "text_len", &(text,)).unwrap();
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
            assert_eq!(p.result::<u64>().unwrap(), len as u64);
        }
    });
}

#[test]
fn serde_records_and_several_arguments_cross_intact() {
    within(LIMIT, || {
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Point {
            x: f64,
            y: f64,
        }
        let p = Process::new(&testkit(), "scale", &(Point { x: 1.5, y: -2.0 }, 2.0)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<Point>().unwrap(), Point { x: 3.0, y: -4.0 });

        let p = Process::new(&testkit(), "add", &(40i64, 2i64)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<i64>().unwrap(), 42);
    });
}

#[test]
fn names_count_up_like_python_and_can_be_set() {
    let a = Process::new(&testkit(), "noop", &()).unwrap();
    let b = Process::new(&testkit(), "noop", &()).unwrap();
    let na: u64 = a.name().strip_prefix("Process-").unwrap().parse().unwrap();
    let nb: u64 = b.name().strip_prefix("Process-").unwrap().parse().unwrap();
    assert!(nb > na);
    let c = Process::new(&testkit(), "noop", &())
        .unwrap()
        .with_name("worker-c");
    assert_eq!(c.name(), "worker-c");
}

#[test]
fn a_task_error_gives_exitcode_one_and_the_guests_message() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "fail", &("disk on fire",)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(1));
        match p.result::<u64>() {
            Err(Error::Task { task, message }) => {
                assert_eq!(task, "fail");
                assert_eq!(message, "disk on fire");
            }
            other => panic!("expected a task error, got {other:?}"),
        }
    });
}

#[test]
fn a_guest_panic_is_a_task_error_carrying_the_panic_message() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "boom", &("out of cheese",)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(1));
        let err = p.result::<u64>().unwrap_err();
        assert!(
            matches!(&err, Error::Task { message, .. } if message.contains("out of cheese")),
            "{err}"
        );
    });
}

#[test]
fn a_trap_is_reported_as_a_trap() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "trap", &()).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(1));
        let err = p.result::<u64>().unwrap_err();
        assert!(
            matches!(&err, Error::Trap { message, .. } if message.contains("unreachable")),
            "{err}"
        );
    });
}

#[test]
fn an_unknown_task_is_refused_listing_the_tasks_the_module_has() {
    within(LIMIT, || {
        let module = testkit();
        module.tasks().unwrap();
        match Process::new(&module, "sqaure", &(1u64,)) {
            Err(Error::UnknownTask { task, available }) => {
                assert_eq!(task, "sqaure");
                assert!(available.contains(&"square".to_string()));
            }
            other => panic!("expected UnknownTask, got {other:?}"),
        }
    });
}

#[test]
fn arguments_of_the_wrong_type_or_count_are_clear_errors() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "square", &("seven",)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(1));
        let err = p.result::<u64>().unwrap_err().to_string();
        assert!(
            err.contains("argument 1 (`x: u64`): expected u64, got a string"),
            "{err}"
        );

        let p = Process::new(&testkit(), "add", &(1i64,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        let err = p.result::<i64>().unwrap_err().to_string();
        assert!(
            err.contains("takes 2 arguments") && err.contains("got 1"),
            "{err}"
        );

        assert!(matches!(
            Process::new(&testkit(), "square", &7u64),
            Err(Error::BadArgs(_))
        ));
    });
}

#[test]
fn a_result_of_the_wrong_type_is_a_decode_error_naming_task_and_type() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "greet", &("x",))
            .unwrap()
            .with_output(Output::Discard);
        p.start().unwrap();
        p.join().unwrap();
        match p.result::<u64>() {
            Err(Error::Decode { task, ty, .. }) => {
                assert_eq!(task, "greet");
                assert_eq!(ty, "u64");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    });
}

#[test]
fn misuse_is_an_error_as_in_python() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "noop", &()).unwrap();
        assert!(
            matches!(p.join(), Err(Error::State(_))),
            "join before start"
        );
        assert!(
            matches!(p.result::<()>(), Err(Error::State(_))),
            "result before start"
        );
        p.start().unwrap();
        assert!(matches!(p.start(), Err(Error::State(_))), "start twice");
        p.join().unwrap();
        p.join().unwrap();
        p.result::<()>().unwrap();
    });
}

#[test]
fn join_with_timeout_returns_while_the_task_runs() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "sleep_ms", &(30_000u64,)).unwrap();
        p.start().unwrap();
        assert!(!p.join_timeout(Duration::from_millis(50)).unwrap());
        assert!(p.is_alive());
        assert_eq!(p.exitcode(), None);
        assert!(matches!(p.result::<u64>(), Err(Error::State(_))));
        p.kill();
        assert!(p.join_timeout(Duration::from_secs(20)).unwrap());
    });
}

#[test]
fn terminate_and_kill_give_minus_the_signal_and_a_worker_lost_error() {
    within(LIMIT, || {
        for (sig, stop) in [
            (15, Process::terminate as fn(&Process)),
            (9, Process::kill as fn(&Process)),
        ] {
            let p = Process::new(&testkit(), "sleep_ms", &(30_000u64,)).unwrap();
            p.start().unwrap();
            let pid = p.pid().unwrap();
            stop(&p);
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(-sig));
            assert!(!pid_alive(pid));
            match p.result::<u64>() {
                Err(Error::WorkerLost {
                    pid: lost,
                    signal,
                    task,
                    ..
                }) => {
                    assert_eq!(lost, pid);
                    assert_eq!(signal, Some(sig));
                    assert_eq!(task, "sleep_ms");
                }
                other => panic!("expected WorkerLost, got {other:?}"),
            }
            // Signalling an exited process is a no-op, as in Python.
            p.kill();
        }
    });
}

#[test]
fn active_children_lists_running_processes_and_cpu_count_is_positive() {
    within(LIMIT, || {
        assert!(cpu_count() >= 1);
        let p = Process::new(&testkit(), "sleep_ms", &(30_000u64,))
            .unwrap()
            .with_name("listed-child");
        p.start().unwrap();
        let pid = p.pid().unwrap();
        assert!(
            active_children()
                .iter()
                .any(|c| c.name == "listed-child" && c.pid == pid)
        );
        p.kill();
        p.join().unwrap();
        assert!(!active_children().iter().any(|c| c.name == "listed-child"));
    });
}

/// What the recorder saw: (pid, process, task, stream, text) per chunk.
type Seen = Arc<Mutex<Vec<(u32, String, String, Stream, String)>>>;

fn recorder() -> (Output, Seen) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let output = Output::Callback(Arc::new(move |e: wasmpool::OutputEvent<'_>| {
        sink.lock().unwrap().push((
            e.pid,
            e.process.to_string(),
            e.task.to_string(),
            e.stream,
            String::from_utf8_lossy(e.data).into_owned(),
        ));
    }));
    (output, seen)
}

#[test]
fn guest_output_reaches_the_caller_tagged_with_worker_and_task() {
    within(LIMIT, || {
        let (output, seen) = recorder();
        let p = Process::new(&testkit(), "greet", &("ada",))
            .unwrap()
            .with_name("greeter")
            .with_output(output);
        p.start().unwrap();
        p.join().unwrap();
        let pid = p.pid().unwrap();
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter()
                .all(|e| e.0 == pid && e.1 == "greeter" && e.2 == "greet"),
            "every chunk is tagged: {seen:?}"
        );
        let text = |stream| {
            seen.iter()
                .filter(|e| e.3 == stream)
                .map(|e| e.4.as_str())
                .collect::<String>()
        };
        assert_eq!(text(Stream::Stdout), "hello, ada\n");
        assert_eq!(text(Stream::Stderr), "to stderr, ada\n");

        let p = Process::new(&testkit(), "greet", &("bob",))
            .unwrap()
            .with_output(Output::Capture);
        p.start().unwrap();
        p.join().unwrap();
        let captured = p.captured_output();
        assert_eq!(captured.stdout, b"hello, bob\n");
        assert_eq!(captured.stderr, b"to stderr, bob\n");
    });
}

#[test]
fn a_guest_knows_its_pid_parent_pid_and_name() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "whoami", &())
            .unwrap()
            .with_name("me");
        p.start().unwrap();
        p.join().unwrap();
        let (pid, ppid, name) = p.result::<(u32, u32, String)>().unwrap();
        assert_eq!(Some(pid), p.pid());
        assert_eq!(ppid, std::process::id());
        assert_eq!(name, "me");
    });
}

#[test]
fn clocks_and_randomness_work_in_the_guest() {
    within(LIMIT, || {
        let run = || {
            let p = Process::new(&testkit(), "clock_and_random", &()).unwrap();
            p.start().unwrap();
            p.join().unwrap();
            p.result::<(f64, Vec<u8>)>().unwrap()
        };
        let (t1, r1) = run();
        let (_, r2) = run();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((now - t1).abs() < 60.0, "guest clock {t1} vs host {now}");
        assert_eq!(r1.len(), 8);
        assert_ne!(r1, r2, "random bytes differ between runs");

        let p = Process::new(&testkit(), "sleep_ms", &(120u64,)).unwrap();
        let start = std::time::Instant::now();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<u64>().unwrap(), 120);
        assert!(
            start.elapsed() >= Duration::from_millis(120),
            "the guest really slept"
        );
    });
}

#[test]
fn dropping_a_daemon_terminates_it_and_dropping_a_non_daemon_waits_for_it() {
    within(LIMIT, || {
        let (output, seen) = recorder();
        let p = Process::new(&testkit(), "tick", &(2u32, 300u64))
            .unwrap()
            .with_output(output);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        drop(p);
        assert!(!pid_alive(pid));
        let lines: Vec<String> = seen.lock().unwrap().iter().map(|e| e.4.clone()).collect();
        assert_eq!(
            lines.concat(),
            "tick 0\ntick 1\n",
            "a non-daemon runs to completion"
        );

        let (output, seen) = recorder();
        let p = Process::new(&testkit(), "tick", &(50u32, 100u64))
            .unwrap()
            .with_output(output)
            .with_daemon(true);
        p.start().unwrap();
        let pid = p.pid().unwrap();
        drop(p);
        assert!(!pid_alive(pid), "a dropped daemon is terminated");
        assert!(
            seen.lock().unwrap().len() < 50,
            "the daemon did not run to completion"
        );
    });
}

#[test]
fn each_process_gets_a_fresh_instance() {
    within(LIMIT, || {
        for _ in 0..2 {
            let p = Process::new(&testkit(), "counter", &()).unwrap();
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(
                p.result::<u64>().unwrap(),
                1,
                "no state leaks from one process to the next"
            );
        }
    });
}

#[test]
fn workers_never_outlive_a_host_killed_with_sigkill() {
    within(LIMIT, || {
        // The host here is the CLI running a long task; its worker is forked from its
        // fork server, its child.
        let mut host = cli()
            .args(["run", "examples/testkit", "sleep_ms", "60000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let host_pid = host.id();
        assert!(
            eventually(Duration::from_secs(30), || descendants_of(host_pid).len()
                >= 2),
            "the worker starts"
        );
        // Wait until the task runs (the spare, if any, is a descendant too).
        std::thread::sleep(Duration::from_millis(300));
        let workers = descendants_of(host_pid);
        assert!(workers.len() >= 2);
        host.kill().unwrap();
        host.wait().unwrap();
        assert!(
            eventually(Duration::from_secs(1), || workers
                .iter()
                .all(|&w| !pid_alive(w))),
            "every worker is gone within a second of the host's death: {workers:?}"
        );
    });
}
