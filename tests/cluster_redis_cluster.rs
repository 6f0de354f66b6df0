//! A wasmpool cluster on a Redis Cluster: every key shares one hash slot, and hosts, pools
//! and managers reach its node whichever node their URL names, and follow the slot when it
//! moves (a reshard) or its master dies (a failover to its replica).

use std::time::{Duration, Instant};

use wasmpool::cluster::ClusterManager;
use wasmpool::{ObjectError, Pool};

use crate::cluster::WorkerHost;
use crate::cluster::redis::{RedisCluster, RedisServer};
use crate::cluster::wait_for_hosts;
use crate::util::{eventually, testkit, within};

#[test]
fn a_cluster_on_a_redis_cluster_runs_maps_and_objects_through_any_node() {
    within(Duration::from_secs(300), || {
        testkit();
        let redis = RedisCluster::start(3);
        let owner = redis.owner_of("{wasmpool}");
        // The host and the pool name the two nodes that do not hold wasmpool's slot.
        let others: Vec<_> = redis
            .nodes
            .iter()
            .filter(|n| n.port != owner.port)
            .collect();
        assert_eq!(others.len(), 2);
        let _host = WorkerHost::start(others[0], 2);
        let pool = Pool::builder(&testkit())
            .cluster(&others[1].url())
            .build()
            .expect("a cluster pool through a node without the slot");
        wait_for_hosts(&pool, 1);

        let squares: Vec<u64> = pool.map("square", 0..2_000u64).unwrap();
        assert_eq!(squares, (0..2_000u64).map(|x| x * x).collect::<Vec<_>>());
        let sum: i64 = pool.apply("add", &(40i64, 2i64)).unwrap();
        assert_eq!(sum, 42);

        // Shared objects too, from a manager on the URL of the slot's own node.
        let m = wasmpool::cluster::ClusterManager::connect(&owner.url()).unwrap();
        let d = m.dict::<String, i64>().unwrap();
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 50u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(100));

        // Every key is on the slot's node; the others hold none.
        assert!(!owner.keys("{wasmpool}:*").is_empty());
        for node in &others {
            assert_eq!(node.command("DBSIZE").trim(), ":0", "node {}", node.port);
        }
    });
}

#[test]
fn a_pool_and_a_host_carry_on_after_the_redis_cluster_moves_wasmpools_slot() {
    within(Duration::from_secs(300), || {
        testkit();
        let redis = RedisCluster::start(3);
        let from = redis.first_owner_of("{wasmpool}");
        let to = (from + 1) % 3;
        let _host = WorkerHost::start(&redis.nodes[from], 2);
        let pool = Pool::builder(&testkit())
            .cluster(&redis.nodes[from].url())
            .build()
            .expect("a cluster pool");
        wait_for_hosts(&pool, 1);
        let squares: Vec<u64> = pool.map("square", 0..200u64).unwrap();
        assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
        // A dict used before the move: its manager's connection, and the host's objects
        // connections, are pooled, to the old node.
        let m = wasmpool::cluster::ClusterManager::connect(&redis.nodes[from].url()).unwrap();
        let d = m.dict::<String, i64>().unwrap();
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 10u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(20));

        // A reshard moves the slot, and every key, to another node: the pool's submission
        // connection, and the host's, are to a node that answers `MOVED` now.
        redis.move_slot_of("{wasmpool}", from, to);
        assert!(redis.nodes[from].keys("{wasmpool}:*").is_empty());
        assert!(!redis.nodes[to].keys("{wasmpool}:*").is_empty());
        let squares: Vec<u64> = pool
            .map("square", 0..200u64)
            .unwrap_or_else(|e| panic!("a map after the slot moved: {e}"));
        assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
        assert_eq!(pool.apply::<_, i64>("add", &(40i64, 2i64)).unwrap(), 42);
        // Its operations, the manager's and the tasks', go on at the new node.
        assert_eq!(
            d.get(&"count".to_string())
                .unwrap_or_else(|e| panic!("a dict's get after the slot moved: {e}")),
            Some(20)
        );
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 10u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(40));
        assert!(redis.nodes[from].keys("{wasmpool}:*").is_empty());
    });
}

/// The integer field `field` of an `INFO` section's reply (`-1` if it has none).
fn info_field(node: &RedisServer, section: &str, field: &str) -> i64 {
    let info = node.command(&format!("INFO {section}"));
    info.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("{field}:")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// How many entries were ever added to the untenanted task stream (on the node that holds
/// it).
pub(crate) fn entries_added(node: &RedisServer) -> i64 {
    let reply = node.command("XINFO STREAM {wasmpool}:v3:tasks");
    let mut lines = reply.lines().map(str::trim_end);
    lines
        .by_ref()
        .find(|l| *l == "entries-added")
        .and(lines.next())
        .and_then(|l| l.trim_start_matches(':').parse().ok())
        .unwrap_or(-1)
}

/// A failover: the master that serves wasmpool's slot is killed (SIGKILL) while a map runs,
/// and its replica is promoted. The pool, the host and a manager, all named another
/// master's URL (which then says where the slot went), follow it there: every result comes,
/// in order (those of a map submitted while the master is down too), what was written
/// before is kept, and the pool carries on.
#[test]
fn a_map_and_shared_objects_carry_on_across_a_failover_of_the_slots_master() {
    within(Duration::from_secs(120), || {
        testkit();
        let mut redis = RedisCluster::start_with_replicas(3);
        let owner = redis.first_owner_of("{wasmpool}");
        let replica = owner + 3;
        let url = redis.nodes[(owner + 1) % 3].url();
        let host = WorkerHost::start(&redis.nodes[(owner + 1) % 3], 2);
        let pool = Pool::builder(&testkit())
            .cluster(&url)
            .build()
            .expect("a cluster pool");
        wait_for_hosts(&pool, 1);
        let m = ClusterManager::connect(&url).unwrap();
        let (d, lock) = (m.dict::<String, i64>().unwrap(), m.lock().unwrap());
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 10u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(20));
        // Redis replicates asynchronously: what the master acknowledged in its last instant
        // may be lost with it. What came before has reached the replica.
        let caught_up = |redis: &RedisCluster| {
            let offset = info_field(&redis.nodes[owner], "replication", "master_repl_offset");
            eventually(Duration::from_secs(10), || {
                info_field(&redis.nodes[replica], "replication", "slave_repl_offset") >= offset
            })
        };
        assert!(caught_up(&redis), "the replica did not catch up");

        // 300 chunks of 5 to 15 ms for two slots: about 1.5 s of work, all of it sent
        // before the kill, a tenth of it done.
        let items: Vec<u64> = (0..300).map(|i| 5 + i % 11).collect();
        let before = entries_added(&redis.nodes[owner]);
        let run = pool
            .map_async::<_, u64>("sleep_ms", items.clone(), Some(1))
            .unwrap();
        assert!(
            eventually(Duration::from_secs(30), || entries_added(
                &redis.nodes[owner]
            ) >= before + 300
                && pool.stats().is_ok_and(|s| s.committed >= 32)),
            "the map did not start: {}",
            host.log()
        );
        assert!(!run.ready(), "the map was done before the failover");
        // The chunks' entries too have reached the replica (one lost with the master would
        // leave the map waiting: a Redis that loses acknowledged writes is not what this
        // tests).
        assert!(
            caught_up(&redis),
            "the replica did not catch up with the map's chunks"
        );
        redis.nodes[owner].kill();
        let killed = Instant::now();
        // A map submitted with the master dead, before its replica is promoted: the sender
        // waits for the new master rather than failing the chunks.
        let during = pool
            .map_async::<_, u64>("square", 0..100u64, Some(3))
            .unwrap();
        assert!(
            redis.nodes[replica]
                .command("INFO replication")
                .contains("role:slave"),
            "the replica was promoted before the submit"
        );

        // Until the replica is promoted an object's operation fails as unavailable (worth
        // trying again), never as refused, naming the node it cannot reach (not the URL's,
        // which answers); then it finds what was written before.
        let dead = format!("127.0.0.1:{}", redis.nodes[owner].port);
        let mut unavailable = 0;
        let count = loop {
            match d.get(&"count".to_string()) {
                Ok(v) => break v,
                Err(ObjectError::Unavailable(e)) => {
                    assert!(e.contains(&dead), "{e}");
                    unavailable += 1;
                }
                Err(e) => panic!("a dict's get during the failover: {e}"),
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no failover in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(count, Some(20));
        assert!(unavailable > 0, "the dict was reached with its master dead");
        assert!(
            redis.nodes[replica]
                .command("INFO replication")
                .contains("role:master"),
            "the replica was not promoted"
        );

        let got = run
            .get()
            .unwrap_or_else(|e| panic!("the map across the failover: {e}; {}", host.log()));
        assert_eq!(got, items);
        let got = during
            .get()
            .unwrap_or_else(|e| panic!("the map submitted in the failover: {e}; {}", host.log()));
        assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
        let s = pool.stats().unwrap();
        assert_eq!(s.lost, 0, "{s:?}");

        // The pool, the host and the objects carry on at the new master.
        {
            let _held = lock.lock().unwrap();
            d.set(&"after".to_string(), &1).unwrap();
        }
        pool.starmap::<_, ()>("atomic_increments", (0..2).map(|_| (d.clone(), 10u64)))
            .unwrap();
        assert_eq!(d.get(&"count".to_string()).unwrap(), Some(40));
        assert_eq!(d.get(&"after".to_string()).unwrap(), Some(1));
        let squares: Vec<u64> = pool.map("square", 0..500u64).unwrap();
        assert_eq!(squares, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
        assert!(!redis.nodes[replica].keys("{wasmpool}:*").is_empty());
    });
}
