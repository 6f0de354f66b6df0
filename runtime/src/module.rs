//! Task modules: loading, validating, compiling once into a content-addressed cache.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::bindings::TaskModulePre;
use crate::component_bytes::ComponentBytes;
use crate::engine::EngineKind;
use crate::error::{Error, Result};
pub use crate::guest_build::BuildOptions;
use crate::protocol::Limits;
use crate::runtime::Runtime;
use crate::spawn::{ReadyWorker, start_worker, start_worker_with};
use crate::worker::state::InstanceState;

/// The default stack limit: spares and task listing load into the engine with it.
const DEFAULT_STACK: u64 = crate::Limits::DEFAULT_STACK_BYTES;

/// The largest module accepted (256 MiB).
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// A guest component, validated against the wasmpool world and compiled once.
///
/// Cloning is cheap; clones share the compiled artifact, the task list and the warm spare
/// worker that [`Process`](crate::Process) keeps ready.
///
/// ```no_run
/// let module = wasmpool::Module::load("examples/testkit")?; // a guest project: built for you
/// println!("{:?}", module.tasks()?);
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    /// The runtime its pools and processes run in.
    runtime: Runtime,
    origin: PathBuf,
    /// The component, kept to compile the artifact of another engine kind the first time
    /// one is asked for.
    bytes: ComponentBytes,
    /// The component's SHA-256, which names its artifacts.
    digest: [u8; 32],
    /// The engine kind compiled for at load: plain unless [`BuildOptions::compile_for`]
    /// said otherwise.
    kind: EngineKind,
    /// The artifact for `kind`, compiled on load.
    artifact: PathBuf,
    /// The artifacts compiled for the other engine kinds, once asked for.
    others: Mutex<Vec<(EngineKind, PathBuf)>>,
    tasks: Mutex<Option<Vec<String>>>,
    /// A warm spare worker; `Process::start` takes it when its engine is the one wanted.
    spare: Mutex<Option<ReadyWorker>>,
    keep_spare: AtomicBool,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("origin", &self.inner.origin)
            .field("artifact", &self.inner.artifact)
            .finish()
    }
}

/// Where compiled artifacts are kept: `$WASMPOOL_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmpool`,
/// else `~/.cache/wasmpool`, else (no `HOME`) `wasmpool-cache-<uid>` in the temporary
/// directory.
///
/// The directory must belong to the user running the program and be writable by no one
/// else (it is created so, mode 0700): a module would otherwise run whatever another user
/// put there. Each artifact is verified before use against a keyed digest (HMAC-SHA256,
/// with a random per-cache key readable by the owner only) kept beside it; one that fails is
/// compiled again. The artifacts together are kept under [`DEFAULT_CACHE_MAX_BYTES`]
/// (`$WASMPOOL_CACHE_MAX_MIB` to change it), the least recently used evicted first.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMPOOL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("wasmpool");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("wasmpool"),
        // SAFETY: geteuid has no preconditions.
        None => std::env::temp_dir().join(format!("wasmpool-cache-{}", unsafe { libc::geteuid() })),
    }
}

/// How many bytes of compiled artifacts the cache keeps by default (2 GiB); set
/// `$WASMPOOL_CACHE_MAX_MIB` for another bound. The least recently used go first.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2 << 30;

impl Module {
    /// Loads a module from a `.wasm` component file, or builds a guest project first: a
    /// Cargo project directory, a Python file (`tasks.py`) or a Python project directory
    /// (its `pyproject.toml` has a `[tool.wasmpool]` table). Python guests are built with
    /// componentize-py, installed on first use into a virtualenv under [`cache_dir`].
    ///
    /// Building a project runs its build scripts and proc macros natively: a project
    /// directory is trusted input, only a `.wasm` file is not. A project whose own packages
    /// have a build script is refused (see [`Module::load_with`] to allow it).
    pub fn load(path: impl AsRef<Path>) -> Result<Module> {
        Self::load_with(path, &BuildOptions::default())
    }

    /// As [`Module::load`], building a guest project directory with `options`.
    ///
    /// ```no_run
    /// use wasmpool::{BuildOptions, Module};
    /// // A project of your own, whose build script you trust:
    /// let options = BuildOptions::default().allow_build_scripts(true);
    /// let module = Module::load_with("my-guest", &options)?;
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn load_with(path: impl AsRef<Path>, options: &BuildOptions) -> Result<Module> {
        Self::load_in(Runtime::global(), path, options)
    }

    /// As [`Module::load_with`], into `runtime` (see [`Runtime::load`]).
    pub(crate) fn load_in(
        runtime: &Runtime,
        path: impl AsRef<Path>,
        options: &BuildOptions,
    ) -> Result<Module> {
        let path = path.as_ref();
        if let Some(guest) = crate::python_build::detect(path)? {
            let wasm = crate::python_build::build(&guest)?;
            return Self::load_file(runtime, &wasm, path, options.engine);
        }
        if path.is_dir() {
            let wasm = crate::guest_build::build(path, options)?;
            return Self::load_file(runtime, &wasm, path, options.engine);
        }
        Self::load_file(runtime, path, path, options.engine)
    }

    fn load_file(
        runtime: &Runtime,
        file: &Path,
        origin: &Path,
        kind: EngineKind,
    ) -> Result<Module> {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        let bad = |message: String| Error::BadModule {
            path: origin.to_path_buf(),
            message,
        };
        let mut opened = std::fs::File::open(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        // Stamped before it is read (see `stamps`): what is read is this version or a later
        // one, which has another stamp.
        let (stamp, at) = crate::stamps::of_file(&opened)
            .ok_or_else(|| bad("cannot read its metadata".into()))?;
        let len = stamp.len();
        if len > MAX_MODULE_BYTES {
            return Err(bad(format!(
                "is {len} bytes; the limit is {MAX_MODULE_BYTES}"
            )));
        }
        let cache = cache::Cache::open(runtime.cache_dir())?;
        if let Some(digest) = cache.recorded_digest(&stamp) {
            // Hashed before, as this very file: only its header is read now, the rest when
            // something needs it (see `component_bytes`).
            let mut head = [0u8; 8];
            let n = opened
                .read_at(&mut head, 0)
                .map_err(|e| bad(format!("cannot read: {e}")))?;
            check_header(&head[..n]).map_err(bad)?;
            let bytes = ComponentBytes::in_file(opened, stamp, digest);
            return Self::new_in(runtime, &cache, bytes, digest, origin.to_path_buf(), kind);
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&mut opened)
            .take(MAX_MODULE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_MODULE_BYTES {
            return Err(bad(format!(
                "grew past the limit of {MAX_MODULE_BYTES} bytes while it was read"
            )));
        }
        check_header(&bytes).map_err(bad)?;
        // A file that changed while it was read is hashed, not recorded.
        let seen = (bytes.len() as u64 == len).then_some((stamp, at));
        let digest = cache.component_digest(&bytes, seen);
        let bytes = ComponentBytes::held(bytes);
        Self::new_in(runtime, &cache, bytes, digest, origin.to_path_buf(), kind)
    }

    /// Validates and compiles a component from memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Module> {
        Self::from_bytes_in(Runtime::global(), bytes, origin)
    }

    /// As [`Module::from_bytes`], into `runtime`.
    pub(crate) fn from_bytes_in(
        runtime: &Runtime,
        bytes: &[u8],
        origin: impl AsRef<Path>,
    ) -> Result<Module> {
        let origin = origin.as_ref().to_path_buf();
        check_header(bytes).map_err(|message| Error::BadModule {
            path: origin.clone(),
            message,
        })?;
        let cache = cache::Cache::open(runtime.cache_dir())?;
        let digest = Sha256::digest(bytes).into();
        let bytes = ComponentBytes::held(bytes.to_vec());
        Self::new_in(runtime, &cache, bytes, digest, origin, EngineKind::PLAIN)
    }

    /// The module of the component `bytes` (whose header was checked and whose SHA-256 is
    /// `digest`), compiled for `kind` into `cache` unless it holds it already.
    fn new_in(
        runtime: &Runtime,
        cache: &cache::Cache,
        bytes: ComponentBytes,
        digest: [u8; 32],
        origin: PathBuf,
        kind: EngineKind,
    ) -> Result<Module> {
        let artifact = compile_in(cache, runtime, &bytes, &digest, &origin, kind)?;
        Ok(Module {
            inner: Arc::new(ModuleInner {
                runtime: runtime.clone(),
                origin,
                bytes,
                digest,
                kind,
                artifact,
                others: Mutex::new(Vec::new()),
                tasks: Mutex::new(None),
                spare: Mutex::new(None),
                keep_spare: AtomicBool::new(true),
            }),
        })
    }

    /// The component's bytes, as loaded (what a cluster stores under their SHA-256, and
    /// what `wasmpool run --server` uploads). A large component loaded from a file that
    /// was loaded before is read from it only now, the first time they are asked for:
    /// [`Error::BadModule`] if the file was changed in place since the module was loaded
    /// (a file put at its path by a rename, as builds do, changes nothing).
    pub fn bytes(&self) -> Result<&[u8]> {
        self.inner.bytes.get(&self.inner.origin)
    }

    /// The runtime the module was loaded into: its pools and processes run there.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Where the module came from.
    pub fn origin(&self) -> &Path {
        &self.inner.origin
    }

    /// The precompiled artifact compiled at load, that workers map: for pools and processes
    /// with no fuel or time limit of their own, unless [`BuildOptions::compile_for`] named
    /// other limits (the others map another, compiled when first asked for).
    pub fn artifact(&self) -> &Path {
        &self.inner.artifact
    }

    /// The artifact for an engine of kind `engine`. One but the kind compiled at load is
    /// compiled (or found in the cache) the first time a pool or process asks for it.
    pub(crate) fn artifact_for(&self, engine: EngineKind) -> Result<PathBuf> {
        if engine == self.inner.kind {
            // Evicted from the cache since (by another program's compile): compiled again
            // to the same path.
            if !self.inner.artifact.is_file() {
                return compile(
                    &self.inner.runtime,
                    &self.inner.bytes,
                    &self.inner.digest,
                    &self.inner.origin,
                    engine,
                );
            }
            return Ok(self.inner.artifact.clone());
        }
        // Held while compiling: workers starting together wait for one compilation.
        let mut others = self.inner.others.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, path)) = others.iter().find(|(kind, _)| *kind == engine)
            && path.is_file()
        {
            return Ok(path.clone());
        }
        let path = compile(
            &self.inner.runtime,
            &self.inner.bytes,
            &self.inner.digest,
            &self.inner.origin,
            engine,
        )?;
        others.retain(|(kind, _)| *kind != engine);
        others.push((engine, path.clone()));
        Ok(path)
    }

    /// The names of the module's tasks (asked of a worker the first time, then remembered).
    pub fn tasks(&self) -> Result<Vec<String>> {
        if let Some(tasks) = self.known_tasks() {
            return Ok(tasks);
        }
        let worker = self.ready_worker("wasmpool-tasks", self.inner.kind, &Limits::default())?;
        let tasks = worker.tasks.clone();
        self.put_spare(worker);
        Ok(tasks)
    }

    pub(crate) fn known_tasks(&self) -> Option<Vec<String>> {
        self.inner.tasks.lock().ok().and_then(|t| t.clone())
    }

    /// Whether the module exports `task`, if its tasks are known yet. Looked up in place:
    /// this runs for every `apply_async`, and a module can have many tasks.
    pub(crate) fn exports(&self, task: &str) -> Option<bool> {
        let tasks = self.inner.tasks.lock().ok()?;
        Some(tasks.as_ref()?.iter().any(|t| t == task))
    }

    /// Fails with `UnknownTask` if the module is known not to export `task`.
    pub(crate) fn check_task(&self, task: &str) -> Result<()> {
        match self.exports(task) {
            Some(false) => Err(Error::UnknownTask {
                task: task.to_string(),
                available: self.known_tasks().unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }

    /// A worker with this module loaded on an engine of kind `engine`, with the stack
    /// limit of `limits`: the warm spare if there is one of that kind, else a new one, whose
    /// first instance is made under `limits`.
    pub(crate) fn ready_worker(
        &self,
        name: &str,
        engine: EngineKind,
        limits: &Limits,
    ) -> Result<ReadyWorker> {
        self.ready_worker_with(name, engine, limits, &[])
    }

    /// As [`ready_worker`](Module::ready_worker), with the encoded frames `first` already
    /// sent to the worker (see [`start_worker_with`]).
    pub(crate) fn ready_worker_with(
        &self,
        name: &str,
        engine: EngineKind,
        limits: &Limits,
        first: &[u8],
    ) -> Result<ReadyWorker> {
        let stack_bytes = limits.stack_bytes;
        let spare = self
            .inner
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.take_if(|w| w.is_kind(engine, stack_bytes)))
            // A spare that died while it waited (killed, or with its fork server) is
            // reaped here, not handed out.
            .filter(ReadyWorker::is_alive);
        let worker = match spare {
            Some(mut w) => {
                if !first.is_empty() {
                    use std::io::Write;
                    w.sock
                        .write_all(first)
                        .map_err(|e| Error::io("cannot reach a spare worker", e))?;
                }
                w
            }
            None => start_worker_with(
                &self.inner.runtime,
                &self.artifact_for(engine)?,
                name,
                engine,
                limits,
                first,
            )?,
        };
        self.learn_tasks(&worker.tasks);
        Ok(worker)
    }

    /// Records the task list a worker reported when it loaded the module.
    pub(crate) fn learn_tasks(&self, reported: &[String]) {
        if let Ok(mut tasks) = self.inner.tasks.lock() {
            tasks.get_or_insert_with(|| reported.to_vec());
        }
    }

    fn put_spare(&self, worker: ReadyWorker) {
        if let Ok(mut spare) = self.inner.spare.lock() {
            *spare = Some(worker);
        }
    }

    /// Whether a warm spare worker is kept ready after each `Process::start` (default: yes).
    /// A spare costs one idle worker process; without it every start pays for starting a
    /// worker (a fork from the fork server, or an exec and a module load with
    /// [`StartMethod::Exec`](crate::StartMethod::Exec)).
    pub fn set_keep_spare(&self, keep: bool) {
        self.inner.keep_spare.store(keep, Ordering::Relaxed);
        if !keep {
            drop(self.inner.spare.lock().ok().and_then(|mut s| s.take()));
        }
    }

    /// Starts a warm spare worker now, unless one is ready, and waits until it is: the next
    /// [`Process::start`](crate::Process::start) then skips starting a worker.
    /// The spare runs the code compiled at load (see [`BuildOptions::compile_for`]); a process
    /// whose limits need other code starts its own.
    pub fn prepare_spare(&self) -> Result<()> {
        let kind = self.inner.kind;
        if self
            .inner
            .spare
            .lock()
            .map(|s| s.as_ref().is_some_and(|w| w.is_kind(kind, DEFAULT_STACK)))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let worker = start_worker(
            &self.inner.runtime,
            &self.artifact_for(kind)?,
            "spare",
            kind,
            &Limits::default(),
        )?;
        self.put_spare(worker);
        Ok(())
    }

    /// Starts a spare worker in the background, so the next `Process::start` is warm: on the
    /// engine the last one used (`engine`, `stack_bytes`), as the next is likely to want the
    /// same.
    pub(crate) fn refill_spare(&self, engine: EngineKind, stack_bytes: u64) {
        if !self.inner.keep_spare.load(Ordering::Relaxed) {
            return;
        }
        let module = self.clone();
        let _ = std::thread::Builder::new()
            .name("wasmpool-spare".into())
            .spawn(move || {
                if module
                    .inner
                    .spare
                    .lock()
                    .map(|s| s.as_ref().is_some_and(|w| w.is_kind(engine, stack_bytes)))
                    .unwrap_or(true)
                {
                    return;
                }
                let worker = module.artifact_for(engine).and_then(|artifact| {
                    let limits = Limits {
                        stack_bytes,
                        ..Limits::default()
                    };
                    start_worker(&module.inner.runtime, &artifact, "spare", engine, &limits)
                });
                // Kept only if spares still are: one turned off meanwhile must not find a
                // spare started before it was (checked under the lock `set_keep_spare`
                // takes the spare under, so one of the two always sees the other).
                if let (Ok(worker), Ok(mut spare)) = (worker, module.inner.spare.lock())
                    && module.inner.keep_spare.load(Ordering::Relaxed)
                {
                    *spare = Some(worker);
                }
            });
    }

    /// Writes the precompiled artifact compiled at load to `out` (what `wasmpool compile`
    /// does): the plain code, unless the module was loaded with
    /// [`BuildOptions::compile_for`] other limits.
    pub fn write_precompiled(&self, out: impl AsRef<Path>) -> Result<()> {
        let out = out.as_ref();
        std::fs::copy(&self.inner.artifact, out)
            .map_err(|e| Error::io(format!("cannot write {}", out.display()), e))?;
        Ok(())
    }
}

fn check_header(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.is_empty() {
        return Err("is empty, not a WebAssembly component".into());
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("is not WebAssembly (no `\\0asm` header)".into());
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err(
            "is a core WebAssembly module, not a component: build the guest for \
             wasm32-wasip2 with the wasmpool-guest SDK (or wrap it with `wasm-tools component new`)"
                .into(),
        ),
        _ => Err("has an unsupported WebAssembly version or layer".into()),
    }
}

/// Compiles `bytes` (whose SHA-256 is `digest`) for an engine of kind `engine` into
/// the cache, unless the cache has it already (and it verifies: then `bytes` need not be
/// read); returns the artifact's path.
fn compile(
    runtime: &Runtime,
    bytes: &ComponentBytes,
    digest: &[u8; 32],
    origin: &Path,
    engine: EngineKind,
) -> Result<PathBuf> {
    let cache = cache::Cache::open(runtime.cache_dir())?;
    compile_in(&cache, runtime, bytes, digest, origin, engine)
}

/// As [`compile`], into `cache` (the runtime's, open).
fn compile_in(
    cache: &cache::Cache,
    runtime: &Runtime,
    bytes: &ComponentBytes,
    digest: &[u8; 32],
    origin: &Path,
    kind: EngineKind,
) -> Result<PathBuf> {
    let bad = |message: String| Error::BadModule {
        path: origin.to_path_buf(),
        message,
    };
    let engine = runtime.engines().compiling(kind);
    let name = artifact_name(&engine, digest, kind);
    if let Some(artifact) = cache.verified(&name) {
        return Ok(artifact);
    }
    let bytes = bytes.get(origin)?;
    let component = {
        // Functions compiled before, by any module, are taken from the function cache.
        let _session = runtime.engines().functions().session(&name);
        Component::new(&engine, bytes)
    }
    .map_err(|e| bad(format!("not a valid component: {}", first_line(&e))))?;
    check_world(&engine, &component).map_err(bad)?;
    let compiled = component
        .serialize()
        .map_err(|e| bad(format!("cannot serialize the compiled module: {e}")))?;
    cache.store(&name, &compiled)
}

fn check_world(
    engine: &wasmtime::Engine,
    component: &Component,
) -> std::result::Result<(), String> {
    let linker = crate::bindings::linker_for::<InstanceState>(engine, component)
        .map_err(|e| e.to_string())?;
    let pre = linker.instantiate_pre(component).map_err(|e| {
        format!(
            "does not fit the wasmpool:task world (imports): {}",
            first_line(&e)
        )
    })?;
    TaskModulePre::new(pre).map_err(|e| {
        format!(
            "does not implement the wasmpool:task world (exports): {}",
            first_line(&e)
        )
    })?;
    Ok(())
}

fn first_line(e: &wasmtime::Error) -> String {
    format!("{e:#}")
}

/// The artifact's name in the cache: a digest of the component's SHA-256 (`digest`), the
/// engine's compatibility hash and this version.
fn artifact_name(engine: &wasmtime::Engine, digest: &[u8; 32], kind: EngineKind) -> String {
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let mut h = Sha256::new();
    h.update(b"wasmpool-artifact-2\0");
    h.update(digest);
    h.update(compat.finish().to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    // The engine hash covers fuel and epochs too; this keeps the kinds apart whatever it
    // covers.
    if kind.metered {
        h.update(b"metered");
    }
    if kind.interruptible {
        h.update(b"interruptible");
    }
    let digest = h.finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) use cache::private_dir;
/// What the function cache (`function_cache.rs`) shares with the artifact cache: the key,
/// the bound, and the careful file operations.
pub(crate) mod cache_files {
    pub(crate) use super::cache::{
        KEY_BYTES, STALE_TEMP, hmac, key, max_bytes, open_own, write_atomically,
    };
}

/// The compile cache on disk: a private directory, a key, artifacts with their digests.
mod cache {
    use std::fs::{self, File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, SystemTime};

    use sha2::{Digest, Sha256};

    use crate::error::{Error, Result};
    use crate::stamps::{self, Stamp};

    /// A temporary file older than this was left by a write that was killed.
    pub(crate) const STALE_TEMP: Duration = Duration::from_secs(600);
    pub(crate) const KEY_BYTES: usize = 32;

    /// A component at least this large has its digest recorded (see `component_digest`);
    /// a smaller one is hashed in well under a millisecond.
    const RECORD_DIGEST_BYTES: u64 = 1 << 20;

    /// A component's recorded digest unused this long is removed.
    const STALE_DIGEST: Duration = Duration::from_secs(30 * 24 * 3600);

    pub(super) struct Cache {
        artifacts: PathBuf,
        /// The recorded digests of large components (see `component_digest`).
        digests: PathBuf,
        key: [u8; KEY_BYTES],
        max_bytes: u64,
    }

    fn euid() -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    /// Creates `dir` (mode 0700) if needed, and checks that only this user can write it.
    pub(crate) fn private_dir(dir: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                Error::io(
                    format!(
                        "cannot create the compile cache {} (set WASMPOOL_CACHE_DIR to a \
                         directory you own)",
                        dir.display()
                    ),
                    e,
                )
            })?;
        let meta = fs::metadata(dir).map_err(|e| {
            Error::io(
                format!("cannot read the compile cache {}", dir.display()),
                e,
            )
        })?;
        let why = if !meta.is_dir() {
            Some("is not a directory".to_string())
        } else if meta.uid() != euid() {
            Some(format!(
                "belongs to uid {}, not to this user (uid {})",
                meta.uid(),
                euid()
            ))
        } else if meta.mode() & 0o022 != 0 {
            Some(format!(
                "is writable by other users (mode {:o})",
                meta.mode() & 0o7777
            ))
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some(why) => Err(Error::State(format!(
                "refusing the compile cache {}: it {why}, so another user could plant compiled \
                 code in it; use a directory only you can write (`chmod go-w` it, or set \
                 WASMPOOL_CACHE_DIR)",
                dir.display()
            ))),
        }
    }

    /// The cache's bound in bytes: `$WASMPOOL_CACHE_MAX_MIB`, else the default.
    pub(crate) fn max_bytes() -> Result<u64> {
        match std::env::var("WASMPOOL_CACHE_MAX_MIB") {
            Err(_) => Ok(super::DEFAULT_CACHE_MAX_BYTES),
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|mib| mib.checked_mul(1 << 20))
                .ok_or_else(|| {
                    Error::State(format!(
                        "WASMPOOL_CACHE_MAX_MIB={v:?} is not a size in MiB (a whole number up \
                         to {}); unset it for the default of {} MiB",
                        u64::MAX >> 20,
                        super::DEFAULT_CACHE_MAX_BYTES >> 20
                    ))
                }),
        }
    }

    /// A name for a temporary file in the cache no other writer uses.
    fn temp_name(tag: &str) -> String {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        format!(
            ".tmp-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Writes `data` to `path` through a temporary file in its directory (mode 0600).
    pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(temp_name("w"));
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(data));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("cannot write {}", tmp.display()), e));
        }
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(format!("cannot write {}", path.display()), e)
        })
    }

    /// Opens a file of this cache for reading: not through a symbolic link, and only if it
    /// belongs to this user and no one else can write it.
    pub(crate) fn open_own(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.uid() != euid() || meta.mode() & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "not a file of this user's only",
            ));
        }
        Ok(file)
    }

    /// A file of this cache mapped read-only (never truncated in place: files are only
    /// replaced by renames, or removed, which leaves a mapping whole).
    struct Mapped {
        ptr: *mut libc::c_void,
        len: usize,
    }

    impl Mapped {
        fn file(file: &File) -> Option<Mapped> {
            use std::os::fd::AsRawFd;
            let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
            if len == 0 {
                return Some(Mapped {
                    ptr: std::ptr::null_mut(),
                    len: 0,
                });
            }
            // SAFETY: a fresh read-only private mapping of an open file; no memory of this
            // program is touched.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    0,
                )
            };
            (ptr != libc::MAP_FAILED).then_some(Mapped { ptr, len })
        }

        fn bytes(&self) -> &[u8] {
            if self.len == 0 {
                return &[];
            }
            // SAFETY: `ptr` maps `len` readable bytes until `self` is dropped.
            unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            if self.len != 0 {
                // SAFETY: unmaps exactly the mapping `file` made, which nothing borrows now.
                unsafe { libc::munmap(self.ptr, self.len) };
            }
        }
    }

    /// HMAC-SHA256 (RFC 2104) of the concatenated `parts` under `key`.
    pub(crate) fn hmac(key: &[u8; KEY_BYTES], parts: &[&[u8]]) -> [u8; 32] {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Sha256::new();
        inner.update(ipad);
        for p in parts {
            inner.update(p);
        }
        let mut outer = Sha256::new();
        outer.update(opad);
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The 32 bytes that `text` (64 hex digits) spells.
    fn unhex(text: &str) -> Option<[u8; 32]> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    /// The cache's key, made (random, mode 0600) the first time.
    pub(crate) fn key(dir: &Path) -> Result<[u8; KEY_BYTES]> {
        let path = dir.join("key");
        let refuse = |why: String| {
            Error::State(format!(
                "refusing the compile cache key {}: {why}; remove it (a new one is made, and \
                 the cache is compiled again)",
                path.display()
            ))
        };
        if fs::symlink_metadata(&path).is_err() {
            let mut key = [0u8; KEY_BYTES];
            // SAFETY: getrandom writes at most `key.len()` bytes into `key`.
            let n = unsafe { libc::getrandom(key.as_mut_ptr().cast(), key.len(), 0) };
            if n != KEY_BYTES as isize {
                return Err(Error::io(
                    "cannot make a key for the compile cache",
                    io::Error::last_os_error(),
                ));
            }
            let tmp = dir.join(temp_name("key"));
            write_atomically(&tmp, &key)?;
            // Linked, not renamed: a key another process made meanwhile is kept.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            if let Err(e) = linked
                && e.kind() != io::ErrorKind::AlreadyExists
            {
                return Err(Error::io(format!("cannot write {}", path.display()), e));
            }
        }
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if meta.uid() != euid() {
            return Err(refuse(format!("it belongs to uid {}", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(refuse(format!(
                "other users can read or write it (mode {:o})",
                meta.mode() & 0o7777
            )));
        }
        let mut key = [0u8; KEY_BYTES];
        let mut rest = Vec::new();
        file.read_to_end(&mut rest)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if rest.len() != KEY_BYTES {
            return Err(refuse(format!(
                "it holds {} bytes, not {KEY_BYTES}",
                rest.len()
            )));
        }
        key.copy_from_slice(&rest);
        Ok(key)
    }

    impl Cache {
        /// The cache in `dir` (a runtime's, [`super::cache_dir`] by default), checked:
        /// private to this user, with its key.
        pub(super) fn open(dir: &Path) -> Result<Cache> {
            private_dir(dir)?;
            let artifacts = dir.join("artifacts");
            private_dir(&artifacts)?;
            Ok(Cache {
                key: key(dir)?,
                artifacts,
                digests: dir.join("digests"),
                max_bytes: max_bytes()?,
            })
        }

        fn artifact(&self, name: &str) -> PathBuf {
            self.artifacts.join(format!("{name}.cwasm"))
        }

        fn digest_file(&self, name: &str) -> PathBuf {
            self.artifacts.join(format!("{name}.mac"))
        }

        /// The keyed digest of artifact `name` with these bytes: the name is covered, so
        /// an artifact and its digest moved to another module's name do not verify.
        fn digest(&self, name: &str, bytes: &[u8]) -> String {
            hex(&hmac(&self.key, &[name.as_bytes(), b"\0", bytes]))
        }

        /// Where the stamp of artifact `name` is recorded once it verified (see `stamps`).
        fn seen_file(&self, name: &str) -> PathBuf {
            self.artifacts.join(format!("{name}.seen"))
        }

        /// Where the digest of the large component file of `stamp` is recorded.
        fn digest_record(&self, stamp: &Stamp) -> PathBuf {
            self.digests
                .join(format!("{}-{}", stamp.dev(), stamp.ino()))
        }

        /// The SHA-256 recorded for the component file of `stamp` when it was hashed, if
        /// it is a large one and still that very file.
        pub(super) fn recorded_digest(&self, stamp: &Stamp) -> Option<[u8; 32]> {
            if stamp.len() < RECORD_DIGEST_BYTES {
                return None;
            }
            let hex = stamps::read(
                &self.key,
                &self.digest_record(stamp),
                "component",
                "sha256",
                stamp,
            )?;
            unhex(&hex)
        }

        /// The SHA-256 of `bytes`, recorded (see `recorded_digest`) when they are the
        /// whole of a large component file that has settled (`seen`: its stamp and when
        /// it was taken, before the bytes were read).
        pub(super) fn component_digest(
            &self,
            bytes: &[u8],
            seen: Option<(Stamp, SystemTime)>,
        ) -> [u8; 32] {
            let digest: [u8; 32] = Sha256::digest(bytes).into();
            if let Some((stamp, now)) = seen
                && stamp.len() >= RECORD_DIGEST_BYTES
                && stamp.settled(now)
                && private_dir(&self.digests).is_ok()
            {
                stamps::write(
                    &self.key,
                    &self.digest_record(&stamp),
                    "component",
                    "sha256",
                    &stamp,
                    &hex(&digest),
                );
            }
            digest
        }

        /// The path of artifact `name` if it is there and its digest verifies. Files only
        /// this user can write, in a directory only this user can write: what a worker
        /// maps afterwards is what was verified here. An artifact verified before is not
        /// read again while it is the very file that verified (its stamp recorded then).
        pub(super) fn verified(&self, name: &str) -> Option<PathBuf> {
            let path = self.artifact(name);
            let file = open_own(&path).ok()?;
            let (stamp, now) = stamps::of_file(&file)?;
            let seen = self.seen_file(name);
            let known = stamps::read(&self.key, &seen, "artifact", name, &stamp).is_some();
            if !known && !self.digest_verifies(name, &path, &file) {
                tracing::warn!(
                    "the compiled artifact {} does not match its digest: compiling it again",
                    path.display()
                );
                return None;
            }
            if !known && stamp.settled(now) {
                stamps::write(&self.key, &seen, "artifact", name, &stamp, "verified");
            }
            // Its last use, for eviction: the digest file's time (the artifact's own is
            // left alone, as fork servers tell a replaced artifact by it, and its stamp
            // has its change time).
            let _ = File::options()
                .write(true)
                .open(self.digest_file(name))
                .and_then(|f| f.set_modified(SystemTime::now()));
            Some(path)
        }

        /// Whether the artifact `name`, open as `file`, matches its keyed digest.
        fn digest_verifies(&self, name: &str, path: &Path, file: &File) -> bool {
            // Mapped, not read: an interpreter's artifact is tens of MiB.
            let Some(mapped) = Mapped::file(file) else {
                return false;
            };
            let mut stored = String::new();
            if open_own(&self.digest_file(name))
                .and_then(|mut f| f.read_to_string(&mut stored))
                .is_err()
            {
                tracing::debug!("no digest for {}", path.display());
                return false;
            }
            let want = self.digest(name, mapped.bytes());
            // Compared in full whatever differs (no early exit to time).
            stored.len() == want.len()
                && stored
                    .bytes()
                    .zip(want.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        }

        /// Stores artifact `name` and its digest; then clears what killed writes left and
        /// evicts the least recently used artifacts over the bound. Returns its path.
        pub(super) fn store(&self, name: &str, compiled: &[u8]) -> Result<PathBuf> {
            let path = self.artifact(name);
            write_atomically(&path, compiled)?;
            write_atomically(
                &self.digest_file(name),
                self.digest(name, compiled).as_bytes(),
            )?;
            self.tidy(name);
            Ok(path)
        }

        /// Removes stale temporary files, and the least recently used artifacts (never
        /// `keep`) while the artifacts take more than the bound.
        fn tidy(&self, keep: &str) {
            let Ok(entries) = fs::read_dir(&self.artifacts) else {
                return;
            };
            let now = SystemTime::now();
            let mut artifacts = Vec::new();
            let mut total = 0u64;
            for entry in entries.flatten() {
                let file = entry.file_name();
                let file = file.to_string_lossy();
                let Ok(meta) = entry.metadata() else {
                    continue;
                };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if file.starts_with(".tmp-") {
                    if age > STALE_TEMP {
                        let _ = fs::remove_file(entry.path());
                    }
                    continue;
                }
                if let Some(name) = file.strip_suffix(".seen")
                    && !self.artifact(name).exists()
                {
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                let Some(name) = file.strip_suffix(".cwasm") else {
                    continue;
                };
                total = total.saturating_add(meta.len());
                if name != keep {
                    let used = fs::metadata(self.digest_file(name))
                        .and_then(|m| m.modified())
                        .or_else(|_| meta.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    artifacts.push((used, name.to_string(), meta.len()));
                }
            }
            artifacts.sort();
            for (_, name, len) in artifacts {
                if total <= self.max_bytes {
                    break;
                }
                if fs::remove_file(self.artifact(&name)).is_ok() {
                    total -= len;
                }
                let _ = fs::remove_file(self.digest_file(&name));
                let _ = fs::remove_file(self.seen_file(&name));
            }
            // The components' digests: a few hundred bytes each, rewritten whenever their
            // file changes; those untouched for long go (the next load hashes again).
            for entry in fs::read_dir(&self.digests).into_iter().flatten().flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_some_and(|age| age > STALE_DIGEST);
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }
}
