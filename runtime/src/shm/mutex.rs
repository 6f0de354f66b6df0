//! A mutex as two 32-bit words of a shared segment: the pid of the process inside (0: free)
//! and how many wait for it. Whoever frees it wakes one waiter, only if one is counted; the host
//! frees the mutex of a process that died inside ([`Mutex::release_if_held_by`]).
//!
//! Two uses: the short mutexes of rings and dicts, held only to copy a few bytes, so a wait
//! longer than [`LOCK_WAIT`] means a process scribbled on the word ([`Mutex::lock`]); and the
//! `Lock` shared object itself, held as long as its owner likes ([`Mutex::acquire`]).

use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use std::time::{Duration, Instant};

use super::futex;
use super::segment::Segment;

/// The longest anyone waits for a short mutex when nothing else limits the wait: its
/// holders only copy a few bytes inside, so a mutex held longer is a word a process that
/// shares the segment scribbled on (or a holder stopped by a signal), not work in progress.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(1);

/// The mutex whose words are at `offset` and `offset + 4` of a segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mutex<'a> {
    word: &'a AtomicU32,
    waiters: &'a AtomicU32,
}

/// A short mutex, held; freed when dropped.
#[derive(Debug)]
pub(crate) struct Held<'a>(Mutex<'a>);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl<'a> Mutex<'a> {
    pub fn at(seg: &'a Segment, offset: usize) -> Self {
        Mutex {
            word: seg.u32(offset),
            waiters: seg.u32(offset + 4),
        }
    }

    fn try_take(&self, tag: u32) -> bool {
        self.word.compare_exchange(0, tag, Acquire, Relaxed).is_ok()
    }

    /// Takes the mutex as process `tag`, spinning about `spin` before it sleeps; `false` if
    /// `deadline` passes first (the clock is read only once the mutex is found taken).
    pub fn acquire(&self, tag: u32, spin: Duration, deadline: Option<Instant>) -> bool {
        for _ in 0..100 {
            if self.try_take(tag) {
                return true;
            }
            std::hint::spin_loop();
        }
        if !spin.is_zero() {
            let start = Instant::now();
            let until = deadline.map_or(start + spin, |d| d.min(start + spin));
            loop {
                for _ in 0..64 {
                    // Read before trying, so a spinner does not take the line from the holder.
                    if self.word.load(Relaxed) == 0 && self.try_take(tag) {
                        return true;
                    }
                    std::hint::spin_loop();
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
        loop {
            if self.try_take(tag) {
                return true;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) => Some(left),
                    None => return false,
                },
                None => None,
            };
            self.waiters.fetch_add(1, SeqCst);
            let holder = self.word.load(SeqCst);
            if holder != 0 {
                futex::wait(self.word, holder, left);
            }
            self.waiters.fetch_sub(1, SeqCst);
        }
    }

    /// Takes the short mutex as process `tag`; `None` if `deadline` passes first, or
    /// [`LOCK_WAIT`].
    pub fn lock(&self, tag: u32, deadline: Option<Instant>) -> Option<Held<'a>> {
        if self.try_take(tag) {
            return Some(Held(*self));
        }
        let longest = Instant::now() + LOCK_WAIT;
        let until = deadline.map_or(longest, |d| d.min(longest));
        self.acquire(tag, Duration::ZERO, Some(until))
            .then_some(Held(*self))
    }

    /// Frees the mutex, whoever holds it; answers who did (0: nobody).
    pub fn release(&self) -> u32 {
        let was = self.word.swap(0, SeqCst);
        if self.waiters.load(SeqCst) > 0 {
            futex::wake_one(self.word);
        }
        was
    }

    /// Frees the mutex if process `tag` (dead) holds it, and wakes whoever waits for it;
    /// answers whether it did.
    pub fn release_if_held_by(&self, tag: u32) -> bool {
        let freed = self.word.compare_exchange(tag, 0, SeqCst, Relaxed).is_ok();
        if freed {
            futex::wake_all(self.word);
        }
        freed
    }

    /// Takes the mutex over from process `from` (dead) as `to`, to repair what `from` left
    /// halfway; answers whether `from` held it.
    pub fn take_over(&self, from: u32, to: u32) -> bool {
        self.word
            .compare_exchange(from, to, SeqCst, Relaxed)
            .is_ok()
    }

    /// Whether anyone holds the mutex (a snapshot).
    pub fn is_held(&self) -> bool {
        self.word.load(SeqCst) != 0
    }
}
