#!/usr/bin/env bash
# The main job: a real demo through the CLI. Builds the `wasmpool` binary and the guest
# examples, then runs tasks in sandboxed worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
cargo build --locked -p wasmpool
wasmpool=${CARGO_TARGET_DIR:-target}/debug/wasmpool

echo "== the tasks of examples/compute"
"$wasmpool" tasks examples/compute
echo "== count the primes below 2,000,000 in one worker process"
"$wasmpool" run examples/compute count_primes 0 2000000
echo "== a task that fails, and one that panics: clear errors, exit status 1"
"$wasmpool" run examples/testkit fail '"no such file"' || true
"$wasmpool" run examples/testkit boom '"out of cheese"' || true
