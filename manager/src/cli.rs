//! The command line: argument parsing and dispatch, shared by the `shoal` binary and the tests.

use crate::input::{config, timefmt};
use crate::output::plot;
use crate::run::{self, RunOptions};
use crate::station::fleet::{self, FleetOptions};
use crate::tools::synth::{self, Flow, SynthOptions, TimeStyle};
use crate::tools::{bench, demo, inspect, jobs};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "shoal",
    version = shoal_node::VERSION,
    about = "Lagrangian particle tracking on FVCOM output, from one laptop to a fleet of Pis"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The kernel variant that steps particles in this process: scalar (the reference), simd
    /// (the widest this CPU runs), sse2, avx2 or neon; default scalar. Every variant writes the
    /// same bits. Node processes take theirs from SHOAL_KERNEL.
    #[arg(long, global = true, value_name = "KERNEL", env = "SHOAL_KERNEL")]
    kernel: Option<String>,
}

/// Where the job server keeps its queue.
#[derive(clap::Args)]
struct SpoolArg {
    /// The job spool directory (default: $SHOAL_SPOOL).
    #[arg(long, value_name = "DIR", env = "SHOAL_SPOOL")]
    spool: Option<PathBuf>,
}

impl SpoolArg {
    fn open(&self) -> Result<jobs::Spool> {
        match &self.spool {
            Some(dir) => jobs::Spool::open(dir),
            None => anyhow::bail!(
                "no job spool: give --spool DIR or set SHOAL_SPOOL (or --cluster NAME for the \
                 job server of a cluster)"
            ),
        }
    }
}

/// Where a cluster's job server is, for `submit`, `jobs`, `cancel` and `fetch` from another host.
#[derive(clap::Args)]
struct RemoteArgs {
    /// Ask the job server (`shoal serve --cluster NAME`) of this cluster, over its fabric,
    /// instead of a spool on this machine (a spool given too, or $SHOAL_SPOOL, is not used).
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// This host's zenoh configuration for the cluster (its certificate, the server's address).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    zenoh_config: Option<PathBuf>,
    /// The server's endpoint, e.g. quic/10.0.0.1:7448 (repeatable).
    #[arg(long, value_name = "ENDPOINT", requires = "cluster")]
    connect: Vec<String>,
    /// Seconds to wait for the server to answer.
    #[arg(long, default_value_t = 30.0, requires = "cluster")]
    wait: f64,
}

/// Checks that a `--zenoh-config` file parses, naming it when it does not.
fn check_zenoh_config(file: &Option<PathBuf>) -> Result<()> {
    match file {
        Some(p) => shoal_node::net::check_config_file(p)
            .with_context(|| format!("--zenoh-config {}", p.display())),
        None => Ok(()),
    }
}

/// Where a job command acts: a spool here, or a cluster's job server.
enum Queue {
    Here(jobs::Spool),
    There(jobs::remote::Remote),
}

fn queue(spool: &SpoolArg, remote: RemoteArgs) -> Result<Queue> {
    let Some(cluster) = remote.cluster else {
        return Ok(Queue::Here(spool.open()?));
    };
    anyhow::ensure!(
        remote.wait.is_finite() && remote.wait >= 0.0,
        "--wait must be a number of seconds"
    );
    check_zenoh_config(&remote.zenoh_config)?;
    Ok(Queue::There(jobs::remote::Remote::open(
        &jobs::remote::RemoteOptions {
            cluster,
            zenoh_config: remote.zenoh_config,
            connect: remote.connect,
            wait: std::time::Duration::from_secs_f64(remote.wait),
        },
    )?))
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the configuration in RUN.toml.
    Run {
        config: PathBuf,
        /// No progress bar or summaries, only warnings and errors.
        #[arg(long)]
        quiet: bool,
        /// Worker threads (overrides run.threads).
        #[arg(long)]
        threads: Option<usize>,
        /// auto, cpu or gpu (overrides run.device); a named cluster's nodes combine it with
        /// their own `shoal-node --device`.
        #[arg(long)]
        device: Option<shoal_node::Device>,
        /// Where the in-process nodes step, one word each (auto, cpu or gpu), the last for the
        /// rest: `--nodes 2 --node-device gpu,cpu` steps one on the GPU and one on the cores.
        #[arg(
            long,
            value_name = "LIST",
            value_delimiter = ',',
            conflicts_with = "cluster"
        )]
        node_device: Vec<shoal_node::Device>,
        /// Use the running `shoal-node --cluster NAME` agents (overrides cluster.name).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// In-process node agents, or the nodes to wait for (overrides cluster.nodes).
        #[arg(long)]
        nodes: Option<usize>,
        /// Step in this process alone, without the fabric (the one-machine path).
        #[arg(long, conflicts_with = "cluster")]
        direct: bool,
        /// Go on from the checkpoint beside the output file (`<output>.checkpoint`) after the
        /// manager was stopped or lost, with whatever nodes there are now.
        #[arg(long)]
        resume: bool,
        /// Serve the station's read-only status page at this address while the run goes,
        /// e.g. 0.0.0.0:8080 for the LAN.
        #[arg(long, value_name = "ADDR")]
        status: Option<std::net::SocketAddr>,
    },
    /// Serve the station's read-only status page for the fleet alone: every node's
    /// architecture, cores, temperature, throttling, memory and device, refreshed.
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Where the page is served, e.g. 0.0.0.0:8080 for the LAN.
        #[arg(long, value_name = "ADDR")]
        serve: std::net::SocketAddr,
        /// Stop after this many seconds (default: serve until stopped).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Write synthetic FVCOM output with an analytic flow.
    Synth {
        #[arg(long, value_enum, default_value = "rotation")]
        flow: Flow,
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 40)]
        nx: usize,
        #[arg(long, default_value_t = 40)]
        ny: usize,
        /// Element size, metres.
        #[arg(long, default_value_t = 500.0)]
        dx: f64,
        /// Interior node jitter as a fraction of dx.
        #[arg(long, default_value_t = 0.2)]
        jitter: f64,
        /// South-west corner "x,y" in metres.
        #[arg(long, default_value = "400000,4500000")]
        offset: String,
        #[arg(long, default_value_t = 10)]
        layers: usize,
        #[arg(long, default_value_t = 20.0)]
        depth: f64,
        /// First time, e.g. 2024-05-23T00:00:00.
        #[arg(long, default_value = "2024-05-23T00:00:00")]
        start: String,
        #[arg(long, default_value = "24h")]
        duration: String,
        #[arg(long, default_value = "1h")]
        interval: String,
        /// Flow speed U, m/s (tidal, shear, uniform).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Rotation or tidal period.
        #[arg(long, default_value = "12h")]
        period: String,
        /// Write 0-based nv/nbe instead of FVCOM's 1-based.
        #[arg(long)]
        zero_based: bool,
        #[arg(long)]
        no_nbe: bool,
        /// Write an nbe that disagrees with nv.
        #[arg(long)]
        corrupt_nbe: bool,
        /// Write lon/lat around "lon,lat" (x/y zero) instead of x/y.
        #[arg(long)]
        spherical: Option<String>,
        /// Depth-averaged ua/va only.
        #[arg(long)]
        two_d: bool,
        /// A surface-only file as oil-spill and search tools publish them: 2-D u/v with a
        /// _FillValue of 999, and no h, sigma, zeta or layered fields. With --duration 0 the
        /// file has a single time record (a steady flow).
        #[arg(long)]
        surface_only: bool,
        /// Write GNOME's boundary table `bnd`, the east side open water.
        #[arg(long)]
        bnd: bool,
        /// FVCOM's `CoordinateProjection` attribute, e.g. "proj=utm +zone=19 +datum=WGS84"
        /// (the default offset is UTM-sized).
        #[arg(long)]
        projection: Option<String>,
        #[arg(long)]
        no_ww: bool,
        #[arg(long)]
        no_temp: bool,
        /// Write a parabolic kh profile.
        #[arg(long)]
        kh: bool,
        /// FVCOM's generalized sigma: layers bunched towards the surface, more so eastward, so
        /// that each node's layer depths differ.
        #[arg(long)]
        general_sigma: bool,
        /// Write salinity (rising eastward from 20 to 35).
        #[arg(long)]
        salinity: bool,
        /// A drying tidal flat: the bed rises eastward above the low-tide line, the surface
        /// rises and falls by `--tide` metres, and `wet_cells`/`wet_nodes` say what is dry.
        #[arg(long)]
        drying: bool,
        /// Tidal amplitude of the drying flat's surface, metres.
        #[arg(long, default_value_t = 2.0)]
        tide: f64,
        #[arg(long, value_enum, default_value = "all")]
        time_style: TimeStyle,
        /// Write FVCOM's a1u/a2u interpolation coefficients.
        #[arg(long)]
        a1u: bool,
        /// Also write NAME_obc.dat naming the east side as open boundary.
        #[arg(long)]
        obc_east: Option<PathBuf>,
        /// UGRID as tile and data servers publish FVCOM output: nv(nele, 3) with start_index,
        /// and a mesh_topology variable.
        #[arg(long)]
        ugrid: bool,
        /// Leave siglev out (it follows from siglay, FVCOM's mid-levels).
        #[arg(long)]
        no_siglev: bool,
        /// Write time in these CF units, e.g. "hours since 1858-11-17 00:00:00" (f64; i64 with
        /// --time-int64) instead of FVCOM's f32 days.
        #[arg(long)]
        time_units: Option<String>,
        #[arg(long, requires = "time_units")]
        time_int64: bool,
        /// Round u, v, temp and zeta to this many significant bits, as netCDF's BitRound
        /// quantization writes them (with its attribute).
        #[arg(long, value_name = "BITS")]
        quantize: Option<u32>,
        /// Write lon/lat around "lon,lat" beside the Cartesian x/y.
        #[arg(long, value_name = "LON,LAT")]
        lonlat_too: Option<String>,
        /// Slivers in every fourth square each way: triangles with this share of their area
        /// (0.01 for 1 %), and very obtuse neighbours.
        #[arg(long, value_name = "RATIO")]
        slivers: Option<f64>,
        /// Land: a rectangle of grid squares "IX,JY,W,H" with no water (an island, a headland
        /// from the edge, a channel's banks); repeat for more.
        #[arg(long, value_name = "IX,JY,W,H")]
        land: Vec<String>,
        /// Where the tidal, sheared and uniform flows go, degrees anticlockwise from east.
        #[arg(long, default_value_t = 0.0)]
        heading: f64,
    },
    /// Summarise a FVCOM file: mesh, times, variables, what is missing.
    Inspect { files: Vec<PathBuf> },
    /// Draw a trajectory file as a map (PNG, or SVG for a name ending in .svg); or a density
    /// map or connectivity matrix, whichever the file holds.
    Plot {
        output: PathBuf,
        /// The picture to write: .png or .svg.
        #[arg(short = 'o', long = "out", alias = "png")]
        image: PathBuf,
        #[command(flatten)]
        map: MapArgs,
        /// Positions at this time instead of tracks: a date and time (2024-01-01T06:00) or a
        /// duration after the first record (6h).
        #[arg(long)]
        time: Option<String>,
    },
    /// Draw a trajectory file as an animated GIF: a frame per record, with the time.
    Animate {
        output: PathBuf,
        /// The GIF to write.
        #[arg(short = 'o', long = "out")]
        gif: PathBuf,
        #[command(flatten)]
        map: MapArgs,
        /// At most this many frames (records are skipped evenly beyond it).
        #[arg(long, default_value_t = 120)]
        frames: usize,
        /// Frames per second.
        #[arg(long, default_value_t = 8.0)]
        fps: f64,
    },
    /// Run a complete example on a generated mesh; writes NetCDF and PNG.
    Demo {
        #[arg(long, default_value = "shoal-demo")]
        dir: PathBuf,
        #[arg(long)]
        quiet: bool,
        /// A larval dispersal study instead: two spawning sites, three reefs, migration,
        /// mortality and settlement; writes the connectivity matrix and its heat map.
        #[arg(long)]
        larvae: bool,
    },
    /// Show how a run's mesh and release would split over N nodes (METIS), with halos.
    Partition {
        config: PathBuf,
        #[arg(long, default_value_t = 4)]
        parts: usize,
        /// Halo rings (default: max speed x dt / smallest edge, plus one).
        #[arg(long)]
        rings: Option<usize>,
    },
    /// Measure tracking speed and memory (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Check every node on the fabric: architecture, version, cores, memory, GPU self-test,
    /// temperature and throttling, clock offset, and how each node authenticated (the link's
    /// protocol and the name on its certificate). Exits 1 when a problem is flagged.
    Doctor {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Ask this node by name, whether or not its token reached this manager (repeatable):
        /// for a node missing from the census. Nodes not named are not examined.
        #[arg(long = "node", value_name = "NAME")]
        names: Vec<String>,
        /// Also list every link of every node: its peer, protocol and certificate name (a
        /// revoked host that still connects shows here).
        #[arg(long)]
        links: bool,
    },
    /// Estimate pi by Monte Carlo over every node: the cluster's smoke test. Reproducible: the
    /// same samples and seed give the same estimate on any cluster.
    Pi {
        /// Samples in all (e.g. 1000000000 or 1e9).
        #[arg(long, default_value = "1e8", value_parser = parse_count)]
        samples: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Run the queued jobs of a spool one after another (the station's job server): a job a
    /// power cut interrupted resumes first; SIGTERM or SIGINT stops the running job at a step
    /// boundary, to resume at the next start.
    Serve {
        #[command(flatten)]
        spool: SpoolArg,
        /// Run the jobs on this cluster's running nodes (default: in this process's nodes).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        /// In-process nodes, or the nodes to wait for.
        #[arg(long)]
        nodes: Option<usize>,
        /// Step each job in this process alone.
        #[arg(long, conflicts_with = "cluster")]
        direct: bool,
        /// Stop once no job is queued.
        #[arg(long)]
        until_empty: bool,
        /// Only warnings and errors from the runs.
        #[arg(long)]
        quiet: bool,
        /// The cluster's zenoh configuration (certificates, access list): for the runs, in
        /// place of a run file's `cluster.zenoh_config`, and for jobs from other hosts.
        #[arg(long, value_name = "FILE", requires = "cluster")]
        zenoh_config: Option<PathBuf>,
        /// Where other hosts reach this server, e.g. quic/0.0.0.0:7448 (repeatable).
        #[arg(long, value_name = "ENDPOINT", requires = "cluster")]
        listen: Vec<String>,
        /// Serve the station's status page, with the queue, at this address.
        #[arg(long, value_name = "ADDR")]
        status: Option<std::net::SocketAddr>,
        /// The most megabytes of input files one job from another host may bring.
        #[arg(long, default_value_t = 4096.0)]
        max_input_mb: f64,
    },
    /// Queue a run file: checked as `shoal run` checks it, refused with the same error, and
    /// queued whole or not at all; in a spool here, or (--cluster) at the cluster's job server
    /// with the input files it does not hold yet.
    Submit {
        config: PathBuf,
        #[command(flatten)]
        spool: SpoolArg,
        #[command(flatten)]
        remote: RemoteArgs,
        /// Say nothing but the job's id.
        #[arg(long)]
        quiet: bool,
    },
    /// List the jobs: queued, running (with its step), done, failed and cancelled.
    Jobs {
        #[command(flatten)]
        spool: SpoolArg,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Cancel a job: at once when queued, at its next step boundary when running.
    Cancel {
        id: String,
        #[command(flatten)]
        spool: SpoolArg,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Copy an ended job's outputs (trajectories, density, connectivity, picture) into a
    /// directory, each checked against its SHA-256.
    Fetch {
        id: String,
        /// Where to put them.
        #[arg(long, value_name = "DIR", default_value = ".")]
        to: PathBuf,
        #[command(flatten)]
        spool: SpoolArg,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Relay TCP connections through a simulated link (delay, jitter, loss), for benchmarks on
    /// a kernel without netem: `lan` is 0.2 ms each way, `wifi` 3 ± 1 ms with 0.1 % of segments
    /// lost (each holds its stream up by a retransmission). Runs until stopped.
    #[command(hide = true)]
    Link {
        /// Where to listen, e.g. 10.27.0.11:7447.
        #[arg(long)]
        listen: String,
        /// Where each connection is relayed to, e.g. 127.0.0.1:7448.
        #[arg(long)]
        to: String,
        /// lan, wifi or none.
        #[arg(long, default_value = "lan")]
        profile: String,
        /// One-way delay in milliseconds (overrides the profile's).
        #[arg(long = "delay-ms")]
        delay_ms: Option<f64>,
        /// Jitter in milliseconds, the delay drawn within ± this (overrides the profile's).
        #[arg(long = "jitter-ms")]
        jitter_ms: Option<f64>,
        /// The chance a segment is lost (overrides the profile's).
        #[arg(long)]
        loss: Option<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// How a map is drawn (`shoal plot`, `shoal animate`).
#[derive(clap::Args, Debug)]
pub struct MapArgs {
    /// The FVCOM file with the mesh (default: the run's first input).
    #[arg(long)]
    mesh: Option<PathBuf>,
    /// Pixels on the map's longer side.
    #[arg(long, default_value_t = 1000)]
    size: u32,
    /// What the tracks are coloured by (default: origin where there are several release
    /// sites, age otherwise).
    #[arg(long = "colour-by", alias = "color-by", value_enum)]
    colour_by: Option<plot::ColourBy>,
    /// The map's extent, west,east,south,north: degrees on geographic meshes, km on Cartesian
    /// ones (default: where the particles went).
    #[arg(long, allow_hyphen_values = true)]
    extent: Option<String>,
}

impl MapArgs {
    fn options(&self) -> Result<plot::MapOptions> {
        let bad = || anyhow::anyhow!("--extent: give four numbers, west,east,south,north");
        let extent = match &self.extent {
            None => None,
            Some(s) => {
                let v: Vec<f64> = s
                    .split(',')
                    .map(|a| a.trim().parse::<f64>().map_err(|_| bad()))
                    .collect::<Result<_>>()?;
                anyhow::ensure!(v.len() == 4, bad());
                Some([v[0], v[1], v[2], v[3]])
            }
        };
        anyhow::ensure!(
            (200..=plot::map::MAX_SIZE).contains(&self.size),
            "--size: {} pixels; give 200 to {}",
            self.size,
            plot::map::MAX_SIZE
        );
        Ok(plot::MapOptions {
            mesh: self.mesh.clone(),
            size: self.size,
            colour_by: self.colour_by,
            extent,
            time: None,
        })
    }
}

/// Where `doctor` and `pi` find their nodes.
#[derive(clap::Args)]
struct FleetArgs {
    /// The running `shoal-node --cluster NAME` agents; without it, in-process nodes.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// In-process nodes (default one per core), or the nodes to wait for (default whoever
    /// joined within --wait).
    #[arg(long)]
    nodes: Option<usize>,
    /// A zenoh JSON5 configuration (endpoints, TLS).
    #[arg(long, value_name = "FILE")]
    zenoh_config: Option<PathBuf>,
    /// An endpoint to connect to, e.g. tcp/10.0.0.2:7447 (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    connect: Vec<String>,
    /// An endpoint to listen on (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    listen: Vec<String>,
    /// Seconds to wait for nodes to join.
    #[arg(long, default_value_t = 5.0)]
    wait: f64,
    /// Worker threads of in-process nodes.
    #[arg(long)]
    threads: Option<usize>,
}

impl FleetArgs {
    fn options(self) -> Result<FleetOptions> {
        check_zenoh_config(&self.zenoh_config)?;
        anyhow::ensure!(
            self.wait.is_finite() && self.wait >= 0.0,
            "--wait must be a number of seconds"
        );
        Ok(FleetOptions {
            cluster: self.cluster,
            nodes: self.nodes,
            zenoh_config: self.zenoh_config,
            connect: self.connect,
            listen: self.listen,
            wait: self.wait,
            threads: self.threads,
            names: Vec::new(),
            links: false,
        })
    }
}

/// A count written out (`1000000`, `1_000_000`) or in scientific notation (`1e9`, `2.5e6`).
fn parse_count(s: &str) -> std::result::Result<u64, String> {
    let t = s.replace('_', "");
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    match t.parse::<f64>() {
        Ok(x) if x >= 0.0 && x.fract() == 0.0 && x < 1.8e19 => Ok(x as u64),
        _ => Err(format!("`{s}` is not a whole number of samples")),
    }
}

fn pair(s: &str, what: &str) -> Result<(f64, f64)> {
    let mut it = s.split(',').map(|v| v.trim().parse::<f64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b)), None) => Ok((a, b)),
        _ => anyhow::bail!("--{what}: expected two numbers `a,b`, found `{s}`"),
    }
}

/// `--land` rectangles "IX,JY,W,H" as the squares they cover.
fn land_squares(rects: &[String]) -> Result<Vec<(usize, usize)>> {
    let mut squares = Vec::new();
    for r in rects {
        let v: Vec<usize> = r
            .split(',')
            .map(|v| v.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|v: &Vec<usize>| v.len() == 4)
            .ok_or_else(|| {
                anyhow::anyhow!("--land: expected `ix,jy,w,h` (whole squares), found `{r}`")
            })?;
        for j in v[1]..v[1] + v[3] {
            for i in v[0]..v[0] + v[2] {
                squares.push((i, j));
            }
        }
    }
    Ok(squares)
}

/// Runs one command line (`args[0]` is the program name).
/// The `shoal` binary: runs the command line. An error becomes one message (its whole context
/// chain) and exit code 1; a run stopped by a signal says where it stopped and how it goes on,
/// and exits with 128 plus the signal.
pub fn main() {
    if let Err(e) = run_cli(std::env::args_os()) {
        if let Some(s) = e.downcast_ref::<run::stop::Stopped>() {
            eprintln!("{s}");
            std::process::exit(s.exit_code());
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

pub fn run_cli<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                print!("{e}");
                return Ok(());
            }
            anyhow::bail!("{}", e.to_string().trim_start_matches("error: ").trim_end());
        }
    };
    if let Some(k) = &cli.kernel {
        let k = shoal_common::simd::Kernel::parse(k.trim())
            .map_err(|e| anyhow::anyhow!("--kernel (or SHOAL_KERNEL): {e}"))?;
        shoal_common::simd::set(k).map_err(|e| anyhow::anyhow!(e))?;
    }
    match cli.command {
        Command::Run {
            config: path,
            quiet,
            threads,
            device,
            cluster,
            nodes,
            direct,
            resume,
            status,
            node_device,
        } => {
            let cfg = config::RunConfig::from_path(&path)?;
            // SIGTERM and SIGINT stop the run at a step boundary, with a checkpoint.
            run::stop::listen();
            let done = run::run(
                &cfg,
                &RunOptions {
                    quiet,
                    threads,
                    device,
                    cluster,
                    nodes,
                    direct,
                    resume,
                    status,
                    node_devices: node_device,
                    keep_checkpoint: false,
                    board: None,
                },
            );
            if let Err(mut e) = done {
                if let Some(s) = e.downcast_mut::<run::stop::Stopped>() {
                    s.run_file = Some(path);
                }
                return Err(e);
            }
        }
        Command::Status {
            fleet: args,
            serve,
            seconds,
        } => {
            fleet::status_page(&args.options()?, serve, seconds)?;
        }
        Command::Synth {
            flow,
            output,
            nx,
            ny,
            dx,
            jitter,
            offset,
            layers,
            depth,
            start,
            duration,
            interval,
            speed,
            period,
            zero_based,
            no_nbe,
            corrupt_nbe,
            spherical,
            two_d,
            surface_only,
            bnd,
            projection,
            no_ww,
            no_temp,
            kh,
            general_sigma,
            salinity,
            drying,
            tide,
            time_style,
            a1u,
            obc_east,
            ugrid,
            no_siglev,
            time_units,
            time_int64,
            quantize,
            lonlat_too,
            slivers,
            land,
            heading,
        } => {
            let (x0, y0) = pair(&offset, "offset")?;
            let o = SynthOptions {
                flow,
                nx,
                ny,
                dx,
                jitter,
                x0,
                y0,
                layers,
                depth,
                start: timefmt::parse_datetime(&start).context("--start")?,
                duration: timefmt::parse_duration(&duration).context("--duration")?,
                interval: timefmt::parse_duration(&interval).context("--interval")?,
                speed,
                period: timefmt::parse_duration(&period).context("--period")?,
                zero_based,
                no_nbe,
                corrupt_nbe,
                spherical: spherical
                    .as_deref()
                    .map(|s| pair(s, "spherical"))
                    .transpose()?,
                two_d,
                surface_only,
                bnd,
                projection,
                no_ww,
                temp: !no_temp,
                kh,
                general_sigma,
                salinity,
                drying: drying.then_some(tide),
                time_style,
                nan_elements: Vec::new(),
                omit_u: false,
                a1u,
                epoch: None,
                ugrid,
                no_siglev,
                time_units,
                time_int64,
                quantize,
                lonlat_too: lonlat_too
                    .as_deref()
                    .map(|s| pair(s, "lonlat-too"))
                    .transpose()?,
                slivers,
                land: land_squares(&land)?,
                heading,
            };
            anyhow::ensure!(o.interval > 0.0, "--interval must be positive");
            anyhow::ensure!(
                o.quantize.is_none_or(|b| (1..=23).contains(&b)),
                "--quantize takes 1 to 23 bits"
            );
            anyhow::ensure!(
                o.slivers.is_none_or(|r| r > 0.0 && r < 1.0),
                "--slivers takes a share of the area between 0 and 1"
            );
            anyhow::ensure!(
                o.land.is_empty() || obc_east.is_none(),
                "--obc-east names the whole rectangle's east side, so it does not go with --land"
            );
            synth::write(&output, &o)?;
            if let Some(p) = obc_east {
                synth::write_obc_east(&p, &o)?;
            }
            println!(
                "wrote {} ({} elements, {} time slices)",
                output.display(),
                o.grid().nv.len(),
                o.n_times()
            );
        }
        Command::Inspect { files } => {
            anyhow::ensure!(!files.is_empty(), "name at least one FVCOM file");
            print!("{}", inspect::inspect(&files)?);
        }
        Command::Plot {
            output,
            image,
            map,
            time,
        } => {
            let opts = plot::MapOptions {
                time,
                ..map.options()?
            };
            plot::plot_with(&output, &image, &opts)?;
            println!("wrote {}", image.display());
        }
        Command::Animate {
            output,
            gif,
            map,
            frames,
            fps,
        } => {
            let n = plot::animate(&output, &gif, &map.options()?, frames, fps)?;
            println!("wrote {} ({n} frames)", gif.display());
        }
        Command::Demo { dir, quiet, larvae } => {
            let opts = RunOptions {
                quiet,
                ..Default::default()
            };
            if larvae {
                demo::demo_larvae(&dir, &opts)?;
            } else {
                demo::demo(&dir, &opts)?;
            }
        }
        Command::Partition {
            config: path,
            parts,
            rings,
        } => {
            let cfg = config::RunConfig::from_path(&path)?;
            print!("{}", crate::run::partition::report(&cfg, parts, rings)?);
        }
        Command::Bench(args) => bench::bench(&args)?,
        Command::Doctor {
            fleet: args,
            names,
            links,
        } => {
            for n in &names {
                anyhow::ensure!(
                    shoal_common::keys::is_chunk(n),
                    "--node `{n}`: a node name takes letters, digits, `-`, `_` and `.` only"
                );
            }
            let options = FleetOptions {
                names,
                links,
                ..args.options()?
            };
            let report = fleet::doctor(&options)?;
            print!("{}", report.render());
            anyhow::ensure!(
                report.problems.is_empty(),
                "the doctor found {} problem(s)",
                report.problems.len()
            );
        }
        Command::Pi {
            samples,
            seed,
            fleet: args,
        } => {
            let report = fleet::pi(&args.options()?, samples, seed)?;
            print!("{}", report.render());
        }
        Command::Serve {
            spool,
            cluster,
            nodes,
            direct,
            until_empty,
            quiet,
            zenoh_config,
            listen,
            status,
            max_input_mb,
        } => {
            anyhow::ensure!(
                max_input_mb.is_finite() && max_input_mb > 0.0,
                "--max-input-mb must be a positive number of megabytes"
            );
            check_zenoh_config(&zenoh_config)?;
            jobs::serve(
                &spool.open()?,
                &jobs::ServeOptions {
                    cluster,
                    nodes,
                    direct,
                    quiet,
                    until_empty,
                    zenoh_config,
                    listen,
                    status,
                    max_input_bytes: (max_input_mb * 1e6) as u64,
                },
            )?;
            if let Some(signal) = run::stop::asked() {
                std::process::exit(128 + signal);
            }
        }
        Command::Submit {
            config,
            spool,
            remote,
            quiet,
        } => {
            let id = match queue(&spool, remote)? {
                Queue::Here(spool) => {
                    let who = std::env::var("USER").unwrap_or_else(|_| "local".into());
                    spool.submit(&config, &who)?
                }
                Queue::There(server) => server.submit(&config, quiet)?,
            };
            println!("job {id} queued");
        }
        Command::Jobs { spool, remote } => match queue(&spool, remote)? {
            Queue::Here(spool) => print!("{}", jobs::table(&spool)?),
            Queue::There(server) => print!("{}", jobs::listing(&server.jobs()?)),
        },
        Command::Cancel { id, spool, remote } => {
            let phase = match queue(&spool, remote)? {
                Queue::Here(spool) => spool.cancel(&id)?,
                Queue::There(server) => server.cancel(&id)?,
            };
            match phase {
                jobs::Phase::Cancelled => println!("job {id} cancelled"),
                _ => println!("job {id} stops at its next step boundary"),
            }
        }
        Command::Fetch {
            id,
            to,
            spool,
            remote,
        } => {
            let files = match queue(&spool, remote)? {
                Queue::Here(spool) => jobs::fetch_local(&spool, &id, &to)?,
                Queue::There(server) => server.fetch(&id, &to)?,
            };
            for f in files {
                println!("{}", f.display());
            }
        }
        Command::Link {
            listen,
            to,
            profile,
            delay_ms,
            jitter_ms,
            loss,
            seed,
        } => {
            let mut p = crate::tools::link::Profile::named(&profile)?;
            let ms = |name: &str, x: f64| {
                anyhow::ensure!(
                    x.is_finite() && (0.0..=10_000.0).contains(&x),
                    "--{name} {x}: milliseconds, 0 to 10000"
                );
                Ok(std::time::Duration::from_secs_f64(x / 1000.0))
            };
            if let Some(d) = delay_ms {
                p.delay = ms("delay-ms", d)?;
            }
            if let Some(j) = jitter_ms {
                p.jitter = ms("jitter-ms", j)?;
            }
            if let Some(l) = loss {
                p.loss = l;
            }
            crate::tools::link::serve(&listen, &to, p, seed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn land_rectangles_become_their_squares_and_a_bad_one_is_named() {
        let squares = land_squares(&["1,2,2,1".into(), "5, 5, 1, 2".into()]).unwrap();
        assert_eq!(squares, vec![(1, 2), (2, 2), (5, 5), (5, 6)]);
        for bad in ["1,2,3", "1,2,3,x", "1,2,3,4,5"] {
            let e = land_squares(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("--land") && e.contains(bad), "{e}");
        }
    }
}
