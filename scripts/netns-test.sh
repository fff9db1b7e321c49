#!/usr/bin/env bash
# Multi-host test on one machine: a manager and three node agents, each in its own Linux
# network namespace, joined by a bridge with 1 ms of delay on every link. The nodes find the
# manager by zenoh multicast scouting, as they would on a LAN. The trajectories must equal,
# value by value, those of the embedded (in-process, loopback) run of the same configuration.
# Then a node's link goes down mid-run for longer than the zenoh lease: the manager must roll
# back and finish on the other two with the same trajectories, and the node, its link back,
# must take the next run.
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
count = ${2:-3000}
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
${3:-}
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
# --- A node's link down for longer than the lease, mid-run. ---
# Agents and manager announce a 3 s lease (the default is 10 s) so that the test stays short;
# a link silent for longer is closed, and with it the node's token.
LEASE_MS=3000
DOWN_S=5
cat >"$DIR/lease.json5" <<EOF
{ mode: "peer", transport: { link: { tx: { lease: $LEASE_MS } } } }
EOF
for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
NODE_PIDS=()
k=1
for ns in "${NODES[@]}"; do
    ip netns exec "$ns" "$BIN/shoal-node" --cluster "$CLUSTER" --name "node$k" \
        --zenoh-config "$DIR/lease.json5" >"$DIR/lease-node$k.log" 2>&1 &
    NODE_PIDS+=($!)
    k=$((k + 1))
done
# Enough particles that the run outlasts the lease and the roll-back.
PARTICLES=200000
write_config linkref $PARTICLES
write_config linkdown $PARTICLES 'zenoh_config = "lease.json5"'
write_config linknext $PARTICLES 'zenoh_config = "lease.json5"'
"$BIN/shoal" run "$DIR/linkref.toml" --nodes ${#NODES[@]} --quiet >"$DIR/linkref.log" 2>&1

VICTIM=${NODES[2]}
timeout 300 ip netns exec "$MANAGER" "$BIN/shoal" run "$DIR/linkdown.toml" \
    --cluster "$CLUSTER" --quiet >"$DIR/linkdown.log" 2>&1 &
manager_pid=$!
# The first checkpoint is written once every node has its partitions and has released.
for _ in $(seq 600); do [[ -e "$DIR/linkdown.nc.checkpoint" ]] && break; sleep 0.1; done
[[ -e "$DIR/linkdown.nc.checkpoint" ]] || { echo "netns: the run never started" >&2; exit 1; }
sleep 1
ip -n "$VICTIM" link set "$IFACE" down
down_at=$EPOCHREALTIME
detected=""
for _ in $(seq $((DOWN_S * 10))); do
    if [[ -z $detected ]] && grep -q "rolling back" "$DIR/linkdown.log"; then
        detected=$(since "$down_at")
    fi
    sleep 0.1
done
ip -n "$VICTIM" link set "$IFACE" up
ip -n "$VICTIM" route replace 224.0.0.0/4 dev "$IFACE"
if ! wait "$manager_pid"; then
    echo "netns: the manager failed after the link went down" >&2
    exit 1
fi
grep -q "rolling back" "$DIR/linkdown.log" || {
    echo "netns: the run finished without noticing the link go down (too short?)" >&2
    exit 1
}
[[ -n $detected ]] || detected=">$DOWN_S"
recovered=$(sed -n 's/.*recovered in \([0-9.]*\) s.*/\1/p' "$DIR/linkdown.log" | head -1)
"$PYTHON" scripts/compare_nc.py linkdown "$DIR/linkref.nc" "$DIR/linkdown.nc"
grep -q "abandoned" "$DIR/lease-node3.log" || {
    echo "netns: the cut-off node did not abandon its run" >&2
    exit 1
}
# Its link back, the node takes the next run with the others, restarted by nobody.
if ! timeout 300 ip netns exec "$MANAGER" "$BIN/shoal" run "$DIR/linknext.toml" \
    --cluster "$CLUSTER" --quiet >"$DIR/linknext.log" 2>&1; then
    echo "netns: the run after the link came back failed" >&2
    exit 1
fi
if grep -q "rolling back" "$DIR/linknext.log"; then
    echo "netns: the next run lost a node" >&2
    exit 1
fi
"$PYTHON" scripts/compare_nc.py linknext "$DIR/linkref.nc" "$DIR/linknext.nc"
for pid in "${NODE_PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "netns: a node agent exited" >&2; exit 1; }
done
echo "netns: link of $VICTIM down ${DOWN_S}s mid-run (lease ${LEASE_MS} ms): loss seen after ${detected}s, stepping again ${recovered:-?}s later; output identical; the node took the next run"
echo "netns: elapsed $(since "$start")s"
