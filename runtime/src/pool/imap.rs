//! `imap` / `imap_unordered`: lazy iteration with bounded memory.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::job::{Job, Slot};
use super::sched::Chunk;
use super::{Pool, decode_slot};
use crate::error::Result;
use crate::packed::Packed;
use crate::protocol::Outcome;

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`]: one `Result` per
/// item. Items are drawn from the input only while fewer than a few chunks per worker are
/// in flight or waiting to be read, so memory stays bounded whatever the input's length
/// and however slowly results are consumed.
pub struct Imap<'a, R> {
    pool: &'a Pool,
    job: Arc<Job>,
    input: Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a>,
    chunksize: usize,
    window: usize,
    ordered: bool,
    exhausted: bool,
    submitted: usize,
    consumed: usize,
    _r: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Imap<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("task", &self.job.task)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

impl<'a, R> Imap<'a, R> {
    pub(crate) fn new(
        pool: &'a Pool,
        job: Arc<Job>,
        input: Box<dyn Iterator<Item = Result<Vec<u8>>> + 'a>,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        let chunksize = chunksize.max(1);
        let window = chunksize * pool.processes() * 8;
        Imap {
            pool,
            job,
            input,
            chunksize,
            window,
            ordered,
            exhausted: false,
            submitted: 0,
            consumed: 0,
            _r: PhantomData,
        }
    }

    /// Draws items from the input until the window is full; an item that cannot be encoded
    /// becomes a bad-arguments result in its place.
    fn top_up(&mut self) {
        while !self.exhausted && self.submitted - self.consumed < self.window {
            let mut items = Vec::with_capacity(self.chunksize);
            let mut bad = Vec::new();
            for item in self.input.by_ref().take(self.chunksize) {
                match item {
                    Ok(bytes) => items.push(bytes),
                    Err(e) => bad.push((items.len() + bad.len(), e.to_string())),
                }
            }
            let n = items.len() + bad.len();
            if n == 0 {
                self.exhausted = true;
                break;
            }
            let first = self.job.grow(n);
            self.submitted += n;
            if bad.is_empty() {
                if let Err(e) = self.pool.shared.submit([Chunk::new(
                    self.job.clone(),
                    first,
                    items.into_iter().collect(),
                    false,
                )]) {
                    for i in 0..n {
                        self.job.complete(first + i, Slot::Aborted(e.to_string()));
                    }
                }
                continue;
            }
            // Rare: keep positions by sending the good items one by one.
            let mut good = items.into_iter();
            for i in 0..n {
                match bad.iter().find(|(at, _)| *at == i) {
                    Some((_, message)) => {
                        self.job
                            .complete(first + i, Slot::Done(Outcome::BadArgs(message.clone())));
                    }
                    None => {
                        let Some(bytes) = good.next() else { break };
                        let chunk =
                            Chunk::new(self.job.clone(), first + i, Packed::one(&bytes), false);
                        if let Err(e) = self.pool.shared.submit([chunk]) {
                            self.job.complete(first + i, Slot::Aborted(e.to_string()));
                        }
                    }
                }
            }
        }
    }
}

impl<R> Imap<'_, R> {
    /// The fuel the items finished so far used together, in a pool built with a fuel limit.
    pub fn fuel_used(&self) -> Option<u64> {
        self.job.fuel_used()
    }

    fn next_slot(&mut self) -> Option<(usize, Slot)> {
        self.top_up();
        if self.consumed == self.submitted {
            return None;
        }
        let (index, slot) = if self.ordered {
            let index = self.consumed;
            (index, self.job.take(index))
        } else {
            self.job.take_next_arrival()?
        };
        self.consumed += 1;
        Some((index, slot))
    }

    /// The next result as raw MessagePack, with the index of its item.
    pub fn next_indexed_bytes(&mut self) -> Option<(usize, Result<Vec<u8>>)> {
        self.next_slot()
            .map(|(i, slot)| (i, slot.into_bytes(&self.job.task, &self.job.module)))
    }
}

impl<R: DeserializeOwned> Imap<'_, R> {
    /// The next result with the index of its item (in input order for `imap`, in completion
    /// order for `imap_unordered`).
    pub fn next_indexed(&mut self) -> Option<(usize, Result<R>)> {
        self.next_slot()
            .map(|(i, slot)| (i, decode_slot(&self.job, slot)))
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_indexed().map(|(_, r)| r)
    }
}
