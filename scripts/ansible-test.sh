#!/usr/bin/env bash
# The ansible deployment (ansible/), tested for real on one machine:
#   1. pinned ansible-core and ansible-lint in a venv (target/ansible-venv), ansible-lint with the
#      production profile, ansible-playbook --syntax-check with the example inventory;
#   2. a manager and three node hosts, each a Linux network namespace on a bridge running its own
#      sshd (root, key only), converged by ansible-playbook from a controller namespace. The
#      namespaces share one filesystem, so every host installs under its own prefix
#      (shoal_root = $DIR/hosts/<host>); systemd does not run here, so the units are installed and
#      checked with systemd-analyze verify but not started;
#   3. the installed node agents and job server started as their units would (ExecStart, as the
#      service user, in the working directory), with the installed binaries and zenoh
#      configurations (QUIC with mutual TLS and access control, the roles' default; plain TCP
#      with SHOAL_ANSIBLE_TRANSPORT=tcp); two jobs submitted from the controller with the
#      certificate the roles made for it (shoal_submitters), the server's power cut (SIGKILL)
#      in the middle of the first and the unit started again: both jobs must finish once, every
#      node must take part, and the trajectories fetched back to the controller must equal,
#      value by value, those of the embedded runs of the same run files; `shoal doctor` from
#      the manager must see every node authenticated by its certificate;
#   4. a second converge, which must change nothing on any host (changed=0 in the recap).
#
# Needs root, iproute2, openssh-server (sshd), openssl, util-linux (setpriv), Python 3 with venv
# and netCDF4, and the release binaries (cargo build --release -p shoal-manager -p shoal-node).
# Run as: sudo scripts/ansible-test.sh
# CI=1 turns "skipped" into a failure. SHOAL_BIN picks the binaries (default target/release);
# SHOAL_ANSIBLE_VENV picks the virtual environment (default target/ansible-venv);
# SHOAL_ANSIBLE_KEEP=1 keeps the temporary directory (inventory, hosts, logs) even on success;
# SHOAL_ANSIBLE_RUNS=N submits the two jobs N times (default 1), each round of which must pass.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=$(realpath -m "${SHOAL_BIN:-target/release}")
VENV=${SHOAL_ANSIBLE_VENV:-$ROOT/target/ansible-venv}
PYTHON=${PYTHON:-/usr/bin/python3}
CLUSTER=ansci
RUNS=${SHOAL_ANSIBLE_RUNS:-1}     # how many rounds of two submitted jobs
# The fabric's links: the roles' default (QUIC with mutual TLS), or plain TCP.
case ${SHOAL_ANSIBLE_TRANSPORT:-quic} in
    quic) TRANSPORT=QUIC EXTRA=() ;;
    tcp) TRANSPORT=TCP EXTRA=(-e shoal_fabric_transport=tcp) ;;
    *) echo "ansible-test: SHOAL_ANSIBLE_TRANSPORT is quic or tcp" >&2; exit 2 ;;
esac
NET=10.78.0                      # netns-test.sh uses 10.77.0: both can run at once
SWITCH=shoal-a-sw                # holds the bridge: the host's own network stays untouched
BRIDGE=shoalabr0
CTL=shoal-a-ctl                  # the ansible controller
HOSTS=(mgr n1 n2 n3)             # inventory names; namespace shoal-a-<name>
NODES=(n1 n2 n3)
declare -A ADDR=([ctl]=$NET.2 [mgr]=$NET.10 [n1]=$NET.11 [n2]=$NET.12 [n3]=$NET.13)
# Power profiles, and the governor each must leave in the host's (fake) sysfs.
declare -A PROFILE=([mgr]=performance [n1]=balanced [n2]=low [n3]=performance)
declare -A GOVERNOR=([performance]=performance [balanced]=schedutil [low]=powersave)

cannot() {
    if [[ -n "${CI:-}" ]]; then
        echo "ansible-test: cannot run: $*" >&2
        exit 1
    fi
    echo "skipped: $*"
    exit 0
}
fail() {
    echo "ansible-test: FAILED: $*" >&2
    exit 1
}
say() { echo "ansible-test: $*"; }
# Seconds since an $EPOCHREALTIME stamp, to a tenth.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
ns() { echo "shoal-a-$1"; }

[[ $(id -u) -eq 0 ]] || cannot "needs root for network namespaces and sshd"
# What this script uses, and what the roles install from apt (the test hosts have no route out,
# so those must be here already): installed when missing, where apt-get is.
packages=(iproute2 openssh-server openssh-client openssl util-linux file binutils python3-venv
    python3-apt systemd systemd-timesyncd libnetcdf19)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]] && command -v apt-get >/dev/null; then
    echo "ansible-test: installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
        >/dev/null 2>&1 || cannot "needs ${missing[*]} (apt-get install ${missing[*]} failed)"
fi
for tool in ip sshd ssh ssh-keygen openssl setpriv sha256sum systemd-analyze; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] ||
        cannot "needs $tool (iproute2, openssh-server, openssh-client, openssl, util-linux, systemd)"
done
for b in shoal shoal-node; do
    [[ -x "$BIN/$b" ]] || cannot "$BIN/$b not built (cargo build --release -p shoal-manager -p shoal-node)"
done
[[ -x deploy/build.sh ]] || cannot "deploy/build.sh missing (it packages the release the playbook installs)"
command -v file >/dev/null || cannot "needs file (deploy/build.sh uses it)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || cannot "$PYTHON lacks venv (apt-get install python3-venv)"
/usr/bin/python3 -c 'import apt' 2>/dev/null || cannot "the hosts' python lacks apt (apt-get install python3-apt)"
for p in systemd-timesyncd libnetcdf19; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || cannot "needs $p installed"
done
"$PYTHON" -c 'import netCDF4, numpy' 2>/dev/null || cannot "$PYTHON lacks netCDF4 and numpy"

start=$EPOCHREALTIME
DIR=$(mktemp -d -t shoal-ansible.XXXXXX)
chmod 0755 "$DIR"                # the service user walks into the hosts' prefixes
LOGS=$DIR/logs
mkdir -p "$LOGS"
PIDS=()                          # node agents and sshds, ours to stop

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do       # agents leave the cluster on SIGTERM; 10 s grace
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for sock in "$DIR"/cp/*; do        # ansible's ssh connection masters
        [[ -S $sock ]] && ssh -o ControlPath="$sock" -O exit dummy >/dev/null 2>&1
    done
    for h in ctl "${HOSTS[@]}" sw; do
        ip netns del "$(ns "$h")" 2>/dev/null
    done
    if [[ $rc -ne 0 || -n "${SHOAL_ANSIBLE_KEEP:-}" ]]; then
        for log in "$LOGS"/*.log; do
            [[ -s $log ]] && { echo "--- $log"; tail -n 40 "$log"; }
        done
        [[ $rc -ne 0 ]] && echo "ansible-test: failed after $(since "$start")s" >&2
        echo "ansible-test: files kept in $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT

# --- 1. The tools, the lint, the syntax. ---
t=$EPOCHREALTIME
if [[ ! -x $VENV/bin/pip ]]; then
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r ansible/requirements.txt >"$LOGS/pip.log" 2>&1 ||
    fail "pip install -r ansible/requirements.txt (see $LOGS/pip.log)"
export PATH="$VENV/bin:$PATH" ANSIBLE_CONFIG=$ROOT/ansible/ansible.cfg ANSIBLE_FORCE_COLOR=0
export ANSIBLE_NOCOLOR=1 NO_COLOR=1
# ssh connection masters of this run only: a master left by an earlier run would talk to a host
# (namespace) that is gone.
export ANSIBLE_SSH_CONTROL_PATH_DIR=$DIR/cp
versions=$(ansible --version)
lint_version=$(ansible-lint --version 2>/dev/null)
say "${versions%%$'\n'*}, ${lint_version%% using*} (venv $(since "$t")s)"

t=$EPOCHREALTIME
(cd ansible && ansible-lint --profile production) >"$LOGS/lint.log" 2>&1 || fail "ansible-lint (see $LOGS/lint.log)"
(cd ansible && ansible-playbook -i inventory/example.yml site.yml --syntax-check) >"$LOGS/syntax.log" 2>&1 ||
    fail "ansible-playbook --syntax-check (see $LOGS/syntax.log)"
say "ansible-lint (production profile) and --syntax-check passed ($(since "$t")s)"

# --- 2. The x86_64 release, packaged by deploy/build.sh from this machine's binaries (stripped
# first: smaller copies to four hosts). The playbook finds it by the version in Cargo.toml. ---
t=$EPOCHREALTIME
mkdir -p "$DIR/prebuilt"
for b in shoal shoal-node; do
    strip -o "$DIR/prebuilt/$b" "$BIN/$b" 2>/dev/null || cp "$BIN/$b" "$DIR/prebuilt/$b"
done
deploy/build.sh --flavour x86_64 --prebuilt "$DIR/prebuilt" --out "$DIR/dist" --no-smoke \
    >"$LOGS/build.log" 2>&1 || fail "deploy/build.sh --prebuilt (see $LOGS/build.log)"
REL=$(ls -d "$DIR"/dist/shoal-*-x86_64)
[[ -s $REL/SHA256SUMS && -x $REL/bin/shoal && -x $REL/bin/shoal-node ]] || fail "no release in $REL"
say "release ${REL##*/} packaged ($(since "$t")s)"

# --- 3. The network: a bridge in its own namespace, one veth to each host and the controller. ---
for h in ctl "${HOSTS[@]}" sw; do
    ip netns del "$(ns "$h")" 2>/dev/null || true    # leftovers of an interrupted run
    ip netns add "$(ns "$h")"
    ip -n "$(ns "$h")" link set lo up
done
ip -n "$SWITCH" link add "$BRIDGE" type bridge
ip -n "$SWITCH" link set "$BRIDGE" up
for h in ctl "${HOSTS[@]}"; do
    ip link add "va-$h" netns "$SWITCH" type veth peer name eth0 netns "$(ns "$h")"
    ip -n "$SWITCH" link set "va-$h" master "$BRIDGE" up
    ip -n "$(ns "$h")" addr add "${ADDR[$h]}/24" dev eth0
    ip -n "$(ns "$h")" link set eth0 up
done

# --- 4. sshd in every host namespace: root, one key, made for this run. ---
SSH=$DIR/ssh
mkdir -p "$SSH" /run/sshd
chmod 0755 /run/sshd
ssh-keygen -q -t ed25519 -N '' -C shoal-ansible-test -f "$SSH/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -C shoal-ansible-host -f "$SSH/host_ed25519"
cp "$SSH/id_ed25519.pub" "$SSH/authorized_keys"
: >"$SSH/known_hosts"
for h in "${HOSTS[@]}"; do
    echo "${ADDR[$h]} $(cut -d' ' -f1,2 "$SSH/host_ed25519.pub")" >>"$SSH/known_hosts"
    cat >"$SSH/sshd_$h.conf" <<EOF
ListenAddress ${ADDR[$h]}:22
HostKey $SSH/host_ed25519
PidFile none
AuthorizedKeysFile $SSH/authorized_keys
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
Subsystem sftp internal-sftp
EOF
    ip netns exec "$(ns "$h")" /usr/sbin/sshd -D -e -f "$SSH/sshd_$h.conf" >"$LOGS/sshd-$h.log" 2>&1 &
    PIDS+=($!)
done
for h in "${HOSTS[@]}"; do
    for i in $(seq 50); do
        ip netns exec "$CTL" ssh -i "$SSH/id_ed25519" -o BatchMode=yes -o ConnectTimeout=2 \
            -o UserKnownHostsFile="$SSH/known_hosts" -o StrictHostKeyChecking=yes \
            "root@${ADDR[$h]}" true 2>/dev/null && break
        [[ $i -eq 50 ]] && fail "sshd on $h (${ADDR[$h]}) does not answer"
        sleep 0.2
    done
done

# --- 5. The hosts' prefixes, each with a fake cpufreq for the governor. ---
for h in "${HOSTS[@]}"; do
    for c in 0 1; do
        d=$DIR/hosts/$h/sys/devices/system/cpu/cpu$c/cpufreq
        mkdir -p "$d"
        echo "conservative ondemand userspace powersave performance schedutil" \
            >"$d/scaling_available_governors"
        echo cpufreq-dt >"$d/scaling_driver"
        echo ondemand >"$d/scaling_governor"
    done
done
chmod 0755 "$DIR/hosts"

# --- 6. The inventory: the example's shape, with this machine's paths. ---
cat >"$DIR/inventory.yml" <<EOF
---
all:
  vars:
    ansible_user: root
    ansible_become: false
    ansible_python_interpreter: /usr/bin/python3
    ansible_ssh_private_key_file: $SSH/id_ed25519
    ansible_ssh_common_args: >-
      -o UserKnownHostsFile=$SSH/known_hosts -o StrictHostKeyChecking=yes
  children:
    shoal:
      vars:
        shoal_cluster: $CLUSTER
        shoal_dist_dir: $DIR/dist
        shoal_flavour: x86_64
        shoal_pki_dir: $DIR/pki
        shoal_root: "$DIR/hosts/{{ inventory_hostname }}"
        # The hosts have no route out: the packages are installed beforehand.
        shoal_apt_update_cache: false
        shoal_ntp_servers: [$NET.1]
        # The controller submits jobs with a certificate of its own.
        shoal_submitters: [{ name: ctl, address: ${ADDR[ctl]} }]
      children:
        shoal_manager:
          hosts:
            mgr: { ansible_host: ${ADDR[mgr]}, shoal_power_profile: ${PROFILE[mgr]} }
        shoal_nodes:
          hosts:
EOF
for h in "${NODES[@]}"; do
    echo "            $h: { ansible_host: ${ADDR[$h]}, shoal_power_profile: ${PROFILE[$h]} }" \
        >>"$DIR/inventory.yml"
done

converge() {    # converge N: runs the playbook, keeps its log, prints the recap
    local log=$LOGS/converge$1.log t=$EPOCHREALTIME
    if ! ip netns exec "$CTL" ansible-playbook -i "$DIR/inventory.yml" "${EXTRA[@]}" ansible/site.yml >"$log" 2>&1; then
        sed -n '/PLAY RECAP/,$p' "$log"
        fail "converge $1 (see $log)"
    fi
    say "converge $1 took $(since "$t")s"
    sed -n '/PLAY RECAP/,/^$/p' "$log" | sed '/^$/d'
}

# --- 7. The first converge, and what it must have left on each host. ---
converge 1
for h in "${HOSTS[@]}"; do
    p=$DIR/hosts/$h/opt/shoal
    for f in bin/shoal-governor tls/ca.crt tls/host.crt tls/host.key; do
        [[ -s $p/$f ]] || fail "$h: $p/$f missing"
    done
    [[ $(stat -c '%U:%G %a' "$p/tls/host.key") == "root:shoal 640" ]] || fail "$h: host.key owner/mode"
    [[ $(stat -c '%U:%G %a' "$p/data") == "shoal:shoal 750" ]] || fail "$h: data owner/mode"
    [[ -s $DIR/hosts/$h/etc/systemd/timesyncd.conf.d/shoal.conf ]] || fail "$h: timesyncd drop-in missing"
    want=${GOVERNOR[${PROFILE[$h]}]}
    for c in 0 1; do
        got=$(cat "$DIR/hosts/$h/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor")
        [[ $got == "$want" ]] || fail "$h: cpu$c governor $got, wanted $want (${PROFILE[$h]})"
    done
    # The certificate names the host's address, and the CA signed it.
    openssl verify -CAfile "$p/tls/ca.crt" "$p/tls/host.crt" >/dev/null || fail "$h: certificate not signed by the CA"
    openssl x509 -in "$p/tls/host.crt" -noout -ext subjectAltName | grep -q "IP Address:${ADDR[$h]}" ||
        fail "$h: certificate without IP ${ADDR[$h]}"
done
units=()
for h in "${HOSTS[@]}"; do
    units+=("$DIR/hosts/$h/etc/systemd/system/shoal-governor.service")
done
for h in "${NODES[@]}"; do
    units+=("$DIR/hosts/$h/etc/systemd/system/shoal-node.service")
    [[ -s $DIR/hosts/$h/opt/shoal/etc/zenoh-node.json5 ]] || fail "$h: zenoh-node.json5 missing"
done
units+=("$DIR/hosts/mgr/etc/systemd/system/shoal-serve.service")
for u in shoal-job.service shoal-submit.service shoal-submit.timer; do
    [[ ! -e $DIR/hosts/mgr/etc/systemd/system/$u ]] || fail "mgr: $u without a schedule"
done
[[ -s $DIR/pki/submitters/ctl.json5 ]] || fail "the controller's submitter configuration is missing"
for u in "${units[@]}"; do
    [[ -s $u ]] || fail "$u missing"
done
# systemd-analyze verify reads the unit files as systemd would (without a running systemd).
if ! SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "${units[@]}" >"$LOGS/verify.log" 2>&1; then
    fail "systemd-analyze verify (see $LOGS/verify.log)"
fi
if grep -v -E '^$' "$LOGS/verify.log" | grep -q .; then
    cat "$LOGS/verify.log"
    fail "systemd-analyze verify warned about the units"
fi
# The services' sandbox, rated offline (0 is a sealed box, 10 an unconfined root process).
exposure=()
for u in "$DIR/hosts/n1/etc/systemd/system/shoal-node.service" "$DIR/hosts/mgr/etc/systemd/system/shoal-serve.service"; do
    systemd-analyze security --offline=true --no-pager --threshold=25 "$u" >"$LOGS/security-${u##*/}.log" 2>&1 ||
        fail "${u##*/} is exposed above 2.5 (see $LOGS/security-${u##*/}.log)"
    exposure+=("${u##*/} $(sed -n 's/^.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$LOGS/security-${u##*/}.log")")
done
say "installed files, certificates, governors checked; ${#units[@]} units pass systemd-analyze verify"
say "exposure (systemd-analyze security): ${exposure[*]}"

# systemd's side of Type=notify for the node units: a datagram socket per node that records
# what the agent sends (READY=1, WATCHDOG=1, STOPPING=1), one line per message.
NOTIFY=$DIR/notify
mkdir -p "$NOTIFY"
chmod 0755 "$NOTIFY"
"$PYTHON" - "$NOTIFY" "${NODES[@]}" <<'EOF' &
import os, selectors, socket, sys, time
where, hosts = sys.argv[1], sys.argv[2:]
sel = selectors.DefaultSelector()
for h in hosts:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(f"{where}/{h}.sock")
    os.chmod(f"{where}/{h}.sock", 0o666)      # the agents run as the service user
    sel.register(s, selectors.EVENT_READ, h)
open(f"{where}/ready", "w").close()
while True:
    for key, _ in sel.select():
        msg = key.fileobj.recv(4096).decode(errors="replace").replace("\n", " | ")
        with open(f"{where}/{key.data}.log", "a") as f:
            f.write(f"{time.time():.1f} {msg}\n")
EOF
PIDS+=($!)
for _ in $(seq 50); do [[ -e $NOTIFY/ready ]] && break; sleep 0.1; done
[[ -e $NOTIFY/ready ]] || fail "the notification listener did not start"

# ExecStart= and WorkingDirectory= of an installed unit, run as its User= in a namespace, with
# NOTIFY_SOCKET and WATCHDOG_USEC when the unit is Type=notify with WatchdogSec=, as systemd would.
# In the background (no timeout) its pid is UNIT_PID, and it joins PIDS unless KEEP_OUT is set.
run_unit() {    # run_unit HOST UNIT-FILE LOG [timeout-seconds]
    local host=$1 unit=$2 log=$3 limit=${4:-0} exec wd user env=() wdog
    exec=$(sed -n 's/^ExecStart=//p' "$unit")
    wd=$(sed -n 's/^WorkingDirectory=//p' "$unit")
    user=$(sed -n 's/^User=//p' "$unit")
    [[ -n $exec && -n $wd && -n $user ]] || fail "$unit lacks ExecStart, WorkingDirectory or User"
    if grep -q '^Type=notify$' "$unit"; then
        env+=("NOTIFY_SOCKET=$NOTIFY/$host.sock")
        wdog=$(sed -n 's/^WatchdogSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
        [[ -n $wdog ]] && env+=("WATCHDOG_USEC=$((wdog * 1000000))")
    fi
    local cmd=(ip netns exec "$(ns "$host")" env "${env[@]}" setpriv --reuid="$user" --regid="$user"
        --init-groups --inh-caps=-all -- /bin/sh -c "cd '$wd' && exec $exec >>'$log' 2>&1")
    if [[ $limit -gt 0 ]]; then
        timeout "$limit" "${cmd[@]}"
    else
        "${cmd[@]}" &
        UNIT_PID=$!
        [[ -n ${KEEP_OUT:-} ]] || PIDS+=($!)
    fi
}

# --- 8. The node agents, as their units start them. ---
for h in "${NODES[@]}"; do
    run_unit "$h" "$DIR/hosts/$h/etc/systemd/system/shoal-node.service" "$DIR/hosts/$h/opt/shoal/log/agent.log"
done
for h in "${NODES[@]}"; do      # READY=1 once the agent is in the cluster
    for _ in $(seq 100); do grep -q 'READY=1' "$NOTIFY/$h.log" 2>/dev/null && break; sleep 0.1; done
    grep -q 'READY=1' "$NOTIFY/$h.log" 2>/dev/null || fail "$h: the agent sent no READY=1 within 10 s"
done
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || fail "a node agent (or an sshd) exited at start"
done
say "the ${#NODES[@]} agents are up, started as their units start them (READY=1 received)"

# --- 9. The job server, as shoal-serve.service runs it; two jobs submitted from the controller,
# and a power cut in the middle of the first. ---
MGR=$DIR/hosts/mgr/opt/shoal
SPOOL=$MGR/data/spool
SERVE_UNIT=$DIR/hosts/mgr/etc/systemd/system/shoal-serve.service
CTL_DIR=$DIR/ctl
mkdir -p "$CTL_DIR"
"$BIN/shoal" synth --flow rotation -o "$CTL_DIR/rotation.nc" --nx 30 --ny 30 --duration 6h \
    --interval 1h >"$LOGS/synth.log" 2>&1 || fail "shoal synth (see $LOGS/synth.log)"
for job in a b; do
    seed=$([[ $job == a ]] && echo 11 || echo 12)
    cat >"$CTL_DIR/$job.toml" <<EOF
seed = $seed

[input]
files = ["rotation.nc"]

[release.generate]
count = 2000
z = -2.0

[run]
duration = "4h"
dt = "30s"
device = "cpu"

[diffusion]
horizontal_kh = 1.0

[output]
file = "$job.nc"
interval = "30min"

[cluster]
nodes = ${#NODES[@]}
wait_seconds = 60
EOF
done
ctl_shoal() {   # ctl_shoal ARGS...: shoal on the controller, asking the manager's job server
    ip netns exec "$CTL" "$BIN/shoal" "$@" --cluster "$CLUSTER" \
        --zenoh-config "$DIR/pki/submitters/ctl.json5"
}
serve_up() {    # serve_up: the unit's ExecStart in the manager's namespace, in the background
    KEEP_OUT=1 run_unit mgr "$SERVE_UNIT" "$MGR/log/serve.log"
    SERVE_PID=$UNIT_PID
}
want_submitter=ctl
[[ $TRANSPORT == TCP ]] && want_submitter="[^ ]+@[^ ]+ \(no certificate\)"
for run in $(seq "$RUNS"); do
    rm -rf "${SPOOL:?}"/* "$CTL_DIR"/fetched-*
    t=$EPOCHREALTIME
    serve_up
    for job in a b; do
        ctl_shoal submit "$CTL_DIR/$job.toml" --wait 60 >"$LOGS/submit-$job.log" 2>&1 ||
            fail "shoal submit $job.toml from the controller (see $LOGS/submit-$job.log)"
    done
    grep -q "job 000001 queued" "$LOGS/submit-a.log" || fail "job a not queued as 000001 (see $LOGS/submit-a.log)"
    # The power cut, mid-run: SIGKILL as soon as job 1's checkpoint at its start has been
    # replaced by a later one (each is renamed into place: a new inode).
    first=""
    for _ in $(seq 2400); do
        now=$(stat -c %i "$SPOOL/jobs/000001/a.nc.checkpoint" 2>/dev/null || true)
        [[ -z $first ]] && first=$now
        [[ -n $now && $now != "$first" ]] && break
        sleep 0.05
    done
    kill -KILL "$SERVE_PID" 2>/dev/null || fail "the job server was gone before the cut (see $MGR/log/serve.log)"
    wait "$SERVE_PID" 2>/dev/null || true
    grep -q '"phase": "running"' "$SPOOL/jobs/000001/state.json" ||
        fail "job 1 was not running at the cut: $(cat "$SPOOL/jobs/000001/state.json")"
    # The machine comes back: systemd starts the unit at boot.
    serve_up
    done_jobs=0
    for _ in $(seq 480); do
        ctl_shoal jobs --wait 30 >"$LOGS/jobs.log" 2>&1 || fail "shoal jobs from the controller (see $LOGS/jobs.log)"
        done_jobs=$(grep -c -E '^00000[12] +done ' "$LOGS/jobs.log" || true)
        [[ $done_jobs -eq 2 ]] && break
        grep -q -E ' failed ' "$LOGS/jobs.log" && break
        sleep 0.5
    done
    job_s=$(since "$t")
    cp "$MGR/log/serve.log" "$LOGS/serve.log"
    for h in "${NODES[@]}"; do
        cp "$DIR/hosts/$h/opt/shoal/log/agent.log" "$LOGS/agent-$h.log" 2>/dev/null || true
    done
    [[ $done_jobs -eq 2 ]] || fail "the two jobs did not finish (see $LOGS/jobs.log and $LOGS/serve.log)"
    # Job 1 started twice (the cut), job 2 once; both by the controller's certificate.
    grep -q -E "^000001 +done +2 +480  $want_submitter" "$LOGS/jobs.log" || fail "job 1: $(sed -n 2p "$LOGS/jobs.log")"
    grep -q -E "^000002 +done +1 +480  $want_submitter" "$LOGS/jobs.log" || fail "job 2: $(sed -n 3p "$LOGS/jobs.log")"
    grep -q "job 000001 resumes" "$LOGS/serve.log" || fail "job 1 did not resume (see $LOGS/serve.log)"
    resumed=$(grep -o -E "from the checkpoint after step [0-9]+ of [0-9]+" "$LOGS/serve.log" | head -n1 || true)
    [[ -n $resumed ]] || fail "job 1 did not resume from its checkpoint (see $LOGS/serve.log)"
    members=$(grep -E "^fabric: cluster \`$CLUSTER\`" "$LOGS/serve.log" | tail -n1 || true)
    [[ -n $members ]] || fail "the server's log names no cluster members"
    for h in "${NODES[@]}"; do
        grep -q -E "[(; ]$h " <<<"$members" || fail "node $h took no part: $members"
    done
    grep -q -E ": ${#NODES[@]} nodes " <<<"$members" || fail "not ${#NODES[@]} nodes: $members"
    # The links are on the agents' port, between the hosts' own addresses.
    if [[ $TRANSPORT == TCP ]]; then
        for h in "${NODES[@]}"; do
            n=$(ip netns exec "$(ns "$h")" ss -tnH state established "( sport = :7447 or dport = :7447 )" | wc -l)
            [[ $n -ge $((${#NODES[@]} - 1)) ]] || fail "$h: $n established fabric links, wanted at least $((${#NODES[@]} - 1))"
        done
    fi
    for job in a b; do
        id=$([[ $job == a ]] && echo 000001 || echo 000002)
        ctl_shoal fetch "$id" --to "$CTL_DIR/fetched-$id" >"$LOGS/fetch-$job.log" 2>&1 ||
            fail "shoal fetch $id from the controller (see $LOGS/fetch-$job.log)"
        [[ -s $CTL_DIR/fetched-$id/$job.nc && -s $CTL_DIR/fetched-$id/picture.png ]] ||
            fail "job $id's outputs did not come back (see $LOGS/fetch-$job.log)"
    done
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null || fail "an sshd or node agent exited early"
    done
    say "round $run/$RUNS: two jobs from the controller on ${#NODES[@]} nodes over $TRANSPORT; the server cut (SIGKILL) mid-run of job 1 and started again, job 1 resumed $resumed; both done once and fetched in ${job_s}s: ${members#fabric: }"
    if [[ $run -lt $RUNS ]]; then
        kill -TERM "$SERVE_PID"
        wait "$SERVE_PID" 2>/dev/null || true
    fi
done
# The status page shows the queue, with the submitter and the pictures of the done jobs.
ip netns exec "$CTL" "$PYTHON" - "${ADDR[mgr]}" "$want_submitter" >"$LOGS/status.log" 2>&1 <<'EOF' ||
import json, re, sys, time, urllib.request
base = f"http://{sys.argv[1]}:8080"
# The page reads the queue once a second: a job fetched a moment ago may still show running.
for _ in range(20):
    jobs = json.load(urllib.request.urlopen(base + "/status.json", timeout=10))["jobs"]
    if [j["state"] for j in jobs] == ["done", "done"]:
        break
    time.sleep(0.5)
assert [j["state"] for j in jobs] == ["done", "done"], jobs
assert all(re.fullmatch(sys.argv[2], j["submitter"]) for j in jobs), jobs
png = urllib.request.urlopen(base + jobs[0]["picture"], timeout=10).read()
assert png[:4] == b"\x89PNG", png[:8]
print("status page:", [(j["id"], j["state"], j["submitter"]) for j in jobs])
EOF
    fail "the status page (see $LOGS/status.log)"
say "$(cat "$LOGS/status.log")"
# systemctl stop: SIGTERM, exit 143 (SuccessExitStatus), nothing running.
kill -TERM "$SERVE_PID"
rc=0
wait "$SERVE_PID" || rc=$?
[[ $rc -eq 143 ]] || fail "the job server ended $rc on SIGTERM, not 143 (see $MGR/log/serve.log)"

# --- The census as an operator sees it: the doctor, run on the manager with its installed
# configuration, as the service user. Over QUIC every node's link must carry its certificate's
# name (and the doctor flags, and exits 1 for, any node or node link without one). ---
rc=0
ip netns exec "$(ns mgr)" setpriv --reuid=shoal --regid=shoal --init-groups --inh-caps=-all -- \
    "$MGR/bin/shoal" doctor --cluster "$CLUSTER" --nodes ${#NODES[@]} --wait 30 \
    --zenoh-config "$MGR/etc/zenoh-manager.json5" >"$LOGS/doctor.log" 2>&1 || rc=$?
if [[ $TRANSPORT == QUIC ]]; then
    [[ $rc -eq 0 ]] || fail "the doctor found problems over QUIC (see $LOGS/doctor.log)"
    for h in "${NODES[@]}"; do
        grep -Eq "^  $h .* quic, cert $h " "$LOGS/doctor.log" ||
            fail "$h is not shown authenticated over QUIC (see $LOGS/doctor.log)"
    done
else
    grep -q "not authenticated: its tcp link" "$LOGS/doctor.log" ||
        fail "the doctor did not warn of plain TCP links (see $LOGS/doctor.log)"
fi
say "doctor: $(grep -c -E ', cert ' "$LOGS/doctor.log" || true) of ${#NODES[@]} nodes authenticated by certificate over $TRANSPORT"
# The deployed access list, for real: a certificate of the cluster's own CA under a name the
# inventory does not hold (a revoked Pi) gets a link but no answer from n1, asked by name.
if [[ $TRANSPORT == QUIC ]]; then
    sh ansible/roles/fabric/files/shoal-pki host "$DIR/pki" lost-pi "IP:${ADDR[ctl]}" >/dev/null 2>&1 ||
        fail "could not make the revoked host's certificate"
    cat >"$DIR/lost-pi.json5" <<EOF
{ mode: "peer", listen: { endpoints: [] }, connect: { endpoints: ["quic/${ADDR[n1]}:7447"] },
  scouting: { multicast: { enabled: false } },
  transport: { link: { protocols: ["quic"], tls: { root_ca_certificate: "$DIR/pki/ca.crt",
    enable_mtls: true, connect_private_key: "$DIR/pki/hosts/lost-pi.key",
    connect_certificate: "$DIR/pki/hosts/lost-pi.crt" } } } }
EOF
    ip netns exec "$CTL" "$BIN/shoal" doctor --cluster "$CLUSTER" --node n1 --wait 5 \
        --zenoh-config "$DIR/lost-pi.json5" >"$LOGS/lost-pi.log" 2>&1 &
    lost_pid=$!
    # Meanwhile n1 must list the revoked host's link: its handshake succeeded, so what keeps
    # it out is the access list.
    seen=""
    for _ in $(seq 8); do
        ip netns exec "$(ns mgr)" setpriv --reuid=shoal --regid=shoal --init-groups --inh-caps=-all -- \
            "$MGR/bin/shoal" doctor --cluster "$CLUSTER" --node n1 --links --wait 1 \
            --zenoh-config "$MGR/etc/zenoh-manager.json5" >"$LOGS/links.log" 2>&1 || true
        grep -q "n1 links: .*quic, cert lost-pi" "$LOGS/links.log" && { seen=1; break; }
    done
    if wait "$lost_pid"; then
        fail "a certificate whose name is not in the inventory got a checkup from n1"
    fi
    grep -q "n1: no checkup" "$LOGS/lost-pi.log" || fail "the revoked host's doctor failed otherwise (see $LOGS/lost-pi.log)"
    [[ -n $seen ]] || fail "n1 never listed the revoked host's link (see $LOGS/links.log)"
    say "a cluster certificate under a name not in the inventory linked to n1 but got no answer"
fi

# --- 10. The same jobs embedded (in-process nodes on loopback): the same trajectories. ---
for job in a b; do
    id=$([[ $job == a ]] && echo 000001 || echo 000002)
    (cd "$CTL_DIR" && sed -e '/^\[cluster\]/,$d' -e "s|^file = \"$job.nc\"|file = \"embedded-$job.nc\"|" \
        "$job.toml" >"embedded-$job.toml" && "$BIN/shoal" run "embedded-$job.toml" --quiet) \
        >"$LOGS/embedded-$job.log" 2>&1 || fail "the embedded run of $job failed (see $LOGS/embedded-$job.log)"
    "$PYTHON" scripts/compare_nc.py ansible-test "$CTL_DIR/embedded-$job.nc" "$CTL_DIR/fetched-$id/$job.nc" ||
        fail "job $id ($job) on the deployed cluster differs from its embedded run"
done
say "both jobs equal their embedded runs value by value"

# --- 11. Converging again changes nothing, anywhere. ---
converge 2
recap=$(sed -n '/PLAY RECAP/,/^$/p' "$LOGS/converge2.log" | grep -E '^[^ ]+ +: ok=')
for h in "${HOSTS[@]}"; do
    line=$(grep -E "^$h +:" <<<"$recap") || fail "$h missing from the second converge's recap"
    grep -q -E 'changed=0 .*unreachable=0 +failed=0' <<<"$line" || fail "second converge not idempotent: $line"
done
if grep -v -E ' changed=0 ' <<<"$recap" | grep -q .; then
    fail "second converge changed something: $(grep -v -E ' changed=0 ' <<<"$recap")"
fi
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || fail "an sshd or node agent exited during the second converge"
done
say "second converge: changed=0 on all ${#HOSTS[@]} hosts"
# The agents kept telling the watchdog they are alive all along (every WatchdogSec/2).
for h in "${NODES[@]}"; do
    n=$(grep -c 'WATCHDOG=1' "$NOTIFY/$h.log" || true)
    [[ $n -ge 2 ]] || fail "$h: $n WATCHDOG=1 messages since it started, wanted at least 2"
done
say "watchdog: $(for h in "${NODES[@]}"; do printf '%s %s, ' "$h" "$(grep -c 'WATCHDOG=1' "$NOTIFY/$h.log")"; done | sed 's/, $//') WATCHDOG=1 messages"
say "passed in $(since "$start")s"
