//! The node's main loop: the assignment queryable, the liveliness token and systemd's watchdog,
//! and one run's assignment, its partitions each in a thread.

use super::doctor::{declare_doctor, declare_pi};
use super::meshes::shared_mesh;
use super::partition::{PartitionAgent, Shared};
use super::{capabilities, Log, NodeOptions, MANAGER_LOOKUP, PATIENCE};
use crate::net::{bytes, Caller, Dropped};
use crate::systemd::Notifier;
use anyhow::{anyhow, bail, Result};
use shoal_common::keys::{self, RunKeys};
use shoal_common::wire::{self, Endpoint, Hello, Message, RunSpec};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use zenoh::sample::SampleKind;
use zenoh::{Session, Wait};

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
        "announced in cluster `{}` ({} on {}, {} cores, kernel {}); waiting for a manager",
        opts.cluster,
        hello.capabilities.version,
        hello.capabilities.arch,
        hello.capabilities.cores,
        shoal_common::simd::chosen().name()
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
        busy.store(partitions.len() as u32, Ordering::Relaxed);
        let outcome = run_assignment(session, &me, opts, &partitions, &dropped, &log, stop);
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

/// Runs this node's partitions of one run, each in its own thread, and returns the steps done.
fn run_assignment(
    session: &Session,
    me: &Endpoint,
    opts: &NodeOptions,
    partitions: &[u32],
    dropped: &Arc<Dropped>,
    log: &Arc<Log>,
    stop: &AtomicBool,
) -> Result<u32> {
    let (node, device) = (opts.name.as_str(), opts.device);
    let caller = Caller {
        session,
        me,
        dropped,
        quiet: log.quiet,
    };
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
    // What every partition needs before any can start: the specification, the device and the
    // mesh. A node that cannot have them says so at once, for each partition it was given, so
    // that the manager goes on without it instead of waiting out its patience.
    let ready = (|| -> Result<_> {
        let mut spec = match caller.ask(&keys.spec(), None, PATIENCE, &abandon)? {
            Message::RunSpec(s) => *s,
            other => bail!("expected the run specification, got a {}", other.kind()),
        };
        let choice = choose_for(&spec, device)?;
        // The mesh input is needed only to build the mesh (or find it built): dropped after.
        let mesh = shared_mesh(std::mem::take(&mut spec.mesh), &spec.part_of, partitions)?;
        Ok((Arc::new(spec), choice, mesh))
    })();
    let (spec, choice, mesh) = match ready {
        Ok(r) => r,
        Err(e) => {
            if !abandon.load(Ordering::Relaxed) {
                let why = format!("{e:#}");
                std::thread::scope(|sc| {
                    for &p in partitions {
                        let (caller, why) = (&caller, &why);
                        sc.spawn(move || tell_failure(caller, p, why));
                    }
                });
            }
            return Err(e);
        }
    };
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
    let shared = Shared {
        caller,
        dropped,
        node,
        mesh: &mesh,
        spec: &spec,
        choice,
        pool: opts.pool.clone(),
    };
    let shared = &shared;
    let steps = std::thread::scope(|sc| {
        let handles: Vec<_> = partitions
            .iter()
            .map(|&p| {
                let abandon = abandon.clone();
                let log = Log {
                    prefix: format!("{} partition {p}", log.prefix),
                    quiet: log.quiet,
                };
                sc.spawn(move || {
                    // A panic is this partition's failure, reported by name like an error,
                    // never left for the manager to time out on.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        PartitionAgent::new(shared, p, log, &abandon)
                            .and_then(|mut a| a.run(&abandon, stop))
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
                            tell_failure(&caller, p, &format!("{e:#}"));
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
fn tell_failure(caller: &Caller, p: u32, reason: &str) {
    let m = Message::Failure(wire::Failure {
        partition: p,
        reason: reason.to_string(),
    });
    let me = caller.me;
    if let Ok(b) = bytes(me, m) {
        let never = AtomicBool::new(false);
        let keys = RunKeys::new(&me.cluster, me.run);
        let quiet = Caller {
            quiet: true,
            ..*caller
        };
        let _ = quiet.ask(&keys.sync(p), Some(&b), Duration::from_secs(5), &never);
    }
}
