//! A submitting pool rides through a short loss of its Redis: what it submits meanwhile is
//! sent when Redis answers again (within the pool's Redis timeout), once, and every result
//! comes, in order. Real `redis-server`s, stopped (`SIGSTOP`) or killed and started again.

use std::time::Duration;

use wasmpool::Pool;

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, cluster_pool, wait_for_hosts};
use crate::cluster_redis_cluster::entries_added;
use crate::util::{testkit, within};

/// Redis is killed, a map and a call are submitted while it is down, and it comes back on
/// its port with its data (a `SAVE` before the kill: as a Redis with persistence restarts):
/// the sender waits for it rather than failing the chunks, and every result comes.
#[test]
fn a_map_submitted_while_redis_is_down_is_sent_when_it_comes_back() {
    within(Duration::from_secs(120), || {
        let mut redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 2);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        assert!(redis.command("SAVE").starts_with("+OK"));
        redis.kill();
        let run = pool
            .map_async::<_, u64>("square", 0..200u64, Some(7))
            .unwrap();
        let call = pool.apply_async::<_, i64>("add", &(2, 3)).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert!(!run.ready() && !call.ready(), "results with Redis down");
        redis.start_again();
        let got = run
            .get_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the map across the outage: {e}; {}", host.log()));
        assert_eq!(got, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(call.get_timeout(Duration::from_secs(60)).unwrap(), 5);
        let s = pool.stats().unwrap();
        assert_eq!((s.committed, s.lost, s.dropped), (29 + 1, 0, 0), "{s:?}");
        // And the pool carries on.
        let squares: Vec<u64> = pool.map("square", 0..50u64).unwrap();
        assert_eq!(squares, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    });
}

/// Redis is stopped (`SIGSTOP`) for longer than a command may take, while chunks of work
/// that may not run twice (retries 0) are submitted: the sender's first pipeline times
/// out unanswered but runs when Redis resumes, and the sender sends it again. Each chunk
/// is added to the stream once all the same, and runs once.
///
/// The host joins after the stop: a host's claim (a blocking `XREADGROUP`) given up on
/// during the stop is served when Redis resumes, to its closed connection, and the
/// entries it took stay pending with a live host (a gap of the host's, left to fix; see
/// the README's Roadmap), which is not what this test is about.
#[test]
fn chunks_sent_again_after_a_timeout_are_added_once_and_run_once() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let pool = cluster_pool(&redis, 0);
        let m = pool.manager().unwrap();
        let d = m.dict::<String, i64>().unwrap();
        let before = entries_added(&redis);
        assert!(before >= 0, "no task stream");
        redis.signal(libc::SIGSTOP);
        let run = pool
            .starmap_async::<_, ()>(
                "atomic_increments",
                (0..8).map(|_| (d.clone(), 1u64)),
                Some(1),
            )
            .unwrap();
        // Longer than a command's timeout (5 s): the first try is given up on.
        std::thread::sleep(Duration::from_millis(6500));
        redis.signal(libc::SIGCONT);
        let host = WorkerHost::start(&redis, 2);
        run.get_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the work across the stop: {e}; {}", host.log()));
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(8));
        assert_eq!(entries_added(&redis), before + 8, "a chunk added twice");
    });
}

/// A Redis that does not come back within the pool's Redis timeout: what was submitted
/// meanwhile fails, with an error that says Redis could not be reached, never hangs.
#[test]
fn a_submit_fails_clearly_when_redis_does_not_come_back_in_time() {
    within(Duration::from_secs(120), || {
        let mut redis = RedisServer::start();
        let pool = Pool::builder(&testkit())
            .cluster(&redis.url())
            .redis_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        redis.kill();
        let run = pool
            .map_async::<_, u64>("square", 0..20u64, Some(5))
            .unwrap();
        let e = run.get_timeout(Duration::from_secs(60)).unwrap_err();
        assert!(
            e.to_string().contains("cannot reach Redis")
                || e.to_string().contains("did not answer"),
            "{e}"
        );
    });
}

/// Chunks pending with a live host that it does not hold (delivered to its consumer by a
/// claim whose reply it never got: Redis serves a blocked read when work arrives even if its
/// client gave up on it, as after a pause past the command timeout) are found and run once
/// its next claim fails, not left pending for ever. Here another client claims them in the
/// host's name while the host's room is full, then every connection but its own is cut.
#[test]
fn chunks_pending_with_a_host_that_never_got_them_run_after_its_next_failed_claim() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let zrange = redis.command("ZRANGE {wasmpool}:v3:hosts 0 -1");
        let id = zrange
            .lines()
            .find(|l| !l.starts_with(['*', '$']))
            .expect("the host's id")
            .trim()
            .to_string();
        // One slot: two chunks fill its room (one running, one ready) for a few seconds.
        let blockers: Vec<_> = (0..2)
            .map(|_| pool.apply_async::<_, u64>("sleep_ms", &(3000u64,)).unwrap())
            .collect();
        let pending = || crate::cluster::int_reply(&redis, "XPENDING {wasmpool}:v3:tasks hosts");
        assert!(
            crate::util::eventually(Duration::from_secs(30), || pending() == 2),
            "the host did not claim both blockers: {}",
            host.log()
        );
        let run = pool
            .map_async::<_, u64>("square", 0..50u64, Some(5))
            .unwrap();
        assert!(
            crate::util::eventually(Duration::from_secs(30), || crate::cluster::int_reply(
                &redis,
                "XLEN {wasmpool}:v3:tasks"
            ) >= 12),
            "the map's chunks were not added"
        );
        let claimed = redis.command(&format!(
            "XREADGROUP GROUP hosts {id} COUNT 100 STREAMS {{wasmpool}}:v3:tasks >"
        ));
        assert!(claimed.starts_with('*'), "{claimed}");
        assert_eq!(pending(), 12, "the ten chunks are pending with the host");
        assert!(
            redis
                .command("CLIENT KILL TYPE normal SKIPME yes")
                .starts_with(':')
        );
        let got = run
            .get_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the stranded chunks never ran: {e}; {}", host.log()));
        assert_eq!(got, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
        for b in blockers {
            assert_eq!(b.get_timeout(Duration::from_secs(60)).unwrap(), 3000);
        }
        let s = pool.stats().unwrap();
        assert_eq!((s.committed, s.lost, s.dropped), (12, 0, 0), "{s:?}");
    });
}
