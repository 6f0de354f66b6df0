//! A module whose memory starts large: a 300 MiB static, so its instance needs more than the
//! default memory limit (256 MiB) before any task runs. A test guest for `--memory`.

use std::sync::atomic::{AtomicU8, Ordering};

use wasmpool_guest::task;

/// Zero-initialised, so the `.wasm` stays small while its memory starts at over 300 MiB.
static BIG: [AtomicU8; 300 << 20] = [const { AtomicU8::new(0) }; 300 << 20];

/// Writes `value` at byte `at` of the static (counted from its end, wrapping) and reads it
/// back. The index is known only at run time, so the whole static is kept.
#[task]
fn touch(at: usize, value: u8) -> u8 {
    let i = BIG.len() - 1 - at % BIG.len();
    BIG[i].store(value, Ordering::Relaxed);
    BIG[i].load(Ordering::Relaxed)
}

wasmpool_guest::export_tasks!(touch);
