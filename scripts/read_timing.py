#!/usr/bin/env python3
"""Times what a user of a trajectory file does most with xarray: read one particle's track and
one time slice (x, y and z), each from a freshly opened file so that no chunk is cached.

usage: scripts/read_timing.py FILE [FILE ...]   (BENCHMARKS.md, "Trajectory files")
"""
import os
import sys
import time

import numpy as np
import xarray as xr


def timed(path, pick):
    best = []
    for k in range(5):
        ds = xr.open_dataset(path)
        t = time.perf_counter()
        for name in ("x", "y", "z"):
            np.asarray(pick(ds[name], k))
        best.append(time.perf_counter() - t)
        ds.close()
    return 1e3 * float(np.median(best))


for path in sys.argv[1:]:
    with xr.open_dataset(path) as ds:
        n, nt = ds.sizes["trajectory"], ds.sizes["time"]
        enc = ds["x"].encoding
    rng = np.random.default_rng(1)
    tracks = rng.integers(0, n, 5)
    slices = rng.integers(0, nt, 5)
    track = timed(path, lambda v, k: v.isel(trajectory=int(tracks[k])).values)
    slice_ = timed(path, lambda v, k: v.isel(time=int(slices[k])).values)
    size = os.path.getsize(path)
    print(
        f"{path}: {size / 1e6:.1f} MB, {size / (n * nt):.2f} bytes per particle-record; "
        f"x chunks {enc.get('chunksizes')}, zlib {enc.get('zlib', False)} level {enc.get('complevel', 0)}; "
        f"one track (x, y, z) {track:.1f} ms, one time slice {slice_:.1f} ms (median of 5)"
    )
