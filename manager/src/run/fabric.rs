//! Stepping on the zenoh fabric: the manager's side of the node agents' protocol. It partitions
//! the mesh with METIS (weighted by where the particles are), assigns partitions by cores,
//! serves the specification, topologies, particles and field slices (reading only the slice
//! asked for, caching the current levels), and steps bulk-synchronously: gather every
//! partition's summary, check that every migrant arrived, answer each with its control (whose
//! batches to merge, stop or go on, send your state), gather states when the schedule asks.
//!
//! Each begin is an epoch with its own run id, its own liveliness token and its own keys. A
//! node lost mid-run (token gone, a partition failed or panicked, silent past the patience)
//! makes the current call fail with [`NodeLost`]; the schedule then begins again from its
//! checkpoint, which here is a new epoch on the nodes that are left. Dropping an epoch's token
//! tells its survivors to abandon it, and every message of an old epoch is refused as a foreign
//! run. Every key is spelled in `shoal_common::keys`.

use super::prepare::{FieldWindow, Prepared};
use super::schedule::{self, Io, NodeLost, Plan, Stepper};
use super::{say, RunOptions, RunReport};
use crate::input::config::RunConfig;
use crate::input::fvcom::FvcomReader;
use crate::output::checkpoint::Saved;
use crate::run::partition::{
    default_rings, edge_flux, halo, max_speed, partition_shared, Partitioning,
};
use crate::station::membership::{run_id, Fleet, FleetSpec, Member};
use anyhow::{anyhow, bail, Result};
use shoal_common::keys::{self, RunKeys};
use shoal_common::mesh::is_element;
use shoal_common::wire::{
    self, Assignment, Command, Control, Endpoint, FieldRequest, FieldSlice, Message, ParticleBatch,
    RunSpec, StepSummary, Topology,
};
use shoal_common::{status, Mesh, Particles, RawSlice, StepParams, Tally};
use shoal_node::net::{bytes, query_message, reply, Dropped};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use zenoh::liveliness::LivelinessToken;
use zenoh::query::{Query, Queryable};
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

/// What the manager's main loop hears, tagged with the epoch's run id where it has one.
// Events are few and short-lived (one per message, matched by value): boxing the large ones
// would cost an allocation each and patterns that cannot look inside.
#[allow(clippy::large_enum_variant)]
enum Event {
    Sync(u64, Message, Query),
    State(u64, ParticleBatch, Query),
    Lost(String),
}

/// What a phase makes of a sync message: its own (partition and value), one for a later phase,
/// or one it refuses (its kind).
// One at a time, matched at once: as for `Event`, a box would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Pick<T> {
    Take(u32, T),
    Later(Message),
    Refuse(&'static str),
}

/// Runs the schedule on the fabric: the embedded default's in-process nodes or a named cluster.
pub fn run(
    cfg: &RunConfig,
    opts: &RunOptions,
    prep: &Prepared,
    plan: &Plan,
    io: &mut Io,
    start: Saved,
    device: &(String, String),
) -> Result<RunReport> {
    let named = opts.cluster.clone().or_else(|| cfg.cluster.name.clone());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let nodes = match &named {
        None => opts
            .nodes
            .or((cfg.cluster.nodes > 0).then_some(cfg.cluster.nodes))
            .unwrap_or(cores),
        Some(_) => opts.nodes.unwrap_or(cfg.cluster.nodes),
    };
    let fleet = Fleet::join(&FleetSpec {
        name: named.as_deref(),
        nodes,
        zenoh_config: cfg.cluster.zenoh_config.clone(),
        connect: Vec::new(),
        listen: Vec::new(),
        pool: prep.pool.clone(),
        devices: opts.node_devices.clone(),
    })?;
    if named.is_none() {
        // The in-process nodes use the manager's mesh rather than build their own.
        shoal_node::agent::offer_mesh(&prep.reader.mesh_input, &prep.mesh);
    }
    // A named cluster's nodes on the status page: asked how they are while the run goes.
    let watch_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = match (&plan.board, &named) {
        (Some(board), Some(_)) => Some(crate::station::status::watch_fleet(
            fleet.session.clone(),
            fleet.cluster.clone(),
            fleet.dropped.clone(),
            board.clone(),
            watch_stop.clone(),
            false,
            device.clone(),
        )),
        _ => None,
    };
    let from = start.step;
    let stats = Arc::new(ServerStats::default());
    let result = std::thread::scope(|sc| -> Result<RunReport> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let server = Server {
            reader: &prep.reader,
            mesh: &prep.mesh,
            origin: prep.start,
            epoch: None,
            cache: HashMap::new(),
            stats: stats.clone(),
        };
        let d = fleet.dropped.clone();
        let server_thread = sc.spawn(move || server.serve(job_rx, &d));
        let mut stepper = FabricStepper::new(cfg, prep, plan, &fleet, jobs)?;
        stepper.device = opts.device.unwrap_or(cfg.device);
        let out = schedule::drive(cfg, plan, &mut stepper, io, start, prep.wall);
        let (members, n_parts) = (stepper.members.len(), stepper.n_parts);
        let peaks = std::mem::take(&mut stepper.peaks);
        let imbalance_after = std::mem::take(&mut stepper.imbalance_after);
        let shares = std::mem::take(&mut stepper.shares);
        let unpaid = stepper.unpaid;
        let placement = std::mem::take(&mut stepper.placement);
        // Hanging up ends the epoch (its token goes, its nodes are free) and the server.
        drop(stepper);
        let _ = server_thread.join();
        let out = out?;
        let mut report = schedule::report(plan, &out, prep.wall, from);
        report.nodes = members;
        report.partitions = n_parts;
        report.node_peak_rss_kib = peaks.into_iter().collect();
        report.placement = placement;
        report.imbalance_after = imbalance_after;
        report.node_shares = shares;
        report.rebalances_unpaid = unpaid;
        Ok(report)
    });
    watch_stop.store(true, Ordering::Relaxed);
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let local_dropped = fleet.leave();
    let mut report = result?;
    report.halo_served = stats.halo_served.load(Ordering::Relaxed);
    report.fields = Duration::from_nanos(stats.read_nanos.load(Ordering::Relaxed));
    report.dropped += local_dropped?;
    Ok(report)
}

/// Which partitions step where, in words: "0 on local-0 (gpu: llvmpipe), 1 on local-1 (cpu)".
pub fn placement_words(placement: &[(u32, String, String)]) -> String {
    placement
        .iter()
        .map(|(p, node, device)| format!("{p} on {node} ({device})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The manager's side of one run on the fabric, across its epochs.
struct FabricStepper<'a> {
    cfg: &'a RunConfig,
    mesh: &'a Mesh,
    reader: &'a FvcomReader,
    fleet: &'a Fleet,
    params: StepParams,
    /// The run clock of every time index.
    times: Vec<f64>,
    origin: f64,
    n: usize,
    n_steps: u32,
    duration: f64,
    quiet: bool,
    patience: Duration,
    /// Steps a partition may take past the last one the manager has heard of (1: in lock, as
    /// a run with a happiness stop must step, since any step may be its last).
    ahead: u32,
    /// The last step any grant of this epoch let a partition take.
    granted: u32,
    /// Where the run stops early when asked to (a signal): no grant goes past it.
    halt: Option<u32>,
    /// The schedule's cadences, in steps: it wants every particle's state at these steps.
    output_every: u32,
    checkpoint_every: u32,
    /// Re-partition when the busiest node steps more than this share above the mean.
    rebalance_share: f64,
    /// ... measured over at least this many steps.
    rebalance_steps: u32,
    /// Each node's stepping time over the steps measured so far, microseconds.
    busy: BTreeMap<String, u64>,
    /// Each node's particle-steps over the same steps.
    stepped: BTreeMap<String, u64>,
    /// Each node's speed over the last stretch measured, particle-steps per microsecond: the
    /// next cut's target shares.
    speeds: BTreeMap<String, f64>,
    /// The share of the work each node was given by its speed at the last re-cut.
    shares: Vec<(String, f64)>,
    /// The water crossing each edge between elements (`partition::edge_flux`), for cuts.
    flux: Option<Vec<[f32; 3]>>,
    /// When the current epoch began, until its first step is heard.
    began: Option<Instant>,
    /// What the last beginning cost: from cutting to the first step heard (waiting for the
    /// nodes, moving particles, topologies and the first fields).
    begin_cost: Duration,
    /// When the stretch of steps being measured for the load began.
    stretch: Instant,
    /// Re-cuts the load called for that would have cost more than they saved.
    unpaid: u32,
    busy_steps: u32,
    /// The imbalance that makes the next state a new beginning.
    due: Option<f64>,
    /// The imbalance over each stretch that followed a re-partition.
    imbalance_after: Vec<f64>,
    after_rebalance: bool,
    jobs: mpsc::Sender<Job>,
    events: mpsc::Receiver<Event>,
    event_tx: mpsc::Sender<Event>,
    _watch: zenoh::pubsub::Subscriber<()>,
    /// Nodes this run has lost: never given work again in it.
    lost: BTreeSet<String>,
    /// The current epoch.
    epoch: Option<Epoch<'a>>,
    members: Vec<Member>,
    n_parts: usize,
    /// Each node's peak resident memory as its step summaries said, KiB.
    peaks: BTreeMap<String, u64>,
    /// When the nodes were last told to go on (a step's wall time runs from here to its last
    /// summary).
    clock: Instant,
    /// The busiest node of the last step and its share of the step's wall time.
    slowest: Option<(String, f64)>,
    /// Where each partition steps, as its node said when it was ready: (partition, node,
    /// device).
    placement: Vec<(u32, String, String)>,
    /// The run's device setting, for the nodes to combine with their own.
    device: shoal_node::Device,
    /// The run's worker pool, for the first state's release.
    pool: Arc<rayon::ThreadPool>,
    /// The status page's board, where one is served: in-process nodes are shown on it by name.
    board: Option<Arc<crate::station::status::Board>>,
}

/// One epoch: a run id, its nodes and partitions, its queryables and token.
struct Epoch<'a> {
    me: Endpoint,
    assignment: Vec<Vec<u32>>,
    part_of: Vec<u32>,
    /// Syncs that came before the schedule wanted them: while states were gathered, or a
    /// summary of a later step (partitions step on ahead of the manager).
    deferred: VecDeque<(Message, Query)>,
    /// States of later steps than the one being gathered.
    deferred_states: VecDeque<(ParticleBatch, Query)>,
    /// The summaries of the step in progress still to answer, answered by `end_step`.
    pending: Vec<(StepSummary, Query)>,
    /// Particles sent by the previous step of this epoch (none before its first).
    sent_before: Option<u64>,
    _queryables: Vec<Queryable<()>>,
    _token: LivelinessToken,
    _session: std::marker::PhantomData<&'a Session>,
}

impl<'a> FabricStepper<'a> {
    fn new(
        cfg: &'a RunConfig,
        prep: &'a Prepared,
        plan: &Plan,
        fleet: &'a Fleet,
        jobs: mpsc::Sender<Job>,
    ) -> Result<Self> {
        let (event_tx, events) = mpsc::channel::<Event>();
        let tx = event_tx.clone();
        let cluster = fleet.cluster.clone();
        // One watch for the whole run: which node's token went is checked against the epoch's.
        let watch = fleet
            .session
            .liveliness()
            .declare_subscriber(keys::node_tokens(&fleet.cluster))
            // With history, tokens up before this watch are watched too (see node::agent).
            .history(true)
            .callback(move |s| {
                if s.kind() == SampleKind::Delete {
                    if let Some((name, _)) = keys::parse_node_token(&cluster, s.key_expr().as_str())
                    {
                        let _ = tx.send(Event::Lost(name));
                    }
                }
            })
            .wait()
            .map_err(|e| anyhow!("watching nodes: {e}"))?;
        Ok(FabricStepper {
            cfg,
            mesh: &prep.mesh,
            reader: &prep.reader,
            fleet,
            params: prep.params.clone(),
            pool: prep.pool.clone(),
            times: prep.reader.times.iter().map(|t| t - prep.start).collect(),
            origin: prep.start,
            n: plan.n,
            n_steps: plan.n_steps,
            duration: plan.duration,
            quiet: plan.quiet,
            patience: Duration::from_secs_f64(cfg.cluster.patience_seconds),
            ahead: if cfg.stop_when_happy_share.is_some() {
                1
            } else {
                cfg.cluster.ahead_steps.max(1)
            },
            granted: 0,
            halt: None,
            output_every: plan.output_every.max(1),
            checkpoint_every: plan.checkpoint_every,
            // In-process nodes share one pool: the load follows the particles there already.
            rebalance_share: match (cfg.cluster.rebalance_share, fleet.in_process()) {
                (Some(r), _) => r,
                (None, false) => 0.2,
                (None, true) => f64::INFINITY,
            },
            rebalance_steps: cfg.cluster.rebalance_steps,
            busy: BTreeMap::new(),
            stepped: BTreeMap::new(),
            speeds: BTreeMap::new(),
            shares: Vec::new(),
            flux: None,
            began: None,
            begin_cost: Duration::ZERO,
            stretch: Instant::now(),
            unpaid: 0,
            busy_steps: 0,
            due: None,
            imbalance_after: Vec::new(),
            after_rebalance: false,
            jobs,
            events,
            event_tx,
            _watch: watch,
            lost: BTreeSet::new(),
            epoch: None,
            members: Vec::new(),
            n_parts: 0,
            peaks: BTreeMap::new(),
            clock: Instant::now(),
            slowest: None,
            placement: Vec::new(),
            device: cfg.device,
            board: plan.board.clone(),
        })
    }

    fn session(&self) -> &'a Session {
        &self.fleet.session
    }

    fn node_of(&self, p: u32) -> String {
        let e = self.epoch.as_ref();
        e.and_then(|e| e.assignment.iter().position(|a| a.contains(&p)))
            .map(|i| self.members[i].name.clone())
            .unwrap_or_else(|| "?".into())
    }

    /// Strikes `nodes` off for the rest of the run and says why, as the error the schedule
    /// recovers from.
    fn lose(&mut self, nodes: &[String], why: String) -> anyhow::Error {
        self.lost.extend(nodes.iter().cloned());
        anyhow::Error::new(NodeLost(why))
    }

    /// A partition's failure: its node is lost to the run.
    fn failed(&mut self, f: wire::Failure, q: Query) -> anyhow::Error {
        let _ = q.reply_err("recovering without you").wait();
        let node = self.node_of(f.partition);
        let why = format!(
            "partition {} on node {node} failed: {}",
            f.partition, f.reason
        );
        self.lose(std::slice::from_ref(&node), why)
    }

    /// The next event of the current epoch, until `deadline`; a node lost, a partition failed,
    /// or the deadline passed is a [`NodeLost`] naming who and what.
    fn next(&mut self, what: &str, deadline: Instant, waiting: &BTreeSet<u32>) -> Result<Event> {
        let run = self.epoch.as_ref().map(|e| e.me.run).unwrap_or(0);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .events
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                Ok(Event::Lost(name)) if self.members.iter().any(|m| m.name == name) => {
                    let parts: Vec<u32> = self.parts_of(&name);
                    return Err(self.lose(
                        std::slice::from_ref(&name),
                        format!("node {name} (partitions {parts:?}) left the cluster while the run waited for {what}"),
                    ));
                }
                Ok(Event::Lost(_)) => continue,
                Ok(Event::Sync(r, Message::Failure(f), q)) if r == run => {
                    return Err(self.failed(f, q));
                }
                Ok(Event::Sync(r, _, q)) | Ok(Event::State(r, _, q)) if r != run => {
                    let _ = q.reply_err(format!("run {r:016x} is over")).wait();
                }
                Ok(e) => return Ok(e),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= deadline {
                        let mut nodes: Vec<String> =
                            waiting.iter().map(|&p| self.node_of(p)).collect();
                        nodes.sort();
                        nodes.dedup();
                        return Err(self.lose(
                            &nodes,
                            format!(
                                "no {what} from partitions {waiting:?} (nodes {}) within {} s",
                                nodes.join(", "),
                                self.patience.as_secs_f64()
                            ),
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the fabric closed"),
            }
        }
    }

    fn parts_of(&self, name: &str) -> Vec<u32> {
        let i = self.members.iter().position(|m| m.name == name);
        match (i, self.epoch.as_ref()) {
            (Some(i), Some(e)) => e.assignment[i].clone(),
            _ => vec![],
        }
    }

    /// Every partition's sync message for one phase, with the queries to answer. Messages
    /// `pick` leaves for later (`Pick::Later`) and states that come meanwhile are kept, in
    /// order, for the phases that want them.
    fn gather_sync<T>(
        &mut self,
        what: &str,
        pick: impl Fn(Message) -> Pick<T>,
    ) -> Result<Vec<(T, Query)>> {
        let deadline = Instant::now() + self.patience;
        let mut got: BTreeMap<u32, (T, Query)> = BTreeMap::new();
        let mut later: Vec<(Message, Query)> = Vec::new();
        let result = self.gather_into(what, &pick, deadline, &mut got, &mut later);
        if let Some(e) = self.epoch.as_mut() {
            for m in later.into_iter().rev() {
                e.deferred.push_front(m);
            }
        }
        result?;
        Ok(got.into_values().collect())
    }

    fn gather_into<T>(
        &mut self,
        what: &str,
        pick: &dyn Fn(Message) -> Pick<T>,
        deadline: Instant,
        got: &mut BTreeMap<u32, (T, Query)>,
        later: &mut Vec<(Message, Query)>,
    ) -> Result<()> {
        while got.len() < self.n_parts {
            let deferred = self.epoch.as_mut().and_then(|e| e.deferred.pop_front());
            let event = match deferred {
                Some((m, q)) => Event::Sync(self.run(), m, q),
                None => {
                    let waiting = (0..self.n_parts as u32)
                        .filter(|p| !got.contains_key(p))
                        .collect();
                    self.next(what, deadline, &waiting)?
                }
            };
            match event {
                // A deferred failure: the same as one heard now.
                Event::Sync(_, Message::Failure(f), q) => return Err(self.failed(f, q)),
                Event::Sync(_, m, q) => match pick(m) {
                    Pick::Take(p, v) if (p as usize) < self.n_parts => {
                        // A retry replaces the query it repeats.
                        got.insert(p, (v, q));
                    }
                    Pick::Take(p, _) => {
                        let _ = q.reply_err(format!("no partition {p}")).wait();
                    }
                    Pick::Later(m) => later.push((m, q)),
                    Pick::Refuse(kind) => {
                        let _ = q
                            .reply_err(format!("a {kind} while waiting for {what}"))
                            .wait();
                    }
                },
                // A partition ahead of the manager sent the state of a later step.
                Event::State(_, b, q) => {
                    if let Some(e) = self.epoch.as_mut() {
                        e.deferred_states.push_back((b, q));
                    }
                }
                Event::Lost(_) => unreachable!("handled by next"),
            }
        }
        Ok(())
    }

    /// Does the schedule want every particle's state at step `k` (as it begins)? The same
    /// rule as the schedule's: output times, checkpoints and the end.
    fn wants_state(&self, k: u32) -> bool {
        k >= self.end()
            || k.is_multiple_of(self.output_every)
            || (self.checkpoint_every > 0 && k.is_multiple_of(self.checkpoint_every))
    }

    /// The control that lets partitions go on from step `next` (the first the manager has not
    /// heard of): the last step they may take, and the states wanted on the way.
    fn grant(&mut self, step: u32, next: u32, command: Command, snapshot: bool) -> Control {
        let through = grant_through(next, self.ahead, self.end(), |k| self.wants_state(k));
        self.granted = self.granted.max(through);
        Control {
            step,
            command,
            through,
            states: (next + 1..=through + 1)
                .filter(|&k| self.wants_state(k))
                .collect(),
            snapshot,
        }
    }

    fn run(&self) -> u64 {
        self.epoch.as_ref().map(|e| e.me.run).unwrap_or(0)
    }

    /// The step count the grants work to: the run's, or one past the step it stops at early.
    fn end(&self) -> u32 {
        self.halt
            .map_or(self.n_steps, |h| (h + 1).min(self.n_steps))
    }

    /// Every partition's state after `step`, checked (each particle of the run exactly once,
    /// each in its partition's own elements) and joined in id order. A malformed or foreign
    /// state is refused and counted, and the partition's own is still awaited.
    fn gather_states(&mut self, step: u32) -> Result<Particles> {
        let deadline = Instant::now() + self.patience;
        let (ne, n) = (self.mesh.n_elements(), self.n);
        let mut got: BTreeMap<u32, ParticleBatch> = BTreeMap::new();
        let mut early = std::mem::take(&mut self.epoch.as_mut().expect("an epoch").deferred_states);
        while got.len() < self.n_parts {
            let waiting = (0..self.n_parts as u32)
                .filter(|p| !got.contains_key(p))
                .collect();
            let event = match early.pop_front() {
                Some((b, q)) => Event::State(self.run(), b, q),
                None => self.next("particle states", deadline, &waiting)?,
            };
            match event {
                Event::State(_, b, q) if b.step > step => {
                    self.epoch
                        .as_mut()
                        .expect("an epoch")
                        .deferred_states
                        .push_back((b, q));
                }
                Event::State(_, b, q) if b.step == step && (b.from as usize) < self.n_parts => {
                    let part_of = &self.epoch.as_ref().expect("an epoch").part_of;
                    let p = &b.particles;
                    let owned = p.element.iter().zip(&p.status).all(|(&e, &s)| {
                        s == status::OUTSIDE_MESH
                            || part_of.get(e as usize).is_some_and(|&o| o == b.from)
                    });
                    match b.check_against(ne, n) {
                        Ok(()) if owned => {
                            let me = self.epoch.as_ref().expect("an epoch").me.clone();
                            reply(
                                &q,
                                &me,
                                Message::Control(Control {
                                    step,
                                    command: Command::Continue,
                                    through: step,
                                    states: vec![],
                                    snapshot: false,
                                }),
                            )?;
                            got.insert(b.from, b);
                        }
                        r => {
                            let why = r.err().unwrap_or(wire::WireError::Inconsistent {
                                kind: "particle state",
                                why: "a particle outside its partition",
                            });
                            self.fleet.dropped.note("particle state", &why, self.quiet);
                            let _ = q.reply_err(format!("refused: {why}")).wait();
                        }
                    }
                }
                Event::State(_, _, q) => {
                    let _ = q.reply_err("not the state expected").wait();
                }
                Event::Sync(_, m, q) => {
                    if let Some(e) = self.epoch.as_mut() {
                        e.deferred.push_back((m, q));
                    }
                }
                Event::Lost(_) => unreachable!("handled by next"),
            }
        }
        let mut seen = vec![false; n];
        let mut all = Particles::with_capacity(n);
        for (p, b) in got {
            for &id in &b.particles.id {
                let slot = &mut seen[id as usize];
                if *slot {
                    bail!("particle {id} is in two partitions at step {step}");
                }
                *slot = true;
            }
            let _ = p;
            all.extend(&b.particles);
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            bail!("particle {missing} is in no partition at step {step}");
        }
        all.sort_by_id();
        Ok(all)
    }
}

impl Drop for FabricStepper<'_> {
    fn drop(&mut self) {
        // Its queryables and token go with it: the nodes of the last epoch are free.
        self.epoch = None;
    }
}
/// Partitions to nodes in proportion to their cores: each partition goes to the node with the
/// lowest load per core after taking it.
fn assign(members: &[Member], n_parts: usize) -> Vec<Vec<u32>> {
    let mut load = vec![Vec::new(); members.len()];
    for p in 0..n_parts {
        let best = (0..members.len())
            .min_by(|&a, &b| {
                let la = (load[a].len() + 1) as f64 / members[a].cores as f64;
                let lb = (load[b].len() + 1) as f64 / members[b].cores as f64;
                la.partial_cmp(&lb).unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(0);
        load[best].push(p as u32);
    }
    load
}

/// The topology of partition `p`: owned elements, halo, halo owners, nodes touched.
fn topology(mesh: &Mesh, part_of: &[u32], p: u32, rings: usize) -> Topology {
    let owned: Vec<u32> = (0..mesh.n_elements() as u32)
        .filter(|&e| part_of[e as usize] == p)
        .collect();
    let halo = halo(mesh, part_of, p, rings);
    let halo_owner = halo.iter().map(|&e| part_of[e as usize]).collect();
    let nodes = nodes_of(mesh, owned.iter().chain(&halo));
    Topology {
        partition: p,
        owned,
        halo,
        halo_owner,
        nodes,
    }
}

fn nodes_of<'a>(mesh: &Mesh, elements: impl Iterator<Item = &'a u32>) -> Vec<u32> {
    let mut nodes: Vec<u32> = elements.flat_map(|&e| mesh.nv[e as usize]).collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// Field values of `elements` and `nodes` from a slice in the file's layout, in mesh numbering.
fn field_slice(
    mesh: &Mesh,
    raw: &RawSlice,
    partition: u32,
    time_index: u32,
    elements: &[u32],
    nodes: &[u32],
) -> FieldSlice {
    let (ne, nn, nl) = (mesh.n_elements(), mesh.n_nodes(), mesh.vertical.n_layers);
    let per_element = |f: &[f32]| -> Vec<f32> {
        let mut out = Vec::with_capacity(elements.len() * nl);
        for &e in elements {
            let fe = mesh.file_element[e as usize] as usize;
            out.extend((0..nl).map(|k| f[k * ne + fe]));
        }
        out
    };
    let per_node = |f: &[f32], levels: usize| -> Vec<f32> {
        let mut out = Vec::with_capacity(nodes.len() * levels);
        for &n in nodes {
            out.extend((0..levels).map(|k| f[k * nn + n as usize]));
        }
        out
    };
    FieldSlice {
        partition,
        time_index,
        time: raw.time,
        n_layers: nl as u16,
        elements: elements.to_vec(),
        nodes: nodes.to_vec(),
        u: per_element(&raw.u),
        v: per_element(&raw.v),
        ww: raw.ww.as_deref().map(per_element).unwrap_or_default(),
        zeta: nodes.iter().map(|&n| raw.zeta[n as usize]).collect(),
        kh: raw
            .kh
            .as_deref()
            .map(|k| per_node(k, nl + 1))
            .unwrap_or_default(),
        temp: raw
            .temp
            .as_deref()
            .map(|t| per_node(t, nl))
            .unwrap_or_default(),
        salinity: raw
            .salinity
            .as_deref()
            .map(|t| per_node(t, nl))
            .unwrap_or_default(),
        wet: raw
            .wet
            .as_deref()
            .map(|w| {
                elements
                    .iter()
                    .map(|&e| w[mesh.file_element[e as usize] as usize])
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Serves what nodes pull: specification, topologies, initial particles, field slices and
/// on-demand halo values. One thread, since NetCDF reads are serialized anyway.
struct Server<'a> {
    reader: &'a FvcomReader,
    mesh: &'a Mesh,
    origin: f64,
    /// What the current epoch serves; queries of earlier epochs are refused.
    epoch: Option<Served>,
    cache: HashMap<usize, Arc<RawSlice>>,
    stats: Arc<ServerStats>,
}

/// One epoch's answers, made by the stepper and handed to the server thread.
struct Served {
    me: Endpoint,
    keys: RunKeys,
    spec: Vec<u8>,
    topologies: Vec<Topology>,
    topo_bytes: Vec<Vec<u8>>,
    particles: Vec<Vec<u8>>,
    /// Elements per field slice piece.
    piece: u32,
}

/// What the server thread is given: a new epoch to serve, or a query of some epoch's.
enum Job {
    Epoch(Box<Served>),
    Query(u64, &'static str, Query),
}

#[derive(Default)]
struct ServerStats {
    halo_served: AtomicU64,
    read_nanos: AtomicU64,
}

impl Server<'_> {
    /// Answers jobs until the stepper hangs up.
    fn serve(mut self, jobs: mpsc::Receiver<Job>, dropped: &Dropped) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Epoch(e) => self.epoch = Some(*e),
                Job::Query(run, what, q) => {
                    let current = self.epoch.as_ref().is_some_and(|e| e.me.run == run);
                    let r = if current {
                        self.answer(what, &q, dropped)
                    } else {
                        Err(anyhow!("run {run:016x} is over"))
                    };
                    if let Err(e) = r {
                        let _ = q.reply_err(format!("{e:#}")).wait();
                    }
                }
            }
        }
    }

    fn slice(&mut self, idx: usize) -> Result<Arc<RawSlice>> {
        if let Some(r) = self.cache.get(&idx) {
            return Ok(r.clone());
        }
        let t = Instant::now();
        let raw = Arc::new(self.reader.read_slice(idx, self.origin)?);
        self.stats
            .read_nanos
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        // Keep the few levels around the current step: the one furthest from this one goes
        // (the oldest in a run forward, the newest in a run backward).
        if self.cache.len() >= 4 {
            if let Some(&old) = self.cache.keys().max_by_key(|&&k| k.abs_diff(idx)) {
                self.cache.remove(&old);
            }
        }
        self.cache.insert(idx, raw.clone());
        Ok(raw)
    }

    fn answer(&mut self, what: &str, q: &Query, dropped: &Dropped) -> Result<()> {
        let key = q.key_expr().as_str().to_string();
        let Some(ep) = self.epoch.as_ref() else {
            bail!("{key}: no run is being served");
        };
        let n_parts = ep.topologies.len() as u32;
        let nums = ep.keys.numbers(what, &key);
        let part = |i: usize| -> Result<u32> {
            nums.as_ref()
                .and_then(|v| v.get(i).copied())
                .filter(|&p| i > 0 || p < n_parts)
                .ok_or_else(|| anyhow!("{key}: no such partition or index"))
        };
        let b = match what {
            "spec" => ep.spec.clone(),
            "topology" => ep.topo_bytes[part(0)? as usize].clone(),
            "particles" => ep.particles[part(0)? as usize].clone(),
            "field" => {
                let (p, idx, piece) = (part(0)?, part(1)? as usize, part(2)? as usize);
                if idx >= self.reader.times.len() {
                    bail!("{key}: no time index {idx}");
                }
                let t = &ep.topologies[p as usize];
                let size = ep.piece as usize;
                if piece >= wire::field_pieces(t.owned.len() + t.halo.len(), ep.piece) {
                    bail!("{key}: no piece {piece}");
                }
                let elements: Vec<u32> = t
                    .owned
                    .iter()
                    .chain(&t.halo)
                    .skip(piece * size)
                    .take(size)
                    .copied()
                    .collect();
                let nodes = nodes_of(self.mesh, elements.iter());
                let me = ep.me.clone();
                let raw = self.slice(idx)?;
                let f = field_slice(self.mesh, &raw, p, idx as u32, &elements, &nodes);
                bytes(&me, Message::FieldSlice(f))?
            }
            "halo" => {
                let Some(Message::FieldRequest(FieldRequest {
                    partition,
                    time_index,
                    elements,
                })) = query_message(q, &ep.me, dropped, true)
                else {
                    return Ok(());
                };
                let me = ep.me.clone();
                let ne = self.mesh.n_elements() as u32;
                if partition >= n_parts
                    || time_index as usize >= self.reader.times.len()
                    || elements.is_empty()
                    || elements.iter().any(|&e| e >= ne)
                {
                    bail!(
                        "{key}: the request names no element, partition or time index of this run"
                    );
                }
                let mut with: Vec<u32> = elements.clone();
                for &e in &elements {
                    with.extend(self.mesh.nbe[e as usize].iter().filter(|&&n| is_element(n)));
                }
                with.sort_unstable();
                with.dedup();
                let nodes = nodes_of(self.mesh, with.iter());
                let raw = self.slice(time_index as usize)?;
                self.stats
                    .halo_served
                    .fetch_add(elements.len() as u64, Ordering::Relaxed);
                let f = field_slice(self.mesh, &raw, partition, time_index, &with, &nodes);
                bytes(&me, Message::FieldSlice(f))?
            }
            _ => bail!("{key}: not served"),
        };
        q.reply(q.key_expr().clone(), b)
            .wait()
            .map_err(|e| anyhow!("replying on {key}: {e}"))
    }
}

impl Stepper for FabricStepper<'_> {
    fn begin(
        &mut self,
        from: u32,
        particles: &Particles,
        fields: &mut FieldWindow,
        gather: bool,
    ) -> Result<Option<Particles>> {
        // The previous epoch ends here: its token goes and its nodes abandon it.
        self.epoch = None;
        self.busy.clear();
        self.stepped.clear();
        self.busy_steps = 0;
        let members = self.fleet.wait(self.cfg.cluster.wait_seconds, &self.lost)?;
        let cluster = self.fleet.cluster.clone();
        let run = run_id();
        let me = Endpoint {
            cluster: cluster.clone(),
            run,
        };
        let keys = RunKeys::new(&cluster, run);
        let (mesh, cfg) = (self.mesh, self.cfg);
        let ne = mesh.n_elements();

        // Partition: METIS on the dual graph, weighted by where the particles are now.
        let n_parts = cfg.cluster.partitions.unwrap_or(members.len()).clamp(1, ne);
        let mut weights = vec![1u32; ne];
        for (e, s) in particles.element.iter().zip(&particles.status) {
            if *s != status::OUTSIDE_MESH {
                weights[*e as usize] += 1;
            }
        }
        let assignment = assign(&members, n_parts);
        // Once the nodes' speeds are measured (a re-cut), each partition's share of the work
        // follows the speed measured on its node. That speed is a partition's: a node's
        // partitions step side by side in its pool, and their busy times add up, so a node with
        // two partitions gets two shares. A node not measured (one that joined since) counts as
        // the mean of those that were.
        let shares: Option<Vec<f64>> = (!self.speeds.is_empty() && n_parts > 1).then(|| {
            let mean = self.speeds.values().sum::<f64>() / self.speeds.len() as f64;
            let mut shares = vec![0.0; n_parts];
            self.shares.clear();
            for (m, parts) in members.iter().zip(&assignment) {
                let speed = self.speeds.get(&m.name).copied().unwrap_or(mean);
                for &p in parts {
                    shares[p as usize] = speed;
                }
                self.shares
                    .push((m.name.clone(), speed * parts.len() as f64));
            }
            let sum: f64 = self.shares.iter().map(|(_, s)| s).sum();
            for (_, s) in &mut self.shares {
                *s /= sum;
            }
            shares
        });
        self.began = Some(Instant::now());
        let parts = if n_parts == 1 {
            Partitioning {
                n_parts: 1,
                part_of: vec![0; ne],
                part_weight: vec![weights.iter().map(|&w| w as u64).sum()],
                edge_cut: 0,
                imbalance: 1.0,
            }
        } else {
            // Where the water goes, once per run: the run's levels, eight at most, evenly
            // spread (a tide's phases), for cuts along the flow; one slice held at a time.
            if self.flux.is_none() {
                let end =
                    shoal_common::kernel::step_time(self.n_steps, self.params.dt, self.duration);
                let (lo, hi) = shoal_common::fields::span(&self.times, end.min(0.0), end.max(0.0));
                let picks: BTreeSet<usize> = (0..8).map(|k| lo + (hi - lo) * k / 7).collect();
                let mut flux = vec![[0.0f32; 3]; ne];
                for i in picks {
                    edge_flux(mesh, &self.reader.read_slice(i, self.origin)?, &mut flux);
                }
                self.flux = Some(flux);
            }
            // What a beginning costs, for re-cuts (`recut_balance`), counts from here: past the
            // wait for nodes and the one-off reading of the flow.
            self.began = Some(Instant::now());
            partition_shared(
                mesh,
                &weights,
                n_parts,
                shares.as_deref(),
                self.flux.as_deref(),
            )?
        };
        let t0 = shoal_common::kernel::step_time(from, self.params.dt, self.duration);
        let rings = match cfg.cluster.halo_rings {
            Some(r) => r,
            None => {
                let (lo, _) = shoal_common::fields::span(&self.times, t0, t0);
                let speed = max_speed(&self.reader.read_slice(lo, self.origin)?);
                default_rings(speed, cfg.dt, mesh.smallest_edge())
            }
        };
        say(
            self.quiet,
            format!(
                "fabric: cluster `{cluster}`, run {run:016x} from step {from}: {} nodes ({}), {n_parts} partitions, edge cut {}, imbalance {:.3}, halo {rings} rings",
                members.len(),
                members
                    .iter()
                    .zip(&assignment)
                    .map(|(m, a)| format!("{} {} x{} cores: {:?}", m.name, m.arch, m.cores, a))
                    .collect::<Vec<_>>()
                    .join("; "),
                parts.edge_cut,
                parts.imbalance
            ),
        );
        let topologies: Vec<Topology> = (0..n_parts as u32)
            .map(|p| topology(mesh, &parts.part_of, p, rings))
            .collect();
        let mut split: Vec<Particles> = vec![Particles::default(); n_parts];
        for i in 0..particles.len() {
            let owner = parts.part_of[particles.element[i] as usize] as usize;
            split[owner].push_from(particles, i);
        }
        let particle_bytes = split
            .into_iter()
            .enumerate()
            .map(|(p, ps)| {
                bytes(
                    &me,
                    Message::ParticleBatch(ParticleBatch::of(u32::MAX, p as u32, from, ps)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let spec = RunSpec {
            mesh: self.reader.mesh_input.clone(),
            params: self.params.clone(),
            times: self.times.clone(),
            first_step: from,
            n_steps: self.n_steps,
            duration: self.duration,
            n_particles: self.n as u32,
            n_parts: n_parts as u32,
            part_of: parts.part_of.clone(),
            sort_every: cfg.sort_every,
            device: self.device,
            carried: self.reader.carried(),
            field_piece: wire::field_piece(
                cfg.cluster
                    .field_piece_bytes
                    .unwrap_or(if self.fleet.in_process() {
                        wire::FIELD_PIECE_BYTES_IN_PROCESS
                    } else {
                        wire::FIELD_PIECE_BYTES
                    }),
                self.reader.mesh_input.n_layers,
            ),
        };
        let piece = spec.field_piece;
        let served = Served {
            piece,
            me: me.clone(),
            keys: keys.clone(),
            spec: bytes(&me, Message::RunSpec(Box::new(spec)))?,
            topo_bytes: topologies
                .iter()
                .map(|t| bytes(&me, Message::Topology(t.clone())))
                .collect::<Result<_>>()?,
            topologies,
            particles: particle_bytes,
        };
        self.jobs
            .send(Job::Epoch(Box::new(served)))
            .map_err(|_| anyhow!("the data server stopped"))?;

        // Queryables: data requests go to the server thread, syncs and states to this one.
        let session = self.session();
        let mut queryables = Vec::new();
        for what in ["spec", "topology/*", "particles/*", "field/*/*/*", "halo/*"] {
            let tx = self.jobs.clone();
            let name: &'static str = what.split('/').next().unwrap_or(what);
            queryables.push(
                session
                    .declare_queryable(keys.all(what))
                    .callback(move |q| {
                        let _ = tx.send(Job::Query(run, name, q));
                    })
                    .wait()
                    .map_err(|e| anyhow!("declaring {what}: {e}"))?,
            );
        }
        for what in ["sync/*", "snapshot/*"] {
            let (tx, me, d) = (
                self.event_tx.clone(),
                me.clone(),
                self.fleet.dropped.clone(),
            );
            let state = what.starts_with("snapshot");
            queryables.push(
                session
                    .declare_queryable(keys.all(what))
                    .callback(move |q| {
                        let Some(m) = query_message(&q, &me, &d, true) else {
                            return;
                        };
                        let _ = match (state, m) {
                            (true, Message::Snapshot(s)) => tx.send(Event::State(run, s, q)),
                            (
                                false,
                                m @ (Message::Ready(_)
                                | Message::StepSummary(_)
                                | Message::Failure(_)),
                            ) => tx.send(Event::Sync(run, m, q)),
                            (_, m) => {
                                d.note(
                                    "query",
                                    &wire::WireError::Malformed(format!(
                                        "a {} on {}",
                                        m.kind(),
                                        q.key_expr()
                                    )),
                                    true,
                                );
                                let _ = q.reply_err("unexpected message").wait();
                                Ok(())
                            }
                        };
                    })
                    .wait()
                    .map_err(|e| anyhow!("declaring {what}: {e}"))?,
            );
        }
        let token = session
            .liveliness()
            .declare_token(keys::manager_token(&cluster, run))
            .wait()
            .map_err(|e| anyhow!("declaring the manager token: {e}"))?;
        self.epoch = Some(Epoch {
            me: me.clone(),
            assignment: assignment.clone(),
            part_of: parts.part_of,
            deferred: VecDeque::new(),
            deferred_states: VecDeque::new(),
            pending: Vec::new(),
            sent_before: None,
            _queryables: queryables,
            _token: token,
            _session: std::marker::PhantomData,
        });
        self.members = members.clone();
        self.n_parts = n_parts;

        // Hand out the partitions.
        let never = AtomicBool::new(false);
        for (m, parts) in members.iter().zip(&assignment) {
            let a = Assignment {
                node: wire::ident(&m.name).map_err(|e| anyhow!("{e}"))?,
                partitions: parts
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow!("node {} would get too many partitions", m.name))?,
            };
            let b = bytes(&me, Message::Assignment(a))?;
            let cluster_ep = Endpoint {
                cluster: cluster.clone(),
                run: 0,
            };
            let caller = shoal_node::net::Caller {
                session,
                me: &cluster_ep,
                dropped: &self.fleet.dropped,
                quiet: true,
            };
            let answer = caller.ask_any_run(
                &keys::assign(&cluster, &m.name),
                &b,
                Duration::from_secs(30),
                &never,
            );
            match answer {
                Ok(Message::Hello(_)) => {}
                Ok(other) => {
                    let why = format!(
                        "node {} answered its assignment with a {}",
                        m.name,
                        other.kind()
                    );
                    return Err(self.lose(std::slice::from_ref(&m.name), why));
                }
                Err(e) => {
                    let why = format!("assigning partitions {parts:?} to node {}: {e:#}", m.name);
                    return Err(self.lose(std::slice::from_ref(&m.name), why));
                }
            }
        }
        let ready = self.gather_sync("every partition to be ready", |m| match m {
            Message::Ready(r) => Pick::Take(r.partition, (r.node, r.device)),
            m => Pick::Refuse(m.kind()),
        })?;
        self.placement = ready
            .iter()
            .enumerate()
            .map(|(p, ((node, device), _))| (p as u32, node.to_string(), device.to_string()))
            .collect();
        super::say(
            self.quiet,
            format!("partitions: {}", placement_words(&self.placement)),
        );
        self.show_local_nodes();
        let command = if from >= self.n_steps {
            Command::Stop
        } else {
            Command::Start
        };
        // The state a fresh run begins from is the particles given, released as a partition
        // releases them at `from`: the manager computes it alone, by the same kernel on the
        // same field values, so no state crosses a slow link before the first step.
        // A new epoch: its partitions start at `from`, whatever the last one was granted.
        self.granted = from;
        let start = self.grant(from, from, command, false);
        for (_, q) in ready {
            reply(&q, &me, Message::Control(start.clone()))?;
        }
        self.clock = Instant::now();
        if gather {
            let dt = self.params.dt;
            let t0 = shoal_common::kernel::step_time(from, dt, self.duration);
            fields.cover(t0, t0)?;
            let mut part = shoal_node::Partition::new(particles.clone());
            part.pool = Some(self.pool.clone());
            part.release(self.mesh, fields.window(), t0, dt >= 0.0);
            let mut state = part.particles;
            state.sort_by_id();
            return Ok(Some(state));
        }
        Ok(None)
    }

    fn step(&mut self, s: u32, _fields: &mut FieldWindow) -> Result<Tally> {
        let sums = self.gather_sync("step summaries", |m| match m {
            Message::StepSummary(x) if x.step == s => Pick::Take(x.partition, x),
            Message::StepSummary(x) if x.step > s => Pick::Later(Message::StepSummary(x)),
            m => Pick::Refuse(m.kind()),
        })?;
        let wall = self.clock.elapsed().as_secs_f64();
        let mut tally = Tally::empty();
        if let Some(t) = self.began.take() {
            self.begin_cost = t.elapsed();
            self.stretch = Instant::now();
        }
        self.busy_steps += 1;
        let (mut sent, mut received) = (0u64, 0u64);
        self.slowest = None;
        for (x, _) in &sums {
            tally = tally.merge(x.tally);
            let node = self.node_of(x.partition);
            let share = (x.busy_us as f64 * 1e-6 / wall.max(1e-9)).min(1.0);
            if self.slowest.as_ref().is_none_or(|s| share > s.1) {
                self.slowest = Some((node.clone(), share));
            }
            *self.busy.entry(node.clone()).or_default() += x.busy_us;
            *self.stepped.entry(node.clone()).or_default() += x.tally.active + x.tally.stranded;
            let peak = self.peaks.entry(node).or_default();
            *peak = (*peak).max(x.peak_rss_kib);
            sent += x.sent;
            received += x.received;
            let mut counted = 0u64;
            for (&to, &c) in x.sent_to.iter().zip(&x.sent_counts) {
                if to as usize >= self.n_parts {
                    bail!(
                        "partition {} sent to partition {to}, which does not exist",
                        x.partition
                    );
                }
                counted += c as u64;
            }
            if counted != x.sent {
                bail!(
                    "step {s}: partition {} says it sent {} particles but its batches hold {counted}",
                    x.partition,
                    x.sent
                );
            }
        }
        let epoch = self.epoch.as_mut().expect("an epoch");
        // Conservation: every migrant of the step before arrived.
        if let Some(before) = epoch.sent_before {
            if received != before {
                bail!(
                    "step {s}: {received} particles arrived of the {before} sent at step {}",
                    s - 1
                );
            }
        }
        epoch.sent_before = Some(sent);
        epoch.pending = sums;
        // Stepping ahead: the partitions hear at once that they may go on, unless this is the
        // last step (its answer is the stop) or they step in lock (the schedule decides).
        if self.ahead > 1 && s + 1 < self.end() {
            let c = self.grant(s, s + 1, Command::Continue, false);
            let epoch = self.epoch.as_mut().expect("an epoch");
            let me = epoch.me.clone();
            for (_, q) in std::mem::take(&mut epoch.pending) {
                reply(&q, &me, Message::Control(c.clone()))?;
            }
        }
        self.clock = Instant::now();
        Ok(tally)
    }

    fn progress_words(&self) -> Option<String> {
        Some(fleet_words(
            self.members.len(),
            self.lost.len(),
            self.slowest.as_ref().map(|(n, s)| (n.as_str(), *s)),
        ))
    }

    fn end_step(&mut self, s: u32, stop: bool, gather: bool) -> Result<Option<Particles>> {
        let command = if stop {
            Command::Stop
        } else {
            Command::Continue
        };
        let c = self.grant(s, s + 1, command, gather);
        let epoch = self.epoch.as_mut().expect("an epoch");
        let me = epoch.me.clone();
        for (_, q) in std::mem::take(&mut epoch.pending) {
            reply(&q, &me, Message::Control(c.clone()))?;
        }
        self.clock = Instant::now();
        if gather {
            let state = self.gather_states(s + 1)?;
            self.weigh_load(s, stop);
            // The cards' memory and temperature, fresh at each state.
            self.show_local_nodes();
            return Ok(Some(state));
        }
        Ok(None)
    }

    fn stop_at(&mut self, s: u32) -> u32 {
        let at = self.granted.max(s);
        self.halt = Some(at);
        at
    }

    fn rebalance_due(&mut self) -> Option<f64> {
        let due = self.due.take();
        self.after_rebalance |= due.is_some();
        due
    }
}

impl FabricStepper<'_> {
    /// The in-process nodes on the status page, each by its name with the device its partitions
    /// step on (a named cluster's are asked how they are by the page's own watcher).
    fn show_local_nodes(&self) {
        let Some(board) = self.board.as_ref().filter(|_| self.fleet.in_process()) else {
            return;
        };
        for (_, node, device) in &self.placement {
            let card = crate::station::status::NodeCard::here(device, "an in-process node");
            board.set_node(node, card);
        }
    }

    /// At a state, once `rebalance_steps` steps are measured: how unevenly the nodes stepped
    /// (the busiest node's stepping time over the nodes' mean), and whether that calls for
    /// cutting the partitions again where the particles are now.
    fn weigh_load(&mut self, s: u32, stop: bool) {
        if self.busy_steps < self.rebalance_steps {
            return;
        }
        let measured = self.busy_steps as f64;
        let step_wall = self.stretch.elapsed().as_secs_f64() / measured;
        self.stretch = Instant::now();
        self.busy_steps = 0;
        let busy = std::mem::take(&mut self.busy);
        let stepped = std::mem::take(&mut self.stepped);
        self.speeds = busy
            .iter()
            .filter_map(|(node, &us)| {
                let n = *stepped.get(node)?;
                (us > 0 && n > 0).then(|| (node.clone(), n as f64 / us as f64))
            })
            .collect();
        // A node's partitions step side by side: its busy time a partition is its load.
        let times: Vec<f64> = self
            .members
            .iter()
            .map(|m| {
                let parts = self.parts_of(&m.name).len().max(1);
                busy.get(&m.name).copied().unwrap_or(0) as f64 / parts as f64
            })
            .collect();
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        if mean <= 0.0 {
            return;
        }
        let imbalance = times.iter().copied().fold(0.0, f64::max) / mean;
        if std::mem::take(&mut self.after_rebalance) {
            self.imbalance_after.push(imbalance);
        }
        // Partitions stepped on a GPU give the GPU's bits, not the CPU's: cut again, the run
        // would depend on timing. Such runs keep their first cut.
        let on_gpu = self.placement.iter().any(|(_, _, d)| d.starts_with("gpu"));
        if self.members.len() <= 1 || stop || on_gpu || imbalance <= 1.0 + self.rebalance_share {
            return;
        }
        // Worth it? Each step the others wait for the busiest node about its time over the
        // mean, which a cut by speed and place takes away for the rest of the run; a cut costs
        // what the last beginning cost, and the steps run ahead that the nodes drop. (A share
        // of 0 cuts at every chance, for tests.)
        let (gain, cost) = recut_balance(
            self.n_steps.saturating_sub(s + 1) as f64,
            times.iter().copied().fold(0.0, f64::max) / measured,
            mean / measured,
            self.begin_cost.as_secs_f64(),
            self.ahead as f64,
            step_wall,
        );
        if self.rebalance_share == 0.0 || gain > cost {
            self.due = Some(imbalance);
        } else {
            self.unpaid += 1;
            super::say(
                self.quiet,
                format!(
                    "not re-partitioned at step {}: the busiest node stepped {imbalance:.2} times the mean, \
                     but a new cut would save about {gain:.2} s and cost about {cost:.2} s",
                    s + 1
                ),
            );
        }
    }
}

/// States a grant may ask for at most: a partition has no more than this many in flight, and the
/// manager holds no more than this many of one partition's ahead of the one it gathers.
const STATES_A_GRANT: usize = 2;

/// The last step a grant lets a partition take, from `next` (the first step the manager has not
/// heard of): `ahead` steps on, the run's last step at most, and short of the third state step
/// `wants` names (a state at step k is sent after step k - 1).
fn grant_through(next: u32, ahead: u32, n_steps: u32, wants: impl Fn(u32) -> bool) -> u32 {
    let through = (next + ahead.max(1) - 1).min(n_steps.saturating_sub(1));
    match (next + 1..=through + 1)
        .filter(|&k| wants(k))
        .nth(STATES_A_GRANT)
    {
        // The third state is at k >= next + 3: stop two short of it, after step k - 2.
        Some(k) => k - 2,
        None => through,
    }
}

/// What a new cut would save over the `remaining` steps and what it would cost, in seconds:
/// each step the other nodes wait for the busiest one its stepping time over the mean
/// (`busiest_us` against `mean_us` a step), which a cut by place and speed takes away; a cut
/// costs what the last beginning did (`begin_s`) and the steps the nodes ran ahead and drop (at
/// most `ahead`, each `step_s` of wall time).
fn recut_balance(
    remaining: f64,
    busiest_us: f64,
    mean_us: f64,
    begin_s: f64,
    ahead: f64,
    step_s: f64,
) -> (f64, f64) {
    let gain = remaining * (busiest_us - mean_us) * 1e-6;
    (gain, begin_s + ahead.min(remaining) * step_s)
}

/// The progress bar's words on the fleet: nodes at work (and lost), and the busiest node's
/// share of the last step's wall time (the rest it waited for the others).
pub fn fleet_words(nodes: usize, lost: usize, slowest: Option<(&str, f64)>) -> String {
    let mut w = format!("{nodes} node{}", if nodes == 1 { "" } else { "s" });
    if lost > 0 {
        w += &format!(" ({lost} lost)");
    }
    if let Some((name, share)) = slowest {
        w += &format!(", slowest {name} busy {:.0} % of the step", 100.0 * share);
    }
    w
}

#[cfg(test)]
mod tests {
    use super::{fleet_words, grant_through, recut_balance};

    #[test]
    fn a_grant_runs_ahead_but_spans_two_states_at_most() {
        let every = |n: u32| move |k: u32| k >= 1440 || k.is_multiple_of(n);
        // Output every 360 steps: the whole window, to the run's end at most.
        assert_eq!(grant_through(0, 64, 1440, every(360)), 63);
        assert_eq!(grant_through(1400, 64, 1440, every(360)), 1439);
        // A checkpoint every 10 steps: states after steps 9 and 19, not 29.
        assert_eq!(grant_through(1, 64, 1440, every(10)), 28);
        let names = |through: u32| (2..=through + 1).filter(|&k| every(10)(k)).count();
        assert_eq!(names(28), 2);
        // A state every step: the step asked for and the next.
        assert_eq!(grant_through(5, 64, 1440, every(1)), 6);
        // In lock.
        assert_eq!(grant_through(5, 1, 1440, every(1)), 5);
        assert_eq!(grant_through(5, 0, 1440, every(7)), 5);
    }

    #[test]
    fn a_re_cut_is_worth_what_the_waits_it_ends_would_cost() {
        // 1000 steps left, the busiest node 1.5 ms a step against a mean of 1 ms: 0.5 s to win.
        let (gain, cost) = recut_balance(1000.0, 1500.0, 1000.0, 0.2, 16.0, 0.003);
        assert!((gain - 0.5).abs() < 1e-9 && (cost - 0.248).abs() < 1e-9);
        assert!(gain > cost);
        // Over a slow link a beginning took 3 s: not worth it; nor near the end.
        let (gain, cost) = recut_balance(1000.0, 1500.0, 1000.0, 3.0, 16.0, 0.003);
        assert!(gain < cost);
        let (gain, cost) = recut_balance(10.0, 1500.0, 1000.0, 0.2, 16.0, 0.003);
        assert!(gain < cost && (cost - 0.23).abs() < 1e-9);
    }

    #[test]
    fn the_progress_bar_names_the_nodes_and_the_busiest() {
        assert_eq!(fleet_words(1, 0, None), "1 node");
        assert_eq!(
            fleet_words(3, 1, Some(("pi-2", 0.914))),
            "3 nodes (1 lost), slowest pi-2 busy 91 % of the step"
        );
    }
}
