//! A `Lock` as one word of a shared segment, acquired and released in place by the host and
//! by every worker given it: taking a free lock is one atomic instruction, and a waiter
//! spins briefly before it sleeps on a futex, so a lock passed back and forth between two
//! busy processes costs no wake-up.
//!
//! The word holds the pid of the process that acquired the lock (the host's for the host
//! program). As in Python, any process may release it. If its holder dies, the broker frees
//! it ([`SharedLock::release_if_held_by`]) and its waiters go on.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use wasmpool_objects::wire::ObjectError;

use super::SPIN;
use super::mutex::Mutex;
use super::segment::{Segment, SegmentBudget};

const SEGMENT_BYTES: usize = 4096;
const MAGIC: usize = 0;
const WORD: usize = 64;
const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"wpL1");

/// A lock's shared segment, mapped.
#[derive(Debug)]
pub(crate) struct SharedLock {
    seg: Segment,
}

impl SharedLock {
    /// A new, free lock.
    pub fn create(budget: &SegmentBudget) -> io::Result<SharedLock> {
        let seg = Segment::create(c"wasmpool-lock", SEGMENT_BYTES, budget)?;
        seg.u32(MAGIC).store(MAGIC_VALUE, SeqCst);
        Ok(SharedLock { seg })
    }

    /// Maps the segment of a lock the host created.
    pub fn open(fd: OwnedFd) -> io::Result<SharedLock> {
        let seg = Segment::open_marked(fd, SEGMENT_BYTES, &[(MAGIC, MAGIC_VALUE)], "lock")?;
        Ok(SharedLock { seg })
    }

    /// The descriptor to hand to a worker (`None` in a worker, which only maps it).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.seg.fd()
    }

    fn mutex(&self) -> Mutex<'_> {
        Mutex::at(&self.seg, WORD)
    }

    /// Acquires the lock as process `tag`, waiting until `deadline` (forever if `None`);
    /// answers whether it did.
    pub fn acquire(&self, tag: u32, deadline: Option<Instant>) -> bool {
        self.mutex().acquire(tag, SPIN, deadline)
    }

    /// Releases the lock, whoever holds it (as Python's `Lock` allows).
    pub fn release(&self) -> Result<(), ObjectError> {
        match self.mutex().release() {
            0 => Err(ObjectError::NotOwner("release of an unlocked lock".into())),
            _ => Ok(()),
        }
    }

    /// Whether the lock is held (a snapshot).
    pub fn locked(&self) -> bool {
        self.mutex().is_held()
    }

    /// Process `pid` died: if it held the lock, the lock is free again and a waiter gets it.
    pub fn release_if_held_by(&self, pid: u32) -> bool {
        self.mutex().release_if_held_by(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::soon;
    use std::time::Duration;

    fn pair() -> (SharedLock, SharedLock) {
        let host = SharedLock::create(&SegmentBudget::new(4)).unwrap();
        let worker = SharedLock::open(host.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        (host, worker)
    }

    #[test]
    fn a_held_lock_times_out_others_and_any_process_may_release_it() {
        let (a, b) = pair();
        assert!(a.acquire(1, None));
        assert!(b.locked());
        assert!(!b.acquire(2, soon()));
        b.release().unwrap();
        assert!(b.acquire(2, soon()));
        assert!(matches!(
            {
                a.release().unwrap();
                a.release()
            },
            Err(ObjectError::NotOwner(_))
        ));
    }

    #[test]
    fn a_dead_holders_lock_goes_to_its_waiter() {
        let (a, b) = pair();
        assert!(b.acquire(7, None));
        assert!(!a.release_if_held_by(8), "only the holder's death frees it");
        let waiter = std::thread::spawn(move || a.acquire(1, None));
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.release_if_held_by(7));
        assert!(waiter.join().unwrap());
        assert!(b.locked());
    }

    #[test]
    fn a_sleeping_waiter_wakes_when_the_lock_is_released() {
        let (a, b) = pair();
        assert!(a.acquire(1, None));
        let waiter = std::thread::spawn(move || {
            let got = b.acquire(2, None);
            (got, b)
        });
        std::thread::sleep(Duration::from_millis(50));
        a.release().unwrap();
        let (got, b) = waiter.join().unwrap();
        assert!(got);
        b.release().unwrap();
        assert!(!a.locked());
    }
}
