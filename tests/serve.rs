//! `wasmpool serve`: the real binary on 127.0.0.1 port 0 with a temporary state directory,
//! driven by a real HTTP client. Each test runs under an outer timeout.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use serde_json::{Value, json};
use wasmpool_serve::tenants::{hex, token_digest};

use crate::util::{TempDir, eventually, start_serve, testkit, wasm_of, within};

/// A tenant of a test: its name, token and the TOML of its quotas.
struct T {
    name: &'static str,
    quotas: &'static str,
}

impl T {
    fn token(&self) -> String {
        format!("token-of-{}", self.name)
    }
}

fn write_tenants(path: &Path, tenants: &[T]) {
    let mut text = String::new();
    for t in tenants {
        text.push_str(&format!(
            "[[tenant]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n[tenant.quotas]\n{}\n",
            t.name,
            hex(&token_digest(&t.token())),
            t.quotas
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// A running `wasmpool serve`, killed (SIGKILL) and reaped when dropped.
struct Server {
    child: Child,
    url: String,
    http: Client,
}

impl Server {
    fn start(state: &Path, tenants: &Path, extra: &[&str]) -> Server {
        let (child, url) = start_serve(tenants, state, extra);
        let http = Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        Server { child, url, http }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn get(&self, t: &T, path: &str) -> Response {
        self.req(reqwest::Method::GET, path, Some(&t.token()))
            .send()
            .unwrap()
    }

    fn post_json(&self, t: &T, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::POST, path, Some(&t.token()))
            .json(body)
            .send()
            .unwrap()
    }

    fn upload_testkit(&self, t: &T) -> String {
        testkit();
        let bytes = std::fs::read(wasm_of("testkit")).unwrap();
        let r = self
            .req(reqwest::Method::POST, "/v1/modules", Some(&t.token()))
            .body(bytes)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().unwrap();
        v["sha256"].as_str().unwrap().to_string()
    }

    /// Submits and waits up to 60 s; answers the task's JSON.
    fn run(&self, t: &T, body: &Value) -> Value {
        let r = self.post_json(t, "/v1/tasks?wait=60", body);
        assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap_or_default());
        r.json().unwrap()
    }

    fn submit(&self, t: &T, body: &Value) -> String {
        let r = self.post_json(t, "/v1/tasks", body);
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().unwrap_or_default());
        let v: Value = r.json().unwrap();
        v["id"].as_str().unwrap().to_string()
    }

    fn wait(&self, t: &T, id: &str) -> Value {
        let r = self.get(t, &format!("/v1/tasks/{id}?wait=60"));
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().unwrap();
        assert_eq!(v["state"], "done", "{v}");
        v
    }

    fn state(&self, t: &T, id: &str) -> String {
        let v: Value = self.get(t, &format!("/v1/tasks/{id}")).json().unwrap();
        v["state"].as_str().unwrap_or("").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The problem's status and `code` (and that it is `application/problem+json`).
fn problem(r: Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ct, "application/problem+json", "status {status}");
    (status, r.json().unwrap())
}

struct Setup {
    dir: TempDir,
    tenants: PathBuf,
    state: PathBuf,
}

fn setup(tag: &str, tenants: &[T]) -> Setup {
    let dir = TempDir::new(tag);
    let path = dir.0.join("tenants.toml");
    write_tenants(&path, tenants);
    let state = dir.0.join("state");
    Setup {
        tenants: path,
        state,
        dir,
    }
}

const A: T = T {
    name: "alice",
    quotas: "running = 4",
};
const B: T = T {
    name: "bob",
    quotas: "running = 4",
};

#[test]
fn serve_refuses_bad_tokens_and_hides_each_tenants_work_from_the_others() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-auth", &[A, B]);
        let server = Server::start(&s.state, &s.tenants, &["--max-body-bytes", "4096"]);
        // 401: no token, a wrong one, a malformed header.
        let r = server
            .req(reqwest::Method::GET, "/v1/quota", None)
            .send()
            .unwrap();
        assert!(r.headers().contains_key("www-authenticate"));
        assert_eq!(problem(r).1["code"], "unauthorized");
        let r = server
            .req(reqwest::Method::GET, "/v1/quota", Some("token-of-alicf"))
            .send()
            .unwrap();
        assert_eq!(problem(r).0, 401);
        let r = server
            .http
            .get(format!("{}/v1/quota", server.url))
            .header("authorization", "Basic abc")
            .send()
            .unwrap();
        assert_eq!(problem(r).0, 401);
        let quota: Value = server.get(&A, "/v1/quota").json().unwrap();
        assert_eq!(quota["tenant"], "alice");

        let module = server.upload_testkit(&A);
        let done = server.run(
            &A,
            &json!({"module": module, "task": "add", "args": [2, 3]}),
        );
        assert_eq!(done["result"], 5);
        assert_eq!(done["attempt"], 1);
        let id = done["id"].as_str().unwrap();
        // Bob sees neither Alice's task nor her module.
        let (status, p) = problem(server.get(&B, &format!("/v1/tasks/{id}")));
        assert_eq!((status, p["code"].as_str()), (404, Some("not_found")));
        let r = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/tasks/{id}/cancel"),
                Some(&B.token()),
            )
            .send()
            .unwrap();
        assert_eq!(problem(r).0, 404);
        let r = server.post_json(
            &B,
            "/v1/tasks",
            &json!({"module": module, "task": "add", "args": [1, 1]}),
        );
        let (status, p) = problem(r);
        assert_eq!(
            (status, p["code"].as_str()),
            (404, Some("module_not_found"))
        );
        let mods: Value = server.get(&B, "/v1/modules").json().unwrap();
        assert_eq!(mods["modules"], json!([]));

        // Bad input: the field is named.
        let bad = |body: Value| problem(server.post_json(&A, "/v1/tasks", &body));
        let (status, p) = bad(
            json!({"module": module, "task": "add", "args": [1, 2], "limits": {"memory_mib": "x"}}),
        );
        assert_eq!(
            (status, p["field"].as_str()),
            (422, Some("limits.memory_mib"))
        );
        let (status, p) = bad(json!({"module": module, "task": "add", "argz": [1, 2]}));
        assert_eq!((status, p["field"].as_str()), (422, Some("argz")));
        let (status, p) =
            bad(json!({"module": module, "task": "add", "limits": {"memory_mib": 100000}}));
        assert_eq!(
            (status, p["code"].as_str(), p["field"].as_str()),
            (422, Some("over_quota"), Some("limits.memory_mib"))
        );
        let (status, p) = bad(json!({"module": module, "task": "sqaure"}));
        assert_eq!(
            (status, p["code"].as_str(), p["field"].as_str()),
            (422, Some("unknown_task"), Some("task"))
        );
        let r = server
            .req(reqwest::Method::POST, "/v1/tasks", Some(&A.token()))
            .body("{\"module\": ")
            .send()
            .unwrap();
        assert_eq!(problem(r).1["code"], "malformed_json");
        // 413: a body over --max-body-bytes.
        let big = json!({"module": module, "task": "text_len", "args": ["x".repeat(10_000)]});
        let (status, p) = problem(server.post_json(&A, "/v1/tasks", &big));
        assert_eq!((status, p["code"].as_str()), (413, Some("body_too_large")));

        // Idempotency: the same key and body give the first id; another body is 409.
        let body = json!({"module": module, "task": "add", "args": [7, 8]});
        let with_key = |body: &Value| {
            server
                .req(reqwest::Method::POST, "/v1/tasks", Some(&A.token()))
                .header("idempotency-key", "k-1")
                .json(body)
                .send()
                .unwrap()
        };
        let first: Value = with_key(&body).json().unwrap();
        let again: Value = with_key(&body).json().unwrap();
        assert_eq!(first["id"], again["id"]);
        let (status, p) = problem(with_key(
            &json!({"module": module, "task": "add", "args": [7, 9]}),
        ));
        assert_eq!(
            (status, p["code"].as_str()),
            (409, Some("idempotency_conflict"))
        );
        let done = server.wait(&A, first["id"].as_str().unwrap());
        assert_eq!(done["result"], 15);
        drop(s.dir);
    });
}

#[test]
fn serve_quotas_answer_429_with_retry_after_and_the_tenants_file_reloads() {
    within(Duration::from_secs(300), || {
        let slow = T {
            name: "slow",
            quotas: "running = 1\nqueued = 2",
        };
        let rate = T {
            name: "rate",
            quotas: "rate = 1.0",
        };
        let s = setup("serve-quota", &[slow, rate]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let slow = T {
            name: "slow",
            quotas: "",
        };
        let rate = T {
            name: "rate",
            quotas: "",
        };
        let module = server.upload_testkit(&slow);
        let sleep = json!({"module": module, "task": "sleep_ms", "args": [2000]});
        server.submit(&slow, &sleep);
        server.submit(&slow, &sleep);
        let r = server.post_json(&slow, "/v1/tasks", &sleep);
        assert!(r.headers().contains_key("retry-after"));
        let (status, p) = problem(r);
        assert_eq!((status, p["code"].as_str()), (429, Some("queue_full")));

        let _ = server.upload_testkit(&rate);
        let add = json!({"module": module, "task": "add", "args": [1, 2]});
        server.submit(&rate, &add);
        let r = server.post_json(&rate, "/v1/tasks", &add);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
        let (status, p) = problem(r);
        assert_eq!((status, p["code"].as_str()), (429, Some("rate_limited")));

        // A tenant added to the file is let in without a restart.
        let carol = T {
            name: "carol",
            quotas: "running = 2",
        };
        assert_eq!(server.get(&carol, "/v1/quota").status().as_u16(), 401);
        write_tenants(
            &s.tenants,
            &[
                T {
                    name: "slow",
                    quotas: "running = 1\nqueued = 2",
                },
                T {
                    name: "rate",
                    quotas: "rate = 1.0",
                },
                carol,
            ],
        );
        let carol = T {
            name: "carol",
            quotas: "",
        };
        assert!(eventually(Duration::from_secs(20), || {
            server.get(&carol, "/v1/quota").status().as_u16() == 200
        }));
        let q: Value = server.get(&carol, "/v1/quota").json().unwrap();
        assert_eq!(q["quotas"]["running"], 2);
        drop(s.dir);
    });
}

#[test]
fn serve_a_guest_that_traps_or_loops_fails_alone_and_a_task_can_be_cancelled() {
    within(Duration::from_secs(300), || {
        let b = T {
            name: "bob",
            quotas: "max_timeout_s = 300.0",
        };
        let s = setup("serve-guest", &[A, b]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        server.upload_testkit(&B);
        let spin = server.submit(
            &A,
            &json!({"module": module, "task": "spin", "limits": {"timeout_s": 1.0}}),
        );
        let trap = server.submit(&A, &json!({"module": module, "task": "trap"}));
        let fine = server.run(
            &B,
            &json!({"module": module, "task": "add", "args": [20, 22]}),
        );
        assert_eq!(fine["result"], 42);
        let spin = server.wait(&A, &spin);
        assert_eq!(spin["error"]["code"], "limit_exceeded", "{spin}");
        let trap = server.wait(&A, &trap);
        assert_eq!(trap["error"]["code"], "trap", "{trap}");

        // Cancel a running task: its worker is stopped, so it is done long before the
        // 120 s it would sleep (the wait below gives up after 60 s).
        let long = server.submit(
            &B,
            &json!({"module": module, "task": "sleep_ms", "args": [120_000], "limits": {"timeout_s": 200.0}}),
        );
        assert!(eventually(Duration::from_secs(30), || server
            .state(&B, &long)
            == "running"));
        let r: Value = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/tasks/{long}/cancel"),
                Some(&B.token()),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(r["cancelled"], true);
        let done = server.wait(&B, &long);
        assert_eq!(done["error"]["code"], "cancelled", "{done}");
        // The worker was freed: another task runs.
        let after = server.run(
            &B,
            &json!({"module": module, "task": "add", "args": [1, 1]}),
        );
        assert_eq!(after["result"], 2);
        drop(s.dir);
    });
}

#[test]
fn serve_a_queued_task_is_cancelled_before_it_starts() {
    within(Duration::from_secs(300), || {
        let one = T {
            name: "one",
            quotas: "running = 1",
        };
        let s = setup("serve-cancel", &[one]);
        let one = T {
            name: "one",
            quotas: "",
        };
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&one);
        let first = server.submit(
            &one,
            &json!({"module": module, "task": "sleep_ms", "args": [1500]}),
        );
        let second = server.submit(
            &one,
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        let r: Value = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/tasks/{second}/cancel"),
                Some(&one.token()),
            )
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            (r["cancelled"].as_bool(), r["state"].as_str()),
            (Some(true), Some("done"))
        );
        let second = server.wait(&one, &second);
        assert_eq!(second["error"]["code"], "cancelled");
        assert_eq!(second["attempt"], 0, "it never started");
        assert_eq!(server.wait(&one, &first)["result"], 1500);
        drop(s.dir);
    });
}

#[test]
fn serve_maps_stream_ndjson_records_and_usage_adds_up_to_the_results() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-map", &[A]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        // NDJSON in, records out in input order: item 13 fails alone.
        let r = server
            .req(
                reqwest::Method::POST,
                &format!("/v1/maps?module={module}&task=square_or_panic&chunksize=2"),
                Some(&A.token()),
            )
            .header("content-type", "application/x-ndjson")
            .body("10\n11\n\n12\n13\n14\n15\n")
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        let map: Value = r.json().unwrap();
        assert_eq!(map["total"], 6);
        let id = map["id"].as_str().unwrap();
        let r = server.get(&A, &format!("/v1/maps/{id}/results"));
        assert_eq!(r.headers()["content-type"], "application/x-ndjson");
        let mut lines = Vec::new();
        for line in BufReader::new(r).lines() {
            lines.push(serde_json::from_str::<Value>(&line.unwrap()).unwrap());
        }
        let inputs: Vec<_> = lines.iter().map(|l| l["input"].as_u64().unwrap()).collect();
        assert_eq!(inputs, [10, 11, 12, 13, 14, 15]);
        assert_eq!(lines[0]["result"], 100);
        assert!(
            lines[3]["error"].as_str().unwrap().contains("unlucky 13"),
            "{}",
            lines[3]
        );
        assert_eq!(lines[5]["result"], 225);

        // A JSON map of argument arrays, read as completed.
        let r = server.post_json(
            &A,
            "/v1/maps",
            &json!({"module": module, "task": "add", "items": [[1, 2], [3, 4], [5, 6]], "star": true}),
        );
        let id = r.json::<Value>().unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let mut body = String::new();
        server
            .get(&A, &format!("/v1/maps/{id}/results?order=completed"))
            .read_to_string(&mut body)
            .unwrap();
        let mut sums: Vec<u64> = body
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["result"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        sums.sort();
        assert_eq!(sums, [3, 7, 11]);
        let (status, p) = problem(server.post_json(
            &A,
            "/v1/maps",
            &json!({"module": module, "task": "add", "items": [1], "star": true}),
        ));
        assert_eq!((status, p["field"].as_str()), (422, Some("items[0]")));

        // Two tasks too; then the usage totals are the sums over the tasks' own usage.
        let t1 = server.run(
            &A,
            &json!({"module": module, "task": "greet", "args": ["ada"]}),
        );
        let t2 = server.run(
            &A,
            &json!({"module": module, "task": "fail", "args": ["no"]}),
        );
        let usage: Value = server.get(&A, "/v1/usage").json().unwrap();
        let rows = usage["tasks"].as_array().unwrap();
        assert_eq!(rows.len(), 6 + 3 + 2);
        let totals = &usage["totals"];
        assert_eq!(totals["tasks"], 11);
        assert_eq!(totals["failed"], 2);
        for field in ["wall_ms", "bytes_in", "bytes_out"] {
            let sum: u64 = rows.iter().map(|r| r[field].as_u64().unwrap()).sum();
            assert_eq!(totals[field].as_u64().unwrap(), sum, "{field}");
        }
        for t in [&t1, &t2] {
            let row = rows.iter().find(|r| r["id"] == t["id"]).unwrap();
            assert_eq!(row["bytes_out"], t["usage"]["bytes_out"]);
            assert_eq!(row["wall_ms"], t["usage"]["wall_ms"]);
        }
        assert_eq!(t1["result"], "hello, ada");
        assert_eq!(t2["error"]["code"], "task_failed");
        // The operator's endpoints answer without a token.
        let metrics = server
            .http
            .get(format!("{}/metrics", server.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert!(
            metrics.contains("wasmpool_serve_items_failed_total 2"),
            "{metrics}"
        );
        assert_eq!(
            server
                .http
                .get(format!("{}/readyz", server.url))
                .send()
                .unwrap()
                .status()
                .as_u16(),
            200
        );
        drop(s.dir);
    });
}

#[test]
fn serve_work_accepted_before_a_kill_9_runs_once_after_the_restart() {
    within(Duration::from_secs(400), || {
        let two = T {
            name: "two",
            quotas: "running = 2",
        };
        let s = setup("serve-restart", &[two]);
        let two = T {
            name: "two",
            quotas: "",
        };
        let mut server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&two);
        let sleep = |retries: u32| json!({"module": module, "task": "sleep_ms", "args": [20_000], "retries": retries});
        let lost = server.submit(&two, &sleep(0));
        let retried = server.submit(&two, &sleep(1));
        let queued: Vec<String> = (0..3)
            .map(|i| {
                server.submit(
                    &two,
                    &json!({"module": module, "task": "add", "args": [i, 100]}),
                )
            })
            .collect();
        assert!(eventually(Duration::from_secs(30), || {
            server.state(&two, &lost) == "running" && server.state(&two, &retried) == "running"
        }));
        assert_eq!(server.state(&two, &queued[0]), "queued");
        server.kill();

        let server = Server::start(&s.state, &s.tenants, &[]);
        let lost = server.wait(&two, &lost);
        assert_eq!(lost["error"]["code"], "worker_lost", "{lost}");
        assert_eq!(lost["attempt"], 1);
        for (i, id) in queued.iter().enumerate() {
            let done = server.wait(&two, id);
            assert_eq!(done["result"], 100 + i as u64);
            assert_eq!(done["attempt"], 1, "run once: {done}");
        }
        let retried = server.wait(&two, &retried);
        assert_eq!(retried["result"], 20_000);
        assert_eq!(retried["attempt"], 2, "{retried}");
        let usage: Value = server.get(&two, "/v1/usage").json().unwrap();
        assert_eq!(usage["totals"]["tasks"], 5, "each task finished once");
        drop(s.dir);
    });
}

#[test]
fn serve_events_stream_a_tenants_state_changes_and_resume_from_last_event_id() {
    within(Duration::from_secs(300), || {
        let s = setup("serve-events", &[A, B]);
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&A);
        server.upload_testkit(&B);
        let mine = server.run(
            &A,
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        let theirs = server.run(
            &B,
            &json!({"module": module, "task": "add", "args": [3, 4]}),
        );
        // Reads events until one of `task` is `done`: (id, state) of each of them.
        let read = |last: Option<&str>, task: &str| {
            let mut r = server.req(reqwest::Method::GET, "/v1/events", Some(&A.token()));
            if let Some(last) = last {
                r = r.header("last-event-id", last);
            }
            let r = r.send().unwrap();
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            let mut seen = Vec::new();
            let (mut id, mut event) = (String::new(), String::new());
            for line in BufReader::new(r).lines() {
                let line = line.unwrap();
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_string();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    let data: Value = serde_json::from_str(v).unwrap();
                    assert_ne!(data["task"], theirs["id"], "another tenant's event");
                    seen.push((id.clone(), event.clone()));
                    if data["task"] == task && event == "done" {
                        break;
                    }
                }
            }
            seen
        };
        let seen = read(None, mine["id"].as_str().unwrap());
        let states: Vec<&str> = seen.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(states, ["queued", "running", "done"]);
        // Resumed after the first: the rest, not the first again.
        let later = server.run(
            &A,
            &json!({"module": module, "task": "add", "args": [5, 6]}),
        );
        let resumed = read(Some(&seen[0].0), later["id"].as_str().unwrap());
        assert_eq!(resumed[0], seen[1]);
        assert_eq!(resumed.len(), 2 + 3);
        drop(s.dir);
    });
}

#[test]
fn serve_a_half_sent_body_is_answered_408_and_the_service_goes_on() {
    within(Duration::from_secs(120), || {
        use std::io::Write;
        let s = setup("serve-slow", &[A]);
        let server = Server::start(&s.state, &s.tenants, &["--body-timeout", "0.5"]);
        let addr = server.url.strip_prefix("http://").unwrap();
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        write!(
            sock,
            "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"module\"",
            A.token()
        )
        .unwrap();
        let mut answer = String::new();
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        reader.read_line(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        let mut rest = String::new();
        while reader.read_line(&mut rest).unwrap() > 0 && !rest.contains("body_timeout") {}
        assert!(rest.contains("\"code\":\"body_timeout\""), "{rest}");
        drop(sock);
        assert_eq!(server.get(&A, "/v1/quota").status().as_u16(), 200);
        drop(s.dir);
    });
}

#[test]
fn serve_results_expire_after_the_tenants_ttl_and_sighup_reloads_the_tenants() {
    within(Duration::from_secs(120), || {
        let brief = T {
            name: "brief",
            quotas: "result_ttl_s = 1",
        };
        let s = setup("serve-ttl", &[brief]);
        let brief = T {
            name: "brief",
            quotas: "",
        };
        let server = Server::start(&s.state, &s.tenants, &[]);
        let module = server.upload_testkit(&brief);
        let done = server.run(
            &brief,
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        let id = done["id"].as_str().unwrap();
        // The sweeper deletes the result, its task and its usage row; the hourly sums stay.
        assert!(eventually(Duration::from_secs(30), || {
            server
                .get(&brief, &format!("/v1/tasks/{id}"))
                .status()
                .as_u16()
                == 404
        }));
        let usage: Value = server.get(&brief, "/v1/usage").json().unwrap();
        assert_eq!(usage["tasks"], json!([]));
        assert_eq!(usage["totals"]["tasks"], 1);

        // A new tenant written with the file's old modification time: only SIGHUP sees it.
        let mtime = std::fs::metadata(&s.tenants).unwrap().modified().unwrap();
        let dave = T {
            name: "dave",
            quotas: "",
        };
        write_tenants(
            &s.tenants,
            &[
                T {
                    name: "brief",
                    quotas: "result_ttl_s = 1",
                },
                T {
                    name: "dave",
                    quotas: "",
                },
            ],
        );
        std::fs::File::options()
            .write(true)
            .open(&s.tenants)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(server.get(&dave, "/v1/quota").status().as_u16(), 401);
        // SAFETY: a signal to the server this test started.
        unsafe { libc::kill(server.child.id() as i32, libc::SIGHUP) };
        assert!(eventually(Duration::from_secs(20), || {
            server.get(&dave, "/v1/quota").status().as_u16() == 200
        }));
        drop(s.dir);
    });
}

mod cluster;
mod neighbours;
mod objects;
