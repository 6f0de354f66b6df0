//! The `wasmpool` CLI: `run`, `tasks`, `compile`, and one clear line for every bad input.

use crate::util::*;

#[test]
fn run_prints_the_result_as_json() {
    testkit();
    let out = run_cli(&["run", "examples/testkit", "add", "40", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "42");

    let out = run_cli(&[
        "run",
        "examples/testkit",
        "scale",
        r#"{"x": 1, "y": 2}"#,
        "1.5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v, serde_json::json!({"x": 1.5, "y": 3.0}));
}

#[test]
fn run_streams_the_tasks_output_before_the_result() {
    testkit();
    let out = run_cli(&["run", "examples/testkit", "greet", r#""eve""#]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello, eve\n\"hello, eve\"\n");
    assert_eq!(stderr(&out), "to stderr, eve\n");

    let out = run_cli(&[
        "run",
        "--tag-output",
        "--name",
        "w1",
        "examples/testkit",
        "greet",
        r#""eve""#,
    ]);
    let text = stdout(&out);
    assert!(
        text.starts_with("[w1 ") && text.contains(" greet] hello, eve\n"),
        "{text}"
    );
}

#[test]
fn run_accepts_a_wasm_file() {
    testkit();
    let wasm = wasm_of("testkit");
    let out = run_cli(&["run", wasm.to_str().unwrap(), "square", "12"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "144");
}

#[test]
fn tasks_lists_the_modules_tasks() {
    testkit();
    let out = run_cli(&["tasks", "examples/testkit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tasks: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert!(
        tasks.contains(&"square".to_string()) && tasks.contains(&"greet".to_string()),
        "{tasks:?}"
    );

    let out = run_cli(&["tasks", "--json", "examples/testkit"]);
    let json: Vec<String> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json, tasks);
}

#[test]
fn compile_writes_the_precompiled_artifact() {
    testkit();
    let dir = TempDir::new("compile");
    let out_file = dir.0.join("testkit.cwasm");
    let out = run_cli(&[
        "compile",
        "examples/testkit",
        "-o",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&out_file).unwrap();
    assert_eq!(bytes, std::fs::read(testkit().artifact()).unwrap());
    assert!(
        bytes.starts_with(b"\x7fELF"),
        "a wasmtime artifact is an ELF image"
    );
}

#[test]
fn a_task_failure_exits_one_with_the_message() {
    testkit();
    let out = run_cli(&["run", "examples/testkit", "fail", r#""no way""#]);
    assert_cli_error(&out, 1, "task `fail` failed: no way");
    let out = run_cli(&["run", "examples/testkit", "boom", r#""pop""#]);
    assert_cli_error(&out, 1, "panicked at");
    let out = run_cli(&["run", "examples/testkit", "trap"]);
    assert_cli_error(&out, 1, "unreachable");
}

#[test]
fn bad_inputs_are_one_clear_line_and_a_nonzero_exit() {
    testkit();
    let dir = TempDir::new("bad");
    let empty = dir.file("empty.wasm", b"");
    let text = dir.file("notes.wasm", b"hello, this is not wasm");
    let core = dir.file("core.wasm", b"\0asm\x01\0\0\0");
    let truncated = dir.file(
        "truncated.wasm",
        &std::fs::read(wasm_of("testkit")).unwrap()[..1000],
    );
    // A valid component that exports nothing: not the wasmpool world.
    let other = dir.file("other.wasm", b"\0asm\x0d\0\x01\0");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run", "/no/such/module.wasm", "square", "1"],
            "cannot read",
        ),
        (
            vec!["run", empty.to_str().unwrap(), "square", "1"],
            "is empty",
        ),
        (
            vec!["run", text.to_str().unwrap(), "square", "1"],
            "is not WebAssembly",
        ),
        (
            vec!["run", core.to_str().unwrap(), "square", "1"],
            "core WebAssembly module, not a component",
        ),
        (
            vec!["run", truncated.to_str().unwrap(), "square", "1"],
            "not a valid component",
        ),
        (
            vec!["run", other.to_str().unwrap(), "square", "1"],
            "does not implement the wasmpool:task world",
        ),
        (
            vec!["run", "examples/testkit", "sqaure", "1"],
            "unknown task `sqaure`; the module's tasks are: noop, square",
        ),
        (
            vec!["run", "examples/testkit", "square", "seven"],
            "argument 1 (`seven`) is not valid JSON",
        ),
        (
            vec!["run", "examples/testkit", "square", r#""seven""#],
            "argument 1 (`x: u64`): expected u64, got a string",
        ),
        (
            vec!["run", "examples/testkit", "square", "1", "2"],
            "takes 1 argument (x: u64), got 2",
        ),
        (vec!["run", "examples/testkit"], "required"),
        (vec!["tasks", dir.0.to_str().unwrap()], "no Cargo.toml"),
    ];
    for (args, needle) in cases {
        let out = run_cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = stderr(&out);
        assert!(
            err.contains(needle),
            "{args:?}: stderr {err:?} should mention {needle:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
        if args.len() > 2 {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{args:?}: one line, got {err:?}"
            );
        }
    }
}
