#!/usr/bin/env bash
# An aarch64 shoal-node, run by qemu-user, joins an x86-64 manager on loopback beside a native
# x86-64 node: partitions are split between the two architectures and particles migrate across.
# The trajectories must equal, value by value, the native embedded run's; `shoal doctor` must
# list both nodes with their architectures and find no problem; `shoal pi` over both must give
# exactly the in-process estimate.
#
# Needs qemu-user and an aarch64 build of shoal-node:
#   SHOAL_NODE_AARCH64=path/to/shoal-node scripts/qemu-e2e.sh
# (default: build it with `cargo build --release --target aarch64-unknown-linux-gnu -p shoal-node`
# using .cargo/config.toml's cross linker). SHOAL_BIN picks the native binaries (default
# target/release). CI=1 turns "skipped" into a failure; SHOAL_QEMU_KEEP=1 keeps the files.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=$(realpath -m "${SHOAL_BIN:-target/release}")
TRIPLE=aarch64-unknown-linux-gnu
PYTHON=${PYTHON:-/usr/bin/python3}
CLUSTER=qemu-e2e-$$

cannot() {
    if [[ -n "${CI:-}" ]]; then
        echo "qemu-e2e: cannot run: $*" >&2
        exit 1
    fi
    echo "skipped: $*"
    exit 0
}

command -v qemu-aarch64 >/dev/null || cannot "needs qemu-aarch64 (apt-get install qemu-user)"
for b in shoal shoal-node; do
    [[ -x "$BIN/$b" ]] || cannot "$BIN/$b not built (cargo build --release)"
done
"$PYTHON" -c 'import netCDF4, numpy' 2>/dev/null || cannot "$PYTHON lacks netCDF4 and numpy"
NODE_A64=${SHOAL_NODE_AARCH64:-}
if [[ -z $NODE_A64 ]]; then
    command -v aarch64-linux-gnu-gcc >/dev/null ||
        cannot "needs the cross linker (apt-get install gcc-aarch64-linux-gnu)"
    cargo build --release -q --target "$TRIPLE" -p shoal-node
    NODE_A64=target/$TRIPLE/release/shoal-node
fi
NODE_A64=$(realpath "$NODE_A64")
# ELF machine 0xb7 (bytes 18-19) is aarch64.
[[ $(od -An -tx1 -j18 -N2 "$NODE_A64" | tr -d ' \n') == b700 ]] ||
    { echo "qemu-e2e: $NODE_A64 is not an aarch64 executable" >&2; exit 1; }

start=$EPOCHREALTIME
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
DIR=$(mktemp -d -t shoal-qemu.XXXXXX)
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 || -n "${SHOAL_QEMU_KEEP:-}" ]]; then
        for log in "$DIR"/*.log; do
            [[ -s $log ]] && { echo "--- $log"; tail -n 30 "$log"; }
        done
        [[ $rc -ne 0 ]] && echo "qemu-e2e: failed" >&2
        echo "qemu-e2e: files kept in $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

# qemu-user runs the aarch64 binary against the cross C library.
QEMU=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
"${QEMU[@]}" "$NODE_A64" >"$DIR/a64-report.log" 2>&1 && cat "$DIR/a64-report.log"
grep -q "on aarch64" "$DIR/a64-report.log" ||
    { echo "qemu-e2e: the aarch64 node does not report aarch64" >&2; exit 1; }

"$BIN/shoal" synth --flow rotation -o "$DIR/f.nc" --nx 24 --ny 24 --duration 4h --interval 1h \
    >/dev/null
write_config() {
    cat >"$DIR/$1.toml" <<EOF
seed = 11
[input]
files = ["f.nc"]
[release.generate]
count = 2000
z = -2.0
[run]
duration = "3h"
dt = "120s"
[diffusion]
horizontal_kh = 1.0
[output]
file = "$1.nc"
interval = "30min"
[cluster]
nodes = 2
partitions = 4
wait_seconds = 120
EOF
}
write_config native
write_config mixed

# Reference: the embedded default on x86-64, in-process nodes on loopback, on the scalar
# kernel; the nodes below step on their vector lanes (AVX2 or SSE2 here, NEON under qemu), so
# the comparison is also one of kernel variants across architectures.
"$BIN/shoal" run "$DIR/native.toml" --quiet --kernel scalar >"$DIR/native.log" 2>&1

# The nodes outlive the three manager processes below, so they listen and every manager
# connects to them; they find each other through zenoh's gossip, as peers do. Both step on
# their cores (`--device cpu`): the check is the CPU kernel's bits on two architectures.
read -r P1 P2 < <("$PYTHON" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
EP1="tcp/127.0.0.1:$P1" EP2="tcp/127.0.0.1:$P2"
SHOAL_KERNEL=simd "$BIN/shoal-node" --cluster "$CLUSTER" --listen "$EP1" --threads 1 --name x86 \
    --device cpu >"$DIR/node-x86.log" 2>&1 &
PIDS+=($!)
SHOAL_KERNEL=neon "${QEMU[@]}" "$NODE_A64" --cluster "$CLUSTER" --listen "$EP2" --connect "$EP1" --threads 1 \
    --name pi-qemu --device cpu >"$DIR/node-aarch64.log" 2>&1 &
PIDS+=($!)
FLEET=(--cluster "$CLUSTER" --connect "$EP1" --connect "$EP2" --listen tcp/127.0.0.1:0 --nodes 2 --wait 120)

# The doctor first: it waits for both nodes, so the run below finds them.
"$BIN/shoal" doctor "${FLEET[@]}" | tee "$DIR/doctor.log"
grep -Eq '^ +pi-qemu +aarch64 ' "$DIR/doctor.log" ||
    { echo "qemu-e2e: the doctor does not list the aarch64 node" >&2; exit 1; }
grep -Eq '^ +x86 +x86_64 ' "$DIR/doctor.log" ||
    { echo "qemu-e2e: the doctor does not list the x86-64 node" >&2; exit 1; }

# The run: two partitions on each architecture.
ZCONF="$DIR/manager.json5"
cat >"$ZCONF" <<EOF
{ mode: "peer", listen: { endpoints: ["tcp/127.0.0.1:0"] },
  connect: { endpoints: ["$EP1", "$EP2"] }, scouting: { multicast: { enabled: false } } }
EOF
echo "zenoh_config = \"$ZCONF\"" >>"$DIR/mixed.toml"
run_start=$EPOCHREALTIME
if ! timeout 600 "$BIN/shoal" run "$DIR/mixed.toml" --cluster "$CLUSTER" >"$DIR/manager.log" 2>&1; then
    echo "qemu-e2e: the manager failed" >&2
    exit 1
fi
run_s=$(since "$run_start")
grep -q "pi-qemu aarch64" "$DIR/manager.log" ||
    { echo "qemu-e2e: the aarch64 node took no partition" >&2; exit 1; }
"$PYTHON" scripts/compare_nc.py qemu-e2e "$DIR/native.nc" "$DIR/mixed.nc"
grep -q "kernel neon" "$DIR/node-aarch64.log" ||
    { echo "qemu-e2e: the aarch64 node did not step on NEON lanes" >&2; exit 1; }
grep -Eq "kernel (avx2|sse2)" "$DIR/node-x86.log" ||
    { echo "qemu-e2e: the x86-64 node did not step on vector lanes" >&2; exit 1; }
echo "qemu-e2e: the scalar reference equals the nodes stepping on $(grep -o -E 'kernel [a-z0-9]+' "$DIR/node-aarch64.log" | head -n1) (aarch64) and $(grep -o -E 'kernel [a-z0-9]+' "$DIR/node-x86.log" | head -n1) (x86-64)"

# pi over both architectures equals pi in one process, to the last sample.
SAMPLES=3000000
"$BIN/shoal" pi --samples $SAMPLES --seed 7 --nodes 1 | tee "$DIR/pi-native.log"
"$BIN/shoal" pi --samples $SAMPLES --seed 7 "${FLEET[@]}" | tee "$DIR/pi-mixed.log"
est() { grep -o 'pi ≈ [0-9.]*' "$1"; }
[[ -n $(est "$DIR/pi-native.log") && $(est "$DIR/pi-native.log") == $(est "$DIR/pi-mixed.log") ]] ||
    { echo "qemu-e2e: pi over the mixed cluster differs from the native estimate" >&2; exit 1; }
grep -q 'pi-qemu' "$DIR/pi-mixed.log" || { echo "qemu-e2e: pi-qemu took no share" >&2; exit 1; }

for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "qemu-e2e: a node agent exited early" >&2; exit 1; }
done
echo "qemu-e2e: aarch64 node under qemu and x86-64 node: run ${run_s}s, elapsed $(since "$start")s"
