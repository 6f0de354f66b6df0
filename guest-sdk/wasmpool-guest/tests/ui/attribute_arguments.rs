use wasmpool_guest::task;

#[task(name = "sq")]
fn square(x: u64) -> u64 {
    x * x
}

#[task(fallible, infallible)]
fn both() -> Result<u64, String> {
    Ok(1)
}

fn main() {}
