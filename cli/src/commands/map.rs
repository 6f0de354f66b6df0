//! `wasmpool map MODULE TASK`: apply a task to many inputs in a pool of worker processes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use wasmpool::cluster::ClusterPool;
use wasmpool::lines::{Items, Lines, LinesError, RecordWriter};
use wasmpool::{BuildOptions, Module, Output, Pool};

/// Apply a task to every input in a pool of worker processes; write JSON lines.
///
/// Each output line is `{"input": …, "result": …}` or `{"input": …, "error": "…"}`, in input
/// order (or as they finish, with --unordered). The tasks' own output goes to stderr. A progress bar shows on a terminal. Exit
/// status: 0 if every item succeeded, 1 if any failed (with a summary line), 2 for bad input,
/// 130 if interrupted (Ctrl-C stops the workers and keeps what was written).
#[derive(Args)]
pub struct MapCommand {
    /// A `.wasm` component, a guest Cargo project directory, or a Python guest (a `.py` file, or a
    /// project with `[tool.wasmpool]` in its pyproject.toml); guests are built for you.
    module: PathBuf,
    /// The task to apply.
    task: String,
    /// Integer inputs `A..B` (B excluded), each the task's one argument.
    #[arg(
        long,
        value_name = "A..B",
        conflicts_with = "input",
        allow_hyphen_values = true
    )]
    range: Option<String>,
    /// JSON-lines inputs: a file, or `-` for stdin. Each line is the task's one argument
    /// (with --star, a JSON array of its arguments).
    #[arg(long, value_name = "FILE")]
    input: Option<String>,
    /// Each input line is an array of positional arguments (Python's starmap).
    #[arg(long)]
    star: bool,
    /// Worker processes, 1 to 1024 (default: the number of CPUs).
    #[arg(short = 'j', long, allow_negative_numbers = true)]
    workers: Option<usize>,
    /// Inputs sent to a worker at a time, 1 to 1048576.
    #[arg(long, default_value_t = 64, allow_negative_numbers = true)]
    chunksize: usize,
    /// Write results as they finish rather than in input order.
    #[arg(long)]
    unordered: bool,
    #[command(flatten)]
    limits: super::LimitArgs,
    #[command(flatten)]
    grants: super::GrantArgs,
    #[command(flatten)]
    objects: super::objects::ObjectArgs,
    /// Run an input again, up to this many times, when the worker running it dies.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    retries: u32,
    /// Stop running a task once it has taken down this many workers in a row (its
    /// remaining inputs fail instead of killing worker after worker).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 5,
        allow_negative_numbers = true
    )]
    restart_limit: u32,
    /// Write the JSON lines here instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    server: super::remote::ServerArgs,
    /// Run on a cluster through its Redis, `redis://HOST:PORT`: the hosts that joined it
    /// (`wasmpool worker --join`) run the chunks, and --object makes its objects in Redis.
    /// The output is the same as a local map's; -j is then the slots the chunk size is
    /// reckoned for (default: those of the live hosts).
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// With --cluster: submit as this tenant, so only hosts joined with `--tenant T` or
    /// `--all-tenants` run its chunks.
    #[arg(long, value_name = "T", requires = "cluster")]
    tenant: Option<String>,
}

/// The pool a map runs in: local worker processes, or a cluster's hosts.
enum AnyPool {
    Local(Pool),
    Cluster(ClusterPool),
}

impl AnyPool {
    fn imap_encoded<'a>(
        &'a self,
        task: &str,
        items: impl Iterator<Item = wasmpool::Result<Vec<u8>>> + 'a,
        chunksize: usize,
        ordered: bool,
    ) -> wasmpool::Result<wasmpool::Imap<'a, ()>> {
        match self {
            AnyPool::Local(p) => p.imap_encoded(task, items, chunksize, ordered),
            AnyPool::Cluster(p) => p.imap_encoded(task, items, chunksize, ordered),
        }
    }

    fn terminate(&self) {
        match self {
            AnyPool::Local(p) => p.terminate(),
            AnyPool::Cluster(p) => p.terminate(),
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn parse_range(text: &str) -> Result<(i64, i64)> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--range must look like A..B, not `{text}`"))?;
    let a: i64 = a
        .trim()
        .parse()
        .with_context(|| format!("--range start `{a}` is not an integer"))?;
    let b: i64 = b
        .trim()
        .parse()
        .with_context(|| format!("--range end `{b}` is not an integer"))?;
    if b < a {
        bail!("--range {a}..{b} is empty backwards: the end must not be below the start");
    }
    Ok((a, b))
}

/// The progress line: a bar with an ETA when the number of inputs is known, a spinner with
/// the count and rate when it is not (an ETA of an unknown total would be a guess).
fn bar_template(total_known: bool) -> &'static str {
    if total_known {
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} ETA {eta}"
    } else {
        "{spinner} [{elapsed_precise}] {pos} done, {per_sec}"
    }
}

/// How many inputs a regular file holds (its lines with anything but blanks, as the map
/// reads them), read once without keeping them; `None` for anything else (a FIFO, a
/// device) or a file that cannot be read, whose inputs are then uncounted.
fn count_inputs(path: &std::path::Path) -> Option<u64> {
    // Looked at before opening: opening a FIFO that the map is already reading would wait
    // for another writer, perhaps forever.
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut reader = BufReader::with_capacity(1 << 16, File::open(path).ok()?);
    let (mut count, mut line) = (0u64, Vec::new());
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).ok()? == 0 {
            return Some(count);
        }
        // Blank as the map judges it: nothing but (Unicode) whitespace.
        if !wasmpool::lines::is_blank(&String::from_utf8_lossy(&line)) {
            count += 1;
        }
    }
}

impl MapCommand {
    /// Refuses a worker count, chunk size or restart limit out of range, by name, before
    /// anything starts (the library refuses them too, without the flags' names).
    fn check_counts(&self) -> Result<()> {
        if let Some(n) = self.workers
            && !(1..=Pool::MAX_PROCESSES).contains(&n)
        {
            bail!(
                "-j {n}: the number of worker processes must be from 1 to {} (each is an OS \
                 process with its own memory)",
                Pool::MAX_PROCESSES
            );
        }
        if !(1..=Pool::MAX_CHUNKSIZE).contains(&self.chunksize) {
            bail!(
                "--chunksize {}: the inputs sent to a worker at a time must be from 1 to {}",
                self.chunksize,
                Pool::MAX_CHUNKSIZE
            );
        }
        if self.restart_limit == 0 {
            bail!("--restart-limit must be at least 1");
        }
        Ok(())
    }

    pub fn execute(self) -> Result<ExitCode> {
        // Ctrl-C from here on stops the workers and keeps what was written.
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
        type Inputs = Box<dyn Iterator<Item = Result<Value, LinesError>>>;
        let (inputs, total): (Inputs, Option<u64>) = match (&self.range, &self.input) {
            (Some(r), _) => {
                let (a, b) = parse_range(r)?;
                // `b - a` overflows i64 for a range over most of it; the count fits u64.
                (Box::new((a..b).map(|n| Ok(json!(n)))), Some(b.abs_diff(a)))
            }
            (None, Some(path)) => {
                let reader: Box<dyn BufRead> = if path == "-" {
                    Box::new(BufReader::new(std::io::stdin()))
                } else {
                    Box::new(BufReader::new(
                        File::open(path).with_context(|| format!("cannot open --input {path}"))?,
                    ))
                };
                (Box::new(Lines::new(reader)), None)
            }
            (None, None) => {
                bail!("give the inputs with --range A..B or --input FILE (or - for stdin)")
            }
        };

        self.check_counts()?;
        if let Some(remote) = self.server.connect()? {
            if self.cluster.is_some() {
                anyhow::bail!("--cluster and --server cannot be used together");
            }
            return self.execute_remote(&remote, inputs);
        }
        let objects = self.objects.create(self.cluster.as_deref())?;
        let limits = self.limits.limits()?;
        // A local pool's code compiled at once for its limits (see `run`); on a cluster the
        // hosts compile their own, and this module only lists the tasks.
        let options = match self.cluster {
            None => BuildOptions::default().compile_for(&limits),
            Some(_) => BuildOptions::default(),
        };
        let module = Module::load_with(&self.module, &options)?;
        // Stdout carries the JSON lines: the tasks' own output goes to stderr, tagged.
        let to_stderr = Output::Callback(std::sync::Arc::new(|e: wasmpool::OutputEvent<'_>| {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(e.data);
        }));
        let mut builder = Pool::builder(&module)
            .limits(limits)
            .grants(self.grants.grants()?)
            .retries(self.retries)
            .restart_limit(self.restart_limit);
        if let Some(n) = self.workers {
            builder = builder.processes(n);
        }
        let pool = match &self.cluster {
            // The tasks' own output goes to the stderr of the host that runs them.
            Some(url) => {
                let mut cluster = builder.cluster(url);
                if let Some(t) = &self.tenant {
                    cluster = cluster.tenant(t);
                }
                AnyPool::Cluster(cluster.build()?)
            }
            None => AnyPool::Local(builder.output(to_stderr).build()?),
        };
        module.tasks()?;

        let out: Box<dyn Write> = match &self.output {
            Some(p) => Box::new(BufWriter::new(
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(BufWriter::new(std::io::stdout())),
        };
        let mut records = RecordWriter::new(&self.task, out);
        let bar = if std::io::stderr().is_terminal() {
            // A regular input file is counted first (one read, nothing kept), so the bar
            // has an end; stdin or a pipe gets a spinner with a rate and no ETA.
            let total = match (total, &self.input) {
                (Some(n), _) => Some(n),
                (None, Some(path)) if path != "-" => count_inputs(std::path::Path::new(path)),
                (None, _) => None,
            };
            let bar = match total {
                Some(n) => ProgressBar::new(n),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(bar_template(total.is_some()))
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        } else {
            ProgressBar::hidden()
        };

        // Each input is kept until its result is written next to it; the first bad input
        // ends the inputs (the items before it still run).
        let items = Items::new(inputs, &objects, self.star);
        let pending = items.pending();

        let mut fuel_used = None;
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<()> {
            // Ctrl-C: terminate the pool, which fails what is in flight and unblocks the loop.
            scope.spawn(|| {
                while !finished.load(Ordering::SeqCst) {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        pool.terminate();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let result = (|| -> Result<()> {
                let mut results =
                    pool.imap_encoded(&self.task, items, self.chunksize, !self.unordered)?;
                while let Some((index, result)) = results.next_indexed_bytes() {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        break;
                    }
                    // The result is streamed into the line (no tree of its values is built);
                    // one that does not decode fails its item, naming the task.
                    let input = pending.take(index).unwrap_or(Value::Null);
                    records.write(&input, result)?;
                    bar.inc(1);
                }
                fuel_used = results.fuel_used();
                Ok(())
            })();
            finished.store(true, Ordering::SeqCst);
            result
        })?;
        pool.terminate();
        records.flush()?;
        bar.finish_and_clear();
        let (done, failed) = (records.done(), records.failed());
        // Streamed and bounded; a closed stderr loses only the report.
        let _ = objects.report(&mut std::io::stderr().lock());
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("wasmpool: interrupted after {done} results; workers stopped");
            return Ok(ExitCode::from(130));
        }
        if let Some(e) = pending.take_error() {
            return Err(anyhow::Error::from(e).context(format!("after {done} results")));
        }
        if self.limits.show_fuel
            && let Some(fuel) = fuel_used
        {
            eprintln!("wasmpool: the {done} inputs used {fuel} fuel in all");
        }
        if failed > 0 {
            eprintln!(
                "wasmpool: {failed} of {done} items failed; first: {}",
                records.first_error().unwrap_or_default()
            );
            return Ok(ExitCode::from(1));
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl MapCommand {
    /// `map --server`: the inputs go to the service as one map; its records are written as
    /// they come, as here. Ctrl-C cancels the map there.
    fn execute_remote(
        &self,
        remote: &super::remote::Remote,
        inputs: Box<dyn Iterator<Item = Result<Value, LinesError>>>,
    ) -> Result<ExitCode> {
        use super::remote::refuse;
        let no_grants = "the service grants tasks no directories or variables";
        refuse(!self.grants.dirs.is_empty(), "--dir", no_grants)?;
        refuse(!self.grants.env.is_empty(), "--env", no_grants)?;
        refuse(
            !self.objects.is_empty(),
            "--object/--send/--close",
            "shared objects of the service are not reachable from the command line yet",
        )?;
        refuse(
            self.workers.is_some(),
            "-j/--workers",
            "the service runs its own workers",
        )?;
        refuse(
            self.restart_limit != 5,
            "--restart-limit",
            "the service sets it",
        )?;
        refuse(
            self.limits.show_fuel,
            "--show-fuel",
            "a map's fuel is in GET /v1/usage",
        )?;
        let limits = remote.limits(&self.limits)?;
        let request = super::remote::MapRequest {
            module: &self.module,
            task: &self.task,
            inputs,
            star: self.star,
            chunksize: self.chunksize,
            ordered: !self.unordered,
            retries: self.retries,
            limits,
            output: self.output.as_deref(),
        };
        super::remote::map(remote, request, &INTERRUPTED)
    }
}

#[cfg(test)]
mod tests {
    use super::{bar_template, count_inputs};

    #[test]
    fn a_regular_input_file_is_counted_as_the_map_reads_it() {
        let path = std::env::temp_dir().join(format!("wasmpool-count-{}", std::process::id()));
        std::fs::write(
            &path,
            "1\r\n\n  \n\u{3000}\u{a0}\r\n[2, 3]\n\"last without newline\"",
        )
        .unwrap();
        assert_eq!(count_inputs(&path), Some(3));
        std::fs::write(&path, "").unwrap();
        assert_eq!(count_inputs(&path), Some(0));
        let _ = std::fs::remove_file(&path);
        assert_eq!(count_inputs(&path), None, "a missing file is uncounted");
        assert_eq!(count_inputs(std::path::Path::new("/dev/null")), None);
    }

    #[test]
    fn a_fifo_is_not_opened_to_be_counted() {
        let path = std::env::temp_dir().join(format!("wasmpool-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c` is a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening it would wait for a writer that never comes: the count must not.
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || tx.send(count_inputs(&p)));
        let counted = rx.recv_timeout(std::time::Duration::from_secs(30));
        let _ = std::fs::remove_file(&path);
        assert_eq!(counted, Ok(None));
    }

    #[test]
    fn an_unknown_total_shows_no_eta_nor_length() {
        assert!(bar_template(true).contains("{eta}"));
        let unknown = bar_template(false);
        assert!(
            !unknown.contains("eta") && !unknown.contains("{len}") && !unknown.contains("{bar")
        );
    }
}
