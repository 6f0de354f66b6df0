//! What a local pool does, on a cluster: the initializer and `maxtasksperchild`, what a
//! result reports (worker time, fuel, peak memory), captured output, the output modes a
//! host honours, and cancelling queued and running work. Real `redis-server`s, real
//! `wasmpool worker --join` processes, each answer compared with a local pool's.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use wasmpool::cluster::{ClusterManager, ClusterPool};
use wasmpool::{Error, Limits, Output, Pool, PoolBuilder};

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, holds_work, wait_for_hosts};
use crate::util::{TempDir, cli, eventually, pid_alive, testkit, within};

fn on(redis: &RedisServer, builder: PoolBuilder) -> ClusterPool {
    let pool = builder
        .cluster(&redis.url())
        .build()
        .expect("a cluster pool");
    wait_for_hosts(&pool, 1);
    pool
}

fn counters(apply: impl Fn() -> u64) -> Vec<u64> {
    (0..4).map(|_| apply()).collect()
}

#[test]
fn the_initializer_and_maxtasksperchild_work_on_a_cluster_as_locally() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 1);

        // The initializer runs once in the worker, before its first task: `counter` counts
        // it; a fresh worker after every two tasks runs it again.
        let builders = || {
            [
                Pool::builder(&testkit())
                    .processes(1)
                    .initializer("counter", &()),
                Pool::builder(&testkit()).processes(1).maxtasksperchild(2),
                Pool::builder(&testkit())
                    .processes(1)
                    .initializer("counter", &())
                    .maxtasksperchild(2),
            ]
        };
        let expected = [[2, 3, 4, 5], [1, 2, 1, 2], [2, 3, 2, 3]];
        for ((remote, local), want) in builders().into_iter().zip(builders()).zip(expected) {
            let pool = on(&redis, remote);
            let here = local.build().unwrap();
            let got = counters(|| pool.apply::<_, u64>("counter", &()).unwrap());
            assert_eq!(got, want);
            assert_eq!(
                got,
                counters(|| here.apply::<_, u64>("counter", &()).unwrap()),
                "as locally"
            );
        }

        // A map chunk is one task: two chunks of four on one worker, the third on its
        // replacement.
        let pool = on(&redis, Pool::builder(&testkit()).maxtasksperchild(2));
        let pids: Vec<u32> = pool.map_chunked("pid_after", vec![0u64; 12], 4).unwrap();
        assert!(pids[..8].iter().all(|p| *p == pids[0]), "{pids:?}");
        assert!(pids[8..].iter().all(|p| *p == pids[8]), "{pids:?}");
        assert_ne!(pids[0], pids[8], "replaced after two tasks: {pids:?}");

        // A pool without either still shares nothing with them: its own workers.
        let plain = on(&redis, Pool::builder(&testkit()));
        assert_eq!(plain.apply::<_, u64>("counter", &()).unwrap(), 1);

        // A failing initializer fails the work with the local error.
        let broken = || {
            Pool::builder(&testkit())
                .processes(1)
                .initializer("fail", &("no config",))
        };
        let remote = on(&redis, broken())
            .apply::<_, u64>("square", &(2u64,))
            .unwrap_err();
        let here = broken()
            .build()
            .unwrap()
            .apply::<_, u64>("square", &(2u64,))
            .unwrap_err();
        assert!(matches!(remote, Error::State(_)), "{remote:?}");
        assert_eq!(remote.to_string(), here.to_string());
        assert!(remote.to_string().contains("no config"), "{remote}");

        // Refused before anything goes to Redis, as locally.
        let e = Pool::builder(&testkit())
            .maxtasksperchild(0)
            .cluster(&redis.url())
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("maxtasksperchild"), "{e}");
        let e = Pool::builder(&testkit())
            .initializer("no_such_task", &())
            .cluster(&redis.url())
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::UnknownTask { .. }), "{e:?}");
    });
}

#[test]
fn a_host_lets_go_a_pool_whose_initializer_failed_so_the_next_chunk_gets_a_fresh_one() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let m = ClusterManager::connect(&redis.url()).unwrap();
        // The initializer fails until the event is set.
        let ready = m.event().unwrap();
        let pool = on(
            &redis,
            Pool::builder(&testkit())
                .processes(1)
                .initializer("fail_unless_set", &(ready.clone(),)),
        );
        let e = pool.apply::<_, u64>("square", &(3u64,)).unwrap_err();
        assert!(e.to_string().contains("not ready yet"), "{e}");
        // Ready now: the host's next chunk of this setup runs in a new pool, whose
        // initializer passes, not in the broken one.
        ready.set().unwrap();
        assert_eq!(
            pool.apply::<_, u64>("square", &(3u64,))
                .unwrap_or_else(|e| panic!(
                    "after the initializer's failure: {e}; host: {}",
                    host.log()
                )),
            9
        );
        assert_eq!(pool.map::<_, u64>("square", 0..10u64).unwrap().len(), 10);
    });
}

#[test]
fn a_host_keeps_at_most_eight_local_pools_counting_one_let_go_that_still_runs() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let m = ClusterManager::connect(&redis.url()).unwrap();
        // Ten worker setups (one worker each, never replaced here): ten local pools.
        let pools: Vec<ClusterPool> = (0..10)
            .map(|i| on(&redis, Pool::builder(&testkit()).maxtasksperchild(1000 + i)))
            .collect();
        let pid_of = |p: &ClusterPool| p.apply::<_, u32>("pid_after", &(0u64,)).unwrap();
        // The first pool's worker is kept busy, holding a lock.
        let busy = pid_of(&pools[0]);
        let (lock, held) = (m.lock().unwrap(), m.event().unwrap());
        let _long = pools[0]
            .apply_async::<_, ()>("hold_lock", &(lock, held.clone(), 120_000u64))
            .unwrap();
        assert!(held.wait_timeout(Some(Duration::from_secs(60))).unwrap());
        // Nine more setups, one after another: the host lets idle pools go, never the
        // busy one, and the busy one counts against the bound of eight.
        let mut pids = vec![busy];
        pids.extend(pools[1..].iter().map(pid_of));
        at_most_eight_alive(&pids, &host);
        assert!(pid_alive(busy), "the busy pool was let go");
        // The pools let go come back (new workers) when their work does.
        assert_ne!(pid_of(&pools[1]), pids[1]);
    });
}

/// Waits until at most eight of the pools' workers `pids` are alive (the host's bound).
fn at_most_eight_alive(pids: &[u32], host: &WorkerHost) {
    assert!(
        eventually(Duration::from_secs(20), || pids
            .iter()
            .filter(|p| pid_alive(**p))
            .count()
            <= 8),
        "more than eight pools' workers alive: {:?}; host: {}",
        pids.iter().map(|p| (*p, pid_alive(*p))).collect::<Vec<_>>(),
        host.log()
    );
}

/// Ten setups at once (each host setup thread takes one): the seats of setups still running
/// count, so the host still keeps at most eight local pools.
#[test]
fn setups_at_once_keep_the_bound_of_eight_local_pools() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let pools: Vec<ClusterPool> = (0..10)
            .map(|i| on(&redis, Pool::builder(&testkit()).maxtasksperchild(2000 + i)))
            .collect();
        let asked: Vec<_> = pools
            .iter()
            .map(|p| p.apply_async::<_, u32>("pid_after", &(0u64,)).unwrap())
            .collect();
        let pids: Vec<u32> = asked
            .into_iter()
            .map(|r| r.get_timeout(Duration::from_secs(120)).unwrap())
            .collect();
        at_most_eight_alive(&pids, &host);
    });
}

/// A module that takes long to set up (a Python component, compiled into the host's empty
/// cache) does not hold up another module's new pool: its setup runs on another of the
/// host's setup threads, and its result comes while the first is still compiling. (The
/// other module is compiled into the cache first, by a pool of another setup: its new pool
/// then takes its seat and loads it in a moment, rather than racing the Python compile
/// for the CPUs with a compile of its own.)
#[test]
fn a_slow_setup_does_not_hold_up_another_modules_new_pool() {
    within(Duration::from_secs(600), || {
        let redis = RedisServer::start();
        let python = crate::python_guests::py_hello();
        let host = WorkerHost::start_with_empty_cache(&redis, 2);
        let warm = on(&redis, Pool::builder(&testkit()).maxtasksperchild(1_000));
        assert_eq!(warm.apply::<_, u64>("square", &(2u64,)).unwrap(), 4);
        let slow = on(&redis, Pool::builder(&python));
        wait_for_hosts(&slow, 1);
        let first = slow.apply_async::<_, u64>("square", &(7u64,)).unwrap();
        // Claimed (so its setup began) before the other module's chunk is submitted.
        assert!(
            eventually(Duration::from_secs(30), || crate::cluster::int_reply(
                &redis,
                "XPENDING {wasmpool}:v3:tasks hosts"
            ) == 1),
            "the host did not claim the Python chunk: {}",
            host.log()
        );
        let quick = on(&redis, Pool::builder(&testkit()));
        let got = quick
            .apply_async::<_, u64>("square", &(3u64,))
            .unwrap()
            .get_timeout(Duration::from_secs(300));
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}; {}", host.log())), 9);
        assert!(
            !first.ready(),
            "the other module's result waited for the Python module's setup: {}",
            host.log()
        );
        assert_eq!(first.get_timeout(Duration::from_secs(300)).unwrap(), 49);
    });
}

#[test]
fn a_cluster_result_reports_worker_time_fuel_and_peak_memory_as_locally() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 2);
        let pool = on(&redis, Pool::builder(&testkit()));

        let r = pool.apply_async::<_, u64>("alloc_mib", &(40u64,)).unwrap();
        assert_eq!(r.get().unwrap(), 40 << 20);
        assert!(r.peak_memory() >= 40 << 20, "{}", r.peak_memory());
        assert_eq!(r.fuel_used(), None, "not metered");

        let r = pool.apply_async::<_, u64>("sleep_ms", &(300u64,)).unwrap();
        r.get().unwrap();
        assert!(
            r.worker_time() >= Duration::from_millis(300),
            "{:?}",
            r.worker_time()
        );

        // A map: the sum of its chunks' worker time, the largest peak.
        let m = pool
            .map_async::<_, u64>("sleep_ms", vec![100u64; 6], Some(2))
            .unwrap();
        m.get().unwrap();
        assert!(
            m.worker_time() >= Duration::from_millis(600),
            "{:?}",
            m.worker_time()
        );
        assert!(m.peak_memory() > 0);

        // Fuel, on a metered pool: the same count as locally, for the same task and args.
        let metered = || Pool::builder(&testkit()).limits(Limits::default().fuel(1 << 40));
        let remote = on(&redis, metered());
        let here = metered().build().unwrap();
        // (A pure task: what an allocating one costs depends on what its instance did
        // before, and which worker runs it.)
        for x in [12u64, 1 << 20] {
            let a = remote.apply_async::<_, u64>("square", &(x,)).unwrap();
            let b = here.apply_async::<_, u64>("square", &(x,)).unwrap();
            assert_eq!(a.get().unwrap(), b.get().unwrap());
            assert!(a.fuel_used().is_some_and(|f| f > 0), "{:?}", a.fuel_used());
            assert_eq!(a.fuel_used(), b.fuel_used(), "square({x})");
        }
        let m = remote
            .map_async::<_, u64>("square", 0..10u64, Some(3))
            .unwrap();
        let n = here
            .map_async::<_, u64>("square", 0..10u64, Some(3))
            .unwrap();
        assert_eq!(m.get().unwrap(), n.get().unwrap());
        assert_eq!(m.fuel_used(), n.fuel_used());
    });
}

/// A `wasmpool worker --join` whose stdout is kept in a file, killed when dropped.
struct HostWithStdout {
    child: Child,
    dir: TempDir,
}

impl HostWithStdout {
    fn start(redis: &RedisServer) -> HostWithStdout {
        let dir = TempDir::new("host-out");
        let child = cli()
            .args(["worker", "--join", &redis.url(), "--slots", "1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("stdout")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start wasmpool worker");
        HostWithStdout { child, dir }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stdout")).unwrap_or_default()
    }
}

impl Drop for HostWithStdout {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn captured_output_comes_back_with_a_cluster_result_and_the_host_writes_the_rest() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = HostWithStdout::start(&redis);

        // Captured: what the local pool keeps, bounded by the output limit as locally.
        let pool = on(&redis, Pool::builder(&testkit()).output(Output::Discard));
        let here = Pool::builder(&testkit())
            .processes(1)
            .output(Output::Discard)
            .build()
            .unwrap();
        let r = pool
            .with_captured_output()
            .apply_async::<_, u32>("tick", &(3u32, 0u64))
            .unwrap();
        assert_eq!(r.get().unwrap(), 3);
        let l = here
            .with_captured_output()
            .apply_async::<_, u32>("tick", &(3u32, 0u64))
            .unwrap();
        l.get().unwrap();
        assert_eq!(r.captured_output(), l.captured_output());
        assert_eq!(r.captured_output().stdout, b"tick 0\ntick 1\ntick 2\n");
        let m = pool
            .with_captured_output()
            .map_async::<_, u64>("sleep_ms", [0u64], None)
            .unwrap();
        m.get().unwrap();
        assert_eq!(m.captured_output(), Default::default(), "nothing printed");
        let uncaptured = pool.apply_async::<_, u32>("tick", &(2u32, 0u64)).unwrap();
        uncaptured.get().unwrap();
        assert_eq!(uncaptured.captured_output(), Default::default());

        let limit = Limits::default().output_bytes(10_000);
        let r = pool
            .with_captured_output()
            .with_limits(limit)
            .apply_async::<_, u64>("print_mib", &(1u64,))
            .unwrap();
        let l = here
            .with_captured_output()
            .with_limits(limit)
            .apply_async::<_, u64>("print_mib", &(1u64,))
            .unwrap();
        let (re, le) = (r.get().unwrap_err(), l.get().unwrap_err());
        assert!(matches!(re, Error::Limit { .. }), "{re:?}");
        assert_eq!(re.to_string(), le.to_string());
        let kept = r.captured_output().stdout.len();
        assert!(kept > 0 && kept <= 10_000, "{kept}");
        // Discarded on the host: nothing of it in its stdout.
        assert!(!host.stdout().contains("tick"), "{}", host.stdout());

        // Inherit (the default): the host's stdout, as the guest wrote it; Tagged: tagged.
        let plain = on(&redis, Pool::builder(&testkit()));
        plain.apply::<_, u32>("tick", &(1u32, 0u64)).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || host
                .stdout()
                .lines()
                .any(|l| l == "tick 0")),
            "{}",
            host.stdout()
        );
        let tagged = on(&redis, Pool::builder(&testkit()).output(Output::Tagged));
        tagged.apply::<_, u32>("tick", &(2u32, 0u64)).unwrap();
        assert!(
            eventually(Duration::from_secs(10), || host
                .stdout()
                .lines()
                .any(|l| l.starts_with('[') && l.ends_with(" tick] tick 1"))),
            "{}",
            host.stdout()
        );

        // What a host cannot honour is refused, with what to use instead.
        for output in [
            Output::Capture,
            Output::Callback(std::sync::Arc::new(|_: wasmpool::OutputEvent<'_>| {})),
        ] {
            let e = Pool::builder(&testkit())
                .output(output)
                .cluster(&redis.url())
                .build()
                .unwrap_err();
            assert!(e.to_string().contains("with_captured_output"), "{e}");
        }
    });
}

#[test]
fn cancelling_a_running_cluster_task_stops_it_on_its_host() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let pool = on(&redis, Pool::builder(&testkit()));

        // Longer than the test's limit: only the stop frees the host's one slot in time.
        let r = pool
            .apply_async::<_, u64>("sleep_ms", &(600_000u64,))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || holds_work(&redis, host.pid())),
            "the host never claimed it"
        );
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        assert!(r.cancel());
        assert!(!r.cancel(), "cancelled once");
        let e = r.get().unwrap_err();
        let local = Pool::new(&testkit(), 1).unwrap();
        let l = local
            .apply_async::<_, u64>("sleep_ms", &(60_000u64,))
            .unwrap();
        assert!(l.cancel());
        assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
        assert_eq!(e.to_string(), l.get().unwrap_err().to_string());

        // The host's one slot is free again (without the stop this waits ten minutes).
        assert_eq!(pool.apply::<_, u64>("square", &(9u64,)).unwrap(), 81);
        eprintln!(
            "cancel to the next result on the freed slot: {:?}",
            started.elapsed()
        );
        assert!(
            eventually(Duration::from_secs(10), || host
                .log()
                .contains("was cancelled; stopping it")),
            "{}",
            host.log()
        );
        let s = pool.stats().unwrap();
        assert_eq!(s.dropped, 0, "a cancelled result is not a late one: {s:?}");
    });
}

/// A pool on `redis` that waits for no host (none may have joined), its manager, and a
/// dict of it.
fn hostless_pool_and_dict(
    redis: &RedisServer,
) -> (ClusterPool, ClusterManager, wasmpool::Dict<String, i64>) {
    let pool = Pool::builder(&testkit())
        .cluster(&redis.url())
        .build()
        .unwrap();
    let m = pool.manager().unwrap();
    let d = m.dict::<String, i64>().unwrap();
    (pool, m, d)
}

/// `terminate` on a cluster pool fails what is pending at once, and none of it runs
/// afterwards: its entries waiting in Redis are deleted, so a host that joins later never
/// runs them (as Python's `terminate` ends the workers that would have).
#[test]
fn terminated_cluster_work_still_queued_never_runs() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        // No host yet: the work waits in Redis when the pool is terminated.
        let (pool, _m, d) = hostless_pool_and_dict(&redis);
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                pool.apply_async::<_, ()>("atomic_increments", &(d.clone(), 1u64))
                    .unwrap()
            })
            .collect();
        let queued = || crate::cluster::int_reply(&redis, "XLEN {wasmpool}:v3:tasks");
        assert!(eventually(Duration::from_secs(10), || queued() == 3));
        pool.terminate();
        for r in &waiting {
            let e = r.get().unwrap_err();
            assert!(e.to_string().contains("terminated"), "{e}");
        }
        assert!(
            eventually(Duration::from_secs(10), || queued() == 0),
            "the terminated work is still queued"
        );
        let _host = WorkerHost::start(&redis, 1);
        let after = on(&redis, Pool::builder(&testkit()));
        after
            .apply::<_, ()>("atomic_increments", &(d.clone(), 1u64))
            .unwrap();
        let count = d.get(&"count".to_string()).unwrap();
        assert_eq!(count, Some(1), "only the work not terminated ran");
    });
}

#[test]
fn cancelled_cluster_work_still_queued_never_runs() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        // No host yet: the work waits in Redis, and is cancelled there.
        let (pool, m, d) = hostless_pool_and_dict(&redis);
        let count = || d.get(&"count".to_string()).unwrap().unwrap_or(0);
        let increments = |n: usize| -> Vec<_> {
            (0..n)
                .map(|_| {
                    pool.apply_async::<_, ()>("atomic_increments", &(d.clone(), 1u64))
                        .unwrap()
                })
                .collect()
        };
        let waiting = increments(3);
        let map = pool
            .map_async::<_, ()>(
                "atomic_increments",
                (0..3).map(|_| (d.clone(), 1u64)),
                Some(1),
            )
            .unwrap();
        // Sent (their entries are in the stream) before they are cancelled.
        assert!(
            eventually(Duration::from_secs(10), || redis
                .command("XLEN {wasmpool}:v3:tasks")
                .trim()
                == ":6"),
            "{}",
            redis.command("XLEN {wasmpool}:v3:tasks")
        );
        for r in &waiting {
            assert!(r.cancel());
            assert!(matches!(r.get(), Err(Error::Cancelled { .. })));
        }
        assert!(map.cancel());
        assert!(matches!(map.get(), Err(Error::Cancelled { .. })));
        let host = WorkerHost::start(&redis, 1);
        wait_for_hosts(&pool, 1);
        pool.apply::<_, ()>("atomic_increments", &(d.clone(), 1u64))
            .unwrap();
        assert_eq!(count(), 1, "only the work not cancelled ran");

        // Held by the host, queued behind a task on its one slot: cancelled there. (A task
        // its pool has not timed yet: a short one's chunks are sent ahead to a busy
        // worker, which may start one before the kill that follows its answer, locally
        // too.)
        let filled = m.dict::<String, u64>().unwrap();
        let blocker = pool
            .apply_async::<_, u64>("sleep_ms", &(3_000u64,))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || holds_work(&redis, host.pid())),
            "the host never claimed it"
        );
        let held: Vec<_> = (0..4)
            .map(|i| {
                pool.apply_async::<_, u64>(
                    "dict_fill",
                    &(filled.clone(), format!("held{i}-"), 1u64),
                )
                .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for r in &held {
            assert!(r.cancel());
        }
        assert_eq!(blocker.get().unwrap(), 3_000, "the running task goes on");
        let after: u64 = pool
            .apply("dict_fill", &(filled.clone(), "after-", 1u64))
            .unwrap();
        assert_eq!(
            after,
            1,
            "only the work not cancelled ran: {:?}",
            filled.keys()
        );
        assert_eq!(count(), 1);
        let s = pool.stats().unwrap();
        assert_eq!((s.dropped, s.redelivered), (0, 0), "{s:?}");
        assert!(
            eventually(Duration::from_secs(10), || redis
                .command("XLEN {wasmpool}:v3:tasks")
                .trim()
                == ":0"),
            "entries left: {}",
            redis.command("XRANGE {wasmpool}:v3:tasks - +")
        );
    });
}
