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

/// The length of a text, in bytes (for arguments of any size).
#[task]
fn text_len(text: String) -> u64 {
    text.len() as u64
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

/// Sleeps one millisecond, then returns `x * x` (a short task that still takes time).
#[task]
fn square_slowly(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    x * x
}

/// Prints `mib` MiB to stdout, in 64-character lines (a task that floods its output).
#[task]
fn print_mib(mib: u64) -> u64 {
    let line = "x".repeat(63);
    for _ in 0..mib * (1 << 20) / 64 {
        println!("{line}");
    }
    mib
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
    Point {
        x: p.x * k,
        y: p.y * k,
    }
}

/// A record whose fields are not in alphabetical order.
#[derive(Debug, Serialize)]
struct Unsorted {
    b: i64,
    a: i64,
}

/// Returns `{"b": b, "a": a}`: a result whose keys a front end must print in this order,
/// not sorted.
#[task]
fn unsorted(b: i64, a: i64) -> Unsorted {
    Unsorted { b, a }
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

/// The square of `x`, except that 13 loops forever in wasm code: one runaway item in a
/// batch.
#[task]
fn square_or_spin(x: u64) -> u64 {
    if x == 13 {
        return spin();
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
        if n == 0 {
            0
        } else {
            1 + std::hint::black_box(down(n - 1))
        }
    }
    down(depth)
}

/// Tries to read a host file: the error the guest got, or the contents.
#[task]
fn read_file(path: String) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Tries to write a file: the error the guest got, if any.
#[task]
fn write_file(path: String, text: String) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| e.to_string())
}

/// Tries to open a TCP connection: the error the guest got, or "connected".
#[task]
fn connect(addr: String) -> Result<String, String> {
    std::net::TcpStream::connect(addr)
        .map(|_| "connected".to_string())
        .map_err(|e| e.to_string())
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

// ---- shared objects: benchmarks and robustness ----

use wasmpool_guest::objects::{
    Barrier, Condition, Connection, Dict, Event, List, Lock, ObjectError, Queue, RLock, Semaphore,
};

/// Puts `0..n`, then `None`.
#[task]
fn queue_produce(queue: Queue<Option<u64>>, n: u64) -> Result<(), ObjectError> {
    for i in 0..n {
        queue.put(&Some(i))?;
    }
    queue.put(&None)
}

/// Takes items until `None`; answers their sum.
#[task]
fn queue_consume(queue: Queue<Option<u64>>) -> Result<u64, ObjectError> {
    let mut sum = 0;
    while let Some(v) = queue.get()? {
        sum += v;
    }
    Ok(sum)
}

/// Puts `first` (one larger than the queue's shared ring spills it, so later puts go
/// through the host; the host then says the queue never waits, so they are posted), waits
/// for `go` (the host closes the queue first), and, holding `lock`, puts "2" (posted,
/// refused) and asks the queue's size (waited for: the refusal has arrived by its answer).
/// The lock's release is not failed by the refusal. Then, if `check`, puts "3": that
/// reports the refusal; otherwise it fails the task. (Not spilled, the put of "2" fails at
/// once.)
#[task]
fn put_across_close(
    queue: Queue<String>,
    first: String,
    go: Event,
    lock: Lock,
    check: bool,
) -> Result<u32, ObjectError> {
    queue.put(&first)?;
    go.wait()?;
    {
        let _held = lock.lock()?;
        queue.put(&"2".to_string())?;
        queue.qsize()?;
    }
    if check {
        queue.put(&"3".to_string())?;
    }
    Ok(7)
}

/// Puts 1, closes the queue, then tries two more puts: both fail at once, with the
/// queue's own error. Answers their errors.
#[task]
fn put_after_own_close(queue: Queue<u32>) -> Result<Vec<String>, ObjectError> {
    queue.put(&1)?;
    queue.close()?;
    Ok([2, 3]
        .iter()
        .map(|v| match queue.put(v) {
            Ok(()) => "accepted".to_string(),
            Err(e) => e.to_string(),
        })
        .collect())
}

/// Sends back every value it receives, `n` times.
#[task]
fn pipe_pong(conn: Connection<u64>, n: u64) -> Result<(), ObjectError> {
    for _ in 0..n {
        conn.send(&conn.recv()?)?;
    }
    Ok(())
}

/// Sends 0..n and checks that each comes back; answers how many did.
#[task]
fn pipe_ping(conn: Connection<u64>, n: u64) -> Result<u64, ObjectError> {
    for i in 0..n {
        conn.send(&i)?;
        let back = conn.recv()?;
        if back != i {
            return Err(ObjectError::Invalid(format!("sent {i}, got {back} back")));
        }
    }
    Ok(n)
}

/// Message `i` of a numbered stream: its number, a colon and `size` bytes of filler.
fn numbered(i: u64, size: usize) -> String {
    format!("{i}:{}", "x".repeat(size))
}

/// Sends `count` numbered messages of `size` bytes of filler, message `big_at` with `big`
/// bytes instead.
#[task]
fn send_numbered(
    conn: Connection<String>,
    count: u64,
    size: usize,
    big_at: u64,
    big: usize,
) -> Result<(), ObjectError> {
    for i in 0..count {
        conn.send(&numbered(i, if i == big_at { big } else { size }))?;
    }
    Ok(())
}

/// Sends numbered messages of `size` bytes of filler until it is stopped.
#[task]
fn send_numbered_forever(conn: Connection<String>, size: usize) -> Result<(), ObjectError> {
    for i in 0.. {
        conn.send(&numbered(i, size))?;
    }
    Ok(())
}

/// `n` increments of `d["count"]`, each a read and a write under the lock.
#[task]
fn locked_increments(d: Dict<String, i64>, lock: Lock, n: u64) -> Result<(), ObjectError> {
    let key = "count".to_string();
    for _ in 0..n {
        let _held = lock.lock()?;
        let v = d.get(&key)?.unwrap_or(0);
        d.set(&key, &(v + 1))?;
    }
    Ok(())
}

/// `n` increments of `d["count"]` under the lock, each a read and a compare-and-swap from
/// the value read: a swap that fails means someone changed the count while this task held
/// the lock, so the lock did not exclude them. Each such failure is also counted in
/// `d["violations"]` (so a run whose result is dropped still counts it); answers how many
/// this run saw.
#[task]
fn locked_cas(d: Dict<String, i64>, lock: Lock, n: u64) -> Result<u64, ObjectError> {
    let (key, bad) = ("count".to_string(), "violations".to_string());
    let mut seen = 0;
    for _ in 0..n {
        let _held = lock.lock()?;
        let v = d.get(&key)?;
        if !d.compare_and_swap(&key, v.as_ref(), &(v.unwrap_or(0) + 1))? {
            seen += 1;
            d.increment(&bad, 1)?;
        }
    }
    Ok(seen)
}

/// Sleeps `ms` milliseconds, then returns `x * x` (a task of a chosen length with a result
/// that tells which item it was).
#[task]
fn square_after(x: u64, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    x * x
}

/// `n` atomic increments of `d["count"]`, no lock.
#[task]
fn atomic_increments(d: Dict<String, i64>, n: u64) -> Result<(), ObjectError> {
    let key = "count".to_string();
    for _ in 0..n {
        d.increment(&key, 1)?;
    }
    Ok(())
}

/// Sets `d[prefix + i] = i` for `i` in `0..n`; answers the dict's length as it then sees it.
#[task]
fn dict_fill(d: Dict<String, u64>, prefix: String, n: u64) -> Result<u64, ObjectError> {
    for i in 0..n {
        d.set(&format!("{prefix}{i}"), &i)?;
    }
    Ok(d.len()? as u64)
}

/// Acquires the lock, says so on the event, and sleeps `ms` holding it.
#[task]
fn hold_lock(lock: Lock, held: Event, ms: u64) -> Result<(), ObjectError> {
    lock.acquire()?;
    held.set()?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// Acquires the lock, says so on the event, sleeps `ms` holding it, and releases it (an
/// error of the release is the task's).
#[task]
fn hold_then_release(lock: Lock, held: Event, ms: u64) -> Result<(), ObjectError> {
    lock.acquire()?;
    held.set()?;
    std::thread::sleep(Duration::from_millis(ms));
    lock.release()
}

/// Fails unless the event is set (an initializer that fails until something is ready).
#[task]
fn fail_unless_set(ready: Event) -> Result<(), String> {
    match ready.is_set() {
        Ok(true) => Ok(()),
        Ok(false) => Err("not ready yet".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Acquires the lock, then panics holding it.
#[task]
fn lock_then_panic(lock: Lock) -> Result<(), ObjectError> {
    lock.acquire()?;
    panic!("dying with the lock held");
}

/// Acquires the semaphore `n` times, says so, and sleeps `ms`.
#[task]
fn hold_semaphore(sem: Semaphore, n: u32, held: Event, ms: u64) -> Result<(), ObjectError> {
    for _ in 0..n {
        sem.acquire()?;
    }
    held.set()?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(())
}

/// Waits at the barrier; answers the arrival index or the error's text.
#[task]
fn barrier_wait(barrier: Barrier, timeout_ms: Option<u64>) -> Result<u32, ObjectError> {
    barrier.wait_timeout(timeout_ms.map(Duration::from_millis))
}

/// Holds a pipe end (given in the arguments) and sleeps: its death must close the end.
#[task]
fn hold_conn(_conn: Connection<String>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Receives until end of file; answers what arrived.
#[task]
fn recv_all(conn: Connection<String>) -> Result<Vec<String>, ObjectError> {
    let mut got = Vec::new();
    loop {
        match conn.recv() {
            Ok(v) => got.push(v),
            Err(ObjectError::Closed(_)) => return Ok(got),
            Err(e) => return Err(e),
        }
    }
}

/// Puts one string of `bytes` bytes.
#[task]
fn put_big(queue: Queue<String>, bytes: usize) -> Result<(), ObjectError> {
    queue.put(&"x".repeat(bytes))
}

/// Extends a list with `n` units in one call: tiny items, many of them.
#[task]
fn extend_units(list: List<()>, n: usize) -> Result<(), ObjectError> {
    list.extend(&vec![(); n])
}

/// Gets with a timeout; the error's text when there is nothing.
#[task]
fn get_timeout(queue: Queue<String>, ms: u64) -> Result<String, ObjectError> {
    queue.get_timeout(Some(Duration::from_millis(ms)))
}

/// Tries to acquire a lock it was given (or that someone forged).
#[task]
fn try_lock(lock: Lock) -> Result<bool, ObjectError> {
    lock.try_acquire()
}

/// Exercises dict and list operations; answers what it saw.
#[task]
fn dict_list_ops(d: Dict<String, i64>, l: List<String>) -> Result<Vec<String>, ObjectError> {
    let mut seen = Vec::new();
    d.set(&"a".into(), &1)?;
    d.update([(&"b".to_string(), &2), (&"c".to_string(), &3)])?;
    seen.push(format!("len={}", d.len()?));
    seen.push(format!("keys={:?}", d.keys()?));
    seen.push(format!("setdefault={}", d.setdefault(&"a".into(), &9)?));
    seen.push(format!("pop={:?}", d.pop(&"b".into())?));
    seen.push(format!("contains_b={}", d.contains(&"b".into())?));
    seen.push(format!(
        "cas_ok={}",
        d.compare_and_swap(&"c".into(), Some(&3), &30)?
    ));
    seen.push(format!(
        "cas_stale={}",
        d.compare_and_swap(&"c".into(), Some(&3), &31)?
    ));
    seen.push(format!("incr={}", d.increment(&"n".into(), 5)?));
    seen.push(format!(
        "delete_missing={:?}",
        d.delete(&"zzz".into()).is_err()
    ));
    l.append(&"x".into())?;
    l.extend([&"y".to_string(), &"z".to_string()])?;
    seen.push(format!("last={}", l.get(-1)?));
    l.set(0, &"w".into())?;
    seen.push(format!("index_z={}", l.index(&"z".into())?));
    seen.push(format!("pop={}", l.pop(None)?));
    seen.push(format!("items={:?}", l.items()?));
    seen.push(format!("out_of_range={}", l.get(10).is_err()));
    Ok(seen)
}

/// Waits on the condition until `d["ready"]` is set; answers whether it was notified.
#[task]
fn condition_wait(cond: Condition, d: Dict<String, i64>) -> Result<bool, ObjectError> {
    let _held = cond.lock()?;
    d.set(&"waiting".into(), &1)?;
    let mut notified = false;
    while d.get(&"ready".into())?.is_none() {
        notified = cond.wait_timeout(Some(Duration::from_secs(10)))?;
    }
    Ok(notified)
}

/// Acquires a recursive lock twice and releases it twice.
#[task]
fn rlock_twice(lock: RLock) -> Result<(), ObjectError> {
    lock.acquire()?;
    lock.acquire()?;
    lock.release()?;
    lock.release()
}

// ---- batches: nothing that finished runs again ----

/// A string of `bytes` bytes: a large result.
#[task]
fn big_result(bytes: usize) -> String {
    "r".repeat(bytes)
}

/// Calls `std::process::exit(code)`.
#[task]
fn exit_with(code: i32) -> u64 {
    std::process::exit(code)
}

/// How a [`counted`] item misbehaves once it has counted itself.
#[derive(Debug, Serialize, Deserialize)]
enum Misdeed {
    /// Returns normally.
    None,
    /// Traps (`unreachable`).
    Trap,
    /// Panics.
    Panic,
    /// Allocates without end (the memory limit).
    Grow,
    /// Computes without end (the time limit).
    Spin,
    /// Waits without end on an empty queue (the watchdog).
    Block,
}

/// Counts a run of item `x` in `runs` (a side effect that must happen once), prints a line
/// naming it, then, if `x` is `bad`, misbehaves as `how` says; returns `x`.
#[task]
fn counted(runs: Dict<String, i64>, x: u64, bad: u64, how: Misdeed) -> Result<u64, ObjectError> {
    runs.increment(&format!("run:{x}"), 1)?;
    println!("item {x}");
    if x == bad {
        misbehave(&how);
    }
    Ok(x)
}

/// Prints a line naming item `x` (no call to `objects`: a pure item), then, if `x` is
/// `bad`, misbehaves as `how` says; returns `x`.
#[task]
fn printed(x: u64, bad: u64, how: Misdeed) -> u64 {
    println!("item {x}");
    if x == bad {
        misbehave(&how);
    }
    x
}

/// What a misbehaving item does.
fn misbehave(how: &Misdeed) {
    match how {
        Misdeed::None => {}
        Misdeed::Trap => core::arch::wasm32::unreachable(),
        Misdeed::Panic => panic!("misbehaving on purpose"),
        Misdeed::Grow => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Misdeed::Spin => {
            let mut i: u64 = 0;
            loop {
                i = std::hint::black_box(i.wrapping_add(1));
            }
        }
        // One host call that does not return in time: only the watchdog can stop it.
        Misdeed::Block => std::thread::sleep(Duration::from_secs(3600)),
    }
}

wasmpool_guest::export_tasks!(
    noop,
    square,
    add,
    greet,
    text_len,
    fail,
    boom,
    trap,
    sleep_ms,
    square_slowly,
    print_mib,
    tick,
    whoami,
    clock_and_random,
    scale,
    unsorted,
    counter,
    spin,
    square_or_panic,
    square_or_trap,
    square_or_spin,
    pid_after,
    alloc_mib,
    recurse,
    read_file,
    write_file,
    connect,
    env_var,
    queue_produce,
    queue_consume,
    pipe_pong,
    pipe_ping,
    send_numbered,
    send_numbered_forever,
    locked_increments,
    locked_cas,
    square_after,
    atomic_increments,
    dict_fill,
    hold_lock,
    hold_then_release,
    lock_then_panic,
    fail_unless_set,
    hold_semaphore,
    barrier_wait,
    hold_conn,
    recv_all,
    put_big,
    put_across_close,
    put_after_own_close,
    extend_units,
    get_timeout,
    try_lock,
    dict_list_ops,
    condition_wait,
    rlock_twice,
    big_result,
    exit_with,
    counted,
    printed,
    not_utf8,
    long_line,
    many_values,
    dict_flood,
    list_flood,
    liar,
    gated_square,
    alias_checked,
    alias_forced,
    alias_as_value,
    conform_locked,
    conform_list,
    conform_dict,
    barrier_rounds,
    barrier_info,
    barrier_failing_action,
    condition_wait_for,
    print_partial,
    stash_queue,
    send_bytes_of,
);

// ---- memory hardening ----

/// A "string" whose bytes are not UTF-8, as a hostile guest can return one.
struct NotUtf8(Vec<u8>);

impl Serialize for NotUtf8 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // SAFETY: not sound (a `str` must be UTF-8), and deliberately so: this is the attack.
        // The encoder only copies the bytes, which is all this relies on.
        s.serialize_str(unsafe { std::str::from_utf8_unchecked(&self.0) })
    }
}

/// Returns a one-string array whose string is the bytes 0xff 0xfe: not UTF-8.
#[task]
fn not_utf8() -> Vec<NotUtf8> {
    vec![NotUtf8(vec![0xff, 0xfe])]
}

/// Writes `bytes` bytes of `x` to stdout with no newline, 1000 bytes a write.
#[task]
fn long_line(bytes: u64) -> u64 {
    use std::io::Write;
    let chunk = [b'x'; 1000];
    let mut out = std::io::stdout();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(1000);
        let _ = out.write_all(&chunk[..n as usize]);
        let _ = out.flush();
        left -= n;
    }
    bytes
}

/// One small map in a large result.
#[derive(Serialize)]
struct Small {
    n: u8,
}

/// Returns `count` small maps `{"n": i % 100}`: about 4 bytes of MessagePack each.
#[task]
fn many_values(count: u64) -> Vec<Small> {
    (0..count).map(|i| Small { n: (i % 100) as u8 }).collect()
}

/// Fills a dict with tiny entries (`i: 1`), `batch` at a time, until it is refused; returns
/// how many it holds and the refusal.
#[task]
fn dict_flood(d: Dict<u64, u8>, batch: u64) -> (u64, String) {
    let mut n = 0;
    loop {
        let keys: Vec<u64> = (n..n + batch).collect();
        if let Err(e) = d.update(keys.iter().map(|k| (k, &1u8))) {
            return (n, e.to_string());
        }
        n += batch;
    }
}

/// Extends a list with tiny items (`1`), `batch` at a time, until it is refused; returns how
/// many it holds and the refusal.
#[task]
fn list_flood(l: List<u8>, batch: u64) -> (u64, String) {
    let items = vec![1u8; batch as usize];
    let mut n = 0;
    loop {
        if let Err(e) = l.extend(&items) {
            return (n, e.to_string());
        }
        n += batch;
    }
}

// ---- a guest that calls batch-progress itself ----

/// A hostile guest: for `total_ms`, every `every_ms` reports `per` made-up finished items
/// (results empty, or the MessagePack 1) to the host; returns 7.
#[task]
fn liar(per: u32, empty: bool, every_ms: u64, total_ms: u64) -> u64 {
    use wasmpool_guest::bindings::wasmpool::task::host;
    let one: Vec<u8> = if empty { Vec::new() } else { vec![0x01] };
    let fake: Vec<wasmpool_guest::__private::Outcome> =
        (0..per).map(|_| Ok(one.clone())).collect();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(total_ms) {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(every_ms) {
            std::hint::black_box(0u64);
        }
        host::batch_progress(&fake);
    }
    7
}

// ---- conformance ----

/// Waits for the event, then answers `x * x`: a result that is not in before the caller
/// says so.
#[task]
fn gated_square(gate: Event, x: u64) -> Result<u64, ObjectError> {
    gate.wait()?;
    Ok(x * x)
}

/// A `Result` under another name.
type Checked = Result<u64, String>;

/// Returns an alias of `Result`: its `Err` fails the task, as a written-out `Result` does.
#[task]
fn alias_checked(x: u64) -> Checked {
    if x == 0 {
        Err("zero is refused".to_string())
    } else {
        Ok(x)
    }
}

/// The same, with the attribute saying so.
#[task(fallible)]
fn alias_forced(x: u64) -> Checked {
    alias_checked(x)
}

/// The same type sent whole, as a value: `#[task(infallible)]`.
#[task(infallible)]
fn alias_as_value(x: u64) -> Checked {
    alias_checked(x)
}

// ---- conformance: the object APIs Python has ----

/// `locked()` of a lock the host holds, then of an `RLock` through two acquires and two
/// releases; then it releases the host's lock (any process may) and asks again.
#[task]
fn conform_locked(lock: Lock, rlock: RLock) -> Result<Vec<bool>, ObjectError> {
    let mut seen = vec![lock.locked()?, rlock.locked()?];
    rlock.acquire()?;
    rlock.acquire()?;
    seen.push(rlock.locked()?);
    rlock.release()?;
    seen.push(rlock.locked()?);
    rlock.release()?;
    seen.push(rlock.locked()?);
    lock.release()?;
    seen.push(lock.locked()?);
    Ok(seen)
}

/// An error's text, or what came instead.
fn error_text<T: std::fmt::Debug>(r: Result<T, ObjectError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(v) => format!("no error: {v:?}"),
    }
}

/// `insert`, `slice`, `remove` and `clear` on a list that starts `[0, 1, 2]`; answers what
/// it saw.
#[task]
fn conform_list(l: List<i64>) -> Result<Vec<String>, ObjectError> {
    let mut seen = Vec::new();
    l.insert(-1, &9)?;
    l.insert(100, &7)?;
    l.insert(-100, &5)?;
    seen.push(format!("{:?}", l.items()?));
    seen.push(format!("{:?}", l.slice(Some(1), Some(-1))?));
    seen.push(format!("{:?}", l.slice(Some(-2), None)?));
    seen.push(format!("{:?}", l.slice(Some(4), Some(2))?));
    l.append(&9)?;
    l.remove(&9)?;
    seen.push(format!("{:?}", l.items()?));
    seen.push(error_text(l.remove(&42)));
    l.clear()?;
    seen.push(format!("len={}", l.len()?));
    Ok(seen)
}

/// `popitem` and `clear` on a dict that starts `{a: 1, b: 2, c: 3}`; answers what it saw
/// and leaves `{after: 5}`.
#[task]
fn conform_dict(d: Dict<String, i64>) -> Result<Vec<String>, ObjectError> {
    let mut seen = Vec::new();
    // A key set again keeps its place.
    d.set(&"a".into(), &10)?;
    seen.push(format!("{:?}", d.popitem()?));
    d.set(&"d".into(), &4)?;
    seen.push(format!("{:?}", d.popitem()?));
    d.clear()?;
    seen.push(format!("len={}", d.len()?));
    seen.push(error_text(d.popitem()));
    d.set(&"after".into(), &5)?;
    Ok(seen)
}

/// Waits at the barrier `rounds` times, each time offering an action that appends
/// `"round N"` to `log`; answers how long `log` was each time this party was released.
#[task]
fn barrier_rounds(
    barrier: Barrier,
    log: List<String>,
    rounds: u32,
) -> Result<Vec<usize>, ObjectError> {
    let mut seen = Vec::new();
    for round in 0..rounds {
        barrier.wait_with(|| log.append(&format!("round {round}")))?;
        seen.push(log.len()?);
    }
    Ok(seen)
}

/// The barrier's `parties()` and `broken()`.
#[task]
fn barrier_info(barrier: Barrier) -> Result<(u32, bool), ObjectError> {
    Ok((barrier.parties()?, barrier.broken()?))
}

/// Waits at the barrier offering an action that fails (or, with `trap`, traps); answers
/// how the wait ended.
#[task]
fn barrier_failing_action(barrier: Barrier, trap: bool) -> Result<String, ObjectError> {
    let waited = barrier.wait_with(|| {
        if trap {
            core::arch::wasm32::unreachable()
        }
        Err(ObjectError::Invalid("the action failed".into()))
    });
    Ok(match waited {
        Ok(index) => format!("released as {index}"),
        Err(e) => e.to_string(),
    })
}

/// Holding the condition's lock, says so in `d["waiting"]` and waits with `wait_for` until
/// `d["n"] >= target`; answers the predicate's last value and `d["n"]`. It releases the
/// lock at the end, which fails unless `wait_for` left it held.
#[task]
fn condition_wait_for(
    cond: Condition,
    d: Dict<String, i64>,
    target: i64,
    timeout_ms: Option<u64>,
) -> Result<(bool, i64), ObjectError> {
    cond.acquire()?;
    d.set(&"waiting".into(), &1)?;
    let n = || -> Result<i64, ObjectError> { Ok(d.get(&"n".into())?.unwrap_or(0)) };
    let got = cond.wait_for(|| Ok(n()? >= target), timeout_ms.map(Duration::from_millis))?;
    let last = n()?;
    cond.release()?;
    Ok((got, last))
}

/// Prints `text` to stdout and to stderr with no newline after it, then ends as `how`
/// says: 0 returns, 1 fails, 2 panics (the last line must still reach the caller).
#[task]
fn print_partial(text: String, how: u8) -> Result<u8, String> {
    print!("{text}");
    eprint!("{text}");
    match how {
        0 => Ok(how),
        1 => Err(format!("failed after {text}")),
        _ => panic!("panicked after {text}"),
    }
}

/// Stores `queue` in `dict` under `key`: the dict holds it after the task ends.
#[task]
fn stash_queue(
    dict: Dict<String, Queue<u32>>,
    key: String,
    queue: Queue<u32>,
) -> Result<(), ObjectError> {
    dict.set(&key, &queue)
}

/// Sends `bytes` bytes on `conn` with `send_bytes`.
#[task]
fn send_bytes_of(conn: Connection<()>, bytes: usize) -> Result<(), ObjectError> {
    conn.send_bytes(&vec![7u8; bytes])
}
