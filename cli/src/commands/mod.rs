//! One module per subcommand, each a clap struct with an `execute()`.

pub mod compile;
pub mod map;
pub mod objects;
pub mod remote;
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
    /// The most memory a task's instance may use, in MiB [default: 256; with --server, the
    /// tenant's ceiling, at most 256].
    #[arg(long, value_name = "MIB", allow_negative_numbers = true)]
    pub memory: Option<u64>,
    /// The most a task may write to stdout and stderr together, in MiB [default: 64; with
    /// --server, the tenant's ceiling].
    #[arg(long, value_name = "MIB", allow_negative_numbers = true)]
    pub max_output: Option<u64>,
    /// The most wasm stack a task may use, in KiB (64 to 65536); deeper recursion is a
    /// "stack overflow" error.
    #[arg(
        long,
        value_name = "KIB",
        default_value_t = LimitArgs::DEFAULT_STACK_KIB,
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
    /// `--memory` when not given, in MiB.
    pub const DEFAULT_MEMORY_MIB: u64 = 256;
    /// `--max-output` when not given, in MiB.
    pub const DEFAULT_OUTPUT_MIB: u64 = 64;
    /// `--max-stack` when not given, in KiB.
    pub const DEFAULT_STACK_KIB: u64 = 1024;

    /// The limits these flags ask for. Each flag out of range is refused by name, with its
    /// bounds; nothing is clamped.
    pub fn limits(&self) -> anyhow::Result<wasmpool::Limits> {
        let max_memory_mib = wasmpool::Limits::MAX_MEMORY_BYTES >> 20;
        let memory = self.memory.unwrap_or(Self::DEFAULT_MEMORY_MIB);
        if memory == 0 || memory > max_memory_mib {
            anyhow::bail!(
                "--memory {memory}: the memory limit must be from 1 to {max_memory_mib} MiB \
                 (4 GiB, all that a wasm32 instance can address)"
            );
        }
        let max_output = self.max_output.unwrap_or(Self::DEFAULT_OUTPUT_MIB);
        let output_bytes = max_output.checked_mul(1 << 20).ok_or_else(|| {
            anyhow::anyhow!(
                "--max-output {max_output}: too large; it must be at most {} MiB",
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
            .memory_mib(memory)
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
