//! What every run does before its first step: read the mesh and the time axis, place the
//! release, work out the steps and the output cadence, start the worker threads; and the window
//! of field levels that the schedule and the one-machine stepper read through.

use super::{say, RunOptions};
use crate::input::config::RunConfig;
use crate::input::fvcom::FvcomReader;
use crate::input::release;
use crate::input::timefmt::format_datetime;
use crate::output::TrajectoryWriter;
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::behaviour::{Behaviour, Settlement};
use shoal_common::kernel::{StepParams, VerticalMixing};
use shoal_common::snapshot::{Sampled, Snapshot};
use shoal_common::{FieldLevel, Mesh, Particles, Window};
use std::time::{Duration, Instant};

/// The field levels covering a time span, read on demand and dropped when passed. It holds the
/// reader and mesh it reads for, so a stepper or the schedule only names the span.
pub struct FieldWindow<'a> {
    reader: &'a FvcomReader,
    mesh: &'a Mesh,
    pub levels: Vec<FieldLevel>,
    first: usize,
    origin: f64,
    pub read_time: Duration,
    /// The fields the output samples along each track.
    sampled: Sampled,
}

impl<'a> FieldWindow<'a> {
    /// Levels of `reader`'s fields on `mesh`, on the run clock from `origin`; `observe` samples
    /// what `sampled` names.
    pub fn new(reader: &'a FvcomReader, mesh: &'a Mesh, origin: f64, sampled: Sampled) -> Self {
        FieldWindow {
            reader,
            mesh,
            levels: Vec::new(),
            first: 0,
            origin,
            read_time: Duration::ZERO,
            sampled,
        }
    }

    pub fn mesh(&self) -> &'a Mesh {
        self.mesh
    }

    /// Makes sure the levels bracket [t0, t1] (run clock seconds).
    pub fn cover(&mut self, t0: f64, t1: f64) -> Result<()> {
        let (t0, t1) = (t0.min(t1), t0.max(t1));
        let times = &self.reader.times;
        let rel = |i: usize| times[i] - self.origin;
        let lo = (0..times.len())
            .rev()
            .find(|&i| rel(i) <= t0 + 1e-9)
            .unwrap_or(0);
        let hi = (0..times.len())
            .find(|&i| rel(i) >= t1 - 1e-9)
            .unwrap_or(times.len() - 1)
            .max(lo);
        if !self.levels.is_empty() && (lo < self.first || lo > self.first + self.levels.len()) {
            self.levels.clear();
        }
        if self.levels.is_empty() {
            self.first = lo;
        }
        let drop = lo - self.first;
        self.levels.drain(..drop.min(self.levels.len()));
        self.first = lo;
        let start = Instant::now();
        while self.first + self.levels.len() <= hi {
            let idx = self.first + self.levels.len();
            let raw = self.reader.read_slice(idx, self.origin)?;
            let level = FieldLevel::from_slice(self.mesh, &raw)
                .map_err(|e| anyhow!("time slice {idx}: {e}"))?;
            self.levels.push(level);
        }
        self.read_time += start.elapsed();
        Ok(())
    }

    pub fn window(&self) -> Window<'_> {
        Window {
            levels: &self.levels,
        }
    }

    /// The output view of `particles` at `t`: what the trajectory file records. Every path
    /// observes through the same levels (those bracketing `t` alone), so every path writes the
    /// same bits.
    pub fn observe(&mut self, particles: &Particles, t: f64) -> Result<Snapshot> {
        self.cover(t, t)?;
        Ok(shoal_node::snapshot_of(
            particles,
            self.mesh,
            self.window(),
            t,
            self.sampled,
        ))
    }
}

/// The run's start (Unix seconds) and duration (seconds) over the input's `times`: by default a
/// forward run goes from the first time to the last, a backward run from the last to the first.
pub fn span(cfg: &RunConfig, times: &[f64]) -> (f64, f64) {
    let (first, last) = (times[0], *times.last().unwrap_or(&times[0]));
    let start = cfg.start.unwrap_or(if cfg.backward { last } else { first });
    let duration = cfg.duration.unwrap_or(if cfg.backward {
        start - first
    } else {
        last - start
    });
    (start, duration)
}

/// Refuses what needs a water column on a surface-only input, naming the key.
fn surface_only_keys(cfg: &RunConfig) -> Result<()> {
    let why = "the input is surface only (no bathymetry), so particles stay at z = 0";
    if cfg.vertical_mixing != VerticalMixing::None {
        bail!("key `diffusion.vertical`: {why}; vertical mixing needs a water column");
    }
    if cfg.sinking_speed != 0.0 {
        bail!("key `behaviour.sinking_speed`: {why}; particles cannot sink");
    }
    if let Some(l) = &cfg.larvae {
        for (k, st) in l.stages.iter().enumerate() {
            let key = if k == 0 {
                "behaviour".to_string()
            } else {
                format!("behaviour.stage[{}]", k - 1)
            };
            if st.migration.is_some() {
                bail!("key `{key}.migration`: {why}; vertical migration needs a water column");
            }
            if st.sinking_speed != 0.0 {
                bail!("key `{key}.sinking_speed`: {why}; particles cannot sink");
            }
        }
    }
    if let Some(g) = cfg.generate.as_ref().filter(|g| g.z != 0.0) {
        bail!(
            "key `release.generate.z`: {} m, but {why}: release at 0",
            g.z
        );
    }
    if let Some(p) = cfg.polygons.as_ref().filter(|p| p.z != (0.0, 0.0)) {
        let key = if p.z.0 == p.z.1 { "z" } else { "z_range" };
        bail!("key `release.{key}`: {why}: release at 0");
    }
    Ok(())
}

/// The step parameters of `cfg` without behaviour (see [`behaviour`]); `dt` is negative for a
/// backward run.
pub fn step_params(cfg: &RunConfig) -> StepParams {
    StepParams {
        dt: if cfg.backward { -cfg.dt } else { cfg.dt },
        integrator: cfg.integrator,
        horizontal_kh: cfg.horizontal_kh,
        vertical_mixing: cfg.vertical_mixing,
        sinking_speed: cfg.sinking_speed,
        seed: cfg.seed,
        happiness: cfg.happiness,
        behaviour: None,
    }
}

/// The kernel's behaviour for `cfg` on `mesh` (the run clock's zero at `start`, Unix seconds),
/// and the settlement polygons' names; `None` for passive particles. Checks what needs the
/// input: fields for lethal ranges, a place for the sun, water in every settlement polygon.
pub fn behaviour(
    cfg: &RunConfig,
    mesh: &Mesh,
    reader: &FvcomReader,
    start: f64,
) -> Result<Option<(Box<Behaviour>, Vec<String>)>> {
    if cfg.larvae.is_none() && cfg.settlement.is_none() {
        return Ok(None);
    }
    let file = reader.path(0).display();
    let mut larvae = cfg.larvae.clone().unwrap_or(Behaviour {
        stages: vec![shoal_common::behaviour::Stage {
            from_age: 0.0,
            sinking_speed: cfg.sinking_speed,
            mortality_rate: 0.0,
            migration: None,
        }],
        temperature_range: None,
        salinity_range: None,
        place: None,
        settlement: None,
        clock_origin: 0.0,
    });
    if larvae.temperature_range.is_some() && !reader.layout.temp {
        bail!("{file}: behaviour.temperature_range needs variable `temp` (layered, at nodes), which the input lacks");
    }
    if larvae.salinity_range.is_some() && !reader.layout.salinity {
        bail!("{file}: behaviour.salinity_range needs variable `salinity` (layered, at nodes), which the input lacks");
    }
    let migrates = larvae.stages.iter().any(|s| s.migration.is_some());
    let place = match (migrates, mesh.projection.is_some(), larvae.place) {
        (true, false, None) => bail!("key `behaviour.migration.latitude` (or a stage's `migration.latitude`): the mesh has no geographic coordinates, so give `latitude` and `longitude` for the sun"),
        (true, true, Some(_)) => {
            eprintln!("warning: behaviour.migration.latitude/longitude are not used: the mesh is geographic and the sun is seen from each element");
            None
        }
        (_, _, p) => p,
    };
    let (settlement, names) = match &cfg.settlement {
        None => (None, Vec::new()),
        Some(s) => {
            let sites = crate::input::sites::read(&s.file, reader.geo.as_ref())
                .context("key `settlement.polygons`")?;
            if sites.len() > u16::MAX as usize {
                bail!(
                    "{}: more than {} settlement polygons",
                    s.file.display(),
                    u16::MAX
                );
            }
            for site in &sites {
                if !site.touches(mesh) {
                    bail!(
                        "key `settlement.polygons`: {}: settlement polygon `{}` has no water: it lies on land or outside the mesh",
                        s.file.display(),
                        site.name
                    );
                }
            }
            (
                Some(Settlement {
                    areas: sites.iter().map(|s| s.area.clone()).collect(),
                    competency: s.competency,
                    probability_per_hour: s.probability_per_hour,
                    die_after_competency: s.die_after_competency,
                }),
                sites.into_iter().map(|s| s.name).collect(),
            )
        }
    };
    larvae.settlement = settlement;
    larvae.clock_origin = start;
    larvae.place = place;
    Ok(Some((Box::new(larvae), names)))
}

/// The run's global attributes: its configuration, and what it read (each input file's absolute
/// path, so that `shoal plot` finds the mesh from any directory; their SHA-256, which takes a
/// while for large inputs, is hashed beside the run and added at its end: [`input_hashes`]).
pub(crate) fn config_attributes(cfg: &RunConfig) -> Result<Vec<(String, String)>> {
    use crate::input::identity;
    let mut a = vec![
        ("shoal_config".to_string(), cfg.source_text.clone()),
        (
            "shoal_input_files".to_string(),
            cfg.files
                .iter()
                .map(|p| identity::absolute(p).display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("shoal_dt_seconds".to_string(), cfg.dt.to_string()),
        (
            // As the reader takes them (from `open_boundary_nodes` or `open_boundary_file`),
            // so that `shoal plot` marks the same edges open.
            "shoal_open_boundary_nodes".to_string(),
            cfg.open_boundary_nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "shoal_integrator".to_string(),
            format!("{:?}", cfg.integrator).to_lowercase(),
        ),
        ("shoal_seed".to_string(), cfg.seed.to_string()),
        (
            "shoal_direction".to_string(),
            if cfg.backward { "backward" } else { "forward" }.to_string(),
        ),
        (
            "shoal_horizontal_kh".to_string(),
            cfg.horizontal_kh.to_string(),
        ),
        (
            "shoal_vertical_mixing".to_string(),
            format!("{:?}", cfg.vertical_mixing),
        ),
        (
            "shoal_output_interval_seconds".to_string(),
            cfg.output_interval.to_string(),
        ),
    ];
    if let Some(h) = cfg.happiness {
        a.push(("shoal_happiness".to_string(), format!("{h:?}")));
    }
    Ok(a)
}

/// What every path needs before the first step: the input, the mesh, the release placed, the
/// step count and the workers.
pub struct Prepared {
    pub reader: FvcomReader,
    /// Shared with the embedded default's in-process node agents.
    pub mesh: std::sync::Arc<Mesh>,
    pub start: f64,
    pub duration: f64,
    pub n_steps: u32,
    pub output_every: u32,
    pub particles: shoal_common::Particles,
    pub outside: usize,
    /// Each particle's release site, for a polygon release.
    pub origins: Option<release::Origins>,
    /// The settlement polygons' names, in order.
    pub destinations: Vec<String>,
    pub params: StepParams,
    pub threads: usize,
    pub pool: std::sync::Arc<rayon::ThreadPool>,
    pub wall: Instant,
}

impl Prepared {
    pub fn n(&self) -> usize {
        self.particles.len()
    }
}

pub fn prepare(cfg: &RunConfig, opts: &RunOptions) -> Result<Prepared> {
    let say = |s: String| say(opts.quiet, s);
    let wall = Instant::now();
    let (mut reader, mesh, notes) = FvcomReader::open(&cfg.files, &cfg.open_boundary_nodes)?;
    // Salinity is read only for a lethal range or the output.
    reader.layout.salinity &= cfg.sampled.salinity
        || cfg
            .larvae
            .as_ref()
            .is_some_and(|l| l.salinity_range.is_some());
    for w in &reader.warnings {
        eprintln!("warning: {w}");
    }
    for n in &notes {
        say(format!("mesh: {n}"));
    }
    say(format!(
        "mesh: {} nodes, {} elements, {} layers, {:?} coordinates; {} time slices {} .. {}",
        mesh.n_nodes(),
        mesh.n_elements(),
        mesh.vertical.n_layers,
        reader.coordinates,
        reader.times.len(),
        format_datetime(reader.times[0]),
        format_datetime(*reader.times.last().unwrap())
    ));
    for (asked, name, var, has) in [
        (
            cfg.sampled.temperature,
            "temperature",
            "temp",
            reader.layout.temp,
        ),
        (
            cfg.sampled.salinity,
            "salinity",
            "salinity",
            reader.layout.salinity,
        ),
    ] {
        if asked && !has {
            bail!(
                "{}: key `output.variables` names `{name}`, which needs variable `{var}` (layered, at nodes, with 3-D velocities), which the input lacks",
                reader.path(0).display()
            );
        }
    }
    if cfg.happiness.is_some() && !reader.layout.temp {
        bail!(
            "{}: behaviour.preferred_temperature needs variable `temp`, which the input lacks",
            reader.path(0).display()
        );
    }
    if cfg.vertical_mixing == VerticalMixing::FromFile && !reader.layout.kh {
        bail!(
            "{}: diffusion.vertical = \"file\" needs variable `kh`, which the input lacks",
            reader.path(0).display()
        );
    }
    let (first, last) = (reader.times[0], *reader.times.last().unwrap());
    let steady = reader.times.len() == 1;
    if steady && cfg.duration.is_none() {
        bail!(
            "key `run.duration`: needed, since the input ({}) has a single time record: a steady flow runs for as long as asked",
            reader.path(0).display()
        );
    }
    let (start, duration) = span(cfg, &reader.times);
    if steady {
        say(format!(
            "the field is steady: one time record ({}), used at every time",
            format_datetime(first)
        ));
    }
    if reader.surface_only {
        say("the input is surface only (no bathymetry): particles stay at z = 0".into());
        surface_only_keys(cfg)?;
    }
    if steady {
        // Any start and duration: the one record holds at every time.
    } else if start < first - 1e-6 || start > last {
        bail!(
            "run.start {} is outside the input's time span {} .. {}",
            format_datetime(start),
            format_datetime(first),
            format_datetime(last)
        );
    }
    if !steady && !cfg.backward && start + duration > last + 1e-6 {
        bail!(
            "the run would end at {} but the input ends at {} ({})",
            format_datetime(start + duration),
            format_datetime(last),
            reader.path(reader.time_source.len() - 1).display()
        );
    }
    if !steady && cfg.backward && start - duration < first - 1e-6 {
        bail!(
            "the backward run would end at {} but the input begins at {} ({})",
            format_datetime(start - duration),
            format_datetime(first),
            reader.path(0).display()
        );
    }
    let n_steps = ((duration / cfg.dt) - 1e-9).ceil().max(0.0) as u32;
    let output_every = (cfg.output_interval / cfg.dt).round().max(1.0) as u32;

    let release::Release {
        points,
        sites: origins,
    } = release::points(cfg, &mesh, reader.geo.as_ref(), start, duration)?;
    if reader.surface_only {
        if let (Some(file), Some(p)) = (&cfg.release_file, points.iter().find(|p| p.z != 0.0)) {
            bail!(
                "{}: column `z` is {} m at a release point, but the input is surface only (no bathymetry): release at z = 0",
                file.display(),
                p.z
            );
        }
    }
    if let Some(o) = &origins {
        say(format!(
            "release: {} particles from {} sites ({})",
            points.len(),
            o.names.len(),
            o.names.join(", ")
        ));
    }
    if points.is_empty() {
        bail!("the release has no particles");
    }
    let released = release::place(&points, &mesh);
    if released.outside > 0 {
        let (i, x, y) = released.first_outside.unwrap();
        eprintln!(
            "warning: {} of {} release points lie outside the mesh (the first is point {} at x={x:.1}, y={y:.1}); they stay in the output with status outside_mesh",
            released.outside, points.len(), i
        );
    }
    let threads = match opts.threads.or(Some(cfg.threads)).filter(|t| *t > 0) {
        Some(t) => t,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting worker threads")?;
    let mut params = step_params(cfg);
    let mut destinations = Vec::new();
    if let Some((b, names)) = behaviour(cfg, &mesh, &reader, start)? {
        params.behaviour = Some(b);
        destinations = names;
    }
    Ok(Prepared {
        reader,
        mesh: std::sync::Arc::new(mesh),
        start,
        duration,
        n_steps,
        output_every,
        particles: released.particles,
        outside: released.outside,
        origins,
        destinations,
        params,
        threads,
        pool: std::sync::Arc::new(pool),
        wall,
    })
}

/// The SHA-256 of each input file, space-separated, hashed in a thread of its own while the run
/// steps (a multi-gigabyte input takes a Pi many seconds): the output's `shoal_input_sha256`.
pub fn input_hashes(cfg: &RunConfig) -> std::thread::JoinHandle<Result<String>> {
    let files = cfg.files.clone();
    std::thread::spawn(move || {
        let hashes = files
            .iter()
            .map(|p| crate::input::identity::sha256(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(hashes.join(" "))
    })
}

/// The trajectory file of a run.
pub fn create_writer(cfg: &RunConfig, prep: &Prepared) -> Result<TrajectoryWriter> {
    let m = &prep.mesh;
    let (x0, x1) =
        m.x.iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let (y0, y1) =
        m.y.iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let mut w = TrajectoryWriter::create(
        &cfg.output,
        prep.n(),
        prep.start,
        prep.reader.geo.clone(),
        crate::output::Columns {
            happiness: cfg.happiness.is_some(),
            sampled: cfg.sampled,
        },
        prep.origins.as_ref(),
        &config_attributes(cfg)?,
        cfg.storage,
        (0.5 * (x0 + x1), 0.5 * (y0 + y1)),
    )?;
    if let Some(spec) = &cfg.density {
        w.attach_density(crate::output::density::DensityWriter::create(
            spec,
            &prep.mesh,
            prep.n(),
            prep.start,
            prep.origins.as_ref(),
        )?);
    }
    if let Some(f) = fates(cfg, prep) {
        w.attach_fates(f, true)?;
    }
    Ok(w)
}

/// What the trajectory writer records of settlement, when the run settles particles.
pub fn fates(cfg: &RunConfig, prep: &Prepared) -> Option<crate::output::fates::Fates> {
    let s = prep.params.behaviour.as_ref()?.settlement.as_ref()?;
    Some(crate::output::fates::Fates::new(
        s.areas.clone(),
        prep.destinations.clone(),
        prep.n(),
        cfg.connectivity.clone().zip(prep.origins.clone()),
        prep.start,
        cfg.backward,
    ))
}
