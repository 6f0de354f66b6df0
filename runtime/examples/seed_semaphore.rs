//! Seed 004, "信号量 Semaphore": five children, at most three working at once.
//!
//! `cargo run -p wasmpool --example seed_semaphore`

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let sem = Manager::new().semaphore(3);
    let mut tasks = Vec::new();
    for v in [100u64, 200, 300, 400, 500] {
        let p = Process::new(&module, "semaphore_task", &(v, &sem))?;
        p.start()?;
        tasks.push(p);
    }
    for p in &tasks {
        p.join()?;
    }
    Ok(())
}
