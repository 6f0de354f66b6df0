//! `wasmpool serve`'s shared objects over HTTP: made, operated and passed to tasks by
//! their tenant only.

use super::*;

impl Server {
    pub(super) fn create(&self, t: &T, body: &Value) -> Value {
        let r = self.post_json(t, "/v1/objects", body);
        assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
        r.json().unwrap()
    }

    pub(super) fn op_raw(&self, t: &T, reference: &str, op: &str, body: &Value) -> Response {
        self.post_json(t, &format!("/v1/objects/{reference}/{op}"), body)
    }

    /// An operation that succeeds; answers its `value`.
    pub(super) fn op(&self, t: &T, reference: &str, op: &str, body: &Value) -> Value {
        let r = self.op_raw(t, reference, op, body);
        assert_eq!(
            r.status().as_u16(),
            200,
            "{op} on {reference}: {}",
            r.text().unwrap_or_default()
        );
        let v: Value = r.json().unwrap();
        v["value"].clone()
    }

    /// An operation that fails; answers its status and code.
    pub(super) fn op_fails(&self, t: &T, reference: &str, op: &str, body: &Value) -> (u16, String) {
        let (status, p) = problem(self.op_raw(t, reference, op, body));
        (status, p["code"].as_str().unwrap_or("").to_string())
    }
}

#[test]
fn serve_objects_of_every_kind_are_made_operated_and_passed_to_tasks() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-objects", &[A]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        let none = json!({});

        // Queue: put, get, sizes; a get with nothing there is 409 `empty` at its timeout.
        let q = server.create(&A, &json!({"kind": "queue", "name": "q"}));
        assert_eq!(
            (q["kind"].as_str(), q["name"].as_str()),
            (Some("queue"), Some("q"))
        );
        let qid = q["id"].as_str().unwrap().to_string();
        server.op(&A, "q", "put", &json!({"value": {"a": [1, 2]}}));
        assert_eq!(server.op(&A, &qid, "qsize", &none), 1);
        assert_eq!(server.op(&A, "q", "get", &none), json!({"a": [1, 2]}));
        assert_eq!(server.op(&A, "q", "empty", &none), true);
        assert_eq!(
            server.op_fails(&A, "q", "get", &json!({"timeout": 0})),
            (409, "empty".into())
        );
        let bounded = server.create(&A, &json!({"kind": "queue", "maxsize": 1}));
        let bid = bounded["id"].as_str().unwrap();
        server.op(&A, bid, "put", &json!({"value": 1}));
        assert_eq!(server.op(&A, bid, "full", &none), true);
        assert_eq!(
            server.op_fails(&A, bid, "put", &json!({"value": 2, "timeout": 0.05})),
            (409, "full".into())
        );
        // A get blocked over HTTP is answered by a put made after it started.
        let getter = {
            let (url, token) = (server.url.clone(), A.token());
            std::thread::spawn(move || {
                let r = Client::new()
                    .post(format!("{url}/v1/objects/q/get"))
                    .bearer_auth(token)
                    .json(&json!({"timeout": 60}))
                    .send()
                    .unwrap();
                r.json::<Value>().unwrap()
            })
        };
        // Other requests go on while it waits.
        assert_eq!(server.op(&A, "q", "qsize", &none), 0);
        std::thread::sleep(Duration::from_millis(200));
        server.op(&A, "q", "put", &json!({"value": "late"}));
        assert_eq!(getter.join().unwrap()["value"], "late");

        let jq = server.create(&A, &json!({"kind": "joinable_queue", "name": "jq"}));
        assert_eq!(jq["maxsize"], 0);
        server.op(&A, "jq", "put", &json!({"value": 1}));
        server.op(&A, "jq", "get", &none);
        server.op(&A, "jq", "task_done", &none);
        server.op(&A, "jq", "join", &json!({"timeout": 1}));
        assert_eq!(
            server.op_fails(&A, "q", "task_done", &none),
            (404, "unknown_operation".into())
        );

        // Dict and list.
        server.create(&A, &json!({"kind": "dict", "name": "d"}));
        server.op(&A, "d", "set", &json!({"key": "x", "value": [1, "two"]}));
        assert_eq!(
            server.op(&A, "d", "get", &json!({"key": "x"})),
            json!([1, "two"])
        );
        assert_eq!(
            server.op(&A, "d", "get", &json!({"key": "nope", "default": 0})),
            0
        );
        assert_eq!(
            server.op(&A, "d", "increment", &json!({"key": "n", "delta": 5})),
            5
        );
        assert_eq!(
            server.op(
                &A,
                "d",
                "compare_and_swap",
                &json!({"key": "n", "expected": 5, "new": 7})
            ),
            true
        );
        assert_eq!(
            server.op(
                &A,
                "d",
                "compare_and_swap",
                &json!({"key": "n", "expected": 5, "new": 9})
            ),
            false
        );
        server.op(&A, "d", "update", &json!({"items": {"y": 1}}));
        assert_eq!(server.op(&A, "d", "len", &none), 3);
        let mut keys: Vec<String> =
            serde_json::from_value(server.op(&A, "d", "keys", &none)).unwrap();
        keys.sort();
        assert_eq!(keys, ["n", "x", "y"]);
        assert_eq!(
            server.op_fails(&A, "d", "delete", &json!({"key": "zzz"})),
            (409, "missing".into())
        );
        let (status, code) = server.op_fails(&A, "d", "set", &json!({"key": "k", "valu": 1}));
        assert_eq!((status, code.as_str()), (422, "invalid_field"));
        server.create(&A, &json!({"kind": "list", "name": "l"}));
        server.op(&A, "l", "append", &json!({"value": "a"}));
        server.op(&A, "l", "extend", &json!({"values": ["b", "c"]}));
        assert_eq!(server.op(&A, "l", "get", &json!({"index": -1})), "c");
        assert_eq!(server.op(&A, "l", "pop", &json!({"index": 0})), "a");
        assert_eq!(server.op(&A, "l", "items", &none), json!(["b", "c"]));
        assert_eq!(
            server.op_fails(&A, "l", "get", &json!({"index": 9})),
            (409, "missing".into())
        );

        // Locks: a plain lock is anyone's to release; an rlock is the tenant's, across
        // requests (each on whatever thread the service picks).
        server.create(&A, &json!({"kind": "lock", "name": "lk"}));
        assert_eq!(server.op(&A, "lk", "acquire", &none), true);
        assert_eq!(
            server.op(&A, "lk", "acquire", &json!({"timeout": 0})),
            false
        );
        server.op(&A, "lk", "release", &none);
        server.create(&A, &json!({"kind": "rlock", "name": "rl"}));
        for _ in 0..3 {
            assert_eq!(server.op(&A, "rl", "acquire", &none), true);
        }
        for _ in 0..3 {
            server.op(&A, "rl", "release", &none);
        }
        assert_eq!(
            server.op_fails(&A, "rl", "release", &none),
            (409, "not_owner".into())
        );
        server.create(&A, &json!({"kind": "semaphore", "name": "sem", "value": 2}));
        server.op(&A, "sem", "acquire", &none);
        server.op(&A, "sem", "acquire", &none);
        assert_eq!(
            server.op(&A, "sem", "acquire", &json!({"timeout": 0})),
            false
        );
        assert_eq!(server.op(&A, "sem", "value", &none), 0);
        server.op(&A, "sem", "release", &none);
        server.create(
            &A,
            &json!({"kind": "bounded_semaphore", "name": "bs", "value": 1}),
        );
        assert_eq!(
            server.op_fails(&A, "bs", "release", &none),
            (409, "not_owner".into())
        );
        server.create(&A, &json!({"kind": "event", "name": "ev"}));
        assert_eq!(
            server.op(&A, "ev", "wait", &json!({"timeout": 0.05})),
            false
        );
        server.op(&A, "ev", "set", &none);
        assert_eq!(server.op(&A, "ev", "wait", &none), true);
        server.op(&A, "ev", "clear", &none);
        server.create(&A, &json!({"kind": "barrier", "name": "bar", "parties": 1}));
        assert_eq!(server.op(&A, "bar", "wait", &none), 0);
        assert_eq!(server.op(&A, "bar", "parties", &none), 1);
        server.create(&A, &json!({"kind": "condition", "name": "cv"}));
        assert_eq!(server.op(&A, "cv", "acquire", &none), true);
        // The wait releases the tenant's hold and takes it again, in one request.
        assert_eq!(
            server.op(&A, "cv", "wait", &json!({"timeout": 0.05})),
            false
        );
        server.op(&A, "cv", "notify_all", &none);
        server.op(&A, "cv", "release", &none);
        assert_eq!(
            server.op_fails(&A, "cv", "release", &none),
            (409, "not_owner".into())
        );

        // Pipe: what one end sends the other receives.
        server.create(&A, &json!({"kind": "pipe", "name": "p"}));
        server.op(&A, "p", "send", &json!({"end": 0, "value": 41}));
        assert_eq!(
            server.op(&A, "p", "poll", &json!({"end": 1, "timeout": 1})),
            true
        );
        assert_eq!(server.op(&A, "p", "recv", &json!({"end": 1})), 41);
        let (status, p) = problem(server.op_raw(&A, "p", "recv", &json!({"end": 2})));
        assert_eq!((status, p["field"].as_str()), (422, Some("end")));

        // Bad creations name the field.
        let bad = |body: Value| problem(server.post_json(&A, "/v1/objects", &body));
        assert_eq!(bad(json!({"kind": "spoon"})).1["field"], "kind");
        assert_eq!(bad(json!({"kind": "barrier"})).1["field"], "parties");
        assert_eq!(
            bad(json!({"kind": "dict", "maxsize": 3})).1["field"],
            "maxsize"
        );
        assert_eq!(
            bad(json!({"kind": "dict", "name": "a.b"})).1["field"],
            "name"
        );
        let (status, p) = bad(json!({"kind": "dict", "name": "d"}));
        assert_eq!((status, p["code"].as_str()), (409, Some("name_taken")));

        // Passed to tasks, by name or id, whole or as a pipe end; in tasks and maps.
        let run = |task: &str, args: Value| {
            server.run(&A, &json!({"module": module, "task": task, "args": args}))
        };
        let done = run("queue_produce", json!([format!("@{qid}"), 3]));
        assert!(done.get("error").is_none(), "{done}");
        let got: Vec<Value> = (0..4).map(|_| server.op(&A, "q", "get", &none)).collect();
        assert_eq!(got, [json!(0), json!(1), json!(2), Value::Null]);
        let done = run("atomic_increments", json!(["@d", 4]));
        assert!(done.get("error").is_none(), "{done}");
        let map = server.post_json(
            &A,
            "/v1/maps",
            &json!({"module": module, "task": "atomic_increments", "star": true,
                    "items": [["@d", 1], ["@d", 2], ["@d", 3]]}),
        );
        assert_eq!(map.status().as_u16(), 202);
        let map: Value = map.json().unwrap();
        let mut body = String::new();
        server
            .get(
                &A,
                &format!("/v1/maps/{}/results", map["id"].as_str().unwrap()),
            )
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body.lines().count(), 3, "{body}");
        assert!(!body.contains("\"error\""), "{body}");
        assert_eq!(
            server.op(&A, "d", "get", &json!({"key": "count"})),
            4 + 1 + 2 + 3
        );
        let pong = server.submit(
            &A,
            &json!({"module": module, "task": "pipe_pong", "args": ["@p.1", 2]}),
        );
        for i in [5, 6] {
            server.op(&A, "p", "send", &json!({"end": 0, "value": i}));
            assert_eq!(
                server.op(&A, "p", "recv", &json!({"end": 0, "timeout": 30})),
                i
            );
        }
        assert!(server.wait(&A, &pong).get("error").is_none());
        // A task holds the tenant's lock; the tenant sees it held, and releases it.
        let held = run("hold_lock", json!(["@lk", "@ev", 0]));
        assert!(held.get("error").is_none(), "{held}");
        assert_eq!(server.op(&A, "ev", "is_set", &none), true);
        assert_eq!(server.op(&A, "lk", "locked", &none), true);
        server.op(&A, "lk", "release", &none);
        assert_eq!(server.op(&A, "lk", "acquire", &json!({"timeout": 0})), true);
        // `@@` passes a string that starts with `@`.
        assert_eq!(run("greet", json!(["@@ada"]))["result"], "hello, @ada");

        // List, show, delete.
        let all: Value = server.get(&A, "/v1/objects").json().unwrap();
        assert_eq!(all["objects"].as_array().unwrap().len(), 13);
        let shown: Value = server.get(&A, "/v1/objects/q").json().unwrap();
        assert_eq!(shown["id"], qid.as_str());
        assert!(shown["ops"].as_array().unwrap().contains(&json!("get")));
        let r = server
            .req(reqwest::Method::DELETE, "/v1/objects/q", Some(&A.token()))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(
            problem(server.get(&A, &format!("/v1/objects/{qid}"))).0,
            404
        );
        assert_eq!(
            server.op_fails(&A, &qid, "qsize", &none),
            (404, "object_not_found".into())
        );
        let (status, p) = problem(server.post_json(
            &A,
            "/v1/tasks",
            &json!({"module": module, "task": "queue_consume", "args": ["@q"]}),
        ));
        assert_eq!(
            (status, p["code"].as_str(), p["field"].as_str()),
            (404, Some("object_not_found"), Some("args[0]"))
        );
        drop(s.dir);
    });
}

#[test]
fn serve_a_tenants_objects_are_invisible_and_unusable_to_the_others() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-objects-iso", &[A, B]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        server.upload_testkit(&B);
        let none = json!({});
        let a_dict = server.create(&A, &json!({"kind": "dict", "name": "shared"}));
        let a_id = a_dict["id"].as_str().unwrap().to_string();
        server.op(&A, "shared", "set", &json!({"key": "secret", "value": 1}));

        // Bob: no list entry, no show, no operation, no delete, by id or by name.
        let listed: Value = server.get(&B, "/v1/objects").json().unwrap();
        assert_eq!(listed["objects"], json!([]));
        for reference in [a_id.as_str(), "shared"] {
            let (status, p) = problem(server.get(&B, &format!("/v1/objects/{reference}")));
            assert_eq!(
                (status, p["code"].as_str()),
                (404, Some("object_not_found"))
            );
            assert!(!p.to_string().contains("secret"));
            assert_eq!(
                server.op_fails(&B, reference, "get", &json!({"key": "secret"})),
                (404, "object_not_found".into())
            );
            let r = server
                .req(
                    reqwest::Method::DELETE,
                    &format!("/v1/objects/{reference}"),
                    Some(&B.token()),
                )
                .send()
                .unwrap();
            assert_eq!(problem(r).0, 404);
            // Nor can he pass it to a task or a map item.
            let (status, p) = problem(server.post_json(
                &B,
                "/v1/tasks",
                &json!({"module": module, "task": "atomic_increments", "args": [format!("@{reference}"), 1]}),
            ));
            assert_eq!(
                (status, p["code"].as_str(), p["field"].as_str()),
                (404, Some("object_not_found"), Some("args[0]"))
            );
            let (status, p) = problem(server.post_json(
                &B,
                "/v1/maps",
                &json!({"module": module, "task": "atomic_increments", "star": true,
                        "items": [[1, 1], [format!("@{reference}"), 1]]}),
            ));
            assert_eq!(
                (status, p["code"].as_str(), p["field"].as_str()),
                (404, Some("object_not_found"), Some("items[1][0]"))
            );
        }
        // A raw handle (what a task sees; the service never shows one) is refused anywhere
        // in the arguments, forged or not.
        for forged in [
            json!(["wasmpool:dict", 3, 12345]),
            json!({"nested": [["wasmpool:lock", 1, 2]]}),
        ] {
            let (status, p) = problem(server.post_json(
                &B,
                "/v1/tasks",
                &json!({"module": module, "task": "try_lock", "args": [forged]}),
            ));
            assert_eq!(
                (status, p["code"].as_str(), p["field"].as_str()),
                (422, Some("forged_handle"), Some("args[0]"))
            );
        }
        // Bob's own object of the same name is another object.
        server.create(&B, &json!({"kind": "dict", "name": "shared"}));
        let done = server.run(
            &B,
            &json!({"module": module, "task": "atomic_increments", "args": ["@shared", 2]}),
        );
        assert!(done.get("error").is_none(), "{done}");
        assert_eq!(server.op(&B, "shared", "len", &none), 1);
        assert_eq!(
            server.op(&A, "shared", "get", &json!({"key": "count"})),
            Value::Null
        );
        assert_eq!(server.op(&A, "shared", "get", &json!({"key": "secret"})), 1);
        drop(s.dir);
    });
}

#[test]
fn serve_object_quotas_bound_a_tenant_and_a_deleted_object_fails_the_task_that_named_it() {
    within(Duration::from_secs(300), || {
        let small = T {
            name: "small",
            quotas: "running = 1\nmax_objects = 2\nobject_calls = 1",
        };
        let s = setup("serve-objects-quota", &[small]);
        let small = T {
            name: "small",
            quotas: "",
        };
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&small);
        server.create(&small, &json!({"kind": "queue", "name": "q"}));
        server.create(&small, &json!({"kind": "dict", "name": "d"}));
        let (status, p) =
            problem(server.post_json(&small, "/v1/objects", &json!({"kind": "list"})));
        assert_eq!((status, p["code"].as_str()), (429, Some("object_quota")));

        // One call at a time: while a get waits, the next call is 429.
        let getter = {
            let (url, token) = (server.url.clone(), small.token());
            std::thread::spawn(move || {
                loop {
                    // Refused only while one of the calls below is in progress.
                    let status = Client::new()
                        .post(format!("{url}/v1/objects/q/get"))
                        .bearer_auth(&token)
                        .json(&json!({"timeout": 3}))
                        .send()
                        .unwrap()
                        .status()
                        .as_u16();
                    if status != 429 {
                        return status;
                    }
                }
            })
        };
        assert!(eventually(Duration::from_secs(20), || {
            server
                .op_raw(&small, "q", "qsize", &json!({}))
                .status()
                .as_u16()
                == 429
        }));
        assert_eq!(getter.join().unwrap(), 409, "the get timed out: `empty`");
        assert_eq!(server.op(&small, "q", "qsize", &json!({})), 0);

        // A task naming an object deleted before it starts fails with its own code.
        let first = server.submit(
            &small,
            &json!({"module": module, "task": "sleep_ms", "args": [1500]}),
        );
        let named = server.submit(
            &small,
            &json!({"module": module, "task": "atomic_increments", "args": ["@d", 1]}),
        );
        let r = server
            .req(
                reqwest::Method::DELETE,
                "/v1/objects/d",
                Some(&small.token()),
            )
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        let named = server.wait(&small, &named);
        assert_eq!(named["error"]["code"], "object_not_found", "{named}");
        assert_eq!(server.wait(&small, &first)["result"], 1500);
        // Its place in the quota is free again.
        server.create(&small, &json!({"kind": "list"}));
        drop(s.dir);
    });
}

#[test]
fn serve_a_deleted_object_a_running_task_holds_counts_in_the_quota_until_the_task_ends() {
    within(Duration::from_secs(120), || {
        const ONE: T = T {
            name: "one",
            quotas: "max_objects = 1",
        };
        let one = ONE;
        let s = setup("serve-objects-deleted-held", &[ONE]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&one);
        server.create(&one, &json!({"kind": "queue", "name": "q"}));
        // A task holds the queue, waiting on it for 2 s; the tenant deletes it meanwhile.
        let id = server.submit(
            &one,
            &json!({"module": module, "task": "get_timeout", "args": ["@q", 2000]}),
        );
        assert!(eventually(Duration::from_secs(20), || {
            let t: Value = server.get(&one, &format!("/v1/tasks/{id}")).json().unwrap();
            t["state"] == "running"
        }));
        let r = server
            .req(reqwest::Method::DELETE, "/v1/objects/q", Some(&one.token()))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        // Out of the table (404 by name), but held: still counted.
        let (status, _) = server.op_fails(&one, "q", "qsize", &json!({}));
        assert_eq!(status, 404);
        let (status, p) = problem(server.post_json(&one, "/v1/objects", &json!({"kind": "dict"})));
        assert_eq!(
            (status, p["code"].as_str()),
            (429, Some("object_quota")),
            "{p}"
        );
        let done = server.wait(&one, &id);
        assert!(
            done.get("error").is_some(),
            "the get should time out: {done}"
        );
        // The task is over: the queue is freed and the quota's place with it.
        server.create(&one, &json!({"kind": "dict"}));
        drop(s.dir);
    });
}

#[test]
fn serve_objects_do_not_survive_a_restart_and_a_task_naming_one_then_fails_alone() {
    within(Duration::from_secs(300), || {
        let one = T {
            name: "one",
            quotas: "running = 1",
        };
        let s = setup("serve-objects-restart", &[one]);
        let one = T {
            name: "one",
            quotas: "",
        };
        let mut server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&one);
        server.create(&one, &json!({"kind": "dict", "name": "d"}));
        let busy = server.submit(
            &one,
            &json!({"module": module, "task": "sleep_ms", "args": [20_000]}),
        );
        let named = server.submit(
            &one,
            &json!({"module": module, "task": "atomic_increments", "args": ["@d", 1]}),
        );
        let plain = server.submit(
            &one,
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        assert!(eventually(Duration::from_secs(30), || server
            .state(&one, &busy)
            == "running"));
        assert_eq!(server.state(&one, &named), "queued");
        server.kill();

        let server = Server::start(&s.state, &s.tenants, &[]);
        let listed: Value = server.get(&one, "/v1/objects").json().unwrap();
        assert_eq!(listed["objects"], json!([]), "objects live in memory only");
        let named = server.wait(&one, &named);
        assert_eq!(named["error"]["code"], "object_not_found", "{named}");
        assert_eq!(server.wait(&one, &plain)["result"], 3);
        // A new object of the old name is a new, empty one.
        server.create(&one, &json!({"kind": "dict", "name": "d"}));
        assert_eq!(server.op(&one, "d", "len", &json!({})), 0);
        drop(s.dir);
    });
}
