//! Side-by-side benchmarks: wasmpool and Python's `multiprocessing`
//! (`bench/python_multiprocessing.py`) on the same machine, in the same sitting, alternating,
//! several repetitions. Prints a table of medians and spreads with the ratio, and writes it
//! to `results/bench.md` (`results/bench-smoke.md` with `--smoke`), with a bar chart of the
//! ratios next to it (`results/bench.png`, `results/bench-smoke.png`).
//!
//! `cargo bench -p wasmpool --bench compare` (add `-- --smoke` for a quick run with tiny
//! sizes, which is what CI does so the suite cannot rot).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wasmpool::{Manager, Module, Pool, Process};

mod fairness;
mod plot;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs one Python workload; returns the values of the JSON lines it prints, by name.
fn python(workload: &str) -> Vec<(String, f64)> {
    let Ok(out) = Command::new("python3")
        .arg(root().join("bench/python_multiprocessing.py"))
        .arg(workload)
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["workload"].as_str()?.to_string(), v["value"].as_f64()?)))
        .collect()
}

/// Messages per second through a `Queue`, one producer process → this program, start
/// included (as the Python workload times it).
fn queue_throughput(ctx: &Ctx, n: u64) -> f64 {
    let q = Manager::new().queue::<Option<u64>>();
    let t = Instant::now();
    let p = Process::new(&ctx.testkit, "queue_produce", &(&q, n)).expect("process");
    p.start().expect("start");
    let mut got = 0u64;
    while q.get().expect("get").is_some() {
        got += 1;
    }
    let dt = t.elapsed().as_secs_f64();
    p.join().expect("join");
    assert_eq!(got, n);
    n as f64 / dt
}

/// Microseconds per `Pipe` round trip between this program and a child that echoes.
fn pipe_roundtrip(ctx: &Ctx, n: u64) -> f64 {
    let (a, b) = Manager::new().pipe::<u64>(true);
    let p = Process::new(&ctx.testkit, "pipe_pong", &(&b, n)).expect("process");
    p.start().expect("start");
    // The first round trip waits for the child to start; time the rest, as Python does
    // after `start()` returns (its child is forked and running by then).
    a.send(&0).expect("send");
    a.recv().expect("recv");
    let t = Instant::now();
    for i in 1..n {
        a.send(&i).expect("send");
        assert_eq!(a.recv().expect("recv"), i);
    }
    let dt = t.elapsed().as_secs_f64();
    p.join().expect("join");
    dt / (n - 1) as f64 * 1e6
}

/// Increments per second of a shared dict counter by two processes: `n` each, under a lock
/// (read and write), or with the atomic `increment`. Start and join included.
fn dict_counter(ctx: &Ctx, n: u64, atomic: bool) -> f64 {
    let m = Manager::new();
    let (d, lock) = (m.dict::<String, i64>(), m.lock());
    let t = Instant::now();
    let ps: Vec<Process> = (0..2)
        .map(|_| {
            let p = if atomic {
                Process::new(&ctx.testkit, "atomic_increments", &(&d, n))
            } else {
                Process::new(&ctx.testkit, "locked_increments", &(&d, &lock, n))
            }
            .expect("process");
            p.start().expect("start");
            p
        })
        .collect();
    for p in &ps {
        p.join().expect("join");
    }
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(
        d.get(&"count".to_string()).expect("get"),
        Some(2 * n as i64)
    );
    2.0 * n as f64 / dt
}

/// Workers in the pool whose idle memory is measured (the Python workload uses the same).
const IDLE_POOL: usize = 4;

/// A process's resident set (`VmRSS` of `/proc/<pid>/status`) in MiB.
fn vm_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A process's private memory (`Private_Clean` + `Private_Dirty` of
/// `/proc/<pid>/smaps_rollup`) in MiB: what it does not share with other processes.
fn private_mib(pid: u32) -> Option<f64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kib = |name: &str| -> Option<f64> {
        let line = rollup.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    Some((kib("Private_Clean:")? + kib("Private_Dirty:")?) / 1024.0)
}

/// Median resident memory (MiB) of an idle worker: a pool of `IDLE_POOL` workers, each warmed
/// by one task (module loaded, instance built), then left idle for a moment.
fn idle_worker_rss(ctx: &Ctx) -> f64 {
    idle_worker_memory(&ctx.testkit, "pid_after", vm_rss_mib)
}

/// As [`idle_worker_rss`], for `module` (whose task `pid_after(ms)` answers its worker's
/// pid), measured by `measure`.
fn idle_worker_memory(module: &Module, pid_after: &str, measure: fn(u32) -> Option<f64>) -> f64 {
    let pool = Pool::new(module, IDLE_POOL).expect("pool");
    pool.wait_for_workers();
    // Tasks that sleep a little, one item per chunk, until every worker has run one.
    let mut warmed = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let pids: Vec<u32> = pool
            .map_chunked(pid_after, vec![50u64; IDLE_POOL], 1)
            .expect("warm-up");
        warmed.extend(pids);
        if pool.pids().iter().all(|p| warmed.contains(p)) {
            break;
        }
    }
    let pids = pool.pids();
    assert!(
        pids.len() == IDLE_POOL && pids.iter().all(|p| warmed.contains(p)),
        "every worker ran a task: workers {pids:?}, warmed {warmed:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let mem: Vec<f64> = pids
        .iter()
        .map(|&pid| measure(pid).expect("memory of a worker"))
        .collect();
    median(&mem).expect("workers")
}

// ---- Python guests (examples/py-*): full runs only (a first build takes ~30 CPU-s) ----

/// The Python guests, built on first use, in a runtime of their own. (Before each module had
/// a fork server of its own, forking from one that held a Python component, ~100 MB
/// deserialized, copied its page tables for every worker, so the Rust rows of the later
/// repetitions measured that: cold start 1.6 → 4.2 ms, an idle worker 8.4 → 15.7 MiB in one
/// run.)
#[derive(Default)]
struct PyCtx {
    runtime: std::sync::OnceLock<wasmpool::Runtime>,
    seeds: std::sync::OnceLock<Module>,
    testkit: std::sync::OnceLock<Module>,
    builds: std::sync::OnceLock<(f64, f64)>,
    compiles: std::sync::OnceLock<(f64, f64)>,
}

/// The Python rows' runtime (see [`PyCtx`]).
fn py_runtime(ctx: &Ctx) -> &wasmpool::Runtime {
    ctx.py
        .runtime
        .get_or_init(|| wasmpool::Runtime::builder().build().expect("runtime"))
}

fn py_seeds(ctx: &Ctx) -> &Module {
    ctx.py.seeds.get_or_init(|| {
        let m = py_runtime(ctx)
            .load(root().join("examples/py-seeds"))
            .expect("build examples/py-seeds");
        m.tasks().expect("tasks");
        m
    })
}

fn py_testkit(ctx: &Ctx) -> &Module {
    ctx.py.testkit.get_or_init(|| {
        let m = py_runtime(ctx)
            .load(root().join("examples/py-testkit/testkit.py"))
            .expect("build examples/py-testkit");
        m.tasks().expect("tasks");
        m
    })
}

/// Tasks per second for `map(job, range(n))` of the seeds' Python `job` (`x**2`) on two
/// workers: Python's peer maps the same function with `Pool(2).map`.
fn py_map_tiny(ctx: &Ctx, n: u64) -> f64 {
    let pool = Pool::new(py_seeds(ctx), 2).expect("pool");
    let _: Vec<u64> = pool.map("job", 0..1000u64).expect("warm-up");
    let t = Instant::now();
    let out: Vec<u64> = pool.map("job", 0..n).expect("map");
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(out[(n - 1) as usize], (n - 1) * (n - 1));
    n as f64 / dt
}

/// The seeds' CPU-bound countdown (`process_task(data)`: `data**3` decrements) in the
/// Python guest, against the same function in the host's native CPython: guest time ÷
/// native time (each the best of three).
fn py_kernel_vs_native(ctx: &Ctx, data: u64) -> f64 {
    let pool = Pool::new(py_seeds(ctx), 1).expect("pool");
    let _: Option<u8> = pool.apply("process_task", &(1u64,)).expect("warm-up");
    let guest = (0..3)
        .map(|_| {
            let t = Instant::now();
            let _: Option<u8> = pool.apply("process_task", &(data,)).expect("countdown");
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let script = format!(
        "import time\n\
         def process_task(data):\n    res = data ** 3\n    while res > 0:\n        res -= 1\n\
         best = float('inf')\n\
         for _ in range(3):\n    t = time.perf_counter()\n    process_task({data})\n    \
         best = min(best, time.perf_counter() - t)\n\
         print(best)\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 runs");
    let native: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("python3 printed its time");
    guest / native
}

/// CPU seconds this process has used so far, all its threads (wasmtime compiles on several).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF needs nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU seconds to compile (not build: the builds are cached) a first and then a second
/// Python component, examples/py-hello and examples/py-testkit, into a compile cache of
/// their own, empty at the start: the second takes most of its functions from the
/// function cache the first filled. Measured once per run (the first is ~20 CPU-seconds).
fn py_compiles(ctx: &Ctx) -> (f64, f64) {
    *ctx.py.compiles.get_or_init(|| {
        // Built (componentize-py) before the timing.
        let _ = py_testkit(ctx);
        let _ = py_runtime(ctx)
            .load(root().join("examples/py-hello/hello.py"))
            .expect("py-hello");
        let dir = std::env::temp_dir().join(format!("wasmpool-bench-fn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let runtime = wasmpool::Runtime::builder()
            .cache_dir(&dir)
            .build()
            .expect("runtime");
        let once = |path: &str| {
            let t = cpu_seconds();
            runtime.load(root().join(path)).expect("compile");
            cpu_seconds() - t
        };
        let first = once("examples/py-hello/hello.py");
        let second = once("examples/py-testkit/testkit.py");
        let _ = std::fs::remove_dir_all(&dir);
        (first, second)
    })
}

/// A new program's run of one task, as `wasmpool run` is: load the module (its artifact is
/// cached), start a worker, run the task; the benchmark's own executable started with
/// `--cold-run MODULE TASK`.
fn cold_run_main(args: &[String]) {
    let (Some(module), Some(task)) = (args.first(), args.get(1)) else {
        panic!("--cold-run MODULE TASK");
    };
    let module = Module::load(module).expect("load");
    let p = Process::new(&module, task, &(7u64,)).expect("process");
    p.start().expect("start");
    p.join().expect("join");
    let out: u64 = p.result().expect("result");
    assert_eq!(out, 49);
}

/// Median wall seconds of a cold run of `square 7` from `module`.
fn cold_run(module: &Path) -> f64 {
    let exe = std::env::current_exe().expect("the benchmark's executable");
    let mut times: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            let ok = Command::new(&exe)
                .arg("--cold-run")
                .arg(module)
                .arg("square")
                .status()
                .expect("run")
                .success();
            assert!(ok, "cold run of {}", module.display());
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A cold run of a Python task (its build and artifact cached) ÷ the same of the Rust guest.
fn py_cold_run_vs_rust(ctx: &Ctx) -> f64 {
    // The Python example with a `square` (py-testkit has none).
    let py = root().join("examples/py-hello/hello.py");
    // The component examples/testkit built to (a Cargo project given as the module would
    // time cargo's check that it is up to date, not wasmpool).
    let _ = &ctx.testkit;
    let rust = root().join("examples/target/wasm32-wasip2/release/testkit.wasm");
    // Each once first: builds and compiles are not what is measured.
    cold_run(&py);
    cold_run(&rust);
    cold_run(&py) / cold_run(&rust)
}

/// Seconds to build and compile a Python project never built before (componentize-py,
/// then compiling its ~19 MB component), for a first and then a second project: each a
/// fresh copy of examples/py-hello with a unique comment. Measured once per run (cached
/// for the later repetitions): a build is ~30 CPU-seconds.
fn py_builds(ctx: &Ctx) -> (f64, f64) {
    *ctx.py.builds.get_or_init(|| {
        let source = std::fs::read_to_string(root().join("examples/py-hello/hello.py"))
            .expect("read py-hello");
        let dir = std::env::temp_dir().join(format!("wasmpool-bench-py-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let once = |n: u32| {
            let file = dir.join(format!("bench_project_{n}.py"));
            std::fs::write(&file, format!("{source}\n# bench build {stamp}-{n}\n"))
                .expect("write project");
            let t = Instant::now();
            let m = py_runtime(ctx)
                .load(&file)
                .expect("build the Python project");
            m.tasks().expect("tasks");
            t.elapsed().as_secs_f64()
        };
        let first = once(1);
        let second = once(2);
        let _ = std::fs::remove_dir_all(&dir);
        (first, second)
    })
}

struct Ctx {
    testkit: Module,
    compute: Module,
    smoke: bool,
    py: PyCtx,
}

/// Milliseconds per `Process` start + join of a no-op task.
fn spawn_join(ctx: &Ctx, spare: Spare) -> f64 {
    let module = &ctx.testkit;
    let n = if ctx.smoke { 5 } else { 40 };
    // "Ready": a spare is prepared outside the timing, and no background refill competes with
    // the measured start; "BackToBack": the default behaviour, refilling in the background.
    module.set_keep_spare(matches!(spare, Spare::BackToBack));
    let mut total = 0.0;
    for _ in 0..n {
        if matches!(spare, Spare::Ready) {
            module.prepare_spare().expect("spare");
        }
        let t = Instant::now();
        let p = Process::new(module, "noop", &()).expect("process");
        p.start().expect("start");
        p.join().expect("join");
        total += t.elapsed().as_secs_f64();
        assert_eq!(p.exitcode(), Some(0));
    }
    total / n as f64 * 1e3
}

enum Spare {
    None,
    Ready,
    BackToBack,
}

/// Tasks per second for `map(square, range(n))` on two workers.
fn map_tiny(ctx: &Ctx, n: u64, chunksize: Option<usize>) -> f64 {
    let pool = Pool::new(&ctx.testkit, 2).expect("pool");
    let _: Vec<u64> = pool.map("square", 0..1000u64).expect("warm-up");
    let t = Instant::now();
    let out: Vec<u64> = match chunksize {
        Some(c) => pool.map_chunked("square", 0..n, c),
        None => pool.map("square", 0..n),
    }
    .expect("map");
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(out[(n - 1) as usize], (n - 1) * (n - 1));
    n as f64 / dt
}

/// Tasks per second for `n` `apply_async(square)` collected with `get`, on two workers.
fn apply_async_tiny(ctx: &Ctx, n: u64) -> f64 {
    let pool = Pool::new(&ctx.testkit, 2).expect("pool");
    let t = Instant::now();
    let rs: Vec<_> = (0..n)
        .map(|i| {
            pool.apply_async::<_, u64>("square", &(i,))
                .expect("apply_async")
        })
        .collect();
    let out: Vec<u64> = rs.iter().map(|r| r.get().expect("get")).collect();
    let dt = t.elapsed().as_secs_f64();
    assert_eq!(out[(n - 1) as usize], (n - 1) * (n - 1));
    n as f64 / dt
}

/// Iterations of `spin_work` that take about 10 ms in one worker.
fn calibrate(ctx: &Ctx) -> u64 {
    let pool = Pool::new(&ctx.compute, 1).expect("pool");
    let mut iters = 1_000_000u64;
    loop {
        let t = Instant::now();
        let _: u64 = pool.apply("spin_work", &(iters,)).expect("spin");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if ms > 5.0 || iters > 1 << 34 {
            return (iters as f64 * 10.0 / ms) as u64;
        }
        iters *= 4;
    }
}

/// Parallel efficiency (%) of 10 ms tasks on `cpu_count()` workers against one worker.
fn cpu_scaling(ctx: &Ctx, iters: u64) -> f64 {
    let cores = wasmpool::cpu_count();
    let tasks = if ctx.smoke { 2 * cores } else { 16 * cores };
    let rate = |workers: usize| {
        let pool = Pool::new(&ctx.compute, workers).expect("pool");
        let _: Vec<u64> = pool
            .map_chunked("spin_work", vec![iters / 10; workers], 1)
            .expect("warm-up");
        let t = Instant::now();
        let _: Vec<u64> = pool
            .map_chunked("spin_work", vec![iters; tasks], 1)
            .expect("map");
        tasks as f64 / t.elapsed().as_secs_f64()
    };
    let one = rate(1);
    let n = rate(cores);
    n / (cores as f64 * one) * 100.0
}

/// Slowdown of the wasm kernel against the same kernel compiled natively.
fn wasm_vs_native(ctx: &Ctx, iters: u64) -> f64 {
    let pool = Pool::new(&ctx.compute, 1).expect("pool");
    let t = Instant::now();
    let wasm: u64 = pool.apply("spin_work", &(iters,)).expect("spin");
    let wasm_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let native = spin_work_native(std::hint::black_box(iters));
    let native_s = t.elapsed().as_secs_f64();
    assert_eq!(wasm, native, "the same kernel gives the same answer");
    wasm_s / native_s
}

/// The `spin_work` kernel of examples/compute, natively.
fn spin_work_native(iterations: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// One line of the table: how to measure ours, and which Python workload it is compared to.
struct Row<'a> {
    workload: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    target: &'static str,
    /// The target as a ratio, for the plot's marker (`None`: not a ratio, e.g. "≥ 90%").
    target_ratio: Option<f64>,
    /// The peer script's workload argument and the name of the JSON line to read.
    peer: Option<(&'static str, &'static str)>,
    /// Turns the peer's value into this row's unit (e.g. countdown times into an efficiency).
    measure: Box<dyn Fn(&Ctx) -> f64 + 'a>,
    python: Vec<f64>,
    ours: Vec<f64>,
}

impl Row<'_> {
    /// How many times better wasmpool is than Python, from the medians.
    fn ratio(&self) -> Option<f64> {
        let (p, o) = (median(&self.python)?, median(&self.ours)?);
        Some(if self.higher_is_better { o / p } else { p / o })
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied()
}

fn cell(v: &[f64], unit: &str) -> String {
    match median(v) {
        None => "—".into(),
        Some(m) => {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{} {unit} ({}–{})", fmt(m), fmt(min), fmt(max))
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn main() {
    wasmpool::run_worker_if_requested();
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--cold-run") {
        cold_run_main(&args[i + 1..]);
        return;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    let reps = if smoke { 1 } else { 5 };
    let ctx = Ctx {
        testkit: Module::load(root().join("examples/testkit")).expect("build examples/testkit"),
        compute: Module::load(root().join("examples/compute")).expect("build examples/compute"),
        smoke,
        py: PyCtx::default(),
    };
    ctx.testkit.tasks().expect("tasks");
    ctx.compute.tasks().expect("tasks");
    let (map_n, chunk1_n, apply_n) = if smoke {
        (2_000, 500, 500)
    } else {
        (200_000, 20_000, 20_000)
    };
    let iters = calibrate(&ctx);
    let (queue_n, pipe_n, dict_n) = if smoke {
        (2_000, 500, 200)
    } else {
        (100_000, 20_000, 2_000)
    };

    let cold = std::cell::Cell::new(None);
    let cold_start = |ctx: &Ctx| {
        let v = spawn_join(ctx, Spare::None);
        cold.set(Some(v));
        v
    };
    let row = |workload,
               unit,
               higher_is_better,
               (target, target_ratio),
               peer,
               measure: Box<dyn Fn(&Ctx) -> f64>| Row {
        workload,
        unit,
        higher_is_better,
        target,
        target_ratio,
        peer,
        measure,
        python: vec![],
        ours: vec![],
    };
    let fork = Some(("spawn_fork", "spawn_join_fork"));
    let mut rows = vec![
        row(
            "Process start+join, cold worker (vs fork)",
            "ms",
            false,
            ("≤ 3 ms, ≥ 2x", Some(2.0)),
            fork,
            Box::new(cold_start),
        ),
        row(
            "Process start+join, warm spare ready (vs fork)",
            "ms",
            false,
            ("≤ 3 ms, ≥ 2x", Some(2.0)),
            fork,
            Box::new(|c| spawn_join(c, Spare::Ready)),
        ),
        row(
            "Process start+join, back to back (vs fork)",
            "ms",
            false,
            ("≥ 2x", Some(2.0)),
            fork,
            Box::new(|c| spawn_join(c, Spare::BackToBack)),
        ),
        row(
            "Process start+join, cold worker (vs spawn)",
            "ms",
            false,
            ("≥ 30x", Some(30.0)),
            Some(("spawn_spawn", "spawn_join_spawn")),
            Box::new(|c| cold.get().unwrap_or_else(|| spawn_join(c, Spare::None))),
        ),
        row(
            "map 200k tiny tasks, default chunksize",
            "tasks/s",
            true,
            ("≥ 3x", Some(3.0)),
            Some(("map_tiny", "map_tiny_200k")),
            Box::new(move |c| map_tiny(c, map_n, None)),
        ),
        row(
            "map 20k tiny tasks, chunksize 1",
            "tasks/s",
            true,
            ("≥ 10x", Some(10.0)),
            Some(("map_tiny_chunk1", "map_tiny_20k_chunksize1")),
            Box::new(move |c| map_tiny(c, chunk1_n, Some(1))),
        ),
        row(
            "20k apply_async + get",
            "tasks/s",
            true,
            ("≥ 10x", Some(10.0)),
            Some(("apply_async_tiny", "apply_async_tiny_20k")),
            Box::new(move |c| apply_async_tiny(c, apply_n)),
        ),
        row(
            "Queue, 100k small messages, producer process → consumer",
            "msgs/s",
            true,
            ("≥ 10x", Some(10.0)),
            Some(("queue", "queue_100k")),
            Box::new(move |c| queue_throughput(c, queue_n)),
        ),
        row(
            "Pipe ping-pong round trip",
            "µs",
            false,
            ("≤ 1/3 (≥ 3x)", Some(3.0)),
            Some(("pipe", "pipe_roundtrip")),
            Box::new(move |c| pipe_roundtrip(c, pipe_n)),
        ),
        row(
            "2 processes × 2000 locked increments of a dict counter (Python: Manager dict + Lock)",
            "incr/s",
            true,
            ("≥ 20x", Some(20.0)),
            Some(("dict_lock", "dict_locked_incr")),
            Box::new(move |c| dict_counter(c, dict_n, false)),
        ),
        row(
            "2 processes × 2000 atomic increments (Python: Manager dict + Lock)",
            "incr/s",
            true,
            ("≥ 20x", Some(20.0)),
            Some(("dict_lock", "dict_locked_incr")),
            Box::new(move |c| dict_counter(c, dict_n, true)),
        ),
        row(
            "CPU-bound 10 ms tasks, parallel efficiency at N = cores (Python: its countdown workload on 2)",
            "%",
            true,
            ("≥ 90%", None),
            Some(("cpu", "efficiency")),
            Box::new(move |c| cpu_scaling(c, iters)),
        ),
        row(
            "worker resident memory (RSS) per idle worker, pool of 4, after one task each",
            "MiB",
            false,
            ("≤ Python's", Some(1.0)),
            Some(("idle_rss", "idle_worker_rss")),
            Box::new(idle_worker_rss),
        ),
        row(
            "wasm / native time, same kernel",
            "x",
            false,
            ("≤ 1.3x", None),
            None,
            Box::new(move |c| wasm_vs_native(c, iters * 4)),
        ),
    ];
    // Tenants sharing one pool: the flood runs once a repetition, in the first of its rows
    // that runs; the others read what it measured.
    let flood = std::rc::Rc::new(fairness::SharedFlood::default());
    let flood_row = |row: usize, pick: fn(&fairness::Flood) -> f64| {
        let flood = flood.clone();
        move |c: &Ctx| {
            let v = flood.get(row, || {
                let v = fairness::flood(&c.testkit, c.smoke);
                eprintln!("flood: {} light tasks measured; {v:?}", v.samples);
                v
            });
            pick(&v)
        }
    };
    rows.extend([
        row(
            "Fair queuing: a light tenant's queue wait behind a 100k-task flood (9 light tenants), p50",
            "ms",
            false,
            ("report", None),
            None,
            Box::new(flood_row(0, |f| f.queue_p50_ms)),
        ),
        row(
            "Fair queuing: a light tenant's queue wait behind a 100k-task flood (9 light tenants), p99",
            "ms",
            false,
            ("≤ one round (20 ms)", None),
            None,
            Box::new(flood_row(1, |f| f.queue_p99_ms)),
        ),
        row(
            "Fair queuing: the same light tenant's round trip (submit → result in its thread), p99",
            "ms",
            false,
            ("report", None),
            None,
            Box::new(flood_row(2, |f| f.trip_p99_ms)),
        ),
        row(
            "Fair queuing: Jain's index of the 9 light tenants' mean queue waits",
            "index",
            true,
            ("≥ 0.95", None),
            None,
            Box::new(flood_row(3, |f| f.jain)),
        ),
        row(
            "The same light task's queue wait behind the same flood, no tenants (FIFO, as Python's Pool)",
            "ms",
            false,
            ("report", None),
            None,
            Box::new(flood_row(4, |f| f.fifo_ms)),
        ),
        row(
            "Fair queuing: Jain's index of 4 equal backlogged tenants' work done (FIFO: 0.25)",
            "index",
            true,
            ("≥ 0.95", None),
            None,
            Box::new(|c| fairness::backlogged(&c.testkit, c.smoke)),
        ),
    ]);
    // Python guests: a first build of each takes ~30 CPU-seconds, so smoke runs (CI) leave
    // them out.
    if !smoke {
        rows.extend([
            row(
                "Python guest: map 200k tiny tasks (the seeds' `job`), default chunksize",
                "tasks/s",
                true,
                ("≥ 1x", Some(1.0)),
                // Python's `Pool.map` of the same function (`x**2`; the Rust rows' peer
                // maps `x * x`).
                Some(("map_tiny_job", "map_tiny_job_200k")),
                Box::new(move |c| py_map_tiny(c, map_n)),
            ),
            row(
                "Python guest: guest / native CPython time, the seeds' countdown (200**3)",
                "x",
                false,
                ("report", None),
                None,
                Box::new(|c| py_kernel_vs_native(c, 200)),
            ),
            row(
                "Python guest: build + compile a first new project (measured once)",
                "s",
                false,
                ("report", None),
                None,
                Box::new(|c| py_builds(c).0),
            ),
            row(
                "Python guest: build + compile a second new project (measured once)",
                "s",
                false,
                // Mostly componentize-py's own build of the interpreter's snapshot, which
                // no cache of ours can shorten; the compile's goal is on the rows below.
                ("report", None),
                None,
                Box::new(|c| py_builds(c).1),
            ),
            row(
                "Python guest: compile a first new component, CPU s (its build cached)",
                "s",
                false,
                ("report", None),
                None,
                Box::new(|c| py_compiles(c).0),
            ),
            row(
                "Python guest: compile a second new component, CPU s (function cache warm)",
                "s",
                false,
                ("< 1/3 of the first", None),
                None,
                Box::new(|c| py_compiles(c).1),
            ),
            row(
                "Python guest: cold run of a cached task (a new program), ÷ the Rust guest's",
                "x",
                false,
                ("≤ 3x", None),
                None,
                Box::new(py_cold_run_vs_rust),
            ),
            row(
                "Python guest: resident memory (RSS) per idle worker, pool of 4",
                "MiB",
                false,
                ("report", None),
                Some(("idle_rss", "idle_worker_rss")),
                Box::new(|c| idle_worker_memory(py_testkit(c), "pid_after", vm_rss_mib)),
            ),
            row(
                "Python guest: private memory per idle worker, pool of 4",
                "MiB",
                false,
                ("report", None),
                None,
                Box::new(|c| idle_worker_memory(py_testkit(c), "pid_after", private_mib)),
            ),
        ]);
    }
    // `--only WORD` keeps the rows whose name contains WORD.
    let args: Vec<String> = std::env::args().collect();
    // A run of some rows writes its own files, never the full run's table and chart.
    let partial = args.iter().any(|a| a == "--only" || a == "--skip");
    if let Some(word) = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
    {
        rows.retain(|r| r.workload.contains(word.as_str()));
    }
    // `--skip WORD` drops the rows whose name contains WORD (`--skip Python` runs the
    // rows an earlier version had, for an A/B comparison).
    if let Some(word) = args
        .iter()
        .position(|a| a == "--skip")
        .and_then(|i| args.get(i + 1))
    {
        rows.retain(|r| !r.workload.contains(word.as_str()));
    }
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        let mut peer_runs: Vec<(&str, Vec<(String, f64)>)> = Vec::new();
        for r in &mut rows {
            if let Some((arg, name)) = r.peer {
                if smoke && rep > 0 && arg == "spawn_spawn" {
                    continue;
                }
                if !peer_runs.iter().any(|(a, _)| *a == arg) {
                    let mut lines = python(arg);
                    if arg == "cpu" {
                        let get = |n: &str| lines.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
                        if let (Some(serial), Some(pool2)) = (
                            get("countdown_100_200_300_serial"),
                            get("countdown_100_200_300_pool2"),
                        ) {
                            lines.push(("efficiency".into(), serial / (2.0 * pool2) * 100.0));
                        }
                    }
                    peer_runs.push((arg, lines));
                }
                let lines = &peer_runs
                    .iter()
                    .find(|(a, _)| *a == arg)
                    .map(|(_, l)| l.clone())
                    .unwrap_or_default();
                r.python
                    .extend(lines.iter().find(|(n, _)| n == name).map(|(_, v)| *v));
            }
            let v = (r.measure)(&ctx);
            r.ours.push(v);
        }
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mut table = format!(
        "Machine: {} cores, {cpu}. {reps} repetition(s), Python and wasmpool alternating; median (min–max).\n\
         Ratio: how many times better wasmpool is (Python ÷ wasmpool for times and memory, wasmpool ÷ Python for rates).\n\n\
         | workload | Python | wasmpool | ratio | target |\n|---|---|---|---|---|\n",
        wasmpool::cpu_count()
    );
    for r in &rows {
        let ratio = r.ratio().map_or_else(|| "—".into(), |x| format!("{x:.1}x"));
        table.push_str(&format!(
            "| {} | {} | {} | {ratio} | {} |\n",
            r.workload,
            cell(&r.python, r.unit),
            cell(&r.ours, r.unit),
            r.target
        ));
    }
    println!("{table}");
    let dir = root().join("results");
    if std::fs::create_dir_all(&dir).is_ok() {
        let name = match (smoke, partial) {
            (true, _) => "bench-smoke",
            (false, true) => "bench-partial",
            (false, false) => "bench",
        };
        let _ = std::fs::write(dir.join(format!("{name}.md")), &table);
        let bars: Vec<plot::Bar> = rows
            .iter()
            .map(|r| plot::Bar {
                label: r.workload.to_string(),
                ratio: r.ratio(),
                target: r.target_ratio,
                target_text: r.target.to_string(),
                ours: median(&r.ours).map(|o| format!("{} {}", fmt(o), r.unit)),
            })
            .collect();
        let subtitle = format!(
            "{} cores, {cpu}; {reps} repetition(s){}; bar = median ratio, log scale",
            wasmpool::cpu_count(),
            if smoke { ", SMOKE sizes" } else { "" }
        );
        let png = dir.join(format!("{name}.png"));
        if let Err(e) = plot::write_png(&png, &subtitle, &bars) {
            eprintln!("could not write {}: {e}", png.display());
        }
    }
}
