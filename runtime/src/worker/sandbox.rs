//! The walls around a worker process beyond wasm itself, for the day a bug in the runtime
//! lets a guest reach native code. The guest is already confined by wasm and WASI; these
//! are the second line.
//!
//! - [`close_inherited_fds`]: descriptors the host (or whatever started it) left open
//!   without close-on-exec are closed before anything runs, as Python's forkserver does.
//! - [`restrict_syscalls`], in every worker and fork server: system calls neither ever needs
//!   (new sockets, running programs, tracing other processes, signalling them or taking a
//!   handle on them, kernel modules, namespaces, setting the clock …) fail with `EPERM`.
//! - [`restrict_worker`], in a worker only (a fork server must fork): creating a process
//!   (`fork`, `vfork`, `clone` without `CLONE_THREAD`, `clone3`), signalling a thread of
//!   another process (`tgkill`), and changing another process's resource limits
//!   (`prlimit64`) are refused; its own threads still start.
//! - [`restrict_files`], in a worker only, where the kernel has Landlock: nothing under
//!   `/proc`, `/sys` or `/dev` (but the null, zero and random devices and `/dev/shm`) can be
//!   opened after start, and no signal reaches a process outside the worker (Landlock ABI 6).
//! - [`restrict_files_to`], in a worker at its first grant or call: a second Landlock layer
//!   on the thread that runs tasks, so from then on it opens only its module's artifact
//!   (read), the directories granted to it (read, or read-write) and those devices.
//!
//! Calls are refused rather than fatal, so nothing the worker legitimately does can crash it.
//!
//! `RLIMIT_NPROC` is deliberately not set: the kernel counts it per real user across the
//! whole machine (the host, its other workers, every other program of that user), so a value
//! low enough to stop a thread bomb in one worker fails that worker whenever the user's
//! unrelated processes reach it, and it is not enforced at all for root. Process creation is
//! refused by the filter instead.

/// Closes every descriptor above the worker's socket (fd 3): whatever the host inherited
/// without close-on-exec must not reach a worker. Called first thing in a worker or fork
/// server, before anything in it opens a descriptor of its own.
pub(crate) fn close_inherited_fds() {
    let first = (crate::launch::WORKER_FD + 1) as libc::c_uint;
    // SAFETY: nothing in this process owns a descriptor above fd 3 yet (this runs before
    // the worker opens any), so closing them invalidates no live handle.
    #[cfg(target_os = "linux")]
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) == 0 {
            return;
        }
    }
    // No close_range (kernels before 5.9, other systems): every descriptor the limit allows.
    // SAFETY: as above; getrlimit writes into `lim`.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 16) as libc::c_int
        } else {
            1024
        };
        for fd in first as libc::c_int..top {
            libc::close(fd);
        }
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod linux {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W,
        SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
    };

    /// System calls refused in a worker and in a fork server.
    const DENIED: &[libc::c_long] = &[
        // Networking: the worker talks to its host over an inherited socketpair only.
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        // Other programs and processes: running them, reading or writing them, signalling
        // them or taking a handle that can, comparing their descriptors, moving their
        // memory or changing their scheduling.
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kill,
        libc::SYS_tkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_send_signal,
        libc::SYS_pidfd_getfd,
        libc::SYS_process_madvise,
        libc::SYS_process_mrelease,
        libc::SYS_kcmp,
        libc::SYS_move_pages,
        libc::SYS_migrate_pages,
        libc::SYS_setpriority,
        libc::SYS_ioprio_set,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
        libc::SYS_sched_setaffinity,
        // Files by handle (with CAP_DAC_READ_SEARCH, any file on the filesystem), device
        // nodes.
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_mknod,
        libc::SYS_mknodat,
        libc::SYS_fanotify_init,
        // The system itself.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_vhangup,
    ];

    /// `fcntl` commands refused: they make the kernel send a signal of the caller's choice
    /// (`SIGKILL` included) to any process of the same user when a descriptor is ready.
    const DENIED_FCNTL: &[u32] = &[
        8,  // F_SETOWN
        10, // F_SETSIG
        15, // F_SETOWN_EX
    ];

    /// `ioctl` requests refused: the same signal routing for sockets, and the terminal
    /// requests that reach beyond the worker through a stderr that is a terminal (pushing
    /// input into it, taking it over, redirecting the console).
    const DENIED_IOCTL: &[u32] = &[
        0x8901, // FIOSETOWN
        0x8902, // SIOCSPGRP
        0x5412, // TIOCSTI
        0x541C, // TIOCLINUX
        0x5410, // TIOCSPGRP
        0x540E, // TIOCSCTTY
        0x541D, // TIOCCONS
        0x5423, // TIOCSETD
    ];

    const AUDIT_ARCH: u32 = 0xc000_003e;
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    /// The low 32 bits of argument `i` (little-endian).
    const fn arg(i: u32) -> u32 {
        16 + 8 * i
    }
    const CLONE_THREAD: u32 = 0x0001_0000;
    const DENY: u32 = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const NOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

    fn stmt(code: u32, k: u32) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
        sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        }
    }

    fn ret(k: u32) -> sock_filter {
        stmt(BPF_RET | BPF_K, k)
    }

    /// The start of every filter: another ABI (32-bit calls, x32) gets other numbers, so
    /// it is refused; then the call's number is loaded.
    fn prologue() -> Vec<sock_filter> {
        vec![
            stmt(BPF_LD | BPF_W | BPF_ABS, ARCH),
            jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
            ret(DENY),
            stmt(BPF_LD | BPF_W | BPF_ABS, NR),
            // The x32 ABI sets bit 30 of the number.
            jump(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 0, 1),
            ret(DENY),
        ]
    }

    /// Refuses call `nr` with `action`.
    fn refuse(prog: &mut Vec<sock_filter>, nr: libc::c_long, action: u32) {
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1));
        prog.push(ret(action));
    }

    /// For call `nr`: `block` (which loads an argument and ends in returns) runs instead of
    /// the checks after it. The number stays loaded for the next check when it is another.
    fn when(prog: &mut Vec<sock_filter>, nr: libc::c_long, block: Vec<sock_filter>) {
        prog.push(jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            nr as u32,
            0,
            block.len() as u8,
        ));
        prog.extend(block);
    }

    /// Refuses the calls whose argument `i` (its low 32 bits, all the kernel reads of it)
    /// is one of `values`.
    fn refuse_arg(i: u32, values: &[u32]) -> Vec<sock_filter> {
        on_arg(i, values, DENY, SECCOMP_RET_ALLOW)
    }

    /// Allows the calls whose argument `i` is one of `values`; refuses the others.
    fn allow_arg(i: u32, values: &[u32]) -> Vec<sock_filter> {
        on_arg(i, values, SECCOMP_RET_ALLOW, DENY)
    }

    /// Returns `matched` for the calls whose argument `i` is one of `values`, `otherwise`
    /// for the others.
    fn on_arg(i: u32, values: &[u32], matched: u32, otherwise: u32) -> Vec<sock_filter> {
        let mut block = vec![stmt(BPF_LD | BPF_W | BPF_ABS, arg(i))];
        for &v in values {
            block.push(jump(BPF_JMP | BPF_JEQ | BPF_K, v, 0, 1));
            block.push(ret(matched));
        }
        block.push(ret(otherwise));
        block
    }

    /// Installs `prog` on every thread of this process, after `no_new_privs`.
    fn install(mut prog: Vec<sock_filter>) -> bool {
        let fprog = sock_fprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; the seccomp call reads `fprog`,
        // which points at `prog`, alive for the duration of the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return false;
            }
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &fprog as *const sock_fprog,
            ) == 0
        }
    }

    pub(crate) fn restrict_syscalls() -> bool {
        let mut prog = prologue();
        for &nr in DENIED {
            refuse(&mut prog, nr, DENY);
        }
        when(&mut prog, libc::SYS_fcntl, refuse_arg(1, DENIED_FCNTL));
        when(&mut prog, libc::SYS_ioctl, refuse_arg(1, DENIED_IOCTL));
        prog.push(ret(SECCOMP_RET_ALLOW));
        install(prog)
    }

    pub(crate) fn restrict_worker() -> bool {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() } as u32;
        let mut prog = prologue();
        refuse(&mut prog, libc::SYS_fork, DENY);
        refuse(&mut prog, libc::SYS_vfork, DENY);
        // clone3 passes its flags in memory a filter cannot read. "Not implemented" makes
        // the C library fall back to clone, whose flags it can.
        refuse(&mut prog, libc::SYS_clone3, NOSYS);
        // A new thread of this process (CLONE_THREAD implies a shared address space and
        // signal handlers): allowed. Anything else is a new process.
        when(
            &mut prog,
            libc::SYS_clone,
            vec![
                stmt(BPF_LD | BPF_W | BPF_ABS, arg(0)),
                jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 1, 0),
                ret(DENY),
                ret(SECCOMP_RET_ALLOW),
            ],
        );
        // A signal to a thread of this process (raise, abort, pthread_kill): allowed.
        when(&mut prog, libc::SYS_tgkill, allow_arg(0, &[me]));
        // Resource limits of this process (pid 0 is the caller): allowed.
        when(&mut prog, libc::SYS_prlimit64, allow_arg(0, &[0, me]));
        prog.push(ret(SECCOMP_RET_ALLOW));
        install(prog)
    }

    // Landlock (see landlock(7)); the kernel's structures, as its uapi header lays them out.
    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }

    const CREATE_RULESET_VERSION: u32 = 1;
    const RULE_PATH_BENEATH: u32 = 1;
    /// Access rights to regular files (allowed on a file rule).
    const FILE_RIGHTS: u64 = 1 | 1 << 1 | 1 << 2; // EXECUTE, WRITE_FILE, READ_FILE
    const READ_FILE: u64 = 1 << 2;
    const READ_DIR: u64 = 1 << 3;
    const TRUNCATE: u64 = 1 << 14; // ABI 3
    const IOCTL_DEV: u64 = 1 << 15; // ABI 5
    const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1;
    const SCOPE_SIGNAL: u64 = 1 << 1;

    /// Every filesystem right Landlock ABI `abi` knows.
    fn fs_rights(abi: i64) -> u64 {
        let mut rights = (1 << 13) - 1; // ABI 1: EXECUTE … MAKE_SYM
        if abi >= 2 {
            rights |= 1 << 13; // REFER
        }
        if abi >= 3 {
            rights |= TRUNCATE;
        }
        if abi >= 5 {
            rights |= IOCTL_DEV;
        }
        rights
    }

    /// Allows `rights` beneath `path` (all of them a file can take, if it is a file).
    fn allow(ruleset: libc::c_int, path: &std::path::Path, rights: u64, abi: i64) {
        use std::os::unix::ffi::OsStrExt;
        let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: `cpath` is a valid C string; the descriptor is closed below.
        let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            return;
        }
        let mut allowed = rights;
        if !path.is_dir() {
            let file = FILE_RIGHTS
                | if abi >= 3 { TRUNCATE } else { 0 }
                | if abi >= 5 { IOCTL_DEV } else { 0 };
            allowed &= file;
        }
        let attr = PathBeneathAttr {
            allowed_access: allowed,
            parent_fd: fd,
        };
        // SAFETY: `attr` is a valid rule for the duration of the call; `fd` is ours.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset,
                RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0,
            );
            libc::close(fd);
        }
    }

    /// A new ruleset handling every filesystem right this kernel knows (and, from ABI 6,
    /// scoping signals and abstract sockets to the domain), with no rule yet; with the
    /// kernel's ABI and the rights it handles. `None` where the kernel has no Landlock.
    fn new_ruleset() -> Option<(OwnedFd, i64, u64)> {
        // SAFETY: asking for the ABI version takes no attribute.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0,
                CREATE_RULESET_VERSION,
            )
        };
        if abi < 1 {
            return None;
        }
        let rights = fs_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: rights,
            handled_access_net: 0,
            scoped: if abi >= 6 {
                SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
            } else {
                0
            },
        };
        // ABI 1-3 know no `handled_access_net` nor `scoped`; ABI 4-5 no `scoped`.
        let size = match abi {
            1..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        // SAFETY: `attr` is valid for `size` bytes.
        let ruleset = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                size,
                0,
            )
        } as libc::c_int;
        if ruleset < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        Some((unsafe { OwnedFd::from_raw_fd(ruleset) }, abi, rights))
    }

    pub(crate) fn files_ruleset() -> Option<OwnedFd> {
        let (ruleset, abi, rights) = new_ruleset()?;
        let fd = ruleset.as_raw_fd();
        // Everything a worker may be granted, or maps: every top-level directory but the
        // kernel's views of processes and devices (another process's memory is a file
        // under /proc; a disk is one under /dev).
        if let Ok(entries) = std::fs::read_dir("/") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name == "proc" || name == "sys" || name == "dev" {
                    continue;
                }
                allow(fd, &entry.path(), rights, abi);
            }
        }
        for dev in super::DEVICES {
            allow(fd, std::path::Path::new(dev), rights, abi);
        }
        Some(ruleset)
    }

    /// The rights `reach` gives beneath a path, of the `handled` ones.
    fn rights_for(reach: super::Reach, handled: u64) -> u64 {
        match reach {
            super::Reach::Read => READ_FILE | READ_DIR,
            super::Reach::ReadWrite => handled,
        }
    }

    pub(crate) fn narrowed_ruleset(paths: &[(&std::path::Path, super::Reach)]) -> Option<OwnedFd> {
        let (ruleset, abi, rights) = new_ruleset()?;
        let fd = ruleset.as_raw_fd();
        for (path, reach) in paths {
            allow(fd, path, rights_for(*reach, rights), abi);
        }
        for dev in super::DEVICES {
            allow(fd, std::path::Path::new(dev), rights, abi);
        }
        Some(ruleset)
    }

    pub(crate) fn restrict_files_with(ruleset: OwnedFd) -> bool {
        // SAFETY: plain system calls; the ruleset descriptor is valid (and closed when
        // `ruleset` drops).
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                && libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0) == 0
        }
    }
}

/// Installs the filter for workers and fork servers on every thread of this process.
/// Returns whether it is in place (kernels without seccomp, and platforms other than Linux
/// on x86-64, run without it).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn restrict_syscalls() -> bool {
    linux::restrict_syscalls()
}

/// Installs the worker's own filter (stacked on [`restrict_syscalls`]'s): no new process,
/// no signal to another process's threads, no other process's limits. Called in a worker
/// (executed, or just forked), never in a fork server.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn restrict_worker() -> bool {
    linux::restrict_worker()
}

/// The worker's Landlock ruleset, made once (a fork server makes it before it forks, so
/// a worker only applies it); `None` where the kernel has no Landlock.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn files_ruleset() -> Option<std::os::fd::OwnedFd> {
    linux::files_ruleset()
}

/// Applies `ruleset` (see [`files_ruleset`]) to this thread and the threads it starts
/// later, so it is called before starting any. Returns whether it is in place.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn restrict_files_with(ruleset: std::os::fd::OwnedFd) -> bool {
    linux::restrict_files_with(ruleset)
}

/// Makes and applies the worker's Landlock ruleset (see [`restrict_files_with`]).
pub(crate) fn restrict_files() -> bool {
    files_ruleset().is_some_and(restrict_files_with)
}

/// The devices a worker keeps in every Landlock layer: the null, zero and random devices,
/// and `/dev/shm` for shared segments.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/dev/shm",
];

/// How far a narrowed worker may reach beneath one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Read files and list directories.
    Read,
    /// Everything: read, write, create, remove, rename within.
    ReadWrite,
}

/// Stacks a second Landlock layer on this thread (and the threads it starts later): from
/// then on it opens files only beneath `paths`, as each allows, and the [`DEVICES`].
/// Returns whether it is in place (not where the kernel has no Landlock).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn restrict_files_to(paths: &[(&std::path::Path, Reach)]) -> bool {
    linux::narrowed_ruleset(paths).is_some_and(linux::restrict_files_with)
}

/// Other platforms: no Landlock.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn restrict_files_to(_paths: &[(&std::path::Path, Reach)]) -> bool {
    false
}

/// Other platforms: no filter.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn restrict_syscalls() -> bool {
    false
}

/// Other platforms: no filter.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn restrict_worker() -> bool {
    false
}

/// Other platforms: no Landlock.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn files_ruleset() -> Option<std::os::fd::OwnedFd> {
    None
}

/// Other platforms: no Landlock.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn restrict_files_with(_ruleset: std::os::fd::OwnedFd) -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_arch = "x86_64"))]
mod tests {
    use std::io;

    /// Runs `probe` in a forked child of this test process under the worker's walls (as a
    /// worker: the fork server's filter, then the worker's, then Landlock) and returns what
    /// it reports: the names of the calls that were not refused.
    fn in_sandboxed_child(probe: impl FnOnce(u32) -> Vec<String>) -> Vec<String> {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let parent = std::process::id();
        // SAFETY: the child only installs filters, makes system calls and writes to the
        // pipe, then leaves with _exit; glibc's malloc is usable after fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let mut report = String::new();
            if !super::restrict_syscalls() {
                report.push_str("no-seccomp,");
            }
            if !super::restrict_worker() {
                report.push_str("no-worker-filter,");
            }
            let landlock = super::restrict_files();
            if !landlock {
                report.push_str("no-landlock,");
            }
            for name in probe(parent) {
                report.push_str(&name);
                report.push(',');
            }
            // SAFETY: writes `report` to the pipe, then leaves without running destructors.
            unsafe {
                libc::write(fds[1], report.as_ptr().cast(), report.len());
                libc::_exit(0);
            }
        }
        // SAFETY: the write end is the child's.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe {
            libc::close(fds[0]);
            libc::waitpid(pid, &mut status, 0);
        }
        String::from_utf8_lossy(&out)
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn owned(names: Vec<&'static str>) -> Vec<String> {
        names.into_iter().map(String::from).collect()
    }

    /// Whether a raw system call was refused with EPERM (or EACCES, Landlock's refusal).
    fn refused(r: libc::c_long) -> bool {
        let e = io::Error::last_os_error().raw_os_error();
        r < 0 && (e == Some(libc::EPERM) || e == Some(libc::EACCES))
    }

    fn signal_and_process_probe(host: u32) -> Vec<&'static str> {
        let host = host as libc::c_long;
        let mut open = Vec::new();
        // SAFETY: every call below is a plain system call on valid arguments; signal 0 only
        // checks permission, and nothing is changed where a call is let through.
        unsafe {
            let me = libc::getpid() as libc::c_long;
            let mut info: libc::siginfo_t = std::mem::zeroed();
            info.si_signo = 0;
            info.si_code = -1; // SI_QUEUE: what a process may send
            if !refused(libc::syscall(
                libc::SYS_rt_sigqueueinfo,
                host,
                0,
                &mut info as *mut libc::siginfo_t,
            )) {
                open.push("rt_sigqueueinfo");
            }
            if !refused(libc::syscall(
                libc::SYS_rt_tgsigqueueinfo,
                host,
                host,
                0,
                &mut info as *mut libc::siginfo_t,
            )) {
                open.push("rt_tgsigqueueinfo");
            }
            if !refused(libc::syscall(libc::SYS_pidfd_open, host, 0)) {
                open.push("pidfd_open");
            }
            if !refused(libc::syscall(libc::SYS_tgkill, host, host, 0)) {
                open.push("tgkill(host)");
            }
            if !refused(libc::syscall(libc::SYS_kill, host, 0)) {
                open.push("kill");
            }
            if !refused(libc::syscall(libc::SYS_kcmp, host, me, 0, 0, 0)) {
                open.push("kcmp");
            }
            let mut lim: libc::rlimit = std::mem::zeroed();
            if !refused(libc::syscall(
                libc::SYS_prlimit64,
                host,
                libc::RLIMIT_NOFILE,
                std::ptr::null::<libc::rlimit>(),
                &mut lim as *mut libc::rlimit,
            )) {
                open.push("prlimit64(host)");
            }
            if !refused(libc::fcntl(2, libc::F_SETOWN, host as libc::c_int) as libc::c_long) {
                open.push("fcntl(F_SETOWN)");
            }
            if !refused(libc::fcntl(2, 10 /* F_SETSIG */, libc::SIGKILL) as libc::c_long) {
                open.push("fcntl(F_SETSIG)");
            }
            let byte = 0u8;
            if !refused(libc::ioctl(2, libc::TIOCSTI, &byte as *const u8) as libc::c_long) {
                open.push("ioctl(TIOCSTI)");
            }
            let prio = libc::getpriority(libc::PRIO_PROCESS, host as libc::id_t);
            if !refused(libc::setpriority(libc::PRIO_PROCESS, host as libc::id_t, prio) as _) {
                open.push("setpriority");
            }
            match libc::fork() {
                0 => libc::_exit(0),
                r if refused(r as libc::c_long) => {}
                _ => open.push("fork"),
            }
            match libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) {
                0 => libc::_exit(0),
                r if refused(r) => {}
                _ => open.push("clone(process)"),
            }
            // What the worker itself needs still works.
            if libc::syscall(libc::SYS_tgkill, me, libc::syscall(libc::SYS_gettid), 0) != 0 {
                open.push("!tgkill(self)");
            }
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                open.push("!getrlimit(self)");
            }
        }
        if std::thread::spawn(|| 7).join().ok() != Some(7) {
            open.push("!thread");
        }
        open
    }

    #[test]
    fn a_worker_can_neither_signal_nor_reach_nor_start_another_process() {
        let open = in_sandboxed_child(|host| owned(signal_and_process_probe(host)));
        let open: Vec<&String> = open.iter().filter(|o| *o != "no-landlock").collect();
        assert!(
            open.is_empty(),
            "calls a worker could still make (a `!` marks what it needs and lost): {open:?}"
        );
    }

    fn files_probe(host: u32) -> Vec<&'static str> {
        let mut open = Vec::new();
        let try_open = |path: String, flags: libc::c_int| {
            let Ok(c) = std::ffi::CString::new(path) else {
                return false;
            };
            // SAFETY: `c` is a valid C string; a descriptor opened is closed at once.
            unsafe {
                let fd = libc::open(c.as_ptr(), flags | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd >= 0
            }
        };
        if try_open(format!("/proc/{host}/mem"), libc::O_RDONLY) {
            open.push("/proc/HOST/mem");
        }
        if try_open(format!("/proc/{host}/oom_score_adj"), libc::O_RDONLY) {
            open.push("/proc/HOST/oom_score_adj");
        }
        if try_open("/proc/sys/kernel/core_pattern".into(), libc::O_RDONLY) {
            open.push("/proc/sys");
        }
        if try_open("/sys/kernel/mm".into(), libc::O_RDONLY | libc::O_DIRECTORY) {
            open.push("/sys");
        }
        // What a worker is granted, or maps, is still there.
        if !try_open(
            std::env::temp_dir().to_string_lossy().into_owned(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        ) {
            open.push("!temp dir");
        }
        if !try_open("/dev/null".into(), libc::O_RDWR) {
            open.push("!/dev/null");
        }
        open
    }

    #[test]
    fn a_worker_opens_nothing_under_proc_or_sys_where_landlock_is() {
        // SAFETY: asking for the Landlock ABI version takes no attribute.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0,
                1,
            )
        };
        if abi < 1 {
            eprintln!("this kernel has no Landlock: nothing to check");
            return;
        }
        // The kernel has it, so the worker must have applied it ("no-landlock" otherwise).
        let open = in_sandboxed_child(|host| owned(files_probe(host)));
        assert!(
            open.is_empty(),
            "paths a worker could still open (a `!` marks what it needs and lost): {open:?}"
        );
    }

    fn landlock_abi() -> libc::c_long {
        // SAFETY: asking for the Landlock ABI version takes no attribute.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0,
                1,
            )
        }
    }

    /// Whether `path` opens with `flags` (creating it with `O_CREAT`).
    fn opens(path: &std::path::Path, flags: libc::c_int) -> bool {
        use std::os::unix::ffi::OsStrExt;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is a valid C string; a descriptor opened is closed at once.
        unsafe {
            let fd = libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600);
            if fd >= 0 {
                libc::close(fd);
            }
            fd >= 0
        }
    }

    #[test]
    fn a_narrowed_worker_opens_only_its_module_and_its_grants() {
        if landlock_abi() < 1 {
            eprintln!("this kernel has no Landlock: nothing to check");
            return;
        }
        let root = std::env::temp_dir().join(format!("wasmpool-narrow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (cache, rw, ro, other) = (
            root.join("cache"),
            root.join("rw"),
            root.join("ro"),
            root.join("other"),
        );
        for dir in [&cache, &rw, &ro, &other] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let artifact = cache.join("module.cwasm");
        std::fs::write(&artifact, b"artifact").unwrap();
        std::fs::write(cache.join("another.cwasm"), b"another module").unwrap();
        std::fs::write(ro.join("input.txt"), b"input").unwrap();
        std::fs::write(other.join("secret.txt"), b"secret").unwrap();

        let report = in_sandboxed_child(|_| {
            use super::Reach;
            let mut report = Vec::new();
            if !super::restrict_files_to(&[
                (artifact.as_path(), Reach::Read),
                (rw.as_path(), Reach::ReadWrite),
                (ro.as_path(), Reach::Read),
            ]) {
                report.push("!narrowed".to_string());
            }
            let mut check = |name: &str, path: std::path::PathBuf, flags, want: bool| {
                if opens(&path, flags) != want {
                    report.push(format!("{}{name}", if want { "!" } else { "" }));
                }
            };
            let (read, dir) = (libc::O_RDONLY, libc::O_RDONLY | libc::O_DIRECTORY);
            let create = libc::O_WRONLY | libc::O_CREAT;
            check("artifact", artifact.clone(), read, true);
            check("rw/new", rw.join("new.txt"), create, true);
            check("rw/", rw.clone(), dir, true);
            check("ro/input", ro.join("input.txt"), read, true);
            check("ro/", ro.clone(), dir, true);
            check("/dev/null", "/dev/null".into(), libc::O_RDWR, true);
            check("ro/new", ro.join("new.txt"), create, false);
            check(
                "ro/input for writing",
                ro.join("input.txt"),
                libc::O_WRONLY,
                false,
            );
            check(
                "artifact for writing",
                artifact.clone(),
                libc::O_WRONLY,
                false,
            );
            check("another artifact", cache.join("another.cwasm"), read, false);
            check("cache/", cache.clone(), dir, false);
            check("other/secret", other.join("secret.txt"), read, false);
            check("/etc/passwd", "/etc/passwd".into(), read, false);
            check("temp dir new file", root.join("new.txt"), create, false);
            report
        });
        let _ = std::fs::remove_dir_all(&root);
        // Names are what the narrowed worker got wrong: opened though outside its grants,
        // or (with `!`) refused though it needs it.
        assert!(
            report.is_empty(),
            "a narrowed worker got these wrong: {report:?}"
        );
    }
}
