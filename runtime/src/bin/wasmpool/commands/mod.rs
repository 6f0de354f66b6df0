//! One module per subcommand, each a clap struct with an `execute()`.

pub mod compile;
pub mod map;
pub mod objects;
pub mod run;
pub mod tasks;

use std::time::Duration;

use clap::Args;

/// Capabilities for the tasks, shared by the commands that run tasks. Deny by default.
#[derive(Args, Debug)]
pub struct GrantArgs {
    /// Open a host directory to the tasks: HOST[:GUEST][:ro] (GUEST defaults to HOST;
    /// `:ro` makes it read-only). Repeatable.
    #[arg(long = "dir", value_name = "HOST[:GUEST][:ro]")]
    pub dirs: Vec<String>,
    /// Set an environment variable for the tasks: KEY=VALUE. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

impl GrantArgs {
    /// The grants these flags ask for.
    pub fn grants(&self) -> anyhow::Result<wasmpool::Grants> {
        let mut grants = wasmpool::Grants::new();
        for dir in &self.dirs {
            grants = grants.parse_dir(dir)?;
        }
        for env in &self.env {
            grants = grants.parse_env(env)?;
        }
        Ok(grants)
    }
}

/// Limits on each task, shared by the commands that run tasks.
#[derive(Args, Debug)]
pub struct LimitArgs {
    /// Stop a task that runs longer than this many seconds (wall clock, including sleeps).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// The most memory a task's instance may use, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory: u64,
    /// The most a task may write to stdout and stderr together, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_output: u64,
    /// The most wasm stack a task may use, in KiB (64 to 65536); deeper recursion is a
    /// "stack overflow" error.
    #[arg(long, value_name = "KIB", default_value_t = 1024)]
    pub max_stack: u64,
    /// Stop a task once it has used this much fuel (deterministic CPU metering: about one
    /// unit per wasm instruction). Metering makes wasm code slower.
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Print the fuel used to stderr (`run`: the task's; `map`: all the inputs' together).
    /// Meters fuel, with no limit unless --fuel gives one.
    #[arg(long)]
    pub show_fuel: bool,
}

impl LimitArgs {
    /// The limits these flags ask for.
    pub fn limits(&self) -> anyhow::Result<wasmpool::Limits> {
        let mut limits = wasmpool::Limits::default()
            .memory_mib(self.memory)
            .output_bytes(self.max_output.saturating_mul(1 << 20))
            .stack_kib(self.max_stack);
        if let Some(t) = self.timeout {
            let t = Duration::try_from_secs_f64(t).map_err(|_| {
                anyhow::anyhow!("--timeout must be a positive number of seconds, not {t}")
            })?;
            if t.is_zero() {
                anyhow::bail!("--timeout must be more than zero seconds");
            }
            limits = limits.timeout(t);
        }
        if self.memory == 0 {
            anyhow::bail!("--memory must be at least 1 MiB");
        }
        match self.fuel {
            Some(0) => anyhow::bail!("--fuel must be at least 1"),
            Some(fuel) => limits = limits.fuel(fuel),
            // Metered, and in practice unlimited: 2^64 instructions take centuries.
            None if self.show_fuel => limits = limits.fuel(u64::MAX),
            None => {}
        }
        limits
            .check()
            .map_err(|e| anyhow::anyhow!("--max-stack {}: {e}", self.max_stack))?;
        Ok(limits)
    }
}
