#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit + integration + doc tests, and the benchmark
# in smoke mode. Needs only Rust (rustup); installs the wasm32-wasip2 target itself.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup toolchain install 1.95.0 --profile minimal --component rustfmt,clippy >/dev/null 2>&1 || true
rustup target add wasm32-wasip2 >/dev/null
# The cluster tests start their own redis-server (loopback, persistence off).
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get install -y redis-server >/dev/null 2>&1 ||
        { apt-get update >/dev/null && apt-get install -y redis-server >/dev/null; }
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The benchmark in smoke mode (tiny sizes, dev profile), so the suite cannot rot. Its figures
# are not meaningful; the full run is `cargo bench -p wasmpool --bench compare`.
cargo bench -p wasmpool --bench compare --profile dev --locked -- --smoke

cargo test --workspace --locked
