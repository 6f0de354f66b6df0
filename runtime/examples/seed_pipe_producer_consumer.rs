//! Seed 004, "Pipe 实现生产者消费者模型": the producer sends five items and closes its
//! end; the consumer prints them and stops at end of file, once every holder of the sending
//! end (producer, consumer, parent) has closed it.
//!
//! `cargo run -p wasmpool --example seed_pipe_producer_consumer`

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let (conn1, conn2) = Manager::new().pipe::<String>(true);
    let data = "process pipe";
    let p_t1 = Process::new(&module, "pipe_consumer", &(data, (&conn1, &conn2)))?;
    let p_t2 = Process::new(&module, "pipe_producer", &((&conn1, &conn2),))?;
    p_t1.start()?;
    p_t2.start()?;
    conn1.close()?;
    conn2.close()?;
    // Python joins non-daemon children at exit; dropping the handles does the same.
    Ok(())
}
