//! A ring of messages in shared memory, for any number of writers and readers in any
//! processes.
//!
//! Each message is a 4-byte little-endian length and its bytes, written at the ring's tail
//! (wrapping at its end). A writer copies the whole message first and then moves the tail in
//! one store, so a message is either all there or not there at all, even if its writer dies
//! halfway; a reader moves the head past a message only once it has copied it. A short
//! mutex in the ring's header orders the writers and the readers: its word holds the pid of
//! the process inside (the host clears it if that process dies there).
//!
//! Readers sleep on the `bell`, a counter every commit (and every change a reader must
//! notice: a spill, an end closing) increments; writers waiting for room sleep on `room`,
//! which every read increments. A futex wake is only made when someone sleeps.
//!
//! Once a ring is *spilled* (a message did not fit), nobody writes to it again: writers go
//! through the host's broker instead, and readers read what is left here before asking the
//! broker. So a ring that a reader has seen empty after a spill stays empty.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use super::futex;
use super::segment::Segment;

/// Bytes of a ring's header in the segment.
pub(crate) const HEADER: usize = 128;

// Offsets in a ring's header.
const LOCK: usize = 0;
const LOCK_WAITERS: usize = 4;
const BELL: usize = 8;
const SLEEPERS: usize = 12;
const MODE: usize = 16;
const ROOM: usize = 20;
const ROOM_SLEEPERS: usize = 24;
const HEAD: usize = 64;
const TAIL: usize = 72;

const SPILLED: u32 = 1;

/// The ring's contents contradict themselves: a process that shares it wrote nonsense.
#[derive(Debug)]
pub(crate) struct Corrupt;

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Pushed,
    /// No room for it now.
    Full,
    /// The ring is spilled: the message goes through the broker.
    Spilled,
}

/// One ring of a segment: its header at `header`, its `cap` bytes of data (a power of two) at
/// `data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring<'a> {
    seg: &'a Segment,
    header: usize,
    data: usize,
    cap: usize,
}

/// The ring's mutex, held.
struct Held<'r, 'a>(&'r Ring<'a>);

impl Drop for Held<'_, '_> {
    fn drop(&mut self) {
        let ring = self.0;
        ring.seg.u32(ring.header + LOCK).store(0, SeqCst);
        if ring.seg.u32(ring.header + LOCK_WAITERS).load(SeqCst) > 0 {
            futex::wake_one(ring.seg.u32(ring.header + LOCK));
        }
    }
}

impl<'a> Ring<'a> {
    pub fn new(seg: &'a Segment, header: usize, data: usize, cap: usize) -> Self {
        debug_assert!(cap.is_power_of_two());
        Ring {
            seg,
            header,
            data,
            cap,
        }
    }

    fn word(&self, offset: usize) -> &'a std::sync::atomic::AtomicU32 {
        self.seg.u32(self.header + offset)
    }

    fn pos(&self, offset: usize) -> &'a std::sync::atomic::AtomicU64 {
        self.seg.u64(self.header + offset)
    }

    /// Takes the ring's mutex as process `tag`; `None` if `deadline` passes first.
    fn lock(&self, tag: u32, deadline: Option<Instant>) -> Option<Held<'_, 'a>> {
        let lock = self.word(LOCK);
        for _ in 0..100 {
            if lock.compare_exchange(0, tag, Acquire, Relaxed).is_ok() {
                return Some(Held(self));
            }
            std::hint::spin_loop();
        }
        let waiters = self.word(LOCK_WAITERS);
        loop {
            if lock.compare_exchange(0, tag, Acquire, Relaxed).is_ok() {
                return Some(Held(self));
            }
            let left = match deadline {
                Some(d) => Some(d.checked_duration_since(Instant::now())?),
                None => None,
            };
            waiters.fetch_add(1, SeqCst);
            let holder = lock.load(SeqCst);
            if holder != 0 {
                futex::wait(lock, holder, left);
            }
            waiters.fetch_sub(1, SeqCst);
        }
    }

    /// Clears the mutex if process `tag` (dead) held it, and wakes whoever waits for it.
    pub fn release_if_held_by(&self, tag: u32) {
        let lock = self.word(LOCK);
        if lock.compare_exchange(tag, 0, SeqCst, Relaxed).is_ok() {
            futex::wake_all(lock);
        }
    }

    /// Whether a message is waiting (a hint: another reader may take it first).
    pub fn has_data(&self) -> bool {
        self.pos(TAIL).load(Acquire) != self.pos(HEAD).load(Acquire)
    }

    pub fn spilled(&self) -> bool {
        self.word(MODE).load(Acquire) == SPILLED
    }

    /// From now on writers go through the broker; readers are woken to notice.
    pub fn spill(&self) {
        self.word(MODE).store(SPILLED, SeqCst);
        self.ring_bell();
    }

    /// The bell's count, read before checking what a reader waits for.
    pub fn bell(&self) -> u32 {
        self.word(BELL).load(SeqCst)
    }

    /// Wakes the readers: something they wait for may have changed.
    pub fn ring_bell(&self) {
        self.word(BELL).fetch_add(1, SeqCst);
        if self.word(SLEEPERS).load(SeqCst) > 0 {
            futex::wake_all(self.word(BELL));
        }
    }

    /// Waits until the bell rings past `seen` (spinning `spin` first), or `deadline`.
    pub fn wait_bell(&self, seen: u32, spin: Duration, deadline: Option<Instant>) {
        wait_on(self.word(BELL), self.word(SLEEPERS), seen, spin, deadline);
    }

    /// Writes one message as process `tag`.
    pub fn push(&self, tag: u32, msg: &[u8]) -> Result<Push, Corrupt> {
        let need = msg.len() + 4;
        if need > self.cap {
            return Ok(Push::Full);
        }
        let Some(held) = self.lock(tag, None) else {
            return Ok(Push::Full);
        };
        if self.spilled() {
            return Ok(Push::Spilled);
        }
        let (head, tail) = (self.pos(HEAD).load(Relaxed), self.pos(TAIL).load(Relaxed));
        let used = usize::try_from(tail.wrapping_sub(head)).map_err(|_| Corrupt)?;
        if used > self.cap {
            return Err(Corrupt);
        }
        if self.cap - used < need {
            return Ok(Push::Full);
        }
        let len = u32::try_from(msg.len()).map_err(|_| Corrupt)?;
        self.copy_in(tail, &len.to_le_bytes());
        self.copy_in(tail.wrapping_add(4), msg);
        self.pos(TAIL)
            .store(tail.wrapping_add(need as u64), Release);
        drop(held);
        self.ring_bell();
        Ok(Push::Pushed)
    }

    /// Takes the oldest message, if any, as process `tag`; `None` also when `deadline`
    /// passes waiting for the mutex.
    pub fn pop(&self, tag: u32, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, Corrupt> {
        if !self.has_data() {
            return Ok(None);
        }
        let Some(held) = self.lock(tag, deadline) else {
            return Ok(None);
        };
        let (head, tail) = (self.pos(HEAD).load(Relaxed), self.pos(TAIL).load(Acquire));
        let used = usize::try_from(tail.wrapping_sub(head)).map_err(|_| Corrupt)?;
        if used == 0 {
            return Ok(None);
        }
        if used > self.cap || used < 4 {
            return Err(Corrupt);
        }
        let mut len = [0u8; 4];
        self.copy_out(head, &mut len);
        let len = u32::from_le_bytes(len) as usize;
        if len > used - 4 {
            return Err(Corrupt);
        }
        let mut msg = vec![0u8; len];
        self.copy_out(head.wrapping_add(4), &mut msg);
        self.pos(HEAD)
            .store(head.wrapping_add(4 + len as u64), Release);
        drop(held);
        self.word(ROOM).fetch_add(1, SeqCst);
        if self.word(ROOM_SLEEPERS).load(SeqCst) > 0 {
            futex::wake_all(self.word(ROOM));
        }
        Ok(Some(msg))
    }

    /// The room counter, read before finding the ring full.
    pub fn room(&self) -> u32 {
        self.word(ROOM).load(SeqCst)
    }

    /// Waits until a reader takes a message after `seen`, or `deadline`.
    pub fn wait_room(&self, seen: u32, deadline: Instant) {
        wait_on(
            self.word(ROOM),
            self.word(ROOM_SLEEPERS),
            seen,
            Duration::ZERO,
            Some(deadline),
        );
    }

    fn copy_in(&self, pos: u64, bytes: &[u8]) {
        let at = (pos as usize) & (self.cap - 1);
        let first = bytes.len().min(self.cap - at);
        self.seg.write(self.data + at, &bytes[..first]);
        self.seg.write(self.data, &bytes[first..]);
    }

    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let at = (pos as usize) & (self.cap - 1);
        let first = out.len().min(self.cap - at);
        let (a, b) = out.split_at_mut(first);
        self.seg.read(self.data + at, a);
        self.seg.read(self.data, b);
    }
}

/// Waits until `counter` moves past `seen`: spins for `spin`, then sleeps (counted in
/// `sleepers`, so that whoever moves it knows to wake) until `deadline`.
fn wait_on(
    counter: &std::sync::atomic::AtomicU32,
    sleepers: &std::sync::atomic::AtomicU32,
    seen: u32,
    spin: Duration,
    deadline: Option<Instant>,
) {
    if !spin.is_zero() {
        let start = Instant::now();
        let mut n = 0u32;
        while counter.load(Acquire) == seen {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() >= spin {
                break;
            }
        }
        if counter.load(Acquire) != seen {
            return;
        }
    }
    let left = match deadline {
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) => Some(left),
            None => return,
        },
        None => None,
    };
    sleepers.fetch_add(1, SeqCst);
    if counter.load(SeqCst) == seen {
        futex::wait(counter, seen, left);
    }
    sleepers.fetch_sub(1, SeqCst);
}
