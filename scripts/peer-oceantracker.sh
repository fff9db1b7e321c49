#!/usr/bin/env bash
# shoal beside OceanTracker (pinned, in a virtual environment of its own) on the real SFBOFS
# subset (issue 26): the same particles, no diffusion, dt 60 s, RK4, the whole file; separations
# as a share of the distance travelled, by closeness to land and to the open boundary. A
# benchmark that reports (BENCHMARKS.md), not a test. scripts/peer_oceantracker.py says how
# OceanTracker's FVCOM reader is corrected before it is compared.
# Run from a checkout after `cargo build --release`. SHOAL_BIN picks the binaries (default
# target/release), SHOAL_REAL_FVCOM the file (default ../shared/data/sfbofs_subset.nc),
# SHOAL_OT_VENV the environment (default /var/cache/shoal-ci/ot-venv), SHOAL_OT_WORK where the
# copies, runs and report.md go (default a new temporary directory, kept). Arguments go on to
# peer_oceantracker.py (--particles N, --quick, --report FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SHOAL_OT_VENV:-/var/cache/shoal-ci/ot-venv}"
shoal="${SHOAL_BIN:-target/release}/shoal"
fvcom="${SHOAL_REAL_FVCOM:-../shared/data/sfbofs_subset.nc}"
work="${SHOAL_OT_WORK:-$(mktemp -d /tmp/shoal-ot.XXXXXX)}"

# OceanTracker 0.5.3.9 imports exceptiongroup without declaring it; the numerical stack is
# pinned to the versions the figures in BENCHMARKS.md were taken with.
pins=(oceantracker==0.5.3.9 exceptiongroup==1.3.2 numpy==2.4.6 numba==0.68.1 llvmlite==0.50.0
      scipy==1.17.1 netCDF4==1.7.5.1.post1 cftime==1.6.6.1 xarray==2026.9.0 pandas==3.1.1
      pyproj==3.7.2)
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "${pins[@]}" 2>/dev/null <<'EOF'
import sys
from importlib import metadata
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert metadata.version(name) == version, pin
EOF
then
    "$venv/bin/pip" install -q "${pins[@]}"
fi

[[ -x "$shoal" ]] || { echo "no shoal binary at $shoal (cargo build --release, or set SHOAL_BIN)" >&2
                      exit 1; }
[[ -f "$fvcom" ]] || { echo "no FVCOM file at $fvcom (set SHOAL_REAL_FVCOM)" >&2; exit 1; }
echo "work directory: $work"
exec "$venv/bin/python" scripts/peer_oceantracker.py --shoal "$shoal" --fvcom "$fvcom" \
    --work "$work" "$@"
