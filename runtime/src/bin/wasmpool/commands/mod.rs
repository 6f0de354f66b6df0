//! One module per subcommand, each a clap struct with an `execute()`.

pub mod compile;
pub mod map;
pub mod run;
pub mod tasks;

use std::time::Duration;

use clap::Args;

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
}

impl LimitArgs {
    /// The limits these flags ask for.
    pub fn limits(&self) -> anyhow::Result<wasmpool::Limits> {
        let mut limits = wasmpool::Limits::default()
            .memory_mib(self.memory)
            .output_bytes(self.max_output.saturating_mul(1 << 20));
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
        Ok(limits)
    }
}
