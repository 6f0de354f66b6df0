//! Hardening: what a task returns or writes costs the host memory and time in proportion to
//! its size (no quadratic work, no 40x amplification, no unbounded line buffer), and a
//! result the host cannot represent is a clear error naming the task, never a substitution.

use std::io::Read;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::util::*;

/// What a measured CLI run left: its status, stdout as a callback saw it, stderr, and the
/// CLI process's own peak resident memory (VmHWM), in bytes.
struct Measured {
    status: ExitStatus,
    stderr: String,
    peak_rss: u64,
}

fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the CLI with `args` under an outer timeout, handing its stdout to `sink` in pieces
/// as it arrives (nothing kept unless `sink` keeps it), and polls its peak RSS while it runs.
fn run_measured(
    args: &[&str],
    mut sink: impl FnMut(&[u8]) + Send + 'static,
    limit: Duration,
) -> Measured {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    within(limit, move || {
        let mut child = cli()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run the wasmpool binary");
        let pid = child.id();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink(&buf[..n]),
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut peak = 0;
        let status = loop {
            // VmHWM is the peak so far: the last reading before the exit is the run's.
            if let Some(hwm) = vm_hwm(pid) {
                peak = peak.max(hwm);
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        reader.join().unwrap();
        Measured {
            status,
            stderr: err_reader.join().unwrap(),
            peak_rss: peak,
        }
    })
}

#[test]
fn a_result_string_that_is_not_utf8_fails_its_task_by_name_with_exit_1() {
    testkit();
    let wasm = wasm_of("testkit");
    let out = run_cli(&["run", wasm.to_str().unwrap(), "not_utf8"]);
    // Before: `[""]` and success. Then: exit 2 ("bad input") naming an empty task.
    assert_cli_error(&out, 1, "task `not_utf8`");
    assert!(stderr(&out).contains("not valid UTF-8"), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "",
        "nothing printed for a result that does not decode"
    );

    let dir = TempDir::new("not-utf8");
    let input = dir.file("in.jsonl", b"[]\n[]\n");
    let out = run_cli(&[
        "map",
        "--star",
        "--input",
        input.to_str().unwrap(),
        wasm.to_str().unwrap(),
        "not_utf8",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "each item is reported: {}", stdout(&out));
    for line in &lines {
        let error = line["error"].as_str().expect("an error, not a result");
        assert!(
            error.contains("task `not_utf8`") && error.contains("not valid UTF-8"),
            "{error}"
        );
    }
    assert!(
        stderr(&out).contains("2 of 2 items failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tagged_line_of_many_mib_without_a_newline_arrives_whole_in_bounded_pieces() {
    testkit();
    let wasm = wasm_of("testkit");
    const BYTES: usize = 40 << 20;
    let arg = BYTES.to_string();
    // Counted as it streams: the `x`s, the lines, the longest line, the lines tagged as a
    // first piece and as a piece continuing the one before.
    #[derive(Default)]
    struct Count {
        xs: usize,
        lines: usize,
        longest: usize,
        current: usize,
        first: usize,
        continued: usize,
        head: Vec<u8>,
    }
    let count = std::sync::Arc::new(std::sync::Mutex::new(Count::default()));
    let c = count.clone();
    let sink = move |data: &[u8]| {
        let mut c = c.lock().unwrap();
        for &b in data {
            if b == b'\n' {
                c.lines += 1;
                c.longest = c.longest.max(c.current);
                let head = String::from_utf8_lossy(&c.head).into_owned();
                if head.starts_with("[Process-1 ") && head.contains(" long_line +] x") {
                    c.continued += 1;
                } else if head.starts_with("[Process-1 ") && head.contains(" long_line] x") {
                    c.first += 1;
                }
                c.head.clear();
                c.current = 0;
            } else {
                c.xs += usize::from(b == b'x');
                c.current += 1;
                if c.head.len() < 64 {
                    c.head.push(b);
                }
            }
        }
    };
    let run = run_measured(
        &[
            "run",
            "--tag-output",
            "--max-output",
            "64",
            wasm.to_str().unwrap(),
            "long_line",
            &arg,
        ],
        sink,
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let c = count.lock().unwrap();
    assert_eq!(c.xs, BYTES, "every byte of the line arrives");
    let pieces = BYTES.div_ceil(wasmpool::TAGGED_PIECE_BYTES);
    // The pieces, then the result (`41943040`) on a line of its own.
    assert_eq!(c.lines, pieces + 1);
    assert!(
        c.longest <= wasmpool::TAGGED_PIECE_BYTES + 64,
        "no line is longer than a piece and its tag: {}",
        c.longest
    );
    assert_eq!(c.first, 1, "one first piece");
    assert_eq!(
        c.continued,
        pieces - 1,
        "every piece but the first is marked"
    );
    eprintln!(
        "tagged 40 MiB line: CLI peak RSS {} MiB",
        run.peak_rss >> 20
    );
}

/// The JSON text of `many_values(count)`: `[{"n":0},{"n":1},…]`.
fn many_values_json(count: u64) -> Vec<u8> {
    let mut text = Vec::with_capacity(count as usize * 9 + 2);
    text.push(b'[');
    for i in 0..count {
        if i > 0 {
            text.push(b',');
        }
        text.extend_from_slice(format!("{{\"n\":{}}}", i % 100).as_bytes());
    }
    text.push(b']');
    text
}

/// Bytes seen so far, and whether all of them were as expected.
type Seen = std::sync::Arc<std::sync::Mutex<(usize, bool)>>;

/// A sink that checks stdout against `expected` as it streams; the bytes it matched.
fn comparing(expected: Vec<u8>) -> (impl FnMut(&[u8]) + Send + 'static, Seen) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new((0usize, true)));
    let s = seen.clone();
    let sink = move |data: &[u8]| {
        let mut s = s.lock().unwrap();
        let at = s.0;
        let same = expected.get(at..at + data.len()) == Some(data);
        s.1 &= same;
        s.0 += data.len();
    };
    (sink, seen)
}

#[test]
fn a_result_of_millions_of_values_is_written_without_amplifying_it_in_the_host() {
    testkit();
    let wasm = wasm_of("testkit");
    // 8 million one-entry maps: 4 bytes of MessagePack each, 32 MB in all. Decoded into
    // value trees, as before, the CLI took about 40 times that.
    const COUNT: u64 = 8_000_000;
    let msgpack = 5 + 4 * COUNT;
    let count = COUNT.to_string();
    let bound = 8 * msgpack;

    let mut expected = many_values_json(COUNT);
    expected.push(b'\n');
    let total = expected.len();
    let (sink, seen) = comparing(expected);
    let run = run_measured(
        &["run", wasm.to_str().unwrap(), "many_values", &count],
        sink,
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        *seen.lock().unwrap(),
        (total, true),
        "the JSON, every value of it"
    );
    eprintln!(
        "run, a {msgpack}-byte result: CLI peak RSS {} MiB (bound {} MiB)",
        run.peak_rss >> 20,
        bound >> 20
    );
    assert!(run.peak_rss > 0, "the peak was read");
    assert!(
        run.peak_rss <= bound,
        "the CLI's peak RSS {} exceeds 8x the result's {msgpack} bytes",
        run.peak_rss
    );

    let dir = TempDir::new("many-values");
    let input = dir.file("in.jsonl", format!("{COUNT}\n").as_bytes());
    let mut expected = format!("{{\"input\":{COUNT},\"result\":").into_bytes();
    expected.extend(many_values_json(COUNT));
    expected.extend_from_slice(b"}\n");
    let total = expected.len();
    let (sink, seen) = comparing(expected);
    let run = run_measured(
        &[
            "map",
            "-j",
            "1",
            "--input",
            input.to_str().unwrap(),
            wasm.to_str().unwrap(),
            "many_values",
        ],
        sink,
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert_eq!(
        *seen.lock().unwrap(),
        (total, true),
        "the JSON line, every value of it"
    );
    eprintln!(
        "map, a {msgpack}-byte result: CLI peak RSS {} MiB (bound {} MiB)",
        run.peak_rss >> 20,
        bound >> 20
    );
    assert!(
        run.peak_rss <= bound,
        "the CLI's peak RSS {} exceeds 8x the result's {msgpack} bytes",
        run.peak_rss
    );
}

/// Runs `task` on a fresh object `o` of `kind`, which it floods until refused; answers the
/// items it holds, the refusal, the object's report line and the CLI's peak RSS.
fn flood(kind: &str, task: &str, batch: &str) -> (u64, String, serde_json::Value, u64) {
    let wasm = wasm_of("testkit");
    let object = format!("o={kind}");
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = stdout.clone();
    let run = run_measured(
        &[
            "run",
            "--object",
            &object,
            wasm.to_str().unwrap(),
            task,
            r#""@o""#,
            batch,
        ],
        move |data| s.lock().unwrap().extend_from_slice(data),
        Duration::from_secs(120),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let (held, refusal): (u64, String) = serde_json::from_slice(&stdout.lock().unwrap()).unwrap();
    let report = run
        .stderr
        .lines()
        .find(|l| l.contains(r#""object":"o""#))
        .unwrap_or_else(|| panic!("no report line: {}", run.stderr));
    assert!(
        report.len() <= objects_report_bound(),
        "the report line is {} bytes",
        report.len()
    );
    (
        held,
        refusal,
        serde_json::from_str(report).unwrap(),
        run.peak_rss,
    )
}

/// The longest a report line may be: its contents' budget and a little framing.
fn objects_report_bound() -> usize {
    (1 << 20) + 256
}

#[test]
fn a_full_dict_or_list_costs_the_host_about_its_limit_and_its_report_stays_bounded() {
    testkit();
    const LIMIT: u64 = 256 << 20;
    let wasm = wasm_of("testkit");
    // The CLI with a dict and a task using it, nothing stored: what the flood adds to.
    let base = run_measured(
        &[
            "run",
            "--object",
            "o=dict",
            wasm.to_str().unwrap(),
            "dict_fill",
            r#""@o""#,
            r#""k""#,
            "10",
        ],
        |_| {},
        Duration::from_secs(60),
    );
    assert!(base.status.success(), "{}", base.stderr);

    // Tiny entries: 1-5 bytes of key, 1 of value. Charged 1 + 1 + 32 each, as before, the
    // dict held 7 million of them, which cost the host about 1.4 GB.
    let (held, refusal, report, peak) = flood("dict", "dict_flood", "10000");
    eprintln!(
        "dict of {held} tiny entries: CLI peak RSS {} MiB, {} MiB over the baseline's {} MiB",
        peak >> 20,
        peak.saturating_sub(base.peak_rss) >> 20,
        base.peak_rss >> 20
    );
    assert!(refusal.contains("the limit is"), "{refusal}");
    assert!(
        (1_000_000..=LIMIT / 200).contains(&held),
        "each entry is charged what it costs (about 208 bytes): {held} held"
    );
    assert!(
        peak.saturating_sub(base.peak_rss) <= LIMIT * 3 / 2,
        "a full dict took {} MiB of the host for its {} MiB limit",
        peak.saturating_sub(base.peak_rss) >> 20,
        LIMIT >> 20
    );
    assert_eq!(report["contents"], serde_json::Value::Null, "{report}");
    assert_eq!(
        report["omitted"], held,
        "a large dict is reported by its size"
    );

    // Tiny list items: one byte each, charged 1 + 32 before: 8 million of them.
    let (held, refusal, report, peak) = flood("list", "list_flood", "100000");
    eprintln!(
        "list of {held} tiny items: CLI peak RSS {} MiB, {} MiB over the baseline",
        peak >> 20,
        peak.saturating_sub(base.peak_rss) >> 20
    );
    assert!(refusal.contains("the limit is"), "{refusal}");
    assert!(
        (2_000_000..=LIMIT / 80).contains(&held),
        "each item is charged what it costs (about 80 bytes): {held} held"
    );
    assert!(
        peak.saturating_sub(base.peak_rss) <= LIMIT * 3 / 2,
        "a full list took {} MiB of the host for its {} MiB limit",
        peak.saturating_sub(base.peak_rss) >> 20,
        LIMIT >> 20
    );
    let shown = report["contents"].as_array().unwrap().len() as u64;
    assert!(shown > 1000, "the report shows the first items");
    assert_eq!(report["contents"][0], 1);
    assert_eq!(
        shown + report["omitted"].as_u64().unwrap(),
        held,
        "and counts the rest"
    );
}
