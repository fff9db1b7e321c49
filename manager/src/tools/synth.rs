//! `shoal synth`: synthetic FVCOM output with analytic flows, written the way FVCOM writes it
//! (clockwise 1-based `nv`, `(siglay, node)` sigma, `Itime`/`Itime2`/`Times`/f32 `time`), with
//! switches for every quirk the reader must survive. Tests, benchmarks and the demo all use it.

use crate::input::timefmt::{format_datetime, MJD_EPOCH};
use anyhow::{anyhow, Context, Result};
use shoal_common::TransverseMercator;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flow {
    /// Solid-body rotation about the domain centre, one revolution per `period`.
    Rotation,
    /// Spatially uniform eastward tide, `u = U cos(2 pi t / period)`.
    Tidal,
    /// Sheared 3-D flow, `u = U (1 + sigma)`.
    Shear,
    /// Constant eastward flow `u = U`.
    Uniform,
    /// No flow at all (for diffusion tests).
    Still,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum TimeStyle {
    /// `Itime` + `Itime2`, `Times` and f32 `time`, as FVCOM writes them.
    #[default]
    All,
    /// `Times` strings and f32 `time` only.
    Times,
    /// Only f32 `time` in MJD days.
    Float,
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub flow: Flow,
    pub nx: usize,
    pub ny: usize,
    /// Square size, metres.
    pub dx: f64,
    /// Interior node jitter as a fraction of `dx` (0..0.4).
    pub jitter: f64,
    /// South-west corner, metres (UTM-sized offsets test precision).
    pub x0: f64,
    pub y0: f64,
    pub layers: usize,
    pub depth: f64,
    /// Unix seconds of the first slice.
    pub start: f64,
    /// Seconds covered, and between slices.
    pub duration: f64,
    pub interval: f64,
    pub speed: f64,
    pub period: f64,
    pub zero_based: bool,
    pub no_nbe: bool,
    pub corrupt_nbe: bool,
    /// Write lon/lat around this point (x/y zero) instead of Cartesian x/y.
    pub spherical: Option<(f64, f64)>,
    pub two_d: bool,
    /// A surface-only file, as oil-spill and search tools publish them: 2-D `u(time, nele)`
    /// and `v(time, nele)` with a `_FillValue` of 999, no `h`, sigma, `zeta`, `ww` or layered
    /// fields.
    pub surface_only: bool,
    /// GNOME's boundary table `bnd(nbnd, nbi)`: every boundary segment around the rectangle,
    /// the east side open water (type 1), the rest land (type 0), nodes 1-based.
    pub bnd: bool,
    /// FVCOM's global `CoordinateProjection` attribute, as written (Cartesian files).
    pub projection: Option<String>,
    pub no_ww: bool,
    pub temp: bool,
    pub kh: bool,
    /// FVCOM's generalized sigma: layers bunched towards the surface by a power of depth that
    /// grows from 1 (even) at the west edge to 2 at the east, so they differ node by node.
    pub general_sigma: bool,
    pub salinity: bool,
    /// A drying tidal flat with this tidal amplitude (metres): the bed runs from `depth` at
    /// the west edge to 1.5 amplitudes above the datum at the east edge, the surface is
    /// `A sin(2 pi t / period)` everywhere, and `wet_nodes`/`wet_cells` are written (a node is
    /// wet with more than 5 cm of water, as FVCOM's minimum depth; a cell when its three nodes
    /// are). Velocities in dry cells are zero.
    pub drying: Option<f64>,
    pub time_style: TimeStyle,
    /// Elements (0-based) whose velocities are NaN in every slice.
    pub nan_elements: Vec<usize>,
    /// Leave out `u` entirely (bad-input tests).
    pub omit_u: bool,
    /// Write FVCOM's `a1u`/`a2u` reconstruction coefficients, as FVCOM does with some options.
    pub a1u: bool,
    /// Unix time at which the analytic flow's clock is zero (default `start`), so several files
    /// of one run agree.
    pub epoch: Option<f64>,
    /// UGRID, as tile and data servers publish FVCOM output: `nv(nele, 3)` with its
    /// `start_index`, and a `mesh_topology` variable naming coordinates and connectivity.
    pub ugrid: bool,
    /// Leave `siglev` out (its dimension stays, for `kh`): the levels follow from `siglay`.
    pub no_siglev: bool,
    /// `time` in these CF units (e.g. "hours since 1858-11-17 00:00:00") as f64, or as i64
    /// with `time_int64`, instead of FVCOM's f32 days since 1858-11-17.
    pub time_units: Option<String>,
    pub time_int64: bool,
    /// Velocities, temperature and surface elevation rounded to this many significant bits,
    /// with the attribute netCDF's BitRound quantization writes.
    pub quantize: Option<u32>,
    /// A Cartesian file that also carries `lon`/`lat` (around this point), as FVCOM runs on a
    /// map projection write them.
    pub lonlat_too: Option<(f64, f64)>,
    /// Slivers: in every fourth square each way (from square (1, 1)), the far corner of the
    /// square's second triangle moves onto the square's diagonal, leaving that triangle this
    /// share of its area (0.01 for 1 %) and its other neighbours very obtuse.
    pub slivers: Option<f64>,
    /// Land: squares `(ix, jy)` of the grid with no water. Their two triangles are left out and
    /// nodes no element uses are dropped, for islands, headlands, concave coasts and channels
    /// one element wide. Every boundary, the islands' too, is land.
    pub land: Vec<(usize, usize)>,
    /// Where the tidal, sheared and uniform flows go: degrees anticlockwise from east.
    pub heading: f64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            flow: Flow::Rotation,
            nx: 40,
            ny: 40,
            dx: 500.0,
            jitter: 0.2,
            x0: 400_000.0,
            y0: 4_500_000.0,
            layers: 10,
            depth: 20.0,
            start: 1_716_422_400.0, // 2024-05-23 00:00:00
            duration: 86_400.0,
            interval: 3600.0,
            speed: 1.0,
            period: 12.0 * 3600.0,
            zero_based: false,
            no_nbe: false,
            corrupt_nbe: false,
            spherical: None,
            two_d: false,
            surface_only: false,
            bnd: false,
            projection: None,
            no_ww: false,
            temp: true,
            kh: false,
            general_sigma: false,
            salinity: false,
            drying: None,
            time_style: TimeStyle::All,
            nan_elements: Vec::new(),
            omit_u: false,
            a1u: false,
            epoch: None,
            ugrid: false,
            no_siglev: false,
            time_units: None,
            time_int64: false,
            quantize: None,
            lonlat_too: None,
            slivers: None,
            land: Vec::new(),
            heading: 0.0,
        }
    }
}

/// `v` rounded to `bits` significant bits of its mantissa, as netCDF's BitRound quantization
/// does (half up in magnitude, the dropped bits zero); fill values and NaN pass unchanged.
pub fn bit_round(v: f32, bits: u32) -> f32 {
    if !v.is_finite() || bits >= 23 {
        return v;
    }
    let drop = 23 - bits;
    let half = 1u32 << (drop - 1);
    let keep = !((1u32 << drop) - 1);
    f32::from_bits((v.to_bits().wrapping_add(half)) & keep)
}

/// A synthetic mesh in FVCOM's conventions: node coordinates and clockwise, 0-based triangles.
pub struct Grid {
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub nv: Vec<[usize; 3]>,
    pub xc: Vec<f64>,
    pub yc: Vec<f64>,
}

/// A reproducible pseudo-random number in [-0.5, 0.5) for node `n`.
fn hash_unit(n: u64, salt: u64) -> f64 {
    let b = shoal_common::rng::philox4x32_10(
        [n as u32, (n >> 32) as u32, salt as u32, 0],
        [0x5eed, 0x5b0a1],
    );
    b[0] as f64 / 4_294_967_296.0 - 0.5
}

impl SynthOptions {
    pub fn centre(&self) -> (f64, f64) {
        (
            self.x0 + 0.5 * self.nx as f64 * self.dx,
            self.y0 + 0.5 * self.ny as f64 * self.dx,
        )
    }

    pub fn grid(&self) -> Grid {
        let (nx, ny) = (self.nx, self.ny);
        let mut g = Grid {
            x: Vec::new(),
            y: Vec::new(),
            nv: Vec::new(),
            xc: Vec::new(),
            yc: Vec::new(),
        };
        let j = self.jitter.clamp(0.0, 0.4) * self.dx;
        for jy in 0..=ny {
            for ix in 0..=nx {
                let n = (jy * (nx + 1) + ix) as u64;
                let interior = ix > 0 && ix < nx && jy > 0 && jy < ny;
                let (jx, jyy) = if interior {
                    (j * hash_unit(n, 1), j * hash_unit(n, 2))
                } else {
                    (0.0, 0.0)
                };
                g.x.push(self.x0 + ix as f64 * self.dx + jx);
                g.y.push(self.y0 + jy as f64 * self.dx + jyy);
            }
        }
        let id = |i: usize, j: usize| j * (nx + 1) + i;
        for jy in 0..ny {
            for ix in 0..nx {
                // Alternate the diagonal so the mesh has no preferred direction; clockwise.
                let (a, b, c, d) = (
                    id(ix, jy),
                    id(ix + 1, jy),
                    id(ix, jy + 1),
                    id(ix + 1, jy + 1),
                );
                if (ix + jy) % 2 == 0 {
                    g.nv.push([a, c, b]);
                    g.nv.push([b, c, d]);
                } else {
                    g.nv.push([a, d, b]);
                    g.nv.push([a, c, d]);
                }
            }
        }
        if let Some(ratio) = self.slivers {
            // Squares (1 + 4i, 1 + 4j): (ix + jy) is even, so their triangles are [a, c, b] and
            // [b, c, d] with the diagonal b-c, and their far corners d are distinct inside nodes.
            for jy in (1..ny.saturating_sub(1)).step_by(4) {
                for ix in (1..nx.saturating_sub(1)).step_by(4) {
                    let (b, c, d) = (id(ix + 1, jy), id(ix, jy + 1), id(ix + 1, jy + 1));
                    shoal_common::mesh::squash_onto_edge(&mut g.x, &mut g.y, b, c, d, ratio);
                }
            }
        }
        if !self.land.is_empty() {
            let land: std::collections::HashSet<usize> =
                self.land.iter().map(|&(i, j)| j * nx + i).collect();
            // Two triangles per square, in the squares' order.
            let mut e = 0;
            g.nv.retain(|_| {
                e += 1;
                !land.contains(&((e - 1) / 2))
            });
            let mut used = vec![false; g.x.len()];
            for t in &g.nv {
                for &n in t {
                    used[n] = true;
                }
            }
            let mut renumber = vec![usize::MAX; g.x.len()];
            let (mut x, mut y) = (Vec::new(), Vec::new());
            for n in (0..g.x.len()).filter(|&n| used[n]) {
                renumber[n] = x.len();
                x.push(g.x[n]);
                y.push(g.y[n]);
            }
            for t in &mut g.nv {
                for n in t.iter_mut() {
                    *n = renumber[*n];
                }
            }
            (g.x, g.y) = (x, y);
        }
        for t in &g.nv {
            g.xc.push((g.x[t[0]] + g.x[t[1]] + g.x[t[2]]) / 3.0);
            g.yc.push((g.y[t[0]] + g.y[t[1]] + g.y[t[2]]) / 3.0);
        }
        g
    }

    pub fn siglev(&self) -> Vec<f32> {
        (0..=self.layers)
            .map(|k| -(k as f32) / self.layers as f32)
            .collect()
    }
    pub fn siglay(&self) -> Vec<f32> {
        (0..self.layers)
            .map(|k| -((k as f32) + 0.5) / self.layers as f32)
            .collect()
    }

    /// Layer boundaries at a node at `x`: even, or with `general_sigma` bunched towards the
    /// surface (sigma = -(k / layers)^p, p from 1 at the west edge to 2 at the east).
    pub fn siglev_at(&self, x: f64) -> Vec<f32> {
        if !self.general_sigma {
            return self.siglev();
        }
        let p = 1.0 + ((x - self.x0) / (self.nx as f64 * self.dx)).clamp(0.0, 1.0);
        (0..=self.layers)
            .map(|k| -(k as f64 / self.layers as f64).powf(p) as f32)
            .collect()
    }

    /// Layer centres at a node at `x`: midway between its boundaries.
    pub fn siglay_at(&self, x: f64) -> Vec<f32> {
        if !self.general_sigma {
            return self.siglay();
        }
        let lev = self.siglev_at(x);
        lev.windows(2)
            .map(|w| ((w[0] as f64 + w[1] as f64) / 2.0) as f32)
            .collect()
    }

    /// The analytic velocity (u, v) at a point, sigma and time (seconds since `epoch`).
    pub fn velocity(&self, x: f64, y: f64, sigma: f64, t: f64) -> (f64, f64) {
        let (xm, ym) = self.centre();
        match self.flow {
            Flow::Rotation => {
                let w = std::f64::consts::TAU / self.period;
                (-w * (y - ym), w * (x - xm))
            }
            Flow::Tidal => self.along(self.speed * (std::f64::consts::TAU * t / self.period).cos()),
            Flow::Shear => self.along(self.speed * (1.0 + sigma)),
            Flow::Uniform => self.along(self.speed),
            Flow::Still => (0.0, 0.0),
        }
    }

    /// A speed along `heading`, as (u, v).
    fn along(&self, speed: f64) -> (f64, f64) {
        if self.heading == 0.0 {
            return (speed, 0.0);
        }
        let (s, c) = self.heading.to_radians().sin_cos();
        (speed * c, speed * s)
    }

    pub fn temperature(&self, x: f64, sigma: f64) -> f64 {
        let width = self.nx as f64 * self.dx;
        10.0 + 10.0 * (x - self.x0) / width + 2.0 * sigma
    }

    /// Vertical diffusivity profile: parabolic, small at surface and bottom.
    pub fn kh_profile(sigma: f64) -> f64 {
        1e-4 + 0.04 * (-sigma) * (1.0 + sigma)
    }

    /// Bed depth at `x` (positive down).
    pub fn bed(&self, x: f64) -> f64 {
        match self.drying {
            None => self.depth,
            Some(a) => {
                let f = ((x - self.x0) / (self.nx as f64 * self.dx)).clamp(0.0, 1.0);
                self.depth + (-1.5 * a - self.depth) * f
            }
        }
    }

    /// The drying flat's free surface at `t` (0 without one).
    pub fn surface(&self, t: f64) -> f64 {
        self.drying
            .map_or(0.0, |a| a * (std::f64::consts::TAU * t / self.period).sin())
    }

    /// Whether node water of `depth` metres counts as wet.
    pub fn wet(depth: f64) -> bool {
        depth > 0.05
    }

    pub fn salinity(&self, x: f64) -> f64 {
        20.0 + 15.0 * (x - self.x0) / (self.nx as f64 * self.dx)
    }

    pub fn n_times(&self) -> usize {
        (self.duration / self.interval).round() as usize + 1
    }
}

/// NetCDF's text type, for `Times`.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct NcChar(u8);
unsafe impl netcdf::types::NcTypeDescriptor for NcChar {
    fn type_descriptor() -> netcdf::types::NcVariableType {
        netcdf::types::NcVariableType::Char
    }
}

/// Writes the synthetic run to `path`, one time slice at a time.
pub fn write(path: &Path, o: &SynthOptions) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    anyhow::ensure!(
        o.land.is_empty() || !o.bnd,
        "{}: a boundary table (`bnd`) is written for the whole rectangle only, not with land",
        path.display()
    );
    if let Some(&(i, j)) = o.land.iter().find(|&&(i, j)| i >= o.nx || j >= o.ny) {
        anyhow::bail!(
            "{}: land square ({i}, {j}) is outside the {} x {} grid",
            path.display(),
            o.nx,
            o.ny
        );
    }
    let g = o.grid();
    anyhow::ensure!(
        !g.nv.is_empty(),
        "{}: the land leaves no water",
        path.display()
    );
    // Jitter and slivers must leave every triangle clockwise, as FVCOM's are.
    if let Some(e) = g.nv.iter().position(|t| {
        let (a, b, c) = (t[0], t[1], t[2]);
        (g.x[b] - g.x[a]) * (g.y[c] - g.y[a]) - (g.x[c] - g.x[a]) * (g.y[b] - g.y[a]) >= 0.0
    }) {
        anyhow::bail!(
            "{}: element {} would be turned over or flat; use less jitter",
            path.display(),
            e + 1
        );
    }
    let (nn, ne, nl) = (g.x.len(), g.nv.len(), o.layers.max(1));
    let (surface, two_d) = (o.surface_only, o.two_d || o.surface_only);
    let mut f = crate::nc::create(path).with_context(ctx)?;
    f.add_attribute("title", "shoal synthetic FVCOM output")
        .with_context(ctx)?;
    f.add_attribute(
        "source",
        format!("FVCOM-like, written by shoal synth ({:?} flow)", o.flow),
    )
    .with_context(ctx)?;
    f.add_attribute(
        "CoordinateSystem",
        if o.spherical.is_some() {
            "GeoReferenced"
        } else {
            "Cartesian"
        },
    )
    .with_context(ctx)?;
    if let Some(p) = &o.projection {
        f.add_attribute("CoordinateProjection", p.as_str())
            .with_context(ctx)?;
    }
    for (d, n) in [
        ("node", nn),
        ("nele", ne),
        ("siglay", nl),
        ("siglev", nl + 1),
        ("three", 3),
        ("DateStrLen", 26),
    ] {
        if surface && d.starts_with("sig") {
            continue;
        }
        f.add_dimension(d, n).with_context(ctx)?;
    }
    f.add_unlimited_dimension("time").with_context(ctx)?;

    macro_rules! var {
        ($t:ty, $name:expr, $dims:expr, $data:expr $(, $k:expr => $v:expr)*) => {{
            let mut var = f.add_variable::<$t>($name, $dims).with_context(ctx)?;
            $( var.put_attribute($k, $v).with_context(ctx)?; )*
            let d: Vec<$t> = $data;
            var.put_values(&d, ..).with_context(ctx)?;
        }};
    }
    // Longitudes and latitudes of nodes and centroids around (lon0, lat0).
    let lonlat = |(lon0, lat0): (f64, f64)| {
        let tm = TransverseMercator::new(lon0, lat0);
        let (cx, cy) = o.centre();
        let to = |x: &f64, y: &f64| tm.inverse(x - cx, y - cy);
        let ll: Vec<(f64, f64)> = g.x.iter().zip(&g.y).map(|(x, y)| to(x, y)).collect();
        let llc: Vec<(f64, f64)> = g.xc.iter().zip(&g.yc).map(|(x, y)| to(x, y)).collect();
        // FVCOM often writes 0..360 longitudes.
        let l360 = |l: f64| l.rem_euclid(360.0);
        (
            ll.iter().map(|p| l360(p.0)).collect::<Vec<f64>>(),
            ll.iter().map(|p| p.1).collect::<Vec<f64>>(),
            llc.iter().map(|p| l360(p.0)).collect::<Vec<f64>>(),
            llc.iter().map(|p| p.1).collect::<Vec<f64>>(),
        )
    };
    let (xs, ys, lon, lat, lonc, latc) = match (o.spherical, o.lonlat_too) {
        (None, None) => (
            g.x.clone(),
            g.y.clone(),
            vec![0.0; nn],
            vec![0.0; nn],
            vec![0.0; ne],
            vec![0.0; ne],
        ),
        (None, Some(around)) => {
            let (lon, lat, lonc, latc) = lonlat(around);
            (g.x.clone(), g.y.clone(), lon, lat, lonc, latc)
        }
        (Some(around), _) => {
            let (lon, lat, lonc, latc) = lonlat(around);
            (vec![0.0; nn], vec![0.0; nn], lon, lat, lonc, latc)
        }
    };
    var!(f32, "x", &["node"], xs.iter().map(|v| *v as f32).collect(), "units" => "meters");
    var!(f32, "y", &["node"], ys.iter().map(|v| *v as f32).collect(), "units" => "meters");
    var!(f32, "lon", &["node"], lon.iter().map(|v| *v as f32).collect(), "units" => "degrees_east");
    var!(f32, "lat", &["node"], lat.iter().map(|v| *v as f32).collect(), "units" => "degrees_north");
    var!(f32, "xc", &["nele"], if o.spherical.is_some() { vec![0.0; ne] } else { g.xc.iter().map(|v| *v as f32).collect() }, "units" => "meters");
    var!(f32, "yc", &["nele"], if o.spherical.is_some() { vec![0.0; ne] } else { g.yc.iter().map(|v| *v as f32).collect() }, "units" => "meters");
    var!(f32, "lonc", &["nele"], lonc.iter().map(|v| *v as f32).collect(), "units" => "degrees_east");
    var!(f32, "latc", &["nele"], latc.iter().map(|v| *v as f32).collect(), "units" => "degrees_north");
    if !surface {
        var!(f32, "h", &["node"], g.x.iter().map(|&x| o.bed(x) as f32).collect::<Vec<_>>(), "units" => "m", "positive" => "down");
    }
    let base = if o.zero_based { 0 } else { 1 };
    if o.ugrid {
        let nv: Vec<i32> =
            g.nv.iter()
                .flat_map(|t| t.map(|n| n as i32 + base))
                .collect();
        var!(i32, "nv", &["nele", "three"], nv, "long_name" => "nodes surrounding element", "cf_role" => "face_node_connectivity", "start_index" => base);
        let mut topo = f
            .add_variable::<i32>("mesh_topology", &[])
            .with_context(ctx)?;
        for (k, v) in [
            ("cf_role", "mesh_topology"),
            ("node_coordinates", "lon lat"),
            ("face_node_connectivity", "nv"),
            ("face_dimension", "nele"),
        ] {
            topo.put_attribute(k, v).with_context(ctx)?;
        }
        topo.put_attribute("topology_dimension", 2i32)
            .with_context(ctx)?;
    } else {
        let mut nv = vec![0i32; 3 * ne];
        for (e, t) in g.nv.iter().enumerate() {
            for k in 0..3 {
                nv[k * ne + e] = t[k] as i32 + base;
            }
        }
        var!(i32, "nv", &["three", "nele"], nv, "long_name" => "nodes surrounding element");
    }
    if !o.no_nbe {
        // Neighbours in the file's (clockwise) node order, boundary as 0 (1-based) or -1.
        let ccw: Vec<[u32; 3]> =
            g.nv.iter()
                .map(|t| [t[0] as u32, t[2] as u32, t[1] as u32])
                .collect();
        let nb = shoal_common::mesh::neighbours_from_nv(&ccw, nn).map_err(|e| anyhow!("{e}"))?;
        let mut nbe = vec![0i32; 3 * ne];
        for e in 0..ne {
            let file_order = [nb[e][0], nb[e][2], nb[e][1]];
            for k in 0..3 {
                let n = file_order[k];
                nbe[k * ne + e] = if shoal_common::mesh::is_element(n) {
                    n as i32 + base
                } else {
                    base - 1
                };
            }
        }
        if o.corrupt_nbe {
            for e in (0..ne).step_by(7) {
                nbe[e] = ((e + 3) % ne) as i32 + base;
            }
        }
        var!(i32, "nbe", &["three", "nele"], nbe, "long_name" => "elements surrounding each element");
    }
    if o.a1u {
        // Least-squares coefficients over [self, nbe0, nbe1, nbe2] in the file's node order.
        let ccw: Vec<[u32; 3]> =
            g.nv.iter()
                .map(|t| [t[0] as u32, t[2] as u32, t[1] as u32])
                .collect();
        let nb = shoal_common::mesh::neighbours_from_nv(&ccw, nn).map_err(|e| anyhow!("{e}"))?;
        let geometry: Vec<shoal_common::mesh::ElementGeometry> = (0..ne)
            .map(|e| shoal_common::mesh::ElementGeometry {
                xc: g.xc[e],
                yc: g.yc[e],
                ..Default::default()
            })
            .collect();
        let (a1, a2) = shoal_common::mesh::reconstruction_coefficients(&geometry, &nb);
        for (name, a) in [("a1u", a1), ("a2u", a2)] {
            let mut flat = vec![0f32; 4 * ne];
            for e in 0..ne {
                let file_order = [a[e][0], a[e][1], a[e][3], a[e][2]];
                for k in 0..4 {
                    flat[k * ne + e] = file_order[k];
                }
            }
            if f.dimension("four").is_none() {
                f.add_dimension("four", 4).with_context(ctx)?;
            }
            var!(f32, name, &["four", "nele"], flat);
        }
    }
    if o.bnd {
        let (nx, ny) = (o.nx, o.ny);
        let id = |i: usize, j: usize| j * (nx + 1) + i;
        // Once around, counter-clockwise from the south-west corner.
        let mut ring: Vec<(usize, bool)> = (0..nx).map(|i| (id(i, 0), false)).collect();
        ring.extend((0..ny).map(|j| (id(nx, j), true)));
        ring.extend((1..=nx).rev().map(|i| (id(i, ny), false)));
        ring.extend((1..=ny).rev().map(|j| (id(0, j), false)));
        let mut rows = Vec::with_capacity(4 * ring.len());
        for (k, &(a, open)) in ring.iter().enumerate() {
            let b = ring[(k + 1) % ring.len()].0;
            rows.extend([a as i32 + 1, b as i32 + 1, 1, i32::from(open)]);
        }
        f.add_dimension("nbnd", ring.len()).with_context(ctx)?;
        f.add_dimension("nbi", 4).with_context(ctx)?;
        var!(i32, "bnd", &["nbnd", "nbi"], rows, "long_name" => "Boundary Segment Node List", "units" => "index_start_1");
    }
    let per_node = |col: Vec<f32>| -> Vec<f32> {
        col.iter()
            .flat_map(|s| std::iter::repeat_n(*s, nn))
            .collect()
    };
    if !surface {
        // (level, node), each node's own column.
        let columns = |at: &dyn Fn(f64) -> Vec<f32>, levels: usize| -> Vec<f32> {
            let cols: Vec<Vec<f32>> = g.x.iter().map(|&x| at(x)).collect();
            (0..levels)
                .flat_map(|k| cols.iter().map(move |c| c[k]))
                .collect()
        };
        let (siglay, siglev) = if o.general_sigma {
            (
                columns(&|x| o.siglay_at(x), nl),
                columns(&|x| o.siglev_at(x), nl + 1),
            )
        } else {
            (per_node(o.siglay()), per_node(o.siglev()))
        };
        var!(f32, "siglay", &["siglay", "node"], siglay, "positive" => "up");
        if !o.no_siglev {
            var!(f32, "siglev", &["siglev", "node"], siglev, "positive" => "up");
        }
    }

    // Time axis variables.
    let time_units = match &o.time_units {
        Some(u) => Some((
            u.as_str(),
            crate::input::timefmt::parse_cf_units(u).context("time units")?,
        )),
        None => None,
    };
    {
        let mut v = match (&time_units, o.time_int64) {
            (None, _) => f.add_variable::<f32>("time", &["time"]),
            (Some(_), false) => f.add_variable::<f64>("time", &["time"]),
            (Some(_), true) => f.add_variable::<i64>("time", &["time"]),
        }
        .with_context(ctx)?;
        match &time_units {
            None => {
                v.put_attribute("units", "days since 1858-11-17 00:00:00")
                    .with_context(ctx)?;
                v.put_attribute("format", "modified julian day (MJD)")
                    .with_context(ctx)?;
            }
            Some((u, _)) => {
                v.put_attribute("units", *u).with_context(ctx)?;
            }
        }
        v.put_attribute("time_zone", "UTC").with_context(ctx)?;
    }
    let quantized = |f: &mut netcdf::FileMut, name: &str| -> Result<()> {
        if let (Some(bits), Some(mut var)) = (o.quantize, f.variable_mut(name)) {
            var.put_attribute("_QuantizeBitRoundNumberOfSignificantBits", bits as i32)
                .with_context(ctx)?;
        }
        Ok(())
    };
    let round = |data: &mut [f32]| {
        if let Some(bits) = o.quantize {
            data.iter_mut().for_each(|v| *v = bit_round(*v, bits));
        }
    };
    if o.time_style == TimeStyle::All {
        f.add_variable::<i32>("Itime", &["time"])
            .with_context(ctx)?
            .put_attribute("units", "days since 1858-11-17 00:00:00")
            .with_context(ctx)?;
        f.add_variable::<i32>("Itime2", &["time"])
            .with_context(ctx)?
            .put_attribute("units", "msec since 00:00:00")
            .with_context(ctx)?;
    }
    if o.time_style != TimeStyle::Float {
        f.add_variable::<NcChar>("Times", &["time", "DateStrLen"])
            .with_context(ctx)?;
    }
    let vel_dims: &[&str] = if two_d {
        &["time", "nele"]
    } else {
        &["time", "siglay", "nele"]
    };
    let (uname, vname) = if o.two_d { ("ua", "va") } else { ("u", "v") };
    // Surface-only files mark missing velocities with 999, as GNOME's do.
    let fill = if surface { 999.0 } else { f32::NAN };
    for name in [uname, vname] {
        if name == uname && o.omit_u {
            continue;
        }
        let mut v = f.add_variable::<f32>(name, vel_dims).with_context(ctx)?;
        v.put_attribute("units", "meters s-1").with_context(ctx)?;
        v.put_attribute("_FillValue", fill).ok();
    }
    if !two_d && !o.no_ww {
        f.add_variable::<f32>("ww", &["time", "siglay", "nele"])
            .with_context(ctx)?
            .put_attribute("units", "meters s-1")
            .with_context(ctx)?;
    }
    if !surface {
        f.add_variable::<f32>("zeta", &["time", "node"])
            .with_context(ctx)?
            .put_attribute("units", "meters")
            .with_context(ctx)?;
    }
    if o.temp && !two_d {
        f.add_variable::<f32>("temp", &["time", "siglay", "node"])
            .with_context(ctx)?
            .put_attribute("units", "degrees_C")
            .with_context(ctx)?;
    }
    if o.salinity && !two_d {
        f.add_variable::<f32>("salinity", &["time", "siglay", "node"])
            .with_context(ctx)?
            .put_attribute("units", "1e-3")
            .with_context(ctx)?;
    }
    if o.drying.is_some() {
        for (name, dim) in [("wet_nodes", "node"), ("wet_cells", "nele")] {
            let mut v = f
                .add_variable::<i32>(name, &["time", dim])
                .with_context(ctx)?;
            v.put_attribute("option_0", "land").with_context(ctx)?;
            v.put_attribute("option_1", "water").with_context(ctx)?;
        }
    }
    if o.kh && !two_d {
        f.add_variable::<f32>("kh", &["time", "siglev", "node"])
            .with_context(ctx)?
            .put_attribute("units", "m2 s-1")
            .with_context(ctx)?;
    }

    for name in [uname, vname, "zeta", "temp"] {
        quantized(&mut f, name)?;
    }
    let siglay = o.siglay();
    // Each element's layer centres as the reader takes them: the mean of its nodes'.
    let siglay_elem: Vec<Vec<f64>> =
        g.nv.iter()
            .map(|t| {
                let cols: Vec<Vec<f32>> = t.iter().map(|&n| o.siglay_at(g.x[n])).collect();
                (0..nl)
                    .map(|k| cols.iter().map(|c| c[k] as f64).sum::<f64>() / 3.0)
                    .collect()
            })
            .collect();
    let nlw = if two_d { 1 } else { nl };
    for it in 0..o.n_times() {
        let unix = o.start + it as f64 * o.interval;
        let t = unix - o.epoch.unwrap_or(o.start);
        let mjd = (unix - MJD_EPOCH) / 86_400.0;
        let mut time = f.variable_mut("time").unwrap();
        match &time_units {
            None => time.put_values(&[mjd as f32], it..it + 1),
            Some((u, (scale, epoch))) => {
                let value = (unix - epoch) / scale;
                if o.time_int64 {
                    anyhow::ensure!(
                        value == value.round(),
                        "time slice {it} is not a whole number of `{u}`"
                    );
                    time.put_values(&[value as i64], it..it + 1)
                } else {
                    time.put_values(&[value], it..it + 1)
                }
            }
        }
        .with_context(ctx)?;
        if o.time_style == TimeStyle::All {
            let day = mjd.floor();
            let ms = ((mjd - day) * 86_400_000.0).round() as i32;
            f.variable_mut("Itime")
                .unwrap()
                .put_values(&[day as i32], it..it + 1)
                .with_context(ctx)?;
            f.variable_mut("Itime2")
                .unwrap()
                .put_values(&[ms], it..it + 1)
                .with_context(ctx)?;
        }
        if o.time_style != TimeStyle::Float {
            let s = format!("{}.000000", format_datetime(unix).replace(' ', "T"));
            let bytes: Vec<NcChar> = s
                .bytes()
                .chain(std::iter::repeat(0))
                .take(26)
                .map(NcChar)
                .collect();
            f.variable_mut("Times")
                .unwrap()
                .put_values(&bytes, (it..it + 1, ..))
                .with_context(ctx)?;
        }
        let zeta = o.surface(t);
        let wet_nodes: Vec<i32> =
            g.x.iter()
                .map(|&x| i32::from(SynthOptions::wet(o.bed(x) + zeta)))
                .collect();
        let wet_cells: Vec<i32> =
            g.nv.iter()
                .map(|t| i32::from(t.iter().all(|&n| wet_nodes[n] == 1)))
                .collect();
        let mut u = vec![0f32; nlw * ne];
        let mut v = vec![0f32; nlw * ne];
        for k in 0..nlw {
            for e in 0..ne {
                if o.drying.is_some() && wet_cells[e] == 0 {
                    continue;
                }
                let s = match (two_d, o.general_sigma) {
                    (true, _) => -0.5,
                    (false, false) => siglay[k] as f64,
                    (false, true) => siglay_elem[e][k],
                };
                let (a, b) = o.velocity(g.xc[e], g.yc[e], s, t);
                u[k * ne + e] = a as f32;
                v[k * ne + e] = b as f32;
            }
            for &e in &o.nan_elements {
                if e < ne {
                    u[k * ne + e] = fill;
                    v[k * ne + e] = fill;
                }
            }
        }
        let put3 = |f: &mut netcdf::FileMut, name: &str, data: &[f32]| -> Result<()> {
            let mut var = f.variable_mut(name).unwrap();
            if two_d {
                var.put_values(data, (it..it + 1, ..)).with_context(ctx)
            } else {
                var.put_values(data, (it..it + 1, .., ..)).with_context(ctx)
            }
        };
        round(&mut u);
        round(&mut v);
        if !o.omit_u {
            put3(&mut f, uname, &u)?;
        }
        put3(&mut f, vname, &v)?;
        if !two_d && !o.no_ww {
            put3(&mut f, "ww", &vec![0f32; nl * ne])?;
        }
        if !surface {
            let mut surface = vec![zeta as f32; nn];
            round(&mut surface);
            f.variable_mut("zeta")
                .unwrap()
                .put_values(&surface, (it..it + 1, ..))
                .with_context(ctx)?;
        }
        if o.drying.is_some() {
            for (name, w) in [("wet_nodes", &wet_nodes), ("wet_cells", &wet_cells)] {
                f.variable_mut(name)
                    .unwrap()
                    .put_values(w, (it..it + 1, ..))
                    .with_context(ctx)?;
            }
        }
        if o.salinity && !two_d {
            let sal: Vec<f32> = (0..nl)
                .flat_map(|_| g.x.iter().map(|&x| o.salinity(x) as f32))
                .collect();
            f.variable_mut("salinity")
                .unwrap()
                .put_values(&sal, (it..it + 1, .., ..))
                .with_context(ctx)?;
        }
        if o.temp && !two_d {
            let mut temp = vec![0f32; nl * nn];
            for k in 0..nl {
                for n in 0..nn {
                    let s = if o.general_sigma {
                        o.siglay_at(g.x[n])[k]
                    } else {
                        siglay[k]
                    };
                    temp[k * nn + n] = o.temperature(g.x[n], s as f64) as f32;
                }
            }
            round(&mut temp);
            f.variable_mut("temp")
                .unwrap()
                .put_values(&temp, (it..it + 1, .., ..))
                .with_context(ctx)?;
        }
        if o.kh && !two_d {
            let lev: Vec<Vec<f32>> = g.x.iter().map(|&x| o.siglev_at(x)).collect();
            let kh: Vec<f32> = (0..=nl)
                .flat_map(|k| {
                    lev.iter()
                        .map(move |l| SynthOptions::kh_profile(l[k] as f64) as f32)
                })
                .collect();
            f.variable_mut("kh")
                .unwrap()
                .put_values(&kh, (it..it + 1, .., ..))
                .with_context(ctx)?;
        }
    }
    f.close().with_context(ctx)?;
    Ok(())
}

/// Writes FVCOM's `_obc.dat` naming the nodes on the east side (1-based).
pub fn write_obc_east(path: &Path, o: &SynthOptions) -> Result<()> {
    let nodes: Vec<usize> = (0..=o.ny).map(|j| j * (o.nx + 1) + o.nx + 1).collect();
    let mut s = format!("OBC Node Number = {}\n", nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        s.push_str(&format!("{} {} 1\n", i + 1, n));
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}
