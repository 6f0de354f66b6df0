//! A pool's work on many hosts through Redis: real `redis-server`s started here (loopback,
//! persistence off), real `wasmpool worker --join` processes, real signals.

pub(crate) mod redis;

use std::process::{Child, Stdio};
use std::time::Duration;

use wasmpool::cluster::{ClusterPool, ClusterStats};
use wasmpool::{Error, Pool};

use self::redis::RedisServer;
use crate::util::{TempDir, cli, eventually, testkit, within};

/// A `wasmpool worker --join` process, killed when dropped.
pub(crate) struct WorkerHost {
    child: Child,
    _dir: TempDir,
    log: std::path::PathBuf,
}

impl WorkerHost {
    pub(crate) fn start(redis: &RedisServer, slots: usize) -> WorkerHost {
        WorkerHost::start_with(redis, slots, &[])
    }

    /// As [`start`](WorkerHost::start), with more flags (`--tenant T`, `--all-tenants`).
    pub(crate) fn start_with(redis: &RedisServer, slots: usize, extra: &[&str]) -> WorkerHost {
        WorkerHost::join(&redis.url(), slots, extra)
    }

    /// As [`start_with`](WorkerHost::start_with), joined to `url` (a user's, say).
    pub(crate) fn join(url: &str, slots: usize, extra: &[&str]) -> WorkerHost {
        WorkerHost::spawn(url, slots, extra, false)
    }

    /// As [`start`](WorkerHost::start), with a compile cache of its own, empty: each
    /// module it sets up a pool for is compiled there, as on a new machine.
    pub(crate) fn start_with_empty_cache(redis: &RedisServer, slots: usize) -> WorkerHost {
        WorkerHost::spawn(&redis.url(), slots, &[], true)
    }

    fn spawn(url: &str, slots: usize, extra: &[&str], own_cache: bool) -> WorkerHost {
        let dir = TempDir::new("host");
        let log = dir.0.join("stderr");
        let mut cmd = cli();
        if own_cache {
            cmd.env("WASMPOOL_CACHE_DIR", dir.0.join("cache"));
        }
        let child = cmd
            .args(["worker", "--join", url, "--slots", &slots.to_string()])
            .args(extra)
            .env("WASMPOOL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start wasmpool worker");
        WorkerHost {
            child,
            _dir: dir,
            log,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: a signal to a child process of this test.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits until it has joined, set up whole (its `joined` line): its lease shows earlier,
    /// while it still sets up, so a test that stops Redis right after `wait_for_hosts` could
    /// make its join fail.
    pub(crate) fn wait_joined(&self) {
        assert!(
            eventually(Duration::from_secs(30), || self.log().contains(" joined ")),
            "the host did not join: {}",
            self.log()
        );
    }

    /// What it wrote to stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerHost {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn cluster_pool(redis: &RedisServer, retries: u32) -> ClusterPool {
    Pool::builder(&testkit())
        .retries(retries)
        .cluster(&redis.url())
        .build()
        .expect("a cluster pool")
}

/// Waits until `n` hosts hold a current lease.
pub(crate) fn wait_for_hosts(pool: &ClusterPool, n: usize) {
    assert!(
        eventually(Duration::from_secs(30), || pool
            .hosts()
            .is_ok_and(|h| h.len() >= n)),
        "{n} hosts did not join: {:?}",
        pool.hosts()
    );
}

/// The task stream of untenanted pools, and its redelivery stream (where the reaper puts a
/// dead host's chunks; hosts read it first).
pub(crate) const TASKS: &str = "{wasmpool}:v3:tasks";
pub(crate) const REDO: &str = "{wasmpool}:v3:redo";

/// Whether the host with this pid holds a claimed entry of an untenanted pool (the consumer
/// group's summary of pending entries lists it, on the task stream or on its redelivery
/// stream).
pub(crate) fn holds_work(redis: &RedisServer, pid: u32) -> bool {
    holds_work_on(redis, TASKS, pid) || holds_work_on(redis, REDO, pid)
}

/// As [`holds_work`], on the one stream `stream` (a tenant's: `{wasmpool}:v3:tasks:T`, its
/// redelivery stream `{wasmpool}:v3:redo:T`).
pub(crate) fn holds_work_on(redis: &RedisServer, stream: &str, pid: u32) -> bool {
    redis
        .command(&format!("XPENDING {stream} hosts"))
        .contains(&format!(":{pid}:"))
}

/// The integer a command answers (`-1` when it answers something else).
pub(crate) fn int_reply(redis: &RedisServer, command: &str) -> i64 {
    let reply = redis.command(command);
    // An integer (`:N`), or the first element of an array (`*4`, then `:N`).
    reply
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(':'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1)
}

/// The attempts of the entries of `stream` that the host with this pid holds (from the
/// replies' text: `XPENDING`'s consumer names, then each entry's `a` field).
fn attempts_held(redis: &RedisServer, stream: &str, pid: u32) -> Vec<u32> {
    let pending = redis.command(&format!("XPENDING {stream} hosts - + 100"));
    let lines: Vec<&str> = pending.lines().map(|l| l.trim_end_matches('\r')).collect();
    // Each entry: *4, $len, id, $len, consumer, :idle, :deliveries.
    let ids: Vec<&str> = (2..lines.len())
        .filter(|&i| lines[i].contains(&format!(":{pid}:")) && !lines[i].starts_with(':'))
        .map(|i| lines[i - 2])
        .collect();
    ids.iter()
        .filter_map(|id| {
            let entry = redis.command(&format!("XRANGE {stream} {id} {id}"));
            let fields: Vec<&str> = entry.lines().map(|l| l.trim_end_matches('\r')).collect();
            // Field names and values alternate, each after its `$len` line.
            let at = fields.iter().position(|l| *l == "a")?;
            fields.get(at + 2)?.parse().ok()
        })
        .collect()
}

/// How many entries of `stream` no host has claimed yet (entries are deleted when
/// committed: what is left is claimed or waiting).
fn unclaimed(redis: &RedisServer, stream: &str) -> i64 {
    let len = int_reply(redis, &format!("XLEN {stream}"));
    let pending = int_reply(redis, &format!("XPENDING {stream} hosts"));
    len - pending
}

fn stats(pool: &ClusterPool) -> ClusterStats {
    pool.stats().expect("stats")
}

#[test]
fn cluster_map_on_two_hosts_returns_every_result_in_order() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let (a, b) = (WorkerHost::start(&redis, 2), WorkerHost::start(&redis, 2));
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 2);

        let squares: Vec<u64> = pool.map("square", 0..20_000u64).unwrap();
        assert_eq!(squares, (0..20_000u64).map(|x| x * x).collect::<Vec<_>>());
        let small: Vec<u64> = pool.map_chunked("square", 0..300u64, 7).unwrap();
        assert_eq!(small, (0..300u64).map(|x| x * x).collect::<Vec<_>>());
        let sums: Vec<i64> = pool.starmap("add", (0..100i64).map(|i| (i, 1000))).unwrap();
        assert_eq!(sums, (0..100i64).map(|i| i + 1000).collect::<Vec<_>>());
        let pending: Vec<_> = (0..20i64)
            .map(|i| pool.apply_async::<_, i64>("add", &(i, i)).unwrap())
            .collect();
        for (i, r) in pending.iter().enumerate() {
            assert_eq!(r.get().unwrap(), 2 * i as i64);
        }
        let it: Vec<u64> = pool
            .imap_chunked::<_, u64>("square", 0..500u64, 9)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(it, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
        let mut unordered: Vec<u64> = pool
            .imap_unordered::<_, u64>("square", 0..100u64, 3)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        unordered.sort();
        assert_eq!(unordered, (0..100u64).map(|x| x * x).collect::<Vec<_>>());

        // Both hosts ran some of it, and each chunk was committed once.
        let s = stats(&pool);
        assert_eq!((s.dropped, s.redelivered, s.lost), (0, 0, 0), "{s:?}");
        assert!(s.committed > 0);
        // Results and jobs' records expire: no key is left without a TTL.
        for key in ["{wasmpool}:v3:job:", "{wasmpool}:v3:results:"] {
            let keys = redis.command(&format!("KEYS {key}*"));
            for name in keys
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| l.starts_with(key))
            {
                let ttl = redis.command(&format!("PTTL {name}"));
                let ms: i64 = ttl.trim().trim_start_matches(':').parse().unwrap_or(-9);
                assert!(ms > 0, "{name} has no TTL ({ttl:?})");
            }
        }
        pool.close();
        pool.join().unwrap();
        assert!(
            pool.map::<u64, u64>("square", [1]).is_err(),
            "a closed pool takes no work"
        );
        drop((a, b));
    });
}

#[test]
fn a_task_error_on_a_cluster_is_the_error_it_is_locally() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start(&redis, 1);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let local = Pool::new(&testkit(), 1).unwrap();

        let remote = pool.apply::<_, u64>("fail", &("no good",)).unwrap_err();
        let here = local.apply::<_, u64>("fail", &("no good",)).unwrap_err();
        assert!(matches!(remote, Error::Task { .. }), "{remote:?}");
        assert_eq!(remote.to_string(), here.to_string());

        let remote = pool
            .map::<_, u64>("square_or_panic", [1u64, 2, 13, 4])
            .unwrap_err();
        let here = local
            .map::<_, u64>("square_or_panic", [1u64, 2, 13, 4])
            .unwrap_err();
        assert_eq!(remote.to_string(), here.to_string());

        let unknown = pool.apply::<_, u64>("no_such_task", &()).unwrap_err();
        assert!(matches!(unknown, Error::UnknownTask { .. }), "{unknown:?}");
    });
}

#[test]
fn a_host_killed_mid_map_has_its_chunks_redelivered_and_every_result_arrives_in_order() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let pool = cluster_pool(&redis, 1);
        let a = WorkerHost::start(&redis, 2);
        wait_for_hosts(&pool, 1);
        let items: Vec<u64> = (0..16u64).map(|i| 300 + i).collect();
        let result = pool
            .map_async::<_, u64>("sleep_ms", items.clone(), Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work(&redis, a.pid())),
            "host A claimed nothing: {}",
            a.log()
        );
        let b = WorkerHost::start(&redis, 2);
        a.signal(libc::SIGKILL);
        assert_eq!(result.get().unwrap(), items);
        let s = stats(&pool);
        assert!(s.redelivered >= 1, "A's chunks were redelivered: {s:?}");
        assert_eq!(
            s.committed,
            items.len() as u64,
            "each chunk committed once: {s:?}"
        );
        assert_eq!(s.lost, 0, "{s:?}");
        drop(b);
    });
}

#[test]
fn a_dead_hosts_chunks_are_claimed_again_ahead_of_the_backlog() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let pool = cluster_pool(&redis, 2);
        let (a, b) = (WorkerHost::start(&redis, 1), WorkerHost::start(&redis, 1));
        wait_for_hosts(&pool, 2);
        // A backlog: far more chunks than the two one-slot hosts hold at once (two each).
        let backlog = 300;
        let _result = pool
            .map_async::<_, u64>("sleep_ms", vec![400u64; backlog], Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work(&redis, a.pid())
                && holds_work(&redis, b.pid())),
            "the hosts claimed nothing: A: {}; B: {}",
            a.log(),
            b.log()
        );
        a.signal(libc::SIGKILL);
        // A's chunks are redelivered on the redelivery stream, and B claims them the next
        // time it has room: while most of the backlog still waits, unclaimed, in the task
        // stream (B alone needs two minutes for it).
        let many = backlog as i64 * 5 / 6;
        let waiting = loop {
            if holds_work_on(&redis, REDO, b.pid()) {
                break unclaimed(&redis, TASKS);
            }
            let left = unclaimed(&redis, TASKS);
            assert!(
                left >= many,
                "the backlog ran down to {left} chunks before B claimed A's again: {:?}; \
                 redo: {}",
                stats(&pool),
                redis.command(&format!("XLEN {REDO}"))
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            waiting >= many,
            "B claimed A's chunks again only once the backlog was down to {waiting}"
        );
        // B dies too, holding what it claimed again: the reaper takes it from the
        // redelivery stream and adds it there again (attempt 2), and C claims it, still
        // ahead of the backlog.
        b.signal(libc::SIGKILL);
        let c = WorkerHost::start(&redis, 1);
        let waiting = loop {
            if attempts_held(&redis, REDO, c.pid()).iter().any(|&a| a >= 2) {
                break unclaimed(&redis, TASKS);
            }
            let left = unclaimed(&redis, TASKS);
            assert!(
                left >= many,
                "the backlog ran down to {left} chunks before C claimed B's again: {:?}; C: {}",
                stats(&pool),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(waiting >= many, "{waiting}");
        // Once C has claimed every redelivered chunk, the redelivery stream leaves the set
        // of those with work to claim, though what C claimed there is not committed yet:
        // hosts go back to one `XREADGROUP` a claim.
        assert!(
            eventually(Duration::from_secs(10), || redis
                .command(&format!("SISMEMBER {{wasmpool}}:v3:redoing {REDO}"))
                .starts_with(":0")),
            "the drained redelivery stream is still named as holding work; XLEN {}",
            redis.command(&format!("XLEN {REDO}"))
        );
        let s = stats(&pool);
        assert!(s.redelivered >= 2, "{s:?}");
        assert_eq!(s.lost, 0, "{s:?}");
        drop((pool, c));
    });
}

#[test]
fn a_host_stopped_past_its_lease_has_its_late_results_dropped_and_none_committed_twice() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let pool = cluster_pool(&redis, 1);
        let a = WorkerHost::start(&redis, 1);
        wait_for_hosts(&pool, 1);
        let items: Vec<u64> = (0..4u64).map(|i| 1000 + i).collect();
        let result = pool
            .map_async::<_, u64>("sleep_ms", items.clone(), Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work(&redis, a.pid())),
            "host A claimed nothing: {}",
            a.log()
        );
        a.signal(libc::SIGSTOP);
        let b = WorkerHost::start(&redis, 1);
        // A's lease runs out; its chunks go to B.
        assert!(
            eventually(Duration::from_secs(20), || stats(&pool).redelivered >= 1),
            "A's chunks were not redelivered: {:?}",
            stats(&pool)
        );
        a.signal(libc::SIGCONT);
        assert_eq!(result.get().unwrap(), items);
        // A finishes what it held, late: refused by the fence, and counted.
        assert!(
            eventually(Duration::from_secs(20), || stats(&pool).dropped >= 1),
            "A's late results were not dropped: {:?}; A: {}",
            stats(&pool),
            a.log()
        );
        let s = stats(&pool);
        assert_eq!(
            s.committed,
            items.len() as u64,
            "each chunk committed once: {s:?}"
        );
        drop(b);
    });
}

#[test]
fn work_that_may_not_run_twice_fails_with_worker_lost_when_its_host_dies() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let pool = cluster_pool(&redis, 0);
        let a = WorkerHost::start(&redis, 1);
        wait_for_hosts(&pool, 1);
        let r = pool
            .apply_async::<_, u64>("sleep_ms", &(20_000u64,))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work(&redis, a.pid())),
            "host A claimed nothing: {}",
            a.log()
        );
        let _b = WorkerHost::start(&redis, 1);
        a.signal(libc::SIGKILL);
        match r.get_timeout(Duration::from_secs(15)) {
            Err(Error::WorkerLost { pid, reason, .. }) => {
                assert_eq!(pid, a.pid());
                assert!(reason.contains("lease"), "{reason}");
            }
            other => panic!("expected WorkerLost, got {other:?}"),
        }
        let s = stats(&pool);
        assert_eq!((s.lost, s.redelivered, s.committed), (1, 0, 0), "{s:?}");
    });
}

#[test]
fn an_unreachable_redis_is_a_clear_error_not_a_hang() {
    within(Duration::from_secs(60), || {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let e = Pool::builder(&testkit()).cluster(&url).build().unwrap_err();
        assert!(matches!(e, Error::Cluster(_)), "{e:?}");
        assert!(e.to_string().contains("cannot reach Redis"), "{e}");
        assert!(e.to_string().contains(&url), "{e}");

        let out = cli()
            .args(["worker", "--join", &url, "--slots", "1"])
            .output()
            .unwrap();
        crate::util::assert_cli_error(&out, 2, "cannot reach Redis");
    });
}

#[test]
fn a_host_whose_idle_setup_connection_redis_closed_still_sets_up_a_new_pool() {
    within(Duration::from_secs(120), || {
        // Redis closes a connection idle for a second (its `timeout`), as one configured so
        // closes a host's setup connection between two new modules hours apart.
        let redis = RedisServer::start_with(&["--timeout", "1"]);
        let _host = WorkerHost::start(&redis, 1);
        let set_up = |n: u64| {
            Pool::builder(&testkit())
                .maxtasksperchild(n)
                .cluster(&redis.url())
                .build()
                .expect("a cluster pool")
        };
        let first = set_up(1);
        wait_for_hosts(&first, 1);
        assert_eq!(first.apply::<_, u64>("square", &(3u64,)).unwrap(), 9);
        // Past the timeout, a chunk of another setup: the host sets up a pool for it, and
        // fetches the module again on its setup connection, which Redis has closed.
        std::thread::sleep(Duration::from_secs(3));
        let second = set_up(2);
        let got = second
            .apply::<_, u64>("square", &(4u64,))
            .unwrap_or_else(|e| panic!("the chunk failed on the closed connection: {e}"));
        assert_eq!(got, 16);
    });
}

#[test]
fn a_redis_holding_another_versions_keys_is_refused() {
    within(Duration::from_secs(60), || {
        // The layout key of the versions before the hash tag, and that of a later one.
        for key in ["wasmpool:layout", "{wasmpool}:layout"] {
            let redis = RedisServer::start();
            assert!(redis.command(&format!("SET {key} v1")).starts_with("+OK"));
            let e = Pool::builder(&testkit())
                .cluster(&redis.url())
                .build()
                .unwrap_err();
            assert!(e.to_string().contains("another version of wasmpool"), "{e}");
            assert!(e.to_string().contains(key), "{e}");
            let out = cli()
                .args(["worker", "--join", &redis.url()])
                .output()
                .unwrap();
            crate::util::assert_cli_error(&out, 2, "another version of wasmpool");
        }
    });
}

/// Under an ACL that keeps its user to wasmpool's keys (`~{wasmpool}:*`), a pool and a host
/// connect and run work: the look for an older layout's key, which that user may not read
/// (`NOPERM`), is skipped; this layout's key is checked all the same.
#[test]
fn a_user_kept_to_wasmpools_keys_by_an_acl_connects_and_runs_a_map() {
    within(Duration::from_secs(90), || {
        let redis = RedisServer::start();
        let reply = redis.command(
            "ACL SETUSER pool on >secret resetkeys ~{wasmpool}:* resetchannels +@all -@dangerous",
        );
        assert!(reply.starts_with("+OK"), "{reply}");
        let denied = redis.command("AUTH pool secret\r\nGET wasmpool:layout");
        assert!(denied.contains("NOPERM"), "{denied}");
        let url = format!("redis://pool:secret@127.0.0.1:{}", redis.port);
        let build = || Pool::builder(&testkit()).cluster(&url).build();

        // Another version's layout key where this user may read: refused.
        assert!(redis.command("SET {wasmpool}:layout v1").starts_with("+OK"));
        let e = build().unwrap_err();
        assert!(e.to_string().contains("another version of wasmpool"), "{e}");
        assert!(redis.command("DEL {wasmpool}:layout").starts_with(":1"));
        // A wrong password is refused, and its error does not name the password.
        let wrong = format!(
            "redis://pool:not-{}@127.0.0.1:{}",
            "the-password", redis.port
        );
        let e = Pool::builder(&testkit())
            .cluster(&wrong)
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("pool:***@127.0.0.1"), "{e}");
        assert!(!e.contains("the-password") && !e.contains("secret"), "{e}");

        let host = WorkerHost::join(&url, 2, &[]);
        let pool = build().unwrap_or_else(|e| panic!("a pool as the ACL's user: {e}"));
        wait_for_hosts(&pool, 1);
        let squares: Vec<u64> = pool
            .map("square", 0..100u64)
            .unwrap_or_else(|e| panic!("a map as the ACL's user: {e}; {}", host.log()));
        assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(pool.apply::<_, i64>("add", &(2, 3)).unwrap(), 5);
        let m = pool.manager().unwrap();
        let d = m.dict::<String, i64>().unwrap();
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 5u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(10));
    });
}

#[test]
fn a_redis_restarted_without_its_data_fails_what_was_pending_and_the_cluster_carries_on() {
    within(Duration::from_secs(120), || {
        let mut redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 1);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let r = pool.apply_async::<_, u64>("sleep_ms", &(3000u64,)).unwrap();
        assert!(
            eventually(Duration::from_secs(30), || holds_work(&redis, a.pid())),
            "host A claimed nothing: {}",
            a.log()
        );
        redis.restart();
        match r.get_timeout(Duration::from_secs(20)) {
            Err(Error::State(m)) => assert!(m.contains("lost its data"), "{m}"),
            other => panic!("expected a clear error, got {other:?}"),
        }
        // The host and the pool carry on with the new Redis.
        wait_for_hosts(&pool, 1);
        let squares: Vec<u64> = pool.map("square", 0..100u64).unwrap();
        assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    });
}

/// Runs `wasmpool map` with `args`, on the cluster at `url` if given; answers its exit
/// code, its stdout, and its stderr's last line.
fn cli_map(args: &[&str], url: Option<&str>) -> (Option<i32>, String, String) {
    cli_on_cluster("map", args, url)
}

/// Runs `wasmpool COMMAND examples/testkit ARGS…`, with `--cluster URL` if given; answers
/// its exit code, its stdout, and its stderr's last line.
pub(crate) fn cli_on_cluster(
    command: &str,
    args: &[&str],
    url: Option<&str>,
) -> (Option<i32>, String, String) {
    let mut all: Vec<String> = [command, "examples/testkit"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    if let Some(url) = url {
        all.extend(["--cluster".to_string(), url.to_string()]);
    }
    let out = within(Duration::from_secs(120), move || {
        cli().args(&all).output().expect("cannot run wasmpool")
    });
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        last,
    )
}

#[test]
fn cli_map_on_a_cluster_writes_what_a_local_map_writes() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let (_a, _b) = (WorkerHost::start(&redis, 2), WorkerHost::start(&redis, 2));
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 2);
        let url = redis.url();

        // Every item succeeds: the same lines in the same order, exit 0.
        let args = ["square", "--range", "0..500", "--chunksize", "7"];
        let local = cli_map(&args, None);
        let remote = cli_map(&args, Some(&url));
        assert_eq!(local.0, Some(0), "local: {}", local.2);
        assert_eq!(remote.0, Some(0), "cluster: {}", remote.2);
        assert_eq!(remote.1.lines().count(), 500);
        assert_eq!(remote.1, local.1);

        // Some items fail: the same per-item errors, the same summary, exit 1.
        let args = ["square_or_panic", "--range", "0..30", "--chunksize", "4"];
        let local = cli_map(&args, None);
        let remote = cli_map(&args, Some(&url));
        assert_eq!(local.0, Some(1));
        assert_eq!(remote.0, Some(1), "cluster: {}", remote.2);
        assert_eq!(remote.1, local.1);
        assert!(remote.1.contains("\"error\""), "{}", remote.1);
        assert_eq!(remote.2, local.2);

        // Unordered: the same lines, in some order.
        let args = ["square", "--range", "0..100", "--unordered"];
        let mut local: Vec<String> = cli_map(&args, None).1.lines().map(String::from).collect();
        let mut remote: Vec<String> = cli_map(&args, Some(&url))
            .1
            .lines()
            .map(String::from)
            .collect();
        local.sort();
        remote.sort();
        assert_eq!(remote, local);

        // A shared object named on the command line lives in Redis: every host's tasks
        // add to the same dict.
        let input = TempDir::new("cluster-map");
        let path = input.0.join("in.jsonl");
        std::fs::write(&path, "[\"@d\", 50]\n".repeat(6)).unwrap();
        let path = path.to_string_lossy().into_owned();
        let out = within(Duration::from_secs(120), move || {
            cli()
                .args(["map", "examples/testkit", "atomic_increments", "--star"])
                .args(["--input", &path, "--object", "d=dict", "--chunksize", "1"])
                .args(["--cluster", &url])
                .output()
                .unwrap()
        });
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.contains("[\"count\",300]"), "the dict's report: {err}");
    });
}
