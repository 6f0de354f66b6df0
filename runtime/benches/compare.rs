//! Side-by-side benchmarks: wasmpool and Python's `multiprocessing` (bench/python_multiprocessing.py)
//! on the same machine, in the same sitting, alternating, several repetitions; prints a table
//! of medians and spreads with the ratio, and writes it to `results/bench.md`.
//!
//! `cargo bench -p wasmpool --bench compare` (add `-- --smoke` for a quick run with tiny sizes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use wasmpool::{Module, Process};

struct Figure {
    workload: &'static str,
    unit: &'static str,
    lower_is_better: bool,
    python_name: &'static str,
    python: Vec<f64>,
    ours: Vec<f64>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs one Python workload and returns the value of the JSON line it prints for `name`.
fn python(workload: &str, name: &str) -> Option<f64> {
    let out = Command::new("python3")
        .arg(root().join("bench/python_multiprocessing.py"))
        .arg(workload)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["workload"] == name)
        .and_then(|v| v["value"].as_f64())
}

/// Milliseconds per `Process` start + join of a no-op task.
fn spawn_join(module: &Module, n: usize, warm: bool) -> f64 {
    module.set_keep_spare(warm);
    let mut total = 0.0;
    for _ in 0..n {
        if warm {
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

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        f64::NAN
    } else {
        s[s.len() / 2]
    }
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.3}–{max:.3}")
}

fn main() {
    wasmpool::run_worker_if_requested();
    let smoke = std::env::args().any(|a| a == "--smoke");
    let reps = if smoke { 1 } else { 5 };
    let n = if smoke { 5 } else { 40 };
    let module = Module::load(root().join("examples/testkit")).expect("build examples/testkit");
    module.tasks().expect("tasks");

    let mut figures = vec![
        Figure {
            workload: "Process start+join, cold (vs fork)",
            unit: "ms",
            lower_is_better: true,
            python_name: "spawn_fork",
            python: vec![],
            ours: vec![],
        },
        Figure {
            workload: "Process start+join, warm spare (vs fork)",
            unit: "ms",
            lower_is_better: true,
            python_name: "spawn_fork",
            python: vec![],
            ours: vec![],
        },
        Figure {
            workload: "Process start+join, cold (vs spawn)",
            unit: "ms",
            lower_is_better: true,
            python_name: "spawn_spawn",
            python: vec![],
            ours: vec![],
        },
    ];
    for rep in 0..reps {
        eprintln!("repetition {}/{reps}", rep + 1);
        let fork = python("spawn_fork", "spawn_join_fork");
        let spawn = if smoke && rep > 0 {
            None
        } else {
            python("spawn_spawn", "spawn_join_spawn")
        };
        let cold = spawn_join(&module, n, false);
        let warm = spawn_join(&module, n, true);
        figures[0].ours.push(cold);
        figures[1].ours.push(warm);
        figures[2].ours.push(cold);
        figures[0].python.extend(fork);
        figures[1].python.extend(fork);
        figures[2].python.extend(spawn);
    }

    let machine = format!(
        "{} cores, {}",
        wasmpool::cpu_count(),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string())
            )
            .unwrap_or_default()
    );
    let mut table = String::new();
    table.push_str(&format!(
        "Machine: {machine}; {reps} repetitions, alternating; median (min–max).\n\n"
    ));
    table.push_str("| workload | Python | wasmpool | ratio |\n|---|---|---|---|\n");
    for f in &figures {
        let (p, o) = (median(&f.python), median(&f.ours));
        let ratio = if f.lower_is_better { p / o } else { o / p };
        table.push_str(&format!(
            "| {} | {:.3} {unit} ({}) | {:.3} {unit} ({}) | {:.1}x {} |\n",
            f.workload,
            p,
            spread(&f.python),
            o,
            spread(&f.ours),
            ratio,
            if ratio >= 1.0 { "faster" } else { "slower" },
            unit = f.unit,
        ));
        let _ = f.python_name;
    }
    println!("{table}");
    let dir = root().join("results");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(
            dir.join(if smoke { "bench-smoke.md" } else { "bench.md" }),
            &table,
        );
    }
}
