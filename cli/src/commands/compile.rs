//! `wasmpool compile MODULE -o FILE`: validate and precompile a module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use wasmpool::Module;

/// Validate a module against the wasmpool world and write its precompiled artifact.
///
/// Modules are compiled once into the cache (see `WASMPOOL_CACHE_DIR`) whenever they are
/// loaded; this writes that artifact where you ask, e.g. to ship it with a deployment.
#[derive(Args)]
pub struct CompileCommand {
    /// A `.wasm` component, a guest Cargo project directory, or a Python guest (a `.py` file, or a
    /// project with `[tool.wasmpool]` in its pyproject.toml); guests are built for you.
    module: PathBuf,
    /// Where to write the artifact.
    #[arg(short, long)]
    output: PathBuf,
}

impl CompileCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let module = Module::load(&self.module)?;
        module.write_precompiled(&self.output)?;
        eprintln!("wrote {}", self.output.display());
        Ok(ExitCode::SUCCESS)
    }
}
