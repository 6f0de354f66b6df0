//! Tenants on a cluster: each tenant's pools submit to a task stream of its own, which
//! hosts joined with `--tenant T` or `--all-tenants` serve (real `redis-server`, real
//! `wasmpool worker --join` processes, real signals).

use std::time::Duration;

use wasmpool::cluster::ClusterPool;
use wasmpool::{Error, Pool};

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, cluster_pool, holds_work_on, int_reply, wait_for_hosts};
use crate::util::{assert_cli_error, cli, eventually, testkit, within};

fn tenant_pool(redis: &RedisServer, tenant: &str, retries: u32) -> ClusterPool {
    Pool::builder(&testkit())
        .retries(retries)
        .cluster(&redis.url())
        .tenant(tenant)
        .build()
        .expect("a tenant's cluster pool")
}

/// Whether the host with this pid has read from the task stream `stream` (it is a consumer
/// of the stream's group).
fn reads(redis: &RedisServer, stream: &str, pid: u32) -> bool {
    redis
        .command(&format!("XINFO CONSUMERS {stream} hosts"))
        .contains(&format!(":{pid}:"))
}

#[test]
fn a_tenant_host_claims_only_its_tenants_work_and_a_plain_host_only_untenanted_work() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let plain = WorkerHost::start(&redis, 1);
        let of_a = WorkerHost::start_with(&redis, 1, &["--tenant", "a"]);
        let untenanted = cluster_pool(&redis, 0);
        let a = tenant_pool(&redis, "a", 0);
        assert_eq!(a.tenant(), Some("a"));
        wait_for_hosts(&a, 2);
        // The host registers its lease before it prints its first line, so the line may
        // come a moment after the pool sees the host.
        assert!(
            eventually(Duration::from_secs(10), || of_a
                .log()
                .contains("serving tenant a")),
            "its first line says what it serves: {}",
            of_a.log()
        );

        let squares: Vec<u64> = a.map_chunked("square", 0..400u64, 5).unwrap();
        assert_eq!(squares, (0..400u64).map(|x| x * x).collect::<Vec<_>>());
        let sums: Vec<i64> = untenanted
            .starmap("add", (0..50i64).map(|i| (i, 1)))
            .unwrap();
        assert_eq!(sums, (1..51i64).collect::<Vec<_>>());
        assert_eq!(a.apply::<_, i64>("add", &(2, 3)).unwrap(), 5);

        // Each host read only its own stream.
        let (tasks, tasks_a) = ("{wasmpool}:v3:tasks", "{wasmpool}:v3:tasks:a");
        assert!(reads(&redis, tasks_a, of_a.pid()));
        assert!(
            !reads(&redis, tasks_a, plain.pid()),
            "a plain host took a's work"
        );
        assert!(reads(&redis, tasks, plain.pid()));
        assert!(
            !reads(&redis, tasks, of_a.pid()),
            "a's host took untenanted work"
        );
        assert!(
            redis
                .command("SMEMBERS {wasmpool}:v3:tenants")
                .contains("a")
        );

        // A tenant no host serves waits, as an untenanted pool with no host does, and runs
        // once a host that serves it joins.
        let b = tenant_pool(&redis, "b", 0);
        let r = b.apply_async::<_, u64>("square", &(9u64,)).unwrap();
        assert!(matches!(
            r.get_timeout(Duration::from_secs(2)),
            Err(Error::Timeout(_))
        ));
        let _of_b = WorkerHost::start_with(&redis, 1, &["--tenant", "b"]);
        assert_eq!(r.get().unwrap(), 81);
    });
}

#[test]
fn tenant_names_and_flags_are_checked_with_a_clear_error() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        for bad in ["", "a b", "a:b", "t*", &"x".repeat(65)] {
            let e = Pool::builder(&testkit())
                .cluster(&redis.url())
                .tenant(bad)
                .build()
                .unwrap_err();
            assert!(e.to_string().contains("not a tenant name"), "{bad:?}: {e}");
        }
        let out = cli()
            .args(["worker", "--join", &redis.url(), "--tenant", "a:b"])
            .output()
            .unwrap();
        assert_cli_error(&out, 2, "not a tenant name");
        let out = cli()
            .args(["worker", "--join", &redis.url(), "--tenant", "a"])
            .arg("--all-tenants")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--all-tenants"),
            "{out:?}"
        );
        let e = wasmpool::cluster::Host::builder(&redis.url())
            .slots(1)
            .tenant("a")
            .all_tenants()
            .join()
            .unwrap_err();
        assert!(e.to_string().contains("not both"), "{e}");
    });
}

#[test]
fn an_all_tenants_host_takes_turns_so_a_tenants_backlog_does_not_starve_another() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start_with(&redis, 1, &["--all-tenants"]);
        let a = tenant_pool(&redis, "a", 0);
        let b = tenant_pool(&redis, "b", 0);
        let untenanted = cluster_pool(&redis, 0);
        wait_for_hosts(&a, 1);

        // Tenant a queues a backlog of 200 chunks of 30 ms for a host with one slot.
        let backlog: Vec<u64> = vec![30; 200];
        let flood = a
            .map_async::<_, u64>("sleep_ms", backlog.clone(), Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work_on(
                &redis,
                "{wasmpool}:v3:tasks:a",
                host.pid()
            )),
            "the host claimed none of a's backlog: {}",
            host.log()
        );
        // Tenant b's few tasks, and an untenanted pool's, are served in turn with it.
        let few: Vec<_> = (0..3u64)
            .map(|i| b.apply_async::<_, u64>("square", &(i,)).unwrap())
            .collect();
        let plain = untenanted
            .apply_async::<_, u64>("square", &(7u64,))
            .unwrap();
        for (i, r) in few.iter().enumerate() {
            assert_eq!(r.get().unwrap(), (i * i) as u64);
        }
        assert_eq!(plain.get().unwrap(), 49);
        assert!(
            !flood.ready(),
            "b's tasks waited for a's whole backlog to drain"
        );
        assert_eq!(flood.get().unwrap(), backlog);
    });
}

/// Queues a backlog of `sleep_ms` chunks for each of two tenants, `(tenant, chunks, ms)`,
/// before any host claims, then starts one `--all-tenants` host with one slot: answers how
/// many of the second's were done when the first's were all done, and the host's log. Every
/// result is checked.
fn second_done_when_first_is(
    redis: &RedisServer,
    first: (&str, usize, u64),
    second: (&str, usize, u64),
) -> (usize, String) {
    let backlog = |(tenant, n, ms): (&str, usize, u64)| {
        let pool = tenant_pool(redis, tenant, 0);
        let work: Vec<_> = (0..n)
            .map(|_| pool.apply_async::<_, u64>("sleep_ms", &(ms,)).unwrap())
            .collect();
        (pool, work, ms)
    };
    let (_a, first_work, first_ms) = backlog(first);
    let (_b, second_work, second_ms) = backlog(second);
    let host = WorkerHost::start_with(redis, 1, &["--all-tenants"]);
    for r in &first_work {
        r.wait();
    }
    let done = second_work.iter().filter(|r| r.ready()).count();
    let log = host.log();
    for (work, ms) in [(first_work, first_ms), (second_work, second_ms)] {
        for r in work {
            assert_eq!(r.get().unwrap(), ms);
        }
    }
    (done, log)
}

#[test]
fn an_all_tenants_host_shares_its_claims_by_the_tenants_weights() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        wasmpool::cluster::set_tenant_weight(&redis.url(), "heavy", 3).unwrap();
        let err = wasmpool::cluster::set_tenant_weight(&redis.url(), "heavy", 0).unwrap_err();
        assert!(err.to_string().contains("weight is from 1"), "{err}");
        // 60 chunks of 20 ms each.
        let (light_done, log) =
            second_done_when_first_is(&redis, ("heavy", 60, 20), ("light", 60, 20));
        // Taken in turn, about 60 of light's would be done by then; by weight, about 20.
        assert!(
            (5..=40).contains(&light_done),
            "when heavy (weight 3) was done, light (weight 1) had {light_done} of 60 done: {log}"
        );
    });
}

/// Weighted turns share a host's worker time, not its chunks: a tenant of weight 2 whose
/// chunks are ten times as long as another's (weight 1) gets twice its time, not twenty
/// times (as by chunks: two of its chunks for one of the other's).
#[test]
fn an_all_tenants_host_shares_its_workers_time_by_the_tenants_weights() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        wasmpool::cluster::set_tenant_weight(&redis.url(), "long", 2).unwrap();
        // 20 chunks of 100 ms, 150 of 10 ms.
        let (short_done, log) =
            second_done_when_first_is(&redis, ("long", 20, 100), ("short", 150, 10));
        // By time, long's 2 s are two thirds: short had 1 s, about 100 of its chunks. By
        // chunks, two of long's for one of short's: about 10.
        assert!(
            short_done >= 50,
            "when long (weight 2, 100 ms chunks) was done, short (weight 1, 10 ms chunks) had \
             {short_done} of 150 done: {log}"
        );
    });
}

/// Tenants of equal weights (none set, the default) share a host's worker time equally, not
/// its chunks: a tenant whose chunks are ten times as long as another's gets as much time,
/// not ten times as much (as by chunks, taken in turn).
#[test]
fn an_all_tenants_host_shares_its_workers_time_equally_between_tenants_of_equal_weights() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        // 10 chunks of 100 ms, 200 of 10 ms.
        let (short_done, log) =
            second_done_when_first_is(&redis, ("long", 10, 100), ("short", 200, 10));
        // By time, long's 1 s is half: short had about 1 s too, about 100 of its chunks. By
        // chunks, one of long's for one of short's: about 10. Nor did short take the host:
        // long was served meanwhile, not after all of short's.
        assert!(
            (40..=170).contains(&short_done),
            "when long (100 ms chunks) was done, short (10 ms chunks, the same weight) had \
             {short_done} of 200 done: {log}"
        );
    });
}

/// A pool of tenant `tenant` whose workers are set up apart from every other's (each
/// `maxtasksperchild` is a setup of its own, so a local pool of its own on a host).
fn tenant_pool_set_up(redis: &RedisServer, tenant: &str, maxtasksperchild: u64) -> ClusterPool {
    Pool::builder(&testkit())
        .maxtasksperchild(maxtasksperchild)
        .cluster(&redis.url())
        .tenant(tenant)
        .build()
        .expect("a tenant's cluster pool")
}

#[test]
fn a_host_whose_pool_setup_for_one_tenants_backlog_waits_still_runs_another_tenants_chunks() {
    within(Duration::from_secs(300), || {
        let redis = RedisServer::start();
        // Five slots: room for ten chunks at once (two per slot).
        let host = WorkerHost::start_with(&redis, 5, &["--all-tenants"]);
        let b = tenant_pool(&redis, "b", 0);
        wait_for_hosts(&b, 1);
        // Tenant b's local pool is set up on the host.
        assert_eq!(b.apply::<_, u64>("square", &(3u64,)).unwrap(), 9);

        // A chunk of b's that runs until cancelled, and seven more setups each with one:
        // the host's eight local pools all run chunks (b's with four slots free), and
        // eight of its ten places are taken.
        let mut long = vec![b.apply_async::<_, u64>("sleep_ms", &(600_000u64,)).unwrap()];
        let busy: Vec<ClusterPool> = (1..=7)
            .map(|n| tenant_pool_set_up(&redis, "busy", n))
            .collect();
        long.extend(
            busy.iter()
                .map(|p| p.apply_async::<_, u64>("sleep_ms", &(600_000u64,)).unwrap()),
        );
        let held = || int_reply(&redis, "XPENDING {wasmpool}:v3:tasks:busy hosts");
        assert!(
            eventually(Duration::from_secs(120), || held() == 7),
            "the host did not claim the seven long chunks ({} held): {}",
            held(),
            host.log()
        );
        // A backlog of tenant a's chunks needs a ninth setup: they wait for a seat (up to
        // 30 s); each counts its run.
        let a = tenant_pool_set_up(&redis, "a", 100);
        let runs = a.manager().unwrap().dict::<String, i64>().unwrap();
        let backlog: Vec<_> = (0..6)
            .map(|_| {
                a.apply_async::<_, ()>("atomic_increments", &(runs.clone(), 1u64))
                    .unwrap()
            })
            .collect();
        assert!(
            eventually(Duration::from_secs(20), || holds_work_on(
                &redis,
                "{wasmpool}:v3:tasks:a",
                host.pid()
            )),
            "the host never claimed a's chunks: {}",
            host.log()
        );

        // b's chunk, for a pool the host has, is claimed and run meanwhile: a's setup waits
        // off the claim thread, and a's chunks waiting for it do not take the host's last
        // places. Before any of a's chunks ran (they run only once their pool is set up).
        let b_again = b.apply_async::<_, u64>("square", &(4u64,)).unwrap();
        assert_eq!(b_again.get().unwrap(), 16);
        assert_eq!(
            runs.get(&"count".to_string()).unwrap(),
            None,
            "b's chunk waited for a's setup: {}",
            host.log()
        );
        let pending_a = int_reply(&redis, "XPENDING {wasmpool}:v3:tasks:a hosts");
        assert!(
            (1..6).contains(&pending_a),
            "the host held {pending_a} of a's six waiting chunks: {}",
            host.log()
        );

        // The long chunks cancelled, a's pool gets a seat and its chunks run.
        for r in &long {
            assert!(r.cancel());
        }
        for r in backlog {
            r.get().unwrap();
        }
        assert_eq!(runs.get(&"count".to_string()).unwrap(), Some(6));
    });
}

#[test]
fn a_host_killed_on_a_tenant_stream_has_its_chunks_redelivered() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let pool = tenant_pool(&redis, "t", 1);
        let a = WorkerHost::start_with(&redis, 2, &["--tenant", "t"]);
        wait_for_hosts(&pool, 1);
        let items: Vec<u64> = (0..16u64).map(|i| 300 + i).collect();
        let result = pool
            .map_async::<_, u64>("sleep_ms", items.clone(), Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work_on(
                &redis,
                "{wasmpool}:v3:tasks:t",
                a.pid()
            )),
            "host A claimed nothing: {}",
            a.log()
        );
        let b = WorkerHost::start_with(&redis, 2, &["--all-tenants"]);
        a.signal(libc::SIGKILL);
        // Bounded: a reaper that missed the tenant's stream would leave A's chunks there.
        assert_eq!(result.get_timeout(Duration::from_secs(60)).unwrap(), items);
        // A's chunks came back on the tenant's redelivery stream, and B claimed them there
        // (a consumer of a group is made when it is first given an entry).
        assert!(
            reads(&redis, "{wasmpool}:v3:redo:t", b.pid()),
            "B claimed nothing from the tenant's redelivery stream"
        );
        assert!(!reads(&redis, "{wasmpool}:v3:redo", b.pid()));
        let s = pool.stats().unwrap();
        assert!(s.redelivered >= 1, "A's chunks were redelivered: {s:?}");
        assert_eq!(s.committed, items.len() as u64, "each chunk once: {s:?}");
        assert_eq!(s.lost, 0, "{s:?}");
    });
}

/// Every key of the layout, sorted.
/// The reaper's turn and sweep marks: they come and go with the beats of the processes still
/// running (the host here), and expire within 5 s of the last.
const REAPER_MARKS: [&str; 2] = ["{wasmpool}:v3:reaping", "{wasmpool}:v3:swept"];

/// Every key in Redis, but the [`REAPER_MARKS`].
fn all_keys(redis: &RedisServer) -> Vec<String> {
    let mut keys = redis.keys("*");
    keys.retain(|k| !REAPER_MARKS.contains(&k.as_str()));
    keys.sort();
    keys
}

/// After the pools of two tenants are finished and dropped, and the TTLs the cluster uses
/// have passed (a result TTL of a second here; a tenant's lease on its streams), Redis
/// holds the keys it held before them: neither tenant leaves its task stream, its
/// redelivery stream, or any key of its pools.
#[test]
fn the_key_count_returns_to_the_baseline_after_two_tenants_pools_are_dropped() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start_with(&redis, 2, &["--all-tenants"]);
        let pool = |tenant: Option<&str>| {
            let b = Pool::builder(&testkit())
                .cluster(&redis.url())
                .result_ttl(Duration::from_secs(1));
            match tenant {
                Some(t) => b.tenant(t),
                None => b,
            }
            .build()
            .expect("a cluster pool")
        };
        // A warm-up with an untenanted pool: the module's key, the counters, the host's.
        let warm = pool(None);
        wait_for_hosts(&warm, 1);
        assert_eq!(warm.map::<_, u64>("square", 0..10u64).unwrap()[9], 81);
        drop(warm);
        std::thread::sleep(Duration::from_millis(1500));
        let baseline = all_keys(&redis);
        for tenant in ["alice", "bob"] {
            let p = pool(Some(tenant));
            let squares: Vec<u64> = p.map("square", 0..20u64).unwrap();
            assert_eq!(squares[19], 361);
            assert_eq!(p.apply::<_, i64>("add", &(2, 3)).unwrap(), 5);
            p.close();
            p.join().unwrap();
        }
        assert!(
            redis.keys("{wasmpool}:v3:tasks:*").len() == 2,
            "{:?}",
            all_keys(&redis)
        );
        let back = eventually(Duration::from_secs(60), || all_keys(&redis) == baseline);
        let now = all_keys(&redis);
        assert!(
            back,
            "left: {:?}; gone: {:?}",
            now.iter()
                .filter(|k| !baseline.contains(k))
                .collect::<Vec<_>>(),
            baseline
                .iter()
                .filter(|k| !now.contains(k))
                .collect::<Vec<_>>()
        );
        let marks = int_reply(&redis, &format!("EXISTS {}", REAPER_MARKS.join(" ")));
        assert_eq!(
            int_reply(&redis, "DBSIZE") - marks,
            i64::try_from(baseline.len()).unwrap()
        );
    });
}

/// A host serving every tenant does not make again the streams of a tenant the reaper
/// removed (as it removes those nothing renews, once they are empty), even while it claims
/// another tenant's work without pause: were it to, they would be left where nobody
/// removes them (the tenant is no longer in `tenants`).
#[test]
fn an_all_tenants_host_does_not_make_again_the_streams_of_a_removed_tenant() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start_with(&redis, 1, &["--all-tenants"]);
        let busy = tenant_pool(&redis, "busy", 0);
        wait_for_hosts(&busy, 1);
        for round in 0..3 {
            let tenant = format!("gone{round}");
            let tasks = format!("{{wasmpool}}:v3:tasks:{tenant}");
            let p = tenant_pool(&redis, &tenant, 0);
            assert_eq!(p.apply::<_, i64>("add", &(2, 3)).unwrap(), 5);
            assert!(eventually(Duration::from_secs(10), || reads(
                &redis,
                &tasks,
                host.pid()
            )));
            drop(p);
            // The host claims one short task after another, reading every stream.
            let work = busy
                .map_async::<_, u64>("sleep_ms", vec![10u64; 200], Some(1))
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            // What the reaper does (in one step) once the tenant's lease has expired, while
            // the host still reads the streams.
            let redo = format!("{{wasmpool}}:v3:redo:{tenant}");
            redis.command(&format!("SREM {{wasmpool}}:v3:tenants {tenant}"));
            redis.command(&format!(
                "DEL {tasks} {redo} {{wasmpool}}:v3:tenant:{tenant}"
            ));
            assert_eq!(work.get().unwrap().len(), 200);
            let left = redis.keys(&format!("*{tenant}*"));
            assert!(left.is_empty(), "made again: {left:?}");
        }
    });
}

/// Calls of `XINFO CONSUMERS` Redis has answered (the reaper's read of a stream's hosts).
fn xinfo_calls(redis: &RedisServer) -> u64 {
    redis
        .command("INFO commandstats")
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_xinfo|consumers:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every process beats and asks for a reaper's pass, but one pass runs per beat, whichever
/// process's it is: four submitting pools cost Redis no more reaper work than one (each
/// pass reads the untenanted task and redelivery streams' consumers: 2 `XINFO CONSUMERS`).
#[test]
fn one_reaper_pass_runs_per_beat_whatever_the_number_of_processes() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let pools: Vec<_> = (0..4).map(|_| cluster_pool(&redis, 0)).collect();
        let start = xinfo_calls(&redis);
        assert!(
            eventually(Duration::from_secs(30), || xinfo_calls(&redis) > start),
            "the reaper never ran"
        );
        // Past the lease it takes a pool to judge others: all four ask every beat.
        std::thread::sleep(Duration::from_secs(4));
        let before = xinfo_calls(&redis);
        std::thread::sleep(Duration::from_secs(4));
        let calls = xinfo_calls(&redis) - before;
        assert!(calls > 0, "the reaper stopped");
        // Eight beats: ~16 reads (at most 9 turns), where every pool's own passes would
        // make ~64.
        assert!(
            calls <= 2 * 10,
            "{calls} XINFO CONSUMERS in 4 s from 4 pools"
        );
        drop(pools);
    });
}

/// With no host dead, the reaper reads the tenants' streams on a sweep every few seconds,
/// not at every beat (every process runs it twice a second, and with many tenants that
/// read was most of Redis's work); a chunk pending with a consumer that no host entry names
/// any more is still taken back, by a sweep.
#[test]
fn with_no_host_dead_the_reaper_reads_idle_tenants_streams_only_on_its_sweeps() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let tenants = 50;
        for t in 0..tenants {
            redis.command(&format!("SADD {{wasmpool}}:v3:tenants t{t}"));
            for kind in ["tasks", "redo"] {
                redis.command(&format!(
                    "XGROUP CREATE {{wasmpool}}:v3:{kind}:t{t} hosts 0 MKSTREAM"
                ));
            }
            redis.command(&format!("SET {{wasmpool}}:v3:tenant:t{t} 1 EX 600"));
        }
        // A chunk of tenant t0 claimed by a consumer no host entry names.
        redis.command("XADD {wasmpool}:v3:tasks:t0 * j ghostjob c 0 a 0 r 1 n 3 t 60000 p x");
        redis.command("XREADGROUP GROUP hosts ghost COUNT 1 STREAMS {wasmpool}:v3:tasks:t0 >");
        // A submitting pool: its beat runs the reaper (once it may judge others).
        let pool = cluster_pool(&redis, 0);
        let start = xinfo_calls(&redis);
        assert!(
            eventually(Duration::from_secs(30), || xinfo_calls(&redis) > start),
            "the reaper never ran"
        );
        assert!(
            eventually(Duration::from_secs(30), || int_reply(
                &redis,
                "XLEN {wasmpool}:v3:redo:t0"
            ) == 1),
            "the ghost's chunk was not redelivered"
        );
        // Eight beats, at most two sweeps: 2 reads a beat for the untenanted streams, and
        // 2 a tenant on a sweep (every beat: 102 a beat, ~800).
        let before = xinfo_calls(&redis);
        std::thread::sleep(Duration::from_secs(4));
        let calls = xinfo_calls(&redis) - before;
        assert!(calls > 0, "the reaper stopped");
        assert!(
            calls < 3 * (2 * tenants + 2),
            "{calls} XINFO CONSUMERS in 4 s with {tenants} idle tenants and no host dead"
        );
        drop(pool);
    });
}
