//! Reading what a map needs: a trajectory file's positions, times and statuses, the mesh the
//! run used (in map units), and the variables the tracks are coloured by.

use super::framing::to_map;
use super::layers::{Colours, Mark, CATEGORIES, TRACK};
use super::{when, ColourBy, MapOptions};
use crate::input::fvcom::FvcomReader;
use crate::input::timefmt;
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::particles::status;
use shoal_common::projection::wrap_lon;
use std::path::{Path, PathBuf};

/// A trajectory file as a map draws it: positions in map units, (trajectory, time) order.
pub(super) struct Tracks {
    pub(super) path: PathBuf,
    pub(super) n: usize,
    pub(super) nt: usize,
    /// Unix seconds of each record.
    pub(super) times: Vec<f64>,
    pub(super) u: Vec<f64>,
    pub(super) v: Vec<f64>,
    pub(super) status: Vec<i8>,
    pub(super) source: String,
}

impl Tracks {
    pub(super) fn at(&self, p: usize, t: usize) -> Option<(f64, f64)> {
        let (u, v) = (self.u[p * self.nt + t], self.v[p * self.nt + t]);
        (u.is_finite() && v.is_finite()).then_some((u, v))
    }

    /// The last record with a position, up to `upto`.
    pub(super) fn last(&self, p: usize, upto: usize) -> Option<usize> {
        (0..=upto).rev().find(|&t| self.at(p, t).is_some())
    }
}

fn open(output: &Path) -> Result<netcdf::File> {
    crate::nc::open(output)
        .with_context(|| format!("{}: cannot open trajectory file", output.display()))
}

fn read(f: &netcdf::File, path: &Path, name: &str, why: &str) -> Result<Vec<f64>> {
    let v = f
        .variable(name)
        .ok_or_else(|| anyhow!("{}: no variable `{name}`{why}", path.display()))?;
    crate::output::unpacked(&v).with_context(|| format!("{}: reading `{name}`", path.display()))
}

fn text_attribute(f: &netcdf::File, name: &str) -> Option<String> {
    f.attribute(name)
        .and_then(|a| a.value().ok())
        .and_then(|v| String::try_from(v).ok())
}

/// The mesh in map units: nodes, triangles and boundary edges (with their kind).
pub(super) struct MapMesh {
    pub(super) u: Vec<f64>,
    pub(super) v: Vec<f64>,
    pub(super) nv: Vec<[u32; 3]>,
    pub(super) edges: Vec<(u32, u32, u32)>,
}

impl MapMesh {
    pub(super) fn of(mesh: &shoal_common::Mesh, geo: Option<&crate::input::crs::Geo>) -> MapMesh {
        let (u, v) = mesh
            .x
            .iter()
            .zip(&mesh.y)
            .map(|(x, y)| to_map(geo, *x, *y))
            .unzip();
        MapMesh {
            u,
            v,
            nv: mesh.nv.clone(),
            edges: mesh.boundary_edges(),
        }
    }
}

/// The run's input `recorded` in the output's attributes, found from any working directory: the
/// path as recorded (absolute since outputs record them so; an older file's relative path is
/// tried from here), then a file of the same name beside the output (the two moved together).
fn find_input(output: &Path, recorded: &str) -> Result<PathBuf> {
    let recorded = PathBuf::from(recorded);
    let beside = output
        .parent()
        .unwrap_or(Path::new("."))
        .join(recorded.file_name().unwrap_or_default());
    [recorded.clone(), beside.clone()]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "{}: its mesh input is neither at {} (as the run recorded it) nor beside it at {}; \
                 pass --mesh",
                output.display(),
                recorded.display(),
                beside.display()
            )
        })
}

pub(super) fn load(
    output: &Path,
    opts: &MapOptions,
) -> Result<(Tracks, MapMesh, bool, netcdf::File)> {
    let f = open(output)?;
    let n = f.dimension_len("trajectory").ok_or_else(|| {
        anyhow!(
            "{}: no `trajectory` dimension: not a trajectory file",
            output.display()
        )
    })?;
    let nt = f.dimension_len("time").unwrap_or(0);
    anyhow::ensure!(nt > 0 && n > 0, "{}: no records written", output.display());
    let inputs = text_attribute(&f, "shoal_input_files");
    let mesh_path = match (&opts.mesh, &inputs) {
        (Some(p), _) => p.clone(),
        (None, Some(files)) => find_input(output, files.split(", ").next().unwrap_or_default())?,
        (None, None) => bail!(
            "{}: no `shoal_input_files` attribute; pass --mesh",
            output.display()
        ),
    };
    // The open boundary the run had (its nodes as the reader took them).
    let open_nodes: Vec<u32> = text_attribute(&f, "shoal_open_boundary_nodes")
        .unwrap_or_default()
        .split_whitespace()
        .map(|n| {
            n.parse::<u32>().map_err(|_| {
                anyhow!(
                    "{}: `shoal_open_boundary_nodes` holds `{n}`, not a node number",
                    output.display()
                )
            })
        })
        .collect::<Result<_>>()?;
    let (reader, mesh, _) = FvcomReader::open(&[mesh_path], &open_nodes)?;
    let geographic =
        reader.geo.is_some() && f.variable("lon").is_some() && f.variable("lat").is_some();
    let (u, v) = if geographic {
        // Longitudes in -180..180, whichever convention the files use.
        let lon = read(&f, output, "lon", "")?;
        (
            lon.into_iter().map(wrap_lon).collect(),
            read(&f, output, "lat", "")?,
        )
    } else {
        let km = |w: Vec<f64>| w.into_iter().map(|a| a / 1000.0).collect::<Vec<_>>();
        (
            km(read(&f, output, "x", "")?),
            km(read(&f, output, "y", "")?),
        )
    };
    anyhow::ensure!(
        u.len() == n * nt && v.len() == n * nt,
        "{}: positions are not (trajectory, time)",
        output.display()
    );
    let status: Vec<i8> = match f.variable("status") {
        Some(s) => s
            .get_values::<i8, _>(..)
            .with_context(|| format!("{}: reading `status`", output.display()))?,
        None => vec![status::ACTIVE as i8; n * nt],
    };
    anyhow::ensure!(
        status.len() == n * nt,
        "{}: `status` is not (trajectory, time)",
        output.display()
    );
    let time = f
        .variable("time")
        .ok_or_else(|| anyhow!("{}: no variable `time`", output.display()))?;
    let units = time
        .attribute("units")
        .and_then(|a| a.value().ok())
        .and_then(|v| String::try_from(v).ok())
        .ok_or_else(|| anyhow!("{}: `time` has no units", output.display()))?;
    let (scale, epoch) =
        timefmt::parse_cf_units(&units).with_context(|| output.display().to_string())?;
    let times: Vec<f64> = time
        .get_values::<f64, _>(..)
        .with_context(|| format!("{}: reading `time`", output.display()))?
        .into_iter()
        .map(|t| epoch + scale * t)
        .collect();
    let names: Vec<String> = inputs
        .as_deref()
        .unwrap_or_default()
        .split(", ")
        .filter(|s| !s.is_empty())
        .map(|s| {
            Path::new(s)
                .file_name()
                .map_or(s.to_string(), |n| n.to_string_lossy().into_owned())
        })
        .collect();
    let source = match names.len() {
        0 => output
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        1 => names[0].clone(),
        k => format!("{} and {} more", names[0], k - 1),
    };
    let map = MapMesh::of(&mesh, reader.geo.as_ref().filter(|_| geographic));
    let tracks = Tracks {
        path: output.to_path_buf(),
        n,
        nt,
        times,
        u,
        v,
        status,
        source,
    };
    Ok((tracks, map, geographic, f))
}

pub(super) fn colours(f: &netcdf::File, tr: &Tracks, by: ColourBy) -> Result<Colours> {
    let path = &tr.path;
    let ramp_of = |values: Vec<f64>, title: &str, fixed: Option<(f64, f64)>| -> Result<Colours> {
        anyhow::ensure!(
            values.len() == tr.n * tr.nt,
            "{}: `{title}` is not (trajectory, time)",
            path.display()
        );
        let (lo, hi) = fixed.unwrap_or_else(|| {
            values
                .iter()
                .filter(|a| a.is_finite())
                .fold((f64::MAX, f64::MIN), |(l, h), a| (l.min(*a), h.max(*a)))
        });
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 1.0) };
        Ok(Colours::Ramp {
            values,
            lo,
            hi: if hi > lo { hi } else { lo + lo.abs().max(1.0) },
            title: title.to_string(),
        })
    };
    Ok(match by {
        ColourBy::None => Colours::One,
        ColourBy::Age => {
            let age = read(f, path, "age", " to colour by")?;
            ramp_of(
                age.into_iter().map(|a| a / 3600.0).collect(),
                "age (h)",
                None,
            )?
        }
        ColourBy::Depth => {
            let z = read(f, path, "z", " to colour by")?;
            ramp_of(z.into_iter().map(|a| -a).collect(), "depth (m)", None)?
        }
        ColourBy::Happiness => {
            let h = read(
                f,
                path,
                "happiness",
                " to colour by (the run had no preferred temperature)",
            )?;
            ramp_of(h, "happiness", Some((0.0, 1.0)))?
        }
        ColourBy::Origin => {
            let o = read(
                f,
                path,
                "origin",
                " to colour by (the run's release named no sites)",
            )?;
            anyhow::ensure!(
                o.len() == tr.n,
                "{}: `origin` is not (trajectory)",
                path.display()
            );
            let k = f.dimension_len("origin").unwrap_or(0);
            let names: Vec<String> = match f.variable("origin_name") {
                Some(v) => (0..k)
                    .map(|i| v.get_string([i]).unwrap_or_else(|_| format!("site {i}")))
                    .collect(),
                None => Vec::new(),
            };
            let of: Vec<usize> = o.iter().map(|a| a.max(0.0) as usize).collect();
            let most = of.iter().copied().max().unwrap_or(0);
            let names = if names.len() > most {
                names
            } else {
                (0..=most).map(|i| format!("site {i}")).collect()
            };
            Colours::Key {
                of,
                names,
                colours: CATEGORIES.to_vec(),
                heading: "release site",
            }
        }
        ColourBy::Status => {
            let mut of = vec![0usize; tr.n];
            let marks = [
                Mark::Active,
                Mark::Exited,
                Mark::Settled,
                Mark::Stranded,
                Mark::Dead,
                Mark::Lost,
            ];
            for (p, o) in of.iter_mut().enumerate() {
                let s = tr.status[p * tr.nt + tr.nt - 1];
                let m = Mark::of(s).unwrap_or(Mark::Active);
                *o = marks.iter().position(|k| *k == m).unwrap_or(0);
            }
            Colours::Key {
                of,
                names: marks.iter().map(|m| m.label().to_string()).collect(),
                colours: marks
                    .iter()
                    .map(|m| {
                        if *m == Mark::Active {
                            TRACK
                        } else {
                            m.colour()
                        }
                    })
                    .collect(),
                heading: "last status",
            }
        }
    })
}

pub(super) fn default_colour_by(f: &netcdf::File) -> ColourBy {
    match f.dimension_len("origin") {
        Some(k) if k > 1 && f.variable("origin").is_some() => ColourBy::Origin,
        _ if f.variable("age").is_some() => ColourBy::Age,
        _ => ColourBy::None,
    }
}

/// The record nearest to `--time`.
pub(super) fn record_at(tr: &Tracks, spec: &str) -> Result<usize> {
    let first = tr.times[0];
    let t = match timefmt::parse_datetime(spec) {
        Ok(t) => t,
        Err(_) => {
            first
                + timefmt::parse_duration(spec).map_err(|_| {
                    anyhow!(
                "--time `{spec}`: neither a date and time nor a duration after the first record"
            )
                })?
        }
    };
    let last = *tr.times.last().expect("records checked");
    let slack = if tr.nt > 1 {
        (last - first) / (tr.nt - 1) as f64 / 2.0
    } else {
        0.0
    };
    anyhow::ensure!(
        t >= first - slack && t <= last + slack,
        "--time `{spec}`: {} covers {} to {} UTC",
        tr.path.display(),
        when(first),
        when(last)
    );
    Ok((0..tr.nt)
        .min_by(|a, b| {
            (tr.times[*a] - t)
                .abs()
                .total_cmp(&(tr.times[*b] - t).abs())
        })
        .unwrap_or(0))
}
