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
    /// How the submitting pool's workers are set up: a host runs the chunk in a local
    /// pool set up the same way.
    pub setup: WorkerSetup,
    /// Keep what its items write to stdout and stderr, and send it back with the results
    /// (`with_captured_output`).
    pub capture: bool,
}

/// How a submitting pool's workers are set up, carried with each of its chunks (a few
/// bytes, and no round trip, where a record per job would cost a host a read per chunk):
/// a host keeps a local pool per module and setup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct WorkerSetup {
    /// The initializer's task and its encoded argument array.
    pub initializer: Option<(String, Vec<u8>)>,
    pub maxtasksperchild: Option<u64>,
    /// Where the host writes the tasks' output.
    pub output: HostOutput,
    /// What the tasks may reach: directories named by their path on the hosts, which a
    /// host opens only if it allows them, and environment variables.
    pub grants: crate::Grants,
}

/// Where a host writes its tasks' stdout and stderr (the submitting pool's
/// [`Output`](crate::Output), of those a host can honour).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum HostOutput {
    /// To the host's own stdout and stderr.
    #[default]
    Inherit,
    /// To the host's, each line tagged with its worker and task.
    Tagged,
    /// Nowhere.
    Discard,
}

impl HostOutput {
    /// The host's choice for a pool's `output`, or what is wrong with it.
    pub fn of(output: &crate::Output) -> std::result::Result<HostOutput, &'static str> {
        match output {
            crate::Output::Inherit => Ok(HostOutput::Inherit),
            crate::Output::Tagged => Ok(HostOutput::Tagged),
            crate::Output::Discard => Ok(HostOutput::Discard),
            crate::Output::Capture => Err(
                "Output::Capture (keep it on the host) is not supported on a cluster pool; \
                 use with_captured_output(), which brings each task's output back with its \
                 result",
            ),
            crate::Output::Callback(_) => Err(
                "Output::Callback is not supported on a cluster pool (the output is written \
                 on another host); use with_captured_output(), which brings each task's \
                 output back with its result",
            ),
        }
    }

    /// The local pool's output for it.
    pub fn output(self) -> crate::Output {
        match self {
            HostOutput::Inherit => crate::Output::Inherit,
            HostOutput::Tagged => crate::Output::Tagged,
            HostOutput::Discard => crate::Output::Discard,
        }
    }
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
    /// The worker time its calls took, in microseconds.
    pub micros: u64,
    /// The largest peak memory of its calls, in bytes.
    pub peak_memory: u64,
    /// What its items wrote, when the chunk asked for it (at most its output limit).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ChunkResult {
    /// The results of a finished job of `n` items (a host's run of one chunk).
    pub fn from_job(job: &Job, n: usize) -> ChunkResult {
        let mut out = ChunkResult {
            answers: BatchAnswers::with_capacity(n),
            other: Vec::new(),
            fuel: job.fuel_used(),
            micros: u64::try_from(job.worker_time().as_micros()).unwrap_or(u64::MAX),
            peak_memory: job.peak_memory(),
            ..ChunkResult::default()
        };
        if job.opts.capture_output {
            let captured = job.captured();
            out.stdout = captured.stdout;
            out.stderr = captured.stderr;
        }
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
            ..ChunkResult::default()
        }
    }

    /// Records the results as items `first..first + n` of `job`; returns how many were
    /// still pending.
    pub fn record(self, job: &Job, first: usize, n: usize) -> usize {
        // What it used and wrote, before its outcomes: there when a waiter wakes.
        if let Some(fuel) = self.fuel {
            job.add_fuel(fuel);
        }
        job.add_worker_micros(self.micros);
        job.raise_peak_memory(self.peak_memory);
        job.capture(crate::output::Stream::Stdout, &self.stdout);
        job.capture(crate::output::Stream::Stderr, &self.stderr);
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

/// A record of a result list this version cannot read.
#[derive(Debug)]
pub(crate) struct BadRecord {
    /// The job and chunk it names, when its header could be read: that chunk's items fail
    /// with the reason rather than wait for ever.
    pub chunk: Option<(String, u32)>,
    pub why: String,
}

/// Reads a record of a result list.
pub(crate) fn parse_record(bytes: &[u8]) -> std::result::Result<Record, BadRecord> {
    let bad = |chunk: Option<(String, u32)>, why: String| BadRecord { chunk, why };
    let nl = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..nl])
        .map_err(|_| bad(None, "its header is not text".into()))?;
    let mut parts = header.split(' ');
    let kind = parts.next().unwrap_or_default();
    let (Some(job), Some(chunk)) = (
        parts.next().map(str::to_string),
        parts.next().and_then(|c| c.parse::<u32>().ok()),
    ) else {
        return Err(bad(
            None,
            format!("its header {header:?} names no job and chunk"),
        ));
    };
    match kind {
        "R" => {
            let body = bytes.get(nl + 1..).unwrap_or_default();
            match postcard::from_bytes(body) {
                Ok(result) => Ok(Record::Committed { job, chunk, result }),
                Err(e) => Err(bad(
                    Some((job, chunk)),
                    format!(
                        "the results of this chunk came back from its host in a form this \
                         wasmpool cannot read ({} bytes: {e}); is every host the same \
                         version?",
                        body.len()
                    ),
                )),
            }
        }
        "L" => match parts.next() {
            Some(host) => Ok(Record::Lost {
                job,
                chunk,
                host: host.to_string(),
            }),
            None => Err(bad(
                Some((job, chunk)),
                "its record of a lost chunk names no host".into(),
            )),
        },
        other => Err(bad(
            Some((job, chunk)),
            format!("its result record is of a kind ({other:?}) this wasmpool does not know"),
        )),
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
            Ok(Record::Committed { job, chunk, result }) => {
                assert_eq!((job.as_str(), chunk), ("3.9", 4));
                assert_eq!(result.answers.len(), 2);
                assert_eq!(result.fuel, Some(7));
            }
            other => panic!("{other:?}"),
        }
        match parse_record(b"L 3.9 5 box:77:ab") {
            Ok(Record::Lost { job, chunk, host }) => {
                assert_eq!(
                    (job.as_str(), chunk, host.as_str()),
                    ("3.9", 5, "box:77:ab")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_record(b"X 1 2").is_err());
        assert!(parse_record(b"R 1 notanumber\n").is_err());
    }

    fn full_result() -> ChunkResult {
        let mut r = ChunkResult::default();
        r.answers.push(Outcome::Ok(vec![9; 40]));
        r.other.push((1, OtherSlot::Cancelled));
        r.fuel = Some(12_345);
        r.micros = 987_654;
        r.peak_memory = 3 << 20;
        r.stdout = b"out line\n".to_vec();
        r.stderr = b"err line\n".to_vec();
        r
    }

    #[test]
    fn what_a_result_reports_travels_in_its_record() {
        let bytes = committed_record("c1x0.2", 0, &full_result()).unwrap();
        let Ok(Record::Committed { result, .. }) = parse_record(&bytes) else {
            panic!("does not decode");
        };
        assert_eq!(result.fuel, Some(12_345));
        assert_eq!(result.micros, 987_654);
        assert_eq!(result.peak_memory, 3 << 20);
        assert_eq!(result.stdout, b"out line\n");
        assert_eq!(result.stderr, b"err line\n");
        assert!(matches!(result.other[..], [(1, OtherSlot::Cancelled)]));
    }

    #[test]
    fn a_truncated_record_is_a_clear_error_naming_its_chunk() {
        let bytes = committed_record("c1x0.2", 3, &full_result()).unwrap();
        let header = b"R c1x0.2 3\n".len();
        // Every cut inside the body: an error naming the chunk, never a panic or a result.
        for cut in header..bytes.len() {
            match parse_record(&bytes[..cut]) {
                Err(BadRecord {
                    chunk: Some((job, chunk)),
                    why,
                }) => {
                    assert_eq!((job.as_str(), chunk), ("c1x0.2", 3));
                    assert!(why.contains("cannot read"), "{why}");
                }
                Err(other) => panic!("cut at {cut}: {other:?}"),
                Ok(_) => panic!("cut at {cut} of {}: decoded", bytes.len()),
            }
        }
    }

    #[test]
    fn a_chunks_setup_travels_with_it() {
        let spec = ChunkSpec {
            module: "ab".into(),
            task: "square".into(),
            items: Packed::one(&[0x91, 0x02]),
            call: true,
            limits: Limits::default(),
            setup: WorkerSetup {
                initializer: Some(("counter".into(), vec![0x90])),
                maxtasksperchild: Some(3),
                output: HostOutput::Tagged,
                grants: crate::Grants::new()
                    .dir_read_only("/srv/data", "/data")
                    .env("A", "b"),
            },
            capture: true,
        };
        let bytes = postcard::to_stdvec(&spec).unwrap();
        let back: ChunkSpec = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.setup, spec.setup);
        assert!(back.capture && back.call);
        assert!(postcard::from_bytes::<ChunkSpec>(&bytes[..bytes.len() - 1]).is_err());
    }
}
