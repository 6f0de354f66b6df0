//! `Pool`: Python's `multiprocessing.Pool`, over worker processes running wasm tasks.

pub(crate) mod callbacks;
pub(crate) mod chunk;
mod executor;
pub(crate) mod imap;
mod items;
pub(crate) mod job;
mod pipeline;
mod queue_policy;
mod scheduler;
pub(crate) mod submit;
mod tenant;
mod wait;
mod workers;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::executor::{AsCompleted, Executor, MapStream, TaskFuture, as_completed};
pub use self::imap::{Imap, ImapCanceller};
pub use self::job::AsyncResult;
use self::job::{Hook, Job, Slot, TaskOptions, finish_all, finish_one, finish_one_bytes};
use self::scheduler::{PoolConfig, Scheduler};
pub use self::tenant::Tenant;
pub use self::wait::{ReturnWhen, Waitable, wait_futures, wait_objects};
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::grants::Grants;
use crate::module::Module;
use crate::output::Output;
use crate::process::cpu_count;
use crate::protocol::Limits;
use crate::values::{decode_result, encode_arg_into, encode_args, encode_args_into};

/// A pool of worker processes, as Python's `multiprocessing.Pool`.
///
/// Work is queued first in, first out, and handed to whichever worker is free; results come
/// back in order (`map`, `imap`) or as they finish (`imap_unordered`). A worker that dies
/// mid-task fails that task with [`Error::WorkerLost`] (naming its pid and signal) and is
/// replaced; every other task still completes. Dropping the pool terminates it: no worker
/// process outlives it.
///
/// ```no_run
/// use wasmpool::{Module, Pool};
///
/// let module = Module::load("examples/testkit")?;
/// let pool = Pool::new(&module, 4)?;
/// let squares: Vec<u64> = pool.map("square", 0..1000u64)?;
/// assert_eq!(squares[999], 998_001);
///
/// let r = pool.apply_async::<_, i64>("add", &(2, 3))?;
/// assert_eq!(r.get()?, 5);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    scheduler: Arc<Scheduler>,
    /// Terminates the pool when the last handle to it is dropped.
    _owner: Arc<Owner>,
    /// How this handle's submissions run.
    opts: TaskOptions,
}

/// Shared by a pool's handles; the last one dropped terminates the pool.
#[derive(Debug)]
struct Owner(Arc<Scheduler>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.terminate();
        // The workers are waited for, not the callbacks still queued: they run on, and a
        // callback waiting on whatever the dropping thread holds cannot hang the drop.
        let _ = self.0.join_workers();
    }
}

/// Workers a task may take down in a row, by default, before its work fails instead.
const DEFAULT_RESTART_LIMIT: u32 = 5;

/// Options for a [`Pool`]: `Pool::builder(&module).processes(4).build()`.
#[derive(Debug)]
pub struct PoolBuilder {
    module: Module,
    processes: Option<usize>,
    initializer: Option<(String, Vec<u8>)>,
    maxtasksperchild: Option<u64>,
    output: Output,
    limits: Limits,
    interruptible: Option<bool>,
    retries: u32,
    restart_limit: u32,
    grants: Grants,
    error: Option<Error>,
}

impl PoolBuilder {
    /// The number of worker processes, from 1 to [`Pool::MAX_PROCESSES`] (default:
    /// [`cpu_count`], or [`Pool::MAX_PROCESSES`] on a machine with more CPUs than that).
    /// Any other number makes [`build`](PoolBuilder::build) fail before a worker starts.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// A task run once in each worker, before its first task (Python's `initializer` and
    /// `initargs`). If it fails, the pool is broken: its work fails with the reason.
    pub fn initializer<A: Serialize + ?Sized>(mut self, task: &str, args: &A) -> Self {
        match encode_args(args) {
            Ok(a) => self.initializer = Some((task.to_string(), a)),
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Replace each worker after it has run this many tasks (Python's `maxtasksperchild`).
    /// At least 1: 0 makes [`build`](PoolBuilder::build) fail, as Python refuses it.
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.maxtasksperchild = Some(n);
        self
    }

    /// Limits on each task (memory, time, stack, output, fuel); a task that exceeds one fails with
    /// [`Error::Limit`] and its worker carries on with a fresh instance.
    ///
    /// With a fuel limit ([`Limits::fuel`]) the workers run on the metered engine (slower
    /// wasm code) and report the fuel used ([`AsyncResult::fuel_used`]); only such a pool
    /// accepts fuel limits from [`Pool::with_limits`]. With a time limit
    /// ([`Limits::timeout`]) they run on an interruptible engine (see
    /// [`interruptible`](PoolBuilder::interruptible)).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether the workers' wasm code checks the time as it runs, so a task past its time
    /// limit stops where it is and its worker carries on (default: when the pool's own
    /// [`limits`](PoolBuilder::limits) have a time limit).
    ///
    /// The checks cost speed: CPython in a Python guest runs about a third faster without
    /// them, Rust code less. In a pool without them a time limit still holds, for the
    /// submissions of [`Pool::with_limits`]: the worker's watchdog answers the task with
    /// the same [`Error::Limit`] at its limit, then ends the worker, which the pool
    /// replaces (a new worker, so a slower next task). Turn this on for a pool whose
    /// submissions bring time limits of their own and may often reach them. A cluster pool
    /// ([`cluster`](PoolBuilder::cluster)) ignores it: hosts run chunks on the plain engine
    /// (metered for a fuel limit), so a chunk at its time limit costs its worker there.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// use std::time::Duration;
    /// let pool = wasmpool::Pool::builder(&module).interruptible(true).build()?;
    /// let quick = pool.with_limits(wasmpool::Limits::default().timeout(Duration::from_secs(1)));
    /// let r: Result<u64, _> = quick.apply("spin", &());
    /// assert!(matches!(r, Err(wasmpool::Error::Limit { .. })));
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn interruptible(mut self, on: bool) -> Self {
        self.interruptible = Some(on);
        self
    }

    /// Run a task again, up to `n` times, when the worker running it dies (killed, crashed,
    /// out of memory) rather than failing it with [`Error::WorkerLost`] (default 0). A chunk
    /// of several items is retried one item at a time, so only the guilty item can fail.
    /// Overridable per submission with [`Pool::with_retries`].
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// How many workers in a row a task may take down (workers that died running it, with
    /// no call of it finishing in between) before the pool stops running it: that call fails
    /// with [`Error::WorkerLost`] and is not retried, and the task's queued work fails with
    /// [`Error::RestartLimit`]. This keeps a task that kills every worker from making the
    /// pool start worker after worker. Default 5; at least 1: 0 makes
    /// [`build`](PoolBuilder::build) fail.
    pub fn restart_limit(mut self, n: u32) -> Self {
        self.restart_limit = n;
        self
    }

    /// Directories and environment variables the tasks may use (default: none). A grant of
    /// a directory that does not exist makes [`build`](PoolBuilder::build) fail.
    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    /// Where the tasks' stdout and stderr go (default: this program's, untagged).
    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// Runs this pool's work on a cluster of hosts through the Redis at `url`
    /// (`redis://HOST:PORT`) instead of on local workers: see [`crate::cluster`]. The
    /// module, limits, retries, initializer, `maxtasksperchild` and output set so far carry
    /// over: each host runs the chunks in local workers set up the same way (the
    /// initializer once in each of its worker processes, before its first task; a failing
    /// one fails the work as it does locally). The output goes to the host's stdout and
    /// stderr ([`Output::Inherit`], [`Output::Tagged`]) or nowhere ([`Output::Discard`]);
    /// [`ClusterPool::with_captured_output`](crate::cluster::ClusterPool::with_captured_output)
    /// brings it back with each result. [`Output::Capture`] and [`Output::Callback`] make
    /// [`ClusterBuilder::build`](crate::cluster::ClusterBuilder::build) fail, as a cluster
    /// does not carry them. Grants travel with the chunks: environment variables as they
    /// are, directories by their path on the hosts, which each host opens only if its
    /// operator allowed exactly that directory
    /// ([`HostBuilder::allow_dir`](crate::cluster::HostBuilder::allow_dir)); a host that
    /// does not fails the chunk, saying so.
    pub fn cluster(self, url: &str) -> crate::cluster::ClusterBuilder {
        let output = crate::cluster::HostOutput::of(&self.output);
        let unsupported = match self.grants.check_for_cluster() {
            Err(e) => Some(e),
            Ok(()) => output.err().map(|e| Error::State(e.to_string())),
        };
        let error = self.error.or(unsupported);
        let setup = crate::cluster::WorkerSetup {
            initializer: self.initializer,
            maxtasksperchild: self.maxtasksperchild,
            output: output.unwrap_or_default(),
            grants: self.grants,
        };
        crate::cluster::ClusterBuilder::new(
            self.module,
            url,
            self.limits,
            self.retries,
            self.processes,
            setup,
            error,
        )
    }

    /// The initializer as a task and its already-encoded argument array (a cluster host
    /// sets up its workers as a chunk's submitting pool did).
    pub(crate) fn initializer_encoded(mut self, task: String, args: Vec<u8>) -> Self {
        self.initializer = Some((task, args));
        self
    }

    /// Starts the workers and returns the pool once they are ready.
    ///
    /// Fails with [`Error::State`], before any worker starts, when an option is out of
    /// range: processes not from 1 to [`Pool::MAX_PROCESSES`], a `maxtasksperchild` or
    /// restart limit of 0, or limits that [`Limits::check`] refuses. A worker that cannot be
    /// started (no process or thread to be had) fails it with the reason.
    pub fn build(self) -> Result<Pool> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let processes = self
            .processes
            .unwrap_or_else(|| cpu_count().min(Pool::MAX_PROCESSES));
        check_processes(processes)?;
        if self.maxtasksperchild == Some(0) {
            return Err(Error::State(
                "maxtasksperchild must be at least 1 (or unset, for workers that live as \
                 long as the pool)"
                    .into(),
            ));
        }
        if self.restart_limit == 0 {
            return Err(Error::State(
                "the restart limit must be at least 1: a task that takes down a worker \
                 must be allowed to take down one"
                    .into(),
            ));
        }
        self.limits.check().map_err(Error::State)?;
        if let Some((task, _)) = &self.initializer {
            self.module.tasks()?;
            self.module.check_task(task)?;
        }
        let mut engine = EngineKind::for_limits(&self.limits);
        if let Some(on) = self.interruptible {
            engine.interruptible = on;
        }
        // Compiled here if the module was not compiled for `engine` at load, so the workers
        // starting together need not wait on it and a failure is the build's error.
        self.module.artifact_for(engine)?;
        let scheduler = Scheduler::new(
            self.module,
            PoolConfig {
                processes,
                initializer: self.initializer,
                maxtasksperchild: self.maxtasksperchild,
                output: self.output,
                limits: self.limits,
                engine,
                restart_limit: self.restart_limit,
                grants: self.grants.resolved()?,
            },
        );
        let pool = Pool {
            _owner: Arc::new(Owner(scheduler.clone())),
            scheduler,
            opts: TaskOptions {
                retries: self.retries,
                limits: self.limits,
                tenant: Tenant::DEFAULT,
                capture_output: false,
            },
        };
        pool.scheduler.start_workers()?;
        Ok(pool)
    }
}

/// Whether a pool may have `n` worker processes: from 1 to [`Pool::MAX_PROCESSES`].
pub(crate) fn check_processes(n: usize) -> Result<()> {
    if n == 0 {
        // Python's words for `Pool(processes=0)`.
        return Err(Error::State(
            "Number of processes must be at least 1".into(),
        ));
    }
    if n > Pool::MAX_PROCESSES {
        return Err(Error::State(format!(
            "a pool of {n} processes is more than the limit of {} (Pool::MAX_PROCESSES): \
             each worker is an OS process with its own memory; ask for at most {}",
            Pool::MAX_PROCESSES,
            Pool::MAX_PROCESSES
        )));
    }
    Ok(())
}

/// Whether `n` items may go to a worker at a time: from 1 to [`Pool::MAX_CHUNKSIZE`].
pub(crate) fn check_chunksize(n: usize) -> Result<()> {
    if n == 0 {
        // Python's words for `imap(..., chunksize=0)`.
        return Err(Error::State("Chunksize must be 1+, not 0".into()));
    }
    if n > Pool::MAX_CHUNKSIZE {
        return Err(Error::State(format!(
            "a chunk size of {n} items is more than the limit of {} (Pool::MAX_CHUNKSIZE); \
             ask for at most {}",
            Pool::MAX_CHUNKSIZE,
            Pool::MAX_CHUNKSIZE
        )));
    }
    Ok(())
}

impl Pool {
    /// The most worker processes a pool may have (1024). Each is an OS process with its own
    /// memory (a few MiB before its task allocates anything, and up to its memory limit
    /// after) and a supervising thread in this one, so an unbounded count lets one bad
    /// argument exhaust the host's memory, processes or threads; a pool asked for more
    /// fails to build, before any worker starts.
    pub const MAX_PROCESSES: usize = 1024;

    /// The most items a chunk may hold (2^20): the `chunksize` of every `map` and `imap`
    /// is from 1 to this; outside it the call fails before anything is queued.
    pub const MAX_CHUNKSIZE: usize = 1 << 20;

    /// A pool of `processes` workers running tasks from `module`.
    pub fn new(module: &Module, processes: usize) -> Result<Pool> {
        Self::builder(module).processes(processes).build()
    }

    /// Options: processes, initializer, maxtasksperchild, output.
    pub fn builder(module: &Module) -> PoolBuilder {
        PoolBuilder {
            module: module.clone(),
            processes: None,
            initializer: None,
            maxtasksperchild: None,
            output: Output::Inherit,
            limits: Limits::default(),
            interruptible: None,
            retries: 0,
            restart_limit: DEFAULT_RESTART_LIMIT,
            grants: Grants::default(),
            error: None,
        }
    }

    /// The number of worker processes.
    pub fn processes(&self) -> usize {
        self.scheduler.config.processes
    }

    /// The pids of the current worker processes.
    pub fn pids(&self) -> Vec<u32> {
        self.scheduler.pids()
    }

    /// Waits until the pool has its full complement of workers again (replacements of dead
    /// or retired workers start in the background).
    pub fn wait_for_workers(&self) {
        self.scheduler
            .wait_for_workers(self.scheduler.config.processes);
    }

    /// A handle to this pool whose submissions are retried up to `n` times when their worker
    /// dies (see [`PoolBuilder::retries`]). It shares the workers; the pool stops when its
    /// last handle is dropped.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 4)?;
    /// let squares: Vec<u64> = pool.with_retries(2).map("square", 0..100u64)?;
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn with_retries(&self, n: u32) -> Pool {
        let mut pool = self.clone();
        pool.opts.retries = n;
        pool
    }

    /// A handle to this pool whose submissions run under `limits` instead of the pool's.
    /// It shares the workers; the pool stops when its last handle is dropped.
    ///
    /// A fuel limit needs a pool built with one (its workers meter fuel): in any other pool,
    /// submissions with a fuel limit fail with [`Error::State`] rather than run unmetered.
    /// A time limit holds in any pool; in one built without a time limit (and not
    /// [`interruptible`](PoolBuilder::interruptible)) a task that reaches it also ends its
    /// worker, which the pool replaces.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// use std::time::Duration;
    /// let pool = wasmpool::Pool::new(&module, 4)?;
    /// let quick = pool.with_limits(wasmpool::Limits::default().timeout(Duration::from_secs(1)));
    /// let r: Result<u64, _> = quick.apply("square", &(7u64,));
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn with_limits(&self, limits: Limits) -> Pool {
        let mut pool = self.clone();
        pool.opts.limits = limits;
        pool
    }

    /// A handle to this pool whose submissions keep their tasks' stdout and stderr with
    /// their results, read back with [`AsyncResult::captured_output`] (at most the output
    /// limit each), besides sending it where the pool's [`output`](PoolBuilder::output)
    /// goes. What a service returns with each task's result. It shares the workers; the
    /// pool stops when its last handle is dropped.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::builder(&module).output(wasmpool::Output::Discard).build()?;
    /// let r = pool.with_captured_output().apply_async::<_, u32>("tick", &(3u32, 0u64))?;
    /// r.wait();
    /// let printed = String::from_utf8_lossy(&r.captured_output().stdout).into_owned();
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn with_captured_output(&self) -> Pool {
        let mut pool = self.clone();
        pool.opts.capture_output = true;
        pool
    }

    /// A handle to this pool whose submissions are `tenant`'s work: queued apart from
    /// other tenants' and given the share of the workers its weight is owed (see
    /// [`Tenant`]). It shares the workers; the pool stops when its last handle is dropped.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// use wasmpool::{Pool, Tenant};
    /// let pool = Pool::new(&module, 2)?;
    /// let flood = pool.with_tenant(Tenant::new(1, 1)?);
    /// let light = pool.with_tenant(Tenant::new(2, 1)?);
    /// let many = flood.map_async::<_, u64>("square", 0..100_000u64, None)?;
    /// // Runs after about one round of the flood's work, not after all of it.
    /// let one: u64 = light.apply("square", &(3u64,))?;
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn with_tenant(&self, tenant: Tenant) -> Pool {
        let mut pool = self.clone();
        pool.opts.tenant = tenant;
        pool
    }

    /// Runs `task(*args)` in a worker and waits for its result (Python's `apply`).
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

    /// As [`apply_async`](Pool::apply_async), but the result is the task's MessagePack,
    /// undecoded (as [`Process::result_bytes`](crate::Process::result_bytes)): for a front
    /// end that converts it itself, as `wasmpool serve` does with
    /// [`write_json`](crate::write_json), which keeps a map's entries in the order the task
    /// wrote them.
    ///
    /// ```no_run
    /// # let module = wasmpool::Module::load("examples/testkit")?;
    /// let pool = wasmpool::Pool::new(&module, 1)?;
    /// let bytes = pool.apply_async_bytes("scale", &(serde_json::json!({"x": 1, "y": 2}), 3.0))?.get()?;
    /// let mut json = Vec::new();
    /// wasmpool::write_json("scale", &bytes, &mut json)?;
    /// assert_eq!(json, br#"{"x":3.0,"y":6.0}"#);
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn apply_async_bytes<A: Serialize + ?Sized>(
        &self,
        task: &str,
        args: &A,
    ) -> Result<AsyncResult<Vec<u8>>> {
        let job = self.submit_call(task, args, None)?;
        Ok(AsyncResult::new(job, finish_one_bytes, self.canceller()))
    }

    /// As [`apply_async`](Pool::apply_async), with Python's `callback` (given the result) and
    /// `error_callback` (given the error). They run in this program, on the pool's callback
    /// thread, one at a time, in the order results arrive; never in a worker, never on the
    /// caller's thread. The result is ready (`get` returns, `ready` is true) only once the
    /// callback has run, as in Python; a callback that panics is reported and the result
    /// is ready all the same.
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
        let run: job::Completion = Box::new(move |job: &Job| match finish_one::<R>(job) {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        let job = self.submit_call(task, args, Some(Hook { run, gating: true }))?;
        Ok(AsyncResult::new(job, finish_one::<R>, self.canceller()))
    }

    /// Gives a `map` job its callbacks: `callback` with every result once all are in, or
    /// `error_callback` with the first error (in completion order) once every chunk has
    /// finished, as Python's `map_async` does.
    fn with_map_callbacks<R, C, E>(
        &self,
        result: AsyncResult<Vec<R>>,
        callback: C,
        error_callback: E,
    ) -> AsyncResult<Vec<R>>
    where
        R: DeserializeOwned + 'static,
        C: FnOnce(Vec<R>) + Send + 'static,
        E: FnOnce(Error) + Send + 'static,
    {
        let run: job::Completion = Box::new(move |job: &Job| match finish_all::<R>(job) {
            Ok(v) => callback(v),
            Err(e) => error_callback(e),
        });
        // Added once every chunk is queued, so the job's length is final; if it is all
        // done already, it runs now (on the callback thread).
        if let Some(hook) = result.job().add_hook(Hook { run, gating: true }) {
            self.scheduler.callbacks.run_hook(result.job(), hook);
        }
        result
    }

    /// Applies `task` to every item (each item is the task's one argument) and returns the
    /// results in order, or the first error (Python's `map`), at Python's default chunk size.
    pub fn map<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>> {
        self.map_async(task, items, None)?.get()
    }

    /// [`map`](Pool::map) with an explicit chunk size: items sent to a worker at a time,
    /// from 1 to [`Pool::MAX_CHUNKSIZE`].
    pub fn map_chunked<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>> {
        self.map_async(task, items, Some(chunksize))?.get()
    }

    /// Queues a `map` and returns at once (Python's `map_async`).
    pub fn map_async<A: Serialize, R: DeserializeOwned>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let job =
            self.submit_streamed(task, items, chunksize, |buf, a| encode_arg_into(buf, &a))?;
        Ok(AsyncResult::new(job, finish_all::<R>, self.canceller()))
    }

    /// As [`map_async`](Pool::map_async), with Python's `callback` (given every result, in
    /// order, once all are in) and `error_callback` (given the first error, in completion
    /// order, once every chunk has finished); each runs once, on the pool's callback
    /// thread, and the result is ready only after it has run (see
    /// [`apply_async_with`](Pool::apply_async_with)). A `map` of no items calls `callback`
    /// with an empty list.
    pub fn map_async_with<A, R, C, E>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callback: C,
        error_callback: E,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: Serialize,
        R: DeserializeOwned + 'static,
        C: FnOnce(Vec<R>) + Send + 'static,
        E: FnOnce(Error) + Send + 'static,
    {
        let result = self.map_async(task, items, chunksize)?;
        Ok(self.with_map_callbacks(result, callback, error_callback))
    }

    /// Like [`map`](Pool::map), but each item is a tuple of arguments (Python's `starmap`).
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
        let job =
            self.submit_streamed(task, items, chunksize, |buf, a| encode_args_into(buf, &a))?;
        Ok(AsyncResult::new(job, finish_all::<R>, self.canceller()))
    }

    /// As [`starmap_async`](Pool::starmap_async), with callbacks as
    /// [`map_async_with`](Pool::map_async_with).
    pub fn starmap_async_with<A, R, C, E>(
        &self,
        task: &str,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
        callback: C,
        error_callback: E,
    ) -> Result<AsyncResult<Vec<R>>>
    where
        A: Serialize,
        R: DeserializeOwned + 'static,
        C: FnOnce(Vec<R>) + Send + 'static,
        E: FnOnce(Error) + Send + 'static,
    {
        let result = self.starmap_async(task, items, chunksize)?;
        Ok(self.with_map_callbacks(result, callback, error_callback))
    }

    /// Queues already-encoded argument arrays (see [`encode_args`](crate::encode_args)).
    pub fn map_encoded<R: DeserializeOwned>(
        &self,
        task: &str,
        items: Vec<Vec<u8>>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>> {
        let job = self.submit_packed(task, items.into_iter().collect(), chunksize)?;
        Ok(AsyncResult::new(job, finish_all::<R>, self.canceller()))
    }

    /// A lazy, ordered `map` (Python's `imap`, chunk size 1): one `Result` per item, so a
    /// failure loses no other result. Items are drawn from `items` only as results are
    /// consumed, so an endless iterator or a slow consumer keeps memory bounded.
    pub fn imap<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
    ) -> Result<Imap<'a, R>> {
        self.imap_chunked(task, items, 1)
    }

    /// [`imap`](Pool::imap) with an explicit chunk size, from 1 to [`Pool::MAX_CHUNKSIZE`].
    pub fn imap_chunked<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
        chunksize: usize,
    ) -> Result<Imap<'a, R>> {
        check_chunksize(chunksize)?;
        let job = self.job(task, 0)?;
        let input = items.into_iter().map(|a| encode_args(&(a,)));
        Ok(Imap::new(self, job, Box::new(input), chunksize, true))
    }

    /// As [`imap`](Pool::imap), but results come as they finish (Python's
    /// `imap_unordered`), each with the index of its item.
    pub fn imap_unordered<'a, A: Serialize + 'a, R: DeserializeOwned>(
        &'a self,
        task: &str,
        items: impl IntoIterator<Item = A> + 'a,
        chunksize: usize,
    ) -> Result<Imap<'a, R>> {
        check_chunksize(chunksize)?;
        let job = self.job(task, 0)?;
        let input = items.into_iter().map(|a| encode_args(&(a,)));
        Ok(Imap::new(self, job, Box::new(input), chunksize, false))
    }

    /// As [`imap_chunked`](Pool::imap_chunked) / [`imap_unordered`](Pool::imap_unordered)
    /// over already-encoded argument arrays (what `wasmpool map` uses).
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

    /// Stops accepting work; queued work still runs (Python's `close`).
    pub fn close(&self) {
        self.scheduler.close();
    }

    /// Kills the workers now; queued and running work fails (Python's `terminate`).
    pub fn terminate(&self) {
        self.scheduler.terminate();
    }

    /// Waits for the work, its callbacks and the workers to finish; needs `close` or
    /// `terminate` first. Called from a callback, it waits for the work and the workers
    /// only (the callbacks run one at a time, on the thread that would wait).
    pub fn join(&self) -> Result<()> {
        self.scheduler.join()
    }
}

impl Pool {
    /// Runs already-encoded items of `task` as one chunk (a `Call` when `call`, else a
    /// batch) under `limits` and `retries` (keeping its output when `capture`), and returns
    /// its job: what a cluster host does with a chunk it claimed.
    pub(crate) fn run_chunk(
        &self,
        task: &str,
        items: crate::protocol::packed::Packed,
        call: bool,
        limits: Limits,
        retries: u32,
        capture: bool,
    ) -> Result<Arc<Job>> {
        let mut handle = self.with_limits(limits).with_retries(retries);
        handle.opts.capture_output = capture;
        let job = handle.job(task, items.len())?;
        let send_as = if call && items.len() == 1 {
            chunk::SendAs::Call
        } else {
            chunk::SendAs::Batch
        };
        handle.submit(&job, 0, [items], send_as)?;
        Ok(job)
    }
}

impl Pool {
    /// What cancels this pool's results (without keeping the pool alive).
    fn canceller(&self) -> std::sync::Weak<dyn job::CancelJobs> {
        let weak: std::sync::Weak<Scheduler> = Arc::downgrade(&self.scheduler);
        weak
    }

    /// Cancels `job`, one of this pool's (what a cluster host does with a chunk whose
    /// submitter cancelled it); returns how many items were cancelled.
    pub(crate) fn cancel_job(&self, job: &Arc<Job>) -> usize {
        self.scheduler.cancel_job(job)
    }

    /// Whether the pool can run nothing more (its initializer failed, or no worker can
    /// start): what a cluster host lets go, so the next chunk gets a fresh pool.
    pub(crate) fn is_broken(&self) -> bool {
        self.scheduler.is_broken()
    }

    /// Whether `other` is a handle of this very pool.
    pub(crate) fn same_pool(&self, other: &Pool) -> bool {
        Arc::ptr_eq(&self.scheduler, &other.scheduler)
    }
}

/// Decodes one finished item for iterators.
pub(crate) fn decode_slot<R: DeserializeOwned>(job: &Job, slot: Slot) -> Result<R> {
    let bytes = slot.into_bytes(&job.task, &job.module)?;
    decode_result(&job.task, &bytes)
}
