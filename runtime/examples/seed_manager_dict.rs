//! Seed 004, "Managers实现数据共享": three children update one Manager dict; the parent
//! prints it: `count` went from 10 to 7 and each child's cube is there.
//!
//! `cargo run -p wasmpool --example seed_manager_dict`

use wasmpool::{Manager, Module, Process};

#[path = "common/dict_fmt.rs"]
mod dict_fmt;

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let m = Manager::new();
    let share_data = m.dict::<dict_fmt::Key, u64>();
    share_data.set(&dict_fmt::Key::Name("count".into()), &10)?;
    let queue = m.queue::<u64>();
    println!("主进程:{}, 父进程:{}", std::process::id(), parent_pid());
    let mut tasks = Vec::new();
    for v in [100u64, 200, 300] {
        let p = Process::new(&module, "manager_task", &(v, &queue, &share_data))?;
        p.start()?;
        tasks.push(p);
    }
    for p in &tasks {
        p.join()?;
    }
    println!("{}", dict_fmt::python(&share_data.items()?));
    Ok(())
}

fn parent_pid() -> u32 {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() as u32 }
}
