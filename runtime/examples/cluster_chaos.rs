//! The driver of the cluster's chaos run and soak (`scripts/chaos.sh`, `scripts/soak.sh`,
//! which start the Redis, the hosts and the chaos; see the README's "Chaos run").
//!
//! Chaos (the default): submits `--tasks` items of `square_after` (each sleeps `--item-ms`,
//! then answers `x * x`), one job per chunk of `--chunk` items, with `--lock-tasks` calls of
//! `locked_cas` (increments of a counter under a cluster `Lock`, each a compare-and-swap
//! from the value read under it) spread among them, while the script kills and cuts off
//! hosts. It watches the pending entries of the task stream and of its redelivery stream in
//! Redis meanwhile, and at the end
//! prints:
//!
//! - lost: items whose result is missing or wrong, and lock tasks that failed;
//! - committed twice: commits counted by the cluster (`stats.committed`) beyond the chunks
//!   answered (each chunk is answered once, by its committed result);
//! - redelivery: for every chunk a killed (or cut off) host held, the time from the kill
//!   (the script's clock, `--events`) to the chunk's next attempt added to the redelivery
//!   stream by the reaper, to its claim by another host, and to its result committed, as
//!   seen polling Redis every 20 ms;
//! - lock-fence violations: compare-and-swaps that failed while their task held the lock
//!   (someone else wrote the counter under it), counted in the dict by the tasks.
//!
//! Soak (`--soak-secs S`): runs maps, calls, shared objects and lock tasks for S seconds with
//! short result and object TTLs, and prints Redis's key count and `used_memory` at the
//! baseline (after a warm-up, once its TTLs passed) and again once the TTLs passed after the
//! soak.
//!
//! `cargo run --release -p wasmpool --example cluster_chaos -- redis://HOST:PORT [flags]`
//! (`--help` lists them). Exits 1 when a goal is missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmpool::cluster::{ClusterManager, ClusterPool};
use wasmpool::{AsyncResult, Module, Pool};

/// The task stream, its redelivery stream (where the reaper adds a dead host's chunks again,
/// read by hosts before the task stream) and their consumer group
/// (`runtime/src/cluster/keys.rs`).
const TASKS: &str = "{wasmpool}:v3:tasks";
const REDO: &str = "{wasmpool}:v3:redo";
const GROUP: &str = "hosts";

/// How often the watcher polls the pending entries.
const POLL: Duration = Duration::from_millis(20);

const HELP: &str = "\
cluster_chaos REDIS_URL [flags]

chaos (default):
  --tasks N        items with known results (default 100000)
  --item-ms M      how long each item sleeps (default 5)
  --chunk C        items per chunk, one job each (default 100)
  --lock-tasks K   locked_cas calls spread among the chunks (default 200)
  --lock-n N       increments per lock task (default 20)
  --retries R      redeliveries a chunk may have (default 50)
  --hosts H        live hosts to wait for before starting (default 3)
  --events FILE    the chaos script's kill/cut events (EPOCH_MS kill|cut|heal PID ...)
  --ready FILE     created once the warm-up is done (the script starts its chaos then)
  --timeout S      give up waiting for results after S seconds (default 1800)
soak:
  --soak-secs S    run the soak for S seconds instead
  --ttl S          result and object TTL in the soak (default 5)
";

#[derive(Debug, Clone)]
struct Args {
    url: String,
    tasks: u64,
    item_ms: u64,
    chunk: u64,
    lock_tasks: u64,
    lock_n: u64,
    retries: u32,
    hosts: usize,
    events: Option<PathBuf>,
    ready: Option<PathBuf>,
    timeout: Duration,
    soak_secs: Option<u64>,
    ttl: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        tasks: 100_000,
        item_ms: 5,
        chunk: 100,
        lock_tasks: 200,
        lock_n: 20,
        retries: 50,
        hosts: 3,
        events: None,
        ready: None,
        timeout: Duration::from_secs(1800),
        soak_secs: None,
        ttl: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(HELP.into());
        }
        if !flag.starts_with("--") {
            if !a.url.is_empty() {
                return Err(format!(
                    "one Redis URL, not `{}` and `{flag}`\n\n{HELP}",
                    a.url
                ));
            }
            a.url = flag;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n\n{HELP}"))?;
        let num = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number, not `{value}`"))
        };
        match flag.as_str() {
            "--tasks" => a.tasks = num()?,
            "--item-ms" => a.item_ms = num()?,
            "--chunk" => a.chunk = num()?.max(1),
            "--lock-tasks" => a.lock_tasks = num()?,
            "--lock-n" => a.lock_n = num()?,
            "--retries" => a.retries = num()?.min(u32::MAX as u64) as u32,
            "--hosts" => a.hosts = num()? as usize,
            "--events" => a.events = Some(PathBuf::from(&value)),
            "--ready" => a.ready = Some(PathBuf::from(&value)),
            "--timeout" => a.timeout = Duration::from_secs(num()?),
            "--soak-secs" => a.soak_secs = Some(num()?),
            "--ttl" => a.ttl = num()?.max(1),
            _ => return Err(format!("unknown flag {flag}\n\n{HELP}")),
        }
    }
    if a.url.is_empty() {
        return Err(format!("the Redis URL is missing\n\n{HELP}"));
    }
    Ok(a)
}

fn main() -> ExitCode {
    wasmpool::run_worker_if_requested();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match args.soak_secs {
        Some(secs) => soak(&args, secs),
        None => chaos(&args),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cluster_chaos: {e}");
            ExitCode::from(2)
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn testkit() -> wasmpool::Result<Module> {
    Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/testkit"))
}

fn redis_con(url: &str) -> Res<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

/// Waits until `n` hosts hold a current lease.
fn wait_for_hosts(pool: &ClusterPool, n: usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = pool.hosts()?;
        if live.len() >= n {
            println!("hosts: {}", live.join(", "));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {n} hosts joined in 120 s", live.len()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One stream entry as the watcher saw it.
#[derive(Debug, Clone)]
struct Seen {
    job: String,
    chunk: String,
    attempt: u32,
    /// The pid in the consumer's host id (`HOSTNAME:PID:TAG`).
    pid: u32,
    first: u64,
    last: u64,
    gone: Option<u64>,
}

/// A chunk's attempt: (job, chunk, attempt).
type Attempt = (String, String, u32);

/// What the watcher saw: pending entries by stream and id (`STREAM/ID`), and when each
/// redelivered attempt was added to the redelivery stream (by the reaper).
#[derive(Default)]
struct Watched {
    seen: HashMap<String, Seen>,
    added: HashMap<Attempt, u64>,
}

type Entries = Vec<(String, HashMap<String, Vec<u8>>)>;

fn field(f: &HashMap<String, Vec<u8>>, k: &str) -> String {
    f.get(k)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Polls the task stream and the redelivery stream until stopped: their new entries (a
/// redelivered attempt is added again, to the redelivery stream, by the reaper) and their
/// pending entries (who holds which chunk, since when). Entries are known by stream and id.
fn watch(url: String, stop: Arc<AtomicBool>) -> Watched {
    let mut w = Watched::default();
    let seen = &mut w.seen;
    let mut con: Option<redis::Connection> = None;
    let mut live: HashSet<String> = HashSet::new();
    let mut last_ids: HashMap<&str, String> = HashMap::new();
    'poll: while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(POLL);
        if con.is_none() {
            con = redis_con(&url).ok();
        }
        let Some(c) = con.as_mut() else { continue };
        let mut current = HashSet::new();
        for stream in [TASKS, REDO] {
            let last_id = last_ids.entry(stream).or_insert_with(|| "-".to_string());
            let start = if last_id == "-" {
                last_id.clone()
            } else {
                format!("({last_id}")
            };
            let new: redis::RedisResult<Entries> = redis::cmd("XRANGE")
                .arg(stream)
                .arg(start)
                .arg("+")
                .query(c);
            let Ok(new) = new else {
                con = None;
                continue 'poll;
            };
            let now = epoch_ms();
            for (id, f) in new {
                let attempt: u32 = field(&f, "a").parse().unwrap_or(0);
                if attempt > 0 {
                    w.added
                        .entry((field(&f, "j"), field(&f, "c"), attempt))
                        .or_insert(now);
                }
                *last_id = id;
            }
            let pending: redis::RedisResult<Vec<(String, String, u64, u64)>> =
                redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(GROUP)
                    .arg("-")
                    .arg("+")
                    .arg(1_000_000)
                    .query(c);
            let Ok(pending) = pending else {
                con = None;
                continue 'poll;
            };
            let now = epoch_ms();
            let mut fresh = Vec::new();
            for (id, consumer, _idle, _n) in pending {
                let key = format!("{stream}/{id}");
                if let Some(s) = seen.get_mut(&key) {
                    s.last = now;
                } else {
                    fresh.push((id, consumer));
                }
                current.insert(key);
            }
            if fresh.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for (id, _) in &fresh {
                pipe.cmd("XRANGE").arg(stream).arg(id).arg(id);
            }
            let Ok(ranges) = pipe.query::<Vec<Entries>>(c) else {
                con = None;
                continue 'poll;
            };
            for ((id, consumer), range) in fresh.into_iter().zip(ranges) {
                // Gone between the two calls: committed within a poll; nothing to learn.
                let Some((_, f)) = range.into_iter().next() else {
                    continue;
                };
                let pid = consumer
                    .split(':')
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                seen.insert(
                    format!("{stream}/{id}"),
                    Seen {
                        job: field(&f, "j"),
                        chunk: field(&f, "c"),
                        attempt: field(&f, "a").parse().unwrap_or(0),
                        pid,
                        first: now,
                        last: now,
                        gone: None,
                    },
                );
            }
        }
        let now = epoch_ms();
        for id in live.difference(&current) {
            if let Some(s) = seen.get_mut(id)
                && s.gone.is_none()
            {
                s.gone = Some(now);
            }
        }
        live = current
            .into_iter()
            .filter(|id| seen.contains_key(id))
            .collect();
    }
    w
}

/// A kill or a cut of one host, from the script's events file.
#[derive(Debug, Clone)]
struct Event {
    at: u64,
    kind: String,
    pid: u32,
    /// For a cut: when it was healed.
    until: Option<u64>,
}

fn read_events(path: &PathBuf) -> Vec<Event> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut events: Vec<Event> = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (Some(at), Some(kind), Some(pid)) = (
            w.first().and_then(|t| t.parse().ok()),
            w.get(1),
            w.get(2).and_then(|p| p.parse().ok()),
        ) else {
            continue;
        };
        match *kind {
            "kill" | "cut" => events.push(Event {
                at,
                kind: kind.to_string(),
                pid,
                until: None,
            }),
            "heal" => {
                if let Some(e) = events
                    .iter_mut()
                    .rev()
                    .find(|e| e.kind == "cut" && e.pid == pid && e.until.is_none())
                {
                    e.until = Some(at);
                }
            }
            _ => {}
        }
    }
    events
}

/// Per chunk a kill or cut took from its host: ms to its next attempt added to the stream
/// (the reaper), to its claim by another host, and to its result committed; and how many
/// chunks such a host held that it committed itself.
struct Redelivery {
    reaped: Vec<u64>,
    claimed: Vec<u64>,
    committed: Vec<u64>,
    kept: usize,
    unobserved: usize,
}

fn redelivery(w: &Watched, events: &[Event]) -> Redelivery {
    let seen = &w.seen;
    let mut by_chunk: HashMap<(&str, &str), Vec<&Seen>> = HashMap::new();
    for s in seen.values() {
        by_chunk
            .entry((s.job.as_str(), s.chunk.as_str()))
            .or_default()
            .push(s);
    }
    let mut out = Redelivery {
        reaped: Vec::new(),
        claimed: Vec::new(),
        committed: Vec::new(),
        kept: 0,
        unobserved: 0,
    };
    let mut done: HashSet<(&str, &str)> = HashSet::new();
    let slack = 2 * POLL.as_millis() as u64;
    for e in events {
        // What a killed host's consumer holds after its death it claimed before (it stays
        // pending until reaped); a cut one may claim until healed (its requests may reach
        // Redis while the answers do not).
        let end = match e.kind.as_str() {
            "kill" => u64::MAX,
            _ => e.until.unwrap_or(u64::MAX),
        };
        for s in seen.values() {
            if s.pid != e.pid || s.last + slack < e.at || s.first > end {
                continue;
            }
            let key = (s.job.as_str(), s.chunk.as_str());
            if !done.insert(key) {
                continue;
            }
            let later: Vec<&&Seen> = by_chunk[&key]
                .iter()
                .filter(|o| o.attempt > s.attempt)
                .collect();
            if later.is_empty() {
                out.kept += 1;
                continue;
            }
            let next = (s.job.clone(), s.chunk.clone(), s.attempt + 1);
            match w.added.get(&next) {
                Some(t) => out.reaped.push(t.saturating_sub(e.at)),
                None => out.unobserved += 1,
            }
            match later.iter().map(|o| o.first).min() {
                Some(t) => out.claimed.push(t.saturating_sub(e.at)),
                None => out.unobserved += 1,
            }
            let last = later.iter().max_by_key(|o| o.attempt);
            match last.and_then(|o| o.gone) {
                Some(t) => out.committed.push(t.saturating_sub(e.at)),
                None => out.unobserved += 1,
            }
        }
    }
    out
}

fn percentiles(v: &mut [u64]) -> String {
    if v.is_empty() {
        return "none observed".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {} ms, p99 {} ms, max {} ms (n = {})",
        at(0.50),
        at(0.99),
        v[v.len() - 1],
        v.len()
    )
}

enum Pending {
    Chunk {
        first: u64,
        n: u64,
        result: AsyncResult<Vec<u64>>,
    },
    Lock(AsyncResult<u64>),
}

fn chaos(a: &Args) -> Res<bool> {
    let module = testkit()?;
    let pool = Pool::builder(&module)
        .retries(a.retries)
        .cluster(&a.url)
        .build()?;
    wait_for_hosts(&pool, a.hosts)?;
    let m = pool.manager()?;
    let (d, lock) = (m.dict::<String, i64>()?, m.lock()?);
    // Warm-up: every host fetches and compiles the module before the chaos starts.
    let warm = warm_up(&pool, a.hosts)?;
    if warm.iter().enumerate().any(|(i, v)| *v != (i * i) as u64) {
        return Err("the warm-up answered wrong results".into());
    }
    let before = pool.stats()?;
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (url, stop) = (a.url.clone(), stop.clone());
        std::thread::spawn(move || watch(url, stop))
    };
    if let Some(ready) = &a.ready {
        std::fs::write(ready, b"ready\n")?;
    }
    let started = Instant::now();
    let chunks = a.tasks.div_ceil(a.chunk);
    let every = chunks
        .checked_div(a.lock_tasks)
        .map_or(u64::MAX, |n| n.max(1));
    println!(
        "submitting {} items in {chunks} chunks of {} ({} ms each item), {} lock tasks of {} \
         increments",
        a.tasks, a.chunk, a.item_ms, a.lock_tasks, a.lock_n
    );
    let mut pending = Vec::new();
    let mut locks_sent = 0;
    for c in 0..chunks {
        let first = c * a.chunk;
        let n = a.chunk.min(a.tasks - first);
        let items = (first..first + n).map(|x| (x, a.item_ms));
        let result = pool.starmap_async::<_, u64>("square_after", items, Some(n as usize))?;
        pending.push(Pending::Chunk { first, n, result });
        if c % every == 0 && locks_sent < a.lock_tasks {
            locks_sent += 1;
            let r = pool.apply_async::<_, u64>("locked_cas", &(&d, &lock, a.lock_n))?;
            pending.push(Pending::Lock(r));
        }
    }
    while locks_sent < a.lock_tasks {
        locks_sent += 1;
        let r = pool.apply_async::<_, u64>("locked_cas", &(&d, &lock, a.lock_n))?;
        pending.push(Pending::Lock(r));
    }
    let deadline = started + a.timeout;
    let (mut lost_items, mut wrong_items, mut lost_locks, mut answered) = (0u64, 0u64, 0u64, 0u64);
    let mut seen_by_tasks = 0u64;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let total = pending.len();
    for (i, p) in pending.into_iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match p {
            Pending::Chunk { first, n, result } => match result.get_timeout(left) {
                Ok(v) => {
                    answered += 1;
                    let wrong = v
                        .iter()
                        .zip(first..)
                        .filter(|(got, x)| **got != x * x)
                        .count() as u64;
                    wrong_items += wrong + n.saturating_sub(v.len() as u64);
                }
                Err(e) => {
                    lost_items += n;
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            },
            Pending::Lock(r) => match r.get_timeout(left) {
                Ok(k) => {
                    answered += 1;
                    seen_by_tasks += k;
                }
                Err(e) => {
                    lost_locks += 1;
                    *errors.entry(e.to_string()).or_default() += 1;
                }
            },
        }
        if (i + 1) % (total / 10).max(1) == 0 {
            println!(
                "  {:>3}% answered after {:.1} s",
                (i + 1) * 100 / total,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = started.elapsed();
    // Commits still under way for chunks answered lost would count late; give the hosts a
    // moment, as they have it in production.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let watched = watcher.join().unwrap_or_default();
    let after = pool.stats()?;
    let violations = d.get(&"violations".to_string())?.unwrap_or(0);
    let count = d.get(&"count".to_string())?.unwrap_or(0);
    let events = a.events.as_ref().map(read_events).unwrap_or_default();
    let kills = events.iter().filter(|e| e.kind == "kill").count();
    let cuts = events.iter().filter(|e| e.kind == "cut").count();
    let of =
        |kind: &str| -> Vec<Event> { events.iter().filter(|e| e.kind == kind).cloned().collect() };
    let (mut rk, mut rc) = (
        redelivery(&watched, &of("kill")),
        redelivery(&watched, &of("cut")),
    );
    let committed = after.committed - before.committed;
    let twice = committed.saturating_sub(answered);
    let lost = lost_items + wrong_items + lost_locks;
    println!(
        "--- chaos run: {:.1} s, {kills} hosts killed, {cuts} one-way cuts ---",
        elapsed.as_secs_f64()
    );
    println!(
        "lost: {lost} ({lost_items} items unanswered, {wrong_items} wrong, {lost_locks} lock \
         tasks failed; of {} items and {} lock tasks)",
        a.tasks, a.lock_tasks
    );
    for (e, n) in &errors {
        println!("  {n} × {e}");
    }
    println!(
        "committed twice: {twice} (the cluster counted {committed} commits for {answered} \
         chunks answered)"
    );
    println!(
        "dropped late results: {}, redelivered chunks: {}, chunks failed as lost: {}",
        after.dropped - before.dropped,
        after.redelivered - before.redelivered,
        after.lost - before.lost
    );
    for (what, r) in [("kill", &mut rk), ("one-way cut", &mut rc)] {
        println!(
            "redelivery, {what} → chunk added again (reaped): {}",
            percentiles(&mut r.reaped)
        );
        println!(
            "redelivery, {what} → claimed by another host: {}",
            percentiles(&mut r.claimed)
        );
        println!(
            "redelivery, {what} → result committed: {}",
            percentiles(&mut r.committed)
        );
        println!(
            "  ({} chunks the host held were committed by it, {} redeliveries not observed \
             whole)",
            r.kept, r.unobserved
        );
    }
    println!(
        "  ({} pending entries watched, {} attempts added again)",
        watched.seen.len(),
        watched.added.len()
    );
    println!(
        "lock-fence violations: {violations} (compare-and-swaps under the lock that failed; \
         {seen_by_tasks} in answered tasks; counter at {count})"
    );
    let ok = lost == 0 && twice == 0 && violations == 0;
    println!(
        "goals (lost 0, committed twice 0, violations 0): {}",
        if ok { "met" } else { "MISSED" }
    );
    pool.close();
    Ok(ok)
}

/// The warm-up of the chaos run and the soak: squares taking 50 ms each, one per chunk, a
/// few per host, so every host claims some (and so fetches and compiles the module) before
/// the measured part starts.
fn warm_up(pool: &ClusterPool, hosts: usize) -> wasmpool::Result<Vec<u64>> {
    let n = (hosts.max(1) * 8) as u64;
    pool.starmap_async::<_, u64>("square_after", (0..n).map(|x| (x, 50u64)), Some(1))?
        .get()
}

/// Redis's key count and memory figures.
#[derive(Debug, Clone, Copy)]
struct Usage {
    keys: u64,
    used_memory: u64,
    dataset: u64,
    clients_memory: u64,
    clients: u64,
}

fn usage(con: &mut redis::Connection) -> Res<Usage> {
    // Less the reaper's turn and sweep marks, which come and go with the beats of the hosts
    // still running (each lives at most 5 s).
    let marks: u64 = redis::cmd("EXISTS")
        .arg("{wasmpool}:v3:reaping")
        .arg("{wasmpool}:v3:swept")
        .query(con)?;
    let keys = redis::cmd("DBSIZE")
        .query::<u64>(con)?
        .saturating_sub(marks);
    let info: String = redis::cmd("INFO").arg("memory").query(con)?;
    let clients: String = redis::cmd("INFO").arg("clients").query(con)?;
    let field = |text: &str, k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        keys,
        used_memory: field(&info, "used_memory"),
        dataset: field(&info, "used_memory_dataset"),
        clients_memory: field(&info, "mem_clients_normal"),
        clients: field(&clients, "connected_clients"),
    })
}

fn show(label: &str, u: &Usage) {
    println!(
        "{label}: {} keys, used_memory {} B (dataset {} B, {} clients using {} B)",
        u.keys, u.used_memory, u.dataset, u.clients, u.clients_memory
    );
}

/// One round of soak work: a map, calls, new shared objects and lock tasks on them.
fn soak_round(pool: &ClusterPool, m: &ClusterManager, round: u64) -> Res<u64> {
    let base = round * 1000;
    let mut wrong = 0;
    let squares: Vec<u64> = pool.map_chunked("square", base..base + 2000, 50)?;
    wrong += squares
        .iter()
        .zip(base..)
        .filter(|(v, x)| **v != x * x)
        .count() as u64;
    let calls: Vec<AsyncResult<i64>> = (0..50i64)
        .map(|i| pool.apply_async::<_, i64>("add", &(i, round as i64)))
        .collect::<wasmpool::Result<_>>()?;
    for (i, c) in calls.into_iter().enumerate() {
        if c.get()? != i as i64 + round as i64 {
            wrong += 1;
        }
    }
    let (d, lock, q) = (
        m.dict::<String, i64>()?,
        m.lock()?,
        m.queue::<Option<u64>>()?,
    );
    let locked: Vec<AsyncResult<u64>> = (0..2)
        .map(|_| pool.apply_async::<_, u64>("locked_cas", &(&d, &lock, 10u64)))
        .collect::<wasmpool::Result<_>>()?;
    let total = pool.apply_async::<_, u64>("queue_consume", &(&q,))?;
    for i in 0..20u64 {
        q.put(&Some(i))?;
    }
    q.put(&None)?;
    for l in locked {
        wrong += l.get()?;
    }
    if total.get()? != (0..20).sum::<u64>() {
        wrong += 1;
    }
    if d.get(&"count".to_string())? != Some(20) {
        wrong += 1;
    }
    Ok(wrong)
}

fn soak(a: &Args, secs: u64) -> Res<bool> {
    let ttl = Duration::from_secs(a.ttl);
    let module = testkit()?;
    let pool = Pool::builder(&module)
        .retries(a.retries)
        .cluster(&a.url)
        .result_ttl(ttl)
        .build()?;
    wait_for_hosts(&pool, a.hosts)?;
    let m = ClusterManager::builder(&a.url).object_ttl(ttl).build()?;
    let mut con = redis_con(&a.url)?;
    // Warm-up: the module compiled on every host, every script loaded; then its results
    // and objects left to expire, for the baseline.
    warm_up(&pool, a.hosts)?;
    let mut wrong = soak_round(&pool, &m, 0)?;
    let settle = ttl + Duration::from_secs(4);
    show("right after the warm-up", &usage(&mut con)?);
    std::thread::sleep(settle);
    let base = usage(&mut con)?;
    show("baseline (warm-up's TTL passed)", &base);
    let started = Instant::now();
    let (mut rounds, mut peak, mut shown) = (0u64, base, Instant::now());
    while started.elapsed() < Duration::from_secs(secs) {
        rounds += 1;
        wrong += soak_round(&pool, &m, rounds)?;
        if rounds % 20 == 0 {
            let u = usage(&mut con)?;
            if u.keys > peak.keys {
                peak = u;
            }
            if shown.elapsed() < Duration::from_secs(10) {
                continue;
            }
            shown = Instant::now();
            println!(
                "  {:.0} s: {rounds} rounds, {} keys, used_memory {} B",
                started.elapsed().as_secs_f64(),
                u.keys,
                u.used_memory
            );
        }
    }
    let s = pool.stats()?;
    println!(
        "soak: {rounds} rounds in {:.0} s ({} items mapped, {} calls, {} lock tasks, {} objects \
         made), {wrong} wrong results; cluster committed {} chunks",
        started.elapsed().as_secs_f64(),
        rounds * 2000,
        rounds * 51,
        rounds * 2,
        rounds * 3,
        s.committed
    );
    show("at the end", &usage(&mut con)?);
    show("peak seen", &peak);
    std::thread::sleep(settle);
    let after = usage(&mut con)?;
    show("after the TTL passed", &after);
    // Memory: within 5% (or 256 KiB) of the baseline, what connections' buffers and the
    // allocator's rounding move; keys: exactly the baseline's.
    let slack = (base.used_memory / 20).max(256 * 1024);
    let keys_ok = after.keys <= base.keys;
    let memory_ok = after.used_memory <= base.used_memory + slack;
    println!(
        "keys {} → {} ({}), used_memory {} → {} B ({:+} B, {})",
        base.keys,
        after.keys,
        if keys_ok {
            "back to baseline"
        } else {
            "NOT back"
        },
        base.used_memory,
        after.used_memory,
        after.used_memory as i64 - base.used_memory as i64,
        if memory_ok {
            "back to baseline, within 5% or 256 KiB"
        } else {
            "NOT back"
        }
    );
    pool.close();
    Ok(keys_ok && memory_ok && wrong == 0)
}
