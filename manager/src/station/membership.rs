//! How a manager joins the fabric and finds its nodes: the embedded default's in-process node
//! agents on loopback or a named cluster's running `shoal-node`s, their liveliness tokens (each
//! carrying the node's hello), and the wait for enough of them. Shared by `shoal run`, `shoal
//! doctor` and `shoal pi`.

use anyhow::{anyhow, bail, Context, Result};
use shoal_common::keys;
use shoal_common::wire::{self, Ident, Message};
use shoal_node::agent::{serve, NodeOptions};
use shoal_node::net::{free_loopback_port, Dropped, Fabric};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zenoh::{Session, Wait};

/// A node that joined, as its token describes it.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub cores: u16,
    pub arch: String,
}

/// A token this manager cannot read, and why: another protocol version, or not a hello.
#[derive(Clone, Debug)]
pub struct Stranger {
    pub name: String,
    pub why: wire::WireError,
}

pub fn run_id() -> u64 {
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
pub fn census(
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

/// Tells each node of another protocol version, once, which version this manager speaks, and
/// says on stderr that it takes no part. The node cannot read past the envelope's version, so
/// the message under it does not matter to it; it is an assignment of nothing, which a node of
/// this version would take as such. The node answers with its refusal, quoted here. Returns
/// without waiting longer than a second for any one node.
pub fn tell_strangers(
    session: &Session,
    cluster: &Ident,
    strangers: &[Stranger],
    told: &mut BTreeSet<String>,
) {
    for s in strangers {
        let wire::WireError::Version { found } = s.why else {
            continue;
        };
        if !told.insert(s.name.clone()) {
            continue;
        }
        let answer = wire::ident(&s.name)
            .map_err(|e| e.to_string())
            .and_then(|node| {
                let me = wire::Endpoint {
                    cluster: cluster.clone(),
                    run: 0,
                };
                let nothing = wire::Assignment {
                    node,
                    partitions: Default::default(),
                };
                wire::encode(&me.envelope(Message::Assignment(nothing))).map_err(|e| e.to_string())
            })
            .and_then(|b| refusal(session, &keys::assign(cluster, &s.name), b));
        eprintln!(
            "fabric: node {} speaks protocol version {found} and this manager {}: it takes no part \
             until both run the same release of shoal ({})",
            s.name,
            wire::VERSION,
            match answer {
                Ok(text) => format!("told it so; it answered: {text}"),
                Err(e) => format!("telling it so failed: {e}"),
            }
        );
    }
}

/// Sends `payload` to `key` and returns the text of the first answer (a refusal is an error
/// reply, whose payload is its text), waiting one second at most.
fn refusal(session: &Session, key: &str, payload: Vec<u8>) -> Result<String, String> {
    let replies = session
        .get(key)
        .payload(payload)
        .timeout(Duration::from_secs(1))
        .wait()
        .map_err(|e| format!("asking {key}: {e}"))?;
    let silent = || format!("no answer from {key} within 1 s");
    match replies.recv_timeout(Duration::from_secs(1)) {
        Ok(Some(reply)) => match reply.result() {
            Ok(sample) => Ok(String::from_utf8_lossy(&sample.payload().to_bytes()).into_owned()),
            // zenoh's own error reply when the get's time is up.
            Err(e) if e.payload().to_bytes().as_ref() == b"Timeout" => Err(silent()),
            Err(e) => Ok(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned()),
        },
        Ok(None) | Err(_) => Err(silent()),
    }
}

/// Waits for `want` nodes (0: whoever joins, once one has) until `wait` runs out, leaving out
/// the nodes in `exclude` (those a run has lost).
pub fn wait_for_nodes(
    session: &Session,
    cluster: &Ident,
    want: usize,
    wait: Duration,
    dropped: &Dropped,
    exclude: &BTreeSet<String>,
) -> Result<Vec<Member>> {
    let deadline = Instant::now() + wait;
    let mut settled_once = false;
    let mut told = BTreeSet::new();
    loop {
        let (mut m, strangers) = census(session, cluster, dropped)?;
        tell_strangers(session, cluster, &strangers, &mut told);
        m.retain(|n| !exclude.contains(&n.name));
        if want > 0 && m.len() >= want {
            return Ok(m.into_iter().take(want).collect());
        }
        if want == 0 && !m.is_empty() {
            // Give nodes starting together a moment to appear too; a run that lost a node
            // goes on at once with those that are up.
            if settled_once || !exclude.is_empty() {
                return Ok(m);
            }
            settled_once = true;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        if Instant::now() > deadline {
            if m.is_empty() && !exclude.is_empty() {
                bail!(
                    "no node is left in cluster `{cluster}` after losing {}, and none joined within {} s",
                    exclude.iter().cloned().collect::<Vec<_>>().join(", "),
                    wait.as_secs_f64()
                );
            }
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

/// In-process node agents for the embedded default, each with its own zenoh session.
pub struct LocalNodes {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<Result<u64>>>,
}

impl LocalNodes {
    fn start(
        n: usize,
        cluster: &Ident,
        fabric: &Fabric,
        pool: &Arc<rayon::ThreadPool>,
        devices: &[shoal_node::Device],
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
                device: devices
                    .get(i)
                    .or(devices.last())
                    .copied()
                    .unwrap_or(shoal_node::Device::Cpu),
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
pub struct FleetSpec<'a> {
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
    /// Where each in-process node steps (`--node-device`; the last one given goes for the
    /// rest; none: on the CPU, the manager having chosen the fabric over its own GPU).
    pub devices: Vec<shoal_node::Device>,
}

/// The manager's session, its cluster and, for the embedded default, its in-process nodes.
pub struct Fleet {
    pub session: Session,
    pub cluster: Ident,
    pub dropped: Arc<Dropped>,
    /// The configuration admits only peers with a certificate of the cluster CA (QUIC with
    /// mutual TLS, as the ansible roles deploy it).
    pub demands_certificates: bool,
    want: usize,
    local: Option<LocalNodes>,
}

impl Fleet {
    /// The embedded default: the nodes are this process's own.
    pub fn in_process(&self) -> bool {
        self.local.is_some()
    }

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
                // Loopback TCP; QUIC when the configuration admits only certificate holders
                // (`shoal bench --case transport` compares the two).
                let probe = Fabric {
                    config_file: base.clone(),
                    ..Default::default()
                };
                let scheme = if shoal_node::net::demands_certificates(&probe.config()?) {
                    "quic"
                } else {
                    "tcp"
                };
                let ep = format!("{scheme}/127.0.0.1:{}", free_loopback_port()?);
                let mut m = Fabric::loopback(vec![]);
                m.listen = Some(vec![ep.clone()]);
                m.config_file = base.clone();
                let mut n = Fabric::loopback(vec![ep]);
                n.listen = Some(vec![format!("{scheme}/127.0.0.1:0")]);
                n.config_file = base;
                (cluster, m, Some(n))
            }
        };
        let demands_certificates = shoal_node::net::demands_certificates(&fabric.config()?);
        let session = fabric.open()?;
        let local = match local {
            Some(f) => Some(LocalNodes::start(
                spec.nodes.max(1),
                &cluster,
                &f,
                &spec.pool,
                &spec.devices,
            )?),
            None => None,
        };
        Ok(Fleet {
            session,
            cluster,
            dropped: Arc::new(Dropped::default()),
            demands_certificates,
            want: if local.is_some() {
                spec.nodes.max(1)
            } else {
                spec.nodes
            },
            local,
        })
    }

    /// The nodes that joined within `seconds` (all the embedded ones, or as many as asked
    /// for), leaving out those in `exclude`; once a run has lost nodes, whoever is left.
    pub fn wait(&self, seconds: f64, exclude: &BTreeSet<String>) -> Result<Vec<Member>> {
        let want = if exclude.is_empty() { self.want } else { 0 };
        wait_for_nodes(
            &self.session,
            &self.cluster,
            want,
            Duration::from_secs_f64(seconds),
            &self.dropped,
            exclude,
        )
    }

    /// Whether the nodes are this process's own (the embedded default).
    pub fn is_embedded(&self) -> bool {
        self.local.is_some()
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
