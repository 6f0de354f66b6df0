//! Seed 002, "Pool": with `Pool(processes=3)` and four 3-second tasks,
//!
//! - `async` (default): `apply_async`; "Started processes" at once, three run together;
//! - `sync`: `apply` blocks, so the tasks run one after another before "Started processes";
//! - `map`: `pool.map(job, range(10))` prints the list of squares.
//!
//! `cargo run -p wasmpool --example seed_pool_blocking -- [async|sync|map]`

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let variant = std::env::args().nth(1).unwrap_or_else(|| "async".into());
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let pool = Pool::new(&module, 3)?;
    if variant == "map" {
        let results: Vec<i64> = pool.map("job", 0..10i64)?;
        println!("{results:?}");
        return Ok(());
    }
    for i in 0..4u32 {
        if variant == "sync" {
            pool.apply::<_, ()>("function", &(i,))?;
        } else {
            pool.apply_async::<_, ()>("function", &(i,))?;
        }
    }
    println!("Started processes");
    pool.close();
    pool.join()?;
    println!("Subprocess done.");
    Ok(())
}
