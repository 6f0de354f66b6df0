//! Seed 004, "数据不共享实例": each child changes its own copy of `sh_dock_code`; the
//! parent's stays `[31, 32, 33, 34]`.
//!
//! `cargo run -p wasmpool --example seed_unshared`

use wasmpool::{Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let sh_dock_code = [31, 32, 33, 34];
    println!("主进程:{}, 父进程:{}", std::process::id(), parent_pid());
    let mut tasks = Vec::new();
    for v in [100u64, 200, 300] {
        let p = Process::new(&module, "process_task_unshared", &(v,))?;
        p.start()?;
        tasks.push(p);
    }
    for p in &tasks {
        p.join()?;
    }
    println!("sh_dock_code is {sh_dock_code:?} ");
    Ok(())
}

fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
