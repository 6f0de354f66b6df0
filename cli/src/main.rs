//! The `wasmpool` command line: run WebAssembly tasks in sandboxed worker processes.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run WebAssembly tasks in isolated worker processes, the way Python's multiprocessing runs
/// functions.
#[derive(Parser)]
#[command(name = "wasmpool", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(commands::run::RunCommand),
    Map(commands::map::MapCommand),
    Tasks(commands::tasks::TasksCommand),
    Compile(commands::compile::CompileCommand),
    Serve(commands::serve::ServeCommand),
    Tenant(commands::serve::TenantCommand),
    Worker(commands::worker::WorkerCommand),
}

fn main() -> ExitCode {
    // A worker is this binary re-executed with a hidden argument: serve, then exit.
    wasmpool::run_worker_if_requested();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WASMPOOL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Run(c) => c.execute(),
        Command::Map(c) => c.execute(),
        Command::Tasks(c) => c.execute(),
        Command::Compile(c) => c.execute(),
        Command::Serve(c) => c.execute(),
        Command::Tenant(c) => c.execute(),
        Command::Worker(c) => c.execute(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One clear line, never a backtrace.
            let text = format!("{e:#}");
            eprintln!("wasmpool: error: {}", text.replace('\n', " | "));
            ExitCode::from(2)
        }
    }
}

/// Help and version go out as clap writes them; a bad command line is one line on stderr
/// (clap's message without its usage block) and exit status 2, as every other bad input.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let message = parts.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    eprintln!("wasmpool: error: {message} (see --help)");
    ExitCode::from(2)
}
