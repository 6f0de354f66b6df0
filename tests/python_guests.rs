//! Tasks written in Python (`guest-sdk/python`): a `.py` file or a Python project directory
//! is built with componentize-py (installed on first use into wasmpool's own virtualenv)
//! and runs as any other module, through the library and the CLI.

use std::sync::OnceLock;
use std::time::Duration;

use serde::Serialize;
use wasmpool::{Error, Module, Pool, Process};

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
fn py_hello() -> Module {
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

/// A byte string result (MessagePack bin), as raw bytes.
mod serde_bytes_like {
    use serde::de::{Deserialize, Deserializer, Visitor};

    pub struct Bytes(pub Vec<u8>);

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
