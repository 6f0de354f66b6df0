//! A sealed shared-memory segment: a memfd of a fixed size, mapped read-write.
//!
//! The host creates a segment and hands its descriptor to the workers that use it; each maps
//! the same pages. The size is sealed before any worker sees the descriptor, so no process
//! holding it can shrink the file under another's mapping (which would make that process's
//! next access a `SIGBUS`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// How many segments one owner (a runtime) may create and keep alive at once: each keeps a
/// descriptor open, to hand to workers, and objects made past it go through the broker only.
#[derive(Debug, Clone)]
pub(crate) struct SegmentBudget(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl SegmentBudget {
    /// A budget of `max` segments alive at once.
    pub fn new(max: usize) -> SegmentBudget {
        SegmentBudget(Arc::new(Budget {
            used: AtomicUsize::new(0),
            max,
        }))
    }

    /// How many segments made under this budget are alive.
    pub fn in_use(&self) -> usize {
        self.0.used.load(Ordering::SeqCst)
    }

    fn take(&self) -> bool {
        if self.0.used.fetch_add(1, Ordering::SeqCst) >= self.0.max {
            self.give_back();
            return false;
        }
        true
    }

    fn give_back(&self) {
        self.0.used.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A mapped segment. Every access goes through atomics or bounds-checked copies: other
/// processes write the same pages at the same time.
#[derive(Debug)]
pub(crate) struct Segment {
    base: NonNull<u8>,
    len: usize,
    /// Kept by the creator, to hand on; a process that only maps the segment closes it.
    fd: Option<OwnedFd>,
    /// The creator's budget, given back on drop.
    budget: Option<SegmentBudget>,
}

// SAFETY: the mapping is plain shared memory, valid until `Drop`; every access through
// `Segment` is atomic or a copy whose races the users of the segment tolerate.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes, its size sealed.
    /// Counts against `budget`: past it, creation fails.
    pub fn create(
        name: &std::ffi::CStr,
        len: usize,
        budget: &SegmentBudget,
    ) -> io::Result<Segment> {
        if !budget.take() {
            return Err(io::Error::other("too many shared segments"));
        }
        match Self::create_counted(name, len) {
            Ok(mut seg) => {
                seg.budget = Some(budget.clone());
                Ok(seg)
            }
            Err(e) => {
                budget.give_back();
                Err(e)
            }
        }
    }

    fn create_counted(name: &std::ffi::CStr, len: usize) -> io::Result<Segment> {
        // SAFETY: `name` is a valid C string; memfd_create returns a new descriptor or -1.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
        // SAFETY: plain system calls on a descriptor we own.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), size) < 0 {
                return Err(io::Error::last_os_error());
            }
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Self::map_fd(fd, len).map(|(base, fd)| Segment {
            base,
            len,
            fd: Some(fd),
            budget: None,
        })
    }

    /// Maps a segment another process created; it must be `len` bytes and sealed against
    /// shrinking.
    pub fn open(fd: OwnedFd, len: usize) -> io::Result<Segment> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes into `st`, which is large enough.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if usize::try_from(st.st_size).ok() != Some(len) {
            return Err(bad("a shared segment of the wrong size"));
        }
        // SAFETY: F_GET_SEALS only reads the descriptor's seals.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(bad("a shared segment that could shrink"));
        }
        // The mapping keeps the memory; the descriptor would only count against the limit.
        Self::map_fd(fd, len).map(|(base, _)| Segment {
            base,
            len,
            fd: None,
            budget: None,
        })
    }

    /// Maps the segment of a `what` (a pipe, a queue, …) another process created: it must
    /// be `len` bytes, sealed, and hold each `(offset, value)` of `marks` (its magic number,
    /// and whatever else its layout depends on).
    pub fn open_marked(
        fd: OwnedFd,
        len: usize,
        marks: &[(usize, u32)],
        what: &str,
    ) -> io::Result<Segment> {
        let seg = Self::open(fd, len)?;
        if marks
            .iter()
            .any(|&(offset, value)| seg.u32(offset).load(Ordering::SeqCst) != value)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a {what}'s shared segment"),
            ));
        }
        Ok(seg)
    }

    fn map_fd(fd: OwnedFd, len: usize) -> io::Result<(NonNull<u8>, OwnedFd)> {
        // SAFETY: a fresh shared mapping of a descriptor we own, of its full (sealed) size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok((base, fd))
    }

    /// The descriptor, to hand to a worker (only the creator has it).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    fn at(&self, offset: usize, size: usize) -> *mut u8 {
        assert!(
            offset.checked_add(size).is_some_and(|end| end <= self.len),
            "segment access out of bounds"
        );
        // SAFETY: checked just above to lie within the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }

    /// The 32-bit word at `offset` (4-byte aligned; offsets are constants of the layout).
    pub fn u32(&self, offset: usize) -> &AtomicU32 {
        debug_assert_eq!(offset % 4, 0);
        // SAFETY: in bounds, aligned (the mapping is page-aligned), and shared memory is
        // only ever accessed atomically at this offset.
        unsafe { &*self.at(offset, 4).cast::<AtomicU32>() }
    }

    /// The 64-bit word at `offset` (8-byte aligned).
    pub fn u64(&self, offset: usize) -> &AtomicU64 {
        debug_assert_eq!(offset % 8, 0);
        // SAFETY: as in `u32`.
        unsafe { &*self.at(offset, 8).cast::<AtomicU64>() }
    }

    /// Copies `src` into the segment at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) {
        let dst = self.at(offset, src.len());
        // SAFETY: `dst` has room for `src` (checked in `at`); the regions cannot overlap, as
        // `src` is not in the segment's data area (callers copy from their own memory).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    }

    /// Copies from the segment at `offset` into `dst`.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        let src = self.at(offset, dst.len());
        // SAFETY: as in `write`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_fd`; nothing borrows it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if let Some(budget) = &self.budget {
            budget.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_segment_see_each_others_writes() {
        let a = Segment::create(c"test", 8192, &SegmentBudget::new(4)).unwrap();
        let dup = a.fd().unwrap().try_clone_to_owned().unwrap();
        let b = Segment::open(dup, 8192).unwrap();
        assert!(b.fd().is_none(), "a mapper keeps no descriptor");
        a.u64(64).store(42, Ordering::SeqCst);
        assert_eq!(b.u64(64).load(Ordering::SeqCst), 42);
        b.write(100, b"hello");
        let mut got = [0u8; 5];
        a.read(100, &mut got);
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn a_segment_cannot_be_shrunk_or_opened_at_another_size() {
        let a = Segment::create(c"test", 8192, &SegmentBudget::new(4)).unwrap();
        // SAFETY: a plain system call on a descriptor the segment owns.
        assert!(unsafe { libc::ftruncate(a.fd().unwrap().as_raw_fd(), 0) } < 0);
        let dup = a.fd().unwrap().try_clone_to_owned().unwrap();
        assert!(Segment::open(dup, 4096).is_err());
    }
}
