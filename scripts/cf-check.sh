#!/usr/bin/env bash
# CF 1.8 compliance of shoal's output, by IOOS's compliance-checker (pinned, in a virtual
# environment of its own): the demo's trajectories with no warnings at all, and a geographic run
# on the real SFBOFS subset with positions packed to 1 cm with no errors (the checker's section
# 9.1 warnings about the common time coordinate are allowed; see scripts/cf_check.py).
# Run from a checkout after `./dev demo` and `cargo build --release`; SHOAL_BIN picks the binaries
# (default target/release).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SHOAL_CF_VENV:-/tmp/shoal-cf}"
if [[ ! -x "$venv/bin/compliance-checker" ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q compliance-checker==6.1.0
fi
checker="$venv/bin/compliance-checker"
python3 scripts/cf_check.py "$checker" shoal-demo/demo_trajectories.nc

real="${SHOAL_REAL_FVCOM:?set SHOAL_REAL_FVCOM to the SFBOFS subset}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat > "$dir/geo.toml" <<TOML
seed = 5
[input]
files = ["$real"]
[release.generate]
count = 500
centre = [-122.48, 37.87]
radius = 1200.0
z = -1.0
[run]
duration = "3h"
dt = "60s"
[output]
file = "geo.nc"
interval = "30min"
precision = "1cm"
TOML
"${SHOAL_BIN:-target/release}/shoal" run --quiet "$dir/geo.toml"
python3 scripts/cf_check.py "$checker" "$dir/geo.nc" --allow 9.1
