//! Seed 003, "Pool": `cpu_core = 2`, three tasks A, B, C: A and B start at once, C when the
//! first of them finishes (first in, first out), then "Done.".
//!
//! `cargo run -p wasmpool --example seed_pool_fifo`

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let cpu_core = 2;
    let pool = Pool::new(&module, cpu_core)?;
    for h in ["p1", "p2", "p3"] {
        pool.apply_async::<_, ()>(h, &())?;
    }
    pool.close();
    pool.join()?;
    println!("Done.");
    Ok(())
}
