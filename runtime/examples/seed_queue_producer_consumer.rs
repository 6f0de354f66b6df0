//! Seed 004, "队列实现生产者消费者模型": a producer puts five items, the parent adds the
//! `None` sentinel once the producer is done, and the consumer prints until it sees it.
//!
//! `cargo run -p wasmpool --example seed_queue_producer_consumer`

use wasmpool::{Manager, Module, Process};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seeds"))?;
    let queue = Manager::new().queue::<Option<String>>();
    let p_t1 = Process::new(&module, "consumer", &(&queue,))?;
    let p_t2 = Process::new(&module, "producer", &(&queue,))?;
    p_t1.start()?;
    p_t2.start()?;
    p_t2.join()?; // the producer has put everything before the end signal goes in
    queue.put(&None)?;
    p_t1.join()?;
    Ok(())
}
