//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The service's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Tasks and maps accepted.
    pub submitted: AtomicU64,
    /// Items finished with a result.
    pub succeeded: AtomicU64,
    /// Items finished with an error.
    pub failed: AtomicU64,
    /// Requests refused for a quota (429).
    pub throttled: AtomicU64,
    /// Requests refused for their token (401).
    pub unauthorized: AtomicU64,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Adds one to `c`.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// The text exposition, with the gauges given.
    pub fn render(
        &self,
        states: &[(String, u64)],
        depths: &[(String, usize, usize)],
        pools: usize,
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "wasmpool_serve_submissions_total",
            "Tasks and maps accepted.",
            get(&self.submitted),
        );
        counter(
            &mut out,
            "wasmpool_serve_items_succeeded_total",
            "Tasks and map items finished with a result.",
            get(&self.succeeded),
        );
        counter(
            &mut out,
            "wasmpool_serve_items_failed_total",
            "Tasks and map items finished with an error.",
            get(&self.failed),
        );
        counter(
            &mut out,
            "wasmpool_serve_throttled_total",
            "Requests refused with 429.",
            get(&self.throttled),
        );
        counter(
            &mut out,
            "wasmpool_serve_unauthorized_total",
            "Requests refused with 401.",
            get(&self.unauthorized),
        );
        let _ = writeln!(
            out,
            "# HELP wasmpool_serve_tasks Tasks and map items kept, by state.\n# TYPE wasmpool_serve_tasks gauge"
        );
        for (state, n) in states {
            let _ = writeln!(out, "wasmpool_serve_tasks{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP wasmpool_serve_queue Items queued and running in this process, by tenant.\n# TYPE wasmpool_serve_queue gauge"
        );
        for (tenant, queued, running) in depths {
            let tenant = tenant.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "wasmpool_serve_queue{{tenant=\"{tenant}\",state=\"queued\"}} {queued}"
            );
            let _ = writeln!(
                out,
                "wasmpool_serve_queue{{tenant=\"{tenant}\",state=\"running\"}} {running}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP wasmpool_serve_pools Worker pools alive.\n# TYPE wasmpool_serve_pools gauge\nwasmpool_serve_pools {pools}"
        );
        out
    }
}
