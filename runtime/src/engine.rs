//! The wasmtime configurations shared by the host (which compiles) and the workers (which
//! only deserialize): the two must agree on everything the compiled code depends on, or an
//! artifact will not load.
//!
//! There are two such configurations: the plain engine every pool and process uses by default, and a metered
//! one that counts fuel (`Config::consume_fuel`). Fuel changes the compiled code (a counter
//! update in every basic block) and costs speed, so it is compiled, loaded and paid for only
//! by pools and processes built with a fuel limit.
//!
//! The wasm stack limit is an engine setting too, but one the compiled code does not depend
//! on: a worker makes one engine per stack limit its tasks ask for, and loads the same
//! artifact into it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use wasmtime::{Config, Engine, OptLevel};

use crate::function_cache::FunctionCache;
use crate::protocol::Limits;

/// How often a worker advances the epoch: the resolution of time limits.
pub(crate) const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

fn config(metered: bool, stack_bytes: u64) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Read when a call enters wasm, not compiled into the code: an artifact loads into
    // engines that differ only in it, which is how each task gets its own stack limit.
    let stack = usize::try_from(stack_bytes).unwrap_or(usize::MAX);
    config.max_wasm_stack(stack);
    // Fibers are not used (calls are synchronous), but wasmtime insists that their stacks
    // could hold the wasm stack limit too.
    config.async_stack_size(stack.saturating_add(ASYNC_STACK_MARGIN));
    // Time limits: the worker's ticker advances the epoch; a store past its deadline traps.
    config.epoch_interruption(true);
    // Fuel limits: deterministic CPU metering, for the engine that asks for it only.
    config.consume_fuel(metered);
    config
}

/// Every engine this worker process has made, by (metered, stack limit in bytes). A worker
/// process serves one runtime, so its engines are the process's.
static ENGINES: Mutex<Vec<(bool, u64, &'static Engine)>> = Mutex::new(Vec::new());

/// The engines a runtime compiles with, plain and metered (made the first time each is
/// asked for), and the function cache they share.
pub(crate) struct Engines {
    made: Mutex<[Option<Engine>; 2]>,
    functions: Arc<FunctionCache>,
}

impl Engines {
    /// The engines of a runtime whose compile cache is `cache_dir`.
    pub fn new(cache_dir: &Path) -> Engines {
        Engines {
            made: Mutex::default(),
            functions: Arc::new(FunctionCache::new(cache_dir)),
        }
    }

    /// The engine with the default stack limit, plain or metered: the one that compiles.
    /// It looks every function up in the function cache first (the code is the same as
    /// without it, so workers' engines, which never compile, need no cache).
    pub fn compiling(&self, metered: bool) -> Engine {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made[usize::from(metered)]
            .get_or_insert_with(|| {
                let mut config = config(metered, Limits::default().stack_bytes);
                let engine = config
                    .enable_incremental_compilation(self.functions.clone())
                    .and_then(|config| Engine::new(config));
                engine.unwrap_or_else(|e| {
                    panic!("wasmtime rejected wasmpool's engine configuration: {e}")
                })
            })
            .clone()
    }

    /// The function cache the compiling engines use.
    pub fn functions(&self) -> &FunctionCache {
        &self.functions
    }
}

/// Room for host frames on an async stack beyond the wasm stack limit (wasmtime's default
/// async stack is 2 MiB for a 512 KiB wasm stack).
const ASYNC_STACK_MARGIN: usize = 1536 << 10;

/// The worker process's engine, plain or metered, with this stack limit. Each is made the first
/// time it is asked for (and kept: a worker meets few distinct limits), so a process that
/// never meters fuel never builds the metered one.
pub(crate) fn engine_with(metered: bool, stack_bytes: u64) -> Result<&'static Engine, String> {
    let mut engines = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, engine)) = engines
        .iter()
        .find(|(m, s, _)| *m == metered && *s == stack_bytes)
    {
        return Ok(engine);
    }
    let engine = Engine::new(&config(metered, stack_bytes))
        .map_err(|e| format!("wasmtime rejected the engine configuration: {e:#}"))?;
    let engine: &'static Engine = Box::leak(Box::new(engine));
    engines.push((metered, stack_bytes, engine));
    Ok(engine)
}

/// Advances the epoch of every engine made so far by `ticks` ticks of every time limit.
pub(crate) fn tick_all(ticks: u128) {
    let engines = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    for (_, _, engine) in engines.iter() {
        for _ in 0..ticks {
            engine.increment_epoch();
        }
    }
}
