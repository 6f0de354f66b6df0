//! `wasmpool worker --join redis://HOST:PORT [--slots N]`: this machine as a host of a
//! cluster, running the chunks it claims in a local pool of N worker processes.

use std::process::ExitCode;

use clap::Args;

/// Join a cluster: claim work from its Redis and run it here, until killed.
#[derive(Args, Debug)]
pub struct WorkerCommand {
    /// The cluster's Redis, `redis://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub join: String,
    /// How many worker processes run chunks here (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
}

impl WorkerCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let slots = self
            .slots
            .unwrap_or_else(|| wasmpool::cpu_count().min(wasmpool::Pool::MAX_PROCESSES));
        let host = wasmpool::cluster::Host::join(&self.join, slots)?;
        eprintln!(
            "wasmpool worker: host {} joined {} with {slots} slots",
            host.id(),
            self.join
        );
        host.run()?;
        Ok(ExitCode::SUCCESS)
    }
}
