#!/usr/bin/env bash
# Multi-host test on one machine: a manager and three node agents, each in its own Linux
# network namespace, joined by a bridge with 1 ms of delay on every link. The nodes find the
# manager by zenoh multicast scouting, as they would on a LAN. The trajectories must equal,
# value by value, those of the embedded (in-process, loopback) run of the same configuration.
# Then the fabric as the ansible roles deploy it: QUIC with mutual TLS under a cluster CA and
# zenoh access control. Repeated runs (as many as fit a minute, at least 10) must give the same
# trajectories, while three strangers try to join as nodes and speak as managers: one with a
# certificate of another CA, one with none, one with a certificate of the cluster's CA whose
# name is not on the access list (a revoked Pi). The manager's census must not list them, and
# nothing they send may reach a node. Then, still over QUIC, a node's link goes down mid-run
# for longer than the zenoh lease: the manager must roll back and finish on the other two with
# the same trajectories, and the node, its link back, must take the next run.
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
# Hosts that must not get in: another CA's certificate, none, a revoked one.
STRANGERS=(shoal-x shoal-y shoal-z)
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
STRANGER_PIDS=()
STRANGER_RUNS=()

cleanup() {
    local rc=$?
    for pid in "${STRANGER_PIDS[@]}" "${STRANGER_RUNS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do          # agents leave the cluster on SIGTERM; 10 s grace
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in "$MANAGER" "${NODES[@]}" "${STRANGERS[@]}" "$SWITCH"; do
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
for ns in "$MANAGER" "${NODES[@]}" "${STRANGERS[@]}" "$SWITCH"; do
    ip netns del "$ns" 2>/dev/null || true     # leftovers of an interrupted run
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
ip -n "$SWITCH" link add "$BRIDGE" type bridge mcast_snooping 0
ip -n "$SWITCH" link set "$BRIDGE" up

host=10
declare -A ADDR
for ns in "$MANAGER" "${NODES[@]}" "${STRANGERS[@]}"; do
    ADDR[$ns]="10.77.0.$host"
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
    ip netns exec "$ns" "$BIN/shoal-node" --cluster "$CLUSTER" --name "node$k" --device cpu \
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
# --- The deployed fabric: QUIC with mutual TLS and access control. ---
# The certificates come from the fabric role's own tool, as a converge makes them: a cluster CA,
# one certificate per host (its address and name in subjectAltName, its name as common name).
# Every session also announces a 3 s lease (the default is 10 s) so that the link-down test below
# stays short: a link silent for longer is closed, and with it the node's token.
LEASE_MS=3000
DOWN_S=5
PKI_TOOL=ansible/roles/fabric/files/shoal-pki
PKI=$DIR/pki
sh "$PKI_TOOL" ca "$PKI" "$CLUSTER" >/dev/null
for ns in "$MANAGER" "${NODES[@]}"; do
    sh "$PKI_TOOL" host "$PKI" "$ns" "IP:${ADDR[$ns]},DNS:$ns" >/dev/null
done
# Stranger x: a certificate of another CA, even under a member's name. Stranger z: the cluster's
# own CA, but a name the access list does not hold (a lost Pi, taken out of the inventory).
sh "$PKI_TOOL" ca "$DIR/other-pki" "$CLUSTER" >/dev/null
sh "$PKI_TOOL" host "$DIR/other-pki" shoal-n1 "IP:${ADDR[shoal-x]},DNS:shoal-n1" >/dev/null
sh "$PKI_TOOL" host "$PKI" lost-pi "IP:${ADDR[shoal-z]},DNS:lost-pi" >/dev/null
MEMBERS=$(printf '"%s",' "$MANAGER" "${NODES[@]}")

# quic_config FILE CA CERT(path without .crt/.key, or empty) LISTEN(address or empty) ACL(yes|no)
#             DIAL-ADDRESS...: a zenoh configuration like the fabric role's.
quic_config() {
    local file=$1 ca=$2 cert=$3 listen=$4 acl=$5 dial="" a
    shift 5
    for a in "$@"; do dial+="\"quic/$a:7447\","; done
    {
        echo "{ mode: \"peer\","
        if [[ -n $listen ]]; then
            echo "  listen: { endpoints: [\"quic/$listen:7447\"] },"
        else
            echo "  listen: { endpoints: [] },"
        fi
        echo "  connect: { endpoints: [$dial] },"
        echo "  scouting: { multicast: { enabled: false }, gossip: { enabled: false } },"
        echo "  transport: { link: { protocols: [\"quic\"], tx: { lease: $LEASE_MS },"
        echo "    tls: { root_ca_certificate: \"$ca\", verify_name_on_connect: true,"
        if [[ -n $cert ]]; then
            echo "      listen_private_key: \"$cert.key\", listen_certificate: \"$cert.crt\","
            echo "      connect_private_key: \"$cert.key\", connect_certificate: \"$cert.crt\","
            echo "      enable_mtls: true, close_link_on_expiration: true } } },"
        else
            echo "      enable_mtls: false } } },"
        fi
        if [[ $acl == yes ]]; then
            cat <<EOF
  access_control: { enabled: true, default_permission: "deny",
    rules: [{ id: "cluster", flows: ["egress", "ingress"], permission: "allow",
      messages: ["put", "delete", "declare_subscriber", "query", "reply", "declare_queryable",
                 "liveliness_token", "liveliness_query", "declare_liveliness_subscriber"],
      key_exprs: ["shoal/$CLUSTER/**"] }],
    subjects: [{ id: "hosts", cert_common_names: [$MEMBERS], link_protocols: ["quic"] }],
    policies: [{ rules: ["cluster"], subjects: ["hosts"] }] },
EOF
        fi
        echo "}"
    } >"$file"
}
NODE_ADDRS=()
for ns in "${NODES[@]}"; do NODE_ADDRS+=("${ADDR[$ns]}"); done
quic_config "$DIR/quic-manager.json5" "$PKI/ca.crt" "$PKI/hosts/$MANAGER" "" yes "${NODE_ADDRS[@]}"
k=0
for ns in "${NODES[@]}"; do       # each node dials the nodes before it, as the fabric role does
    quic_config "$DIR/quic-$ns.json5" "$PKI/ca.crt" "$PKI/hosts/$ns" "${ADDR[$ns]}" yes \
        "${NODE_ADDRS[@]:0:$k}"
    k=$((k + 1))
done
# The strangers dial every node and the manager's address, and need no access list of their own.
quic_config "$DIR/quic-shoal-x.json5" "$DIR/other-pki/ca.crt" "$DIR/other-pki/hosts/shoal-n1" \
    "${ADDR[shoal-x]}" no "${NODE_ADDRS[@]}" "${ADDR[$MANAGER]}"
quic_config "$DIR/quic-shoal-y.json5" "$PKI/ca.crt" "" "" no "${NODE_ADDRS[@]}" "${ADDR[$MANAGER]}"
quic_config "$DIR/quic-shoal-z.json5" "$PKI/ca.crt" "$PKI/hosts/lost-pi" "${ADDR[shoal-z]}" no \
    "${NODE_ADDRS[@]}" "${ADDR[$MANAGER]}"
# Their managers dial only (their node agents hold the port).
quic_config "$DIR/quic-shoal-x-manager.json5" "$DIR/other-pki/ca.crt" \
    "$DIR/other-pki/hosts/shoal-n1" "" no "${NODE_ADDRS[@]}"
quic_config "$DIR/quic-shoal-y-manager.json5" "$PKI/ca.crt" "" "" no "${NODE_ADDRS[@]}"
quic_config "$DIR/quic-shoal-z-manager.json5" "$PKI/ca.crt" "$PKI/hosts/lost-pi" "" no \
    "${NODE_ADDRS[@]}"

for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
NODE_PIDS=()
join_start=$EPOCHREALTIME
k=1
for ns in "${NODES[@]}"; do
    ip netns exec "$ns" "$BIN/shoal-node" --cluster "$CLUSTER" --name "node$k" --device cpu \
        --zenoh-config "$DIR/quic-$ns.json5" >"$DIR/quic-node$k.log" 2>&1 &
    NODE_PIDS+=($!)
    k=$((k + 1))
done
# Each stranger runs a node agent of its own, hoping to be handed partitions.
for ns in "${STRANGERS[@]}"; do
    ip netns exec "$ns" "$BIN/shoal-node" --cluster "$CLUSTER" --name "node-$ns" \
        --zenoh-config "$DIR/quic-$ns.json5" >"$DIR/stranger-node-$ns.log" 2>&1 &
    STRANGER_PIDS+=($!)
done

# The census from the manager's host: exactly the three nodes, each over QUIC with the name on
# its cluster certificate, and no problem (the doctor exits 1 on any).
if ! ip netns exec "$MANAGER" "$BIN/shoal" doctor --cluster "$CLUSTER" --nodes ${#NODES[@]} \
    --wait 60 --zenoh-config "$DIR/quic-manager.json5" >"$DIR/quic-doctor.log" 2>&1; then
    echo "netns: the doctor over QUIC found problems" >&2
    cat "$DIR/quic-doctor.log" >&2
    exit 1
fi
joined_s=$(since "$join_start")
grep -q "cluster \`$CLUSTER\`: 3 nodes" "$DIR/quic-doctor.log" || {
    echo "netns: the doctor's census is not the three nodes" >&2
    cat "$DIR/quic-doctor.log" >&2
    exit 1
}
for k in 1 2 3; do
    grep -Eq "^  node$k .*quic, cert shoal-n$k" "$DIR/quic-doctor.log" || {
        echo "netns: node$k is not shown authenticated over QUIC" >&2
        cat "$DIR/quic-doctor.log" >&2
        exit 1
    }
done
if grep -q "node-shoal-" "$DIR/quic-doctor.log"; then
    echo "netns: a stranger is in the census" >&2
    exit 1
fi

# Each stranger also speaks as a manager: it asks node1 for a checkup by name (no census
# needed), and starts a run of its own. Neither may reach a node.
write_config stranger 100
for ns in "${STRANGERS[@]}"; do
    if ip netns exec "$ns" "$BIN/shoal" doctor --cluster "$CLUSTER" --node node1 --wait 3 \
        --zenoh-config "$DIR/quic-$ns-manager.json5" >"$DIR/stranger-doctor-$ns.log" 2>&1; then
        echo "netns: stranger $ns got a checkup from node1" >&2
        exit 1
    fi
    grep -q "node1: no checkup" "$DIR/stranger-doctor-$ns.log" || {
        echo "netns: stranger $ns: the doctor did not fail for want of an answer" >&2
        cat "$DIR/stranger-doctor-$ns.log" >&2
        exit 1
    }
    sed -e "s|^file = .*|file = \"stranger-$ns.nc\"|" -e "s|^nodes = .*|nodes = 1|" \
        -e "s|^wait_seconds = .*|wait_seconds = 5\nzenoh_config = \"quic-$ns-manager.json5\"|" \
        "$DIR/stranger.toml" >"$DIR/stranger-$ns.toml"
    ip netns exec "$ns" "$BIN/shoal" run "$DIR/stranger-$ns.toml" --cluster "$CLUSTER" \
        >"$DIR/stranger-run-$ns.log" 2>&1 &
    STRANGER_RUNS+=($!)
done
# The revoked host's QUIC handshake succeeds (its certificate is the cluster CA's): node1 lists
# a link with its name, so what keeps it out is the access list, not a failed handshake.
lost_seen=""
for _ in $(seq 20); do
    ip netns exec "$MANAGER" "$BIN/shoal" doctor --cluster "$CLUSTER" --node node1 --links \
        --wait 1 --zenoh-config "$DIR/quic-manager.json5" >"$DIR/links-doctor.log" 2>&1 || true
    grep -q "node1 links: .*quic, cert lost-pi" "$DIR/links-doctor.log" && { lost_seen=1; break; }
    sleep 0.5
done
[[ -n $lost_seen ]] || {
    echo "netns: node1 shows no link from the revoked host (the access-list test would prove nothing)" >&2
    cat "$DIR/links-doctor.log" >&2
    exit 1
}
# The same question from the manager's host is answered: the strangers' silence is the fabric's.
ip netns exec "$MANAGER" "$BIN/shoal" doctor --cluster "$CLUSTER" --node node1 --wait 1 \
    --zenoh-config "$DIR/quic-manager.json5" >"$DIR/member-doctor.log" 2>&1 || {
    echo "netns: the manager's host got no checkup from node1 by name" >&2
    cat "$DIR/member-doctor.log" >&2
    exit 1
}

# Repeated runs over QUIC while the strangers knock: as many as fit a minute, at least 10.
write_config quic 3000 'zenoh_config = "quic-manager.json5"'
runs=0
quic_start=$EPOCHREALTIME
while :; do
    [[ $runs -eq 0 ]] && before=$(wire_bytes)
    if ! timeout 120 ip netns exec "$MANAGER" "$BIN/shoal" run "$DIR/quic.toml" \
        --cluster "$CLUSTER" >"$DIR/quic-run.log" 2>&1; then
        echo "netns: run $((runs + 1)) over QUIC failed" >&2
        cat "$DIR/quic-run.log" >&2
        exit 1
    fi
    runs=$((runs + 1))
    [[ $runs -eq 1 ]] && quic_bytes=$(($(wire_bytes) - before))
    if ! grep -q "3 nodes (" "$DIR/quic-run.log" || grep -q "node-shoal-" "$DIR/quic-run.log"; then
        echo "netns: run $runs over QUIC was not on the three nodes" >&2
        grep "fabric:" "$DIR/quic-run.log" >&2
        exit 1
    fi
    "$PYTHON" scripts/compare_nc.py "quic run $runs" "$DIR/inproc.nc" "$DIR/quic.nc" >/dev/null
    rm -f "$DIR/quic.nc"
    elapsed=$(since "$quic_start")
    [[ $runs -ge 10 ]] && awk -v e="$elapsed" 'BEGIN { exit !(e >= 60) }' && break
done
quic_s=$(since "$quic_start")
for k in 1 2 3; do
    took=$(grep -c "assigned partitions" "$DIR/quic-node$k.log" || true)
    [[ $took -eq $runs ]] || {
        echo "netns: node$k took $took assignments in $runs runs (a stranger's run reached it?)" >&2
        exit 1
    }
done
for pid in "${STRANGER_RUNS[@]}"; do
    if wait "$pid"; then
        echo "netns: a stranger's run found nodes" >&2
        exit 1
    fi
done
for ns in "${STRANGERS[@]}"; do
    grep -q "no node joined cluster" "$DIR/stranger-run-$ns.log" || {
        echo "netns: stranger $ns's run failed otherwise:" >&2
        cat "$DIR/stranger-run-$ns.log" >&2
        exit 1
    }
    if grep -q "assigned partitions" "$DIR/stranger-node-$ns.log"; then
        echo "netns: stranger $ns's node agent was handed partitions" >&2
        exit 1
    fi
done
echo "netns: QUIC: $quic_bytes bytes on the wire for $STEPS steps (the first run; strangers knocking)"
echo "netns: QUIC with mutual TLS: nodes joined and checked in ${joined_s}s; $runs runs in ${quic_s}s, each identical to the embedded run; strangers (another CA, no certificate, a revoked name) neither joined nor reached a node"

# --- Over QUIC: a node's link down for longer than the lease, mid-run. ---
# Enough particles that the run outlasts the lease and the roll-back.
PARTICLES=200000
write_config linkref $PARTICLES
write_config linkdown $PARTICLES 'zenoh_config = "quic-manager.json5"'
write_config linknext $PARTICLES 'zenoh_config = "quic-manager.json5"'
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
grep -q "abandoned" "$DIR/quic-node3.log" || {
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
