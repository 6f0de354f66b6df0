use wasmpool_guest::task;

#[task(fallible)]
fn nothing() {}

#[task(fallible)]
fn number() -> u64 {
    1
}

fn main() {}
