//! A worker that sends corrupt frames: its task fails with a clear error, the worker is
//! killed and reaped, and the host (a pool, the program) carries on. Plus: decoding hostile
//! frames allocates memory for what arrived, never for what a header or a count claims.
//!
//! The fake worker is this test binary itself, started by the host exactly as it starts any
//! worker (fd 3, an empty environment, the hidden worker argument). Which misbehaviour it
//! plays is the name it was started under: a symlink to this binary, `fake-<mode>`. Since
//! [`wasmpool::set_worker_exe`] is process-wide, this is a test target of its own, without
//! the libtest harness: its `main` is the fake worker's entry point, and otherwise runs the
//! scenarios one after another, each under an outer timeout.

// A failed unwrap is a failed test, with its location: what a test should do.
#![allow(clippy::unwrap_used)]

mod util;

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmpool::{Error, Module, Output, Pool, Process, fuzzing};

use util::{children_of, eventually, within};

/// The argument and environment variable the host starts a worker with.
const WORKER_ARG: &str = "__wasmpool-worker";
const PARENT_ENV: &str = "WASMPOOL_PARENT_PID";

/// `FromWorker::Control(Status::Ready { tasks: vec!["square"] })`, encoded by hand (checked
/// in `main`): the lane, the variant, then its fields.
const READY_BODY: &[u8] = b"\x00\x00\x01\x06square";
/// `FromWorker::Call(CallEvent::Output { id: 1, stream: Stdout, data: b"hello\n" })`, encoded by hand.
const OUTPUT_BODY: &[u8] = b"\x01\x00\x01\x00\x06hello\n";

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

// ---- The fake worker ---------------------------------------------------------------------

/// Serves as a misbehaving worker on fd 3, as the name this binary was started under says.
fn fake_worker() -> ! {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let mode = name.strip_prefix("fake-").unwrap_or("").to_string();
    // SAFETY: the host passes a worker one end of a socketpair as fd 3, owned by nothing else.
    let mut sock = unsafe { UnixStream::from_raw_fd(3) };
    // Never outlive a test that went wrong (the host's death kills it anyway).
    let _ = sock.set_read_timeout(Some(Duration::from_secs(60)));
    if read_kind(&mut sock).as_deref() != Some("Load") {
        std::process::exit(2);
    }
    if mode == "bad-handshake" {
        // A header announcing 4 GiB, then a little of it.
        let _ = sock.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        wait_to_be_killed(sock);
    }
    let _ = sock.write_all(&frame(READY_BODY));
    // Behave until there is a task to fail.
    loop {
        match read_kind(&mut sock).as_deref() {
            Some("Call" | "CallBatch") => break,
            Some("Shutdown") | None => std::process::exit(0),
            Some(_) => {}
        }
    }
    match mode.as_str() {
        "huge-length" => {
            let _ = sock.write_all(&u32::MAX.to_le_bytes());
            wait_to_be_killed(sock);
        }
        "bad-body" => {
            // A well-framed body that names no message (variant 99).
            let _ = sock.write_all(&frame(&[99, 1, 2, 3]));
            wait_to_be_killed(sock);
        }
        "stall-mid-frame" => {
            // The start of a 100-byte frame, then nothing, while staying alive.
            let _ = sock.write_all(&[100, 0, 0, 0, 1, 0, 1, 0]);
            wait_to_be_killed(sock);
        }
        "output-then-truncated" => {
            // A valid frame, then one cut short; then the worker is gone.
            let _ = sock.write_all(&frame(OUTPUT_BODY));
            let _ = sock.write_all(&[100, 0, 0, 0, 1, 0, 1, 0, 60]);
            std::process::exit(0);
        }
        "killed-mid-frame" => {
            // The start of a frame, then death by a signal, as a worker killed while it
            // writes a large answer.
            let _ = sock.write_all(&[100, 0, 0, 0, 1, 0, 1, 0]);
            // SAFETY: raising a signal has no preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
            std::process::exit(4);
        }
        _ => std::process::exit(3),
    }
}

/// Reads one host → worker frame and names its kind; `None` at end of file or on a frame
/// that does not decode.
fn read_kind(sock: &mut UnixStream) -> Option<String> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 1 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    sock.read_exact(&mut body).ok()?;
    fuzzing::decode_to_worker(&body).map(str::to_string)
}

/// Blocks until the host kills this process (or closes the socket).
fn wait_to_be_killed(mut sock: UnixStream) -> ! {
    let _ = sock.read_to_end(&mut Vec::new());
    std::process::exit(0);
}

// ---- Helpers -----------------------------------------------------------------------------

static FAKES: OnceLock<PathBuf> = OnceLock::new();

/// Has new workers start as the fake worker playing `mode`.
fn use_fake(mode: &str) {
    let dir = FAKES.get().expect("fakes dir");
    let link = dir.join(format!("fake-{mode}"));
    if !link.exists() {
        std::os::unix::fs::symlink(std::env::current_exe().unwrap(), &link).unwrap();
    }
    wasmpool::set_worker_exe(link);
}

/// Has new workers start from the real `wasmpool` binary.
fn use_real() {
    wasmpool::set_worker_exe(env!("CARGO_BIN_EXE_wasmpool"));
}

/// The test guest, with no warm spare kept (a spare would be started from whichever worker
/// executable is set at the time, and taken by a later test).
fn module() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    M.get_or_init(|| {
        let m = util::testkit();
        m.set_keep_spare(false);
        m
    })
    .clone()
}

/// The fake workers still around (running, or exited but not reaped), by pid.
fn fake_children() -> Vec<u32> {
    children_of(std::process::id())
        .into_iter()
        .filter(|pid| {
            // The command name in `stat` is the name the process was executed under, and
            // outlives its exit until it is reaped.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains("(fake-"))
        })
        .collect()
}

/// Whether `pid` is gone entirely: exited and reaped.
fn reaped(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn assert_lost_to_malformed_frame(err: &Error, worker: Option<u32>, needle: &str) {
    match err {
        Error::WorkerLost {
            pid, task, reason, ..
        } => {
            if let Some(worker) = worker {
                assert_eq!(*pid, worker, "{err}");
            }
            assert_eq!(task, "square", "{err}");
            assert!(reason.contains("malformed frame"), "{err}");
            assert!(reason.contains(needle), "{err} should mention {needle:?}");
        }
        other => panic!("expected a lost worker, got {other:?}"),
    }
}

// ---- The scenarios -----------------------------------------------------------------------

fn process_worker_sending_an_oversized_frame_fails_its_task() {
    let module = module();
    within(Duration::from_secs(60), move || {
        use_fake("huge-length");
        let p = Process::new(&module, "square", &(7u64,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        let pid = p.pid().unwrap();
        // The host stopped it: SIGKILL.
        assert_eq!(p.exitcode(), Some(-9));
        let err = p.result::<u64>().unwrap_err();
        assert_lost_to_malformed_frame(&err, Some(pid), "exceeds");
        assert!(reaped(pid), "worker {pid} was not reaped");
    });
}

fn process_worker_cut_off_mid_frame_fails_its_task_after_its_output() {
    let module = module();
    within(Duration::from_secs(60), move || {
        use_fake("output-then-truncated");
        let p = Process::new(&module, "square", &(7u64,))
            .unwrap()
            .with_output(Output::Capture);
        p.start().unwrap();
        p.join().unwrap();
        let pid = p.pid().unwrap();
        let err = p.result::<u64>().unwrap_err();
        assert_lost_to_malformed_frame(&err, Some(pid), "cut short");
        // The frame before the corrupt one was delivered.
        assert_eq!(p.captured_output().stdout, b"hello\n");
        assert!(reaped(pid), "worker {pid} was not reaped");
    });
}

fn a_worker_killed_mid_frame_is_reported_by_its_signal() {
    let module = module();
    within(Duration::from_secs(60), move || {
        use_fake("killed-mid-frame");
        let p = Process::new(&module, "square", &(7u64,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        let pid = p.pid().unwrap();
        assert_eq!(p.exitcode(), Some(-9));
        match p.result::<u64>().unwrap_err() {
            Error::WorkerLost {
                pid: lost,
                signal,
                reason,
                ..
            } => {
                assert_eq!(lost, pid);
                assert_eq!(signal, Some(9), "{reason}");
                assert!(reason.contains("SIGKILL"), "{reason}");
                assert!(!reason.contains("malformed"), "{reason}");
            }
            other => panic!("expected a lost worker, got {other:?}"),
        }
        assert!(reaped(pid), "worker {pid} was not reaped");
    });
}

fn pool_replaces_a_worker_that_sends_a_malformed_frame_and_carries_on() {
    let module = module();
    within(Duration::from_secs(120), move || {
        use_fake("bad-body");
        let pool = Pool::new(&module, 1).unwrap();
        let fake = pool.pids();
        assert_eq!(fake.len(), 1);
        // (Which shows that `fake_children` does find fake workers.)
        assert_eq!(fake_children(), fake);
        // Its replacement is a real worker.
        use_real();
        let err = pool.apply::<_, u64>("square", &(7u64,)).unwrap_err();
        assert_lost_to_malformed_frame(&err, Some(fake[0]), "malformed frame");
        assert!(
            eventually(Duration::from_secs(10), || reaped(fake[0])),
            "worker {} was not reaped",
            fake[0]
        );
        // The pool carries on, with a new worker.
        assert_eq!(pool.apply::<_, u64>("square", &(7u64,)).unwrap(), 49);
        assert_eq!(
            pool.map::<u64, u64>("square", 0..10).unwrap(),
            (0..10).map(|x| x * x).collect::<Vec<_>>()
        );
        assert_eq!(pool.pids().len(), 1);
        assert_ne!(pool.pids(), fake);
        pool.close();
        pool.join().unwrap();
    });
}

fn a_worker_that_stalls_mid_frame_is_stopped_and_the_pool_carries_on() {
    let module = module();
    /// Puts the default stall limit back, whatever the test came to.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            fuzzing::set_frame_stall_limit(Duration::from_secs(10));
        }
    }
    within(Duration::from_secs(60), move || {
        let _restore = Restore;
        fuzzing::set_frame_stall_limit(Duration::from_millis(500));
        use_fake("stall-mid-frame");
        let pool = Pool::new(&module, 1).unwrap();
        let fake = pool.pids();
        use_real();
        let err = pool.apply::<_, u64>("square", &(7u64,)).unwrap_err();
        assert_lost_to_malformed_frame(&err, Some(fake[0]), "then nothing for 500ms");
        assert!(
            eventually(Duration::from_secs(10), || reaped(fake[0])),
            "worker {} was not reaped",
            fake[0]
        );
        assert_eq!(pool.apply::<_, u64>("square", &(7u64,)).unwrap(), 49);
        pool.close();
        pool.join().unwrap();
    });
}

fn a_worker_that_sends_garbage_instead_of_ready_is_refused() {
    let module = module();
    within(Duration::from_secs(60), move || {
        use_fake("bad-handshake");
        let p = Process::new(&module, "square", &(7u64,)).unwrap();
        let err = p.start().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Worker(_)), "{err:?}");
        assert!(text.contains("did not become ready"), "{text}");
        assert!(text.contains("exceeds"), "{text}");

        let err = Pool::new(&module, 2).unwrap_err();
        assert!(err.to_string().contains("did not become ready"), "{err}");
        use_real();
        assert!(
            eventually(Duration::from_secs(10), || fake_children().is_empty()),
            "fake workers left behind: {:?}",
            fake_children()
        );
    });
}

fn decoding_hostile_frames_allocates_only_what_arrived() {
    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let huge = 1u64 << 62;
    let mut hostile: Vec<(&str, Vec<u8>)> = Vec::new();
    // A header announcing the largest frame allowed, then 16 bytes of it.
    let mut max_frame = (64u32 << 20).to_le_bytes().to_vec();
    max_frame.extend_from_slice(&[0; 16]);
    hostile.push(("a 64 MiB header", max_frame));
    // Counts and lengths claiming 2^62 elements, followed by a few bytes.
    let mut ready = vec![0, 0];
    varint(huge, &mut ready);
    hostile.push(("Ready with 2^62 tasks", frame(&ready)));
    let mut batch = vec![1, 3, 1];
    varint(huge, &mut batch);
    batch.extend_from_slice(&[0, 1, 0x2a]);
    hostile.push(("BatchDone with 2^62 outcomes", frame(&batch)));
    let mut output = vec![1, 0, 1, 0];
    varint(huge, &mut output);
    output.extend_from_slice(b"abc");
    hostile.push(("Output of 2^62 bytes", frame(&output)));
    let mut call_batch = vec![1, 1, 1, 1, b'x'];
    varint(huge, &mut call_batch);
    call_batch.extend_from_slice(&[1, 7]);
    hostile.push(("CallBatch with 2^62 items", frame(&call_batch)));
    let mut load = vec![0, 0];
    varint(huge, &mut load);
    load.extend_from_slice(b"/x");
    hostile.push(("Load with a 2^62-byte path", frame(&load)));

    for (what, bytes) in &hostile {
        for to_worker in [false, true] {
            let (decoded, peak) = peak_allocation(|| {
                if to_worker {
                    fuzzing::read_to_worker(bytes)
                } else {
                    fuzzing::read_from_worker(bytes)
                }
            });
            assert!(decoded.error.is_some(), "{what}: {decoded:?}");
            assert!(
                peak < 4 << 20,
                "{what} (to worker: {to_worker}): {peak} bytes allocated"
            );
        }
    }

    // The measure works: a frame that does carry 8 MiB costs 8 MiB.
    let mut big = vec![1, 0, 1, 0];
    varint(8 << 20, &mut big);
    big.resize(big.len() + (8 << 20), 7);
    let big = frame(&big);
    let (decoded, peak) = peak_allocation(|| fuzzing::read_from_worker(&big));
    assert_eq!(decoded.kinds, ["Output"]);
    assert!(peak >= 8 << 20, "{peak} bytes allocated for an 8 MiB frame");
}

// ---- Counting allocations ----------------------------------------------------------------

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Counts the bytes each thread holds, and the most it held.
fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// The counting touches only const-initialised thread-locals, which never allocate.
#[global_allocator]
static ALLOCATOR: util::CountingAlloc = util::CountingAlloc(count);

/// Runs `f` and returns its result and the most memory this thread allocated meanwhile
/// beyond what it held before.
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let out = f();
    let peak = PEAK.with(Cell::get) - before;
    (out, peak.max(0) as usize)
}

// ---- The runner --------------------------------------------------------------------------

const TESTS: &[(&str, fn())] = &[
    (
        "decoding_hostile_frames_allocates_only_what_arrived",
        decoding_hostile_frames_allocates_only_what_arrived,
    ),
    (
        "process_worker_sending_an_oversized_frame_fails_its_task",
        process_worker_sending_an_oversized_frame_fails_its_task,
    ),
    (
        "process_worker_cut_off_mid_frame_fails_its_task_after_its_output",
        process_worker_cut_off_mid_frame_fails_its_task_after_its_output,
    ),
    (
        "a_worker_killed_mid_frame_is_reported_by_its_signal",
        a_worker_killed_mid_frame_is_reported_by_its_signal,
    ),
    (
        "pool_replaces_a_worker_that_sends_a_malformed_frame_and_carries_on",
        pool_replaces_a_worker_that_sends_a_malformed_frame_and_carries_on,
    ),
    (
        "a_worker_that_stalls_mid_frame_is_stopped_and_the_pool_carries_on",
        a_worker_that_stalls_mid_frame_is_stopped_and_the_pool_carries_on,
    ),
    (
        "a_worker_that_sends_garbage_instead_of_ready_is_refused",
        a_worker_that_sends_garbage_instead_of_ready_is_refused,
    ),
];

/// Options of libtest's that take a value, skipped so that their value is no filter.
const VALUED_OPTIONS: &[&str] = &[
    "--test-threads",
    "--skip",
    "--format",
    "--color",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

fn main() {
    if std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG)
        || std::env::var_os(PARENT_ENV).is_some()
    {
        fake_worker();
    }
    // A fake worker must be executed: a fork server would be the fake itself.
    wasmpool::set_start_method(wasmpool::StartMethod::Exec);

    // What libtest would make of the arguments cargo passes on: filters, `--skip`,
    // `--exact`, `--list`, `--ignored` (there are none).
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--skip" {
            skips.extend(iter.next().cloned());
        } else if VALUED_OPTIONS.contains(&arg.as_str()) {
            iter.next();
        } else if !arg.starts_with('-') {
            filters.push(arg.clone());
        }
    }
    let exact = args.iter().any(|a| a == "--exact");
    let matches = |name: &str, pattern: &String| {
        if exact {
            name == pattern
        } else {
            name.contains(pattern.as_str())
        }
    };
    let selected: Vec<&(&str, fn())> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| matches(name, f)))
        .filter(|(name, _)| !skips.iter().any(|s| matches(name, s)))
        .filter(|_| !args.iter().any(|a| a == "--ignored"))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }

    // The hand-encoded frames the fake worker sends are what the host expects.
    assert_eq!(fuzzing::decode_from_worker(READY_BODY), Some("Ready"));
    assert_eq!(fuzzing::decode_from_worker(OUTPUT_BODY), Some("Output"));

    let fakes = util::TempDir::new("fake-workers");
    FAKES.set(fakes.0.clone()).unwrap();
    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let t = Instant::now();
        let result = std::panic::catch_unwind(test);
        // Whatever happened, the next test starts from the real worker binary.
        use_real();
        let verdict = if result.is_ok() { "ok" } else { "FAILED" };
        println!(
            "test {name} ... {verdict} ({:.2}s)",
            t.elapsed().as_secs_f64()
        );
        if result.is_err() {
            failed.push(*name);
        }
    }
    let leftover = fake_children();
    if !leftover.is_empty() {
        println!("fake workers left behind: {leftover:?}");
        failed.push("(no fake worker left behind)");
    }
    drop(fakes);
    println!(
        "\ntest result: {}. {} passed; {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len().saturating_sub(failed.len()),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}
