//! The wasmtime configurations shared by the host (which compiles) and the workers (which
//! only deserialize): the two must agree exactly, or an artifact will not load.
//!
//! There are two: the plain engine every pool and process uses by default, and a metered
//! one that counts fuel (`Config::consume_fuel`). Fuel changes the compiled code (a counter
//! update in every basic block) and costs speed, so it is compiled, loaded and paid for only
//! by pools and processes built with a fuel limit.

use std::sync::OnceLock;

use wasmtime::{Config, Engine, OptLevel};

/// The wasm stack a guest may use before it gets a "stack overflow" trap.
pub(crate) const MAX_WASM_STACK: usize = 1 << 20;

/// How often a worker advances the epoch: the resolution of time limits.
pub(crate) const EPOCH_TICK: std::time::Duration = std::time::Duration::from_millis(10);

fn config(metered: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.max_wasm_stack(MAX_WASM_STACK);
    // Time limits: the worker's ticker advances the epoch; a store past its deadline traps.
    config.epoch_interruption(true);
    // Fuel limits: deterministic CPU metering, for the engine that asks for it only.
    config.consume_fuel(metered);
    config
}

/// The process-wide engine, plain or metered. Each is made the first time it is asked for,
/// so a process that never meters fuel never builds the metered one.
pub(crate) fn engine_for(metered: bool) -> &'static Engine {
    static PLAIN: OnceLock<Engine> = OnceLock::new();
    static METERED: OnceLock<Engine> = OnceLock::new();
    let cell = if metered { &METERED } else { &PLAIN };
    cell.get_or_init(|| {
        Engine::new(&config(metered))
            .unwrap_or_else(|e| panic!("wasmtime rejected wasmpool's engine configuration: {e}"))
    })
}
