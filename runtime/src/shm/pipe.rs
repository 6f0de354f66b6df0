//! A pipe's two directions as rings in one shared segment, used in place by the host and by
//! every worker that holds an end: a message goes from the sender's memory to the
//! receiver's without the broker, and a receiver that waits spins briefly before it
//! sleeps, so a quick answer costs no wake-up at all.
//!
//! The broker still decides who holds which end: it writes whether each end is open into
//! the segment (and rings the bells), and a receiver that finds its ring empty and the other
//! end closed reads end-of-file. A message that does not fit (larger than a ring, or a ring
//! that stays full for a millisecond) spills the ring: from then on that direction goes
//! through the broker, after what is left in the ring (see [`ring`](super::ring)).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use wasmpool_objects::wire::{ObjectError, too_large};

use super::ring::{self, Corrupt, Push, Ring};
use super::segment::{Segment, SegmentBudget};
use super::{Local, SPIN};

/// Bytes of each direction's ring: twice a Linux pipe's buffer.
const RING_BYTES: usize = 128 << 10;
/// Where the rings' data starts (the headers fill the first page).
const DATA: usize = 4096;
const SEGMENT_BYTES: usize = DATA + 2 * RING_BYTES;

// Offsets in the segment's header.
const MAGIC: usize = 0;
const RING_SIZE: usize = 4;
const DUPLEX: usize = 8;
const OPEN: usize = 16;
const MAX_MESSAGE: usize = 24;
const RINGS: usize = 128;

const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"wpP2");

/// A pipe's shared segment, mapped.
#[derive(Debug)]
pub(crate) struct SharedPipe {
    seg: Segment,
    duplex: bool,
    max_message: usize,
    /// Each ring's head as this process last read it (see [`Ring`]).
    head_seen: [AtomicU64; 2],
}

fn corrupt(_: Corrupt) -> ObjectError {
    ObjectError::Invalid("the pipe's shared memory was corrupted by a process holding it".into())
}

impl SharedPipe {
    /// A new pipe's segment: both ends open, both rings empty.
    pub fn create(
        duplex: bool,
        max_message: usize,
        budget: &SegmentBudget,
    ) -> io::Result<SharedPipe> {
        let seg = Segment::create(c"wasmpool-pipe", SEGMENT_BYTES, budget)?;
        seg.u32(MAGIC).store(MAGIC_VALUE, SeqCst);
        seg.u32(RING_SIZE).store(RING_BYTES as u32, SeqCst);
        seg.u32(DUPLEX).store(u32::from(duplex), SeqCst);
        seg.u32(OPEN).store(1, SeqCst);
        seg.u32(OPEN + 4).store(1, SeqCst);
        seg.u64(MAX_MESSAGE).store(max_message as u64, SeqCst);
        Ok(SharedPipe {
            seg,
            duplex,
            max_message,
            head_seen: Default::default(),
        })
    }

    /// Maps the segment of a pipe the host created.
    pub fn open(fd: OwnedFd) -> io::Result<SharedPipe> {
        let marks = [(MAGIC, MAGIC_VALUE), (RING_SIZE, RING_BYTES as u32)];
        let seg = Segment::open_marked(fd, SEGMENT_BYTES, &marks, "pipe")?;
        let duplex = seg.u32(DUPLEX).load(SeqCst) != 0;
        let max_message = usize::try_from(seg.u64(MAX_MESSAGE).load(SeqCst)).unwrap_or(0);
        Ok(SharedPipe {
            seg,
            duplex,
            max_message,
            head_seen: Default::default(),
        })
    }

    /// The descriptor to hand to a worker (`None` in a worker, which only maps it).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.seg.fd()
    }

    /// The ring end `end` receives from.
    fn ring(&self, end: u8) -> Ring<'_> {
        let e = usize::from(end & 1);
        Ring::new(
            &self.seg,
            RINGS + e * ring::HEADER,
            DATA + e * RING_BYTES,
            RING_BYTES,
            &self.head_seen[e],
        )
    }

    fn is_open(&self, end: u8) -> bool {
        self.seg.u32(OPEN + 4 * usize::from(end & 1)).load(SeqCst) != 0
    }

    /// The broker's view of which ends are open; receivers are woken when it changes.
    pub fn set_open(&self, open: [bool; 2]) {
        for e in 0..2u8 {
            let flag = self.seg.u32(OPEN + 4 * usize::from(e));
            if flag.swap(u32::from(open[usize::from(e)]), SeqCst) != u32::from(open[usize::from(e)])
            {
                self.ring(0).ring_bell();
                self.ring(1).ring_bell();
            }
        }
    }

    /// Process `pid` died: if it was inside a ring's mutex, the mutex is free again.
    pub fn release_locks_of(&self, pid: u32) {
        self.ring(0).release_if_held_by(pid);
        self.ring(1).release_if_held_by(pid);
    }

    /// Sends `msg` from end `end`, as process `tag`.
    pub fn send(&self, end: u8, tag: u32, msg: &[u8]) -> Result<Local<()>, ObjectError> {
        let e = end & 1;
        if !self.duplex && e == 0 {
            return Err(ObjectError::Invalid(
                "this end of a one-way pipe only receives".into(),
            ));
        }
        let len = wasmpool_objects::wire::payload_size(msg);
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        let ring = self.ring(1 - e);
        if ring.spilled() {
            return Ok(Local::Broker);
        }
        if !self.is_open(1 - e) {
            return Err(ObjectError::Closed(
                "broken pipe: the other end is closed".into(),
            ));
        }
        match ring.push_or_spill(tag, msg).map_err(corrupt)? {
            Push::Pushed => Ok(Local::Done(())),
            Push::Spilled | Push::Full => Ok(Local::Broker),
            // Pipe rings are never closed: someone wrote the flag who should not have.
            Push::Closed => Err(corrupt(Corrupt)),
        }
    }

    /// Receives on end `end`, as process `tag`, waiting until `deadline` (forever if `None`).
    pub fn recv(
        &self,
        end: u8,
        tag: u32,
        deadline: Option<Instant>,
    ) -> Result<Local<Vec<u8>>, ObjectError> {
        self.wait_for(end, tag, deadline, true).map(|r| match r {
            Local::Done(Some(v)) => Local::Done(v),
            Local::Done(None) | Local::Broker => Local::Broker,
        })
    }

    /// Whether end `end` has a message to receive (or would read end-of-file), waiting
    /// until `deadline`.
    pub fn poll(
        &self,
        end: u8,
        tag: u32,
        deadline: Option<Instant>,
    ) -> Result<Local<bool>, ObjectError> {
        match self.wait_for(end, tag, deadline, false) {
            Ok(Local::Done(_)) => Ok(Local::Done(true)),
            Ok(Local::Broker) => Ok(Local::Broker),
            Err(ObjectError::Closed(_)) => Ok(Local::Done(true)),
            Err(ObjectError::Timeout) => Ok(Local::Done(false)),
            Err(e) => Err(e),
        }
    }

    /// Waits for a message on end `end`, taking it if `take` (else answering `Done(None)`
    /// once there is one).
    fn wait_for(
        &self,
        end: u8,
        tag: u32,
        deadline: Option<Instant>,
        take: bool,
    ) -> Result<Local<Option<Vec<u8>>>, ObjectError> {
        let e = end & 1;
        if !self.duplex && e == 1 {
            return Err(ObjectError::Invalid(
                "this end of a one-way pipe only sends".into(),
            ));
        }
        let ring = self.ring(e);
        let look = || -> Result<Option<Option<Vec<u8>>>, ObjectError> {
            if !take {
                return Ok(ring.has_data().then_some(None));
            }
            Ok(ring.pop(tag, deadline).map_err(corrupt)?.map(Some))
        };
        loop {
            let bell = ring.bell();
            if let Some(got) = look()? {
                return Ok(Local::Done(got));
            }
            // A spill or a close is noticed after the messages committed before it: look
            // once more, then act on it.
            if ring.spilled() {
                return Ok(match look()? {
                    Some(got) => Local::Done(got),
                    None => Local::Broker,
                });
            }
            if !self.is_open(1 - e) {
                return match look()? {
                    Some(got) => Ok(Local::Done(got)),
                    // Spilled before the close: the rest is with the broker.
                    None if ring.spilled() => Ok(Local::Broker),
                    // Messages left that the mutex's wait did not reach in time.
                    None if ring.has_data() => Err(ObjectError::Timeout),
                    None => Err(ObjectError::Closed(
                        "end of file: the other end of the pipe is closed".into(),
                    )),
                };
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ObjectError::Timeout);
            }
            ring.wait_bell(bell, SPIN, deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::soon;
    use std::time::Duration;

    fn pair() -> (SharedPipe, SharedPipe) {
        let host = SharedPipe::create(true, 1 << 20, &SegmentBudget::new(4)).unwrap();
        let worker = SharedPipe::open(host.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        (host, worker)
    }

    #[test]
    fn messages_cross_both_ways_in_order() {
        let (a, b) = pair();
        for i in 0..1000u32 {
            assert_eq!(a.send(0, 1, &i.to_le_bytes()), Ok(Local::Done(())));
        }
        for i in 0..1000u32 {
            assert_eq!(
                b.recv(1, 2, soon()),
                Ok(Local::Done(i.to_le_bytes().to_vec()))
            );
        }
        b.send(1, 2, b"back").unwrap();
        assert_eq!(a.recv(0, 1, soon()), Ok(Local::Done(b"back".to_vec())));
        assert_eq!(a.recv(0, 1, soon()), Err(ObjectError::Timeout));
        assert_eq!(a.poll(0, 1, soon()), Ok(Local::Done(false)));
    }

    #[test]
    fn wrapping_messages_arrive_whole() {
        let (a, b) = pair();
        // Messages of awkward sizes, many times round the ring.
        for round in 0..2000usize {
            let msg: Vec<u8> = (0..(round * 37) % 1000)
                .map(|i| (i + round) as u8)
                .collect();
            a.send(0, 1, &msg).unwrap();
            assert_eq!(b.recv(1, 2, soon()), Ok(Local::Done(msg)));
        }
    }

    #[test]
    fn a_closed_other_end_reads_as_eof_after_what_was_sent() {
        let (a, b) = pair();
        a.send(0, 1, b"last").unwrap();
        a.set_open([false, true]);
        assert_eq!(b.poll(1, 2, soon()), Ok(Local::Done(true)));
        assert_eq!(b.recv(1, 2, None), Ok(Local::Done(b"last".to_vec())));
        assert!(matches!(b.recv(1, 2, None), Err(ObjectError::Closed(_))));
        assert!(matches!(b.send(1, 2, b"x"), Err(ObjectError::Closed(_))));
    }

    #[test]
    fn a_message_larger_than_the_ring_spills_it_after_what_is_queued() {
        let (a, b) = pair();
        a.send(0, 1, b"first").unwrap();
        assert_eq!(a.send(0, 1, &vec![0u8; RING_BYTES]), Ok(Local::Broker));
        // Writers now go to the broker; what was queued is still read here first.
        assert_eq!(a.send(0, 1, b"later"), Ok(Local::Broker));
        assert_eq!(b.recv(1, 2, soon()), Ok(Local::Done(b"first".to_vec())));
        assert_eq!(b.recv(1, 2, soon()), Ok(Local::Broker));
        // The other direction is untouched.
        assert_eq!(b.send(1, 2, b"ok"), Ok(Local::Done(())));
    }

    #[test]
    fn a_full_ring_spills_once_nobody_reads_for_a_while() {
        let (a, _b) = pair();
        let msg = vec![7u8; 1000];
        let mut sent = 0;
        while a.send(0, 1, &msg).unwrap() == Local::Done(()) {
            sent += 1;
        }
        assert_eq!(sent, RING_BYTES / 1004);
    }

    #[test]
    fn a_sleeping_receiver_wakes_for_a_message_from_another_thread() {
        let (a, b) = pair();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.send(0, 1, b"late").unwrap();
            a
        });
        assert_eq!(b.recv(1, 2, None), Ok(Local::Done(b"late".to_vec())));
        t.join().unwrap();
    }

    #[test]
    fn a_mutex_left_held_by_a_dead_process_is_freed() {
        let (a, b) = pair();
        a.send(0, 1, b"m").unwrap();
        // Process 99 took the readers' mutex of end 1's ring and died inside.
        b.seg
            .u32(RINGS + ring::HEADER + ring::READ_LOCK)
            .store(99, SeqCst);
        let waiter = std::thread::spawn(move || (b.recv(1, 2, None), b));
        std::thread::sleep(Duration::from_millis(20));
        a.release_locks_of(99);
        let (got, _b) = waiter.join().unwrap();
        assert_eq!(got, Ok(Local::Done(b"m".to_vec())));
    }

    #[test]
    fn a_mutex_word_scribbled_on_is_an_error_not_a_hang() {
        let (a, b) = pair();
        // No process 98 holds the writers' mutex of end 1's ring; someone wrote it there.
        b.seg
            .u32(RINGS + ring::HEADER + ring::WRITE_LOCK)
            .store(98, SeqCst);
        assert!(matches!(a.send(0, 1, b"x"), Err(ObjectError::Invalid(_))));
        // The other direction is untouched.
        assert_eq!(b.send(1, 2, b"y"), Ok(Local::Done(())));
    }

    #[test]
    fn one_way_pipes_refuse_the_wrong_direction() {
        let host = SharedPipe::create(false, 1 << 20, &SegmentBudget::new(4)).unwrap();
        assert!(matches!(
            host.send(0, 1, b"x"),
            Err(ObjectError::Invalid(_))
        ));
        assert!(matches!(
            host.recv(1, 1, soon()),
            Err(ObjectError::Invalid(_))
        ));
        host.send(1, 1, b"x").unwrap();
        assert_eq!(host.recv(0, 1, soon()), Ok(Local::Done(b"x".to_vec())));
    }

    #[test]
    fn oversized_messages_are_refused_by_the_limit() {
        let host = SharedPipe::create(true, 10, &SegmentBudget::new(4)).unwrap();
        assert!(matches!(
            host.send(0, 1, &[0; 11]),
            Err(ObjectError::TooLarge(_))
        ));
    }
}
