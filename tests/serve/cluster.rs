//! `wasmpool serve --cluster URL`: the service's tasks and maps run on the hosts of a cluster
//! (a real `redis-server`, a real `wasmpool worker --join --all-tenants`), each tenant's on
//! its own task stream; results, output, usage and cancel as with local pools.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Server, T, setup};
use crate::cluster::redis::RedisServer;
use crate::cluster::{WorkerHost, holds_work_on};
use crate::util::{eventually, within};

/// A tenant whose tasks may run long (the cancelled one would sleep ten minutes).
const A: T = T {
    name: "alice",
    quotas: "max_timeout_s = 900.0",
};

#[test]
fn serve_on_a_cluster_runs_tasks_and_maps_on_its_hosts_and_cancels_there() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let host = WorkerHost::start_with(&redis, 1, &["--all-tenants"]);
        let s = setup("serve-cluster", &[A]);
        let server = Server::start(&s.state, &s.tenants, &["--cluster", &redis.url()]);
        let module = server.upload_testkit(&A);

        let done = server.run(
            &A,
            &json!({"module": module, "task": "add", "args": [2, 3]}),
        );
        assert_eq!(done["result"], 5, "{done}");
        // It ran on the host, through the tenant's own stream.
        let committed = redis.command("HGET {wasmpool}:v3:stats committed");
        assert!(
            !committed.contains("$-1"),
            "nothing committed: {committed:?}"
        );
        assert!(
            redis
                .command("SMEMBERS {wasmpool}:v3:tenants")
                .contains("alice")
        );
        // Its weight (the file's default, 1) was written for the hosts to share by.
        assert_eq!(
            redis.command("HGET {wasmpool}:v3:weights alice").trim(),
            "$1\r\n1"
        );
        let out = server.run(
            &A,
            &json!({"module": module, "task": "tick", "args": [2, 0]}),
        );
        assert_eq!(out["stdout"], "tick 0\ntick 1\n", "{out}");
        let err = server.run(
            &A,
            &json!({"module": module, "task": "fail", "args": ["no"]}),
        );
        assert_eq!(err["error"]["code"], "task_failed", "{err}");
        let big = server.run(
            &A,
            &json!({"module": module, "task": "alloc_mib", "args": [20]}),
        );
        assert!(
            big["usage"]["peak_memory_bytes"].as_u64().unwrap_or(0) >= 20 << 20,
            "{big}"
        );

        // A map, its records in input order.
        let r = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/maps?module={module}&task=square_or_panic&chunksize=2"),
                Some(&A.token()),
            )
            .header("content-type", "application/x-ndjson")
            .body("10\n11\n12\n13\n14\n")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let id = r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let lines: Vec<Value> = BufReader::new(server.get(&A, &format!("/v1/maps/{id}/results")))
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        let inputs: Vec<_> = lines.iter().map(|l| l["input"].as_u64().unwrap()).collect();
        assert_eq!(inputs, [10, 11, 12, 13, 14]);
        assert_eq!(lines[0]["result"], 100);
        assert!(lines[3]["error"].as_str().unwrap().contains("unlucky 13"));

        // Cancel a running task: the host stops it (the sleep is longer than the test).
        let long = server.submit(
            &A,
            &json!({"module": module, "task": "sleep_ms", "args": [600_000], "limits": {"timeout_s": 900.0}}),
        );
        assert!(eventually(Duration::from_secs(30), || holds_work_on(
            &redis,
            "{wasmpool}:v3:tasks:alice",
            host.pid()
        )));
        let r: Value = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/tasks/{long}/cancel"),
                Some(&A.token()),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["cancelled"], true, "{r}");
        let done = server.wait(&A, &long);
        assert_eq!(done["error"]["code"], "cancelled", "{done}");
        // The host's one slot is free again.
        let after = server.run(
            &A,
            &json!({"module": module, "task": "add", "args": [1, 1]}),
        );
        assert_eq!(after["result"], 2, "{after}");
        drop(s.dir);
    });
}

#[test]
fn serve_on_a_cluster_refuses_a_tenant_name_a_cluster_cannot_use_at_startup() {
    within(Duration::from_secs(60), || {
        // A fine name for a local service; a cluster tenant is 1 to 64 of A-Z a-z 0-9 _ -.
        let spaced = T {
            name: "team alice",
            quotas: "",
        };
        let s = setup("serve-cluster-names", &[spaced]);
        let out = crate::util::cli()
            .args(["serve", "--listen", "127.0.0.1:0", "--tenants"])
            .arg(&s.tenants)
            .arg("--state")
            .arg(&s.state)
            .args(["--cluster", "redis://127.0.0.1:1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("with --cluster") && stderr.contains("team alice"),
            "{stderr}"
        );
    });
}

/// The keys of the objects in `redis` whose kind is `kind` (their hashes, `o:<n>`).
fn object_keys(redis: &RedisServer, kind: &str) -> Vec<String> {
    redis
        .keys("{wasmpool}:v3:o:*")
        .into_iter()
        .filter(|k| k.matches(':').count() == 3)
        .filter(|k| redis.command(&format!("HGET {k} k")).contains(kind))
        .collect()
}

#[test]
fn serve_on_a_cluster_keeps_its_tenants_objects_in_redis_where_the_hosts_tasks_use_them() {
    within(Duration::from_secs(240), || {
        let redis = RedisServer::start();
        let _host = WorkerHost::start_with(&redis, 2, &["--all-tenants"]);
        let s = setup("serve-cluster-objects", &[A]);
        let server = Server::start(&s.state, &s.tenants, &["--cluster", &redis.url()]);
        let module = server.upload_testkit(&A);
        let none = json!({});
        server.create(&A, &json!({"kind": "dict", "name": "counts"}));
        server.create(&A, &json!({"kind": "lock", "name": "l"}));
        server.create(&A, &json!({"kind": "queue", "name": "q"}));
        // They are made in Redis, not in the service.
        assert_eq!(object_keys(&redis, "dict").len(), 1);
        assert_eq!(object_keys(&redis, "lock").len(), 1);

        // Two tasks on the host's two slots share the dict under the lock.
        let ids: Vec<String> = (0..2)
            .map(|_| {
                server.submit(
                    &A,
                    &json!({"module": module, "task": "locked_increments", "args": ["@counts", "@l", 50]}),
                )
            })
            .collect();
        for id in &ids {
            let done = server.wait(&A, id);
            assert!(done.get("error").is_none(), "{done}");
        }
        assert_eq!(
            server.op(&A, "counts", "get", &json!({"key": "count"})),
            100
        );
        assert_eq!(server.op(&A, "l", "locked", &none), false);
        // A host's task fills a queue the service reads; a map's items name the dict.
        let done = server.run(
            &A,
            &json!({"module": module, "task": "queue_produce", "args": ["@q", 2]}),
        );
        assert!(done.get("error").is_none(), "{done}");
        let got: Vec<Value> = (0..3).map(|_| server.op(&A, "q", "get", &none)).collect();
        assert_eq!(got, [json!(0), json!(1), Value::Null]);
        let map = server.post_json(
            &A,
            "/v1/maps",
            &json!({"module": module, "task": "atomic_increments", "star": true,
                    "items": [["@counts", 1], ["@counts", 2]]}),
        );
        assert_eq!(map.status().as_u16(), 202);
        let map: Value = map.json().unwrap();
        let lines: Vec<Value> = BufReader::new(server.get(
            &A,
            &format!("/v1/maps/{}/results", map["id"].as_str().unwrap()),
        ))
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
        assert!(lines.iter().all(|l| l.get("error").is_none()), "{lines:?}");
        assert_eq!(
            server.op(&A, "counts", "get", &json!({"key": "count"})),
            103
        );

        // Deleted with no task holding it, the dict is removed from Redis at once; the
        // lock is kept as it was.
        let dict = object_keys(&redis, "dict").remove(0);
        let lock = object_keys(&redis, "lock").remove(0);
        let r = server
            .req(
                reqwest::Method::DELETE,
                "/v1/objects/counts",
                Some(&A.token()),
            )
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(object_keys(&redis, "dict"), Vec::<String>::new());
        for pattern in [dict.clone(), format!("{dict}:*")] {
            let left = redis.keys(&pattern);
            assert!(
                left.is_empty(),
                "keys of the deleted dict are left: {left:?}"
            );
        }
        assert!(redis.pttl(&lock) > 60_000, "the lock's TTL was changed");
        let (status, _) = server.op_fails(&A, "counts", "get", &json!({"key": "count"}));
        assert_eq!(status, 404);
        drop(s.dir);
    });
}

#[test]
fn serve_on_a_cluster_keeps_a_deleted_object_a_task_holds_counted_in_the_quota_until_it_ends() {
    within(Duration::from_secs(240), || {
        const ONE: T = T {
            name: "carol",
            quotas: "max_objects = 1",
        };
        let redis = RedisServer::start();
        let host = WorkerHost::start_with(&redis, 1, &["--all-tenants"]);
        let s = setup("serve-cluster-deleted-held", &[ONE]);
        let server = Server::start(&s.state, &s.tenants, &["--cluster", &redis.url()]);
        let module = server.upload_testkit(&ONE);
        server.create(&ONE, &json!({"kind": "queue", "name": "q"}));
        // A task waits on the queue for 3 s (and then fails `empty`).
        let id = server.submit(
            &ONE,
            &json!({"module": module, "task": "get_timeout", "args": ["@q", 3000]}),
        );
        assert!(eventually(Duration::from_secs(30), || holds_work_on(
            &redis,
            "{wasmpool}:v3:tasks:carol",
            host.pid()
        )));
        let r = server
            .req(reqwest::Method::DELETE, "/v1/objects/q", Some(&ONE.token()))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        // Out of the table, but the running task still holds it: in Redis, and counted.
        assert_eq!(object_keys(&redis, "queue").len(), 1);
        let r = server.post_json(&ONE, "/v1/objects", &json!({"kind": "dict"}));
        let (status, p) = super::problem(r);
        assert_eq!(
            (status, p["code"].as_str()),
            (429, Some("object_quota")),
            "{p}"
        );
        let quota: Value = server.get(&ONE, "/v1/quota").json().unwrap();
        assert_eq!(quota["objects"], 1, "{quota}");
        // The task ends: the queue is removed from Redis and the quota is free again.
        let done = server.wait(&ONE, &id);
        assert!(done.get("error").is_some(), "{done}");
        assert!(
            eventually(Duration::from_secs(10), || object_keys(&redis, "queue")
                .is_empty()),
            "the deleted queue outlived the task that held it"
        );
        server.create(&ONE, &json!({"kind": "dict"}));
        drop(s.dir);
    });
}

#[test]
fn serve_on_a_cluster_whose_redis_is_down_answers_503_for_a_new_object_and_keeps_serving() {
    within(Duration::from_secs(60), || {
        let s = setup("serve-cluster-no-redis", &[A]);
        // Nothing listens on port 1.
        let server = Server::start(&s.state, &s.tenants, &["--cluster", "redis://127.0.0.1:1"]);
        let r = server.post_json(&A, "/v1/objects", &json!({"kind": "dict", "name": "d"}));
        let (status, p) = super::problem(r);
        assert_eq!(
            (status, p["code"].as_str()),
            (503, Some("objects_unavailable")),
            "{p}"
        );
        // Nothing was kept: the name is free, the quota untouched.
        let listed: Value = server.get(&A, "/v1/objects").json().unwrap();
        assert_eq!(listed["objects"], json!([]), "{listed}");
        let health = server
            .req(reqwest::Method::GET, "/healthz", None)
            .send()
            .unwrap();
        assert!(health.status().is_success());
        drop(s.dir);
    });
}

/// An operation on an object while the cluster's Redis is down is 503 `objects_unavailable`
/// (not the caller's fault: worth trying again), not 422 `invalid_operation`; the service
/// keeps serving, and the object's operations answer again once Redis is back.
#[test]
fn serve_on_a_cluster_answers_503_for_an_operation_while_its_redis_is_down() {
    within(Duration::from_secs(90), || {
        let mut redis = RedisServer::start();
        let s = setup("serve-cluster-op-no-redis", &[A]);
        let server = Server::start(&s.state, &s.tenants, &["--cluster", &redis.url()]);
        server.create(&A, &json!({"kind": "dict", "name": "d"}));
        assert_eq!(server.op(&A, "d", "get", &json!({"key": "k"})), Value::Null);
        redis.kill();
        let r = server.op_raw(&A, "d", "get", &json!({"key": "k"}));
        let (status, p) = super::problem(r);
        assert_eq!(
            (status, p["code"].as_str()),
            (503, Some("objects_unavailable")),
            "{p}"
        );
        let detail = p["detail"].as_str().unwrap_or("");
        assert!(detail.contains("cannot reach Redis"), "{p}");
        let health = server
            .req(reqwest::Method::GET, "/healthz", None)
            .send()
            .unwrap();
        assert!(health.status().is_success());
        // Back, without its data: the object is gone there (410), no longer unreachable.
        redis.restart();
        let (status, code) = server.op_fails(&A, "d", "get", &json!({"key": "k"}));
        assert_eq!((status, code.as_str()), (410, "object_gone"));
        drop(s.dir);
    });
}

/// A tenant's weight is written again after the cluster's Redis lost its data (restarted
/// without persistence, as the cluster allows): else the hosts share by weight 1 from then
/// on, until the service restarts.
#[test]
fn serve_on_a_cluster_writes_a_tenants_weight_again_after_its_redis_lost_its_data() {
    within(Duration::from_secs(120), || {
        let mut redis = RedisServer::start();
        let s = setup("serve-cluster-weight-again", &[A]);
        let text = std::fs::read_to_string(&s.tenants)
            .unwrap()
            .replace("[tenant.quotas]", "weight = 3\n[tenant.quotas]");
        std::fs::write(&s.tenants, text).unwrap();
        let server = Server::start(&s.state, &s.tenants, &["--cluster", &redis.url()]);
        let module = server.upload_testkit(&A);
        let weight = |r: &RedisServer| r.command("HGET {wasmpool}:v3:weights alice");
        let task = json!({"module": module, "task": "tick", "args": [2, 0]});
        // No host: the tasks wait in Redis; the weight is written as they are submitted.
        server.submit(&A, &task);
        assert!(
            eventually(Duration::from_secs(30), || weight(&redis).trim()
                == "$1\r\n3"),
            "{:?}",
            weight(&redis)
        );
        redis.restart();
        assert!(weight(&redis).starts_with("$-1"), "the data is gone");
        // Past the service's WEIGHT_REFRESH (5 s), after which it writes the weight again.
        std::thread::sleep(Duration::from_secs(6));
        server.submit(&A, &task);
        assert!(
            eventually(Duration::from_secs(30), || weight(&redis).trim()
                == "$1\r\n3"),
            "not written again after Redis lost it: {:?}",
            weight(&redis)
        );
        drop(s.dir);
    });
}
