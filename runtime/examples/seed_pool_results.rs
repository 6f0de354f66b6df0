//! Seed 004, "进程池": `Pool()` (one worker per CPU) over the data 100, 200, 300:
//!
//! - `apply`: one after another; then `user_time`;
//! - `apply_async`: all at once, `close` and `join`; then `user_time`;
//! - `map`: `map(process_task, [(v, 5) ...])`;
//! - `get`: `apply_async` results printed with `get()` after `join`: 1000000, 8000000, 27000000;
//! - `map-result`: the list `map` returns;
//! - `callback` (default): `apply_async(..., callback=process_callback)`: the callback runs in
//!   this process (its pid is printed) as each result arrives, then the `get()`s.
//!
//! `cargo run -p wasmpool --example seed_pool_results -- [apply|apply_async|map|get|map-result|callback]`

use std::time::Instant;

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let variant = std::env::args().nth(1).unwrap_or_else(|| "callback".into());
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let start = Instant::now();
    let pool = Pool::builder(&module).build()?;
    let data = [100u64, 200, 300];
    println!("主进程:{}, 父进程:{}", std::process::id(), parent_pid());
    match variant.as_str() {
        "apply" => {
            for v in data {
                pool.apply::<_, u64>("pool_task", &(v,))?;
            }
        }
        "apply_async" => {
            for v in data {
                pool.apply_async::<_, u64>("pool_task", &(v,))?;
            }
            pool.close();
            pool.join()?;
        }
        "map" | "map-result" => {
            let info: Vec<(u64, u64)> = data.iter().map(|&v| (v, 5)).collect();
            let res: Vec<u64> = pool.map("pool_task_info", info)?;
            pool.close();
            pool.join()?;
            if variant == "map-result" {
                println!("{res:?}");
            }
        }
        "get" | "callback" => {
            let mut results = Vec::new();
            for v in data {
                let r = if variant == "callback" {
                    pool.apply_async_with::<_, u64, _, _>(
                        "pool_task_info",
                        &((v, 5u64),),
                        |data| {
                            println!("----------- the data is {data}");
                            println!("当前进程号为: {}", std::process::id());
                        },
                        |e| eprintln!("error: {e}"),
                    )?
                } else {
                    pool.apply_async::<_, u64>("pool_task_info", &((v, 5u64),))?
                };
                results.push(r);
            }
            pool.close();
            pool.join()?;
            for r in &results {
                println!("{}", r.get()?);
            }
        }
        other => eprintln!("unknown variant {other}"),
    }
    println!("user_time: {} ", start.elapsed().as_secs_f64());
    Ok(())
}

fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
