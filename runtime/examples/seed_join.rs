//! Seed 003, "Process" and "join方法": two children with random sleeps, joined in order; then
//! a child that sleeps two seconds, joined (its line comes before "child process end.") and
//! not joined (its line comes after).
//!
//! `cargo run -p wasmpool --example seed_join`

use wasmpool::{Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;

    println!("Parent process {}", std::process::id());
    let p1 = Process::new(&module, "proc_random", &("p1",))?;
    let p2 = Process::new(&module, "proc_random", &("p2",))?;
    println!("child processes will start.");
    p1.start()?;
    p2.start()?;
    p1.join()?;
    p2.join()?;
    println!("child processes end.");

    println!("Parent process {}", std::process::id());
    let p = Process::new(&module, "run_proc_late", &("test",))?;
    println!("child process will start.");
    p.start()?;
    p.join()?;
    println!("child process end.");

    println!("Parent process {}", std::process::id());
    let p = Process::new(&module, "run_proc_late", &("test",))?;
    println!("child process will start.");
    p.start()?;
    // p.join()
    println!("child process end.");
    Ok(())
}
