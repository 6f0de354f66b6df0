//! An unbounded queue as one ring in a shared segment, put to and got from in place by the
//! host and by every worker given the queue.
//!
//! The broker keeps the queue's other rules: `close` marks the ring closed (a put after it
//! is refused; a get on a closed, empty queue fails), and `qsize` counts the ring's items
//! with its own. A put that does not fit (larger than the ring, or a ring full for a
//! millisecond) spills the ring: from then on puts go through the broker, after what is
//! left in the ring (see [`ring`](super::ring)).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use wasmpool_objects::wire::{ObjectError, too_large};

use super::ring::{Corrupt, Push, Ring};
use super::segment::{Segment, SegmentBudget};
use super::{Local, SPIN};

/// Bytes of the ring: room for ~16k small items.
const RING_BYTES: usize = 256 << 10;
const RING: usize = 128;
const DATA: usize = 4096;
const SEGMENT_BYTES: usize = DATA + RING_BYTES;

// Offsets in the segment's header.
const MAGIC: usize = 0;
const RING_SIZE: usize = 4;
const MAX_MESSAGE: usize = 8;

const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"wpQ2");

/// How long closing waits for a process inside the ring's mutex.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

/// A queue's shared segment, mapped.
#[derive(Debug)]
pub(crate) struct SharedQueue {
    seg: Segment,
    max_message: usize,
    /// The ring's head as this process last read it (see [`Ring`]).
    head_seen: AtomicU64,
}

fn corrupt(_: Corrupt) -> ObjectError {
    ObjectError::Invalid("the queue's shared memory was corrupted by a process holding it".into())
}

impl SharedQueue {
    /// A new, empty, open queue's segment.
    pub fn create(max_message: usize, budget: &SegmentBudget) -> io::Result<SharedQueue> {
        let seg = Segment::create(c"wasmpool-queue", SEGMENT_BYTES, budget)?;
        seg.u32(MAGIC).store(MAGIC_VALUE, SeqCst);
        seg.u32(RING_SIZE).store(RING_BYTES as u32, SeqCst);
        seg.u64(MAX_MESSAGE).store(max_message as u64, SeqCst);
        Ok(SharedQueue {
            seg,
            max_message,
            head_seen: AtomicU64::new(0),
        })
    }

    /// Maps the segment of a queue the host created.
    pub fn open(fd: OwnedFd) -> io::Result<SharedQueue> {
        let marks = [(MAGIC, MAGIC_VALUE), (RING_SIZE, RING_BYTES as u32)];
        let seg = Segment::open_marked(fd, SEGMENT_BYTES, &marks, "queue")?;
        let max_message = usize::try_from(seg.u64(MAX_MESSAGE).load(SeqCst)).unwrap_or(0);
        Ok(SharedQueue {
            seg,
            max_message,
            head_seen: AtomicU64::new(0),
        })
    }

    /// The descriptor to hand to a worker (`None` in a worker, which only maps it).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.seg.fd()
    }

    fn ring(&self) -> Ring<'_> {
        Ring::new(&self.seg, RING, DATA, RING_BYTES, &self.head_seen)
    }

    /// Closes the queue, as process `tag`.
    pub fn close(&self, tag: u32) {
        self.ring().close(tag, Instant::now() + CLOSE_WAIT);
    }

    /// How many items wait in the ring.
    pub fn len(&self) -> u64 {
        self.ring().len()
    }

    /// Process `pid` died: if it was inside the ring's mutex, the mutex is free again.
    pub fn release_locks_of(&self, pid: u32) {
        self.ring().release_if_held_by(pid);
    }

    /// Puts `msg`, as process `tag`.
    pub fn put(&self, tag: u32, msg: &[u8]) -> Result<Local<()>, ObjectError> {
        let len = wasmpool_objects::wire::payload_size(msg);
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        let ring = self.ring();
        match ring.push_or_spill(tag, msg).map_err(corrupt)? {
            Push::Pushed => Ok(Local::Done(())),
            Push::Spilled | Push::Full => Ok(Local::Broker),
            Push::Closed => Err(ObjectError::Closed("the queue is closed".into())),
        }
    }

    /// Gets the oldest item, as process `tag`, waiting until `deadline` (forever if `None`).
    pub fn get(&self, tag: u32, deadline: Option<Instant>) -> Result<Local<Vec<u8>>, ObjectError> {
        let ring = self.ring();
        loop {
            let bell = ring.bell();
            if let Some(v) = ring.pop(tag, deadline).map_err(corrupt)? {
                return Ok(Local::Done(v));
            }
            // A spill or a close is noticed after the items committed before it: look once
            // more, then act on it.
            if ring.spilled() || ring.closed() {
                if let Some(v) = ring.pop(tag, deadline).map_err(corrupt)? {
                    return Ok(Local::Done(v));
                }
                if ring.spilled() {
                    return Ok(Local::Broker);
                }
                if ring.has_data() {
                    // Items left that the mutex's wait did not reach in time.
                    return Err(ObjectError::Empty);
                }
                return Err(ObjectError::Closed("the queue is closed and empty".into()));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ObjectError::Empty);
            }
            ring.wait_bell(bell, SPIN, deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::soon;

    fn pair() -> (SharedQueue, SharedQueue) {
        let host = SharedQueue::create(1 << 20, &SegmentBudget::new(4)).unwrap();
        let worker = SharedQueue::open(host.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        (host, worker)
    }

    #[test]
    fn items_come_out_in_order_and_are_counted() {
        let (a, b) = pair();
        for i in 0..100u32 {
            assert_eq!(b.put(2, &i.to_le_bytes()), Ok(Local::Done(())));
        }
        assert_eq!(a.len(), 100);
        for i in 0..100u32 {
            assert_eq!(a.get(1, soon()), Ok(Local::Done(i.to_le_bytes().to_vec())));
        }
        assert_eq!(a.len(), 0);
        assert_eq!(a.get(1, soon()), Err(ObjectError::Empty));
    }

    #[test]
    fn a_closed_queue_refuses_puts_and_fails_gets_once_empty() {
        let (a, b) = pair();
        b.put(2, b"last").unwrap();
        a.close(1);
        assert!(matches!(b.put(2, b"more"), Err(ObjectError::Closed(_))));
        assert_eq!(b.get(2, None), Ok(Local::Done(b"last".to_vec())));
        assert!(matches!(b.get(2, None), Err(ObjectError::Closed(_))));
    }

    #[test]
    fn a_full_ring_spills_and_what_it_holds_is_still_got_first() {
        let (a, b) = pair();
        let msg = vec![1u8; 1000];
        let mut kept = 0;
        while b.put(2, &msg).unwrap() == Local::Done(()) {
            kept += 1;
        }
        assert_eq!(kept, RING_BYTES / 1004);
        assert_eq!(b.put(2, b"x"), Ok(Local::Broker));
        for _ in 0..kept {
            assert_eq!(a.get(1, soon()), Ok(Local::Done(msg.clone())));
        }
        assert_eq!(a.get(1, soon()), Ok(Local::Broker));
    }

    #[test]
    fn a_waiting_getter_wakes_for_a_put_from_another_thread() {
        let (a, b) = pair();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b.put(2, b"late").unwrap();
            b
        });
        assert_eq!(a.get(1, None), Ok(Local::Done(b"late".to_vec())));
        t.join().unwrap();
    }
}
