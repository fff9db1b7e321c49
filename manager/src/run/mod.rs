//! A run, from configuration to trajectory file: [`prepare`] reads and places everything, the one
//! [`schedule`] steps, writes, checkpoints and recovers, and a [`schedule::Stepper`] moves the
//! particles: [`direct`] in this process (CPU or GPU), [`fabric`] on node agents over zenoh
//! (in-process ones for the embedded default, or a named cluster's), found by the
//! station's [`membership`](crate::station::membership) and split by [`partition`].

pub mod direct;
pub mod fabric;
pub mod partition;
pub mod prepare;
pub mod schedule;
pub mod stop;

pub use prepare::{prepare, step_params, FieldWindow, Prepared};

use crate::input::config::RunConfig;
use crate::output::checkpoint::{run_hash, CheckpointFile, Saved};
use crate::output::TrajectoryWriter;
use crate::station::status;
use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressStyle};
use shoal_common::kernel::Tally;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// Go on from the checkpoint beside the output file.
    pub resume: bool,
    /// Serve the station's status page here while the run goes (`--status`).
    pub status: Option<std::net::SocketAddr>,
    /// Show the run on this board instead (the job server's, which outlives its runs).
    pub board: Option<Arc<status::Board>>,
    /// Where each in-process node steps (`--node-device`), the last for the rest.
    pub node_devices: Vec<shoal_node::Device>,
    /// Keep the checkpoint of the finished run (the job server removes it once the job is
    /// recorded as done, so that a cut between the two never runs a finished job again).
    pub keep_checkpoint: bool,
}

#[derive(Clone, Debug)]
pub struct RunReport {
    pub n_particles: usize,
    /// The last step done (the run's step count, or fewer after a happiness stop).
    pub steps: u32,
    /// Particle-steps done by this process (a resumed run counts from its checkpoint).
    pub particle_steps: u64,
    pub wall: Duration,
    pub kernel: Duration,
    pub fields: Duration,
    pub output: Duration,
    pub checkpoint: Duration,
    pub last: Tally,
    pub ecstatic: bool,
    pub outside: usize,
    pub threads: usize,
    /// The device used and why.
    pub device: String,
    /// Node agents and mesh partitions at the end (0 nodes on the one-machine path).
    pub nodes: usize,
    pub partitions: usize,
    /// Element values served on demand beyond the halos.
    pub halo_served: u64,
    /// Messages dropped as foreign or malformed, by the manager and in-process nodes.
    pub dropped: u64,
    /// Times the run rolled back to a checkpoint after losing a node, and how long each took
    /// from the fault's detection to stepping again.
    pub recoveries: u32,
    pub recovery_times: Vec<Duration>,
    /// What each recovery recovered from, as the warning said it.
    pub faults: Vec<String>,
    /// Each node's peak resident memory (`VmHWM`, KiB) as it reported it; in-process nodes
    /// share the manager's process and report its peak.
    pub node_peak_rss_kib: Vec<(String, u64)>,
    /// Where each partition stepped on the fabric, as its node said: (partition, node,
    /// device); empty on the one-machine path.
    pub placement: Vec<(u32, String, String)>,
    /// Re-partitions by where the particles were: the imbalance that made each (the busiest
    /// node's stepping time over the nodes' mean since the last state), and the imbalance over
    /// the stretch after each, where one was measured.
    pub rebalances: Vec<f64>,
    pub imbalance_after: Vec<f64>,
    /// The share of the work each node was given at the last re-partition, in proportion to
    /// the speed measured on it (particle-steps per second of stepping); empty without one.
    pub node_shares: Vec<(String, f64)>,
    /// Re-partitions the load called for but left out: by the last beginning's cost, a new
    /// cut would have cost more time than it saved.
    pub rebalances_unpaid: u32,
}

/// The status page of a run: its board, its server and the thread that keeps this machine's
/// card fresh, all stopped when the run ends (or fails).
struct StatusPage {
    board: Arc<status::Board>,
    /// `None` on the job server's board, which serves itself.
    _server: Option<status::Server>,
    stop: Arc<AtomicBool>,
    here: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StatusPage {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.here.take() {
            let _ = h.join();
        }
        self.board.end_run();
    }
}

pub fn say(quiet: bool, s: String) {
    if !quiet {
        eprintln!("{s}");
    }
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
/// With `resume`, goes on from the checkpoint beside the output file.
pub fn run(cfg: &RunConfig, opts: &RunOptions) -> Result<RunReport> {
    let prep = prepare(cfg, opts)?;
    #[cfg(feature = "gpu")]
    let shortest = prep
        .reader
        .times
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.min(d))));
    let unsupported = shoal_node::gpu::unsupported(&prep.params, shortest);
    #[cfg(not(feature = "gpu"))]
    let unsupported: Option<String> = None;
    let device = opts.device.unwrap_or(cfg.device);
    let named = opts.cluster.is_some() || cfg.cluster.name.is_some();
    // A named cluster's nodes choose for themselves, with the run's setting (`RunSpec.device`).
    let choice = if named {
        Ok(shoal_node::Choice::elsewhere(
            "each node chooses, with run.device and its own --device",
        ))
    } else {
        shoal_node::choose_device(device, unsupported)
    }
    .map_err(|e| anyhow!("run.device: {e}"))?;
    say(opts.quiet, format!("device: {}", choice.reason));
    #[cfg(feature = "gpu")]
    let on_gpu = choice.gpu.is_some();
    #[cfg(not(feature = "gpu"))]
    let on_gpu = false;

    let n = prep.n();
    let file = CheckpointFile::beside(&cfg.output, run_hash(cfg, &prep.reader)?);
    let hashes = prepare::input_hashes(cfg);
    let (start, mut writer) = if opts.resume {
        let saved = file.load(n)?;
        say(
            opts.quiet,
            format!(
                "resume: from the checkpoint after step {} of {} ({} output records) in {}",
                saved.step,
                prep.n_steps,
                saved.records,
                file.path().display()
            ),
        );
        let mut w = TrajectoryWriter::reopen(
            &cfg.output,
            n,
            prep.reader.geo.clone(),
            crate::output::Columns {
                happiness: cfg.happiness.is_some(),
                sampled: cfg.sampled,
            },
            saved.records as usize,
        )?;
        if let Some(spec) = &cfg.density {
            w.attach_density(crate::output::density::DensityWriter::reopen(
                spec,
                &prep.mesh,
                n,
                prep.origins.as_ref(),
                saved.records as usize,
            )?);
        }
        if let Some(f) = prepare::fates(cfg, &prep) {
            w.attach_fates(f, false)?;
        }
        (saved, w)
    } else {
        let saved = Saved {
            step: 0,
            records: 0,
            particles: prep.particles.clone(),
        };
        (saved, prepare::create_writer(cfg, &prep)?)
    };
    let from = start.step;
    say(
        opts.quiet,
        format!(
            "run: {n} particles, {} steps of {} s from {}, {} threads",
            prep.n_steps,
            cfg.dt,
            crate::input::timefmt::format_datetime(
                prep.start + shoal_common::kernel::step_time(from, prep.params.dt, prep.duration)
            ),
            prep.threads
        ),
    );
    // The status page: served from before the first step until the run's end.
    let device_words = if named {
        (
            "auto".to_string(),
            "a named cluster's nodes each choose (shoal-node --device, with run.device); \
             the run's log names each partition's device"
                .to_string(),
        )
    } else {
        (
            if on_gpu { "gpu" } else { "cpu" }.to_string(),
            choice.reason.clone(),
        )
    };
    let named_cluster = opts.cluster.clone().or_else(|| cfg.cluster.name.clone());
    let status = match (opts.status, &opts.board) {
        (None, None) => None,
        (addr, given) => {
            // The page of this run alone, or the job server's board.
            let shared = given.clone();
            let painter = crate::output::plot::map::SnapshotPainter::new(
                &prep.mesh,
                prep.reader.geo.clone(),
                640,
            )?;
            let station = named_cluster
                .clone()
                .unwrap_or_else(|| "this machine".to_string());
            let name = cfg
                .output
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            let (board, server) = match (shared, addr) {
                (Some(board), _) => {
                    board.begin_run(name, painter);
                    (board, None)
                }
                (None, addr) => {
                    let board = status::Board::new(&station, Some((name, painter)));
                    let server = addr.map(|a| status::serve(a, board.clone())).transpose()?;
                    // Printed even when quiet: with port 0 the address is known only now.
                    if let Some(server) = &server {
                        eprintln!("status page: http://{}/", server.addr);
                    }
                    (board, server)
                }
            };
            let stop = Arc::new(AtomicBool::new(false));
            // The direct path steps here: this machine is the fleet (in-process nodes are
            // shown by their names, by the fabric stepper).
            let here = (named_cluster.is_none() && (opts.direct || on_gpu)).then(|| {
                let (board, stop, device) = (board.clone(), stop.clone(), device_words.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        board
                            .set_node("this machine", status::NodeCard::here(&device.0, &device.1));
                        for _ in 0..status::REFRESH_S * 10 {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
            });
            Some(StatusPage {
                board,
                _server: server,
                stop,
                here,
            })
        }
    };
    let plan = schedule::Plan {
        board: status.as_ref().map(|s| s.board.clone()),
        origin: prep.start,
        n,
        n_steps: prep.n_steps,
        dt: prep.params.dt,
        duration: prep.duration,
        output_every: prep.output_every,
        checkpoint_every: cfg.checkpoint_every,
        quiet: opts.quiet,
        pool: prep.pool.clone(),
    };
    let mut fields = FieldWindow::new(&prep.reader, &prep.mesh, prep.start, cfg.sampled);
    let mut io = schedule::Io {
        fields: &mut fields,
        writer: &mut writer,
        checkpoints: &file,
    };
    let mut report = if opts.direct || on_gpu {
        let mut stepper = direct::Direct::new(&prep, cfg.sort_every, &choice);
        let out = schedule::drive(cfg, &plan, &mut stepper, &mut io, start, prep.wall)?;
        schedule::report(&plan, &out, prep.wall, from)
    } else {
        fabric::run(cfg, opts, &prep, &plan, &mut io, start, &device_words)?
    };
    drop(status);
    let hashes = hashes
        .join()
        .map_err(|_| anyhow!("hashing the input files: the thread panicked"))??;
    writer.set_attribute("shoal_input_sha256", &hashes)?;
    writer.close()?;
    // The run is complete: its checkpoint has nothing left to give.
    if !opts.keep_checkpoint {
        file.remove()?;
    }
    report.fields += fields.read_time;
    report.threads = prep.threads;
    // Where a node chose for itself (a named cluster's, or an in-process one told to use its
    // GPU), the nodes' words; otherwise the manager's choice, which its nodes followed.
    let chosen_elsewhere = report
        .placement
        .iter()
        .any(|(_, _, d)| d.starts_with("gpu"));
    report.device = if named || chosen_elsewhere {
        format!("partitions {}", fabric::placement_words(&report.placement))
    } else {
        choice.reason.clone()
    };
    report.outside = prep.outside;
    let last = report.last;
    say(
        opts.quiet,
        format!(
            "done: {} steps in {:.2} s ({:.2} M particle-steps/s overall; fields {:.2} s, output {:.2} s, checkpoints {:.2} s); active {}, exited {}, bad field {}, outside mesh {}, settled {}, dead {}, stranded {}; {} nodes, {} partitions, {} halo values fetched on demand, {} recoveries, {} foreign or malformed messages dropped; wrote {}",
            report.steps,
            report.wall.as_secs_f64(),
            report.particle_steps as f64 / report.wall.as_secs_f64() / 1e6,
            report.fields.as_secs_f64(),
            report.output.as_secs_f64(),
            report.checkpoint.as_secs_f64(),
            last.active,
            last.exited,
            last.bad_field,
            last.outside_mesh,
            last.settled,
            last.dead,
            last.stranded,
            report.nodes,
            report.partitions,
            report.halo_served,
            report.recoveries,
            report.dropped,
            cfg.output.display()
        ),
    );
    if !report.rebalances.is_empty() {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let after = match report.imbalance_after.is_empty() {
            true => String::new(),
            false => format!(", {:.2} on average after", mean(&report.imbalance_after)),
        };
        say(
            opts.quiet,
            format!(
                "re-partitioned {} times where the particles were: the busiest node stepped {:.2} times the nodes' mean on average before{after}; last shares by measured speed: {}",
                report.rebalances.len(),
                mean(&report.rebalances),
                report
                    .node_shares
                    .iter()
                    .map(|(n, s)| format!("{n} {:.0} %", 100.0 * s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    if report.rebalances_unpaid > 0 {
        say(
            opts.quiet,
            format!(
                "not re-partitioned {} times the load called for it: each new cut would have cost more than it saved",
                report.rebalances_unpaid
            ),
        );
    }
    if !report.node_peak_rss_kib.is_empty() {
        let peaks: Vec<String> = report
            .node_peak_rss_kib
            .iter()
            .map(|(n, k)| format!("{n} {:.0} MiB", *k as f64 / 1024.0))
            .collect();
        say(
            opts.quiet,
            format!("nodes' peak resident memory: {}", peaks.join(", ")),
        );
    }
    Ok(report)
}
