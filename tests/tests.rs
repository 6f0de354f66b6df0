//! The integration tests: one binary, helpers in `util.rs`, one module per area.

// A failed unwrap is a failed test, with its location: what a test should do.
#![allow(clippy::unwrap_used)]

mod util;

mod batches;
mod cli;
mod cluster;
mod cluster_executor;
mod cluster_grants;
mod cluster_objects;
mod cluster_outage;
mod cluster_parity;
mod cluster_redis_cluster;
mod cluster_run;
mod cluster_tenants;
mod conformance;
mod conformance_futures;
mod conformance_objects;
mod conformance_output;
mod executor;
mod fairness;
mod guest;
mod hardening_cli;
mod hardening_memory;
mod hardening_sandbox;
mod limits;
mod modules;
mod objects;
mod pool;
mod process;
mod python_guests;
mod runtime;
mod seeds;
mod serve;
mod serve_client;
mod supervision;
