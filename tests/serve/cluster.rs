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
        let committed = redis.command("HGET wasmpool:v2:stats committed");
        assert!(
            !committed.contains("$-1"),
            "nothing committed: {committed:?}"
        );
        assert!(
            redis
                .command("SMEMBERS wasmpool:v2:tenants")
                .contains("alice")
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
            "wasmpool:v2:tasks:alice",
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
