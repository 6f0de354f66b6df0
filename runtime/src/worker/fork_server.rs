//! The fork server's side (see [`crate::forkserver`]): the worker binary, executed with the
//! fork server argument, keeps modules prepared and forks a worker per request.
//!
//! It serves on one thread whose stack is as large as a task's, and forks from it: a fork
//! copies only the calling thread, so the child runs its tasks on that same thread and need
//! not start one of its own (which cost a cold start about 0.15 ms here). The main thread
//! only waits for the serving thread, holding no lock, so every fork copies a consistent
//! process. The server waits in `poll` on two things: its socket to the host (requests, and
//! end of file when the host is gone), and a `signalfd` for `SIGCHLD`, on which it reaps
//! its workers and reports their statuses. No guest code ever runs in it: modules are
//! deserialized and linked, not instantiated.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use super::instance::{prepare, usable_stack};
use super::state::InstanceState;
use crate::bindings::TaskModulePre;
use crate::engine::EngineKind;
use crate::fdpass;
use crate::launch::WORKER_FD;
use crate::launch::{FromForkServer, ToForkServer};
use crate::protocol::Load;

/// Prepared modules kept; the least recently used goes first.
const CACHE: usize = 16;

struct Prepared {
    artifact: PathBuf,
    /// The file the artifact path named when it was mapped: a path the host has since
    /// recompiled into (a corrupt artifact replaced) names another, which is mapped anew.
    file: Option<FileId>,
    engine: EngineKind,
    stack_bytes: u64,
    pre: TaskModulePre<InstanceState>,
}

/// Serves fork requests from the host `host` on fd 3 until the host is gone.
pub(super) fn serve(host: u32) -> i32 {
    // SAFETY: the host passes this process one end of a socketpair as fd 3, and nothing else
    // in this process owns that descriptor.
    let ctrl = unsafe { OwnedFd::from_raw_fd(WORKER_FD) };
    // SIGCHLD is read from a descriptor instead of delivered, so it is blocked in every
    // thread: here, before the serving thread inherits the mask. The workers get the mask
    // this process started with.
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; pthread_sigmask
    // only reads the set, and the old mask is written into `old`.
    let (set, old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) != 0 {
            return 1;
        }
        (set, old)
    };
    let served = std::thread::Builder::new()
        .name("forkserver".into())
        .stack_size(super::tasks_stack_size())
        .spawn(move || run(&ctrl, host, &set, &old));
    match served.map(|t| t.join()) {
        Ok(Ok(Ok(()))) => 0,
        _ => 1,
    }
}

fn run(ctrl: &OwnedFd, host: u32, set: &libc::sigset_t, old: &libc::sigset_t) -> io::Result<()> {
    // SAFETY: signalfd only reads the set; the descriptor it returns is owned from here on.
    let sigfd = unsafe {
        let fd = libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let me = std::process::id();
    // Made once here, applied by each worker right after its fork.
    let ruleset = super::sandbox::files_ruleset();
    let mut cache: Vec<Prepared> = Vec::new();
    let mut buf = vec![0u8; fdpass::MAX_MESSAGE];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: ctrl.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd structures.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            reap(ctrl, &sigfd)?;
        }
        if fds[0].revents == 0 {
            continue;
        }
        let (n, sock) = fdpass::recv(ctrl, &mut buf)?;
        if n == 0 {
            // The host is gone; so are its workers, which die with this process.
            return Ok(());
        }
        let ToForkServer::Fork { id, mut load } = postcard::from_bytes(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let Some(sock) = sock else {
            report(
                ctrl,
                &FromForkServer::Failed {
                    id,
                    message: "a fork request came without its socket".into(),
                },
            )?;
            continue;
        };
        load.stack_bytes = usable_stack(load.stack_bytes);
        let pre = match prepared(&mut cache, &load) {
            Ok(pre) => pre,
            Err(message) => {
                report(ctrl, &FromForkServer::Failed { id, message })?;
                continue;
            }
        };
        // SAFETY: the only other thread of this process waits to join this one, holding no
        // lock, so the child (this thread alone) is a complete, consistent copy.
        match unsafe { libc::fork() } {
            -1 => {
                let message = format!("cannot fork a worker: {}", io::Error::last_os_error());
                report(ctrl, &FromForkServer::Failed { id, message })?;
            }
            0 => {
                // The other modules' files and images are no business of this worker:
                // dropping the server's cache closes their descriptors (`pre` keeps this
                // module's).
                drop(std::mem::take(&mut cache));
                child(
                    ctrl.as_raw_fd(),
                    sigfd.as_raw_fd(),
                    ruleset.as_ref().map(AsRawFd::as_raw_fd),
                    old,
                    sock,
                    host,
                    me,
                    load,
                    pre,
                )
            }
            pid => {
                drop(sock);
                report(
                    ctrl,
                    &FromForkServer::Forked {
                        id,
                        pid: pid as u32,
                    },
                )?;
            }
        }
    }
}

/// Which file a path names, and its version: device, inode, size, modification time.
type FileId = (u64, u64, u64, i64, i64);

fn file_id(path: &std::path::Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The module `load` names, prepared for its engine: from the cache, or loaded into it.
fn prepared(
    cache: &mut Vec<Prepared>,
    load: &Load,
) -> Result<TaskModulePre<InstanceState>, String> {
    let file = file_id(&load.artifact);
    let found = cache.iter().position(|p| {
        p.artifact == load.artifact && p.engine == load.engine && p.stack_bytes == load.stack_bytes
    });
    // A mapped file that is still the one its path names is used; one replaced since is
    // mapped anew (a path gone, as after eviction from the cache, keeps the mapped copy).
    let found = match found {
        Some(i) if file.is_some() && cache[i].file != file => {
            cache.remove(i);
            None
        }
        other => other,
    };
    let entry = match found {
        Some(i) => cache.remove(i),
        None => Prepared {
            artifact: load.artifact.clone(),
            file,
            engine: load.engine,
            stack_bytes: load.stack_bytes,
            pre: prepare(&load.artifact, load.engine, load.stack_bytes)?,
        },
    };
    let pre = entry.pre.clone();
    if cache.len() >= CACHE {
        cache.remove(0);
    }
    cache.push(entry);
    Ok(pre)
}

/// Reaps every worker that has exited and reports its status.
fn reap(ctrl: &OwnedFd, sigfd: &OwnedFd) -> io::Result<()> {
    // Drain the pending signals; several exits may have been folded into one.
    let mut info = [0u8; 128];
    // SAFETY: reads at most `info.len()` bytes into `info`.
    while unsafe { libc::read(sigfd.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) } > 0 {}
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return Ok(());
        }
        report(
            ctrl,
            &FromForkServer::Exited {
                pid: pid as u32,
                status,
            },
        )?;
    }
}

fn report(ctrl: &OwnedFd, msg: &FromForkServer) -> io::Result<()> {
    let bytes =
        postcard::to_allocvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    fdpass::send(ctrl, &bytes, None).map(drop)
}

/// The forked worker: lets go of the server's descriptors and signal mask, ties its life to
/// the server's, and serves on this thread (the copy of the server's, with a task's stack).
/// Never returns.
#[allow(clippy::too_many_arguments)]
fn child(
    ctrl: RawFd,
    sigfd: RawFd,
    ruleset: Option<RawFd>,
    mask: &libc::sigset_t,
    sock: OwnedFd,
    host: u32,
    server: u32,
    load: Load,
    pre: TaskModulePre<InstanceState>,
) -> ! {
    // SAFETY: plain system calls on this process; the server's descriptors are closed here
    // and never used again (this function does not return), and `mask` is a valid set.
    unsafe {
        libc::close(ctrl);
        libc::close(sigfd);
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_NAME, c"tasks".as_ptr());
        libc::setpgid(0, 0);
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
            || libc::getppid() as u32 != server
        {
            // The server died before the signal was armed: so must this worker.
            libc::_exit(1);
        }
    }
    // This worker's own walls; the server's filter stays in place beneath them.
    let _ = super::sandbox::restrict_worker();
    if let Some(fd) = ruleset {
        // SAFETY: the server's ruleset descriptor, copied into this process by the fork;
        // nothing else in this process uses it (the server's handle is never dropped here).
        let _ = super::sandbox::restrict_files_with(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let code = super::serve_forked(UnixStream::from(sock), host, load, pre);
    std::process::exit(code)
}
