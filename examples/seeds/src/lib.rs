//! The tasks of the seed programs (Python multiprocessing tutorials), ported to wasmpool.
//!
//! Each Python `target=` function becomes a `#[task]`; the host side of each seed program is
//! a Rust example in `runtime/examples/seed_*.rs`. Prints keep the seeds' wording.

use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use wasmpool_guest::{process, task};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A random float in [0, 1), as Python's `random.random()`.
fn random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now().to_bits());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The seeds' CPU-bound loop: `res = data ** 3; while res > 0: res -= 1`.
fn count_down(data: u64) -> u64 {
    let cube = data.pow(3);
    let mut res = cube;
    while res > 0 {
        res = std::hint::black_box(res) - 1;
    }
    cube
}

// ---- 000: three hello tasks that sleep a second ----

/// `task1: hello, <msg>`, then a second's sleep.
#[task]
fn task1(msg: String) {
    println!("task1: hello, {msg}");
    sleep(Duration::from_secs(1));
}

/// `task2: hello, <msg>`, then a second's sleep.
#[task]
fn task2(msg: String) {
    println!("task2: hello, {msg}");
    sleep(Duration::from_secs(1));
}

/// `task3: hello, <msg>`, then a second's sleep.
#[task]
fn task3(msg: String) {
    println!("task3: hello, {msg}");
    sleep(Duration::from_secs(1));
}

// ---- 001: run_proc ----

/// `child process <name> (<pid>) Runing` (sic, as in the seed).
#[task]
fn run_proc(name: String) {
    println!("child process {name} ({}) Runing", process::getpid());
}

// ---- 002: process(num), MyProcess(loop) ----

/// Sleeps `num * 0.1` s, then prints `Process: <num>`.
#[task]
fn process_num(num: u64) {
    sleep(Duration::from_millis(num * 100));
    println!("Process: {num}");
}

/// The seed's `class MyProcess(Process)`: its fields are the task's argument, `run` its body.
#[derive(Debug, Deserialize)]
pub struct MyProcess {
    /// How many one-second loops to run.
    pub r#loop: u32,
}

impl MyProcess {
    /// `Pid: <pid> LoopCount: <n>` once a second, `loop` times.
    fn run(&self) {
        for count in 0..self.r#loop {
            sleep(Duration::from_secs(1));
            println!("Pid: {} LoopCount: {count}", process::getpid());
        }
    }
}

/// Runs a `MyProcess`: `Process::new(&m, "my_process", &(MyProcess { loop: 3 },))`.
#[task]
fn my_process(p: MyProcess) {
    p.run();
}

// ---- 003: proc1/proc2 and join ----

/// `Run child process <name> (<pid>)`, the time, a random sleep under a second, `<name> end`.
#[task]
fn proc_random(name: String) {
    println!("Run child process {name} ({})", process::getpid());
    println!("{}", now());
    sleep(Duration::from_secs_f64(random()));
    println!("{name} end");
}

/// Sleeps two seconds, then `Run child process <name> (<pid>)`.
#[task]
fn run_proc_late(name: String) {
    sleep(Duration::from_secs(2));
    println!("Run child process {name} ({})", process::getpid());
}

// ---- 004: the countdown process_task ----

/// The countdown alone; returns `data ** 3`.
#[task]
fn countdown(data: u64) -> u64 {
    count_down(data)
}

/// The countdown, then `==============: 子进程结束`.
#[task]
fn countdown_announce(data: u64) {
    count_down(data);
    println!("==============: 子进程结束");
}

/// The countdown between the seed's two report lines (pid and parent pid); returns `data ** 3`.
#[task]
fn process_task(data: u64) -> u64 {
    let me = process::current();
    println!(
        "测试多进程任务：{data}, 当前进程号：{}, 父进程号为: {}",
        me.pid, me.ppid
    );
    let cube = count_down(data);
    println!("多进程任务结束：{data}, 当前进程号为: {}", me.pid);
    cube
}

// ---- 000: the Pool of four ----

/// `hello, <msg>`, five seconds' sleep, `finished <msg>`.
#[task]
fn hello(msg: u32) {
    println!("hello, {msg}");
    sleep(Duration::from_secs(5));
    println!("finished {msg}");
}

/// `Say, <msg>`, a second's sleep, `Say finish <msg>`.
#[task]
fn say(msg: u32) {
    println!("Say, {msg}");
    sleep(Duration::from_secs(1));
    println!("Say finish {msg}");
}

// ---- 001: Pool(processes=3) ----

/// `Task <name> (pid = <pid>) is runnig...`, up to 3 s of random sleep, `Task <name> end cost <s>s`.
#[task]
fn run_task(name: u32) {
    let start = now();
    println!("Task {name} (pid = {}) is runnig...", process::getpid());
    sleep(Duration::from_secs_f64(random() * 3.0));
    println!("Task {name} end cost {}s", now() - start);
}

// ---- 002: Pool, blocking and not, and map ----

/// `Start process:  <index>`, three seconds' sleep, `End process <index>`.
#[task]
fn function(index: u32) {
    println!("Start process:  {index}");
    sleep(Duration::from_secs(3));
    println!("End process {index}");
}

/// `x ** 2`.
#[task]
fn job(x: i64) -> i64 {
    x * x
}

// ---- 003: cpu_core = 2, FIFO ----

fn letter(name: &str) {
    println!("{name}");
    let start = now();
    println!("start time {start}");
    sleep(Duration::from_secs_f64(random() * 3.0));
    println!("task {name} runs {:.2} seconds.", now() - start);
}

/// Task A.
#[task]
fn p1() {
    letter("A");
}

/// Task B.
#[task]
fn p2() {
    letter("B");
}

/// Task C.
#[task]
fn p3() {
    letter("C");
}

// ---- 004: Pool apply / apply_async / map / results / callback ----

/// The countdown with the seed's report lines, then a second's sleep; returns `data ** 3`.
#[task]
fn pool_task(data: u64) -> u64 {
    let cube = process_task(data);
    sleep(Duration::from_secs(1));
    cube
}

/// As `pool_task`, taking the seed's `(data, length)` tuple.
#[task]
fn pool_task_info(info: (u64, u64)) -> u64 {
    pool_task(info.0)
}

// ---- 004, 进程间的通信: data not shared, Queue, Pipe, Manager dict, Lock, Semaphore ----

use wasmpool_guest::objects::{Connection, Dict, Lock, ObjectError, Queue, Semaphore};

/// A dict key as the seeds use them: the string `"count"` or an integer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer key (the task's `data`).
    Num(u64),
    /// A string key (`"count"`).
    Name(String),
}

/// "数据不共享": the task changes its own copy of `sh_dock_code`; the parent never sees it.
#[task]
fn process_task_unshared(data: u64) {
    let me = process::current();
    println!(
        "测试多进程任务：{data}, 当前进程号：{}, 父进程号为: {}",
        me.pid, me.ppid
    );
    count_down(data);
    let sh_dock_code = [31, 32, data];
    println!(
        "多进程任务结束：{data}, 当前进程号为: {}, sh_dock_code is [{}, {}, {}]",
        me.pid, sh_dock_code[0], sh_dock_code[1], sh_dock_code[2]
    );
}

/// "队列实现数据交互": puts `{data: data ** 3}` on the queue, then counts down.
#[task]
fn queue_task(
    data: u64,
    queue: Queue<std::collections::BTreeMap<u64, u64>>,
) -> Result<(), ObjectError> {
    let me = process::current();
    println!(
        "测试多进程任务：{data}, 当前进程号：{}, 父进程号为: {}",
        me.pid, me.ppid
    );
    queue.put(&[(data, data.pow(3))].into_iter().collect())?;
    count_down(data);
    println!("多进程任务结束：{data}, 当前进程号为: {}", me.pid);
    Ok(())
}

/// "队列实现生产者消费者模型": prints each task until the `None` sentinel.
#[task]
fn consumer(queue: Queue<Option<String>>) -> Result<(), ObjectError> {
    while let Some(task) = queue.get()? {
        println!("{task}");
    }
    Ok(())
}

/// Puts `work：0` … `work：4`.
#[task]
fn producer(queue: Queue<Option<String>>) -> Result<(), ObjectError> {
    for i in 0..5 {
        queue.put(&Some(format!("work：{i}")))?;
    }
    Ok(())
}

/// "Pipe 实现数据交互": closes the end it does not use, greets the parent, prints the answer.
#[task]
fn pipe_task(data: u64, p: (Connection<String>, Connection<String>)) -> Result<(), ObjectError> {
    let (conn1, conn2) = p;
    conn2.close()?;
    conn1.send(&format!("你好主进程, the data is {data}"))?;
    println!("{}", conn1.recv()?);
    conn1.close()
}

/// "Pipe 实现生产者消费者模型", the consumer: prints what arrives until end of file.
#[task]
fn pipe_consumer(
    name: String,
    p: (Connection<String>, Connection<String>),
) -> Result<(), ObjectError> {
    let (conn1, conn2) = p;
    conn1.close()?;
    loop {
        match conn2.recv() {
            Ok(ret) => println!("{name} work is {ret}"),
            Err(_) => {
                println!("===============");
                break;
            }
        }
    }
    conn2.close()
}

/// The producer: sends `doing：0` … `doing：4`, then closes its end.
#[task]
fn pipe_producer(p: (Connection<String>, Connection<String>)) -> Result<(), ObjectError> {
    let (conn1, conn2) = p;
    conn2.close()?;
    for i in 0..5 {
        conn1.send(&format!("doing：{i}"))?;
    }
    conn1.close()
}

fn read_count(share_data: &Dict<Key, u64>) -> Result<u64, ObjectError> {
    Ok(share_data.get(&Key::Name("count".into()))?.unwrap_or(0))
}

/// "Managers实现数据共享": `share_data["count"] -= 1; share_data[data] = data ** 3`.
#[task]
fn manager_task(
    data: u64,
    _queue: Queue<u64>,
    share_data: Dict<Key, u64>,
) -> Result<(), ObjectError> {
    let me = process::current();
    println!(
        "测试多进程任务：{data}, 当前进程号：{}, 父进程号为: {}",
        me.pid, me.ppid
    );
    let res = data.pow(3);
    // A read and a write, as Python's `-=` on a proxy: not atomic.
    let count = read_count(&share_data)?;
    share_data.set(&Key::Name("count".into()), &(count.saturating_sub(1)))?;
    share_data.set(&Key::Num(data), &res)?;
    count_down(data);
    println!("多进程任务结束：{data}, 当前进程号为: {}", me.pid);
    Ok(())
}

fn add_five_times(data: u64, share_data: &Dict<Key, u64>) -> Result<(), ObjectError> {
    share_data.set(&Key::Num(data), &data.pow(3))?;
    for _ in 0..5 {
        sleep(Duration::from_millis(100));
        let count = read_count(share_data)? + data;
        share_data.set(&Key::Name("count".into()), &count)?;
        println!("share_data count is {} ", read_count(share_data)?);
    }
    Ok(())
}

/// "不加锁": five sleepy read-modify-writes of the shared count, unprotected.
#[task]
fn counter_unlocked(data: u64, share_data: Dict<Key, u64>) -> Result<(), ObjectError> {
    add_five_times(data, &share_data)
}

/// "加锁": the same under the lock, so each process's five updates run together.
#[task]
fn counter_locked(data: u64, share_data: Dict<Key, u64>, lc: Lock) -> Result<(), ObjectError> {
    lc.acquire()?;
    let result = add_five_times(data, &share_data);
    lc.release()?;
    result
}

/// "信号量 Semaphore": at most three tasks work at once.
#[task]
fn semaphore_task(data: u64, sem: Semaphore) -> Result<u64, ObjectError> {
    println!("--------data: {data} enter work");
    sem.acquire()?;
    println!("data: {data} start work");
    let cube = count_down(data);
    println!("data: {data} done work");
    sem.release()?;
    Ok(cube)
}

/// 002 "Lock": `loop` lines, a tenth of a second apart, each printed holding the lock.
#[task]
fn lock_print(count: u32, lock: Lock) -> Result<(), ObjectError> {
    let pid = process::current().pid;
    for i in 0..count {
        sleep(Duration::from_millis(100));
        let _held = lock.lock()?;
        println!("Pid: {pid} LoopCount: {i}");
    }
    Ok(())
}

wasmpool_guest::export_tasks!(
    hello,
    say,
    run_task,
    function,
    job,
    p1,
    p2,
    p3,
    pool_task,
    pool_task_info,
    task1,
    task2,
    task3,
    run_proc,
    process_num,
    my_process,
    proc_random,
    run_proc_late,
    countdown,
    countdown_announce,
    process_task,
    process_task_unshared,
    queue_task,
    consumer,
    producer,
    pipe_task,
    pipe_consumer,
    pipe_producer,
    manager_task,
    counter_unlocked,
    counter_locked,
    semaphore_task,
    lock_print,
);
