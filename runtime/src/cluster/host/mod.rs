//! A host of a cluster: claims chunks from Redis, runs them in a local [`Pool`], and commits
//! their results, fenced by attempt. What `wasmpool worker --join` runs.
//!
//! A host claims from the task stream of untenanted pools (the default), from those of the
//! tenants it is told to serve, or from every tenant's and the untenanted one
//! ([`HostBuilder::all_tenants`]); a host of several streams shares its workers' time
//! between them by weight (see `Streams`).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Value;

use super::allowed_dirs::AllowedDirs;
use super::keys::{
    GROUP, Keys, check_layout, check_tenant, ensure_stream, known_tenants, register_tenant,
    tenant_weights,
};
use super::liveness::{BeatAs, Liveness, ReapCounts, beat_loop};
use super::scripts::Scripts;
use super::wire::{ChunkResult, ChunkSpec, WorkerSetup, committed_record};
use super::{LEASE, connect, redis_error, sha256_hex};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::pool::job::Hook;
use crate::pool::{Pool, check_processes};

mod setup;

use self::setup::{Setups, Waiting};

/// How long results are kept for an entry that does not say (its submitter's result TTL
/// travels in each entry).
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A chunk done this quickly (claim to result) lets a host hold more at once.
const SHORT_CHUNK: Duration = Duration::from_millis(5);

/// How often a host serving every tenant looks for tenants that are new.
const TENANTS_REFRESH: Duration = Duration::from_secs(1);

/// How long a claim waits for work when every stream it reads is empty, in ms.
const CLAIM_BLOCK_MS: u64 = 500;

/// The most entries pending with this host read back from one stream at a time when it
/// looks for those it does not hold (more than it ever holds: its cap).
const RECOVER_COUNT: usize = 100_000;

/// How often a host holding chunks looks for those of them cancelled (one round trip for
/// all of them): how soon a cancelled chunk running here is stopped.
const CANCEL_POLL: Duration = Duration::from_millis(50);

/// The most local pools a host has (one per module, metering and worker setup: each has
/// its own worker processes, `slots` of them), counting those it let go whose chunks still
/// run: past it the idle one used least recently is let go, and with none idle a new pool
/// waits for a chunk to finish (see [`SEAT_WAIT`]).
const MAX_POOLS: usize = 8;

/// How long a chunk that needs a new pool waits for a seat when every pool runs chunks,
/// before it starts one over [`MAX_POOLS`] (with a warning): tasks of more setups than that
/// waiting on each other must not hang a host.
const SEAT_WAIT: Duration = Duration::from_secs(30);

/// What a host does about a new local pool, given its pools (each with when it was last
/// used and whether chunks run in it) and how many pools it let go still run chunks.
#[derive(Debug, PartialEq, Eq)]
enum Seat<K> {
    /// There is room: start it.
    Free,
    /// Let go this idle pool first (the least recently used).
    Evict(K),
    /// Every pool runs chunks: wait for one to finish.
    Wait,
}

fn seat<K: Clone>(pools: &[(K, Instant, bool)], let_go_running: usize, max: usize) -> Seat<K> {
    if pools.len() + let_go_running < max {
        return Seat::Free;
    }
    pools
        .iter()
        .filter(|(_, _, busy)| !busy)
        .min_by_key(|(_, used, _)| *used)
        .map_or(Seat::Wait, |(k, _, _)| Seat::Evict(k.clone()))
}

/// What a host's local pools are told apart by: the module's SHA-256, its engine (whether it
/// meters fuel, whether its code checks time limits), and how its workers are set up.
type PoolKey = (String, EngineKind, WorkerSetup);

/// The chunks running on a host, by job, chunk and attempt (a host back from a pause may
/// hold two attempts of one chunk): their local pool and job.
type Running = HashMap<(String, u32, String), (Pool, Arc<crate::pool::job::Job>)>;

/// Which task streams a host claims from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serves {
    /// That of untenanted pools (a host joined with neither `--tenant` nor
    /// `--all-tenants`, as before tenants).
    Untenanted,
    /// Those of these tenants only.
    Tenants(Vec<String>),
    /// That of untenanted pools and every tenant's, their time shared by weight.
    All,
}

/// Options of a [`Host`]: [`Host::builder`], then these, then [`join`](HostBuilder::join).
#[derive(Debug, Clone)]
pub struct HostBuilder {
    url: String,
    slots: usize,
    tenants: Vec<String>,
    all_tenants: bool,
    /// Directories the pools may open, each with whether only read-only.
    allowed: Vec<(PathBuf, bool)>,
}

impl HostBuilder {
    /// How many local worker processes run the chunks (1 to [`Pool::MAX_PROCESSES`];
    /// default: the number of CPUs).
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = n;
        self
    }

    /// Serves tenant `name`'s pools ([`ClusterBuilder::tenant`](crate::cluster::ClusterBuilder::tenant)),
    /// and only the tenants named so (repeatable); no untenanted pool's work. A name is 1 to
    /// 64 of `A-Z a-z 0-9 _ -`.
    pub fn tenant(mut self, name: &str) -> Self {
        if !self.tenants.iter().any(|t| t == name) {
            self.tenants.push(name.to_string());
        }
        self
    }

    /// Serves every tenant's pools and the untenanted ones, sharing its workers' time
    /// between the task streams with work by their tenants' weights (equal weights: equal
    /// time, whatever their chunks cost), so one tenant's backlog does not starve another.
    /// Tenants that appear later are found within about a second.
    pub fn all_tenants(mut self) -> Self {
        self.all_tenants = true;
        self
    }

    /// Lets the chunks' pools open the host directory `path`, read-write, where their
    /// grants name it ([`Grants::dir`](crate::Grants::dir) on the submitting pool, with
    /// this path). Only this directory: a grant of one under it is refused, as is any
    /// directory not allowed (the default), and the chunk fails saying so. Repeatable.
    ///
    /// A host serving tenants allows the directory to every tenant it serves. No allowed
    /// directory may be inside one allowed read-write ([`join`](HostBuilder::join) refuses
    /// the pair: a task could replace the inner one with a symbolic link).
    ///
    /// ```no_run
    /// let host = wasmpool::cluster::Host::builder("redis://127.0.0.1:6379")
    ///     .allow_dir_read_only("/srv/models")
    ///     .allow_dir("/srv/scratch")
    ///     .join()?;
    /// host.run()?;
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn allow_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.allowed.push((path.into(), false));
        self
    }

    /// As [`allow_dir`](HostBuilder::allow_dir), for read-only grants only
    /// ([`Grants::dir_read_only`](crate::Grants::dir_read_only)).
    pub fn allow_dir_read_only(mut self, path: impl Into<PathBuf>) -> Self {
        self.allowed.push((path.into(), true));
        self
    }

    /// Joins the cluster: checks Redis's keys are this version's, takes a lease, and
    /// starts renewing it and reaping dead hosts. [`Host::run`] then claims work. Fails
    /// with [`Error::State`] for a bad tenant name, or tenants named together with
    /// [`all_tenants`](HostBuilder::all_tenants), and with [`Error::BadArgs`] for an
    /// allowed directory that is not one.
    pub fn join(self) -> Result<Host> {
        for t in &self.tenants {
            check_tenant(t)?;
        }
        let mut allowed = AllowedDirs::default();
        for (path, read_only) in &self.allowed {
            allowed.allow(path, *read_only)?;
        }
        let serves = match (self.tenants.is_empty(), self.all_tenants) {
            (true, false) => Serves::Untenanted,
            (false, false) => Serves::Tenants(self.tenants),
            (true, true) => Serves::All,
            (false, true) => {
                return Err(Error::State(
                    "a host serves either the tenants it names or all of them, not both".into(),
                ));
            }
        };
        Host::join_serving(&self.url, self.slots, serves, allowed)
    }
}

/// A host of a cluster: `Host::join(url, slots)?.run()` serves until
/// [`stop`](Host::stop).
///
/// It claims at most two chunks per slot at a time (one running, one ready; more while
/// chunks take only milliseconds), besides those waiting for their local pool's setup
/// (bounded apart: a stream's share of its slots each, a room's worth in all), and only
/// while its lease is current: a host that cannot reach Redis stops claiming.
#[derive(Debug, Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

/// What one host has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Chunks it claimed.
    pub claimed: u64,
    /// Chunks whose results it committed.
    pub committed: u64,
    /// Results of its that the fence refused: it had been presumed dead, and the chunk
    /// given to another host.
    pub dropped: u64,
    /// Chunks it held when their submitter cancelled them (stopped here if running; their
    /// results refused, not counted as dropped).
    pub cancelled: u64,
    /// Chunks it gave back rather than commit: they ran in workers whose object operations
    /// were refused, because the host had been declared dead meanwhile (cut off or stopped
    /// past its lease) and came back before the reaper took them. Each was redelivered, or
    /// failed as lost when its retries were spent, as the reaper would have done.
    pub given_back: u64,
}

/// A claimed stream entry, what its commit needs.
#[derive(Debug, Clone)]
struct Claimed {
    /// The task stream it came from.
    stream: Arc<str>,
    id: String,
    job: String,
    chunk: u32,
    attempt: String,
    reply: String,
    /// How long its submitter's results are kept, in ms.
    ttl_ms: u64,
    /// When it was claimed.
    started: Instant,
    /// The run time its stream was charged for it when claimed (its stream's estimate, in
    /// seconds): corrected to its real run time when it is committed.
    charged: f64,
    /// When (Redis time, ms) the object lane of the workers it runs in was admitted: once
    /// the host is declared dead at or after it, its result is given back, not committed.
    since: u64,
}

struct HostInner {
    url: String,
    keys: Keys,
    id: String,
    slots: usize,
    serves: Serves,
    /// The directories its pools may open.
    allowed: AllowedDirs,
    stop: Arc<AtomicBool>,
    liveness: Arc<Liveness>,
    /// Chunks claimed and not yet committed.
    inflight: Mutex<usize>,
    /// The entries it holds (stream, entry id), from claim until their commit went
    /// through: what a claim whose reply was lost is told apart by (see `recover_pending`).
    /// One whose commit gave up stays here: it never runs again on this host.
    held: Mutex<HashSet<(Arc<str>, String)>>,
    room: Condvar,
    /// How long a chunk takes from claim to result, lately (seconds; `None` before one has).
    recent: Mutex<Option<f64>>,
    /// The chunks committed since the claim thread last looked: their stream, what it was
    /// charged for them when claimed, and their run time in the workers (seconds).
    ran: Mutex<Vec<(Arc<str>, f64, f64)>>,
    claimed: AtomicU64,
    committed: AtomicU64,
    dropped: AtomicU64,
    cancelled: AtomicU64,
    given_back: AtomicU64,
    /// Local pools, by module SHA-256, whether they meter fuel, and worker setup, each with
    /// when it was last used; at most [`MAX_POOLS`].
    pools: Mutex<HashMap<PoolKey, (Pool, Instant)>>,
    /// The chunks running here, by job and chunk: their local pool and job (what a cancel
    /// stops), until their results reach the commit thread. They keep their pool alive.
    running: Mutex<Running>,
    /// The claimed entries whose local pool the setup threads are setting up.
    setups: Mutex<Setups>,
    /// Wakes the setup threads.
    setup_wake: Condvar,
    /// Seats taken by setups whose pool is not in `pools` yet.
    seating: std::sync::atomic::AtomicUsize,
    /// The runtime its local pools run in: its workers' operations on cluster objects go to
    /// Redis, through its object lane. Replaced (and the pools with it) when the host learns
    /// it was declared dead.
    runtime: Mutex<crate::Runtime>,
    /// When (Redis time, ms) the runtime's object lane was admitted.
    since: AtomicU64,
    done: Sender<(Claimed, ChunkResult)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for HostInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("id", &self.id)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

/// The error code Redis answered (`NOGROUP`, `UNBLOCKED`, …), also when it is inside a
/// pipeline's failure (whose own `code` is none).
fn server_code(e: &redis::RedisError) -> Option<String> {
    if let Some(code) = e.code() {
        return Some(code.to_string());
    }
    let errors = e.clone().into_server_errors()?;
    errors.first().map(|(_, s)| s.code().to_string())
}

/// This machine's name, for host ids.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().replace([':', ' '], "-"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

impl Host {
    /// Joins the cluster at `url` with `slots` local worker processes (1 to
    /// [`Pool::MAX_PROCESSES`]), serving untenanted pools: checks Redis's keys are this
    /// version's, takes a lease, and starts renewing it and reaping dead hosts.
    /// [`run`](Host::run) then claims work. [`Host::builder`] serves tenants.
    pub fn join(url: &str, slots: usize) -> Result<Host> {
        Host::join_serving(url, slots, Serves::Untenanted, AllowedDirs::default())
    }

    /// Options first (slots, tenants), then [`join`](HostBuilder::join).
    pub fn builder(url: &str) -> HostBuilder {
        HostBuilder {
            url: url.to_string(),
            slots: crate::cpu_count().min(Pool::MAX_PROCESSES),
            tenants: Vec::new(),
            all_tenants: false,
            allowed: Vec::new(),
        }
    }

    fn join_serving(url: &str, slots: usize, serves: Serves, allowed: AllowedDirs) -> Result<Host> {
        check_processes(slots)?;
        let keys = Keys::default();
        let mut con = connect(url)?;
        check_layout(&mut con, &keys, url)?;
        if let Serves::Tenants(tenants) = &serves {
            for t in tenants {
                register_tenant(&mut con, &keys, t, url)?;
            }
        }
        let id = format!("{}:{}:{}", hostname(), std::process::id(), super::tag());
        let scripts = Scripts::default();
        let (now, _): (i64, i64) = scripts
            .heartbeat
            .key(keys.hosts())
            .key(keys.slots())
            .key(keys.dead())
            .arg(&id)
            .arg(LEASE.as_millis() as u64)
            .arg(slots)
            .invoke(&mut con)
            .map_err(|e| redis_error(url, "taking a lease", e))?;
        let since = u64::try_from(now).unwrap_or(0) + 1;
        let runtime = object_runtime(url, &id, since)?;
        let liveness = Arc::new(Liveness::default());
        liveness.ok();
        let stop = Arc::new(AtomicBool::new(false));
        let (done, results) = channel();
        let inner = Arc::new(HostInner {
            url: url.to_string(),
            keys: keys.clone(),
            id: id.clone(),
            slots,
            serves,
            allowed,
            stop: stop.clone(),
            liveness: liveness.clone(),
            inflight: Mutex::new(0),
            held: Mutex::new(HashSet::new()),
            room: Condvar::new(),
            recent: Mutex::new(None),
            ran: Mutex::new(Vec::new()),
            claimed: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            given_back: AtomicU64::new(0),
            pools: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            setups: Mutex::new(Setups::default()),
            setup_wake: Condvar::new(),
            seating: std::sync::atomic::AtomicUsize::new(0),
            runtime: Mutex::new(runtime),
            since: AtomicU64::new(since),
            done,
            threads: Mutex::new(Vec::new()),
        });
        let counts = Arc::new(ReapCounts::default());
        let beat_url = url.to_string();
        // A host serving named tenants keeps their streams (the reaper removes a tenant's
        // once nothing renews its lease).
        let beat_tenants = match &inner.serves {
            Serves::Tenants(t) => t.clone(),
            Serves::Untenanted | Serves::All => Vec::new(),
        };
        // Should a thread fail to start, those started already stop (each ends at its next
        // look at `stop`): a beat left running would keep a host that never claims alive in
        // the cluster's eyes.
        let started = (|| -> Result<()> {
            let beat = std::thread::Builder::new()
                .name("wasmpool-host-beat".into())
                .spawn(move || {
                    beat_loop(
                        beat_url,
                        keys,
                        BeatAs {
                            host: Some((id, slots)),
                            tenants: beat_tenants,
                        },
                        DEFAULT_TTL,
                        liveness,
                        counts,
                        stop,
                    )
                })
                .map_err(|e| Error::io("starting the host's beat thread", e))?;
            let committer = inner.clone();
            let commits = std::thread::Builder::new()
                .name("wasmpool-host-commit".into())
                .spawn(move || committer.commit_loop(results))
                .map_err(|e| Error::io("starting the host's commit thread", e))?;
            let poller = inner.clone();
            let cancels = std::thread::Builder::new()
                .name("wasmpool-host-cancel".into())
                .spawn(move || poller.cancel_loop())
                .map_err(|e| Error::io("starting the host's cancel thread", e))?;
            inner.lock_threads().extend([beat, commits, cancels]);
            for _ in 0..setup::SETUP_THREADS {
                let setter = inner.clone();
                let setups = std::thread::Builder::new()
                    .name("wasmpool-host-setup".into())
                    .spawn(move || setter.setup_loop())
                    .map_err(|e| Error::io("starting the host's setup threads", e))?;
                inner.lock_threads().push(setups);
            }
            Ok(())
        })();
        if let Err(e) = started {
            inner.stop.store(true, Ordering::Relaxed);
            inner.room.notify_all();
            inner.setup_wake.notify_all();
            return Err(e);
        }
        Ok(Host { inner })
    }

    /// This host's id in the cluster, `HOSTNAME:PID:TAG`.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// What this host serves, in words: `untenanted pools`, `tenant a, b`, or `every
    /// tenant and untenanted pools`.
    pub fn serves(&self) -> String {
        match &self.inner.serves {
            Serves::Untenanted => "untenanted pools".into(),
            Serves::Tenants(t) => format!(
                "tenant{} {}",
                if t.len() > 1 { "s" } else { "" },
                t.join(", ")
            ),
            Serves::All => "every tenant and untenanted pools".into(),
        }
    }

    /// What this host has done so far.
    pub fn stats(&self) -> HostStats {
        HostStats {
            claimed: self.inner.claimed.load(Ordering::Relaxed),
            committed: self.inner.committed.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            cancelled: self.inner.cancelled.load(Ordering::Relaxed),
            given_back: self.inner.given_back.load(Ordering::Relaxed),
        }
    }

    /// Claims and runs chunks until [`stop`](Host::stop); then waits (up to a lease) for the
    /// chunks it holds to be committed.
    pub fn run(&self) -> Result<()> {
        self.inner.claim_loop();
        let deadline = Instant::now() + LEASE;
        let mut n = self.inner.lock_inflight();
        while *n > 0 && Instant::now() < deadline {
            n = self
                .inner
                .room
                .wait_timeout(n, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Stops claiming; [`run`](Host::run) returns once the chunks held are committed.
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.room.notify_all();
    }
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A runtime for a host's local pools whose workers' operations on cluster objects go to
/// the Redis at `url`, through an object lane of host `id` admitted at `since`.
fn object_runtime(url: &str, id: &str, since: u64) -> Result<crate::Runtime> {
    let runtime = crate::Runtime::builder().build()?;
    let objects = super::ClusterObjects::connect(url, 0, crate::broker::DEFAULT_MAX_MESSAGE_BYTES)?;
    runtime
        .broker()
        .set_cluster(Arc::new(super::ClusterLane::new(
            Arc::new(objects),
            id,
            since,
        )));
    Ok(runtime)
}

/// The string in a reply value.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// An entry of an `XREADGROUP` reply: its stream, its id, its fields.
type Entry = (Arc<str>, String, HashMap<String, Vec<u8>>);

/// What a claim got: the entries, the streams found without their group (to set up again),
/// whether the redelivery streams may hold entries to claim (they are in the set
/// `redoing`), and when the host was last
/// declared dead (Redis time, ms), if ever.
type Claim = (Vec<Entry>, Vec<Arc<str>>, bool, Option<u64>);

/// The entries of an `XREADGROUP` reply.
fn entries(reply: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(m) => m
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return out,
    };
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            continue;
        };
        let Some(Value::Array(list)) = parts.pop() else {
            continue;
        };
        let Some(stream) = parts.pop().as_ref().and_then(text) else {
            continue;
        };
        let stream: Arc<str> = Arc::from(stream);
        for entry in list {
            let Value::Array(mut e) = entry else { continue };
            if e.len() != 2 {
                continue;
            }
            let fields = e.pop();
            let Some(id) = e.pop().as_ref().and_then(text) else {
                continue;
            };
            let mut map = HashMap::new();
            let flat = match fields {
                Some(Value::Array(f)) => f,
                Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let (Some(k), Value::BulkString(v)) = (text(&k), v) else {
                    continue;
                };
                map.insert(k, v);
            }
            out.push((stream.clone(), id, map));
        }
    }
    out
}

impl HostInner {
    fn lock_inflight(&self) -> MutexGuard<'_, usize> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_held(&self) -> MutexGuard<'_, HashSet<(Arc<str>, String)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_recent(&self) -> MutexGuard<'_, Option<f64>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many chunks to hold at once: two per slot (one running, one ready), or, while
    /// chunks take under a few milliseconds, enough that claiming and committing (a
    /// round trip each) do not leave the slots idle.
    fn cap(&self) -> usize {
        match *self.lock_recent() {
            Some(t) if t < SHORT_CHUNK.as_secs_f64() => self.slots * 32,
            _ => self.slots * 2,
        }
    }

    fn lock_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims entries while there is room and the lease is current.
    fn claim_loop(self: &Arc<Self>) {
        let scripts = Scripts::default();
        let mut con: Option<redis::Connection> = None;
        let mut streams = Streams::new(&self.serves, &self.keys);
        // Whether entries may be pending with this host that it does not hold: at its start
        // (an id used before), and after a claim that failed (its reply may be lost while
        // Redis still served it, as after a pause longer than the command timeout).
        let mut recover = true;
        while !self.stop.load(Ordering::Relaxed) {
            let cap = self.cap();
            // The chunks waiting for a setup take none of the room of those that run: they
            // are bounded apart, by stream (`Streams::at_bound`), and to a room's worth in
            // all.
            let waiting = self.waiting_streams();
            let w = waiting.len();
            let free = {
                let n = self.lock_inflight();
                let (n, _) = self
                    .room
                    .wait_timeout_while(n, Duration::from_millis(200), |n| {
                        (w >= cap || n.saturating_sub(w) >= cap)
                            && !self.stop.load(Ordering::Relaxed)
                    })
                    .unwrap_or_else(|p| p.into_inner());
                if w >= cap {
                    0
                } else {
                    cap.saturating_sub(n.saturating_sub(w))
                }
            };
            if free == 0 || self.stop.load(Ordering::Relaxed) {
                continue;
            }
            // A host that cannot renew its lease claims nothing: what it took would only be
            // taken from it again.
            if !self.liveness.fresh(LEASE / 2) {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            if let Some(now) = self
                .liveness
                .declared_dead_since(self.since.load(Ordering::Relaxed))
            {
                self.readmit(now);
            }
            if con.is_none() {
                match connect(&self.url) {
                    Ok(c) => con = Some(c),
                    Err(e) => {
                        tracing::warn!("cluster host: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            let Some(c) = con.as_mut() else { continue };
            if let Err(e) = streams.refresh(c, &self.keys, &self.url) {
                tracing::warn!("cluster host: {e}");
                con = None;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if recover {
                match self.recover_pending(c, &streams) {
                    Ok(n) => {
                        recover = false;
                        if n > 0 {
                            tracing::warn!(
                                "cluster host: {n} chunks were pending with this host unknown \
                                 to it (a claim whose reply was lost); they run now"
                            );
                        }
                    }
                    Err(e) => {
                        tracing::warn!("cluster host: reading its own pending chunks: {e}");
                        con = None;
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            let ran = std::mem::take(&mut *self.ran.lock().unwrap_or_else(|p| p.into_inner()));
            streams.ran(&ran);
            let skip = streams.at_bound(&waiting, self.slots);
            let Some(read) = streams.next_read(free, &skip) else {
                // Every stream it reads has its share of chunks waiting for a setup: wait
                // until one of them starts (a setup thread wakes it).
                let n = self.lock_inflight();
                let _ = self.room.wait_timeout(n, Duration::from_millis(200));
                continue;
            };
            let claimed = if read.script {
                self.claim_now(c, &scripts, &read)
            } else {
                self.claim_direct(c, &read)
            };
            match claimed {
                Ok((got, missing, redo_left, dead)) => {
                    let charged = streams.read(&read, &got, redo_left);
                    // Declared dead since its lane was admitted (and not yet told by its
                    // beat): what it just claimed runs in new workers, whose operations
                    // are not refused.
                    if let Some(dead) = dead
                        && dead >= self.since.load(Ordering::Relaxed)
                    {
                        self.readmit(dead);
                    }
                    for ((stream, id, fields), charged) in got.into_iter().zip(charged) {
                        self.start(c, stream, id, fields, charged);
                    }
                    if !missing.is_empty() {
                        tracing::warn!("cluster host: a task stream is gone; setting it up again");
                        if let Err(e) = self.set_up_streams(c, &missing) {
                            tracing::warn!("cluster host: {e}");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        // A tenant's streams the reaper removed are not made again: the
                        // tenants are read again, without it.
                        streams.refresh_soon();
                    }
                }
                Err(e) if server_code(&e).as_deref() == Some("UNBLOCKED") => {
                    // A stream it waited on was removed (the reaper removes a tenant's that
                    // nothing renews): the tenants are read again.
                    streams.refresh_soon();
                }
                Err(e) if server_code(&e).as_deref() == Some("NOGROUP") => {
                    // Redis lost its data (a restart without persistence): set the streams
                    // and their group up again.
                    tracing::warn!("cluster host: a task stream is gone; setting it up again");
                    let all: Vec<Arc<str>> =
                        read.redo.iter().chain(&read.streams).cloned().collect();
                    if let Err(e) = self.set_up_streams(c, &all) {
                        tracing::warn!("cluster host: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    streams.refresh_soon();
                }
                Err(e) => {
                    tracing::warn!("cluster host: claiming: {e}");
                    con = None;
                    recover = true;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Starts the entries pending with this host (delivered to its consumer, not yet
    /// acknowledged) on the streams it reads that it does not hold: those of a claim whose
    /// reply never reached it. Redis serves a blocked `XREADGROUP` when work arrives even if
    /// its client gave up on it meanwhile (a pause past the command timeout), and such
    /// entries would otherwise stay pending with a live host for ever, never run nor reaped.
    /// Read with `XPENDING` and `XRANGE`, which make no consumer where it had none. Answers
    /// how many it started. A stream without the group is skipped (the claim sets it up); a
    /// lost connection is the error.
    fn recover_pending(
        &self,
        c: &mut redis::Connection,
        streams: &Streams,
    ) -> redis::RedisResult<usize> {
        let mut started = 0;
        for stream in streams.keys.iter().chain(&streams.redo) {
            let pending: Value = match redis::cmd("XPENDING")
                .arg(&**stream)
                .arg(GROUP)
                .arg("-")
                .arg("+")
                .arg(RECOVER_COUNT)
                .arg(&self.id)
                .query(c)
            {
                Ok(v) => v,
                Err(e) if server_code(&e).is_some() => continue,
                Err(e) => return Err(e),
            };
            let Value::Array(pending) = pending else {
                continue;
            };
            let ids: Vec<String> = pending
                .iter()
                .filter_map(|p| match p {
                    Value::Array(fields) => fields.first().and_then(text),
                    _ => None,
                })
                .filter(|id| !self.lock_held().contains(&(stream.clone(), id.clone())))
                .collect();
            for id in ids {
                let range: Value = redis::cmd("XRANGE")
                    .arg(&**stream)
                    .arg(&id)
                    .arg(&id)
                    .query(c)?;
                let found = entries(Value::Array(vec![Value::Array(vec![
                    Value::BulkString(stream.as_bytes().to_vec()),
                    range,
                ])]));
                match found.into_iter().next() {
                    Some((stream, id, fields)) => {
                        self.start(c, stream, id, fields, 0.0);
                        started += 1;
                    }
                    // Deleted since (a cancel): nothing to run; off the pending list.
                    None => {
                        let _: redis::RedisResult<()> = redis::cmd("XACK")
                            .arg(&**stream)
                            .arg(GROUP)
                            .arg(&id)
                            .query(c);
                    }
                }
            }
        }
        Ok(started)
    }

    /// Claims without waiting, in one script: the redelivery streams first, then the task
    /// streams, never more than the read's room in all. Answers the entries, the streams
    /// found without their group, and whether the redelivery streams may still hold entries
    /// to claim.
    fn claim_now(
        &self,
        c: &mut redis::Connection,
        scripts: &Scripts,
        read: &Read,
    ) -> redis::RedisResult<Claim> {
        // A host serving every tenant names no redelivery stream: the script reads those
        // of the set that hold entries to claim, not every tenant's.
        let every = self.serves == Serves::All;
        let redo: &[Arc<str>] = if every { &[] } else { &read.redo };
        let mut inv = scripts.claim.prepare_invoke();
        for stream in redo.iter().chain(&read.streams) {
            inv.key(&**stream);
        }
        inv.arg(GROUP)
            .arg(&self.id)
            .arg(read.room)
            .arg(redo.len())
            .arg(self.keys.prefix())
            .arg(if every { "1" } else { "0" });
        for _ in redo {
            inv.arg(read.room);
        }
        for _ in &read.streams {
            inv.arg(read.count);
        }
        let reply: Value = inv.invoke(c)?;
        let Value::Array(parts) = reply else {
            return Ok((Vec::new(), Vec::new(), false, None));
        };
        let mut parts = parts.into_iter();
        let got = parts.next().map(entries).unwrap_or_default();
        let names = |v: Option<Value>| match v {
            Some(Value::Array(a)) => a.iter().filter_map(text).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        let missing = names(parts.next()).into_iter().map(Arc::from).collect();
        for e in names(parts.next()) {
            tracing::warn!("cluster host: claiming from {e}");
        }
        let left = matches!(parts.next(), Some(Value::Int(n)) if n > 0);
        let dead = match parts.next() {
            Some(Value::Int(n)) => u64::try_from(n).ok(),
            _ => None,
        };
        Ok((got, missing, left, dead))
    }

    /// Claims with one `XREADGROUP` (the fast path, while the redelivery streams are
    /// empty): from the read's task streams without waiting, or, waiting up to
    /// [`CLAIM_BLOCK_MS`] for work, from them and the redelivery streams. The redelivery
    /// streams' membership of the set `redoing` comes back in the same round trip (whether
    /// the next read needs the
    /// claim script), and when the host was last declared dead.
    fn claim_direct(&self, c: &mut redis::Connection, read: &Read) -> redis::RedisResult<Claim> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.id)
            .arg("COUNT")
            .arg(read.count);
        if read.block {
            cmd.arg("BLOCK").arg(CLAIM_BLOCK_MS);
        }
        cmd.arg("STREAMS");
        let from: Vec<&Arc<str>> = if read.block {
            read.redo.iter().chain(&read.streams).collect()
        } else {
            read.streams.iter().collect()
        };
        for stream in &from {
            cmd.arg(&***stream);
        }
        for _ in &from {
            cmd.arg(">");
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        pipe.cmd("ZSCORE").arg(self.keys.dead()).arg(&self.id);
        // Whether redelivered entries wait to be claimed: one of the set for a host serving
        // every tenant, its own streams' membership otherwise (never a length per tenant).
        if self.serves == Serves::All {
            pipe.cmd("SCARD").arg(self.keys.redoing());
        } else {
            for stream in &read.redo {
                pipe.cmd("SISMEMBER")
                    .arg(self.keys.redoing())
                    .arg(&**stream);
            }
        }
        let mut replies = pipe.query::<Vec<Value>>(c)?.into_iter();
        let got = replies.next().map(entries).unwrap_or_default();
        let dead = match replies.next() {
            Some(Value::Double(d)) => Some(d),
            Some(v) => text(&v).and_then(|d| d.parse::<f64>().ok()),
            None => None,
        }
        .filter(|d| *d >= 0.0)
        .map(|d| d as u64);
        let left = replies.any(|v| matches!(v, Value::Int(n) if n > 0));
        Ok((got, Vec::new(), left, dead))
    }

    /// The host was declared dead (cut off past its lease) and is back: the tasks it still
    /// runs may be redelivered (or failed as lost) and Redis refuses their object
    /// operations (their lane was admitted before the declaration). New work runs in new
    /// worker processes, of a runtime whose lane is admitted after `now` (Redis time at the
    /// beat that told, or the declaration's); the chunks the old pools run are stopped,
    /// and given back rather than committed (the commit script sees the declaration), so
    /// their submitters get what the reaper would have given them, never the refusal; the
    /// old pools take no more work and go.
    fn readmit(&self, now: u64) {
        let since = now + 1;
        let runtime = match object_runtime(&self.url, &self.id, since) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cluster host: {e}");
                std::thread::sleep(Duration::from_millis(200));
                return;
            }
        };
        let old_runtime = std::mem::replace(
            &mut *self.runtime.lock().unwrap_or_else(|p| p.into_inner()),
            runtime,
        );
        // `since` is stored under the table's lock, after the runtime: a setup thread,
        // which checks it under that lock before adding a pool, never keeps one of the old
        // runtime.
        let old: Vec<Pool> = {
            let mut pools = self.lock_pools();
            self.since.store(since, Ordering::Relaxed);
            pools.drain().map(|(_, (p, _))| p).collect()
        };
        // Every chunk running now runs in the old pools (a pool a setup thread builds
        // meanwhile, in the old runtime, is built again: it sees `since` changed): stopped,
        // their results go to the commit thread, which gives them back.
        let stale: Vec<(Pool, Arc<crate::pool::job::Job>)> =
            self.lock_running().values().cloned().collect();
        // Those waiting for a setup never run: a pool set up now is of the new runtime,
        // where their object operations would be accepted.
        let unstarted = self.give_back_waiting_before(since);
        tracing::warn!(
            "cluster host: this host was declared dead while cut off: its chunks go to other \
             hosts and its shared objects' locks were given back; the {} chunk(s) it still \
             ran are stopped and given back (their object operations are refused), the {} \
             waiting for a pool are given back unrun, the {} old pool(s) take no more work, \
             new work runs in new workers",
            stale.len(),
            unstarted,
            old.len()
        );
        for (pool, job) in &stale {
            if !job.is_cancelled() {
                pool.cancel_job(job);
            }
        }
        drop(stale);
        let retire = std::thread::Builder::new()
            .name("wasmpool-host-retire".into())
            .spawn(move || {
                for pool in &old {
                    pool.close();
                }
                for pool in &old {
                    let _ = pool.join();
                }
                drop(old);
                drop(old_runtime);
            });
        if let Err(e) = retire {
            tracing::warn!("cluster host: cannot start a thread to retire old pools: {e}");
        }
    }

    /// Sets up again the key layout and the streams this host reads (the tenants it
    /// serves recorded again, so the reaper finds their streams).
    fn set_up_streams(&self, c: &mut redis::Connection, streams: &[Arc<str>]) -> Result<()> {
        check_layout(c, &self.keys, &self.url)?;
        if let Serves::Tenants(tenants) = &self.serves {
            for t in tenants {
                register_tenant(c, &self.keys, t, &self.url)?;
            }
        }
        for stream in streams {
            ensure_stream(c, &self.keys, stream, &self.url)?;
        }
        Ok(())
    }

    /// Starts a claimed entry in its local pool, or, when that pool is not set up yet, hands
    /// it to the setup threads (it stays in flight meanwhile); its results go to the commit
    /// thread.
    fn start(
        &self,
        con: &mut redis::Connection,
        stream: Arc<str>,
        id: String,
        f: HashMap<String, Vec<u8>>,
        charged: f64,
    ) {
        let field = |k: &str| f.get(k).and_then(|v| String::from_utf8(v.clone()).ok());
        let (Some(job), Some(chunk), Some(attempt), Some(reply), Some(retries)) = (
            field("j"),
            field("c").and_then(|c| c.parse::<u32>().ok()),
            field("a"),
            field("r"),
            field("n").and_then(|n| n.parse::<u32>().ok()),
        ) else {
            // Not an entry of this layout: acknowledge it so it is not claimed again.
            tracing::warn!("cluster host: entry {id} is not a chunk; dropped");
            let _: redis::RedisResult<()> = redis::pipe()
                .cmd("XACK")
                .arg(&*stream)
                .arg(GROUP)
                .arg(&id)
                .cmd("XDEL")
                .arg(&*stream)
                .arg(&id)
                .query(con);
            return;
        };
        let ttl_ms = field("t")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(DEFAULT_TTL.as_millis() as u64)
            .clamp(1, super::client::MAX_RESULT_TTL.as_millis() as u64);
        let claimed = Claimed {
            stream,
            id,
            job,
            chunk,
            attempt,
            reply,
            ttl_ms,
            started: Instant::now(),
            charged,
            since: self.since.load(Ordering::Relaxed),
        };
        self.lock_held()
            .insert((claimed.stream.clone(), claimed.id.clone()));
        *self.lock_inflight() += 1;
        self.claimed.fetch_add(1, Ordering::Relaxed);
        let spec: ChunkSpec = match f.get("p").map(|p| postcard::from_bytes(p)) {
            Some(Ok(spec)) => spec,
            other => {
                let why = match other {
                    Some(Err(e)) => format!(
                        "the chunk does not decode on host {} ({e}): is every host the same \
                         version as its submitter?",
                        self.id
                    ),
                    _ => format!("the chunk reached host {} without its items", self.id),
                };
                let _ = self.done.send((claimed, ChunkResult::failed(1, &why)));
                return;
            }
        };
        // Metered for a fuel limit; never interruptible: the host compiled the module for
        // the plain engine when it fetched it, and a chunk at its time limit is answered by
        // its worker's watchdog, which ends the worker (the local pool replaces it).
        let key = (
            spec.module.clone(),
            EngineKind {
                interruptible: false,
                ..EngineKind::for_limits(&spec.limits)
            },
            spec.setup.clone(),
        );
        let waiting = Waiting {
            claimed,
            spec,
            retries,
        };
        match self.ready_pool(&key) {
            Some(pool) => self.launch(&pool, waiting),
            // Set up on a setup thread: the claims of other modules and setups go on.
            None => self.wait_for_setup(key, waiting),
        }
    }

    /// Runs a claimed chunk in its local pool; its results go to the commit thread.
    fn launch(&self, pool: &Pool, waiting: Waiting) {
        let Waiting {
            claimed,
            spec,
            retries,
        } = waiting;
        let n = spec.items.len();
        let job = match pool.run_chunk(
            &spec.task,
            spec.items,
            spec.call,
            spec.limits,
            retries,
            spec.capture,
        ) {
            Ok(job) => job,
            Err(e) => {
                let _ = self
                    .done
                    .send((claimed, ChunkResult::failed(n, &e.to_string())));
                return;
            }
        };
        // Before its hook: a chunk that finished at once is forgotten by the commit thread.
        self.lock_running().insert(
            (claimed.job.clone(), claimed.chunk, claimed.attempt.clone()),
            (pool.clone(), job.clone()),
        );
        let done = self.done.clone();
        let hook = Hook {
            run: Box::new(move |job| {
                let _ = done.send((claimed, ChunkResult::from_job(job, n)));
            }),
            gating: false,
        };
        if let Some(hook) = job.add_hook(hook) {
            (hook.run)(&job);
        }
    }

    fn lock_running(&self) -> MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pools(&self) -> MutexGuard<'_, HashMap<PoolKey, (Pool, Instant)>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the chunks held here whose submitter cancelled them: every [`CANCEL_POLL`],
    /// while it holds any, reads their fences in one round trip, and cancels in its local
    /// pool each one fenced `x` (queued there, it never runs; running, its worker is
    /// killed, as a local cancel does). Until the host stops and holds nothing.
    fn cancel_loop(&self) {
        let mut con: Option<redis::Connection> = None;
        loop {
            std::thread::sleep(CANCEL_POLL);
            let mut held: Vec<(String, u32, String)> =
                self.lock_running().keys().cloned().collect();
            held.extend(self.waiting_keys());
            if held.is_empty() {
                if self.stop.load(Ordering::Relaxed) && *self.lock_inflight() == 0 {
                    return;
                }
                continue;
            }
            if con.is_none() {
                match connect(&self.url) {
                    Ok(c) => con = Some(c),
                    Err(e) => {
                        tracing::warn!("cluster host: polling for cancels: {e}");
                        continue;
                    }
                }
            }
            let Some(c) = con.as_mut() else { continue };
            let mut pipe = redis::pipe();
            for (job, chunk, _) in &held {
                pipe.cmd("HGET")
                    .arg(self.keys.job(job))
                    .arg(format!("d:{chunk}"));
            }
            match pipe.query::<Vec<Option<String>>>(c) {
                Ok(fences) => {
                    for (key, fence) in held.iter().zip(fences) {
                        if fence.as_deref() != Some(super::CANCELLED) {
                            continue;
                        }
                        if self.cancel_waiting(key) {
                            tracing::info!(
                                "cluster host: chunk {} of job {} was cancelled while its \
                                 pool was set up; it will not run",
                                key.1,
                                key.0
                            );
                            continue;
                        }
                        let found = self.lock_running().get(key).cloned();
                        if let Some((pool, job)) = found
                            && !job.is_cancelled()
                        {
                            tracing::info!(
                                "cluster host: chunk {} of job {} was cancelled; stopping it",
                                key.1,
                                key.0
                            );
                            pool.cancel_job(&job);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("cluster host: polling for cancels: {e}");
                    con = None;
                }
            }
        }
    }

    /// Commits finished chunks, in the order they finish, those ready together in one
    /// pipeline (in calls of the commit script of at most 64 chunks and 4 MiB of records,
    /// [`calls`](super::scripts::calls)), until the host stops and none is left; a commit
    /// that cannot reach Redis is sent again (the script tells a repeat of the same attempt
    /// from a late result).
    fn commit_loop(&self, results: Receiver<(Claimed, ChunkResult)>) {
        let scripts = Scripts::default();
        let mut con: Option<redis::Connection> = None;
        loop {
            let first = match results.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => r,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if self.stop.load(Ordering::Relaxed) && *self.lock_inflight() == 0 {
                        return;
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < 512 {
                match results.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            // Out of the running set: nothing of them is left to cancel. (Their pools, if
            // let go meanwhile, stop here, on this thread.)
            let finished: Vec<_> = {
                let mut running = self.lock_running();
                batch
                    .iter()
                    .filter_map(|(c, _)| {
                        running.remove(&(c.job.clone(), c.chunk, c.attempt.clone()))
                    })
                    .collect()
            };
            drop(finished);
            {
                let mut recent = self.lock_recent();
                for (claimed, _) in &batch {
                    let t = claimed.started.elapsed().as_secs_f64();
                    *recent = Some(recent.map_or(t, |r| 0.8 * r + 0.2 * t));
                }
            }
            self.ran
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(batch.iter().map(|(claimed, result)| {
                    let ran = result.micros as f64 / 1e6;
                    (claimed.stream.clone(), claimed.charged, ran)
                }));
            let records: Vec<(Claimed, Vec<u8>)> = batch
                .into_iter()
                .filter_map(|(claimed, result)| {
                    let record = committed_record(&claimed.job, claimed.chunk, &result)
                        .or_else(|e| {
                            let n = result.answers.len();
                            committed_record(
                                &claimed.job,
                                claimed.chunk,
                                &ChunkResult::failed(n, &e.to_string()),
                            )
                        })
                        .ok()?;
                    Some((claimed, record))
                })
                .collect();
            let started = Instant::now();
            loop {
                if con.is_none() {
                    match connect(&self.url) {
                        Ok(c) => con = Some(c),
                        Err(e) => tracing::warn!("cluster host: committing: {e}"),
                    }
                }
                if let Some(c) = con.as_mut() {
                    let mut pipe = redis::pipe();
                    pipe.load_script(&scripts.commit).ignore();
                    for call_of in super::scripts::calls(records.iter().map(|(_, r)| r.len())) {
                        let group = &records[call_of];
                        let mut call = scripts.commit.prepare_invoke();
                        call.key(self.keys.stats())
                            .key(self.keys.dead())
                            .key(self.keys.redoing())
                            .arg(GROUP)
                            .arg(&self.id);
                        for (claimed, record) in group {
                            call.key(&*claimed.stream)
                                .key(self.keys.job(&claimed.job))
                                .key(self.keys.results(&claimed.reply))
                                .key(self.keys.redo_of(&claimed.stream))
                                .arg(&claimed.id)
                                .arg(claimed.chunk)
                                .arg(&claimed.attempt)
                                .arg(record)
                                .arg(claimed.ttl_ms)
                                .arg(claimed.since)
                                .arg(&claimed.job);
                        }
                        pipe.invoke_script(&call);
                    }
                    let answers = pipe
                        .query::<Vec<Vec<i64>>>(c)
                        .map(|calls| calls.into_iter().flatten().collect::<Vec<i64>>());
                    match answers {
                        Ok(answers) => {
                            {
                                let mut held = self.lock_held();
                                for (claimed, _) in &records {
                                    held.remove(&(claimed.stream.clone(), claimed.id.clone()));
                                }
                            }
                            for ((claimed, _), answer) in records.iter().zip(answers) {
                                match answer {
                                    1 | 2 => {
                                        self.committed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    3 => {
                                        self.cancelled.fetch_add(1, Ordering::Relaxed);
                                    }
                                    4 | 5 => {
                                        self.given_back.fetch_add(1, Ordering::Relaxed);
                                        tracing::info!(
                                            "cluster host: chunk {} of job {} (attempt {}) \
                                             was given back, not committed: this host was \
                                             declared dead while it ran it; {}",
                                            claimed.chunk,
                                            claimed.job,
                                            claimed.attempt,
                                            if answer == 4 {
                                                "it is redelivered"
                                            } else {
                                                "its retries spent, it failed as lost"
                                            }
                                        );
                                    }
                                    _ => {
                                        self.dropped.fetch_add(1, Ordering::Relaxed);
                                        tracing::info!(
                                            "cluster host: the result of chunk {} of job {} \
                                             (attempt {}) was dropped: the chunk was given to \
                                             another host",
                                            claimed.chunk,
                                            claimed.job,
                                            claimed.attempt
                                        );
                                    }
                                }
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::warn!("cluster host: committing: {e}");
                            con = None;
                        }
                    }
                }
                // Past a few leases the chunks are someone else's: their results would be
                // refused.
                if started.elapsed() > LEASE * 15 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            *self.lock_inflight() -= n;
            self.room.notify_all();
        }
    }
}

/// One claim's read: which streams, how many entries from each at most and in all, and
/// whether it waits for work.
#[derive(Debug)]
struct Read {
    /// The task streams.
    streams: Vec<Arc<str>>,
    /// The redelivery streams of every task stream the host serves, read first.
    redo: Vec<Arc<str>>,
    /// The most entries from each task stream (and, waiting, from each redelivery stream).
    count: usize,
    /// The most entries in all (a read that does not wait).
    room: usize,
    block: bool,
    /// Whether it is the claim script (the redelivery streams may hold entries to claim)
    /// rather than one
    /// `XREADGROUP`.
    script: bool,
}

/// The task streams a host reads and whose turn it is. A host that serves several shares its
/// workers' time by their weights, equal weights equally (see [`Streams::served`]). While the redelivery streams may hold entries to claim (the set
/// `redoing` names them), a read that does not wait is
/// the claim script, which reads them first and the task streams with the room left;
/// otherwise it is one `XREADGROUP` of the task streams (no more round trips than before
/// redelivery streams), which also learns whether they are in that set. A host waits for work (a blocking
/// `XREADGROUP` on every stream, the redelivery streams too) only once a read found the
/// streams drained.
#[derive(Debug)]
struct Streams {
    all_tenants: bool,
    keys: Vec<Arc<str>>,
    /// The redelivery stream of each of `keys`.
    redo: Vec<Arc<str>>,
    /// Streams found empty by non-blocking reads since anything was claimed.
    idle: usize,
    /// Whether the last read may have left entries behind (a stream gave all that was
    /// asked of it, or the room ran out): then the next read does not wait.
    backlog: bool,
    /// Whether the redelivery streams were in the set `redoing` at the last read: then
    /// reads that do not wait are the claim script.
    redo_waiting: bool,
    refreshed: Option<Instant>,
    /// Each task stream's weight (`keys`' order): its tenant's
    /// ([`set_tenant_weight`](super::set_tenant_weight)), 1 for the untenanted stream.
    weights: Vec<f64>,
    /// The run time (seconds) of the chunks claimed from each task stream and its
    /// redelivery stream, less what all streams' shares have in common (see
    /// [`Streams::charge`]): a host of several streams reads the stream with the least of it
    /// for its weight first, so its workers' time, not its chunks, is shared by weight (as a
    /// local pool's is; equal weights, the default, share it equally). A chunk is charged its stream's estimate
    /// when claimed and corrected to its real run time when committed ([`Streams::ran`]).
    served: Vec<f64>,
    /// Each task stream's run time per chunk, lately (seconds; `None` before one ran).
    estimate: Vec<Option<f64>>,
}

impl Streams {
    fn new(serves: &Serves, keys: &Keys) -> Streams {
        let list = match serves {
            Serves::Untenanted | Serves::All => vec![keys.tasks()],
            Serves::Tenants(tenants) => tenants.iter().map(|t| keys.tenant_tasks(t)).collect(),
        };
        let mut s = Streams {
            all_tenants: *serves == Serves::All,
            keys: Vec::new(),
            redo: Vec::new(),
            idle: 0,
            backlog: false,
            redo_waiting: false,
            refreshed: None,
            weights: Vec::new(),
            served: Vec::new(),
            estimate: Vec::new(),
        };
        let weights = vec![1.0; list.len()];
        s.set(keys, list, weights);
        s
    }

    /// Reads the task streams `list`, of `weights`, and their redelivery streams. A stream
    /// read before keeps what it was served; a new one starts level with the least served
    /// (for its weight), so it does not take every claim until it has caught up.
    fn set(&mut self, keys: &Keys, list: Vec<String>, weights: Vec<f64>) {
        let level = self.level();
        let before = |name: &String| self.keys.iter().position(|k| **k == **name);
        let served = list
            .iter()
            .zip(&weights)
            .map(|(name, w)| before(name).map_or(level * w, |i| self.served[i]))
            .collect();
        let estimate = list
            .iter()
            .map(|name| before(name).and_then(|i| self.estimate[i]))
            .collect();
        self.estimate = estimate;
        self.redo = list.iter().map(|s| Arc::from(keys.redo_of(s))).collect();
        self.keys = list.into_iter().map(Arc::from).collect();
        self.weights = weights;
        self.served = served;
    }

    /// Whether the host reads several task streams: then their claims are charged by run
    /// time and shared by weight, equal weights too (taken in turn by chunks, a tenant of
    /// 100 ms chunks would get ten times the time of one of 10 ms chunks).
    fn shared(&self) -> bool {
        self.keys.len() > 1
    }

    /// The least any stream was served for its weight.
    fn level(&self) -> f64 {
        let least = self
            .served
            .iter()
            .zip(&self.weights)
            .map(|(s, w)| s / w)
            .fold(f64::INFINITY, f64::min);
        if least.is_finite() {
            least.max(0.0)
        } else {
            0.0
        }
    }

    /// The task stream (`keys`' index) of task or redelivery stream `stream`.
    fn index_of(&self, stream: &Arc<str>) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k == stream)
            .or_else(|| self.redo.iter().position(|r| r == stream))
    }

    /// What a chunk of task stream `i` is charged when claimed: its estimate, else the
    /// mean of the others' (a new tenant), else one second (nothing ran yet): the
    /// correction when it is committed makes up the difference.
    fn cost(&self, i: usize) -> f64 {
        if let Some(Some(e)) = self.estimate.get(i) {
            return *e;
        }
        let known: Vec<f64> = self.estimate.iter().flatten().copied().collect();
        if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        }
    }

    /// Counts the chunks committed since the last read (`ran`: their stream, what it was
    /// charged for each when claimed, and its run time): the charge is corrected to the run
    /// time, and the stream's estimate learns it.
    fn ran(&mut self, ran: &[(Arc<str>, f64, f64)]) {
        for (stream, charged, took) in ran {
            let Some(i) = self.index_of(stream) else {
                continue;
            };
            if self.shared() {
                self.served[i] += took - charged;
            }
            let e = &mut self.estimate[i];
            *e = Some(e.map_or(*took, |e| 0.8 * e + 0.2 * took));
        }
    }

    /// Charges what a read claimed to each task stream (a redelivered chunk to its task
    /// stream), [`cost`](Streams::cost) a chunk; answers each chunk's charge, `got`'s
    /// order (0 on a host of one stream: there is nothing to share). A stream
    /// found empty (the read came to it with room left and it gave nothing) is raised to
    /// the level of those that gave, so an idle tenant does not save up turns to spend all
    /// at once later; then the level common to all is taken off.
    fn charge(&mut self, read: &Read, got: &[Entry]) -> Vec<f64> {
        if !self.shared() {
            return vec![0.0; got.len()];
        }
        let mut gave = vec![0usize; self.keys.len()];
        let mut charges = Vec::with_capacity(got.len());
        for (stream, ..) in got {
            let Some(i) = self.index_of(stream) else {
                charges.push(0.0);
                continue;
            };
            let cost = self.cost(i);
            self.served[i] += cost;
            charges.push(cost);
            if self.keys[i] == *stream {
                gave[i] += 1;
            }
        }
        // The claim script reads the redelivery streams first, then the task streams in the
        // read's order, until the room is full.
        let redelivered = got.iter().filter(|e| !self.keys.contains(&e.0)).count();
        let mut room = if read.block {
            usize::MAX
        } else {
            read.room.saturating_sub(redelivered)
        };
        let mut empty = Vec::new();
        for stream in &read.streams {
            if room == 0 {
                break;
            }
            if let Some(i) = self.keys.iter().position(|k| k == stream) {
                if gave[i] == 0 {
                    empty.push(i);
                }
                room = room.saturating_sub(gave[i]);
            }
        }
        let busy = (0..self.keys.len())
            .filter(|&i| gave[i] > 0)
            .map(|i| self.served[i] / self.weights[i])
            .fold(f64::INFINITY, f64::min);
        if busy.is_finite() {
            for i in empty {
                self.served[i] = self.served[i].max(busy * self.weights[i]);
            }
        }
        let level = self.level();
        for (s, w) in self.served.iter_mut().zip(&self.weights) {
            *s -= level * w;
        }
        charges
    }

    /// Reads the tenants again before the next read (a host serving every tenant): one of
    /// its streams was gone, maybe removed with its tenant.
    fn refresh_soon(&mut self) {
        self.refreshed = None;
    }

    /// A host serving every tenant: the untenanted stream and every known tenant's, read
    /// again from Redis every [`TENANTS_REFRESH`]. Others read a fixed list: no round trip.
    fn refresh(&mut self, con: &mut redis::Connection, keys: &Keys, url: &str) -> Result<()> {
        if !self.all_tenants
            || self
                .refreshed
                .is_some_and(|t| t.elapsed() < TENANTS_REFRESH)
        {
            return Ok(());
        }
        let tenants = known_tenants(con, keys, url)?;
        let weights = tenant_weights(con, keys, url)?;
        let weights = std::iter::once(1.0)
            .chain(
                tenants
                    .iter()
                    .map(|t| f64::from(weights.get(t).copied().unwrap_or(1))),
            )
            .collect();
        let list = std::iter::once(keys.tasks())
            .chain(tenants.iter().map(|t| keys.tenant_tasks(t)))
            .collect();
        self.set(keys, list, weights);
        self.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Which of the task streams (`keys`' order) hold their share of the chunks waiting
    /// for a setup (`waiting`: the stream each was claimed from; a redelivery stream's
    /// count for its task stream): `slots` shared by the streams, at least one each. A
    /// stream at its share is not read until one of them starts, so one tenant's backlog
    /// for a pool whose setup waits does not fill the host's claims while the others' work
    /// waits.
    fn at_bound(&self, waiting: &[Arc<str>], slots: usize) -> Vec<bool> {
        let share = (slots / self.keys.len().max(1)).max(1);
        self.keys
            .iter()
            .zip(&self.redo)
            .map(|(k, r)| waiting.iter().filter(|s| *s == k || *s == r).count() >= share)
            .collect()
    }

    /// What to read with room for `free` entries, from the task streams not marked in
    /// `skip` (`keys`' order; a stream past its end is read), or `None` when every one is.
    /// Every read starts with the redelivery streams of those it reads. Several streams,
    /// while the last read may have left work behind or a read without waiting has not yet
    /// found them all empty: the claim script, every one of them, the least served for its
    /// weight first, which takes the room from them in that order. Otherwise every one of
    /// them, an equal share of the room each: one stream (as a host of untenanted pools has
    /// always read) without waiting while the last read may have left work behind; once the
    /// streams are drained (several: once a read found them all empty) waiting for work on
    /// every one, their redelivery streams too, a share each (then, when several streams get
    /// work in the same instant, a few more entries than the room may come: at most one more
    /// per stream).
    fn next_read(&mut self, free: usize, skip: &[bool]) -> Option<Read> {
        let open: Vec<usize> = (0..self.keys.len())
            .filter(|&i| !skip.get(i).copied().unwrap_or(false))
            .collect();
        if open.is_empty() {
            return None;
        }
        let m = open.len();
        let redo: Vec<Arc<str>> = open.iter().map(|&i| self.redo[i].clone()).collect();
        if self.shared() && (self.backlog || self.idle < m) {
            let mut order = open;
            order.sort_by(|&a, &b| {
                (self.served[a] / self.weights[a]).total_cmp(&(self.served[b] / self.weights[b]))
            });
            return Some(Read {
                streams: order.into_iter().map(|i| self.keys[i].clone()).collect(),
                redo,
                count: free,
                room: free,
                block: false,
                script: true,
            });
        }
        let block = !self.backlog;
        Some(Read {
            streams: open.iter().map(|&i| self.keys[i].clone()).collect(),
            redo,
            count: if block {
                (free / (2 * m)).max(1)
            } else {
                (free / m).max(1)
            },
            room: free,
            block,
            script: !block && self.redo_waiting,
        })
    }

    /// What a read claimed, and whether the redelivery streams may still hold entries to
    /// claim; answers what each chunk was charged (see [`charge`](Streams::charge)).
    fn read(&mut self, read: &Read, got: &[Entry], redo_left: bool) -> Vec<f64> {
        let charges = self.charge(read, got);
        self.redo_waiting = redo_left;
        if !got.is_empty() {
            self.idle = 0;
        } else if !read.block {
            self.idle += read.streams.len();
        }
        let filled = |s: &Arc<str>| got.iter().filter(|e| e.0 == *s).count() >= read.count;
        self.backlog = !got.is_empty()
            && (got.len() >= read.room || read.streams.iter().chain(&read.redo).any(filled));
        if read.block && !self.backlog {
            // A wait that came back with less than every stream could give found them all
            // drained: the next read waits again, without a claim script first.
            self.idle = self.idle.max(read.streams.len());
        }
        charges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(read: &Read) -> Vec<&str> {
        read.streams.iter().map(|s| &**s).collect()
    }

    /// `n` entries claimed from `stream`.
    fn got(stream: &str, n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| (Arc::from(stream), format!("1-{i}"), HashMap::new()))
            .collect()
    }

    #[test]
    fn a_new_pool_counts_the_pools_let_go_that_still_run_and_evicts_only_idle_ones() {
        let t = Instant::now();
        let (old, new) = (t, t + Duration::from_secs(1));
        // Room: start it.
        assert_eq!(seat(&[("a", old, true)], 1, 3), Seat::Free);
        // Full with the one let go that still runs: the idle pool used least recently goes.
        let pools = [("a", new, false), ("b", old, false), ("c", old, true)];
        assert_eq!(seat(&pools[..2], 1, 3), Seat::Evict("b"));
        assert_eq!(seat(&pools, 0, 3), Seat::Evict("b"));
        // A busy pool is never let go for it (its workers would stay): wait.
        assert_eq!(seat(&[("c", old, true)], 2, 3), Seat::Wait);
        assert_eq!(seat::<&str>(&[], 3, 3), Seat::Wait);
    }

    #[test]
    fn a_host_of_one_stream_waits_on_it_and_its_redelivery_stream() {
        let mut s = Streams::new(&Serves::Untenanted, &Keys::default());
        let read = s.next_read(7, &[]).unwrap();
        assert_eq!(names(&read), ["{wasmpool}:v3:tasks"]);
        assert_eq!(read.redo, [Arc::from("{wasmpool}:v3:redo")]);
        // A share of the room from each of the two streams: never more than the room.
        assert_eq!((read.count, read.room, read.block), (3, 7, true));
        let mut s = Streams::new(&Serves::Tenants(vec!["a".into()]), &Keys::default());
        let read = s.next_read(1, &[]).unwrap();
        assert_eq!(names(&read), ["{wasmpool}:v3:tasks:a"]);
        assert_eq!(read.redo, [Arc::from("{wasmpool}:v3:redo:a")]);
        assert_eq!((read.count, read.block), (1, true));
    }

    #[test]
    fn a_read_that_may_have_left_work_is_followed_by_one_that_does_not_wait() {
        let mut s = Streams::new(&Serves::Untenanted, &Keys::default());
        let read = s.next_read(8, &[]).unwrap();
        assert!(read.block);
        // The stream gave all that was asked of it: more may wait, redelivered work too.
        // The redelivery stream holds entries: the read is the claim script.
        s.read(&read, &got("{wasmpool}:v3:tasks", read.count), true);
        let read = s.next_read(8, &[]).unwrap();
        assert_eq!(
            (read.count, read.room, read.block, read.script),
            (8, 8, false, true)
        );
        // The room ran out (redelivered chunks first): read again without waiting; the
        // redelivery stream is empty now: one `XREADGROUP`.
        s.read(&read, &got("{wasmpool}:v3:redo", 8), false);
        let read = s.next_read(8, &[]).unwrap();
        assert!(!read.block && !read.script);
        // Less than was asked: the streams are drained; wait for work.
        let read = s.next_read(8, &[]).unwrap();
        s.read(&read, &got("{wasmpool}:v3:tasks", 3), false);
        assert!(s.next_read(8, &[]).unwrap().block);
        let read = s.next_read(8, &[]).unwrap();
        s.read(&read, &[], false);
        assert!(s.next_read(8, &[]).unwrap().block, "nothing found: wait");
    }

    /// What `reads` reads of claiming from streams that all have work (but those named in
    /// `empty`): each read takes its room from the streams in its order. Answers how many
    /// each stream gave.
    fn claim_weighted(s: &mut Streams, reads: usize, free: usize, empty: &[&str]) -> Vec<usize> {
        let mut given = vec![0; s.keys.len()];
        for _ in 0..reads {
            let read = s.next_read(free, &[]).unwrap();
            assert!(
                read.script && !read.block,
                "a weighted read is the claim script"
            );
            let mut got_now = Vec::new();
            for stream in &read.streams {
                if got_now.len() < free && !empty.contains(&&**stream) {
                    let i = s.keys.iter().position(|k| k == stream).unwrap();
                    given[i] += free - got_now.len();
                    got_now.extend(got(stream, free - got_now.len()));
                }
            }
            s.read(&read, &got_now, false);
        }
        given
    }

    /// The untenanted task stream and tenant `a`'s and `b`'s.
    const X: &str = "{wasmpool}:v3:tasks";
    const A: &str = "{wasmpool}:v3:tasks:a";
    const B: &str = "{wasmpool}:v3:tasks:b";

    /// The streams of a host serving every tenant, reading [`X`], [`A`] and [`B`] of these
    /// weights.
    fn three_streams(weights: [f64; 3]) -> (Keys, Streams) {
        let keys = Keys::default();
        let mut s = Streams::new(&Serves::All, &keys);
        s.set(&keys, vec![X.into(), A.into(), B.into()], weights.to_vec());
        (keys, s)
    }

    #[test]
    fn streams_of_unequal_weights_share_the_claims_by_weight_and_an_idle_one_saves_no_turns() {
        let (keys, mut s) = three_streams([1.0, 3.0, 1.0]);
        let (x, a, b) = (X, A, B);
        assert!(s.shared());
        // Every stream with work: 1 : 3 : 1, one chunk a read or four.
        assert_eq!(claim_weighted(&mut s, 500, 1, &[]), [100, 300, 100]);
        assert_eq!(claim_weighted(&mut s, 100, 4, &[]), [80, 240, 80]);
        // `a` idle for a while, then busy again: it gets its share, not what it missed.
        assert_eq!(claim_weighted(&mut s, 200, 1, &[a])[1], 0);
        let after = claim_weighted(&mut s, 50, 1, &[]);
        assert!(after[1] <= 32, "the idle stream caught up: {after:?}");
        assert_eq!(after.iter().sum::<usize>(), 50);
        // A new stream starts level with the others.
        let c = "{wasmpool}:v3:tasks:c";
        s.set(
            &keys,
            vec![x.into(), a.into(), b.into(), c.into()],
            vec![1.0, 3.0, 1.0, 1.0],
        );
        let shares = claim_weighted(&mut s, 600, 1, &[]);
        assert_eq!(shares, [100, 300, 100, 100]);
        // Redelivered chunks (charged to `a`) take two of a read's three places and its
        // first task stream the third: the claim never reached the others, which are not
        // raised (`b`, far ahead, would be lowered by the level they were raised to).
        s.set(
            &keys,
            vec![x.into(), a.into(), b.into()],
            vec![1.0, 3.0, 1.0],
        );
        s.served = vec![0.0, 0.0, 5.0];
        let read = s.next_read(3, &[]).unwrap();
        assert_eq!(names(&read), [x, a, b]);
        let mut claimed = got("{wasmpool}:v3:redo:a", 2);
        claimed.extend(got(x, 1));
        let charges = s.read(&read, &claimed, false);
        assert_eq!(charges, [1.0; 3], "a chunk a second, before any ran");
        // Served 1, 2 and 5 (for weights 1, 3, 1): less the level, 2/3 a weight.
        let expected = [1.0 / 3.0, 0.0, 13.0 / 3.0];
        assert!(
            s.served
                .iter()
                .zip(expected)
                .all(|(s, e)| (s - e).abs() < 1e-9),
            "a stream the claim never reached was raised: {:?}",
            s.served
        );
        // One stream: nothing to share, nothing charged.
        s.set(&keys, vec![x.into()], vec![1.0]);
        assert!(!s.shared());
        let read = s.next_read(3, &[]).unwrap();
        assert_eq!(s.read(&read, &got(x, 3), false), [0.0; 3]);
    }

    /// The share of the workers' time `a` gets of a host serving `a` (chunks of a second) and
    /// `b` (a tenth), of these weights, each chunk committed one read after it was claimed.
    fn time_share(weights: [f64; 2]) -> f64 {
        let keys = Keys::default();
        let mut s = Streams::new(&Serves::All, &keys);
        let (a, b) = ("{wasmpool}:v3:tasks:a", "{wasmpool}:v3:tasks:b");
        s.set(&keys, vec![a.into(), b.into()], weights.to_vec());
        let cost = |stream: &str| if stream == a { 1.0 } else { 0.1 };
        let mut time = [0.0f64; 2];
        let mut in_flight: Vec<(Arc<str>, f64, f64)> = Vec::new();
        for _ in 0..600 {
            let read = s.next_read(1, &[]).unwrap();
            let stream = read.streams[0].clone();
            let charges = s.read(&read, &got(&stream, 1), false);
            let took = cost(&stream);
            time[usize::from(&*stream == b)] += took;
            // Committed one read later: a claim is charged before the one before it ran.
            s.ran(&std::mem::take(&mut in_flight));
            in_flight.push((stream, charges[0], took));
        }
        // A redelivered chunk counts for its task stream.
        assert_eq!(s.index_of(&Arc::from("{wasmpool}:v3:redo:b")), Some(1));
        time[0] / time[1]
    }

    /// Turns share the workers' time, as a local pool's do, not the chunks: a chunk is
    /// charged its stream's estimate when claimed and corrected to its run time. By chunks,
    /// `a` (chunks ten times as long) would get 20 times `b`'s time at weights 2 : 1, and
    /// 10 times at equal weights; by time, twice and as much.
    #[test]
    fn streams_share_the_run_time_by_weight_whatever_their_chunks_cost() {
        let ratio = time_share([2.0, 1.0]);
        assert!(
            (1.8..=2.2).contains(&ratio),
            "a's time is {ratio:.2} times b's (weights 2 : 1)"
        );
        let ratio = time_share([1.0, 1.0]);
        assert!(
            (0.9..=1.1).contains(&ratio),
            "a's time is {ratio:.2} times b's (equal weights)"
        );
    }

    #[test]
    fn streams_of_equal_cost_take_turns_and_wait_once_a_read_found_them_all_empty() {
        let (_, mut s) = three_streams([1.0; 3]);
        let (x, a, b) = (X, A, B);
        // Room for one, every stream with work, chunks that cost the same (a second each,
        // before any ran): each stream in turn, without waiting, after every redelivery
        // stream.
        let mut order = Vec::new();
        for _ in 0..6 {
            let read = s.next_read(1, &[]).unwrap();
            assert_eq!(
                (read.count, read.room, read.block, read.script),
                (1, 1, false, true)
            );
            assert_eq!(
                read.redo.iter().map(|r| &**r).collect::<Vec<_>>(),
                [
                    "{wasmpool}:v3:redo",
                    "{wasmpool}:v3:redo:a",
                    "{wasmpool}:v3:redo:b"
                ]
            );
            let stream = read.streams[0].clone();
            order.push(stream.to_string());
            assert_eq!(s.read(&read, &got(&stream, 1), false), [1.0]);
        }
        assert_eq!(order, [x, a, b, x, a, b]);
        // A read that found nothing: wait on all of them, a share of the room each.
        let read = s.next_read(6, &[]).unwrap();
        assert!(!read.block);
        s.read(&read, &[], false);
        let read = s.next_read(6, &[]).unwrap();
        assert_eq!((names(&read).len(), read.count, read.block), (3, 1, true));
        s.read(&read, &got(a, 1), false);
        assert!(
            !s.next_read(1, &[]).unwrap().block,
            "claiming something starts the turns again"
        );
        // A wait that gives less than any stream's share: they were all drained, so the
        // next read waits again, with no claim script in between.
        let read = s.next_read(6, &[]).unwrap();
        s.read(&read, &[], false);
        let read = s.next_read(18, &[]).unwrap();
        assert_eq!((read.count, read.block), (3, true));
        s.read(&read, &got(b, 2), false);
        let read = s.next_read(18, &[]).unwrap();
        assert!(read.block && !read.script, "{read:?}");
    }

    #[test]
    fn a_stream_with_its_share_of_chunks_waiting_for_a_setup_is_not_read() {
        let (keys, mut s) = three_streams([1.0; 3]);
        let (x, a, b) = (X, A, B);
        // Six slots, three streams: two chunks waiting each at most, a redelivered one
        // counted for its task stream.
        let waiting: Vec<Arc<str>> = vec![a.into(), "{wasmpool}:v3:redo:a".into(), b.into()];
        let skip = s.at_bound(&waiting, 6);
        assert_eq!(skip, [false, true, false]);
        let read = s.next_read(8, &skip).unwrap();
        assert_eq!(names(&read), [x, b]);
        assert_eq!(
            read.redo.iter().map(|r| &**r).collect::<Vec<_>>(),
            ["{wasmpool}:v3:redo", "{wasmpool}:v3:redo:b"]
        );
        assert!(read.script);
        // Room for one: the turns go on over the streams read.
        let mut order = Vec::new();
        for _ in 0..4 {
            let read = s.next_read(1, &skip).unwrap();
            assert_eq!(names(&read).len(), 2);
            let stream = read.streams[0].clone();
            order.push(stream.to_string());
            s.read(&read, &got(&stream, 1), false);
        }
        assert_eq!(order, [x, b, x, b]);
        // One slot: each stream may hold one waiting; every stream at it: nothing to read.
        let all: Vec<Arc<str>> = vec![x.into(), a.into(), b.into()];
        assert!(s.next_read(4, &s.at_bound(&all, 1)).is_none());
        // Weighted too: the script reads the open streams only.
        s.set(
            &keys,
            vec![x.into(), a.into(), b.into()],
            vec![1.0, 3.0, 1.0],
        );
        let read = s.next_read(4, &skip).unwrap();
        assert!(read.script);
        assert_eq!(names(&read), [x, b]);
    }
}
