#!/usr/bin/env bash
# Recovery time on loopback: three `shoal-node` processes, one of which kills itself with
# SIGKILL at step 100 of 240 (SHOAL_TEST_FAULT), under a named-cluster manager. Prints the
# manager's own measure (from noticing the loss to stepping again: rollback, reassignment,
# re-partitioning, the survivors' restart from the checkpoint) and the whole run's time against
# the same run with no failure. Results go in BENCHMARKS.md.
#
# Usage: scripts/bench-recovery.sh [PARTICLES]   (default 200000; needs cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath -m "${SHOAL_BIN:-target/release}")
PARTICLES=${1:-200000}
DIR=$(mktemp -d -t shoal-recovery.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$DIR}"
"$BIN/shoal" synth --flow rotation -o "$DIR/f.nc" --nx 30 --ny 30 --duration 6h --interval 1h \
    >/dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:$port\"] }, scouting: { multicast: { enabled: false } } }" >"$DIR/m.json5"
echo "{ mode: \"peer\", listen: { endpoints: [\"tcp/127.0.0.1:0\"] }, connect: { endpoints: [\"tcp/127.0.0.1:$port\"] }, scouting: { multicast: { enabled: false } } }" >"$DIR/n.json5"
config() {
    cat >"$DIR/$1.toml" <<EOF
seed = 5
[input]
files = ["f.nc"]
[release.generate]
count = $PARTICLES
z = -2.0
[run]
duration = "4h"
dt = "60s"
[diffusion]
horizontal_kh = 1.0
[output]
file = "$1.nc"
interval = "30min"
[cluster]
nodes = 3
wait_seconds = 60
zenoh_config = "m.json5"
EOF
}
node() {
    "$BIN/shoal-node" --cluster bench --name "$1" --zenoh-config "$DIR/n.json5" --quiet --device cpu &
    PIDS+=($!)
}
config clean
config killed
node a
node b
node c
"$BIN/shoal" run "$DIR/clean.toml" --cluster bench 2>"$DIR/clean.log"
SHOAL_TEST_FAULT=kill:100 node v
kill "${PIDS[2]}"                         # c leaves: the run is a, b and the victim v
wait "${PIDS[2]}" 2>/dev/null || true
"$BIN/shoal" run "$DIR/killed.toml" --cluster bench 2>"$DIR/killed.log"
grep -h "^done:" "$DIR/clean.log" | sed 's/^/clean:  /'
grep -h "^warning:\|^recovered in\|^done:" "$DIR/killed.log" | sed 's/^/killed: /'
python3 scripts/compare_nc.py recovery "$DIR/clean.nc" "$DIR/killed.nc"
