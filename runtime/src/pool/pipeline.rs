//! How deep a worker's pipeline is: how many chunks it may hold (running and queued), from
//! how long a task's chunks run and how long one spends outside the worker.
//!
//! A worker gets a second chunk ahead of time only while chunks finish in well under a
//! millisecond, or when the time a chunk spends travelling is a good part of its run time;
//! long tasks are handed out one at a time, so a free worker always takes the next queued
//! task (Python's FIFO behaviour).

/// Chunks a worker may hold ahead when tasks are short.
const PIPELINE_DEPTH: usize = 4;
/// Below this average chunk run time, workers are given chunks ahead of time.
const PIPELINE_BELOW_SECS: f64 = 0.002;
/// Below this average chunk run time, workers get the deep pipeline: as many chunks as run
/// for about `DEEP_PIPELINE_SECS`, within `DEEP_PIPELINE_DEPTH..=MAX_PIPELINE_DEPTH`, so
/// frames travel in batches. A worker writes its answers when it runs out of work, and waits
/// for the next batch for a round trip; the more tiny tasks a batch holds, the less of its
/// time that is (chunksize-1 map of 20k: 47 ms at 64 chunks, 43 at 256, 39 at 1024).
const DEEP_PIPELINE_BELOW_SECS: f64 = 0.000_1;
const DEEP_PIPELINE_SECS: f64 = 0.001;
const DEEP_PIPELINE_DEPTH: usize = 64;
const MAX_PIPELINE_DEPTH: usize = 512;
/// Longer chunks still get one chunk ahead when the time a chunk spends outside the worker
/// (travelling both ways, and being recorded) is more than this fraction of its run time:
/// a large batch of tiny items takes as long to send and record as to run, and without a
/// chunk ahead its worker would sit idle for that long after each one.
const OVERHEAD_FRACTION: f64 = 0.125;

/// How many chunks a worker may hold (running and queued), given the average run time of a
/// chunk and the time one spends outside the worker. A chunk queued behind a long one waits
/// even if another worker is idle, so long chunks are not queued unless they would leave
/// their worker idle for a good part of the time.
pub(super) fn pipeline_depth(run: Option<f64>, overhead: Option<f64>) -> usize {
    match run {
        Some(run) if run < DEEP_PIPELINE_BELOW_SECS => ((DEEP_PIPELINE_SECS / run.max(1e-7))
            as usize)
            .clamp(DEEP_PIPELINE_DEPTH, MAX_PIPELINE_DEPTH),
        Some(run) if run < PIPELINE_BELOW_SECS => PIPELINE_DEPTH,
        Some(run) if overhead.is_some_and(|o| o > run * OVERHEAD_FRACTION) => 2,
        _ => 1,
    }
}

/// How long a task's chunks take: exponentially weighted averages, in seconds, `None` until
/// measured.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Timing {
    /// Run time in the worker.
    pub run: Option<f64>,
    /// Time a chunk sent to an idle worker, and answered before another was sent to it,
    /// spends outside it (from sending to answer, less its run time). Only such a chunk
    /// shows it: one queued behind another waits for that one, and one with another queued
    /// behind it is answered after that one too.
    pub overhead: Option<f64>,
}

/// An exponentially weighted average updated with `sample`.
pub(super) fn ewma(avg: Option<f64>, sample: f64) -> f64 {
    avg.map_or(sample, |a| 0.8 * a + 0.2 * sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_deepens_as_chunks_shorten_and_long_ones_queue_only_when_overhead_is_large() {
        // Nothing measured yet: one chunk at a time.
        assert_eq!(pipeline_depth(None, None), 1);
        // Tiny: about a millisecond of them, within bounds.
        assert_eq!(pipeline_depth(Some(0.0), None), MAX_PIPELINE_DEPTH);
        assert_eq!(pipeline_depth(Some(0.000_004), None), 250);
        assert_eq!(pipeline_depth(Some(0.000_05), None), DEEP_PIPELINE_DEPTH);
        // Short.
        assert_eq!(pipeline_depth(Some(0.001), None), PIPELINE_DEPTH);
        // Long: a second chunk only if each would otherwise leave its worker idle a while.
        assert_eq!(pipeline_depth(Some(0.01), Some(0.005)), 2);
        assert_eq!(pipeline_depth(Some(0.01), Some(0.000_1)), 1);
        assert_eq!(pipeline_depth(Some(0.01), None), 1);
    }
}
