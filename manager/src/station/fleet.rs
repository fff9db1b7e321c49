//! The fleet's own checks. `shoal doctor` lists every node on the fabric (id, architecture,
//! version, cores, memory, GPU adapter and self-test, temperature and throttling, clock offset)
//! and flags what needs a person: mismatched versions, nodes that are hot or throttled, clocks
//! that disagree, GPUs that fail their self-test, nodes that do not answer, and nodes that are
//! not authenticated: each node's link to this manager, with its protocol and the name on the
//! certificate the node showed, and the node's own links to its peers. `shoal pi` is the
//! cluster's smoke test, as MPI users run their C pi example: a Monte Carlo estimate of pi with
//! the samples spread over every node in proportion to its cores. Sample k is a pure function of
//! (seed, k), so the estimate is the same on any cluster, any split, any thread count.

use crate::station::membership::{census, Fleet, FleetSpec, Member};
use anyhow::{anyhow, bail, Result};
use shoal_common::keys;
use shoal_common::wire::{
    self, Checkup, Endpoint, GpuHealth, Health, Ident, Message, PeerLink, PiRequest, PiShare,
};
use shoal_node::health::throttle_words;
use shoal_node::net::{bytes, Caller, Dropped};
use std::fmt::Write as _;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where `doctor` and `pi` look for nodes.
#[derive(Clone, Debug, Default)]
pub struct FleetOptions {
    /// The cluster of running `shoal-node`s; `None`: in-process nodes (the embedded default).
    pub cluster: Option<String>,
    /// Embedded: nodes to start (default one per core). Named: nodes to wait for (default
    /// whoever has joined).
    pub nodes: Option<usize>,
    pub zenoh_config: Option<std::path::PathBuf>,
    pub connect: Vec<String>,
    pub listen: Vec<String>,
    /// How long to wait for nodes to join, seconds.
    pub wait: f64,
    /// Worker threads of the in-process nodes.
    pub threads: Option<usize>,
    /// `doctor`: ask exactly these nodes by name, without waiting for their tokens.
    pub names: Vec<String>,
    /// `doctor`: list every link of every node (peer, protocol, certificate name).
    pub links: bool,
}

/// A node is hot at its zone's passive trip point, or at this temperature where there is none
/// (the Pi firmware's soft limit).
pub const HOT_MC: i32 = 80_000;
/// Clocks further apart than this are flagged.
pub const CLOCK_TOLERANCE_S: f64 = 0.1;
/// Quick checkups per node for the clock offset; the one with the shortest round trip counts.
const CLOCK_PROBES: usize = 5;

fn join(o: &FleetOptions) -> Result<(Fleet, Vec<Member>)> {
    if !o.names.is_empty() && o.cluster.is_none() {
        bail!("--node names nodes of a cluster: give --cluster too");
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = o.threads.unwrap_or(cores).max(1);
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shoal-worker-{i}"))
            .build()
            .map_err(|e| anyhow!("starting {threads} worker threads: {e}"))?,
    );
    let nodes = match &o.cluster {
        None => o.nodes.unwrap_or(cores),
        Some(_) => o.nodes.unwrap_or(0),
    };
    let fleet = Fleet::join(&FleetSpec {
        name: o.cluster.as_deref(),
        nodes,
        zenoh_config: o.zenoh_config.clone(),
        connect: o.connect.clone(),
        listen: o.listen.clone(),
        pool,
        devices: Vec::new(),
    })?;
    if !o.names.is_empty() {
        // Named: their checkups are sent whether or not a token arrived; a link takes a
        // moment to come up.
        std::thread::sleep(Duration::from_secs_f64(o.wait.min(5.0)));
        let named = o
            .names
            .iter()
            .map(|n| Member {
                name: n.clone(),
                cores: 0,
                arch: String::new(),
            })
            .collect();
        return Ok((fleet, named));
    }
    match fleet.wait(o.wait, &Default::default()) {
        Ok(m) => Ok((fleet, m)),
        Err(e) => {
            let _ = fleet.leave();
            Err(e)
        }
    }
}

fn cluster_endpoint(fleet: &Fleet) -> Endpoint {
    Endpoint {
        cluster: fleet.cluster.clone(),
        run: 0,
    }
}

/// One node as the doctor found it.
#[derive(Clone, Debug)]
pub struct NodeReport {
    pub name: String,
    /// The full checkup's answer, or why there is none.
    pub health: Result<Health, String>,
    /// Node clock minus manager clock, seconds, and its uncertainty (half the round trip).
    pub clock_offset: Option<(f64, f64)>,
    /// This manager's link to the node (one with a certificate where there are several).
    pub link: Option<PeerLink>,
}

#[derive(Clone, Debug)]
pub struct DoctorReport {
    pub cluster: String,
    pub nodes: Vec<NodeReport>,
    /// Tokens this manager cannot read, and why (another protocol version, most likely).
    pub strangers: Vec<(String, String)>,
    /// What needs a person: (node, problem).
    pub problems: Vec<(String, String)>,
    /// Worth knowing, not failing: unauthenticated links on a cluster configured without
    /// certificates (plain TCP), where they are expected.
    pub warnings: Vec<(String, String)>,
    /// Whether `render` lists every node's links.
    pub show_links: bool,
}

/// Asks every node for a full checkup and times a few quick ones for its clock.
pub fn doctor(o: &FleetOptions) -> Result<DoctorReport> {
    let (fleet, members) = join(o)?;
    let result = examine(&fleet, &members).map(|r| DoctorReport {
        show_links: o.links,
        ..r
    });
    let left = fleet.leave();
    let report = result?;
    left?;
    Ok(report)
}

/// Asks node `name` of `cluster` how it is: a quick checkup, or a full one (firmware flags, the
/// GPU self-test, every link), waiting at most `patience`, or until `abandon` is set.
pub fn checkup(
    session: &zenoh::Session,
    cluster: &Ident,
    dropped: &Dropped,
    name: &str,
    (full, patience): (bool, Duration),
    abandon: &AtomicBool,
) -> Result<Health> {
    let ep = Endpoint {
        cluster: cluster.clone(),
        run: 0,
    };
    let q = bytes(&ep, Message::Checkup(Checkup { full }))?;
    let caller = Caller {
        session,
        me: &ep,
        dropped,
        quiet: true,
    };
    match caller.ask_any_run(&keys::doctor(cluster, name), &q, patience, abandon)? {
        Message::Health(h) if h.node.as_str() == name => Ok(*h),
        Message::Health(h) => bail!("answered as `{}`", h.node),
        other => bail!("answered with a {}", other.kind()),
    }
}

/// `shoal status --serve ADDR`: the station's status page for the fleet alone, until `seconds`
/// pass (or for good). Each node gets one full checkup (its GPU's self-test) and quick ones
/// after it.
pub fn status_page(
    o: &FleetOptions,
    addr: std::net::SocketAddr,
    seconds: Option<f64>,
) -> Result<()> {
    use crate::station::status;
    let Some(cluster) = o.cluster.as_deref() else {
        bail!("shoal status shows a named cluster's nodes: give --cluster NAME (the embedded default's nodes live only inside a run)");
    };
    let serve_for = seconds
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow!("--seconds: `{s}` is not a positive number of seconds"))
        })
        .transpose()?;
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| anyhow!("starting a worker thread: {e}"))?,
    );
    let fleet = Fleet::join(&FleetSpec {
        name: Some(cluster),
        nodes: 0,
        zenoh_config: o.zenoh_config.clone(),
        connect: o.connect.clone(),
        listen: o.listen.clone(),
        pool,
        devices: Vec::new(),
    })?;
    let board = status::Board::new(cluster, None);
    let served = status::serve(addr, board.clone());
    let result = served.map(|server| {
        println!("status page: http://{}/ (cluster {cluster})", server.addr);
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = status::watch_fleet(
            fleet.session.clone(),
            fleet.cluster.clone(),
            fleet.dropped.clone(),
            board,
            stop.clone(),
            true,
            (
                "auto".to_string(),
                "a named cluster's nodes each choose (shoal-node --device, with run.device)"
                    .to_string(),
            ),
        );
        let began = Instant::now();
        while serve_for.is_none_or(|d| began.elapsed() < d) {
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = watcher.join();
        drop(server);
    });
    let left = fleet.leave();
    result?;
    left?;
    Ok(())
}

fn examine(fleet: &Fleet, members: &[Member]) -> Result<DoctorReport> {
    let never = AtomicBool::new(false);
    let ask = |name: &str, full: bool, patience: Duration| -> Result<Health> {
        checkup(
            &fleet.session,
            &fleet.cluster,
            &fleet.dropped,
            name,
            (full, patience),
            &never,
        )
    };
    let nodes: Vec<NodeReport> = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .map(|m| {
                let ask = &ask;
                s.spawn(move || {
                    // The clock first, while nothing else runs on the node.
                    let mut best: Option<(f64, f64)> = None;
                    let mut silent = None;
                    for _ in 0..CLOCK_PROBES {
                        let t0 = shoal_node::health::clock_unix_ns();
                        let sent = Instant::now();
                        let h = match ask(&m.name, false, Duration::from_secs(5)) {
                            Ok(h) => h,
                            Err(e) => {
                                silent = Some(format!("{e:#}"));
                                break;
                            }
                        };
                        let rtt = sent.elapsed().as_secs_f64();
                        let mid = t0 as f64 * 1e-9 + rtt / 2.0;
                        let offset = h.clock_unix_ns as f64 * 1e-9 - mid;
                        if best.is_none_or(|(_, r)| rtt / 2.0 < r) {
                            best = Some((offset, rtt / 2.0));
                        }
                    }
                    // A node that answers no quick checkup is not asked for a full one.
                    let health = match (best, silent) {
                        (None, Some(why)) => Err(why),
                        _ => ask(&m.name, true, Duration::from_secs(120))
                            .map_err(|e| format!("{e:#}")),
                    };
                    NodeReport {
                        name: m.name.clone(),
                        health,
                        clock_offset: best,
                        link: None,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a checkup thread panicked")))
            .collect::<Result<Vec<_>>>()
    })?;
    let (_, strangers) = census(&fleet.session, &fleet.cluster, &fleet.dropped)?;
    let strangers: Vec<(String, String)> = strangers
        .into_iter()
        .map(|s| (s.name, s.why.to_string()))
        .collect();
    let mut nodes = nodes;
    let mine = shoal_node::net::peer_links(&fleet.session);
    for n in &mut nodes {
        if let Ok(h) = &n.health {
            n.link = link_to(&mine, &h.zid);
        }
    }
    let mut problems = problems(&nodes, &strangers, env!("CARGO_PKG_VERSION"));
    let mut warnings = Vec::new();
    // In-process nodes share this process: their loopback links are nobody else's.
    if !fleet.is_embedded() {
        if fleet.demands_certificates {
            problems.extend(authentication(&nodes, true));
        } else {
            // Expected on plain TCP: one line per node, not one per link.
            warnings.extend(authentication(&nodes, false));
        }
    }
    Ok(DoctorReport {
        cluster: fleet.cluster.to_string(),
        nodes,
        strangers,
        problems,
        warnings,
        show_links: false,
    })
}

/// This session's link to the peer `zid`: one with a certificate if there is one.
fn link_to(links: &[PeerLink], zid: &str) -> Option<PeerLink> {
    let to: Vec<&PeerLink> = links.iter().filter(|l| l.peer.as_str() == zid).collect();
    to.iter()
        .find(|l| l.certificate.is_some())
        .or(to.first())
        .map(|l| (*l).clone())
}

/// The nodes that did not authenticate with a certificate: on their link to this manager, or
/// (`every_link`) on any of their own links to peers. With mutual TLS, a certificate name on a
/// link means the peer's chain was verified against the cluster CA this configuration names.
pub fn authentication(nodes: &[NodeReport], every_link: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for n in nodes {
        let Ok(h) = &n.health else { continue };
        match &n.link {
            None => out.push((
                n.name.clone(),
                "no direct link from this manager (reached through another peer)".into(),
            )),
            Some(l) if l.certificate.is_none() => out.push((
                n.name.clone(),
                format!(
                    "not authenticated: its {} link to this manager has no certificate",
                    l.protocol
                ),
            )),
            Some(_) => {}
        }
        for l in h
            .links
            .iter()
            .filter(|l| every_link && l.certificate.is_none())
        {
            out.push((
                n.name.clone(),
                format!(
                    "has a {} link without a certificate, to peer {}",
                    l.protocol, l.peer
                ),
            ));
        }
    }
    out
}

/// How a link reads in the doctor's table.
fn link_words(l: &Option<PeerLink>) -> String {
    match l {
        None => "-".into(),
        Some(PeerLink {
            protocol,
            certificate: Some(cn),
            ..
        }) => format!("{protocol}, cert {cn}"),
        Some(PeerLink { protocol, .. }) => format!("{protocol}, no cert"),
    }
}

/// What needs a person, node by node.
pub fn problems(
    nodes: &[NodeReport],
    strangers: &[(String, String)],
    version: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, why) in strangers {
        out.push((name.clone(), format!("cannot be read: {why}")));
    }
    for n in nodes {
        let mut flag = |s: String| out.push((n.name.clone(), s));
        let h = match &n.health {
            Ok(h) => h,
            Err(e) => {
                flag(format!("no checkup: {e}"));
                continue;
            }
        };
        if h.capabilities.version.as_str() != version {
            flag(format!(
                "version {}, this manager {version}",
                h.capabilities.version
            ));
        }
        let t = &h.thermal;
        if let Some(mc) = t.temperature_mc {
            let limit = t.passive_trip_mc.unwrap_or(HOT_MC);
            if mc >= limit {
                flag(format!(
                    "hot: {:.1} °C in {} (throttling starts at {:.1} °C)",
                    mc as f64 / 1000.0,
                    t.zone,
                    limit as f64 / 1000.0
                ));
            }
        }
        if t.cooling {
            flag("throttled: the thermal governor caps the CPU frequency".into());
        }
        if let Some(bits) = t.throttled {
            let (now, since) = throttle_words(bits);
            if !now.is_empty() {
                flag(format!("throttled now: {}", now.join(", ")));
            }
            if !since.is_empty() {
                flag(format!("throttled since boot: {}", since.join(", ")));
            }
        }
        if let GpuHealth::Failed { adapter, why } = &h.gpu {
            flag(format!("GPU self-test failed on {adapter}: {why}"));
        }
        match n.clock_offset {
            Some((off, err)) if off.abs() - err > CLOCK_TOLERANCE_S => flag(format!(
                "clock off by {} (is time sync running?)",
                seconds(off)
            )),
            None => flag("no clock reading".into()),
            _ => {}
        }
    }
    out
}

fn seconds(s: f64) -> String {
    if s.abs() < 1.0 {
        format!("{:+.1} ms", s * 1e3)
    } else {
        format!("{s:+.3} s")
    }
}

impl DoctorReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "cluster `{}`: {} node{} (manager shoal {}, protocol {}, {})",
            self.cluster,
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            env!("CARGO_PKG_VERSION"),
            wire::VERSION,
            std::env::consts::ARCH
        );
        let mut rows = vec![[
            "node", "arch", "version", "cores", "peak RSS", "load", "temp", "freq", "clock",
            "link", "gpu",
        ]
        .map(String::from)];
        for n in &self.nodes {
            let clock = n
                .clock_offset
                .map(|(o, e)| format!("{} ±{:.1} ms", seconds(o), e * 1e3))
                .unwrap_or_else(|| "-".into());
            let row = match &n.health {
                Err(_) => [
                    n.name.clone(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    "?".into(),
                    clock,
                    link_words(&n.link),
                    "no answer".into(),
                ],
                Ok(h) => {
                    let c = &h.capabilities;
                    let t = &h.thermal;
                    [
                        n.name.clone(),
                        c.arch.to_string(),
                        c.version.to_string(),
                        c.cores.to_string(),
                        format!(
                            "{:.0} MiB of {:.1} GiB",
                            h.peak_rss_kib as f64 / 1024.0,
                            c.memory_mib as f64 / 1024.0
                        ),
                        format!("{:.2}{}", h.load, if h.busy > 0 { " busy" } else { "" }),
                        t.temperature_mc
                            .map(|m| format!("{:.1} °C", m as f64 / 1000.0))
                            .unwrap_or_else(|| "no sensor".into()),
                        match (t.freq_khz, t.max_freq_khz) {
                            (Some(f), Some(m)) => format!("{}/{} MHz", f / 1000, m / 1000),
                            (Some(f), None) => format!("{} MHz", f / 1000),
                            _ => "-".into(),
                        },
                        clock,
                        link_words(&n.link),
                        match &h.gpu {
                            GpuHealth::NotAsked => "not asked".into(),
                            GpuHealth::NotBuilt => "none (built without GPU support)".into(),
                            GpuHealth::Absent { why } => format!("none: {why}"),
                            GpuHealth::Failed { adapter, .. } => {
                                format!("{adapter}: self-test FAILED")
                            }
                            GpuHealth::Passed {
                                adapter,
                                max_distance_mm,
                            } => format!("{adapter}: self-test passed ({max_distance_mm:.2} mm)"),
                        },
                    ]
                }
            };
            rows.push(row);
        }
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(v, w)| format!("{v:<w$}"))
                .collect();
            let _ = writeln!(s, "  {}", line.join("  ").trim_end());
        }
        for (name, why) in &self.strangers {
            let _ = writeln!(s, "  {name}: unreadable token ({why})");
        }
        // Where each node steps and why, as its full checkup chose.
        for n in &self.nodes {
            match &n.health {
                Ok(h) if !h.device.is_empty() => {
                    let _ = writeln!(s, "  {} steps on {}", n.name, h.device);
                }
                _ => {}
            }
        }
        if self.show_links {
            for n in &self.nodes {
                let Ok(h) = &n.health else { continue };
                let links: Vec<String> = h
                    .links
                    .iter()
                    .map(|l| format!("{} to {}", link_words(&Some(l.clone())), l.peer))
                    .collect();
                let _ = writeln!(s, "  {} links: {}", n.name, links.join("; "));
            }
        }
        for (name, w) in &self.warnings {
            let _ = writeln!(s, "  warning: {name}: {w}");
        }
        if self.problems.is_empty() {
            let _ = writeln!(s, "no problems found");
        } else {
            let _ = writeln!(s, "{} problem(s):", self.problems.len());
            for (name, p) in &self.problems {
                let _ = writeln!(s, "  {name}: {p}");
            }
        }
        s
    }
}

#[derive(Clone, Debug)]
pub struct PiReport {
    pub seed: u64,
    pub samples: u64,
    pub inside: u64,
    /// Each node's answer, with its architecture and cores, in sample order.
    pub shares: Vec<(PiShare, String, u16)>,
    pub seconds: f64,
}

impl PiReport {
    pub fn estimate(&self) -> f64 {
        4.0 * self.inside as f64 / self.samples as f64
    }
    /// One standard error of the estimate.
    pub fn sigma(&self) -> f64 {
        let p = std::f64::consts::FRAC_PI_4;
        4.0 * (p * (1.0 - p) / self.samples as f64).sqrt()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pi over {} node{}: {} samples, seed {}",
            self.shares.len(),
            if self.shares.len() == 1 { "" } else { "s" },
            self.samples,
            self.seed
        );
        for (p, arch, cores) in &self.shares {
            let _ = writeln!(
                s,
                "  {:<20} {:<8} {:>3} cores  samples {:>14}..{:<14}  inside {:>13}  {:>7.3} s  {:>8.1} M/s",
                p.node.as_str(),
                arch,
                cores,
                p.first,
                p.first + p.count,
                p.inside,
                p.seconds,
                p.count as f64 / p.seconds.max(1e-9) / 1e6
            );
        }
        let _ = writeln!(
            s,
            "pi ≈ {:.10}  (error {:+.2e}, one standard error {:.1e}; {:.2} s, {:.1} M samples/s)",
            self.estimate(),
            self.estimate() - std::f64::consts::PI,
            self.sigma(),
            self.seconds,
            self.samples as f64 / self.seconds.max(1e-9) / 1e6
        );
        s
    }
}

/// Splits `samples` over `cores` in proportion, as contiguous ranges in order.
pub fn shares(samples: u64, cores: &[u16]) -> Vec<(u64, u64)> {
    let total: u128 = cores.iter().map(|&c| c.max(1) as u128).sum();
    let mut out = Vec::with_capacity(cores.len());
    let (mut first, mut acc) = (0u64, 0u128);
    for &c in cores {
        acc += c.max(1) as u128;
        let end = (samples as u128 * acc / total) as u64;
        out.push((first, end - first));
        first = end;
    }
    out
}

/// Runs the Monte Carlo estimate of pi over every node.
pub fn pi(o: &FleetOptions, samples: u64, seed: u64) -> Result<PiReport> {
    if samples == 0 {
        bail!("--samples must be at least 1");
    }
    let (fleet, members) = join(o)?;
    let result = spread_pi(&fleet, &members, samples, seed);
    let left = fleet.leave();
    let report = result?;
    left?;
    Ok(report)
}

fn spread_pi(fleet: &Fleet, members: &[Member], samples: u64, seed: u64) -> Result<PiReport> {
    let ep = cluster_endpoint(fleet);
    let cores: Vec<u16> = members.iter().map(|m| m.cores).collect();
    let plan = shares(samples, &cores);
    let never = AtomicBool::new(false);
    // Generous: a Pi core counts tens of millions of samples a second.
    let patience = Duration::from_secs(60 + samples / 2_000_000);
    let t = Instant::now();
    let answers = std::thread::scope(|s| {
        let handles: Vec<_> = members
            .iter()
            .zip(&plan)
            .map(|(m, &(first, count))| {
                let (ep, never) = (&ep, &never);
                s.spawn(move || -> Result<PiShare> {
                    let q = bytes(ep, Message::PiRequest(PiRequest { seed, first, count }))?;
                    let caller = Caller {
                        session: &fleet.session,
                        me: ep,
                        dropped: &fleet.dropped,
                        quiet: true,
                    };
                    match caller.ask_any_run(&keys::pi(&fleet.cluster, &m.name), &q, patience, never)? {
                        Message::PiShare(p)
                            if p.node.as_str() == m.name && p.first == first && p.count == count =>
                        {
                            Ok(p)
                        }
                        Message::PiShare(p) => bail!(
                            "node {}: answered for {} samples from {} as `{}`, not {count} from {first}",
                            m.name,
                            p.count,
                            p.first,
                            p.node
                        ),
                        other => bail!("node {}: answered with a {}", m.name, other.kind()),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a pi thread panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?;
    let seconds = t.elapsed().as_secs_f64();
    let inside = answers.iter().map(|p| p.inside).sum();
    Ok(PiReport {
        seed,
        samples,
        inside,
        shares: answers
            .into_iter()
            .zip(members)
            .map(|(p, m)| (p, m.arch.clone(), m.cores))
            .collect(),
        seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_samples_in_proportion_to_cores() {
        let s = shares(1000, &[4, 4, 2]);
        assert_eq!(s, vec![(0, 400), (400, 400), (800, 200)]);
        let s = shares(7, &[1, 1, 1]);
        assert_eq!(s.iter().map(|x| x.1).sum::<u64>(), 7);
        assert!(s.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        let s = shares(u64::MAX, &[3, 1]);
        assert_eq!(s[0].0, 0);
        assert_eq!(s[0].1 + s[1].1, u64::MAX);
        assert_eq!(s[0].0 + s[0].1, s[1].0);
    }

    fn healthy(name: &str) -> NodeReport {
        NodeReport {
            name: name.into(),
            health: Ok(Health {
                node: wire::ident(name).unwrap(),
                capabilities: wire::Capabilities {
                    arch: wire::text("aarch64"),
                    version: wire::text(env!("CARGO_PKG_VERSION")),
                    cores: 4,
                    memory_mib: 3796,
                    gpu: None,
                },
                clock_unix_ns: 0,
                uptime_s: 100,
                load: 0.5,
                peak_rss_kib: 40_000,
                busy: 0,
                gpu: GpuHealth::Absent {
                    why: wire::text("no Vulkan loader"),
                },
                thermal: wire::Thermal {
                    temperature_mc: Some(52_000),
                    zone: wire::text("cpu-thermal"),
                    passive_trip_mc: Some(80_000),
                    ..Default::default()
                },
                zid: wire::text("aa01"),
                links: vec![quic("bb02", Some("pi4-b"))],
                device: "cpu: as configured".into(),
            }),
            clock_offset: Some((0.002, 0.001)),
            link: Some(quic("aa01", Some(name))),
        }
    }

    fn quic(peer: &str, cn: Option<&str>) -> PeerLink {
        PeerLink {
            peer: wire::text(peer),
            protocol: wire::text("quic"),
            certificate: cn.map(wire::text),
        }
    }

    #[test]
    fn the_doctor_flags_nodes_without_a_certificate() {
        let mut plain = healthy("plain");
        plain.link = Some(PeerLink {
            protocol: wire::text("tcp"),
            ..quic("aa01", None)
        });
        let mut routed = healthy("routed");
        routed.link = None;
        let mut open = healthy("open");
        if let Ok(h) = &mut open.health {
            h.links.push(quic("cc03", None));
        }
        let nodes = [healthy("a"), plain, routed, open];
        assert_eq!(authentication(&nodes, false).len(), 2);
        let p = authentication(&nodes, true);
        let text: Vec<String> = p.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        assert_eq!(
            text,
            [
                "plain: not authenticated: its tcp link to this manager has no certificate",
                "routed: no direct link from this manager (reached through another peer)",
                "open: has a quic link without a certificate, to peer cc03",
            ]
        );
        assert_eq!(link_words(&healthy("a").link), "quic, cert a");
    }

    #[test]
    fn the_doctor_flags_versions_heat_throttling_clocks_and_silence() {
        let v = env!("CARGO_PKG_VERSION");
        assert!(problems(&[healthy("a")], &[], v).is_empty());
        let mut hot = healthy("hot");
        let mut old = healthy("old");
        let mut late = healthy("late");
        let mut volts = healthy("volts");
        if let Ok(h) = &mut hot.health {
            h.thermal.temperature_mc = Some(80_500);
        }
        if let Ok(h) = &mut old.health {
            h.capabilities.version = wire::text("0.0.9");
        }
        late.clock_offset = Some((-2.5, 0.001));
        if let Ok(h) = &mut volts.health {
            h.thermal.throttled = Some(0x50005);
            h.thermal.passive_trip_mc = None;
            h.thermal.temperature_mc = Some(79_000);
        }
        let mut silent = healthy("silent");
        silent.health = Err("no answer within 120 s".into());
        let strangers = [(
            "new".to_string(),
            "protocol version 4, this build speaks 3".to_string(),
        )];
        let p = problems(&[hot, old, late, volts, silent], &strangers, v);
        let text: Vec<String> = p.iter().map(|(n, w)| format!("{n}: {w}")).collect();
        assert_eq!(
            text,
            [
                "new: cannot be read: protocol version 4, this build speaks 3",
                "hot: hot: 80.5 °C in cpu-thermal (throttling starts at 80.0 °C)",
                &format!("old: version 0.0.9, this manager {v}"),
                "late: clock off by -2.500 s (is time sync running?)",
                "volts: throttled now: under-voltage, throttled",
                "volts: throttled since boot: under-voltage, throttled",
                "silent: no checkup: no answer within 120 s",
            ]
        );
    }
}
