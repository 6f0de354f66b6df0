//! A wasmpool cluster on a Redis Cluster: every key shares one hash slot, and hosts, pools
//! and managers reach its node whichever node their URL names.

use std::time::Duration;

use wasmpool::Pool;

use crate::cluster::WorkerHost;
use crate::cluster::redis::RedisCluster;
use crate::cluster::wait_for_hosts;
use crate::util::{testkit, within};

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
