//! A module whose per-instance init never returns: a test guest for running instantiation
//! and init under a task's time limit.

use wasmpool_guest::task;

/// Never reached: the init before it never returns.
#[task]
fn unreachable_task() -> u64 {
    0
}

/// Computes without end.
fn spin_forever() -> Result<(), String> {
    let mut i: u64 = 0;
    loop {
        i = std::hint::black_box(i.wrapping_add(1));
    }
}

wasmpool_guest::export_tasks!(unreachable_task; init = spin_forever);
