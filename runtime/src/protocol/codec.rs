//! The codec of frames between the host and a worker process.
//!
//! One Unix stream socket per worker carries length-delimited frames: a 4-byte little-endian
//! length, then that many bytes of postcard. Both ends are this crate, so postcard's compact,
//! schema-less encoding is safe to use. A frame longer than [`MAX_FRAME`] is refused before
//! anything is allocated for it, and a frame that does not decode closes the channel: the
//! peer is treated as lost, never trusted further.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts (64 MiB): arguments and results travel inside frames.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// The largest result one item may return (64 MiB less room for the frame around it): a
/// larger one fails that item with an error naming both sizes, and its worker goes on.
pub(crate) const MAX_RESULT: usize = MAX_FRAME - (64 << 10);

/// A batch's items, and its answers, travel in frames of about this many bytes at most
/// (16 MiB): a chunk whose items are larger together is cut into smaller chunks before it is
/// sent, and a worker sends the answers of a batch in parts as they add up to this much, so
/// the items and the answers that fit a frame arrive whatever the others weigh.
pub(crate) const PART_BYTES: usize = 16 << 20;

/// How much of a frame's body is allocated ahead of the bytes that arrive (1 MiB).
pub(super) const READ_CHUNK: usize = 1 << 20;

/// Appends one encoded frame to `buf`.
pub(crate) fn encode_frame<T: Serialize>(buf: &mut Vec<u8>, msg: &T) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let encoded = postcard::to_extend(msg, std::mem::take(buf));
    let mut out = encoded.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        *buf = out;
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds the {MAX_FRAME} byte limit"),
        ));
    }
    let len = u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    *buf = out;
    Ok(())
}

/// Writes one frame.
pub(crate) fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, msg)?;
    w.write_all(&buf)
}

/// Where frames are read from. Between frames a read waits as long as the peer takes (a
/// task may run for hours before its answer); a source may bound the wait inside a frame.
pub(crate) trait FrameSource: Read {
    /// A frame has begun: reads until [`frame_done`](FrameSource::frame_done) are inside it.
    fn frame_begun(&mut self) {}
    /// The frame is complete.
    fn frame_done(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FrameSource for &[u8] {}
impl FrameSource for UnixStream {}
impl<R: Read> FrameSource for BufReader<R> {}

/// A worker's socket as the host reads it: a worker that sends part of a frame and then
/// nothing for the stall limit (its runtime's, 10 s by default) is treated as broken, so a
/// worker that stops half-way through a frame, yet stays alive, cannot hold its task (and
/// its caller) forever. Waits between frames are not limited.
pub(crate) struct WorkerReader {
    inner: BufReader<UnixStream>,
    stall: Duration,
    in_frame: bool,
    /// Whether the socket's read timeout is set (only while a frame needs the socket).
    armed: bool,
}

impl WorkerReader {
    pub fn new(sock: UnixStream, stall: Duration) -> Self {
        WorkerReader {
            inner: BufReader::with_capacity(64 << 10, sock),
            stall,
            in_frame: false,
            armed: false,
        }
    }

    /// Whether bytes of a next frame are already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

impl Read for WorkerReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let stall = self.stall;
        // Frames read from the buffer cost no system call; the timeout is set only when
        // the rest of a frame must come from the socket.
        if self.in_frame && !self.armed && self.inner.buffer().is_empty() {
            self.inner.get_ref().set_read_timeout(Some(stall))?;
            self.armed = true;
        }
        self.inner.read(out).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if self.in_frame => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("part of a frame, then nothing for {stall:?}"),
            ),
            _ => e,
        })
    }
}

impl FrameSource for WorkerReader {
    fn frame_begun(&mut self) {
        self.in_frame = true;
    }

    fn frame_done(&mut self) -> io::Result<()> {
        self.in_frame = false;
        if self.armed {
            self.armed = false;
            self.inner.get_ref().set_read_timeout(None)?;
        }
        Ok(())
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame<R: FrameSource, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    // End of file before a frame is the peer closing; inside the header it is a cut frame.
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame header cut short after {got} of 4 bytes"),
                ));
            }
            Ok(n) => {
                if got == 0 {
                    r.frame_begun();
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME} byte limit"),
        ));
    }
    // The body is read a chunk at a time, so a header announcing more than the peer sends
    // costs memory only for what actually arrived.
    buf.clear();
    while buf.len() < len {
        let filled = buf.len();
        buf.resize(filled + (len - filled).min(READ_CHUNK), 0);
        r.read_exact(&mut buf[filled..])
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame of {len} bytes cut short"),
                ),
                _ => e,
            })?;
    }
    r.frame_done()?;
    decode_frame(buf).map(Some)
}

/// Decodes a frame body; anything malformed, trailing bytes included, is an `InvalidData`
/// error.
pub(crate) fn decode_frame<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    let malformed = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| malformed(format!("malformed frame: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "malformed frame: trailing bytes after the message ({})",
            rest.len()
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use wasmpool_objects::wire::{Handle, Request};

    use super::*;
    use crate::protocol::{
        CallEvent, CallRequest, Control, FromWorker, Limits, ObjectCall, Stream, ToWorker,
    };

    #[test]
    fn a_request_with_more_items_than_any_limit_allows_does_not_decode() {
        use wasmpool_objects::wire::MAX_REQUEST_ITEMS;
        let frame_of = |items: usize| {
            let mut wire = Vec::new();
            let msg = FromWorker::Object(ObjectCall::Invoke {
                req: 1,
                target: Handle { id: 2, token: 3 },
                request: Request::ListExtend(vec![Vec::new(); items]),
                timeout_ms: None,
                posted: false,
            });
            encode_frame(&mut wire, &msg).unwrap();
            wire
        };
        // One byte per empty item on the wire, far more in memory once decoded: refused from
        // the announced count, before anything is allocated for the items.
        let over = frame_of(MAX_REQUEST_ITEMS + 1);
        let err = read_frame::<_, FromWorker>(&mut over.as_slice(), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let at = frame_of(MAX_REQUEST_ITEMS);
        let ok = read_frame::<_, FromWorker>(&mut at.as_slice(), &mut Vec::new()).unwrap();
        assert!(matches!(
            ok,
            Some(FromWorker::Object(ObjectCall::Invoke { request: Request::ListExtend(items), .. }))
                if items.len() == MAX_REQUEST_ITEMS
        ));
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        let msg = ToWorker::Call(CallRequest::One {
            id: 7,
            task: "square".into(),
            args: vec![0x91, 7],
            exit_after: false,
            limits: Limits::default(),
        });
        write_frame(&mut wire, &msg).unwrap();
        let mut buf = Vec::new();
        let back: ToWorker = read_frame(&mut wire.as_slice(), &mut buf).unwrap().unwrap();
        assert!(
            matches!(back, ToWorker::Call(CallRequest::One { id: 7, ref task, .. }) if task == "square")
        );
    }

    #[test]
    fn an_answers_run_figures_round_trip_and_a_cut_one_is_an_error() {
        use crate::protocol::Outcome;
        use crate::protocol::packed::BatchAnswers;
        for peak in [0, 1, 40 << 20, u64::MAX] {
            let done = FromWorker::Call(CallEvent::Done {
                id: 9,
                outcome: Outcome::Ok(vec![0x2a]),
                fuel: Some(3),
                micros: 77,
                peak_memory: peak,
            });
            let mut answers = BatchAnswers::default();
            answers.push(Outcome::Ok(vec![1]));
            let batch = FromWorker::Call(CallEvent::BatchDone {
                id: 10,
                answers,
                fuel: None,
                micros: 78,
                peak_memory: peak,
            });
            for msg in [done, batch] {
                let mut wire = Vec::new();
                write_frame(&mut wire, &msg).unwrap();
                let back: FromWorker = read_frame(&mut wire.as_slice(), &mut Vec::new())
                    .unwrap()
                    .unwrap();
                match back {
                    FromWorker::Call(CallEvent::Done {
                        micros: 77,
                        peak_memory,
                        ..
                    })
                    | FromWorker::Call(CallEvent::BatchDone {
                        micros: 78,
                        peak_memory,
                        ..
                    }) => assert_eq!(peak_memory, peak),
                    other => panic!("{other:?}"),
                }
                // The last field cut off (a frame of a layout without it, or cut short
                // inside it): an error, never a frame with a made-up value.
                let body = &wire[4..];
                let err = decode_frame::<FromWorker>(&body[..body.len() - 1]).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let wire = (u32::MAX).to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame::<_, ToWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn garbage_body_is_an_error_not_a_panic() {
        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut buf = Vec::new();
        assert!(read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &ToWorker::Control(Control::Shutdown)).unwrap();
        wire[0] += 1;
        wire.push(0);
        let mut buf = Vec::new();
        let err = read_frame::<_, ToWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[1, 2]);
        let mut buf = Vec::new();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn end_of_file_is_clean_between_frames_and_an_error_inside_a_header() {
        let mut buf = Vec::new();
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<_, FromWorker>(&mut &*empty, &mut buf),
            Ok(None)
        ));
        for cut in 1..4 {
            let wire = 10u32.to_le_bytes();
            let err = read_frame::<_, FromWorker>(&mut &wire[..cut], &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert!(err.to_string().contains("header cut short"), "{err}");
        }
    }

    #[test]
    fn max_frame_header_allocates_only_what_arrives() {
        let mut wire = (MAX_FRAME as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 100]);
        let mut buf = Vec::new();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            buf.capacity() <= READ_CHUNK,
            "{} bytes held",
            buf.capacity()
        );

        let wire = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn frames_larger_than_a_read_chunk_round_trip() {
        let data: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        let msg = FromWorker::Call(CallEvent::Output {
            id: 9,
            stream: Stream::Stderr,
            data: data.clone(),
        });
        write_frame(&mut wire, &msg).unwrap();
        write_frame(&mut wire, &FromWorker::Object(ObjectCall::InstanceLost)).unwrap();
        let mut reader = wire.as_slice();
        let mut buf = Vec::new();
        match read_frame::<_, FromWorker>(&mut reader, &mut buf).unwrap() {
            Some(FromWorker::Call(CallEvent::Output {
                id: 9,
                stream: Stream::Stderr,
                data: back,
            })) => assert!(back == data, "the data changed"),
            other => panic!("unexpected {other:?}"),
        }
        let next = read_frame::<_, FromWorker>(&mut reader, &mut buf).unwrap();
        assert!(matches!(
            next,
            Some(FromWorker::Object(ObjectCall::InstanceLost))
        ));
        assert!(
            read_frame::<_, FromWorker>(&mut reader, &mut buf)
                .unwrap()
                .is_none()
        );
    }
}
