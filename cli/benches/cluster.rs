//! The cluster's benchmark: the same tiny tasks through Redis (a `redis-server` of its own on
//! loopback, two `wasmpool worker --join` hosts of one slot each) and on a local pool of two
//! processes, in the same sitting.
//!
//! Then, unless `--smoke` or `--no-peers`, the task queues people run on Redis (Celery, RQ,
//! Dramatiq, BullMQ: `bench/redis_peers.py`) on the same Redis server, on their own tiny
//! task, beside the cluster's `apply_async` rate and round trip, as ratios.
//!
//! `cargo bench -p wasmpool-cli --bench cluster [-- --smoke] [--no-peers]`

#![allow(clippy::unwrap_used)]

#[path = "../../tests/cluster/redis.rs"]
mod redis;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wasmpool::{Module, Pool};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct HostProcess(Child);

impl HostProcess {
    fn start(url: &str) -> HostProcess {
        HostProcess(
            Command::new(env!("CARGO_BIN_EXE_wasmpool"))
                .args(["worker", "--join", url, "--slots", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("wasmpool worker"),
        )
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Items per second of `f`, which runs `n` items; median of `reps`.
fn rate(reps: usize, n: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                n as f64 / t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// A table row of two rates, with their ratio.
fn rate_row(name: &str, cluster: f64, local: f64, unit: &str) -> (String, String, String) {
    (
        name.to_string(),
        format!("{cluster:.0} {unit}"),
        format!("{local:.0} {unit} ({:.2}x)", cluster / local),
    )
}

/// One peer's figures from `bench/redis_peers.py`: tasks/s, round trip p50 and p99 (ms).
#[derive(Debug, Default)]
struct PeerFigures {
    tasks_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `bench/redis_peers.py` against the Redis on `port`: each peer's figures, in the order
/// it printed them. A peer that could not run (no `node` for BullMQ) is absent; a script
/// that fails is reported and gives none.
fn peers(port: u16, n: usize) -> Vec<(String, PeerFigures)> {
    let out = Command::new("python3")
        .arg(root().join("bench/redis_peers.py"))
        .arg(n.to_string())
        .arg("--redis-port")
        .arg(port.to_string())
        .stderr(Stdio::inherit())
        .output();
    let out = match out {
        Ok(out) if out.status.success() => out,
        Ok(out) => {
            eprintln!("bench/redis_peers.py failed ({}): no peer rows", out.status);
            return Vec::new();
        }
        Err(e) => {
            eprintln!("cannot run python3 bench/redis_peers.py ({e}): no peer rows");
            return Vec::new();
        }
    };
    let mut found: Vec<(String, PeerFigures)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(peer), Some(name), Some(value)) =
            (v["peer"].as_str(), v["name"].as_str(), v["value"].as_f64())
        else {
            continue;
        };
        if !found.iter().any(|(p, _)| p == peer) {
            found.push((peer.to_string(), PeerFigures::default()));
        }
        if let Some((_, f)) = found.iter_mut().find(|(p, _)| p == peer) {
            match name {
                "tasks_per_s" => f.tasks_per_s = value,
                "roundtrip_p50_ms" => f.p50_ms = value,
                "roundtrip_p99_ms" => f.p99_ms = value,
                _ => {}
            }
        }
    }
    found
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let with_peers = !smoke && !std::env::args().any(|a| a == "--no-peers");
    let (map_items, calls, trips, reps) = if smoke {
        (10_000, 200, 50, 1)
    } else {
        (1_000_000, 10_000, 1_000, 3)
    };
    wasmpool::set_worker_exe(env!("CARGO_BIN_EXE_wasmpool"));
    let module = Module::load(root().join("examples/testkit")).unwrap();
    let server = redis::RedisServer::start();
    let url = server.url();
    let hosts = [HostProcess::start(&url), HostProcess::start(&url)];
    let cluster = Pool::builder(&module)
        .retries(1)
        .cluster(&url)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.hosts().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the hosts did not join");
        std::thread::sleep(Duration::from_millis(20));
    }
    let local = Pool::new(&module, 2).unwrap();
    // Warm: each host has loaded and compiled the module.
    let _: Vec<u64> = cluster.map_chunked("square", 0..1000u64, 10).unwrap();
    let _: Vec<u64> = local.map("square", 0..1000u64).unwrap();

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |name: &str, cluster: f64, local: f64, unit: &str| {
        rows.push((
            name.to_string(),
            format!("{cluster:.0} {unit}"),
            format!("{local:.0} {unit} ({:.2}x)", cluster / local),
        ));
    };

    let map_c = rate(reps, map_items, || {
        let v: Vec<u64> = cluster.map("square", 0..map_items as u64).unwrap();
        assert_eq!(v.len(), map_items);
    });
    let map_l = rate(reps, map_items, || {
        let v: Vec<u64> = local.map("square", 0..map_items as u64).unwrap();
        assert_eq!(v.len(), map_items);
    });
    row(
        "chunked `map` of tiny tasks (square), default chunk size",
        map_c,
        map_l,
        "items/s",
    );

    let apply_c = rate(reps, calls, || {
        let rs: Vec<_> = (0..calls as u64)
            .map(|i| cluster.apply_async::<_, u64>("square", &(i,)).unwrap())
            .collect();
        for r in rs {
            r.get().unwrap();
        }
    });
    let apply_l = rate(reps, calls, || {
        let rs: Vec<_> = (0..calls as u64)
            .map(|i| local.apply_async::<_, u64>("square", &(i,)).unwrap())
            .collect();
        for r in rs {
            r.get().unwrap();
        }
    });
    row(
        "`apply_async` per item (square), all queued then all read",
        apply_c,
        apply_l,
        "tasks/s",
    );

    let round_trips = |pool: &dyn Fn() -> u64| {
        let mut t: Vec<f64> = (0..trips)
            .map(|_| {
                let s = Instant::now();
                pool();
                s.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        t.sort_by(|a, b| a.total_cmp(b));
        (t[t.len() / 2], t[t.len() * 99 / 100])
    };
    let (p50c, p99c) = round_trips(&|| cluster.apply::<_, u64>("square", &(3u64,)).unwrap());
    let (p50l, p99l) = round_trips(&|| local.apply::<_, u64>("square", &(3u64,)).unwrap());
    rows.push((
        "`apply` round trip, p50 / p99".into(),
        format!("{p50c:.0} / {p99c:.0} µs"),
        format!("{p50l:.0} / {p99l:.0} µs"),
    ));

    // Shared objects: a counter under a lock and dict increments, from one task per host
    // (cluster objects in Redis) or per worker (a local manager's), and a program's queue
    // put + get round trip.
    let incs = if smoke { 200u64 } else { 5_000 };
    let cm = cluster.manager().unwrap();
    let lm = wasmpool::Manager::new();
    let locked_c = rate(reps, 2 * incs as usize, || {
        let (d, l) = (cm.dict::<String, i64>().unwrap(), cm.lock().unwrap());
        let _: Vec<()> = cluster
            .starmap_async(
                "locked_increments",
                (0..2).map(|_| (d.clone(), l.clone(), incs)),
                Some(1),
            )
            .unwrap()
            .get()
            .unwrap();
    });
    let locked_l = rate(reps, 2 * incs as usize, || {
        let (d, l) = (lm.dict::<String, i64>(), lm.lock());
        let _: Vec<()> = local
            .starmap_async(
                "locked_increments",
                (0..2).map(|_| (d.clone(), l.clone(), incs)),
                Some(1),
            )
            .unwrap()
            .get()
            .unwrap();
    });
    rows.push(rate_row(
        "counter under a shared `Lock` (acquire, get, set, release), 2 tasks",
        locked_c,
        locked_l,
        "increments/s",
    ));
    let atomic_c = rate(reps, 2 * incs as usize, || {
        let d = cm.dict::<String, i64>().unwrap();
        let _: Vec<()> = cluster
            .starmap_async(
                "atomic_increments",
                (0..2).map(|_| (d.clone(), incs)),
                Some(1),
            )
            .unwrap()
            .get()
            .unwrap();
    });
    let atomic_l = rate(reps, 2 * incs as usize, || {
        let d = lm.dict::<String, i64>();
        let _: Vec<()> = local
            .starmap_async(
                "atomic_increments",
                (0..2).map(|_| (d.clone(), incs)),
                Some(1),
            )
            .unwrap()
            .get()
            .unwrap();
    });
    rows.push(rate_row(
        "`Dict::increment` of one key, 2 tasks",
        atomic_c,
        atomic_l,
        "increments/s",
    ));
    let (qc, ql) = (cm.queue::<u64>().unwrap(), lm.queue::<u64>());
    let (q50c, q99c) = round_trips(&|| {
        qc.put(&1).unwrap();
        qc.get().unwrap()
    });
    let (q50l, q99l) = round_trips(&|| {
        ql.put(&1).unwrap();
        ql.get().unwrap()
    });
    rows.push((
        "`Queue` put + get from this program, p50 / p99".into(),
        format!("{q50c:.0} / {q99c:.0} µs"),
        format!("{q50l:.0} / {q99l:.0} µs"),
    ));

    // A host killed under a task: how long until its result arrives from another host,
    // less the task's own time.
    let task_ms = 300u64;
    let r = cluster
        .apply_async::<_, u64>("sleep_ms", &(task_ms,))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        assert!(Instant::now() < deadline, "no host claimed the task");
        let pending = server.command("XPENDING {wasmpool}:v3:tasks hosts");
        if let Some(h) = hosts
            .iter()
            .find(|h| pending.contains(&format!(":{}:", h.0.id())))
        {
            break h;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let killed = Instant::now();
    // SAFETY: a signal to a child process of this program.
    unsafe { libc::kill(holder.0.id() as i32, libc::SIGKILL) };
    assert_eq!(r.get().unwrap(), task_ms);
    let redelivery = killed.elapsed().as_secs_f64() - task_ms as f64 / 1e3;
    rows.push((
        "dead host → its task's result from another host (less the task's 0.3 s)".into(),
        format!("{redelivery:.2} s"),
        "—".into(),
    ));
    let s = cluster.stats().unwrap();

    println!("| workload | through Redis (2 hosts × 1 slot) | local pool of 2 (cluster / local) |");
    println!("|---|---|---|");
    for (name, c, l) in rows {
        println!("| {name} | {c} | {l} |");
    }
    println!(
        "\ncommitted {}, dropped {}, redelivered {}, lost {}",
        s.committed, s.dropped, s.redelivered, s.lost
    );
    if with_peers {
        let found = peers(server.port, 500);
        println!(
            "\n| on the same Redis (2 worker processes each) | tasks/s ({calls} / 500 at once) | \
             wasmpool ÷ peer | round trip p50 / p99 | peer ÷ wasmpool (p50) |"
        );
        println!("|---|---|---|---|---|");
        println!(
            "| wasmpool cluster, `apply_async` / `apply` of `square` (2 hosts × 1 slot) | {apply_c:.0} | — | {:.2} / {:.2} ms | — |",
            p50c / 1e3,
            p99c / 1e3
        );
        for (peer, f) in &found {
            println!(
                "| {peer}, `add(2, 3)` | {:.0} | {:.1}x | {:.2} / {:.2} ms | {:.1}x |",
                f.tasks_per_s,
                apply_c / f.tasks_per_s,
                f.p50_ms,
                f.p99_ms,
                f.p50_ms / (p50c / 1e3)
            );
        }
    }
}
