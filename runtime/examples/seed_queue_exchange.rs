//! Seed 004, "队列实现数据交互": three children put `{data: data ** 3}` on a queue; the
//! parent joins them and prints what the queue holds.
//!
//! `cargo run -p wasmpool --example seed_queue_exchange`

use std::collections::BTreeMap;

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let queue = Manager::new().queue::<BTreeMap<u64, u64>>();
    println!("主进程:{}, 父进程:{}", std::process::id(), parent_pid());
    let mut tasks = Vec::new();
    for v in [100u64, 200, 300] {
        let p = Process::new(&module, "queue_task", &(v, &queue))?;
        p.start()?;
        tasks.push(p);
    }
    for p in &tasks {
        p.join()?;
    }
    while !queue.empty()? {
        let item = queue.get()?;
        let body: Vec<String> = item.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        println!("{{{}}}", body.join(", "));
    }
    Ok(())
}

fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
