//! `wasmpool run MODULE TASK [ARG…]`: run one task in a worker process, print its result.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use wasmpool::{BuildOptions, Module, Output, Process};

/// Run one task in a fresh worker process and print its result as JSON.
///
/// The task's output streams to this terminal as it is written. Exit status: 0 when the
/// task succeeded, 1 when it failed, trapped or its worker died, 2 for bad input.
#[derive(Args)]
pub struct RunCommand {
    /// A `.wasm` component, a guest Cargo project directory, or a Python guest (a `.py` file, or a
    /// project with `[tool.wasmpool]` in its pyproject.toml); guests are built for you.
    module: PathBuf,
    /// The task to run.
    task: String,
    /// The task's positional arguments, each a JSON value (strings need quotes: '"text"').
    args: Vec<String>,
    /// Prefix each line of the task's output with `[process pid task]`.
    #[arg(long)]
    tag_output: bool,
    #[command(flatten)]
    limits: super::LimitArgs,
    #[command(flatten)]
    grants: super::GrantArgs,
    #[command(flatten)]
    objects: super::objects::ObjectArgs,
    /// The process name the task sees (default `Process-1`).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    server: super::remote::ServerArgs,
    /// Run on a cluster through its Redis, `redis://HOST:PORT`: a host that joined it
    /// (`wasmpool worker --join`) runs the task, and --object makes its objects in Redis.
    /// The result, error and exit status are a local run's; the task's own output goes to
    /// the stderr of the host that runs it.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// With --cluster: submit as this tenant, so only hosts joined with `--tenant T` or
    /// `--all-tenants` run it.
    #[arg(long, value_name = "T", requires = "cluster")]
    tenant: Option<String>,
}

impl RunCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let args = parse_json_args(&self.args)?;
        if self.cluster.is_some() && self.server.server.is_some() {
            bail!("--cluster and --server cannot be used together");
        }
        if let Some(remote) = self.server.connect()? {
            return self.execute_remote(&remote, args);
        }
        if let Some(url) = &self.cluster {
            return self.execute_cluster(url, args);
        }
        let limits = self.limits.limits()?;
        let objects = self.objects.create(None)?;
        // Compiled at once for these limits: a time limit's code, not the plain code and then
        // that too (a first Python run would compile twice).
        let module =
            Module::load_with(&self.module, &BuildOptions::default().compile_for(&limits))?;
        // With objects, arguments go through `Process::new`, which holds the objects it is
        // given for the process (a pipe end stays open while it runs, as an inherited fd).
        let process = if objects.is_empty() {
            Process::with_encoded_args(&module, &self.task, wasmpool::json_args(&args)?)?
        } else {
            Process::new(&module, &self.task, &objects.substitute(&args))?
        };
        // The error is reported below, once: the process does not print it too.
        let mut process = process
            .with_error_report(false)
            .with_limits(limits)
            .with_grants(self.grants.grants()?);
        if let Some(name) = self.name {
            process = process.with_name(name);
        }
        if self.tag_output {
            process = process.with_output(Output::Tagged);
        }
        process.start()?;
        process.join()?;
        // Streamed and bounded; a closed stderr loses only the report.
        let _ = objects.report(&mut std::io::stderr().lock());
        let show_fuel = |process: &Process| {
            if self.limits.show_fuel
                && let Some(fuel) = process.fuel_used()
            {
                eprintln!("wasmpool: task `{}` used {fuel} fuel", self.task);
            }
        };
        print_outcome(&self.task, process.result_bytes(), || show_fuel(&process))
    }
}

impl RunCommand {
    /// `run --cluster`: the task runs on a host of the cluster; its result, error and exit
    /// status are printed as a local run's.
    fn execute_cluster(&self, url: &str, args: Vec<serde_json::Value>) -> Result<ExitCode> {
        let refuse = |given: bool, flag: &str, why: &str| -> Result<()> {
            if given {
                bail!("{flag} is not supported with --cluster ({why})");
            }
            Ok(())
        };
        refuse(
            self.tag_output,
            "--tag-output",
            "the task's output goes to the stderr of the host that runs it",
        )?;
        refuse(
            self.name.is_some(),
            "--name",
            "the task runs in a worker process of a host's pool, named by it",
        )?;
        let limits = self.limits.limits()?;
        let objects = self.objects.create(Some(url))?;
        let module = Module::load(&self.module)?;
        let mut builder = wasmpool::Pool::builder(&module)
            .limits(limits)
            .grants(self.grants.grants()?)
            .cluster(url);
        if let Some(t) = &self.tenant {
            builder = builder.tenant(t);
        }
        let pool = builder.build()?;
        // Its tasks known here, an unknown task is refused before anything is submitted,
        // as locally (exit 2), not failed on a host.
        module.tasks()?;
        let encoded = if objects.is_empty() {
            wasmpool::json_args(&args)?
        } else {
            wasmpool::encode_args(&objects.substitute(&args))?
        };
        let pending = pool.apply_encoded(&self.task, encoded)?;
        let result = pending.get();
        let _ = objects.report(&mut std::io::stderr().lock());
        let show_fuel = || {
            if self.limits.show_fuel
                && let Some(fuel) = pending.fuel_used()
            {
                eprintln!("wasmpool: task `{}` used {fuel} fuel", self.task);
            }
        };
        print_outcome(&self.task, result, show_fuel)
    }

    /// `run --server`: the task runs on the service; its output and result are printed as
    /// they would be here. Ctrl-C cancels it there.
    fn execute_remote(
        &self,
        remote: &super::remote::Remote,
        args: Vec<serde_json::Value>,
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
            self.tag_output,
            "--tag-output",
            "the output comes back with the result",
        )?;
        refuse(
            self.name.is_some(),
            "--name",
            "the service names its processes",
        )?;
        let limits = remote.limits(&self.limits)?;
        let module = remote.module(&self.module)?;
        let body = serde_json::json!({
            "module": module.sha256,
            "task": self.task,
            "args": args,
            "limits": limits,
        });
        let interrupted = super::remote::interrupt_flag();
        let view = remote.run_task(&body, interrupted)?;
        super::remote::print_task(&view, &self.task, self.limits.show_fuel)
    }
}

/// Parses each command-line argument as one JSON value.
pub fn parse_json_args(raw: &[String]) -> Result<Vec<serde_json::Value>> {
    raw.iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::from_str(text).with_context(|| {
                format!("argument {} (`{text}`) is not valid JSON (strings need quotes, e.g. '\"{text}\"')", i + 1)
            })
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.len() > 64 {
                bail!("too many arguments ({}); the limit is 64", v.len());
            }
            Ok(v)
        })
}

/// Prints a task's outcome as `run` does, locally or on a cluster: the result as JSON on
/// stdout (exit 0), or its error on stderr (exit 1; bad arguments and an unknown task are
/// the caller's errors, exit 2). `show_fuel` reports the fuel used: after the result is
/// known good, or after the error.
fn print_outcome(
    task: &str,
    result: wasmpool::Result<Vec<u8>>,
    show_fuel: impl Fn(),
) -> Result<ExitCode> {
    match result {
        Ok(bytes) => {
            show_fuel();
            // Streamed: a result of millions of values builds no tree of them. A result
            // that does not decode is the task's failure (exit 1), named.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match wasmpool::write_json(task, &bytes, &mut out) {
                Ok(()) => {}
                Err(e @ wasmpool::Error::Decode { .. }) => {
                    eprintln!("wasmpool: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            }
            writeln!(out)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (wasmpool::Error::BadArgs(_) | wasmpool::Error::UnknownTask { .. })) => {
            Err(e.into())
        }
        Err(e) => {
            eprintln!("wasmpool: {e}");
            show_fuel();
            Ok(ExitCode::from(1))
        }
    }
}
