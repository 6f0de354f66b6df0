//! Hardening of the command line and the pool's options: every count and limit is bounded,
//! out-of-range values are refused by name with their bounds (exit 2, one line), never
//! clamped and never a panic; a refused pool starts no worker.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use wasmpool::{Error, Executor, Limits, Pool, Process};

use crate::util::*;

/// A worker executable that notes each start in `marker`, then runs the real one: any
/// worker or fork server the CLI starts leaves a line there.
fn recording_worker_exe(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let marker = dir.0.join("starts");
    let script = dir.file(
        "worker.sh",
        format!(
            "#!/bin/sh\necho started >> '{}'\nexec '{}' \"$@\"\n",
            marker.display(),
            env!("CARGO_BIN_EXE_wasmpool")
        )
        .as_bytes(),
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, marker)
}

fn starts(marker: &std::path::Path) -> usize {
    std::fs::read_to_string(marker)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn j_beyond_the_cap_is_refused_before_any_worker_starts() {
    testkit();
    let wasm = wasm_of("testkit");
    let wasm = wasm.to_str().unwrap().to_string();
    within(Duration::from_secs(120), move || {
        let dir = TempDir::new("jcap");
        let (exe, marker) = recording_worker_exe(&dir);
        let map = |j: &str| {
            cli()
                .env("WASMPOOL_WORKER_EXE", &exe)
                .args(["map", &wasm, "square", "--range", "0..3", "-j", j])
                .output()
                .unwrap()
        };
        // The recording works: a pool of one starts its worker through the script.
        let out = map("1");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 3);
        assert!(
            starts(&marker) >= 1,
            "the recording executable was not used"
        );
        std::fs::remove_file(&marker).unwrap();

        for (j, needle) in [
            (
                "100000",
                "-j 100000: the number of worker processes must be from 1 to 1024",
            ),
            (
                "1025",
                "-j 1025: the number of worker processes must be from 1 to 1024",
            ),
            (
                "0",
                "-j 0: the number of worker processes must be from 1 to 1024",
            ),
            ("18446744073709551616", "'18446744073709551616'"),
        ] {
            let out = map(j);
            assert_cli_error(&out, 2, needle);
            assert_eq!(starts(&marker), 0, "-j {j} started a worker process");
        }
    });
}

#[test]
fn pool_builder_refuses_zero_and_too_many_processes() {
    let module = testkit();
    within(Duration::from_secs(60), move || {
        let refused = |r: wasmpool::Result<Pool>| match r {
            Err(Error::State(message)) => message,
            Err(e) => panic!("expected a State error, got {e}"),
            Ok(_) => panic!("the pool was built"),
        };
        let zero = refused(Pool::builder(&module).processes(0).build());
        assert_eq!(zero, "Number of processes must be at least 1");
        for n in [Pool::MAX_PROCESSES + 1, 100_000, usize::MAX] {
            let message = refused(Pool::builder(&module).processes(n).build());
            assert!(
                message.contains(&format!(
                    "a pool of {n} processes is more than the limit of 1024"
                )),
                "{message}"
            );
        }
        assert_eq!(Pool::MAX_PROCESSES, 1024);
        let message = refused(
            Pool::builder(&module)
                .processes(1)
                .maxtasksperchild(0)
                .build(),
        );
        assert!(
            message.contains("maxtasksperchild must be at least 1"),
            "{message}"
        );
        let message = refused(Pool::builder(&module).processes(1).restart_limit(0).build());
        assert!(
            message.contains("restart limit must be at least 1"),
            "{message}"
        );
        let message = refused(
            Pool::builder(&module)
                .processes(1)
                .limits(Limits::default().memory_mib(5000))
                .build(),
        );
        assert!(message.contains("5000 MiB"), "{message}");
        assert!(message.contains("at most 4096 MiB"), "{message}");

        for n in [0, Pool::MAX_PROCESSES + 1] {
            match Executor::new(&module, n) {
                Err(Error::State(_)) => {}
                Err(e) => panic!("expected a State error, got {e}"),
                Ok(_) => panic!("an executor of {n} workers was built"),
            }
        }
    });
}

#[test]
fn chunk_sizes_out_of_range_are_refused_not_clamped() {
    let module = testkit();
    within(Duration::from_secs(60), move || {
        let pool = Pool::new(&module, 1).unwrap();
        let state = |e: Error| match e {
            Error::State(m) => m,
            e => panic!("expected a State error, got {e}"),
        };
        let e = state(
            pool.map_chunked::<_, u64>("square", 0..3u64, 0)
                .unwrap_err(),
        );
        assert_eq!(e, "Chunksize must be 1+, not 0");
        let e = state(
            pool.imap_chunked::<_, u64>("square", 0..3u64, 0)
                .unwrap_err(),
        );
        assert_eq!(e, "Chunksize must be 1+, not 0");
        let e = state(
            pool.imap_unordered::<_, u64>("square", 0..3u64, 0)
                .unwrap_err(),
        );
        assert_eq!(e, "Chunksize must be 1+, not 0");
        // Before the cap, this one asked for a buffer of usize::MAX items and panicked.
        for n in [Pool::MAX_CHUNKSIZE + 1, usize::MAX] {
            let e = state(
                pool.imap_chunked::<_, u64>("square", 0..3u64, n)
                    .unwrap_err(),
            );
            assert!(
                e.contains(&format!("a chunk size of {n} items is more than")),
                "{e}"
            );
            let e = state(
                pool.map_async::<_, u64>("square", 0..3u64, Some(n))
                    .unwrap_err(),
            );
            assert!(e.contains("Pool::MAX_CHUNKSIZE"), "{e}");
        }
        // The largest allowed size works.
        let out: Vec<u64> = pool
            .map_chunked("square", 0..3u64, Pool::MAX_CHUNKSIZE)
            .unwrap();
        assert_eq!(out, vec![0, 1, 4]);
        let out: Vec<u64> = pool
            .imap_chunked("square", 0..3u64, Pool::MAX_CHUNKSIZE)
            .unwrap()
            .collect::<wasmpool::Result<_>>()
            .unwrap();
        assert_eq!(out, vec![0, 1, 4]);
    });
}

#[test]
fn limits_beyond_what_can_be_enforced_are_refused() {
    let module = testkit();
    within(Duration::from_secs(60), move || {
        assert!(Limits::default().memory_mib(4096).check().is_ok());
        let e = Limits::default().memory_mib(4097).check().unwrap_err();
        assert!(
            e.contains("4097 MiB is more than a wasm32 instance can address"),
            "{e}"
        );
        let e = Limits::default().memory_mib(u64::MAX).check().unwrap_err();
        assert!(e.contains("at most 4096 MiB"), "{e}");
        assert!(
            Limits::default()
                .timeout(Limits::MAX_TIMEOUT)
                .check()
                .is_ok()
        );
        let too_long = Limits::MAX_TIMEOUT + Duration::from_secs(1);
        let e = Limits::default().timeout(too_long).check().unwrap_err();
        assert!(e.contains("at most 31536000s"), "{e}");
        // A timeout this long overflowed the worker's deadline (an `Instant` sum) before.
        let e = Limits::default()
            .timeout(Duration::MAX)
            .check()
            .unwrap_err();
        assert!(e.contains("too long"), "{e}");
        let e = Limits::default()
            .timeout(Duration::ZERO)
            .check()
            .unwrap_err();
        assert!(e.contains("time limit of zero"), "{e}");

        // Every way in checks them before anything runs.
        let big = Limits::default().memory_mib(5000);
        let pool = Pool::new(&module, 1).unwrap();
        match pool.with_limits(big).apply::<_, u64>("square", &(3u64,)) {
            Err(Error::State(m)) => assert!(m.contains("5000 MiB"), "{m}"),
            other => panic!("expected a State error, got {other:?}"),
        }
        let p = Process::new(&module, "square", &(3u64,))
            .unwrap()
            .with_limits(big);
        match p.start() {
            Err(Error::State(m)) => assert!(m.contains("5000 MiB"), "{m}"),
            other => panic!("expected a State error, got {other:?}"),
        }
    });
}

#[test]
fn every_numeric_flag_out_of_range_is_one_clear_line() {
    testkit();
    let run = |flags: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["examples/testkit", "square", "3"]);
        run_cli(&args)
    };
    let map = |flags: &[&str]| {
        let mut args = vec!["map", "examples/testkit", "square", "--range", "0..3"];
        args.extend_from_slice(flags);
        run_cli(&args)
    };
    let huge = "18446744073709551616"; // u64::MAX + 1
    let max = "18446744073709551615"; // u64::MAX
    for (out, needle) in [
        (
            run(&["--memory", "5000"]),
            "--memory 5000: the memory limit must be from 1 to 4096 MiB",
        ),
        (
            run(&["--memory", "4097"]),
            "--memory 4097: the memory limit must be from 1 to 4096 MiB",
        ),
        (run(&["--memory", "0"]), "--memory 0: the memory limit"),
        (run(&["--memory", max]), "--memory 18446744073709551615:"),
        (
            run(&["--memory", huge]),
            "invalid value '18446744073709551616' for '--memory",
        ),
        (
            run(&["--memory", "-1"]),
            "invalid value '-1' for '--memory <MIB>'",
        ),
        (
            run(&["--max-stack", "-64"]),
            "invalid value '-64' for '--max-stack <KIB>'",
        ),
        (
            map(&["-j", "-1"]),
            "invalid value '-1' for '--workers <WORKERS>'",
        ),
        (
            map(&["--chunksize", "-1"]),
            "invalid value '-1' for '--chunksize <CHUNKSIZE>'",
        ),
        (
            run(&["--max-output", max]),
            "--max-output 18446744073709551615: too large",
        ),
        (
            run(&["--max-stack", max]),
            "--max-stack 18446744073709551615: a stack limit",
        ),
        (
            run(&["--max-stack", "65537"]),
            "must be from 64 to 65536 KiB",
        ),
        (
            run(&["--timeout", "1e300"]),
            "--timeout 1e300: the time limit must be",
        ),
        (run(&["--timeout", "31536001"]), "at most 31536000 seconds"),
        (
            run(&["--timeout", "-1"]),
            "--timeout -1.0: the time limit must be",
        ),
        (
            run(&["--timeout", "NaN"]),
            "--timeout NaN: the time limit must be",
        ),
        (
            run(&["--timeout", "inf"]),
            "--timeout inf: the time limit must be",
        ),
        (run(&["--fuel", huge]), "for '--fuel <N>'"),
        (
            map(&["--chunksize", "0"]),
            "--chunksize 0: the inputs sent to a worker",
        ),
        (map(&["--chunksize", max]), "must be from 1 to 1048576"),
        (
            map(&["--chunksize", "1048577"]),
            "must be from 1 to 1048576",
        ),
        (map(&["--retries", "4294967296"]), "for '--retries <N>'"),
        (
            map(&["--restart-limit", "0"]),
            "--restart-limit must be at least 1",
        ),
        (
            map(&["--restart-limit", "4294967296"]),
            "for '--restart-limit <N>'",
        ),
        (
            run_cli(&[
                "map",
                "examples/testkit",
                "square",
                "--range",
                &format!("0..{huge}"),
            ]),
            "--range end `18446744073709551616` is not an integer",
        ),
        (
            run_cli(&[
                "run",
                "--object",
                "s=semaphore:4294967296",
                "examples/testkit",
                "noop",
            ]),
            "`4294967296` is not a count",
        ),
    ] {
        assert_cli_error(&out, 2, needle);
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
    // The bounds themselves are accepted.
    for flags in [
        &["--memory", "4096"][..],
        &["--timeout", "31536000"],
        &["--max-output", "17592186044415"],
        &["--fuel", max],
        &["--max-stack", "65536"],
    ] {
        let out = run(flags);
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "9", "{flags:?}");
    }
    let out = map(&["--chunksize", "1048576", "--restart-limit", "4294967295"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 3);
}

#[test]
fn a_range_spanning_all_of_i64_streams_from_its_start() {
    seeds();
    within(Duration::from_secs(120), || {
        let mut child = cli()
            .args([
                "map",
                "examples/seeds",
                "job",
                "--range",
                "-9223372036854775808..9223372036854775807",
                "-j",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for i in 0..3i64 {
            let line = lines.next().expect("a result line").unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let x = i64::MIN + i;
            assert_eq!(v["input"], x, "{line}");
            // `job` squares in wrapping arithmetic (a release guest).
            assert_eq!(v["result"], x.wrapping_mul(x), "{line}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!err.contains("panicked"), "{err}");

        // A negative start, given as the next argument (not mistaken for a flag).
        let out = run_cli(&["map", "examples/seeds", "job", "--range", "-3..-1"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "{\"input\":-3,\"result\":9}\n{\"input\":-2,\"result\":4}\n"
        );

        // And the top end, to the last item before i64::MAX.
        let out = run_cli(&[
            "map",
            "examples/seeds",
            "job",
            "--range",
            "9223372036854775805..9223372036854775807",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let inputs: Vec<i64> = stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["input"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(inputs, vec![i64::MAX - 2, i64::MAX - 1]);
    });
}

/// Runs the CLI with `args` inside a new pids cgroup (v1) allowing `max` tasks, so that
/// forks and thread spawns fail; `None` where such a cgroup cannot be made (not root, no
/// pids controller). The CLI is killed if it has not exited within a minute.
fn run_cli_with_pids_max(max: u32, args: &[&str]) -> Option<std::process::Output> {
    let group = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/pids/wasmpool-test-{}-{max}",
        std::process::id()
    ));
    std::fs::create_dir(&group).ok()?;
    if std::fs::write(group.join("pids.max"), max.to_string()).is_err() {
        let _ = std::fs::remove_dir(&group);
        return None;
    }
    let script = format!(
        "echo $$ > '{}' && exec '{}' \"$@\"",
        group.join("cgroup.procs").display(),
        env!("CARGO_BIN_EXE_wasmpool")
    );
    let mut child = std::process::Command::new("/bin/sh")
        .current_dir(root())
        .args(["-c", &script, "wasmpool"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir(&group);
            panic!("the CLI hangs when it cannot start threads or processes");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    // Removable once every process in it is gone (workers die with their host).
    let _ = eventually(Duration::from_secs(10), || {
        std::fs::remove_dir(&group).is_ok()
    });
    Some(out)
}

/// In a pids cgroup too small for the workers asked for, the pool fails to build with one
/// clear line (a thread that cannot be spawned is an error, not a panic) and nothing hangs.
#[test]
fn a_host_out_of_threads_and_processes_gets_an_error_not_a_panic() {
    testkit();
    let wasm = wasm_of("testkit");
    let wasm = wasm.to_str().unwrap().to_string();
    within(Duration::from_secs(300), move || {
        for max in [16, 24, 40] {
            let args = ["map", &wasm, "square", "--range", "0..100", "-j", "64"];
            let Some(out) = run_cli_with_pids_max(max, &args) else {
                eprintln!("no pids cgroup to be made here: nothing to test");
                return;
            };
            assert_cli_error(&out, 2, "worker process");
            assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        }
    });
}
