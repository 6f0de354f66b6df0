//! SIGHUP reloads the tenants file, through a plain signal pipe (never tokio's `signal`
//! feature, which breaks the worker's sandbox): the handler writes a byte to a pipe, and a
//! thread reading it reloads. The file is also reloaded whenever its modification time
//! changes (checked every second), so a signal is never needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::app::App;

/// The pipe's write end, for the handler: a signal's disposition is process-wide, and so
/// is this.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_hangup(_: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a live local. A full pipe
        // (non-blocking) drops the byte, and a reload is pending then anyway.
        unsafe {
            libc::write(fd, (&raw const byte).cast(), 1);
        }
    }
}

/// Installs the SIGHUP handler and the thread that reloads `app`'s tenants on it. On any
/// failure it logs and leaves SIGHUP as it was (the modification-time reload still works).
pub fn reload_on_sighup(app: Arc<App>) {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        tracing::warn!("no pipe for SIGHUP: {}", std::io::Error::last_os_error());
        return;
    }
    let read_fd = fds[0];
    // The reading end blocks: the thread waits on it.
    // SAFETY: `read_fd` is the pipe just made.
    unsafe {
        let flags = libc::fcntl(read_fd, libc::F_GETFL);
        libc::fcntl(read_fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    PIPE_WRITE.store(fds[1], Ordering::Relaxed);
    let spawned = std::thread::Builder::new()
        .name("wasmpool-sighup".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: reads into a live buffer of its length.
                let n = unsafe { libc::read(read_fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n <= 0 {
                    return;
                }
                match app.tenants.reload_if_changed(true) {
                    Ok(_) => {
                        tracing::info!("SIGHUP: reloaded the tenants file");
                        app.dispatch.wake.notify_one();
                    }
                    Err(e) => tracing::error!("SIGHUP: {e}; keeping the tenants as they were"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no thread for SIGHUP: {e}");
        return;
    }
    // SAFETY: an empty sigaction with a handler that only calls write(2).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_hangup as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut()) != 0 {
            tracing::warn!("cannot handle SIGHUP: {}", std::io::Error::last_os_error());
        }
    }
}
