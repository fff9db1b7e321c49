//! The node agent: joins a cluster over zenoh, takes partitions from a manager and steps them.
//!
//! A node declares a liveliness token carrying its capabilities and a queryable for its
//! assignment. Once assigned, each of its partitions pulls the run's specification, the
//! partition's topology, its particles and field slices; then every step it advances with the
//! shared kernels, fetches on demand the field values of elements outside the halo that a
//! particle reached (invariant 5), sends migrants straight to the owning partition's inbox
//! (every other partition gets a batch, empty or not), sends the step's summary to the manager
//! without waiting for the answer, and merges every other partition's batch before the next
//! step. It waits for the manager only where its grant ends (`Control::through`).

use crate::fields::PartialFields;
use crate::net::{ask, ask_later, bytes, converse, reply, Asked, Dropped, Fabric, Talk};
use crate::systemd::Notifier;
use crate::Partition;
use anyhow::{anyhow, bail, Context, Result};
use shoal_common::fields::span;
use shoal_common::kernel::{advance_touching, step_time, tally_of, StepParams, Tally};
use shoal_common::keys::{self, RunKeys};
use shoal_common::mesh::is_element;
use shoal_common::wire::{
    self, Capabilities, Command, Control, Endpoint, FieldRequest, Hello, Ident, Message,
    ParticleBatch, Ready, RunSpec, StepSummary, Topology,
};
use shoal_common::{status, Mesh, Particles};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zenoh::qos::CongestionControl;
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

/// How long a node waits for one answer it cannot go on without (specification, topology, a
/// field slice) before giving the run up.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long a step's summary may wait for the manager's control, and a merge for its batches:
/// the slowest partition's step. A manager that dies is noticed sooner, by its token; one that
/// lives gives up on a silent partition after its own, shorter patience and starts over
/// without it.
const STEP_PATIENCE: Duration = Duration::from_secs(3600);
/// How long a node looks for the manager's token of a run it was just assigned (slow nodes,
/// such as an aarch64 one under qemu in CI, need a few seconds).
const MANAGER_LOOKUP: Duration = Duration::from_secs(10);

/// A fault the tests inject into node processes, from `SHOAL_TEST_FAULT`: `kill:STEP` makes the
/// process kill itself with SIGKILL as a partition starts step STEP (a power cut as the fabric
/// sees it); `panic:STEP` makes the partition thread that reaches step STEP panic.
fn injected_fault(kind: &str, step: u32) -> bool {
    std::env::var("SHOAL_TEST_FAULT")
        .ok()
        .and_then(|v| {
            let (k, s) = v.split_once(':')?;
            Some(k == kind && s.parse::<u32>().ok()? == step)
        })
        .unwrap_or(false)
}

/// `SHOAL_TEST_FAULT=slow:F` (tests only): the node steps F times as slowly as it can, by
/// sleeping F - 1 times each stepping's time after it: a slower machine beside the others.
/// Read once per process: it is asked every step.
fn injected_slowness() -> Option<f64> {
    static SLOW: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *SLOW.get_or_init(|| {
        let v = std::env::var("SHOAL_TEST_FAULT").ok()?;
        let f: f64 = v.strip_prefix("slow:")?.parse().ok()?;
        (f.is_finite() && f > 1.0).then_some(f)
    })
}

pub struct NodeOptions {
    pub cluster: Ident,
    /// The node's name: a key chunk, unique in the cluster.
    pub name: String,
    pub fabric: Fabric,
    pub quiet: bool,
    /// Worker threads for stepping; `None`: rayon's global pool.
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Speak systemd's notification protocol (`shoal-node` does; in-process nodes do not).
    pub notify: bool,
    /// Where this node steps its partitions (`shoal-node --device`), with the run's setting.
    pub device: crate::Device,
}

/// What this machine offers, for the hello and the token.
pub fn capabilities() -> Capabilities {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| (kib / 1024) as u32)
        .unwrap_or(0);
    Capabilities {
        arch: wire::text(std::env::consts::ARCH),
        version: wire::text(env!("CARGO_PKG_VERSION")),
        cores: cores.min(u16::MAX as usize) as u16,
        memory_mib,
        gpu: None,
    }
}

/// A node's default name: the host name, made a key chunk, and the process id.
pub fn default_name() -> String {
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(20)
        .collect();
    format!("{host}-{}", std::process::id())
}

/// A mesh built in this process: its input's fingerprint and counts, the partitions whose pages
/// it keeps (`None`: whole), and the mesh while anyone holds it.
struct Built {
    key: (u64, usize, usize),
    parts: Option<Vec<u32>>,
    mesh: std::sync::Weak<Mesh>,
}
static BUILT: std::sync::Mutex<Vec<Built>> = std::sync::Mutex::new(Vec::new());

fn mesh_key(input: &shoal_common::MeshInput) -> (u64, usize, usize) {
    (input.fingerprint(), input.x.len(), input.nv.len())
}

/// Offers a mesh already built from `input` (the embedded manager's own) to the node agents of
/// this process, so that they use it instead of building another.
pub fn offer_mesh(input: &shoal_common::MeshInput, mesh: &Arc<Mesh>) {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.retain(|b| b.mesh.strong_count() > 0);
    built.push(Built {
        key: mesh_key(input),
        parts: None,
        mesh: Arc::downgrade(mesh),
    });
}

/// The mesh of `input`, built once per process: the in-process node agents of the embedded
/// default, and the epochs of one run, share it instead of each building (and holding) its own.
/// Building holds the lock, so agents that ask together wait for one build. A mesh built here
/// keeps its derived rows only for the pages of `partitions` and two rings around them
/// ([`Mesh::keep_only`]): the mesh offered whole by an embedded manager serves any partitions,
/// one built for other partitions is not reused.
fn shared_mesh(
    input: shoal_common::MeshInput,
    part_of: &[u32],
    partitions: &[u32],
) -> Result<Arc<Mesh>> {
    let key = mesh_key(&input);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.retain(|b| b.mesh.strong_count() > 0);
    if let Some(m) = built
        .iter()
        .filter(|b| b.key == key && b.parts.as_deref().is_none_or(|p| p == partitions))
        .find_map(|b| b.mesh.upgrade())
    {
        return Ok(m);
    }
    let (mut mesh, _) = Mesh::build(input).map_err(|e| anyhow!("run mesh: {e}"))?;
    if part_of.len() == mesh.n_elements() {
        let mut keep: Vec<bool> = part_of.iter().map(|p| partitions.contains(p)).collect();
        for _ in 0..2 {
            let ring: Vec<usize> = (0..keep.len())
                .filter(|&e| !keep[e])
                .filter(|&e| {
                    mesh.nbe[e]
                        .iter()
                        .any(|&n| is_element(n) && keep[n as usize])
                })
                .collect();
            ring.into_iter().for_each(|e| keep[e] = true);
        }
        mesh.keep_only(&keep);
    }
    let mesh = Arc::new(mesh);
    built.push(Built {
        key,
        parts: Some(partitions.to_vec()),
        mesh: Arc::downgrade(&mesh),
    });
    crate::health::give_back_memory();
    Ok(mesh)
}

struct Log {
    prefix: String,
    quiet: bool,
}

impl Log {
    fn say(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}: {}", self.prefix, s.as_ref());
        }
    }
}

/// Serves assignments until `stop` is set: the `shoal-node` main loop, also run in threads by
/// the embedded default. Returns the number of messages dropped.
pub fn serve(opts: &NodeOptions, session: &Session, stop: &AtomicBool) -> Result<u64> {
    if !keys::is_chunk(&opts.name) {
        bail!(
            "node name `{}`: use letters, digits, `-`, `_` and `.` only",
            opts.name
        );
    }
    let log = Arc::new(Log {
        prefix: format!("node {}", opts.name),
        quiet: opts.quiet,
    });
    let dropped = Arc::new(Dropped::default());
    let hello = Hello {
        node: wire::ident(&opts.name).map_err(|e| anyhow!("node name: {e}"))?,
        capabilities: capabilities(),
    };
    let cluster_ep = Endpoint {
        cluster: opts.cluster.clone(),
        run: 0,
    };
    let hello_bytes = bytes(&cluster_ep, Message::Hello(hello.clone()))?;
    let (tx, rx) = mpsc::channel::<(u64, Vec<u32>)>();
    let cluster = opts.cluster.clone();
    let name = opts.name.clone();
    let (d, l, hb) = (dropped.clone(), log.clone(), hello_bytes.clone());
    let quiet = opts.quiet;
    let _assign = session
        .declare_queryable(keys::assign(&opts.cluster, &opts.name))
        .callback(move |q| {
            let Some(p) = q.payload() else {
                d.note(
                    "assignment",
                    &wire::WireError::Malformed("empty".into()),
                    quiet,
                );
                let _ = q.reply_err("an assignment was expected").wait();
                return;
            };
            match wire::decode_any_run(&p.to_bytes(), &cluster) {
                Ok(env) => match env.message {
                    Message::Assignment(a) if a.node.as_str() == name => {
                        l.say(format!(
                            "assigned partitions {:?} of run {:016x}",
                            a.partitions, env.header.run
                        ));
                        let _ = tx.send((env.header.run, a.partitions.to_vec()));
                        let _ = q.reply(q.key_expr().clone(), hb.clone()).wait();
                    }
                    other => {
                        d.note(
                            "assignment",
                            &wire::WireError::Malformed(format!(
                                "a {} for someone else",
                                other.kind()
                            )),
                            quiet,
                        );
                        let _ = q.reply_err("not an assignment for this node").wait();
                    }
                },
                Err(wire::WireError::Version { found }) => {
                    // A manager of another release: say so where the operator looks, every
                    // time (a manager tells a node once per wait for nodes), and refuse.
                    let why = format!(
                        "the manager of cluster `{cluster}` speaks protocol version {found} and \
                         this node {}: refusing its runs until both run the same release of shoal",
                        wire::VERSION
                    );
                    eprintln!("node {name}: {why}");
                    let _ = q.reply_err(why).wait();
                }
                Err(e) => {
                    d.note("assignment", &e, quiet);
                    let _ = q.reply_err(format!("refused: {e}")).wait();
                }
            }
        })
        .wait()
        .map_err(|e| anyhow!("declaring the assignment queryable: {e}"))?;
    let busy = Arc::new(AtomicU32::new(0));
    let _doctor = declare_doctor(session, opts, &hello, &busy, &dropped)?;
    let _pi = declare_pi(session, opts, &dropped)?;
    let token_key = keys::node_token(&opts.cluster, &opts.name, &hello_bytes);
    let _token = session
        .liveliness()
        .declare_token(token_key.clone())
        .wait()
        .map_err(|e| anyhow!("declaring the liveliness token: {e}"))?;
    log.say(format!(
        "announced in cluster `{}` ({} on {}, {} cores); waiting for a manager",
        opts.cluster, hello.capabilities.version, hello.capabilities.arch, hello.capabilities.cores
    ));
    let notifier = opts.notify.then(Notifier::from_env);
    if let Some(n) = &notifier {
        n.notify(&format!(
            "READY=1\nSTATUS=in cluster {} as {}",
            opts.cluster, opts.name
        ));
    }
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    let _watchdog = notifier
        .filter(|n| n.watchdog().is_some())
        .map(|n| watchdog(session.clone(), n, token_key, watchdog_stop.clone()));
    while !stop.load(Ordering::Relaxed) {
        let Ok((run, partitions)) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let me = Endpoint {
            cluster: opts.cluster.clone(),
            run,
        };
        let t = Instant::now();
        let pool = opts.pool.clone();
        busy.store(partitions.len() as u32, Ordering::Relaxed);
        let outcome = run_assignment(
            session,
            &me,
            &opts.name,
            &partitions,
            &dropped,
            &log,
            stop,
            pool,
            opts.device,
        );
        busy.store(0, Ordering::Relaxed);
        match outcome {
            Ok(steps) => log.say(format!(
                "run {run:016x} done: {steps} steps in {:.2} s",
                t.elapsed().as_secs_f64()
            )),
            Err(e) => log.say(format!("run {run:016x} abandoned: {e:#}")),
        }
    }
    log.say("leaving the cluster");
    watchdog_stop.store(true, Ordering::Relaxed);
    if opts.notify {
        Notifier::from_env().notify("STOPPING=1");
    }
    Ok(dropped.get())
}

/// Tells systemd the node is alive every half watchdog period, as long as the fabric answers:
/// the node must find its own liveliness token through its session (zenoh's runtime is up and
/// serving). When it cannot, the pings stop and systemd restarts the unit.
fn watchdog(
    session: Session,
    n: Notifier,
    token: String,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let period = n.watchdog()? / 2;
    std::thread::Builder::new()
        .name("shoal-watchdog".into())
        .spawn(move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next = Instant::now() + period;
                    let alive = session
                        .liveliness()
                        .get(&token)
                        .timeout(period.min(Duration::from_secs(5)))
                        .wait()
                        .ok()
                        .is_some_and(|r| {
                            std::iter::from_fn(|| r.recv().ok()).any(|reply| reply.result().is_ok())
                        });
                    if alive {
                        n.notify("WATCHDOG=1");
                    }
                }
                std::thread::sleep(Duration::from_millis(50).min(period));
            }
        })
        .ok()
}

/// Answers `shoal doctor`: a quick checkup at once, a full one (with the GPU self-test, slow the
/// first time) from its own thread so the fabric's threads never wait on it.
fn declare_doctor(
    session: &Session,
    opts: &NodeOptions,
    hello: &Hello,
    busy: &Arc<AtomicU32>,
    dropped: &Arc<Dropped>,
) -> Result<zenoh::query::Queryable<()>> {
    let ep = Endpoint {
        cluster: opts.cluster.clone(),
        run: 0,
    };
    let (hello, busy, dropped, quiet) = (hello.clone(), busy.clone(), dropped.clone(), opts.quiet);
    let setting = opts.device;
    // Held by the callback until the queryable is dropped, for the session's links.
    let links_of = session.clone();
    session
        .declare_queryable(keys::doctor(&opts.cluster, &opts.name))
        .callback(move |q| {
            let Some(Message::Checkup(c)) = cluster_query(&q, &ep, &dropped, quiet) else {
                return;
            };
            let (ep, hello, busy) = (ep.clone(), hello.clone(), busy.clone());
            // The links only for a full checkup: quick ones time the clock.
            let (zid, links) = (
                wire::text(&links_of.zid().to_string()),
                if c.full {
                    crate::net::peer_links(&links_of)
                } else {
                    Vec::new()
                },
            );
            let answer = move || {
                let gpu = if c.full {
                    crate::health::gpu()
                } else {
                    wire::GpuHealth::NotAsked
                };
                // The choice a run that the GPU can do would get (a run's own limits, such as
                // larval behaviours, are said when it starts).
                let device = if c.full {
                    match crate::choose_device(setting, None) {
                        Ok(choice) => format!("{} (--device {setting:?})", choice.reason),
                        Err(e) => format!("nothing: --device {setting:?} but {e}"),
                    }
                } else {
                    String::new()
                };
                let sys = crate::health::sysfs_root();
                let health = wire::Health {
                    node: hello.node,
                    capabilities: hello.capabilities,
                    uptime_s: crate::health::uptime_s(),
                    load: crate::health::load(),
                    peak_rss_kib: crate::health::peak_rss_kib(),
                    busy: busy.load(Ordering::Relaxed),
                    gpu,
                    thermal: crate::health::thermal(
                        &sys,
                        c.full.then(crate::health::firmware_throttled).flatten(),
                    ),
                    clock_unix_ns: crate::health::clock_unix_ns(),
                    zid,
                    links,
                    device,
                };
                let _ = reply(&q, &ep, Message::Health(Box::new(health)));
            };
            if c.full {
                let _ = std::thread::Builder::new()
                    .name("shoal-doctor".into())
                    .spawn(answer);
            } else {
                answer();
            }
        })
        .wait()
        .map_err(|e| anyhow!("declaring the doctor queryable: {e}"))
}

/// Answers `shoal pi`: counts its share of the samples on the node's worker threads.
fn declare_pi(
    session: &Session,
    opts: &NodeOptions,
    dropped: &Arc<Dropped>,
) -> Result<zenoh::query::Queryable<()>> {
    let ep = Endpoint {
        cluster: opts.cluster.clone(),
        run: 0,
    };
    let node = wire::ident(&opts.name).map_err(|e| anyhow!("node name: {e}"))?;
    let (pool, dropped, quiet) = (opts.pool.clone(), dropped.clone(), opts.quiet);
    session
        .declare_queryable(keys::pi(&opts.cluster, &opts.name))
        .callback(move |q| {
            let Some(Message::PiRequest(r)) = cluster_query(&q, &ep, &dropped, quiet) else {
                return;
            };
            let (ep, node, pool) = (ep.clone(), node.clone(), pool.clone());
            let _ = std::thread::Builder::new()
                .name("shoal-pi".into())
                .spawn(move || {
                    let t = Instant::now();
                    let count = || pi_hits(r.seed, r.first, r.count);
                    let (inside, threads) = match &pool {
                        Some(p) => (p.install(count), p.current_num_threads()),
                        None => (count(), rayon::current_num_threads()),
                    };
                    let share = wire::PiShare {
                        node,
                        first: r.first,
                        count: r.count,
                        inside,
                        seconds: t.elapsed().as_secs_f64(),
                        threads: threads as u32,
                    };
                    let _ = reply(&q, &ep, Message::PiShare(share));
                });
        })
        .wait()
        .map_err(|e| anyhow!("declaring the pi queryable: {e}"))
}

/// [`shoal_common::rng::quarter_circle_hits`] over rayon's threads, in blocks of 2²² samples.
pub fn pi_hits(seed: u64, first: u64, count: u64) -> u64 {
    use rayon::prelude::*;
    const BLOCK: u64 = 1 << 22;
    (0..count.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let start = b * BLOCK;
            let n = BLOCK.min(count - start);
            shoal_common::rng::quarter_circle_hits(seed, first.saturating_add(start), n)
        })
        .sum()
}

/// Decodes a query addressed to the cluster (not to a run), refusing and counting what is not.
fn cluster_query(
    q: &zenoh::query::Query,
    ep: &Endpoint,
    dropped: &Dropped,
    quiet: bool,
) -> Option<Message> {
    let key = q.key_expr().as_str().to_string();
    let refuse = |e: wire::WireError| {
        dropped.note(&format!("query on {key}"), &e, quiet);
        let _ = q.reply_err(format!("refused: {e}")).wait();
        None
    };
    let Some(p) = q.payload() else {
        return refuse(wire::WireError::Malformed("no payload".into()));
    };
    match wire::decode_any_run(&p.to_bytes(), &ep.cluster) {
        Ok(env) => Some(env.message),
        Err(e) => refuse(e),
    }
}

/// Runs this node's partitions of one run, each in its own thread, and returns the steps done.
#[allow(clippy::too_many_arguments)]
fn run_assignment(
    session: &Session,
    me: &Endpoint,
    node: &str,
    partitions: &[u32],
    dropped: &Arc<Dropped>,
    log: &Arc<Log>,
    stop: &AtomicBool,
    pool: Option<Arc<rayon::ThreadPool>>,
    device: crate::Device,
) -> Result<u32> {
    let abandon = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicBool::new(false));
    // The run ends for this node if its manager goes away.
    let (a, up) = (abandon.clone(), seen.clone());
    let _watch = session
        .liveliness()
        .declare_subscriber(keys::manager_token(&me.cluster, me.run))
        // With history, the subscriber learns of the token that is already up, and so is told
        // when it goes; without, zenoh says nothing of a token declared before it subscribed.
        .history(true)
        .callback(move |s| match s.kind() {
            SampleKind::Delete => a.store(true, Ordering::Relaxed),
            SampleKind::Put => up.store(true, Ordering::Relaxed),
        })
        .wait()
        .map_err(|e| anyhow!("watching the manager: {e}"))?;
    // An assignment can wait in the queue while this node finishes an earlier run; by then its
    // manager may have started over (a new run id) or gone. The watch tells of a token that is
    // up (its history) and of one that goes; a token never seen is a manager already gone.
    let deadline = Instant::now() + MANAGER_LOOKUP;
    while !seen.load(Ordering::Relaxed) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if !seen.load(Ordering::Relaxed) {
        bail!(
            "the manager of run {:016x} is gone (no token within {} s)",
            me.run,
            MANAGER_LOOKUP.as_secs()
        );
    }
    let keys = RunKeys::new(&me.cluster, me.run);
    let spec = match ask(
        session,
        &keys.spec(),
        None,
        me,
        dropped,
        PATIENCE,
        &abandon,
        log.quiet,
    )? {
        Message::RunSpec(s) => s,
        other => bail!("expected the run specification, got a {}", other.kind()),
    };
    let mut spec = *spec;
    // The mesh input is needed only to build the mesh (or find it built): drop it after.
    let mesh = shared_mesh(std::mem::take(&mut spec.mesh), &spec.part_of, partitions)?;
    let spec = Arc::new(spec);
    let choice = choose_for(&spec, device)?;
    log.say(format!("device: {}", choice.reason));
    let choice = &choice;
    let (held, pages) = mesh.pages_held();
    log.say(format!(
        "mesh of {} elements ({:.1} MiB, derived rows for {held} of {pages} pages); \
         {} particles in {} partitions, {} steps; {}",
        mesh.n_elements(),
        mesh.heap_bytes() as f64 / 1048576.0,
        spec.n_particles,
        spec.n_parts,
        spec.n_steps,
        crate::health::rss_words()
    ));
    let steps = std::thread::scope(|sc| {
        let handles: Vec<_> = partitions
            .iter()
            .map(|&p| {
                let (mesh, spec, abandon) = (mesh.clone(), spec.clone(), abandon.clone());
                let dropped = dropped.clone();
                let pool = pool.clone();
                let log = Log {
                    prefix: format!("{} partition {p}", log.prefix),
                    quiet: log.quiet,
                };
                sc.spawn(move || {
                    // A panic is this partition's failure, reported by name like an error,
                    // never left for the manager to time out on.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        PartitionAgent::new(
                            session,
                            me,
                            node,
                            p,
                            &mesh,
                            &spec,
                            dropped.clone(),
                            log,
                            &abandon,
                            choice,
                        )
                        .and_then(|mut a| {
                            a.pool = pool;
                            a.run(&abandon, stop)
                        })
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "no message".into());
                        Err(anyhow!("partition {p} on node {node} panicked: {what}"))
                    });
                    if let Err(e) = &r {
                        // The others cannot finish without this one; tell the manager why,
                        // unless the manager is gone.
                        if !abandon.swap(true, Ordering::Relaxed) {
                            tell_failure(session, me, p, &format!("{e:#}"), &dropped);
                        }
                    }
                    r
                })
            })
            .collect();
        let mut steps = 0;
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(s)) => steps = s,
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(anyhow!("a partition thread panicked"));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(steps),
        }
    })?;
    Ok(steps)
}

/// Where this node steps the partitions of a run: its own setting and the run's together, the
/// GPU only where the run's configuration allows it (the reason is logged and sent to the
/// manager with each partition's ready).
fn choose_for(spec: &RunSpec, mine: crate::Device) -> Result<crate::Choice> {
    let want = mine.with(spec.device);
    #[cfg(feature = "gpu")]
    let unsupported = {
        let shortest = spec
            .times
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.min(d))));
        crate::gpu::unsupported(&spec.params, shortest)
    };
    #[cfg(not(feature = "gpu"))]
    let unsupported = None;
    crate::choose_device(want, unsupported).map_err(|e| anyhow!("device {want:?}: {e}"))
}

/// Tells the manager that partition `p` failed, without waiting long for it to listen.
fn tell_failure(session: &Session, me: &Endpoint, p: u32, reason: &str, dropped: &Dropped) {
    let m = Message::Failure(wire::Failure {
        partition: p,
        reason: reason.to_string(),
    });
    if let Ok(b) = bytes(me, m) {
        let never = AtomicBool::new(false);
        let keys = RunKeys::new(&me.cluster, me.run);
        let _ = ask(
            session,
            &keys.sync(p),
            Some(&b),
            me,
            dropped,
            Duration::from_secs(5),
            &never,
            true,
        );
    }
}

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

struct PartitionAgent<'a> {
    session: &'a Session,
    me: &'a Endpoint,
    node: Ident,
    p: u32,
    keys: RunKeys,
    mesh: &'a Mesh,
    spec: &'a RunSpec,
    topo: Topology,
    topo_elements: Vec<u32>,
    neighbours: Vec<u32>,
    part: Partition,
    fields: PartialFields,
    dropped: Arc<Dropped>,
    log: Log,
    inbox: mpsc::Receiver<Arrival>,
    _subscriber: zenoh::pubsub::Subscriber<()>,
    publishers: HashMap<u32, zenoh::pubsub::Publisher<'a>>,
    /// Batches that arrived for a later step than the one being merged.
    early: Vec<Arrival>,
    /// The pieces of the next level the run will need, asked for while it steps.
    prefetch: Option<(u32, Vec<Asked>)>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Where the partition steps; on the GPU, its particles live there and `part` is empty.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    choice: &'a crate::Choice,
    #[cfg(feature = "gpu")]
    gpu: Option<Box<crate::gpu::GpuPartition>>,
    /// Particles found leaving while quarantined ones were stepped again on the host.
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    host_out: Particles,
}

impl<'a> PartitionAgent<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        session: &'a Session,
        me: &'a Endpoint,
        node: &str,
        p: u32,
        mesh: &'a Mesh,
        spec: &'a RunSpec,
        dropped: Arc<Dropped>,
        log: Log,
        abandon: &AtomicBool,
        choice: &'a crate::Choice,
    ) -> Result<Self> {
        let keys = RunKeys::new(&me.cluster, me.run);
        let get = |key: String| {
            ask(
                session, &key, None, me, &dropped, PATIENCE, abandon, log.quiet,
            )
        };
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
        let d = dropped.clone();
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
        let mut part = Partition::new(particles);
        part.sort_every = spec.sort_every;
        let mut agent = PartitionAgent {
            session,
            me,
            node: wire::ident(node).map_err(|e| anyhow!("{e}"))?,
            p,
            keys,
            mesh,
            spec,
            topo,
            topo_elements,
            neighbours: neighbours.clone(),
            part,
            fields: PartialFields::default(),
            dropped,
            log,
            inbox,
            _subscriber: subscriber,
            publishers: HashMap::new(),
            early: Vec::new(),
            prefetch: None,
            pool: None,
            choice,
            #[cfg(feature = "gpu")]
            gpu: None,
            host_out: Particles::default(),
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
                .session
                .declare_publisher(self.keys.inbox(to, self.p))
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

    fn ask(
        &self,
        key: &str,
        payload: Option<&[u8]>,
        patience: Duration,
        abandon: &AtomicBool,
    ) -> Result<Message> {
        ask(
            self.session,
            key,
            payload,
            self.me,
            &self.dropped,
            patience,
            abandon,
            self.log.quiet,
        )
    }

    /// Sends `m` on the partition's sync key and waits for the manager's control.
    fn sync(&self, m: Message, abandon: &AtomicBool) -> Result<Control> {
        let b = bytes(self.me, m)?;
        match self.ask(&self.keys.sync(self.p), Some(&b), STEP_PATIENCE, abandon)? {
            Message::Control(c) => Ok(c),
            other => bail!("expected a control, got a {}", other.kind()),
        }
    }

    /// Makes sure the levels bracketing `[t0, t1]` are held, asking for the missing slices.
    fn cover(&mut self, t0: f64, t1: f64, abandon: &AtomicBool) -> Result<()> {
        let (lo, hi) = span(&self.spec.times, t0.min(t1), t0.max(t1));
        self.fields.drop_before(lo as u32);
        if self
            .fields
            .indices()
            .first()
            .is_some_and(|&f| f != lo as u32)
        {
            self.fields = PartialFields::default();
        }
        for idx in lo..=hi {
            let idx = idx as u32;
            if self.fields.has(idx) {
                continue;
            }
            let time = self.spec.times[idx as usize];
            self.fields.open(self.mesh, idx, time, self.spec.carried);
            self.fields.reserve(
                idx,
                self.topo_elements.len(),
                self.topo.nodes.len(),
                self.mesh.vertical.n_layers,
            );
            // The slice comes in pieces, each added to the level and dropped before the next
            // is read: asked for one at a time, or all at once a level ahead (below).
            let size = self.spec.field_piece.max(1);
            let mut early = match self.prefetch.take() {
                Some((i, asked)) if i == idx => asked,
                _ => Vec::new(),
            }
            .into_iter();
            for piece in 0..wire::field_pieces(self.topo_elements.len(), size) {
                let key = self.keys.field(self.p, idx, piece as u32);
                let came = match early.next() {
                    Some(a) => a.answer(self.me, &self.dropped, self.log.quiet, abandon)?,
                    None => None,
                };
                let answer = match came {
                    Some(m) => m,
                    None => self.ask(&key, None, PATIENCE, abandon)?,
                };
                let slice = match answer {
                    Message::FieldSlice(f) if f.time_index == idx => f,
                    other => bail!("expected field slice {idx}, got a {}", other.kind()),
                };
                let want =
                    (self.topo_elements.chunks(size as usize).nth(piece)).unwrap_or_default();
                if slice.elements != want {
                    bail!("field slice {idx} piece {piece} holds other elements than asked for");
                }
                self.fields
                    .fill(self.mesh, &slice, &slice.elements, &slice.nodes)
                    .with_context(|| format!("field slice {idx} piece {piece}"))?;
            }
            // The pages of the pieces go back before the next level comes.
            crate::health::give_back_memory();
        }
        // The level after these, in the run's direction, comes while the partition steps
        // through this interval: a slow link's transfer hides behind the stepping. It costs
        // one level's pieces held as they arrive.
        let next = if self.spec.params.dt >= 0.0 {
            Some(hi + 1)
        } else {
            lo.checked_sub(1)
        };
        if let Some(next) = next.filter(|&n| n < self.spec.times.len()) {
            let next = next as u32;
            if !self.fields.has(next) && self.prefetch.as_ref().is_none_or(|(i, _)| *i != next) {
                let size = self.spec.field_piece.max(1);
                let asked = (0..wire::field_pieces(self.topo_elements.len(), size))
                    .map(|piece| {
                        ask_later(
                            self.session,
                            &self.keys.field(self.p, next, piece as u32),
                            PATIENCE,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.prefetch = Some((next, asked));
            }
        }
        Ok(())
    }

    /// Fetches the values of `elements` at every level held.
    fn fetch(&mut self, elements: Vec<u32>, abandon: &AtomicBool) -> Result<()> {
        self.fields.fetched += elements.len() as u64;
        for idx in self.fields.indices() {
            let req = bytes(
                self.me,
                Message::FieldRequest(FieldRequest {
                    partition: self.p,
                    time_index: idx,
                    elements: elements.clone(),
                }),
            )?;
            let slice = match self.ask(&self.keys.halo(self.p), Some(&req), PATIENCE, abandon)? {
                Message::FieldSlice(f) if f.time_index == idx && !f.elements.is_empty() => f,
                other => bail!("expected halo values, got a {}", other.kind()),
            };
            self.fields
                .fill(self.mesh, &slice, &slice.elements, &slice.nodes)
                .with_context(|| format!("halo values at time index {idx}"))?;
        }
        Ok(())
    }

    /// Steps every particle from `t`; particles quarantined for want of field values are
    /// stepped again once those are fetched, until none lacks anything.
    fn step(&mut self, s: u32, t: f64, t1: f64, abandon: &AtomicBool) -> Result<Tally> {
        let mut params = self.spec.params.clone();
        params.dt = t1 - t;
        #[cfg(feature = "gpu")]
        if self.gpu.is_some() {
            return self.step_gpu(s, t, &params, abandon);
        }
        self.part.prepare();
        let mut set = std::mem::take(&mut self.part.particles);
        let tally = self.advance_set(&mut set, &params, s, t, abandon);
        self.part.particles = set;
        tally
    }

    /// Advances `set` (the partition's particles, or the ones that just came in) through step
    /// `s` from `t` on the CPU: every particle by the kernel, then the quarantined ones again
    /// once the field values they touched are fetched. Each particle's step depends on nothing
    /// but itself, so stepping a partition's particles in two sets gives the same bits.
    fn advance_set(
        &mut self,
        set: &mut Particles,
        params: &StepParams,
        s: u32,
        t: f64,
        abandon: &AtomicBool,
    ) -> Result<Tally> {
        let (mesh, window) = (self.mesh, self.fields.window());
        let before = set.status.clone();
        let mut work = || crate::advance_particles(set, mesh, window, params, t, s);
        let clock = Instant::now();
        let tally = match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        };
        if let Some(f) = injected_slowness() {
            std::thread::sleep(clock.elapsed().mul_f64(f - 1.0));
        }
        let suspects: Vec<usize> = (0..set.len())
            .filter(|&i| status::in_play(before[i]) && set.status[i] == status::BAD_FIELD)
            .collect();
        if suspects.is_empty() {
            return Ok(tally);
        }
        // Quarantined particles kept their starting state: step them again with their status
        // at the step's start.
        let mut again = Particles::with_capacity(suspects.len());
        for &i in &suspects {
            again.push_from(set, i);
            let last = again.len() - 1;
            again.status[last] = before[i];
        }
        let all: Vec<usize> = (0..again.len()).collect();
        self.settle(&mut again, all, params, t, s, abandon)?;
        for (k, &i) in suspects.iter().enumerate() {
            set.set_from(i, &again, k);
        }
        Ok(tally_of(params, &set.id, &set.status, &set.happiness))
    }

    /// Steps the quarantined particles `todo` of `again` (each with its status at the step's
    /// start) again until none lacks a field value: the values they touched and this
    /// partition lacks are fetched first. Returns whether anything was fetched.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        again: &mut Particles,
        mut todo: Vec<usize>,
        params: &StepParams,
        t: f64,
        s: u32,
        abandon: &AtomicBool,
    ) -> Result<bool> {
        let before = again.status.clone();
        let mut fetched = false;
        while !todo.is_empty() {
            let mut sub = Particles::with_capacity(todo.len());
            for &k in &todo {
                sub.push_from(again, k);
                let last = sub.len() - 1;
                sub.status[last] = before[k];
            }
            let mut touched: Vec<u32> = Vec::new();
            let n = sub.len();
            let view = sub.chunks_mut(n).pop().expect("at least one particle");
            advance_touching(
                self.mesh,
                self.fields.window(),
                params,
                t,
                s,
                view,
                &mut touched,
            );
            for (j, &k) in todo.iter().enumerate() {
                again.set_from(k, &sub, j);
            }
            let missing: BTreeSet<u32> = touched
                .into_iter()
                .filter(|&e| !self.fields.present(e))
                .collect();
            if missing.is_empty() {
                break;
            }
            self.fetch(missing.into_iter().collect(), abandon)?;
            fetched = true;
            todo.retain(|&k| again.status[k] == status::BAD_FIELD);
        }
        Ok(fetched)
    }

    /// A step on the GPU: the device steps every particle and finds the ones leaving; only
    /// the counts come back, unless the step quarantined particles for want of field values:
    /// then those are read back, stepped again on the host once the values are fetched (the
    /// CPU kernel, as a CPU node would), and written back.
    #[cfg(feature = "gpu")]
    fn step_gpu(
        &mut self,
        s: u32,
        t: f64,
        params: &StepParams,
        abandon: &AtomicBool,
    ) -> Result<Tally> {
        let (mesh, window) = (self.mesh, self.fields.window());
        let gpu = self.gpu.as_mut().expect("a GPU partition");
        let mut tally = gpu
            .step(mesh, window, params, t, s)
            .map_err(|e| anyhow!("GPU step {s}: {e}"))?;
        if gpu.quarantined() == 0 {
            return Ok(tally);
        }
        let (slots, mut again) = gpu
            .take_quarantined(mesh)
            .map_err(|e| anyhow!("GPU step {s}: {e}"))?;
        // Those quarantined as they were released stay so, as on the CPU.
        let todo: Vec<usize> = (0..again.len())
            .filter(|&k| status::in_play(again.status[k]))
            .collect();
        for k in 0..again.len() {
            if !status::in_play(again.status[k]) {
                again.status[k] = status::BAD_FIELD;
            }
        }
        let fetched = self.settle(&mut again, todo, params, t, s, abandon)?;
        let gpu = self.gpu.as_mut().expect("a GPU partition");
        if fetched {
            gpu.forget_levels();
        }
        // The device counted them all as quarantined.
        tally.bad_field -= again.len() as u64;
        tally = tally.merge(tally_of(params, &again.id, &again.status, &again.happiness));
        let part_of = &self.spec.part_of;
        let kept: Vec<bool> = (0..again.len())
            .map(|k| {
                again.status[k] == status::OUTSIDE_MESH
                    || part_of[again.element[k] as usize] == self.p
            })
            .collect();
        for k in (0..again.len()).filter(|&k| !kept[k]) {
            self.host_out.push_from(&again, k);
        }
        gpu.put_back(mesh, &slots, &again, &kept);
        Ok(tally)
    }

    /// Takes out the particles whose element another partition owns, by destination.
    fn emigrants(&mut self) -> Result<BTreeMap<u32, Particles>> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu.as_mut() {
            let mut leaving = gpu
                .take_migrants(self.mesh)
                .map_err(|e| anyhow!("GPU migrants: {e}"))?;
            leaving.extend(&std::mem::take(&mut self.host_out));
            let mut out: BTreeMap<u32, Particles> = BTreeMap::new();
            for i in 0..leaving.len() {
                out.entry(self.spec.part_of[leaving.element[i] as usize])
                    .or_default()
                    .push_from(&leaving, i);
            }
            return Ok(out);
        }
        let p = &self.part.particles;
        let part_of = &self.spec.part_of;
        let leaving: Vec<usize> = (0..p.len())
            .filter(|&i| {
                p.status[i] != status::OUTSIDE_MESH && part_of[p.element[i] as usize] != self.p
            })
            .collect();
        let mut out: BTreeMap<u32, Particles> = BTreeMap::new();
        for &i in &leaving {
            out.entry(part_of[p.element[i] as usize])
                .or_default()
                .push_from(p, i);
        }
        self.part.particles.remove_sorted(&leaving);
        Ok(out)
    }

    /// Whether this partition steps its own particles before the others' batches come (on the
    /// CPU; a GPU partition's particles live on the device, stepped as one set).
    fn steps_ahead_of_arrivals(&self) -> bool {
        #[cfg(feature = "gpu")]
        if self.gpu.is_some() {
            return false;
        }
        !self.neighbours.is_empty()
    }

    /// Waits for the batches of `step` from every other partition, merging them; returns the
    /// particles received.
    fn merge(&mut self, step: u32, abandon: &AtomicBool) -> Result<u64> {
        let arrived = self.receive(step, abandon)?;
        self.take_in(&arrived)?;
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

    /// Adds particles that came from other partitions.
    fn take_in(&mut self, p: &Particles) -> Result<()> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu.as_mut() {
            return gpu
                .append(self.mesh, p)
                .map_err(|e| anyhow!("GPU migrants in: {e}"));
        }
        self.part.particles.extend(p);
        Ok(())
    }

    /// The partition's particles, read back from the GPU where they live there.
    fn state(&mut self) -> Result<Particles> {
        #[cfg(feature = "gpu")]
        if let Some(gpu) = self.gpu.as_mut() {
            return gpu
                .live(self.mesh)
                .map_err(|e| anyhow!("GPU readback: {e}"));
        }
        Ok(self.part.particles.clone())
    }

    /// The bulk-synchronous loop; returns the steps done.
    fn run(&mut self, abandon: &AtomicBool, stop: &AtomicBool) -> Result<u32> {
        let spec = self.spec;
        let dt = spec.params.dt;
        #[cfg(feature = "gpu")]
        let device = match &self.choice.gpu {
            Some(ctx) => format!("gpu: {}", ctx.adapter.name),
            None => "cpu".to_string(),
        };
        #[cfg(not(feature = "gpu"))]
        let device = "cpu".to_string();
        let ready = Message::Ready(Ready {
            partition: self.p,
            node: self.node.clone(),
            device: wire::text(&device),
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
        self.cover(t0, step_time(first + 1, dt, spec.duration), abandon)?;
        {
            let (part, mesh, window) = (&mut self.part, self.mesh, self.fields.window());
            match &self.pool {
                Some(pool) => pool.install(|| part.release(mesh, window, t0, forward)),
                None => part.release(mesh, window, t0, forward),
            }
        }
        let held = self.part.particles.len();
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &self.choice.gpu {
            let particles = std::mem::take(&mut self.part.particles);
            let gpu = crate::gpu::GpuPartition::on_node(
                ctx.clone(),
                self.mesh,
                particles,
                crate::gpu::Needs::of(&spec.params),
                &spec.part_of,
                self.p,
            )
            .map_err(|e| anyhow!("partition {}: GPU setup: {e}", self.p))?;
            self.gpu = Some(Box::new(gpu));
        }
        if start.command == Command::Stop {
            return Ok(0);
        }
        self.log.say(format!(
            "{held} particles, neighbours {:?}; fields hold {:?} elements per level in {:.0} MiB; {}",
            self.neighbours,
            self.fields.elements_held(),
            self.fields.heap_bytes() as f64 / (1 << 20) as f64,
            crate::health::rss_words()
        ));
        // Summaries and states go to the manager from a thread of their own, in their order: the
        // partition steps on, neighbour to neighbour, while the manager reads them (and writes
        // the states), and waits for an answer only where its grant (`through`) ends. Only the
        // summaries' answers come back; a state refused ends the partition.
        let (session, me, dropped, quiet) =
            (self.session, self.me, self.dropped.clone(), self.log.quiet);
        let (sync_key, state_key) = (self.keys.sync(self.p), self.keys.snapshot(self.p));
        let done = AtomicBool::new(false);
        let (s, waits) = std::thread::scope(|scope| -> Result<(u32, [Duration; 3])> {
            let (tell, talk) = mpsc::channel::<Talk>();
            let (answer, answers) = mpsc::channel::<Result<Message>>();
            let done = &done;
            let summaries = tell.clone();
            scope.spawn(move || {
                converse(
                    session,
                    me,
                    &dropped,
                    quiet,
                    &tell,
                    &talk,
                    &answer,
                    [done, abandon],
                )
            });
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
                        let t = step_time(s, dt, spec.duration);
                        let t1 = step_time(s + 1, dt, spec.duration);
                        self.cover(t, t1, abandon)?;
                        let tally = self.step(s, t, t1, abandon)?;
                        (tally, clock.elapsed())
                    }
                };
                let clock = Instant::now();
                let mut out = self.emigrants()?;
                for &n in &self.neighbours {
                    out.entry(n).or_default();
                }
                let mut sent_to = Vec::with_capacity(out.len());
                let mut sent_counts = Vec::with_capacity(out.len());
                for (to, batch) in out {
                    sent_to.push(to);
                    sent_counts.push(batch.len() as u32);
                    let b = bytes(
                        self.me,
                        Message::ParticleBatch(ParticleBatch::of(self.p, to, s, batch)),
                    )?;
                    self.publisher(to, abandon)?
                        .put(b)
                        .wait()
                        .map_err(|e| anyhow!("sending to partition {to}: {e}"))?;
                }
                let summary = StepSummary {
                    partition: self.p,
                    step: s,
                    tally,
                    sent: sent_counts.iter().map(|&c| c as u64).sum(),
                    received,
                    sent_to,
                    sent_counts,
                    dropped: self.dropped.get(),
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
                        let state = ParticleBatch::of(self.p, u32::MAX, s + 1, self.state()?);
                        ask(Message::Snapshot(state))?;
                    }
                } else {
                    // Step s + 1 for the particles here while the other partitions' batches of
                    // step s are on their way, then for those when they come: a link's delay
                    // hides behind the stepping. Each particle's step is its own, so the two
                    // sets give the bits one would.
                    let clock = Instant::now();
                    let t = step_time(s + 1, dt, spec.duration);
                    let t1 = step_time(s + 2, dt, spec.duration);
                    self.cover(t, t1, abandon)?;
                    let here = self.step(s + 1, t, t1, abandon)?;
                    busy = clock.elapsed();
                    let waiting = Instant::now();
                    let mut arrived = self.receive(s, abandon)?;
                    waited_batches += waiting.elapsed();
                    let clock = Instant::now();
                    received = arrived.len() as u64;
                    let mut params = spec.params.clone();
                    params.dt = t1 - t;
                    let came = self.advance_set(&mut arrived, &params, s + 1, t, abandon)?;
                    self.take_in(&arrived)?;
                    ahead = Some((here.merge(came), busy + clock.elapsed()));
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
        #[cfg(feature = "gpu")]
        let readback = self.gpu.as_ref().map_or(String::new(), |g| {
            format!(
                "; read back {} bytes from the GPU ({:.0} a step)",
                g.readback_bytes,
                g.readback_bytes as f64 / (s - first).max(1) as f64
            )
        });
        #[cfg(not(feature = "gpu"))]
        let readback = String::new();
        self.log.say(format!(
            "stopped after {s} steps; busy {:.2} s; waited {:.2} s for other partitions' batches \
             and {:.2} s for the manager's grants; fetched {} halo element values on \
             demand{readback}; {}",
            waits[2].as_secs_f64(),
            waits[0].as_secs_f64(),
            waits[1].as_secs_f64(),
            self.fields.fetched,
            crate::health::rss_words()
        ));
        Ok(s)
    }
}
