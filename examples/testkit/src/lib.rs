//! Tasks the integration tests use: ordinary ones, failing ones, and misbehaving ones.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmpool_guest::{process, task};

/// Does nothing, for start-up benchmarks.
#[task]
fn noop() {}

/// The square of `x`.
#[task]
fn square(x: u64) -> u64 {
    x * x
}

/// Adds two numbers; a task of two arguments.
#[task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Greets by name, printing on stdout and stderr on the way.
#[task]
fn greet(name: String) -> String {
    println!("hello, {name}");
    eprintln!("to stderr, {name}");
    format!("hello, {name}")
}

/// Fails with the caller's message.
#[task]
fn fail(message: String) -> Result<u64, String> {
    Err(message)
}

/// Panics with the caller's message.
#[task]
fn boom(message: String) -> u64 {
    panic!("{message}")
}

/// Executes `unreachable`: a trap that is not a panic.
#[task]
fn trap() -> u64 {
    core::arch::wasm32::unreachable()
}

/// Sleeps for `ms` milliseconds, then returns `ms`.
#[task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Prints `lines` numbered lines, `delay_ms` apart.
#[task]
fn tick(lines: u32, delay_ms: u64) -> u32 {
    for i in 0..lines {
        println!("tick {i}");
        std::thread::sleep(Duration::from_millis(delay_ms));
    }
    lines
}

/// The worker's process identity, as the guest sees it.
#[task]
fn whoami() -> (u32, u32, String) {
    let p = process::current();
    (p.pid, p.ppid, p.name)
}

/// Wall-clock seconds since the Unix epoch and eight random bytes.
#[task]
fn clock_and_random() -> (f64, Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut state = std::collections::hash_map::RandomState::new();
    let _ = &mut state;
    let bytes: Vec<u8> = (0..8).map(|_| random_byte()).collect();
    (now, bytes)
}

fn random_byte() -> u8 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u8
}

/// A record argument and result, to check serde types cross intact.
#[derive(Debug, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

/// Scales a point.
#[task]
fn scale(p: Point, k: f64) -> Point {
    Point { x: p.x * k, y: p.y * k }
}

/// Counts calls in this instance: state persists across tasks in one worker.
#[task]
fn counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    CALLS.fetch_add(1, Ordering::Relaxed) + 1
}

/// The square of `x`, except that 13 panics: one bad item in a batch.
#[task]
fn square_or_panic(x: u64) -> u64 {
    if x == 13 {
        panic!("unlucky {x}");
    }
    x * x
}

/// The square of `x`, except that 13 traps (not a panic): one bad item in a batch.
#[task]
fn square_or_trap(x: u64) -> u64 {
    if x == 13 {
        core::arch::wasm32::unreachable();
    }
    x * x
}

/// The worker's pid, after sleeping `ms` milliseconds (which worker ran a task).
#[task]
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    process::getpid()
}

/// Allocates and touches `mib` MiB; returns how many bytes it held.
#[task]
fn alloc_mib(mib: u64) -> u64 {
    let mut v: Vec<u8> = Vec::new();
    for _ in 0..mib {
        let mut chunk = vec![1u8; 1 << 20];
        v.append(&mut chunk);
    }
    std::hint::black_box(&v);
    v.len() as u64
}

/// Recurses `depth` levels (or without end): a stack overflow.
#[task]
fn recurse(depth: u64) -> u64 {
    fn down(n: u64) -> u64 {
        if n == 0 { 0 } else { 1 + std::hint::black_box(down(n - 1)) }
    }
    down(depth)
}

/// Tries to read a host file: the error the guest got, or the contents.
#[task]
fn read_file(path: String) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Tries to open a TCP connection: the error the guest got, or "connected".
#[task]
fn connect(addr: String) -> Result<String, String> {
    std::net::TcpStream::connect(addr).map(|_| "connected".to_string()).map_err(|e| e.to_string())
}

/// The value of an environment variable, as the guest sees it.
#[task]
fn env_var(name: String) -> Option<String> {
    std::env::var(name).ok()
}

/// Loops forever.
#[task]
fn spin() -> u64 {
    let mut i: u64 = 0;
    loop {
        i = std::hint::black_box(i.wrapping_add(1));
    }
}

wasmpool_guest::export_tasks!(
    noop, square, add, greet, fail, boom, trap, sleep_ms, tick, whoami, clock_and_random, scale,
    counter, spin, square_or_panic, square_or_trap, pid_after, alloc_mib, recurse, read_file,
    connect, env_var
);
