//! Seed 002, "获取核心数和运行进程": a hundred processes each sleep `num * 0.1` s and print
//! their number; meanwhile the parent prints the CPU count and every active child.
//!
//! `cargo run -p wasmpool --example seed_active_children [COUNT]`

use wasmpool::{Module, Process, active_children, cpu_count};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let mut children = Vec::new();
    for i in 0..count {
        let p = Process::new(&module, "process_num", &(i,))?;
        p.start()?;
        children.push(p);
    }
    println!("CPU number:{}", cpu_count());
    for p in active_children() {
        println!("Child process name: {} id: {}", p.name, p.pid);
    }
    println!("Process Ended");
    Ok(())
}
