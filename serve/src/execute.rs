//! Running tasks: one [`wasmpool::Runtime`] for the service, one shared [`Pool`] per module
//! (and per metering: a pool that meters fuel is another engine), the least recently used
//! dropped past a cap. With a cluster (`serve --cluster URL`), one [`ClusterPool`] per
//! module and tenant instead, submitting as that tenant (its own task stream, which hosts
//! joined with `--all-tenants` or `--tenant NAME` serve). Every call here blocks; the
//! dispatcher runs them on blocking threads.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use wasmpool::cluster::ClusterPool;
use wasmpool::lines::RecordWriter;
use wasmpool::{AsyncResult, Imap, ImapCanceller, Limits, Module, Output, Pool, Runtime};

use crate::objects::{Registry, Resolved};
use crate::pool_cache::PoolCache;
use crate::store::{Cpu, RunSpec, TaskError, TaskLimits, UsageRow};
use crate::tenants::Tenant;

/// The handle a tenant's submissions go through: the ONE place that says how a tenant's
/// work enters a shared pool.
/// The pool queues each tenant's work apart and takes it in deficit round robin, charged by
/// the worker time it really took.
fn tenant_pool(pool: &Pool, tenant: &Tenant) -> Pool {
    // The tenants file allows only weights the pool takes (checked when it is read).
    let fair =
        wasmpool::Tenant::new(tenant.id, tenant.entry.weight).unwrap_or(wasmpool::Tenant::DEFAULT);
    pool.with_tenant(fair)
}

/// A stable code for each way a task can fail.
pub fn error_code(e: &wasmpool::Error) -> &'static str {
    use wasmpool::Error as E;
    match e {
        E::Task { .. } => "task_failed",
        E::Trap { .. } => "trap",
        E::Limit { .. } => "limit_exceeded",
        E::UnknownTask { .. } => "unknown_task",
        E::BadArgs(_) => "bad_args",
        E::WorkerLost { .. } => "worker_lost",
        E::RestartLimit { .. } => "restart_limit",
        E::Cancelled { .. } => "cancelled",
        E::Decode { .. } => "decode",
        E::BadModule { .. } => "bad_module",
        _ => "internal",
    }
}

fn task_error(e: &wasmpool::Error) -> TaskError {
    TaskError {
        code: error_code(e).to_string(),
        message: e.to_string(),
    }
}

/// The library's limits for a task's resolved ones.
pub fn limits_of(l: &TaskLimits) -> Limits {
    let mut limits = Limits::default()
        .memory_mib(l.memory_mib)
        .output_bytes(l.output_mib.saturating_mul(1 << 20));
    if let Ok(t) = Duration::try_from_secs_f64(l.timeout_s)
        && !t.is_zero()
    {
        limits = limits.timeout(t.min(Limits::MAX_TIMEOUT));
    }
    if let Some(fuel) = l.fuel {
        limits = limits.fuel(fuel);
    }
    limits
}

/// A running task's cancellation: asked for by the API, honoured by the runner.
#[derive(Default)]
pub struct CancelSlot {
    requested: std::sync::atomic::AtomicBool,
    running: Mutex<Option<Arc<AsyncResult<Vec<u8>>>>>,
    /// A chunk of map items running.
    items: Mutex<Option<ImapCanceller>>,
}

impl std::fmt::Debug for CancelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelSlot")
            .field("requested", &self.is_requested())
            .finish()
    }
}

impl CancelSlot {
    /// Asks for the task to stop.
    pub fn request(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            // Queued in the pool: dropped; running: its worker is killed (and replaced).
            r.cancel();
        }
        if let Some(items) = self
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            // The chunk's items not finished fail as cancelled.
            items.cancel();
        }
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How one item ended, and what it used.
#[derive(Debug)]
pub struct ItemOutcome {
    /// The index of the item within its chunk.
    pub index: usize,
    /// The result as JSON text (a map's entries in the order the task wrote them), or the
    /// error. A map item's is `null`: its record is in `line`.
    pub outcome: Result<String, TaskError>,
    /// A map item's record line.
    pub line: Option<String>,
    /// A task's stdout and stderr (UTF-8, invalid bytes replaced).
    pub output: Option<(String, String)>,
    /// What it used.
    pub usage: UsageRow,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    module: String,
    metered: bool,
}

/// The modules and pools of the service.
#[derive(Debug)]
pub struct Executor {
    runtime: Runtime,
    modules_dir: PathBuf,
    workers: usize,
    max_pools: usize,
    /// The Redis of the cluster the tasks run on (`None`: local pools).
    cluster: Option<String>,
    state: Mutex<ExecState>,
    objects: Registry,
}

/// How long a tenant's weight written to the cluster is trusted to be there: its next task
/// after that writes it again (a Redis restarted without persistence forgets it).
const WEIGHT_REFRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct ExecState {
    modules: HashMap<String, Module>,
    pools: PoolCache<PoolKey, Pool>,
    /// On a cluster: by module and tenant.
    cluster_pools: PoolCache<(String, String), ClusterPool>,
    /// On a cluster: the weight last written for each tenant, and when.
    cluster_weights: HashMap<String, (u32, Instant)>,
}

/// The handle a task is submitted through, held until it is done.
enum Handle {
    Local(Pool),
    Cluster(ClusterPool),
}

impl Handle {
    fn imap_encoded<'a>(
        &'a self,
        task: &str,
        items: impl Iterator<Item = wasmpool::Result<Vec<u8>>> + 'a,
        chunksize: usize,
    ) -> wasmpool::Result<Imap<'a, ()>> {
        match self {
            Handle::Local(p) => p.imap_encoded(task, items, chunksize, false),
            Handle::Cluster(c) => c.imap_encoded(task, items, chunksize, false),
        }
    }
}

impl Executor {
    /// An executor whose modules are `<modules_dir>/<sha256>.wasm`, with pools of `workers`
    /// processes, at most `max_pools` of them alive.
    pub fn new(
        runtime: Runtime,
        modules_dir: PathBuf,
        workers: usize,
        max_pools: usize,
    ) -> Executor {
        Executor {
            objects: Registry::new(runtime.manager()),
            runtime,
            modules_dir,
            workers,
            max_pools: max_pools.max(1),
            cluster: None,
            state: Mutex::new(ExecState::default()),
        }
    }

    /// Runs the tasks on the cluster whose Redis is at `url` (`None`: local pools), and
    /// keeps the tenants' shared objects there, where the hosts' tasks reach them.
    pub fn with_cluster(mut self, url: Option<String>) -> Executor {
        if let Some(url) = &url {
            self.objects = Registry::on_cluster(url);
        }
        self.cluster = url;
        self
    }

    /// The cluster pool of module `sha256` for `tenant` (its task stream is the tenant's).
    fn cluster_pool(
        &self,
        url: &str,
        sha256: &str,
        tenant: &Tenant,
    ) -> Result<ClusterPool, wasmpool::Error> {
        self.cluster_weight(url, tenant)?;
        let tenant = tenant.name();
        let key = (sha256.to_string(), tenant.to_string());
        if let Some(pool) = self.lock().cluster_pools.get(&key) {
            return Ok(pool);
        }
        let module = self.module(sha256)?;
        let pool = Pool::builder(&module)
            .processes(self.workers)
            .output(Output::Discard)
            .cluster(url)
            .tenant(tenant)
            .build()?;
        Ok(self.lock().cluster_pools.insert(key, pool, self.max_pools))
    }

    /// Writes `tenant`'s weight to the cluster when it has not been written yet, changed (a
    /// reload of the tenants file) or was written more than [`WEIGHT_REFRESH`] ago (a Redis
    /// restarted without persistence lost it), so the hosts share their claims by it.
    fn cluster_weight(&self, url: &str, tenant: &Tenant) -> Result<(), wasmpool::Error> {
        let weight = tenant.entry.weight;
        if let Some((written, at)) = self.lock().cluster_weights.get(tenant.name())
            && *written == weight
            && at.elapsed() < WEIGHT_REFRESH
        {
            return Ok(());
        }
        wasmpool::cluster::set_tenant_weight(url, tenant.name(), weight)?;
        self.lock()
            .cluster_weights
            .insert(tenant.name().to_string(), (weight, Instant::now()));
        Ok(())
    }

    /// The tenants' shared objects, which tasks' arguments name.
    pub fn objects(&self) -> &Registry {
        &self.objects
    }

    fn lock(&self) -> MutexGuard<'_, ExecState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where module `sha256`'s bytes are kept.
    pub fn module_path(&self, sha256: &str) -> PathBuf {
        self.modules_dir.join(format!("{sha256}.wasm"))
    }

    /// Worker processes per pool.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// How many pools are alive.
    pub fn pools(&self) -> usize {
        self.lock().pools.len()
    }

    /// Validates and compiles `bytes` (a module's upload) and keeps it as module `sha256`.
    pub fn add_module(&self, sha256: &str, bytes: &[u8]) -> Result<Vec<String>, wasmpool::Error> {
        if let Some(m) = self.lock().modules.get(sha256) {
            return m.tasks();
        }
        let path = self.module_path(sha256);
        let module = self.runtime.module_from_bytes(bytes, &path)?;
        let tasks = module.tasks()?;
        if !path.exists() {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| wasmpool::Error::Worker(format!("storing the module: {e}")))?;
        }
        self.lock().modules.insert(sha256.to_string(), module);
        Ok(tasks)
    }

    /// Module `sha256`, loaded from its file if not in memory.
    pub fn module(&self, sha256: &str) -> Result<Module, wasmpool::Error> {
        if let Some(m) = self.lock().modules.get(sha256) {
            return Ok(m.clone());
        }
        let module = self.runtime.load(self.module_path(sha256))?;
        self.lock()
            .modules
            .insert(sha256.to_string(), module.clone());
        Ok(module)
    }

    /// The shared pool of module `sha256` (metering fuel or not).
    fn pool(&self, sha256: &str, metered: bool) -> Result<Pool, wasmpool::Error> {
        let key = PoolKey {
            module: sha256.to_string(),
            metered,
        };
        if let Some(pool) = self.lock().pools.get(&key) {
            return Ok(pool);
        }
        let module = self.module(sha256)?;
        // Every task of a tenant has a time limit (its quota's at most), yet its code runs
        // without epoch checks (faster; the module is compiled once, on upload, for this
        // engine): a task that reaches its limit is answered by its worker's watchdog and
        // ends the worker, which the pool replaces.
        let mut builder = Pool::builder(&module)
            .processes(self.workers)
            .output(Output::Discard);
        if metered {
            // Metering on: submissions bring their own fuel limits.
            builder = builder.limits(Limits::default().fuel(u64::MAX));
        }
        let pool = builder.build()?;
        Ok(self.lock().pools.insert(key, pool, self.max_pools))
    }

    /// Runs one task to its end (or its cancellation), keeping its output.
    pub fn run_task(&self, tenant: &Tenant, spec: &RunSpec, cancel: &CancelSlot) -> ItemOutcome {
        let started = Instant::now();
        let bytes_in = spec.args.len() as u64;
        let (mut fuel, mut cpu_us, mut peak_memory_bytes) = (None, 0u64, 0u64);
        let mut output = (String::new(), String::new());
        let outcome = (|| -> Result<String, TaskError> {
            let args: Vec<Value> = serde_json::from_str(&spec.args).map_err(|e| TaskError {
                code: "bad_args".into(),
                message: format!("the stored arguments do not parse: {e}"),
            })?;
            // Named objects are looked up as the task starts; the resolved handles keep
            // them alive until it ends, even if the tenant deletes them meanwhile.
            let args = self
                .objects
                .resolve(tenant.name(), &args)
                .map_err(|e| object_error(&e))?;
            let retries = spec.retries.saturating_sub(spec.attempt.saturating_sub(1));
            let limits = limits_of(&spec.limits);
            // Undecoded: converted to JSON text as `wasmpool run` prints it, keeping the
            // order of a map's entries as the task wrote them.
            let (pool, result) = match &self.cluster {
                Some(url) => {
                    let pool = self
                        .cluster_pool(url, &spec.module, tenant)
                        .map_err(|e| task_error(&e))?
                        .with_limits(limits)
                        .with_retries(retries)
                        .with_captured_output();
                    let encoded = wasmpool::encode_args(&args[..]).map_err(|e| task_error(&e))?;
                    let result = pool
                        .apply_encoded(&spec.task, encoded)
                        .map_err(|e| task_error(&e))?;
                    (Handle::Cluster(pool), result)
                }
                None => {
                    let pool = self
                        .pool(&spec.module, spec.limits.fuel.is_some())
                        .map_err(|e| task_error(&e))?;
                    let pool = tenant_pool(&pool, tenant)
                        .with_limits(limits)
                        .with_retries(retries)
                        .with_captured_output();
                    let result = pool
                        .apply_async_bytes::<[Resolved]>(&spec.task, &args[..])
                        .map_err(|e| task_error(&e))?;
                    (Handle::Local(pool), result)
                }
            };
            let result = Arc::new(result);
            *cancel.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(result.clone());
            if cancel.is_requested() {
                cancel.request();
            }
            let got = result.get();
            fuel = result.fuel_used();
            cpu_us = u64::try_from(result.worker_time().as_micros()).unwrap_or(u64::MAX);
            peak_memory_bytes = result.peak_memory();
            let captured = result.captured_output();
            output = (
                String::from_utf8_lossy(&captured.stdout).into_owned(),
                String::from_utf8_lossy(&captured.stderr).into_owned(),
            );
            *cancel.running.lock().unwrap_or_else(|p| p.into_inner()) = None;
            drop(pool);
            drop(args);
            let bytes = got.map_err(|e| task_error(&e))?;
            let mut json = Vec::new();
            wasmpool::write_json(&spec.task, &bytes, &mut json).map_err(|e| task_error(&e))?;
            String::from_utf8(json).map_err(|e| TaskError {
                code: "decode".into(),
                message: format!("the result of task `{}` is not UTF-8: {e}", spec.task),
            })
        })();
        let outcome = if cancel.is_requested() {
            Err(TaskError {
                code: "cancelled".into(),
                message: format!("task `{}` was cancelled", spec.task),
            })
        } else {
            outcome
        };
        let bytes_out = match &outcome {
            Ok(v) => v.len() as u64,
            Err(e) => e.message.len() as u64,
        } + (output.0.len() + output.1.len()) as u64;
        ItemOutcome {
            index: 0,
            outcome,
            line: None,
            output: Some(output),
            usage: UsageRow {
                id: spec.id.clone(),
                finished_ms: 0,
                ok: false,
                wall_ms: started.elapsed().as_millis() as u64,
                fuel,
                cpu: Cpu::from_micros(cpu_us),
                peak_memory_bytes,
                bytes_in,
                bytes_out,
            },
        }
    }

    /// Runs a chunk of one map's items (same module, task, limits and retries) as one batch,
    /// calling `done` for each as it finishes, in completion order. Each item's fuel and
    /// worker time are what the chunk's totals grew by when it finished, so the items' add
    /// up to the chunk's (an answered part of a chunk falls on its first item). `cancel`
    /// stops the items not finished.
    pub fn run_items(
        &self,
        tenant: &Tenant,
        specs: &[RunSpec],
        cancel: &CancelSlot,
        mut done: impl FnMut(ItemOutcome),
    ) {
        let Some(first) = specs.first() else {
            return;
        };
        let inputs: Vec<Value> = specs
            .iter()
            .map(|s| serde_json::from_str(&s.args).unwrap_or(Value::Null))
            .collect();
        let fail_all = |e: TaskError, done: &mut dyn FnMut(ItemOutcome)| {
            for (i, input) in inputs.iter().enumerate() {
                let mut w = RecordWriter::new(&first.task, Vec::new());
                let _ = w.write_error(input, &e.message);
                let line = String::from_utf8(w.into_inner()).unwrap_or_default();
                done(ItemOutcome {
                    index: i,
                    outcome: Err(e.clone()),
                    output: None,
                    usage: UsageRow {
                        id: specs[i].id.clone(),
                        bytes_in: specs[i].args.len() as u64,
                        bytes_out: line.len() as u64,
                        ..UsageRow::default()
                    },
                    line: Some(line),
                });
            }
        };
        if cancel.is_requested() {
            return fail_all(cancelled_items(&first.task), &mut done);
        }
        let retries = first
            .retries
            .saturating_sub(first.attempt.saturating_sub(1));
        let limits = limits_of(&first.limits);
        let pool = match &self.cluster {
            Some(url) => match self.cluster_pool(url, &first.module, tenant) {
                Ok(p) => Handle::Cluster(p.with_limits(limits).with_retries(retries)),
                Err(e) => return fail_all(task_error(&e), &mut done),
            },
            None => match self.pool(&first.module, first.limits.fuel.is_some()) {
                Ok(p) => Handle::Local(
                    tenant_pool(&p, tenant)
                        .with_limits(limits)
                        .with_retries(retries),
                ),
                Err(e) => return fail_all(task_error(&e), &mut done),
            },
        };
        let star = first.star;
        // The items' objects, held until the chunk is done; the items naming an object the
        // tenant no longer has fail alone, with that code.
        let mut held = Vec::new();
        let mut unresolved = HashMap::new();
        let encoded: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let args = self
                    .objects
                    .resolve_item(tenant.name(), input, star)
                    .map_err(|e| object_error(&e))
                    .map_err(|e| {
                        unresolved.insert(i, e.clone());
                        wasmpool::Error::BadArgs(e.message)
                    })?;
                let bytes = wasmpool::encode_args(&args);
                held.push(args);
                bytes
            })
            .collect();
        let started = Instant::now();
        let mut results = match pool.imap_encoded(&first.task, encoded.into_iter(), specs.len()) {
            Ok(it) => it,
            Err(e) => return fail_all(task_error(&e), &mut done),
        };
        *cancel.items.lock().unwrap_or_else(|p| p.into_inner()) = Some(results.canceller());
        if cancel.is_requested() {
            cancel.request();
        }
        let mut last_fuel = 0u64;
        let mut last_cpu = Duration::ZERO;
        let mut last_at = Duration::ZERO;
        while let Some((index, result)) = results.next_indexed_bytes() {
            let Some(spec) = specs.get(index) else {
                continue;
            };
            let fuel = results.fuel_used().map(|total| {
                let used = total.saturating_sub(last_fuel);
                last_fuel = total;
                used
            });
            let cpu_total = results.worker_time();
            let cpu = cpu_total.saturating_sub(last_cpu);
            last_cpu = cpu_total;
            // The largest of the calls that ran this chunk, as far as they had answered:
            // the chunk's items run in one call (an item answered in an early part of a
            // large batch gets what was known by then).
            let peak_memory_bytes = results.peak_memory();
            let now = started.elapsed();
            let wall = now.saturating_sub(last_at);
            last_at = now;
            let mut w = RecordWriter::new(&spec.task, Vec::new());
            let error = match &result {
                Err(_) if unresolved.contains_key(&index) => unresolved.remove(&index),
                Err(e) => Some(task_error(e)),
                Ok(_) => None,
            };
            let ok = w.write(&inputs[index], result).unwrap_or(false);
            let line = String::from_utf8(w.into_inner()).unwrap_or_default();
            let outcome = match (ok, error) {
                (true, _) => Ok("null".to_string()),
                (false, Some(e)) => Err(e),
                (false, None) => Err(TaskError {
                    code: "decode".into(),
                    message: w_first_error(&line),
                }),
            };
            done(ItemOutcome {
                index,
                outcome,
                output: None,
                usage: UsageRow {
                    id: spec.id.clone(),
                    finished_ms: 0,
                    ok,
                    wall_ms: wall.as_millis() as u64,
                    fuel,
                    cpu: Cpu::from_micros(u64::try_from(cpu.as_micros()).unwrap_or(u64::MAX)),
                    peak_memory_bytes,
                    bytes_in: spec.args.len() as u64,
                    bytes_out: line.len() as u64,
                },
                line: Some(line),
            });
        }
        *cancel.items.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The error of a map's items cancelled before they ran.
pub fn cancelled_items(task: &str) -> TaskError {
    TaskError {
        code: "cancelled".into(),
        message: format!("task `{task}` was cancelled: its map was cancelled"),
    }
}

/// How a task whose arguments name an object its tenant does not have fails.
fn object_error(e: &crate::objects::RefError) -> TaskError {
    TaskError {
        code: match e {
            crate::objects::RefError::NotFound { .. } => "object_not_found",
            crate::objects::RefError::Forged { .. } => "forged_handle",
        }
        .into(),
        message: e.to_string(),
    }
}

/// The error message of an error record line.
fn w_first_error(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "the result does not convert to JSON".into())
}
