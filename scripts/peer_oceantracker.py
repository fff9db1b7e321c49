#!/usr/bin/env python3
"""shoal beside OceanTracker on a real FVCOM file (issue 26): the same particles, no diffusion,
the same time step, RK4 in both, over the whole file; per particle the separation between the
two trackers as a share of the distance travelled, split by how close particles come to land
and to the open (cut) boundary. A benchmark that reports, never a test that fails.

OceanTracker's stock FVCOM reader is not trusted as it is (see `FVCOMreaderCorrected` and
`write_copies`): its 3-D fields are read upside down, its clock is the file's single-precision
`time`, it knows no open boundary and it cannot read a depth-averaged file. Both trackers work
in the same metric frame (shoal's transverse Mercator, handed to OceanTracker as x/y). The
runs that show what a fault costs use the corrected set-up with that one thing undone, so every
other difference stays the same; one more run is the stock reader on the file as it is.

Usage (scripts/peer-oceantracker.sh sets it up):
    peer_oceantracker.py --shoal BIN --fvcom FILE --work DIR [--particles 3000] [--report FILE]
Internally, each OceanTracker case runs in its own process: peer_oceantracker.py --ot-case JSON.
"""

import os

# One thread for OceanTracker's numba kernels; set before numba is first imported, which
# importing the reader below does.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OCEANTRACKER_USE_PARALLEL_THREADS", "0")

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import netCDF4
import numpy as np
from pyproj import Transformer

try:
    # OceanTracker's runner reloads its shared-state module when first imported, and modules
    # imported before that keep the old one (whose settings are never filled in): import it first.
    import oceantracker.main  # noqa: F401
    from oceantracker.reader.FVCOM_reader import FVCOMreader
    from oceantracker.util.parameter_checking import ParamValueChecker as PVC
    from oceantracker.util.parameter_checking import ParameterListChecker as PLC
    from oceantracker.shared_info import shared_info as si
    from oceantracker.reader.util import hydromodel_grid_transforms
except ImportError:  # the comparison half runs without it
    FVCOMreader = None

DT = 60.0  # seconds, both trackers
RECORD = 300.0  # seconds between output records, both trackers
REPORT_TIMES = [("1 h", 3600.0), ("6 h", 21600.0)]  # and the end of the file
NEAR_LAND_M = 100.0  # "came close to land": within this of a land edge
NEAR_OPEN_M = 250.0  # "came close to the cut": within this of an open edge
OPEN_NORMAL_SPEED = 0.01  # m/s: boundary edges with more mean normal flow are cut edges


# --------------------------------------------------------------------------------------------
# OceanTracker's FVCOM reader, corrected


if FVCOMreader is not None:

    class FVCOMreaderCorrected(FVCOMreader):
        """OceanTracker 0.5.3.9's FVCOM reader, corrected (the clock is corrected in the file's
        copy, `write_copies`).

        The stock reader turns `siglev`/`siglay` into bottom-first fractions (`1 + flip(...)`)
        but hands the fields on in the file's order, surface first, so a 3-D field's surface
        value lands at the bottom interface. Here the fields' layer axis is flipped too before
        the stock code turns layer values into interface values. `correct_layer_order = False`
        keeps the stock behaviour (to measure it). FVCOM files carry no open boundary, so the
        stock reader has none; `open_boundary_nodes` (0-based) gives the nodes of the cut, and
        the interior faces the stock code would open with them are kept closed. Depth-averaged
        (2-D) files, which the stock reader fails on, are read.
        """

        def __init__(self):
            super().__init__()
            self.add_default_params(
                correct_layer_order=PVC(True, bool, doc_str="flip 3-D fields to bottom first"),
                open_boundary_nodes=PLC([], int, doc_str="0-based open boundary nodes"),
            )

        def read_file_var_as_4D_nodal_values(self, var_name, var_info, nt=None):
            layered = [d for d in ("siglay", "siglev") if d in var_info["dims"]]
            if "nele" in var_info["dims"] and not layered:
                # A 2-D element field (depth-averaged velocity): the stock code hands (time,
                # nele) to its element-to-node averaging, which wants (time, nele, layer) and
                # fails to compile. Give it one layer; return (time, node, 1, 1) as the stock
                # code does for 2-D fields.
                grid = self.grid
                data = self.dataset.read_variable(var_name, nt=nt).data
                if not var_info["time_varying"]:
                    data = data[np.newaxis]
                nodal = hydromodel_grid_transforms.get_nodal_values_from_weighted_cell_values(
                    np.ascontiguousarray(data[:, :, np.newaxis], dtype=np.float32),
                    grid["node_to_tri_map"], grid["tri_per_node"], grid["cell_center_weights"])
                return nodal[..., np.newaxis]
            if not (self.params["correct_layer_order"] and layered):
                return super().read_file_var_as_4D_nodal_values(var_name, var_info, nt=nt)
            # Let the stock code read this variable with its layer axis reversed.
            dataset = self.dataset
            stock_read = dataset.read_variable

            def bottom_first(name, nt=None):
                values = stock_read(name, nt=nt)
                if name == var_name:
                    values = values.isel({layered[0]: slice(None, None, -1)})
                return values

            dataset.read_variable = bottom_first
            try:
                return super().read_file_var_as_4D_nodal_values(var_name, var_info, nt=nt)
            finally:
                dataset.read_variable = stock_read

        def read_open_boundary_data_as_boolean(self, grid):
            # The caller then opens every face between two open nodes of a boundary triangle,
            # interior faces too; keep the adjacency as it is now to undo that afterwards.
            self._adjacency_before_open = grid["adjacency"].copy()
            is_open = np.zeros(grid["x"].shape[0], dtype=bool)
            is_open[np.asarray(self.params["open_boundary_nodes"], dtype=int)] = True
            return is_open

        def _construct_hori_grid_variables(self):
            super()._construct_hori_grid_variables()
            grid = self.grid
            if "cell_center_weights" not in grid:
                # The stock reader builds the weights that carry element values to nodes only
                # in its 3-D set-up (build_vertical_grid): a depth-averaged file stops with
                # KeyError 'cell_center_weights'. The same weights, for 2-D too.
                grid["cell_center_weights"] = (
                    hydromodel_grid_transforms.calculate_inv_dist_weights_at_node_locations(
                        grid["x"], grid["x_center"], grid["node_to_tri_map"],
                        grid["tri_per_node"]))
            if not self.params["open_boundary_nodes"]:
                return
            adjacency, before = self.grid["adjacency"], self._adjacency_before_open
            interior = (adjacency == si.edge_types.open_boundary) & (before >= 0)
            adjacency[interior] = before[interior]  # a face with a neighbour is no boundary
            si.msg_logger.msg(f"peer_oceantracker: {int(interior.sum())} interior faces between "
                              "open nodes kept closed", note=True)


def run_ot_case(case_file):
    """One OceanTracker run from a JSON case; saves x, time and status to case['npz']."""
    case = json.loads(Path(case_file).read_text())
    from oceantracker.main import OceanTracker

    ot = OceanTracker()
    ot.settings(
        run_output_dir=case["out_dir"],
        output_file_base=case["name"],
        time_step=DT,
        max_run_duration=case["duration"],
        use_dispersion=False,
        use_resuspension=False,
        use_open_boundary=bool(case["open_boundary_nodes"]),
        processors=1,
        screen_output_time_interval=3 * 3600.0,
    )
    reader = dict(
        input_dir=str(Path(case["file"]).parent),
        file_mask=Path(case["file"]).name,
        class_name=case["reader"],
        geographic_coords=case["geographic"],
        grid_variable_map=case["grid_variable_map"],
    )
    if case.get("field_variable_map"):
        reader["field_variable_map"] = case["field_variable_map"]
    if case["reader"].endswith("FVCOMreaderCorrected"):
        reader["correct_layer_order"] = case["correct_layer_order"]
        reader["open_boundary_nodes"] = case["open_boundary_nodes"]
    ot.add_class("reader", **reader)
    ot.add_class("solver", RK_order=4)
    release = dict(name="same_points", class_name="PointRelease", points=np.load(case["points"]))
    if case["three_d"]:
        release["release_at_surface"] = True
    ot.add_class("release_groups", **release)
    ot.add_class("tracks_writer", update_interval=RECORD,
                 turn_on_write_particle_properties_list=["water_velocity"])
    t0 = time.perf_counter()
    case_info = ot.run()
    wall = time.perf_counter() - t0
    if case_info is None:
        sys.exit(f"OceanTracker case {case['name']} failed (see {case['out_dir']})")
    from oceantracker.read_output.python import load_output_files

    tracks = load_output_files.load_track_data(case_info)
    flags = {k: int(v) for k, v in tracks["particle_status_flags"].items()}
    np.savez(
        case["npz"],
        x=np.asarray(tracks["x"], dtype=np.float64),
        time=np.asarray(tracks["time"], dtype=np.float64),
        status=np.asarray(tracks["status"]),
        water_velocity=np.asarray(tracks["water_velocity"], dtype=np.float64),
        exited_flag=flags["outside_open_boundary"],
        wall=wall,
    )


# --------------------------------------------------------------------------------------------
# The mesh, its boundary, and a metric frame shared by both trackers


class Mesh:
    def __init__(self, path):
        with netCDF4.Dataset(path) as d:
            self.lon = d["lon"][:].filled(np.nan).astype(np.float64)
            self.lat = d["lat"][:].filled(np.nan).astype(np.float64)
            self.nv = d["nv"][:].T.astype(np.int64) - 1  # (nele, 3), 0-based
            self.nbe = d["nbe"][:].T.astype(np.int64)  # 1-based, 0 on the boundary
            u = d["u"][:].filled(np.nan)
            v = d["v"][:].filled(np.nan)
            self.times = [b"".join(t).decode().strip() for t in d["Times"][:]]
            self.time_f32 = d["time"][:].filled(np.nan)
        # shoal's frame (manager/src/input/fvcom.rs): transverse Mercator on WGS84, unit scale,
        # centred on the mean of the nodes' longitudes (wrapped around the first) and latitudes.
        l0 = self.lon[0]
        wrapped = (self.lon - l0 + 180.0) % 360.0 - 180.0
        self.lon0 = float((l0 + wrapped.mean() + 180.0) % 360.0 - 180.0)
        self.lat0 = float(self.lat.mean())
        proj = (f"+proj=tmerc +lat_0={self.lat0!r} +lon_0={self.lon0!r} +k=1 +x_0=0 +y_0=0 "
                "+ellps=WGS84 +units=m +no_defs")
        self.to_xy = Transformer.from_crs("EPSG:4326", proj, always_xy=True)
        self.to_lonlat = Transformer.from_crs(proj, "EPSG:4326", always_xy=True)
        self.x, self.y = self.to_xy.transform(self.lon, self.lat)
        self.xc = self.x[self.nv].mean(axis=1)
        self.yc = self.y[self.nv].mean(axis=1)
        self._boundary(u, v)

    def _boundary(self, u, v):
        """Boundary edges (nbe == 0), typed open where the model's flow crosses them."""
        rows = []
        for e in range(self.nv.shape[0]):
            for k in range(3):
                if self.nbe[e, k] == 0:  # FVCOM: the neighbour across the edge facing node k
                    a, b = self.nv[e, (k + 1) % 3], self.nv[e, (k + 2) % 3]
                    tx, ty = self.x[b] - self.x[a], self.y[b] - self.y[a]
                    length = np.hypot(tx, ty)
                    normal = (u[:, :, e] * ty - v[:, :, e] * tx) / length
                    rows.append((e, a, b, float(np.nanmean(np.abs(normal)))))
        self.edge_element = np.array([r[0] for r in rows])
        self.edge_nodes = np.array([(r[1], r[2]) for r in rows])
        self.edge_normal_speed = np.array([r[3] for r in rows])
        self.edge_open = self.edge_normal_speed > OPEN_NORMAL_SPEED
        self.open_nodes = np.unique(self.edge_nodes[self.edge_open])
        self.check_open_rule()

    def check_open_rule(self):
        """Both trackers type an edge open when both its nodes are open nodes (shoal: boundary
        edges only; OceanTracker: any face of a boundary triangle). Check that the node list
        gives exactly the edges meant, in both."""
        is_open = np.zeros(self.x.size, dtype=bool)
        is_open[self.open_nodes] = True
        both = is_open[self.edge_nodes].all(axis=1)
        self.open_rule_ok = bool(np.array_equal(both, self.edge_open))
        boundary_triangles = np.unique(self.edge_element)
        interior_open_faces = 0
        for e in boundary_triangles:
            for k in range(3):
                a, b = self.nv[e, (k + 1) % 3], self.nv[e, (k + 2) % 3]
                if self.nbe[e, k] != 0 and is_open[a] and is_open[b]:
                    interior_open_faces += 1
        self.interior_open_faces = interior_open_faces

    def distance_to_edges(self, px, py, which):
        """Distance (m) from points to the nearest boundary edge of the chosen kind."""
        nodes = self.edge_nodes[which]
        ax, ay = self.x[nodes[:, 0]], self.y[nodes[:, 0]]
        bx, by = self.x[nodes[:, 1]], self.y[nodes[:, 1]]
        dx, dy = bx - ax, by - ay
        out = np.empty(np.shape(px))
        for i in np.ndindex(np.shape(px)[1:]):  # a column (time record) at a time
            qx = np.asarray(px)[(slice(None),) + i][:, None]
            qy = np.asarray(py)[(slice(None),) + i][:, None]
            t = np.clip(((qx - ax) * dx + (qy - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
            out[(slice(None),) + i] = np.hypot(qx - (ax + t * dx), qy - (ay + t * dy)).min(axis=1)
        return out

    def seconds(self):
        """Seconds since the first record, from `Times` (exact), and from the float32 `time`."""
        stamps = [datetime.fromisoformat(t.replace("Z", "")[:19]) for t in self.times]
        exact = np.array([(s - stamps[0]).total_seconds() for s in stamps])
        single = (self.time_f32.astype(np.float64) - float(self.time_f32[0])) * 86400.0
        return stamps[0], exact, single


# --------------------------------------------------------------------------------------------
# Corrected copies of the file


def write_copies(mesh, src, work):
    """Two copies in `work` (the source file is left alone):

    ot3d.nc: the file as it is, plus what OceanTracker is given to read in its stead:
      time      float64 seconds since the first record, from `Times` (the file's `time` is
                float32 days since 2013-01-01: 42 s resolution, records off by up to 14 s);
      time_f32  the file's own `time`, to measure what that costs;
      x_tm, y_tm, xc_tm, yc_tm  nodes and centroids in shoal's transverse Mercator frame.
    d2.nc: a depth-averaged copy for the 2-D comparison, read by both trackers: `ua`, `va`
      (FVCOM's own definition, layer values weighted by layer thickness) instead of `u`, `v`.
    """
    start, exact, _ = mesh.seconds()
    units = f"seconds since {start:%Y-%m-%d %H:%M:%S}"
    out3, out2 = work / "ot3d.nc", work / "d2.nc"
    with netCDF4.Dataset(src) as s:
        for out, two_d in ((out3, False), (out2, True)):
            with netCDF4.Dataset(out, "w", format="NETCDF4") as d:
                d.setncatts({k: s.getncattr(k) for k in s.ncattrs()})
                d.setncattr("history", f"peer_oceantracker.py: corrected copy of {src}")
                for name, dim in s.dimensions.items():
                    d.createDimension(name, None if dim.isunlimited() else len(dim))
                skip = {"time"} | ({"u", "v", "temp", "salinity"} if two_d else set())
                for name, var in s.variables.items():
                    if name in skip:
                        continue
                    fill = var.getncattr("_FillValue") if "_FillValue" in var.ncattrs() else None
                    nv = d.createVariable(name, var.dtype, var.dimensions, fill_value=fill)
                    nv.setncatts({k: var.getncattr(k) for k in var.ncattrs() if k != "_FillValue"})
                    nv[:] = var[:]
                t = d.createVariable("time", "f8", ("time",))
                t.setncatts({"long_name": "time, from Times", "units": units,
                             "calendar": "proleptic_gregorian", "time_zone": "UTC"})
                t[:] = exact
                t32 = d.createVariable("time_f32", "f4", ("time",))
                t32.setncatts({k: s["time"].getncattr(k) for k in s["time"].ncattrs()
                               if k != "_FillValue"})
                t32[:] = s["time"][:]
                for name, dim, values in (("x_tm", "node", mesh.x), ("y_tm", "node", mesh.y),
                                          ("xc_tm", "nele", mesh.xc), ("yc_tm", "nele", mesh.yc)):
                    var = d.createVariable(name, "f8", (dim,))
                    var.setncatts({"units": "m", "long_name": f"{name[:-3]} in shoal's "
                                   f"transverse Mercator frame (lon0 {mesh.lon0:.6f}, "
                                   f"lat0 {mesh.lat0:.6f})"})
                    var[:] = values
                if two_d:
                    siglev = s["siglev"][:].astype(np.float64)  # (siglev, node)
                    thick = -np.diff(siglev, axis=0)  # (siglay, node), sums to 1
                    thick_e = thick[:, mesh.nv].mean(axis=2)  # (siglay, nele)
                    for name, full in (("ua", "u"), ("va", "v")):
                        var = d.createVariable(name, "f4", ("time", "nele"))
                        var.setncatts({"long_name": f"depth-averaged {full}",
                                       "units": "meters s-1"})
                        var[:] = (s[full][:] * thick_e[None]).sum(axis=1) / thick_e.sum(axis=0)
    return out3, out2


# --------------------------------------------------------------------------------------------
# Release points and the two trackers' runs


def release_points(mesh, n, seed=26):
    """`n` points uniform by area over the mesh, kept off the edges (each barycentric weight at
    least 0.05), in shoal's frame."""
    rng = np.random.default_rng(seed)
    xy = np.stack([mesh.x[mesh.nv], mesh.y[mesh.nv]], axis=-1)  # (nele, 3, 2)
    ab, ac = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    area = 0.5 * np.abs(ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0])
    elements = rng.choice(len(area), size=n, p=area / area.sum())
    w = rng.dirichlet([1.0, 1.0, 1.0], size=n)
    w = 0.05 + 0.85 * w  # weights in [0.05, 0.9], summing to 1
    return (w[:, :, None] * xy[elements]).sum(axis=1), elements


def run_shoal(shoal, fvcom, name, work, points, mesh):
    run_dir = work / name
    run_dir.mkdir(exist_ok=True)
    lon, lat = mesh.to_lonlat.transform(points[:, 0], points[:, 1])
    with open(run_dir / "release.csv", "w") as f:
        f.write("lon,lat,z\n")
        for lo, la in zip(lon, lat):
            f.write(f"{lo:.10f},{la:.10f},0\n")
    open_nodes = ", ".join(str(int(n) + 1) for n in mesh.open_nodes)  # 1-based for shoal
    (run_dir / "run.toml").write_text(f"""# written by scripts/peer_oceantracker.py
[input]
files = ["{fvcom}"]
open_boundary_nodes = [{open_nodes}]

[release]
file = "release.csv"

[run]
duration = "{int(mesh.seconds()[1][-1])}s"
dt = "{int(DT)}s"
integrator = "rk4"
threads = 1
device = "cpu"

[diffusion]
horizontal_kh = 0.0
vertical = "none"

[output]
file = "trajectories.nc"
interval = "{int(RECORD)}s"
""")
    t0 = time.perf_counter()
    done = subprocess.run([str(shoal), "run", "run.toml", "--direct"], cwd=run_dir,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (run_dir / "shoal.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        sys.exit(f"shoal failed in {run_dir}:\n{done.stderr}")
    with netCDF4.Dataset(run_dir / "trajectories.nc") as d:
        lon = d["lon"][:].filled(np.nan)
        lat = d["lat"][:].filled(np.nan)
        meanings = d["status"].getncattr("flag_meanings").split()
        values = list(d["status"].getncattr("flag_values"))
        exited = int(values[meanings.index("exited_open_boundary")])
        status = d["status"][:]
        t = d["time"][:]
    x, y = mesh.to_xy.transform(lon, lat)
    return dict(x=x, y=y, t=np.asarray(t), exited=(status == exited), wall=wall)


def run_oceantracker(name, work, ot_file, mesh, points_xy, *, three_d, lonlat=False,
                     f32_time=False, correct_layers=True, stock=False):
    run_dir = work / name
    run_dir.mkdir(exist_ok=True)
    if lonlat:
        lon, lat = mesh.to_lonlat.transform(points_xy[:, 0], points_xy[:, 1])
        pts = np.stack([lon % 360.0, lat], axis=1)  # the file's 0..360 longitudes
        gvm = dict(x="lon", y="lat", x_center="lonc", y_center="latc", lon="lon", lat="lat",
                   lon_center="lonc", lat_center="latc")
    else:
        pts = points_xy
        gvm = dict(x="x_tm", y="y_tm", x_center="xc_tm", y_center="yc_tm")
    gvm["time"] = "time_f32" if f32_time else "time"
    np.save(run_dir / "points.npy", pts)
    case = dict(
        name=name, out_dir=str(run_dir / "out"), npz=str(run_dir / "tracks.npz"),
        file=str(ot_file), geographic=lonlat, grid_variable_map=gvm,
        reader=("oceantracker.reader.FVCOM_reader.FVCOMreader" if stock
                else "peer_oceantracker.FVCOMreaderCorrected"),
        correct_layer_order=correct_layers,
        open_boundary_nodes=[] if stock else [int(n) for n in mesh.open_nodes],
        points=str(run_dir / "points.npy"), three_d=three_d,
        duration=float(mesh.seconds()[1][-1]),
        field_variable_map=None if three_d else dict(water_velocity_depth_averaged=["ua", "va"]),
    )
    (run_dir / "case.json").write_text(json.dumps(case, indent=1))
    # OceanTracker imports this file again as the module holding the reader class; no .pyc
    # beside it in the checkout.
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent),
               PYTHONDONTWRITEBYTECODE="1")
    with open(run_dir / "oceantracker.log", "w") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ot-case",
                               str(run_dir / "case.json")], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
    if done.returncode != 0:
        sys.exit(f"OceanTracker case {name} failed: see {run_dir / 'oceantracker.log'}")
    r = np.load(run_dir / "tracks.npz")
    x = r["x"]  # (time, particle, 2 or 3)
    if lonlat:
        px, py = mesh.to_xy.transform(x[:, :, 0], x[:, :, 1])
    else:
        px, py = x[:, :, 0], x[:, :, 1]
    t = r["time"] - r["time"][0]
    return dict(x=px.T, y=py.T, t=t, exited=(r["status"] == int(r["exited_flag"])).T,
                wall=float(r["wall"]), velocity0=r["water_velocity"][0, :, :2])


# --------------------------------------------------------------------------------------------
# Comparison


def compare(mesh, shoal, peer, end_s):
    """Per particle at the report times: separation, shoal's path length, and their ratio."""
    n = shoal["x"].shape[0]
    assert peer["x"].shape[0] == n, f"{peer['x'].shape[0]} OceanTracker particles for {n}"
    start_gap = np.hypot(shoal["x"][:, 0] - peer["x"][:, 0], shoal["y"][:, 0] - peer["y"][:, 0])
    # Where each particle went, in either tracker: closest approach to land and to the cut.
    def closest(track, which):
        d = mesh.distance_to_edges(track["x"], track["y"], which)
        return np.nanmin(d, axis=1)

    near_land = np.minimum(closest(shoal, ~mesh.edge_open), closest(peer, ~mesh.edge_open))
    near_open = np.minimum(closest(shoal, mesh.edge_open), closest(peer, mesh.edge_open))
    ever_out = shoal["exited"].any(axis=1) | peer["exited"].any(axis=1)
    seg = np.hypot(np.diff(shoal["x"], axis=1), np.diff(shoal["y"], axis=1))
    # Records OceanTracker spent held at a wall: it did not move while shoal did.
    still_p = np.hypot(np.diff(peer["x"], axis=1), np.diff(peer["y"], axis=1)) < 0.01
    held = (still_p & (seg > 1.0) & ~peer["exited"][:, 1:]).sum(axis=1)
    near_land_only = (near_land <= NEAR_LAND_M) & (near_open > NEAR_OPEN_M) & ~ever_out
    groups = {
        "all": np.ones(n, dtype=bool),
        f"interior (> {NEAR_LAND_M:.0f} m from land, > {NEAR_OPEN_M:.0f} m from the cut)":
            (near_land > NEAR_LAND_M) & (near_open > NEAR_OPEN_M) & ~ever_out,
        f"near land (within {NEAR_LAND_M:.0f} m), never near the cut, held at a wall in OT":
            near_land_only & (held > 0),
        f"near land, never near the cut, never held in OT": near_land_only & (held == 0),
        f"near the cut (within {NEAR_OPEN_M:.0f} m, or left in either)":
            (near_open <= NEAR_OPEN_M) | ever_out,
    }
    path = np.concatenate([np.zeros((n, 1)), np.nancumsum(seg, axis=1)], axis=1)
    rows = []
    for label, t in REPORT_TIMES + [(f"end ({end_s / 3600:.0f} h)", end_s)]:
        i = int(np.argmin(np.abs(shoal["t"] - t)))
        j = int(np.argmin(np.abs(peer["t"] - t)))
        assert abs(shoal["t"][i] - t) < 1 and abs(peer["t"][j] - t) < 1, (label, shoal["t"][i],
                                                                            peer["t"][j])
        sep = np.hypot(shoal["x"][:, i] - peer["x"][:, j], shoal["y"][:, i] - peer["y"][:, j])
        gone_s = shoal["exited"][:, i]
        gone_p = peer["exited"][:, j]
        both_in = ~gone_s & ~gone_p
        for g, members in groups.items():
            m = members & both_in & (path[:, i] > 0)
            share = sep[m] / path[m, i]
            rows.append(dict(
                time=label, group=g, n=int(members.sum()), compared=int(m.sum()),
                out_shoal=int((members & gone_s).sum()), out_peer=int((members & gone_p).sum()),
                out_both=int((members & gone_s & gone_p).sum()),
                path_median=float(np.median(path[m, i])) if m.any() else np.nan,
                sep_median=float(np.median(sep[m])) if m.any() else np.nan,
                sep_p90=float(np.percentile(sep[m], 90)) if m.any() else np.nan,
                share_median=float(np.median(share)) if m.any() else np.nan,
                share_p90=float(np.percentile(share, 90)) if m.any() else np.nan,
            ))
    # Particles that left in one tracker only: held at a wall in OceanTracker, or on another
    # route (how far OceanTracker's was from the cut when shoal's left).
    out_s, out_p = shoal["exited"].any(axis=1), peer["exited"].any(axis=1)
    shoal_only = np.flatnonzero(out_s & ~out_p)
    left_at = shoal["exited"].argmax(axis=1)
    other_route = [i for i in shoal_only if held[i] == 0]
    gap = [mesh.distance_to_edges(peer["x"][i, left_at[i]:left_at[i] + 1],
                                  peer["y"][i, left_at[i]:left_at[i] + 1], mesh.edge_open)[0]
           for i in other_route]
    exits = dict(shoal=int(out_s.sum()), peer=int(out_p.sum()), both=int((out_s & out_p).sum()),
                 shoal_only=len(shoal_only), shoal_only_held=int((held[shoal_only] > 0).sum()),
                 other_route_gap=float(np.median(gap)) if gap else np.nan,
                 peer_only=int((out_p & ~out_s).sum()),
                 shoal_by_hour=by_hour(left_at[out_s], end_s),
                 peer_by_hour=by_hour(peer["exited"].argmax(axis=1)[out_p], end_s))
    return dict(rows=rows, start_gap=float(np.nanmax(start_gap)), held=held, exits=exits,
                near_land=near_land, near_open=near_open, groups=groups)


def layer_check(fvcom, elements, velocity0):
    """OceanTracker's velocity at the release points at the first time (at the surface, in
    its own interpolation) against the file's top and bottom layer in the host element:
    median vector difference, m/s. A reader that reads layers the right way up is near the top
    layer's value; one that reads them upside down is near the bottom layer's."""
    with netCDF4.Dataset(fvcom) as d:
        u, v = d["u"][0].filled(np.nan), d["v"][0].filled(np.nan)  # (siglay, nele)
    out = {}
    for name, k in (("top", 0), ("bottom", -1)):
        du = velocity0[:, 0] - u[k, elements]
        dv = velocity0[:, 1] - v[k, elements]
        out[name] = float(np.median(np.hypot(du, dv)))
    out["speed_top"] = float(np.median(np.hypot(u[0, elements], v[0, elements])))
    out["speed_bottom"] = float(np.median(np.hypot(u[-1, elements], v[-1, elements])))
    return out


def by_hour(first_record_out, end_s):
    """Exits per hour of the run, from the first record at which a particle is out (record i
    covers the exits in ((i - 1) RECORD, i RECORD])."""
    hour = (np.asarray(first_record_out) - 1) * RECORD // 3600
    return np.bincount(hour.astype(int), minlength=int(np.ceil(end_s / 3600))).tolist()


def table(rows):
    out = ["| time | particles | compared | left: shoal / OT / both | median path (m) "
           "| separation median / p90 (m) | share of path median / p90 |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['time']} | {r['group']}: {r['n']} | {r['compared']} | {r['out_shoal']} / "
            f"{r['out_peer']} / {r['out_both']} | {r['path_median']:.0f} | "
            f"{r['sep_median']:.1f} / {r['sep_p90']:.1f} | "
            f"{100 * r['share_median']:.1f} % / {100 * r['share_p90']:.1f} % |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ot-case", help=argparse.SUPPRESS)
    p.add_argument("--shoal", help="the shoal binary")
    p.add_argument("--fvcom", help="the FVCOM file (the SFBOFS subset)")
    p.add_argument("--work", help="a directory for copies, runs and the report")
    p.add_argument("--particles", type=int, default=3000)
    p.add_argument("--quick", action="store_true",
                   help="only the two main OceanTracker runs (no reader-fault runs)")
    p.add_argument("--report", help="write the Markdown report here (default WORK/report.md)")
    args = p.parse_args()
    if args.ot_case:
        run_ot_case(args.ot_case)
        return
    if not (args.shoal and args.fvcom and args.work):
        p.error("--shoal, --fvcom and --work are needed")
    from importlib import metadata

    import numba

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fvcom = Path(args.fvcom).resolve()
    mesh = Mesh(fvcom)
    _, exact, single = mesh.seconds()
    end_s = float(exact[-1])
    print(f"mesh: {mesh.x.size} nodes, {mesh.nv.shape[0]} elements; {len(mesh.edge_open)} "
          f"boundary edges, {int(mesh.edge_open.sum())} open (mean |normal flow| > "
          f"{OPEN_NORMAL_SPEED} m/s), {mesh.open_nodes.size} open nodes; node rule exact: "
          f"{mesh.open_rule_ok}, interior faces between open nodes: {mesh.interior_open_faces}")
    print("time from float32 `time` minus `Times`, s:", np.round(single - exact, 3).tolist())
    ot3d, d2 = write_copies(mesh, fvcom, work)
    points, elements = release_points(mesh, args.particles)

    runs = {}
    print("shoal 3-D ...", flush=True)
    runs["shoal3d"] = run_shoal(args.shoal, fvcom, "shoal3d", work, points, mesh)
    print("shoal 2-D ...", flush=True)
    runs["shoal2d"] = run_shoal(args.shoal, d2, "shoal2d", work, points, mesh)
    ot_cases = [
        ("ot3d", ot3d, dict(three_d=True)),
        ("ot2d", d2, dict(three_d=False)),
        ("ot3d_stock_layers", ot3d, dict(three_d=True, correct_layers=False)),
        ("ot3d_f32_time", ot3d, dict(three_d=True, f32_time=True)),
        ("ot3d_lonlat", ot3d, dict(three_d=True, lonlat=True)),
        # The stock reader on the file itself: its own clock (the float32 `time`), its layer
        # order, lon/lat, and no open boundary (FVCOM files name none).
        ("ot3d_stock", fvcom, dict(three_d=True, lonlat=True, stock=True)),
    ]
    if args.quick:
        ot_cases = ot_cases[:2]
    for name, f, kw in ot_cases:
        print(f"OceanTracker {name} ...", flush=True)
        runs[name] = run_oceantracker(name, work, f, mesh, points, **kw)

    results = {
        "3-D": compare(mesh, runs["shoal3d"], runs["ot3d"], end_s),
        "2-D": compare(mesh, runs["shoal2d"], runs["ot2d"], end_s),
    }
    variants = [
        ("corrected reader (the 3-D table)", "ot3d"),
        ("stock layer order (upside down)", "ot3d_stock_layers"),
        ("clock from the float32 `time`", "ot3d_f32_time"),
        ("lon/lat: OceanTracker's own metres per degree", "ot3d_lonlat"),
        ("stock reader on the file as it is (no open boundary)", "ot3d_stock"),
    ]
    variants = [v for v in variants if v[1] in runs]
    sens = []
    for label, name in variants:
        c = compare(mesh, runs["shoal3d"], runs[name], end_s)
        r = [r for r in c["rows"] if r["group"] == "all"]
        sens.append((label, r))
    ot_vs_ot = {}
    for name in ("ot3d_stock_layers", "ot3d_f32_time", "ot3d_lonlat"):
        if name not in runs:
            continue
        a, b = runs["ot3d"], runs[name]
        both = ~a["exited"][:, -1] & ~b["exited"][:, -1]
        d = np.hypot(a["x"][:, -1] - b["x"][:, -1], a["y"][:, -1] - b["y"][:, -1])[both]
        ot_vs_ot[name] = (float(np.median(d)), float(np.percentile(d, 90)))

    checks = {name: layer_check(fvcom, elements, runs[name]["velocity0"])
              for name in ("ot3d", "ot3d_stock_layers", "ot3d_stock") if name in runs}
    with netCDF4.Dataset(d2) as d:
        ua, va = d["ua"][0][elements], d["va"][0][elements]
    v0 = runs["ot2d"]["velocity0"]
    check_2d = (float(np.median(np.hypot(v0[:, 0] - ua, v0[:, 1] - va))),
                float(np.median(np.hypot(ua, va))))
    versions = dict(oceantracker=metadata.version("oceantracker"), numba=numba.__version__,
                    numpy=np.__version__, netCDF4=netCDF4.__version__,
                    python=sys.version.split()[0])
    shoal_version = subprocess.run([str(args.shoal), "--version"], capture_output=True,
                                   text=True).stdout.strip()
    lines = [f"- shoal: `{shoal_version}`",
             "- " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             f"- {args.particles} particles, uniform by area (seed 26), each at least 5 % of its "
             f"element's size from its edges; released at {mesh.times[0][:19]} at the surface "
             f"(3-D) or depth-averaged (2-D); dt {DT:.0f} s, RK4, no diffusion; records every "
             f"{RECORD:.0f} s; {end_s / 3600:.0f} h",
             f"- boundary: {len(mesh.edge_open)} edges, {int(mesh.edge_open.sum())} open "
             f"({mesh.open_nodes.size} nodes, given to both; node rule exact in shoal: "
             f"{mesh.open_rule_ok}; interior faces between open nodes, which OceanTracker would "
             f"also open: {mesh.interior_open_faces})",
             "- wall time (OceanTracker's includes compiling its numba kernels): "
             + ", ".join(f"{k} {v['wall']:.1f} s" for k, v in runs.items()),
             ""]
    for kind, c in results.items():
        lines += [f"### {kind}", "",
                  f"Largest distance between the two trackers' release positions: "
                  f"{c['start_gap'] * 1000:.2f} mm. OceanTracker records (of "
                  f"{RECORD:.0f} s) held still while shoal moved: median "
                  f"{np.median(c['held']):.0f}, 90th percentile "
                  f"{np.percentile(c['held'], 90):.0f}; particles held at least once: "
                  f"{int((c['held'] > 0).sum())}, of which "
                  f"{int((c['held'][c['near_land'] <= NEAR_LAND_M] > 0).sum())} came within "
                  f"{NEAR_LAND_M:.0f} m of land.", "",
                  table(c["rows"]), ""]
        e = c["exits"]
        lines += [f"Left through the open boundary by the end: shoal {e['shoal']}, OceanTracker "
                  f"{e['peer']}, both {e['both']}. Left in shoal only: {e['shoal_only']}, of "
                  f"which {e['shoal_only_held']} were held at a wall in OceanTracker at some "
                  f"time; the others' OceanTracker positions were a median "
                  f"{e['other_route_gap']:.0f} m from the cut when shoal's left. Left in "
                  f"OceanTracker only: {e['peer_only']}. Leaving per hour of the run (hours 1 "
                  f"to {len(e['shoal_by_hour'])}): shoal "
                  f"{e['shoal_by_hour']}, OceanTracker {e['peer_by_hour']}.", ""]
    lines += ["### Layer order: OceanTracker's surface velocity at release against the file", "",
              "| OceanTracker run | median distance to the top layer's velocity (m/s) "
              "| to the bottom layer's (m/s) |", "|---|---|---|"]
    for name, c in checks.items():
        lines.append(f"| {name} | {c['top']:.3f} | {c['bottom']:.3f} |")
    c = next(iter(checks.values()))
    lines += ["", f"(Median speed at the release points: top layer {c['speed_top']:.3f} m/s, "
              f"bottom layer {c['speed_bottom']:.3f} m/s.) The same for 2-D: OceanTracker's "
              f"velocity at release against the host element's `ua`/`va`: median "
              f"{check_2d[0]:.4f} m/s, against a median speed of {check_2d[1]:.4f} m/s (its "
              f"element values carried to nodes and interpolated linearly, against the "
              f"element's own value).", ""]
    lines += ["### What each reader fault costs (3-D, all particles, against shoal)", "",
              "| OceanTracker run | 1 h median / p90 | 6 h median / p90 | end median / p90 "
              "| left at the end (OT) |", "|---|---|---|---|---|"]
    for label, r in sens:
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * x['share_median']:.1f} % / {100 * x['share_p90']:.1f} %" for x in r)
            + f" | {r[-1]['out_peer']} |")
    lines.append("")
    if ot_vs_ot:
        lines += ["OceanTracker against itself at the end (m, median / p90 from the corrected "
                  "run): " + "; ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}"
                                       for k, v in ot_vs_ot.items()), ""]
    report = Path(args.report) if args.report else work / "report.md"
    report.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
