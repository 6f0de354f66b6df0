//! Shared objects across the hosts of a cluster: made in Redis by a `ClusterManager`, used
//! by tasks on real `wasmpool worker --join` processes and by this program, with the
//! semantics they have locally; real kills of hosts holding locks and semaphores.

use std::time::Duration;

use wasmpool::ObjectError;
use wasmpool::cluster::{ClusterManager, ClusterPool};
use wasmpool::{Error, Pool};

use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, cluster_pool, int_reply, wait_for_hosts};
use crate::util::{eventually, testkit, within};

/// A Redis, `hosts` worker hosts of `slots` slots each, a pool and a manager on them.
fn cluster(
    hosts: usize,
    slots: usize,
) -> (RedisServer, Vec<WorkerHost>, ClusterPool, ClusterManager) {
    let redis = RedisServer::start();
    let workers: Vec<WorkerHost> = (0..hosts)
        .map(|_| WorkerHost::start(&redis, slots))
        .collect();
    let pool = cluster_pool(&redis, 0);
    wait_for_hosts(&pool, hosts);
    let manager = pool.manager().expect("a cluster manager");
    (redis, workers, pool, manager)
}

#[test]
fn a_queue_carries_items_between_tasks_on_the_hosts_and_this_program() {
    within(Duration::from_secs(180), || {
        let (_redis, _hosts, pool, m) = cluster(2, 4);
        // Two producer and two consumer tasks, spread over the hosts (each runs all it
        // claims at once: no consumer waits in front of a producer).
        let q = m.queue::<Option<u64>>().unwrap();
        let producers: Vec<_> = (0..2)
            .map(|_| {
                pool.apply_async::<_, ()>("queue_produce", &(q.clone(), 500u64))
                    .unwrap()
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                pool.apply_async::<_, u64>("queue_consume", &(q.clone(),))
                    .unwrap()
            })
            .collect();
        for p in producers {
            p.get().unwrap();
        }
        let total: u64 = consumers.into_iter().map(|c| c.get().unwrap()).sum();
        assert_eq!(total, 2 * (0..500u64).sum::<u64>());

        // This program produces, a task on a host consumes.
        let q = m.queue::<Option<u64>>().unwrap();
        let consumer = pool
            .apply_async::<_, u64>("queue_consume", &(q.clone(),))
            .unwrap();
        for i in 0..100u64 {
            q.put(&Some(i)).unwrap();
        }
        q.put(&None).unwrap();
        assert_eq!(consumer.get().unwrap(), (0..100u64).sum::<u64>());

        // A task's get with a timeout on an empty queue answers what it answers locally.
        let empty = m.queue::<String>().unwrap();
        let err = pool
            .apply::<_, String>("get_timeout", &(empty.clone(), 200u64))
            .unwrap_err();
        let local = wasmpool::Manager::new().queue::<String>();
        let here = crate::util::run::<String>("get_timeout", &(local, 200u64)).unwrap_err();
        assert_eq!(err.to_string(), here.to_string());

        // A bounded queue: a put blocks while it is full, up to its timeout.
        let b = m.bounded_queue::<u32>(2).unwrap();
        b.put(&1).unwrap();
        b.put(&2).unwrap();
        assert!(b.full().unwrap());
        assert_eq!(
            b.put_timeout(&3, Some(Duration::from_millis(200))),
            Err(ObjectError::Full)
        );
        assert_eq!(b.get().unwrap(), 1);
        b.put_timeout(&3, Some(Duration::from_secs(5))).unwrap();
        assert_eq!((b.qsize().unwrap(), b.maxsize().unwrap()), (2, 2));
        // A get blocked here is let through by a put from another thread.
        let e = m.queue::<u32>().unwrap();
        let putter = {
            let e = e.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                e.put(&7).unwrap();
            })
        };
        assert_eq!(e.get_timeout(Some(Duration::from_secs(10))).unwrap(), 7);
        putter.join().unwrap();
        // Closed: puts fail, gets drain and then fail.
        b.close().unwrap();
        assert!(matches!(b.put(&9), Err(ObjectError::Closed(_))));
        assert_eq!(b.get().unwrap(), 2);
        assert_eq!(b.get().unwrap(), 3);
        assert!(matches!(b.get(), Err(ObjectError::Closed(_))));
        // A task closing a queue, then putting, gets the queue's own error, as locally.
        let c = m.queue::<u32>().unwrap();
        let seen = pool
            .apply::<_, Vec<String>>("put_after_own_close", &(c.clone(),))
            .unwrap();
        assert_eq!(seen, vec!["the queue is closed".to_string(); 2]);
        // Joinable: join waits for every task_done.
        let j = m.joinable_queue::<u32>(0).unwrap();
        j.put(&1).unwrap();
        assert_eq!(
            j.join_timeout(Some(Duration::from_millis(100))),
            Err(ObjectError::Timeout)
        );
        j.get().unwrap();
        j.task_done().unwrap();
        j.join_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(j.task_done(), Err(ObjectError::Invalid(_))));
    });
}

#[test]
fn a_counter_under_a_cluster_lock_is_exact_and_its_fence_counts_every_acquisition() {
    within(Duration::from_secs(180), || {
        let (_redis, _hosts, pool, m) = cluster(2, 2);
        let (d, lock) = (m.dict::<String, i64>().unwrap(), m.lock().unwrap());
        let tasks = pool
            .starmap_async::<_, ()>(
                "locked_increments",
                (0..4).map(|_| (d.clone(), lock.clone(), 200u64)),
                Some(1),
            )
            .unwrap();
        // This program increments under the same lock meanwhile.
        let key = "count".to_string();
        for _ in 0..200 {
            let _held = lock.lock().unwrap();
            let v = d.get(&key).unwrap().unwrap_or(0);
            d.set(&key, &(v + 1)).unwrap();
        }
        tasks.get().unwrap();
        assert_eq!(d.get(&key).unwrap(), Some(1000));
        assert_eq!(m.fence(&lock).unwrap(), 1000);
        assert!(!lock.locked().unwrap());
        // As locally: releasing an unlocked lock is refused.
        assert!(matches!(lock.release(), Err(ObjectError::NotOwner(_))));

        // An RLock: its owner acquires it again; no one else releases it.
        let r = m.rlock().unwrap();
        pool.apply::<_, ()>("rlock_twice", &(r.clone(),)).unwrap();
        r.acquire().unwrap();
        r.acquire().unwrap();
        let other = {
            let r = r.clone();
            std::thread::spawn(move || {
                (
                    r.release(),
                    r.acquire_timeout(Some(Duration::from_millis(100))),
                )
            })
            .join()
            .unwrap()
        };
        assert!(matches!(other.0, Err(ObjectError::NotOwner(_))));
        assert_eq!(other.1, Ok(false));
        r.release().unwrap();
        r.release().unwrap();
        assert!(pool.apply::<_, bool>("try_lock", &(lock.clone(),)).unwrap());
    });
}

#[test]
fn a_dict_increment_race_across_hosts_is_exact_and_dict_and_list_ops_answer_as_locally() {
    within(Duration::from_secs(180), || {
        let (_redis, _hosts, pool, m) = cluster(2, 2);
        let d = m.dict::<String, i64>().unwrap();
        let tasks = pool
            .starmap_async::<_, ()>(
                "atomic_increments",
                (0..4).map(|_| (d.clone(), 250u64)),
                Some(1),
            )
            .unwrap();
        for _ in 0..250 {
            d.increment(&"count".to_string(), 1).unwrap();
        }
        tasks.get().unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(1250));
        assert!(
            d.compare_and_swap(&"count".to_string(), Some(&1250), &0)
                .unwrap()
        );
        assert!(
            !d.compare_and_swap(&"count".to_string(), Some(&1250), &1)
                .unwrap()
        );
        assert!(d.compare_and_swap(&"new".to_string(), None, &5).unwrap());
        assert_eq!(d.len().unwrap(), 2);

        // The same sequence of dict and list operations, here and on a cluster.
        let (cd, cl) = (
            m.dict::<String, i64>().unwrap(),
            m.list::<String>().unwrap(),
        );
        let remote = pool
            .apply::<_, Vec<String>>("dict_list_ops", &(cd.clone(), cl.clone()))
            .unwrap();
        let local_m = wasmpool::Manager::new();
        let here = crate::util::run::<Vec<String>>(
            "dict_list_ops",
            &(local_m.dict::<String, i64>(), local_m.list::<String>()),
        )
        .unwrap();
        assert_eq!(remote, here);
        // The list from this side: insert, slice, remove, pop at an index.
        let l = m.list::<i64>().unwrap();
        l.extend([&1, &2, &3, &4]).unwrap();
        l.insert(1, &9).unwrap();
        assert_eq!(l.items().unwrap(), vec![1, 9, 2, 3, 4]);
        assert_eq!(l.slice(Some(1), Some(-1)).unwrap(), vec![9, 2, 3]);
        l.remove(&9).unwrap();
        assert_eq!(l.pop(Some(0)).unwrap(), 1);
        assert_eq!(l.items().unwrap(), vec![2, 3, 4]);
        assert!(matches!(l.get(7), Err(ObjectError::Missing(_))));
    });
}

#[test]
fn a_cluster_queue_pipe_dict_and_list_hold_at_most_256_mib_as_locally_and_taking_out_makes_room() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let m = ClusterManager::connect(&redis.url()).unwrap();
        let big = "x".repeat(8 << 20);
        let limit = 256usize << 20;
        // Puts of 8 MiB until one is refused: the 32nd (each costs its bytes and more).
        let fill = |put: &dyn Fn(usize) -> Result<(), ObjectError>| {
            let mut n = 0;
            loop {
                match put(n) {
                    Ok(()) => n += 1,
                    Err(ObjectError::TooLarge(msg)) => {
                        assert!(msg.contains("268435456"), "{msg}");
                        return n;
                    }
                    Err(e) => panic!("put {n}: {e}"),
                }
                assert!(n * (8 << 20) <= limit, "{n} puts of 8 MiB were taken");
            }
        };
        let q = m.queue::<String>().unwrap();
        assert_eq!(fill(&|_| q.put(&big)), 31);
        assert_eq!(q.get().unwrap().len(), big.len());
        q.put(&big).expect("room again once an item was taken out");
        assert!(matches!(q.put(&big), Err(ObjectError::TooLarge(_))));

        let (a, b) = m.pipe::<String>(true).unwrap();
        assert_eq!(fill(&|_| a.send(&big)), 31);
        assert_eq!(b.recv().unwrap().len(), big.len());
        a.send(&big).expect("room again once an item was received");

        let d = m.dict::<String, String>().unwrap();
        // Replacing a value costs only the difference.
        for _ in 0..40 {
            d.set(&"same".to_string(), &big).unwrap();
        }
        assert_eq!(fill(&|n| d.set(&format!("k{n}"), &big)), 30);
        d.delete(&"k0".to_string()).unwrap();
        d.set(&"k0".to_string(), &big)
            .expect("room again once a key was deleted");
        assert_eq!(
            d.pop(&"k1".to_string()).unwrap().map(|v| v.len()),
            Some(big.len())
        );
        d.set(&"k1".to_string(), &big)
            .expect("room again once a key was popped");
        // An update that would not fit changes nothing.
        let more: Vec<(String, String)> =
            vec![("u1".into(), big.clone()), ("u2".into(), big.clone())];
        assert!(matches!(
            d.update(more.iter().map(|(k, v)| (k, v))),
            Err(ObjectError::TooLarge(_))
        ));
        assert_eq!(d.get(&"u1".to_string()).unwrap(), None);
        d.clear().unwrap();
        assert_eq!(fill(&|n| d.set(&format!("k{n}"), &big)), 31);

        let l = m.list::<String>().unwrap();
        assert_eq!(fill(&|_| l.append(&big)), 31);
        l.pop(None).unwrap();
        l.append(&big).expect("room again once an item was popped");
        l.set(0, &String::new()).unwrap();
        l.append(&big)
            .expect("room again once an item was made smaller");
        l.clear().unwrap();
        let mib = "y".repeat(1 << 20);
        l.extend([&mib, &mib]).unwrap();
        assert_eq!(l.len().unwrap(), 2);
    });
}

#[test]
fn destroy_removes_an_object_and_its_handles_are_stale_after() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        let m = ClusterManager::connect(&redis.url()).unwrap();
        let q = m.queue::<u32>().unwrap();
        q.put(&1).unwrap();
        let keep = m.dict::<String, u32>().unwrap();
        keep.set(&"a".to_string(), &1).unwrap();
        assert!(m.destroy(q.handle()).unwrap());
        assert!(matches!(q.put(&2), Err(ObjectError::Stale(_))));
        assert!(!m.destroy(q.handle()).unwrap(), "destroyed twice");
        // Its keys are gone; the other object is untouched.
        let keys = redis.keys("{wasmpool}:v3:o:*");
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keep.get(&"a".to_string()).unwrap(), Some(1));
    });
}

/// `set_ttl` (what serve --cluster does to a deleted object) reaches every key of a pipe,
/// also the wake lists of its ends' receive channels (`:wr0`, `:wr1`): a receiver that went
/// away mid-wait (a task killed while it waited in `recv`) is still counted as waiting, so
/// the next send leaves a wake token there that nobody takes, kept for the pipe's full TTL
/// (a day) however soon the pipe itself goes.
#[test]
fn set_ttl_shortens_every_key_of_a_pipe_also_the_wake_lists_of_its_ends() {
    within(Duration::from_secs(60), || {
        let redis = RedisServer::start();
        let m = ClusterManager::connect(&redis.url()).unwrap();
        let (a, b) = m.pipe::<u32>(true).unwrap();
        let base = redis
            .keys("{wasmpool}:v3:o:*")
            .into_iter()
            .find(|k| k.matches(':').count() == 3)
            .expect("the pipe's hash");
        // A receiver on each end that went away while it waited (as `wait` counts one).
        for ch in ["r0", "r1"] {
            redis.command(&format!("HINCRBY {base} n{ch} 1"));
        }
        a.send(&1).unwrap();
        b.send(&2).unwrap();
        let wake = [format!("{base}:wr0"), format!("{base}:wr1")];
        for k in &wake {
            assert!(redis.pttl(k) > 60_000, "{k} holds a token for a day");
        }
        assert!(m.set_ttl(a.handle(), Duration::from_secs(5)).unwrap());
        for k in redis.keys(&format!("{base}*")) {
            let left = redis.pttl(&k);
            assert!(left > 0 && left <= 5_000, "{k} is kept {left} ms");
        }
        assert_eq!(b.recv().unwrap(), 1, "the pipe still works");
    });
}

#[test]
fn a_lock_held_by_a_killed_host_is_released_to_another_with_its_fence_advanced() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 1);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let m = pool.manager().unwrap();
        let (lock, held) = (m.lock().unwrap(), m.event().unwrap());
        let holder = pool
            .apply_async::<_, ()>("hold_lock", &(lock.clone(), held.clone(), 120_000u64))
            .unwrap();
        assert!(
            held.wait_timeout(Some(Duration::from_secs(60))).unwrap(),
            "host A did not take the lock: {}",
            a.log()
        );
        let taken = m.fence(&lock).unwrap();
        assert!(lock.locked().unwrap());
        assert!(!lock.try_acquire().unwrap(), "held by the task on A");
        let b = WorkerHost::start(&redis, 1);
        wait_for_hosts(&pool, 2);
        a.signal(libc::SIGKILL);
        // This program gets it once A's lease has run out and its lock is given back.
        assert!(
            lock.acquire_timeout(Some(Duration::from_secs(20))).unwrap(),
            "the dead host's lock was not released"
        );
        // Released by the reaper (one step), then acquired here (another).
        assert_eq!(m.fence(&lock).unwrap(), taken + 2);
        lock.release().unwrap();
        assert!(matches!(holder.get(), Err(Error::WorkerLost { .. })));
        drop(b);
    });
}

#[test]
fn a_late_release_from_a_host_declared_dead_does_not_free_the_lock_another_task_holds() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 1);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let m = pool.manager().unwrap();
        let lock = m.lock().unwrap();
        let (held_a, held_b) = (m.event().unwrap(), m.event().unwrap());
        // A task on A takes the lock, holds it a few seconds, then releases it.
        let first = pool
            .apply_async::<_, ()>(
                "hold_then_release",
                &(lock.clone(), held_a.clone(), 4000u64),
            )
            .unwrap();
        assert!(
            held_a.wait_timeout(Some(Duration::from_secs(60))).unwrap(),
            "host A did not take the lock: {}",
            a.log()
        );
        let taken = m.fence(&lock).unwrap();
        // A is cut off (stopped) past its lease: declared dead, its lock given back.
        a.signal(libc::SIGSTOP);
        let b = WorkerHost::start(&redis, 1);
        assert!(
            eventually(Duration::from_secs(30), || m
                .fence(&lock)
                .is_ok_and(|f| f > taken)),
            "A's lock was not given back"
        );
        // A task on B takes it, and holds it.
        let second = pool
            .apply_async::<_, ()>("hold_lock", &(lock.clone(), held_b.clone(), 60_000u64))
            .unwrap();
        assert!(
            held_b.wait_timeout(Some(Duration::from_secs(30))).unwrap(),
            "B's task did not take the lock: {}",
            b.log()
        );
        let held_by_b = m.fence(&lock).unwrap();
        // A comes back: its task, done sleeping, releases the lock it no longer holds; the
        // release is refused, and its late result dropped.
        a.signal(libc::SIGCONT);
        // Failed as lost (its retries are 0), once: by the reaper, when its pass took A's
        // chunk before A came back; or by A itself, when A came back first (its objects
        // given back, its chunk claimed under 2 s before and so not taken yet): A gives
        // back what it ran then rather than commit the refusal of its release.
        let lost = first.get_timeout(Duration::from_secs(30));
        assert!(
            matches!(lost, Err(Error::WorkerLost { .. })),
            "A's task was not failed as lost when A was declared dead: {lost:?}; A: {}",
            a.log()
        );
        // A's own outcome of the chunk is never committed: dropped by the fence (the
        // reaper took it), or given back by A (and failed as lost there).
        assert!(
            eventually(Duration::from_secs(30), || pool
                .stats()
                .is_ok_and(|s| s.dropped >= 1)
                || a.log().contains("given back, not committed")),
            "A's task did not finish after A came back: {}",
            a.log()
        );
        let s = pool.stats().unwrap();
        assert_eq!((s.lost, s.redelivered), (1, 0), "{s:?}");
        assert!(
            eventually(Duration::from_secs(10), || a
                .log()
                .contains("declared dead")),
            "A did not say it was declared dead: {}",
            a.log()
        );
        // B's task still holds the lock: nobody else gets in.
        assert!(lock.locked().unwrap(), "A's late release freed B's lock");
        assert!(
            !lock.try_acquire().unwrap(),
            "this program took the lock B's task holds"
        );
        assert_eq!(m.fence(&lock).unwrap(), held_by_b, "the lock changed hands");
        // B is killed: its lock is given back. A, back and admitted anew, runs new work
        // with the lock in new workers: their operations are not refused.
        drop(second);
        drop(b);
        let again = m.event().unwrap();
        pool.apply::<_, ()>("hold_then_release", &(lock.clone(), again.clone(), 10u64))
            .unwrap_or_else(|e| panic!("A's new task: {e}; A: {}", a.log()));
        assert!(again.is_set().unwrap());
        // This program's own operations are not fenced either.
        assert!(
            lock.acquire_timeout(Some(Duration::from_secs(30))).unwrap(),
            "this program could not take the lock"
        );
        lock.release().unwrap();
    });
}

/// Records host `id` as declared dead now (Redis time), as a reaper's pass does when it
/// gives back a dead host's objects before its chunks are idle long enough to take.
fn declare_dead(redis: &RedisServer, id: &str) {
    let time = redis.command("TIME");
    let lines: Vec<&str> = time.lines().map(|l| l.trim_end_matches('\r')).collect();
    let (secs, micros): (u64, u64) = (lines[2].parse().unwrap(), lines[4].parse().unwrap());
    let reply = redis.command(&format!(
        "ZADD {{wasmpool}}:v3:dead {} {id}",
        secs * 1000 + micros / 1000
    ));
    assert!(reply.starts_with(':'), "ZADD: {reply}");
}

#[test]
fn a_host_declared_dead_before_the_reaper_took_its_chunk_gives_it_back_not_the_refusal() {
    within(Duration::from_secs(180), || {
        // The edge, made certain: host A is declared dead (its object operations refused
        // from then on) while it runs a chunk, and keeps its lease, so the reaper never
        // takes the chunk. A must not commit the refusal of the task's release as its
        // result: it gives the chunk back, which is redelivered (retries left) or failed as
        // lost (none left), as the reaper would have done.
        let redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 1);
        let retried = cluster_pool(&redis, 1);
        let once = cluster_pool(&redis, 0);
        wait_for_hosts(&retried, 1);
        let id = retried.hosts().unwrap().remove(0);
        let m = retried.manager().unwrap();
        let lock = m.lock().unwrap();

        let held = m.event().unwrap();
        let r = retried
            .apply_async::<_, ()>("hold_then_release", &(lock.clone(), held.clone(), 3000u64))
            .unwrap();
        assert!(
            held.wait_timeout(Some(Duration::from_secs(60))).unwrap(),
            "A did not take the lock: {}",
            a.log()
        );
        declare_dead(&redis, &id);
        // Redelivered, and run again in A's new workers: the whole task, its release too.
        r.get_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the redelivered task: {e}; A: {}", a.log()));
        let s = retried.stats().unwrap();
        assert_eq!((s.redelivered, s.lost), (1, 0), "{s:?}");
        assert!(
            a.log().contains("given back, not committed"),
            "A did not give the chunk back: {}",
            a.log()
        );
        assert!(
            !lock.locked().unwrap(),
            "the rerun's release did not go through"
        );

        let held = m.event().unwrap();
        let r = once
            .apply_async::<_, ()>("hold_then_release", &(lock.clone(), held.clone(), 3000u64))
            .unwrap();
        assert!(
            held.wait_timeout(Some(Duration::from_secs(60))).unwrap(),
            "A did not take the lock again: {}",
            a.log()
        );
        declare_dead(&redis, &id);
        let lost = r.get_timeout(Duration::from_secs(60));
        assert!(
            matches!(lost, Err(Error::WorkerLost { .. })),
            "a task that may not run twice: {lost:?}; A: {}",
            a.log()
        );
        let s = once.stats().unwrap();
        assert_eq!((s.redelivered, s.lost, s.dropped), (1, 1, 0), "{s:?}");
        // A runs new work, in workers admitted anew.
        let again = m.event().unwrap();
        once.apply::<_, ()>("hold_then_release", &(lock.clone(), again.clone(), 10u64))
            .unwrap_or_else(|e| panic!("A's new task: {e}; A: {}", a.log()));
        assert!(again.is_set().unwrap());
    });
}

/// A pool whose workers are set up apart from every other's (each `maxtasksperchild` is a
/// setup of its own: a local pool of its own on a host).
fn pool_set_up(redis: &RedisServer, maxtasksperchild: u64, retries: u32) -> ClusterPool {
    Pool::builder(&testkit())
        .maxtasksperchild(maxtasksperchild)
        .retries(retries)
        .cluster(&redis.url())
        .build()
        .expect("a cluster pool")
}

#[test]
fn a_chunk_waiting_for_its_pool_when_the_host_is_declared_dead_is_given_back_unrun() {
    within(Duration::from_secs(240), || {
        // Host A (room for ten chunks) runs a long chunk in each of its eight local pools;
        // a chunk of a ninth setup, which counts its run in a dict, waits for a seat. A is
        // declared dead meanwhile (and keeps its lease: the reaper never takes the chunk).
        // The chunk must not run in the pool A sets up afterwards, of its new runtime,
        // where its operations would be accepted: it is given back unrun, redelivered, and
        // counted once.
        let redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 5);
        let busy: Vec<ClusterPool> = (1..=8).map(|n| pool_set_up(&redis, n, 0)).collect();
        wait_for_hosts(&busy[0], 1);
        let id = busy[0].hosts().unwrap().remove(0);
        let _long: Vec<_> = busy
            .iter()
            .map(|p| p.apply_async::<_, u64>("sleep_ms", &(600_000u64,)).unwrap())
            .collect();
        let held = || int_reply(&redis, "XPENDING {wasmpool}:v3:tasks hosts");
        assert!(
            eventually(Duration::from_secs(120), || held() == 8),
            "A did not claim the eight long chunks ({} held): {}",
            held(),
            a.log()
        );
        let counted = pool_set_up(&redis, 100, 1);
        let m = counted.manager().unwrap();
        let runs = m.dict::<String, i64>().unwrap();
        let r = counted
            .apply_async::<_, ()>("atomic_increments", &(runs.clone(), 1u64))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(20), || held() == 9),
            "A did not claim the ninth chunk: {}",
            a.log()
        );
        declare_dead(&redis, &id);
        r.get_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the redelivered chunk: {e}; A: {}", a.log()));
        assert_eq!(
            runs.get(&"count".to_string()).unwrap(),
            Some(1),
            "the chunk ran twice: A: {}",
            a.log()
        );
        // The cluster's counts: the chunk redelivered once and committed; the long chunks,
        // stopped by the readmit and not to run twice, lost.
        let s = counted.stats().unwrap();
        assert_eq!((s.redelivered, s.lost, s.committed), (1, 8, 1), "{s:?}");
        assert!(
            a.log()
                .contains("1 waiting for a pool are given back unrun"),
            "A: {}",
            a.log()
        );
    });
}

#[test]
fn a_semaphore_held_by_a_killed_host_gets_its_permits_back_and_a_dead_party_breaks_a_barrier() {
    within(Duration::from_secs(180), || {
        let redis = RedisServer::start();
        let a = WorkerHost::start(&redis, 2);
        let pool = cluster_pool(&redis, 0);
        wait_for_hosts(&pool, 1);
        let m = pool.manager().unwrap();
        let (sem, held) = (m.semaphore(3).unwrap(), m.event().unwrap());
        let barrier = m.barrier(2).unwrap();
        let _holder = pool
            .apply_async::<_, ()>(
                "hold_semaphore",
                &(sem.clone(), 2u32, held.clone(), 120_000u64),
            )
            .unwrap();
        let _party = pool
            .apply_async::<_, u32>("barrier_wait", &(barrier.clone(), None::<u64>))
            .unwrap();
        assert!(
            held.wait_timeout(Some(Duration::from_secs(60))).unwrap(),
            "host A did not take the permits: {}",
            a.log()
        );
        assert_eq!(sem.value().unwrap(), 1);
        assert!(
            eventually(Duration::from_secs(30), || barrier.n_waiting().unwrap()
                == 1),
            "the party on A did not arrive"
        );
        // The reaper of this program's pool (and of host B) judges A dead.
        let _b = WorkerHost::start(&redis, 1);
        a.signal(libc::SIGKILL);
        assert!(
            eventually(Duration::from_secs(20), || sem.value().unwrap() == 3),
            "the dead host's permits were not returned: {}",
            sem.value().unwrap()
        );
        assert_eq!(
            barrier.wait_timeout(Some(Duration::from_secs(20))),
            Err(ObjectError::Broken)
        );
        assert!(barrier.broken().unwrap());
        // Acquired up to its value, then a timed acquire times out.
        for _ in 0..3 {
            sem.acquire().unwrap();
        }
        assert_eq!(
            sem.acquire_timeout(Some(Duration::from_millis(100))),
            Ok(false)
        );
        // Bounded: released no higher than its value.
        let bs = m.bounded_semaphore(1).unwrap();
        assert!(matches!(bs.release(), Err(ObjectError::NotOwner(_))));
    });
}

#[test]
fn a_task_dying_with_a_lock_on_a_live_host_gives_it_back() {
    within(Duration::from_secs(120), || {
        let (_redis, _hosts, pool, m) = cluster(1, 1);
        let lock = m.lock().unwrap();
        assert!(
            pool.apply::<_, ()>("lock_then_panic", &(lock.clone(),))
                .is_err()
        );
        assert!(
            lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap(),
            "the lock of the task that died was not given back"
        );
    });
}

#[test]
fn events_barriers_pipes_and_conditions_work_across_hosts() {
    within(Duration::from_secs(180), || {
        let (_redis, _hosts, pool, m) = cluster(2, 2);
        // Event: tasks wait until this program sets it.
        let gate = m.event().unwrap();
        let squares = pool
            .starmap_async::<_, u64>(
                "gated_square",
                (0..4u64).map(|x| (gate.clone(), x)),
                Some(1),
            )
            .unwrap();
        assert!(!gate.is_set().unwrap());
        assert!(!gate.wait_timeout(Some(Duration::from_millis(100))).unwrap());
        gate.set().unwrap();
        assert_eq!(squares.get().unwrap(), vec![0, 1, 4, 9]);
        gate.clear().unwrap();
        assert!(!gate.is_set().unwrap());

        // Barrier: two tasks and this program meet; each gets a different index.
        let barrier = m.barrier(3).unwrap();
        let parties: Vec<_> = (0..2)
            .map(|_| {
                pool.apply_async::<_, u32>("barrier_wait", &(barrier.clone(), None::<u64>))
                    .unwrap()
            })
            .collect();
        let mine = barrier.wait_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut indices: Vec<u32> = parties.into_iter().map(|p| p.get().unwrap()).collect();
        indices.push(mine);
        indices.sort();
        assert_eq!(indices, vec![0, 1, 2]);
        // A wait that times out breaks it, as in Python.
        let lone = m.barrier(2).unwrap();
        assert_eq!(
            lone.wait_timeout(Some(Duration::from_millis(100))),
            Err(ObjectError::Broken)
        );
        assert!(lone.broken().unwrap());
        lone.reset().unwrap();
        assert!(!lone.broken().unwrap());
        assert_eq!(lone.parties().unwrap(), 2);

        // Pipe: a task echoes what this end sends.
        let (here, there) = m.pipe::<u64>(true).unwrap();
        let pong = pool
            .apply_async::<_, ()>("pipe_pong", &(there.clone(), 20u64))
            .unwrap();
        for i in 0..20u64 {
            here.send(&i).unwrap();
            assert_eq!(here.recv_timeout(Some(Duration::from_secs(10))).unwrap(), i);
        }
        pong.get().unwrap();
        assert!(!here.poll(Some(Duration::from_millis(50))).unwrap());
        // A task reads until end of file: this end's close.
        let (w, r) = m.pipe::<String>(true).unwrap();
        let reader = pool
            .apply_async::<_, Vec<String>>("recv_all", &(r.clone(),))
            .unwrap();
        for s in ["a", "b", "c"] {
            w.send(&s.to_string()).unwrap();
        }
        w.close().unwrap();
        assert_eq!(reader.get().unwrap(), vec!["a", "b", "c"]);
        assert!(matches!(
            w.send(&"d".to_string()),
            Err(ObjectError::Closed(_))
        ));
        // One-way: the first end only receives.
        let (rx, tx) = m.pipe::<u32>(false).unwrap();
        tx.send(&5).unwrap();
        assert_eq!(rx.recv().unwrap(), 5);
        assert!(matches!(rx.send(&1), Err(ObjectError::Invalid(_))));

        // Condition: a task waits until this program sets "ready" and notifies.
        let (cond, d) = (m.condition().unwrap(), m.dict::<String, i64>().unwrap());
        let waiter = pool
            .apply_async::<_, bool>("condition_wait", &(cond.clone(), d.clone()))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || d
                .get(&"waiting".to_string())
                .unwrap()
                .is_some()),
            "the task did not start waiting"
        );
        {
            let _held = cond.lock().unwrap();
            d.set(&"ready".to_string(), &1).unwrap();
            cond.notify_all().unwrap();
        }
        assert!(waiter.get().unwrap(), "the waiter was notified");
        assert!(matches!(cond.notify(1), Err(ObjectError::NotOwner(_))));
    });
}

#[test]
fn a_handle_of_another_redis_or_a_forged_token_is_refused() {
    within(Duration::from_secs(60), || {
        let (r1, r2) = (RedisServer::start(), RedisServer::start());
        let (m1, m2) = (
            ClusterManager::connect(&r1.url()).unwrap(),
            ClusterManager::connect(&r2.url()).unwrap(),
        );
        let (q1, q2) = (m1.queue::<u32>().unwrap(), m2.queue::<u32>().unwrap());
        q1.put(&1).unwrap();
        q2.put(&2).unwrap();
        // Each handle goes to the Redis it was made in.
        assert_eq!(q2.get().unwrap(), 2);
        assert_eq!(q1.get().unwrap(), 1);
        // The same object number with another token names nothing.
        let forged: wasmpool::Queue<u32> = rmp_serde::from_slice(
            &rmp_serde::to_vec(&("wasmpool:queue", q1.handle().id, q1.handle().token ^ 1)).unwrap(),
        )
        .unwrap();
        assert!(matches!(forged.put(&3), Err(ObjectError::Stale(_))));

        // A get blocked for 2 s waits on Redis, it does not poll it: a handful of scripts
        // run (one per wake-up, at least every 500 ms), not thousands.
        let calls = |r: &RedisServer| -> u64 {
            let info = r.command("INFO commandstats");
            ["cmdstat_evalsha:calls=", "cmdstat_eval:calls="]
                .iter()
                .filter_map(|k| {
                    let at = info.find(k)? + k.len();
                    info[at..].split(',').next()?.parse::<u64>().ok()
                })
                .sum()
        };
        let before = calls(&r1);
        assert_eq!(
            q1.get_timeout(Some(Duration::from_secs(2))),
            Err(ObjectError::Empty)
        );
        let ran = calls(&r1) - before;
        assert!(ran <= 12, "{ran} scripts ran for one blocked get");
        assert!(
            ClusterManager::builder(&r1.url())
                .object_ttl(Duration::from_millis(10))
                .build()
                .is_err()
        );
    });
}

/// An operation made while the cluster's Redis is down (also one blocked in Redis when it
/// goes) is `Unavailable`, retryable, saying Redis cannot be reached: not `Invalid`, which
/// blames the caller. Once Redis is back the same handles reach it again.
#[test]
fn an_operation_while_redis_is_down_is_unavailable_and_retryable_not_invalid() {
    within(Duration::from_secs(60), || {
        let mut redis = RedisServer::start();
        let m = ClusterManager::connect(&redis.url()).unwrap();
        let q = m.queue::<u32>().unwrap();
        let d = m.dict::<String, u32>().unwrap();
        let lock = m.lock().unwrap();
        q.put(&1).unwrap();
        // A get blocked in Redis when it goes.
        let q2 = q.clone();
        let blocked = std::thread::spawn(move || {
            assert_eq!(q2.get().unwrap(), 1);
            q2.get_timeout(Some(Duration::from_secs(30)))
        });
        std::thread::sleep(Duration::from_millis(500));
        redis.kill();
        let unavailable = |e: &ObjectError| {
            matches!(e, ObjectError::Unavailable(m) if m.contains("cannot reach Redis"))
                && e.is_retryable()
        };
        let e = blocked.join().unwrap().unwrap_err();
        assert!(unavailable(&e), "{e:?}");
        for e in [
            q.put(&2).unwrap_err(),
            d.get(&"a".to_string()).unwrap_err(),
            lock.acquire_timeout(Some(Duration::from_secs(1)))
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert!(unavailable(&e), "{e:?}");
        }
        match m.destroy(q.handle()) {
            Err(Error::Object(e)) => assert!(unavailable(&e), "{e:?}"),
            other => panic!("{other:?}"),
        }
        // Back (without its data): the handle reaches Redis again, which no longer has it.
        redis.restart();
        assert!(matches!(q.put(&3), Err(ObjectError::Stale(_))));
    });
}

/// What a host holds (`holds:HOST`: what is given back if it dies) loses an object once the
/// host's last holder of it lets go, so it does not grow with every object ever held:
/// semaphores acquired by tasks and released, barriers whose rounds completed, locks given
/// back by tasks that died holding them leave it empty.
#[test]
fn a_hosts_holds_lose_what_it_let_go_and_do_not_grow_across_acquire_release_cycles() {
    within(Duration::from_secs(180), || {
        let (redis, _hosts, pool, m) = cluster(1, 2);
        let held = || -> Vec<String> {
            redis
                .keys("{wasmpool}:v3:holds:*")
                .iter()
                .flat_map(|k| {
                    redis
                        .command(&format!("SMEMBERS {k}"))
                        .lines()
                        .filter(|l| !l.starts_with(['*', '$']))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for i in 0..20 {
            let (sem, taken) = (m.semaphore(1).unwrap(), m.event().unwrap());
            pool.apply::<_, ()>("hold_semaphore", &(sem.clone(), 1u32, taken, 0u64))
                .unwrap();
            if i == 0 {
                assert_eq!(held().len(), 1, "the host holds the permit");
            }
            // This program gives back the permit the task kept.
            sem.release().unwrap();
            assert_eq!(sem.value().unwrap(), 1);
        }
        assert_eq!(held(), Vec::<String>::new(), "semaphores released");
        for i in 0..10 {
            let barrier = m.barrier(2).unwrap();
            let party = pool
                .apply_async::<_, u32>("barrier_wait", &(barrier.clone(), None::<u64>))
                .unwrap();
            assert!(eventually(Duration::from_secs(30), || barrier
                .n_waiting()
                .unwrap()
                == 1));
            if i == 0 {
                assert_eq!(held().len(), 1, "the host holds a place at the barrier");
            }
            barrier.wait().unwrap();
            party.get().unwrap();
        }
        assert_eq!(held(), Vec::<String>::new(), "barriers' rounds completed");
        for _ in 0..5 {
            let lock = m.lock().unwrap();
            assert!(
                pool.apply::<_, ()>("lock_then_panic", &(lock.clone(),))
                    .is_err()
            );
            assert!(lock.acquire_timeout(Some(Duration::from_secs(10))).unwrap());
            lock.release().unwrap();
        }
        assert_eq!(
            held(),
            Vec::<String>::new(),
            "locks given back by dying tasks"
        );
    });
}
