//! The one schedule every run follows, whoever steps the particles: release, step, check that
//! every particle is accounted for, decide whether to stop, observe and write at output times,
//! checkpoint, and, when a stepper loses a node, roll back to the last checkpoint and go on.
//! Recovery is a state of this loop, not a copy of it: the stepper begins again from the
//! checkpoint's step with the checkpoint's particles, the output is rewound to the records the
//! checkpoint had, and by invariant 1 the steps taken again give the same bits.

use super::prepare::FieldWindow;
use super::{closing, happy_stop, progress_bar, RunReport};
use crate::input::config::RunConfig;
use crate::output::checkpoint::{CheckpointFile, Saved};
use crate::output::TrajectoryWriter;
use anyhow::{bail, Result};
use shoal_common::{Particles, Tally};
use std::time::{Duration, Instant};

/// A stepper lost a node (its token went, one of its partitions failed or panicked, or it fell
/// silent past the manager's patience). The stepper has already struck the node off for the
/// rest of the run; the schedule rolls back and begins again with the others.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeLost(pub String);

/// A run gives up after this many recoveries: a fleet that keeps failing needs a person.
pub const MAX_RECOVERIES: u32 = 16;

/// One way of stepping every particle of a run: in this process, or on the fabric's nodes.
pub trait Stepper {
    /// Takes every particle as it is after step `from` (the release, or a checkpoint), gets
    /// ready to step from there and releases the particles due then. With `gather`, returns
    /// every particle's state after that release.
    fn begin(
        &mut self,
        from: u32,
        particles: &Particles,
        fields: &mut FieldWindow,
        gather: bool,
    ) -> Result<Option<Particles>>;

    /// Advances every particle through step `s` (from `s * dt`); returns the run-wide tally.
    fn step(&mut self, s: u32, fields: &mut FieldWindow) -> Result<Tally>;

    /// Closes step `s`: `stop` ends the run there; with `gather`, returns every particle's
    /// state after it.
    fn end_step(&mut self, s: u32, stop: bool, gather: bool) -> Result<Option<Particles>>;

    /// The first step from `s` (the step just done, not yet closed) that the run can stop
    /// after when asked to stop early (a signal); the stepper steps no further than that. In
    /// this process, `s` itself; on the fabric, the last step a node was allowed to take.
    fn stop_at(&mut self, s: u32) -> u32 {
        s
    }

    /// Whether the work has drifted so far from where the partitions were cut (measured since
    /// the last state) that the stepper wants to begin again from this state, cut anew; asked
    /// after every state the schedule gathered, and answered with the imbalance seen.
    fn rebalance_due(&mut self) -> Option<f64> {
        None
    }

    /// What the progress bar says of the workers after a step (the fabric: nodes at work and
    /// the busiest one's share of the step).
    fn progress_words(&self) -> Option<String> {
        None
    }
}

/// How the schedule runs: the step count and cadences, in steps.
pub struct Plan {
    pub n: usize,
    pub n_steps: u32,
    pub dt: f64,
    pub duration: f64,
    pub output_every: u32,
    /// 0: checkpoints at output times only.
    pub checkpoint_every: u32,
    pub quiet: bool,
    /// The worker threads that observe the particles for the output.
    pub pool: std::sync::Arc<rayon::ThreadPool>,
    /// Unix time of the run clock's zero.
    pub origin: f64,
    /// The status page's board, where one is served (`--status`).
    pub board: Option<std::sync::Arc<crate::station::status::Board>>,
}

impl Plan {
    fn time(&self, s: u32) -> f64 {
        shoal_common::kernel::step_time(s, self.dt, self.duration)
    }
}

/// What the schedule measured, for the run report.
pub struct Outcome {
    pub steps: u32,
    pub last: Tally,
    pub ecstatic: bool,
    pub kernel: Duration,
    pub output: Duration,
    pub checkpoint: Duration,
    pub recoveries: u32,
    /// From each fault's detection to the run stepping again.
    pub recovery_times: Vec<Duration>,
    pub faults: Vec<String>,
    /// The imbalance (the busiest node's stepping time over the nodes' mean) that made each
    /// re-partition.
    pub rebalances: Vec<f64>,
}

/// Where the schedule observes, writes and checkpoints: the field levels it observes through
/// (and the one-machine stepper steps through), the trajectory file and the checkpoint file.
pub struct Io<'a, 'r> {
    pub fields: &'a mut FieldWindow<'r>,
    pub writer: &'a mut TrajectoryWriter,
    pub checkpoints: &'a CheckpointFile,
}

/// Runs `plan` from `start` (the release, never written, or a checkpoint loaded for `--resume`)
/// to the end or the happiness stop, writing and checkpointing through `io`.
pub fn drive(
    cfg: &RunConfig,
    plan: &Plan,
    stepper: &mut dyn Stepper,
    io: &mut Io,
    start: Saved,
    wall: Instant,
) -> Result<Outcome> {
    let Io {
        fields,
        writer,
        checkpoints: file,
    } = io;
    let file: &CheckpointFile = file;
    let mut out = Outcome {
        steps: start.step,
        last: Tally::empty(),
        ecstatic: false,
        kernel: Duration::ZERO,
        output: Duration::ZERO,
        checkpoint: Duration::ZERO,
        recoveries: 0,
        recovery_times: Vec::new(),
        faults: Vec::new(),
        rebalances: Vec::new(),
    };
    let mut ck = start;
    let first = ck.step;
    let progress = progress_bar(plan.quiet, plan.n_steps);
    let mut fault: Option<(anyhow::Error, Instant)> = None;
    // A signal asked the run to stop: which, and after which step (see `Stepper::stop_at`).
    let mut halt_at: Option<(i32, u32)> = None;
    // Each pass of this loop begins (or begins again) from the checkpoint `ck`.
    'run: loop {
        if let Some((e, at)) = fault.take() {
            if e.downcast_ref::<NodeLost>().is_none() {
                if ck.records == 0 {
                    return Err(e);
                }
                return Err(e.context(format!(
                    "the run stopped; its checkpoint after step {} is kept in {} and `shoal run --resume` goes on from it",
                    ck.step,
                    file.path().display()
                )));
            }
            out.recoveries += 1;
            if out.recoveries > MAX_RECOVERIES {
                bail!(
                    "{e:#}; gave up after {MAX_RECOVERIES} recoveries (the checkpoint at step {} is kept in {})",
                    ck.step,
                    file.path().display()
                );
            }
            out.faults.push(format!("{e:#}"));
            eprintln!(
                "warning: {e:#}; rolling back to the checkpoint after step {} ({} records) and going on",
                ck.step, ck.records
            );
            writer.rewind(ck.records as usize);
            progress.set_position(ck.step as u64);
            fault = Some((e, at));
        }
        let fresh = ck.records == 0;
        let began = stepper.begin(ck.step, &ck.particles, fields, fresh);
        let state = match began {
            Ok(s) => s,
            Err(e) => {
                let at = fault.map(|f| f.1).unwrap_or_else(Instant::now);
                fault = Some((e, at));
                continue 'run;
            }
        };
        if let Some((_, at)) = fault.take() {
            let took = at.elapsed();
            // The end of the warning above, said even when quiet.
            eprintln!("recovered in {:.2} s", took.as_secs_f64());
            out.recovery_times.push(took);
        }
        if fresh {
            let Some(state) = state else {
                bail!("the stepper gave no state at the start");
            };
            let t0 = plan.time(ck.step);
            let o = Instant::now();
            let snap = plan.pool.install(|| fields.observe(&state, t0))?;
            if let Some(board) = &plan.board {
                board.snapshot(&snap);
            }
            writer
                .write(t0, std::slice::from_ref(&snap))
                .map_err(|e| not_stored(e, &cfg.output, &ck, file))?;
            out.output += o.elapsed();
            let step = ck.step;
            ck = save(file, step, writer, state, &mut out)
                .map_err(|e| not_stored(e, file.path(), &ck, file))?;
        }
        let mut s = ck.step;
        while s < plan.n_steps {
            crate::fault::maybe_signal(s);
            let k = Instant::now();
            let tally = match stepper.step(s, fields) {
                Ok(t) => t,
                Err(e) => {
                    fault = Some((e, Instant::now()));
                    continue 'run;
                }
            };
            out.kernel += k.elapsed();
            if tally.total() != plan.n as u64 {
                bail!(
                    "particle count mismatch at step {s}: {} accounted for, {} released",
                    tally.total(),
                    plan.n
                );
            }
            let happy = happy_stop(cfg, &tally);
            let stop = s + 1 == plan.n_steps || happy;
            // Asked to stop (SIGTERM, SIGINT): at the first step the stepper can stop after,
            // with a checkpoint there to go on from.
            if halt_at.is_none() {
                halt_at = super::stop::asked().map(|signal| (signal, stepper.stop_at(s)));
            }
            let halt = halt_at
                .filter(|&(_, at)| at == s && !stop)
                .map(|(signal, _)| signal);
            let write = (s + 1).is_multiple_of(plan.output_every) || stop;
            let checkpoint = write
                || halt.is_some()
                || (plan.checkpoint_every > 0 && (s + 1).is_multiple_of(plan.checkpoint_every));
            let state = match stepper.end_step(s, stop || halt.is_some(), write || checkpoint) {
                Ok(st) => st,
                Err(e) => {
                    fault = Some((e, Instant::now()));
                    continue 'run;
                }
            };
            if let Some(state) = state {
                let t1 = plan.time(s + 1);
                if write {
                    let o = Instant::now();
                    let snap = plan.pool.install(|| fields.observe(&state, t1))?;
                    if let Some(board) = &plan.board {
                        board.snapshot(&snap);
                    }
                    writer
                        .write(t1, std::slice::from_ref(&snap))
                        .map_err(|e| not_stored(e, &cfg.output, &ck, file))?;
                    out.output += o.elapsed();
                }
                ck = save(file, s + 1, writer, state, &mut out)
                    .map_err(|e| not_stored(e, file.path(), &ck, file))?;
                if let Some(signal) = halt {
                    progress.finish_and_clear();
                    return Err(super::stop::Stopped {
                        signal,
                        step: s + 1,
                        n_steps: plan.n_steps,
                        when: crate::input::timefmt::format_datetime(
                            plan.origin + plan.time(s + 1),
                        ),
                        checkpoint: file.path().to_path_buf(),
                        run_file: None,
                    }
                    .into());
                }
                // The load has moved with the particles: begin again from this state, the
                // partitions cut where the particles are now (the output cannot tell).
                if !stop {
                    if let Some(imbalance) = stepper.rebalance_due() {
                        if let Err(e) = stepper.begin(ck.step, &ck.particles, fields, false) {
                            fault = Some((e, Instant::now()));
                            continue 'run;
                        }
                        out.rebalances.push(imbalance);
                    }
                }
            }
            out.last = tally;
            out.steps = s + 1;
            let rate =
                (s + 1 - first) as f64 * plan.n as f64 / wall.elapsed().as_secs_f64().max(1e-9);
            if let Some(board) = &plan.board {
                board.step(
                    s + 1,
                    plan.n_steps,
                    plan.n,
                    rate,
                    &tally,
                    plan.origin + plan.time(s + 1),
                );
            }
            if progress.length().is_some() {
                let fleet = stepper
                    .progress_words()
                    .map(|w| format!(", {w}"))
                    .unwrap_or_default();
                progress.set_message(format!(
                    "{:.2} M particle-steps/s, {} active{fleet}",
                    rate / 1e6,
                    tally.active
                ));
                progress.set_position((s + 1) as u64);
            }
            s += 1;
            if happy {
                out.ecstatic = true;
                break;
            }
        }
        break;
    }
    progress.finish_and_clear();
    closing(cfg, &out.last, out.ecstatic, plan.quiet);
    Ok(out)
}

/// A write of the run's files that failed (a full SD card, a read-only remount): the error says
/// which file, the room left where it is, and how the run goes on from its last good checkpoint
/// (`ck`, still whole: a checkpoint is replaced only once its successor is complete).
fn not_stored(
    e: anyhow::Error,
    at: &std::path::Path,
    ck: &Saved,
    file: &CheckpointFile,
) -> anyhow::Error {
    let room = crate::output::room::room_words(at);
    let on = if file.path().is_file() {
        format!(
            "the checkpoint after step {} is kept in {}; once there is room, `shoal run --resume` \
             goes on from it",
            ck.step,
            file.path().display()
        )
    } else {
        "no checkpoint was written yet: once there is room, run it again".to_string()
    };
    anyhow::anyhow!("{e:#}; {room}; {on}")
}

/// Writes the checkpoint after `step` and returns it as the one to roll back to.
fn save(
    file: &CheckpointFile,
    step: u32,
    writer: &TrajectoryWriter,
    particles: Particles,
    out: &mut Outcome,
) -> Result<Saved> {
    let c = Instant::now();
    let saved = Saved {
        step,
        records: writer.snapshots_written() as u32,
        particles,
    };
    file.save(&saved)?;
    out.checkpoint += c.elapsed();
    Ok(saved)
}

/// The report every path gives, from the schedule's outcome.
pub fn report(plan: &Plan, out: &Outcome, wall: Instant, from: u32) -> RunReport {
    RunReport {
        n_particles: plan.n,
        steps: out.steps,
        particle_steps: (out.steps - from.min(out.steps)) as u64 * plan.n as u64,
        wall: wall.elapsed(),
        kernel: out.kernel,
        fields: Duration::ZERO,
        output: out.output,
        checkpoint: out.checkpoint,
        last: out.last,
        ecstatic: out.ecstatic,
        outside: 0,
        threads: 0,
        device: String::new(),
        nodes: 0,
        partitions: 1,
        halo_served: 0,
        dropped: 0,
        recoveries: out.recoveries,
        recovery_times: out.recovery_times.clone(),
        node_peak_rss_kib: Vec::new(),
        placement: Vec::new(),
        faults: out.faults.clone(),
        rebalances: out.rebalances.clone(),
        imbalance_after: Vec::new(),
        node_shares: Vec::new(),
        rebalances_unpaid: 0,
    }
}
