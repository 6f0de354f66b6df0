//! The seed programs' ports (`runtime/examples/seed_*.rs`) behave as the Python originals:
//! what they print, in what order, and how long they take where that is the point.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

/// Runs a seed example (built by `cargo test` beside this test binary) and returns its stdout.
fn run_seed(name: &str, args: &[&str]) -> String {
    seeds();
    let exe: PathBuf = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join(name))
        .unwrap();
    assert!(
        exe.is_file(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the examples",
        exe.display()
    );
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = within(Duration::from_secs(120), move || {
        Command::new(exe).args(&args).output().unwrap()
    });
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in output:\n{text}"))
}

#[test]
fn seed_000_three_processes_say_hello_in_parallel() {
    let out = run_seed("seed_hello_processes", &[]);
    assert!(
        out.contains(&format!("The number of CPU is:{}", wasmpool::cpu_count())),
        "{out}"
    );
    assert_eq!(out.matches("child p.name: Process-").count(), 3, "{out}");
    for line in [
        "task1: hello, one",
        "task2: hello, two",
        "task3: hello, three",
    ] {
        assert!(out.contains(line), "{out}");
    }
    let secs: f64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("3 processes take ")
                .and_then(|r| r.strip_suffix(" seconds"))
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1.0, "each task sleeps a second: {secs}");
    assert!(
        secs < 3.0,
        "the three sleeps overlap, as separate processes: {secs}"
    );
}

#[test]
fn seed_001_children_print_their_own_pids() {
    let out = run_seed("seed_run_proc", &[]);
    let parent: u32 = out
        .lines()
        .next()
        .unwrap()
        .strip_prefix("Parent process ")
        .unwrap()
        .parse()
        .unwrap();
    let mut pids = Vec::new();
    for name in 1..=4 {
        let prefix = format!("child process {name} (");
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{out}"));
        let pid: u32 = line[prefix.len()..]
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(line.ends_with(") Runing"));
        assert_ne!(pid, parent);
        pids.push(pid);
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four distinct processes");
}

#[test]
fn seed_002_active_children_and_cpu_count() {
    let out = run_seed("seed_active_children", &["12"]);
    assert!(out.contains(&format!("CPU number:{}", wasmpool::cpu_count())));
    assert!(
        out.matches("Child process name: Process-").count() >= 1,
        "{out}"
    );
    let ended = position(&out, "Process Ended");
    for i in 0..12 {
        assert!(out.contains(&format!("Process: {i}\n")), "{out}");
    }
    assert!(
        position(&out, "Process: 11\n") > ended,
        "children finish after the parent's last line"
    );
}

#[test]
fn seed_002_my_process_runs_side_by_side() {
    let out = run_seed("seed_my_process", &["plain"]);
    assert_eq!(out.matches("LoopCount: ").count(), 2 + 3 + 4, "{out}");
    assert_eq!(out.matches("LoopCount: 3").count(), 1, "{out}");
}

#[test]
fn seed_002_daemons_die_with_the_main_process() {
    let out = run_seed("seed_my_process", &["daemon"]);
    assert_eq!(out.trim(), "Main process Ended!");
}

#[test]
fn seed_002_joined_daemons_run_one_after_another() {
    let out = run_seed("seed_my_process", &["daemon-join"]);
    let counts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("LoopCount: ").nth(1))
        .collect();
    assert_eq!(
        counts,
        ["0", "1", "0", "1", "2", "0", "1", "2", "3"],
        "{out}"
    );
    assert!(out.ends_with("Main process Ended!\n"));
}

#[test]
fn seed_003_join_waits_and_no_join_does_not() {
    let out = run_seed("seed_join", &[]);
    assert!(position(&out, "p1 end") < position(&out, "child processes end."));
    assert!(position(&out, "p2 end") < position(&out, "child processes end."));
    let first = position(&out, "Run child process test");
    let joined_end = position(&out, "child process end.");
    assert!(
        first < joined_end,
        "joined: the child's line comes first\n{out}"
    );
    let rest = &out[joined_end + 1..];
    let not_joined_end = position(rest, "child process end.");
    assert!(
        position(rest, "Run child process test") > not_joined_end,
        "not joined: the parent goes on\n{out}"
    );
}

#[test]
fn seed_004_countdown_with_and_without_join() {
    // Without join the parent does not wait: both lines appear, in whichever order the race
    // gives (a warm worker can finish the 1M-step countdown before the parent prints, which
    // Python's slower child never does).
    let out = run_seed("seed_countdown", &["no-join"]);
    position(&out, "--------end");
    position(&out, "==============: 子进程结束");
    let out = run_seed("seed_countdown", &["join"]);
    assert!(
        position(&out, "==============: 子进程结束") < position(&out, "--------end"),
        "{out}"
    );
    let out = run_seed("seed_countdown", &["single"]);
    assert!(
        out.contains("--------end") && out.contains("-----耗时："),
        "{out}"
    );
}

#[test]
fn seed_004_three_processes_report_their_parent() {
    let out = run_seed("seed_countdown", &["multi"]);
    let host: u32 = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("主进程:")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for v in [100, 200, 300] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("测试多进程任务：{v},")))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(line.ends_with(&format!("父进程号为: {host}")), "{line}");
        assert!(out.contains(&format!("多进程任务结束：{v}, 当前进程号为: ")));
    }
}

#[test]
fn seed_000_pool_of_four_runs_queued_tasks_in_order() {
    let out = run_seed("seed_pool_hello", &[]);
    let lines: Vec<&str> = out.lines().collect();
    // apply_async does not wait: every "111"/"222" is printed long before the first 5-second
    // task finishes (a worker may print its "hello" in between, as in Python).
    let queued: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| *l == "111" || *l == "222")
        .collect();
    assert_eq!(
        queued,
        [["111"; 10].as_slice(), ["222"; 5].as_slice()].concat()
    );
    let last_queued = lines.iter().rposition(|l| *l == "222").unwrap();
    let first_finished = lines
        .iter()
        .position(|l| l.starts_with("finished"))
        .unwrap();
    assert!(last_queued < first_finished, "{out}");
    assert_eq!(lines.last(), Some(&"processes done."));
    for x in 0..10 {
        assert!(
            out.contains(&format!("hello, {x}\n")) && out.contains(&format!("finished {x}\n")),
            "{out}"
        );
    }
    for x in 0..5 {
        assert!(
            out.contains(&format!("Say, {x}\n")) && out.contains(&format!("Say finish {x}\n")),
            "{out}"
        );
    }
    // Four workers, first in first out: queued task k (hello 0-9 are 0-9, Say 0 is 10) can
    // only start once k - 3 earlier tasks have finished.
    let finished_before = |needle: &str| out[..position(&out, needle)].matches("finished ").count();
    assert!(finished_before("hello, 4") >= 1, "{out}");
    assert!(finished_before("hello, 9") >= 6, "{out}");
    assert!(finished_before("Say, 0") >= 7, "first in, first out\n{out}");
}

#[test]
fn seed_001_pool_of_three_runs_five_tasks() {
    let out = run_seed("seed_pool_run_task", &[]);
    let banners = [
        "第0次循环",
        "第4次循环完了",
        "waiting for all subprocesses done",
        "-----------下面是close",
    ];
    assert!(
        banners
            .windows(2)
            .all(|w| position(&out, w[0]) < position(&out, w[1])),
        "{out}"
    );
    let mut pids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("(pid = ").nth(1))
        .map(|r| r.split(')').next().unwrap())
        .collect();
    assert_eq!(pids.len(), 5);
    pids.sort();
    pids.dedup();
    assert!(pids.len() <= 3, "three worker processes at most: {pids:?}");
    assert_eq!(out.matches(" end cost ").count(), 5);
    assert!(position(&out, "----------join完了-----------") > position(&out, "Task 4 end cost"));
    assert!(out.ends_with("all subprocesses done\n"));
}

#[test]
fn seed_002_pool_apply_async_runs_together_and_apply_one_by_one() {
    let out = run_seed("seed_pool_blocking", &["async"]);
    let first_end = position(&out, "End process");
    assert!(
        position(&out, "Started processes") < first_end,
        "apply_async does not wait\n{out}"
    );
    assert_eq!(
        out[..first_end].matches("Start process:").count(),
        3,
        "three run at once\n{out}"
    );
    assert!(out.ends_with("Subprocess done.\n"));

    let out = run_seed("seed_pool_blocking", &["sync"]);
    let expected: String = (0..4)
        .map(|i| format!("Start process:  {i}\nEnd process {i}\n"))
        .collect();
    assert_eq!(
        out,
        format!("{expected}Started processes\nSubprocess done.\n")
    );

    let out = run_seed("seed_pool_blocking", &["map"]);
    assert_eq!(out, "[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\n");
}

#[test]
fn seed_003_two_cores_serve_three_tasks_first_in_first_out() {
    let out = run_seed("seed_pool_fifo", &[]);
    let c = position(&out, "C\n");
    assert!(
        position(&out, "A\n") < c && position(&out, "B\n") < c,
        "{out}"
    );
    let first_done = out
        .find("task A runs")
        .unwrap()
        .min(out.find("task B runs").unwrap());
    assert!(c > first_done, "C waits for a free worker\n{out}");
    assert!(out.ends_with("Done.\n"));
}

#[test]
fn seed_004_pool_results_callbacks_and_map() {
    let out = run_seed("seed_pool_results", &["callback"]);
    let host: u32 = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("主进程:")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(out.matches("----------- the data is ").count(), 3);
    assert_eq!(
        out.matches(&format!("当前进程号为: {host}\n")).count(),
        3,
        "callbacks run in the main process\n{out}"
    );
    assert!(
        out.contains("1000000\n8000000\n27000000\nuser_time"),
        "get() in submission order\n{out}"
    );

    let out = run_seed("seed_pool_results", &["map-result"]);
    assert!(out.contains("[1000000, 8000000, 27000000]\n"), "{out}");
    for variant in ["apply", "apply_async", "map", "get"] {
        let out = run_seed("seed_pool_results", &[variant]);
        assert_eq!(
            out.matches("多进程任务结束：").count(),
            3,
            "{variant}\n{out}"
        );
        assert!(out.contains("user_time: "));
    }
}

#[test]
fn seed_004_data_is_not_shared_with_children() {
    let out = run_seed("seed_unshared", &[]);
    for v in [100, 200, 300] {
        assert!(
            out.contains(&format!("sh_dock_code is [31, 32, {v}]")),
            "{out}"
        );
    }
    assert!(
        out.trim_end().ends_with("sh_dock_code is [31, 32, 33, 34]"),
        "{out}"
    );
}

#[test]
fn seed_004_queue_carries_each_childs_result_to_the_parent() {
    let out = run_seed("seed_queue_exchange", &[]);
    let results: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    let mut sorted = results.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["{100: 1000000}", "{200: 8000000}", "{300: 27000000}"],
        "{out}"
    );
    let last_end = out.rfind("多进程任务结束").unwrap();
    assert!(
        position(&out, "{100: 1000000}") > last_end,
        "printed after the joins:\n{out}"
    );
}

#[test]
fn seed_004_queue_consumer_stops_at_the_sentinel() {
    let out = run_seed("seed_queue_producer_consumer", &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["work：0", "work：1", "work：2", "work：3", "work：4"],
        "{out}"
    );
}

#[test]
fn seed_004_pipe_exchanges_greetings_both_ways() {
    let out = run_seed("seed_pipe_exchange", &[]);
    let mut lines: Vec<&str> = out.lines().collect();
    // The child's greeting comes first; the parent's separator and the child's print of the
    // answer race, in Python as here.
    assert_eq!(lines.first(), Some(&"你好主进程, the data is 100"), "{out}");
    lines[1..].sort();
    assert_eq!(
        lines[1..],
        ["======================================", "你好子进程"],
        "{out}"
    );
}

#[test]
fn seed_004_pipe_consumer_stops_at_end_of_file() {
    let out = run_seed("seed_pipe_producer_consumer", &[]);
    let lines: Vec<&str> = out.lines().collect();
    let mut expected: Vec<String> = (0..5)
        .map(|i| format!("process pipe work is doing：{i}"))
        .collect();
    expected.push("===============".into());
    assert_eq!(lines, expected, "{out}");
}

#[test]
fn seed_004_manager_dict_is_shared_by_every_child() {
    let out = run_seed("seed_manager_dict", &[]);
    // Each child decrements `count` with a read and a write, as Python's `-=` on a proxy:
    // 10 - 3 = 7 unless two of them raced (the seed has the same race).
    let count: u64 = out
        .split("'count': ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{out}"));
    assert!((7..=9).contains(&count), "{out}");
    for key in ["100: 1000000", "200: 8000000", "300: 27000000"] {
        assert!(out.contains(key), "{out}");
    }
}

fn counts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("share_data count is "))
        .map(|n| n.trim().parse().unwrap())
        .collect()
}

#[test]
fn seed_004_unlocked_counter_prints_ten_racy_updates() {
    let out = run_seed("seed_counter", &["unlocked"]);
    let seen = counts(&out);
    assert_eq!(seen.len(), 10, "{out}");
    // The two children's unlocked `+=` race and may lose updates, as in Python, and how
    // their steps interleave depends on when each one started: a child that starts a few
    // hundred milliseconds late prints exactly a serial sequence. So only what the race
    // leaves certain is checked: each printed count is the start plus some of the
    // increments. (That the children run at once is shown by seed 000 and the Barrier test.)
    assert!(
        seen.iter()
            .all(|&c| c % 100 == 0 && (600..=2000).contains(&c)),
        "{out}"
    );
    assert!(
        out.contains("100: 1000000") && out.contains("200: 8000000"),
        "{out}"
    );
}

#[test]
fn seed_004_locked_counter_is_exactly_2000() {
    let out = run_seed("seed_counter", &["locked"]);
    let mut seen = counts(&out);
    // One child's five updates, then the other's: exactly one of these two sets of counts.
    // (Compared as sets: the two children's lines reach the host by separate routes, so the
    // last of one and the first of the other, 100 ms apart, may be relayed out of order.)
    seen.sort();
    let first = [600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800, 2000];
    let second = [700, 900, 1100, 1300, 1500, 1600, 1700, 1800, 1900, 2000];
    assert!(seen == first || seen == second, "{seen:?}\n{out}");
    // Each child adds its key as it takes the lock, so the dict's order is the lock's, as
    // in Python: 100 first when its child went first.
    let dict = if seen == first {
        "{'count': 2000, 100: 1000000, 200: 8000000}"
    } else {
        "{'count': 2000, 200: 8000000, 100: 1000000}"
    };
    assert!(out.trim_end().ends_with(dict), "{out}");
}

#[test]
fn seed_004_semaphore_lets_three_work_at_once() {
    let out = run_seed("seed_semaphore", &[]);
    let mut working = 0i32;
    let mut most = 0;
    for line in out.lines() {
        if line.ends_with("start work") {
            working += 1;
            most = most.max(working);
        } else if line.ends_with("done work") {
            working -= 1;
        }
    }
    assert_eq!(out.matches("enter work").count(), 5, "{out}");
    assert_eq!(out.matches("done work").count(), 5, "{out}");
    assert!(most <= 3, "{most} at once:\n{out}");
}

#[test]
fn seed_002_lock_around_printing() {
    let out = run_seed("seed_lock_print", &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10 + 11 + 12 + 13 + 14, "{out}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("Pid: ") && l.contains(" LoopCount: ")),
        "{out}"
    );
    assert_eq!(out.matches("LoopCount: 13").count(), 1, "{out}");
}
