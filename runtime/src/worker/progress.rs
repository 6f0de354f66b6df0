//! What the running batch has done so far: the answers of its items that finished, kept in
//! the worker as they are known, so that nothing that finished runs again.
//!
//! A batch crosses into the guest once for all its items. The guest SDK reports the items
//! that finished as it goes (the `batch-progress` import): before each call to `objects`
//! that follows a finished item, and after each item that called `objects`. So when the
//! crossing traps, hits a limit, or is stopped by the watchdog while blocked in a host call,
//! the worker knows which items finished (their answers are kept, never run again) and
//! whether the item that was running had made a call to `objects` (then it is the one that
//! trapped). Items after the last report made no such call: they are pure, and running them
//! again (one by one, to find the guilty one) repeats nothing but their output, which the
//! worker holds back until they are reported (see [`Channel::hold_output`]).
//!
//! Answers also leave in parts: once the answers kept add up to [`PART_BYTES`], they are
//! sent in a `BatchPart` frame, so no frame of answers outgrows the frame cap, and a result
//! too large for any frame fails only its own item ([`cap_result`]).

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::output::Channel;
use crate::protocol::packed::{BatchAnswers, Packed};
use crate::protocol::{FromWorker, MAX_RESULT, Outcome, PART_BYTES, describe_bytes};

/// The progress of the batch call running in this worker, if any.
#[derive(Debug, Default)]
pub(crate) struct BatchProgress {
    inner: Mutex<Option<Batch>>,
}

#[derive(Debug)]
struct Batch {
    id: u64,
    /// Items in the batch.
    items: usize,
    /// Answers known and not yet sent in a part.
    answers: BatchAnswers,
    /// Items answered so far, those sent in parts included.
    answered: usize,
    /// Items in the crossing into the guest now running, and how many were answered when
    /// it began.
    crossing: usize,
    crossing_base: usize,
    /// Whether that crossing is the guest's `call-batch`, the only place progress reports
    /// are taken from.
    reports_taken: bool,
    /// About how many bytes the answers kept take.
    bytes: usize,
    /// Whether the guest reports its progress (it said so as the crossing began).
    reporting: bool,
    /// Whether the item after the last report has called `objects`.
    effect: bool,
    /// When the guest last reported finished items in this crossing: a time limit applies
    /// to what runs after each report, so it is as good as one per item for the items that
    /// call `objects`.
    last_report: Option<Instant>,
}

/// Where a crossing that ended without an answer (a trap, a limit) stopped, as far as the
/// guest's reports tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// The guest does not report its progress: nothing is known of its items.
    Unknown,
    /// The item after the reported ones was running and had called `objects`: it is the one
    /// that stopped, and no item after it started.
    InItem,
    /// Some item after the reported ones stopped; they (up to it) made no call to
    /// `objects`.
    Pure,
}

impl BatchProgress {
    fn lock(&self) -> MutexGuard<'_, Option<Batch>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batch call `id` of `items` items begins.
    pub fn begin(&self, id: u64, items: usize) {
        *self.lock() = Some(Batch {
            id,
            items,
            answers: BatchAnswers::with_capacity(items),
            answered: 0,
            crossing: items,
            crossing_base: 0,
            reports_taken: false,
            bytes: 0,
            reporting: false,
            effect: false,
            last_report: None,
        });
    }

    /// A crossing into the guest of `items` items (the batch's next ones) begins: the
    /// guest's `call-batch` (`batched`), whose progress reports are taken, or its `call`.
    pub fn begin_crossing(&self, items: usize, batched: bool) {
        if let Some(b) = self.lock().as_mut() {
            b.crossing = items;
            b.crossing_base = b.answered;
            b.reports_taken = batched;
            b.reporting = false;
            b.effect = false;
            b.last_report = None;
        }
    }

    /// When the guest last reported finished items in the running crossing, if it did.
    pub fn last_report(&self) -> Option<Instant> {
        self.lock().as_ref().and_then(|b| b.last_report)
    }

    /// Items answered so far in this batch.
    pub fn answered(&self) -> usize {
        self.lock().as_ref().map_or(0, |b| b.answered)
    }

    /// The guest reported these items finished (none: it says it reports), and they go to
    /// the host at once, after the output `channel` held for them: a worker that dies later
    /// does not take them along.
    ///
    /// A report is taken only inside the guest's `call-batch`, and only for as many items
    /// as the crossing has left: a guest that reports items it does not have (to restart
    /// its time limit, say) gets nothing for it.
    pub fn report(&self, completed: Vec<Outcome>, channel: &Channel) {
        let mut g = self.lock();
        let Some(b) = g.as_mut().filter(|b| b.reports_taken) else {
            return;
        };
        b.reporting = true;
        let left = (b.crossing_base + b.crossing).saturating_sub(b.answered);
        if completed.is_empty() || left == 0 {
            return;
        }
        b.effect = false;
        // What comes next has a time limit and an output limit of its own.
        b.last_report = Some(Instant::now());
        channel.rearm_output();
        // What the guest wrote so far belongs to items that finished: it goes out now, and
        // what the next items write is held back again.
        channel.release_output();
        channel.resume_hold();
        for outcome in completed.into_iter().take(left) {
            b.push(outcome, channel);
        }
        b.send_part(channel);
        // A failed write means the host is gone; the worker finds out at its next read.
        let _ = channel.flush();
    }

    /// The running item calls `objects`: it has a side effect, so it will not run again,
    /// and what it writes from now on goes out at once.
    pub fn effect(&self, channel: &Channel) {
        if let Some(b) = self.lock().as_mut() {
            if !b.effect && b.reports_taken {
                channel.pause_hold();
            }
            b.effect = true;
        }
    }

    /// Records the next item's answer (one the worker found itself: a re-run, a failure).
    pub fn push(&self, outcome: Outcome, channel: &Channel) {
        if let Some(b) = self.lock().as_mut() {
            b.push(outcome, channel);
        }
    }

    /// Takes `results` as the answers of the next items, all successes, without copying
    /// them, when nothing else is kept and they are small enough to need no part; else gives
    /// them back.
    pub fn take_whole(&self, results: Packed) -> Option<Packed> {
        let mut g = self.lock();
        match g.as_mut() {
            Some(b) if b.answers.len() == 0 && results.data.len() < PART_BYTES => {
                b.answered += results.len();
                b.bytes = results.data.len();
                b.answers.results = results;
                None
            }
            _ => Some(results),
        }
    }

    /// Where the crossing that just failed stopped, as far as the guest's reports tell.
    pub fn stopped(&self) -> Stopped {
        match self.lock().as_ref() {
            Some(b) if b.reporting && b.effect => Stopped::InItem,
            Some(b) if b.reporting => Stopped::Pure,
            _ => Stopped::Unknown,
        }
    }

    /// The batch is over: the answers not yet sent (none once the watchdog stopped it).
    pub fn finish(&self) -> BatchAnswers {
        self.lock().take().map(|b| b.answers).unwrap_or_default()
    }

    /// The watchdog stops call `id`, blocked in a host call past its time limit: the
    /// answers not yet sent, with the running item failed by `limit` when it is known to be
    /// the one that ran past it (it crossed into the guest alone, or called `objects` since
    /// the last report), and whether the output held back is that item's (to be kept);
    /// `None` when `id` is no batch.
    ///
    /// Items after those answered go back to the host, which runs each on its own.
    ///
    /// The batch ends here: a host call that returns meanwhile records nothing more, so no
    /// answer reaches the host after the watchdog's.
    pub fn stop(&self, id: u64, limit: Outcome) -> Option<(BatchAnswers, bool)> {
        let mut g = self.lock();
        let mut b = g.take_if(|b| b.id == id)?;
        let known = b.answered < b.items && (b.crossing == 1 || (b.reporting && b.effect));
        if known {
            b.answers.push(limit);
            b.answered += 1;
        }
        Some((b.answers, known))
    }
}

impl Batch {
    /// Keeps the next item's answer, sending the answers kept in a part first if it would
    /// take them past [`PART_BYTES`], or after it if it does.
    fn push(&mut self, outcome: Outcome, channel: &Channel) {
        let outcome = cap_result(outcome);
        let size = outcome_size(&outcome);
        if self.bytes > 0 && self.bytes.saturating_add(size) > PART_BYTES {
            self.send_part(channel);
        }
        self.answers.push(outcome);
        self.bytes = self.bytes.saturating_add(size);
        self.answered += 1;
        if self.bytes >= PART_BYTES {
            self.send_part(channel);
        }
    }

    fn send_part(&mut self, channel: &Channel) {
        if self.answers.len() == 0 {
            return;
        }
        let answers = std::mem::take(&mut self.answers);
        self.bytes = 0;
        // A failed write means the host is gone; the worker finds out at its next read.
        let _ = channel.queue(&FromWorker::BatchPart {
            id: self.id,
            answers,
        });
    }
}

/// About how many bytes an answer takes in a frame, and in the worker: its bytes, and its
/// end offset (so a flood of empty answers is counted too).
fn outcome_size(outcome: &Outcome) -> usize {
    8 + match outcome {
        Outcome::Ok(bytes) => bytes.len(),
        Outcome::UnknownTask => 0,
        Outcome::Failed(m) | Outcome::BadArgs(m) | Outcome::Trap(m) | Outcome::Limit(m) => m.len(),
    }
}

/// The longest error text an item's answer carries (64 KiB); a longer one (a guest's
/// panic message, say) is cut there, and says so.
const MAX_MESSAGE: usize = 64 << 10;

/// An item's outcome as it may travel: a result too large for any frame fails the item,
/// with an error naming both sizes, and a very long error text is cut.
pub(crate) fn cap_result(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Ok(bytes) if bytes.len() > MAX_RESULT => Outcome::Limit(too_large(bytes.len())),
        Outcome::Failed(m) => Outcome::Failed(cap_message(m)),
        Outcome::BadArgs(m) => Outcome::BadArgs(cap_message(m)),
        Outcome::Trap(m) => Outcome::Trap(cap_message(m)),
        Outcome::Limit(m) => Outcome::Limit(cap_message(m)),
        other => other,
    }
}

/// `message`, cut to at most [`MAX_MESSAGE`] bytes (at a character boundary).
fn cap_message(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_MESSAGE;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!(" … (cut: {total} bytes in all)"));
    message
}

/// The error of a result of `len` bytes, over [`MAX_RESULT`].
fn too_large(len: usize) -> String {
    format!(
        "returned a result of {}, over the {} a result may take (the 64 MiB message limit, \
         less its frame)",
        describe_bytes(len as u64),
        describe_bytes(MAX_RESULT as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_over_the_frame_cap_fails_alone_with_both_sizes() {
        let small = cap_result(Outcome::Ok(vec![1; 10]));
        assert!(matches!(small, Outcome::Ok(b) if b.len() == 10));
        match cap_result(Outcome::Ok(vec![0; MAX_RESULT + 1])) {
            Outcome::Limit(m) => {
                assert!(m.contains("bytes"), "{m}");
                assert!(m.contains(&describe_bytes(MAX_RESULT as u64)), "{m}");
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_long_error_text_is_cut_and_says_so() {
        match cap_result(Outcome::Failed("é".repeat(MAX_MESSAGE))) {
            Outcome::Failed(m) => {
                assert!(m.len() < MAX_MESSAGE + 64, "{}", m.len());
                let tail = format!("(cut: {} bytes in all)", 2 * MAX_MESSAGE);
                assert!(m.ends_with(&tail), "{}", &m[m.len() - 40..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_running_item_is_known_only_from_a_guest_that_reports() {
        let p = BatchProgress::default();
        p.begin(7, 3);
        assert_eq!(p.stopped(), Stopped::Unknown);
        p.effect(&channel());
        assert_eq!(p.stopped(), Stopped::Unknown);
        p.begin_crossing(3, true);
        p.lock().as_mut().unwrap().reporting = true;
        assert_eq!(p.stopped(), Stopped::Pure);
        p.effect(&channel());
        assert_eq!(p.stopped(), Stopped::InItem);
    }

    #[test]
    fn a_stop_keeps_what_finished_and_fails_only_a_lone_item() {
        let p = BatchProgress::default();
        p.begin(7, 3);
        p.push(Outcome::Ok(vec![1]), &channel());
        // A crossing of the two items left: nothing of them is failed.
        p.begin_crossing(2, true);
        assert!(p.stop(8, Outcome::Limit("time".into())).is_none());
        let (a, keep) = p.stop(7, Outcome::Limit("time".into())).unwrap();
        assert_eq!(a.len(), 1);
        assert!(!keep);
        // The batch is over: what the task does next records nothing.
        p.push(Outcome::Ok(vec![2]), &channel());
        assert_eq!(p.finish().len(), 0);
        // A crossing of one item: that item had the limit to itself.
        p.begin(9, 3);
        p.begin_crossing(1, false);
        let (a, keep) = p.stop(9, Outcome::Limit("time".into())).unwrap();
        assert!(keep);
        let out: Vec<Outcome> = a.into_outcomes().collect();
        assert!(matches!(&out[..], [Outcome::Limit(_)]), "{out:?}");
    }

    #[test]
    fn reports_count_only_inside_call_batch_and_only_for_the_items_left() {
        let (p, ch) = (BatchProgress::default(), channel());
        p.begin(1, 4);
        // In a crossing of the guest's `call`: ignored.
        p.begin_crossing(1, false);
        p.report(vec![Outcome::Ok(vec![1])], &ch);
        assert_eq!(p.answered(), 0);
        assert!(p.last_report().is_none());
        // In `call-batch`: as many as the crossing has left, no more, and once they are
        // used up a report restarts no limit.
        p.begin_crossing(3, true);
        p.report(vec![Outcome::Ok(vec![1]); 10], &ch);
        assert_eq!(p.answered(), 3);
        let at = p.last_report();
        assert!(at.is_some());
        p.report(vec![Outcome::Ok(vec![1])], &ch);
        assert_eq!(p.answered(), 3);
        assert_eq!(p.last_report(), at);
    }

    /// A channel whose other end is gone (what tests here send is dropped).
    fn channel() -> Channel {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Channel::new(a)
    }
}
