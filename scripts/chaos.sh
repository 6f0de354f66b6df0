#!/usr/bin/env bash
# The cluster's chaos run (issue 21; not part of scripts/test.sh). As root:
#
#   scripts/chaos.sh            # 100k tasks, 3 hosts x 2 slots (a few minutes)
#   scripts/chaos.sh --short    # 10k tasks, about 40 s
#
# Three hosts, each `wasmpool worker --join` in a network namespace of its own (veth pairs
# on a private bridge), against a redis-server this script starts (persistence off, bound
# only to the bridge's private address, on a free port of its own). While the driver
# (runtime/examples/cluster_chaos.rs) submits tasks with known results and lock tasks, the
# script SIGKILLs one host (its whole process group) every --kill-every seconds and
# restarts it a second later, and cuts one host off one way at a time (its packets to
# Redis, or Redis's to it, all dropped) for --cut-secs. The driver prints lost,
# committed twice, redelivery p50/p99 and lock-fence violations; the exit status is 1 when
# a goal is missed. Everything it started (processes, Redis, namespaces, links) is stopped
# and removed on exit, Ctrl-C and failure included; it touches nothing else.
#
# Flags: --tasks N --item-ms M --chunk C --lock-tasks K --hosts H --slots S
#        --kill-every SECS --cut-secs SECS --short --keep-logs
# It builds what it needs: `cargo build --release` of the CLI and the driver (into
# $CARGO_TARGET_DIR, or target/); the driver builds the testkit guest itself.
set -euo pipefail
cd "$(dirname "$0")/.."

TASKS=100000 ITEM_MS=5 CHUNK=100 LOCK_TASKS=200 HOSTS=3 SLOTS=2 KILL_EVERY=4 CUT_SECS=8
KEEP_LOGS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tasks) TASKS=$2; shift 2 ;;
        --item-ms) ITEM_MS=$2; shift 2 ;;
        --chunk) CHUNK=$2; shift 2 ;;
        --lock-tasks) LOCK_TASKS=$2; shift 2 ;;
        --hosts) HOSTS=$2; shift 2 ;;
        --slots) SLOTS=$2; shift 2 ;;
        --kill-every) KILL_EVERY=$2; shift 2 ;;
        --cut-secs) CUT_SECS=$2; shift 2 ;;
        --short) TASKS=10000 ITEM_MS=15 CHUNK=50 LOCK_TASKS=50; shift ;;
        --keep-logs) KEEP_LOGS=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "chaos.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done

die() { echo "chaos.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (it makes network namespaces and links)"
command -v ip >/dev/null || die "ip (iproute2) is not installed"
command -v tc >/dev/null || die "tc (iproute2) is not installed"
command -v redis-server >/dev/null ||
    die "redis-server is not installed (apt-get install -y redis-server)"

NET=10.231.97            # the private bridge's /24
if ip -o -4 addr show | grep -q " $NET\."; then
    die "$NET.0/24 is already in use here (another chaos run?)"
fi

ID=$$
TAG="wpc$ID"            # link names: at most 15 characters
BR="${TAG}br"
WORK=$(mktemp -d "/tmp/wasmpool-chaos-$ID.XXXXXX")
EVENTS="$WORK/events"
: >"$EVENTS"
REDIS_PID="" DRIVER_PID=""
declare -a NS=() HOST_PID=() DOWN_UNTIL=()
CUT_LINK="" CUT_IN_NS=""

now_ms() { date +%s%3N; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    [ -n "$DRIVER_PID" ] && kill -KILL "$DRIVER_PID" 2>/dev/null
    for i in "${!HOST_PID[@]}"; do
        [ -n "${HOST_PID[$i]}" ] && kill -KILL -- "-${HOST_PID[$i]}" 2>/dev/null
    done
    [ -n "$REDIS_PID" ] && kill -KILL "$REDIS_PID" 2>/dev/null
    wait 2>/dev/null
    for i in "${!HOST_PID[@]}"; do
        for _ in $(seq 1 50); do
            [ -n "${HOST_PID[$i]}" ] && kill -0 "${HOST_PID[$i]}" 2>/dev/null || break
            sleep 0.05
        done
    done
    for i in "${!NS[@]}"; do
        ip link del "${TAG}h$i" 2>/dev/null
        ip netns del "${NS[$i]}" 2>/dev/null
    done
    ip link del "$BR" 2>/dev/null
    if [ "$KEEP_LOGS" = 1 ] || [ "$rc" != 0 ]; then
        echo "chaos.sh: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Build first (before anything is set up): the CLI and the driver, in one cargo run so they
# share its feature resolution.
rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
TARGET_DIR=${CARGO_TARGET_DIR:-target}
echo "chaos.sh: building (release) ..."
cargo build --release --locked --workspace --bin wasmpool --example cluster_chaos
WASMPOOL="$TARGET_DIR/release/wasmpool"
DRIVER="$TARGET_DIR/release/examples/cluster_chaos"
WASMPOOL=$(readlink -f "$WASMPOOL") DRIVER=$(readlink -f "$DRIVER")

# The network: a bridge holding $NET.1 (where Redis listens), one namespace per host.
ip link add "$BR" type bridge || die "cannot make a bridge"
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up
for i in $(seq 1 "$HOSTS"); do
    ns="wasmpool-chaos-$ID-h$i"
    ip netns add "$ns" || die "network namespaces are unavailable here (ip netns add failed)"
    NS[$i]=$ns
    ip link add "${TAG}h$i" type veth peer name "${TAG}n$i"
    ip link set "${TAG}n$i" netns "$ns"
    ip link set "${TAG}h$i" master "$BR" up
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "${TAG}n$i" name eth0
    ip -n "$ns" addr add "$NET.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
done

# Redis on a free port, only on the bridge's address.
PORT=""
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null &&
        ! (exec 3<>"/dev/tcp/$NET.1/$p") 2>/dev/null; then
        PORT=$p
        break
    fi
done
[ -n "$PORT" ] || die "found no free port"
redis-server --port "$PORT" --bind "$NET.1" --protected-mode no --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no &
REDIS_PID=$!
URL="redis://$NET.1:$PORT"
for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/$NET.1/$PORT") 2>/dev/null && break
    sleep 0.1
done
(exec 3<>"/dev/tcp/$NET.1/$PORT") 2>/dev/null || die "redis-server did not start (see $WORK/redis.log)"
echo "chaos.sh: redis at $URL (pid $REDIS_PID), logs in $WORK"

# Starts host $1 in its namespace, in a session (and process group) of its own, so a kill
# takes the whole host: the worker command, its fork server and its worker processes.
start_host() {
    local i=$1 pidfile="$WORK/h$1.pid"
    rm -f "$pidfile"
    mkdir -p "$WORK/h$i-cache"
    WASMPOOL_CACHE_DIR="$WORK/h$i-cache" ip netns exec "${NS[$i]}" \
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" \
        "$WASMPOOL" worker --join "$URL" --slots "$SLOTS" >>"$WORK/h$i.log" 2>&1 &
    # Not a job of this shell's: its kills are the point, not news.
    disown $!
    for _ in $(seq 1 100); do
        [ -s "$pidfile" ] && break
        sleep 0.02
    done
    [ -s "$pidfile" ] || die "host $i did not start (see $WORK/h$i.log)"
    HOST_PID[$i]=$(cat "$pidfile")
    DOWN_UNTIL[$i]=0
}

kill_host() {
    local i=$1 pid=${HOST_PID[$1]}
    echo "$(now_ms) kill $pid h$i" >>"$EVENTS"
    kill -KILL -- "-$pid" 2>/dev/null || true
    HOST_PID[$i]=""
    DOWN_UNTIL[$i]=$(($(now_ms) + 1000))
}

# A one-way cut of host $1: direction "out" drops what it sends (on its eth0), "in" what
# it is sent (on the bridge's end of its link). netem's `loss 100%` where the kernel has
# it, else a FIFO of length 0 (built in), which drops every packet as well.
drop_qdisc() {
    local ns=$1 dev=$2
    if [ -n "$ns" ]; then
        ip netns exec "$ns" tc qdisc add dev "$dev" root netem loss 100% 2>/dev/null ||
            ip netns exec "$ns" tc qdisc add dev "$dev" root pfifo limit 0
    else
        tc qdisc add dev "$dev" root netem loss 100% 2>/dev/null ||
            tc qdisc add dev "$dev" root pfifo limit 0
    fi
}
cut_host() {
    local i=$1 dir=$2
    if [ "$dir" = out ]; then
        CUT_IN_NS=${NS[$i]} CUT_LINK=eth0
    else
        CUT_IN_NS="" CUT_LINK="${TAG}h$i"
    fi
    drop_qdisc "$CUT_IN_NS" "$CUT_LINK"
    echo "$(now_ms) cut ${HOST_PID[$i]} h$i $dir" >>"$EVENTS"
}
heal() {
    local i=$1
    if [ -n "$CUT_IN_NS" ]; then
        ip netns exec "$CUT_IN_NS" tc qdisc del dev "$CUT_LINK" root
    else
        tc qdisc del dev "$CUT_LINK" root
    fi
    echo "$(now_ms) heal ${HOST_PID[$i]} h$i" >>"$EVENTS"
    CUT_LINK=""
}

for i in $(seq 1 "$HOSTS"); do start_host "$i"; done

"$DRIVER" "$URL" --tasks "$TASKS" --item-ms "$ITEM_MS" --chunk "$CHUNK" \
    --lock-tasks "$LOCK_TASKS" --hosts "$HOSTS" --events "$EVENTS" --ready "$WORK/ready" &
DRIVER_PID=$!
while [ ! -e "$WORK/ready" ]; do
    kill -0 "$DRIVER_PID" 2>/dev/null || break
    sleep 0.1
done

# The chaos, until the driver is done: a kill every KILL_EVERY s (round robin over the hosts
# not cut off; the victim restarts a second later), and a one-way cut of one host for
# CUT_SECS s every 30 s, first 6 s in, alternating direction.
t0=$(now_ms)
next_kill=$((t0 + KILL_EVERY * 1000)) next_cut=$((t0 + 6000)) heal_at=0
victim=0 cut_host_i=0 cut_dir=out
while kill -0 "$DRIVER_PID" 2>/dev/null; do
    sleep 0.1
    t=$(now_ms)
    for i in $(seq 1 "$HOSTS"); do
        if [ -z "${HOST_PID[$i]}" ] && [ "$t" -ge "${DOWN_UNTIL[$i]}" ]; then
            start_host "$i"
            echo "$(now_ms) start ${HOST_PID[$i]} h$i" >>"$EVENTS"
        fi
    done
    if [ -n "$CUT_LINK" ] && [ "$t" -ge "$heal_at" ]; then
        heal "$cut_host_i"
        cut_host_i=0
    fi
    if [ -z "$CUT_LINK" ] && [ "$t" -ge "$next_cut" ] && [ "$HOSTS" -ge 2 ]; then
        cut_host_i=$HOSTS
        if [ -n "${HOST_PID[$cut_host_i]}" ]; then
            cut_host "$cut_host_i" "$cut_dir"
            heal_at=$((t + CUT_SECS * 1000))
            [ "$cut_dir" = out ] && cut_dir=in || cut_dir=out
            next_cut=$((t + 30000))
        fi
    fi
    if [ "$t" -ge "$next_kill" ]; then
        next_kill=$((next_kill + KILL_EVERY * 1000))
        for _ in $(seq 1 "$HOSTS"); do
            victim=$((victim % HOSTS + 1))
            if [ "$victim" != "$cut_host_i" ] && [ -n "${HOST_PID[$victim]}" ]; then
                kill_host "$victim"
                break
            fi
        done
    fi
done
if [ -n "$CUT_LINK" ]; then heal "$cut_host_i"; fi
set +e
wait "$DRIVER_PID"
rc=$?
DRIVER_PID=""
set -e
echo "chaos.sh: events: $(grep -c ' kill ' "$EVENTS") kills, $(grep -c ' cut ' "$EVENTS") cuts"
exit "$rc"
