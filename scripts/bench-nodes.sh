#!/usr/bin/env bash
# Node processes against the direct path (issue 27, part 5): the wall time of one run, a tidal
# flow on a synthetic FVCOM mesh of 6 962 elements, 12 h at dt 30 s with output every 3 h, with
# N particles released uniformly over the mesh, in four configurations:
#   - `shoal run --direct --threads 1`
#   - `shoal run --direct --threads $(nproc)`
#   - `shoal run --cluster NAME` on 2 `shoal-node --threads 1` processes (`[cluster] nodes = 2`)
#   - the same on 3 `shoal-node --threads 1` processes
# The node processes run on loopback, started fresh for every cluster run (they find each other
# by explicit TCP endpoints, multicast scouting off) and stopped after it; their start is not
# timed. The time is that of the whole `shoal run` command (reading the input, stepping, writing
# the output). Each configuration runs REPEAT times, interleaved; the table gives the median.
# Every run's output must equal the first direct 1-thread run's value for value (every
# variable, the variables' attributes and the global attributes, except `history`, which holds
# the date and command line, and `shoal_config`, the run file's text, whose `[cluster]` section
# differs), compared on `ncdump -p 9,17` (floats to 9 digits and doubles to 17: exact).
#
# LINKS names the networks the node processes run over (default `loopback`):
#   - loopback: every process on this machine's loopback;
#   - lan, wifi: the manager and each node in a network namespace of its own (needs root and
#     iproute2), joined by a bridge whose links `tc tbf` limits to the profile's rate (1 Gbit/s;
#     50 Mbit/s), with every connection to a node passing through `shoal link` in that node's
#     namespace, which delays each segment each way (0.2 ms; 3 ms ± 1 ms) and makes 0.1 % of
#     the wifi's segments wait a TCP retransmission (12 ms). Each message crosses one relay, as
#     each packet crosses one link's delay on a station's switch. What this does not model is
#     said in manager/src/tools/link.rs.
# The direct runs are timed once per repetition, whatever the links.
# PIN=1 pins node process i to core (i - 1) mod the core count (`taskset`), as on machines of
# their own: an idle node's core then goes to nobody else (the manager is not pinned).
# CLUSTER_EXTRA holds more `[cluster]` lines for the node runs, e.g. `rebalance_share = 1e9`.
#
# Usage: scripts/bench-nodes.sh [PARTICLES...]   (default 20000 100000; needs cargo build --release)
# Environment: SHOAL_BIN (default target/release), SHOAL_LINK_BIN (the `shoal` whose `link`
# relays the lan and wifi rows, default SHOAL_BIN's, for timing builds older than the relay),
# REPEAT (default 1), LINKS (default loopback),
# SHOAL_BENCH_DIR (work directory, kept; default a temporary one, removed unless something
# failed).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(realpath -m "${SHOAL_BIN:-target/release}")
LINK_BIN=$(realpath -m "${SHOAL_LINK_BIN:-$BIN/shoal}")
REPEAT=${REPEAT:-1}
COUNTS=("$@")
[[ ${#COUNTS[@]} -gt 0 ]] || COUNTS=(20000 100000)
THREADS=$(nproc)
read -r -a LINK_LIST <<<"${LINKS:-loopback}"
CONFIGS=(direct1 directN)
for link in "${LINK_LIST[@]}"; do
    case $link in
        loopback) CONFIGS+=(nodes2 nodes3) ;;
        lan | wifi) CONFIGS+=("nodes2-$link" "nodes3-$link") ;;
        *) echo "bench-nodes: LINKS: \`$link' is not loopback, lan or wifi" >&2; exit 1 ;;
    esac
done
NETNS=
[[ " ${LINK_LIST[*]} " =~ \ (lan|wifi)\  ]] && NETNS=1

die() { echo "bench-nodes: $*" >&2; exit 1; }
[[ $REPEAT =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive whole number, not \`$REPEAT'"
for n in "${COUNTS[@]}"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "particle count \`$n' is not a positive whole number"
done
if [[ -n "${PIN:-}" ]]; then
    command -v taskset >/dev/null || die "PIN needs taskset (util-linux)"
fi
# pin I: the command prefix that pins node I, when PIN is set.
pin() { [[ -n "${PIN:-}" ]] && echo "taskset -c $((($1 - 1) % THREADS))" || true; }
for b in shoal shoal-node; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b not built (cargo build --release, or set SHOAL_BIN)"
done
command -v ncdump >/dev/null || die "needs ncdump (apt-get install netcdf-bin) to compare outputs"
command -v python3 >/dev/null || die "needs python3 (to pick free loopback ports)"
if [[ -n $NETNS ]]; then
    [[ $(id -u) -eq 0 ]] || die "LINKS lan and wifi need root (network namespaces)"
    command -v ip >/dev/null && command -v tc >/dev/null || die "LINKS lan and wifi need iproute2"
fi

if [[ -n "${SHOAL_BENCH_DIR:-}" ]]; then
    DIR=$(realpath -m "$SHOAL_BENCH_DIR")
    mkdir -p "$DIR"
    KEEP=1
else
    DIR=$(mktemp -d -t shoal-bench-nodes.XXXXXX)
    KEEP=
fi
NODE_PIDS=()
RELAY_PIDS=()
NS_PREFIX="sbn$$"
NS_SWITCH="${NS_PREFIX}sw"
NS_MANAGER="${NS_PREFIX}m"
NS_NODES=("${NS_PREFIX}n1" "${NS_PREFIX}n2" "${NS_PREFIX}n3")

stop_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do          # agents leave the cluster on SIGTERM; 10 s grace
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
    for pid in "${RELAY_PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    RELAY_PIDS=()
}
cleanup() {
    local rc=$?
    stop_nodes
    if [[ -n $NETNS ]]; then
        for ns in "$NS_MANAGER" "${NS_NODES[@]}" "$NS_SWITCH"; do ip netns del "$ns" 2>/dev/null || true; done
    fi
    if [[ $rc -ne 0 ]]; then
        echo "bench-nodes: failed; files kept in $DIR" >&2
    elif [[ -z $KEEP ]]; then
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$DIR}"

# Seconds since an $EPOCHREALTIME stamp.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }

# K free TCP ports on loopback, all held at once so that they differ.
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# The input: a uniform eastward tide, 1 m/s, 12 h period, on 59 x 59 squares (6 962 elements).
"$BIN/shoal" synth --flow tidal --nx 59 --ny 59 --duration 24h --interval 1h -o "$DIR/f.nc" \
    >/dev/null

# write_config NAME PARTICLES [CLUSTER-SECTION]: the run file NAME.toml, writing NAME.nc.
write_config() {
    cat >"$DIR/$1.toml" <<EOF
seed = 27
[input]
files = ["f.nc"]
[release.generate]
count = $2
z = -2.0
[run]
duration = "12h"
dt = "30s"
device = "cpu"
[diffusion]
horizontal_kh = 1.0
[output]
file = "$1.nc"
interval = "3h"
${3:-}
EOF
}

# announced LOG WHO: waits up to 30 s for the node just started (the last of NODE_PIDS), which
# logs to LOG, to announce itself; fails naming WHO if it exits or stays silent.
announced() {
    for _ in $(seq 300); do
        grep -q "announced in cluster" "$1" && return 0
        kill -0 "${NODE_PIDS[-1]}" 2>/dev/null || { cat "$1" >&2; die "$2 exited"; }
        sleep 0.1
    done
    die "$2 did not announce itself in 30 s"
}

# start_nodes K CLUSTER: K `shoal-node --threads 1` processes on loopback, each listening on its
# own port and dialling the nodes started before it; writes CLUSTER-manager.json5, which dials
# them all. Returns once every node has announced itself.
start_nodes() {
    local k=$1 cluster=$2 i j dial log
    local -a ports
    read -r -a ports <<<"$(free_ports "$k")"
    for ((i = 0; i < k; i++)); do
        dial=""
        for ((j = 0; j < i; j++)); do dial+="\"tcp/127.0.0.1:${ports[j]}\", "; done
        echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:${ports[i]}\"] }," \
            "connect: { endpoints: [$dial] }, scouting: { multicast: { enabled: false } } }" \
            >"$DIR/$cluster-node$((i + 1)).json5"
        log="$DIR/$cluster-node$((i + 1)).log"
        : >"$log"                              # there before the first look at it
        $(pin $((i + 1))) "$BIN/shoal-node" --cluster "$cluster" --name "node$((i + 1))" \
            --zenoh-config "$DIR/$cluster-node$((i + 1)).json5" --threads 1 --device cpu \
            >"$log" 2>&1 &
        NODE_PIDS+=($!)
        announced "$log" "node$((i + 1)) of $cluster"
    done
    dial=""
    for ((j = 0; j < k; j++)); do dial+="\"tcp/127.0.0.1:${ports[j]}\", "; done
    echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:0\"] }," \
        "connect: { endpoints: [$dial] }, scouting: { multicast: { enabled: false } } }" \
        >"$DIR/$cluster-manager.json5"
}

# The simulated station (LINKS lan, wifi): a bridge in a namespace of its own, and the manager
# and each node in theirs, at 10.27.0.1 and 10.27.0.11-13.
if [[ -n $NETNS ]]; then
    for ns in "$NS_SWITCH" "$NS_MANAGER" "${NS_NODES[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$NS_SWITCH" link add br0 type bridge
    ip -n "$NS_SWITCH" link set br0 up
    host=0
    for ns in "$NS_MANAGER" "${NS_NODES[@]}"; do
        addr=$([[ $host -eq 0 ]] && echo 10.27.0.1 || echo "10.27.0.$((10 + host))")
        ip link add "p$host-$$" netns "$NS_SWITCH" type veth peer name eth0 netns "$ns"
        ip -n "$NS_SWITCH" link set "p$host-$$" master br0 up
        ip -n "$ns" addr add "$addr/24" dev eth0
        ip -n "$ns" link set eth0 up
        host=$((host + 1))
    done
fi

# set_rate LINK: every link of the station at the profile's rate, both ways (tbf on each veth's
# two ends; burst as large as one timer tick's worth of the rate needs).
set_rate() {
    local rate burst host ns
    case $1 in
        lan) rate=1gbit burst=512kb ;;
        wifi) rate=50mbit burst=64kb ;;
    esac
    host=0
    for ns in "$NS_MANAGER" "${NS_NODES[@]}"; do
        ip netns exec "$ns" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms
        ip netns exec "$NS_SWITCH" tc qdisc replace dev "p$host-$$" root tbf rate "$rate" burst "$burst" latency 100ms
        host=$((host + 1))
    done
}

# start_nodes_on LINK K CLUSTER: K `shoal-node --threads 1` processes, node i in its namespace
# listening on 127.0.0.1:7448 behind `shoal link --profile LINK` on 10.27.0.1i:7447, dialling
# the nodes started before it through their relays; writes CLUSTER-manager.json5 (the manager
# dials every relay). Gossip is off, so every connection is one of these, through a relay.
start_nodes_on() {
    local link=$1 k=$2 cluster=$3 i j dial log ns
    set_rate "$link"
    for ((i = 1; i <= k; i++)); do
        ns=${NS_NODES[i - 1]}
        ip netns exec "$ns" "$LINK_BIN" link --listen "10.27.0.1$i:7447" --to 127.0.0.1:7448 \
            --profile "$link" --seed "$i" >"$DIR/$cluster-link$i.log" 2>&1 &
        RELAY_PIDS+=($!)
        dial=""
        for ((j = 1; j < i; j++)); do dial+="\"tcp/10.27.0.1$j:7447\", "; done
        echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:7448\"] }," \
            "connect: { endpoints: [$dial] }, scouting: { multicast: { enabled: false }," \
            "gossip: { enabled: false } } }" >"$DIR/$cluster-node$i.json5"
        log="$DIR/$cluster-node$i.log"
        : >"$log"
        ip netns exec "$ns" $(pin "$i") "$BIN/shoal-node" --cluster "$cluster" --name "node$i" \
            --zenoh-config "$DIR/$cluster-node$i.json5" --threads 1 --device cpu >"$log" 2>&1 &
        NODE_PIDS+=($!)
        announced "$log" "node$i of $cluster"
    done
    dial=""
    for ((j = 1; j <= k; j++)); do dial+="\"tcp/10.27.0.1$j:7447\", "; done
    echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:0\"] }," \
        "connect: { endpoints: [$dial] }, scouting: { multicast: { enabled: false }," \
        "gossip: { enabled: false } } }" >"$DIR/$cluster-manager.json5"
}

# A digest of the output's values and attributes, less `history` and `shoal_config` (and the
# first line, which names the file).
digest() {
    ncdump -p 9,17 "$1" | awk '
        NR == 1 { next }
        skip { if (/ ;$/) skip = 0; next }
        /^\t\t:(history|shoal_config) = / { if (!/ ;$/) skip = 1; next }
        { print }' | sha256sum | cut -d' ' -f1
}

# run_one CONFIG PARTICLES REP: one timed run; appends "CONFIG SECONDS" to times-PARTICLES.
declare -A REF
MISMATCH=()
CHECKED=0
run_one() {
    local cfg=$1 n=$2 rep=$3 name="n$2-$1-r$3" cluster="" k=0 t0 secs d
    local -a args inside=()
    case $cfg in
        direct1) args=(--direct --threads 1) ;;
        directN) args=(--direct --threads "$THREADS") ;;
        nodes?)
            k=${cfg#nodes}
            cluster="c$$n$2$1r$3"
            start_nodes "$k" "$cluster"
            args=(--cluster "$cluster")
            ;;
        nodes?-*)
            k=${cfg:5:1}
            cluster="c$$n$2$1r$3"
            start_nodes_on "${cfg#nodes?-}" "$k" "$cluster"
            args=(--cluster "$cluster")
            inside=(ip netns exec "$NS_MANAGER")
            ;;
    esac
    if [[ $k -gt 0 ]]; then
        write_config "$name" "$n" "[cluster]
nodes = $k
wait_seconds = 60
zenoh_config = \"$cluster-manager.json5\"
${CLUSTER_EXTRA:-}"
    else
        write_config "$name" "$n"
    fi
    t0=$EPOCHREALTIME
    if ! "${inside[@]}" "$BIN/shoal" run "$DIR/$name.toml" "${args[@]}" >"$DIR/$name.log" 2>&1; then
        tail -n 30 "$DIR/$name.log" >&2
        die "$name: shoal run failed"
    fi
    secs=$(since "$t0")
    if [[ $k -gt 0 ]]; then
        grep -q "^fabric: .*: $k nodes (" "$DIR/$name.log" || {
            grep "fabric:" "$DIR/$name.log" >&2 || true
            die "$name: the run was not on its $k node processes"
        }
        for pid in "${NODE_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "$name: a node process exited during the run"
        done
        stop_nodes
    fi
    echo "$cfg $secs" >>"$DIR/times-$n"
    d=$(digest "$DIR/$name.nc")
    CHECKED=$((CHECKED + 1))
    if [[ -z "${REF[$n]:-}" ]]; then
        REF[$n]=$d                              # the first direct 1-thread run is the reference
    elif [[ $d != "${REF[$n]}" ]]; then
        MISMATCH+=("$name")
    else
        [[ -n $KEEP ]] || rm -f "$DIR/$name.nc"
    fi
    printf 'bench-nodes: %8d particles, run %d/%d, %-8s %8.2f s%s\n' "$n" "$rep" "$REPEAT" \
        "$cfg" "$secs" "$([[ $d == "${REF[$n]}" ]] && echo "" || echo "  OUTPUT DIFFERS")" >&2
}

for n in "${COUNTS[@]}"; do
    rm -f "$DIR/times-$n"
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for cfg in "${CONFIGS[@]}"; do run_one "$cfg" "$n" "$rep"; done
    done
done

# The median of CONFIG's times in FILE.
median() {
    awk -v c="$1" '$1 == c { print $2 }' "$2" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo "Wall time of \`shoal run\` (median of $REPEAT), tidal flow, 6 962 elements, 12 h at dt 30 s" \
    "(1 440 steps), output every 3 h; $THREADS cores ($(uname -m))${PIN:+; node processes pinned to a core each}${CLUSTER_EXTRA:+; [cluster] $CLUSTER_EXTRA}:"
echo
echo "| particles | link | direct, 1 thread | direct, $THREADS threads | 2 node processes | 3 node processes | speed-up, 2 processes | speed-up, 3 processes |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
for n in "${COUNTS[@]}"; do
    t1=$(median direct1 "$DIR/times-$n")
    tn=$(median directN "$DIR/times-$n")
    for link in "${LINK_LIST[@]}"; do
        suffix=$([[ $link == loopback ]] && echo "" || echo "-$link")
        t2=$(median "nodes2$suffix" "$DIR/times-$n")
        t3=$(median "nodes3$suffix" "$DIR/times-$n")
        awk -v n="$n" -v l="$link" -v t1="$t1" -v tn="$tn" -v t2="$t2" -v t3="$t3" 'BEGIN {
            printf "| %d | %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f | %.2f |\n", n, l, t1, tn, t2, t3, t1 / t2, t1 / t3 }'
    done
done
echo
if [[ ${#MISMATCH[@]} -gt 0 ]]; then
    echo "Outputs: ${#MISMATCH[@]} of $CHECKED runs differ from the direct 1-thread run: ${MISMATCH[*]}" \
        "(files in $DIR)"
    KEEP=1
    exit 1
fi
echo "Outputs: all $CHECKED runs identical to the direct 1-thread run of their particle count" \
    "(every variable value for value, and every attribute but history and shoal_config)."
