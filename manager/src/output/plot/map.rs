//! Trajectory maps: `shoal plot` (tracks, or positions at one time) and `shoal animate`.
//!
//! A map says what, where and when: a title with the source, the period and the particle count;
//! axes in degrees (geographic meshes) or kilometres (Cartesian); land shaded, the mesh's land
//! boundary dark and its open boundaries blue; a scale bar; start and end markers and the
//! statuses that occur in a legend; and a colour bar or a key for what the tracks are coloured
//! by. Everything is drawn here in pixels (no chart library's layout), so that PNG, SVG and
//! each GIF frame come out the same.

use super::text::{Align, Pen};
use crate::input::fvcom::FvcomReader;
use crate::input::timefmt;
use anyhow::{anyhow, bail, Context, Result};
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use shoal_common::particles::status;
use shoal_common::projection::wrap_lon;
use std::path::{Path, PathBuf};

/// What the tracks are coloured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColourBy {
    /// Time since release, hours.
    Age,
    /// Depth below the surface, metres.
    Depth,
    /// The particle's last status.
    Status,
    /// The release site (`origin`).
    Origin,
    /// The happiest-particle example's happiness.
    Happiness,
    /// One colour.
    None,
}

/// How `shoal plot` and `shoal animate` draw a trajectory file.
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// The FVCOM file with the mesh (default: the run's first input).
    pub mesh: Option<PathBuf>,
    /// Pixels on the map's longer side.
    pub size: u32,
    /// Default: by origin where there are several release sites, by age otherwise.
    pub colour_by: Option<ColourBy>,
    /// West, east, south, north in the map's units (degrees or km).
    pub extent: Option<[f64; 4]>,
    /// Positions at this time (a date and time, or a duration after the first record).
    pub time: Option<String>,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            mesh: None,
            size: 1000,
            colour_by: None,
            extent: None,
            time: None,
        }
    }
}

/// The largest map side, pixels (`--size`).
pub const MAX_SIZE: u32 = 16_384;

const LAND: RGBColor = RGBColor(232, 223, 200);
const WATER: RGBColor = RGBColor(246, 250, 253);
const COAST: RGBColor = RGBColor(70, 70, 70);
const OPEN: RGBColor = RGBColor(20, 80, 255);
const INK: RGBColor = RGBColor(20, 20, 20);
const START: RGBColor = RGBColor(0, 150, 70);
const TRACK: RGBColor = RGBColor(40, 90, 140);

/// Ten distinct colours for categories (release sites).
const CATEGORIES: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A perceptually even ramp from dark purple through teal to yellow (viridis' anchor colours).
fn ramp(s: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let s = if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let f = s * 4.0;
    let k = (f.floor() as usize).min(3);
    let t = f - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// How a particle's end is marked, by its status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mark {
    Start,
    Active,
    Exited,
    Settled,
    Stranded,
    Dead,
    Lost,
}

impl Mark {
    fn of(s: i8) -> Option<Mark> {
        match s as u8 {
            status::ACTIVE => Some(Mark::Active),
            status::EXITED => Some(Mark::Exited),
            status::SETTLED => Some(Mark::Settled),
            status::STRANDED => Some(Mark::Stranded),
            status::DEAD => Some(Mark::Dead),
            status::BAD_FIELD | status::OUTSIDE_MESH => Some(Mark::Lost),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mark::Start => "start",
            Mark::Active => "end (adrift)",
            Mark::Exited => "exited (open boundary)",
            Mark::Settled => "settled",
            Mark::Stranded => "stranded (dry)",
            Mark::Dead => "died",
            Mark::Lost => "lost (bad field or off mesh)",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Mark::Start => START,
            Mark::Active => INK,
            Mark::Exited => RGBColor(0, 150, 150),
            Mark::Settled => RGBColor(130, 40, 160),
            Mark::Stranded => RGBColor(170, 100, 20),
            Mark::Dead => RGBColor(210, 30, 30),
            Mark::Lost => RGBColor(120, 120, 120),
        }
    }

    fn draw<DB: DrawingBackend>(
        self,
        area: &DrawingArea<DB, Shift>,
        (x, y): (i32, i32),
        r: i32,
    ) -> Result<()> {
        let c = self.colour();
        let w = (r / 3).max(1) as u32;
        let done = match self {
            Mark::Start => area.draw(&Circle::new((x, y), r, c.stroke_width(w))),
            Mark::Active => area.draw(&Circle::new((x, y), r, c.filled())),
            Mark::Exited => area.draw(&TriangleMarker::new((x, y), r + 1, c.filled())),
            Mark::Settled => area.draw(&Rectangle::new(
                [(x - r, y - r), (x + r, y + r)],
                c.filled(),
            )),
            Mark::Stranded => area.draw(&Rectangle::new(
                [(x - r, y - r), (x + r, y + r)],
                c.stroke_width(w),
            )),
            Mark::Dead | Mark::Lost => area.draw(&Cross::new((x, y), r + 1, c.stroke_width(w + 1))),
        };
        done.map_err(|e| anyhow!("{e}"))
    }
}

/// A trajectory file as a map draws it: positions in map units, (trajectory, time) order.
struct Tracks {
    path: PathBuf,
    n: usize,
    nt: usize,
    /// Unix seconds of each record.
    times: Vec<f64>,
    u: Vec<f64>,
    v: Vec<f64>,
    status: Vec<i8>,
    source: String,
}

impl Tracks {
    fn at(&self, p: usize, t: usize) -> Option<(f64, f64)> {
        let (u, v) = (self.u[p * self.nt + t], self.v[p * self.nt + t]);
        (u.is_finite() && v.is_finite()).then_some((u, v))
    }

    /// The last record with a position, up to `upto`.
    fn last(&self, p: usize, upto: usize) -> Option<usize> {
        (0..=upto).rev().find(|&t| self.at(p, t).is_some())
    }
}

/// Where the map lies: its extent in map units and its rectangle in pixels.
#[derive(Clone, Copy)]
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    geographic: bool,
    /// Metres per map unit along x.
    mx: f64,
    left: i32,
    top: i32,
    w: i32,
    h: i32,
}

impl Frame {
    fn px(&self, (u, v): (f64, f64)) -> (f64, f64) {
        (
            self.left as f64 + (u - self.x0) / (self.x1 - self.x0) * self.w as f64,
            self.top as f64 + (self.y1 - v) / (self.y1 - self.y0) * self.h as f64,
        )
    }

    fn ipx(&self, p: (f64, f64)) -> (i32, i32) {
        let (x, y) = self.px(p);
        (
            x.clamp(-1e6, 1e6).round() as i32,
            y.clamp(-1e6, 1e6).round() as i32,
        )
    }

    fn shows(&self, (u, v): (f64, f64)) -> bool {
        u >= self.x0 && u <= self.x1 && v >= self.y0 && v <= self.y1
    }

    /// The part of segment a-b (pixels) inside the map (Liang-Barsky).
    fn clip(&self, a: (f64, f64), b: (f64, f64)) -> Option<((i32, i32), (i32, i32))> {
        if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
            return None;
        }
        let (xmin, ymin) = (self.left as f64, self.top as f64);
        let (xmax, ymax) = (xmin + self.w as f64, ymin + self.h as f64);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - xmin),
            (dx, xmax - a.0),
            (-dy, a.1 - ymin),
            (dy, ymax - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
            } else {
                let r = q / p;
                if p < 0.0 {
                    t0 = t0.max(r);
                } else {
                    t1 = t1.min(r);
                }
            }
        }
        if t0 > t1 || !t0.is_finite() || !t1.is_finite() {
            return None;
        }
        let at = |t: f64| {
            let px = |v: f64| v.clamp(-1e6, 1e6).round() as i32;
            (px(a.0 + t * dx), px(a.1 + t * dy))
        };
        Some((at(t0), at(t1)))
    }
}

/// What the tracks are coloured by, read from the file.
enum Colours {
    One,
    /// Per position, with the range and the colour bar's title.
    Ramp {
        values: Vec<f64>,
        lo: f64,
        hi: f64,
        title: String,
    },
    /// Per particle: a category and the categories' names.
    Key {
        of: Vec<usize>,
        names: Vec<String>,
        colours: Vec<RGBColor>,
        heading: &'static str,
    },
}

impl Colours {
    fn colour(&self, p: usize, t: usize, nt: usize) -> RGBColor {
        match self {
            Colours::One => TRACK,
            Colours::Ramp { values, lo, hi, .. } => {
                let s = (values[p * nt + t] - lo) / (hi - lo).max(1e-12);
                // Quantized, so that runs of one colour become one path.
                ramp((s * 48.0).round() / 48.0)
            }
            Colours::Key { of, colours, .. } => colours[of[p] % colours.len()],
        }
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
struct MapMesh {
    u: Vec<f64>,
    v: Vec<f64>,
    nv: Vec<[u32; 3]>,
    edges: Vec<(u32, u32, u32)>,
}

/// A point of the mesh's frame (metres) in map units: degrees, longitude in -180..180, where
/// `geo` places the mesh on the Earth; kilometres otherwise.
fn to_map(geo: Option<&crate::input::crs::Geo>, x: f64, y: f64) -> (f64, f64) {
    match geo {
        Some(g) => {
            let (lon, lat) = g.inverse(x, y);
            (wrap_lon(lon), lat)
        }
        None => (x / 1000.0, y / 1000.0),
    }
}

impl MapMesh {
    fn of(mesh: &shoal_common::Mesh, geo: Option<&crate::input::crs::Geo>) -> MapMesh {
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

fn load(output: &Path, opts: &MapOptions) -> Result<(Tracks, MapMesh, bool, netcdf::File)> {
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
        (None, Some(files)) => PathBuf::from(files.split(", ").next().unwrap_or_default()),
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

fn colours(f: &netcdf::File, tr: &Tracks, by: ColourBy) -> Result<Colours> {
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

/// A round step for about `want` ticks over `span`, and the decimals its labels need.
fn tick_step(span: f64, want: f64) -> (f64, usize) {
    let raw = (span / want).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / 10f64.powi(-(decimals as i32)) - (step / 10f64.powi(-(decimals as i32))).round())
        .abs()
        > 1e-6
    {
        decimals += 1;
    }
    (step, decimals)
}

/// Round values from `lo` to `hi` about `want` to the span, and the decimals their labels need;
/// never more than 50, whatever the numbers.
fn ticks(lo: f64, hi: f64, want: f64) -> (Vec<f64>, usize) {
    let (step, d) = tick_step(hi - lo, want);
    let first = (lo / step).ceil();
    let v = (0..50)
        .map(|k| (first + k as f64) * step)
        .take_while(|v| *v <= hi + 1e-9 * step)
        .collect();
    (v, d)
}

fn tick_label(value: f64, decimals: usize, axis: char, geographic: bool) -> String {
    let value = if value.abs() < 1e-9 { 0.0 } else { value };
    if !geographic {
        return format!("{value:.decimals$}");
    }
    let hemisphere = match (axis, value < 0.0) {
        ('x', false) => 'E',
        ('x', true) => 'W',
        (_, false) => 'N',
        (_, true) => 'S',
    };
    format!("{:.decimals$}°{hemisphere}", value.abs())
}

/// `YYYY-MM-DD HH:MM` (seconds shown only when there are some).
fn when(unix: f64) -> String {
    let s = timefmt::format_datetime(unix);
    s.strip_suffix(":00").map_or(s.clone(), str::to_string)
}

/// Hours and minutes after the first record, for labels.
fn after(seconds: f64) -> String {
    let m = (seconds / 60.0).round() as i64;
    match (m / 60, m % 60) {
        (h, 0) => format!("+{h} h"),
        (0, mm) => format!("+{mm} min"),
        (h, mm) => format!("+{h} h {mm:02} min"),
    }
}

/// The record nearest to `--time`.
fn record_at(tr: &Tracks, spec: &str) -> Result<usize> {
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

/// The map's extent: as asked, or where the particles went, padded; never thinner than a
/// twentieth of the mesh.
fn extent(tr: &Tracks, mesh: &MapMesh, asked: Option<[f64; 4]>) -> Result<[f64; 4]> {
    if let Some(e) = asked {
        anyhow::ensure!(
            e.iter().all(|a| a.is_finite()) && e[1] > e[0] && e[3] > e[2],
            "--extent: give west,east,south,north with west < east and south < north"
        );
        return Ok(e);
    }
    let bbox = |u: &[f64], v: &[f64]| {
        u.iter()
            .zip(v)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .fold([f64::MAX, f64::MIN, f64::MAX, f64::MIN], |e, (a, b)| {
                [e[0].min(*a), e[1].max(*a), e[2].min(*b), e[3].max(*b)]
            })
    };
    let m = bbox(&mesh.u, &mesh.v);
    let p = bbox(&tr.u, &tr.v);
    let e = if p[0] <= p[1] { p } else { m };
    let least = ((m[1] - m[0]).max(m[3] - m[2]) / 20.0).max(1e-6);
    let (cx, cy) = ((e[0] + e[1]) / 2.0, (e[2] + e[3]) / 2.0);
    let wx = ((e[1] - e[0]) * 1.16).max(least);
    let wy = ((e[3] - e[2]) * 1.16).max(least);
    Ok([cx - wx / 2.0, cx + wx / 2.0, cy - wy / 2.0, cy + wy / 2.0])
}

/// The picture's layout: the frame, the pen, the picture's size and the panel's left edge.
struct Layout {
    frame: Frame,
    pen: Pen,
    width: u32,
    height: u32,
    panel: i32,
}

fn layout(e: [f64; 4], geographic: bool, size: u32, vector: bool) -> Layout {
    let size = size.clamp(200, MAX_SIZE);
    let pen = Pen {
        scale: ((size as f64 / 500.0).round() as i32).max(1),
        vector,
    };
    let (mx, my) = if geographic {
        let lat = ((e[2] + e[3]) / 2.0).to_radians();
        (111_195.0 * lat.cos().max(0.01), 111_195.0)
    } else {
        (1000.0, 1000.0)
    };
    let (ww, hh) = ((e[1] - e[0]) * mx, (e[3] - e[2]) * my);
    let (w, h) = if ww >= hh {
        (
            size as i32,
            ((size as f64 * hh / ww) as i32).max(size as i32 / 3),
        )
    } else {
        (
            ((size as f64 * ww / hh) as i32).max(size as i32 / 3),
            size as i32,
        )
    };
    let line = pen.height() * 3 / 2;
    let (left, top) = (pen.advance() * 9 + line * 2, line * 3);
    let panel_w = pen.advance() * 30;
    let bottom = line * 3;
    let h_all = (top + h + bottom).max(top + 22 * line);
    let frame = Frame {
        x0: e[0],
        x1: e[1],
        y0: e[2],
        y1: e[3],
        geographic,
        mx,
        left,
        top,
        w,
        h,
    };
    Layout {
        frame,
        pen,
        width: (left + w + pen.advance() * 3 + panel_w) as u32,
        height: h_all as u32,
        panel: left + w + pen.advance() * 3,
    }
}

fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

/// Closed rings of the mesh's boundary, chained from its directed boundary edges; None where
/// they do not chain (then the triangles are filled instead).
fn rings(mesh: &MapMesh) -> Option<Vec<Vec<u32>>> {
    use std::collections::HashMap;
    let mut from: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, (a, _, _)) in mesh.edges.iter().enumerate() {
        from.entry(*a).or_default().push(k);
    }
    let mut used = vec![false; mesh.edges.len()];
    let mut out = Vec::new();
    for k0 in 0..mesh.edges.len() {
        if used[k0] {
            continue;
        }
        let start = mesh.edges[k0].0;
        let mut ring = vec![start];
        let mut k = k0;
        loop {
            used[k] = true;
            let b = mesh.edges[k].1;
            if b == start {
                break;
            }
            ring.push(b);
            k = *from.get(&b)?.iter().find(|j| !used[**j])?;
        }
        out.push(ring);
    }
    Some(out)
}

fn signed_area(mesh: &MapMesh, ring: &[u32]) -> f64 {
    let mut a = 0.0;
    for i in 0..ring.len() {
        let (p, q) = (ring[i] as usize, ring[(i + 1) % ring.len()] as usize);
        a += mesh.u[p] * mesh.v[q] - mesh.u[q] * mesh.v[p];
    }
    a / 2.0
}

/// Land, water, and the mesh where few enough triangles show.
fn draw_mesh<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    mesh: &MapMesh,
) -> Result<()> {
    let (l, t) = (fr.left, fr.top);
    ok(area.draw(&Rectangle::new(
        [(l, t), (l + fr.w, t + fr.h)],
        LAND.filled(),
    )))?;
    let node = |n: u32| fr.ipx((mesh.u[n as usize], mesh.v[n as usize]));
    let in_view = |tri: &[u32; 3]| {
        let (a, b, c) = (tri[0] as usize, tri[1] as usize, tri[2] as usize);
        let (u0, u1) = (
            mesh.u[a].min(mesh.u[b]).min(mesh.u[c]),
            mesh.u[a].max(mesh.u[b]).max(mesh.u[c]),
        );
        let (v0, v1) = (
            mesh.v[a].min(mesh.v[b]).min(mesh.v[c]),
            mesh.v[a].max(mesh.v[b]).max(mesh.v[c]),
        );
        u1 >= fr.x0 && u0 <= fr.x1 && v1 >= fr.y0 && v0 <= fr.y1
    };
    let visible: Vec<&[u32; 3]> = mesh.nv.iter().filter(|tri| in_view(tri)).collect();
    // The sense in which elements run; rings that run the same way enclose water.
    let sense = mesh
        .nv
        .first()
        .map_or(1.0, |tri| signed_area(mesh, tri).signum());
    match rings(mesh) {
        Some(mut rs) => {
            rs.sort_by(|a, b| {
                signed_area(mesh, b)
                    .abs()
                    .total_cmp(&signed_area(mesh, a).abs())
            });
            for r in &rs {
                let water = signed_area(mesh, r).signum() == sense;
                let pts: Vec<(i32, i32)> = r.iter().map(|n| node(*n)).collect();
                ok(area.draw(&Polygon::new(
                    pts,
                    if water { WATER } else { LAND }.filled(),
                )))?;
            }
        }
        None => {
            for tri in &visible {
                let pts: Vec<(i32, i32)> = tri.iter().map(|n| node(*n)).collect();
                ok(area.draw(&Polygon::new(pts, WATER.filled())))?;
            }
        }
    }
    if visible.len() <= 20_000 {
        let grey = RGBColor(215, 220, 226);
        for tri in &visible {
            let mut pts: Vec<(i32, i32)> = tri.iter().map(|n| node(*n)).collect();
            pts.push(pts[0]);
            ok(area.draw(&PathElement::new(pts, grey.stroke_width(1))))?;
        }
    }
    Ok(())
}

/// The mesh's boundary: land edges dark, open edges blue and thick; drawn over the tracks, so
/// that where particles left stays visible.
fn draw_edges<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    mesh: &MapMesh,
    pen: &Pen,
) -> Result<()> {
    let w = pen.scale.max(1) as u32;
    for (a, b, kind) in &mesh.edges {
        let (p, q) = (
            fr.px((mesh.u[*a as usize], mesh.v[*a as usize])),
            fr.px((mesh.u[*b as usize], mesh.v[*b as usize])),
        );
        let Some((p, q)) = fr.clip(p, q) else {
            continue;
        };
        let style = if *kind == shoal_common::mesh::OPEN {
            OPEN.stroke_width(2 * w + 1)
        } else {
            COAST.stroke_width(w)
        };
        ok(area.draw(&PathElement::new(vec![p, q], style)))?;
    }
    Ok(())
}

/// Which particles are drawn: all, or an even selection of at most `most`.
fn chosen(n: usize, most: usize) -> impl Iterator<Item = usize> {
    (0..n).step_by(n.div_ceil(most).max(1))
}

/// Tracks up to record `upto`, clipped to the map, each run of one colour one path.
#[allow(clippy::too_many_arguments)]
fn draw_tracks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    tr: &Tracks,
    colours: &Colours,
    upto: usize,
    most: usize,
    alpha: f64,
    width: u32,
) -> Result<()> {
    for p in chosen(tr.n, most) {
        let mut run: Vec<(i32, i32)> = Vec::new();
        let mut run_colour = TRACK;
        let mut prev: Option<(f64, f64)> = None;
        let flush = |run: &mut Vec<(i32, i32)>, c: RGBColor| -> Result<()> {
            if run.len() > 1 {
                ok(area.draw(&PathElement::new(
                    std::mem::take(run),
                    c.mix(alpha).stroke_width(width),
                )))?;
            }
            run.clear();
            Ok(())
        };
        for t in 0..=upto.min(tr.nt - 1) {
            let Some(here) = tr.at(p, t) else {
                flush(&mut run, run_colour)?;
                prev = None;
                continue;
            };
            let here = fr.px(here);
            if let Some(before) = prev {
                let c = colours.colour(p, t.saturating_sub(1), tr.nt);
                match fr.clip(before, here) {
                    Some((a, b)) => {
                        if c != run_colour || run.last() != Some(&a) {
                            flush(&mut run, run_colour)?;
                            run_colour = c;
                            run.push(a);
                        }
                        run.push(b);
                    }
                    None => flush(&mut run, run_colour)?,
                }
            }
            prev = Some(here);
        }
        flush(&mut run, run_colour)?;
    }
    Ok(())
}

/// Start and end markers (ends by status), or positions at record `at` (coloured dots, with
/// the statuses' markers for particles no longer adrift).
fn draw_marks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    tr: &Tracks,
    colours: &Colours,
    at: Option<usize>,
    most: usize,
    r: i32,
) -> Result<()> {
    let upto = at.unwrap_or(tr.nt - 1);
    for p in chosen(tr.n, most) {
        if at.is_none() {
            if let Some(t0) = (0..tr.nt).find(|&t| tr.at(p, t).is_some()) {
                let here = tr.at(p, t0).expect("found");
                if fr.shows(here) {
                    Mark::Start.draw(area, fr.ipx(here), r)?;
                }
            }
        }
        let Some(t1) = tr.last(p, upto) else { continue };
        let here = tr.at(p, t1).expect("found");
        if !fr.shows(here) {
            continue;
        }
        let mark = Mark::of(tr.status[p * tr.nt + t1]).unwrap_or(Mark::Active);
        if at.is_some() && mark == Mark::Active {
            let c = colours.colour(p, t1, tr.nt);
            ok(area.draw(&Circle::new(fr.ipx(here), r, c.filled())))?;
        } else {
            mark.draw(area, fr.ipx(here), r)?;
        }
    }
    Ok(())
}

/// The statuses that occur at the ends (or at record `at`), in a fixed order.
fn marks_present(tr: &Tracks, at: Option<usize>) -> Vec<Mark> {
    let upto = at.unwrap_or(tr.nt - 1);
    let mut seen = [false; 7];
    for p in 0..tr.n {
        if let Some(t) = tr.last(p, upto) {
            if let Some(m) = Mark::of(tr.status[p * tr.nt + t]) {
                seen[m as usize] = true;
            }
        }
    }
    let all = [
        Mark::Start,
        Mark::Active,
        Mark::Exited,
        Mark::Settled,
        Mark::Stranded,
        Mark::Dead,
        Mark::Lost,
    ];
    all.into_iter()
        .filter(|m| match m {
            Mark::Start => at.is_none(),
            Mark::Active => at.is_none() && seen[*m as usize],
            _ => seen[*m as usize],
        })
        .collect()
}

/// Margins, frame, ticks, axis names, title, scale bar, legend and colour bar.
#[allow(clippy::too_many_arguments)]
fn draw_decor<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lay: &Layout,
    title: &str,
    subtitle: &str,
    marks: &[Mark],
    colours: &Colours,
) -> Result<()> {
    let (fr, pen) = (&lay.frame, &lay.pen);
    let (w, h) = (lay.width as i32, lay.height as i32);
    let (l, t, r, b) = (fr.left, fr.top, fr.left + fr.w, fr.top + fr.h);
    // Whatever of the map spilled past its frame is painted over.
    for rect in [
        [(0, 0), (w, t)],
        [(0, b), (w, h)],
        [(0, 0), (l, h)],
        [(r, 0), (w, h)],
    ] {
        ok(area.draw(&Rectangle::new(rect, WHITE.filled())))?;
    }
    ok(area.draw(&Rectangle::new([(l, t), (r, b)], INK.stroke_width(1))))?;
    let line = pen.height() * 3 / 2;
    pen.write(area, title, (l, line / 2), Align::Left, false, &INK)?;
    pen.write(
        area,
        subtitle,
        (l, line / 2 + line),
        Align::Left,
        false,
        &RGBColor(80, 80, 80),
    )?;
    // Ticks.
    let tick = pen.scale * 4;
    let (xs, dx) = ticks(fr.x0, fr.x1, 5.0);
    for u in xs {
        let (x, _) = fr.ipx((u, fr.y0));
        ok(area.draw(&PathElement::new(
            vec![(x, b), (x, b + tick)],
            INK.stroke_width(1),
        )))?;
        pen.write(
            area,
            &tick_label(u, dx, 'x', fr.geographic),
            (x, b + tick + 2),
            Align::Centre,
            false,
            &INK,
        )?;
    }
    let (ys, dy) = ticks(fr.y0, fr.y1, 5.0);
    for v in ys {
        let (_, y) = fr.ipx((fr.x0, v));
        ok(area.draw(&PathElement::new(
            vec![(l - tick, y), (l, y)],
            INK.stroke_width(1),
        )))?;
        pen.write(
            area,
            &tick_label(v, dy, 'y', fr.geographic),
            (l - tick - 3, y - pen.height() / 2),
            Align::Right,
            false,
            &INK,
        )?;
    }
    let (xname, yname) = if fr.geographic {
        ("Longitude", "Latitude")
    } else {
        ("x (km)", "y (km)")
    };
    pen.write(
        area,
        xname,
        ((l + r) / 2, b + tick + line + 2),
        Align::Centre,
        false,
        &INK,
    )?;
    pen.write(
        area,
        yname,
        (pen.scale * 2, (t + b) / 2),
        Align::Centre,
        true,
        &INK,
    )?;
    // A scale bar, bottom left inside the map: a round length near a fifth of its width.
    let width_m = (fr.x1 - fr.x0) * fr.mx;
    let (step, _) = tick_step(width_m / 5.0, 1.0);
    let step = if step > width_m / 4.0 {
        step / 2.0
    } else {
        step
    };
    let bar = (step / fr.mx / (fr.x1 - fr.x0) * fr.w as f64).round() as i32;
    let text = if step >= 1000.0 {
        format!("{} km", step / 1000.0)
    } else {
        format!("{step} m")
    };
    let (bx, by) = (l + line, b - line * 2);
    ok(area.draw(&Rectangle::new(
        [
            (bx - 4, by - 4),
            (bx + bar.max(pen.width(&text)) + 4, b - line / 2 + 2),
        ],
        WHITE.mix(0.8).filled(),
    )))?;
    ok(area.draw(&Rectangle::new(
        [(bx, by), (bx + bar, by + pen.scale * 3)],
        INK.filled(),
    )))?;
    pen.write(
        area,
        &text,
        (bx, by + pen.scale * 3 + 3),
        Align::Left,
        false,
        &INK,
    )?;
    // The panel: markers, boundaries, then what the tracks are coloured by.
    let px = lay.panel;
    let mut y = t;
    let r = pen.scale * 2 + 1;
    for m in marks {
        m.draw(area, (px + r, y + pen.height() / 2), r)?;
        pen.write(
            area,
            m.label(),
            (px + 3 * r + 4, y),
            Align::Left,
            false,
            &INK,
        )?;
        y += line;
    }
    for (c, wdt, name) in [(COAST, 1, "land boundary"), (OPEN, 3, "open boundary")] {
        let mid = y + pen.height() / 2;
        ok(area.draw(&PathElement::new(
            vec![(px, mid), (px + 2 * r + 2, mid)],
            c.stroke_width(wdt * pen.scale as u32),
        )))?;
        pen.write(area, name, (px + 3 * r + 4, y), Align::Left, false, &INK)?;
        y += line;
    }
    y += line;
    match colours {
        Colours::One => {}
        Colours::Key {
            of,
            names,
            colours,
            heading,
        } => {
            pen.write(area, heading, (px, y), Align::Left, false, &INK)?;
            y += line;
            let mut used = vec![false; names.len()];
            for k in of {
                if let Some(u) = used.get_mut(*k) {
                    *u = true;
                }
            }
            let shown: Vec<usize> = (0..names.len()).filter(|k| used[*k]).collect();
            let room = ((lay.height as i32 - y - line) / line).max(1) as usize;
            for (i, k) in shown.iter().enumerate() {
                if i + 1 == room && shown.len() > room {
                    pen.write(
                        area,
                        &format!("and {} more", shown.len() - i),
                        (px, y),
                        Align::Left,
                        false,
                        &INK,
                    )?;
                    break;
                }
                let c = colours[k % colours.len()];
                ok(area.draw(&Rectangle::new(
                    [(px, y), (px + 2 * r, y + pen.height())],
                    c.filled(),
                )))?;
                pen.write(
                    area,
                    &names[*k],
                    (px + 3 * r + 4, y),
                    Align::Left,
                    false,
                    &INK,
                )?;
                y += line;
            }
        }
        Colours::Ramp { lo, hi, title, .. } => {
            pen.write(area, title, (px, y), Align::Left, false, &INK)?;
            y += line;
            let bar_h = (lay.height as i32 - y - line * 2)
                .min(fr.h / 2)
                .max(line * 4);
            let bw = pen.advance() * 2;
            for k in 0..bar_h {
                let s = 1.0 - k as f64 / (bar_h - 1).max(1) as f64;
                ok(area.draw(&Rectangle::new(
                    [(px, y + k), (px + bw, y + k + 1)],
                    ramp(s).filled(),
                )))?;
            }
            ok(area.draw(&Rectangle::new(
                [(px, y), (px + bw, y + bar_h)],
                INK.stroke_width(1),
            )))?;
            let (vs, d) = ticks(*lo, *hi, 4.0);
            for v in vs {
                let yy = y + ((hi - v) / (hi - lo) * (bar_h - 1) as f64).round() as i32;
                ok(area.draw(&PathElement::new(
                    vec![(px + bw, yy), (px + bw + 4, yy)],
                    INK.stroke_width(1),
                )))?;
                pen.write(
                    area,
                    &tick_label(v, d, 'v', false),
                    (px + bw + 7, yy - pen.height() / 2),
                    Align::Left,
                    false,
                    &INK,
                )?;
            }
        }
    }
    Ok(())
}

fn default_colour_by(f: &netcdf::File) -> ColourBy {
    match f.dimension_len("origin") {
        Some(k) if k > 1 && f.variable("origin").is_some() => ColourBy::Origin,
        _ if f.variable("age").is_some() => ColourBy::Age,
        _ => ColourBy::None,
    }
}

fn titles(tr: &Tracks, at: Option<usize>) -> (String, String) {
    let (first, last) = (tr.times[0], tr.times[tr.nt - 1]);
    let title = format!("{} · {} particles", tr.source, tr.n);
    let subtitle = match at {
        Some(k) => format!(
            "at {} UTC ({} of {} to {})",
            when(tr.times[k]),
            after(tr.times[k] - first),
            when(first),
            when(last)
        ),
        None => format!("{} to {} UTC · {} records", when(first), when(last), tr.nt),
    };
    (title, subtitle)
}

/// What one still picture shows.
struct Picture<'a> {
    lay: &'a Layout,
    tr: &'a Tracks,
    mesh: &'a MapMesh,
    colours: &'a Colours,
    at: Option<usize>,
    title: &'a str,
    subtitle: &'a str,
    marks: &'a [Mark],
}

impl Picture<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, vector: bool) -> Result<()> {
        let (lay, tr, colours) = (self.lay, self.tr, self.colours);
        ok(area.fill(&WHITE))?;
        draw_mesh(area, &lay.frame, self.mesh)?;
        // SVG files stay small enough to open: fewer tracks than a bitmap takes.
        let most = if vector { 600 } else { 2000 };
        let w = (lay.pen.scale as u32).max(1);
        // Markers shrink where there are many.
        let r = if tr.n > 300 {
            lay.pen.scale
        } else {
            lay.pen.scale + 1
        };
        match self.at {
            None => {
                draw_tracks(area, &lay.frame, tr, colours, tr.nt - 1, most, 0.85, w)?;
                draw_edges(area, &lay.frame, self.mesh, &lay.pen)?;
                draw_marks(area, &lay.frame, tr, colours, None, most, r)?;
            }
            Some(k) => {
                draw_tracks(area, &lay.frame, tr, &Colours::One, k, most, 0.15, w)?;
                draw_edges(area, &lay.frame, self.mesh, &lay.pen)?;
                draw_marks(area, &lay.frame, tr, colours, Some(k), 20 * most, r)?;
            }
        }
        draw_decor(area, lay, self.title, self.subtitle, self.marks, colours)
    }
}

/// `shoal plot` of a trajectory file: PNG, or SVG where the name ends in `.svg`.
pub fn plot(output: &Path, image: &Path, opts: &MapOptions) -> Result<()> {
    let (tr, mesh, geographic, f) = load(output, opts)?;
    let by = opts.colour_by.unwrap_or_else(|| default_colour_by(&f));
    let colours = colours(&f, &tr, by)?;
    let at = opts
        .time
        .as_deref()
        .map(|s| record_at(&tr, s))
        .transpose()?;
    let vector = is_svg(image);
    let lay = layout(
        extent(&tr, &mesh, opts.extent)?,
        geographic,
        opts.size,
        vector,
    );
    let (title, subtitle) = titles(&tr, at);
    let marks = marks_present(&tr, at);
    let parts = Picture {
        lay: &lay,
        tr: &tr,
        mesh: &mesh,
        colours: &colours,
        at,
        title: &title,
        subtitle: &subtitle,
        marks: &marks,
    };
    if vector {
        let area = SVGBackend::new(image, (lay.width, lay.height)).into_drawing_area();
        parts.draw(&area, vector)?;
        area.present()
            .with_context(|| format!("writing {}", image.display()))?;
    } else {
        let area = BitMapBackend::new(image, (lay.width, lay.height)).into_drawing_area();
        parts.draw(&area, vector)?;
        area.present()
            .with_context(|| format!("writing {}", image.display()))?;
    }
    Ok(())
}

pub fn is_svg(image: &Path) -> bool {
    image
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
}

/// `shoal animate`: the run as a GIF, a frame per record (at most `frames`), positions as dots
/// over faint tracks, with the time in the corner.
pub fn animate(
    output: &Path,
    gif_path: &Path,
    opts: &MapOptions,
    frames: usize,
    fps: f64,
) -> Result<usize> {
    anyhow::ensure!(
        gif_path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gif")),
        "{}: animations are written as GIF; name the file *.gif",
        gif_path.display()
    );
    anyhow::ensure!(fps > 0.0 && fps <= 100.0, "--fps must be in (0, 100]");
    let (tr, mesh, geographic, f) = load(output, opts)?;
    let by = opts.colour_by.unwrap_or_else(|| default_colour_by(&f));
    let colours = colours(&f, &tr, by)?;
    let lay = layout(
        extent(&tr, &mesh, opts.extent)?,
        geographic,
        opts.size,
        false,
    );
    anyhow::ensure!(
        lay.width <= u16::MAX as u32 && lay.height <= u16::MAX as u32,
        "--size {} is too large for a GIF",
        opts.size
    );
    let (title, _) = titles(&tr, None);
    let subtitle = format!("{} to {} UTC", when(tr.times[0]), when(tr.times[tr.nt - 1]));
    let (w, h) = (lay.width, lay.height);
    let mut base = vec![0u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut base, (w, h)).into_drawing_area();
        ok(area.fill(&WHITE))?;
        draw_mesh(&area, &lay.frame, &mesh)?;
        draw_decor(
            &area,
            &lay,
            &title,
            &subtitle,
            &marks_present(&tr, Some(tr.nt - 1)),
            &colours,
        )?;
        ok(area.present())?;
    }
    let file = std::fs::File::create(gif_path)
        .with_context(|| format!("creating {}", gif_path.display()))?;
    let mut enc = gif::Encoder::new(std::io::BufWriter::new(file), w as u16, h as u16, &[])
        .with_context(|| format!("writing {}", gif_path.display()))?;
    enc.set_repeat(gif::Repeat::Infinite)
        .with_context(|| format!("writing {}", gif_path.display()))?;
    let stride = tr.nt.div_ceil(frames.max(1)).max(1);
    let records: Vec<usize> = (0..tr.nt)
        .step_by(stride)
        .chain(((tr.nt - 1) % stride != 0).then_some(tr.nt - 1))
        .collect();
    let delay = (100.0 / fps).round().max(1.0) as u16;
    for &k in &records {
        let mut buf = base.clone();
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let fr = &lay.frame;
            draw_tracks(&area, fr, &tr, &Colours::One, k, 2000, 0.12, 1)?;
            draw_edges(&area, fr, &mesh, &lay.pen)?;
            draw_marks(&area, fr, &tr, &colours, Some(k), 20_000, lay.pen.scale + 1)?;
            let label = format!(
                "{} UTC  {}",
                when(tr.times[k]),
                after(tr.times[k] - tr.times[0])
            );
            let pad = lay.pen.scale * 3;
            let (x, y) = (fr.left + pad, fr.top + pad);
            ok(area.draw(&Rectangle::new(
                [
                    (x - pad / 2, y - pad / 2),
                    (
                        x + lay.pen.width(&label) + pad / 2,
                        y + lay.pen.height() + pad / 2,
                    ),
                ],
                WHITE.mix(0.85).filled(),
            )))?;
            lay.pen
                .write(&area, &label, (x, y), Align::Left, false, &INK)?;
            ok(area.present())?;
        }
        let mut frame = gif::Frame::from_rgb_speed(w as u16, h as u16, &buf, 20);
        frame.delay = delay;
        enc.write_frame(&frame)
            .with_context(|| format!("writing {}", gif_path.display()))?;
    }
    Ok(records.len())
}

/// Draws the particles of a run's snapshots over its whole mesh, for the status page: the
/// mesh is laid out and drawn once, each picture only adds the dots.
pub struct SnapshotPainter {
    lay: Layout,
    base: Vec<u8>,
    geo: Option<crate::input::crs::Geo>,
}

impl SnapshotPainter {
    pub fn new(
        mesh: &shoal_common::Mesh,
        geo: Option<crate::input::crs::Geo>,
        size: u32,
    ) -> Result<Self> {
        let map = MapMesh::of(mesh, geo.as_ref());
        let e = {
            let b = map
                .u
                .iter()
                .zip(&map.v)
                .fold([f64::MAX, f64::MIN, f64::MAX, f64::MIN], |e, (a, b)| {
                    [e[0].min(*a), e[1].max(*a), e[2].min(*b), e[3].max(*b)]
                });
            let pad = 0.03 * (b[1] - b[0]).max(b[3] - b[2]).max(1e-9);
            [b[0] - pad, b[1] + pad, b[2] - pad, b[3] + pad]
        };
        let mut lay = layout(e, geo.is_some(), size, false);
        // No panel: the page says what the dots are.
        lay.width = (lay.panel - lay.pen.advance() * 2) as u32;
        let mut base = vec![0u8; lay.width as usize * lay.height as usize * 3];
        {
            let area =
                BitMapBackend::with_buffer(&mut base, (lay.width, lay.height)).into_drawing_area();
            ok(area.fill(&WHITE))?;
            draw_mesh(&area, &lay.frame, &map)?;
            draw_edges(&area, &lay.frame, &map, &lay.pen)?;
            draw_decor(&area, &lay, "", "", &[], &Colours::One)?;
            ok(area.present())?;
        }
        Ok(SnapshotPainter { lay, base, geo })
    }

    /// A PNG of the particles at (x, y) (metres in the mesh's frame), drifting ones as dots
    /// and the others by their statuses' markers.
    pub fn paint(&self, x: &[f64], y: &[f64], status: &[u8]) -> Result<Vec<u8>> {
        let (w, h) = (self.lay.width, self.lay.height);
        let mut buf = self.base.clone();
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let fr = &self.lay.frame;
            let n = x.len().min(y.len()).min(status.len());
            for p in chosen(n, 20_000) {
                let (a, b) = (x[p], y[p]);
                if !(a.is_finite() && b.is_finite()) || status[p] == status::PENDING {
                    continue;
                }
                let at = to_map(self.geo.as_ref(), a, b);
                if !fr.shows(at) {
                    continue;
                }
                match Mark::of(status[p] as i8) {
                    Some(Mark::Active) | None => {
                        ok(area.draw(&Circle::new(fr.ipx(at), 2, TRACK.filled())))?
                    }
                    Some(m) => m.draw(&area, fr.ipx(at), 2)?,
                }
            }
            ok(area.present())?;
        }
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&buf, w, h, image::ColorType::Rgb8)
            .map_err(|e| anyhow!("encoding the snapshot: {e}"))?;
        Ok(png)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_numbers() {
        assert_eq!(tick_step(10.0, 5.0), (2.0, 0));
        assert_eq!(tick_step(0.3, 5.0), (0.1, 1));
        assert_eq!(tick_step(1.2, 5.0), (0.25, 2));
        assert_eq!(tick_label(-122.5, 1, 'x', true), "122.5°W");
        assert_eq!(tick_label(37.75, 2, 'y', true), "37.75°N");
        assert_eq!(tick_label(-0.0, 0, 'x', false), "0");
    }

    #[test]
    fn segments_are_clipped_to_the_frame() {
        let fr = Frame {
            x0: 0.0,
            x1: 1.0,
            y0: 0.0,
            y1: 1.0,
            geographic: false,
            mx: 1000.0,
            left: 10,
            top: 10,
            w: 100,
            h: 100,
        };
        assert_eq!(
            fr.clip((0.0, 60.0), (200.0, 60.0)),
            Some(((10, 60), (110, 60)))
        );
        assert_eq!(fr.clip((0.0, 0.0), (5.0, 200.0)), None);
        assert_eq!(
            fr.clip((20.0, 20.0), (30.0, 40.0)),
            Some(((20, 20), (30, 40)))
        );
    }

    #[test]
    fn the_ramp_runs_dark_to_light() {
        let lum = |c: RGBColor| 0.3 * c.0 as f64 + 0.59 * c.1 as f64 + 0.11 * c.2 as f64;
        let mut last = -1.0;
        for k in 0..=20 {
            let l = lum(ramp(k as f64 / 20.0));
            assert!(l > last);
            last = l;
        }
    }
}
