//! The submitting side: [`ClusterPool`], a pool whose chunks go to Redis and whose results
//! come back from it.

mod queued;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::keys::{Keys, check_layout, check_tenant, register_tenant};
use super::liveness::{BeatAs, Liveness, ReapCounts, beat_loop};
use super::reconnect::{with_connection_noting, with_connection_waiting};
use super::scripts::SUBMIT;
use super::wire::{BadRecord, ChunkSpec, Record, WorkerSetup, parse_record};
use super::{CANCELLED, connect, redis_error, sha256_hex};
use crate::error::{Error, Result};
use crate::module::Module;
use crate::pool::callbacks::Callbacks;
use crate::pool::imap::ImapSink;
use crate::pool::job::{
    AsyncResult, CancelJobs, CancelQueued, Completion, Hook, Job, Slot, TaskOptions, finish_all,
    finish_one,
};
use crate::pool::submit::{default_chunksize, pack};
use crate::pool::{Imap, check_chunksize};
use crate::protocol::Limits;
use crate::protocol::packed::Packed;
use crate::values::{encode_arg_into, encode_args, encode_args_into};

/// How long results are kept in Redis by default (an hour), for a submitter that is slow to
/// read them or gone.
const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3600);

/// The longest result TTL a pool takes, and a host uses (an entry that names a longer one
/// gets this): Redis refuses an expiry past its clock's range, and a commit refused would
/// hold up the other chunks of its host's batch.
pub(crate) const MAX_RESULT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a submitter waits for a Redis it lost before it fails every pending result, by
/// default.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a module's bytes are kept in Redis after the last submission that used it.
const MODULE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Options for a [`ClusterPool`]: `Pool::builder(&module).cluster(url)`, then these, then
/// [`build`](ClusterBuilder::build).
#[derive(Debug)]
pub struct ClusterBuilder {
    module: Module,
    url: String,
    limits: Limits,
    retries: u32,
    slots_hint: Option<usize>,
    result_ttl: Duration,
    redis_timeout: Duration,
    tenant: Option<String>,
    setup: WorkerSetup,
    error: Option<Error>,
}

impl ClusterBuilder {
    pub(crate) fn new(
        module: Module,
        url: &str,
        limits: Limits,
        retries: u32,
        slots_hint: Option<usize>,
        setup: WorkerSetup,
        error: Option<Error>,
    ) -> ClusterBuilder {
        ClusterBuilder {
            module,
            url: url.to_string(),
            limits,
            retries,
            slots_hint,
            setup,
            result_ttl: DEFAULT_RESULT_TTL,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            tenant: None,
            error,
        }
    }

    /// Submits as tenant `name` (1 to 64 of `A-Z a-z 0-9 _ -`; another name makes
    /// [`build`](ClusterBuilder::build) fail): the chunks go to that tenant's own task
    /// stream, which only hosts joined with `--tenant NAME` or `--all-tenants` serve (see
    /// [`HostBuilder`](crate::cluster::HostBuilder)); hosts joined with neither serve only
    /// untenanted pools. Like an untenanted pool with no host, a tenant's pool whose tenant
    /// no live host serves waits for one to join (`get_timeout` bounds the wait).
    pub fn tenant(mut self, name: &str) -> Self {
        self.tenant = Some(name.to_string());
        self
    }

    /// How long results (and a job's record) are kept in Redis (default one hour): a
    /// submitter that goes away leaves nothing behind for longer. At least a second, at most
    /// a year.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = ttl;
        self
    }

    /// How long pending results wait for a Redis that stopped answering before they fail
    /// (default 30 s); they resume if it answers again within that.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// Builds the pool (as [`build`](ClusterBuilder::build)) and returns an
    /// [`Executor`](crate::Executor) over it: Python's `ProcessPoolExecutor`, its work run
    /// by the cluster's hosts (see [`Executor::from_cluster`](crate::Executor::from_cluster)).
    ///
    /// ```no_run
    /// # async fn demo() -> wasmpool::Result<()> {
    /// let module = wasmpool::Module::load("examples/testkit")?;
    /// let ex = wasmpool::Pool::builder(&module)
    ///     .cluster("redis://127.0.0.1:6379")
    ///     .executor()?;
    /// let fut = ex.submit::<_, i64>("add", &(2, 3))?;
    /// assert_eq!(fut.await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn executor(self) -> Result<crate::Executor> {
        self.build().map(crate::Executor::from_cluster)
    }

    /// Connects to Redis, checks its keys are this version's, stores the module (once, by
    /// its SHA-256), and returns the pool. Fails with [`Error::Cluster`], within a few
    /// seconds, when Redis cannot be reached or holds another version's keys.
    pub fn build(self) -> Result<ClusterPool> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.limits.check().map_err(Error::State)?;
        if self.result_ttl < Duration::from_secs(1) || self.result_ttl > MAX_RESULT_TTL {
            return Err(Error::State(
                "the result TTL must be at least a second and at most a year".into(),
            ));
        }
        if let Some(t) = &self.tenant {
            check_tenant(t)?;
        }
        // Refused here as a local pool refuses them, not on every host.
        if self.setup.maxtasksperchild == Some(0) {
            return Err(Error::State(
                "maxtasksperchild must be at least 1 (or unset, for workers that live as \
                 long as the pool)"
                    .into(),
            ));
        }
        if let Some((task, _)) = &self.setup.initializer {
            self.module.tasks()?;
            self.module.check_task(task)?;
        }
        let keys = Keys::default();
        let url = self.url;
        let mut con = connect(&url)?;
        check_layout(&mut con, &keys, &url)?;
        if let Some(t) = &self.tenant {
            register_tenant(&mut con, &keys, t, &url)?;
        }
        let bytes = self.module.bytes()?;
        let sha = sha256_hex(bytes);
        store_module(&mut con, &keys, &url, &sha, bytes)?;
        let n: u64 = redis::cmd("INCR")
            .arg(keys.clients())
            .query(&mut con)
            .map_err(|e| redis_error(&url, "naming this submitter", e))?;
        // The number is unique while Redis keeps its data; the tag, after it lost them.
        let client = format!("c{n}x{}", super::tag());
        let stop = Arc::new(AtomicBool::new(false));
        let liveness = Arc::new(Liveness::default());
        let counts = Arc::new(ReapCounts::default());
        let inner = Arc::new(Inner {
            url: url.clone(),
            results_key: keys.results(&client),
            tasks_key: keys.stream(self.tenant.as_deref()),
            tenant: self.tenant,
            keys: keys.clone(),
            client,
            module: self.module,
            sha,
            setup: self.setup,
            slots_hint: self.slots_hint,
            result_ttl: self.result_ttl,
            redis_timeout: self.redis_timeout,
            con: Mutex::new(Some(con)),
            submit_script: redis::Script::new(SUBMIT),
            jobs: Mutex::new(Jobs::default()),
            outbox: Mutex::new(Vec::new()),
            outbox_ready: Condvar::new(),
            sending: Mutex::new(()),
            redis_down: AtomicBool::new(false),
            slots_seen: AtomicUsize::new(0),
            cancels_waiting: AtomicUsize::new(0),
            unfenced: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            callbacks: Callbacks::start(),
            closed: AtomicBool::new(false),
            stop: stop.clone(),
        });
        let mut threads = Vec::new();
        let reader = inner.clone();
        threads.push(spawn("wasmpool-cluster-results", move || {
            reader.read_results()
        })?);
        let sender = inner.clone();
        threads.push(spawn("wasmpool-cluster-send", move || sender.send_loop())?);
        let (ttl, l, c, s) = (
            self.result_ttl,
            liveness.clone(),
            counts.clone(),
            stop.clone(),
        );
        // A tenant's pool keeps its tenant's streams while it lives.
        let beat_as = BeatAs {
            host: None,
            tenants: inner.tenant.iter().cloned().collect(),
        };
        threads.push(spawn("wasmpool-cluster-beat", move || {
            beat_loop(url, keys, beat_as, ttl, l, c, s)
        })?);
        let owner = Arc::new(Owner {
            inner: inner.clone(),
            threads: Mutex::new(threads),
        });
        Ok(ClusterPool {
            inner,
            _owner: owner,
            opts: TaskOptions {
                retries: self.retries,
                limits: self.limits,
                tenant: Default::default(),
                capture_output: false,
            },
        })
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(|e| Error::io(format!("starting the thread {name}"), e))
}

/// Stores a module's bytes under their SHA-256, unless they are there, and keeps them for
/// [`MODULE_TTL`] more.
fn store_module(
    con: &mut redis::Connection,
    keys: &Keys,
    url: &str,
    sha: &str,
    bytes: &[u8],
) -> Result<()> {
    let key = keys.module(sha);
    let (_, _): (Option<String>, i64) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(bytes)
        .arg("NX")
        .cmd("EXPIRE")
        .arg(&key)
        .arg(MODULE_TTL.as_secs())
        .query(con)
        .map_err(|e| redis_error(url, "storing the module", e))?;
    Ok(())
}

/// A pool whose work runs on the hosts of a cluster (see [`crate::cluster`]), built with
/// `Pool::builder(&module).cluster("redis://HOST:PORT").build()`.
///
/// Its methods are the local [`Pool`](crate::Pool)'s and return the same
/// [`AsyncResult`]s and [`Imap`]s: results come in order, a task's error is the error it is
/// locally, and a host that dies mid-chunk has its chunks run again elsewhere (with
/// retries), or failed with [`Error::WorkerLost`] (retries 0: work that may not run twice).
///
/// ```no_run
/// use wasmpool::{Module, Pool};
///
/// let module = Module::load("examples/testkit")?;
/// // Hosts joined with `wasmpool worker --join redis://127.0.0.1:6379 --slots 4`.
/// let pool = Pool::builder(&module).retries(1).cluster("redis://127.0.0.1:6379").build()?;
/// let squares: Vec<u64> = pool.map("square", 0..1000u64)?;
/// assert_eq!(squares[999], 998_001);
/// assert_eq!(pool.apply::<_, i64>("add", &(2, 3))?, 5);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClusterPool {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
    opts: TaskOptions,
}

/// What the cluster's Redis has counted since it started (for every pool and host on it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Chunks whose results were committed.
    pub committed: u64,
    /// Results refused by the fence: from a host presumed dead whose chunk was given to
    /// another (a late result, never committed twice).
    pub dropped: u64,
    /// Chunks of dead hosts run again elsewhere.
    pub redelivered: u64,
    /// Chunks of dead hosts failed as lost (their retries spent).
    pub lost: u64,
}

/// Stops the threads and fails what is pending when the last handle goes.
#[derive(Debug)]
struct Owner {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.fail_all("the pool was dropped");
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.outbox_ready.notify_all();
        for t in std::mem::take(&mut *self.inner_threads()) {
            let _ = t.join();
        }
        // Results still to come for this submitter have nobody to read them.
        if let Some(con) = self.inner.lock_con().as_mut() {
            let _: redis::RedisResult<()> =
                redis::cmd("DEL").arg(&self.inner.results_key).query(con);
        }
        let unfenced = self.inner.lock_unfenced().len();
        if unfenced > 0 {
            // Cancels made while Redis was down: their fences are set in the background, as
            // the sender would have, while Redis answers within the pool's Redis timeout
            // (not waited for here); otherwise their hosts would run that work after all.
            tracing::warn!(
                "cluster: {unfenced} cancelled jobs' fences are not set yet (Redis was down): \
                 they are set once it answers, within {:?}, unless this process exits first",
                self.inner.redis_timeout
            );
            let inner = self.inner.clone();
            if let Err(e) = spawn("wasmpool-cluster-fences", move || inner.fence_after_drop()) {
                tracing::warn!("cluster: {unfenced} cancelled jobs' fences not set: {e}");
            }
        }
        self.inner.callbacks.stop();
    }
}

impl Owner {
    fn inner_threads(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cancelled chunks of a job, whose stream entries are to be deleted and fences set (what
/// [`Inner::fence_cancelled`] takes, and keeps while Redis is down).
#[derive(Debug)]
struct Fence {
    job: String,
    chunks: Vec<u32>,
    entries: Vec<String>,
}

/// Chunks of one submission, waiting for the sender.
#[derive(Debug)]
struct Outgoing {
    id: String,
    first_chunk: u32,
    parts: Vec<(usize, Packed)>,
    call: bool,
    job: Arc<Job>,
}

/// A job with chunks in the cluster.
#[derive(Debug)]
struct Running {
    job: Arc<Job>,
    /// Chunks not yet answered: index → (first item, items).
    chunks: HashMap<u32, (usize, usize)>,
    /// The stream entries of the chunks sent and not answered (what a cancel deletes).
    entries: HashMap<u32, String>,
    next_chunk: u32,
}

#[derive(Debug, Default)]
struct Jobs {
    next: u64,
    by_id: HashMap<String, Running>,
    /// A job's id, by the address of its `Job` (alive while it is in `by_id`).
    by_ptr: HashMap<usize, String>,
}

impl Jobs {
    /// Forgets job `id` if none of its chunks is out and it has finished.
    fn forget_if_done(&mut self, id: &str) {
        if let Some(r) = self.by_id.get(id)
            && r.chunks.is_empty()
            && r.job.finished()
        {
            let ptr = Arc::as_ptr(&r.job) as usize;
            self.by_id.remove(id);
            self.by_ptr.remove(&ptr);
        }
    }
}

struct Inner {
    url: String,
    keys: Keys,
    client: String,
    results_key: String,
    /// The stream its chunks go to: its tenant's, or that of untenanted pools.
    tasks_key: String,
    tenant: Option<String>,
    module: Module,
    sha: String,
    /// How its workers are set up (travels with each chunk).
    setup: WorkerSetup,
    slots_hint: Option<usize>,
    result_ttl: Duration,
    redis_timeout: Duration,
    /// The connection submissions use (`None` after it failed, until the next one).
    con: Mutex<Option<redis::Connection>>,
    /// Adds a chunk to the task stream once ([`SUBMIT`]).
    submit_script: redis::Script,
    jobs: Mutex<Jobs>,
    /// Chunks submitted and not yet sent.
    outbox: Mutex<Vec<Outgoing>>,
    outbox_ready: Condvar,
    /// Held by the sender from taking a batch out of the outbox until its entries are
    /// recorded (or its chunks failed), and by a cancel of queued work: which so finds each
    /// chunk either still in the outbox or with its entry known, never on its way. While
    /// Redis is known to be down a cancel does not wait for it (see `queued.rs`).
    sending: Mutex<()>,
    /// Set while the sender or the result reader finds Redis unreachable, cleared when it
    /// answers either: what would only wait for it then does not (a cancel, the count of
    /// the hosts' slots for a default chunk size).
    redis_down: AtomicBool,
    /// The live hosts' slots as last counted (0 before the first count).
    slots_seen: AtomicUsize,
    /// Cancels waiting for `sending`: the sender lets them take it before its next batch
    /// (they poll for it, and between two sends of a flood it is free only for a moment).
    cancels_waiting: AtomicUsize,
    /// Cancelled chunks whose fences could not be set for want of Redis, set by the sender
    /// once it answers again.
    unfenced: Mutex<Vec<Fence>>,
    /// Notified when a job is forgotten (every chunk answered).
    changed: Condvar,
    callbacks: Callbacks,
    closed: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPool")
            .field("url", &self.url)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock_jobs(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_con(&self) -> MutexGuard<'_, Option<redis::Connection>> {
        self.con.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the submission connection, connecting first if need be; after any error
    /// the connection is dropped, so the next call connects again, and after a stale
    /// connection's or a moved slot's (a Redis Cluster's failover or reshard) `f` runs once
    /// more on a new one ([`with_connection_noting`], which keeps `redis_down` up to date).
    /// Sent twice, a chunk may run twice; it is committed once.
    fn with_con<T>(
        &self,
        doing: &str,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.with_con_noting(doing, f).map_err(|(e, _)| e)
    }

    /// As [`with_con`](Inner::with_con); an error says whether this call could not reach
    /// Redis.
    fn with_con_noting<T>(
        &self,
        doing: &str,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> std::result::Result<T, (Error, bool)> {
        with_connection_noting(&mut self.lock_con(), &self.url, doing, &self.redis_down, f)
    }

    /// As [`with_con`](Inner::with_con), and while Redis cannot be reached (down,
    /// restarting, a Redis Cluster failing over) `f` is tried again, for up to the pool's
    /// Redis timeout, as the result reader waits ([`with_connection_waiting`]).
    fn with_con_waiting<T>(
        &self,
        doing: &str,
        f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        with_connection_waiting(
            &self.con,
            &self.url,
            doing,
            self.redis_timeout,
            (&self.stop, &self.redis_down),
            f,
        )
    }

    /// Queues `parts` (first item, items) of `job` for the sender, which sends them to the
    /// cluster, one stream entry each. Fails only when the pool is closed; a chunk that
    /// cannot be sent fails its items.
    fn submit(&self, job: &Arc<Job>, parts: Vec<(usize, Packed)>, call: bool) -> Result<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::State(
                "the pool is closed: no new work is accepted".into(),
            ));
        }
        if parts.is_empty() {
            return Ok(());
        }
        if job.is_cancelled() {
            // More of a cancelled job (an `imap` still fed): it never goes out.
            for (first, items) in &parts {
                job.complete_run(*first, items.len(), Slot::Cancelled);
            }
            self.callbacks.run_hooks(job);
            return Ok(());
        }
        let (id, first_chunk) = {
            let mut jobs = self.lock_jobs();
            let ptr = Arc::as_ptr(job) as usize;
            let id = match jobs.by_ptr.get(&ptr) {
                Some(id) => id.clone(),
                None => {
                    jobs.next += 1;
                    let id = format!("{}.{}", self.client, jobs.next);
                    jobs.by_ptr.insert(ptr, id.clone());
                    jobs.by_id.insert(
                        id.clone(),
                        Running {
                            job: job.clone(),
                            chunks: HashMap::new(),
                            entries: HashMap::new(),
                            next_chunk: 0,
                        },
                    );
                    id
                }
            };
            let Some(running) = jobs.by_id.get_mut(&id) else {
                return Err(Error::State("the job is gone".into()));
            };
            let first_chunk = running.next_chunk;
            for (i, (first, items)) in parts.iter().enumerate() {
                running
                    .chunks
                    .insert(first_chunk + i as u32, (*first, items.len()));
            }
            running.next_chunk += parts.len() as u32;
            (id, first_chunk)
        };
        self.lock_outbox().push(Outgoing {
            id,
            first_chunk,
            parts,
            call,
            job: job.clone(),
        });
        self.outbox_ready.notify_one();
        Ok(())
    }

    fn lock_outbox(&self) -> MutexGuard<'_, Vec<Outgoing>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_sending(&self) -> MutexGuard<'_, ()> {
        self.sending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sender: sends what the submissions queued, all that is queued in one pipeline
    /// (many `apply_async` calls cost one round trip), until stopped.
    fn send_loop(&self) {
        loop {
            // Also while idle: the fences wait for Redis, not for more work.
            self.fence_unfenced();
            {
                let out = self.lock_outbox();
                if out.is_empty() {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (out, _) = self
                        .outbox_ready
                        .wait_timeout(out, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner());
                    if out.is_empty() {
                        continue;
                    }
                }
            }
            while self.cancels_waiting.load(Ordering::Relaxed) > 0
                && !self.stop.load(Ordering::Relaxed)
            {
                std::thread::sleep(Duration::from_micros(200));
            }
            let _sending = self.lock_sending();
            // Empty if a cancel took it meanwhile.
            let batch = std::mem::take(&mut *self.lock_outbox());
            if batch.is_empty() {
                continue;
            }
            match self.send(&batch) {
                Ok(ids) => self.sent(&batch, ids),
                Err(e) => self.not_sent(&batch, &e),
            }
        }
    }

    /// Records the stream entries of chunks sent; those of a job cancelled meanwhile are
    /// deleted and fenced at once.
    fn sent(&self, batch: &[Outgoing], ids: Vec<Vec<Option<String>>>) {
        let mut fences: Vec<Fence> = Vec::new();
        {
            let mut jobs = self.lock_jobs();
            for (out, ids) in batch.iter().zip(ids) {
                let chunks = (out.first_chunk..).zip(ids);
                if out.job.is_cancelled() {
                    let (chunks, e): (Vec<u32>, Vec<Option<String>>) = chunks.unzip();
                    fences.push(Fence {
                        job: out.id.clone(),
                        chunks,
                        entries: e.into_iter().flatten().collect(),
                    });
                } else if let Some(running) = jobs.by_id.get_mut(&out.id) {
                    for (chunk, id) in chunks {
                        if let Some(id) = id
                            && running.chunks.contains_key(&chunk)
                        {
                            running.entries.insert(chunk, id);
                        }
                    }
                }
            }
        }
        for f in fences {
            self.fence_cancelled(f);
        }
    }

    /// Fails the chunks of a batch that could not be sent.
    fn not_sent(&self, batch: &[Outgoing], e: &Error) {
        // Redis did not come back within the Redis timeout (or refused): whether any entry
        // went out is unknown, so the chunks fail here, so that nothing waits on them (a
        // result that comes anyway is ignored).
        let mut jobs = self.lock_jobs();
        for out in batch {
            if let Some(running) = jobs.by_id.get_mut(&out.id) {
                for i in 0..out.parts.len() as u32 {
                    if let Some((first, n)) = running.chunks.remove(&(out.first_chunk + i)) {
                        running
                            .job
                            .complete_run(first, n, Slot::Aborted(e.to_string()));
                    }
                }
                self.callbacks.run_hooks(&running.job);
            }
            jobs.forget_if_done(&out.id);
        }
        self.changed.notify_all();
    }

    /// Sends queued chunks, one stream entry each, in one pipeline (in calls of [`SUBMIT`]
    /// of at most 64 chunks and 4 MiB, [`calls`](super::scripts::calls)); returns their
    /// entries' ids (`None` for the chunks of a job cancelled before they went out). While
    /// Redis cannot be reached it tries again, for up to the Redis timeout; each chunk is
    /// added by [`SUBMIT`], once, however many times it is sent (a pipeline whose
    /// connection broke may or may not have run).
    fn send(&self, batch: &[Outgoing]) -> Result<Vec<Vec<Option<String>>>> {
        let mut pipe = redis::pipe();
        // Loaded for each batch: a Redis restarted, or a new master, has lost its scripts.
        pipe.load_script(&self.submit_script).ignore();
        let ttl = self.result_ttl.as_millis() as u64;
        let mut skipped = Vec::with_capacity(batch.len());
        // Each chunk to add: its job, its chunk number, its retries, its payload.
        let mut chunks: Vec<(&str, u32, u32, Vec<u8>)> = Vec::new();
        for out in batch {
            let job = &out.job;
            // Read once: a cancel between two reads would leave this job's ids to the next.
            let cancelled = job.is_cancelled();
            skipped.push(cancelled);
            if cancelled {
                continue;
            }
            for (i, (_, items)) in out.parts.iter().enumerate() {
                let spec = ChunkSpec {
                    module: self.sha.clone(),
                    task: job.task.to_string(),
                    items: items.clone(),
                    call: out.call,
                    limits: job.opts.limits,
                    setup: self.setup.clone(),
                    capture: job.opts.capture_output,
                };
                let payload = postcard::to_stdvec(&spec)
                    .map_err(|e| Error::Cluster(format!("encoding a chunk: {e}")))?;
                let chunk = out.first_chunk + i as u32;
                chunks.push((&out.id, chunk, job.opts.retries, payload));
            }
        }
        let calls = super::scripts::calls(chunks.iter().map(|c| c.3.len()));
        for call_of in &calls {
            let mut call = self.submit_script.prepare_invoke();
            call.key(&self.tasks_key).arg(ttl).arg(&self.client);
            for (job, chunk, retries, payload) in &chunks[call_of.clone()] {
                call.key(self.keys.job(job))
                    .arg(job)
                    .arg(chunk)
                    .arg(retries)
                    .arg(payload);
            }
            pipe.invoke_script(&call);
        }
        pipe.cmd("EXPIRE")
            .arg(self.keys.module(&self.sha))
            .arg(MODULE_TTL.as_secs());
        let replies =
            self.with_con_waiting("submitting chunks", |c| pipe.query::<Vec<redis::Value>>(c))?;
        let kept = matches!(replies.get(calls.len()), Some(redis::Value::Int(1)));
        let mut ids = replies
            .into_iter()
            .take(calls.len())
            .flat_map(|call| match call {
                redis::Value::Array(ids) => ids,
                _ => Vec::new(),
            })
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8(b).ok(),
                redis::Value::SimpleString(s) => Some(s),
                _ => None,
            });
        let ids = batch
            .iter()
            .zip(skipped)
            .map(|(out, skipped)| {
                if skipped {
                    vec![None; out.parts.len()]
                } else {
                    out.parts.iter().map(|_| ids.next().flatten()).collect()
                }
            })
            .collect();
        if !kept {
            // The module expired (a pool idle for a day): store it again.
            let bytes = self.module.bytes()?;
            self.with_con_waiting("storing the module", |c| {
                redis::cmd("SET")
                    .arg(self.keys.module(&self.sha))
                    .arg(bytes)
                    .arg("NX")
                    .arg("EX")
                    .arg(MODULE_TTL.as_secs())
                    .query::<Option<String>>(c)
            })?;
        }
        Ok(ids)
    }

    /// The result reader: takes this submitter's records from Redis and records them in
    /// their jobs, until stopped. A Redis lost for longer than the timeout fails what is
    /// pending.
    fn read_results(&self) {
        let mut con: Option<redis::Connection> = None;
        let mut down_since: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            if con.is_none() {
                match super::connect_or_lost(&self.url) {
                    Ok(c) => con = Some(c),
                    Err((e, lost)) => {
                        self.redis_down.store(lost, Ordering::Relaxed);
                        self.note_down(&mut down_since, &e.to_string());
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            let Some(c) = con.as_mut() else { continue };
            let got: redis::RedisResult<Option<(String, Vec<u8>)>> =
                redis::cmd("BLPOP").arg(&self.results_key).arg(0.5).query(c);
            if got.is_ok() {
                // Not on connecting: a stopped Redis's kernel still accepts connections.
                down_since = None;
                self.redis_down.store(false, Ordering::Relaxed);
            }
            match got {
                Ok(None) => {
                    // A Redis that restarted without its data has lost the chunks in it:
                    // what waits on them would wait for ever.
                    let kept: redis::RedisResult<bool> =
                        redis::cmd("EXISTS").arg(self.keys.clients()).query(c);
                    if kept.is_ok_and(|k| !k) {
                        self.fail_all(&format!(
                            "the cluster's Redis at {} lost its data (restarted without \
                             persistence?), and the chunks in it with it",
                            super::shown_url(&self.url)
                        ));
                        let _: redis::RedisResult<()> =
                            redis::cmd("INCR").arg(self.keys.clients()).query(c);
                        let _ = check_layout(c, &self.keys, &self.url);
                        if let Some(t) = &self.tenant {
                            let _ = register_tenant(c, &self.keys, t, &self.url);
                        }
                        if let Ok(bytes) = self.module.bytes() {
                            let _ = store_module(c, &self.keys, &self.url, &self.sha, bytes);
                        }
                    }
                }
                Ok(Some((_, first))) => {
                    let more: Vec<Vec<u8>> = redis::cmd("LPOP")
                        .arg(&self.results_key)
                        .arg(1000)
                        .query(c)
                        .unwrap_or_default();
                    self.record(std::iter::once(first).chain(more));
                }
                Err(e) => {
                    con = None;
                    self.redis_down
                        .store(super::unreachable(&e), Ordering::Relaxed);
                    self.note_down(
                        &mut down_since,
                        &redis_error(&self.url, "reading results", e).to_string(),
                    );
                }
            }
        }
    }

    /// Redis did not answer: once it has not for the timeout, every pending result fails.
    fn note_down(&self, since: &mut Option<Instant>, why: &str) {
        let t = *since.get_or_insert_with(Instant::now);
        if t.elapsed() >= self.redis_timeout {
            self.fail_all(&format!(
                "the cluster's Redis did not answer for {:?}, so these results are not \
                 coming: {why}",
                self.redis_timeout
            ));
            *since = Some(Instant::now());
        }
    }

    /// Records records read from the result list.
    fn record(&self, records: impl Iterator<Item = Vec<u8>>) {
        let mut jobs = self.lock_jobs();
        for bytes in records {
            let (id, chunk, record) = match parse_record(&bytes) {
                Ok(record) => match &record {
                    Record::Committed { job, chunk, .. } | Record::Lost { job, chunk, .. } => {
                        (job.clone(), *chunk, Ok(record))
                    }
                },
                Err(BadRecord {
                    chunk: Some((job, chunk)),
                    why,
                }) => (job, chunk, Err(why)),
                Err(BadRecord { chunk: None, why }) => {
                    tracing::warn!("cluster: a result record this version cannot read: {why}");
                    continue;
                }
            };
            let Some(running) = jobs.by_id.get_mut(&id) else {
                continue;
            };
            let Some((first, n)) = running.chunks.remove(&chunk) else {
                continue;
            };
            running.entries.remove(&chunk);
            let job = running.job.clone();
            let recorded = match record {
                Ok(Record::Committed { result, .. }) => result.record(&job, first, n),
                Ok(Record::Lost { host, .. }) => job.complete_run(
                    first,
                    n,
                    Slot::Lost {
                        pid: host_pid(&host),
                        signal: None,
                        reason: format!(
                            "on cluster host `{host}` was lost: the host stopped renewing its \
                             lease (killed, or cut off from Redis), and the work may not run \
                             twice (retries 0)"
                        ),
                    },
                ),
                Err(why) => job.complete_run(first, n, Slot::Aborted(why)),
            };
            if recorded > 0 {
                self.callbacks.run_hooks(&job);
            }
            jobs.forget_if_done(&id);
        }
        self.changed.notify_all();
    }

    /// Fails every pending chunk with `why`, and forgets them.
    fn fail_all(&self, why: &str) {
        let mut jobs = self.lock_jobs();
        for running in jobs.by_id.values_mut() {
            for (_, (first, n)) in running.chunks.drain() {
                running
                    .job
                    .complete_run(first, n, Slot::Aborted(why.to_string()));
            }
            self.callbacks.run_hooks(&running.job);
        }
        let ids: Vec<String> = jobs.by_id.keys().cloned().collect();
        for id in ids {
            jobs.forget_if_done(&id);
        }
        self.changed.notify_all();
    }
}

impl Inner {
    /// Tells the cluster that the chunks of `fence` are cancelled: their stream
    /// entries not yet claimed are deleted (no host will run them), and each chunk's fence
    /// is set to `x`, which a host running one polls for (it stops it), the reaper reads as
    /// done (it never redelivers it) and the commit refuses (a result that comes anyway).
    ///
    /// While Redis is down the fences are left to the sender, which sets them once it
    /// answers, before it sends more: a cancel returns at once.
    fn fence_cancelled(&self, fence: Fence) {
        if fence.chunks.is_empty() {
            return;
        }
        if self.redis_down.load(Ordering::Relaxed) || !self.try_fence(&fence) {
            self.lock_unfenced().push(fence);
        }
    }

    /// Sets the fences of [`fence_cancelled`](Inner::fence_cancelled); false if Redis
    /// could not be reached.
    fn try_fence(&self, fence: &Fence) -> bool {
        let Fence {
            job,
            chunks,
            entries,
        } = fence;
        let mut pipe = redis::pipe();
        if !entries.is_empty() {
            pipe.cmd("XDEL").arg(&self.tasks_key).arg(entries).ignore();
        }
        let key = self.keys.job(job);
        let mut hset = redis::cmd("HSET");
        hset.arg(&key);
        for c in chunks {
            hset.arg(format!("d:{c}")).arg(CANCELLED);
        }
        pipe.add_command(hset).ignore();
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.result_ttl.as_millis() as u64)
            .ignore();
        match self.with_con_noting("cancelling", |c| pipe.query::<()>(c)) {
            Ok(()) => true,
            Err((_, true)) => false,
            Err((e, false)) => {
                // Its hosts run it to its end; the result is ignored here all the same.
                tracing::warn!("cluster: cancelling job {job}: {e}");
                true
            }
        }
    }

    fn lock_unfenced(&self) -> MutexGuard<'_, Vec<Fence>> {
        self.unfenced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fences [`fence_cancelled`](Inner::fence_cancelled) could not (Redis was
    /// down), while Redis answers; what it still cannot reach stays for the next call.
    fn fence_unfenced(&self) {
        // Not while Redis is known to be down: each try would hold the connection for a
        // command's timeout. The result reader clears the flag as soon as Redis answers it.
        if self.redis_down.load(Ordering::Relaxed) {
            return;
        }
        self.fence_waiting();
    }

    /// Sets the fences kept in `unfenced`, up to the first that Redis does not answer (each
    /// try bounded by a command's timeout); answers how many are left.
    fn fence_waiting(&self) -> usize {
        let mut left = std::mem::take(&mut *self.lock_unfenced());
        while let Some(fence) = left.pop() {
            if !self.try_fence(&fence) {
                left.push(fence);
                break;
            }
        }
        let n = left.len();
        self.lock_unfenced().append(&mut left);
        n
    }

    /// Sets the fences still unset when the pool was dropped (Redis was down), trying every
    /// half second until Redis answers or the pool's Redis timeout has passed.
    fn fence_after_drop(&self) {
        let deadline = Instant::now() + self.redis_timeout;
        loop {
            let n = self.fence_waiting();
            if n == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "cluster: {n} cancelled jobs' fences not set: Redis did not answer within \
                     {:?} of the pool's drop, so hosts may still run that work",
                    self.redis_timeout
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl CancelJobs for Inner {
    fn cancel_job(&self, job: &Arc<Job>) -> usize {
        job.mark_cancelled();
        let taken = {
            let mut jobs = self.lock_jobs();
            let id = jobs.by_ptr.get(&(Arc::as_ptr(job) as usize)).cloned();
            id.and_then(|id| {
                let running = jobs.by_id.get_mut(&id)?;
                Some(Fence {
                    job: id,
                    chunks: running.chunks.drain().map(|(c, _)| c).collect(),
                    entries: running.entries.drain().map(|(_, e)| e).collect(),
                })
            })
        };
        let id = taken.as_ref().map(|f| f.job.clone());
        if let Some(f) = taken {
            self.fence_cancelled(f);
        }
        let cancelled = job.complete_run(0, job.len(), Slot::Cancelled);
        if cancelled > 0 {
            self.callbacks.run_hooks(job);
        }
        if let Some(id) = id {
            self.lock_jobs().forget_if_done(&id);
        }
        self.changed.notify_all();
        cancelled
    }
}

/// The one result of a call, as its MessagePack bytes.
fn result_bytes(job: &Job) -> Result<Vec<u8>> {
    job.wait_finished(None);
    job.peek(0).into_bytes(&job.task, &job.module)
}

/// Redis's time, the hosts' leases, and their slots.
type HostsReply = ((u64, u64), Vec<(String, f64)>, HashMap<String, usize>);

/// The pid in a host id (`HOSTNAME:PID:TAG`), or 0.
fn host_pid(host: &str) -> u32 {
    host.split(':')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

impl ImapSink for ClusterPool {
    fn slots(&self) -> usize {
        self.slots_or_default()
    }

    fn scheduler(&self) -> std::sync::Weak<dyn CancelJobs> {
        self.canceller()
    }

    fn submit_part(&self, job: &Arc<Job>, first: usize, part: Packed) -> Result<()> {
        self.inner.submit(job, vec![(first, part)], false)
    }
}

impl ClusterPool {
    /// A handle whose submissions are run again up to `n` times when their host (or
    /// worker) dies, rather than failing with [`Error::WorkerLost`]. It shares the pool.
    pub fn with_retries(&self, n: u32) -> ClusterPool {
        let mut pool = self.clone();
        pool.opts.retries = n;
        pool
    }

    /// A handle whose submissions keep their tasks' stdout and stderr with their results,
    /// as [`Pool::with_captured_output`](crate::Pool::with_captured_output): the host keeps
    /// what each item writes (at most the output limit, as locally) and sends it back with
    /// the chunk's results, read with [`AsyncResult::captured_output`]. It shares the pool.
    pub fn with_captured_output(&self) -> ClusterPool {
        let mut pool = self.clone();
        pool.opts.capture_output = true;
        pool
    }

    /// What cancels this pool's results.
    fn canceller(&self) -> std::sync::Weak<dyn CancelJobs> {
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// What cancels this pool's work no host has claimed (an executor's `cancel`, and its
    /// `shutdown` with `cancel_futures`).
    pub(crate) fn queued_canceller(&self) -> std::sync::Weak<dyn CancelQueued> {
        let weak: std::sync::Weak<Inner> = Arc::downgrade(&self.inner);
        weak
    }

    /// A handle whose submissions run under `limits`. It shares the pool.
    pub fn with_limits(&self, limits: Limits) -> ClusterPool {
        let mut pool = self.clone();
        pool.opts.limits = limits;
        pool
    }

    /// The ids of the hosts whose lease is current (`HOSTNAME:PID:TAG`), whichever tenants
    /// they serve (the default chunk size is reckoned from all of their slots too).
    pub fn hosts(&self) -> Result<Vec<String>> {
        Ok(self.live_hosts()?.into_iter().map(|(h, _)| h).collect())
    }

    /// The live hosts and their slots.
    fn live_hosts(&self) -> Result<Vec<(String, usize)>> {
        let keys = &self.inner.keys;
        let ((secs, micros), leases, slots): HostsReply =
            self.inner.with_con("listing hosts", |c| {
                redis::pipe()
                    .cmd("TIME")
                    .cmd("ZRANGE")
                    .arg(keys.hosts())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .cmd("HGETALL")
                    .arg(keys.slots())
                    .query(c)
            })?;
        let now = (secs * 1000 + micros / 1000) as f64;
        Ok(leases
            .into_iter()
            .filter(|(_, lease)| *lease >= now)
            .map(|(h, _)| {
                let n = slots.get(&h).copied().unwrap_or(1);
                (h, n)
            })
            .collect())
    }

    /// The slots of the live hosts together (what the default chunk size spreads over), or
    /// the builder's `processes`, or 1 when none can be counted.
    ///
    /// While Redis is known to be down, and when it does not answer, the count is the last
    /// one made: a `map` submitted then queues at once, with the chunk size it had before.
    fn slots_or_default(&self) -> usize {
        if let Some(n) = self.inner.slots_hint {
            return n.max(1);
        }
        let seen = &self.inner.slots_seen;
        if self.inner.redis_down.load(Ordering::Relaxed) {
            return seen.load(Ordering::Relaxed).max(1);
        }
        match self.live_hosts() {
            Ok(hosts) => {
                let n = hosts.iter().map(|(_, n)| n).sum::<usize>();
                seen.store(n, Ordering::Relaxed);
                n.max(1)
            }
            Err(_) => seen.load(Ordering::Relaxed).max(1),
        }
    }

    /// What the cluster's Redis has counted (see [`ClusterStats`]).
    pub fn stats(&self) -> Result<ClusterStats> {
        let m: HashMap<String, u64> = self.inner.with_con("reading the stats", |c| {
            redis::cmd("HGETALL").arg(self.inner.keys.stats()).query(c)
        })?;
        let get = |k: &str| m.get(k).copied().unwrap_or(0);
        Ok(ClusterStats {
            committed: get("committed"),
            dropped: get("dropped"),
            redelivered: get("redelivered"),
            lost: get("lost"),
        })
    }

    /// A job of `items` items of `task`, run as this handle says.
    fn job(&self, task: &str, items: usize) -> Result<Arc<Job>> {
        self.inner.module.check_task(task)?;
        self.opts.limits.check().map_err(Error::State)?;
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::State(
                "the pool is closed: no new work is accepted".into(),
            ));
        }
        Ok(Job::new(
            Arc::from(task),
            self.inner.module.clone(),
            self.opts,
            items,
            self.inner.callbacks.thread(),
        ))
    }

    /// Runs `task(*args)` on a host and waits for its result (Python's `apply`).
    pub fn apply<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<R> {
        self.apply_async(task, args)?.get()
    }

    /// Queues `task(*args)` and returns at once (Python's `apply_async`).
    pub fn apply_async<A: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<AsyncResult<R>> {
        let job = self.submit_call(task, args, None)?;
        Ok(AsyncResult::new(job, finish_one::<R>, self.canceller()))
    }

    /// As [`apply_async`](ClusterPool::apply_async), with a `callback` and an
    /// `error_callback`, run on this pool's callback thread as
    /// [`Pool::apply_async_with`](crate::Pool::apply_async_with) runs them.
    pub fn apply_async_with<A, R, C, E>(
        &self,
        task: &str,
        args: &A,
        callback: C,
        error_callback: E,
    ) -> Result<AsyncResult<R>>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned + 'static,
        C: FnOnce(R) + Send + 'static,
        E: FnOnce(Error) + Send + 'static,
    {
        let run: Completion = Box::new(move |job: &Job| match finish_one::<R>(job) {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        let job = self.submit_call(task, args, Some(Hook { run, gating: true }))?;
        Ok(AsyncResult::new(job, finish_one::<R>, self.canceller()))
    }

    /// As [`apply_async`](ClusterPool::apply_async), with the arguments already encoded
    /// (an argument array, as [`encode_args`](crate::encode_args) makes it), and a result
    /// that is the task's MessagePack bytes, undecoded (what `wasmpool run --cluster`
    /// prints with [`write_json`](crate::write_json)).
    pub fn apply_encoded(&self, task: &str, args: Vec<u8>) -> Result<AsyncResult<Vec<u8>>> {
        let job = self.job(task, 1)?;
        self.inner
            .submit(&job, vec![(0, Packed::one(&args))], true)?;
        Ok(AsyncResult::new(job, result_bytes, self.canceller()))
    }

    /// The tenant this pool submits as (`None`: untenanted).
    pub fn tenant(&self) -> Option<&str> {
        self.inner.tenant.as_deref()
    }

    pub(crate) fn submit_call<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
        hook: Option<Hook>,
    ) -> Result<Arc<Job>> {
        let job = self.job(task, 1)?;
        let args = encode_args(args)?;
        if let Some(hook) = hook {
            let _ = job.add_hook(hook);
        }
        self.inner
            .submit(&job, vec![(0, Packed::one(&args))], true)?;
        Ok(job)
    }

    /// Applies `task` to every item and returns the results in order, or the first error
    /// (Python's `map`); the items travel in chunks, one stream entry each.
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        self.map_async(task, items, None)?.get()
    }

    /// [`map`](ClusterPool::map) with an explicit chunk size.
    pub fn map_chunked<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>> {
        self.map_async(task, items, Some(chunksize))?.get()
    }

    /// Queues a `map` and returns at once (Python's `map_async`). The default chunk size
    /// spreads the items over four chunks per slot of the live hosts.
    pub fn map_async<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let packed = pack(items, |buf, a| encode_arg_into(buf, &a))?;
        let job = self.submit_packed(task, packed, chunksize)?;
        Ok(AsyncResult::new(job, finish_all::<R>, self.canceller()))
    }

    /// Like [`map`](ClusterPool::map), but each item is a tuple of arguments (Python's
    /// `starmap`).
    pub fn starmap<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        self.starmap_async(task, items, None)?.get()
    }

    /// Queues a `starmap` and returns at once (Python's `starmap_async`).
    pub fn starmap_async<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let packed = pack(items, |buf, a| encode_args_into(buf, &a))?;
        let job = self.submit_packed(task, packed, chunksize)?;
        Ok(AsyncResult::new(job, finish_all::<R>, self.canceller()))
    }

    pub(crate) fn submit_packed(
        &self,
        task: &str,
        items: Packed,
        chunksize: Option<usize>,
    ) -> Result<Arc<Job>> {
        if let Some(c) = chunksize {
            check_chunksize(c)?;
        }
        let job = self.job(task, items.len())?;
        if items.is_empty() {
            return Ok(job);
        }
        let chunksize =
            chunksize.unwrap_or_else(|| default_chunksize(items.len(), self.slots_or_default()));
        let parts = if items.len() <= chunksize {
            vec![items]
        } else {
            items.split(chunksize)
        };
        let mut first = 0;
        let parts = parts
            .into_iter()
            .map(|p| {
                let at = first;
                first += p.len();
                (at, p)
            })
            .collect();
        self.inner.submit(&job, parts, false)?;
        Ok(job)
    }

    /// A lazy, ordered `map` (Python's `imap`, chunk size 1), with memory bounded as
    /// [`Pool::imap`](crate::Pool::imap)'s.
    pub fn imap<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
    ) -> Result<Imap<'a, R>> {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](ClusterPool::imap) with an explicit chunk size.
    pub fn imap_chunked<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
        chunksize: usize,
    ) -> Result<Imap<'a, R>> {
        let input = items.into_iter().map(|a| encode_args(&(a,)));
        self.imap_encoded(task, input, chunksize, true)
    }

    /// As [`imap_chunked`](ClusterPool::imap_chunked), with results as they finish
    /// (Python's `imap_unordered`).
    pub fn imap_unordered<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
        chunksize: usize,
    ) -> Result<Imap<'a, R>> {
        let input = items.into_iter().map(|a| encode_args(&(a,)));
        self.imap_encoded(task, input, chunksize, false)
    }

    /// As [`imap_unordered`](ClusterPool::imap_unordered), or (`ordered`) as
    /// [`imap_chunked`](ClusterPool::imap_chunked), over already-encoded argument arrays
    /// (what `wasmpool map --cluster` uses), as [`Pool::imap_encoded`](crate::Pool::imap_encoded).
    pub fn imap_encoded<'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl Iterator<Item = Result<Vec<u8>>> + 'a,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Imap<'a, R>> {
        check_chunksize(chunksize)?;
        let job = self.job(task, 0)?;
        Ok(Imap::new(self, job, Box::new(items), chunksize, ordered))
    }

    /// The cluster's Redis URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Stops accepting work; what was submitted still runs (Python's `close`).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
    }

    /// Stops accepting work and fails what is pending here at once (Python's `terminate`).
    /// Nothing of it runs from then on: chunks not yet sent are never sent, those waiting
    /// in Redis are deleted, and those a host runs are fenced as a cancel fences them (the
    /// host stops them within about 50 ms, and a result that comes anyway is refused). An
    /// item a host already finished and committed keeps its effects, as a Python task that
    /// ended before `terminate` does.
    pub fn terminate(&self) {
        self.close();
        let fences: Vec<Fence> = {
            let mut jobs = self.inner.lock_jobs();
            jobs.by_id
                .iter_mut()
                .map(|(id, running)| {
                    // The sender skips a cancelled job's chunks, and fences those it sent
                    // meanwhile (`sent`).
                    running.job.mark_cancelled();
                    Fence {
                        job: id.clone(),
                        chunks: running.chunks.keys().copied().collect(),
                        entries: running.entries.drain().map(|(_, e)| e).collect(),
                    }
                })
                .collect()
        };
        self.inner.fail_all("the pool was terminated");
        for f in fences {
            self.inner.fence_cancelled(f);
        }
    }

    /// Waits until every result submitted has come back and its callbacks have run; needs
    /// [`close`](ClusterPool::close) or [`terminate`](ClusterPool::terminate) first.
    pub fn join(&self) -> Result<()> {
        if !self.inner.closed.load(Ordering::Relaxed) {
            return Err(Error::State(
                "join() needs close() or terminate() first".into(),
            ));
        }
        let mut jobs = self.inner.lock_jobs();
        while !jobs.by_id.is_empty() {
            jobs = self
                .inner
                .changed
                .wait_timeout(jobs, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(jobs);
        self.inner.callbacks.wait_all_run();
        Ok(())
    }
}
