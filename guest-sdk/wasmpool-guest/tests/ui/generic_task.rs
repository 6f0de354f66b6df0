use wasmpool_guest::task;

#[task]
fn identity<T>(x: T) -> T {
    x
}

fn main() {}
