//! One partition's part in a run: its inbox and the step protocol with the manager and the
//! other partitions. Its particles are stepped by a [`Worker`] (CPU or GPU), its field values
//! come through a [`Supply`].

use super::supply::Supply;
use super::{injected_fault, Log, PATIENCE, STEP_PATIENCE};
use crate::net::{bytes, converse, Caller, Dropped, Talk};
use crate::{Partition, Worker};
use anyhow::{anyhow, bail, Result};
use shoal_common::kernel::{step_time, Tally};
use shoal_common::keys::RunKeys;
use shoal_common::wire::{
    self, Command, Control, Ident, Message, ParticleBatch, Ready, RunSpec, StepSummary,
};
use shoal_common::{status, Mesh, Particles};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use zenoh::qos::CongestionControl;
use zenoh::Wait;

/// Refuses a batch holding a particle whose element partition `p` does not own (outside-mesh
/// particles keep their nearest element and go with the release, so they are exempt).
fn owned_by(b: &ParticleBatch, p: u32, part_of: &[u32]) -> Result<(), wire::WireError> {
    let foreign = b
        .particles
        .element
        .iter()
        .zip(&b.particles.status)
        .any(|(&e, &s)| {
            s != status::OUTSIDE_MESH && part_of.get(e as usize).is_none_or(|&o| o != p)
        });
    if foreign {
        return Err(wire::WireError::Inconsistent {
            kind: "particle batch",
            why: "a particle in an element another partition owns",
        });
    }
    Ok(())
}

/// One batch off the network: (sender, step, particles).
type Arrival = (u32, u32, ParticleBatch);

/// What every partition of a node's run shares: how it asks, the node, the mesh, the run's
/// specification, the device chosen and the worker threads.
pub(super) struct Shared<'a> {
    pub caller: Caller<'a>,
    /// The same count of messages dropped as `caller`'s, for the inbox's callback.
    pub dropped: &'a Arc<Dropped>,
    pub node: &'a str,
    pub mesh: &'a Mesh,
    pub spec: &'a RunSpec,
    pub choice: &'a crate::Choice,
    pub pool: Option<Arc<rayon::ThreadPool>>,
}

pub(super) struct PartitionAgent<'a> {
    supply: Supply<'a>,
    node: Ident,
    neighbours: Vec<u32>,
    /// The particles assigned, until the run starts and hands them, released, to `worker`.
    start: Particles,
    worker: Box<dyn Worker>,
    pool: Option<Arc<rayon::ThreadPool>>,
    choice: &'a crate::Choice,
    log: Log,
    inbox: mpsc::Receiver<Arrival>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
    publishers: HashMap<u32, zenoh::pubsub::Publisher<'a>>,
    /// Batches that arrived for a later step than the one being merged.
    early: Vec<Arrival>,
}

impl<'a> PartitionAgent<'a> {
    pub fn new(run: &Shared<'a>, p: u32, log: Log, abandon: &AtomicBool) -> Result<Self> {
        let (caller, mesh, spec) = (run.caller, run.mesh, run.spec);
        let (session, me) = (caller.session, caller.me);
        let keys = RunKeys::new(&me.cluster, me.run);
        let get = |key: String| caller.ask(&key, None, PATIENCE, abandon);
        let topo = match get(keys.topology(p))? {
            Message::Topology(t) if t.partition == p => t,
            other => bail!("expected partition {p}'s topology, got a {}", other.kind()),
        };
        let (ne, nn) = (mesh.n_elements() as u32, mesh.n_nodes() as u32);
        if topo.owned.iter().chain(&topo.halo).any(|&e| e >= ne)
            || topo.nodes.iter().any(|&n| n >= nn)
        {
            bail!("partition {p}'s topology names elements or nodes outside the mesh");
        }
        let particles = match get(keys.particles(p))? {
            Message::ParticleBatch(b) if b.to == p => b,
            other => bail!("expected partition {p}'s particles, got a {}", other.kind()),
        };
        let owned = |b: &ParticleBatch| owned_by(b, p, &spec.part_of);
        particles
            .check_against(ne as usize, spec.n_particles as usize)
            .and_then(|_| owned(&particles))
            .map_err(|e| anyhow!("partition {p}'s particles: {e}"))?;
        let particles = particles.particles;
        // Every other partition: each sends every other a batch each step, empty too, so a
        // partition knows whose batches to merge without asking the manager (a particle may
        // leave for a partition beyond its halo's owners).
        let neighbours: Vec<u32> = (0..spec.n_parts).filter(|&n| n != p).collect();
        let mut topo_elements = topo.owned.clone();
        topo_elements.extend_from_slice(&topo.halo);

        let (tx, inbox) = mpsc::channel::<Arrival>();
        let (me2, prefix, quiet) = (me.clone(), keys.clone(), log.quiet);
        let d = run.dropped.clone();
        let (n_particles, part_of) = (spec.n_particles as usize, spec.part_of.clone());
        let subscriber = session
            .declare_subscriber(keys.inboxes(p))
            .callback(move |sample| {
                let key = sample.key_expr().as_str();
                let from = prefix.numbers("inbox", key).and_then(|v| v.get(1).copied());
                match wire::decode(&sample.payload().to_bytes(), &me2) {
                    Ok(env) => match (env.message, from) {
                        (Message::ParticleBatch(b), Some(f)) if b.from == f && b.to == p => {
                            // Merging indexes the mesh with these elements: check them first,
                            // and that each lands in this partition, as a migrant must.
                            match b
                                .check_against(part_of.len(), n_particles)
                                .and_then(|_| owned_by(&b, p, &part_of))
                            {
                                Ok(()) => {
                                    let _ = tx.send((f, b.step, b));
                                }
                                Err(e) => d.note("inbox batch", &e, quiet),
                            }
                        }
                        (m, _) => d.note(
                            "inbox message",
                            &wire::WireError::Malformed(format!(
                                "a {} that is not a batch for this inbox",
                                m.kind()
                            )),
                            quiet,
                        ),
                    },
                    Err(e) => d.note("inbox message", &e, quiet),
                }
            })
            .wait()
            .map_err(|e| anyhow!("declaring the inbox: {e}"))?;
        let mut agent = PartitionAgent {
            supply: Supply {
                caller,
                keys,
                p,
                mesh,
                spec,
                topo,
                topo_elements,
                fields: Default::default(),
                prefetch: None,
            },
            node: wire::ident(run.node).map_err(|e| anyhow!("{e}"))?,
            neighbours: neighbours.clone(),
            start: particles,
            worker: Box::new(Partition::new(Particles::default())),
            pool: run.pool.clone(),
            choice: run.choice,
            log,
            inbox,
            _subscriber: subscriber,
            publishers: HashMap::new(),
            early: Vec::new(),
        };
        for n in neighbours {
            agent.publisher(n, abandon)?;
        }
        Ok(agent)
    }

    /// The publisher toward partition `to`'s inbox, declared once; it is ready when `to`'s
    /// subscriber is known here, so nothing sent on it is lost for want of a route.
    fn publisher(
        &mut self,
        to: u32,
        abandon: &AtomicBool,
    ) -> Result<&zenoh::pubsub::Publisher<'a>> {
        if !self.publishers.contains_key(&to) {
            let pubr = self
                .supply
                .caller
                .session
                .declare_publisher(self.supply.keys.inbox(to, self.supply.p))
                .congestion_control(CongestionControl::Block)
                .wait()
                .map_err(|e| anyhow!("declaring a publisher to partition {to}: {e}"))?;
            let deadline = Instant::now() + PATIENCE;
            while !pubr
                .matching_status()
                .wait()
                .map(|m| m.matching())
                .unwrap_or(false)
            {
                if Instant::now() > deadline {
                    bail!(
                        "partition {to}'s inbox did not appear within {} s",
                        PATIENCE.as_secs()
                    );
                }
                if abandon.load(Ordering::Relaxed) {
                    bail!("abandoned while waiting for partition {to}'s inbox");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.publishers.insert(to, pubr);
        }
        Ok(&self.publishers[&to])
    }

    /// Sends `m` on the partition's sync key and waits for the manager's control.
    fn sync(&self, m: Message, abandon: &AtomicBool) -> Result<Control> {
        let s = &self.supply;
        let b = bytes(s.caller.me, m)?;
        match s
            .caller
            .ask(&s.keys.sync(s.p), Some(&b), STEP_PATIENCE, abandon)?
        {
            Message::Control(c) => Ok(c),
            other => bail!("expected a control, got a {}", other.kind()),
        }
    }

    /// Covers step `s`'s levels and steps the worker's particles through it.
    fn step(&mut self, s: u32, abandon: &AtomicBool) -> Result<Tally> {
        let (dt, duration) = (self.supply.spec.params.dt, self.supply.spec.duration);
        let (t, t1) = (step_time(s, dt, duration), step_time(s + 1, dt, duration));
        self.supply.cover(t, t1, abandon)?;
        self.supply.advance(&mut *self.worker, s, (t, t1), abandon)
    }

    /// Whether this partition steps its own particles before the others' batches come.
    fn steps_ahead_of_arrivals(&self) -> bool {
        self.worker.steps_sets_apart() && !self.neighbours.is_empty()
    }

    /// Waits for the batches of `step` from every other partition, merging them; returns the
    /// particles received.
    fn merge(&mut self, step: u32, abandon: &AtomicBool) -> Result<u64> {
        let arrived = self.receive(step, abandon)?;
        self.worker.take_in(self.supply.mesh, &arrived)?;
        Ok(arrived.len() as u64)
    }

    /// Waits for the batches of `step` from every other partition and returns their particles.
    fn receive(&mut self, step: u32, abandon: &AtomicBool) -> Result<Particles> {
        let mut waiting: BTreeSet<u32> = self.neighbours.iter().copied().collect();
        let mut received = Particles::default();
        // Batches that came early first, then the inbox.
        let mut pending: Vec<Arrival> = std::mem::take(&mut self.early);
        let deadline = Instant::now() + STEP_PATIENCE;
        loop {
            for (from, at, b) in pending.drain(..) {
                if at > step {
                    self.early.push((from, at, b));
                } else if at == step && waiting.remove(&from) {
                    received.extend(&b.particles);
                }
            }
            if waiting.is_empty() {
                return Ok(received);
            }
            match self.inbox.recv_timeout(Duration::from_millis(250)) {
                Ok(a) => pending.push(a),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if abandon.load(Ordering::Relaxed) || Instant::now() > deadline {
                        bail!("step {step}: still waiting for partitions {waiting:?}");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the inbox closed"),
            }
        }
    }

    /// The bulk-synchronous loop; returns the steps done.
    pub fn run(&mut self, abandon: &AtomicBool, stop: &AtomicBool) -> Result<u32> {
        let (spec, mesh, p) = (self.supply.spec, self.supply.mesh, self.supply.p);
        let dt = spec.params.dt;
        let ready = Message::Ready(Ready {
            partition: p,
            node: self.node.clone(),
            device: wire::text(&self.choice.device()),
        });
        let start = self.sync(ready, abandon)?;
        if !matches!(start.command, Command::Start | Command::Stop) {
            bail!("expected the start, got {:?}", start.command);
        }
        // A run resumed from a checkpoint starts at its step; releases due then are done again
        // (a no-op for those the step before released).
        let first = spec.first_step;
        let forward = dt >= 0.0;
        let t0 = step_time(first, dt, spec.duration);
        self.supply
            .cover(t0, step_time(first + 1, dt, spec.duration), abandon)?;
        let mut part = Partition::new(std::mem::take(&mut self.start));
        part.sort_every = spec.sort_every;
        part.pool = self.pool.clone();
        part.release(mesh, self.supply.fields.window(), t0, forward);
        let held = part.particles.len();
        self.worker = self
            .choice
            .worker(part, mesh, &spec.params, Some(self.supply.owner()))
            .map_err(|e| anyhow!("partition {p}: {e}"))?;
        if start.command == Command::Stop {
            return Ok(0);
        }
        self.log.say(format!(
            "{held} particles, neighbours {:?}; fields hold {:?} elements per level in {:.0} MiB; {}",
            self.neighbours,
            self.supply.fields.elements_held(),
            self.supply.fields.heap_bytes() as f64 / (1 << 20) as f64,
            crate::health::rss_words()
        ));
        // Summaries and states go to the manager from a thread of their own, in their order: the
        // partition steps on, neighbour to neighbour, while the manager reads them (and writes
        // the states), and waits for an answer only where its grant (`through`) ends. Only the
        // summaries' answers come back; a state refused ends the partition.
        let caller = self.supply.caller;
        let (sync_key, state_key) = (self.supply.keys.sync(p), self.supply.keys.snapshot(p));
        let done = AtomicBool::new(false);
        let (s, waits) = std::thread::scope(|scope| -> Result<(u32, [Duration; 3])> {
            let (tell, talk) = mpsc::channel::<Talk>();
            let (answer, answers) = mpsc::channel::<Result<Message>>();
            let done = &done;
            let summaries = tell.clone();
            scope.spawn(move || converse(&caller, &tell, &talk, &answer, [done, abandon]));
            let control = |a: Result<Message>| match a? {
                Message::Control(c) => Ok(c),
                other => Err(anyhow!("expected a control, got a {}", other.kind())),
            };
            let ask = |message: Message| -> Result<()> {
                let state = matches!(message, Message::Snapshot(_));
                let (key, patience) = match state {
                    true => (state_key.clone(), PATIENCE),
                    false => (sync_key.clone(), STEP_PATIENCE),
                };
                summaries
                    .send(Talk::Ask {
                        key,
                        message,
                        patience,
                        keep: !state,
                    })
                    .map_err(|_| anyhow!("the manager's controls stopped"))
            };
            // However the loop fails, the thread stops asking.
            struct Done<'d>(&'d AtomicBool, bool);
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    if self.1 {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
            }
            let mut guard = Done(done, true);
            let mut granted = start.through;
            let mut wanted: BTreeSet<u32> = start.states.iter().copied().collect();
            let mut answered: Option<u32> = None;
            let mut received = 0u64;
            // Step s's tally and stepping time when step s was done ahead of the arrivals.
            let mut ahead: Option<(Tally, Duration)> = None;
            let (mut waited_batches, mut waited_grant) = (Duration::ZERO, Duration::ZERO);
            let mut busy_total = Duration::ZERO;
            let mut s = first;
            loop {
                if stop.load(Ordering::Relaxed) {
                    bail!("stopped");
                }
                if injected_fault("kill", s) {
                    // SAFETY: kill(2) on this process; it never returns.
                    unsafe { libc::kill(std::process::id() as i32, libc::SIGKILL) };
                }
                if injected_fault("panic", s) {
                    panic!("injected at step {s} (SHOAL_TEST_FAULT)");
                }
                let (tally, mut busy) = match ahead.take() {
                    Some(done) => done,
                    None => {
                        let clock = Instant::now();
                        let tally = self.step(s, abandon)?;
                        (tally, clock.elapsed())
                    }
                };
                let clock = Instant::now();
                let mut out = self.worker.emigrants(mesh, self.supply.owner())?;
                for &n in &self.neighbours {
                    out.entry(n).or_default();
                }
                let mut sent_to = Vec::with_capacity(out.len());
                let mut sent_counts = Vec::with_capacity(out.len());
                for (to, batch) in out {
                    sent_to.push(to);
                    sent_counts.push(batch.len() as u32);
                    let b = bytes(
                        caller.me,
                        Message::ParticleBatch(ParticleBatch::of(p, to, s, batch)),
                    )?;
                    self.publisher(to, abandon)?
                        .put(b)
                        .wait()
                        .map_err(|e| anyhow!("sending to partition {to}: {e}"))?;
                }
                let summary = StepSummary {
                    partition: p,
                    step: s,
                    tally,
                    sent: sent_counts.iter().map(|&c| c as u64).sum(),
                    received,
                    sent_to,
                    sent_counts,
                    dropped: caller.dropped.get(),
                    peak_rss_kib: crate::health::peak_rss_kib(),
                    busy_us: {
                        busy += clock.elapsed();
                        busy_total += busy;
                        busy.as_micros() as u64
                    },
                };
                ask(Message::StepSummary(summary))?;
                // The answers so far; past the grant, wait for the one that extends it.
                let mut stop_here = false;
                let deadline = Instant::now() + STEP_PATIENCE;
                loop {
                    let c = if s + 1 > granted && !stop_here {
                        let clock = Instant::now();
                        let a = answers.recv_timeout(Duration::from_millis(250));
                        waited_grant += clock.elapsed();
                        match a {
                            Ok(c) => control(c)?,
                            Err(mpsc::RecvTimeoutError::Timeout) => {
                                if abandon.load(Ordering::Relaxed) || Instant::now() > deadline {
                                    bail!("step {s}: no control from the manager");
                                }
                                continue;
                            }
                            Err(mpsc::RecvTimeoutError::Disconnected) => {
                                bail!("the manager's controls stopped")
                            }
                        }
                    } else {
                        match answers.try_recv() {
                            Ok(c) => control(c)?,
                            Err(_) => break,
                        }
                    };
                    let expected = answered.map_or(first, |a| a + 1);
                    if c.step != expected {
                        bail!("control for step {}, expected {expected}", c.step);
                    }
                    answered = Some(c.step);
                    wanted.extend(c.states.iter().copied());
                    if c.snapshot {
                        wanted.insert(c.step + 1);
                    }
                    match c.command {
                        Command::Continue => granted = granted.max(c.through),
                        Command::Stop if c.step == s => stop_here = true,
                        Command::Stop => bail!("a stop at step {} while at step {s}", c.step),
                        other => bail!("step {s}: cannot {other:?}"),
                    }
                }
                let state_due = wanted.remove(&(s + 1));
                if stop_here || state_due || !self.steps_ahead_of_arrivals() {
                    let clock = Instant::now();
                    received = self.merge(s, abandon)?;
                    waited_batches += clock.elapsed();
                    if state_due {
                        let state = ParticleBatch::of(p, u32::MAX, s + 1, self.worker.state(mesh)?);
                        ask(Message::Snapshot(state))?;
                    }
                } else {
                    // Step s + 1 for the particles here while the other partitions' batches of
                    // step s are on their way, then for those when they come: a link's delay
                    // hides behind the stepping. Each particle's step is its own, so the two
                    // sets give the bits one would.
                    let clock = Instant::now();
                    let here = self.step(s + 1, abandon)?;
                    busy = clock.elapsed();
                    let waiting = Instant::now();
                    let arrived = self.receive(s, abandon)?;
                    waited_batches += waiting.elapsed();
                    let clock = Instant::now();
                    received = arrived.len() as u64;
                    // Stepped as they came, unsorted, on the CPU beside the worker.
                    let mut came = Partition::new(arrived);
                    came.sort_every = 0;
                    came.pool = self.pool.clone();
                    let t = step_time(s + 1, dt, spec.duration);
                    let t1 = step_time(s + 2, dt, spec.duration);
                    let tally = self.supply.advance(&mut came, s + 1, (t, t1), abandon)?;
                    self.worker.take_in(mesh, &came.particles)?;
                    ahead = Some((here.merge(tally), busy + clock.elapsed()));
                }
                s += 1;
                if stop_here {
                    break;
                }
            }
            // The last states still go out; the thread ends when they are answered.
            let _ = summaries.send(Talk::Close);
            for a in answers {
                a?;
            }
            guard.1 = false;
            Ok((s, [waited_batches, waited_grant, busy_total]))
        })?;
        let readback = self.worker.report(s - first);
        self.log.say(format!(
            "stopped after {s} steps; busy {:.2} s; waited {:.2} s for other partitions' batches \
             and {:.2} s for the manager's grants; fetched {} halo element values on \
             demand{readback}; {}",
            waits[2].as_secs_f64(),
            waits[0].as_secs_f64(),
            waits[1].as_secs_f64(),
            self.supply.fields.fetched,
            crate::health::rss_words()
        ));
        Ok(s)
    }
}
