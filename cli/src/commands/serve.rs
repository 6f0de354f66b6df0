//! `wasmpool serve` and `wasmpool tenant add`: the multi-tenant HTTP service and its
//! tenants file (the `wasmpool-serve` library does the work).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

/// Serve tasks to many tenants over HTTP (JSON API, bearer tokens, quotas, durable state).
///
/// Prints `listening on http://ADDR` on stdout once it accepts connections. The tenants file
/// is reloaded when it changes (checked every second) and on SIGHUP.
#[derive(Args)]
pub struct ServeCommand {
    /// The address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// The tenants file (see `wasmpool tenant add`).
    #[arg(long, value_name = "FILE")]
    tenants: PathBuf,
    /// The state directory: SQLite file and uploaded modules (default:
    /// $XDG_DATA_HOME/wasmpool/serve or ~/.local/share/wasmpool/serve).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Worker processes per module's pool (default: the CPU count, at most 8).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// The largest JSON or NDJSON request body, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// The largest module upload, in bytes.
    #[arg(long, value_name = "BYTES")]
    max_module_bytes: Option<usize>,
    /// How long a request's body may take to arrive, in seconds (default 10): a slow or
    /// half-sent body is answered 408.
    #[arg(long, value_name = "SECONDS")]
    body_timeout: Option<f64>,
    /// How long a request's line and headers may take to arrive, in seconds (default 30),
    /// and how long a kept-alive connection may sit idle: a stalled client is disconnected.
    #[arg(long, value_name = "SECONDS")]
    header_timeout: Option<f64>,
    /// Run the tasks on the hosts of a cluster (`redis://HOST:PORT`) instead of local
    /// workers: each tenant's on its own task stream, served by hosts joined with
    /// `wasmpool worker --join URL --all-tenants` (or `--tenant NAME`). Tenant names must
    /// then be 1 to 64 of A-Z a-z 0-9 _ -, and tasks cannot name shared objects.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
}

impl ServeCommand {
    pub fn execute(self) -> Result<ExitCode> {
        let mut config = wasmpool_serve::Config::new(self.listen, self.tenants);
        config.cluster = self.cluster;
        if let Some(state) = self.state {
            config.state = state;
        }
        if let Some(n) = self.workers {
            if !(1..=wasmpool::Pool::MAX_PROCESSES).contains(&n) {
                anyhow::bail!(
                    "--workers {n}: must be from 1 to {}",
                    wasmpool::Pool::MAX_PROCESSES
                );
            }
            config.workers = n;
            config.max_inflight = n * 4;
        }
        if let Some(n) = self.max_body_bytes {
            config.max_body_bytes = n;
        }
        if let Some(n) = self.max_module_bytes {
            config.max_module_bytes = n;
        }
        if let Some(t) = self.body_timeout {
            config.body_timeout = std::time::Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
                .ok_or_else(|| {
                    anyhow::anyhow!("--body-timeout {t}: must be above 0 and at most 3600 seconds")
                })?;
        }
        if let Some(t) = self.header_timeout {
            config.header_timeout = std::time::Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--header-timeout {t}: must be above 0 and at most 3600 seconds"
                    )
                })?;
        }
        wasmpool_serve::run(config)?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Manage the tenants file of `wasmpool serve`.
#[derive(Args)]
pub struct TenantCommand {
    #[command(subcommand)]
    command: TenantSub,
}

#[derive(Subcommand)]
enum TenantSub {
    /// Add a tenant with default quotas; prints its fresh token once (only its SHA-256 is
    /// written to the file).
    Add {
        /// The tenant's name.
        name: String,
        /// Its share of the workers under contention.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// The tenants file (created if missing).
        #[arg(long, value_name = "FILE", default_value = "tenants.toml")]
        tenants: PathBuf,
    },
}

impl TenantCommand {
    pub fn execute(self) -> Result<ExitCode> {
        match self.command {
            TenantSub::Add {
                name,
                weight,
                tenants,
            } => {
                if weight == 0 {
                    anyhow::bail!("--weight must be at least 1");
                }
                let token = wasmpool_serve::add_tenant(&tenants, &name, weight)?;
                println!("{token}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
