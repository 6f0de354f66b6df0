//! What travels through Redis: a chunk as a stream entry's payload, and a committed chunk's
//! results as a record of its submitter's result list. Both are postcard (wasmpool on both
//! ends, same layout version); the record's header is text, so the reaper's Lua can write
//! the record of a lost chunk.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pool::job::{Job, Slot};
use crate::protocol::packed::{BatchAnswers, Packed};
use crate::protocol::{Limits, Outcome};

/// A chunk of a job, as a host needs it to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChunkSpec {
    /// The SHA-256 (hex) of the module's component bytes.
    pub module: String,
    pub task: String,
    pub items: Packed,
    /// Sent as one call (`apply_async`) rather than a batch.
    pub call: bool,
    pub limits: Limits,
}

/// How an item ended that is not a worker's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum OtherSlot {
    Lost {
        pid: u32,
        signal: Option<i32>,
        reason: String,
    },
    Aborted(String),
    RestartLimit(u32),
    Cancelled,
}

/// One chunk's results, as its host committed them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChunkResult {
    /// Every item's outcome, in order (an item in `other` has a placeholder here).
    pub answers: BatchAnswers,
    /// The items that ended otherwise (their worker died, …), by index in the chunk.
    pub other: Vec<(u32, OtherSlot)>,
    /// The fuel the chunk used, on a metered host.
    pub fuel: Option<u64>,
}

impl ChunkResult {
    /// The results of a finished job of `n` items (a host's run of one chunk).
    pub fn from_job(job: &Job, n: usize) -> ChunkResult {
        let mut out = ChunkResult {
            answers: BatchAnswers::with_capacity(n),
            other: Vec::new(),
            fuel: job.fuel_used(),
        };
        for i in 0..n {
            let other = match job.peek(i) {
                Slot::Done(outcome) => {
                    out.answers.push(outcome);
                    continue;
                }
                Slot::Lost {
                    pid,
                    signal,
                    reason,
                } => OtherSlot::Lost {
                    pid,
                    signal,
                    reason,
                },
                Slot::Aborted(m) => OtherSlot::Aborted(m),
                Slot::RestartLimit(n) => OtherSlot::RestartLimit(n),
                Slot::Cancelled => OtherSlot::Cancelled,
                Slot::Pending | Slot::Taken => {
                    OtherSlot::Aborted("the host had no result for it".into())
                }
            };
            out.answers.push(Outcome::Failed(String::new()));
            out.other.push((i as u32, other));
        }
        out
    }

    /// Every item failed with the same reason (its host could not run the chunk).
    pub fn failed(n: usize, reason: &str) -> ChunkResult {
        ChunkResult {
            answers: BatchAnswers::default(),
            other: (0..n as u32)
                .map(|i| (i, OtherSlot::Aborted(reason.to_string())))
                .collect(),
            fuel: None,
        }
    }

    /// Records the results as items `first..first + n` of `job`; returns how many were
    /// still pending.
    pub fn record(self, job: &Job, first: usize, n: usize) -> usize {
        if let Some(fuel) = self.fuel {
            job.add_fuel(fuel);
        }
        let mut recorded = 0;
        // The other endings first: the batch that follows does not overwrite them.
        for (i, other) in self.other {
            let i = i as usize;
            if i >= n {
                continue;
            }
            let slot = match other {
                OtherSlot::Lost {
                    pid,
                    signal,
                    reason,
                } => Slot::Lost {
                    pid,
                    signal,
                    reason,
                },
                OtherSlot::Aborted(m) => Slot::Aborted(m),
                OtherSlot::RestartLimit(n) => Slot::RestartLimit(n),
                OtherSlot::Cancelled => Slot::Cancelled,
            };
            recorded += usize::from(job.complete(first + i, slot));
        }
        recorded + job.complete_batch(first, n, self.answers)
    }
}

/// A record of a submitter's result list.
#[derive(Debug)]
pub(crate) enum Record {
    /// A host committed chunk `chunk` of job `job`.
    Committed {
        job: String,
        chunk: u32,
        result: ChunkResult,
    },
    /// The reaper failed chunk `chunk` of job `job`: its host died and it may not run again.
    Lost {
        job: String,
        chunk: u32,
        host: String,
    },
}

/// The record of a committed chunk: `R <job> <chunk>\n` and the postcard result.
pub(crate) fn committed_record(job: &str, chunk: u32, result: &ChunkResult) -> Result<Vec<u8>> {
    let mut out = format!("R {job} {chunk}\n").into_bytes();
    let body = postcard::to_stdvec(result)
        .map_err(|e| Error::Cluster(format!("encoding a chunk's results: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads a record of a result list (`None` for one this version does not know).
pub(crate) fn parse_record(bytes: &[u8]) -> Option<Record> {
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut parts = header.split(' ');
    let kind = parts.next()?;
    let job = parts.next()?.to_string();
    let chunk = parts.next()?.parse().ok()?;
    match kind {
        "R" => {
            let result = postcard::from_bytes(bytes.get(nl + 1..)?).ok()?;
            Some(Record::Committed { job, chunk, result })
        }
        "L" => Some(Record::Lost {
            job,
            chunk,
            host: parts.next()?.to_string(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut r = ChunkResult::default();
        r.answers.push(Outcome::Ok(vec![1, 2]));
        r.answers.push(Outcome::Failed("no".into()));
        r.fuel = Some(7);
        let bytes = committed_record("3.9", 4, &r).unwrap();
        match parse_record(&bytes) {
            Some(Record::Committed { job, chunk, result }) => {
                assert_eq!((job.as_str(), chunk), ("3.9", 4));
                assert_eq!(result.answers.len(), 2);
                assert_eq!(result.fuel, Some(7));
            }
            other => panic!("{other:?}"),
        }
        match parse_record(b"L 3.9 5 box:77:ab") {
            Some(Record::Lost { job, chunk, host }) => {
                assert_eq!(
                    (job.as_str(), chunk, host.as_str()),
                    ("3.9", 5, "box:77:ab")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_record(b"X 1 2").is_none());
        assert!(parse_record(b"R 1 notanumber\n").is_none());
    }
}
