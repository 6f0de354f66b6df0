//! Task modules: loading, validating, compiling once into a content-addressed cache.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::bindings::TaskModulePre;
use crate::engine::engine_for;
use crate::error::{Error, Result};
use crate::protocol::Limits;
use crate::spawn::{ReadyWorker, start_worker, start_worker_with};
use crate::worker::state::State;

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
    origin: PathBuf,
    /// The component, kept to compile the metered artifact the first time fuel is asked for.
    bytes: Arc<[u8]>,
    artifact: PathBuf,
    /// The artifact compiled for the metered (fuel-counting) engine, once compiled.
    metered_artifact: Mutex<Option<PathBuf>>,
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
/// else `~/.cache/wasmpool`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WASMPOOL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("wasmpool");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".cache").join("wasmpool"),
        None => std::env::temp_dir().join("wasmpool-cache"),
    }
}

impl Module {
    /// Loads a module from a `.wasm` component file, or builds the guest Cargo project in a
    /// directory first.
    pub fn load(path: impl AsRef<Path>) -> Result<Module> {
        let path = path.as_ref();
        if path.is_dir() {
            let wasm = crate::guest_build::build(path)?;
            return Self::load_file(&wasm, path);
        }
        Self::load_file(path, path)
    }

    fn load_file(file: &Path, origin: &Path) -> Result<Module> {
        let bad = |message: String| Error::BadModule {
            path: origin.to_path_buf(),
            message,
        };
        let meta = std::fs::metadata(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        if meta.len() > MAX_MODULE_BYTES {
            return Err(bad(format!(
                "is {} bytes; the limit is {MAX_MODULE_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(file).map_err(|e| bad(format!("cannot read: {e}")))?;
        Self::from_bytes(&bytes, origin)
    }

    /// Validates and compiles a component from memory; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Module> {
        let origin = origin.as_ref().to_path_buf();
        let bad = |message: String| Error::BadModule {
            path: origin.clone(),
            message,
        };
        check_header(bytes).map_err(bad)?;
        let artifact = compile(bytes, &origin, false)?;
        Ok(Module {
            inner: Arc::new(ModuleInner {
                origin,
                bytes: Arc::from(bytes),
                artifact,
                metered_artifact: Mutex::new(None),
                tasks: Mutex::new(None),
                spare: Mutex::new(None),
                keep_spare: AtomicBool::new(true),
            }),
        })
    }

    /// Where the module came from.
    pub fn origin(&self) -> &Path {
        &self.inner.origin
    }

    /// The precompiled artifact that workers map.
    pub fn artifact(&self) -> &Path {
        &self.inner.artifact
    }

    /// The artifact for the plain or the metered engine. The metered one is compiled (or
    /// found in the cache) the first time a pool or process with a fuel limit asks for it.
    pub(crate) fn artifact_for(&self, metered: bool) -> Result<PathBuf> {
        if !metered {
            return Ok(self.inner.artifact.clone());
        }
        // Held while compiling: workers starting together wait for one compilation.
        let mut slot = self
            .inner
            .metered_artifact
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &*slot {
            return Ok(path.clone());
        }
        let path = compile(&self.inner.bytes, &self.inner.origin, true)?;
        *slot = Some(path.clone());
        Ok(path)
    }

    /// The names of the module's tasks (asked of a worker the first time, then remembered).
    pub fn tasks(&self) -> Result<Vec<String>> {
        if let Some(tasks) = self.known_tasks() {
            return Ok(tasks);
        }
        let worker = self.ready_worker("wasmpool-tasks", false, &Limits::default())?;
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

    /// A worker with this module loaded on the plain or the metered engine, with the stack
    /// limit of `limits`: the warm spare if there is one of that kind, else a new one, whose
    /// first instance is made under `limits`.
    pub(crate) fn ready_worker(
        &self,
        name: &str,
        metered: bool,
        limits: &Limits,
    ) -> Result<ReadyWorker> {
        self.ready_worker_with(name, metered, limits, &[])
    }

    /// As [`ready_worker`](Module::ready_worker), with the encoded frames `first` already
    /// sent to the worker (see [`start_worker_with`]).
    pub(crate) fn ready_worker_with(
        &self,
        name: &str,
        metered: bool,
        limits: &Limits,
        first: &[u8],
    ) -> Result<ReadyWorker> {
        let stack_bytes = limits.stack_bytes;
        let spare = self
            .inner
            .spare
            .lock()
            .ok()
            .and_then(|mut s| s.take_if(|w| w.is_kind(metered, stack_bytes)))
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
            None => start_worker_with(&self.artifact_for(metered)?, name, metered, limits, first)?,
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
    /// The spare runs on the plain engine; a process with a fuel limit starts its own.
    pub fn prepare_spare(&self) -> Result<()> {
        if self
            .inner
            .spare
            .lock()
            .map(|s| s.as_ref().is_some_and(|w| w.is_kind(false, DEFAULT_STACK)))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let worker = start_worker(&self.inner.artifact, "spare", false, &Limits::default())?;
        self.put_spare(worker);
        Ok(())
    }

    /// Starts a spare worker in the background, so the next `Process::start` is warm: on the
    /// engine the last one used (`metered`, `stack_bytes`), as the next is likely to want the
    /// same.
    pub(crate) fn refill_spare(&self, metered: bool, stack_bytes: u64) {
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
                    .map(|s| s.as_ref().is_some_and(|w| w.is_kind(metered, stack_bytes)))
                    .unwrap_or(true)
                {
                    return;
                }
                let worker = module.artifact_for(metered).and_then(|artifact| {
                    let limits = Limits {
                        stack_bytes,
                        ..Limits::default()
                    };
                    start_worker(&artifact, "spare", metered, &limits)
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

    /// Writes the precompiled artifact to `out` (what `wasmpool compile` does).
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

/// Compiles `bytes` for the plain or the metered engine into the cache, unless the cache has
/// it already; returns the artifact's path.
fn compile(bytes: &[u8], origin: &Path, metered: bool) -> Result<PathBuf> {
    let bad = |message: String| Error::BadModule {
        path: origin.to_path_buf(),
        message,
    };
    let artifact = artifact_path(bytes, metered);
    if !artifact.is_file() {
        let engine = engine_for(metered);
        let component = Component::new(engine, bytes)
            .map_err(|e| bad(format!("not a valid component: {}", first_line(&e))))?;
        check_world(engine, &component).map_err(bad)?;
        let compiled = component
            .serialize()
            .map_err(|e| bad(format!("cannot serialize the compiled module: {e}")))?;
        write_atomically(&artifact, &compiled)?;
    }
    Ok(artifact)
}

fn check_world(
    engine: &wasmtime::Engine,
    component: &Component,
) -> std::result::Result<(), String> {
    let linker = crate::bindings::linker::<State>(engine).map_err(|e| e.to_string())?;
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

fn artifact_path(bytes: &[u8], metered: bool) -> PathBuf {
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine_for(metered)
        .precompile_compatibility_hash()
        .hash(&mut compat);
    let mut h = Sha256::new();
    h.update(bytes);
    h.update(compat.finish().to_le_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    if metered {
        // The engine hash covers fuel too; this keeps the two apart whatever it covers.
        h.update(b"metered");
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    cache_dir().join("artifacts").join(format!("{hex}.cwasm"))
}

fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create the cache dir {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, data)
        .map_err(|e| Error::io(format!("cannot write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}
