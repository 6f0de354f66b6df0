//! Helpers shared by every test: guest modules built once, the worker binary, the CLI, an
//! outer timeout so that a hang fails the test instead of stalling the suite, temp dirs.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use wasmpool::{Module, Pool};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Workers run from the `wasmpool` binary Cargo built for these tests.
pub fn setup() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| wasmpool::set_worker_exe(env!("CARGO_BIN_EXE_wasmpool")));
}

fn load_once(cell: &'static OnceLock<Module>, dir: &str) -> Module {
    setup();
    cell.get_or_init(|| {
        Module::load(root().join("examples").join(dir))
            .unwrap_or_else(|e| panic!("building {dir}: {e}"))
    })
    .clone()
}

/// The test guest (`examples/testkit`).
pub fn testkit() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_once(&M, "testkit")
}

/// Runs testkit's `task` in a fresh `Process` to its end and answers its result.
pub fn run<R: serde::de::DeserializeOwned>(
    task: &str,
    args: &impl serde::Serialize,
) -> wasmpool::Result<R> {
    let p = wasmpool::Process::new(&testkit(), task, args)?;
    p.start()?;
    p.join()?;
    p.result()
}

/// The seed programs' guest (`examples/seeds`).
pub fn seeds() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_once(&M, "seeds")
}

/// A module whose memory starts at over 300 MiB (`examples/big-static`).
pub fn big_static() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_once(&M, "big-static")
}

/// A module whose init never returns (`examples/stuck-init`).
pub fn stuck_init() -> Module {
    static M: OnceLock<Module> = OnceLock::new();
    load_once(&M, "stuck-init")
}

/// The built `.wasm` of a guest crate (after `testkit()`/`seeds()` built it).
pub fn wasm_of(name: &str) -> PathBuf {
    root()
        .join("examples/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"))
}

/// Runs `f` on another thread and fails the test if it takes longer than `limit`.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("timed out after {limit:?}: something hangs"),
    }
}

/// The `wasmpool` CLI.
pub fn cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmpool"));
    cmd.current_dir(root());
    cmd
}

/// Starts `wasmpool serve` on 127.0.0.1 port 0 (two workers) with these tenants and state
/// directory, and returns the child and the URL its first line announces; the rest of its
/// stdout is drained, so the server never blocks on it.
pub fn start_serve(tenants: &Path, state: &Path, extra: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = cli()
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--tenants")
        .arg(tenants)
        .arg("--state")
        .arg(state)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("cannot start wasmpool serve");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("the server's first line");
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    (child, url)
}

/// Runs the CLI with `args` (under an outer timeout) and returns its output.
pub fn run_cli(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    within(Duration::from_secs(120), move || {
        cli()
            .args(&args)
            .output()
            .expect("cannot run the wasmpool binary")
    })
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the CLI failed with exit status `code` and one clear line on stderr that contains
/// `needle`, with no panic or backtrace.
pub fn assert_cli_error(out: &Output, code: i32, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "status; stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "exactly one line on stderr, got: {err:?}"
    );
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert!(
        !err.contains("thread 'main' panicked"),
        "no Rust panic in the host: {err}"
    );
    assert!(!err.contains("RUST_BACKTRACE"), "no backtrace hint: {err}");
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wasmpool-test-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The pids whose parent is `ppid`.
pub fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// The pids descended from `ppid`: its children, theirs, and so on (a worker forked by a
/// fork server is the host's grandchild).
pub fn descendants_of(ppid: u32) -> Vec<u32> {
    let mut out = children_of(ppid);
    let mut i = 0;
    while i < out.len() {
        let more = children_of(out[i]);
        out.extend(more);
        i += 1;
    }
    out
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Sends SIGKILL to `pid`, a child process of this test.
pub fn kill(pid: u32) {
    // SAFETY: sending a signal to a child process of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

/// Kills a random worker of `pool` every `every` until `stop` is set; counts the kills.
pub fn killer(pool: Pool, every: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut kills = 0;
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            let pids = pool.pids();
            if pids.is_empty() || stop.load(Ordering::Relaxed) {
                continue;
            }
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            kill(pids[(seed % pids.len() as u64) as usize]);
            kills += 1;
        }
        kills
    })
}

/// The system allocator, reporting each change in the bytes held (positive or negative) to
/// its hook: a test binary installs it as its `#[global_allocator]` to count allocations.
/// The hook must not allocate.
pub struct CountingAlloc(pub fn(isize));

// SAFETY: every call is passed on to the system allocator unchanged; the hook, which must not
// allocate, only sees the sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees are the system allocator's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            (self.0)(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            (self.0)(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) };
        (self.0)(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            (self.0)(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// What the tasks of a pool granted `dir_read_only(ro, "/data")`, `dir(rw, "/out")` and
/// `env("GREETING", "hi")` (and nothing else) see, through testkit's `read_file`
/// (`read`), `write_file` (`write`) and `env_var` (`env`), on whatever runs them: the
/// read-only directory reads (`ro` holds `hello.txt`, "hello from the host") and refuses
/// writes, the read-write one takes them, the variable arrives, and no other file or
/// variable is there.
pub fn assert_granted_and_nothing_else(
    ro: &Path,
    rw: &Path,
    read: impl Fn(&str) -> wasmpool::Result<String>,
    write: impl Fn(&str) -> wasmpool::Result<()>,
    env: impl Fn(&str) -> wasmpool::Result<Option<String>>,
) {
    assert_eq!(read("/data/hello.txt").unwrap(), "hello from the host");
    assert!(read("/etc/passwd").is_err(), "only what was granted");
    assert!(
        write("/data/new.txt").is_err(),
        "a read-only grant refuses writes"
    );
    assert!(!ro.join("new.txt").exists());
    write("/out/new.txt").unwrap();
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written"
    );
    assert_eq!(env("GREETING").unwrap().as_deref(), Some("hi"));
    assert_eq!(env("PATH").unwrap(), None, "no other variable");
}
