//! `wasmpool tasks MODULE`: list a module's tasks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use wasmpool::Module;

/// List the tasks a module exports, one per line.
#[derive(Args)]
pub struct TasksCommand {
    /// A `.wasm` component, a guest Cargo project directory, or a Python guest (a `.py` file, or a
    /// project with `[tool.wasmpool]` in its pyproject.toml); guests are built for you.
    module: PathBuf,
    /// Print a JSON array instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: super::remote::ServerArgs,
}

impl TasksCommand {
    pub fn execute(self) -> Result<ExitCode> {
        if let Some(remote) = self.server.connect()? {
            return super::remote::tasks(&remote, &self.module, self.json);
        }
        let tasks = Module::load(&self.module)?.tasks()?;
        if self.json {
            println!("{}", serde_json::to_string(&tasks)?);
        } else {
            for t in tasks {
                println!("{t}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
