//! Release points: from a CSV (`x,y,z` or `lon,lat,z`, optional `release_time`), generated
//! from the seed (a disc, or the whole mesh by area), or drawn in named GeoJSON sites, once or
//! repeatedly. Points outside the mesh are kept, flagged and counted, never silently dropped
//! (site points are drawn in the water only).

use crate::input::config::{PolygonRelease, RunConfig};
use crate::input::crs::Geo;
use crate::input::timefmt::parse_datetime;
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::rng::{draw, unit_open, Stream};
use shoal_common::{status, Mesh, Particles};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReleasePoint {
    pub x: f64,
    pub y: f64,
    /// Metres relative to the surface at release (0 surface, negative down).
    pub z: f64,
    /// Seconds on the run clock.
    pub time: f64,
}

/// Where release points came from, for messages.
pub struct Released {
    pub particles: Particles,
    pub outside: usize,
    pub first_outside: Option<(usize, f64, f64)>,
}

/// A run's release: its points, and for a polygon release the site of each.
pub struct Release {
    pub points: Vec<ReleasePoint>,
    pub sites: Option<Origins>,
}

/// Release sites: their names, and the index of each particle's site (particle id order).
#[derive(Clone, Debug, PartialEq)]
pub struct Origins {
    pub names: Vec<String>,
    pub origin: Vec<u16>,
    /// Each particle's release, an index into `release_times` (run clock seconds).
    pub release: Vec<u32>,
    pub release_times: Vec<f64>,
}

/// The release the run file asks for. `duration` is the run's, in seconds: releases after it
/// are an error.
pub fn points(
    cfg: &RunConfig,
    mesh: &Mesh,
    geo: Option<&Geo>,
    start: f64,
    duration: f64,
) -> Result<Release> {
    if let Some(pr) = &cfg.polygons {
        return polygons(cfg, pr, mesh, geo, start, duration);
    }
    let points = match &cfg.release_file {
        Some(p) => read_csv(p, geo, start)?,
        None => generate(cfg, mesh, start)?,
    };
    if cfg.backward {
        // A backward run releases at and before its start, within its span.
        if let Some(p) = points.iter().find(|p| p.time > 0.0 || p.time < -duration) {
            bail!(
                "{}: a release {} s from the start is outside the backward run, which goes from its start back {duration} s",
                if cfg.release_file.is_some() {
                    "column `release_time`"
                } else {
                    "key `release.generate.time`"
                },
                p.time
            );
        }
    }
    Ok(Release {
        points,
        sites: None,
    })
}

/// Releases a run may repeat (`every` with `until`).
pub const MAX_RELEASES: usize = 100_000;

/// The run-clock seconds of each release of a polygon release.
pub fn release_times(
    pr: &PolygonRelease,
    start: f64,
    duration: f64,
    backward: bool,
) -> Result<Vec<f64>> {
    // Seconds into the run, in its direction: a backward run releases at and before its start.
    let dir = if backward { -1.0 } else { 1.0 };
    let wrong_side = if backward { "after" } else { "before" };
    let mut times = Vec::new();
    if let Some((every, until)) = &pr.every {
        let last = parse_time(until, start).context("key `release.until`")? * dir;
        if last < 0.0 {
            bail!("key `release.until`: {until} is {wrong_side} the run's start");
        }
        let n = (last / every + 1e-9).floor();
        if n >= MAX_RELEASES as f64 {
            bail!(
                "key `release.every`: {} releases until {until}; at most {MAX_RELEASES}",
                n + 1.0
            );
        }
        times.extend((0..=n as u64).map(|k| k as f64 * every));
    } else if !pr.times.is_empty() {
        for t in &pr.times {
            let v = parse_time(t, start).context("key `release.times`")? * dir;
            if v < 0.0 {
                bail!("key `release.times`: {t} is {wrong_side} the run's start");
            }
            times.push(v);
        }
        times.sort_by(f64::total_cmp);
        times.dedup();
    } else {
        times.push(0.0);
    }
    if let Some(late) = times.iter().find(|t| **t > duration) {
        bail!(
            "key `release.{}`: a release {late} s into the run is beyond the run's end ({duration} s)",
            if pr.every.is_some() { "until" } else { "times" }
        );
    }
    Ok(times.into_iter().map(|t| t * dir).collect())
}

fn polygons(
    cfg: &RunConfig,
    pr: &PolygonRelease,
    mesh: &Mesh,
    geo: Option<&Geo>,
    start: f64,
    duration: f64,
) -> Result<Release> {
    let sites = crate::input::sites::read(&pr.file, geo)?;
    if sites.len() > u16::MAX as usize {
        bail!("{}: more than {} sites", pr.file.display(), u16::MAX);
    }
    for s in &sites {
        if !s.touches(mesh) {
            bail!(
                "{}: site `{}` has no water: it lies on land or outside the mesh",
                pr.file.display(),
                s.name
            );
        }
    }
    let times = release_times(pr, start, duration, cfg.backward)?;
    let n = times
        .len()
        .checked_mul(sites.len())
        .and_then(|n| n.checked_mul(pr.per_polygon))
        .filter(|n| *n <= u32::MAX as usize)
        .ok_or_else(|| {
            anyhow!(
                "key `release.per_polygon`: {} releases of {} sites of {} particles are more than a run can hold",
                times.len(),
                sites.len(),
                pr.per_polygon
            )
        })?;
    let mut points = Vec::with_capacity(n);
    let mut origin = Vec::with_capacity(n);
    let mut release = Vec::with_capacity(n);
    // Ids run release by release, site by site: particle `id`'s point depends on (seed, id).
    for (r, &time) in times.iter().enumerate() {
        for (k, site) in sites.iter().enumerate() {
            for _ in 0..pr.per_polygon {
                let id = points.len() as u32;
                let (x, y, u) = site
                    .draw(cfg.seed, id, mesh)
                    .with_context(|| format!("{}", pr.file.display()))?;
                let z = pr.z.0 + u * (pr.z.1 - pr.z.0);
                points.push(ReleasePoint { x, y, z, time });
                origin.push(k as u16);
                release.push(r as u32);
            }
        }
    }
    Ok(Release {
        points,
        sites: Some(Origins {
            names: sites.into_iter().map(|s| s.name).collect(),
            origin,
            release,
            release_times: times,
        }),
    })
}

fn parse_time(s: &str, start: f64) -> Result<f64> {
    if let Ok(v) = s.trim().parse::<f64>() {
        return Ok(v);
    }
    Ok(parse_datetime(s)? - start)
}

/// `geo` places lon/lat columns in the mesh (a geographic mesh, or a Cartesian one whose file
/// names its projection).
pub fn read_csv(path: &Path, geo: Option<&Geo>, start: f64) -> Result<Vec<ReleasePoint>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read release file {}", path.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| anyhow!("{}: empty release file", path.display()))?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let find = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
    let (ix, iy, geographic) = match (
        find(&["x"]),
        find(&["y"]),
        find(&["lon", "longitude"]),
        find(&["lat", "latitude"]),
    ) {
        (Some(a), Some(b), _, _) => (a, b, false),
        (_, _, Some(a), Some(b)) => (a, b, true),
        _ => bail!(
            "{}: header must name columns x,y,z or lon,lat,z (found `{header}`)",
            path.display()
        ),
    };
    let iz = find(&["z", "depth"])
        .ok_or_else(|| anyhow!("{}: header has no `z` column", path.display()))?;
    let it = find(&["release_time", "time"]);
    let tm = if geographic {
        Some(geo.ok_or_else(|| {
            anyhow!(
                "{}: gives lon/lat but the mesh is Cartesian and its file names no projection (`CoordinateProjection`); use x,y",
                path.display()
            )
        })?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (lineno, line) in lines {
        let f: Vec<&str> = line.split(',').map(|s| s.trim()).collect();
        let num = |i: usize, name: &str| -> Result<f64> {
            f.get(i)
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    anyhow!(
                        "{} line {}: column `{name}` is not a number",
                        path.display(),
                        lineno + 1
                    )
                })
        };
        let (a, b) = (num(ix, &cols[ix])?, num(iy, &cols[iy])?);
        let (x, y) = match &tm {
            Some(tm) => tm.forward(a, b),
            None => (a, b),
        };
        let z = num(iz, "z")?;
        let time = match it.and_then(|i| f.get(i)).filter(|s| !s.is_empty()) {
            Some(s) => parse_time(s, start).with_context(|| {
                format!(
                    "{} line {}: column `release_time`",
                    path.display(),
                    lineno + 1
                )
            })?,
            None => 0.0,
        };
        out.push(ReleasePoint { x, y, z, time });
    }
    Ok(out)
}

pub fn generate(cfg: &RunConfig, mesh: &Mesh, start: f64) -> Result<Vec<ReleasePoint>> {
    let g = cfg.generate.as_ref().expect("generate section");
    let time = match &g.time {
        Some(s) => parse_time(s, start).context("key `release.generate.time`")?,
        None => 0.0,
    };
    let mut out = Vec::with_capacity(g.count);
    match g.centre {
        Some(c) => {
            let (cx, cy) = match mesh.projection {
                Some(tm) => tm.forward(c[0], c[1]),
                None => (c[0], c[1]),
            };
            let r = g.radius.unwrap_or(0.0);
            for i in 0..g.count {
                let b = draw(cfg.seed, i as u32, 0, Stream::Release);
                let rr = r * unit_open(b[0]).sqrt();
                let th = std::f64::consts::TAU * unit_open(b[1]);
                out.push(ReleasePoint {
                    x: cx + rr * th.cos(),
                    y: cy + rr * th.sin(),
                    z: g.z,
                    time,
                });
            }
        }
        None => {
            let mut cum = Vec::with_capacity(mesh.n_elements());
            let mut total = 0.0;
            for e in 0..mesh.n_elements() {
                total += mesh.element_area(e);
                cum.push(total);
            }
            for i in 0..g.count {
                let b = draw(cfg.seed, i as u32, 0, Stream::Release);
                let target = unit_open(b[0]) * total;
                let e = cum
                    .partition_point(|c| *c < target)
                    .min(mesh.n_elements() - 1);
                let (mut s, mut t) = (unit_open(b[1]), unit_open(b[2]));
                if s + t > 1.0 {
                    s = 1.0 - s;
                    t = 1.0 - t;
                }
                let n = mesh.nv[e];
                let p = |k: usize| (mesh.x[n[k] as usize], mesh.y[n[k] as usize]);
                let (p0, p1, p2) = (p(0), p(1), p(2));
                out.push(ReleasePoint {
                    x: p0.0 + s * (p1.0 - p0.0) + t * (p2.0 - p0.0),
                    y: p0.1 + s * (p1.1 - p0.1) + t * (p2.1 - p0.1),
                    z: g.z,
                    time,
                });
            }
        }
    }
    Ok(out)
}

/// Locates every point; ids follow the order of the points.
pub fn place(points: &[ReleasePoint], mesh: &Mesh) -> Released {
    let mut p = Particles::with_capacity(points.len());
    let mut outside = 0;
    let mut first_outside = None;
    let mut hint = None;
    for (i, r) in points.iter().enumerate() {
        match mesh.locate(r.x, r.y, hint) {
            Some(e) => {
                hint = Some(e);
                p.push(i as u32, r.x, r.y, r.z.min(0.0), e, status::PENDING, r.time);
            }
            None => {
                outside += 1;
                first_outside.get_or_insert((i, r.x, r.y));
                p.push(i as u32, r.x, r.y, r.z, 0, status::OUTSIDE_MESH, r.time);
            }
        }
    }
    Released {
        particles: p,
        outside,
        first_outside,
    }
}
