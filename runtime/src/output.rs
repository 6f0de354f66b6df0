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
    Tagged,
    /// Keep it in memory; read it back from the handle (e.g. [`Process::output`](crate::Process::output)).
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

/// Routes output chunks, keeping partial lines for tagging.
#[derive(Debug, Default)]
pub(crate) struct OutputRouter {
    pub captured: Captured,
    partial: [Vec<u8>; 2],
}

impl OutputRouter {
    pub fn route(&mut self, mode: &Output, event: OutputEvent<'_>) {
        match mode {
            Output::Inherit => write_to(event.stream, event.data),
            Output::Discard => {}
            Output::Capture => match event.stream {
                Stream::Stdout => self.captured.stdout.extend_from_slice(event.data),
                Stream::Stderr => self.captured.stderr.extend_from_slice(event.data),
            },
            Output::Callback(f) => f(event),
            Output::Tagged => {
                let slot = &mut self.partial[event.stream as usize];
                slot.extend_from_slice(event.data);
                let mut out = Vec::new();
                while let Some(nl) = slot.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = slot.drain(..=nl).collect();
                    tag_line(&mut out, &event, &line);
                }
                write_to(event.stream, &out);
            }
        }
    }

    /// Writes out a trailing partial line (tagged mode) once the task is over.
    pub fn finish(&mut self, mode: &Output, pid: u32, process: &str, task: &str) {
        if !matches!(mode, Output::Tagged) {
            return;
        }
        for stream in [Stream::Stdout, Stream::Stderr] {
            let slot = std::mem::take(&mut self.partial[stream as usize]);
            if !slot.is_empty() {
                let mut out = Vec::new();
                let event = OutputEvent {
                    pid,
                    process,
                    task,
                    stream,
                    data: &[],
                };
                tag_line(&mut out, &event, &slot);
                out.push(b'\n');
                write_to(stream, &out);
            }
        }
    }
}

fn tag_line(out: &mut Vec<u8>, event: &OutputEvent<'_>, line: &[u8]) {
    out.extend_from_slice(format!("[{} {} {}] ", event.process, event.pid, event.task).as_bytes());
    out.extend_from_slice(line);
}

fn write_to(stream: Stream, data: &[u8]) {
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(data).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(data),
    };
}
