//! Reads FVCOM output as real files write it (DESIGN.md §3): the mesh once, then one time slice
//! at a time on request; never a whole file's fields. Every error names the file and variable.

use crate::input::timefmt::{parse_cf_units, parse_datetime, MJD_EPOCH};
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::mesh::{Mesh, MeshInput, MeshNote};
use shoal_common::{RawSlice, TransverseMercator};
use std::path::{Path, PathBuf};

/// How the node coordinates were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coordinates {
    Cartesian,
    Geographic,
}

/// Which velocity variables the files carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub u: String,
    pub v: String,
    pub three_d: bool,
    pub ww: bool,
    pub zeta: bool,
    pub temp: bool,
    pub kh: bool,
    /// `salinity` at layers and nodes (read only when a run's behaviour needs it).
    pub salinity: bool,
    /// FVCOM's wetting and drying: `wet_cells`, or failing that `wet_nodes` (a cell is wet when
    /// its three nodes are).
    pub wet: Wetness,
    pub n_layers: usize,
    pub n_nodes: usize,
    pub n_elements: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wetness {
    /// No wetting and drying: every cell is always wet.
    None,
    Cells,
    Nodes,
}

struct Source {
    path: PathBuf,
    file: netcdf::File,
}

/// An FVCOM run, one or more files concatenated in time.
pub struct FvcomReader {
    sources: Vec<Source>,
    /// Unix seconds of every time slice, strictly increasing.
    pub times: Vec<f64>,
    slots: Vec<(usize, usize)>,
    pub layout: Layout,
    pub coordinates: Coordinates,
    /// How the time axis was read, per file.
    pub time_source: Vec<String>,
    /// Things the user should know (missing variables, repairs).
    pub warnings: Vec<String>,
    /// The mesh as read, before [`Mesh::build`]: what nodes build their copy from.
    pub mesh_input: shoal_common::MeshInput,
    /// No bathymetry (`h`) and 2-D velocities: a surface track, particles stay at z = 0 (the
    /// files that oil-spill and search tools publish). The mesh gets a nominal depth of
    /// [`SURFACE_ONLY_DEPTH`] so that the kernel's column arithmetic holds.
    pub surface_only: bool,
    /// Where the mesh lies on the Earth: the frame a geographic mesh was projected to, or the
    /// projection a Cartesian file's `CoordinateProjection` names (when proj4rs reads it).
    pub geo: Option<crate::input::crs::Geo>,
}

/// The nominal water depth, metres, of a surface-only input: never seen in the output, since
/// particles stay at z = 0 and nothing vertical is allowed to run on such a file.
pub const SURFACE_ONLY_DEPTH: f32 = 1.0;

fn open(path: &Path) -> Result<netcdf::File> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    crate::nc::open(path).map_err(|e| {
        anyhow!(
            "{}: cannot open as NetCDF ({e}); is the file complete?",
            path.display()
        )
    })
}

fn dim_names(var: &netcdf::Variable) -> Vec<String> {
    var.dimensions().iter().map(|d| d.name()).collect()
}

fn dim_lens(var: &netcdf::Variable) -> Vec<usize> {
    var.dimensions().iter().map(|d| d.len()).collect()
}

fn fill_value(var: &netcdf::Variable) -> Option<f64> {
    for name in ["_FillValue", "missing_value"] {
        if let Some(Ok(v)) = var.attribute_value(name) {
            if let Ok(f) = f64::try_from(v) {
                return Some(f);
            }
        }
    }
    None
}

fn string_attr(var: Option<&netcdf::Variable>, file: &netcdf::File, name: &str) -> Option<String> {
    let v = match var {
        Some(v) => v.attribute_value(name),
        None => file.attribute(name).map(|a| a.value()),
    }?;
    String::try_from(v.ok()?).ok()
}

/// Reads `name` over `extents` as f32, fill values and absurd magnitudes turned into NaN.
fn read_f32<E>(file: &netcdf::File, path: &Path, name: &str, extents: E) -> Result<Vec<f32>>
where
    E: TryInto<netcdf::Extents>,
    E::Error: Into<netcdf::Error>,
{
    let var = file
        .variable(name)
        .ok_or_else(|| anyhow!("{}: variable `{name}` not found", path.display()))?;
    let mut vals: Vec<f32> = var
        .get_values::<f32, _>(extents)
        .map_err(|e| anyhow!("{}: cannot read variable `{name}`: {e}", path.display()))?;
    let fill = fill_value(&var);
    for v in vals.iter_mut() {
        let bad = match fill {
            Some(f) => (*v as f64 - f).abs() <= f.abs() * 1e-6 || v.abs() >= 1e30,
            None => v.abs() >= 1e30,
        };
        if bad {
            *v = f32::NAN;
        }
    }
    Ok(vals)
}

fn read_f64_all(file: &netcdf::File, path: &Path, name: &str) -> Result<Vec<f64>> {
    let var = file
        .variable(name)
        .ok_or_else(|| anyhow!("{}: variable `{name}` not found", path.display()))?;
    var.get_values::<f64, _>(..)
        .map_err(|e| anyhow!("{}: cannot read variable `{name}`: {e}", path.display()))
}

fn read_i64_all(file: &netcdf::File, path: &Path, name: &str) -> Result<Vec<i64>> {
    let var = file
        .variable(name)
        .ok_or_else(|| anyhow!("{}: variable `{name}` not found", path.display()))?;
    var.get_values::<i64, _>(..)
        .map_err(|e| anyhow!("{}: cannot read variable `{name}`: {e}", path.display()))
}

/// An integer table stored `(three, nele)` or `(nele, three)`, as rows of `width` per element.
fn read_table(
    file: &netcdf::File,
    path: &Path,
    name: &str,
    width: usize,
    n_elements: usize,
) -> Result<Vec<Vec<i64>>> {
    let var = file
        .variable(name)
        .ok_or_else(|| anyhow!("{}: variable `{name}` not found", path.display()))?;
    let lens = dim_lens(&var);
    let flat: Vec<f64> = var
        .get_values::<f64, _>(..)
        .map_err(|e| anyhow!("{}: cannot read variable `{name}`: {e}", path.display()))?;
    let rows = if lens == [width, n_elements] {
        (0..n_elements)
            .map(|e| {
                (0..width)
                    .map(|k| flat[k * n_elements + e] as i64)
                    .collect()
            })
            .collect()
    } else if lens == [n_elements, width] {
        (0..n_elements)
            .map(|e| (0..width).map(|k| flat[e * width + k] as i64).collect())
            .collect()
    } else {
        bail!(
            "{}: variable `{name}` has shape {lens:?}; expected ({width}, {n_elements})",
            path.display()
        );
    };
    Ok(rows)
}

fn time_axis(
    file: &netcdf::File,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<(Vec<f64>, String)> {
    if file.variable("Itime").is_some() && file.variable("Itime2").is_some() {
        let days = read_i64_all(file, path, "Itime")?;
        let msec = read_i64_all(file, path, "Itime2")?;
        if days.len() != msec.len() {
            bail!("{}: `Itime` and `Itime2` differ in length", path.display());
        }
        let units = string_attr(file.variable("Itime").as_ref(), file, "units").unwrap_or_default();
        let epoch = if units.is_empty() {
            MJD_EPOCH
        } else {
            parse_cf_units(&units)
                .with_context(|| format!("{}: variable `Itime`", path.display()))?
                .1
        };
        let t = days
            .iter()
            .zip(&msec)
            .map(|(d, m)| epoch + *d as f64 * 86_400.0 + *m as f64 / 1000.0)
            .collect();
        return Ok((t, "Itime+Itime2".into()));
    }
    if let Some(var) = file.variable("Times") {
        let lens = dim_lens(&var);
        if lens.len() == 2 {
            let raw = var
                .get_raw_values(..)
                .map_err(|e| anyhow!("{}: cannot read variable `Times`: {e}", path.display()))?;
            let width = lens[1];
            let mut t = Vec::with_capacity(lens[0]);
            for (i, row) in raw.chunks(width.max(1)).enumerate() {
                let s: String = row
                    .iter()
                    .take_while(|b| **b != 0)
                    .map(|b| *b as char)
                    .collect();
                t.push(
                    parse_datetime(&s).with_context(|| {
                        format!("{}: variable `Times`, entry {i}", path.display())
                    })?,
                );
            }
            return Ok((t, "Times".into()));
        }
    }
    let var = file.variable("time").ok_or_else(|| {
        anyhow!(
            "{}: no time axis: none of `Itime`+`Itime2`, `Times` or `time` found",
            path.display()
        )
    })?;
    let units = match string_attr(Some(&var), file, "units") {
        Some(u) => u,
        None => {
            warnings.push(format!(
                "{}: `time` has no units; assuming days since 1858-11-17 (MJD)",
                path.display()
            ));
            "days since 1858-11-17 00:00:00".into()
        }
    };
    let (scale, epoch) =
        parse_cf_units(&units).with_context(|| format!("{}: variable `time`", path.display()))?;
    let vals = read_f64_all(file, path, "time")?;
    if matches!(
        var.vartype(),
        netcdf::types::NcVariableType::Float(netcdf::types::FloatType::F32)
    ) {
        let times: Vec<f64> = vals.iter().map(|v| epoch + v * scale).collect();
        let largest = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let resolution = (largest as f32).max(f32::MIN_POSITIVE);
        let resolution = (f32::from_bits(resolution.to_bits() + 1) - resolution) as f64 * scale;
        let (snapped, how) = snap_regular(&times, resolution);
        warnings.push(format!(
            "{}: time comes from single-precision `time` ({units}), which resolves only {resolution:.0} s here; {how}",
            path.display()
        ));
        return Ok((snapped, "time (f32)".into()));
    }
    Ok((
        vals.iter().map(|v| epoch + v * scale).collect(),
        "time".into(),
    ))
}

/// Single-precision time axes are noisy at the level of `resolution`. Where the slices are
/// consistent with a regular interval, rebuild the axis from the coarsest "round" interval and
/// start (multiples of an hour, half hour, ... second) that fit within the noise.
fn snap_regular(times: &[f64], resolution: f64) -> (Vec<f64>, String) {
    let n = times.len();
    let rounded = || times.iter().map(|t| t.round()).collect();
    if n < 2 || resolution < 1.0 {
        return (rounded(), "rounded to whole seconds".into());
    }
    let span = times[n - 1] - times[0];
    let step_err = 2.0 * resolution / (n - 1) as f64;
    let step_est = span / (n - 1) as f64;
    const GRAINS: [f64; 9] = [
        86_400.0, 3600.0, 1800.0, 900.0, 600.0, 300.0, 60.0, 10.0, 1.0,
    ];
    let pick = |value: f64, tol: f64| {
        GRAINS
            .iter()
            .map(|g| (value / g).round() * g)
            .find(|c| (c - value).abs() <= tol && *c > 0.0)
    };
    let Some(step) = pick(step_est, step_err.max(0.5)) else {
        return (
            rounded(),
            "rounded to whole seconds (irregular slices)".into(),
        );
    };
    let start = GRAINS
        .iter()
        .map(|g| (times[0] / g).round() * g)
        .find(|c| (0..n).all(|k| (c + k as f64 * step - times[k]).abs() <= resolution))
        .filter(|_| step.rem_euclid(1.0) == 0.0);
    match start {
        Some(t0) => (
            (0..n).map(|k| t0 + k as f64 * step).collect(),
            format!(
                "snapped to a regular {step:.0} s axis; give Itime/Itime2 or Times for exact times"
            ),
        ),
        None => (
            rounded(),
            "rounded to whole seconds (not a regular axis within its resolution)".into(),
        ),
    }
}

impl FvcomReader {
    /// Opens the files, checks they describe one mesh, and builds it.
    pub fn open(
        paths: &[PathBuf],
        open_boundary_nodes: &[u32],
    ) -> Result<(FvcomReader, Mesh, Vec<MeshNote>)> {
        if paths.is_empty() {
            bail!("no input files");
        }
        let mut warnings = Vec::new();
        let first = open(&paths[0])?;
        let p0 = &paths[0];
        let n_nodes = first
            .dimension_len("node")
            .ok_or_else(|| anyhow!("{}: dimension `node` not found", p0.display()))?;
        let n_elements = first
            .dimension_len("nele")
            .ok_or_else(|| anyhow!("{}: dimension `nele` not found", p0.display()))?;

        let (mut mesh_input, coordinates) = read_mesh(
            &first,
            p0,
            n_nodes,
            n_elements,
            open_boundary_nodes,
            &mut warnings,
        )?;
        let has_h = !mesh_input.h.is_empty();
        let mut layout = read_layout(&first, p0, n_nodes, n_elements, has_h, &mut warnings)?;
        let surface_only = !has_h;
        if surface_only {
            if layout.three_d {
                bail!(
                    "{}: variable `h` (bathymetry) not found; only a surface-only file, with 2-D \
                     velocities `{}(time, nele)`, can do without it",
                    p0.display(),
                    layout.u
                );
            }
            if layout.zeta {
                warnings.push(format!(
                    "{}: `zeta` without `h` is not used; the input is surface only",
                    p0.display()
                ));
                layout.zeta = false;
            }
            mesh_input.h = vec![SURFACE_ONLY_DEPTH; n_nodes];
        }
        if !layout.three_d {
            // Depth-averaged velocity: one layer spanning the column; layered node fields
            // cannot be matched to it.
            mesh_input.n_layers = 1;
            mesh_input.siglay.clear();
            mesh_input.siglev.clear();
            if layout.temp || layout.kh {
                warnings.push(format!(
                    "{}: velocities are 2-D; layered `temp`/`kh` are not used",
                    p0.display()
                ));
            }
            layout.temp = false;
            layout.kh = false;
            layout.salinity = false;
        }

        let mut sources = vec![Source {
            path: p0.clone(),
            file: first,
        }];
        for p in &paths[1..] {
            let f = open(p)?;
            if f.dimension_len("node") != Some(n_nodes)
                || f.dimension_len("nele") != Some(n_elements)
            {
                bail!("{}: its mesh ({:?} nodes, {:?} elements) differs from {} ({n_nodes}, {n_elements})",
                    p.display(), f.dimension_len("node"), f.dimension_len("nele"), p0.display());
            }
            let mut l = read_layout(&f, p, n_nodes, n_elements, has_h, &mut Vec::new())?;
            if !l.three_d {
                l.temp = false;
                l.kh = false;
                l.salinity = false;
            }
            if surface_only {
                l.zeta = false;
            }
            if l != layout {
                bail!(
                    "{}: carries different variables from {}",
                    p.display(),
                    p0.display()
                );
            }
            sources.push(Source {
                path: p.clone(),
                file: f,
            });
        }

        // Files in time order, whatever order they were given in; each joins the one before
        // it end to start, a repeated boundary record (FVCOM restarts write the last record
        // again) dropped.
        let mut files = Vec::with_capacity(sources.len());
        for s in sources {
            let (t, how) = time_axis(&s.file, &s.path, &mut warnings)?;
            if t.is_empty() {
                bail!("{}: no time slices", s.path.display());
            }
            files.push((s, t, how));
        }
        let given: Vec<PathBuf> = files.iter().map(|f| f.0.path.clone()).collect();
        files.sort_by(|a, b| a.1[0].total_cmp(&b.1[0]));
        if files.iter().zip(&given).any(|(f, g)| f.0.path != *g) {
            let order: Vec<String> = files
                .iter()
                .map(|f| f.0.path.display().to_string())
                .collect();
            warnings.push(format!(
                "input files taken in time order: {}",
                order.join(", ")
            ));
        }
        let (sources, axes): (Vec<Source>, Vec<(Vec<f64>, String)>) =
            files.into_iter().map(|(s, t, how)| (s, (t, how))).unzip();
        let mut times: Vec<f64> = Vec::new();
        let mut slots = Vec::new();
        let mut time_source = Vec::new();
        for (k, (s, (t, how))) in sources.iter().zip(axes).enumerate() {
            time_source.push(how);
            if let Some(&last) = times.last() {
                let prev = &sources[k - 1].path;
                let when = crate::input::timefmt::format_datetime;
                if t[0] < last - 0.5 {
                    bail!(
                        "{}: its times ({} ..) overlap those of {} (.. {}) by more than a repeated boundary record",
                        s.path.display(),
                        when(t[0]),
                        prev.display(),
                        when(last)
                    );
                }
                // The files' own interval: the smallest step either file takes.
                let steps = |t: &[f64]| {
                    t.windows(2)
                        .map(|w| w[1] - w[0])
                        .fold(f64::INFINITY, f64::min)
                };
                let own = steps(&times).min(steps(&t));
                if own.is_finite() && t[0] - last > 1.5 * own {
                    bail!(
                        "{}: starts at {}, but {} ends at {}: a gap of {:.0} s, more than the files' own interval of {own:.0} s",
                        s.path.display(),
                        when(t[0]),
                        prev.display(),
                        when(last),
                        t[0] - last
                    );
                }
            }
            for (i, ti) in t.into_iter().enumerate() {
                if let Some(&last) = times.last() {
                    if ti <= last {
                        if (ti - last).abs() < 0.5 && i == 0 {
                            continue; // files that share their boundary time
                        }
                        bail!(
                            "{}: time slice {i} ({}) is not after the previous one ({})",
                            s.path.display(),
                            crate::input::timefmt::format_datetime(ti),
                            crate::input::timefmt::format_datetime(last)
                        );
                    }
                }
                times.push(ti);
                slots.push((k, i));
            }
        }

        let (mesh, notes) =
            Mesh::build(mesh_input.clone()).map_err(|e| anyhow!("{}: {e}", p0.display()))?;
        let geo = match (coordinates, &mesh_input.projection) {
            (Coordinates::Geographic, Some(tm)) => Some(crate::input::crs::Geo::Frame(*tm)),
            _ => match string_attr(None, &sources[0].file, "CoordinateProjection") {
                None => None,
                Some(text) => crate::input::crs::parse(&text).unwrap_or_else(|why| {
                    warnings.push(format!(
                        "{}: global attribute `CoordinateProjection` (\"{text}\") is not understood: {why}; the output has x/y only",
                        sources[0].path.display()
                    ));
                    None
                }),
            },
        };
        Ok((
            FvcomReader {
                sources,
                times,
                slots,
                layout,
                coordinates,
                time_source,
                warnings,
                mesh_input,
                surface_only,
                geo,
            },
            mesh,
            notes,
        ))
    }

    pub fn path(&self, i: usize) -> &Path {
        &self.sources[i].path
    }

    /// Reads time slice `index` (into the concatenated axis); `origin` is the run clock's zero in
    /// Unix seconds.
    pub fn read_slice(&self, index: usize, origin: f64) -> Result<RawSlice> {
        crate::nc::quiet(); // field servers read on threads of their own
        let (k, i) = self.slots[index];
        let Source { path, file } = &self.sources[k];
        let l = &self.layout;
        let vel = |name: &str| -> Result<Vec<f32>> {
            if l.three_d {
                read_f32(file, path, name, (i, .., ..))
            } else {
                read_f32(file, path, name, (i, ..))
            }
        };
        Ok(RawSlice {
            time: self.times[index] - origin,
            u: vel(&l.u)?,
            v: vel(&l.v)?,
            ww: if l.ww { Some(vel("ww")?) } else { None },
            zeta: if l.zeta {
                read_f32(file, path, "zeta", (i, ..))?
            } else {
                vec![0.0; l.n_nodes]
            },
            temp: if l.temp {
                Some(read_f32(file, path, "temp", (i, .., ..))?)
            } else {
                None
            },
            kh: if l.kh {
                Some(read_f32(file, path, "kh", (i, .., ..))?)
            } else {
                None
            },
            salinity: if l.salinity {
                Some(read_f32(file, path, "salinity", (i, .., ..))?)
            } else {
                None
            },
            wet: match l.wet {
                Wetness::None => None,
                // A fill value is no evidence of drying: such a cell counts as wet.
                Wetness::Cells => Some(
                    read_f32(file, path, "wet_cells", (i, ..))?
                        .iter()
                        .map(|&w| u8::from(w.is_nan() || w >= 0.5))
                        .collect(),
                ),
                Wetness::Nodes => {
                    let nodes = read_f32(file, path, "wet_nodes", (i, ..))?;
                    Some(
                        self.mesh_input
                            .nv
                            .iter()
                            .map(|t| {
                                u8::from(t.iter().all(|&n| {
                                    let w = nodes[n as usize];
                                    w.is_nan() || w >= 0.5
                                }))
                            })
                            .collect(),
                    )
                }
            },
        })
    }

    /// The optional fields this reader delivers.
    pub fn carried(&self) -> shoal_common::fields::Carried {
        let l = &self.layout;
        shoal_common::fields::Carried {
            temp: l.temp,
            kh: l.kh,
            salinity: l.salinity,
            wet: l.wet != Wetness::None,
        }
    }
}

fn all_zero_or_missing(file: &netcdf::File, path: &Path, name: &str) -> Result<bool> {
    if file.variable(name).is_none() {
        return Ok(true);
    }
    Ok(read_f64_all(file, path, name)?
        .iter()
        .all(|v| *v == 0.0 || !v.is_finite()))
}

fn read_mesh(
    file: &netcdf::File,
    path: &Path,
    n_nodes: usize,
    n_elements: usize,
    open_boundary_nodes: &[u32],
    warnings: &mut Vec<String>,
) -> Result<(MeshInput, Coordinates)> {
    let declared = string_attr(None, file, "CoordinateSystem")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let xy_empty = all_zero_or_missing(file, path, "x")? || all_zero_or_missing(file, path, "y")?;
    let ll_empty =
        all_zero_or_missing(file, path, "lon")? || all_zero_or_missing(file, path, "lat")?;
    // A projection that cannot be read leaves x/y without a place on the globe; where the file
    // carries lon/lat too, track in those instead, so the output can go on a map.
    let unreadable = string_attr(None, file, "CoordinateProjection")
        .and_then(|text| crate::input::crs::parse(&text).err().map(|why| (text, why)))
        .filter(|_| !xy_empty && !ll_empty);
    if let Some((text, why)) = &unreadable {
        warnings.push(format!(
            "{}: global attribute `CoordinateProjection` (\"{text}\") is not understood: {why}; tracking in the file's `lon`/`lat` instead of `x`/`y`",
            path.display()
        ));
    }
    let coordinates = if unreadable.is_some() {
        Coordinates::Geographic
    } else if declared.contains("cartesian") && !xy_empty {
        Coordinates::Cartesian
    } else if (declared.contains("geo") || declared.contains("spher")) && !ll_empty {
        Coordinates::Geographic
    } else if !xy_empty {
        Coordinates::Cartesian
    } else if !ll_empty {
        Coordinates::Geographic
    } else {
        bail!(
            "{}: no usable node coordinates: `x`/`y` and `lon`/`lat` are missing or all zero",
            path.display()
        );
    };
    let mut input = MeshInput::default();
    match coordinates {
        Coordinates::Cartesian => {
            input.x = read_f64_all(file, path, "x")?;
            input.y = read_f64_all(file, path, "y")?;
        }
        Coordinates::Geographic => {
            let lon = read_f64_all(file, path, "lon")?;
            let lat = read_f64_all(file, path, "lat")?;
            if let Some(i) = lon.iter().chain(&lat).position(|v| !v.is_finite()) {
                bail!(
                    "{}: `lon`/`lat` value {} is not finite",
                    path.display(),
                    i % n_nodes
                );
            }
            // Centre on the mesh; mean of wrapped longitudes around the first one handles both
            // 0..360 and -180..180 conventions and meshes across the dateline.
            let l0 = lon[0];
            let mean_lon = l0
                + lon
                    .iter()
                    .map(|l| shoal_common::projection::wrap_lon(l - l0))
                    .sum::<f64>()
                    / lon.len() as f64;
            let mean_lat = lat.iter().sum::<f64>() / lat.len() as f64;
            let tm = TransverseMercator::new(mean_lon, mean_lat);
            for (lo, la) in lon.iter().zip(&lat) {
                let (x, y) = tm.forward(*lo, *la);
                input.x.push(x);
                input.y.push(y);
            }
            input.projection = Some(tm);
        }
    }
    if input.x.len() != n_nodes {
        bail!(
            "{}: node coordinates have {} values for {n_nodes} nodes",
            path.display(),
            input.x.len()
        );
    }
    // Without `h` this can only be a surface-only file, which the caller decides from the
    // velocities' shape; the nominal depth stands in until then.
    let h = if file.variable("h").is_some() {
        read_f32(file, path, "h", ..)?
    } else {
        Vec::new()
    };
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: variable `h` (bathymetry) is missing at node {} (fill value or NaN)",
            path.display(),
            i + 1
        );
    }
    if !h.is_empty() && h.len() != n_nodes {
        bail!(
            "{}: variable `h` has {} values for {n_nodes} nodes",
            path.display(),
            h.len()
        );
    }
    input.h = h;

    let nv = read_table(file, path, "nv", 3, n_elements)?;
    let min = nv.iter().flatten().copied().min().unwrap_or(0);
    let max = nv.iter().flatten().copied().max().unwrap_or(0);
    // UGRID files say where node numbers start (`start_index`); FVCOM's own start at 1, and
    // subsets that renumber from 0 give themselves away by a 0.
    let base = match file
        .variable("nv")
        .and_then(|v| v.attribute_value("start_index"))
    {
        Some(Ok(value)) => match i64::try_from(value) {
            Ok(b @ (0 | 1)) => b,
            _ => bail!(
                "{}: attribute `start_index` of variable `nv` is neither 0 nor 1",
                path.display()
            ),
        },
        _ => {
            if min == 0 {
                0
            } else {
                1
            }
        }
    };
    if max - base >= n_nodes as i64 || min < 0 {
        bail!(
            "{}: variable `nv` holds node numbers {min}..{max}, outside 1..{n_nodes}",
            path.display()
        );
    }
    input.nv = nv
        .iter()
        .map(|r| [r[0] - base, r[1] - base, r[2] - base])
        .collect();
    if file.variable("nbe").is_some() {
        let nbe = read_table(file, path, "nbe", 3, n_elements)?;
        let zero_based = nbe.iter().flatten().any(|v| *v < 0)
            || base == 0 && !nbe.iter().flatten().any(|v| *v as usize == n_elements);
        let off = if zero_based { 0 } else { 1 };
        input.nbe = Some(
            nbe.iter()
                .map(|r| [r[0] - off, r[1] - off, r[2] - off])
                .collect(),
        );
    }
    if coordinates == Coordinates::Cartesian
        && file.variable("a1u").is_some()
        && file.variable("a2u").is_some()
    {
        let as_rows =
            |name: &str| -> Result<Vec<[f32; 4]>> { read_table_f(file, path, name, n_elements) };
        input.a1u = Some(as_rows("a1u")?);
        input.a2u = Some(as_rows("a2u")?);
    }

    // Sigma: (siglay, node) or 1-D (siglay); stored node-major.
    let n_layers = file.dimension_len("siglay").unwrap_or(1);
    input.n_layers = n_layers;
    for (name, per) in [("siglay", n_layers), ("siglev", n_layers + 1)] {
        let Some(var) = file.variable(name) else {
            continue;
        };
        let lens = dim_lens(&var);
        let vals = read_f32(file, path, name, ..)?;
        let node_major: Vec<f32> = if lens.len() == 1 {
            vals
        } else if lens == [per, n_nodes] {
            let mut out = vec![0.0; per * n_nodes];
            for k in 0..per {
                for n in 0..n_nodes {
                    out[n * per + k] = vals[k * n_nodes + n];
                }
            }
            out
        } else if lens == [n_nodes, per] {
            vals
        } else {
            bail!("{}: variable `{name}` has shape {lens:?}", path.display());
        };
        if name == "siglay" {
            input.siglay = node_major;
        } else {
            input.siglev = node_major;
        }
    }
    if n_layers > 1 && !input.siglay.is_empty() && input.siglev.is_empty() {
        // Files cut out by tile and data servers often carry `siglay` alone.
        let (levels, how) = levels_from_layers(&input.siglay, n_layers)
            .map_err(|why| anyhow!("{}: `siglay` without `siglev`: {why}", path.display()))?;
        input.siglev = levels;
        warnings.push(format!(
            "{}: no `siglev`; sigma levels {how}",
            path.display()
        ));
    }
    if n_layers > 1 && (input.siglay.is_empty() || input.siglev.is_empty()) {
        bail!(
            "{}: 3-D fields need `siglay` (and `siglev`, or `siglay` to derive it from), which is missing",
            path.display()
        );
    }
    if input.siglev.is_empty() != input.siglay.is_empty() {
        warnings.push(format!(
            "{}: only one of `siglay`/`siglev` present; using evenly spaced sigma",
            path.display()
        ));
        input.siglay.clear();
        input.siglev.clear();
    }
    input.open_boundary_nodes = open_boundary_nodes.to_vec();
    if let Some(bnd) = boundary_table(file, path, n_nodes)? {
        input.open_boundary_nodes = agree_on_open_nodes(path, bnd, open_boundary_nodes)?;
    }
    Ok((input, coordinates))
}

/// Sigma levels (`n_layers + 1` per column, from 0 at the surface to -1 at the bed) for layer
/// centres `siglay` (`n_layers` per column, one column or one per node). FVCOM defines each
/// layer's sigma as the mean of the levels above and below it, so the levels follow exactly,
/// one from the next; where the layers are not such means (the levels would not close at -1,
/// or not fall monotonically), each inner level is taken halfway between its layers instead.
/// Also says which of the two it did.
fn levels_from_layers(siglay: &[f32], n_layers: usize) -> Result<(Vec<f32>, &'static str)> {
    let per = n_layers + 1;
    let mut exact = Vec::with_capacity(siglay.len() / n_layers * per);
    let mut closes = true;
    for col in siglay.chunks(n_layers) {
        let mut level = 0.0f64;
        exact.push(0.0f32);
        for (k, &lay) in col.iter().enumerate() {
            let next = 2.0 * lay as f64 - level;
            closes &= next < level && next >= -1.0 - 1e-3;
            level = next;
            exact.push(if k + 1 == n_layers { -1.0 } else { next as f32 });
        }
        closes &= (level + 1.0).abs() <= 1e-3;
    }
    if closes {
        return Ok((
            exact,
            "derived from `siglay`, whose values are FVCOM's mid-levels",
        ));
    }
    let mut halfway = Vec::with_capacity(exact.len());
    for col in siglay.chunks(n_layers) {
        if col.windows(2).any(|w| w[1] >= w[0]) || col[0] >= 0.0 || col[n_layers - 1] <= -1.0 {
            bail!("its values do not fall from 0 towards -1 within (0, -1)");
        }
        halfway.push(0.0f32);
        halfway.extend(col.windows(2).map(|w| 0.5 * (w[0] + w[1])));
        halfway.push(-1.0);
    }
    Ok((
        halfway,
        "taken halfway between the layers of `siglay` (which are not FVCOM's exact mid-levels here)",
    ))
}

/// The open-boundary nodes (0-based) of GNOME's boundary table `bnd(nbnd, 4)`, if the file has
/// one. Its rows are boundary segments `node1 node2 island type`, `type` 1 for open water and 0
/// for land, nodes 1-based unless the variable's `units` say `index_start_0`: as PyGnome's
/// documentation of its NetCDF formats describes it, and its C++ reader
/// (`GridMap_c::SetUpTriangleGrid`) types the segments.
fn boundary_table(file: &netcdf::File, path: &Path, n_nodes: usize) -> Result<Option<Vec<u32>>> {
    let Some(var) = file.variable("bnd") else {
        return Ok(None);
    };
    let n = dim_lens(&var).into_iter().find(|&l| l != 4).unwrap_or(4);
    let rows = read_table(file, path, "bnd", 4, n)?;
    let base = match string_attr(Some(&var), file, "units").as_deref() {
        Some("index_start_0") => 0,
        _ => 1,
    };
    let mut open = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let bad = |what: String| {
            anyhow!(
                "{}: variable `bnd` row {i}: {what} (columns: node, node, island, 1 open or 0 land)",
                path.display()
            )
        };
        for &node in &r[..2] {
            if node < base || node - base >= n_nodes as i64 {
                return Err(bad(format!(
                    "node {node} is outside {base}..{}",
                    n_nodes as i64 - 1 + base
                )));
            }
        }
        match r[3] {
            0 => {}
            1 => open.extend(r[..2].iter().map(|&n| (n - base) as u32)),
            t => return Err(bad(format!("type {t} is neither 1 (open) nor 0 (land)"))),
        }
    }
    open.sort_unstable();
    open.dedup();
    Ok(Some(open))
}

/// The boundary table's open nodes, which must be the `_obc.dat` (or `open_boundary_nodes`) ones
/// when those are given too.
fn agree_on_open_nodes(path: &Path, bnd: Vec<u32>, given: &[u32]) -> Result<Vec<u32>> {
    if given.is_empty() {
        return Ok(bnd);
    }
    let mut given = given.to_vec();
    given.sort_unstable();
    given.dedup();
    if let Some(n) = given.iter().find(|n| bnd.binary_search(n).is_err()) {
        bail!(
            "{}: node {} is an open-boundary node of the given open boundary (`input.open_boundary_file` or `input.open_boundary_nodes`) but on no open segment of variable `bnd`",
            path.display(),
            n + 1
        );
    }
    if let Some(n) = bnd.iter().find(|n| given.binary_search(n).is_err()) {
        bail!(
            "{}: node {} is on an open segment of variable `bnd` but not in the given open boundary (`input.open_boundary_file` or `input.open_boundary_nodes`)",
            path.display(),
            n + 1
        );
    }
    Ok(bnd)
}

fn read_table_f(
    file: &netcdf::File,
    path: &Path,
    name: &str,
    n_elements: usize,
) -> Result<Vec<[f32; 4]>> {
    let var = file
        .variable(name)
        .ok_or_else(|| anyhow!("{}: variable `{name}` not found", path.display()))?;
    let lens = dim_lens(&var);
    let flat = read_f32(file, path, name, ..)?;
    if lens == [4, n_elements] {
        Ok((0..n_elements)
            .map(|e| {
                [
                    flat[e],
                    flat[n_elements + e],
                    flat[2 * n_elements + e],
                    flat[3 * n_elements + e],
                ]
            })
            .collect())
    } else if lens == [n_elements, 4] {
        Ok(flat.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
    } else {
        bail!(
            "{}: variable `{name}` has shape {lens:?}; expected (4, {n_elements})",
            path.display()
        )
    }
}

/// Whether `name`, a variable read one time slice at a time, is present; when it is, its shape
/// must be (time, `expected`...) and its type numeric, or the error names it and its shape.
fn per_time(
    file: &netcdf::File,
    path: &Path,
    name: &str,
    expected: &[(&str, usize)],
) -> Result<bool> {
    let Some(var) = file.variable(name) else {
        return Ok(false);
    };
    let lens = dim_lens(&var);
    if lens.len() != expected.len() + 1 || lens[1..].iter().ne(expected.iter().map(|e| &e.1)) {
        let want: Vec<String> = expected.iter().map(|(d, n)| format!("{d} = {n}")).collect();
        bail!(
            "{}: variable `{name}` has shape {lens:?} ({}); expected (time, {})",
            path.display(),
            dim_names(&var).join(", "),
            want.join(", ")
        );
    }
    use netcdf::types::NcVariableType as T;
    if !matches!(var.vartype(), T::Int(_) | T::Float(_)) {
        bail!(
            "{}: variable `{name}` is not numeric ({:?})",
            path.display(),
            var.vartype()
        );
    }
    Ok(true)
}

/// `has_h`: the file has bathymetry (without it, a missing `zeta` is no news: the file is
/// surface only).
fn read_layout(
    file: &netcdf::File,
    path: &Path,
    n_nodes: usize,
    n_elements: usize,
    has_h: bool,
    warnings: &mut Vec<String>,
) -> Result<Layout> {
    let n_layers = file.dimension_len("siglay").unwrap_or(1);
    let (u, v) = if file.variable("u").is_some() && file.variable("v").is_some() {
        ("u", "v")
    } else if file.variable("ua").is_some() && file.variable("va").is_some() {
        warnings.push(format!(
            "{}: no 3-D `u`/`v`; using depth-averaged `ua`/`va`",
            path.display()
        ));
        ("ua", "va")
    } else if file.variable("u").is_none() {
        bail!(
            "{}: velocity variable `u` not found (nor `ua`/`va`)",
            path.display()
        );
    } else {
        bail!(
            "{}: velocity variable `v` not found (nor `ua`/`va`)",
            path.display()
        );
    };
    let uvar = file.variable(u).unwrap();
    let lens = dim_lens(&uvar);
    let three_d = match lens.as_slice() {
        [_, l, e] if *e == n_elements && *l == n_layers => true,
        [_, e] if *e == n_elements => false,
        _ => bail!("{}: variable `{u}` has shape {lens:?} ({:?}); expected (time, siglay, nele) or (time, nele)", path.display(), dim_names(&uvar)),
    };
    // Every variable read per time is checked here, on every path, so that a wrong file is an
    // error naming the variable and its shape, never an index out of range later.
    let (lay, lev) = ("siglay", "siglev");
    let checked = |name: &str, expected: &[(&str, usize)]| -> Result<bool> {
        per_time(file, path, name, expected)
    };
    if !three_d {
        checked(v, &[("nele", n_elements)])?;
    } else {
        checked(v, &[(lay, n_layers), ("nele", n_elements)])?;
    }
    let ww = checked("ww", &[(lay, n_layers), ("nele", n_elements)])? && three_d;
    if three_d && !ww {
        warnings.push(format!(
            "{}: no `ww`; vertical velocity taken as zero",
            path.display()
        ));
    }
    let zeta = checked("zeta", &[("node", n_nodes)])?;
    if !zeta && has_h {
        warnings.push(format!(
            "{}: no `zeta`; free surface taken as zero",
            path.display()
        ));
    }
    let temp = checked("temp", &[(lay, n_layers), ("node", n_nodes)])?;
    let kh = checked("kh", &[(lev, n_layers + 1), ("node", n_nodes)])?;
    let salinity = checked("salinity", &[(lay, n_layers), ("node", n_nodes)])?;
    let wet_cells = checked("wet_cells", &[("nele", n_elements)])?;
    let wet_nodes = checked("wet_nodes", &[("node", n_nodes)])?;
    Ok(Layout {
        u: u.into(),
        v: v.into(),
        three_d,
        ww,
        zeta,
        temp,
        kh,
        salinity,
        wet: if wet_cells {
            Wetness::Cells
        } else if wet_nodes {
            Wetness::Nodes
        } else {
            Wetness::None
        },
        n_layers: if three_d { n_layers } else { 1 },
        n_nodes,
        n_elements,
    })
}
