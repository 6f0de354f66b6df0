//! A `map`, an `apply_async` and an error through a cluster: the hosts joined with
//! `wasmpool worker --join URL`.
//!
//! `cargo run -p wasmpool --example cluster_map -- redis://127.0.0.1:6380`

use wasmpool::{Module, Pool};

fn main() -> wasmpool::Result<()> {
    wasmpool::run_worker_if_requested();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let module = Module::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/testkit"))?;
    let pool = Pool::builder(&module).retries(1).cluster(&url).build()?;
    println!("hosts: {}", pool.hosts()?.join(", "));
    let squares: Vec<u64> = pool.map("square", 0..100_000u64)?;
    println!("sum of 100000 squares: {}", squares.iter().sum::<u64>());
    let r = pool.apply_async::<_, i64>("add", &(2, 3))?;
    println!("add(2, 3) = {}", r.get()?);
    match pool.apply::<_, u64>("fail", &("on purpose",)) {
        Ok(v) => println!("fail returned {v}?"),
        Err(e) => println!("error, as locally: {e}"),
    }
    let s = pool.stats()?;
    println!(
        "committed {}, dropped {}, redelivered {}, lost {}",
        s.committed, s.dropped, s.redelivered, s.lost
    );
    pool.close();
    pool.join()
}
