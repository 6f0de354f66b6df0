//! Seed 004, "单进程" / "守护进程" / "多进程": the `data ** 3` countdown in child processes.
//!
//! - `single`: one process, started and joined, then `--------end` and the time taken;
//! - `no-join`: the parent prints `--------end` first, the child's line comes later;
//! - `join`: the child's line comes first;
//! - `multi` (default): three processes (100, 200, 300) that report their pid and parent's.
//!
//! `cargo run -p wasmpool --example seed_countdown -- [single|no-join|join|multi]`

use std::time::Instant;

use wasmpool::{Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let variant = std::env::args().nth(1).unwrap_or_else(|| "multi".into());
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let start = Instant::now();
    match variant.as_str() {
        "single" => {
            let p = Process::new(&module, "countdown", &(100u64,))?;
            p.start()?;
            p.join()?;
        }
        "no-join" | "join" => {
            let p = Process::new(&module, "countdown_announce", &(100u64,))?;
            p.start()?;
            if variant == "join" {
                p.join()?;
            }
            println!("--------end");
            println!("-----耗时：{} ", start.elapsed().as_secs_f64());
            return Ok(());
        }
        _ => {
            println!("主进程:{}, 父进程:{}", std::process::id(), parent_pid());
            let mut tasks = Vec::new();
            for v in [100u64, 200, 300] {
                let p = Process::new(&module, "process_task", &(v,))?;
                p.start()?;
                tasks.push(p);
            }
            for p in &tasks {
                p.join()?;
            }
            return Ok(());
        }
    }
    println!("--------end");
    println!("-----耗时：{} ", start.elapsed().as_secs_f64());
    Ok(())
}

fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
