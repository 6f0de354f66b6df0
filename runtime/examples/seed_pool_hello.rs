//! Seed 000, "进程池的代码编写": a `Pool(processes=4)` given ten 5-second `task`s and five
//! 1-second `task2`s with `apply_async`, then `close` and `join`. Four run at a time, in
//! the order they were queued; "processes done." comes last.
//!
//! `cargo run -p wasmpool --example seed_pool_hello`

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let pool = Pool::new(&module, 4)?;
    for x in 0..10u32 {
        println!("111");
        pool.apply_async::<_, ()>("hello", &(x,))?;
    }
    for x in 0..5u32 {
        println!("222");
        pool.apply_async::<_, ()>("say", &(x,))?;
    }
    // After close, no more tasks can be queued.
    pool.close();
    pool.join()?;
    println!("processes done.");
    Ok(())
}
