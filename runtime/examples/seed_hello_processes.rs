//! Seed 000, "进程编写代码的例子": three processes say hello and sleep a second each; the
//! parent prints the CPU count and its active children, joins them, and prints the time.
//!
//! `cargo run -p wasmpool --example seed_hello_processes`

use std::time::Instant;

use wasmpool::{Module, Process, active_children, cpu_count};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;

    let p1 = Process::new(&module, "task1", &("one",))?;
    let p2 = Process::new(&module, "task2", &("two",))?;
    let p3 = Process::new(&module, "task3", &("three",))?;

    let start = Instant::now();
    p1.start()?;
    p2.start()?;
    p3.start()?;

    println!("The number of CPU is:{}", cpu_count());
    for p in active_children() {
        println!("child p.name: {}\tp.id: {}", p.name, p.pid);
    }

    p1.join()?;
    p2.join()?;
    p3.join()?;

    println!("3 processes take {} seconds", start.elapsed().as_secs_f64());
    Ok(())
}
