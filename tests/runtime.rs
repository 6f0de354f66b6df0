//! `Runtime`: several isolated wasmpools in one program. Each has its own objects, limits,
//! start method and workers; a handle of one is refused by another; dropping one ends its
//! workers and fork servers and frees its objects while the others keep running.

use std::path::PathBuf;
use std::time::Duration;

use wasmpool::{ObjectError, Pool, Process, Runtime, StartMethod};

use crate::util::{eventually, pid_alive, root, testkit, within};

const LIMIT: Duration = Duration::from_secs(240);

fn testkit_dir() -> PathBuf {
    root().join("examples").join("testkit")
}

/// A runtime of its own whose workers run the test's `wasmpool` binary.
fn runtime(method: StartMethod) -> Runtime {
    Runtime::builder()
        .start_method(method)
        .worker_exe(env!("CARGO_BIN_EXE_wasmpool"))
        .build()
        .unwrap()
}

/// The parent pid of `pid`, from /proc.
fn ppid_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn two_runtimes_run_pools_side_by_side_each_with_its_own_start_method() {
    within(LIMIT, || {
        // Built first, so the module's artifact is in the default cache for both.
        testkit();
        let exec = runtime(StartMethod::Exec);
        let forked = runtime(StartMethod::ForkServer);
        assert_eq!(exec.start_method(), StartMethod::Exec);
        assert_eq!(forked.start_method(), StartMethod::ForkServer);
        let a = Pool::builder(&exec.load(testkit_dir()).unwrap())
            .processes(2)
            .build()
            .unwrap();
        let b = Pool::builder(&forked.load(testkit_dir()).unwrap())
            .processes(2)
            .build()
            .unwrap();
        let squares: Vec<u64> = a.map("square", 1..=20u64).unwrap();
        assert_eq!(squares, (1..=20u64).map(|n| n * n).collect::<Vec<_>>());
        let squares: Vec<u64> = b.map("square", 1..=20u64).unwrap();
        assert_eq!(squares, (1..=20u64).map(|n| n * n).collect::<Vec<_>>());
        let host = std::process::id();
        // Executed workers are this program's children; forked ones are the children of
        // their runtime's fork server.
        for pid in a.pids() {
            assert_eq!(ppid_of(pid), Some(host), "exec worker {pid}");
        }
        let servers = forked.fork_server_pids();
        assert_eq!(servers.len(), 1, "one fork server for one worker binary");
        for pid in b.pids() {
            assert_eq!(ppid_of(pid), Some(servers[0]), "forked worker {pid}");
        }
        assert!(
            exec.fork_server_pids().is_empty(),
            "an exec runtime starts no fork server"
        );
        // Changing one runtime's start method changes neither the other's nor the global's.
        let global = Runtime::global().start_method();
        exec.set_start_method(StartMethod::ForkServer);
        assert_eq!(forked.start_method(), StartMethod::ForkServer);
        assert_eq!(Runtime::global().start_method(), global);
    });
}

#[test]
fn an_object_of_one_runtime_is_refused_by_another_runtimes_tasks() {
    within(LIMIT, || {
        testkit();
        let ours = runtime(StartMethod::ForkServer);
        let theirs = runtime(StartMethod::ForkServer);
        let queue = theirs.manager().queue::<Option<u64>>();
        let module = ours.load(testkit_dir()).unwrap();

        // A process is refused when it is made: its task could never reach the object.
        let err = Process::new(&module, "queue_produce", &(queue.clone(), 3u64)).unwrap_err();
        assert!(
            matches!(&err, wasmpool::Error::Object(ObjectError::Stale(m)) if m.contains("another wasmpool runtime")),
            "{err}"
        );

        // A pool's task that is handed one fails with the same clear error, and the pool
        // goes on with the next task.
        let pool = Pool::builder(&module).processes(1).build().unwrap();
        let err = pool
            .apply::<_, ()>("queue_produce", &(queue.clone(), 3u64))
            .unwrap_err();
        assert!(
            err.to_string().contains("another wasmpool runtime"),
            "{err}"
        );
        assert_eq!(pool.apply::<_, u64>("square", &(9u64,)).unwrap(), 81);
        assert_eq!(
            queue.qsize().unwrap(),
            0,
            "nothing reached the other runtime's queue"
        );

        // The object's own runtime uses it as ever.
        let mine = theirs.load(testkit_dir()).unwrap();
        let p = Process::new(&mine, "queue_produce", &(queue.clone(), 3u64)).unwrap();
        p.start().unwrap();
        p.join().unwrap();
        assert_eq!(p.exitcode(), Some(0));
        let got: Vec<Option<u64>> = (0..4).map(|_| queue.get().unwrap()).collect();
        assert_eq!(got, [Some(0), Some(1), Some(2), None]);
    });
}

#[test]
fn each_runtime_has_its_own_message_limit() {
    within(LIMIT, || {
        let small = Runtime::builder().max_message_bytes(1024).build().unwrap();
        let large = Runtime::builder().build().unwrap();
        assert_eq!(small.max_message_bytes(), 1024);
        assert_eq!(
            large.max_message_bytes(),
            wasmpool::DEFAULT_MAX_MESSAGE_BYTES
        );
        let text = "x".repeat(4096);
        for q in [
            small.manager().queue::<String>(),
            small.manager().bounded_queue(4),
        ] {
            let err = q.put(&text).unwrap_err();
            assert!(matches!(err, ObjectError::TooLarge(_)), "{err}");
        }
        let d = small.manager().dict::<String, String>();
        assert!(matches!(
            d.set(&"k".to_string(), &text),
            Err(ObjectError::TooLarge(_))
        ));
        let q = large.manager().queue::<String>();
        q.put(&text).unwrap();
        assert_eq!(q.get().unwrap(), text);
        // The limit can change later, for that runtime only.
        small.set_max_message_bytes(8192);
        let q = small.manager().queue::<String>();
        q.put(&text).unwrap();
        assert_eq!(q.get().unwrap(), text);
        assert_eq!(
            large.max_message_bytes(),
            wasmpool::DEFAULT_MAX_MESSAGE_BYTES
        );
    });
}

#[test]
fn each_runtime_counts_its_own_objects_and_processes() {
    within(LIMIT, || {
        testkit();
        let a = runtime(StartMethod::ForkServer);
        let b = runtime(StartMethod::ForkServer);
        let (ma, mb) = (a.manager(), b.manager());
        let _objects = (ma.queue::<u8>(), ma.dict::<u8, u8>(), ma.lock());
        assert_eq!(a.live_objects(), 3);
        assert_eq!(b.live_objects(), 0);
        assert_eq!(mb.live_objects(), 0);
        assert!(
            a.shared_segments() >= 2,
            "the queue, dict and lock live in shared memory"
        );
        assert_eq!(b.shared_segments(), 0);

        let module = b.load(testkit_dir()).unwrap();
        let p = Process::new(&module, "sleep_ms", &(60_000u64,))
            .unwrap()
            .with_daemon(true);
        assert_eq!(
            p.name(),
            "Process-1",
            "each runtime numbers its own processes"
        );
        p.start().unwrap();
        assert_eq!(b.active_children().len(), 1);
        assert!(a.active_children().is_empty());
        assert!(
            wasmpool::active_children()
                .iter()
                .all(|c| c.pid != p.pid().unwrap()),
            "the global runtime does not list another runtime's processes"
        );
        p.terminate();
        p.join().unwrap();
        assert!(b.active_children().is_empty());
    });
}

/// Runs the ignored test `name` alone in a child process of the test binary, so what it
/// counts of this process (descriptors, children) is its own, and fails if it fails.
fn in_own_process(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name} did not run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn dropping_a_runtime_ends_its_workers_and_fork_servers_and_frees_its_objects() {
    within(LIMIT, || {
        in_own_process("runtime::dropped_runtime_body");
    });
}

/// The memfd segments this process holds open, by inode.
fn memfds() -> std::collections::BTreeSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeSet::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with("/memfd:wasmpool")
            && let Ok(meta) = std::fs::metadata(e.path())
        {
            out.insert(meta.ino());
        }
    }
    out
}

#[test]
#[ignore = "run alone in its own process by the test above"]
fn dropped_runtime_body() {
    crate::util::setup();
    let keeper = runtime(StartMethod::ForkServer);
    let kept = Pool::builder(&keeper.load(testkit_dir()).unwrap())
        .processes(1)
        .build()
        .unwrap();
    let kept_queue = keeper.manager().queue::<u64>();
    kept_queue.put(&1).unwrap();
    let before = memfds();

    let doomed = runtime(StartMethod::ForkServer);
    let module = doomed.load(testkit_dir()).unwrap();
    module.set_keep_spare(false);
    let pool = Pool::builder(&module).processes(2).build().unwrap();
    let m = doomed.manager();
    let (queue, dict, lock) = (m.queue::<u64>(), m.dict::<String, u64>(), m.lock());
    queue.put(&7).unwrap();
    dict.set(&"k".into(), &1).unwrap();
    let p = Process::new(&module, "sleep_ms", &(600_000u64,))
        .unwrap()
        .with_daemon(true);
    p.start().unwrap();
    let mut workers = pool.pids();
    workers.push(p.pid().unwrap());
    let servers = doomed.fork_server_pids();
    assert_eq!(servers.len(), 1);
    let segments: Vec<u64> = memfds().difference(&before).copied().collect();
    assert!(
        segments.len() >= 3,
        "the queue, dict and lock hold shared segments"
    );
    assert!(workers.iter().all(|&pid| pid_alive(pid)));

    drop((pool, p, m, module, doomed));

    assert!(
        eventually(Duration::from_secs(20), || {
            workers.iter().chain(&servers).all(|&pid| !pid_alive(pid))
        }),
        "workers or fork server of the dropped runtime still alive: {:?}",
        workers
            .iter()
            .chain(&servers)
            .filter(|&&pid| pid_alive(pid))
            .collect::<Vec<_>>()
    );
    // The last threads that held its broker (those watching its workers) end with them.
    assert!(
        eventually(Duration::from_secs(20), || {
            let left = memfds();
            segments.iter().all(|ino| !left.contains(ino))
        }),
        "shared segments of the dropped runtime are still open"
    );
    // Its handles answer that their runtime is gone, and do not panic.
    for err in [
        queue.put(&8).unwrap_err(),
        dict.get(&"k".into()).unwrap_err(),
        lock.acquire().unwrap_err(),
    ] {
        assert!(
            matches!(&err, ObjectError::Stale(m) if m.contains("dropped")),
            "{err}"
        );
    }
    drop((queue, dict, lock));

    // The other runtime never noticed.
    assert_eq!(kept.apply::<_, u64>("square", &(12u64,)).unwrap(), 144);
    assert_eq!(kept_queue.get().unwrap(), 1);
    assert_eq!(keeper.live_objects(), 1);
}
