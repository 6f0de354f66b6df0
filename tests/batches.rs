//! A `map` chunk that goes wrong part-way: nothing that finished runs again, nothing that
//! fits is lost, whatever the item that went wrong did (trapped, panicked, hit a limit,
//! blocked in a host call, returned too much).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use wasmpool::{Dict, Error, Limits, Manager, Output, OutputEvent, Pool, encode_args};

use crate::util::{testkit, within};

const LIMIT: Duration = Duration::from_secs(120);

/// The test guest, built (once, perhaps slowly on a busy machine) before a test's clock
/// starts.
fn module() -> wasmpool::Module {
    testkit()
}

/// The testkit's `Misdeed`, as the host encodes it.
#[derive(Debug, Clone, Copy, Serialize)]
enum Misdeed {
    Trap,
    Panic,
    Grow,
    Spin,
    Block,
}

/// Every line the pool's tasks printed, in one string.
fn capture() -> (Output, Arc<Mutex<String>>) {
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = seen.clone();
    let output = Output::Callback(Arc::new(move |e: OutputEvent<'_>| {
        sink.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(e.data));
    }));
    (output, seen)
}

/// How often each line appears in `text`.
fn line_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in text.lines() {
        *counts.entry(line.to_string()).or_default() += 1;
    }
    counts
}

/// Runs `task` over items `0..n` (the item whose number is `bad` misbehaving as `how`) in
/// one chunk of `n`, and returns each item's result.
fn run_chunk(
    pool: &Pool,
    task: &str,
    runs: Option<&Dict<String, i64>>,
    n: u64,
    bad: u64,
    how: Misdeed,
) -> Vec<Result<u64, Error>> {
    let items: Vec<wasmpool::Result<Vec<u8>>> = (0..n)
        .map(|x| match runs {
            Some(runs) => encode_args(&(runs, x, bad, how)),
            None => encode_args(&(x, bad, how)),
        })
        .collect();
    pool.imap_encoded::<u64>(task, items.into_iter(), n as usize, true)
        .unwrap()
        .collect()
}

/// Asserts that every item but `bad` succeeded with its own number, and returns `bad`'s error.
fn all_but(results: Vec<Result<u64, Error>>, bad: u64) -> Error {
    let mut error = None;
    for (x, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => {
                assert_ne!(x as u64, bad, "the bad item succeeded");
                assert_eq!(v, x as u64);
            }
            Err(e) => {
                assert_eq!(x as u64, bad, "item {x} failed: {e}");
                error = Some(e);
            }
        }
    }
    error.expect("the bad item failed")
}

/// Asserts that every item of `0..n` counted exactly one run and printed exactly one line.
fn each_ran_once(runs: &Dict<String, i64>, printed: &str, n: u64) {
    for x in 0..n {
        assert_eq!(
            runs.get(&format!("run:{x}")).unwrap(),
            Some(1),
            "item {x} ran once (runs: {:?})",
            runs.items().unwrap()
        );
    }
    each_printed_once(printed, n);
}

/// Asserts that every item of `0..n` printed its line exactly once.
fn each_printed_once(printed: &str, n: u64) {
    let lines = line_counts(printed);
    for x in 0..n {
        assert_eq!(
            lines.get(&format!("item {x}")).copied(),
            Some(1),
            "item {x} printed once: {printed:?}"
        );
    }
}

#[test]
fn after_an_item_traps_panics_or_hits_a_limit_no_item_that_finished_runs_again() {
    let module = module();
    within(LIMIT, move || {
        let cases: [(Misdeed, Limits); 4] = [
            (Misdeed::Trap, Limits::default()),
            (Misdeed::Panic, Limits::default()),
            (Misdeed::Grow, Limits::default().memory_mib(64)),
            (
                Misdeed::Spin,
                Limits::default().timeout(Duration::from_millis(500)),
            ),
        ];
        for (how, limits) in cases {
            let (output, printed) = capture();
            let pool = Pool::builder(&module)
                .processes(1)
                .limits(limits)
                .output(output)
                .build()
                .unwrap();
            let runs = Manager::new().dict::<String, i64>();
            let error = all_but(run_chunk(&pool, "counted", Some(&runs), 8, 5, how), 5);
            let text = error.to_string();
            match how {
                Misdeed::Trap => assert!(matches!(error, Error::Trap { .. }), "{text}"),
                Misdeed::Panic => assert!(text.contains("misbehaving on purpose"), "{text}"),
                Misdeed::Grow => assert!(text.contains("memory limit"), "{text}"),
                Misdeed::Spin => assert!(text.contains("time limit"), "{text}"),
                _ => unreachable!(),
            }
            pool.close();
            pool.join().unwrap();
            each_ran_once(&runs, &printed.lock().unwrap(), 8);
        }
    });
}

#[test]
fn pure_items_run_again_after_a_trap_print_their_output_once() {
    let module = module();
    within(LIMIT, move || {
        let (output, printed) = capture();
        let pool = Pool::builder(&module)
            .processes(1)
            .output(output)
            .build()
            .unwrap();
        let error = all_but(run_chunk(&pool, "printed", None, 8, 5, Misdeed::Trap), 5);
        assert!(matches!(error, Error::Trap { .. }), "{error}");
        pool.close();
        pool.join().unwrap();
        each_printed_once(&printed.lock().unwrap(), 8);
    });
}

#[test]
fn an_item_blocked_in_a_host_call_past_its_limit_fails_alone_and_the_rest_run_once() {
    let module = module();
    within(LIMIT, move || {
        let (output, printed) = capture();
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_millis(800)))
            .output(output)
            .build()
            .unwrap();
        let before = pool.pids();
        let runs = Manager::new().dict::<String, i64>();
        let error = all_but(
            run_chunk(&pool, "counted", Some(&runs), 6, 3, Misdeed::Block),
            3,
        );
        assert!(
            matches!(&error, Error::Limit { message, .. } if message.contains("time limit")),
            "{error}"
        );
        assert_ne!(pool.pids(), before, "the stuck worker was replaced");
        each_ran_once(&runs, &std::mem::take(&mut *printed.lock().unwrap()), 6);
        // Pure items are placed by running them again alone: the stuck one fails alone, and
        // the others print once, as what the stopped batch held back was dropped.
        let error = all_but(run_chunk(&pool, "printed", None, 6, 3, Misdeed::Block), 3);
        assert!(error.to_string().contains("time limit"), "{error}");
        pool.close();
        pool.join().unwrap();
        each_printed_once(&printed.lock().unwrap(), 6);
    });
}

#[test]
fn a_chunk_of_answers_over_the_frame_cap_arrives_whole() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module).processes(2).build().unwrap();
        let before = pool.pids();
        // 40 results of 2 MiB: 80 MiB of answers, more than a frame holds, in chunks of 20.
        let sizes = vec![2usize << 20; 40];
        let results: Vec<String> = pool.map_chunked("big_result", sizes, 20).unwrap();
        assert_eq!(results.len(), 40);
        assert!(results.iter().all(|r| r.len() == 2 << 20));
        assert_eq!(pool.pids(), before, "no worker was lost");
    });
}

#[test]
fn a_result_too_large_for_any_frame_fails_only_its_item_and_says_why() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().memory_mib(1024))
            .build()
            .unwrap();
        let before = pool.pids();
        let sizes: Vec<usize> = vec![10, 70 << 20, 20];
        let results: Vec<Result<String, Error>> =
            pool.imap_chunked("big_result", sizes, 3).unwrap().collect();
        assert_eq!(results[0].as_ref().unwrap().len(), 10);
        assert_eq!(results[2].as_ref().unwrap().len(), 20);
        match &results[1] {
            Err(Error::Limit { task, message }) => {
                assert_eq!(task, "big_result");
                assert!(message.contains("result of"), "{message}");
                assert!(message.contains("MiB"), "{message}");
            }
            other => panic!("expected a size error, got {other:?}"),
        }
        // The same for a single call.
        let err = pool
            .apply::<_, String>("big_result", &(70usize << 20,))
            .unwrap_err();
        assert!(err.to_string().contains("result of"), "{err}");
        assert_eq!(pool.pids(), before, "the worker kept serving");
        let small: String = pool.apply("big_result", &(3usize,)).unwrap();
        assert_eq!(small, "rrr");
    });
}

#[test]
fn a_chunk_of_arguments_over_the_frame_cap_is_cut_so_items_that_fit_run() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module).processes(2).build().unwrap();
        // Eight 10 MiB strings in one chunk: 80 MiB, more than a frame holds; and one item
        // of 70 MiB, which no frame holds.
        let mut texts: Vec<String> = (0..8).map(|_| "t".repeat(10 << 20)).collect();
        texts.insert(4, "h".repeat(70 << 20));
        let results: Vec<Result<u64, Error>> =
            pool.imap_chunked("text_len", texts, 9).unwrap().collect();
        for (i, r) in results.iter().enumerate() {
            if i == 4 {
                let err = r.as_ref().unwrap_err().to_string();
                assert!(err.contains("message limit"), "{err}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), 10 << 20, "item {i}");
            }
        }
    });
}

#[test]
fn exit_in_a_task_reports_its_status_and_exit_0_is_success() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module).processes(1).build().unwrap();
        pool.apply::<_, ()>("exit_with", &(0,)).unwrap();
        let err = pool.apply::<_, ()>("exit_with", &(3,)).unwrap_err();
        match &err {
            Error::Task { task, message } => {
                assert_eq!(task, "exit_with");
                assert!(message.contains("exited with status"), "{message}");
            }
            other => panic!("expected a task error, got {other:?}"),
        }
        // In a chunk, beside ordinary items.
        let codes = [0, 1, 0];
        let results: Vec<Result<(), Error>> =
            pool.imap_chunked("exit_with", codes, 3).unwrap().collect();
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err(), "{results:?}");
        // A process that exits with status 0 succeeds, as in Python.
        let p = wasmpool::Process::new(&module, "exit_with", &(0,)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    });
}

#[test]
fn an_init_that_never_returns_is_stopped_at_the_time_limit() {
    let module = crate::util::stuck_init();
    within(LIMIT, move || {
        let err = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_millis(300)))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("init"), "{err}");
        assert!(err.contains("time limit of 300ms"), "{err}");
        let p = wasmpool::Process::new(&module, "unreachable_task", &())
            .unwrap()
            .with_limits(Limits::default().timeout(Duration::from_millis(300)));
        let err = p.start().unwrap_err().to_string();
        assert!(err.contains("time limit of 300ms"), "{err}");
    });
}

#[test]
fn the_memory_limit_applies_to_a_modules_memory_at_start() {
    let module = crate::util::big_static();
    within(LIMIT, move || {
        // Over the default limit (256 MiB) before any task runs: a clear error...
        let err = Pool::builder(&module)
            .processes(1)
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory at start"), "{err}");
        assert!(err.contains("256 MiB"), "{err}");
        // ... and it runs when the limit allows it.
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().memory_mib(512))
            .build()
            .unwrap();
        let v: u8 = pool.apply("touch", &(0usize, 7u8)).unwrap();
        assert_eq!(v, 7);
    });
}

#[test]
fn a_stopped_worker_is_killed_past_its_time_limit_and_the_map_goes_on() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module)
            .processes(2)
            .limits(Limits::default().timeout(Duration::from_millis(500)))
            .build()
            .unwrap();
        let stopped = pool.pids()[0];
        // SIGSTOP: the worker's own watchdog stops with it; only the host can tell.
        let pending = pool
            .map_async::<_, u32>("pid_after", [300u64, 300, 300, 300], Some(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill has no memory-safety preconditions; the pid is one of the pool's.
        assert_eq!(unsafe { libc::kill(stopped as i32, libc::SIGSTOP) }, 0);
        let err = pending.get().unwrap_err();
        match &err {
            Error::WorkerLost { pid, reason, .. } => {
                assert_eq!(*pid, stopped);
                assert!(reason.contains("sent nothing"), "{reason}");
            }
            other => panic!("expected the stopped worker's task to be lost, got {other:?}"),
        }
        // The pool replaced it and goes on.
        let again: Vec<u32> = pool.map("pid_after", [1u64, 1, 1, 1]).unwrap();
        assert!(!again.contains(&stopped), "{again:?}");
    });
}

// ---- a guest that lies to the host, and the pool's silence killer (from a review) ----

/// A guest that calls batch-progress itself cannot restart its time limit at will: a task
/// that would run 4 s under a 300 ms limit is stopped (the made-up report it sent first
/// stands as its item's answer: a guest chooses its own results anyway).
#[test]
fn a_guest_reporting_made_up_progress_cannot_outrun_its_time_limit() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_millis(300)))
            .build()
            .unwrap();
        let before = pool.pids();
        let started = std::time::Instant::now();
        let items = vec![encode_args(&(1u32, false, 100u64, 4000u64))];
        let results: Vec<Result<u64, Error>> = pool
            .imap_encoded::<u64>("liar", items.into_iter(), 1, true)
            .unwrap()
            .collect();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "ran {took:?}: {results:?}");
        assert_eq!(results.len(), 1);
        assert!(
            !matches!(results[0], Ok(7)),
            "it ran to its end: {results:?}"
        );
        assert_eq!(pool.pids(), before, "stopped in wasm, the worker goes on");
    });
}

/// Made-up empty answers by the million do not pile up in the worker.
#[test]
fn made_up_empty_answers_do_not_grow_the_worker() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module).processes(1).build().unwrap();
        let pid = pool.pids()[0];
        let rss = move || -> u64 {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0)
        };
        let before = rss();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(rss());
                    std::thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        let items: Vec<wasmpool::Result<Vec<u8>>> = (0..2)
            .map(|_| encode_args(&(1_000_000u32, true, 1u64, 3000u64)))
            .collect();
        let results: Vec<Result<u64, Error>> = pool
            .imap_encoded::<u64>("liar", items.into_iter(), 2, true)
            .unwrap()
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().unwrap();
        assert_eq!(results.len(), 2);
        // The guest's own lists (a million outcomes each) are in its memory; the worker's
        // share of them must stay far below what piling them up would take.
        assert!(
            peak < before + (256 << 10),
            "worker grew from {before} KiB to {peak} KiB"
        );
    });
}

/// A timed chunk's answer queued while the worker runs an untimed chunk behind it: the
/// worker is busy, not stopped, and keeps both.
#[test]
fn a_timed_answer_queued_behind_untimed_work_is_not_silence() {
    let module = module();
    within(LIMIT, move || {
        let pool = Pool::builder(&module).processes(1).build().unwrap();
        // Short runs: the pool pipelines this task's chunks.
        let warm: Vec<u64> = pool
            .map_async("sleep_ms", [0u64; 20], Some(1))
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(warm.len(), 20);
        let timed = pool.with_limits(Limits::default().timeout(Duration::from_secs(1)));
        let a = timed
            .map_async::<_, u64>("sleep_ms", [300u64], Some(1))
            .unwrap();
        let b = pool
            .map_async::<_, u64>("sleep_ms", [8000u64], Some(1))
            .unwrap();
        let (b, a) = (b.get(), a.get());
        assert_eq!(
            a.as_ref().ok(),
            Some(&vec![300]),
            "timed: {a:?}, untimed: {b:?}"
        );
        assert_eq!(
            b.as_ref().ok(),
            Some(&vec![8000]),
            "timed: {a:?}, untimed: {b:?}"
        );
    });
}

/// A slow output callback holds up the reading of a worker's frames; the worker is alive
/// all along and is not killed.
#[test]
fn a_slow_output_callback_does_not_get_a_live_worker_killed() {
    let module = module();
    within(LIMIT, move || {
        let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let output = Output::Callback(Arc::new(move |_e: OutputEvent<'_>| {
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(9));
            }
        }));
        let pool = Pool::builder(&module)
            .processes(1)
            .output(output)
            .limits(Limits::default().timeout(Duration::from_secs(3)))
            .build()
            .unwrap();
        let before = pool.pids();
        let r: Vec<u32> = pool.starmap("tick", [(4u32, 500u64)]).unwrap();
        assert_eq!(r, vec![4]);
        assert_eq!(pool.pids(), before, "a live worker was killed");
    });
}

/// An item that called `objects` never runs again: what it prints after that is not held
/// back, but seen while it still runs.
#[test]
fn output_of_an_item_that_called_objects_goes_out_live() {
    let module = module();
    within(LIMIT, move || {
        let (output, printed) = capture();
        let pool = Pool::builder(&module)
            .processes(1)
            .limits(Limits::default().timeout(Duration::from_secs(4)))
            .output(output)
            .build()
            .unwrap();
        let runs = Manager::new().dict::<String, i64>();
        let pending = {
            let pool = pool.clone();
            std::thread::spawn(move || {
                run_chunk(&pool, "counted", Some(&runs), 2, 0, Misdeed::Block)
            })
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !printed.lock().unwrap().contains("item 0") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = printed.lock().unwrap().clone();
        let _ = pending.join();
        assert!(
            seen.contains("item 0"),
            "its line is not out while it waits: {seen:?}"
        );
    });
}
