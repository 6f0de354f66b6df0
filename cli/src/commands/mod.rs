//! One module per subcommand, each a clap struct with an `execute()`.

pub mod compile;
pub mod map;
pub mod objects;
pub mod run;
pub mod serve;
pub mod tasks;
pub mod worker;

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
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub timeout: Option<f64>,
    /// The most memory a task's instance may use, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    pub memory: u64,
    /// The most a task may write to stdout and stderr together, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 64,
        allow_negative_numbers = true
    )]
    pub max_output: u64,
    /// The most wasm stack a task may use, in KiB (64 to 65536); deeper recursion is a
    /// "stack overflow" error.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = 1024,
        allow_negative_numbers = true
    )]
    pub max_stack: u64,
    /// Stop a task once it has used this much fuel (deterministic CPU metering: about one
    /// unit per wasm instruction). Metering makes wasm code slower.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub fuel: Option<u64>,
    /// Print the fuel used to stderr (`run`: the task's; `map`: all the inputs' together).
    /// Meters fuel, with no limit unless --fuel gives one.
    #[arg(long)]
    pub show_fuel: bool,
}

impl LimitArgs {
    /// The limits these flags ask for. Each flag out of range is refused by name, with its
    /// bounds; nothing is clamped.
    pub fn limits(&self) -> anyhow::Result<wasmpool::Limits> {
        let max_memory_mib = wasmpool::Limits::MAX_MEMORY_BYTES >> 20;
        if self.memory == 0 || self.memory > max_memory_mib {
            anyhow::bail!(
                "--memory {}: the memory limit must be from 1 to {max_memory_mib} MiB \
                 (4 GiB, all that a wasm32 instance can address)",
                self.memory
            );
        }
        let output_bytes = self.max_output.checked_mul(1 << 20).ok_or_else(|| {
            anyhow::anyhow!(
                "--max-output {}: too large; it must be at most {} MiB",
                self.max_output,
                u64::MAX >> 20
            )
        })?;
        let (min_stack, max_stack) = (
            wasmpool::Limits::MIN_STACK_BYTES >> 10,
            wasmpool::Limits::MAX_STACK_BYTES >> 10,
        );
        if !(min_stack..=max_stack).contains(&self.max_stack) {
            anyhow::bail!(
                "--max-stack {}: a stack limit of {} KiB is out of range: it must be from \
                 {min_stack} to {max_stack} KiB",
                self.max_stack,
                self.max_stack
            );
        }
        let mut limits = wasmpool::Limits::default()
            .memory_mib(self.memory)
            .output_bytes(output_bytes)
            .stack_kib(self.max_stack);
        if let Some(t) = self.timeout {
            let max = wasmpool::Limits::MAX_TIMEOUT.as_secs();
            let bad = || {
                anyhow::anyhow!(
                    "--timeout {t:?}: the time limit must be more than 0 and at most {max} \
                     seconds (365 days); leave it out for none"
                )
            };
            let t = Duration::try_from_secs_f64(t).map_err(|_| bad())?;
            if t.is_zero() {
                anyhow::bail!("--timeout must be more than zero seconds");
            }
            if t > wasmpool::Limits::MAX_TIMEOUT {
                return Err(bad());
            }
            limits = limits.timeout(t);
        }
        match self.fuel {
            Some(0) => anyhow::bail!("--fuel must be at least 1"),
            Some(fuel) => limits = limits.fuel(fuel),
            // Metered, and in practice unlimited: 2^64 instructions take centuries.
            None if self.show_fuel => limits = limits.fuel(u64::MAX),
            None => {}
        }
        // Every flag was checked above; this is the library's own word on the whole.
        limits.check().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(limits)
    }
}
