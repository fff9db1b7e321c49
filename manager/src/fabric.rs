//! The manager on the zenoh fabric: waits for node agents (in-process ones for the embedded
//! default, or the running `shoal-node`s of a named cluster), partitions the mesh with METIS,
//! assigns partitions by capability, serves the run's specification, topologies, particles and
//! field slices (reading only the slice asked for, caching the current levels), then drives
//! the run bulk-synchronously: gather every partition's step summary, check conservation, decide
//! continue or stop, tell each partition whose batches to expect, gather snapshots at output
//! times and write them. Every key is spelled in `shoal_common::keys`.

use crate::config::RunConfig;
use crate::fvcom::FvcomReader;
use crate::partition::{default_rings, halo, max_speed, partition, Partitioning};
use crate::run::{create_writer, happy_stop, progress_bar, say, Prepared, RunOptions, RunReport};
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::keys::{self, RunKeys};
use shoal_common::mesh::is_element;
use shoal_common::wire::{
    self, Assignment, Command, Control, Endpoint, FieldRequest, FieldSlice, Ident, Message,
    ParticleBatch, RunSpec, StepSummary, Topology,
};
use shoal_common::{status, Mesh, Particles, RawSlice, Tally};
use shoal_node::agent::{serve, NodeOptions};
use shoal_node::net::{bytes, free_loopback_port, query_message, reply, Dropped, Fabric};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use zenoh::query::Query;
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

/// What the manager's main loop hears.
enum Event {
    Sync(Message, Query),
    Snapshot(wire::Snapshot, Query),
    Lost(String),
}

/// A node that joined, as its token describes it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub name: String,
    pub cores: u16,
    pub arch: String,
}

/// A token this manager cannot read, and why: another protocol version, or not a hello.
#[derive(Clone, Debug)]
pub(crate) struct Stranger {
    pub name: String,
    pub why: wire::WireError,
}

pub(crate) fn run_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // Mixed so that runs started in the same nanosecond by two processes still differ.
    let x = t ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The nodes whose tokens are up now, and the tokens that do not read as a hello.
pub(crate) fn census(
    session: &Session,
    cluster: &Ident,
    dropped: &Dropped,
) -> Result<(Vec<Member>, Vec<Stranger>)> {
    let replies = session
        .liveliness()
        .get(keys::node_tokens(cluster))
        .timeout(Duration::from_secs(1))
        .wait()
        .map_err(|e| anyhow!("listing nodes: {e}"))?;
    let mut out = BTreeMap::new();
    let mut strangers = BTreeMap::new();
    while let Ok(reply) = replies.recv() {
        let Ok(sample) = reply.result() else { continue };
        let key = sample.key_expr().as_str();
        let Some((name, b)) = keys::parse_node_token(cluster, key) else {
            dropped.note(
                "node token",
                &wire::WireError::Malformed(format!("token {key}")),
                true,
            );
            continue;
        };
        let why = match wire::decode_any_run(&b, cluster) {
            Ok(env) => match env.message {
                Message::Hello(h) if h.node.as_str() == name => {
                    out.insert(
                        name.clone(),
                        Member {
                            name,
                            cores: h.capabilities.cores.max(1),
                            arch: h.capabilities.arch.to_string(),
                        },
                    );
                    continue;
                }
                other => wire::WireError::Malformed(format!("a {} in a token", other.kind())),
            },
            Err(e) => e,
        };
        dropped.note("node token", &why, true);
        strangers.insert(name.clone(), Stranger { name, why });
    }
    Ok((
        out.into_values().collect(),
        strangers.into_values().collect(),
    ))
}

fn members(session: &Session, cluster: &Ident, dropped: &Dropped) -> Result<Vec<Member>> {
    Ok(census(session, cluster, dropped)?.0)
}

/// Waits for `want` nodes (0: whoever joins, once one has) until `wait` runs out.
pub(crate) fn wait_for_nodes(
    session: &Session,
    cluster: &Ident,
    want: usize,
    wait: Duration,
    dropped: &Dropped,
) -> Result<Vec<Member>> {
    let deadline = Instant::now() + wait;
    let mut settled_once = false;
    loop {
        let m = members(session, cluster, dropped)?;
        if want > 0 && m.len() >= want {
            return Ok(m.into_iter().take(want).collect());
        }
        if want == 0 && !m.is_empty() {
            // Give nodes starting together a moment to appear too.
            if settled_once {
                return Ok(m);
            }
            settled_once = true;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if Instant::now() > deadline {
            if m.is_empty() {
                bail!(
                    "no node joined cluster `{cluster}` within {} s: start `shoal-node --cluster {cluster}` on each node (same LAN, or the endpoints of a zenoh configuration), or run without a cluster name for the embedded default",
                    wait.as_secs_f64()
                );
            }
            bail!(
                "only {} of {want} nodes joined cluster `{cluster}` within {} s: {}",
                m.len(),
                wait.as_secs_f64(),
                m.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
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
#[allow(clippy::too_many_arguments)]
fn field_slice(
    mesh: &Mesh,
    raw: &RawSlice,
    partition: u32,
    time_index: u32,
    elements: &[u32],
    nodes: &[u32],
    explicit: bool,
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
        elements: if explicit { elements.to_vec() } else { vec![] },
        nodes: if explicit { nodes.to_vec() } else { vec![] },
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
    }
}

/// Serves what nodes pull: specification, topologies, initial particles, field slices and
/// on-demand halo values. One thread, since NetCDF reads are serialized anyway.
struct Server<'a> {
    reader: &'a FvcomReader,
    mesh: &'a Mesh,
    me: Endpoint,
    keys: RunKeys,
    origin: f64,
    spec: Vec<u8>,
    topologies: Vec<Topology>,
    topo_bytes: Vec<Vec<u8>>,
    particles: Vec<Vec<u8>>,
    cache: HashMap<usize, Arc<RawSlice>>,
    read_time: Duration,
    halo_served: u64,
}

impl Server<'_> {
    fn slice(&mut self, idx: usize) -> Result<Arc<RawSlice>> {
        if let Some(r) = self.cache.get(&idx) {
            return Ok(r.clone());
        }
        let t = Instant::now();
        let raw = Arc::new(self.reader.read_slice(idx, self.origin)?);
        self.read_time += t.elapsed();
        // Keep the few levels around the current step.
        if self.cache.len() >= 4 {
            if let Some(&old) = self.cache.keys().min() {
                self.cache.remove(&old);
            }
        }
        self.cache.insert(idx, raw.clone());
        Ok(raw)
    }

    fn answer(&mut self, what: &str, q: &Query, dropped: &Dropped) -> Result<()> {
        let key = q.key_expr().as_str().to_string();
        let n_parts = self.topologies.len() as u32;
        let nums = self.keys.numbers(what, &key);
        let part = |i: usize| -> Result<u32> {
            nums.as_ref()
                .and_then(|v| v.get(i).copied())
                .filter(|&p| i > 0 || p < n_parts)
                .ok_or_else(|| anyhow!("{key}: no such partition or index"))
        };
        let b = match what {
            "spec" => self.spec.clone(),
            "topology" => self.topo_bytes[part(0)? as usize].clone(),
            "particles" => self.particles[part(0)? as usize].clone(),
            "field" => {
                let (p, idx) = (part(0)?, part(1)? as usize);
                if idx >= self.reader.times.len() {
                    bail!("{key}: no time index {idx}");
                }
                let raw = self.slice(idx)?;
                let t = &self.topologies[p as usize];
                let elements: Vec<u32> = t.owned.iter().chain(&t.halo).copied().collect();
                let f = field_slice(self.mesh, &raw, p, idx as u32, &elements, &t.nodes, false);
                bytes(&self.me, Message::FieldSlice(f))?
            }
            "halo" => {
                let Some(Message::FieldRequest(FieldRequest {
                    partition,
                    time_index,
                    elements,
                })) = query_message(q, &self.me, dropped, true)
                else {
                    return Ok(());
                };
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
                self.halo_served += elements.len() as u64;
                let f = field_slice(self.mesh, &raw, partition, time_index, &with, &nodes, true);
                bytes(&self.me, Message::FieldSlice(f))?
            }
            _ => bail!("{key}: not served"),
        };
        q.reply(q.key_expr().clone(), b)
            .wait()
            .map_err(|e| anyhow!("replying on {key}: {e}"))
    }
}

/// In-process node agents for the embedded default, each with its own zenoh session.
pub(crate) struct LocalNodes {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Result<u64>>>,
}

impl LocalNodes {
    fn start(
        n: usize,
        cluster: &Ident,
        fabric: &Fabric,
        pool: &Arc<rayon::ThreadPool>,
    ) -> Result<LocalNodes> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let opts = NodeOptions {
                cluster: cluster.clone(),
                name: format!("local-{i}"),
                fabric: fabric.clone(),
                quiet: std::env::var_os("SHOAL_NODE_LOG").is_none(),
                pool: Some(pool.clone()),
                notify: false,
            };
            let stop = stop.clone();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("shoal-node-{i}"))
                    .spawn(move || {
                        let session = opts.fabric.open()?;
                        let r = serve(&opts, &session, &stop);
                        let _ = session.close().wait();
                        r
                    })
                    .context("starting an in-process node")?,
            );
        }
        Ok(LocalNodes { stop, handles })
    }

    /// Stops the agents and returns what they dropped.
    fn finish(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut dropped = 0;
        for h in self.handles {
            dropped += h
                .join()
                .map_err(|_| anyhow!("an in-process node panicked"))??;
        }
        Ok(dropped)
    }
}

/// Where a manager joins the fabric: a named cluster of running nodes, or the embedded default's
/// own in-process nodes on loopback.
pub(crate) struct FleetSpec<'a> {
    /// The cluster's name; `None`: the embedded default.
    pub name: Option<&'a str>,
    /// Embedded: in-process nodes to start (at least one). Named: nodes to wait for (0: whoever
    /// joins).
    pub nodes: usize,
    pub zenoh_config: Option<std::path::PathBuf>,
    /// Endpoints to connect to and listen on, besides the configuration's (named clusters).
    pub connect: Vec<String>,
    pub listen: Vec<String>,
    /// The in-process nodes' worker threads.
    pub pool: Arc<rayon::ThreadPool>,
}

/// The manager's session, its cluster and, for the embedded default, its in-process nodes.
pub(crate) struct Fleet {
    pub session: Session,
    pub cluster: Ident,
    pub dropped: Arc<Dropped>,
    want: usize,
    local: Option<LocalNodes>,
}

impl Fleet {
    pub fn join(spec: &FleetSpec) -> Result<Fleet> {
        let base = spec.zenoh_config.clone();
        let (cluster, fabric, local) = match spec.name {
            Some(n) => {
                if !keys::is_chunk(n) {
                    bail!("cluster `{n}`: use letters, digits, `-`, `_` and `.` only");
                }
                let cluster = wire::ident(n).map_err(|e| anyhow!("cluster `{n}`: {e}"))?;
                let fabric = Fabric {
                    config_file: base,
                    connect: spec.connect.clone(),
                    listen: (!spec.listen.is_empty()).then(|| spec.listen.clone()),
                    ..Default::default()
                };
                (cluster, fabric, None)
            }
            None => {
                let cluster = wire::ident(&format!("embedded-{:08x}", run_id() as u32))
                    .expect("a short name");
                let ep = format!("tcp/127.0.0.1:{}", free_loopback_port()?);
                let mut m = Fabric::loopback(vec![]);
                m.listen = Some(vec![ep.clone()]);
                m.config_file = base.clone();
                let mut n = Fabric::loopback(vec![ep]);
                n.config_file = base;
                (cluster, m, Some(n))
            }
        };
        let session = fabric.open()?;
        let local = match local {
            Some(f) => Some(LocalNodes::start(
                spec.nodes.max(1),
                &cluster,
                &f,
                &spec.pool,
            )?),
            None => None,
        };
        Ok(Fleet {
            session,
            cluster,
            dropped: Arc::new(Dropped::default()),
            want: if local.is_some() {
                spec.nodes.max(1)
            } else {
                spec.nodes
            },
            local,
        })
    }

    /// The nodes that joined within `seconds` (all the embedded ones, or as many as asked for).
    pub fn wait(&self, seconds: f64) -> Result<Vec<Member>> {
        wait_for_nodes(
            &self.session,
            &self.cluster,
            self.want,
            Duration::from_secs_f64(seconds),
            &self.dropped,
        )
    }

    /// Stops the in-process nodes and closes the session; returns the messages they dropped.
    pub fn leave(self) -> Result<u64> {
        let local = match self.local {
            Some(l) => l.finish(),
            None => Ok(0),
        };
        let _ = self.session.close().wait();
        local
    }
}

/// Runs `cfg` on the fabric.
pub fn run(
    cfg: &RunConfig,
    opts: &RunOptions,
    prep: Prepared,
    device: String,
) -> Result<RunReport> {
    let quiet = opts.quiet;
    let say = |s: String| say(quiet, s);
    let named = opts.cluster.clone().or_else(|| cfg.cluster.name.clone());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let run = run_id();
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
    })?;
    let result = (|| {
        let members = fleet.wait(cfg.cluster.wait_seconds)?;
        drive(
            cfg,
            opts,
            prep,
            &fleet.session,
            &fleet.cluster,
            run,
            &members,
            &fleet.dropped,
            device,
        )
    })();
    let local_dropped = fleet.leave();
    let mut report = result?;
    report.dropped += local_dropped?;
    if report.dropped > 0 {
        say(format!(
            "fabric: dropped {} foreign or malformed messages",
            report.dropped
        ));
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn drive(
    cfg: &RunConfig,
    opts: &RunOptions,
    prep: Prepared,
    session: &Session,
    cluster: &Ident,
    run: u64,
    members: &[Member],
    dropped: &Arc<Dropped>,
    device: String,
) -> Result<RunReport> {
    let quiet = opts.quiet;
    let say = |s: String| say(quiet, s);
    let writer = create_writer(cfg, &prep)?;
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
        wall,
        ..
    } = prep;
    let n = particles.len();
    let ne = mesh.n_elements();
    let me = Endpoint {
        cluster: cluster.clone(),
        run,
    };
    let keys = RunKeys::new(cluster, run);

    // Partition: METIS on the dual graph, weighted by the release.
    let n_parts = cfg.cluster.partitions.unwrap_or(members.len()).clamp(1, ne);
    let mut weights = vec![1u32; ne];
    for (e, s) in particles.element.iter().zip(&particles.status) {
        if *s != status::OUTSIDE_MESH {
            weights[*e as usize] += 1;
        }
    }
    let parts = if n_parts == 1 {
        Partitioning {
            n_parts: 1,
            part_of: vec![0; ne],
            part_weight: vec![weights.iter().map(|&w| w as u64).sum()],
            edge_cut: 0,
            imbalance: 1.0,
        }
    } else {
        partition(&mesh, &weights, n_parts)?
    };
    let times: Vec<f64> = reader.times.iter().map(|t| t - start).collect();
    let rings = match cfg.cluster.halo_rings {
        Some(r) => r,
        None => {
            let (lo, _) = shoal_common::fields::span(&times, 0.0, 0.0);
            let speed = max_speed(&reader.read_slice(lo, start)?);
            default_rings(speed, cfg.dt, mesh.smallest_edge())
        }
    };
    let assignment = assign(members, n_parts);
    say(format!(
        "fabric: cluster `{cluster}`, run {run:016x}: {} nodes ({}), {n_parts} partitions, edge cut {}, imbalance {:.3}, halo {rings} rings",
        members.len(),
        members
            .iter()
            .zip(&assignment)
            .map(|(m, a)| format!("{} {} x{} cores: {:?}", m.name, m.arch, m.cores, a))
            .collect::<Vec<_>>()
            .join("; "),
        parts.edge_cut,
        parts.imbalance
    ));

    let topologies: Vec<Topology> = (0..n_parts as u32)
        .map(|p| topology(&mesh, &parts.part_of, p, rings))
        .collect();
    let mut split: Vec<Particles> = vec![Particles::default(); n_parts];
    for i in 0..n {
        let owner = parts.part_of[particles.element[i] as usize] as usize;
        split[owner].push_from(&particles, i);
    }
    let particle_bytes = split
        .into_iter()
        .enumerate()
        .map(|(p, ps)| {
            bytes(
                &me,
                Message::ParticleBatch(ParticleBatch::of(u32::MAX, p as u32, 0, ps)),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = RunSpec {
        mesh: reader.mesh_input.clone(),
        params,
        times: times.clone(),
        n_steps,
        duration,
        n_particles: n as u32,
        n_parts: n_parts as u32,
        part_of: parts.part_of.clone(),
        sort_every: cfg.sort_every,
        temp: reader.layout.temp,
        kh: reader.layout.kh,
    };
    let server = Server {
        reader: &reader,
        mesh: &mesh,
        me: me.clone(),
        keys: keys.clone(),
        origin: start,
        spec: bytes(&me, Message::RunSpec(Box::new(spec)))?,
        topo_bytes: topologies
            .iter()
            .map(|t| bytes(&me, Message::Topology(t.clone())))
            .collect::<Result<_>>()?,
        topologies,
        particles: particle_bytes,
        cache: HashMap::new(),
        read_time: Duration::ZERO,
        halo_served: 0,
    };

    // Queryables: data requests go to the server thread, syncs and snapshots to this one.
    let (data_tx, data_rx) = mpsc::channel::<(&'static str, Query)>();
    let (ev_tx, events) = mpsc::channel::<Event>();
    let mut queryables = Vec::new();
    for what in ["spec", "topology/*", "particles/*", "field/*/*", "halo/*"] {
        let tx = data_tx.clone();
        let name: &'static str = what.split('/').next().unwrap_or(what);
        queryables.push(
            session
                .declare_queryable(keys.all(what))
                .callback(move |q| {
                    let _ = tx.send((name, q));
                })
                .wait()
                .map_err(|e| anyhow!("declaring {what}: {e}"))?,
        );
    }
    drop(data_tx);
    for what in ["sync/*", "snapshot/*"] {
        let (tx, me, d) = (ev_tx.clone(), me.clone(), dropped.clone());
        let snapshot = what.starts_with("snapshot");
        queryables.push(
            session
                .declare_queryable(keys.all(what))
                .callback(move |q| {
                    let Some(m) = query_message(&q, &me, &d, true) else {
                        return;
                    };
                    let _ = match (snapshot, m) {
                        (true, Message::Snapshot(s)) => tx.send(Event::Snapshot(s, q)),
                        (
                            false,
                            m @ (Message::Ready(_) | Message::StepSummary(_) | Message::Failure(_)),
                        ) => tx.send(Event::Sync(m, q)),
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
    let assigned: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    let tx = ev_tx.clone();
    let c2 = cluster.clone();
    let _watch = session
        .liveliness()
        .declare_subscriber(keys::node_tokens(cluster))
        .callback(move |s| {
            if s.kind() == SampleKind::Delete {
                if let Some((name, _)) = keys::parse_node_token(&c2, s.key_expr().as_str()) {
                    if assigned.contains(&name) {
                        let _ = tx.send(Event::Lost(name));
                    }
                }
            }
        })
        .wait()
        .map_err(|e| anyhow!("watching nodes: {e}"))?;
    drop(ev_tx);
    let _token = session
        .liveliness()
        .declare_token(keys::manager_token(cluster, run))
        .wait()
        .map_err(|e| anyhow!("declaring the manager token: {e}"))?;

    let served = AtomicU64::new(0);
    let read_time = Mutex::new(Duration::ZERO);
    let outcome = std::thread::scope(|sc| -> Result<(RunReport, Duration)> {
        let d = dropped.clone();
        let (served, read_time) = (&served, &read_time);
        let server_thread = sc.spawn(move || {
            let mut server = server;
            while let Ok((what, q)) = data_rx.recv() {
                if let Err(e) = server.answer(what, &q, &d) {
                    let _ = q.reply_err(format!("{e:#}")).wait();
                }
                served.store(server.halo_served, Ordering::Relaxed);
            }
            *read_time.lock().unwrap() = server.read_time;
        });
        let never = AtomicBool::new(false);
        // Hand out the partitions.
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
            let answer = shoal_node::net::ask_any_run(
                session,
                &keys::assign(cluster, &m.name),
                &b,
                &cluster_ep,
                dropped,
                Duration::from_secs(30),
                &never,
            )
            .with_context(|| format!("assigning partitions to node {}", m.name))?;
            if !matches!(answer, Message::Hello(_)) {
                bail!(
                    "node {} answered its assignment with a {}",
                    m.name,
                    answer.kind()
                );
            }
        }
        let driver = Driver {
            events: &events,
            me: &me,
            n_parts,
            members,
            assignment: &assignment,
            deferred: Default::default(),
        };
        let r = driver.steps(cfg, writer, n, n_steps, output_every, duration, quiet, wall);
        // Let the server go once every node is done with it.
        drop(queryables);
        let _ = server_thread.join();
        let (mut report, output) = r?;
        report.threads = threads;
        report.device = device;
        report.outside = outside;
        report.nodes = members.len();
        report.partitions = n_parts;
        Ok((report, output))
    })?;
    let (mut report, output) = outcome;
    report.halo_served = served.load(Ordering::Relaxed);
    report.fields = *read_time.lock().unwrap();
    report.output = output;
    report.dropped = dropped.get();
    let last = report.last;
    say(format!(
        "done: {} steps in {:.2} s ({:.2} M particle-steps/s overall, fields {:.2} s, output {:.2} s); active {}, exited {}, bad field {}, outside mesh {}; {} halo values fetched on demand; wrote {}",
        report.steps,
        report.wall.as_secs_f64(),
        report.particle_steps as f64 / report.wall.as_secs_f64() / 1e6,
        report.fields.as_secs_f64(),
        output.as_secs_f64(),
        last.active,
        last.exited,
        last.bad_field,
        last.outside_mesh,
        report.halo_served,
        cfg.output.display()
    ));
    Ok(report)
}

struct Driver<'a> {
    events: &'a mpsc::Receiver<Event>,
    me: &'a Endpoint,
    n_parts: usize,
    members: &'a [Member],
    assignment: &'a [Vec<u32>],
    /// Syncs that came while snapshots were being gathered (a partition that sent its snapshot
    /// goes straight on to its next step).
    deferred: std::cell::RefCell<std::collections::VecDeque<(Message, Query)>>,
}

impl Driver<'_> {
    fn node_of(&self, p: u32) -> &str {
        self.assignment
            .iter()
            .position(|a| a.contains(&p))
            .map(|i| self.members[i].name.as_str())
            .unwrap_or("?")
    }

    /// The next event, failing when a node is lost or reports a failure.
    fn next(&self, what: &str) -> Result<Event> {
        loop {
            match self.events.recv_timeout(Duration::from_secs(1)) {
                Ok(Event::Lost(name)) => bail!(
                    "node {name} left the cluster while the run waited for {what}; its partitions cannot be recovered"
                ),
                Ok(Event::Sync(Message::Failure(f), q)) => {
                    let _ = q.reply_err("stopping").wait();
                    bail!(
                        "partition {} on node {} failed: {}",
                        f.partition,
                        self.node_of(f.partition),
                        f.reason
                    );
                }
                Ok(e) => return Ok(e),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the fabric closed"),
            }
        }
    }

    /// Every partition's sync message for one phase, with the queries to answer.
    fn gather_sync<T>(
        &self,
        what: &str,
        pick: impl Fn(Message) -> std::result::Result<(u32, T), Message>,
    ) -> Result<Vec<(T, Query)>> {
        let mut got: BTreeMap<u32, (T, Query)> = BTreeMap::new();
        while got.len() < self.n_parts {
            let deferred = self.deferred.borrow_mut().pop_front();
            let event = match deferred {
                Some((m, q)) => Event::Sync(m, q),
                None => self.next(what)?,
            };
            match event {
                Event::Sync(m, q) => match pick(m) {
                    Ok((p, v)) if (p as usize) < self.n_parts => {
                        // A retry replaces the query it repeats.
                        got.insert(p, (v, q));
                    }
                    Ok((p, _)) => {
                        let _ = q.reply_err(format!("no partition {p}")).wait();
                    }
                    Err(m) => {
                        let _ = q
                            .reply_err(format!("a {} while waiting for {what}", m.kind()))
                            .wait();
                    }
                },
                Event::Snapshot(_, q) => {
                    let _ = q
                        .reply_err(format!("a snapshot while waiting for {what}"))
                        .wait();
                }
                Event::Lost(_) => unreachable!("handled by next"),
            }
        }
        Ok(got.into_values().collect())
    }

    /// Every partition's snapshot of `step`, checked: each particle exactly once.
    fn gather_snapshots(&self, step: u32, n: usize) -> Result<Vec<shoal_node::Snapshot>> {
        let mut got: BTreeMap<u32, wire::Snapshot> = BTreeMap::new();
        while got.len() < self.n_parts {
            match self.next("snapshots")? {
                Event::Snapshot(s, q)
                    if s.step == step && (s.partition as usize) < self.n_parts =>
                {
                    reply(
                        &q,
                        self.me,
                        Message::Control(Control {
                            step,
                            command: Command::Continue,
                            expect: vec![],
                            snapshot: false,
                        }),
                    )?;
                    got.insert(s.partition, s);
                }
                Event::Snapshot(_, q) => {
                    let _ = q.reply_err("not the snapshot expected").wait();
                }
                Event::Sync(m, q) => self.deferred.borrow_mut().push_back((m, q)),
                Event::Lost(_) => unreachable!("handled by next"),
            }
        }
        let mut seen = vec![false; n];
        let mut out = Vec::with_capacity(got.len());
        for (p, s) in got {
            for &id in &s.id {
                let slot = seen.get_mut(id as usize).ok_or_else(|| {
                    anyhow!("partition {p} reported particle {id}, but the run has {n}")
                })?;
                if *slot {
                    bail!("particle {id} is in two partitions at step {step}");
                }
                *slot = true;
            }
            out.push(shoal_node::Snapshot::from_wire(s));
        }
        if let Some(missing) = seen.iter().position(|s| !s) {
            bail!("particle {missing} is in no partition at step {step}");
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn steps(
        &self,
        cfg: &RunConfig,
        mut writer: crate::output::TrajectoryWriter,
        n: usize,
        n_steps: u32,
        output_every: u32,
        duration: f64,
        quiet: bool,
        wall: Instant,
    ) -> Result<(RunReport, Duration)> {
        let me = self.me;
        let progress = progress_bar(quiet, n_steps);
        let mut output = Duration::ZERO;
        let ready = self.gather_sync("every partition to be ready", |m| match m {
            Message::Ready(r) => Ok((r.partition, ())),
            m => Err(m),
        })?;
        let start = Control {
            step: 0,
            command: if n_steps == 0 {
                Command::Stop
            } else {
                Command::Start
            },
            expect: vec![],
            snapshot: true,
        };
        for (_, q) in ready {
            reply(&q, me, Message::Control(start.clone()))?;
        }
        let snaps = self.gather_snapshots(0, n)?;
        let o = Instant::now();
        writer.write(0.0, &snaps)?;
        output += o.elapsed();
        let mut last = Tally::empty();
        let mut ecstatic = false;
        let mut steps_done = 0;
        let mut sent_before = 0u64;
        for s in 0..n_steps {
            let sums = self.gather_sync("step summaries", |m| match m {
                Message::StepSummary(x) if x.step == s => Ok((x.partition, x)),
                m => Err(m),
            })?;
            let mut tally = Tally::empty();
            let (mut sent, mut received) = (0u64, 0u64);
            let mut expect: Vec<Vec<u32>> = vec![Vec::new(); self.n_parts];
            for (x, _) in &sums {
                tally = tally.merge(tally_of_summary(x));
                sent += x.sent;
                received += x.received;
                let mut counted = 0u64;
                for (&to, &c) in x.sent_to.iter().zip(&x.sent_counts) {
                    let slot = expect.get_mut(to as usize).ok_or_else(|| {
                        anyhow!(
                            "partition {} sent to partition {to}, which does not exist",
                            x.partition
                        )
                    })?;
                    slot.push(x.partition);
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
            // Conservation: every particle accounted for once, every migrant arrived.
            if tally.total() != n as u64 {
                bail!(
                    "particle count mismatch at step {s}: {} accounted for, {n} released",
                    tally.total()
                );
            }
            if s > 0 && received != sent_before {
                bail!(
                    "step {s}: {received} particles arrived of the {sent_before} sent at step {}",
                    s - 1
                );
            }
            sent_before = sent;
            let t1 = ((s + 1) as f64 * cfg.dt).min(duration);
            let happy = happy_stop(cfg, &tally);
            let stop = s + 1 == n_steps || happy;
            let snapshot = (s + 1) % output_every == 0 || stop;
            for (x, q) in sums {
                let c = Control {
                    step: s,
                    command: if stop {
                        Command::Stop
                    } else {
                        Command::Continue
                    },
                    expect: std::mem::take(&mut expect[x.partition as usize]),
                    snapshot,
                };
                reply(&q, me, Message::Control(c))?;
            }
            if snapshot {
                let snaps = self.gather_snapshots(s + 1, n)?;
                let o = Instant::now();
                writer.write(t1, &snaps)?;
                output += o.elapsed();
            }
            last = tally;
            steps_done = s + 1;
            if progress.length().is_some() {
                let rate = (steps_done as f64 * n as f64) / wall.elapsed().as_secs_f64().max(1e-9);
                progress.set_message(format!(
                    "{:.2} M particle-steps/s, {} active, {sent} migrated",
                    rate / 1e6,
                    tally.active
                ));
                progress.inc(1);
            }
            if happy {
                ecstatic = true;
            }
            if stop {
                break;
            }
        }
        progress.finish_and_clear();
        writer.close()?;
        crate::run::closing(cfg, &last, ecstatic, quiet);
        let report = RunReport {
            n_particles: n,
            steps: steps_done,
            particle_steps: steps_done as u64 * n as u64,
            wall: wall.elapsed(),
            kernel: Duration::ZERO,
            fields: Duration::ZERO,
            output: Duration::ZERO,
            last,
            ecstatic,
            outside: 0,
            threads: 0,
            device: String::new(),
            nodes: 0,
            partitions: 0,
            halo_served: 0,
            dropped: 0,
        };
        Ok((report, output))
    }
}

fn tally_of_summary(x: &StepSummary) -> Tally {
    Tally {
        active: x.active,
        pending: x.pending,
        exited: x.exited,
        bad_field: x.bad_field,
        outside_mesh: x.outside_mesh,
        happy: x.happy,
        max_happiness: x.max_happiness,
        happiest: x.happiest,
    }
}
