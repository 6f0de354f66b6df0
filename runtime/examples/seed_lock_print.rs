//! Seed 002, "Lock": five children (10 to 14 lines each) print `Pid: … LoopCount: …` a
//! tenth of a second apart, each line under a shared lock.
//!
//! `cargo run -p wasmpool --example seed_lock_print`

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let lock = Manager::new().lock();
    let mut children = Vec::new();
    for i in 10u32..15 {
        let p = Process::new(&module, "lock_print", &(i, &lock))?;
        p.start()?;
        children.push(p);
    }
    // Python joins non-daemon children at exit; dropping the handles does the same.
    Ok(())
}
