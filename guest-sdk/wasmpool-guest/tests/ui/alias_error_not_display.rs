use wasmpool_guest::task;

struct Opaque;

/// An alias of `Result` is fallible: its error must be `Display`, as a written-out one.
type Checked = Result<u64, Opaque>;

#[task]
fn check() -> Checked {
    Ok(1)
}

fn main() {}
