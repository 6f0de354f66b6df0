//! The outcomes of a job's items, kept as segments: runs of consecutive items in the same
//! state. A `map` of 200k items answered in 8 batches is a handful of segments, not 200k
//! entries, so recording a batch, and setting up and dropping the job, cost the same
//! whatever the batch's size.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;

use super::job::Slot;
use crate::packed::Packed;
use crate::protocol::Outcome;

/// The state shared by every item of a segment.
#[derive(Debug, Clone)]
enum State {
    Pending,
    /// Successes: the segment's `k`-th item is item `first + k` of batch `batch`'s results.
    Ok {
        batch: u64,
        first: u32,
    },
    /// Every item of the segment ended this way.
    Done(Box<Slot>),
    /// Already handed to an iterator.
    Taken,
}

impl State {
    /// The state of the part of a segment that starts `offset` items into it.
    fn skip(&self, offset: usize) -> State {
        match self {
            State::Ok { batch, first } => State::Ok {
                batch: *batch,
                first: first.saturating_add(u32::try_from(offset).unwrap_or(u32::MAX)),
            },
            other => other.clone(),
        }
    }
}

#[derive(Debug)]
struct Segment {
    end: usize,
    state: State,
}

/// The results of one batch, shared by its successful items.
#[derive(Debug)]
struct Batch {
    results: Arc<Packed>,
    /// Its items not yet taken; the buffer is freed when none is left.
    live: usize,
}

/// One item, as a reader sees it.
#[derive(Debug)]
pub(crate) enum Item<'a> {
    Pending,
    /// A success: item `index` of `results`, followed in the same buffer by the next `more`
    /// items of the job, which succeeded too.
    Ok {
        results: &'a Arc<Packed>,
        index: usize,
        more: usize,
    },
    Done(&'a Slot),
    Taken,
}

/// The outcomes of items `base..len` of a job; items before `base` were taken and are
/// forgotten, so an endless `imap` keeps only a window of them.
#[derive(Debug)]
pub(crate) struct Items {
    base: usize,
    len: usize,
    /// Keyed by their first item; they cover `base..len` without gaps.
    segments: BTreeMap<usize, Segment>,
    /// Batch `batches_base + i` is `batches[i]`; those whose items were all taken are
    /// freed, and forgotten once at the front.
    batches: VecDeque<Batch>,
    batches_base: u64,
}

impl Items {
    /// `n` pending items.
    pub fn new(n: usize) -> Items {
        let mut items = Items {
            base: 0,
            len: 0,
            segments: BTreeMap::new(),
            batches: VecDeque::new(),
            batches_base: 0,
        };
        items.grow(n);
        items
    }

    /// How many items the job has (taken ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds `n` pending items; returns the first new index.
    pub fn grow(&mut self, n: usize) -> usize {
        let first = self.len;
        if n == 0 {
            return first;
        }
        self.len += n;
        match self.segments.iter_mut().next_back() {
            Some((_, last)) if matches!(last.state, State::Pending) => last.end = self.len,
            _ => {
                self.segments.insert(
                    first,
                    Segment {
                        end: self.len,
                        state: State::Pending,
                    },
                );
            }
        }
        first
    }

    /// Forgets the items from `len` on.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let len = len.max(self.base);
        self.split_at(len);
        let _ = self.segments.split_off(&len);
        self.len = len;
    }

    /// Item `index`.
    pub fn get(&self, index: usize) -> Option<Item<'_>> {
        if index < self.base {
            return Some(Item::Taken);
        }
        let (&start, seg) = self.segments.range(..=index).next_back()?;
        if index >= seg.end {
            return None;
        }
        Some(match &seg.state {
            State::Pending => Item::Pending,
            State::Ok { batch, first } => match self.batch(*batch) {
                Some(b) => Item::Ok {
                    results: &b.results,
                    index: *first as usize + (index - start),
                    more: seg.end - index - 1,
                },
                None => Item::Taken,
            },
            State::Done(slot) => Item::Done(slot),
            State::Taken => Item::Taken,
        })
    }

    /// A copy of item `index`'s outcome.
    pub fn slot(&self, index: usize) -> Slot {
        match self.get(index) {
            None => Slot::Aborted("no such item".into()),
            Some(Item::Pending) => Slot::Pending,
            Some(Item::Ok { results, index, .. }) => {
                Slot::Done(Outcome::Ok(results.get(index).unwrap_or_default().to_vec()))
            }
            Some(Item::Done(slot)) => slot.clone(),
            Some(Item::Taken) => Slot::Taken,
        }
    }

    /// Gives every still pending item of `range` the outcome `slot`; calls `recorded` with
    /// each run of items that took it, in order.
    pub fn record(&mut self, range: Range<usize>, slot: Slot, recorded: impl FnMut(Range<usize>)) {
        let state = State::Done(Box::new(slot));
        self.fill(range, |_| state.clone(), recorded);
    }

    /// Adds a batch's results; its items are recorded with [`record_ok`](Items::record_ok).
    /// Returns the batch's number.
    pub fn add_batch(&mut self, results: Packed) -> u64 {
        self.batches.push_back(Batch {
            results: Arc::new(results),
            live: 0,
        });
        self.batches_base + self.batches.len() as u64 - 1
    }

    /// Records the still pending items of `range` as successes whose results are items
    /// `first..` of batch `batch`; calls `recorded` with each run of items that took them.
    pub fn record_ok(
        &mut self,
        range: Range<usize>,
        batch: u64,
        first: usize,
        mut recorded: impl FnMut(Range<usize>),
    ) {
        let start = range.start;
        let mut live = 0;
        let state = State::Ok {
            batch,
            first: u32::try_from(first).unwrap_or(u32::MAX),
        };
        self.fill(
            range,
            |at| state.skip(at - start),
            |r| {
                live += r.len();
                recorded(r);
            },
        );
        if let Some(b) = self.batch_mut(batch) {
            b.live += live;
        }
    }

    /// Forgets the last batch added if none of its items took its results.
    pub fn drop_unused_batch(&mut self) {
        if self.batches.back().is_some_and(|b| b.live == 0) {
            self.batches.pop_back();
        }
    }

    /// Takes item `index`'s outcome, if it is finished, leaving it taken; forgets the taken
    /// items at the front of the window and the results no item needs any more.
    pub fn take(&mut self, index: usize) -> Option<Slot> {
        let slot = match self.get(index)? {
            Item::Pending => return None,
            Item::Taken => return Some(Slot::Taken),
            _ => self.slot(index),
        };
        self.split_at(index);
        self.split_at(index + 1);
        if let Some(seg) = self.segments.get_mut(&index) {
            let was = std::mem::replace(&mut seg.state, State::Taken);
            if let State::Ok { batch, .. } = was
                && let Some(b) = self.batch_mut(batch)
            {
                b.live = b.live.saturating_sub(1);
                if b.live == 0 {
                    b.results = Arc::default();
                }
            }
        }
        self.merge_taken(index);
        while let Some(entry) = self.segments.first_entry() {
            if !matches!(entry.get().state, State::Taken) {
                break;
            }
            self.base = entry.remove().end;
        }
        while self.batches.front().is_some_and(|b| b.live == 0) {
            self.batches.pop_front();
            self.batches_base += 1;
        }
        Some(slot)
    }

    /// Gives the pending items of `range` the state `state(first item)`, segment by segment.
    fn fill(
        &mut self,
        range: Range<usize>,
        state: impl Fn(usize) -> State,
        mut recorded: impl FnMut(Range<usize>),
    ) {
        let Range { start, end } = range;
        let (start, end) = (start.max(self.base), end.min(self.len));
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        for (&at, seg) in self.segments.range_mut(start..end) {
            if matches!(seg.state, State::Pending) {
                seg.state = state(at);
                recorded(at..seg.end);
            }
        }
    }

    /// Makes `at` the first item of a segment (if it is inside one).
    fn split_at(&mut self, at: usize) {
        let Some((&start, seg)) = self.segments.range_mut(..at).next_back() else {
            return;
        };
        if at >= seg.end {
            return;
        }
        let tail = Segment {
            end: seg.end,
            state: seg.state.skip(at - start),
        };
        seg.end = at;
        self.segments.insert(at, tail);
    }

    /// Joins the taken segment at `at` with taken neighbours, so taking items out of order
    /// does not leave one segment per item.
    fn merge_taken(&mut self, at: usize) {
        let Some(end) = self.segments.get(&at).map(|s| s.end) else {
            return;
        };
        let mut start = at;
        let mut end = end;
        if let Some((&prev, seg)) = self.segments.range(..at).next_back()
            && seg.end == at
            && matches!(seg.state, State::Taken)
        {
            self.segments.remove(&at);
            start = prev;
        }
        if let Some(next) = self.segments.get(&end)
            && matches!(next.state, State::Taken)
        {
            let next_end = next.end;
            self.segments.remove(&end);
            end = next_end;
        }
        if let Some(seg) = self.segments.get_mut(&start) {
            seg.end = end;
        }
    }

    fn batch(&self, batch: u64) -> Option<&Batch> {
        let at = usize::try_from(batch.checked_sub(self.batches_base)?).ok()?;
        self.batches.get(at)
    }

    fn batch_mut(&mut self, batch: u64) -> Option<&mut Batch> {
        let at = usize::try_from(batch.checked_sub(self.batches_base)?).ok()?;
        self.batches.get_mut(at)
    }

    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    #[cfg(test)]
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    #[cfg(test)]
    pub fn base(&self) -> usize {
        self.base
    }
}
