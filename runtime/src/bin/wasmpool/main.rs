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
}

fn main() -> ExitCode {
    // A worker is this binary re-executed with a hidden argument: serve, then exit.
    wasmpool::run_worker_if_requested();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WASMPOOL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(c) => c.execute(),
        Command::Map(c) => c.execute(),
        Command::Tasks(c) => c.execute(),
        Command::Compile(c) => c.execute(),
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
