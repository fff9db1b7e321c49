#!/usr/bin/env python3
"""Opens a shoal trajectory file with xarray, as users will, and checks its CF trajectory shape."""
import sys

import numpy as np
import xarray as xr

path = sys.argv[1]
ds = xr.open_dataset(path)
if ds.attrs.get("title") == "shoal connectivity matrix":
    # Origins and destinations are labelled by name; shares are shares of those released.
    assert ds["count"].dims[-2:] == ("origin", "destination"), ds["count"].dims
    origins = [str(s) for s in ds["origin_name"].values]
    destinations = [str(s) for s in ds["destination_name"].values]
    assert len(origins) == ds.sizes["origin"] and all(origins), origins
    assert len(destinations) == ds.sizes["destination"] and all(destinations), destinations
    p = ds["probability"].values
    assert ((p >= 0) & (p <= 1)).all(), p
    assert (ds["count"].sum("destination") <= ds["released"]).all()
    print(f"xarray opened {path}: {len(origins)} origins x {len(destinations)} destinations, "
          f"{int(ds['count'].sum())} settled of {int(ds['released'].sum())} released")
    sys.exit(0)
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
