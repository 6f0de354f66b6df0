//! The outcomes of a job's items, kept as segments: runs of consecutive items in the same
//! state. A `map` of 200k items answered in 8 batches is a handful of segments, not 200k
//! entries, so recording a batch, and setting up and dropping the job, cost the same
//! whatever the batch's size.
//!
//! The segments are a sorted `VecDeque`, found by binary search. Items are dispatched in
//! order, so they finish near the end of the dispatched ones: a segment is inserted near the
//! back (before the pending tail), and taken ones are removed at the front, both of which a
//! `VecDeque` does without moving the rest. (A `BTreeMap` cost ~200 ns more per item of a
//! chunksize-1 map, whose items are one segment each.)

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::job::Slot;
use crate::protocol::Outcome;
use crate::protocol::packed::Packed;

/// The state shared by every item of a segment.
#[derive(Debug, Clone)]
enum SegmentState {
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

impl SegmentState {
    /// The state of the part of a segment that starts `offset` items into it.
    fn skip(&self, offset: usize) -> SegmentState {
        match self {
            SegmentState::Ok { batch, first } => SegmentState::Ok {
                batch: *batch,
                first: first.saturating_add(u32::try_from(offset).unwrap_or(u32::MAX)),
            },
            other => other.clone(),
        }
    }
}

#[derive(Debug)]
struct Segment {
    start: usize,
    end: usize,
    state: SegmentState,
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
    /// In order; they cover `base..len` without gaps.
    segments: VecDeque<Segment>,
    /// Where [`find`](Items::find) last found an item (a guess, checked before use).
    hint: Cell<usize>,
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
            segments: VecDeque::new(),
            hint: Cell::new(0),
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
        match self.segments.back_mut() {
            Some(last) if matches!(last.state, SegmentState::Pending) => last.end = self.len,
            _ => self.segments.push_back(Segment {
                start: first,
                end: self.len,
                state: SegmentState::Pending,
            }),
        }
        first
    }

    /// Forgets the items from `len` on, which must all be pending (never submitted): a
    /// finished one would keep its batch's results alive.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        let len = len.max(self.base);
        self.split_at(len);
        let keep = self.segments.partition_point(|s| s.start < len);
        debug_assert!(
            self.segments
                .range(keep..)
                .all(|s| matches!(s.state, SegmentState::Pending)),
            "only pending items are truncated"
        );
        self.segments.truncate(keep);
        self.len = len;
    }

    /// Item `index`.
    pub fn get(&self, index: usize) -> Option<Item<'_>> {
        if index < self.base {
            return Some(Item::Taken);
        }
        let seg = self.segments.get(self.find(index)?)?;
        let start = seg.start;
        Some(match &seg.state {
            SegmentState::Pending => Item::Pending,
            SegmentState::Ok { batch, first } => match self.batch(*batch) {
                Some(b) => Item::Ok {
                    results: &b.results,
                    index: *first as usize + (index - start),
                    more: seg.end - index - 1,
                },
                None => Item::Taken,
            },
            SegmentState::Done(slot) => Item::Done(slot),
            SegmentState::Taken => Item::Taken,
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
        self.fill(range, SegmentState::Done(Box::new(slot)), recorded);
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
        let mut live = 0;
        let state = SegmentState::Ok {
            batch,
            first: u32::try_from(first).unwrap_or(u32::MAX),
        };
        self.fill(range, state, |r| {
            live += r.len();
            recorded(r);
        });
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
        let pos = self.find(index);
        if let Some(seg) = pos.and_then(|p| self.segments.get_mut(p)) {
            let was = std::mem::replace(&mut seg.state, SegmentState::Taken);
            if let SegmentState::Ok { batch, .. } = was
                && let Some(b) = self.batch_mut(batch)
            {
                b.live = b.live.saturating_sub(1);
                if b.live == 0 {
                    b.results = Arc::default();
                }
            }
        }
        if let Some(pos) = pos {
            self.merge_taken(pos);
        }
        while self
            .segments
            .front()
            .is_some_and(|s| matches!(s.state, SegmentState::Taken))
        {
            if let Some(seg) = self.segments.pop_front() {
                self.base = seg.end;
            }
        }
        while self.batches.front().is_some_and(|b| b.live == 0) {
            self.batches.pop_front();
            self.batches_base += 1;
        }
        Some(slot)
    }

    /// Gives the pending items of `range` the state `state` (as the part of a segment
    /// starting at `range.start` that they would be), segment by segment.
    fn fill(
        &mut self,
        range: Range<usize>,
        state: SegmentState,
        mut recorded: impl FnMut(Range<usize>),
    ) {
        let Range { start, end } = range;
        let (origin, start, end) = (start, start.max(self.base), end.min(self.len));
        if start >= end {
            return;
        }
        let state = match start - origin {
            0 => state,
            skipped => state.skip(skipped),
        };
        // The common case, one lookup: the range lies in one pending segment (a batch's
        // items, or an item of a chunk of one).
        if let Some(pos) = self.find(start)
            && let Some(seg) = self.segments.get_mut(pos)
            && end <= seg.end
            && matches!(seg.state, SegmentState::Pending)
        {
            let (at, tail) = (seg.start, seg.end);
            let filled = Segment { start, end, state };
            let mut next = pos + 1;
            if at == start {
                *seg = filled;
            } else {
                seg.end = start;
                self.segments.insert(next, filled);
                next += 1;
            }
            if end < tail {
                self.segments.insert(
                    next,
                    Segment {
                        start: end,
                        end: tail,
                        state: SegmentState::Pending,
                    },
                );
            }
            recorded(start..end);
            return;
        }
        self.split_at(start);
        self.split_at(end);
        let Some(first) = self.find(start) else {
            return;
        };
        for seg in self.segments.range_mut(first..) {
            if seg.start >= end {
                break;
            }
            if matches!(seg.state, SegmentState::Pending) {
                seg.state = state.skip(seg.start - start);
                recorded(seg.start..seg.end);
            }
        }
    }

    /// The position of the segment holding item `index`.
    ///
    /// Tried first: the segment found last and the one after it (a reader going through
    /// the items in order), then the last few (where items finish); a binary search only
    /// then, as a chunksize-1 map has one segment per item and a search through them all
    /// misses the cache at every step.
    fn find(&self, index: usize) -> Option<usize> {
        let holds = |pos: usize| {
            self.segments
                .get(pos)
                .is_some_and(|s| s.start <= index && index < s.end)
        };
        let hint = self.hint.get();
        let n = self.segments.len();
        let pos = [hint, hint + 1]
            .into_iter()
            .chain((n.saturating_sub(4)..n).rev())
            .find(|&p| holds(p))
            .or_else(|| {
                let pos = self
                    .segments
                    .partition_point(|s| s.start <= index)
                    .checked_sub(1)?;
                holds(pos).then_some(pos)
            })?;
        self.hint.set(pos);
        Some(pos)
    }

    /// Makes `at` the first item of a segment (if it is inside one).
    fn split_at(&mut self, at: usize) {
        let Some(pos) = self.find(at) else {
            return;
        };
        let Some(seg) = self.segments.get_mut(pos) else {
            return;
        };
        if seg.start == at {
            return;
        }
        let tail = Segment {
            start: at,
            end: seg.end,
            state: seg.state.skip(at - seg.start),
        };
        seg.end = at;
        self.segments.insert(pos + 1, tail);
    }

    /// Joins the taken segment at position `pos` with taken neighbours, so taking items
    /// out of order does not leave one segment per item.
    fn merge_taken(&mut self, pos: usize) {
        let taken = |s: Option<&Segment>| s.is_some_and(|s| matches!(s.state, SegmentState::Taken));
        if taken(self.segments.get(pos + 1))
            && let Some(next) = self.segments.remove(pos + 1)
            && let Some(seg) = self.segments.get_mut(pos)
        {
            seg.end = next.end;
        }
        if pos > 0
            && taken(self.segments.get(pos - 1))
            && let Some(seg) = self.segments.remove(pos)
            && let Some(prev) = self.segments.get_mut(pos - 1)
        {
            prev.end = seg.end;
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
