//! Where a guest's stdout and stderr go.

use std::io::Write;
use std::sync::Arc;

pub use crate::protocol::Stream;

/// A chunk of guest output with its origin: which worker process, which task.
#[derive(Debug, Clone, Copy)]
pub struct OutputEvent<'a> {
    /// The worker's OS process id.
    pub pid: u32,
    /// The process name (`Process-1`, …).
    pub process: &'a str,
    /// The task that wrote it.
    pub task: &'a str,
    /// Stdout or stderr.
    pub stream: Stream,
    /// The bytes, as the guest wrote them (usually whole lines: Rust's stdout is line-buffered).
    pub data: &'a [u8],
}

/// What to do with a guest's output.
#[derive(Clone, Default)]
pub enum Output {
    /// Write it to this program's stdout/stderr as the guest wrote it (as Python's children do).
    #[default]
    Inherit,
    /// Write it to this program's stdout/stderr, each line prefixed `[name pid task] `.
    ///
    /// A line longer than [`TAGGED_PIECE_BYTES`] is written in pieces of at most that many
    /// bytes (cut before a UTF-8 character that would not fit), each on a line of its own;
    /// every piece after the first is tagged `[name pid task +] `, so a reader can join
    /// them. The host holds back at most one piece per stream: a task that writes one
    /// endless line costs it no more memory than that, and time linear in the bytes.
    Tagged,
    /// Keep it in memory; read it back from the handle (e.g.
    /// [`Process::captured_output`](crate::Process::captured_output)).
    Capture,
    /// Drop it.
    Discard,
    /// Hand every chunk to a function, on the worker's supervisor thread.
    Callback(Arc<dyn Fn(OutputEvent<'_>) + Send + Sync>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Inherit => "Inherit",
            Output::Tagged => "Tagged",
            Output::Capture => "Capture",
            Output::Discard => "Discard",
            Output::Callback(_) => "Callback",
        })
    }
}

/// Output kept by [`Output::Capture`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Everything the guest wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the guest wrote to stderr.
    pub stderr: Vec<u8>,
}

/// The most bytes of one line [`Output::Tagged`] holds back before writing them as a piece
/// of the line (64 KiB).
pub const TAGGED_PIECE_BYTES: usize = 64 << 10;

/// Routes output chunks, keeping partial lines for tagging.
#[derive(Debug, Default)]
pub(crate) struct OutputRouter {
    pub captured: Captured,
    /// Per stream: the start of a line not yet written, at most [`TAGGED_PIECE_BYTES`].
    partial: [Vec<u8>; 2],
    /// Per stream: whether the partial line continues a piece already written.
    continued: [bool; 2],
}

impl OutputRouter {
    /// Routes one chunk. An empty chunk is the worker saying that a call ended inside a
    /// line: a line held back for tagging is written out now (with the task that wrote it).
    pub fn route(&mut self, mode: &Output, event: OutputEvent<'_>) {
        if event.data.is_empty() {
            if matches!(mode, Output::Tagged)
                && let Some(out) =
                    self.finish_stream(event.stream, event.pid, event.process, event.task)
            {
                write_to(event.stream, &out);
            }
            return;
        }
        match mode {
            Output::Inherit => write_to(event.stream, event.data),
            Output::Discard => {}
            Output::Capture => match event.stream {
                Stream::Stdout => self.captured.stdout.extend_from_slice(event.data),
                Stream::Stderr => self.captured.stderr.extend_from_slice(event.data),
            },
            Output::Callback(f) => f(event),
            Output::Tagged => {
                let out = self.tag(&event);
                write_to(event.stream, &out);
            }
        }
    }

    /// The tagged lines (and pieces of lines) `event` completes; the rest of its data is
    /// held back. Linear in the event's bytes: each byte is looked at once.
    fn tag(&mut self, event: &OutputEvent<'_>) -> Vec<u8> {
        let i = event.stream as usize;
        let mut out = Vec::with_capacity(event.data.len() + 64);
        let mut data = event.data;
        while !data.is_empty() {
            let slot = &mut self.partial[i];
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) if slot.len() + nl <= TAGGED_PIECE_BYTES => {
                    tag_into(&mut out, event, self.continued[i]);
                    out.extend_from_slice(slot);
                    out.extend_from_slice(&data[..=nl]);
                    slot.clear();
                    self.continued[i] = false;
                    data = &data[nl + 1..];
                }
                // The line (up to its newline, or all that is here) does not fit what is
                // held back: write a piece of it.
                _ if slot.len() + data.len() > TAGGED_PIECE_BYTES => {
                    let take = TAGGED_PIECE_BYTES - slot.len();
                    tag_into(&mut out, event, self.continued[i]);
                    let start = out.len();
                    out.extend_from_slice(slot);
                    out.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    // A character cut in two waits for the next piece.
                    let keep = incomplete_tail(&out[start..]);
                    slot.clear();
                    slot.extend_from_slice(&out[out.len() - keep..]);
                    out.truncate(out.len() - keep);
                    out.push(b'\n');
                    self.continued[i] = true;
                }
                _ => {
                    if slot.capacity() < TAGGED_PIECE_BYTES {
                        slot.reserve_exact(TAGGED_PIECE_BYTES - slot.len());
                    }
                    slot.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        out
    }

    /// Writes out a trailing partial line (tagged mode) once the task is over.
    pub fn finish(&mut self, mode: &Output, pid: u32, process: &str, task: &str) {
        if !matches!(mode, Output::Tagged) {
            return;
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(out) = self.finish_stream(stream, pid, process, task) {
                write_to(stream, &out);
            }
        }
    }

    fn finish_stream(
        &mut self,
        stream: Stream,
        pid: u32,
        process: &str,
        task: &str,
    ) -> Option<Vec<u8>> {
        let i = stream as usize;
        let slot = std::mem::take(&mut self.partial[i]);
        let continued = std::mem::take(&mut self.continued[i]);
        if slot.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        let event = OutputEvent {
            pid,
            process,
            task,
            stream,
            data: &[],
        };
        tag_into(&mut out, &event, continued);
        out.extend_from_slice(&slot);
        out.push(b'\n');
        Some(out)
    }
}

/// How many bytes at the end of `piece` are the start of a UTF-8 character that continues
/// past it (0 if none, or if the bytes are not UTF-8 there).
fn incomplete_tail(piece: &[u8]) -> usize {
    for back in 1..=3.min(piece.len()) {
        let b = piece[piece.len() - back];
        if b & 0xc0 == 0x80 {
            continue; // a continuation byte: look further back for its lead
        }
        let needs = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 0,
        };
        return if needs > back { back } else { 0 };
    }
    0
}

fn tag_into(out: &mut Vec<u8>, event: &OutputEvent<'_>, continued: bool) {
    let more = if continued { " +" } else { "" };
    out.extend_from_slice(
        format!("[{} {} {}{more}] ", event.process, event.pid, event.task).as_bytes(),
    );
}

fn write_to(stream: Stream, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(data),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &[u8]) -> OutputEvent<'_> {
        OutputEvent {
            pid: 7,
            process: "P",
            task: "t",
            stream: Stream::Stdout,
            data,
        }
    }

    #[test]
    fn whole_lines_are_tagged_and_partial_ones_wait() {
        let mut r = OutputRouter::default();
        assert_eq!(r.tag(&event(b"a\nb")), b"[P 7 t] a\n");
        assert_eq!(r.tag(&event(b"c\n\nd")), b"[P 7 t] bc\n[P 7 t] \n");
        let rest = r.finish_stream(Stream::Stdout, 7, "P", "t").unwrap();
        assert_eq!(rest, b"[P 7 t] d\n");
        assert!(r.finish_stream(Stream::Stdout, 7, "P", "t").is_none());
    }

    #[test]
    fn an_endless_line_is_written_in_bounded_pieces_in_linear_time() {
        let mut r = OutputRouter::default();
        let chunk = vec![b'x'; 1000];
        let (mut written, mut lines) = (Vec::new(), 0usize);
        // 64 MiB in 1000-byte writes: quadratic work here would take hours.
        for _ in 0..(64 << 20) / 1000 {
            let out = r.tag(&event(&chunk));
            lines += out.iter().filter(|&&b| b == b'\n').count();
            written.extend_from_slice(&out);
            assert!(
                r.partial[0].capacity() <= TAGGED_PIECE_BYTES,
                "the held-back line stays bounded: {}",
                r.partial[0].capacity()
            );
            if written.len() > 1 << 20 {
                written.clear();
            }
        }
        let total = (64 << 20) / 1000 * 1000;
        assert_eq!(lines, total / TAGGED_PIECE_BYTES);
        let rest = r.finish_stream(Stream::Stdout, 7, "P", "t").unwrap();
        assert!(rest.starts_with(b"[P 7 t +] x"));
        assert_eq!(
            rest.len(),
            "[P 7 t +] ".len() + total % TAGGED_PIECE_BYTES + 1
        );
    }

    #[test]
    fn pieces_are_marked_and_keep_every_byte_and_every_character_whole() {
        let mut r = OutputRouter::default();
        // Three-byte characters, so a piece boundary falls inside one; then a newline.
        let text = "€".repeat(TAGGED_PIECE_BYTES);
        let mut out = r.tag(&event(text.as_bytes()));
        out.extend(r.tag(&event(b"!\nnext\n")));
        let out = String::from_utf8(out).expect("no character is cut in two");
        let lines: Vec<&str> = out.lines().collect();
        let (next, pieces) = lines.split_last().unwrap();
        assert_eq!(*next, "[P 7 t] next");
        assert!(
            pieces.len() >= 3,
            "a line of 192 KiB is at least three pieces"
        );
        assert!(pieces[0].starts_with("[P 7 t] €"));
        assert!(pieces[1..].iter().all(|l| l.starts_with("[P 7 t +] ")));
        assert!(pieces.last().unwrap().ends_with("€!"));
        let joined: String = pieces
            .iter()
            .map(|l| l.split_once("] ").unwrap().1)
            .collect();
        assert_eq!(joined, format!("{text}!"));
        assert!(lines.iter().all(|l| l.len() <= TAGGED_PIECE_BYTES + 16));
    }

    #[test]
    fn an_empty_chunk_ends_the_line_held_back_for_tagging() {
        let mut r = OutputRouter::default();
        assert!(r.tag(&event(b"no newline")).is_empty());
        // The worker's word that the call ended inside a line: it is written now.
        r.route(&Output::Tagged, event(b""));
        assert!(r.partial[0].is_empty());
        assert!(r.finish_stream(Stream::Stdout, 7, "P", "t").is_none());
        // Other modes have nothing held back, and a callback is not called for it.
        let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = called.clone();
        let cb = Output::Callback(Arc::new(move |_| {
            c.store(true, std::sync::atomic::Ordering::Relaxed)
        }));
        r.route(&cb, event(b""));
        assert!(!called.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn a_line_of_exactly_one_piece_is_one_line() {
        let mut r = OutputRouter::default();
        let line = vec![b'y'; TAGGED_PIECE_BYTES];
        assert!(r.tag(&event(&line)).is_empty());
        let out = r.tag(&event(b"\n"));
        assert_eq!(out.len(), "[P 7 t] ".len() + TAGGED_PIECE_BYTES + 1);
        assert!(!out.starts_with(b"[P 7 t +]"));
    }
}
