//! `Runtime`: the host state of one wasmpool as a value — its broker of shared objects and
//! that broker's timer, its fork servers, its compile engines and cache, its start method,
//! worker executable and limits, and its registry of processes.
//!
//! One program may hold many runtimes (a service gives each tenant its own); they share
//! nothing but the process. Every handle of a shared object carries the tag of the runtime
//! that made it in the high bits of its id, so the one transport the typed handles use
//! routes each operation to the runtime that owns the object, and a runtime's broker refuses
//! another runtime's handles with a clear error. The free functions of the crate
//! (`set_start_method`, `Manager::new`, `Module::load`, …) use [`Runtime::global`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};

use crate::broker::Broker;
use crate::engine::Engines;
use crate::error::{Error, Result};
use crate::fork_client::{DEFAULT_FORK_SERVER_IDLE_TIMEOUT, ForkServers, StartMethod};
use crate::manager::Manager;
use crate::module::{BuildOptions, Module};
use crate::process::{ChildInfo, Processes};
use crate::shm::SegmentBudget;

/// Where a handle's id keeps the tag of the runtime that made it: the bits from here up.
pub(crate) const TAG_SHIFT: u32 = 40;
/// The largest runtime tag (24 bits, less the one of cluster objects); tags are never
/// reused.
const MAX_TAG: u32 = crate::cluster::CLUSTER_TAG - 1;

/// The tag of the runtime that made handle `h`.
pub(crate) fn tag_of(h: Handle) -> u32 {
    (h.id >> TAG_SHIFT) as u32
}

/// The default limit on shared-memory segments one runtime keeps at once (each keeps a
/// descriptor open, to hand to workers); objects made past it go through the broker only.
pub const DEFAULT_MAX_SHARED_SEGMENTS: usize = 256;

/// How long the host waits inside a frame for a worker's next byte by default.
const DEFAULT_FRAME_STALL: Duration = Duration::from_secs(10);

/// The host state of one wasmpool: shared objects, worker processes and their fork
/// servers, compile engines and cache, limits. Cheap to clone (a shared reference); the
/// state is freed, its fork servers stopped and its objects dropped, when the last clone
/// and the last module, manager, pool and process made from it are gone.
///
/// Most programs use the process's [`Runtime::global`] without naming it: [`Module::load`],
/// [`Manager::new`] and the other free functions do. A program that runs several isolated
/// wasmpools side by side (one per tenant, say) builds one runtime for each:
///
/// ```no_run
/// use wasmpool::{Pool, Runtime, StartMethod};
///
/// let tenant = Runtime::builder()
///     .start_method(StartMethod::Exec)
///     .max_message_bytes(1 << 20)
///     .build()?;
/// let module = tenant.load("examples/testkit")?;
/// let pool = Pool::builder(&module).processes(2).build()?;
/// let squares: Vec<u64> = pool.map("square", 1..=4u64)?;
/// assert_eq!(squares, [1, 4, 9, 16]);
///
/// // Objects belong to the runtime that made them; a task of another runtime cannot use them.
/// let counts = tenant.manager().dict::<String, i64>();
/// counts.set(&"seen".to_string(), &1)?;
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    tag: u32,
    broker: Arc<Broker>,
    start_method: AtomicU8,
    worker_exe: Mutex<Option<PathBuf>>,
    fork_servers: ForkServers,
    processes: Processes,
    engines: Engines,
    cache_dir: PathBuf,
    frame_stall_ms: AtomicU64,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("tag", &self.inner.tag)
            .field("start_method", &self.start_method())
            .field("cache_dir", &self.inner.cache_dir)
            .finish()
    }
}

/// Sets up a [`Runtime`]: every setting has the default the global runtime has.
#[derive(Debug, Clone)]
pub struct RuntimeBuilder {
    start_method: StartMethod,
    max_message_bytes: usize,
    max_shared_segments: usize,
    worker_exe: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    frame_stall: Duration,
    fork_server_idle: Duration,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            start_method: StartMethod::default(),
            max_message_bytes: crate::broker::DEFAULT_MAX_MESSAGE_BYTES,
            max_shared_segments: DEFAULT_MAX_SHARED_SEGMENTS,
            worker_exe: None,
            cache_dir: None,
            frame_stall: DEFAULT_FRAME_STALL,
            fork_server_idle: DEFAULT_FORK_SERVER_IDLE_TIMEOUT,
        }
    }
}

impl RuntimeBuilder {
    /// How its workers start (default: from a fork server).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = method;
        self
    }

    /// The largest message (one value put on a queue, sent on a pipe or stored in a dict or
    /// list) its objects accept (default 16 MiB, at most 60 MiB).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How many shared-memory segments its objects may keep at once (default 256); objects
    /// made past it work through the broker only, a little slower.
    pub fn max_shared_segments(mut self, n: usize) -> Self {
        self.max_shared_segments = n;
        self
    }

    /// The executable its workers run (see [`set_worker_exe`](crate::set_worker_exe)).
    pub fn worker_exe(mut self, path: impl Into<PathBuf>) -> Self {
        self.worker_exe = Some(path.into());
        self
    }

    /// Where it keeps compiled artifacts (default: [`cache_dir`](crate::cache_dir)).
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// How long a worker may stop in the middle of a frame before it counts as broken and
    /// is killed (default 10 s).
    pub fn frame_stall_limit(mut self, limit: Duration) -> Self {
        self.frame_stall = limit;
        self
    }

    /// How long a fork server may go without live workers or fork requests before it is
    /// stopped (default 60 s; `Duration::MAX`: never). A server holds its module loaded (a
    /// Python component's, ~100 MB); one stopped is started again by the next worker of
    /// its module, which then pays for its start (an exec and a load) once. A server with
    /// live workers, a module's warm spare among them, is never stopped.
    pub fn fork_server_idle_timeout(mut self, timeout: Duration) -> Self {
        self.fork_server_idle = timeout;
        self
    }

    /// Makes the runtime. Fails only when this process has made 16 million runtimes.
    pub fn build(self) -> Result<Runtime> {
        static NEXT_TAG: AtomicU32 = AtomicU32::new(1);
        let tag = NEXT_TAG
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t <= MAX_TAG).then_some(t + 1)
            })
            .map_err(|_| {
                Error::State("this process has made as many wasmpool runtimes as it can".into())
            })?;
        Ok(self.build_tagged(tag))
    }

    fn build_tagged(self, tag: u32) -> Runtime {
        let broker = Broker::new(
            tag,
            self.max_message_bytes,
            SegmentBudget::new(self.max_shared_segments),
        );
        let cache_dir = self.cache_dir.unwrap_or_else(crate::module::cache_dir);
        let inner = Arc::new(RuntimeInner {
            tag,
            broker: broker.clone(),
            start_method: AtomicU8::new(method_code(self.start_method)),
            worker_exe: Mutex::new(self.worker_exe),
            fork_servers: ForkServers::new(self.fork_server_idle),
            processes: Processes::default(),
            engines: Engines::new(&cache_dir),
            cache_dir,
            frame_stall_ms: AtomicU64::new(stall_ms(self.frame_stall)),
        });
        routes().register(tag, &broker);
        Runtime { inner }
    }
}

fn method_code(method: StartMethod) -> u8 {
    match method {
        StartMethod::ForkServer => 0,
        StartMethod::Exec => 1,
    }
}

fn stall_ms(limit: Duration) -> u64 {
    u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Runtime {
    /// A builder for a new, isolated runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The process's default runtime: the one [`Module::load`], [`Manager::new`],
    /// [`set_start_method`](crate::set_start_method) and the other free functions use. It
    /// lives as long as the process.
    pub fn global() -> &'static Runtime {
        static GLOBAL: OnceLock<Runtime> = OnceLock::new();
        GLOBAL.get_or_init(|| RuntimeBuilder::default().build_tagged(0))
    }

    /// Loads a module into this runtime (see [`Module::load`]): its pools and processes
    /// run in this runtime, under its start method and limits.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Module> {
        Module::load_in(self, path, &BuildOptions::default())
    }

    /// As [`load`](Runtime::load), building a guest project with `options`.
    pub fn load_with(&self, path: impl AsRef<Path>, options: &BuildOptions) -> Result<Module> {
        Module::load_in(self, path, options)
    }

    /// Validates and compiles a component from memory into this runtime (see
    /// [`Module::from_bytes`]).
    pub fn module_from_bytes(&self, bytes: &[u8], origin: impl AsRef<Path>) -> Result<Module> {
        Module::from_bytes_in(self, bytes, origin)
    }

    /// The manager of this runtime's shared objects.
    pub fn manager(&self) -> Manager {
        Manager::in_runtime(self)
    }

    /// Sets how this runtime's new workers start; workers already running are not affected.
    pub fn set_start_method(&self, method: StartMethod) {
        self.inner
            .start_method
            .store(method_code(method), Ordering::Relaxed);
    }

    /// How this runtime's new workers start.
    pub fn start_method(&self) -> StartMethod {
        match self.inner.start_method.load(Ordering::Relaxed) {
            1 => StartMethod::Exec,
            _ => StartMethod::ForkServer,
        }
    }

    /// Sets the largest message this runtime's objects accept (capped at 60 MiB).
    pub fn set_max_message_bytes(&self, bytes: usize) {
        self.inner.broker.set_max_message(bytes);
    }

    /// The largest message this runtime's objects accept.
    pub fn max_message_bytes(&self) -> usize {
        self.inner.broker.max_message()
    }

    /// Sets the executable this runtime's workers run (see
    /// [`set_worker_exe`](crate::set_worker_exe)).
    pub fn set_worker_exe(&self, path: impl Into<PathBuf>) {
        if let Ok(mut exe) = self.inner.worker_exe.lock() {
            *exe = Some(path.into());
        }
    }

    /// Sets how long a worker may stop in the middle of a frame before it is killed.
    pub fn set_frame_stall_limit(&self, limit: Duration) {
        self.inner
            .frame_stall_ms
            .store(stall_ms(limit), Ordering::Relaxed);
    }

    /// Sets how long this runtime's fork servers may stay idle before they are stopped (see
    /// [`RuntimeBuilder::fork_server_idle_timeout`]); a server idle already counts from when
    /// it became idle.
    pub fn set_fork_server_idle_timeout(&self, timeout: Duration) {
        self.inner.fork_servers.set_idle_timeout(timeout);
    }

    /// How long this runtime's fork servers may stay idle before they are stopped.
    pub fn fork_server_idle_timeout(&self) -> Duration {
        self.inner.fork_servers.idle_timeout()
    }

    /// Where this runtime keeps compiled artifacts.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// How many functions this runtime's compiles took from the function cache, and how
    /// many they compiled: a guest that shares most of its code with one compiled before
    /// (every Python guest carries the same interpreter) compiles only what is new.
    pub fn compile_stats(&self) -> crate::CompileStats {
        self.inner.engines.functions().stats()
    }

    /// The running processes this runtime started (as Python's `active_children`).
    pub fn active_children(&self) -> Vec<ChildInfo> {
        self.inner.processes.active()
    }

    /// How many shared objects of this runtime are alive.
    pub fn live_objects(&self) -> usize {
        self.inner.broker.live_objects()
    }

    /// How many shared-memory segments this runtime's objects hold now.
    pub fn shared_segments(&self) -> usize {
        self.inner.broker.segments().in_use()
    }

    /// The worker processes of this runtime's fork servers (for tests of clean-up).
    #[doc(hidden)]
    pub fn fork_server_pids(&self) -> Vec<u32> {
        self.inner.fork_servers.pids()
    }

    pub(crate) fn broker(&self) -> &Arc<Broker> {
        &self.inner.broker
    }

    pub(crate) fn fork_servers(&self) -> &ForkServers {
        &self.inner.fork_servers
    }

    pub(crate) fn processes(&self) -> &Processes {
        &self.inner.processes
    }

    pub(crate) fn engines(&self) -> &Engines {
        &self.inner.engines
    }

    pub(crate) fn frame_stall(&self) -> Duration {
        Duration::from_millis(self.inner.frame_stall_ms.load(Ordering::Relaxed))
    }

    pub(crate) fn configured_worker_exe(&self) -> Option<PathBuf> {
        self.inner.worker_exe.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        routes().unregister(self.tag);
        // Its fork servers leave (and their workers with them); its objects go with the
        // broker once nothing else holds it.
        self.fork_servers.shut_down();
    }
}

/// The routes from runtime tags to their brokers: the transport the typed handles of this
/// process use. This is the one piece of process-wide state, because a typed handle (a
/// `Queue<T>` decoded from a task's result, say) knows only its id.
#[derive(Default)]
struct Routes {
    global: OnceLock<Arc<Broker>>,
    others: RwLock<HashMap<u32, Weak<Broker>>>,
    /// The clusters whose objects this program made or was given, by route number (in
    /// their handles' ids), and the route number of each Redis URL.
    clusters: RwLock<ClusterRoutes>,
}

#[derive(Default)]
struct ClusterRoutes {
    by_url: HashMap<String, u32>,
    objects: Vec<Arc<crate::cluster::ClusterObjects>>,
}

/// The objects of the cluster at `url` for this program: the route made for it before, or a
/// new one (connecting to it).
pub(crate) fn cluster_route(url: &str) -> Result<Arc<crate::cluster::ClusterObjects>> {
    let routes = routes();
    let mut clusters = routes.clusters.write().unwrap_or_else(|p| p.into_inner());
    if let Some(&n) = clusters.by_url.get(url)
        && let Some(objects) = clusters.objects.get(n as usize)
    {
        return Ok(objects.clone());
    }
    let n = clusters.objects.len() as u32;
    if n >= crate::cluster::MAX_ROUTES {
        return Err(Error::Cluster(format!(
            "this program has reached {n} Redis servers for shared objects, as many as \
             handles can tell apart"
        )));
    }
    let objects = Arc::new(crate::cluster::ClusterObjects::connect(
        url,
        n,
        crate::broker::DEFAULT_MAX_MESSAGE_BYTES,
    )?);
    clusters.by_url.insert(url.to_string(), n);
    clusters.objects.push(objects.clone());
    Ok(objects)
}

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        wasmpool_objects::install(&Router);
        Routes::default()
    })
}

impl Routes {
    fn register(&self, tag: u32, broker: &Arc<Broker>) {
        if tag == 0 {
            let _ = self.global.set(broker.clone());
            return;
        }
        if let Ok(mut others) = self.others.write() {
            others.insert(tag, Arc::downgrade(broker));
        }
    }

    fn unregister(&self, tag: u32) {
        if let Ok(mut others) = self.others.write() {
            others.remove(&tag);
        }
    }

    fn cluster(&self, target: Handle) -> Option<Arc<crate::cluster::ClusterObjects>> {
        let clusters = self.clusters.read().unwrap_or_else(|p| p.into_inner());
        clusters
            .objects
            .get(crate::cluster::route_of(target) as usize)
            .cloned()
    }

    fn find(&self, target: Handle) -> Option<Arc<Broker>> {
        match tag_of(target) {
            0 => self.global.get().cloned(),
            tag => self
                .others
                .read()
                .ok()
                .and_then(|o| o.get(&tag).and_then(Weak::upgrade)),
        }
    }
}

/// The transport of the host program's typed handles: each operation goes to the broker of
/// the runtime that made the handle.
struct Router;

fn gone() -> ObjectError {
    ObjectError::Stale("the wasmpool runtime that made this object was dropped".into())
}

impl wasmpool_objects::Transport for Router {
    fn invoke(
        &self,
        target: Handle,
        req: Request,
        timeout: Option<Duration>,
    ) -> std::result::Result<Response, ObjectError> {
        if crate::cluster::is_cluster_handle(target) {
            let objects = routes().cluster(target).ok_or_else(|| {
                ObjectError::Stale(
                    "a cluster object this program has no connection to its Redis for".into(),
                )
            })?;
            return objects.invoke(&objects.client_owner(), target, req, timeout, &|| false);
        }
        routes()
            .find(target)
            .ok_or_else(gone)?
            .invoke_for_host(target, req, timeout)
    }

    fn retain(&self, target: Handle) {
        // A cluster object lives until it has been idle for its TTL: not counted.
        if crate::cluster::is_cluster_handle(target) {
            return;
        }
        if let Some(broker) = routes().find(target) {
            broker.retain_for_host(target);
        }
    }

    fn release(&self, target: Handle) {
        if crate::cluster::is_cluster_handle(target) {
            return;
        }
        if let Some(broker) = routes().find(target) {
            broker.release_for_host(target);
        }
    }

    fn granted(&self, target: Handle) {
        crate::broker::note_granted(target);
    }
}
