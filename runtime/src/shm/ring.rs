//! A ring of messages in shared memory, for any number of writers and readers in any
//! processes.
//!
//! Each message is a 4-byte little-endian length and its bytes, written at the ring's tail
//! (wrapping at its end). A writer copies the whole message first and then moves the tail in
//! one store, so a message is either all there or not there at all, even if its writer dies
//! halfway; a reader moves the head past a message only once it has copied it. Two short
//! mutexes in the ring's header, one among the writers and one among the readers, order
//! each side: a mutex's word holds the pid of the process inside (the host clears it if that
//! process dies there). Each mutex, and each of the tail and the head, has a cache line of
//! its own, so a reader looking at the tail does not take the writers' mutex's line from a
//! writer (nor the other way round); and a writer remembers the head it last read, reading
//! it again only when that leaves too little room.
//!
//! Readers sleep on the `bell`, a counter every commit (and every change a reader must
//! notice: a spill, an end closing) increments; writers waiting for room sleep on `room`,
//! which every read increments. A futex wake is only made when someone sleeps.
//!
//! Once a ring is *spilled* (a message did not fit), nobody writes to it again: writers go
//! through the host's broker instead, and readers read what is left here before asking the
//! broker. So a ring that a reader has seen empty after a spill stays empty.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use super::mutex::{Held, Mutex};
use super::segment::Segment;
use super::{ROOM_WAIT, SPIN, futex};

/// Bytes of a ring's header in the segment.
pub(crate) const HEADER: usize = 448;

// Offsets in a ring's header: one cache line for what only writers touch, one for what
// only readers touch, and one for each of the tail and the head, which the other side reads
// on every message, so that a writer and a reader in two processes do not take turns at
// one line more than they must.
const MODE: usize = 0;
const CLOSED: usize = 4;
/// The writers' mutex, how many messages were ever written, and the writers' own copy of
/// the tail (stored just before the tail), which they read instead of the tail's line.
pub(crate) const WRITE_LOCK: usize = 64;
const PUSHED: usize = 72;
const WRITE_TAIL: usize = 80;
const TAIL: usize = 128;
/// The readers' mutex, and how many messages were ever read.
pub(crate) const READ_LOCK: usize = 192;
const POPPED: usize = 200;
const HEAD: usize = 256;
const BELL: usize = 320;
const SLEEPERS: usize = 324;
const ROOM: usize = 384;
const ROOM_SLEEPERS: usize = 388;

const SPILLED: u32 = 1;

/// The ring's contents contradict themselves: a process that shares it wrote nonsense.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    Pushed,
    /// No room for it now.
    Full,
    /// The ring is spilled: the message goes through the broker.
    Spilled,
    /// The ring is closed: nothing more may be written.
    Closed,
}

/// One ring of a segment: its header at `header`, its `cap` bytes of data (a power of two) at
/// `data`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring<'a> {
    seg: &'a Segment,
    header: usize,
    data: usize,
    cap: usize,
    /// The head as this process's writers last read it (in this process's own memory): the
    /// head only moves forward, so room counted from it is never more than there is.
    head_seen: &'a AtomicU64,
}

impl<'a> Ring<'a> {
    pub fn new(
        seg: &'a Segment,
        header: usize,
        data: usize,
        cap: usize,
        head_seen: &'a AtomicU64,
    ) -> Self {
        debug_assert!(cap.is_power_of_two());
        Ring {
            seg,
            header,
            data,
            cap,
            head_seen,
        }
    }

    fn word(&self, offset: usize) -> &'a std::sync::atomic::AtomicU32 {
        self.seg.u32(self.header + offset)
    }

    fn pos(&self, offset: usize) -> &'a std::sync::atomic::AtomicU64 {
        self.seg.u64(self.header + offset)
    }

    /// Takes the mutex at `which` as process `tag`; `None` if `deadline` passes first, or
    /// [`LOCK_WAIT`](super::mutex::LOCK_WAIT).
    fn lock(&self, which: usize, tag: u32, deadline: Option<Instant>) -> Option<Held<'a>> {
        Mutex::at(self.seg, self.header + which).lock(tag, deadline)
    }

    /// Clears the mutexes process `tag` (dead) held, and wakes whoever waits for them.
    pub fn release_if_held_by(&self, tag: u32) {
        let writers = Mutex::at(self.seg, self.header + WRITE_LOCK);
        // Still marked as the dead writer's (nobody else can enter), publish the whole
        // message it may have left between its two stores of the tail, then free it.
        if writers.take_over(tag, tag) {
            let tail = self.pos(WRITE_TAIL).load(Relaxed);
            if self.pos(TAIL).swap(tail, SeqCst) != tail {
                self.ring_bell();
            }
            writers.release();
        }
        Mutex::at(self.seg, self.header + READ_LOCK).release_if_held_by(tag);
    }

    /// Whether a message is waiting (a hint: another reader may take it first).
    pub fn has_data(&self) -> bool {
        self.pos(TAIL).load(SeqCst) != self.pos(HEAD).load(SeqCst)
    }

    /// Whether `need` bytes fit now (a hint: another writer may take the room first).
    fn has_room(&self, need: usize) -> bool {
        let used = self
            .pos(WRITE_TAIL)
            .load(SeqCst)
            .wrapping_sub(self.pos(HEAD).load(SeqCst));
        usize::try_from(used).is_ok_and(|used| used <= self.cap && self.cap - used >= need)
    }

    pub fn spilled(&self) -> bool {
        self.word(MODE).load(Acquire) == SPILLED
    }

    /// From now on writers go through the broker, as process `tag`: under the writers'
    /// mutex, so every push either committed before it or sees it (and a reader that finds
    /// the ring spilled and then empty finds it empty for good). Readers are woken to notice.
    pub fn spill(&self, tag: u32) {
        let held = self.lock(WRITE_LOCK, tag, None);
        self.word(MODE).store(SPILLED, SeqCst);
        drop(held);
        self.ring_bell();
    }

    /// Closes the ring to writers, as process `tag`: a push either committed before it or
    /// is refused. (The mutex is awaited until `deadline` at most; past it, a process stuck
    /// inside gets no say.) Readers are woken to notice.
    pub fn close(&self, tag: u32, deadline: Instant) {
        let held = self.lock(WRITE_LOCK, tag, Some(deadline));
        self.word(CLOSED).store(1, SeqCst);
        drop(held);
        self.ring_bell();
    }

    pub fn closed(&self) -> bool {
        self.word(CLOSED).load(Acquire) != 0
    }

    /// How many messages the ring holds (a snapshot).
    pub fn len(&self) -> u64 {
        let pushed = self.pos(PUSHED).load(Relaxed);
        pushed.saturating_sub(self.pos(POPPED).load(Relaxed))
    }

    /// The bell's count, read before checking what a reader waits for.
    pub fn bell(&self) -> u32 {
        self.word(BELL).load(SeqCst)
    }

    /// Wakes the readers: something they wait for (besides a message, which they look for
    /// themselves) changed.
    pub fn ring_bell(&self) {
        self.word(BELL).fetch_add(1, SeqCst);
        if self.word(SLEEPERS).load(SeqCst) > 0 {
            futex::wake_all(self.word(BELL));
        }
    }

    /// Waits until a message arrives or the bell rings past `seen` (spinning `spin` first),
    /// or `deadline`.
    pub fn wait_bell(&self, seen: u32, spin: Duration, deadline: Option<Instant>) {
        wait_on(
            self.word(BELL),
            self.word(SLEEPERS),
            seen,
            || self.has_data(),
            spin,
            deadline,
        );
    }

    /// Wakes the sleepers counted in `sleepers` on `counter`, if any. Whoever commits a
    /// change checks after it, and a sleeper counts itself before it looks again: so either
    /// the sleeper sees the change, or the committer sees the sleeper (all `SeqCst`).
    fn wake_sleepers(&self, counter: usize, sleepers: usize) {
        if self.word(sleepers).load(SeqCst) > 0 {
            self.word(counter).fetch_add(1, SeqCst);
            futex::wake_all(self.word(counter));
        }
    }

    /// Writes one message as process `tag`.
    fn push(&self, tag: u32, msg: &[u8]) -> Result<Push, Corrupt> {
        let need = msg.len() + 4;
        if need > self.cap {
            return Ok(Push::Full);
        }
        let Some(held) = self.lock(WRITE_LOCK, tag, None) else {
            return Err(Corrupt);
        };
        if self.spilled() {
            return Ok(Push::Spilled);
        }
        if self.closed() {
            return Ok(Push::Closed);
        }
        // A writer that died between the two stores leaves a whole message in the ring
        // that the next commit publishes with its own.
        let tail = self.pos(WRITE_TAIL).load(Relaxed);
        let free = |head: u64| {
            usize::try_from(tail.wrapping_sub(head))
                .ok()
                .filter(|&used| used <= self.cap)
                .map(|used| self.cap - used)
        };
        if free(self.head_seen.load(Relaxed)).is_none_or(|free| free < need) {
            let head = self.pos(HEAD).load(SeqCst);
            self.head_seen.store(head, Relaxed);
            if free(head).ok_or(Corrupt)? < need {
                return Ok(Push::Full);
            }
        }
        let len = u32::try_from(msg.len()).map_err(|_| Corrupt)?;
        self.copy_in(tail, &len.to_le_bytes());
        self.copy_in(tail.wrapping_add(4), msg);
        let tail = tail.wrapping_add(need as u64);
        self.pos(WRITE_TAIL).store(tail, Relaxed);
        self.pos(TAIL).store(tail, SeqCst);
        let pushed = self.pos(PUSHED);
        pushed.store(pushed.load(Relaxed).wrapping_add(1), Relaxed);
        drop(held);
        self.wake_sleepers(BELL, SLEEPERS);
        Ok(Push::Pushed)
    }

    /// Takes the oldest message, if any, as process `tag`; `None` also when `deadline`
    /// passes waiting for the mutex (callers that then find messages waiting have timed out).
    pub fn pop(&self, tag: u32, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, Corrupt> {
        if !self.has_data() {
            return Ok(None);
        }
        let Some(held) = self.lock(READ_LOCK, tag, deadline) else {
            return match deadline {
                Some(d) if Instant::now() >= d => Ok(None),
                _ => Err(Corrupt),
            };
        };
        let (head, tail) = (self.pos(HEAD).load(Relaxed), self.pos(TAIL).load(SeqCst));
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
            .store(head.wrapping_add(4 + len as u64), SeqCst);
        let popped = self.pos(POPPED);
        popped.store(popped.load(Relaxed).wrapping_add(1), Relaxed);
        drop(held);
        self.wake_sleepers(ROOM, ROOM_SLEEPERS);
        Ok(Some(msg))
    }

    /// Writes one message as process `tag`, waiting up to [`ROOM_WAIT`] for room in a
    /// full ring; if none comes (or the message is larger than the ring), spills the ring
    /// and answers `Spilled`. Never answers `Full`.
    pub fn push_or_spill(&self, tag: u32, msg: &[u8]) -> Result<Push, Corrupt> {
        let need = msg.len() + 4;
        let mut give_up = None;
        loop {
            let room = self.word(ROOM).load(SeqCst);
            match self.push(tag, msg)? {
                Push::Full => {
                    let now = Instant::now();
                    let until = *give_up.get_or_insert(now + ROOM_WAIT);
                    if need > self.cap || now >= until {
                        self.spill(tag);
                        return Ok(Push::Spilled);
                    }
                    self.wait_room(room, need, SPIN, until);
                }
                done => return Ok(done),
            }
        }
    }

    /// Waits until `need` bytes fit, or the room counter moves past `seen` (spinning
    /// `spin` first), or `deadline`.
    fn wait_room(&self, seen: u32, need: usize, spin: Duration, deadline: Instant) {
        wait_on(
            self.word(ROOM),
            self.word(ROOM_SLEEPERS),
            seen,
            || self.has_room(need),
            spin,
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

/// Waits until `ready()` or `counter` moves past `seen`: spins for `spin`, then sleeps
/// (counted in `sleepers`, so that whoever makes it ready knows to wake it) until
/// `deadline`.
fn wait_on(
    counter: &std::sync::atomic::AtomicU32,
    sleepers: &std::sync::atomic::AtomicU32,
    seen: u32,
    ready: impl Fn() -> bool,
    spin: Duration,
    deadline: Option<Instant>,
) {
    let done = || ready() || counter.load(SeqCst) != seen;
    if !spin.is_zero() {
        let start = Instant::now();
        let mut n = 0u32;
        while !done() {
            std::hint::spin_loop();
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() >= spin {
                break;
            }
        }
    }
    if done() {
        return;
    }
    let left = match deadline {
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) => Some(left),
            None => return,
        },
        None => None,
    };
    sleepers.fetch_add(1, SeqCst);
    if !done() {
        futex::wait(counter, seen, left);
    }
    sleepers.fetch_sub(1, SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_dead_between_its_two_tail_stores_has_its_message_published() {
        let seg =
            Segment::create(c"test", 4096 + 4096, &super::super::SegmentBudget::new(4)).unwrap();
        let seen = AtomicU64::new(0);
        let ring = Ring::new(&seg, 0, 4096, 4096, &seen);
        assert_eq!(ring.push(1, b"first"), Ok(Push::Pushed));
        // Process 7 copies a whole message and stores the writers' tail, then dies before
        // publishing it.
        let writers = Mutex::at(&seg, WRITE_LOCK);
        assert!(writers.acquire(7, Duration::ZERO, None));
        let tail = ring.pos(WRITE_TAIL).load(Relaxed);
        ring.copy_in(tail, &6u32.to_le_bytes());
        ring.copy_in(tail + 4, b"second");
        ring.pos(WRITE_TAIL).store(tail + 10, Relaxed);
        assert_eq!(ring.pop(1, None), Ok(Some(b"first".to_vec())));
        assert_eq!(ring.pop(1, None), Ok(None), "not published yet");
        ring.release_if_held_by(7);
        assert_eq!(ring.pop(1, None), Ok(Some(b"second".to_vec())));
        assert_eq!(ring.push(1, b"third"), Ok(Push::Pushed));
        assert_eq!(ring.pop(1, None), Ok(Some(b"third".to_vec())));
    }
}
