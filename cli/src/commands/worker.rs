//! `wasmpool worker --join redis://HOST:PORT [--slots N] [--tenant T | --all-tenants]
//! [--allow-dir PATH[:ro]]`: this
//! machine as a host of a cluster, running the chunks it claims in a local pool of N worker
//! processes.

use std::process::ExitCode;

use clap::Args;

/// Join a cluster: claim work from its Redis and run it here, until killed.
///
/// With neither --tenant nor --all-tenants the host serves untenanted pools only (as before
/// tenants); a tenant's pool needs a host that serves it.
#[derive(Args, Debug)]
pub struct WorkerCommand {
    /// The cluster's Redis, `redis://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub join: String,
    /// How many worker processes run chunks here (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// Serve this tenant's pools only (1 to 64 of A-Z a-z 0-9 _ -), not untenanted ones.
    /// Repeatable.
    #[arg(long, value_name = "T")]
    pub tenant: Vec<String>,
    /// Serve every tenant's pools and untenanted ones, sharing the workers' time between
    /// them by weight so that one tenant's backlog does not starve another.
    #[arg(long, conflicts_with = "tenant")]
    pub all_tenants: bool,
    /// Let the tasks open this directory of this machine, where a pool's grant names it
    /// (`--dir PATH:GUEST` on `run`/`map --cluster`); with `:ro`, read-only grants only.
    /// Only the directories named, nothing under them; none by default. Repeatable; none
    /// inside another allowed read-write.
    #[arg(long = "allow-dir", value_name = "PATH[:ro]")]
    pub allow_dir: Vec<String>,
}

impl WorkerCommand {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let slots = self
            .slots
            .unwrap_or_else(|| wasmpool::cpu_count().min(wasmpool::Pool::MAX_PROCESSES));
        let mut builder = wasmpool::cluster::Host::builder(&self.join).slots(slots);
        for t in &self.tenant {
            builder = builder.tenant(t);
        }
        if self.all_tenants {
            builder = builder.all_tenants();
        }
        for dir in &self.allow_dir {
            builder = match dir.strip_suffix(":ro") {
                Some(path) => builder.allow_dir_read_only(path),
                None => builder.allow_dir(dir.strip_suffix(":rw").unwrap_or(dir)),
            };
        }
        let host = builder.join()?;
        if self.tenant.is_empty() && !self.all_tenants {
            eprintln!(
                "wasmpool worker: host {} joined {} with {slots} slots",
                host.id(),
                wasmpool::cluster::shown_url(&self.join)
            );
        } else {
            eprintln!(
                "wasmpool worker: host {} joined {} with {slots} slots, serving {}",
                host.id(),
                wasmpool::cluster::shown_url(&self.join),
                host.serves()
            );
        }
        host.run()?;
        Ok(ExitCode::SUCCESS)
    }
}
