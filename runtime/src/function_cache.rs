//! The compile cache of single functions: Cranelift's incremental cache
//! (`Config::enable_incremental_compilation`), kept in `<cache_dir>/functions`.
//!
//! A component never compiled before still shares most of its functions with others: every
//! componentize-py component carries the same CPython, whatever the Python project. Cranelift
//! asks this store for each function's machine code by a digest of the function's IR, and
//! hands it each function it had to compile. A compile's new functions are written, when it
//! ends, as one pack file; every pack is read when the next compile starts (and dropped
//! when it ends).
//!
//! Entries are machine code, as trusted as the artifacts beside them: each carries a keyed
//! digest (HMAC-SHA256 under the artifact cache's key) of its function digest and its
//! bytes, verified before Cranelift sees it. An entry that fails is ignored (the function
//! is compiled again), as is a pack not this user's own. Packs are kept, as artifacts are,
//! under `$WASMPOOL_CACHE_MAX_MIB`, the least recently used evicted first.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use crate::module::cache_files::{
    KEY_BYTES, STALE_TEMP, hmac, key, max_bytes, open_own, write_atomically,
};

/// The first bytes of a pack: its format.
const MAGIC: &[u8] = b"wasmpool-function-pack-1\n";
/// A record's header: the function digest, the value's length, the keyed digest.
const DIGEST: usize = 32;
const HEADER: usize = DIGEST + 4 + 32;
/// Kept apart from the artifacts' keyed digests (which cover a hex name first).
const DOMAIN: &[u8] = b"function\0";

/// How much a runtime's compiles reused: functions whose machine code came from the
/// function cache, and functions compiled (and added to it).
///
/// A project that shares its interpreter with one compiled before (two Python guests) reuses
/// nearly all of its functions:
///
/// ```no_run
/// let runtime = wasmpool::Runtime::builder().build()?;
/// runtime.load("examples/py-hello/hello.py")?;
/// let first = runtime.compile_stats();
/// runtime.load("examples/py-testkit/testkit.py")?;
/// let second = runtime.compile_stats();
/// println!(
///     "the second reused {} functions and compiled {}",
///     second.functions_reused - first.functions_reused,
///     second.functions_compiled - first.functions_compiled,
/// );
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Functions whose compiled code was found in the cache (and verified).
    pub functions_reused: u64,
    /// Functions Cranelift compiled.
    pub functions_compiled: u64,
}

/// One runtime's function cache: the [`wasmtime::CacheStore`] its compiling engines use.
pub(crate) struct FunctionCache {
    /// The runtime's cache directory (which holds the key).
    root: PathBuf,
    /// `<root>/functions`, where the packs are.
    dir: PathBuf,
    state: Mutex<State>,
    reused: AtomicU64,
    compiled: AtomicU64,
}

impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCache")
            .field("dir", &self.dir)
            .finish()
    }
}

#[derive(Default)]
struct State {
    /// Compiles under way (sessions not yet ended).
    active: usize,
    loaded: Option<Loaded>,
}

/// The packs, read for the compiles under way, and what they added.
struct Loaded {
    /// `None`: the cache cannot be used (no key); nothing is found or kept.
    key: Option<[u8; KEY_BYTES]>,
    packs: Vec<Pack>,
    /// Function digest to where its entries are: (pack, record offset). Several if more
    /// than one pack has it (one may fail to verify).
    index: HashMap<[u8; DIGEST], Vec<(usize, usize)>>,
    /// Functions compiled since they were read, to be written as a new pack.
    pending: HashMap<[u8; DIGEST], Vec<u8>>,
}

struct Pack {
    path: PathBuf,
    data: Vec<u8>,
    /// Whether one of its entries was used (its time is then set: eviction's last use).
    used: bool,
}

/// The parts of the record at `at` in `data`: digest, keyed digest, value.
fn record(data: &[u8], at: usize) -> Option<(&[u8], &[u8], &[u8])> {
    let header = data.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[DIGEST..DIGEST + 4].try_into().ok()?) as usize;
    let value = data.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    Some((&header[..DIGEST], &header[DIGEST + 4..], value))
}

fn entry_mac(key: &[u8; KEY_BYTES], digest: &[u8], value: &[u8]) -> [u8; 32] {
    hmac(key, &[DOMAIN, digest, value])
}

/// Compares in full whatever differs (no early exit to time).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Loaded {
    fn read(root: &Path, dir: &Path) -> Loaded {
        let key = match key(root) {
            Ok(key) => Some(key),
            Err(e) => {
                tracing::warn!("the function cache is not used: {e}");
                None
            }
        };
        let mut loaded = Loaded {
            key,
            packs: Vec::new(),
            index: HashMap::new(),
            pending: HashMap::new(),
        };
        if loaded.key.is_none() {
            return loaded;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return loaded;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "pack") {
                continue;
            }
            let mut data = Vec::new();
            let Ok(mut file) = open_own(&path) else {
                continue;
            };
            if file.read_to_end(&mut data).is_err() || !data.starts_with(MAGIC) {
                continue;
            }
            let pack = loaded.packs.len();
            let mut at = MAGIC.len();
            while let Some((digest, _, value)) = record(&data, at) {
                let Ok(digest) = <[u8; DIGEST]>::try_from(digest) else {
                    break;
                };
                loaded.index.entry(digest).or_default().push((pack, at));
                at += HEADER + value.len();
            }
            loaded.packs.push(Pack {
                path,
                data,
                used: false,
            });
        }
        loaded
    }

    /// The verified value of function `digest`, if a pack or this compile has it.
    fn get(&mut self, digest: &[u8]) -> Option<Vec<u8>> {
        let key = self.key.as_ref()?;
        let digest: [u8; DIGEST] = digest.try_into().ok()?;
        if let Some(value) = self.pending.get(&digest) {
            return Some(value.clone());
        }
        for &(pack, at) in self.index.get(&digest)? {
            let Some((_, mac, value)) = record(&self.packs[pack].data, at) else {
                continue;
            };
            if same(mac, &entry_mac(key, &digest, value)) {
                let value = value.to_vec();
                self.packs[pack].used = true;
                return Some(value);
            }
            tracing::warn!(
                "an entry of the function cache {} does not match its digest: compiling the \
                 function again",
                self.packs[pack].path.display()
            );
        }
        None
    }
}

impl FunctionCache {
    /// The function cache of the compile cache in `root`.
    pub(crate) fn new(root: &Path) -> FunctionCache {
        FunctionCache {
            root: root.to_path_buf(),
            dir: root.join("functions"),
            state: Mutex::new(State::default()),
            reused: AtomicU64::new(0),
            compiled: AtomicU64::new(0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this cache's compiles reused and compiled so far.
    pub(crate) fn stats(&self) -> CompileStats {
        CompileStats {
            functions_reused: self.reused.load(Ordering::Relaxed),
            functions_compiled: self.compiled.load(Ordering::Relaxed),
        }
    }

    /// Starts a compile: the packs are read (if no other compile has), and kept until
    /// the session ends, when what it compiled is written as pack `name`.
    pub(crate) fn session(&self, name: &str) -> Session<'_> {
        let mut state = self.state();
        state.active += 1;
        if state.loaded.is_none() {
            // The directory is made (private) before the key is read: neither is trusted
            // if it is not this user's own.
            let usable = crate::module::private_dir(&self.dir).is_ok();
            let mut loaded = Loaded::read(&self.root, &self.dir);
            if !usable {
                loaded.key = None;
            }
            state.loaded = Some(loaded);
        }
        Session {
            cache: self,
            name: name.to_string(),
        }
    }

    /// Ends a compile: writes what was compiled since the packs were read, sets the time
    /// of the packs used, and lets the packs go if no other compile is under way.
    fn end(&self, name: &str) {
        let (pending, used, key) = {
            let mut state = self.state();
            state.active = state.active.saturating_sub(1);
            let last = state.active == 0;
            let Some(loaded) = state.loaded.as_mut() else {
                return;
            };
            let pending = std::mem::take(&mut loaded.pending);
            let used: Vec<PathBuf> = loaded
                .packs
                .iter_mut()
                .filter_map(|p| std::mem::take(&mut p.used).then(|| p.path.clone()))
                .collect();
            let key = loaded.key;
            if last {
                state.loaded = None;
            } else if let Some(loaded) = state.loaded.as_mut() {
                // Another compile goes on: it still finds these.
                loaded.pending = pending.clone();
            }
            (pending, used, key)
        };
        let Some(key) = key else {
            return;
        };
        for path in used {
            let _ = File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
        }
        if pending.is_empty() {
            return;
        }
        let size: usize = pending.values().map(|v| HEADER + v.len()).sum();
        let mut data = Vec::with_capacity(MAGIC.len() + size);
        data.extend_from_slice(MAGIC);
        for (digest, value) in &pending {
            let Ok(len) = u32::try_from(value.len()) else {
                continue;
            };
            data.extend_from_slice(digest);
            data.extend_from_slice(&len.to_le_bytes());
            data.extend_from_slice(&entry_mac(&key, digest, value));
            data.extend_from_slice(value);
        }
        // Named apart from every other pack, even one of the same module compiled again.
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = self
            .dir
            .join(format!("{name}-{}-{stamp}.pack", std::process::id()));
        if let Err(e) = write_atomically(&path, &data) {
            tracing::warn!("cannot keep compiled functions: {e}");
            return;
        }
        if let Ok(max) = max_bytes() {
            self.tidy(&path, max);
        }
    }

    /// Removes stale temporary files, and the least recently used packs (never `keep`)
    /// while the packs take more than `max` bytes.
    fn tidy(&self, keep: &Path, max: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut total = 0u64;
        let mut packs = Vec::new();
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let path = entry.path();
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                if now.duration_since(modified).unwrap_or_default() > STALE_TEMP {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "pack") {
                continue;
            }
            total = total.saturating_add(meta.len());
            if path != keep {
                packs.push((modified, path, meta.len()));
            }
        }
        packs.sort();
        for (_, path, len) in packs {
            if total <= max {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.state().loaded.as_mut()?.get(key);
        if found.is_some() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let Some(loaded) = state.loaded.as_mut() else {
            return false;
        };
        let Ok(digest) = <[u8; DIGEST]>::try_from(key) else {
            return false;
        };
        if loaded.key.is_none() {
            return false;
        }
        loaded.pending.insert(digest, value);
        true
    }
}

/// A compile under way (see [`FunctionCache::session`]): ended when dropped.
pub(crate) struct Session<'a> {
    cache: &'a FunctionCache,
    name: String,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.cache.end(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wasmtime::CacheStore;

    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wasmpool-fncache-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        crate::module::private_dir(&dir).expect("cache dir");
        dir
    }

    /// A core module with one function `f` that answers 42, compiled with `cache`.
    fn module_bytes() -> Vec<u8> {
        vec![
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
            0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // type: () -> i32
            0x03, 0x02, 0x01, 0x00, // func 0: type 0
            0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00, // export "f" = func 0
            0x0a, 0x06, 0x01, 0x04, 0x00, 0x41, 0x2a, 0x0b, // code: i32.const 42
        ]
    }

    fn compile_and_call(cache: &Arc<FunctionCache>) -> i32 {
        let mut config = wasmtime::Config::new();
        config
            .enable_incremental_compilation(cache.clone())
            .expect("incremental compilation");
        let engine = wasmtime::Engine::new(&config).expect("engine");
        let module = {
            let _session = cache.session("test");
            wasmtime::Module::new(&engine, module_bytes()).expect("compiles")
        };
        let mut store = wasmtime::Store::new(&engine, ());
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).expect("instance");
        let f = instance
            .get_typed_func::<(), i32>(&mut store, "f")
            .expect("f");
        f.call(&mut store, ()).expect("call")
    }

    /// The one pack in the cache `dir`.
    fn only_pack(dir: &Path) -> PathBuf {
        let packs: Vec<PathBuf> = fs::read_dir(dir.join("functions"))
            .expect("the functions directory")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pack"))
            .collect();
        assert_eq!(packs.len(), 1, "{packs:?}");
        packs[0].clone()
    }

    #[test]
    fn a_second_compile_reuses_the_first_ones_functions() {
        let dir = temp_dir("reuse");
        let first = Arc::new(FunctionCache::new(&dir));
        assert_eq!(compile_and_call(&first), 42);
        let made = first.stats();
        assert_eq!(made.functions_reused, 0);
        assert!(made.functions_compiled >= 1, "{made:?}");
        // A new runtime (a new process) reads what the first wrote.
        let second = Arc::new(FunctionCache::new(&dir));
        assert_eq!(compile_and_call(&second), 42);
        assert_eq!(
            second.stats(),
            CompileStats {
                functions_reused: made.functions_compiled,
                functions_compiled: 0
            }
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tampered_entry_is_not_used_and_the_function_is_compiled_again() {
        let dir = temp_dir("tamper");
        let first = Arc::new(FunctionCache::new(&dir));
        assert_eq!(compile_and_call(&first), 42);
        let made = first.stats().functions_compiled;
        // Flip the last byte of every entry's code: still well-formed, but not what was
        // stored.
        let pack = only_pack(&dir);
        let mut data = fs::read(&pack).expect("the pack was written");
        let mut at = MAGIC.len();
        let mut flipped = 0;
        while let Some((_, _, value)) = record(&data, at) {
            let end = at + HEADER + value.len();
            data[end - 1] ^= 0xff;
            flipped += 1;
            at = end;
        }
        assert_eq!(flipped, made);
        fs::write(&pack, &data).expect("tamper");
        let second = Arc::new(FunctionCache::new(&dir));
        assert_eq!(compile_and_call(&second), 42, "compiled again, correctly");
        assert_eq!(
            second.stats(),
            CompileStats {
                functions_reused: 0,
                functions_compiled: made
            }
        );
        // The direct look-up refuses it too, and a good copy written since is found.
        {
            let _session = second.session("look");
            let (digest, _, _) = record(&data, MAGIC.len()).expect("a record");
            assert!(second.get(digest).is_some(), "the new pack has it");
        }
        fs::remove_dir_all(dir.join("functions")).expect("rm");
        crate::module::private_dir(&dir.join("functions")).expect("mkdir");
        let third = FunctionCache::new(&dir);
        fs::write(dir.join("functions/tampered.pack"), &data).expect("write");
        let _session = third.session("look");
        let (digest, _, _) = record(&data, MAGIC.len()).expect("a record");
        assert!(third.get(digest).is_none(), "a tampered entry is ignored");
        drop(_session);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Compiles `wat` with `engine`, its functions looked up in `cache`.
    fn compile_wat(engine: &wasmtime::Engine, cache: &FunctionCache, wat: &str) {
        let _session = cache.session("test");
        let bytes = wat::parse_str(wat).expect("wat");
        wasmtime::Module::new(engine, bytes).expect("compiles");
    }

    /// An engine compiling one function at a time (so on one compiler context), with `cache`.
    fn serial_engine(cache: &Arc<FunctionCache>) -> wasmtime::Engine {
        let mut config = wasmtime::Config::new();
        config.parallel_compilation(false);
        config
            .enable_incremental_compilation(cache.clone())
            .expect("incremental compilation");
        wasmtime::Engine::new(&config).expect("engine")
    }

    /// A function's cache key must not depend on what its compiler context compiled before.
    /// Wasmtime compiles a module's functions in order, each exported one followed by its
    /// trampoline (which calls it with a `try_call`, so has an exception table), and keeps
    /// the compiler context for the next; the trampoline's exception table was left in it,
    /// and Cranelift hashed it into the next function's key, so a Python project compiled
    /// again missed ~6% of its functions (vendor/README.md has the fix).
    #[test]
    fn a_functions_key_does_not_depend_on_what_its_engine_compiled_before() {
        let dir = temp_dir("history");
        // Two functions, distinct, neither exported.
        let bodies = [1, 2]
            .map(|n| format!("(func (param i32) (result i32) local.get 0 i32.const {n} i32.add)"));
        // Each compiled just after an exported function's trampoline, on its context.
        let exported = r#"(func (export "g{n}") (param i32) (result i32) local.get 0)"#;
        let after_trampolines: String = bodies
            .iter()
            .enumerate()
            .map(|(n, body)| exported.replace("{n}", &n.to_string()) + body)
            .collect();
        let first = Arc::new(FunctionCache::new(&dir));
        compile_wat(
            &serial_engine(&first),
            &first,
            &format!("(module {after_trampolines})"),
        );
        // A new engine (a new process) compiling the two alone, each on a fresh context
        // or on the other's, finds both.
        let second = Arc::new(FunctionCache::new(&dir));
        compile_wat(
            &serial_engine(&second),
            &second,
            &format!("(module {})", bodies.concat()),
        );
        let stats = second.stats();
        assert!(
            stats.functions_compiled == 0 && stats.functions_reused >= bodies.len() as u64,
            "{stats:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn packs_over_the_bound_are_evicted_least_recently_used_first() {
        let dir = temp_dir("evict");
        let cache = FunctionCache::new(&dir);
        crate::module::private_dir(&cache.dir).expect("dir");
        let old = cache.dir.join("old.pack");
        let newer = cache.dir.join("newer.pack");
        let keep = cache.dir.join("keep.pack");
        for p in [&old, &newer, &keep] {
            fs::write(p, vec![0u8; 700 << 10]).expect("write");
        }
        let t = SystemTime::now();
        let at = |p: &Path, secs| {
            File::options()
                .write(true)
                .open(p)
                .and_then(|f| f.set_modified(t - std::time::Duration::from_secs(secs)))
                .expect("set time")
        };
        at(&old, 300);
        at(&newer, 100);
        at(&keep, 500);
        // 1 MiB holds one pack.
        cache.tidy(&keep, 1 << 20);
        assert!(!old.exists(), "the least recently used goes");
        assert!(!newer.exists(), "over the bound still: the next goes too");
        assert!(keep.exists(), "the pack just written stays");
        let _ = fs::remove_dir_all(&dir);
    }
}
