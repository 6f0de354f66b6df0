//! Seed 001, "使用Pool类来创建进程": a `Pool(processes=3)` runs five tasks with random sleeps;
//! the loop's lines come first, then close and join, then "all subprocesses done".
//!
//! `cargo run -p wasmpool --example seed_pool_run_task`

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    println!("Current process {}", std::process::id());
    let p = Pool::new(&module, 3)?;
    println!("-----------循环------------");
    for i in 0..5u32 {
        println!("第{i}次循环");
        p.apply_async::<_, ()>("run_task", &(i,))?;
        println!("第{i}次循环完了");
    }
    println!("waiting for all subprocesses done ...");
    println!("-----------下面是close-------------");
    p.close();
    println!("------------下面是join-----------------");
    p.join()?;
    println!("----------join完了-----------");
    println!("all subprocesses done");
    Ok(())
}
