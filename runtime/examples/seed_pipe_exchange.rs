//! Seed 004, "Pipe 实现数据交互": the child greets the parent through a pipe and prints
//! the parent's answer.
//!
//! `cargo run -p wasmpool --example seed_pipe_exchange`

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let (conn1, conn2) = Manager::new().pipe::<String>(true);
    let data = 100u64;
    let p_t = Process::new(&module, "pipe_task", &(data, (&conn1, &conn2)))?;
    p_t.start()?;
    println!("{}", conn2.recv()?);
    conn2.send(&"你好子进程".to_string())?;
    println!("======================================");
    p_t.join()?;
    conn1.close()?;
    conn2.close()?;
    Ok(())
}
