//! Seed 002, "自定义类" and "deamon": `MyProcess(loop)` with a `run()` that prints its pid and
//! loop count once a second, in three variants:
//!
//! - `plain`: three processes (2, 3 and 4 loops) run side by side;
//! - `daemon`: the same as daemons; the parent ends at once, and its daemons with it;
//! - `daemon-join`: daemons, each joined before the next starts, so they run one by one.
//!
//! `cargo run -p wasmpool --example seed_my_process -- [plain|daemon|daemon-join]`

use serde::Serialize;
use wasmpool::{Module, Process};

/// The seed's `MyProcess(loop)`: the guest task `my_process` takes it as its argument.
#[derive(Serialize)]
struct MyProcess {
    r#loop: u32,
}

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let variant = std::env::args().nth(1).unwrap_or_else(|| "plain".into());
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let mut started = Vec::new();
    for i in 2..5 {
        let p = Process::new(&module, "my_process", &(MyProcess { r#loop: i },))?
            .with_daemon(variant != "plain");
        p.start()?;
        if variant == "daemon-join" {
            p.join()?;
        }
        started.push(p);
    }
    if variant != "plain" {
        println!("Main process Ended!");
    }
    // Dropping the handles: daemons are terminated, the others are waited for.
    Ok(())
}
