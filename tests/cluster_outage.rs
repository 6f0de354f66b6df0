//! A submitting pool rides through a short loss of its Redis: what it submits meanwhile is
//! sent when Redis answers again (within the pool's Redis timeout), once, and every result
//! comes, in order. Real `redis-server`s, stopped (`SIGSTOP`) or killed and started again.

use std::sync::mpsc;
use std::time::Duration;

use wasmpool::{Error, Executor, Pool};

use crate::cluster::redis::RedisServer;
use crate::cluster::{TASKS, WorkerHost, cluster_pool, int_reply, wait_for_hosts};
use crate::cluster_redis_cluster::entries_added;
use crate::util::{eventually, testkit, within};

/// Longer than a command's timeout (5 s) after a result reader's read (0.5 s): a pool that
/// talked to a stopped Redis has found it unreachable by then.
const PAST_A_COMMAND: Duration = Duration::from_millis(8000);

/// Runs `f` on a thread and waits for its answer while Redis stays stopped (`None` if none
/// came within 30 s: `f` waited for Redis), then resumes Redis.
fn answered_while_stopped<T: Send + 'static>(
    redis: &RedisServer,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let answer = rx.recv_timeout(Duration::from_secs(30)).ok();
    redis.signal(libc::SIGCONT);
    answer
}

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
        host.wait_joined();
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
/// is added to the stream once all the same, and runs once. The host was there all along:
/// its claim given up on during the stop, which Redis serves when it resumes to the
/// host's closed connection, leaves entries pending with it that it finds and runs.
#[test]
fn chunks_sent_again_after_a_timeout_are_added_once_and_run_once() {
    within(Duration::from_secs(120), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 2);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        host.wait_joined();
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
        // The first try is given up on.
        std::thread::sleep(PAST_A_COMMAND);
        redis.signal(libc::SIGCONT);
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

/// While Redis is stopped, and the pool has found it so, cancelling an executor's futures
/// does not wait for Redis: a task still queued in the pool is cancelled at once, and one
/// the sender holds, trying to send it, is on its way (not cancelled) and runs when Redis
/// resumes.
#[test]
fn cancelling_while_redis_is_stopped_answers_at_once_and_what_was_on_its_way_runs() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 1);
        let pool = Pool::builder(&testkit())
            .cluster(&redis.url())
            .redis_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        wait_for_hosts(&pool, 1);
        host.wait_joined();
        let ex = Executor::from_cluster(pool.clone());
        redis.signal(libc::SIGSTOP);
        let on_its_way = ex.submit::<_, u64>("square", &(3u64,)).unwrap();
        // The pool has found Redis unreachable (its result reader's read timed out), and the
        // sender holds `on_its_way` while it waits for it.
        std::thread::sleep(PAST_A_COMMAND);
        let queued = ex.submit::<_, u64>("square", &(4u64,)).unwrap();
        let (a, b) = (on_its_way.clone(), queued.clone());
        let (queued_cancelled, sent_cancelled) =
            answered_while_stopped(&redis, move || (b.cancel(), a.cancel()))
                .expect("a cancel waited for the stopped Redis");
        assert!(queued_cancelled, "a task not yet sent is cancelled");
        assert!(!sent_cancelled, "a task on its way is not");
        let got = on_its_way.result_timeout(Duration::from_secs(60));
        assert_eq!(got.unwrap_or_else(|e| panic!("{e}; {}", host.log())), 9);
        let e = queued.result_timeout(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
        assert_eq!(
            pool.stats().unwrap().committed,
            1,
            "the cancelled one never ran"
        );
    });
}

/// A `map` with the default chunk size, submitted while Redis is stopped and the pool has
/// found it so, is chunked for the hosts' slots the pool counted before (two: 80 items in
/// 8 chunks), not for one slot as when nothing can be counted (4 chunks), and every result
/// comes once Redis resumes.
#[test]
fn a_default_chunksize_map_while_redis_is_stopped_is_chunked_for_the_slots_counted_before() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start(&redis, 2);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let squares: Vec<u64> = (0..80u64).map(|x| x * x).collect();
        assert_eq!(pool.map::<_, u64>("square", 0..80u64).unwrap(), squares);
        let before = entries_added(&redis);
        redis.signal(libc::SIGSTOP);
        let call = pool.apply_async::<_, i64>("add", &(2, 3)).unwrap();
        std::thread::sleep(PAST_A_COMMAND);
        let on = pool.clone();
        let run = answered_while_stopped(&redis, move || {
            on.map_async::<_, u64>("square", 0..80u64, None).unwrap()
        })
        .expect("the map waited for the stopped Redis");
        let got = run.get_timeout(Duration::from_secs(60));
        assert_eq!(
            got.unwrap_or_else(|e| panic!("{e}; {}", host.log())),
            squares
        );
        assert_eq!(call.get_timeout(Duration::from_secs(60)).unwrap(), 5);
        assert_eq!(
            entries_added(&redis),
            before + 1 + 8,
            "chunked for two slots"
        );
    });
}

/// Work cancelled while Redis is down (killed; no host has the work yet: its entry waits
/// in the stream) is cancelled at once, and its entry deleted and fenced once Redis is
/// back, before the pool sends anything more: a host that joins afterwards never runs it.
/// (Redis comes back with its data, as one with persistence restarts: a `SAVE` before the
/// kill.)
#[test]
fn work_cancelled_while_redis_is_down_is_fenced_when_it_is_back_and_never_runs() {
    cancelled_while_redis_is_down(false);
}

/// As above, with the pool dropped while Redis is still down: the fences its cancel could
/// not set are set in the background once Redis is back (within the pool's Redis timeout),
/// so a host that joins afterwards never runs the cancelled work.
#[test]
fn work_cancelled_while_redis_is_down_is_fenced_even_when_its_pool_is_dropped_meanwhile() {
    cancelled_while_redis_is_down(true);
}

/// The two tests above: the pool dropped before Redis is back, or not.
fn cancelled_while_redis_is_down(drop_the_pool: bool) {
    within(Duration::from_secs(180), move || {
        let mut redis = RedisServer::start();
        let pool = cluster_pool(&redis, 0);
        let m = pool.manager().unwrap();
        let d = m.dict::<String, i64>().unwrap();
        let r = pool
            .apply_async::<_, ()>("atomic_increments", &(d.clone(), 1u64))
            .unwrap();
        let queued = |redis: &RedisServer| int_reply(redis, &format!("XLEN {TASKS}"));
        assert!(eventually(Duration::from_secs(10), || queued(&redis) == 1));
        assert!(redis.command("SAVE").starts_with("+OK"));
        redis.kill();
        // The result reader has found Redis unreachable (its connection refused).
        std::thread::sleep(Duration::from_millis(1500));
        assert!(r.cancel());
        assert!(matches!(r.get(), Err(Error::Cancelled { .. })));
        let kept = if drop_the_pool {
            drop((r, pool));
            None
        } else {
            Some(pool)
        };
        redis.start_again();
        let pool = kept.unwrap_or_else(|| cluster_pool(&redis, 0));
        assert!(
            eventually(Duration::from_secs(30), || queued(&redis) == 0),
            "the cancelled entry is still in the stream"
        );
        let _host = WorkerHost::start(&redis, 1);
        wait_for_hosts(&pool, 1);
        pool.apply::<_, ()>("atomic_increments", &(d.clone(), 1u64))
            .unwrap();
        let count = d.get(&"count".to_string()).unwrap();
        assert_eq!(count, Some(1), "only the work not cancelled ran");
    });
}
