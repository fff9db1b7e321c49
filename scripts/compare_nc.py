#!/usr/bin/env python3
"""Compares two shoal trajectory files value by value (NaN equal to NaN), every variable.

usage: compare_nc.py LABEL REFERENCE.nc OTHER.nc
Exits 1, naming each variable that differs, if they are not identical.
"""
import sys

import numpy as np
from netCDF4 import Dataset

label, ref, other = sys.argv[1:4]
a, b = Dataset(ref), Dataset(other)
for d in (a, b):
    d.set_auto_mask(False)
names = sorted(set(a.variables) | set(b.variables))
bad = []
for n in names:
    if n not in a.variables or n not in b.variables:
        bad.append(f"{n} (missing in one file)")
        continue
    x, y = a.variables[n][...], b.variables[n][...]
    if x.shape != y.shape or x.dtype != y.dtype:
        bad.append(f"{n} (shape/type {x.shape} {x.dtype} vs {y.shape} {y.dtype})")
    else:
        same = x == y
        if x.dtype.kind == "f":
            same |= np.isnan(x) & np.isnan(y)
        if not same.all():
            bad.append(f"{n} ({np.count_nonzero(~same)} values differ)")
if bad:
    print(f"{label}: output differs from the reference run: " + ", ".join(bad))
    sys.exit(1)
print(f"{label}: output identical to the reference run ({len(names)} variables)")
