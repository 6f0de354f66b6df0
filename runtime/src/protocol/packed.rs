//! Many byte strings in one buffer: a batch's arguments, and its results, travel to the
//! worker, into the guest and back as two vectors instead of one allocation per item.

use serde::{Deserialize, Serialize};

use super::Outcome;

/// Item `i` is `data[ends[i - 1]..ends[i]]` (item 0 starts at 0). The same layout as the
/// WIT record `packed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Packed {
    #[serde(with = "crate::wire_bytes::bytes")]
    pub data: Vec<u8>,
    #[serde(with = "crate::wire_bytes::u32s")]
    pub ends: Vec<u32>,
}

impl Packed {
    pub fn with_capacity(items: usize, bytes: usize) -> Packed {
        Packed {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(items),
        }
    }

    /// One item.
    pub fn one(item: &[u8]) -> Packed {
        let mut p = Packed::with_capacity(1, item.len());
        p.push(item);
        p
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Appends one item.
    pub fn push(&mut self, item: &[u8]) {
        self.data.extend_from_slice(item);
        self.close_item();
    }

    /// Ends the item whose bytes were appended to `data` since the last one ended.
    pub fn close_item(&mut self) {
        // Frames are far below 4 GiB (`MAX_FRAME`), so the end always fits.
        self.ends
            .push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
    }

    /// Item `i`, or `None` if there is no such item or the bounds (from a peer) are broken.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)? as usize;
        let start = match i {
            0 => 0,
            _ => *self.ends.get(i - 1)? as usize,
        };
        self.data.get(start..end)
    }

    /// The items in order; an item whose bounds are broken reads as empty.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Splits into runs of at most `size` items, in order.
    pub fn split(&self, size: usize) -> Vec<Packed> {
        let size = size.max(1);
        let mut out = Vec::with_capacity(self.len().div_ceil(size));
        let mut i = 0;
        while i < self.len() {
            let n = size.min(self.len() - i);
            let mut part = Packed::with_capacity(n, 0);
            for item in (i..i + n).map(|j| self.get(j).unwrap_or_default()) {
                part.push(item);
            }
            out.push(part);
            i += n;
        }
        out
    }
}

impl FromIterator<Vec<u8>> for Packed {
    fn from_iter<I: IntoIterator<Item = Vec<u8>>>(items: I) -> Packed {
        let mut p = Packed::default();
        for item in items {
            p.push(&item);
        }
        p
    }
}

/// The answers to a batch: item `i`'s encoded result is `results` item `i`, unless an
/// entry of `errors` names `i` (in increasing order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BatchAnswers {
    pub results: Packed,
    pub errors: Vec<(u32, Outcome)>,
}

impl BatchAnswers {
    pub fn with_capacity(items: usize) -> BatchAnswers {
        BatchAnswers {
            results: Packed::with_capacity(items, items * 8),
            errors: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// Appends the next item's outcome.
    pub fn push(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok(bytes) => self.results.push(&bytes),
            failed => {
                self.errors.push((self.results.ends.len() as u32, failed));
                self.results.close_item();
            }
        }
    }

    /// Every item's outcome, in order (at most `len()` of them).
    pub fn into_outcomes(self) -> impl Iterator<Item = Outcome> {
        let BatchAnswers { results, errors } = self;
        let mut errors = errors.into_iter().peekable();
        (0..results.len()).map(move |i| match errors.next_if(|(at, _)| *at as usize <= i) {
            Some((at, failed)) if at as usize == i => failed,
            _ => Outcome::Ok(results.get(i).unwrap_or_default().to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_split_in_order() {
        let items: Vec<Vec<u8>> = vec![vec![1, 2], vec![], vec![3], vec![4, 5, 6]];
        let p: Packed = items.iter().cloned().collect();
        assert_eq!(p.len(), 4);
        assert_eq!(p.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(), items);
        let parts = p.split(3);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].get(0), Some(&[4u8, 5, 6][..]));
        assert_eq!(p.get(4), None);
    }

    #[test]
    fn broken_bounds_read_as_missing_not_a_panic() {
        let p = Packed {
            data: vec![1, 2, 3],
            ends: vec![2, 1, 9],
        };
        assert_eq!(p.get(0), Some(&[1u8, 2][..]));
        assert_eq!(p.get(1), None);
        assert_eq!(p.get(2), None);
        assert_eq!(p.iter().count(), 3);
    }

    #[test]
    fn answers_keep_each_items_outcome() {
        let mut a = BatchAnswers::with_capacity(3);
        a.push(Outcome::Ok(vec![7]));
        a.push(Outcome::Failed("boom".into()));
        a.push(Outcome::Ok(vec![8, 9]));
        let out: Vec<Outcome> = a.into_outcomes().collect();
        assert!(matches!(&out[0], Outcome::Ok(b) if b == &[7]));
        assert!(matches!(&out[1], Outcome::Failed(m) if m == "boom"));
        assert!(matches!(&out[2], Outcome::Ok(b) if b == &[8, 9]));
    }
}
