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

#[test]
fn map_writes_json_lines_in_input_order() {
    testkit();
    let out = run_cli(&[
        "map",
        "examples/testkit",
        "square",
        "--range",
        "0..50",
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
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &serde_json::json!({"input": i, "result": i * i}));
    }
    assert_eq!(
        stderr(&out),
        "",
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn map_reads_json_lines_from_a_file_or_stdin_and_writes_a_file() {
    testkit();
    let dir = TempDir::new("map");
    let input = dir.file("in.jsonl", b"[1, 2]\n\n[30, 40]\n");
    let output = dir.0.join("out.jsonl");
    let out = run_cli(&[
        "map",
        "examples/testkit",
        "add",
        "--star",
        "--input",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&output).unwrap(),
        "{\"input\":[1,2],\"result\":3}\n{\"input\":[30,40],\"result\":70}\n"
    );

    let mut child = cli()
        .args([
            "map",
            "examples/testkit",
            "greet",
            "--input",
            "-",
            "--unordered",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"\"a\"\n\"b\"\n\"c\"\n")
        .unwrap();
    let out = within(std::time::Duration::from_secs(60), move || {
        child.wait_with_output().unwrap()
    });
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("hello, a\n"),
        "the tasks' output goes to stderr"
    );
    let mut results: Vec<String> = stdout(&out).lines().map(String::from).collect();
    results.sort();
    assert_eq!(
        results,
        [
            r#"{"input":"a","result":"hello, a"}"#,
            r#"{"input":"b","result":"hello, b"}"#,
            r#"{"input":"c","result":"hello, c"}"#
        ]
    );
}

#[test]
fn map_reports_failed_items_and_exits_one() {
    testkit();
    let out = run_cli(&[
        "map",
        "examples/testkit",
        "square_or_panic",
        "--range",
        "10..16",
        "--chunksize",
        "4",
    ]);
    assert_cli_error(&out, 1, "1 of 6 items failed");
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "every item has a line");
    assert!(lines[3]["error"].as_str().unwrap().contains("unlucky 13"));
    assert_eq!(lines[4]["result"], 196);
}

#[test]
fn map_rejects_bad_options_clearly() {
    testkit();
    for (args, needle) in [
        (
            vec!["map", "examples/testkit", "square"],
            "--range A..B or --input",
        ),
        (
            vec!["map", "examples/testkit", "square", "--range", "5"],
            "--range must look like A..B",
        ),
        (
            vec!["map", "examples/testkit", "square", "--range", "9..1"],
            "the end must not be below the start",
        ),
        (
            vec!["map", "examples/testkit", "nope", "--range", "0..3"],
            "unknown task `nope`",
        ),
        (
            vec![
                "map",
                "examples/testkit",
                "square",
                "--input",
                "/no/such/file",
            ],
            "cannot open --input",
        ),
    ] {
        let out = run_cli(&args);
        assert_cli_error(&out, 2, needle);
    }
}

#[test]
fn map_stops_cleanly_on_ctrl_c_workers_included() {
    testkit();
    let child = cli()
        .args([
            "map",
            "examples/testkit",
            "sleep_ms",
            "--range",
            "20000..20010",
            "-j",
            "2",
            "--chunksize",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Two workers and the fork server they were forked from.
    assert!(
        eventually(std::time::Duration::from_secs(30), || descendants_of(pid)
            .len()
            >= 3),
        "workers start"
    );
    let workers = descendants_of(pid);
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let out = within(std::time::Duration::from_secs(30), move || {
        child.wait_with_output().unwrap()
    });
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"));
    // The workers go when their parent does (a death signal, their socket's end), which
    // the kernel delivers a moment after the parent is reaped.
    assert!(
        eventually(std::time::Duration::from_secs(10), || workers
            .iter()
            .all(|&w| !pid_alive(w))),
        "no worker left behind"
    );
}

#[test]
fn objects_made_by_name_on_the_command_line_are_shared_by_the_tasks() {
    let dir = TempDir::new("cli-objects");
    let input = dir.0.join("in.jsonl");
    std::fs::write(
        &input,
        "[\"@counts\", 100]\n[\"@counts\", 250]\n[\"@counts\", 7]\n",
    )
    .unwrap();
    let out = run_cli(&[
        "map",
        "--object",
        "counts=dict",
        "-j",
        "2",
        "--star",
        "--input",
        input.to_str().unwrap(),
        "examples/testkit",
        "atomic_increments",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every task incremented the one dict; its final contents are reported on stderr.
    let report: serde_json::Value = stderr(&out)
        .lines()
        .find(|l| l.contains("\"object\""))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    assert_eq!(report["object"], "counts");
    assert_eq!(report["contents"], serde_json::json!([["count", 357]]));

    let out = run_cli(&[
        "run",
        "--object",
        "q=queue",
        "examples/testkit",
        "queue_produce",
        "\"@q\"",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"{"contents":[0,1,2,null],"kind":"queue","object":"q"}"#),
        "{}",
        stderr(&out)
    );

    let out = run_cli(&["run", "--object", "q=nope", "examples/testkit", "noop"]);
    assert_cli_error(&out, 2, "--object `q=nope`");
}

/// The report line of object `name` in the CLI's stderr, parsed.
fn object_report(out: &std::process::Output, name: &str) -> serde_json::Value {
    stderr(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["object"] == name)
        .unwrap_or_else(|| panic!("no report of `{name}` in {}", stderr(out)))
}

#[test]
fn the_object_report_keeps_maps_whose_keys_are_not_strings() {
    seeds();
    // The seed's task puts `{data: data ** 3}`: a map with an integer key. Every item is
    // reported, its keys as JSON text, as Python's json.dumps writes them.
    let dir = TempDir::new("cli-int-keys");
    let input = dir.0.join("in.jsonl");
    std::fs::write(&input, "[2, \"@q\"]\n[3, \"@q\"]\n").unwrap();
    let out = run_cli(&[
        "map",
        "--object",
        "q=queue",
        "-j",
        "1",
        "--star",
        "--input",
        input.to_str().unwrap(),
        "examples/seeds",
        "queue_task",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = object_report(&out, "q");
    assert_eq!(
        report["contents"],
        serde_json::json!([{"2": 8}, {"3": 27}]),
        "{report}"
    );
    assert!(report.get("error").is_none(), "{report}");
}

#[test]
fn a_pipe_made_on_the_command_line_reaches_the_seed_pipe_tasks() {
    seeds();
    // `"@p"` is the pair, as Python's Pipe() returns it; `--send p.1=…` is what the parent
    // sends at its end before the task starts, and the report shows what waits at each.
    let out = run_cli(&[
        "run",
        "--object",
        "p=pipe",
        "--send",
        "p.1=\"hello from the parent\"",
        "examples/seeds",
        "pipe_task",
        "5",
        "\"@p\"",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hello from the parent"),
        "{}",
        stdout(&out)
    );
    let report = object_report(&out, "p");
    assert_eq!(report["kind"], "pipe");
    assert_eq!(
        report["contents"],
        serde_json::json!({"0": [], "1": ["你好主进程, the data is 5"]}),
        "{report}"
    );

    // One end alone: `"@p.1"`, whose peer end 0 the CLI holds.
    let out = run_cli(&[
        "run",
        "--object",
        "p=pipe",
        "--send",
        "p.0=7",
        "--send",
        "p.0=8",
        "examples/testkit",
        "pipe_pong",
        "\"@p.1\"",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        object_report(&out, "p")["contents"],
        serde_json::json!({"0": [7, 8], "1": []})
    );
}

#[test]
fn a_send_to_anything_but_a_pipe_end_is_refused_by_name() {
    testkit();
    let out = run_cli(&[
        "run",
        "--object",
        "q=queue",
        "--send",
        "q.0=1",
        "examples/testkit",
        "noop",
    ]);
    assert_cli_error(&out, 2, "--send `q.0=1`");
    let out = run_cli(&[
        "run",
        "--object",
        "p=pipe",
        "--send",
        "p.2=1",
        "examples/testkit",
        "noop",
    ]);
    assert_cli_error(&out, 2, "NAME.0 or NAME.1");
    let out = run_cli(&[
        "run",
        "--object",
        "p=pipe",
        "--send",
        "p.0=not json",
        "examples/testkit",
        "noop",
    ]);
    assert_cli_error(&out, 2, "is not JSON");
}

#[test]
fn close_lets_a_task_reading_a_pipe_see_end_of_file() {
    testkit();
    // Without --close the CLI would hold end 0 open and the task would wait forever.
    let out = run_cli(&[
        "run",
        "--object",
        "p=pipe",
        "--send",
        "p.0=\"a\"",
        "--send",
        "p.0=\"b\"",
        "--close",
        "p.0",
        "examples/testkit",
        "recv_all",
        "\"@p.1\"",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), r#"["a","b"]"#);
    let report = object_report(&out, "p");
    assert!(report.get("error").is_none(), "{report}");
    let out = run_cli(&[
        "run",
        "--object",
        "q=queue",
        "--close",
        "q.0",
        "examples/testkit",
        "noop",
    ]);
    assert_cli_error(&out, 2, "--close `q.0`");
}
