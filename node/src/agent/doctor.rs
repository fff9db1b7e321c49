//! The queryables a node answers outside runs: `shoal doctor`'s checkup and `shoal pi`'s share.

use super::NodeOptions;
use crate::net::{reply, Dropped};
use anyhow::{anyhow, Result};
use shoal_common::keys;
use shoal_common::wire::{self, Endpoint, Hello, Message};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;
use zenoh::{Session, Wait};

/// Answers `shoal doctor`: a quick checkup at once, a full one (with the GPU self-test, slow the
/// first time) from its own thread so the fabric's threads never wait on it.
pub(super) fn declare_doctor(
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
pub(super) fn declare_pi(
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
