//! Seed 004, "进程锁 Lock": two children each add their `data` to a shared count five
//! times, a tenth of a second apart.
//!
//! - `unlocked` (default): the read-modify-writes interleave, as in the seed's first
//!   program: updates can be lost, so the final count may fall short of 2000;
//! - `locked`: each child holds the lock for all five updates: the count goes 600, 700, …
//!   1000, then 1200 … 2000, exactly.
//!
//! `cargo run -p wasmpool --example seed_counter -- [unlocked|locked]`

use wasmpool::{Manager, Module, Process};

#[path = "common/dict_fmt.rs"]
mod dict_fmt;

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let locked = std::env::args().nth(1).as_deref() == Some("locked");
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let m = Manager::new();
    let share_data = m.dict::<dict_fmt::Key, u64>();
    share_data.set(&dict_fmt::Key::Name("count".into()), &500)?;
    let lc = m.lock();
    let mut tasks = Vec::new();
    for v in [100u64, 200] {
        let p = if locked {
            Process::new(&module, "counter_locked", &(v, &share_data, &lc))?
        } else {
            Process::new(&module, "counter_unlocked", &(v, &share_data))?
        };
        p.start()?;
        tasks.push(p);
    }
    for p in &tasks {
        p.join()?;
    }
    println!("{}", dict_fmt::python(&share_data.items()?));
    Ok(())
}
