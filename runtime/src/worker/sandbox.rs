//! A seccomp filter for the worker process: the system calls a wasm worker never needs
//! (new sockets, running programs, tracing other processes, kernel modules, namespaces …)
//! fail with `EPERM`. The guest is already confined by wasm and WASI; this is the second
//! wall, for the day a bug in the runtime lets a guest reach native code. Calls are refused
//! rather than fatal, so nothing the worker legitimately does can crash it.

/// System calls refused in a worker.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const DENIED: &[libc::c_long] = &[
    // Networking: the worker talks to its host over an inherited socketpair only.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    // Other programs and processes.
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kill,
    libc::SYS_tkill,
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
];

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const AUDIT_ARCH: u32 = 0xc000_003e;

/// Installs the filter on every thread of this process. Returns whether it is in place
/// (kernels without seccomp, and platforms other than Linux on x86-64, run without it).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub(crate) fn restrict_syscalls() -> bool {
    use libc::{
        BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, SECCOMP_RET_ALLOW,
        SECCOMP_RET_ERRNO, sock_filter, sock_fprog,
    };
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    let stmt = |code: u32, k: u32| sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let deny = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut prog = vec![
        // Another ABI (e.g. 32-bit calls on x86-64) would get other numbers: refuse it.
        stmt(BPF_LD | BPF_W | BPF_ABS, ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, deny),
        stmt(BPF_LD | BPF_W | BPF_ABS, NR),
        // The x32 ABI sets bit 30 of the number.
        jump(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 0, 1),
        stmt(BPF_RET | BPF_K, deny),
    ];
    for &nr in DENIED {
        prog.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1));
        prog.push(stmt(BPF_RET | BPF_K, deny));
    }
    prog.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
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

/// Other platforms: no filter.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub(crate) fn restrict_syscalls() -> bool {
    false
}
