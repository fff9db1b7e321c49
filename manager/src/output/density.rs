//! Density maps (`[output] density`): active particles counted per cell of a regular grid at
//! every output time, optionally per release site, as CF NetCDF. The grid covers the mesh's
//! bounding box: in the mesh's x/y metres (`cell`), or in lon/lat for a geographic mesh
//! (`cell_degrees`). It is written beside the trajectories, at the same times, rewound and
//! reopened with them, so a rolled-back or resumed run writes the same counts.

use crate::input::config::DensitySpec;
use crate::input::release::Origins;
use anyhow::{bail, Context, Result};
use shoal_common::snapshot::Snapshot;
use shoal_common::{status, Mesh, TransverseMercator};
use std::path::{Path, PathBuf};

/// Cells times sites (times the counts' 4 bytes) a density map may have at one time.
pub const MAX_CELLS: usize = 50_000_000;

/// The grid: the south-west corner of cell (0, 0), the cell size and the counts of cells.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub x0: f64,
    pub y0: f64,
    pub cell: f64,
    pub nx: usize,
    pub ny: usize,
}

impl Grid {
    /// The cells that cover the mesh, in its frame or (with `projection`) in lon/lat.
    pub fn covering(mesh: &Mesh, cell: f64, projection: Option<&TransverseMercator>) -> Grid {
        let (mut x0, mut y0, mut x1, mut y1) = (
            f64::INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        );
        for n in 0..mesh.n_nodes() {
            let (x, y) = match projection {
                Some(tm) => tm.inverse(mesh.x[n], mesh.y[n]),
                None => (mesh.x[n], mesh.y[n]),
            };
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
        // One more than the whole cells in the span: a point on the east or north edge counts.
        let count = |span: f64| (span / cell).floor() as usize + 1;
        Grid {
            x0,
            y0,
            cell,
            nx: count(x1 - x0),
            ny: count(y1 - y0),
        }
    }

    /// The cell holding (x, y), as an index into a row-major (y, x) array.
    pub fn cell_of(&self, x: f64, y: f64) -> Option<usize> {
        let i = ((x - self.x0) / self.cell).floor();
        let j = ((y - self.y0) / self.cell).floor();
        if i >= 0.0 && j >= 0.0 && (i as usize) < self.nx && (j as usize) < self.ny {
            Some(j as usize * self.nx + i as usize)
        } else {
            None
        }
    }
}

pub struct DensityWriter {
    file: netcdf::FileMut,
    path: PathBuf,
    grid: Grid,
    /// Lon/lat cells of a geographic mesh: positions are projected back before counting.
    projection: Option<TransverseMercator>,
    /// Each particle's site when the maps are per site.
    origin: Option<Vec<u16>>,
    layers: usize,
    written: usize,
}

fn names(degrees: bool) -> (&'static str, &'static str) {
    if degrees {
        ("lon", "lat")
    } else {
        ("x", "y")
    }
}

impl DensityWriter {
    /// Creates the file for a run of `n` particles whose clock starts at Unix time `reference`.
    pub fn create(
        spec: &DensitySpec,
        mesh: &Mesh,
        n: usize,
        reference: f64,
        origins: Option<&Origins>,
    ) -> Result<DensityWriter> {
        let (grid, projection, origin, layers) = Self::layout(spec, mesh, n, origins)?;
        let path = &spec.file;
        let ctx = || format!("creating density map {}", path.display());
        let mut f = super::create_cf(path, "shoal particle density").with_context(ctx)?;
        f.add_attribute(
            "comment",
            format!(
                "active particles per cell of {} {} at each output time",
                spec.cell,
                if spec.degrees { "degrees" } else { "m" }
            ),
        )
        .with_context(ctx)?;
        f.add_attribute("shoal_cell_size", spec.cell)
            .with_context(ctx)?;
        let (xn, yn) = names(spec.degrees);
        f.add_unlimited_dimension("time").with_context(ctx)?;
        f.add_dimension(yn, grid.ny).with_context(ctx)?;
        f.add_dimension(xn, grid.nx).with_context(ctx)?;
        super::add_time(&mut f, reference).with_context(ctx)?;
        for (name, n, origin, axis) in [(xn, grid.nx, grid.x0, "X"), (yn, grid.ny, grid.y0, "Y")] {
            let mut v = f.add_variable::<f64>(name, &[name]).with_context(ctx)?;
            let centres: Vec<f64> = (0..n)
                .map(|k| origin + (k as f64 + 0.5) * grid.cell)
                .collect();
            v.put_values(&centres, ..).with_context(ctx)?;
            v.put_attribute("axis", axis).with_context(ctx)?;
            let (standard, units) = match (spec.degrees, axis) {
                (true, "X") => ("longitude", "degrees_east"),
                (true, _) => ("latitude", "degrees_north"),
                (false, "X") => ("projection_x_coordinate", "m"),
                (false, _) => ("projection_y_coordinate", "m"),
            };
            v.put_attribute("standard_name", standard)
                .with_context(ctx)?;
            v.put_attribute("units", units).with_context(ctx)?;
            v.put_attribute("long_name", "cell centre")
                .with_context(ctx)?;
        }
        let mut dims = vec!["time"];
        if let (Some(o), true) = (origins, layers > 1) {
            super::add_origins(&mut f, &o.names).with_context(ctx)?;
            dims.push("origin");
        }
        dims.extend([yn, xn]);
        {
            let mut v = f.add_variable::<i32>("density", &dims).with_context(ctx)?;
            v.put_attribute("long_name", "active particles in the cell")
                .with_context(ctx)?;
            v.put_attribute("units", "1").with_context(ctx)?;
            v.put_attribute("cell_methods", "area: sum")
                .with_context(ctx)?;
            let mut chunk = vec![1usize; dims.len()];
            let k = chunk.len();
            chunk[k - 2] = grid.ny;
            chunk[k - 1] = grid.nx;
            v.set_chunking(&chunk).with_context(ctx)?;
            v.set_compression(4, true).with_context(ctx)?;
        }
        f.sync().with_context(ctx)?;
        Ok(DensityWriter {
            file: f,
            path: path.clone(),
            grid,
            projection,
            origin,
            layers,
            written: 0,
        })
    }

    #[allow(clippy::type_complexity)]
    fn layout(
        spec: &DensitySpec,
        mesh: &Mesh,
        n: usize,
        origins: Option<&Origins>,
    ) -> Result<(Grid, Option<TransverseMercator>, Option<Vec<u16>>, usize)> {
        let projection = match (spec.degrees, mesh.projection) {
            (true, Some(tm)) => Some(tm),
            (true, None) => bail!(
                "key `output.density.cell_degrees`: the mesh is Cartesian (x/y metres); give `cell` in metres"
            ),
            (false, _) => None,
        };
        let grid = Grid::covering(mesh, spec.cell, projection.as_ref());
        let (origin, layers) = match (spec.per_origin, origins) {
            (true, Some(o)) => {
                anyhow::ensure!(
                    o.origin.len() == n,
                    "{} sites for {n} particles",
                    o.origin.len()
                );
                (Some(o.origin.clone()), o.names.len().max(1))
            }
            (true, None) => bail!(
                "key `output.density.per_origin`: needs a release from sites (`release.polygons`)"
            ),
            (false, _) => (None, 1),
        };
        let cells = grid.nx.saturating_mul(grid.ny).saturating_mul(layers);
        if cells > MAX_CELLS {
            bail!(
                "key `output.density.{}`: {} by {} cells{} are more than {MAX_CELLS}; give a larger cell",
                if spec.degrees { "cell_degrees" } else { "cell" },
                grid.nx,
                grid.ny,
                if layers > 1 { format!(" for each of {layers} sites") } else { String::new() }
            );
        }
        Ok((grid, projection, origin, layers))
    }

    /// Counts one output time's particles (every snapshot row) and appends the map.
    pub fn write(&mut self, t: f64, snap: &[Snapshot]) -> Result<()> {
        crate::nc::quiet();
        let cells = self.grid.nx * self.grid.ny;
        let mut counts = vec![0i32; cells * self.layers];
        for s in snap {
            for i in 0..s.id.len() {
                if s.status[i] != status::ACTIVE || !s.x[i].is_finite() {
                    continue;
                }
                let (x, y) = match &self.projection {
                    Some(tm) => tm.inverse(s.x[i], s.y[i]),
                    None => (s.x[i], s.y[i]),
                };
                let Some(c) = self.grid.cell_of(x, y) else {
                    continue;
                };
                let layer = self
                    .origin
                    .as_ref()
                    .map_or(0, |o| o[s.id[i] as usize] as usize);
                counts[layer * cells + c] += 1;
            }
        }
        let it = self.written;
        let ctx = || format!("writing density map {}", self.path.display());
        self.file
            .variable_mut("time")
            .expect("created with the file")
            .put_values(&[t], it..it + 1)
            .with_context(ctx)?;
        let v = &mut self
            .file
            .variable_mut("density")
            .expect("created with the file");
        if self.layers > 1 {
            v.put_values(&counts, (it..it + 1, .., .., ..))
        } else {
            v.put_values(&counts, (it..it + 1, .., ..))
        }
        .with_context(ctx)?;
        self.file.sync().with_context(ctx)?;
        self.written += 1;
        Ok(())
    }

    /// Goes back to `records` times, as the trajectory writer does.
    pub fn rewind(&mut self, records: usize) {
        self.written = records.min(self.written);
    }

    /// Opens the density map of an interrupted run after its first `records` times.
    pub fn reopen(
        spec: &DensitySpec,
        mesh: &Mesh,
        n: usize,
        origins: Option<&Origins>,
        records: usize,
    ) -> Result<DensityWriter> {
        let (grid, projection, origin, layers) = Self::layout(spec, mesh, n, origins)?;
        let path = &spec.file;
        let ctx = || format!("reopening density map {} to resume", path.display());
        let file = crate::nc::append(path).with_context(ctx)?;
        let (xn, yn) = names(spec.degrees);
        let dim = |name: &str| file.dimension(name).map(|d| d.len());
        if dim(xn) != Some(grid.nx)
            || dim(yn) != Some(grid.ny)
            || dim("time").is_none_or(|t| t < records)
        {
            bail!(
                "{}: not the density map of this run ({} by {} cells, at least {records} times)",
                path.display(),
                grid.nx,
                grid.ny
            );
        }
        Ok(DensityWriter {
            file,
            path: path.clone(),
            grid,
            projection,
            origin,
            layers,
            written: records,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn close(self) -> Result<()> {
        let p = self.path.clone();
        self.file
            .close()
            .with_context(|| format!("closing {}", p.display()))
    }
}
