use wasmpool_guest::task;

struct Opaque;

#[task]
fn take(o: Opaque) -> u64 {
    let _ = o;
    1
}

fn main() {}
