//! Message sockets that can carry a file descriptor: how the host hands a fork server the
//! socket of each worker it asks for.
//!
//! A `SOCK_SEQPACKET` Unix socket keeps message boundaries, so a message and the descriptor
//! sent with it (`SCM_RIGHTS`) always arrive together, in one `recvmsg`, and a reader never
//! needs to buffer or reassemble anything.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The largest message either side sends (a fork request names a path and a process name).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// A connected pair of message sockets, both close-on-exec.
pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, which has room for them.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of one descriptor, aligned for `cmsghdr`.
#[repr(C)]
union ControlBuf {
    align: libc::cmsghdr,
    bytes: [u8; 64],
}

/// Sends `data` as one message, with `fd` attached if given (the receiver gets its own copy);
/// answers how many bytes went (all of them on a message socket; on a stream socket the
/// caller writes the rest, the descriptor having gone with the first byte).
pub(crate) fn send(sock: &impl AsRawFd, data: &[u8], fd: Option<RawFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = ControlBuf { bytes: [0; 64] };
    // SAFETY: an all-zero msghdr is a valid empty header; every pointer set below stays
    // valid for the sendmsg call (iov, control), and CMSG_* only compute offsets within
    // `control`, which is large enough for one descriptor.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(fd) = fd {
            let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
            msg.msg_control = control.bytes.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
        }
        loop {
            let n = libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Receives one message into `buf`: its length (0 when the peer has closed) and the
/// descriptor that came with it, if any. A message longer than `buf` is an error.
pub(crate) fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let (n, mut fds, flags) = recv_raw(sock, buf)?;
    if flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message (or its descriptors) did not fit",
        ));
    }
    if fds.len() > 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message carried more than one descriptor",
        ));
    }
    Ok((n, fds.pop()))
}

/// One `recvmsg`: the bytes' length, the descriptors that came with them, and the flags.
fn recv_raw(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>, i32)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = ControlBuf { bytes: [0; 64] };
    // SAFETY: as in `send`; the kernel writes at most `msg_controllen` bytes of control
    // data into `control`, and the descriptors it reports are new ones, owned by us.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.bytes.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of::<ControlBuf>() as _;
        let n = loop {
            let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // Every descriptor that arrived is taken into ownership first, so none leaks
        // whatever is wrong with the message.
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n, fds, msg.msg_flags))
    }
}

/// A stream socket read with `recvmsg`: the descriptors that arrive with its bytes are
/// kept, in order, for [`take_fd`](Self::take_fd). A descriptor sent with a frame's bytes
/// has arrived by the time that frame is read whole.
#[derive(Debug)]
pub(crate) struct FdReader {
    sock: std::os::unix::net::UnixStream,
    fds: std::collections::VecDeque<OwnedFd>,
}

impl FdReader {
    pub fn new(sock: std::os::unix::net::UnixStream) -> Self {
        FdReader {
            sock,
            fds: Default::default(),
        }
    }

    /// The oldest descriptor received and not taken yet.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fds.pop_front()
    }
}

impl io::Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The bytes are kept whatever happened to the descriptors (the kernel drops those
        // it cannot install, at the limit of open files): the answer they came with then
        // finds none, and fails alone.
        let (n, fds, _) = recv_raw(&self.sock, buf)?;
        self.fds.extend(fds);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_message_carries_a_working_descriptor() {
        let (a, b) = pair().unwrap();
        let (mut left, right) = UnixStream::pair().unwrap();
        send(&a, b"hello", Some(right.as_raw_fd())).unwrap();
        drop(right);
        let mut buf = [0u8; 16];
        let (n, fd) = recv(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let mut passed = UnixStream::from(fd.expect("a descriptor"));
        passed.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        left.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn boundaries_are_kept_and_close_reads_as_zero() {
        let (a, b) = pair().unwrap();
        send(&a, b"one", None).unwrap();
        send(&a, b"two!", None).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv(&b, &mut buf).unwrap().0, 3);
        let (n, fd) = recv(&b, &mut buf).unwrap();
        assert_eq!((&buf[..n], fd.is_none()), (&b"two!"[..], true));
        drop(a);
        assert_eq!(recv(&b, &mut buf).unwrap().0, 0);
    }

    #[test]
    fn a_stream_reader_keeps_the_descriptor_that_came_with_its_bytes() {
        use std::io::BufRead;
        let (a, b) = UnixStream::pair().unwrap();
        let (left, right) = UnixStream::pair().unwrap();
        let mut a = a;
        a.write_all(b"before ").unwrap();
        assert_eq!(send(&a, b"with fd", Some(right.as_raw_fd())).unwrap(), 7);
        a.write_all(b" after").unwrap();
        drop((a, right));
        let mut reader = std::io::BufReader::new(FdReader::new(b));
        let mut text = String::new();
        while reader.read_line(&mut text).unwrap() > 0 {}
        assert_eq!(text, "before with fd after");
        let mut passed = UnixStream::from(reader.get_mut().take_fd().expect("a descriptor"));
        assert!(reader.get_mut().take_fd().is_none());
        passed.write_all(b"ok").unwrap();
        let mut got = [0u8; 2];
        let mut left = left;
        left.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ok");
    }

    #[test]
    fn an_oversized_message_is_an_error() {
        let (a, b) = pair().unwrap();
        send(&a, &[7u8; 32], None).unwrap();
        let mut buf = [0u8; 8];
        assert!(recv(&b, &mut buf).is_err());
    }
}
