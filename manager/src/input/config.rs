//! The run configuration, in two stages (as ripgrep does): [`RunFile`] is exactly what the user
//! wrote, parsed strictly (an unknown key is an error that names it); [`RunConfig`] is the
//! resolved form with paths made absolute and durations in seconds.

use crate::input::timefmt::{parse_datetime, parse_duration};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use shoal_common::behaviour::Behaviour;
use shoal_common::kernel::{Happiness, Integrator, VerticalMixing};
use shoal_common::snapshot::Sampled;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunFile {
    pub seed: Option<u64>,
    pub input: InputSection,
    #[serde(default)]
    pub release: ReleaseSection,
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub diffusion: DiffusionSection,
    #[serde(default)]
    pub behaviour: BehaviourSection,
    #[serde(default)]
    pub settlement: Option<SettlementSection>,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub cluster: ClusterSection,
}

/// `[settlement]`: where and when competent larvae settle.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SettlementSection {
    /// GeoJSON FeatureCollection of named settlement polygons (reefs).
    pub polygons: Option<String>,
    /// [minimum age, maximum age], durations such as "5d".
    pub competency: Option<[toml::Value; 2]>,
    /// Chance of settling within an hour while competent inside a polygon (default: at once).
    pub probability_per_hour: Option<f64>,
    /// An unsettled particle dies past the maximum age.
    #[serde(default)]
    pub die_after_competency: bool,
}

/// `[behaviour.migration]`, or a stage's `migration` table.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct MigrationSection {
    /// Metres below the surface (positive), or a [shallow, deep] range.
    pub day_depth: Option<toml::Value>,
    pub night_depth: Option<toml::Value>,
    /// m/s.
    pub swim_speed: Option<f64>,
    /// Where the sun is seen from, for Cartesian meshes.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// `[[behaviour.stage]]`: from `age` on, these values replace the ones before.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    pub age: Option<toml::Value>,
    pub sinking_speed: Option<f64>,
    pub mortality_per_day: Option<f64>,
    /// A migration table, or `false` to stop migrating.
    pub migration: Option<toml::Value>,
}

/// Where the run's node agents come from.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// In-process node agents for the embedded default (0 or absent: one per core); with a
    /// named cluster, the nodes to wait for (absent: whoever joined by the end of the wait).
    pub nodes: Option<usize>,
    /// A cluster of running `shoal-node --cluster NAME` agents; absent: the embedded default.
    pub name: Option<String>,
    /// How long to wait for nodes before giving up, seconds (default 30).
    pub wait_seconds: Option<f64>,
    /// Halo rings around each partition (default from max speed x dt / smallest edge).
    pub halo_rings: Option<usize>,
    /// Mesh partitions (default one per node; a node may own several).
    pub partitions: Option<usize>,
    /// A zenoh JSON5 configuration file (endpoints, routers, scouting).
    pub zenoh_config: Option<String>,
    /// How long the manager waits for any partition's step summary or state before it gives up
    /// that partition's node and carries on without it, seconds (default 300).
    pub patience_seconds: Option<f64>,
    /// Velocity bytes in one piece of a field slice, KiB (default 1024 for the nodes of a named
    /// cluster, 4096 for in-process nodes): what a node holds in flight while a field level
    /// arrives.
    pub field_piece_kib: Option<usize>,
    /// Steps a partition may take past the last one the manager has heard of (default 64: a
    /// state's transfer over a slow link hides behind them; 1 steps in lock with the manager).
    /// A grant never spans more than two state steps, so states in flight stay bounded. A run
    /// with a happiness stop always steps in lock.
    pub ahead_steps: Option<u32>,
    /// Re-partition by where the particles are at an output time or checkpoint when, since the
    /// last one, the busiest node stepped more than this share above the nodes' mean (default
    /// 0.2 for a named cluster's nodes; in-process nodes share one pool and re-partition only
    /// when this is given; 0: at every one, for tests).
    pub rebalance_share: Option<f64>,
    /// Steps the load is measured over before it may be cut again (default 100).
    pub rebalance_steps: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub files: Vec<String>,
    /// FVCOM's `casename_obc.dat`.
    pub open_boundary_file: Option<String>,
    /// Open-boundary node numbers, 1-based as FVCOM writes them.
    pub open_boundary_nodes: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    /// CSV with a header `x,y,z` or `lon,lat,z`, optional `release_time`.
    pub file: Option<String>,
    pub generate: Option<GenerateSection>,
    /// GeoJSON FeatureCollection of named Polygon or MultiPolygon sites.
    pub polygons: Option<String>,
    /// Particles per site and release.
    pub per_polygon: Option<usize>,
    /// Release depth, metres relative to the surface (0 surface, negative down) ...
    pub z: Option<f64>,
    /// ... or drawn uniformly between these two depths.
    pub z_range: Option<[f64; 2]>,
    /// Release again every this long (with `until`) ...
    pub every: Option<toml::Value>,
    pub until: Option<toml::Value>,
    /// ... or at these times (datetimes, or seconds after the start).
    pub times: Option<Vec<toml::Value>>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct GenerateSection {
    pub count: usize,
    /// Disc centre, in the mesh's frame (x, y metres) or lon/lat for geographic meshes;
    /// absent: anywhere in the mesh, uniformly by area.
    pub centre: Option<[f64; 2]>,
    /// Disc radius in metres.
    pub radius: Option<f64>,
    /// Release depth, metres relative to the surface (0 surface, negative down).
    #[serde(default)]
    pub z: f64,
    /// Release time; default the run's start.
    pub time: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub start: Option<String>,
    pub duration: Option<toml::Value>,
    pub dt: Option<toml::Value>,
    pub integrator: Option<Integrator>,
    /// Worker threads; 0 or absent: one per core.
    pub threads: Option<usize>,
    /// Re-sort particles by host element every this many steps.
    pub sort_every: Option<u32>,
    /// "auto", "cpu" or "gpu".
    pub device: Option<String>,
    /// "forward" (default) or "backward": where did these particles come from?
    pub direction: Option<String>,
    /// A checkpoint every this many steps besides the one at every output time (0 or absent:
    /// only at output times).
    pub checkpoint_every: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiffusionSection {
    pub horizontal_kh: Option<f64>,
    /// "none", "constant" or "file".
    pub vertical: Option<String>,
    pub vertical_kh: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BehaviourSection {
    /// m/s, positive sinks, negative rises.
    pub sinking_speed: Option<f64>,
    pub preferred_temperature: Option<f64>,
    pub temperature_tolerance: Option<f64>,
    pub happy_threshold: Option<f64>,
    /// Stop when at least this share (0..1] of active particles is happy.
    pub stop_when_happy_share: Option<f64>,
    /// Deaths per day (a particle survives t days with probability exp(-m t)).
    pub mortality_per_day: Option<f64>,
    /// Lethal outside [low, high] °C (needs `temp` in the files).
    pub temperature_range: Option<[f64; 2]>,
    /// Lethal outside [low, high] (needs `salinity` in the files).
    pub salinity_range: Option<[f64; 2]>,
    pub migration: Option<MigrationSection>,
    #[serde(default)]
    pub stage: Vec<StageSection>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub file: Option<String>,
    pub interval: Option<toml::Value>,
    /// `density = { file = "density.nc", cell = 250.0 }`: particle counts on a grid.
    pub density: Option<DensitySection>,
    /// Connectivity matrix (NetCDF, with a CSV beside it) from release sites to settlement
    /// polygons.
    pub connectivity: Option<String>,
    /// Deflate level of the trajectory file, with the shuffle filter: 0 (none) to 9.
    pub compression: Option<i64>,
    /// `precision = "1cm"`: positions and depths stored as integers to this precision (CF
    /// packing) instead of full floats.
    pub precision: Option<toml::Value>,
    /// `variables = ["temperature", "salinity"]`: the water's values sampled where each
    /// particle is, recorded along its track.
    pub variables: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DensitySection {
    pub file: Option<String>,
    /// Cell size in metres (the mesh's x/y) ...
    pub cell: Option<f64>,
    /// ... or in degrees of lon/lat (geographic meshes).
    pub cell_degrees: Option<f64>,
    /// A map per release site.
    #[serde(default)]
    pub per_origin: bool,
}

/// `[release] polygons`: particles drawn in named sites, once or repeatedly.
#[derive(Debug, Clone)]
pub struct PolygonRelease {
    pub file: PathBuf,
    pub per_polygon: usize,
    /// Fixed depth, or a range drawn per particle.
    pub z: (f64, f64),
    /// Seconds between releases, and the last release time (as written).
    pub every: Option<(f64, String)>,
    /// Release times as written; empty: once, at the start.
    pub times: Vec<String>,
}

/// The resolved configuration the driver runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub files: Vec<PathBuf>,
    pub open_boundary_nodes: Vec<u32>,
    pub release_file: Option<PathBuf>,
    pub generate: Option<GenerateSection>,
    pub polygons: Option<PolygonRelease>,
    /// Unix seconds; `None` means the first time in the files.
    pub start: Option<f64>,
    /// Seconds; `None` means to the end of the files.
    pub duration: Option<f64>,
    pub dt: f64,
    pub integrator: Integrator,
    pub threads: usize,
    pub sort_every: u32,
    /// 0: checkpoints at output times only.
    pub checkpoint_every: u32,
    pub device: shoal_node::Device,
    pub horizontal_kh: f64,
    pub vertical_mixing: VerticalMixing,
    pub sinking_speed: f64,
    pub happiness: Option<Happiness>,
    pub stop_when_happy_share: Option<f64>,
    pub output: PathBuf,
    pub output_interval: f64,
    /// How the trajectory file stores its values.
    pub storage: Storage,
    /// Field values sampled along each track (`[output] variables`).
    pub sampled: Sampled,
    pub density: Option<DensitySpec>,
    pub connectivity: Option<PathBuf>,
    /// Larval behaviour beyond a constant sinking speed.
    /// Larval behaviour as configured, in SI units (seconds, metres, per second), without the
    /// settlement areas and clock origin the input gives.
    pub larvae: Option<Behaviour>,
    pub settlement: Option<SettlementConfig>,
    /// Integrate back in time from `start`.
    pub backward: bool,
    pub seed: u64,
    pub cluster: ClusterConfig,
    /// The configuration text, recorded in the output's global attributes.
    pub source_text: String,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// 0: one per core (embedded) or whoever joins (named cluster).
    pub nodes: usize,
    pub name: Option<String>,
    pub wait_seconds: f64,
    pub halo_rings: Option<usize>,
    pub partitions: Option<usize>,
    pub zenoh_config: Option<PathBuf>,
    pub patience_seconds: f64,
    /// Bytes of velocities per field slice piece (`None`: the default for the kind of nodes,
    /// [`shoal_common::wire::FIELD_PIECE_BYTES`] and its in-process variant).
    pub field_piece_bytes: Option<usize>,
    /// Steps a partition may run past the manager's knowledge (at least 1).
    pub ahead_steps: u32,
    /// `None`: the default for the kind of nodes.
    pub rebalance_share: Option<f64>,
    pub rebalance_steps: u32,
}

fn density_spec(d: &DensitySection, resolve: Resolve) -> Result<DensitySpec> {
    let file = d
        .file
        .as_deref()
        .ok_or_else(|| anyhow!("key `output.density.file`: needed (e.g. \"density.nc\")"))?;
    let (cell, degrees, key) = match (d.cell, d.cell_degrees) {
        (Some(c), None) => (c, false, "cell"),
        (None, Some(c)) => (c, true, "cell_degrees"),
        (Some(_), Some(_)) => bail!("key `output.density.cell_degrees`: give `cell` (metres) or `cell_degrees`, not both"),
        (None, None) => bail!("key `output.density.cell`: needed, in metres (or `cell_degrees` for a geographic mesh)"),
    };
    if !(cell > 0.0 && cell.is_finite()) {
        bail!("key `output.density.{key}`: must be a positive size");
    }
    Ok(DensitySpec {
        file: resolve(file, PathKind::Output),
        cell,
        degrees,
        per_origin: d.per_origin,
    })
}

/// How the trajectory file stores its values: `[output] compression` and `precision`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Storage {
    /// Deflate level, with the shuffle filter; 0: none.
    pub deflate: i32,
    /// Metres: x, y and z (and lon, lat to the same distance in degrees) stored as 32-bit
    /// integers to this precision, packed as CF describes (`scale_factor`, `add_offset`);
    /// `None`: full floats.
    pub precision: Option<f64>,
}

impl Storage {
    /// Chosen by measurement (BENCHMARKS.md, "Trajectory files"): level 1 gives nearly all of
    /// what 9 gives on particle tracks at a fraction of the time.
    pub const DEFAULT_DEFLATE: i32 = 1;
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            deflate: Self::DEFAULT_DEFLATE,
            precision: None,
        }
    }
}

/// `[output] density` as resolved.
#[derive(Clone, Debug)]
pub struct DensitySpec {
    pub file: PathBuf,
    /// Cell size: metres, or degrees when `degrees`.
    pub cell: f64,
    pub degrees: bool,
    /// A map per release site (needs a release from sites).
    pub per_origin: bool,
}

/// `[output] variables`: each name once, each one the output knows.
fn sampled(names: Option<&[String]>) -> Result<Sampled> {
    let mut s = Sampled::default();
    for name in names.unwrap_or_default() {
        let slot = match name.as_str() {
            "temperature" => &mut s.temperature,
            "salinity" => &mut s.salinity,
            other => bail!(
                "key `output.variables`: `{other}` is not a variable shoal samples (temperature, salinity)"
            ),
        };
        if std::mem::replace(slot, true) {
            bail!("key `output.variables`: `{name}` is named twice");
        }
    }
    Ok(s)
}

/// What a path in a run file names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A file the run reads: the model output, a release, polygons, open boundary nodes.
    Input,
    /// A file the run writes: trajectories, density, connectivity.
    Output,
    /// A file of the machine that runs it (the zenoh configuration), never sent with a job.
    Local,
}

/// Where each path a run file names (as written, with its kind) leads.
pub type Resolve<'a> = &'a dyn Fn(&str, PathKind) -> PathBuf;

/// Where a run's checkpoint lies: `<output>.checkpoint`, beside the trajectory file.
pub fn checkpoint_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".checkpoint");
    PathBuf::from(name)
}

#[derive(Debug, Clone, PartialEq)]
pub struct SettlementConfig {
    pub file: PathBuf,
    pub competency: (f64, f64),
    pub probability_per_hour: Option<f64>,
    pub die_after_competency: bool,
}

fn range(r: Option<[f64; 2]>, key: &str) -> Result<Option<(f64, f64)>> {
    match r {
        None => Ok(None),
        Some([a, b]) if a.is_finite() && b.is_finite() && a <= b => Ok(Some((a, b))),
        Some(_) => bail!("key `{key}`: give [low, high] with low <= high"),
    }
}

fn rate(v: Option<f64>, key: &str) -> Result<f64> {
    match v {
        None => Ok(0.0),
        Some(m) if m >= 0.0 && m.is_finite() => Ok(m / 86_400.0),
        Some(_) => bail!("key `{key}`: must be a non-negative rate per day"),
    }
}

/// A depth or a [shallow, deep] range, metres below the surface (positive).
fn band(v: Option<&toml::Value>, key: &str) -> Result<shoal_common::behaviour::Band> {
    let num = |v: &toml::Value| match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    };
    let (a, b) = match v {
        None => bail!("key `{key}`: needed (metres below the surface, or [shallow, deep])"),
        Some(toml::Value::Array(a)) if a.len() == 2 => match (num(&a[0]), num(&a[1])) {
            (Some(x), Some(y)) => (x, y),
            _ => bail!("key `{key}`: expected [shallow, deep] in metres"),
        },
        Some(v) => match num(v) {
            Some(x) => (x, x),
            None => bail!("key `{key}`: expected metres below the surface, or [shallow, deep]"),
        },
    };
    if !(a.is_finite() && b.is_finite() && a >= 0.0 && a <= b) {
        bail!("key `{key}`: metres below the surface, positive down, shallow <= deep");
    }
    Ok(shoal_common::behaviour::Band {
        shallow: a,
        deep: b,
    })
}

fn migration(
    m: &MigrationSection,
    key: &str,
    place: &mut Option<shoal_common::behaviour::Place>,
) -> Result<shoal_common::behaviour::Migration> {
    let swim_speed = match m.swim_speed {
        Some(s) if s > 0.0 && s.is_finite() => s,
        Some(_) => bail!("key `{key}.swim_speed`: must be a positive speed in m/s"),
        None => bail!("key `{key}.swim_speed`: needed (m/s)"),
    };
    match (m.latitude, m.longitude) {
        (None, None) => {}
        (Some(lat), Some(lon)) => {
            if !((-90.0..=90.0).contains(&lat) && (-180.0..=360.0).contains(&lon)) {
                bail!("key `{key}.latitude`: latitude within [-90, 90] and longitude within [-180, 360] degrees");
            }
            let here = shoal_common::behaviour::Place {
                latitude: lat,
                longitude: lon,
            };
            if place.is_some_and(|p| p != here) {
                bail!("key `{key}.latitude`: another migration table gives another place; the sun is seen from one place");
            }
            *place = Some(here);
        }
        _ => bail!("key `{key}.latitude`: give both `latitude` and `longitude`"),
    }
    Ok(shoal_common::behaviour::Migration {
        day: band(m.day_depth.as_ref(), &format!("{key}.day_depth"))?,
        night: band(m.night_depth.as_ref(), &format!("{key}.night_depth"))?,
        swim_speed,
    })
}

fn speed(v: Option<f64>, key: &str) -> Result<Option<f64>> {
    match v {
        Some(s) if !s.is_finite() => bail!("key `{key}`: must be a number of m/s"),
        v => Ok(v),
    }
}

fn larvae(b: &BehaviourSection) -> Result<Option<Behaviour>> {
    let sinking = speed(b.sinking_speed, "behaviour.sinking_speed")?.unwrap_or(0.0);
    let mut place = None;
    let first = shoal_common::behaviour::Stage {
        from_age: 0.0,
        sinking_speed: sinking,
        mortality_rate: rate(b.mortality_per_day, "behaviour.mortality_per_day")?,
        migration: b
            .migration
            .as_ref()
            .map(|m| migration(m, "behaviour.migration", &mut place))
            .transpose()?,
    };
    let mut stages = vec![first];
    for (k, s) in b.stage.iter().enumerate() {
        let key = format!("behaviour.stage[{k}]");
        let age = match &s.age {
            Some(v) => duration_value(v, &format!("{key}.age"))?,
            None => bail!("key `{key}.age`: needed (the age this stage starts, e.g. \"5d\")"),
        };
        let prev = stages.last().unwrap();
        if age <= prev.from_age {
            bail!("key `{key}.age`: stages go by increasing age, above 0");
        }
        let migration = match &s.migration {
            None => prev.migration,
            Some(toml::Value::Boolean(false)) => None,
            Some(v @ toml::Value::Table(_)) => {
                let m: MigrationSection = v
                    .clone()
                    .try_into()
                    .map_err(|e| anyhow!("key `{key}.migration`: {e}"))?;
                Some(migration(&m, &format!("{key}.migration"), &mut place)?)
            }
            Some(_) => bail!("key `{key}.migration`: a table of migration keys, or false"),
        };
        stages.push(shoal_common::behaviour::Stage {
            from_age: age,
            sinking_speed: speed(s.sinking_speed, &format!("{key}.sinking_speed"))?
                .unwrap_or(prev.sinking_speed),
            mortality_rate: match s.mortality_per_day {
                Some(_) => rate(s.mortality_per_day, &format!("{key}.mortality_per_day"))?,
                None => prev.mortality_rate,
            },
            migration,
        });
    }
    // The run's clock origin and settlement areas come with the input, in `run::prepare`.
    let l = Behaviour {
        temperature_range: range(b.temperature_range, "behaviour.temperature_range")?,
        salinity_range: range(b.salinity_range, "behaviour.salinity_range")?,
        stages,
        place,
        settlement: None,
        clock_origin: 0.0,
    };
    let passive = l.stages.len() == 1
        && l.stages[0].mortality_rate == 0.0
        && l.stages[0].migration.is_none()
        && l.temperature_range.is_none()
        && l.salinity_range.is_none();
    Ok((!passive).then_some(l))
}

fn settlement(s: &SettlementSection, resolve: Resolve) -> Result<SettlementConfig> {
    let file = s.polygons.as_deref().ok_or_else(|| {
        anyhow!("key `settlement.polygons`: needed (a GeoJSON file of named settlement polygons)")
    })?;
    let competency = match &s.competency {
        Some([a, b]) => (
            duration_value(a, "settlement.competency")?,
            duration_value(b, "settlement.competency")?,
        ),
        None => (0.0, f64::INFINITY),
    };
    if competency.0 > competency.1 {
        bail!("key `settlement.competency`: the minimum age is above the maximum");
    }
    if let Some(p) = s.probability_per_hour {
        if !(p > 0.0 && p <= 1.0) {
            bail!("key `settlement.probability_per_hour`: must be in (0, 1]");
        }
    }
    if s.die_after_competency && s.competency.is_none() {
        bail!("key `settlement.die_after_competency`: needs `settlement.competency`");
    }
    Ok(SettlementConfig {
        file: resolve(file, PathKind::Input),
        competency,
        probability_per_hour: s.probability_per_hour,
        die_after_competency: s.die_after_competency,
    })
}

/// A release time as written: a datetime string, or seconds after the start.
fn time_text(v: &toml::Value, key: &str) -> Result<String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) if f.is_finite() => Ok(f.to_string()),
        _ => bail!("key `{key}`: expected a time such as \"2024-05-23 06:00:00\" or seconds after the start"),
    }
}

/// Checks the polygon release's keys; `None` when `release.polygons` is absent (and then none
/// of its keys may be given).
fn polygon_release(r: &ReleaseSection, resolve: Resolve) -> Result<Option<PolygonRelease>> {
    let Some(path) = &r.polygons else {
        for (given, key) in [
            (r.per_polygon.is_some(), "per_polygon"),
            (r.z.is_some(), "z"),
            (r.z_range.is_some(), "z_range"),
            (r.every.is_some(), "every"),
            (r.until.is_some(), "until"),
            (r.times.is_some(), "times"),
        ] {
            if given {
                bail!("key `release.{key}`: belongs to a polygon release (`release.polygons`); `[release.generate]` has its own keys");
            }
        }
        return Ok(None);
    };
    let per_polygon = match r.per_polygon {
        Some(n) if n > 0 => n,
        Some(_) => bail!("key `release.per_polygon`: at least one particle"),
        None => bail!("key `release.per_polygon`: needed with `release.polygons` (particles per site and release)"),
    };
    let z = match (r.z, r.z_range) {
        (Some(_), Some(_)) => bail!("key `release.z_range`: give `z` or `z_range`, not both"),
        (Some(z), None) => (z, z),
        (None, Some([a, b])) => {
            if !(a.is_finite() && b.is_finite() && a <= b) {
                bail!("key `release.z_range`: give [a, b] with a <= b, metres (negative down)");
            }
            (a, b)
        }
        (None, None) => (0.0, 0.0),
    };
    if !(z.0.is_finite() && z.1 <= 0.0) {
        bail!(
            "key `release.{}`: metres relative to the surface, 0 or negative (down)",
            if r.z_range.is_some() { "z_range" } else { "z" }
        );
    }
    let every = match (&r.every, &r.until) {
        (Some(v), Some(u)) => {
            let s = duration_value(v, "release.every")?;
            if s <= 0.0 {
                bail!("key `release.every`: must be a positive duration");
            }
            Some((s, time_text(u, "release.until")?))
        }
        (Some(_), None) => {
            bail!("key `release.until`: needed with `release.every` (the last release time)")
        }
        (None, Some(_)) => bail!("key `release.every`: needed with `release.until`"),
        (None, None) => None,
    };
    let times = match &r.times {
        Some(t) if every.is_some() => {
            let _ = t;
            bail!("key `release.times`: give `times` or `every` with `until`, not both")
        }
        Some(t) if t.is_empty() => bail!("key `release.times`: at least one time"),
        Some(t) => t
            .iter()
            .map(|v| time_text(v, "release.times"))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    Ok(Some(PolygonRelease {
        file: resolve(path, PathKind::Input),
        per_polygon,
        z,
        every,
        times,
    }))
}

fn duration_value(v: &toml::Value, key: &str) -> Result<f64> {
    match v {
        toml::Value::String(s) => parse_duration(s).with_context(|| format!("key `{key}`")),
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as f64),
        toml::Value::Float(f) if *f >= 0.0 => Ok(*f),
        _ => bail!("key `{key}`: expected a duration such as \"60s\" or \"12h\""),
    }
}

/// A length such as "1cm", "5 mm" or "0.1m", or a number of metres; positive.
fn length_value(v: &toml::Value, key: &str) -> Result<f64> {
    let bad = || anyhow!("key `{key}`: expected a length such as \"1cm\", \"5mm\" or \"0.1m\"");
    let metres = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        toml::Value::String(s) => {
            let s = s.trim();
            let (num, scale) = if let Some(n) = s.strip_suffix("mm") {
                (n, 1e-3)
            } else if let Some(n) = s.strip_suffix("cm") {
                (n, 1e-2)
            } else if let Some(n) = s.strip_suffix("km") {
                (n, 1e3)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 1.0)
            } else {
                return Err(bad());
            };
            num.trim().parse::<f64>().map_err(|_| bad())? * scale
        }
        _ => return Err(bad()),
    };
    if !(metres.is_finite() && metres > 0.0) {
        return Err(bad());
    }
    Ok(metres)
}

impl RunConfig {
    pub fn from_path(path: &Path) -> Result<RunConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_str(&text, base).with_context(|| format!("in {}", path.display()))
    }

    /// The run file `text`, its relative paths taken from `base`.
    pub fn from_str(text: &str, base: &Path) -> Result<RunConfig> {
        Self::from_str_placing(text, &|p, _| base.join(p))
    }

    /// The run file `text`, each path it names (absolute or relative, as written) put where
    /// `resolve` says: how the job server puts a job's inputs in its store and its outputs in
    /// the job's directory.
    pub fn from_str_placing(text: &str, resolve: Resolve) -> Result<RunConfig> {
        let file: RunFile =
            toml::from_str(text).map_err(|e| anyhow!("{}", e.to_string().trim_end()))?;
        if file.input.files.is_empty() {
            bail!("key `input.files`: name at least one FVCOM NetCDF file");
        }
        let mut obc: Vec<u32> = Vec::new();
        if let Some(f) = &file.input.open_boundary_file {
            obc.extend(read_obc_file(&resolve(f, PathKind::Input))?);
        }
        for n in file.input.open_boundary_nodes.iter().flatten() {
            if *n == 0 {
                bail!("key `input.open_boundary_nodes`: node numbers are 1-based, as FVCOM writes them; found 0");
            }
            obc.push(n - 1);
        }
        let dt = match &file.run.dt {
            Some(v) => duration_value(v, "run.dt")?,
            None => 60.0,
        };
        if dt <= 0.0 {
            bail!("key `run.dt`: the time step must be positive");
        }
        let duration = file
            .run
            .duration
            .as_ref()
            .map(|v| duration_value(v, "run.duration"))
            .transpose()?;
        let output_interval = match &file.output.interval {
            Some(v) => duration_value(v, "output.interval")?,
            None => 3600.0,
        };
        let ratio = output_interval / dt;
        if output_interval <= 0.0 || (ratio - ratio.round()).abs() > 1e-9 {
            bail!("key `output.interval`: {output_interval} s is not a whole number of time steps of {dt} s");
        }
        let vertical_mixing = match file.diffusion.vertical.as_deref().unwrap_or("none") {
            "none" => VerticalMixing::None,
            "constant" => VerticalMixing::Constant(file.diffusion.vertical_kh.ok_or_else(|| {
                anyhow!("key `diffusion.vertical_kh`: needed when `diffusion.vertical = \"constant\"`")
            })?),
            "file" => VerticalMixing::FromFile,
            other => bail!("key `diffusion.vertical`: `{other}` is not one of none, constant, file"),
        };
        let horizontal_kh = file.diffusion.horizontal_kh.unwrap_or(0.0);
        if !(horizontal_kh >= 0.0 && horizontal_kh.is_finite()) {
            bail!("key `diffusion.horizontal_kh`: must be a non-negative number (m^2/s)");
        }
        let b = &file.behaviour;
        let happiness = match b.preferred_temperature {
            Some(pt) => Some(Happiness {
                preferred_temperature: pt,
                tolerance: b.temperature_tolerance.unwrap_or(2.0),
                threshold: b.happy_threshold.unwrap_or(0.9),
            }),
            None => {
                if b.stop_when_happy_share.is_some()
                    || b.temperature_tolerance.is_some()
                    || b.happy_threshold.is_some()
                {
                    bail!("key `behaviour.preferred_temperature`: needed for happiness keys");
                }
                None
            }
        };
        if let Some(t) = b.temperature_tolerance {
            if !(t > 0.0 && t.is_finite()) {
                bail!("key `behaviour.temperature_tolerance`: must be a positive number (degrees)");
            }
        }
        if let Some(s) = b.stop_when_happy_share {
            if !(s > 0.0 && s <= 1.0) {
                bail!("key `behaviour.stop_when_happy_share`: must be in (0, 1]");
            }
        }
        let c = &file.cluster;
        if let Some(n) = &c.name {
            if !shoal_common::keys::is_chunk(n) || n.len() > shoal_common::wire::IDENT_CAPACITY {
                bail!(
                    "key `cluster.name`: `{n}` must be at most {} letters, digits, `-`, `_` or `.`",
                    shoal_common::wire::IDENT_CAPACITY
                );
            }
        }
        let wait_seconds = c.wait_seconds.unwrap_or(30.0);
        if !(wait_seconds > 0.0 && wait_seconds.is_finite()) {
            bail!("key `cluster.wait_seconds`: must be a positive number of seconds");
        }
        let patience_seconds = c.patience_seconds.unwrap_or(300.0);
        if !(patience_seconds > 0.0 && patience_seconds.is_finite()) {
            bail!("key `cluster.patience_seconds`: must be a positive number of seconds");
        }
        if c.partitions == Some(0) {
            bail!("key `cluster.partitions`: at least one");
        }
        if c.halo_rings == Some(0) {
            bail!("key `cluster.halo_rings`: at least one ring");
        }
        let rebalance_share = c.rebalance_share;
        if rebalance_share.is_some_and(|r| !(r >= 0.0 && r.is_finite())) {
            bail!("key `cluster.rebalance_share`: a share of at least 0 (0.2 for 20 % above the mean)");
        }
        if c.rebalance_steps == Some(0) {
            bail!("key `cluster.rebalance_steps`: at least 1 step");
        }
        if c.ahead_steps == Some(0) {
            bail!("key `cluster.ahead_steps`: at least 1 (1 steps in lock with the manager)");
        }
        if c.field_piece_kib == Some(0) {
            bail!("key `cluster.field_piece_kib`: at least 1 KiB");
        }
        let cluster = ClusterConfig {
            nodes: c.nodes.unwrap_or(0),
            name: c.name.clone(),
            wait_seconds,
            halo_rings: c.halo_rings,
            partitions: c.partitions,
            zenoh_config: c
                .zenoh_config
                .as_deref()
                .map(|p| resolve(p, PathKind::Local)),
            patience_seconds,
            field_piece_bytes: c.field_piece_kib.map(|k| k << 10),
            ahead_steps: c.ahead_steps.unwrap_or(64),
            rebalance_share,
            rebalance_steps: c.rebalance_steps.unwrap_or(100),
        };
        let polygons = polygon_release(&file.release, resolve)?;
        let larvae = larvae(b)?;
        let settlement = file
            .settlement
            .as_ref()
            .map(|s| settlement(s, resolve))
            .transpose()?;
        let backward = match file.run.direction.as_deref().unwrap_or("forward") {
            "forward" => false,
            "backward" => true,
            other => bail!("key `run.direction`: `{other}` is not one of forward, backward"),
        };
        if backward && (larvae.is_some() || settlement.is_some()) {
            bail!("key `run.direction`: larval behaviour (stages, migration, mortality, lethal ranges, settlement) runs forward only; a backward run takes the physics and `behaviour.sinking_speed`");
        }
        if backward && b.preferred_temperature.is_some() {
            bail!("key `run.direction`: the happiness stop runs forward only");
        }
        let connectivity = file
            .output
            .connectivity
            .as_deref()
            .map(|p| resolve(p, PathKind::Output));
        if connectivity.is_some() && (settlement.is_none() || polygons.is_none()) {
            bail!("key `output.connectivity`: needs a polygon release (`release.polygons`) and `[settlement]` polygons");
        }
        let output = resolve(
            file.output.file.as_deref().unwrap_or("trajectories.nc"),
            PathKind::Output,
        );
        let storage = Storage {
            deflate: match file.output.compression {
                None => Storage::DEFAULT_DEFLATE,
                Some(l @ 0..=9) => l as i32,
                Some(l) => {
                    bail!("key `output.compression`: a deflate level from 0 (none) to 9, not {l}")
                }
            },
            precision: file
                .output
                .precision
                .as_ref()
                .map(|v| length_value(v, "output.precision"))
                .transpose()?,
        };
        let density = file
            .output
            .density
            .as_ref()
            .map(|d| density_spec(d, resolve))
            .transpose()?;
        if let Some(d) = &density {
            if d.file == output || d.file == checkpoint_path(&output) {
                bail!(
                    "key `output.density.file`: {} is the trajectory file or its checkpoint",
                    d.file.display()
                );
            }
        }
        let ways = [
            file.release.file.is_some(),
            file.release.generate.is_some(),
            polygons.is_some(),
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => bail!("key `release`: give `release.file` (CSV), `release.polygons` (GeoJSON) or a `[release.generate]` table"),
            1 => {}
            _ => bail!("key `release`: give only one of `release.file`, `release.polygons` and `[release.generate]`"),
        }
        Ok(RunConfig {
            files: file
                .input
                .files
                .iter()
                .map(|f| resolve(f, PathKind::Input))
                .collect(),
            open_boundary_nodes: obc,
            release_file: file
                .release
                .file
                .as_deref()
                .map(|p| resolve(p, PathKind::Input)),
            generate: file.release.generate.clone(),
            polygons,
            start: file
                .run
                .start
                .as_deref()
                .map(parse_datetime)
                .transpose()
                .context("key `run.start`")?,
            duration,
            dt,
            integrator: file.run.integrator.unwrap_or_default(),
            threads: file.run.threads.unwrap_or(0),
            sort_every: file.run.sort_every.unwrap_or(8),
            checkpoint_every: file.run.checkpoint_every.unwrap_or(0),
            device: file
                .run
                .device
                .as_deref()
                .unwrap_or("auto")
                .parse()
                .map_err(|e| anyhow!("key `run.device`: {e}"))?,
            horizontal_kh,
            vertical_mixing,
            sinking_speed: b.sinking_speed.unwrap_or(0.0),
            happiness,
            stop_when_happy_share: b.stop_when_happy_share,
            output,
            output_interval,
            storage,
            sampled: sampled(file.output.variables.as_deref())?,
            density,
            connectivity,
            larvae,
            settlement,
            backward,
            seed: file.seed.unwrap_or(0),
            cluster,
            source_text: text.to_string(),
        })
    }
}

/// FVCOM's open boundary file: a header line, then `index node type` per line (1-based nodes).
pub fn read_obc_file(path: &Path) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read open boundary file {}", path.display()))?;
    let mut nodes = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let node: u32 = fields
            .get(1)
            .and_then(|f| f.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                anyhow!(
                    "{} line {}: expected `index node type`",
                    path.display(),
                    i + 1
                )
            })?;
        nodes.push(node - 1);
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml example") + 8;
        let end = start + readme[start..].find("```").unwrap();
        let cfg = RunConfig::from_str(&readme[start..end], Path::new("/data")).unwrap();
        assert_eq!(cfg.files[0], PathBuf::from("/data/sfbofs_subset.nc"));
        assert_eq!(cfg.dt, 60.0);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err =
            RunConfig::from_str("[input]\nfiles=['a.nc']\nfilez=1\n", Path::new(".")).unwrap_err();
        assert!(format!("{err:#}").contains("filez"), "{err:#}");
        let err = RunConfig::from_str(
            "[input]\nfiles=['a.nc']\n[run]\ndt='1 fortnight'\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("run.dt"), "{err:#}");
    }

    #[test]
    fn stepping_ahead_and_re_partitioning_keys_are_checked() {
        for (bad, key) in [
            ("ahead_steps=0", "cluster.ahead_steps"),
            ("rebalance_steps=0", "cluster.rebalance_steps"),
            ("rebalance_share=-0.1", "cluster.rebalance_share"),
        ] {
            let text = format!("[input]\nfiles=['a.nc']\n[cluster]\n{bad}\n");
            let err = RunConfig::from_str(&text, Path::new(".")).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
        let ok = "[input]\nfiles=['a.nc']\n[release.generate]\ncount=1\n[cluster]\nahead_steps=4\nrebalance_share=0.5\n";
        let c = RunConfig::from_str(ok, Path::new(".")).unwrap().cluster;
        assert_eq!(
            (c.ahead_steps, c.rebalance_share, c.rebalance_steps),
            (4, Some(0.5), 100)
        );
    }
}
