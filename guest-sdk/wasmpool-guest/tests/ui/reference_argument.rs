use wasmpool_guest::task;

#[task]
fn shout(text: &str) -> String {
    text.to_uppercase()
}

fn main() {}
