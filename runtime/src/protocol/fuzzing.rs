//! Entry points for fuzzing the frame decoders (the `fuzz/` crate) and for tests that do what
//! the fuzzer does.
//!
//! **Not part of the stable API**: hidden from the documentation, and free to change or
//! vanish in any release. It exposes only "bytes in, verdict out", never the frame types.

use std::io;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    CallEvent, CallRequest, Control, FromWorker, ObjectAnswer, ObjectCall, Status, ToWorker,
    decode_frame, encode_frame, read_frame,
};

/// What reading a byte stream as frames came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The kinds of the frames that decoded, in order (`"Call"`, `"Done"`, …).
    pub kinds: Vec<&'static str>,
    /// `None` at a clean end of the stream, else the error that closed the channel.
    pub error: Option<io::ErrorKind>,
    /// The most memory the frame buffer held at any point, in bytes.
    pub buffer_capacity: usize,
}

/// Reads `stream` as a worker reads its socket (host → worker frames), frame by frame,
/// until its end or the first error (which closes the channel).
///
/// # Panics
///
/// Only if a frame that decoded does not survive being encoded and decoded again: a bug
/// in the protocol, which is what the fuzzer looks for. Never on malformed input.
pub fn read_to_worker(stream: &[u8]) -> Decoded {
    read_all::<ToWorker>(stream, ToWorker::kind)
}

/// Reads `stream` as the host reads a worker's socket (worker → host frames); as
/// [`read_to_worker`].
///
/// # Panics
///
/// As [`read_to_worker`].
pub fn read_from_worker(stream: &[u8]) -> Decoded {
    read_all::<FromWorker>(stream, FromWorker::kind)
}

/// Decodes `body` as the body of one host → worker frame (no length header); returns the
/// frame's kind if it decoded.
///
/// # Panics
///
/// As [`read_to_worker`].
pub fn decode_to_worker(body: &[u8]) -> Option<&'static str> {
    decode_one::<ToWorker>(body, ToWorker::kind)
}

/// Decodes `body` as the body of one worker → host frame; as [`decode_to_worker`].
///
/// # Panics
///
/// As [`read_to_worker`].
pub fn decode_from_worker(body: &[u8]) -> Option<&'static str> {
    decode_one::<FromWorker>(body, FromWorker::kind)
}

fn read_all<T: Serialize + DeserializeOwned>(
    stream: &[u8],
    kind: fn(&T) -> &'static str,
) -> Decoded {
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut decoded = Decoded {
        kinds: Vec::new(),
        error: None,
        buffer_capacity: 0,
    };
    loop {
        let frame = read_frame::<_, T>(&mut reader, &mut buf);
        decoded.buffer_capacity = decoded.buffer_capacity.max(buf.capacity());
        match frame {
            Ok(Some(msg)) => {
                check_round_trip(&msg);
                decoded.kinds.push(kind(&msg));
            }
            Ok(None) => return decoded,
            Err(e) => {
                decoded.error = Some(e.kind());
                return decoded;
            }
        }
    }
}

fn decode_one<T: Serialize + DeserializeOwned>(
    body: &[u8],
    kind: fn(&T) -> &'static str,
) -> Option<&'static str> {
    let msg = decode_frame::<T>(body).ok()?;
    check_round_trip(&msg);
    Some(kind(&msg))
}

/// A decoded frame encodes again, and that encoding decodes to a frame that encodes the
/// same way.
fn check_round_trip<T: Serialize + DeserializeOwned>(msg: &T) {
    let mut first = Vec::new();
    if let Err(e) = encode_frame(&mut first, msg) {
        panic!("a decoded frame does not encode again: {e}");
    }
    let again: T = match read_frame(&mut first.as_slice(), &mut Vec::new()) {
        Ok(Some(again)) => again,
        other => panic!("a re-encoded frame does not decode: {:?}", other.err()),
    };
    let mut second = Vec::new();
    if let Err(e) = encode_frame(&mut second, &again) {
        panic!("a re-decoded frame does not encode again: {e}");
    }
    assert_eq!(first, second, "a frame changes across encode and decode");
}

impl ToWorker {
    fn kind(&self) -> &'static str {
        match self {
            ToWorker::Control(Control::Load(_)) => "Load",
            ToWorker::Control(Control::Rename(_)) => "Rename",
            ToWorker::Control(Control::Grant(_)) => "Grant",
            ToWorker::Control(Control::Shutdown) => "Shutdown",
            ToWorker::Control(Control::Skip(_)) => "Skip",
            ToWorker::Call(CallRequest::One { .. }) => "Call",
            ToWorker::Call(CallRequest::Batch { .. }) => "CallBatch",
            ToWorker::Object(ObjectAnswer::Reply { .. }) => "ObjectReply",
            ToWorker::Object(ObjectAnswer::Refused { .. }) => "ObjectRefused",
            ToWorker::Object(ObjectAnswer::Attached { .. }) => "Attached",
        }
    }
}

impl FromWorker {
    fn kind(&self) -> &'static str {
        match self {
            FromWorker::Control(Status::Ready { .. }) => "Ready",
            FromWorker::Control(Status::LoadFailed(_)) => "LoadFailed",
            FromWorker::Control(Status::Alive) => "Alive",
            FromWorker::Call(CallEvent::Output { .. }) => "Output",
            FromWorker::Call(CallEvent::Done { .. }) => "Done",
            FromWorker::Call(CallEvent::BatchPart { .. }) => "BatchPart",
            FromWorker::Call(CallEvent::BatchDone { .. }) => "BatchDone",
            FromWorker::Object(ObjectCall::Invoke { .. }) => "Object",
            FromWorker::Object(ObjectCall::Sync { .. }) => "ObjectSync",
            FromWorker::Object(ObjectCall::Attach { .. }) => "Attach",
            FromWorker::Object(ObjectCall::InstanceLost) => "InstanceLost",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::codec::READ_CHUNK;
    use crate::protocol::{
        CallEvent, CallRequest, Control, FromWorker, Limits, Load, MAX_FRAME, ObjectAnswer,
        ObjectCall, Outcome, Status, Stream, ToWorker, encode_frame, fuzzing,
    };

    /// Valid streams with every kind of frame in each direction, with every optional part.
    fn sample_streams() -> (Vec<u8>, Vec<u8>) {
        use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};
        let limits = Limits::default()
            .timeout(std::time::Duration::from_millis(1500))
            .memory_mib(64);
        let to_worker = [
            ToWorker::Control(Control::Load(Load {
                artifact: "/cache/artifacts/0123.cwasm".into(),
                name: "PoolWorker-1".into(),
                engine: crate::engine::EngineKind {
                    metered: true,
                    interruptible: true,
                },
                stack_bytes: 256 << 10,
                init_limits: Limits::default().timeout(Duration::from_secs(2)),
            })),
            ToWorker::Control(Control::Rename("Process-2".into())),
            ToWorker::Control(Control::Grant(
                crate::grants::Grants::new()
                    .dir_read_only("/srv/data", "/data")
                    .env("GREETING", "hello"),
            )),
            ToWorker::Call(CallRequest::One {
                id: 300,
                task: "square".into(),
                args: vec![0x91, 7],
                exit_after: true,
                limits,
            }),
            ToWorker::Call(CallRequest::Batch {
                id: u64::MAX,
                task: "add".into(),
                items: [vec![0x92, 1, 2], vec![], vec![0x91, 0xcc, 0xff]]
                    .into_iter()
                    .collect(),
                limits: Limits::default(),
            }),
            ToWorker::Object(ObjectAnswer::Reply {
                req: 1,
                result: Ok(Response::Entries(vec![(vec![1], vec![2, 3])])),
                postable: false,
            }),
            ToWorker::Object(ObjectAnswer::Reply {
                req: 2,
                result: Err(ObjectError::Closed("gone".into())),
                postable: true,
            }),
            ToWorker::Object(ObjectAnswer::Refused {
                req: 3 | (1 << 63),
                target: Handle { id: 4, token: 5 },
                error: ObjectError::Closed("the queue is closed".into()),
            }),
            ToWorker::Control(Control::Shutdown),
            ToWorker::Control(Control::Skip(vec![7, u64::MAX])),
        ];
        let from_worker = [
            FromWorker::Control(Status::Ready {
                tasks: vec!["square".into(), "add".into()],
            }),
            FromWorker::Control(Status::LoadFailed("no such task".into())),
            FromWorker::Call(CallEvent::Output {
                id: 3,
                stream: Stream::Stdout,
                data: b"hello\n".to_vec(),
            }),
            FromWorker::Call(CallEvent::Done {
                id: 3,
                outcome: Outcome::Ok(vec![0x31]),
                fuel: Some(1_234),
                micros: 56,
                peak_memory: 17 << 20,
            }),
            FromWorker::Call(CallEvent::BatchPart {
                id: 4,
                answers: {
                    let mut a = crate::protocol::packed::BatchAnswers::default();
                    a.push(Outcome::Ok(vec![0x01, 0x02]));
                    a.push(Outcome::Limit("too large".into()));
                    a
                },
            }),
            FromWorker::Call(CallEvent::BatchDone {
                id: 4,
                fuel: None,
                micros: 1_000_000,
                peak_memory: u64::MAX,
                answers: {
                    let mut a = crate::protocol::packed::BatchAnswers::default();
                    for outcome in [
                        Outcome::Ok(vec![0x07]),
                        Outcome::Failed("boom".into()),
                        Outcome::UnknownTask,
                        Outcome::BadArgs("not an int".into()),
                        Outcome::Trap("unreachable".into()),
                        Outcome::Limit("time limit".into()),
                    ] {
                        a.push(outcome);
                    }
                    a
                },
            }),
            FromWorker::Object(ObjectCall::InstanceLost),
            FromWorker::Control(Status::Alive),
            FromWorker::Object(ObjectCall::Invoke {
                req: 5,
                target: Handle {
                    id: 8,
                    token: 0xdead_beef,
                },
                request: Request::DictCompareAndSwap {
                    key: vec![0xa1, b'k'],
                    expected: Some(vec![1]),
                    new: vec![2],
                },
                timeout_ms: Some(250),
                posted: true,
            }),
            FromWorker::Object(ObjectCall::Sync { req: 6 }),
        ];
        let mut a = Vec::new();
        for msg in &to_worker {
            encode_frame(&mut a, msg).unwrap();
        }
        let mut b = Vec::new();
        for msg in &from_worker {
            encode_frame(&mut b, msg).unwrap();
        }
        (a, b)
    }

    /// xorshift64: deterministic pseudo-random numbers, without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// One to four random edits of `input`: bit flips, overwritten, inserted and removed
    /// bytes, a cut, a repeated slice, a forged length header.
    fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            match rng.below(7) {
                0 if !input.is_empty() => input[at] ^= 1 << rng.below(8),
                1 if !input.is_empty() => input[at] = rng.next() as u8,
                2 => input.insert(at.min(input.len()), rng.next() as u8),
                3 if !input.is_empty() => {
                    input.remove(at);
                }
                4 => input.truncate(at),
                5 if !input.is_empty() => {
                    let end = (at + 1 + rng.below(16)).min(input.len());
                    let slice = input[at..end].to_vec();
                    input.splice(at..at, slice);
                }
                _ if input.len() >= at + 4 => {
                    let len = match rng.below(3) {
                        0 => rng.below(64) as u32,
                        1 => rng.below(MAX_FRAME + 1) as u32,
                        _ => rng.next() as u32,
                    };
                    input[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
                _ => {}
            }
        }
        input
    }

    /// What the fuzz target does, over a few thousand deterministic inputs, so that CI runs
    /// it: every input decodes or fails cleanly, never panics, and the frame buffer never
    /// holds much more than the input.
    #[test]
    fn random_and_mutated_frames_fail_cleanly() {
        let (to_worker, from_worker) = sample_streams();
        // The samples themselves decode whole.
        let whole = fuzzing::read_to_worker(&to_worker);
        assert_eq!(whole.error, None);
        assert_eq!(whole.kinds.len(), 10);
        let whole = fuzzing::read_from_worker(&from_worker);
        assert_eq!(whole.error, None);
        assert_eq!(whole.kinds.len(), 10);

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut kinds = std::collections::BTreeSet::new();
        let (mut frames, mut errors) = (0, 0);
        for i in 0..8000 {
            let input = match i % 4 {
                // Noise.
                0 => {
                    let n = rng.below(64);
                    rng.bytes(n)
                }
                // A noise body behind a header that fits it, to reach the decoder.
                1 => {
                    let body = {
                        let n = rng.below(48);
                        rng.bytes(n)
                    };
                    let mut input = (body.len() as u32).to_le_bytes().to_vec();
                    input.extend_from_slice(&body);
                    input
                }
                2 => mutate(&mut rng, to_worker.clone()),
                _ => mutate(&mut rng, from_worker.clone()),
            };
            for decoded in [
                fuzzing::read_to_worker(&input),
                fuzzing::read_from_worker(&input),
            ] {
                assert!(
                    decoded.buffer_capacity <= 2 * (input.len() + READ_CHUNK),
                    "input {i}: {} bytes held for {} bytes of input",
                    decoded.buffer_capacity,
                    input.len()
                );
                frames += decoded.kinds.len();
                errors += usize::from(decoded.error.is_some());
                kinds.extend(decoded.kinds);
            }
            let body = input.get(4..).unwrap_or_default();
            kinds.extend(fuzzing::decode_to_worker(body));
            kinds.extend(fuzzing::decode_from_worker(body));
        }
        // The inputs reached the decoders, both ways, not just the length check.
        assert!(frames > 5000, "only {frames} frames decoded");
        assert!(errors > 4000, "only {errors} inputs failed");
        for kind in [
            "Load",
            "Rename",
            "Grant",
            "Call",
            "CallBatch",
            "Shutdown",
            "Skip",
            "ObjectReply",
            "ObjectRefused",
            "Ready",
            "LoadFailed",
            "Output",
            "Done",
            "BatchPart",
            "BatchDone",
            "InstanceLost",
            "Alive",
            "Object",
            "ObjectSync",
        ] {
            assert!(kinds.contains(kind), "no {kind} frame decoded: {kinds:?}");
        }
    }
}
