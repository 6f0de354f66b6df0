//! Tasks written in Python (`guest-sdk/python`): a `.py` file or a Python project directory
//! is built with componentize-py (installed on first use into wasmpool's own virtualenv)
//! and runs as any other module, through the library and the CLI.

use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;
use wasmpool::{Error, Limits, Manager, Module, ObjectError, Output, Pool, Process};

use crate::util::*;

/// The first build installs componentize-py and compiles the ~19 MB component (about 30
/// CPU-seconds each): once per test binary, under a generous outer timeout.
const FIRST_BUILD: Duration = Duration::from_secs(900);

fn load_python(cell: &'static OnceLock<Module>, path: &'static str) -> Module {
    setup();
    cell.get_or_init(|| {
        within(FIRST_BUILD, move || {
            Module::load(root().join(path)).unwrap_or_else(|e| panic!("building {path}: {e}"))
        })
    })
    .clone()
}

/// `examples/py-hello/hello.py`: a single-file guest.
pub(crate) fn py_hello() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_python(&M, "examples/py-hello/hello.py")
}

/// `examples/py-seeds`: a project directory (pyproject.toml with `[tool.wasmpool]`).
fn py_seeds() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_python(&M, "examples/py-seeds")
}

#[test]
fn a_python_project_lists_its_tasks_in_registration_order() {
    let tasks = py_seeds().tasks().unwrap();
    assert_eq!(
        tasks,
        [
            "task1",
            "task2",
            "task3",
            "run_proc",
            "run_task",
            "process",
            "job",
            "process_task",
            "queue_process_task",
            "consumer",
            "producer",
            "pipe_process_task",
            "pipe_consumer",
            "pipe_producer",
            "manager_process_task",
            "lock_process_task",
            "divide"
        ]
    );
    let out = run_cli(&["tasks", "examples/py-seeds"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let listed: Vec<&str> = text.lines().map(str::trim).collect();
    for t in &tasks {
        assert!(listed.contains(&t.as_str()), "{t} not in {listed:?}");
    }
}

#[test]
fn a_python_file_runs_through_the_cli() {
    py_hello();
    let out = run_cli(&["run", "examples/py-hello/hello.py", "square", "7"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "49\n");

    // `@task(name=...)` names the task; what it prints reaches the caller before its result.
    let out = run_cli(&["run", "examples/py-hello/hello.py", "greet", r#""eve""#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello, eve\n\"greeted eve\"\n");
}

#[test]
fn a_seed_task_prints_what_the_python_original_prints() {
    py_seeds();
    let out = run_cli(&["run", "examples/py-seeds", "task1", r#""one""#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "task1: hello, one\nnull\n");
    let out = run_cli(&["run", "examples/py-seeds", "process", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "Process: 3\nnull\n");
}

#[test]
fn map_over_a_range_runs_a_python_task_per_item() {
    py_seeds();
    let out = run_cli(&[
        "map",
        "examples/py-seeds",
        "job",
        "--range",
        "0..10",
        "-j",
        "2",
        "--chunksize",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &serde_json::json!({"input": i, "result": i * i}));
    }
}

#[test]
fn pool_map_of_a_python_task_and_a_batch_with_a_failing_item() {
    let pool = Pool::new(&py_seeds(), 2).unwrap();
    let squares: Vec<u64> = within(Duration::from_secs(120), move || {
        pool.map_chunked::<u64, u64>("job", 0..100, 7).unwrap()
    });
    assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());

    // One batch (chunksize 3) whose middle item raises: the others still answer.
    let dir = TempDir::new("py-divide");
    let input = dir.file("in.jsonl", b"[6, 3]\n[1, 0]\n[9, 3]\n");
    let out = run_cli(&[
        "map",
        "examples/py-seeds",
        "divide",
        "--star",
        "--input",
        input.to_str().unwrap(),
        "-j",
        "1",
        "--chunksize",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    assert_eq!(lines[0]["result"], 2.0);
    let error = lines[1]["error"].as_str().unwrap();
    assert!(
        error.contains("ZeroDivisionError: division by zero"),
        "{error}"
    );
    assert_eq!(lines[2]["result"], 3.0);
}

#[test]
fn an_exception_fails_the_task_with_its_type_message_and_traceback() {
    let pool = Pool::new(&py_hello(), 1).unwrap();
    let err = within(Duration::from_secs(120), move || {
        pool.apply::<_, ()>("lookup", &("k",)).unwrap_err()
    });
    let Error::Task { task, message } = &err else {
        panic!("expected a task error, got {err:?}");
    };
    assert_eq!(task, "lookup");
    // A class of the user's module is named with its module, as Python's traceback does.
    assert!(
        message.starts_with("hello.NotFound: no entry for 'k'\n"),
        "{message}"
    );
    assert!(
        message.contains("Traceback (most recent call last):"),
        "{message}"
    );
    // Frames name the user's file and function (componentize-py bundles no source text),
    // and the SDK's own frame is left out.
    assert!(
        message.contains("hello.py\", line ") && message.contains(", in lookup"),
        "{message}"
    );
    assert!(!message.contains("_registry.py"), "{message}");

    let out = run_cli(&["run", "examples/py-seeds", "divide", "1", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("task `divide` failed: ZeroDivisionError: division by zero"),
        "{err}"
    );
    assert!(err.contains(", in divide"), "{err}");
}

#[test]
fn an_unknown_task_or_wrong_arguments_are_clear_errors() {
    py_hello();
    let out = run_cli(&["run", "examples/py-hello/hello.py", "cube", "2"]);
    assert_cli_error(&out, 2, "unknown task `cube`");
    assert!(stderr(&out).contains("square"), "{}", stderr(&out));

    let pool = Pool::new(&py_hello(), 1).unwrap();
    let err = within(Duration::from_secs(120), move || {
        pool.apply::<_, u64>("square", &(1, 2)).unwrap_err()
    });
    assert!(
        err.to_string()
            .contains("task `square` takes 1 argument (x: int), got 2"),
        "{err}"
    );
}

#[derive(Serialize)]
struct Point {
    x: i64,
    label: String,
    tags: Vec<u8>,
}

/// What the Python SDK encodes is byte for byte what the Rust SDK (rmp_serde, named
/// structs) encodes for the same value.
#[test]
fn python_encodes_values_byte_for_byte_as_the_rust_sdk() {
    fn check<T: Serialize>(pool: &Pool, value: T) {
        let rust = rmp_serde::to_vec_named(&value).unwrap();
        let python: serde_bytes_like::Bytes = pool.apply("reencode", &(&value,)).unwrap();
        assert_eq!(python.0, rust, "Python's encoding differs from Rust's");
    }
    let pool = Pool::new(&py_hello(), 1).unwrap();
    within(Duration::from_secs(120), move || {
        for v in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as i64,
            u32::MAX as i64 + 1,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i32::MIN as i64 - 1,
            i64::MIN,
        ] {
            check(&pool, v);
        }
        check(&pool, u64::MAX);
        check(&pool, 1.5f64);
        check(&pool, true);
        check(&pool, Option::<u8>::None);
        for n in [0, 31, 32, 255, 256, 70_000] {
            check(&pool, "é".repeat(n / 2) + &"x".repeat(n % 2));
        }
        check(&pool, vec![1u64; 15]);
        check(&pool, vec![1u64; 16]);
        check(&pool, (1u8, "two", [3.0f64]));
        check(
            &pool,
            std::collections::BTreeMap::from([("a", 1u32), ("b", 2)]),
        );
        check(
            &pool,
            Point {
                x: -5,
                label: "p".into(),
                tags: vec![1, 2, 3],
            },
        );
    });
}

/// A byte string result (MessagePack bin), as raw bytes; `Raw` sends one.
mod serde_bytes_like {
    use serde::de::{Deserialize, Deserializer, Visitor};

    pub struct Raw(pub Vec<u8>);

    impl serde::Serialize for Raw {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    #[derive(Debug, PartialEq)]
    pub struct Bytes(pub Vec<u8>);

    impl serde::Serialize for Bytes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

/// The SDK's own unit tests (codec, registry), in the host's Python.
#[test]
fn the_python_sdk_unit_tests_pass() {
    let out = within(Duration::from_secs(120), || {
        std::process::Command::new(std::env::var("WASMPOOL_PYTHON").unwrap_or("python3".into()))
            .args(["-m", "unittest", "discover", "-s", "guest-sdk/python/tests"])
            .current_dir(root())
            .output()
            .expect("python3 runs")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The interpreter is snapshotted at build time, `random`'s seed with it: each fresh
/// instance draws a seed of its own, as each Python worker process does.
#[test]
fn each_python_worker_draws_its_own_random_numbers() {
    let module = py_hello();
    let draws: Vec<f64> = within(Duration::from_secs(120), move || {
        (0..2)
            .map(|_| {
                let p = Process::new(&module, "draw", &()).unwrap();
                p.start().unwrap();
                p.join().unwrap();
                p.result::<f64>().unwrap()
            })
            .collect()
    });
    assert_ne!(draws[0], draws[1], "two workers drew the same number");
}

/// `examples/py-testkit/testkit.py`: Python tasks for these tests (shared objects,
/// identity, type hints, limits).
fn py_testkit() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_python(&M, "examples/py-testkit/testkit.py")
}

const PY_LIMIT: Duration = Duration::from_secs(120);

/// Runs a Python testkit task in a `Process`; its result.
fn py_run<R: serde::de::DeserializeOwned>(
    task: &str,
    args: &impl Serialize,
) -> wasmpool::Result<R> {
    let p = Process::new(&py_testkit(), task, args)?;
    p.start()?;
    p.join()?;
    p.result()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

/// What `queue_ops` leaves on its queue.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
struct Left {
    n: Vec<f64>,
    b: serde_bytes_like::Bytes,
    none: Option<u8>,
}

#[test]
fn python_queues_put_get_and_raise_as_pythons() {
    py_testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        let q = m.queue::<Left>();
        let bounded = m.bounded_queue::<String>(1);
        let joinable = m.joinable_queue::<String>(0);
        let closing = m.queue::<u32>();
        let seen: serde_json::Value =
            py_run("queue_ops", &(&q, &bounded, &joinable, &closing)).unwrap();
        assert_eq!(
            seen,
            json(
                r#"[2, 1, "two", true, "Empty", "Empty", "Empty", "ValueError",
                    true, 1, "Full", "Full", "Full", "job", "ValueError", "ValueError"]"#
            )
        );
        // What the task put is there for the host, decoded into its own types.
        assert_eq!(
            q.get().unwrap(),
            Left {
                n: vec![1.0, -2.0, 3.5],
                b: serde_bytes_like::Bytes(vec![0, 255]),
                none: None
            }
        );
        assert_eq!(bounded.get().unwrap(), "x");
        assert!(matches!(closing.put(&1), Err(ObjectError::Closed(_))));
    });
}

#[test]
fn a_seed_style_python_worker_puts_on_the_queue_it_was_given() {
    py_testkit();
    within(PY_LIMIT, || {
        let q = Manager::new().queue::<u32>();
        let p = Process::new(&py_testkit(), "worker", &(&q,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        assert_eq!(
            Some(q.get().unwrap()),
            p.pid(),
            "os.getpid() is the worker's"
        );
    });
}

#[test]
fn python_pipe_ends_send_receive_and_reach_end_of_file() {
    py_testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        let (a, b) = m.pipe::<serde_json::Value>(true);
        let seen: serde_json::Value = py_run("pipe_ops", &(&a, &b)).unwrap();
        assert_eq!(
            seen,
            json(r#"[true, {"k": 1}, false, "abc", "OSError", "OSError", true]"#)
        );

        // Once every copy of one end is closed (the task's, then the host's), the other
        // end reads end of file and cannot send.
        a.close().unwrap();
        let seen: serde_json::Value = py_run("pipe_after_close", &(&b,)).unwrap();
        assert_eq!(seen, json(r#"["EOFError", "BrokenPipeError", false]"#));

        // A reader in Python sees what the host sent, then EOFError once it closed its end.
        let (tx, rx) = m.pipe::<String>(true);
        let p = Process::new(&py_testkit(), "recv_until_eof", &(&rx,)).unwrap();
        p.start().unwrap();
        tx.send(&"x".to_string()).unwrap();
        tx.send(&"y".to_string()).unwrap();
        tx.close().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<Vec<String>>().unwrap(), ["x", "y"]);
    });
}

#[test]
fn python_locks_semaphores_and_conditions_acquire_release_and_raise_as_pythons() {
    py_testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        let (lock, rlock) = (m.lock(), m.rlock());
        let (sem, bsem) = (m.semaphore(2), m.bounded_semaphore(1));
        let seen: serde_json::Value = py_run("lock_ops", &(&lock, &rlock, &sem, &bsem)).unwrap();
        assert_eq!(
            seen,
            json(
                r#"[true, false, false, false, "RuntimeError", "ValueError", true,
                    "RuntimeError", true, true, false, 0, 2, "ValueError"]"#
            )
        );
        assert!(!lock.locked().unwrap(), "`with` released the lock");
        assert_eq!(sem.value().unwrap(), 2);

        let cond = m.condition();
        let seen: serde_json::Value = py_run("condition_ops", &(&cond,)).unwrap();
        assert_eq!(
            seen,
            json(r#"["RuntimeError", "RuntimeError", false, true, false]"#)
        );
    });
}

#[test]
fn python_events_and_barriers_wait_set_and_break_as_pythons() {
    py_testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        let ev = m.event();
        assert!(!py_run::<bool>("event_wait", &(&ev, 0.1)).unwrap());
        assert!(py_run::<bool>("event_set", &(&ev,)).unwrap());
        assert!(ev.is_set().unwrap(), "set by the Python task");
        assert!(py_run::<bool>("event_wait", &(&ev, Option::<f64>::None)).unwrap());

        // Two parties: a Python task and the host.
        let b = m.barrier(2);
        let p = Process::new(&py_testkit(), "barrier_wait", &(&b, Option::<f64>::None)).unwrap();
        p.start().unwrap();
        let host = b.wait().unwrap();
        p.join().unwrap();
        let python = p.result::<u32>().unwrap();
        assert_eq!(host + python, 1, "indexes 0 and 1");

        // Alone at a barrier of two, with a timeout: it breaks, as Python's does.
        let lonely = m.barrier(2);
        let got: serde_json::Value = py_run("barrier_wait", &(&lonely, 0.1)).unwrap();
        assert_eq!(got, json(r#""BrokenBarrierError""#));
        assert!(lonely.broken().unwrap());

        let one = m.barrier(1);
        let seen: serde_json::Value = py_run("barrier_ops", &(&one,)).unwrap();
        assert_eq!(
            seen,
            json(
                r#"[1, 0, false, 0, ["action"], "ZeroDivisionError", true, false,
                    "BrokenBarrierError"]"#
            )
        );
    });
}

#[test]
fn a_python_task_uses_a_manager_dict_through_the_mapping_protocol() {
    py_testkit();
    within(PY_LIMIT, || {
        let d = Manager::new().dict::<String, serde_json::Value>();
        let seen: serde_json::Value = py_run("dict_ops", &(&d,)).unwrap();
        assert_eq!(
            seen,
            json(
                r#"[1, "two", [3], "KeyError", true, false, 3, "dflt", ["a", 2, [1, 2]],
                    ["1", "[3]", "two"], 3, ["a", 2, [1, 2]], "KeyError", 1, "gone",
                    "KeyError", 5, 5, ["w", 3], 1, 42, true, false, true,
                    {"s": 5, "u": 1, "v": 2, "count": 43, "fresh": "new"}, 0, "KeyError"]"#
            )
        );
        assert_eq!(d.keys().unwrap(), ["final"]);
        assert_eq!(
            d.get(&"final".into()).unwrap(),
            Some(json(r#"{"nested": [1, 2]}"#))
        );
    });
}

#[test]
fn a_python_task_uses_a_manager_list_with_indexes_and_slices() {
    py_testkit();
    within(PY_LIMIT, || {
        let l = Manager::new().list::<serde_json::Value>();
        let seen: serde_json::Value = py_run("list_ops", &(&l,)).unwrap();
        assert_eq!(
            seen,
            json(
                r#"[5, 1, 5, [2, 3], [1, 3, 5], [4, 5], "IndexError", [10, 3, 4, 5], 5, 10,
                    "ValueError", 1, "ValueError", true, 1, ["first", 3, 4], "IndexError", 0]"#
            )
        );
        assert_eq!(l.items().unwrap(), [json(r#""end""#)]);
    });
}

#[test]
fn a_handle_inside_a_value_is_an_object_in_python_and_in_rust() {
    py_testkit();
    testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        // Python stores a queue in a dict and uses the copy it reads back.
        let q = m.queue::<String>();
        let d = m.dict::<String, wasmpool::Queue<String>>();
        let kind: String = py_run("pass_on", &(&q, &d)).unwrap();
        assert_eq!(kind, "Queue");
        assert_eq!(q.get().unwrap(), "via the dict");
        // The host reads the handle Python wrote, and uses it.
        let stored = d
            .get(&"q".into())
            .unwrap()
            .expect("the queue is in the dict");
        stored.put(&"from the host".into()).unwrap();
        assert_eq!(q.get().unwrap(), "from the host");

        // A handle a Rust guest encoded is an object to a Python task.
        let nums = m.queue::<u32>();
        let stash = m.dict::<String, wasmpool::Queue<u32>>();
        run::<()>("stash_queue", &(&stash, "k", &nums)).unwrap();
        let put: u32 = py_run("use_stashed", &(&stash, "k")).unwrap();
        assert_eq!(put, 7);
        assert_eq!(nums.get().unwrap(), 7);
    });
}

/// Dict keys and values compare by their MessagePack bytes: a Python task finds, byte for
/// byte, the entries a Rust guest task (and the Rust host) wrote.
#[test]
fn python_encodes_dict_entries_byte_for_byte_as_a_rust_guest() {
    py_testkit();
    testkit();
    within(PY_LIMIT, || {
        let m = Manager::new();
        let d = m.dict::<String, u64>();
        // 0..300: positive fixints, uint8 and uint16; prefixes short (fixstr) and long (str8).
        let long = "a prefix longer than thirty-one bytes, é-";
        for prefix in ["k", long] {
            let n: u64 = run("dict_fill", &(&d, prefix, 300u64)).unwrap();
            assert!(n >= 300);
            let missing: Vec<u64> = py_run("check_entries", &(&d, prefix, 300u64)).unwrap();
            assert!(missing.is_empty(), "not found byte for byte: {missing:?}");
        }

        // Values the Rust host encoded, of every kind a task exchanges.
        let d = m.dict::<String, serde_json::Value>();
        let expected = json(
            r#"{"neg": -33, "min": -9223372036854775808, "max": 18446744073709551615,
                "float": 1.5, "text": "ünïcode", "nil": null, "yes": true,
                "nested": {"b": [1, {"c": [-1, 2.25, "x"]}], "a": []}}"#,
        );
        for (k, v) in expected.as_object().unwrap() {
            d.set(k, v).unwrap();
        }
        let differ: Vec<String> = py_run("check_values", &(&d, &expected)).unwrap();
        assert!(differ.is_empty(), "encoded differently: {differ:?}");
    });
}

#[test]
fn inside_a_python_task_os_and_multiprocessing_answer_as_in_a_worker() {
    py_testkit();
    within(PY_LIMIT, || {
        let pool = Pool::new(&py_testkit(), 2).unwrap();
        let (pid, imported, ppid, name, cpus, os_cpus): (u32, u32, u32, String, usize, usize) =
            pool.apply("whoami", &()).unwrap();
        assert!(pool.pids().contains(&pid), "{pid} not in {:?}", pool.pids());
        assert_ne!(pid, std::process::id());
        assert_eq!(imported, pid, "`from os import getpid` at the top");
        assert_eq!(ppid, std::process::id(), "the parent is the host");
        assert!(name.starts_with("PoolWorker-"), "{name}");
        assert_eq!(cpus, wasmpool::cpu_count());
        assert_eq!(os_cpus, cpus);

        // A `Process` runs under its own name.
        let p = Process::new(&py_testkit(), "whoami", &())
            .unwrap()
            .with_name("reader");
        p.start().unwrap();
        p.join().unwrap();
        let (pid, _, ppid, name, _, _): (u32, u32, u32, String, usize, usize) = p.result().unwrap();
        assert_eq!(Some(pid), p.pid());
        assert_eq!(ppid, std::process::id());
        assert_eq!(name, "reader");
    });
}

#[test]
fn type_hints_are_checked_and_a_mismatch_is_worded_as_the_rust_sdk_words_it() {
    py_testkit();
    within(PY_LIMIT, || {
        let pool = Pool::new(&py_testkit(), 1).unwrap();
        let ok: serde_json::Value = pool
            .apply(
                "typed",
                &(
                    1,
                    2,
                    "s",
                    serde_bytes_like::Raw(vec![1]),
                    true,
                    [1, 2],
                    std::collections::BTreeMap::from([("a", 1)]),
                    Option::<i64>::None,
                    (3, "t"),
                ),
            )
            .unwrap();
        assert_eq!(
            ok,
            json(r#"[1, 2, "s", [1], true, [1, 2], {"a": 1}, null, [3, "t"], "tuple"]"#)
        );
        let err = pool
            .apply::<_, serde_json::Value>(
                "typed",
                &(
                    "1",
                    2,
                    "s",
                    serde_bytes_like::Raw(vec![1]),
                    true,
                    [1, 2],
                    std::collections::BTreeMap::from([("a", 1)]),
                    5,
                    (3, "t"),
                ),
            )
            .unwrap_err();
        let Error::BadArgs(message) = &err else {
            panic!("expected bad-args, got {err:?}");
        };
        assert_eq!(
            message,
            "task `typed`: argument 1 (`a: int`): expected int, got a string"
        );
        let err = pool
            .apply::<_, serde_json::Value>(
                "typed",
                &(
                    1,
                    2.5,
                    "s",
                    serde_bytes_like::Raw(vec![1]),
                    true,
                    (1, "x"),
                    std::collections::BTreeMap::from([("a", 1)]),
                    5,
                    (3, "t"),
                ),
            )
            .unwrap_err();
        assert!(
            err.to_string().contains(
                "argument 6 (`f: list[int]`): expected list[int], got an array (item 2: got a string)"
            ),
            "{err}"
        );
    });
}

#[test]
fn python_tasks_are_stopped_by_their_time_memory_and_output_limits() {
    py_testkit();
    within(Duration::from_secs(300), || {
        // What the flood prints is dropped (the limit counts it all the same).
        let limited = |limits: Limits| {
            Pool::builder(&py_testkit())
                .processes(1)
                .limits(limits)
                .output(Output::Discard)
                .build()
                .unwrap()
        };
        let pool = limited(Limits::default().timeout(Duration::from_millis(500)));
        let err = pool.apply::<_, u64>("spin", &()).unwrap_err();
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("time limit")),
            "{err:?}"
        );
        assert_eq!(
            pool.apply::<_, u64>("hog", &(1,)).unwrap(),
            1,
            "the worker carries on"
        );

        let pool = limited(Limits::default().memory_mib(256));
        let err = pool.apply::<_, u64>("hog", &(2000,)).unwrap_err();
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("memory limit of 256 MiB")),
            "{err:?}"
        );
        assert_eq!(
            pool.apply::<_, u64>("hog", &(1,)).unwrap(),
            1,
            "the worker carries on"
        );

        let pool = limited(Limits::default().output_bytes(64 << 10));
        let err = pool.apply::<_, u64>("flood", &(1_000_000,)).unwrap_err();
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("output limit")),
            "{err:?}"
        );
    });
}

#[test]
fn a_module_imported_only_inside_a_function_is_a_clear_error() {
    py_testkit();
    within(PY_LIMIT, || {
        let pool = Pool::new(&py_testkit(), 1).unwrap();
        let err = pool.apply::<_, String>("late_import", &()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("ModuleNotFoundError")
                && text.contains("import it at the top of the module"),
            "{text}"
        );
        // An exception deep in the task: its type, message and the traceback's frames.
        let err = pool.apply::<_, ()>("fails", &()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("KeyError: 'deep'"), "{text}");
        assert!(
            text.contains(", in fails") && text.contains(", in inner"),
            "{text}"
        );
    });
}

/// Inside a `map` chunk the Python SDK reports each finished item before its next object
/// operation (`batch-progress`), as the Rust SDK does: when a later item of the chunk hits
/// its time limit, no item that touched an object runs twice.
#[test]
fn a_python_batch_item_that_touched_an_object_is_never_run_twice() {
    py_testkit();
    within(PY_LIMIT, || {
        let pool = Pool::builder(&py_testkit())
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_secs(2)))
            .build()
            .unwrap();
        let runs = Manager::new().dict::<String, i64>();
        let (n, bad) = (6u64, 3u64);
        let items: Vec<wasmpool::Result<Vec<u8>>> = (0..n)
            .map(|x| wasmpool::encode_args(&(&runs, x, bad)))
            .collect();
        let results: Vec<wasmpool::Result<u64>> = pool
            .imap_encoded::<u64>("counted", items.into_iter(), n as usize, true)
            .unwrap()
            .collect();
        for (x, r) in results.iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, x as u64),
                Err(e) => {
                    assert_eq!(x as u64, bad, "item {x} failed: {e}");
                    assert!(e.to_string().contains("time limit"), "{e}");
                }
            }
        }
        assert!(results[bad as usize].is_err(), "the spinning item failed");
        for x in 0..n {
            assert_eq!(
                runs.get(&format!("run:{x}")).unwrap(),
                Some(1),
                "item {x} ran once (runs: {:?})",
                runs.items().unwrap()
            );
        }
    });
}

/// A batch whose items are one number each is decoded, mapped and encoded as a whole (the
/// SDK's whole-batch path): what comes back is exactly what the same items give one call
/// at a time, failures included.
#[test]
fn a_python_map_in_large_chunks_answers_as_item_by_item() {
    let pool = Pool::new(&py_testkit(), 2).unwrap();
    within(PY_LIMIT, move || {
        let run = |chunksize: usize| -> Vec<String> {
            let items = (-2000i64..70_000).map(|x| wasmpool::encode_args(&(x,)));
            pool.imap_encoded::<serde_json::Value>("cube_or_fail", items, chunksize, true)
                .unwrap()
                .map(|r| match r {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                })
                .collect()
        };
        let whole = run(9000);
        let single = run(1);
        assert_eq!(whole.len(), 72_000);
        assert!(whole == single, "the whole-batch path answered differently");
        let at = |x: i64| &whole[(x + 2000) as usize];
        assert_eq!(at(-2000), "-500.0");
        assert_eq!(at(0), "0");
        assert_eq!(*at(69_999), 69_999i64.pow(3).to_string());
        assert!(at(5).contains("ValueError: no 5"), "{}", at(5));
        assert!(at(5).contains("in cube_or_fail"), "{}", at(5));
    });
}

/// A chunk whose results are all of one kind that packs (ints, floats, bools, None) comes
/// back from the guest as one native array, which the worker encodes; one whose items are
/// one number each goes in as one. Every kind, and what does not pack (ints past 64 bits,
/// strings, a mix), answers exactly as the same items one call at a time, failures
/// included.
#[test]
fn a_python_map_of_packed_results_answers_as_item_by_item() {
    let pool = Pool::new(&py_testkit(), 2).unwrap();
    within(PY_LIMIT, move || {
        let run = |items: &[Vec<u8>], chunksize: usize| -> Vec<String> {
            let items = items.iter().map(|i| Ok(i.clone()));
            pool.imap_encoded::<serde_json::Value>("of_one_kind", items, chunksize, true)
                .unwrap()
                .map(|r| match r {
                    Ok(v) => v.to_string(),
                    Err(e) => format!("error: {e}"),
                })
                .collect()
        };
        let ints: Vec<Vec<u8>> = (0..1800i64)
            .map(|x| wasmpool::encode_args(&(x,)).unwrap())
            .collect();
        let floats: Vec<Vec<u8>> = (0..400)
            .map(|x| wasmpool::encode_args(&(f64::from(x) / 4.0,)).unwrap())
            .collect();
        for items in [&ints, &floats] {
            let whole = run(items, 100);
            let single = run(items, 1);
            assert_eq!(whole.len(), items.len());
            assert!(whole == single, "the packed path answered differently");
        }
        let whole = run(&ints, 100);
        assert_eq!(whole[99], (99 * 99).to_string());
        assert_eq!(whole[98], (-98 * 98).to_string());
        assert_eq!(whole[104], "13.0");
        assert_eq!(whole[201], "true");
        assert_eq!(whole[301], "null");
        assert_eq!(whole[401], ((1u64 << 63) + 401).to_string());
        assert_eq!(whole[501], "-501");
        assert!(
            whole[607].contains("does not fit in 64 bits"),
            "{}",
            whole[607]
        );
        assert_eq!(whole[701], "\"701\"");
        assert!(whole[5].contains("ValueError: no 5"), "{}", whole[5]);
        assert!(whole[102].contains("ValueError: no 102"), "{}", whole[102]);
        assert_eq!(run(&floats, 100)[3], "1.125");
    });
}

/// In a batch where only some items touch a shared object, every item's result is its own
/// (an item that reported the ones before it while it ran is not given their bytes).
#[test]
fn a_python_batch_mixing_pure_items_and_side_effects_keeps_each_result() {
    let pool = Pool::new(&py_testkit(), 1).unwrap();
    within(PY_LIMIT, move || {
        let runs = Manager::new().dict::<String, i64>();
        let items: Vec<wasmpool::Result<Vec<u8>>> = (0..200u64)
            .map(|x| wasmpool::encode_args(&(&runs, x, 10u64)))
            .collect();
        let results: Vec<u64> = pool
            .imap_encoded::<u64>("counted_some", items.into_iter(), 200, true)
            .unwrap()
            .collect::<wasmpool::Result<_>>()
            .unwrap();
        assert_eq!(results, (0..200).map(|x| 3 * x).collect::<Vec<u64>>());
        for x in (0..200).step_by(10) {
            assert_eq!(runs.get(&format!("run:{x}")).unwrap(), Some(1), "item {x}");
        }
    });
}

/// A seed task in a `Process` whose output is captured.
fn seed_process(task: &str, args: &impl Serialize) -> Process {
    let p = Process::new(&py_seeds(), task, args)
        .unwrap()
        .with_output(Output::Capture);
    p.start().unwrap();
    p
}

fn captured_stdout(p: &Process) -> String {
    String::from_utf8(p.captured_output().stdout).unwrap()
}

/// Seed 004's queue and pipe functions, verbatim, with the host's `main()` in Rust: what
/// they print is what the Python originals print.
#[test]
fn the_seeds_queue_and_pipe_functions_run_verbatim() {
    py_seeds();
    within(PY_LIMIT, || {
        let m = Manager::new();
        // Producer and consumer over a queue; the host sends the end signal, as `main` does.
        let q = m.queue::<Option<String>>();
        let consumer = seed_process("consumer", &(&q,));
        let producer = seed_process("producer", &(&q,));
        producer.join().unwrap();
        q.put(&None).unwrap();
        consumer.join().unwrap();
        assert_eq!(consumer.exitcode(), Some(0));
        assert_eq!(
            captured_stdout(&consumer),
            "work：0\nwork：1\nwork：2\nwork：3\nwork：4\n"
        );

        // A result per process on the queue: `{data: res}`.
        let results = m.queue::<std::collections::BTreeMap<u64, u64>>();
        let p = seed_process("queue_process_task", &(7u64, &results));
        p.join().unwrap();
        assert_eq!(
            results.get().unwrap(),
            std::collections::BTreeMap::from([(7, 343)])
        );
        let out = captured_stdout(&p);
        let pid = p.pid().unwrap();
        assert_eq!(
            out,
            format!(
                "测试多进程任务：7, 当前进程号：{pid}, 父进程号为: {}\n多进程任务结束：7, 当前进程号为: {pid}\n",
                std::process::id()
            )
        );

        // Both ends of a pipe as a tuple: the child greets, the host answers.
        let (conn1, conn2) = m.pipe::<String>(true);
        let p = seed_process("pipe_process_task", &(100u64, (&conn1, &conn2)));
        assert_eq!(conn2.recv().unwrap(), "你好主进程, the data is 100");
        conn2.send(&"你好子进程".to_string()).unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        assert_eq!(captured_stdout(&p), "你好子进程\n");

        // Producer and consumer over a pipe: the consumer reads until the pipe's end.
        let (conn1, conn2) = m.pipe::<String>(true);
        let consumer = seed_process("pipe_consumer", &("process pipe", (&conn1, &conn2)));
        let producer = seed_process("pipe_producer", &((&conn1, &conn2),));
        producer.join().unwrap();
        conn1.close().unwrap();
        conn2.close().unwrap();
        consumer.join().unwrap();
        let expected: String = (0..5)
            .map(|i| format!("process pipe work is doing：{i}\n"))
            .chain(["===============\n".to_string()])
            .collect();
        assert_eq!(captured_stdout(&consumer), expected);
    });
}

/// Seed 004's Manager-dict and lock functions, verbatim.
#[test]
fn the_seeds_manager_dict_and_lock_functions_run_verbatim() {
    py_seeds();
    within(PY_LIMIT, || {
        let m = Manager::new();
        // The dict writer: one process after another (the seed's `count -= 1` is a read
        // and a write, unguarded, as in Python).
        let share = m.dict::<serde_json::Value, u64>();
        share.set(&json(r#""count""#), &10).unwrap();
        let q = m.queue::<()>();
        for data in [1u64, 2, 3] {
            let p = seed_process("manager_process_task", &(data, &q, &share));
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
        }
        assert_eq!(
            share.items().unwrap(),
            [
                (json(r#""count""#), 7),
                (json("1"), 1),
                (json("2"), 8),
                (json("3"), 27)
            ]
        );

        // The lock-protected counter: two processes, each adding its data five times under
        // the lock, so each one's five lines come together.
        let share = m.dict::<serde_json::Value, u64>();
        share.set(&json(r#""count""#), &500).unwrap();
        let lc = m.lock();
        let ps: Vec<Process> = [100u64, 200]
            .iter()
            .map(|data| seed_process("lock_process_task", &(data, &share, &lc)))
            .collect();
        let mut counts = Vec::new();
        for p in &ps {
            p.join().unwrap();
            assert_eq!(p.exitcode(), Some(0));
            let out = captured_stdout(p);
            let got: Vec<u64> = out
                .lines()
                .map(|l| {
                    l.strip_prefix("share_data count is ")
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or_else(|| panic!("{l:?}"))
                })
                .collect();
            counts.push(got);
        }
        assert_eq!(share.get(&json(r#""count""#)).unwrap(), Some(2000));
        // Each process's five additions were not interleaved with the other's.
        for (got, data) in counts.iter().zip([100u64, 200]) {
            assert_eq!(got.len(), 5);
            assert!(got.windows(2).all(|w| w[1] == w[0] + data), "{got:?}");
        }
    });
}

/// Every componentize-py component carries the same CPython: a second Python project, new
/// to the compile cache, takes nearly all its functions from the function cache the first
/// one filled (counted by the runtime, not timed: the benchmark times it).
#[test]
fn a_second_python_project_reuses_the_first_ones_compiled_functions() {
    setup();
    // Both built (componentize-py) once, shared with the other tests; compiled here into a
    // compile cache of this test's own, so neither is compiled yet.
    let cache = TempDir::new("fncache");
    within(2 * FIRST_BUILD, move || {
        let runtime = wasmpool::Runtime::builder()
            .cache_dir(cache.0.join("cache"))
            .build()
            .unwrap();
        runtime
            .load(root().join("examples/py-hello/hello.py"))
            .unwrap();
        let first = runtime.compile_stats();
        assert!(
            first.functions_compiled > 1000,
            "the interpreter's functions are compiled the first time: {first:?}"
        );
        runtime
            .load(root().join("examples/py-testkit/testkit.py"))
            .unwrap();
        let second = runtime.compile_stats();
        let reused = second.functions_reused - first.functions_reused;
        let compiled = second.functions_compiled - first.functions_compiled;
        // About 95% here: the first project's compile reuses about 40% on its own (a
        // component repeats functions), so a cache kept only within a compile fails this.
        assert!(
            reused * 10 >= (reused + compiled) * 9,
            "the second project reuses at least 90% of its functions: {reused} reused, \
             {compiled} compiled"
        );
        // A new runtime over the same cache (as the next process would be) reads the
        // functions from disk: a third project reuses them as well.
        let again = wasmpool::Runtime::builder()
            .cache_dir(cache.0.join("cache"))
            .build()
            .unwrap();
        again.load(root().join("examples/py-seeds")).unwrap();
        let third = again.compile_stats();
        assert!(
            third.functions_reused * 10 >= (third.functions_reused + third.functions_compiled) * 9,
            "{third:?}"
        );
    });
}

/// A timed worker whose `@init` runs for more than a second says it is alive meanwhile (its
/// watchdog does, as during any call); the host waits on for its answer instead of taking
/// that for one and killing the worker.
#[test]
fn a_timed_worker_whose_init_runs_for_a_while_still_becomes_ready() {
    let dir = TempDir::new("py-slow-init");
    let file = dir.file(
        "slow_init.py",
        b"import time\n\
          import wasmpool_guest\n\
          \n\
          @wasmpool_guest.init\n\
          def warm_up():\n    time.sleep(1.5)\n\
          \n\
          @wasmpool_guest.task\n\
          def square(x: int) -> int:\n    return x * x\n",
    );
    setup();
    let module = within(FIRST_BUILD, move || Module::load(&file).unwrap());
    let squares: Vec<u64> = within(PY_LIMIT, move || {
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_secs(10)))
            .build()
            .unwrap();
        pool.map("square", 0..5u64).unwrap()
    });
    assert_eq!(squares, [0, 1, 4, 9, 16]);
}
