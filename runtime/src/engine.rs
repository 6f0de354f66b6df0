//! The wasmtime configuration shared by the host (which compiles) and the workers (which
//! only deserialize): the two must agree exactly, or an artifact will not load.

use std::sync::OnceLock;

use wasmtime::{Config, Engine, OptLevel};

/// The wasm stack a guest may use before it gets a "stack overflow" trap.
pub(crate) const MAX_WASM_STACK: usize = 1 << 20;

/// How often a worker advances the epoch: the resolution of time limits.
pub(crate) const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

fn config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.max_wasm_stack(MAX_WASM_STACK);
    // Time limits: the worker's ticker advances the epoch; a store past its deadline traps.
    config.epoch_interruption(true);
    config
}

/// The process-wide engine.
pub(crate) fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        Engine::new(&config())
            .unwrap_or_else(|e| panic!("wasmtime rejected wasmpool's engine configuration: {e}"))
    })
}
