//! How workers start: forked from a fork server (the default) or executed afresh.
//!
//! A test binary of its own: the start method is process-wide, and one test kills the fork
//! server, which kills every worker forked from it. The tests here take turns (`SERIAL`).

// A failed unwrap is a failed test, with its location: what a test should do.
#![allow(clippy::unwrap_used)]

mod util;

use std::sync::Mutex;
use std::time::Duration;

use wasmpool::{Error, Module, Pool, Process, Runtime, StartMethod, set_start_method};

use util::{children_of, eventually, kill, pid_alive, testkit, within};

const LIMIT: Duration = Duration::from_secs(120);

/// One test at a time: each may change the start method or kill the fork server.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The parent of `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[1].parse().unwrap()
}

/// The real parent of a new worker of the test guest (warm spares included): read while
/// the worker sleeps, then it is killed.
fn parent_of_a_worker() -> u32 {
    let p = Process::new(&testkit(), "sleep_ms", &(60_000u64,)).unwrap();
    p.start().unwrap();
    let parent = parent_of(p.pid().unwrap());
    p.kill();
    p.join().unwrap();
    parent
}

/// The parent pid a guest is told it has.
fn guest_ppid() -> u32 {
    let p = Process::new(&testkit(), "whoami", &()).unwrap();
    p.start().unwrap();
    p.join().unwrap();
    let (pid, ppid, _) = p.result::<(u32, u32, String)>().unwrap();
    assert_eq!(Some(pid), p.pid());
    ppid
}

#[test]
fn workers_are_forked_from_one_fork_server_and_see_the_host_as_their_parent() {
    let _serial = serial();
    within(LIMIT, || {
        set_start_method(StartMethod::ForkServer);
        let module = testkit();
        module.set_keep_spare(false);
        let sleeper = |ms: u64| {
            let p = Process::new(&module, "sleep_ms", &(ms,)).unwrap();
            p.start().unwrap();
            p
        };
        let (a, b) = (sleeper(3000), sleeper(3000));
        let (pa, pb) = (a.pid().unwrap(), b.pid().unwrap());
        let server = parent_of(pa);
        assert_eq!(parent_of(pb), server, "both forked by the same server");
        assert_ne!(
            server,
            std::process::id(),
            "a worker is not the host's own child"
        );
        assert_eq!(
            parent_of(server),
            std::process::id(),
            "the server is the host's child"
        );
        assert_eq!(parent_of_a_worker(), server);
        // What the guest is told: its parent is the host, as in Python.
        assert_eq!(guest_ppid(), std::process::id());
        a.kill();
        b.kill();
        a.join().unwrap();
        b.join().unwrap();
        // Exit statuses come through the server: minus the signal, as in Python.
        assert_eq!((a.exitcode(), b.exitcode()), (Some(-9), Some(-9)));
    });
}

#[test]
fn a_killed_fork_server_takes_its_workers_and_is_replaced() {
    let _serial = serial();
    within(LIMIT, || {
        set_start_method(StartMethod::ForkServer);
        let module = testkit();
        module.set_keep_spare(false);
        let pool = Pool::new(&module, 2).unwrap();
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares[9], 81);
        let p = Process::new(&module, "sleep_ms", &(60_000u64,)).unwrap();
        p.start().unwrap();
        let worker = p.pid().unwrap();
        let server = parent_of(worker);
        // A warm spare waits, forked from the same server.
        module.set_keep_spare(true);
        module.prepare_spare().unwrap();
        let forked = children_of(server);
        assert!(pool.pids().iter().all(|w| forked.contains(w)));
        assert!(
            forked.len() >= 4,
            "the pool's two workers, the process, the spare"
        );
        kill(server);
        // The running process is lost, not hung; so are the pool's workers.
        p.join().unwrap();
        assert_ne!(p.exitcode(), Some(0));
        match p.result::<()>() {
            Err(Error::WorkerLost { .. }) => {}
            other => panic!("expected a lost worker, got {other:?}"),
        }
        assert!(
            eventually(Duration::from_secs(5), || forked
                .iter()
                .all(|&w| !pid_alive(w))),
            "the server's workers die with it"
        );
        // The next worker comes from a new server (the warm spare died with the old one,
        // and is not handed out), and the pool carries on.
        assert_ne!(parent_of_a_worker(), server);
        assert_ne!(parent_of_a_worker(), server);
        module.set_keep_spare(false);
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares[99], 9801);
    });
}

#[test]
fn the_exec_start_method_runs_workers_as_the_hosts_own_children() {
    let _serial = serial();
    within(LIMIT, || {
        // A forked spare is ready (and a refill may still be on its way); none is handed
        // out once the method has changed.
        set_start_method(StartMethod::ForkServer);
        testkit().prepare_spare().unwrap();
        set_start_method(StartMethod::Exec);
        assert_eq!(parent_of_a_worker(), std::process::id());
        assert_eq!(parent_of_a_worker(), std::process::id());
        assert_eq!(guest_ppid(), std::process::id());
        let pool = Pool::new(&testkit(), 2).unwrap();
        for pid in pool.pids() {
            assert_eq!(parent_of(pid), std::process::id());
        }
        let squares: Vec<u64> = pool.map("square", 0..50u64).unwrap();
        assert_eq!(squares[7], 49);
        drop(pool);
        set_start_method(StartMethod::ForkServer);
    });
}

#[test]
fn a_module_the_fork_server_cannot_load_is_a_clear_error_and_the_server_serves_on() {
    let _serial = serial();
    within(LIMIT, || {
        set_start_method(StartMethod::ForkServer);
        let server = parent_of_a_worker();
        // The test guest plus a custom section of its own: a module (and an artifact) that
        // no other test uses, whose compiled artifact is then damaged.
        let mut bytes = std::fs::read(util::wasm_of("testkit")).unwrap();
        let name = b"wasmpool-start-methods-test";
        bytes.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
        bytes.extend_from_slice(name);
        let damaged = Module::from_bytes(&bytes, "damaged").unwrap();
        damaged.set_keep_spare(false);
        std::fs::write(damaged.artifact(), b"not a compiled module").unwrap();
        let p = Process::new(&damaged, "noop", &()).unwrap();
        let err = p.start().unwrap_err();
        assert!(
            err.to_string().contains("cannot load the compiled module"),
            "{err}"
        );
        assert_eq!(parent_of_a_worker(), server, "the same server serves on");
    });
}

/// The test guest plus a custom section named `tag`: a module (and an artifact) of its own,
/// in `runtime`.
fn distinct_testkit(runtime: &Runtime, tag: &str) -> Module {
    testkit(); // builds the guest, if no test has yet
    let mut bytes = std::fs::read(util::wasm_of("testkit")).unwrap();
    let name = format!("wasmpool-start-methods-{tag}");
    let name = name.as_bytes();
    bytes.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    bytes.extend_from_slice(name);
    let module = runtime.module_from_bytes(&bytes, tag).unwrap();
    module.set_keep_spare(false);
    module
}

/// Whether process `pid` has the file at `path` mapped.
fn maps(pid: u32, path: &std::path::Path) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    maps.contains(path.to_str().unwrap())
}

/// Runs a process of `module`'s `sleep_ms` to its end; the fork server it came from.
fn server_of_a_process(module: &Module) -> u32 {
    let p = Process::new(module, "sleep_ms", &(300u64,)).unwrap();
    p.start().unwrap();
    let server = parent_of(p.pid().unwrap());
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
    server
}

/// A fork server per module: a worker is a copy of its server, so one shared with another
/// module would carry that module's mappings too (a large Python component's page tables,
/// copied at every fork). Servers whose workers have all exited are kept only for the
/// modules used most recently (four), and one with live workers is never stopped.
#[test]
fn each_module_has_a_fork_server_of_its_own_and_idle_ones_are_bounded() {
    let _serial = serial();
    within(LIMIT, || {
        // A runtime of its own: no other test's servers among its own.
        let runtime = Runtime::builder()
            .start_method(StartMethod::ForkServer)
            .worker_exe(env!("CARGO_BIN_EXE_wasmpool"))
            .build()
            .unwrap();
        let modules: Vec<Module> = (0..7)
            .map(|i| distinct_testkit(&runtime, &format!("m{i}")))
            .collect();
        let a = Pool::new(&modules[0], 1).unwrap();
        let b = Pool::new(&modules[1], 1).unwrap();
        let (wa, wb) = (a.pids()[0], b.pids()[0]);
        assert_ne!(parent_of(wa), parent_of(wb), "one server per module");
        assert!(maps(wa, modules[0].artifact()), "a worker maps its module");
        assert!(!maps(wa, modules[1].artifact()), "and not another's");
        assert!(maps(wb, modules[1].artifact()));
        assert!(!maps(wb, modules[0].artifact()));

        // Module 0's server goes idle; then modules 2 to 6 each start one, in turn, and
        // leave it idle. When a fifth idle server would start, the one used least recently
        // stops: 0's when 5's starts, 2's when 6's does.
        let (s0, s1) = (parent_of(wa), parent_of(wb));
        drop(a);
        let servers: Vec<u32> = modules[2..].iter().map(server_of_a_process).collect();
        assert!(
            eventually(Duration::from_secs(5), || !pid_alive(s0)
                && !pid_alive(servers[0])),
            "the idle servers used least recently (modules 0 and 2) were stopped"
        );
        for (i, &server) in servers.iter().enumerate().skip(1) {
            assert!(pid_alive(server), "the server of module {} is kept", i + 2);
        }
        assert!(pid_alive(s1), "a server with a live worker is kept");
        let squares: Vec<u64> = b.map("square", 0..10u64).unwrap();
        assert_eq!(squares[9], 81, "and its worker serves on");
        // Module 0 gets a new server.
        let again = server_of_a_process(&modules[0]);
        assert_ne!(again, s0);
    });
}

/// How many threads of this process have the name `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// A fork server holds its module loaded (a Python component's, ~100 MB), so one that has
/// had no live worker and no fork request for its runtime's idle timeout stops, though no
/// other server starts, and the module's next worker starts a new one; a server with a live
/// pool's workers is never stopped, however long they idle. The runtime's one reaper thread
/// ends with it.
#[test]
fn an_idle_fork_server_stops_after_the_idle_timeout_and_one_with_live_workers_never_does() {
    let _serial = serial();
    within(LIMIT, || {
        let reapers = threads_named("wasmpool-fsidle");
        let runtime = Runtime::builder()
            .start_method(StartMethod::ForkServer)
            .worker_exe(env!("CARGO_BIN_EXE_wasmpool"))
            .fork_server_idle_timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        assert_eq!(runtime.fork_server_idle_timeout(), Duration::from_secs(1));
        let (used, held) = (
            distinct_testkit(&runtime, "idle-used"),
            distinct_testkit(&runtime, "idle-held"),
        );
        let kept = Pool::new(&held, 1).unwrap();
        let held_server = parent_of(kept.pids()[0]);
        let pool = Pool::new(&used, 2).unwrap();
        let squares: Vec<u64> = pool.map("square", 0..10u64).unwrap();
        assert_eq!(squares[9], 81);
        let used_server = parent_of(pool.pids()[0]);
        assert_ne!(used_server, held_server);
        assert_eq!(threads_named("wasmpool-fsidle"), reapers + 1, "one reaper");
        drop(pool);
        assert!(
            eventually(Duration::from_secs(30), || !pid_alive(used_server)),
            "the idle server stopped (two servers only: not the bound on idle ones)"
        );
        assert!(!runtime.fork_server_pids().contains(&used_server));

        // Several idle timeouts later, the server of the live pool runs on, and so does
        // the pool.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            pid_alive(held_server),
            "a server with a live worker is kept"
        );
        assert_eq!(parent_of(kept.pids()[0]), held_server);
        let squares: Vec<u64> = kept.map("square", 0..10u64).unwrap();
        assert_eq!(squares[3], 9);

        // The used module gets a new server, which stops in turn once idle; so does the
        // kept one, once its pool is gone.
        let again = Pool::new(&used, 1).unwrap();
        let new_server = parent_of(again.pids()[0]);
        assert_ne!(new_server, used_server);
        let squares: Vec<u64> = again.map("square", 0..10u64).unwrap();
        assert_eq!(squares[5], 25);
        drop((again, kept));
        assert!(
            eventually(Duration::from_secs(30), || !pid_alive(new_server)
                && !pid_alive(held_server)),
            "both servers stopped once idle"
        );

        // The runtime's end ends its reaper.
        drop((used, held, runtime));
        assert!(
            eventually(Duration::from_secs(10), || threads_named("wasmpool-fsidle")
                == reapers),
            "the reaper ended with its runtime"
        );
    });
}
