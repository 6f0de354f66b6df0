#!/usr/bin/env bash
# The main job: a real demo through the CLI. Builds the `wasmpool` binary and the guest
# examples, then runs tasks in sandboxed worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip2 >/dev/null
cargo build --locked -p wasmpool-cli
wasmpool=${CARGO_TARGET_DIR:-target}/debug/wasmpool

echo "== the tasks of examples/compute"
"$wasmpool" tasks examples/compute
echo "== count the primes below 2,000,000 in one worker process"
"$wasmpool" run examples/compute count_primes 0 2000000
echo "== a task that fails, and one that panics: clear errors, exit status 1"
"$wasmpool" run examples/testkit fail '"no such file"' || true
"$wasmpool" run examples/testkit boom '"out of cheese"' || true
echo "== map: is_prime over 0..200000 in a pool of 2 workers (last 3 of the JSON lines)"
"$wasmpool" map examples/compute is_prime --range 0..200000 -j 2 --chunksize 1000 | tail -3
echo "== map with one bad item: the other results all arrive, exit status 1"
"$wasmpool" map examples/testkit square_or_panic --range 10..16 -j 2 || true
echo "== a shared dict made by name: three tasks increment one counter"
printf '["@counts", 100]\n["@counts", 250]\n["@counts", 7]\n' |
    "$wasmpool" map --object counts=dict examples/testkit atomic_increments --star --input - -j 2
echo "== a granted read-only directory, and a limit a task runs into"
demo_dir=$(mktemp -d)
echo "hello from the host" > "$demo_dir/greeting.txt"
"$wasmpool" run --dir "$demo_dir:/data:ro" examples/testkit read_file '"/data/greeting.txt"'
"$wasmpool" run --timeout 0.2 examples/testkit spin || true
rm -rf "$demo_dir"
echo "== a pipe made by name: the parent's message goes in at end 1, the seed task answers at end 0"
"$wasmpool" run --object p=pipe --send 'p.1="hello from the parent"' examples/seeds pipe_task 5 '"@p"'
echo "== a task written in Python (the first build installs componentize-py and takes a minute)"
"$wasmpool" run examples/py-hello/hello.py square 7
"$wasmpool" map examples/py-seeds job --range 0..4
