//! The run driver on one machine: read the mesh, place the release, then step the partition
//! through time, keeping just the field levels the next step needs, and append snapshots to the
//! trajectory file at each output interval.

use crate::config::RunConfig;
use crate::fvcom::FvcomReader;
use crate::output::TrajectoryWriter;
use crate::release;
use crate::timefmt::format_datetime;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_common::kernel::{StepParams, Tally, VerticalMixing};
use shoal_common::{FieldLevel, Mesh, Window};

use shoal_node::Partition;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub quiet: bool,
    pub threads: Option<usize>,
    /// Overrides `run.device`.
    pub device: Option<shoal_node::Device>,
    /// Step in this process without the fabric (the one-machine path).
    pub direct: bool,
    /// Overrides `cluster.name`: use the running nodes of this cluster.
    pub cluster: Option<String>,
    /// Overrides `cluster.nodes`.
    pub nodes: Option<usize>,
}

/// Where the particles are stepped.
enum Worker {
    Cpu(Partition),
    #[cfg(feature = "gpu")]
    Gpu(shoal_node::gpu::GpuPartition),
}

impl Worker {
    fn step(
        &mut self,
        mesh: &Mesh,
        window: Window,
        params: &shoal_common::StepParams,
        t: f64,
        s: u32,
    ) -> Result<Tally> {
        match self {
            Worker::Cpu(p) => Ok(p.step(mesh, window, params, t, s)),
            #[cfg(feature = "gpu")]
            Worker::Gpu(g) => g
                .step(mesh, window, params, t, s)
                .map_err(|e| anyhow!("GPU step {s}: {e}")),
        }
    }

    fn snapshot(&mut self, mesh: &Mesh, window: Window, t: f64) -> Result<shoal_node::Snapshot> {
        match self {
            Worker::Cpu(p) => Ok(p.snapshot(mesh, window, t)),
            #[cfg(feature = "gpu")]
            Worker::Gpu(g) => {
                let p = g.download(mesh).map_err(|e| anyhow!("GPU readback: {e}"))?;
                Ok(shoal_node::snapshot_of(p, mesh, window, t))
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub n_particles: usize,
    pub steps: u32,
    pub particle_steps: u64,
    pub wall: Duration,
    pub kernel: Duration,
    pub fields: Duration,
    pub output: Duration,
    pub last: Tally,
    pub ecstatic: bool,
    pub outside: usize,
    pub threads: usize,
    /// The device used and why.
    pub device: String,
    /// Node agents and mesh partitions (0 on the one-machine path).
    pub nodes: usize,
    pub partitions: usize,
    /// Element values served on demand beyond the halos.
    pub halo_served: u64,
    /// Messages dropped as foreign or malformed, by the manager and in-process nodes.
    pub dropped: u64,
}

/// The field levels covering a time span, read on demand and dropped when passed.
pub struct FieldWindow {
    pub levels: Vec<FieldLevel>,
    first: usize,
    origin: f64,
    pub read_time: Duration,
}

impl FieldWindow {
    pub fn new(origin: f64) -> Self {
        FieldWindow {
            levels: Vec::new(),
            first: 0,
            origin,
            read_time: Duration::ZERO,
        }
    }

    /// Makes sure the levels bracket [t0, t1] (run clock seconds).
    pub fn cover(&mut self, reader: &FvcomReader, mesh: &Mesh, t0: f64, t1: f64) -> Result<()> {
        let times = &reader.times;
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
            let raw = reader.read_slice(idx, self.origin)?;
            let level =
                FieldLevel::from_slice(mesh, &raw).map_err(|e| anyhow!("time slice {idx}: {e}"))?;
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
}

pub fn step_params(cfg: &RunConfig) -> StepParams {
    StepParams {
        dt: cfg.dt,
        integrator: cfg.integrator,
        horizontal_kh: cfg.horizontal_kh,
        vertical_mixing: cfg.vertical_mixing,
        sinking_speed: cfg.sinking_speed,
        seed: cfg.seed,
        happiness: cfg.happiness,
    }
}

fn config_attributes(cfg: &RunConfig) -> Vec<(String, String)> {
    let mut a = vec![
        ("shoal_config".to_string(), cfg.source_text.clone()),
        (
            "shoal_input_files".to_string(),
            cfg.files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("shoal_dt_seconds".to_string(), cfg.dt.to_string()),
        (
            "shoal_integrator".to_string(),
            format!("{:?}", cfg.integrator).to_lowercase(),
        ),
        ("shoal_seed".to_string(), cfg.seed.to_string()),
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
    a
}

/// What every path needs before the first step: the input, the mesh, the release placed, the
/// step count and the workers.
pub struct Prepared {
    pub reader: FvcomReader,
    pub mesh: Mesh,
    pub start: f64,
    pub duration: f64,
    pub n_steps: u32,
    pub output_every: u32,
    pub particles: shoal_common::Particles,
    pub outside: usize,
    pub params: StepParams,
    pub threads: usize,
    pub pool: std::sync::Arc<rayon::ThreadPool>,
    pub wall: Instant,
    /// Whether steps straddle field times (the GPU kernel cannot).
    pub straddles: bool,
}

impl Prepared {
    pub fn n(&self) -> usize {
        self.particles.len()
    }
}

pub fn say(quiet: bool, s: String) {
    if !quiet {
        eprintln!("{s}");
    }
}

pub fn prepare(cfg: &RunConfig, opts: &RunOptions) -> Result<Prepared> {
    let say = |s: String| say(opts.quiet, s);
    let wall = Instant::now();
    let (reader, mesh, notes) = FvcomReader::open(&cfg.files, &cfg.open_boundary_nodes)?;
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
    let start = cfg.start.unwrap_or(first);
    if start < first - 1e-6 || start > last {
        bail!(
            "run.start {} is outside the input's time span {} .. {}",
            format_datetime(start),
            format_datetime(first),
            format_datetime(last)
        );
    }
    let duration = cfg.duration.unwrap_or(last - start);
    if start + duration > last + 1e-6 {
        bail!(
            "the run would end at {} but the input ends at {} ({})",
            format_datetime(start + duration),
            format_datetime(last),
            reader.path(reader.time_source.len() - 1).display()
        );
    }
    let n_steps = ((duration / cfg.dt) - 1e-9).ceil().max(0.0) as u32;
    let output_every = (cfg.output_interval / cfg.dt).round().max(1.0) as u32;

    let points = match &cfg.release_file {
        Some(p) => release::read_csv(p, &mesh, start)?,
        None => release::generate(cfg, &mesh, start)?,
    };
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
    let params = step_params(cfg);
    // The GPU kernel handles one field interval per step: every field time inside the run must
    // fall on a step boundary.
    let straddles = reader
        .times
        .iter()
        .map(|t| t - start)
        .filter(|t| *t > 0.0 && *t < duration)
        .any(|t| {
            let r = t / cfg.dt;
            (r - r.round()).abs() > 1e-9
        });
    Ok(Prepared {
        reader,
        mesh,
        start,
        duration,
        n_steps,
        output_every,
        particles: released.particles,
        outside: released.outside,
        params,
        threads,
        pool: std::sync::Arc::new(pool),
        wall,
        straddles,
    })
}

/// The trajectory file of a run.
pub fn create_writer(cfg: &RunConfig, prep: &Prepared) -> Result<TrajectoryWriter> {
    TrajectoryWriter::create(
        &cfg.output,
        prep.n(),
        prep.start,
        prep.mesh.projection,
        cfg.happiness.is_some(),
        &config_attributes(cfg),
    )
}

pub fn progress_bar(quiet: bool, n_steps: u32) -> ProgressBar {
    if quiet || n_steps < 2 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(n_steps as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb
}

/// Whether the run stops at this step's tally for the happiness condition.
pub fn happy_stop(cfg: &RunConfig, tally: &Tally) -> bool {
    match cfg.stop_when_happy_share {
        Some(share) if tally.active > 0 => tally.happy as f64 >= share * tally.active as f64,
        _ => false,
    }
}

/// The happiness verdict at the end of a run.
pub fn closing(cfg: &RunConfig, last: &Tally, ecstatic: bool, quiet: bool) {
    if ecstatic {
        println!("All particles are ecstatic!");
    }
    if cfg.happiness.is_some() {
        say(
            quiet,
            format!(
                "happiest particle: {} with happiness {:.3}; {} of {} active are happy",
                last.happiest, last.max_happiness, last.happy, last.active
            ),
        );
    }
}

/// Runs `cfg`: on the embedded fabric (in-process node agents over zenoh on loopback) or a
/// named cluster, or in this process alone when asked (`--direct`) or when the GPU steps it.
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<RunReport> {
    let prep = prepare(cfg, opts)?;
    #[cfg(feature = "gpu")]
    let unsupported = shoal_node::gpu::unsupported(&prep.mesh, &prep.params, cfg.happiness.is_some())
        .or_else(|| prep.straddles.then(|| format!("the time step ({} s) does not divide the field interval, so steps straddle field times", cfg.dt)));
    #[cfg(not(feature = "gpu"))]
    let unsupported = prep.straddles.then(String::new);
    let device = opts.device.unwrap_or(cfg.device);
    let named = opts.cluster.is_some() || cfg.cluster.name.is_some();
    if named && device == shoal_node::Device::Gpu {
        bail!("run.device = \"gpu\" steps in this process; a named cluster's nodes step on their own CPUs");
    }
    let choice = if named {
        shoal_node::choose_device(shoal_node::Device::Cpu, None)
    } else {
        shoal_node::choose_device(device, unsupported)
    }
    .map_err(|e| anyhow!("run.device: {e}"))?;
    say(opts.quiet, format!("device: {}", choice.reason));
    #[cfg(feature = "gpu")]
    let on_gpu = choice.gpu.is_some();
    #[cfg(not(feature = "gpu"))]
    let on_gpu = false;
    if opts.direct || on_gpu {
        run_direct(cfg, opts, prep, choice)
    } else {
        crate::fabric::run(cfg, opts, prep, choice.reason)
    }
}

/// The one-machine path: one partition stepped in this process.
fn run_direct(
    cfg: &RunConfig,
    opts: &RunOptions,
    prep: Prepared,
    choice: shoal_node::Choice,
) -> Result<RunReport> {
    let say = |s: String| say(opts.quiet, s);
    let Prepared {
        reader,
        mesh,
        start,
        duration,
        n_steps,
        output_every,
        particles,
        outside,
        params,
        threads,
        pool,
        wall,
        ..
    } = prep;
    let n = particles.len();
    let mut partition = Partition::new(particles);
    partition.sort_every = cfg.sort_every;
    let mut writer = TrajectoryWriter::create(
        &cfg.output,
        n,
        start,
        mesh.projection,
        cfg.happiness.is_some(),
        &config_attributes(cfg),
    )?;
    let mut fields = FieldWindow::new(start);
    let mut kernel = Duration::ZERO;
    let mut output = Duration::ZERO;
    let progress = progress_bar(opts.quiet, n_steps);
    say(format!(
        "run: {n} particles, {n_steps} steps of {} s from {}, {threads} threads",
        cfg.dt,
        format_datetime(start)
    ));

    let mut last = Tally::empty();
    let mut ecstatic = false;
    let mut steps_done = 0;
    pool.install(|| -> Result<()> {
        fields.cover(&reader, &mesh, 0.0, cfg.dt.min(duration.max(0.0)))?;
        partition.release(&mesh, fields.window(), 0.0);
        let mut worker = match &choice {
            #[cfg(feature = "gpu")]
            shoal_node::Choice { gpu: Some(ctx), .. } => Worker::Gpu(
                shoal_node::gpu::GpuPartition::new(
                    ctx.clone(),
                    &mesh,
                    std::mem::take(&mut partition.particles),
                )
                .map_err(|e| anyhow!("GPU setup: {e}"))?,
            ),
            _ => Worker::Cpu(std::mem::replace(
                &mut partition,
                Partition::new(Default::default()),
            )),
        };
        let o = Instant::now();
        writer.write(0.0, &[worker.snapshot(&mesh, fields.window(), 0.0)?])?;
        output += o.elapsed();
        for s in 0..n_steps {
            let t = s as f64 * cfg.dt;
            let t1 = ((s + 1) as f64 * cfg.dt).min(duration);
            let mut p = params;
            p.dt = t1 - t;
            fields.cover(&reader, &mesh, t, t1)?;
            let k = Instant::now();
            let tally = worker.step(&mesh, fields.window(), &p, t, s)?;
            kernel += k.elapsed();
            if tally.total() != n as u64 {
                bail!(
                    "particle count mismatch at step {s}: {} accounted for, {n} released",
                    tally.total()
                );
            }
            last = tally;
            steps_done = s + 1;
            let happy_stop = happy_stop(cfg, &tally);
            if (s + 1) % output_every == 0 || s + 1 == n_steps || happy_stop {
                let o = Instant::now();
                writer.write(t1, &[worker.snapshot(&mesh, fields.window(), t1)?])?;
                output += o.elapsed();
            }
            if progress.length().is_some() {
                let rate = (steps_done as f64 * n as f64) / wall.elapsed().as_secs_f64().max(1e-9);
                progress.set_message(format!(
                    "{:.2} M particle-steps/s, {} active",
                    rate / 1e6,
                    tally.active
                ));
                progress.inc(1);
            }
            if happy_stop {
                ecstatic = true;
                break;
            }
        }
        Ok(())
    })?;
    progress.finish_and_clear();
    writer.close()?;
    closing(cfg, &last, ecstatic, opts.quiet);
    let report = RunReport {
        n_particles: n,
        steps: steps_done,
        particle_steps: steps_done as u64 * n as u64,
        wall: wall.elapsed(),
        kernel,
        fields: fields.read_time,
        output,
        last,
        ecstatic,
        outside,
        threads,
        device: choice.reason.clone(),
        nodes: 0,
        partitions: 1,
        halo_served: 0,
        dropped: 0,
    };
    say(format!(
        "done: {} steps in {:.2} s ({:.2} M particle-steps/s overall, kernel {:.2} s, fields {:.2} s, output {:.2} s); active {}, exited {}, bad field {}, outside mesh {}; wrote {}",
        report.steps,
        report.wall.as_secs_f64(),
        report.particle_steps as f64 / report.wall.as_secs_f64() / 1e6,
        kernel.as_secs_f64(),
        report.fields.as_secs_f64(),
        output.as_secs_f64(),
        last.active,
        last.exited,
        last.bad_field,
        last.outside_mesh,
        cfg.output.display()
    ));
    Ok(report)
}
