use wasmpool_guest::task;

#[task(name = "sq")]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {}
