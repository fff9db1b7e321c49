#!/usr/bin/env bash
# Multi-host test on one machine: a manager and three node agents, each in its own Linux
# network namespace, joined by a bridge with 1 ms of delay on every link. The nodes find the
# manager by zenoh multicast scouting, as they would on a LAN. The trajectories must equal,
# value by value, those of the embedded (in-process, loopback) run of the same configuration.
#
# Needs root and iproute2 (ip, tc). Run as: sudo scripts/netns-test.sh
# SHOAL_BIN picks the binaries (default target/release); CI=1 turns "skipped" into a failure;
# SHOAL_NETNS_KEEP=1 keeps the temporary directory (inputs, outputs, logs).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(realpath -m "${SHOAL_BIN:-target/release}")
CLUSTER=nsci
SWITCH=shoal-sw                      # namespace that holds the bridge: the host stays untouched
BRIDGE=shoalbr0
MANAGER=shoal-m
NODES=(shoal-n1 shoal-n2 shoal-n3)
IFACE=eth0                           # the interface's name inside each host namespace
RUN_HOURS=4
DT_SECONDS=60
STEPS=$((RUN_HOURS * 3600 / DT_SECONDS))
PYTHON=${PYTHON:-/usr/bin/python3}

# Not runnable here: fail under CI, skip otherwise.
cannot() {
    if [[ -n "${CI:-}" ]]; then
        echo "netns: cannot run: $*" >&2
        exit 1
    fi
    echo "skipped: $*"
    exit 0
}

[[ $(id -u) -eq 0 ]] || cannot "needs root for network namespaces"
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    if command -v apt-get >/dev/null; then
        { apt-get update -qq && apt-get install -y -qq iproute2; } >/dev/null 2>&1 || true
    fi
    command -v ip >/dev/null && command -v tc >/dev/null || cannot "needs iproute2 (ip, tc)"
fi
for b in shoal shoal-node; do
    [[ -x "$BIN/$b" ]] || cannot "$BIN/$b not built (cargo build --release)"
done
"$PYTHON" -c 'import netCDF4, numpy' 2>/dev/null || cannot "$PYTHON lacks netCDF4 and numpy"

# Seconds since an $EPOCHREALTIME stamp, to a tenth.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
start=$EPOCHREALTIME
DIR=$(mktemp -d -t shoal-netns.XXXXXX)
NODE_PIDS=()

cleanup() {
    local rc=$?
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do          # agents leave the cluster on SIGTERM; 10 s grace
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in "$MANAGER" "${NODES[@]}" "$SWITCH"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ $rc -ne 0 || -n "${SHOAL_NETNS_KEEP:-}" ]]; then
        for log in "$DIR"/*.log; do
            [[ -s $log ]] && { echo "--- $log"; tail -n 30 "$log"; }
        done
        [[ $rc -ne 0 ]] && echo "netns: failed" >&2
        echo "netns: files kept in $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

# --- The network: one bridge in $SWITCH, one veth from it to each host namespace. ---
for ns in "$MANAGER" "${NODES[@]}" "$SWITCH"; do
    ip netns del "$ns" 2>/dev/null || true     # leftovers of an interrupted run
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$SWITCH" link add "$BRIDGE" type bridge mcast_snooping 0
ip -n "$SWITCH" link set "$BRIDGE" up

host=10
for ns in "$MANAGER" "${NODES[@]}"; do
    port="v-${ns#shoal-}"                      # bridge-side end, e.g. v-n1
    ip link add "$port" netns "$SWITCH" type veth peer name "$IFACE" netns "$ns"
    ip -n "$SWITCH" link set "$port" master "$BRIDGE" up
    ip -n "$ns" addr add "10.77.0.$host/24" dev "$IFACE"
    ip -n "$ns" link set "$IFACE" up
    ip -n "$ns" route add 224.0.0.0/4 dev "$IFACE"
    # 1 ms each way, as on a real LAN; some kernels are built without netem.
    if ! ip netns exec "$ns" tc qdisc add dev "$IFACE" root netem delay 1ms 2>/dev/null; then
        [[ $host -eq 10 ]] && echo "netns: warning: no netem in this kernel, links without delay"
    fi
    host=$((host + 1))
done

# Bytes sent by all hosts: every frame on the bridge leaves exactly one host interface.
wire_bytes() {
    local total=0 ns
    for ns in "$MANAGER" "${NODES[@]}"; do
        total=$((total + $(ip netns exec "$ns" cat "/sys/class/net/$IFACE/statistics/tx_bytes")))
    done
    echo "$total"
}

# --- Input and configuration. ---
"$BIN/shoal" synth --flow rotation -o "$DIR/f.nc" --nx 30 --ny 30 --duration 6h --interval 1h \
    >/dev/null
write_config() {
    cat >"$DIR/$1.toml" <<EOF
seed = 5
[input]
files = ["f.nc"]
[release.generate]
count = 3000
z = -2.0
[run]
duration = "${RUN_HOURS}h"
dt = "${DT_SECONDS}s"
[diffusion]
horizontal_kh = 1.0
[output]
file = "$1.nc"
interval = "30min"
[cluster]
nodes = ${#NODES[@]}
wait_seconds = 60
EOF
}
write_config inproc
write_config netns

# --- Reference: the embedded default, in-process nodes on loopback. ---
"$BIN/shoal" run "$DIR/inproc.toml" --nodes ${#NODES[@]} --quiet >"$DIR/inproc.log" 2>&1

# --- Multi-host: node agents in their namespaces, the manager in its own. ---
k=1
for ns in "${NODES[@]}"; do
    ip netns exec "$ns" "$BIN/shoal-node" --cluster "$CLUSTER" --name "node$k" \
        >"$DIR/node$k.log" 2>&1 &
    NODE_PIDS+=($!)
    k=$((k + 1))
done

before=$(wire_bytes)
run_start=$EPOCHREALTIME
if ! timeout 300 ip netns exec "$MANAGER" "$BIN/shoal" run "$DIR/netns.toml" \
    --cluster "$CLUSTER" --quiet >"$DIR/manager.log" 2>&1; then
    echo "netns: the manager failed" >&2
    exit 1
fi
run_s=$(since "$run_start")
after=$(wire_bytes)
for pid in "${NODE_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "netns: a node agent exited early" >&2; exit 1; }
done

# --- Compare the two outputs, every variable, NaN equal to NaN. ---
"$PYTHON" scripts/compare_nc.py netns "$DIR/inproc.nc" "$DIR/netns.nc"

echo "netns: $((after - before)) bytes on the wire for $STEPS steps (${#NODES[@]} nodes, manager run ${run_s}s)"
echo "netns: elapsed $(since "$start")s"
