//! The hostile-guest suite: each hostile task runs in a pool next to ordinary ones and must
//! get the right error, while every ordinary result is correct and the pool keeps working.

use std::time::Duration;

use wasmpool::{Error, Grants, Limits, Pool, Process};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(90);

fn limited_pool(limits: Limits) -> Pool {
    Pool::builder(&testkit())
        .processes(2)
        .limits(limits)
        .build()
        .unwrap()
}

/// Runs `hostile` beside 50 ordinary `square` tasks; checks the ordinary results and that
/// the pool still works afterwards; returns the hostile task's error.
fn beside_ordinary_tasks<A: serde::Serialize>(pool: &Pool, hostile: &str, args: &A) -> Error {
    let bad = pool
        .apply_async::<_, serde_json::Value>(hostile, args)
        .unwrap();
    let good = pool
        .map_async::<u64, u64>("square", 0..50u64, Some(1))
        .unwrap();
    assert_eq!(
        good.get().unwrap(),
        (0..50u64).map(|x| x * x).collect::<Vec<_>>(),
        "ordinary tasks are unharmed"
    );
    let err = bad.get().unwrap_err();
    let after: Vec<u64> = pool.map("square", 0..10u64).unwrap();
    assert_eq!(after[9], 81, "the pool works afterwards");
    err
}

#[test]
fn a_task_that_loops_forever_hits_its_time_limit_and_the_worker_carries_on() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default().timeout(Duration::from_millis(300)));
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "spin", &());
        match &err {
            Error::Limit { task, message } => {
                assert_eq!(task, "spin");
                assert!(message.contains("time limit of 300ms"), "{message}");
            }
            other => panic!("expected a time limit, got {other:?}"),
        }
        assert_eq!(
            pool.pids(),
            pids,
            "an interrupted task does not cost its worker"
        );
    });
}

/// A pool built without a time limit runs code that does not check the time (faster); a
/// submission's time limit still holds there: the watchdog answers the task and replaces
/// its worker.
#[test]
fn a_time_limit_given_to_a_submission_of_an_untimed_pool_holds_at_the_cost_of_its_worker() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default());
        let pids = pool.pids();
        let quick = pool.with_limits(Limits::default().timeout(Duration::from_millis(300)));
        let err = beside_ordinary_tasks(&quick, "spin", &());
        match &err {
            Error::Limit { task, message } => {
                assert_eq!(task, "spin");
                assert!(message.contains("time limit of 300ms"), "{message}");
            }
            other => panic!("expected a time limit, got {other:?}"),
        }
        pool.wait_for_workers();
        let now = pool.pids();
        assert_eq!(now.len(), 2, "the stopped worker was replaced");
        assert_ne!(
            now, pids,
            "a worker whose code cannot be interrupted was ended"
        );

        // A chunk of a map with a runaway item in wasm code: it fails with the limit, and
        // every other item's result arrives, in order.
        let results: Vec<Result<u64, Error>> = quick
            .imap_chunked::<u64, u64>("square_or_spin", 10..16u64, 6)
            .unwrap()
            .collect();
        assert_eq!(results.len(), 6);
        for (x, r) in (10..16u64).zip(&results) {
            match r {
                Err(Error::Limit { message, .. }) if x == 13 => {
                    assert!(message.contains("time limit of 300ms"), "{message}")
                }
                Ok(y) if x != 13 => assert_eq!(*y, x * x),
                other => panic!("item {x}: {other:?}"),
            }
        }
    });
}

/// `interruptible(true)`: a pool without a time limit of its own whose code checks the
/// time, so a submission's limit stops the task and keeps the worker.
#[test]
fn an_interruptible_pool_keeps_its_worker_when_a_submission_reaches_its_time_limit() {
    within(LIMIT, || {
        let pool = Pool::builder(&testkit())
            .processes(2)
            .interruptible(true)
            .build()
            .unwrap();
        let pids = pool.pids();
        let quick = pool.with_limits(Limits::default().timeout(Duration::from_millis(300)));
        let err = beside_ordinary_tasks(&quick, "spin", &());
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("time limit of 300ms")),
            "{err:?}"
        );
        assert_eq!(
            pool.pids(),
            pids,
            "an interrupted task does not cost its worker"
        );
    });
}

#[test]
fn a_task_sleeping_past_its_time_limit_in_a_host_call_is_stopped() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default().timeout(Duration::from_millis(300)));
        let err = beside_ordinary_tasks(&pool, "sleep_ms", &(60_000u64,));
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("time limit")),
            "{err:?}"
        );
        pool.wait_for_workers();
        assert_eq!(pool.pids().len(), 2, "the stopped worker was replaced");
    });
}

#[test]
fn a_task_that_allocates_without_end_hits_its_memory_limit() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default().memory_mib(32));
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "alloc_mib", &(10_000u64,));
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("memory limit of 32 MiB")),
            "{err:?}"
        );
        assert_eq!(
            pool.apply::<_, u64>("alloc_mib", &(8u64,)).unwrap(),
            8 << 20,
            "within the limit is fine"
        );
        assert_eq!(pool.pids(), pids);
    });
}

#[test]
fn a_results_peak_memory_is_the_largest_its_instance_had_while_it_ran() {
    const MIB: u64 = 1 << 20;
    within(LIMIT, || {
        // One worker: the calls share its instance, in this order.
        let pool = Pool::builder(&testkit())
            .processes(1)
            .limits(Limits::default().memory_mib(256))
            .build()
            .unwrap();
        let tiny = pool.apply_async::<_, u64>("square", &(3u64,)).unwrap();
        assert_eq!(tiny.get().unwrap(), 9);
        assert!(
            tiny.peak_memory() > 0 && tiny.peak_memory() < 16 * MIB,
            "{}",
            tiny.peak_memory()
        );
        // Refused past its limit: what it had when the growth was refused, at most the limit.
        let over = pool
            .with_limits(Limits::default().memory_mib(32))
            .apply_async::<_, u64>("alloc_mib", &(400u64,))
            .unwrap();
        assert!(matches!(over.get(), Err(Error::Limit { .. })));
        assert!(
            over.peak_memory() > tiny.peak_memory() && over.peak_memory() <= 32 * MIB,
            "{}",
            over.peak_memory()
        );
        // A fresh instance (the last one was discarded) that allocates 40 MiB.
        let big = pool.apply_async::<_, u64>("alloc_mib", &(40u64,)).unwrap();
        assert_eq!(big.get().unwrap(), 40 * MIB);
        assert!(
            big.peak_memory() >= 40 * MIB && big.peak_memory() <= 256 * MIB,
            "{}",
            big.peak_memory()
        );
        // The same instance, which never shrinks: a tiny task now reports its size.
        let after = pool.apply_async::<_, u64>("square", &(3u64,)).unwrap();
        after.get().unwrap();
        assert_eq!(after.peak_memory(), big.peak_memory());
        // A map: the largest over its chunks; an imap likewise.
        let map = pool
            .map_async::<u64, u64>("alloc_mib", [1u64, 60], Some(1))
            .unwrap();
        map.get().unwrap();
        assert!(map.peak_memory() >= 60 * MIB, "{}", map.peak_memory());
        let mut it = pool.imap::<u64, u64>("alloc_mib", [2u64]).unwrap();
        assert_eq!(it.next().unwrap().unwrap(), 2 * MIB);
        assert!(
            it.peak_memory() >= map.peak_memory(),
            "{}",
            it.peak_memory()
        );
        // Work that never ran: nothing.
        let cancelled = pool
            .apply_async::<_, u64>("sleep_ms", &(60_000u64,))
            .unwrap();
        let queued = pool.apply_async::<_, u64>("square", &(2u64,)).unwrap();
        assert!(queued.cancel());
        assert_eq!(queued.peak_memory(), 0);
        assert!(cancelled.cancel());
    });
}

#[test]
fn unbounded_recursion_is_a_stack_overflow() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default());
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "recurse", &(u64::MAX,));
        match &err {
            Error::Limit { task, message } => {
                assert_eq!(task, "recurse");
                assert_eq!(
                    message,
                    "exceeded its stack limit of 1 MiB (stack overflow)"
                );
            }
            other => panic!("expected a stack overflow, got {other:?}"),
        }
        assert_eq!(
            pool.pids(),
            pids,
            "a stack overflow does not cost its worker"
        );
    });
}

/// Deep enough to overflow a 64 KiB wasm stack, shallow enough for 1 MiB.
const DEPTH_UNDER_1_MIB: u64 = 10_000;
/// Deep enough to overflow 1 MiB, shallow enough for 4 MiB, on the plain engine these tests'
/// pools and processes run on (an interruptible engine's frames, which check the epoch, are
/// larger: 30,000 levels overflowed 1 MiB there).
const DEPTH_UNDER_4_MIB: u64 = 60_000;

#[test]
fn the_stack_limit_is_set_per_pool_and_overridden_per_submission() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default().stack_kib(64));
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "recurse", &(DEPTH_UNDER_1_MIB,));
        assert!(
            matches!(&err, Error::Limit { message, .. }
                if message == "exceeded its stack limit of 64 KiB (stack overflow)"),
            "{err:?}"
        );

        // The depth the larger limit is tested with does overflow the default 1 MiB.
        let err = pool
            .with_limits(Limits::default())
            .apply::<_, u64>("recurse", &(DEPTH_UNDER_4_MIB,))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("of 1 MiB")),
            "{err:?}"
        );

        // The same workers, under a larger limit for these submissions only.
        let deep = pool.with_limits(Limits::default().stack_kib(4096));
        let depths = vec![DEPTH_UNDER_1_MIB, DEPTH_UNDER_4_MIB, 5];
        assert_eq!(
            deep.map::<u64, u64>("recurse", depths.clone()).unwrap(),
            depths
        );
        let err = deep.apply::<_, u64>("recurse", &(u64::MAX,)).unwrap_err();
        assert!(
            matches!(&err, Error::Limit { message, .. } if message.contains("4 MiB")),
            "{err:?}"
        );

        // And back to the pool's own limit.
        let err = pool
            .apply::<_, u64>("recurse", &(DEPTH_UNDER_1_MIB,))
            .unwrap_err();
        assert!(matches!(&err, Error::Limit { .. }), "{err:?}");
        assert_eq!(pool.apply::<_, u64>("recurse", &(100u64,)).unwrap(), 100);
        assert_eq!(
            pool.pids(),
            pids,
            "changing the stack limit keeps the workers"
        );
    });
}

#[test]
fn a_worker_changing_its_stack_limit_gives_back_what_its_old_instance_held() {
    within(LIMIT, || {
        let one = Pool::builder(&testkit()).processes(1).build().unwrap();
        let lock = wasmpool::Manager::new().lock();
        // `try_lock` takes the lock and returns holding it: the instance holds it.
        assert!(one.apply::<_, bool>("try_lock", &(&lock,)).unwrap());
        assert!(!lock.try_acquire().unwrap(), "held by the worker");
        // Another stack limit means another instance: the old one's lock is given back.
        let other = one.with_limits(Limits::default().stack_kib(2048));
        assert!(other.apply::<_, bool>("try_lock", &(&lock,)).unwrap());
    });
}

#[test]
fn a_stack_limit_out_of_range_is_refused_before_anything_runs() {
    within(LIMIT, || {
        let err = Pool::builder(&testkit())
            .processes(1)
            .limits(Limits::default().stack_kib(1))
            .build()
            .expect_err("a 1 KiB stack limit is refused");
        assert!(
            matches!(&err, Error::State(m) if m.contains("from 64 KiB to 64 MiB")),
            "{err:?}"
        );
        let pool = limited_pool(Limits::default());
        let huge = pool.with_limits(Limits::default().stack_kib(1 << 20));
        let err = huge.apply::<_, u64>("square", &(3u64,)).unwrap_err();
        assert!(
            matches!(&err, Error::State(m) if m.contains("1024 MiB is out of range")),
            "{err:?}"
        );
        assert_eq!(pool.apply::<_, u64>("square", &(3u64,)).unwrap(), 9);
        let p = Process::new(&testkit(), "square", &(3u64,))
            .unwrap()
            .with_limits(Limits::default().stack_kib(0));
        assert!(matches!(p.start(), Err(Error::State(_))));
    });
}

#[test]
fn forged_and_stale_object_handles_fail_only_their_own_task() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default());
        // A handle with a guessed token.
        let forged = serde_json::json!(["wasmpool:lock", 2, 12345]);
        let err = beside_ordinary_tasks(&pool, "try_lock", &(forged,)).to_string();
        assert!(err.contains("no such object"), "{err}");
        // A handle to an object the host has dropped.
        let manager = wasmpool::Manager::new();
        let lock = manager.lock();
        let stale = serde_json::to_value(&lock).unwrap();
        drop(lock);
        let err = beside_ordinary_tasks(&pool, "try_lock", &(stale,)).to_string();
        assert!(err.contains("no such object"), "{err}");
        // The workers that met them still reach the objects they were given.
        let live = manager.lock();
        assert!(pool.apply::<_, bool>("try_lock", &(&live,)).unwrap());
    });
}

#[test]
fn traps_and_panics_hurt_only_their_own_task() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default());
        assert!(matches!(
            beside_ordinary_tasks(&pool, "trap", &()),
            Error::Trap { .. }
        ));
        assert!(matches!(
            beside_ordinary_tasks(&pool, "boom", &("x",)),
            Error::Task { .. }
        ));
    });
}

#[test]
fn a_task_printing_a_gigabyte_hits_its_output_limit() {
    within(LIMIT, || {
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = seen.clone();
        let pool = Pool::builder(&testkit())
            .processes(2)
            .limits(Limits::default().output_bytes(1 << 20))
            .output(wasmpool::Output::Callback(std::sync::Arc::new(
                move |e: wasmpool::OutputEvent<'_>| {
                    counter.fetch_add(e.data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                },
            )))
            .build()
            .unwrap();
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "print_mib", &(1024u64,));
        match &err {
            Error::Limit { task, message } => {
                assert_eq!(task, "print_mib");
                assert!(message.contains("output limit of 1 MiB"), "{message}");
            }
            other => panic!("expected an output limit, got {other:?}"),
        }
        let seen = seen.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            seen <= 1 << 20,
            "no more than the limit reached the host: {seen} bytes"
        );
        assert_eq!(pool.pids(), pids, "the worker carries on");
        // Within its limit, a task's output all arrives.
        let ok: u64 = pool.apply("print_mib", &(0u64,)).unwrap();
        assert_eq!(ok, 0);
    });
}

#[test]
fn a_guest_cannot_read_host_files_open_sockets_or_see_the_environment() {
    within(LIMIT, || {
        let run = |task: &str, arg: &str| {
            let p = Process::new(&testkit(), task, &(arg,)).unwrap();
            p.start().unwrap();
            p.join().unwrap();
            p.result::<serde_json::Value>()
        };
        // In a pool, beside ordinary tasks, which are unharmed.
        let pool = limited_pool(Limits::default());
        let err = beside_ordinary_tasks(&pool, "read_file", &("/etc/passwd",)).to_string();
        assert!(!err.contains("root:"), "{err}");
        assert!(
            err.contains("task `read_file` failed"),
            "a WASI error inside the guest: {err}"
        );
        let err = beside_ordinary_tasks(&pool, "connect", &("127.0.0.1:22",)).to_string();
        assert!(
            err.contains("task `connect` failed") && !err.contains("connected"),
            "{err}"
        );
        // And in a process.
        assert!(run("read_file", "/etc/passwd").is_err());
        assert_eq!(run("env_var", "PATH").unwrap(), serde_json::Value::Null);
        assert_eq!(run("env_var", "HOME").unwrap(), serde_json::Value::Null);
    });
}

#[test]
fn workers_run_under_a_seccomp_filter_without_new_privileges() {
    within(LIMIT, || {
        let pool = limited_pool(Limits::default());
        for pid in pool.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(field("NoNewPrivs:"), "1", "worker {pid}");
            // 2: a seccomp filter is installed (0 would mean none).
            assert_eq!(field("Seccomp:"), "2", "worker {pid}");
        }
        // And the workers do their work under it.
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares[99], 9801);
    });
}

#[test]
fn granted_directories_and_variables_reach_the_guest_and_nothing_else() {
    within(LIMIT, || {
        let ro = TempDir::new("grant-ro");
        let rw = TempDir::new("grant-rw");
        std::fs::write(ro.0.join("hello.txt"), "hello from the host").unwrap();
        let pool = Pool::builder(&testkit())
            .processes(2)
            .grants(
                Grants::new()
                    .dir_read_only(&ro.0, "/data")
                    .dir(&rw.0, "/out")
                    .env("GREETING", "hi"),
            )
            .build()
            .unwrap();
        assert_granted_and_nothing_else(
            &ro.0,
            &rw.0,
            |path| pool.apply("read_file", &(path,)),
            |path| pool.apply("write_file", &(path, "written")),
            |name| pool.apply("env_var", &(name,)),
        );

        // A process gets them too, and the CLI's flags grant the same.
        let p = Process::new(&testkit(), "read_file", &("/data/hello.txt",))
            .unwrap()
            .with_grants(Grants::new().dir_read_only(&ro.0, "/data"));
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.result::<String>().unwrap(), "hello from the host");
        let spec = format!("{}:/data:ro", ro.0.display());
        let out = run_cli(&[
            "run",
            "--dir",
            &spec,
            "--env",
            "GREETING=hey",
            "examples/testkit",
            "read_file",
            "\"/data/hello.txt\"",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "\"hello from the host\"");
        let out = run_cli(&[
            "run",
            "--env",
            "GREETING=hey",
            "examples/testkit",
            "env_var",
            "\"GREETING\"",
        ]);
        assert_eq!(stdout(&out).trim(), "\"hey\"", "{}", stderr(&out));

        // A grant of a directory that does not exist fails before any task runs.
        let missing = Pool::builder(&testkit())
            .grants(Grants::new().dir("/no/such/dir", "/data"))
            .build();
        assert!(matches!(missing, Err(Error::BadArgs(m)) if m.contains("/no/such/dir")));
        let out = run_cli(&["run", "--dir", "/no/such/dir", "examples/testkit", "noop"]);
        assert_cli_error(&out, 2, "cannot grant the directory /no/such/dir");
    });
}

#[test]
fn limits_apply_to_a_process_and_through_the_cli() {
    within(LIMIT, || {
        let p = Process::new(&testkit(), "spin", &())
            .unwrap()
            .with_limits(Limits::default().timeout(Duration::from_millis(200)));
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(1));
        assert!(matches!(p.result::<u64>(), Err(Error::Limit { .. })));

        let out = run_cli(&["run", "--timeout", "0.2", "examples/testkit", "spin"]);
        assert_cli_error(&out, 1, "task `spin` exceeded its time limit of 200ms");
        let out = run_cli(&[
            "run",
            "--memory",
            "16",
            "examples/testkit",
            "alloc_mib",
            "100",
        ]);
        assert_cli_error(&out, 1, "exceeded its memory limit of 16 MiB");
        let depth = DEPTH_UNDER_1_MIB.to_string();
        let out = run_cli(&[
            "run",
            "--max-stack",
            "64",
            "examples/testkit",
            "recurse",
            &depth,
        ]);
        assert_cli_error(&out, 1, "task `recurse` exceeded its stack limit of 64 KiB");
        let depth = DEPTH_UNDER_4_MIB.to_string();
        let out = run_cli(&[
            "run",
            "--max-stack",
            "4096",
            "examples/testkit",
            "recurse",
            &depth,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), depth);
        let out = run_cli(&["run", "--max-stack", "8", "examples/testkit", "square", "2"]);
        assert_cli_error(
            &out,
            2,
            "--max-stack 8: a stack limit of 8 KiB is out of range",
        );
        let out = run_cli(&["run", "--timeout", "0", "examples/testkit", "spin"]);
        assert_cli_error(&out, 2, "--timeout must be more than zero seconds");
        let out = run_cli(&[
            "map",
            "--timeout",
            "0.2",
            "examples/testkit",
            "spin",
            "--range",
            "0..0",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    });
}

fn metered_pool(fuel: u64) -> Pool {
    limited_pool(Limits::default().fuel(fuel))
}

#[test]
fn a_task_that_loops_forever_runs_out_of_fuel_and_the_worker_carries_on() {
    within(LIMIT, || {
        let pool = metered_pool(5_000_000);
        let pids = pool.pids();
        let err = beside_ordinary_tasks(&pool, "spin", &());
        match &err {
            Error::Limit { task, message } => {
                assert_eq!(task, "spin");
                assert!(
                    message.contains("ran out of fuel")
                        && message.contains("fuel limit of 5000000"),
                    "{message}"
                );
            }
            other => panic!("expected running out of fuel, got {other:?}"),
        }
        assert_eq!(pool.pids(), pids, "running out of fuel costs no worker");
        // It used all of its budget, and says so.
        let spin = pool.apply_async::<_, u64>("spin", &()).unwrap();
        assert!(spin.get().is_err());
        assert_eq!(spin.fuel_used(), Some(5_000_000));
        // In a chunk, only the item that runs out fails: each item has its own budget.
        // (`recurse` uses about 32 fuel per level; 4000 levels stay well inside the stack.)
        let mixed: Vec<Result<u64, Error>> = pool
            .with_limits(Limits::default().fuel(100_000))
            .imap_chunked("recurse", [10u64, 4000, 20], 3)
            .unwrap()
            .collect();
        assert_eq!(mixed[0].as_ref().unwrap(), &10);
        assert!(
            matches!(&mixed[1], Err(Error::Limit { message, .. }) if message.contains("out of fuel")),
            "{:?}",
            mixed[1]
        );
        assert_eq!(mixed[2].as_ref().unwrap(), &20);
    });
}

#[test]
fn fuel_used_is_reported_and_the_same_on_every_run() {
    within(LIMIT, || {
        // A process: a fresh worker each time.
        let fuel_of = |x: u64| {
            let p = Process::new(&testkit(), "recurse", &(x,))
                .unwrap()
                .with_limits(Limits::default().fuel(10_000_000));
            p.start().unwrap();
            p.join().unwrap();
            assert_eq!(
                p.result::<u64>().unwrap(),
                x,
                "within its budget it succeeds"
            );
            p.fuel_used().expect("a metered process reports its fuel")
        };
        let small = fuel_of(100);
        assert!(small > 0);
        assert_eq!(fuel_of(100), small, "same task, same input: same fuel");
        assert!(fuel_of(1000) > small, "more work, more fuel");

        // A pool: the same again in a worker that has run other tasks, and a map's total does
        // not depend on how the items were chunked.
        let pool = metered_pool(10_000_000);
        let apply = |x: u64| {
            let r = pool.apply_async::<_, u64>("recurse", &(x,)).unwrap();
            assert_eq!(r.get().unwrap(), x);
            r.fuel_used().expect("a metered pool reports fuel")
        };
        let first = apply(100);
        let _ = pool.map::<u64, u64>("square", 0..100u64).unwrap();
        assert_eq!(apply(100), first, "same fuel in a worker with a history");
        let total = |chunksize: usize| {
            let r = pool
                .map_async::<u64, u64>("recurse", 0..40u64, Some(chunksize))
                .unwrap();
            r.get().unwrap();
            r.fuel_used().unwrap()
        };
        assert_eq!(
            total(1),
            total(7),
            "a map's fuel does not depend on its chunks"
        );

        // Unmetered pools and processes report none.
        let plain = limited_pool(Limits::default());
        let r = plain.apply_async::<_, u64>("square", &(3u64,)).unwrap();
        assert_eq!(r.get().unwrap(), 9);
        assert_eq!(r.fuel_used(), None);
    });
}

#[test]
fn a_fuel_limit_on_a_pool_that_does_not_meter_fuel_is_refused() {
    within(LIMIT, || {
        let plain = limited_pool(Limits::default());
        let metered = plain.with_limits(Limits::default().fuel(1_000));
        let err = metered.apply::<_, u64>("spin", &()).unwrap_err();
        assert!(
            matches!(&err, Error::State(m) if m.contains("fuel limit") && m.contains("meter fuel")),
            "{err:?}"
        );
        assert!(metered.map::<u64, u64>("square", 0..3u64).is_err());
        // The other way round is fine: a metered pool runs a submission without a budget.
        let pool = metered_pool(1_000_000);
        let unlimited = pool.with_limits(Limits::default());
        let r = unlimited
            .apply_async::<_, u64>("recurse", &(10u64,))
            .unwrap();
        assert_eq!(r.get().unwrap(), 10);
        assert!(r.fuel_used().is_some_and(|f| f > 0));
    });
}

#[test]
fn the_cli_meters_fuel() {
    within(LIMIT, || {
        let out = run_cli(&["run", "--fuel", "1000000", "examples/testkit", "spin"]);
        assert_cli_error(
            &out,
            1,
            "task `spin` ran out of fuel: it used its fuel limit of 1000000",
        );
        let used = |out: &std::process::Output| -> u64 {
            let err = stderr(out);
            err.split_whitespace()
                .rev()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no fuel reported: {err:?}"))
        };
        let run = || run_cli(&["run", "--show-fuel", "examples/testkit", "recurse", "50"]);
        let (a, b) = (run(), run());
        assert!(a.status.success(), "{}", stderr(&a));
        assert_eq!(stdout(&a).trim(), "50");
        assert!(
            stderr(&a).contains("task `recurse` used "),
            "{}",
            stderr(&a)
        );
        assert!(used(&a) > 0);
        assert_eq!(used(&a), used(&b), "the same on every run");

        let out = run_cli(&[
            "map",
            "--fuel",
            "1000000",
            "--show-fuel",
            "examples/testkit",
            "square",
            "--range",
            "0..20",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 20);
        assert!(
            stderr(&out).contains("the 20 inputs used "),
            "{}",
            stderr(&out)
        );
        let out = run_cli(&["run", "--fuel", "0", "examples/testkit", "spin"]);
        assert_cli_error(&out, 2, "--fuel must be at least 1");
    });
}
