//! Seed 001, "使用Process类创建进程": the parent prints its pid and starts four children that
//! print theirs. (No joins, as in the seed: the handles are joined as they go out of scope.)
//!
//! `cargo run -p wasmpool --example seed_run_proc`

use wasmpool::{Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    println!("Parent process {}", std::process::id());
    let children = ["1", "2", "3", "4"]
        .iter()
        .map(|name| Process::new(&module, "run_proc", &(name,)))
        .collect::<wasmpool::Result<Vec<_>>>()?;
    for p in &children {
        p.start()?;
    }
    Ok(())
}
