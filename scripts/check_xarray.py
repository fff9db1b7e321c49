#!/usr/bin/env python3
"""Opens a shoal trajectory file with xarray, as users will, and checks its CF trajectory shape."""
import sys

import numpy as np
import xarray as xr

path = sys.argv[1]
ds = xr.open_dataset(path)
assert ds.attrs.get("featureType") == "trajectory", ds.attrs
assert ds.attrs.get("Conventions") == "CF-1.8", ds.attrs
for name in ("trajectory", "time", "x", "y", "z", "sigma", "status", "element", "age"):
    assert name in ds.variables, f"{name} missing"
assert ds["x"].dims == ("trajectory", "time"), ds["x"].dims
assert np.issubdtype(ds["time"].dtype, np.datetime64), ds["time"].dtype
assert ds["trajectory"].attrs.get("cf_role") == "trajectory_id"
active = ds["status"] == 0
assert bool(np.isfinite(ds["x"].where(active)).sum() == active.sum()), "active particles without positions"
print(f"xarray opened {path}: {ds.sizes['trajectory']} trajectories x {ds.sizes['time']} times, "
      f"{str(ds['time'].values[0])[:19]} .. {str(ds['time'].values[-1])[:19]}")
