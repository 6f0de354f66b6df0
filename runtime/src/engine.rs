//! The wasmtime configurations shared by the host (which compiles) and the workers (which
//! only deserialize): the two must agree on everything the compiled code depends on, or an
//! artifact will not load.
//!
//! Two settings change the compiled code, so an artifact is compiled for one [`EngineKind`]
//! and loads only into an engine of that kind:
//! - *metered*: counting fuel (`Config::consume_fuel`), a counter update in every basic
//!   block, for pools and processes built with a fuel limit;
//! - *interruptible*: checking the epoch (`Config::epoch_interruption`) at every function
//!   entry and loop back edge, so a task past its time limit traps where it is. For pools and
//!   processes built with a time limit. The check costs: an interpreter (CPython in a Python
//!   guest) runs about a third faster without it. A time limit given later to a worker that
//!   does not check (a submission's, through `Pool::with_limits`) is enforced by its
//!   watchdog, which answers the call and ends the worker (see `worker/watchdog.rs`).
//!
//! Each is compiled, loaded and paid for only by the pools and processes that ask for it.
//!
//! The wasm stack limit is an engine setting too, but one the compiled code does not depend
//! on: a worker makes one engine per stack limit its tasks ask for, and loads the same
//! artifact into it.

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use wasmtime::{Config, Engine, OptLevel};

use crate::function_cache::FunctionCache;
use crate::protocol::Limits;

/// How often a worker advances the epoch: the resolution of time limits.
pub(crate) const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

/// The code-changing settings of an engine (see the module's doc): which artifact of a module
/// a worker loads, and which engine it loads it into.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct EngineKind {
    /// Counts fuel, for fuel limits.
    pub metered: bool,
    /// Checks the epoch, so wasm code stops at its time limit.
    pub interruptible: bool,
}

impl EngineKind {
    /// Neither: the fastest code, what a pool or process without limits runs.
    pub const PLAIN: EngineKind = EngineKind {
        metered: false,
        interruptible: false,
    };

    /// The kind for workers whose own limits are `limits`: metered with a fuel limit,
    /// interruptible with a time limit.
    pub fn for_limits(limits: &Limits) -> EngineKind {
        EngineKind {
            metered: limits.fuel.is_some(),
            interruptible: limits.timeout.is_some(),
        }
    }

    /// Its index among the four kinds.
    fn index(self) -> usize {
        usize::from(self.metered) | usize::from(self.interruptible) << 1
    }
}

fn config(kind: EngineKind, stack_bytes: u64) -> Config {
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
    config.epoch_interruption(kind.interruptible);
    // Fuel limits: deterministic CPU metering, for the engine that asks for it only.
    config.consume_fuel(kind.metered);
    // Function tables filled at instantiation, so an indirect call does not check whether
    // its entry was filled yet: an interpreter makes one for nearly every operation
    // (CPython's slots and vectorcalls), and the seeds' countdown ran ~3% faster in the
    // Python guest (0.352 s against 0.362, three pairs side by side). Filling costs an
    // instance a pointer per table entry, once: far below its instantiation.
    config.table_lazy_init(false);
    config
}

/// Every engine this worker process has made, by (kind, stack limit in bytes). A worker
/// process serves one runtime, so its engines are the process's.
static ENGINES: Mutex<Vec<(EngineKind, u64, &'static Engine)>> = Mutex::new(Vec::new());

/// The engines a runtime compiles with, one per [`EngineKind`] (made the first time each
/// is asked for), and the function cache they share.
pub(crate) struct Engines {
    made: Mutex<[Option<Engine>; 4]>,
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

    /// The engine of `kind` with the default stack limit: the one that compiles.
    /// It looks every function up in the function cache first (the code is the same as
    /// without it, so workers' engines, which never compile, need no cache).
    pub fn compiling(&self, kind: EngineKind) -> Engine {
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        made[kind.index()]
            .get_or_insert_with(|| {
                let mut config = config(kind, Limits::default().stack_bytes);
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

/// The worker process's engine of `kind` with this stack limit. Each is made the first time
/// it is asked for (and kept: a worker meets few distinct limits), so a process that never
/// meters fuel never builds a metered one.
pub(crate) fn engine_with(kind: EngineKind, stack_bytes: u64) -> Result<&'static Engine, String> {
    let mut engines = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, engine)) = engines
        .iter()
        .find(|(k, s, _)| *k == kind && *s == stack_bytes)
    {
        return Ok(engine);
    }
    let engine = Engine::new(&config(kind, stack_bytes))
        .map_err(|e| format!("wasmtime rejected the engine configuration: {e:#}"))?;
    let engine: &'static Engine = Box::leak(Box::new(engine));
    engines.push((kind, stack_bytes, engine));
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
