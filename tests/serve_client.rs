//! The CLI as the service's client (`--server URL --token-file F`), and the service's
//! parts it relies on: task output and worker time in results and usage, map cancel,
//! the header-read timeout. Real binaries: `wasmpool serve` on 127.0.0.1 port 0 with a
//! temporary state directory, the `wasmpool` CLI run locally and against it, reqwest and
//! raw TCP. Each test runs under an outer timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::{Value, json};
use wasmpool_serve::tenants::{hex, token_digest};

use crate::util::{TempDir, cli, start_serve, stderr, stdout, testkit, wasm_of, within};

const TOKEN: &str = "token-of-carol";

/// A running `wasmpool serve` with one tenant, `carol`, killed and reaped when dropped.
struct Server {
    child: Child,
    url: String,
    http: Client,
    dir: TempDir,
}

impl Server {
    fn start(tag: &str, quotas: &str, extra: &[&str]) -> Server {
        let dir = TempDir::new(tag);
        let tenants = dir.0.join("tenants.toml");
        std::fs::write(
            &tenants,
            format!(
                "[[tenant]]\nname = \"carol\"\ntoken_sha256 = \"{}\"\n[tenant.quotas]\n{quotas}\n",
                hex(&token_digest(TOKEN))
            ),
        )
        .unwrap();
        std::fs::write(dir.0.join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.0.join("bad-token"), "token-of-mallory\n").unwrap();
        let (child, url) = start_serve(&tenants, &dir.0.join("state"), extra);
        let http = Client::builder()
            .timeout(Duration::from_secs(90))
            .build()
            .unwrap();
        Server {
            child,
            url,
            http,
            dir,
        }
    }

    fn token_file(&self) -> PathBuf {
        self.dir.0.join("token")
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn upload_testkit(&self) -> String {
        let r = self
            .http
            .post(format!("{}/v1/modules", self.url))
            .bearer_auth(TOKEN)
            .body(std::fs::read(wasm_of("testkit")).unwrap())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let v: Value = r.json().unwrap();
        v["sha256"].as_str().unwrap().to_string()
    }

    /// The CLI with `args`, then `--server URL --token-file F` (and its input on stdin).
    fn remote(&self, args: &[&str], token: &Path) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--server".into(),
            self.url.clone(),
            "--token-file".into(),
            token.display().to_string(),
        ]);
        run(&all)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CLI with `args` (no server in its environment), under an outer timeout.
fn run(args: &[String]) -> Output {
    let args = args.to_vec();
    within(Duration::from_secs(120), move || {
        cli()
            .args(&args)
            .env_remove("WASMPOOL_SERVER")
            .env_remove("WASMPOOL_TOKEN_FILE")
            .stdin(Stdio::null())
            .output()
            .expect("cannot run the wasmpool binary")
    })
}

fn local(args: &[&str]) -> Output {
    run(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

/// Asserts local and remote runs of the same command print the same and exit the same.
fn same(what: &str, local: &Output, remote: &Output) {
    assert_eq!(
        stdout(remote),
        stdout(local),
        "{what}: stdout; remote stderr: {}",
        stderr(remote)
    );
    assert_eq!(stderr(remote), stderr(local), "{what}: stderr");
    assert_eq!(remote.status.code(), local.status.code(), "{what}: status");
}

#[test]
fn serve_client_run_map_and_tasks_print_over_the_service_as_they_do_locally() {
    within(Duration::from_secs(600), || {
        testkit();
        let server = Server::start("serve-client", "running = 4", &[]);
        let token = server.token_file();
        let wasm = wasm_of("testkit").display().to_string();
        let w = wasm.as_str();

        for args in [vec!["tasks", w], vec!["tasks", w, "--json"]] {
            let (l, r) = (local(&args), server.remote(&args, &token));
            same(&args.join(" "), &l, &r);
            assert!(stdout(&l).contains("square"));
        }
        // Results, a task's own output (here on stdout, before its result), failures.
        for args in [
            vec!["run", w, "add", "2", "3"],
            vec!["run", w, "greet", "\"service\""],
            vec!["run", w, "scale", "{\"x\": 1.5, \"y\": -2}", "2"],
            vec!["run", w, "unsorted", "1", "2"],
            vec!["run", w, "not_utf8"],
            vec!["run", w, "tick", "3", "0"],
            vec!["run", w, "fail", "\"no luck\""],
            vec!["run", w, "trap"],
            vec!["run", w, "sleep_ms", "5000", "--timeout", "0.5"],
        ] {
            let (l, r) = (local(&args), server.remote(&args, &token));
            same(&args.join(" "), &l, &r);
        }
        let l = local(&["run", w, "tick", "3", "0"]);
        assert_eq!(stdout(&l), "tick 0\ntick 1\ntick 2\n3\n");
        // A record's keys as the task wrote them, not sorted (compared with remote above).
        let l = local(&["run", w, "unsorted", "1", "2"]);
        assert_eq!(stdout(&l), "{\"b\":1,\"a\":2}\n");
        // Bad input is refused before anything runs, in the same words where it can be.
        let l = local(&["run", w, "add", "two"]);
        let r = server.remote(&["run", w, "add", "two"], &token);
        same("a bad argument", &l, &r);
        let r = server.remote(&["run", w, "sqaure", "3"], &token);
        assert_eq!(r.status.code(), Some(2));
        assert!(
            stderr(&r).contains("unknown_task") && stderr(&r).contains("has no task `sqaure`"),
            "{}",
            stderr(&r)
        );
        let r = server.remote(&["run", w, "add", "1", "2", "--dir", "/tmp"], &token);
        assert_eq!(r.status.code(), Some(2));
        assert!(stderr(&r).contains("--dir is not supported with --server"));

        // Maps: in order, as completed, with failures (and the summary line), bad input.
        let inputs = server.dir.0.join("inputs.jsonl");
        std::fs::write(&inputs, "1\n2\n3\n\n4\n").unwrap();
        let bad = server.dir.0.join("bad.jsonl");
        std::fs::write(&bad, "1\n2\nnot json\n4\n").unwrap();
        let pairs = server.dir.0.join("pairs.jsonl");
        std::fs::write(&pairs, "[1, 2]\n[3, -4]\n").unwrap();
        let pairs = pairs.display().to_string();
        let inputs = inputs.display().to_string();
        let bad = bad.display().to_string();
        for args in [
            vec!["map", w, "square", "--range", "0..50", "--chunksize", "7"],
            vec!["map", w, "square_or_panic", "--range", "10..20"],
            vec!["map", w, "square", "--input", &inputs],
            vec!["map", w, "square", "--input", &bad],
            vec!["map", w, "add", "--star", "--input", &pairs],
            vec!["map", w, "unsorted", "--star", "--input", &pairs],
        ] {
            let (l, r) = (local(&args), server.remote(&args, &token));
            same(&args.join(" "), &l, &r);
        }
        let l = local(&["map", w, "unsorted", "--star", "--input", &pairs]);
        assert!(
            stdout(&l).starts_with("{\"input\":[1,2],\"result\":{\"b\":1,\"a\":2}}\n"),
            "{}",
            stdout(&l)
        );
        let args = ["map", w, "square_slowly", "--range", "0..40", "--unordered"];
        let (l, r) = (local(&args), server.remote(&args, &token));
        assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
        let sorted = |o: &Output| {
            let mut lines: Vec<String> = stdout(o).lines().map(str::to_string).collect();
            lines.sort();
            lines
        };
        assert_eq!(sorted(&r), sorted(&l));
        assert_eq!(sorted(&r).len(), 40);

        // The module was uploaded once, whatever the number of commands.
        let modules = server.get("/v1/modules");
        assert_eq!(modules["modules"].as_array().unwrap().len(), 1, "{modules}");
        drop(server);
    });
}

#[test]
fn serve_client_a_bad_token_or_an_unreachable_server_is_one_clear_error() {
    within(Duration::from_secs(300), || {
        testkit();
        let server = Server::start("serve-client-bad", "running = 2", &[]);
        let wasm = wasm_of("testkit").display().to_string();
        let bad = server.dir.0.join("bad-token");
        for args in [
            vec!["run", wasm.as_str(), "add", "1", "2"],
            vec!["tasks", wasm.as_str()],
            vec!["map", wasm.as_str(), "square", "--range", "0..3"],
        ] {
            let r = server.remote(&args, &bad);
            crate::util::assert_cli_error(&r, 2, "401 unauthorized: the token is not valid");
            assert!(stdout(&r).is_empty());
        }
        let r = run(&[
            "tasks".into(),
            wasm.clone(),
            "--server".into(),
            server.url.clone(),
        ]);
        crate::util::assert_cli_error(&r, 2, "--server needs --token-file");
        let missing = server.dir.0.join("no-such-token");
        let r = server.remote(&["tasks", &wasm], &missing);
        crate::util::assert_cli_error(&r, 2, "cannot read --token-file");

        // Nothing listens: refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = server.token_file().display().to_string();
        let r = run(&[
            "run".into(),
            wasm.clone(),
            "add".into(),
            "1".into(),
            "2".into(),
            "--server".into(),
            format!("http://127.0.0.1:{port}"),
            "--token-file".into(),
            token.clone(),
        ]);
        crate::util::assert_cli_error(
            &r,
            2,
            &format!("cannot reach the service at http://127.0.0.1:{port}"),
        );
        // Something listens and never answers: given up after --server-timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let holder = std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in silent.incoming().take(4) {
                held.push(c);
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        let r = run(&[
            "tasks".into(),
            wasm.clone(),
            "--server".into(),
            format!("http://{addr}"),
            "--token-file".into(),
            token,
            "--server-timeout".into(),
            "1".into(),
        ]);
        crate::util::assert_cli_error(&r, 2, "did not answer within 1 s");
        drop(holder);
        drop(server);
    });
}

#[test]
fn serve_results_carry_the_tasks_output_and_usage_sums_worker_time() {
    within(Duration::from_secs(300), || {
        testkit();
        let server = Server::start("serve-output", "running = 2\nmax_output_mib = 1", &[]);
        let module = server.upload_testkit();
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "tick", "args": [2, 0]}),
        );
        assert_eq!(done["result"], 2);
        assert_eq!(done["stdout"], "tick 0\ntick 1\n");
        assert_eq!(done["stderr"], "");
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "greet", "args": ["dora"]}),
        );
        assert_eq!(done["stderr"], "to stderr, dora\n", "{done}");
        // A failed task's output is kept too (a panic's message is in its error).
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "boom", "args": ["kaboom"]}),
        );
        assert_eq!(done["error"]["code"], "task_failed", "{done}");
        assert_eq!(
            (done["stdout"].as_str(), done["stderr"].as_str()),
            (Some(""), Some(""))
        );
        // Output past the limit: the task fails, and what is kept is at most the limit.
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "print_mib", "args": [3]}),
        );
        assert_eq!(done["error"]["code"], "limit_exceeded", "{done}");
        let kept = done["stdout"].as_str().unwrap().len();
        assert!(kept > 0 && kept <= 1 << 20, "{kept} bytes kept");

        // Worker time: a task that sleeps 300 ms took at least that in its worker.
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "sleep_ms", "args": [300]}),
        );
        let cpu_us = done["usage"]["cpu_us"].as_u64().unwrap();
        assert!(cpu_us >= 300_000, "{done}");
        assert_eq!(
            done["usage"]["cpu_ms"].as_f64().unwrap(),
            cpu_us as f64 / 1000.0
        );
        let map = server.post(
            "/v1/maps",
            &json!({"module": module, "task": "sleep_ms", "items": [20, 20, 20, 20], "chunksize": 2}),
        );
        let id = map["id"].as_str().unwrap();
        let lines = server
            .http
            .get(format!("{}/v1/maps/{id}/results", server.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(lines.lines().count(), 4);
        // The sums are the sums over the results, and every item's worker time is counted.
        let usage = server.get("/v1/usage");
        let rows = usage["tasks"].as_array().unwrap();
        assert_eq!(rows.len(), 9, "{usage}");
        let total: u64 = rows.iter().map(|r| r["cpu_us"].as_u64().unwrap()).sum();
        assert_eq!(usage["totals"]["cpu_us"].as_u64(), Some(total));
        let hours: u64 = usage["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["cpu_us"].as_u64().unwrap())
            .sum();
        assert_eq!(hours, total);
        assert!(total >= 300_000 + 4 * 20_000, "{usage}");
        drop(server);
    });
}

#[test]
fn serve_a_tasks_peak_memory_is_in_its_result_and_an_hour_keeps_the_largest() {
    within(Duration::from_secs(300), || {
        testkit();
        let server = Server::start("serve-peak", "running = 2\nmax_memory_mib = 256", &[]);
        let module = server.upload_testkit();
        const MIB: u64 = 1 << 20;
        let peak = |done: &Value| done["usage"]["peak_memory_bytes"].as_u64().unwrap();
        // A tiny task first, on a fresh worker (an instance's memory never shrinks, so it
        // must not follow the large one on the same worker).
        let tiny = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        assert_eq!(tiny["result"], 3, "{tiny}");
        let big = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "alloc_mib", "args": [40]}),
        );
        assert_eq!(big["result"], 40 * MIB, "{big}");
        assert!(peak(&tiny) > 0 && peak(&tiny) < 16 * MIB, "{tiny}");
        assert!(peak(&big) >= 40 * MIB && peak(&big) <= 256 * MIB, "{big}");
        // A map's items carry their chunk's peak.
        let map = server.post(
            "/v1/maps",
            &json!({"module": module, "task": "alloc_mib", "items": [48], "chunksize": 1}),
        );
        let id = map["id"].as_str().unwrap();
        let lines = server
            .http
            .get(format!("{}/v1/maps/{id}/results", server.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(lines.lines().count(), 1, "{lines}");

        // The rows are the results', and the hour (all of them, here or in two hours) keeps
        // the largest, not the sum.
        let usage = server.get("/v1/usage");
        let rows = usage["tasks"].as_array().unwrap();
        assert_eq!(rows.len(), 3, "{usage}");
        for done in [&tiny, &big] {
            let row = rows.iter().find(|r| r["id"] == done["id"]).unwrap();
            assert_eq!(row["peak_memory_bytes"], done["usage"]["peak_memory_bytes"]);
        }
        let item = rows
            .iter()
            .find(|r| r["id"] != tiny["id"] && r["id"] != big["id"])
            .unwrap();
        assert!(
            item["peak_memory_bytes"].as_u64().unwrap() >= 48 * MIB,
            "{item}"
        );
        let largest = rows
            .iter()
            .map(|r| r["peak_memory_bytes"].as_u64().unwrap())
            .max()
            .unwrap();
        let hours: Vec<u64> = usage["hours"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["peak_memory_bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(hours.iter().max(), Some(&largest), "{usage}");
        assert_eq!(usage["totals"]["peak_memory_bytes"], largest, "{usage}");
        let sum: u64 = rows
            .iter()
            .map(|r| r["peak_memory_bytes"].as_u64().unwrap())
            .sum();
        assert!(largest < sum, "a maximum, not a sum: {usage}");
        drop(server);
    });
}

#[test]
fn serve_a_map_is_cancelled_and_its_stream_ends_with_the_cancelled_items() {
    within(Duration::from_secs(300), || {
        testkit();
        let server = Server::start("serve-map-cancel", "running = 2", &[]);
        let module = server.upload_testkit();
        // Two workers, chunks of one: two items run, the other eighteen wait.
        let items: Vec<u64> = vec![60_000; 20];
        let map = server.post(
            "/v1/maps",
            &json!({"module": module, "task": "sleep_ms", "items": items, "chunksize": 1}),
        );
        let id = map["id"].as_str().unwrap().to_string();
        assert!(crate::util::eventually(Duration::from_secs(30), || {
            let events = server.get(&format!("/v1/maps/{id}"));
            events["done"] == 0 && server.get("/v1/quota")["running"].as_u64() == Some(2)
        }));
        let cancelled = server.post(&format!("/v1/maps/{id}/cancel"), &json!({}));
        // Eighteen at least were still queued (a chunk taken from the queue may not have
        // started yet: then it is cancelled as queued, or as it starts).
        let queued = cancelled["cancelled_queued"].as_u64().unwrap();
        let stopped = cancelled["running_chunks_stopped"].as_u64().unwrap();
        assert!((18..=20).contains(&queued) && stopped <= 2, "{cancelled}");
        // The stream ends (well before the items' 60 s) with every item's record.
        let lines = server
            .http
            .get(format!("{}/v1/maps/{id}/results", server.url))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(30))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let records: Vec<Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 20);
        for r in &records {
            assert!(r["error"].as_str().unwrap().contains("cancelled"), "{r}");
        }
        let view = server.get(&format!("/v1/maps/{id}"));
        assert_eq!(
            (view["done"].as_u64(), view["failed"].as_u64()),
            (Some(20), Some(20))
        );
        // The workers are free again: a task runs at once.
        let done = server.post(
            "/v1/tasks?wait=60",
            &json!({"module": module, "task": "add", "args": [1, 2]}),
        );
        assert_eq!(done["result"], 3);
        // Another tenant's (or no) map: 404.
        let r = server
            .http
            .post(format!("{}/v1/maps/nosuchmap/cancel", server.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 404);
        drop(server);
    });
}

#[test]
fn serve_a_half_sent_request_head_is_dropped_and_the_service_goes_on() {
    within(Duration::from_secs(120), || {
        let server = Server::start(
            "serve-header-timeout",
            "running = 1",
            &["--header-timeout", "1"],
        );
        let addr = server.url.strip_prefix("http://").unwrap().to_string();
        let mut stalled = TcpStream::connect(&addr).unwrap();
        stalled
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: ")
            .unwrap();
        // A normal client is served meanwhile.
        let ok = server
            .http
            .get(format!("{}/healthz", server.url))
            .send()
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        // The stalled one is closed by the service (a read that waits out its own timeout
        // (20 s, where the default would wait 30 s) fails here).
        stalled
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = Vec::new();
        match stalled.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "the connection was not closed: {e}"
            ),
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains("200 OK"), "{text}");
        // And the service still serves (a new connection: the kept-alive one of the first
        // request has been idle past the header timeout too, and is closed).
        let ok = Client::new()
            .get(format!("{}/healthz", server.url))
            .send()
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        drop(server);
    });
}
