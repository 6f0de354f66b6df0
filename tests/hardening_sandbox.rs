//! Defence in depth outside wasm (issue 23): descriptors the host inherited reach no
//! worker; the compile cache is private, verified, self-healing and bounded; a guest project
//! with a build script is not built unless asked. (The seccomp and Landlock walls are tested
//! from inside a sandboxed process, in `runtime/src/worker/sandbox.rs`.)

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use crate::util::{
    TempDir, assert_cli_error, cli, descendants_of, eventually, pid_alive, seeds, stderr, stdout,
    testkit, wasm_of, within,
};

const LIMIT: Duration = Duration::from_secs(240);

/// The descriptors of process `pid` that name `path`.
fn fds_naming(pid: u32, path: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|target| target == path))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// A file opened here and left open in every child this command starts (close-on-exec
/// cleared in the child, before it executes): as a careless program's would be.
fn inherit(cmd: &mut Command, file: &fs::File) {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl is async-signal-safe, and `fd` stays open in the parent until the
    // child has executed.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_descriptor_the_host_inherited_reaches_no_fork_server_or_worker() {
    testkit();
    within(LIMIT, || {
        let dir = TempDir::new("inherited");
        let marker = dir.file("inherited-marker", b"host secret");
        let file = fs::File::open(&marker).unwrap();
        let wasm = wasm_of("testkit");
        let mut cmd = cli();
        cmd.args(["run", wasm.to_str().unwrap(), "sleep_ms", "60000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        inherit(&mut cmd, &file);
        let mut host = cmd.spawn().unwrap();
        let host_pid = host.id();
        // The fork server and the worker running the task.
        assert!(
            eventually(Duration::from_secs(60), || descendants_of(host_pid).len()
                >= 2),
            "the fork server and its worker start"
        );
        std::thread::sleep(Duration::from_millis(300));
        let held_by_host = fds_naming(host_pid, &marker);
        let leaks: Vec<(u32, Vec<String>)> = descendants_of(host_pid)
            .into_iter()
            .map(|pid| (pid, fds_naming(pid, &marker)))
            .filter(|(_, fds)| !fds.is_empty())
            .collect();
        let workers = descendants_of(host_pid);
        host.kill().unwrap();
        host.wait().unwrap();
        assert!(
            !held_by_host.is_empty(),
            "the host holds the inherited descriptor (else this test tests nothing)"
        );
        assert!(workers.len() >= 2, "fork server and worker: {workers:?}");
        assert!(
            leaks.is_empty(),
            "processes started for the host hold its inherited descriptor: {leaks:?}"
        );
    });
}

#[test]
fn an_executed_worker_closes_the_descriptors_it_inherited() {
    within(LIMIT, || {
        let dir = TempDir::new("inherited-exec");
        let marker = dir.file("inherited-marker", b"host secret");
        let file = fs::File::open(&marker).unwrap();
        // A worker started the way the host executes one: its socket on fd 3.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = theirs.as_raw_fd();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wasmpool"));
        cmd.arg("__wasmpool-worker")
            .env_clear()
            .env("WASMPOOL_PARENT_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        inherit(&mut cmd, &file);
        // SAFETY: dup2 is async-signal-safe; `sock` stays open in the parent until the
        // child has executed.
        unsafe {
            cmd.pre_exec(move || {
                let r = if sock == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(sock, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut worker = cmd.spawn().unwrap();
        drop(theirs);
        let pid = worker.id();
        // It waits for its module on fd 3; by then it has closed what it inherited.
        let closed = eventually(Duration::from_secs(10), || {
            pid_alive(pid)
                && fs::read_link(format!("/proc/{pid}/fd/3")).is_ok()
                && fds_naming(pid, &marker).is_empty()
        });
        let left = fds_naming(pid, &marker);
        let alive = pid_alive(pid);
        drop(ours);
        let _ = worker.kill();
        let _ = worker.wait();
        assert!(alive, "the worker waits for its module");
        assert!(
            closed,
            "the worker still holds the descriptor it inherited, as fd {left:?}"
        );
    });
}

/// Runs the CLI with the compile cache in `cache` (and no other cache setting).
fn run_with_cache(cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let cache = cache.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    within(LIMIT, move || {
        let mut cmd = cli();
        cmd.env_remove("XDG_CACHE_HOME")
            .env("WASMPOOL_CACHE_DIR", &cache)
            .args(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
}

/// The artifacts in a cache, by path.
fn artifacts(cache: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(cache.join("artifacts"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn square_12(cache: &Path) -> Output {
    let wasm = wasm_of("testkit");
    run_with_cache(cache, &["run", wasm.to_str().unwrap(), "square", "12"], &[])
}

fn assert_144(out: &Output, when: &str) {
    assert!(
        out.status.success() && stdout(out).trim() == "144",
        "{when}: status {:?}, stdout {:?}, stderr {:?}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[test]
fn an_artifact_replaced_in_the_cache_is_compiled_again_not_run() {
    testkit();
    seeds();
    let cache = TempDir::new("cache-replaced");
    assert_144(&square_12(&cache.0), "first run");
    let [testkit_artifact] = artifacts(&cache.0).try_into().unwrap();
    let seeds_wasm = wasm_of("seeds");
    let out = run_with_cache(
        &cache.0,
        &["run", seeds_wasm.to_str().unwrap(), "task1", r#""x""#],
        &[],
    );
    assert!(out.status.success(), "seeds runs: {}", stderr(&out));
    let seeds_artifact = artifacts(&cache.0)
        .into_iter()
        .find(|a| *a != testkit_artifact)
        .unwrap();
    // Another module's artifact, and its digest, under testkit's name.
    fs::copy(&seeds_artifact, &testkit_artifact).unwrap();
    let _ = fs::copy(
        seeds_artifact.with_extension("mac"),
        testkit_artifact.with_extension("mac"),
    );
    assert_144(&square_12(&cache.0), "after the artifact was replaced");
    assert_ne!(
        fs::read(&testkit_artifact).unwrap(),
        fs::read(&seeds_artifact).unwrap(),
        "the planted artifact was replaced by testkit's own"
    );
}

#[test]
fn a_corrupt_artifact_is_compiled_again_and_later_runs_succeed() {
    testkit();
    let cache = TempDir::new("cache-corrupt");
    assert_144(&square_12(&cache.0), "first run");
    let [artifact] = artifacts(&cache.0).try_into().unwrap();
    let len = fs::metadata(&artifact).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&artifact)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_144(&square_12(&cache.0), "after the artifact was cut short");
    assert_144(&square_12(&cache.0), "the run after that");
    assert_eq!(
        fs::metadata(&artifact).unwrap().len(),
        len,
        "recompiled in full"
    );
}

#[test]
fn a_cache_dir_other_users_can_write_is_refused() {
    testkit();
    let cache = TempDir::new("cache-open");
    fs::set_permissions(&cache.0, fs::Permissions::from_mode(0o777)).unwrap();
    let out = square_12(&cache.0);
    assert_cli_error(&out, 2, "writable by other users");
    assert!(
        stderr(&out).contains(cache.0.to_str().unwrap()),
        "names the dir"
    );
    assert!(
        artifacts(&cache.0).is_empty(),
        "nothing is compiled into it"
    );
}

#[test]
fn a_cache_dir_of_another_user_is_refused() {
    testkit();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot give a directory to another user here");
        return;
    }
    let cache = TempDir::new("cache-other");
    std::os::unix::fs::chown(&cache.0, Some(4242), Some(4242)).unwrap();
    let out = square_12(&cache.0);
    assert_cli_error(&out, 2, "belongs to uid 4242");
}

#[test]
fn without_home_the_cache_is_a_private_dir_of_the_user() {
    testkit();
    let wasm = wasm_of("testkit");
    let run = |tmp: &Path| {
        let tmp = tmp.to_path_buf();
        let wasm = wasm.clone();
        within(LIMIT, move || {
            cli()
                .env_remove("HOME")
                .env_remove("XDG_CACHE_HOME")
                .env_remove("WASMPOOL_CACHE_DIR")
                .env("TMPDIR", &tmp)
                .args(["run", wasm.to_str().unwrap(), "square", "12"])
                .output()
                .unwrap()
        })
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let tmp = TempDir::new("no-home");
    assert_144(&run(&tmp.0), "without HOME");
    let dir = tmp.0.join(format!("wasmpool-cache-{uid}"));
    let meta = fs::metadata(&dir).unwrap();
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.mode() & 0o777, 0o700, "private to the user");
    // One planted beforehand by someone else, open to all: refused.
    let planted = TempDir::new("no-home-planted");
    let dir = planted.0.join(format!("wasmpool-cache-{uid}"));
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    assert_cli_error(&run(&planted.0), 2, "writable by other users");
}

#[test]
fn stale_temporaries_are_removed_and_the_cache_is_bounded() {
    testkit();
    seeds();
    let cache = TempDir::new("cache-tidy");
    let dir = cache.0.join("artifacts");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&cache.0, fs::Permissions::from_mode(0o700)).unwrap();
    // A write killed an hour ago, and one under way now.
    let stale = dir.join(".tmp-w-99999-0");
    fs::write(&stale, b"half an artifact").unwrap();
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let fresh = dir.join(".tmp-w-99998-0");
    fs::write(&fresh, b"being written").unwrap();
    let cap = [("WASMPOOL_CACHE_MAX_MIB", "0")];
    let wasm = wasm_of("testkit");
    let out = run_with_cache(
        &cache.0,
        &["run", wasm.to_str().unwrap(), "square", "12"],
        &cap,
    );
    assert_144(&out, "with a cap of 0");
    assert!(!stale.exists(), "the stale temporary file is removed");
    assert!(fresh.exists(), "a write under way is left alone");
    let [testkit_artifact] = artifacts(&cache.0).try_into().unwrap();
    // Over the cap: the least recently used goes, the one just written stays.
    let seeds_wasm = wasm_of("seeds");
    let out = run_with_cache(
        &cache.0,
        &["run", seeds_wasm.to_str().unwrap(), "task1", r#""x""#],
        &cap,
    );
    assert!(out.status.success(), "seeds runs: {}", stderr(&out));
    let left = artifacts(&cache.0);
    assert_eq!(
        left.len(),
        1,
        "one artifact left under a cap of 0: {left:?}"
    );
    assert_ne!(left[0], testkit_artifact, "the older one was evicted");
    // A bad bound is a clear error.
    let out = run_with_cache(
        &cache.0,
        &["run", wasm.to_str().unwrap(), "square", "12"],
        &[("WASMPOOL_CACHE_MAX_MIB", "lots")],
    );
    assert_cli_error(&out, 2, "WASMPOOL_CACHE_MAX_MIB");
}

/// A guest project whose build script leaves `ran` behind when it runs.
fn project_with_build_script(dir: &Path, ran: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"scripted\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n",
    )
    .unwrap();
    fs::write(dir.join("src/lib.rs"), "").unwrap();
    fs::write(
        dir.join("build.rs"),
        format!(
            "fn main() {{ std::fs::write({:?}, b\"ran\").unwrap(); }}\n",
            ran
        ),
    )
    .unwrap();
}

#[test]
fn a_project_with_a_build_script_is_refused_unless_allowed() {
    crate::util::setup();
    within(LIMIT, || {
        let tmp = TempDir::new("build-script");
        let project = tmp.0.join("scripted");
        let ran = tmp.0.join("build-script-ran");
        project_with_build_script(&project, &ran);
        let err = wasmpool::Module::load(&project).unwrap_err().to_string();
        assert!(
            err.contains("build script") && err.contains("WASMPOOL_ALLOW_BUILD_SCRIPTS=1"),
            "a clear refusal: {err}"
        );
        assert!(!ran.exists(), "the build script did not run");
        // Asked for: it runs (the empty crate then is no task module).
        let options = wasmpool::BuildOptions::default().allow_build_scripts(true);
        let err = wasmpool::Module::load_with(&project, &options)
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("WASMPOOL_ALLOW_BUILD_SCRIPTS"),
            "not refused: {err}"
        );
        assert!(ran.exists(), "the build script ran when allowed: {err}");
    });
}

#[test]
fn a_narrowed_worker_reloads_its_module_after_the_cache_put_another_file_at_its_path() {
    within(LIMIT, || {
        let module = testkit();
        let pool = wasmpool::Pool::new(&module, 1).unwrap();
        // The first call narrows the worker's files to the artifact it loaded.
        let (pid, _, _): (u32, u32, String) = pool.apply("whoami", &()).unwrap();
        // The cache replaces an artifact by renaming a new file over it (a recompile to the
        // same path, say): the same bytes, another file.
        let artifact = module.artifact().to_path_buf();
        let fresh = artifact.with_extension("replacing");
        fs::copy(&artifact, &fresh).unwrap();
        fs::rename(&fresh, &artifact).unwrap();
        // Another stack limit loads the module again in the same worker: from the file it
        // opened, which its Landlock layer allows, not from the new one at the path.
        let deeper = pool.with_limits(
            wasmpool::Limits::default().stack_kib(2 * wasmpool::Limits::DEFAULT_STACK_BYTES / 1024),
        );
        let (again, _, _): (u32, u32, String) = deeper.apply("whoami", &()).unwrap();
        assert_eq!(again, pid, "the same worker reloaded its module");
        assert_eq!(deeper.apply::<_, u64>("square", &(7u64,)).unwrap(), 49);
    });
}
