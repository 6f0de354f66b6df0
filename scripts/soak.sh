#!/usr/bin/env bash
# The cluster's soak (issue 21; not part of scripts/test.sh):
#
#   scripts/soak.sh                 # 10 minutes
#   scripts/soak.sh --minutes 1
#
# Starts a redis-server of its own (loopback, a free port, persistence off) and --hosts
# `wasmpool worker --join` hosts, then runs the driver (runtime/examples/cluster_chaos.rs,
# --soak-secs) for --minutes: rounds of a chunked map, calls, new shared objects (a dict, a
# lock, a queue) and lock tasks on them, with results and objects kept --ttl seconds. It
# prints Redis's key count and used_memory at the baseline (after a warm-up whose TTL has
# passed) and again once the TTL has passed after the soak; the exit status is 1 when they
# are not back to the baseline or a result was wrong. It stops everything it started on
# exit (Ctrl-C and failure included) and touches nothing else.
#
# Flags: --minutes N --hosts H --slots S --ttl SECS --keep-logs
# It builds what it needs: `cargo build --release` of the CLI and the driver (into
# $CARGO_TARGET_DIR, or target/); the driver builds the testkit guest itself.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=10 HOSTS=2 SLOTS=2 TTL=5 KEEP_LOGS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --hosts) HOSTS=$2; shift 2 ;;
        --slots) SLOTS=$2; shift 2 ;;
        --ttl) TTL=$2; shift 2 ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "soak.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "soak.sh: $*" >&2; exit 2; }
command -v redis-server >/dev/null ||
    die "redis-server is not installed (apt-get install -y redis-server)"

WORK=$(mktemp -d "/tmp/wasmpool-soak-$$.XXXXXX")
REDIS_PID="" DRIVER_PID=""
declare -a HOST_PID=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -n "$DRIVER_PID" ] && kill -KILL "$DRIVER_PID" 2>/dev/null
    for pid in "${HOST_PID[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    [ -n "$REDIS_PID" ] && kill -KILL "$REDIS_PID" 2>/dev/null
    wait 2>/dev/null
    if [ "$KEEP_LOGS" = 1 ] || [ "$rc" != 0 ]; then
        echo "soak.sh: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
TARGET_DIR=${CARGO_TARGET_DIR:-target}
echo "soak.sh: building (release) ..."
cargo build --release --locked --workspace --bin wasmpool --example cluster_chaos
WASMPOOL=$(readlink -f "$TARGET_DIR/release/wasmpool")
DRIVER=$(readlink -f "$TARGET_DIR/release/examples/cluster_chaos")

PORT=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[ -n "$PORT" ] || die "found no free port"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
REDIS_PID=$!
URL="redis://127.0.0.1:$PORT"
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || die "redis-server did not start (see $WORK/redis.log)"
echo "soak.sh: redis at $URL (pid $REDIS_PID), logs in $WORK"

for i in $(seq 1 "$HOSTS"); do
    mkdir -p "$WORK/h$i-cache"
    WASMPOOL_CACHE_DIR="$WORK/h$i-cache" \
        "$WASMPOOL" worker --join "$URL" --slots "$SLOTS" >>"$WORK/h$i.log" 2>&1 &
    HOST_PID+=($!)
done

"$DRIVER" "$URL" --soak-secs "$((MINUTES * 60))" --ttl "$TTL" --hosts "$HOSTS" &
DRIVER_PID=$!
set +e
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=""
set -e
exit "$rc"
