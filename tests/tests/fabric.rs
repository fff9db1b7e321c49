//! The distributed runtime, for real: in-process node agents and separate `shoal-node`
//! processes on zenoh over loopback, compared value by value with the one-machine path.

use shoal_common::wire::{self, Command, Control, Endpoint, Message};
use shoal_manager::run::{run, RunOptions, RunReport};
use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zenoh::Wait;

/// A rotating, diffusing, temperature-seeking release over a 30 x 30 mesh, recording the
/// water's temperature and salinity along each track (so every path samples them).
pub(crate) fn setup(name: &str) -> (std::path::PathBuf, impl Fn(&str, &str) -> String) {
    let dir = scratch(name);
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 30,
        ny: 30,
        kh: true,
        temp: true,
        salinity: true,
        duration: 4.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let (cx, cy) = o.centre();
    let toml = move |out: &str, extra: &str| {
        format!(
            "seed=11\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=3000\ncentre=[{cx},{cy}]\nradius=5000.0\nz=-3.0\n[run]\nduration='3h'\ndt='60s'\nsort_every=4\n[diffusion]\nhorizontal_kh=2.0\nvertical='file'\n[behaviour]\npreferred_temperature=15.0\n[output]\nfile='{out}'\ninterval='20min'\nvariables=['temperature','salinity']\n{extra}"
        )
    };
    (dir, toml)
}

/// The one-machine run of `toml`, writing `direct.nc` in `dir`: what the fabric must match.
pub(crate) fn direct(dir: &Path, toml: &dyn Fn(&str, &str) -> String) -> std::path::PathBuf {
    run_with(
        dir,
        &toml("direct.nc", ""),
        RunOptions {
            direct: true,
            ..Default::default()
        },
    );
    dir.join("direct.nc")
}

pub(crate) fn run_with(dir: &Path, toml: &str, opts: RunOptions) -> RunReport {
    let cfg = config(dir, toml).unwrap();
    run(
        &cfg,
        &RunOptions {
            quiet: true,
            ..opts
        },
    )
    .unwrap()
}

#[test]
fn one_to_four_in_process_nodes_with_thin_halos_match_the_direct_path_bit_for_bit() {
    let (dir, toml) = setup("fabric_nodes");
    let direct = run_with(
        &dir,
        &toml("direct.nc", ""),
        RunOptions {
            direct: true,
            ..Default::default()
        },
    );
    assert_eq!(direct.nodes, 0);
    // One-ring halos: the partitions' field stores are as small as they get, and particles
    // that step past them are stepped again after an on-demand fetch. Field slices come in
    // pieces of 1 KiB of velocities (a few elements each), dozens per level. Partitions step
    // ahead of the manager by 1 (in lock), 7, 20 (past an output time: states come early) and
    // the default 16 steps.
    for (nodes, ahead) in [(1, 1), (2, 7), (3, 20), (4, 16)] {
        let out = format!("nodes{nodes}.nc");
        let r = run_with(
            &dir,
            &toml(
                &out,
                &format!("[cluster]\nhalo_rings=1\nfield_piece_kib=1\nahead_steps={ahead}\n"),
            ),
            RunOptions {
                nodes: Some(nodes),
                ..Default::default()
            },
        );
        assert_eq!((r.nodes, r.partitions), (nodes, nodes));
        assert_eq!(r.last, direct.last, "{nodes} nodes");
        files_bit_identical(&dir.join("direct.nc"), &dir.join(&out), false).unwrap();
    }
    // Particles really crossed partitions: the run moved them far.
    let o = Output::read(&dir.join("direct.nc")).unwrap();
    let moved = (0..o.n_traj)
        .filter(|&p| {
            let (a, b) = (o.at(p, 0), o.at(p, o.n_time - 1));
            (o.x[a] - o.x[b]).hypot(o.y[a] - o.y[b]) > 2000.0
        })
        .count();
    assert!(moved > 2000, "{moved}");
}

/// Partitions cut again where the particles are, at every output time (`rebalance_share = 0`),
/// on in-process nodes and on two node processes: the output is the direct path's, bit for bit,
/// and the run says how often and how uneven the load was.
#[test]
fn re_partitioning_where_the_particles_are_changes_no_bit() {
    let (dir, toml) = setup("fabric_rebalance");
    direct(&dir, &toml);
    let r = run_with(
        &dir,
        &toml(
            "nodes.nc",
            "[cluster]\nrebalance_share=0.0\nrebalance_steps=1\n",
        ),
        RunOptions {
            nodes: Some(3),
            ..Default::default()
        },
    );
    // Nine output times; the last ends the run.
    assert_eq!(r.rebalances.len(), 8, "{:?}", r.rebalances);
    assert!(r.rebalances.iter().all(|&b| b >= 1.0), "{:?}", r.rebalances);
    assert_eq!(r.imbalance_after.len(), 8, "{:?}", r.imbalance_after);
    files_bit_identical(&dir.join("direct.nc"), &dir.join("nodes.nc"), false).unwrap();

    let mut station = crate::faults::Station::new(&dir, "rebalance");
    station.start("r0", None);
    station.start("r1", None);
    let with = |out: &str, extra: &str| {
        toml(
            out,
            &extra.replace(
                "[cluster]\n",
                "[cluster]\nrebalance_share=0.0\nrebalance_steps=1\n",
            ),
        )
    };
    station.toml(&with, "processes.toml", "processes.nc", 2);
    let r = station.run("processes.toml");
    assert_eq!(r.rebalances.len(), 8, "{:?}", r.rebalances);
    files_bit_identical(&dir.join("direct.nc"), &dir.join("processes.nc"), false).unwrap();
    drop(station);

    // A node four times as slow as the other (it sleeps three times each stepping's time): the
    // re-cut gives it about a fifth of the work, by the speeds measured, and no bit changes.
    let mut station = crate::faults::Station::new(&dir, "speeds");
    station.start("fast", None);
    station.start("slow", Some("slow:4"));
    station.toml(&with, "speeds.toml", "speeds.nc", 2);
    let r = station.run("speeds.toml");
    assert!(!r.rebalances.is_empty());
    let share = |n: &str| r.node_shares.iter().find(|(m, _)| m == n).unwrap().1;
    // About 0.2 against 0.8 by the speeds; the bound leaves room for a machine whose other
    // tests slow the fast node too (an even cut would be 0.5 each).
    assert!(
        share("slow") < 0.4 && share("fast") > 0.6,
        "{:?}",
        r.node_shares
    );
    files_bit_identical(&dir.join("direct.nc"), &dir.join("speeds.nc"), false).unwrap();
}

#[test]
fn a_one_ring_halo_fetches_on_demand_and_matches_a_wide_halo() {
    let (dir, toml) = setup("fabric_halo");
    // Long steps and strong diffusion carry particles several elements per step; a snapshot
    // every step checks that every particle is in exactly one partition at every step.
    // The partitions stay as cut at the start (re-partitioning follows measured times, and
    // the fetch counts compared below depend on the cut).
    let fast = |out: &str, rings: usize| {
        toml(
            out,
            &format!("[cluster]\nhalo_rings={rings}\nrebalance_share=1e9\n"),
        )
        .replace("dt='60s'", "dt='10min'")
        .replace("interval='20min'", "interval='10min'")
        .replace("horizontal_kh=2.0", "horizontal_kh=30.0")
    };
    let opts = || RunOptions {
        nodes: Some(3),
        ..Default::default()
    };
    let thin = run_with(&dir, &fast("thin.nc", 1), opts());
    let wide = run_with(&dir, &fast("wide.nc", 8), opts());
    // The same halo with its slices in 1 KiB pieces: the pieces deliver exactly the topology,
    // so the same elements are fetched on demand, no more.
    let pieces = run_with(
        &dir,
        &fast("pieces.nc", 1).replace("[cluster]\n", "[cluster]\nfield_piece_kib=1\n"),
        opts(),
    );
    assert_eq!(pieces.halo_served, thin.halo_served);
    files_bit_identical(&dir.join("thin.nc"), &dir.join("pieces.nc"), false).unwrap();
    run_with(
        &dir,
        &fast("direct.nc", 1),
        RunOptions {
            direct: true,
            ..Default::default()
        },
    );
    assert!(thin.halo_served > 0, "a one-ring halo never fetched");
    assert_eq!(wide.halo_served, 0, "an eight-ring halo needed fetches");
    assert_eq!(thin.steps, 18);
    files_bit_identical(&dir.join("thin.nc"), &dir.join("wide.nc"), false).unwrap();
    files_bit_identical(&dir.join("thin.nc"), &dir.join("direct.nc"), false).unwrap();
}

/// A command for `program` that starts with no file descriptors but stdin, stdout and stderr.
/// Children inherit every descriptor open in this multi-threaded test process at the moment of
/// the fork, HDF5's locked NetCDF files of other tests included, and would hold their locks.
pub(crate) fn clean(program: &str) -> Process {
    let mut c = Process::new("bash");
    c.args([
        "-c",
        r#"for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@""#,
        "clean",
        program,
    ]);
    c
}

pub(crate) struct Nodes(pub Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn json5(dir: &Path, name: &str, listen: &str, connect: &str) -> std::path::PathBuf {
    let connect = if connect.is_empty() {
        String::new()
    } else {
        format!("connect: {{ endpoints: [\"{connect}\"] }},")
    };
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("{{ mode: \"peer\", listen: {{ endpoints: [\"{listen}\"] }}, {connect} scouting: {{ multicast: {{ enabled: false }} }} }}"),
    )
    .unwrap();
    p
}

/// Separate processes, with larval behaviour on (migration, stages, mortality, settlement): the
/// file matches the in-process run's bit for bit.
#[test]
fn a_manager_process_and_two_node_processes_match_the_in_process_run() {
    let (dir, toml) = setup("fabric_processes");
    std::fs::write(
        dir.join("reefs.geojson"),
        r#"{"type":"FeatureCollection","features":[{"type":"Feature","properties":{"name":"reef"},"geometry":{"type":"Polygon","coordinates":[[[409000,4509000],[413000,4509000],[413000,4513000],[409000,4513000],[409000,4509000]]]}}]}"#,
    )
    .unwrap();
    let larval = "[behaviour.migration]\nday_depth=[6.0, 8.0]\nnight_depth=1.0\nswim_speed=0.004\nlatitude=44.0\nlongitude=-63.0\n[[behaviour.stage]]\nage='1h'\nmortality_per_day=3.0\n[settlement]\npolygons='reefs.geojson'\ncompetency=['1h', '3h']\nprobability_per_hour=0.6\n";
    let hub = Hub::open();
    hub.config(&dir, "manager.json5");
    let node_cfg = hub.config(&dir, "node.json5");
    let cluster = format!("proc-{}", std::process::id());
    let mut nodes = Nodes(Vec::new());
    for k in 0..2 {
        nodes.0.push(
            clean(env!("CARGO_BIN_EXE_shoal-node"))
                .args(["--cluster", &cluster, "--name", &format!("n{k}")])
                .args(["--device", "cpu", "--zenoh-config"])
                .arg(&node_cfg)
                .stdin(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("n{k}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
    }
    std::fs::write(
        dir.join("proc.toml"),
        toml(
            "proc.nc",
            &format!("{larval}[cluster]\nnodes=2\nwait_seconds=60\nfield_piece_kib=2\nzenoh_config='manager.json5'\n"),
        ),
    )
    .unwrap();
    let out = clean(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "proc.toml", "--cluster", &cluster])
        .current_dir(&dir)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "manager failed:\n{log}");
    assert!(log.contains("2 nodes (n0 "), "{log}");
    // Ctrl-C: each node leaves cleanly.
    for c in &mut nodes.0 {
        let st = Process::new("kill")
            .args(["-INT", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for c in &mut nodes.0 {
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                assert!(st.success(), "node exited with {st}");
                break;
            }
            assert!(Instant::now() < deadline, "a node ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each node process built its own mesh and kept the derived geometry of its partition's
    // pages only (the in-process run below shares the manager's whole mesh). The cut follows
    // the rotation's circles (no particle crosses it), so the outer ring's node may touch
    // every page; the inner disk's does not.
    let mut held_pages = Vec::new();
    for k in 0..2 {
        let log = std::fs::read_to_string(dir.join(format!("n{k}.log"))).unwrap();
        let (held, pages) = log
            .split("derived rows for ")
            .nth(1)
            .and_then(|r| r.split_once(" pages"))
            .and_then(|(r, _)| r.split_once(" of "))
            .map(|(h, p)| (h.parse::<usize>().unwrap(), p.parse::<usize>().unwrap()))
            .unwrap_or_else(|| panic!("no mesh line in node n{k}'s log:\n{log}"));
        assert!(held > 0 && held <= pages, "n{k}: {held} of {pages} pages");
        held_pages.push((held, pages));
    }
    assert!(
        held_pages.iter().any(|(h, p)| h < p),
        "both nodes hold every page: {held_pages:?}"
    );
    let inproc = run_with(
        &dir,
        &toml("inproc.nc", larval),
        RunOptions {
            nodes: Some(2),
            ..Default::default()
        },
    );
    assert_eq!(inproc.partitions, 2);
    assert!(
        inproc.last.settled > 0 && inproc.last.dead > 0,
        "{:?}",
        inproc.last
    );
    files_bit_identical(&dir.join("proc.nc"), &dir.join("inproc.nc"), false).unwrap();
}

/// Garbage of every kind a receiver must survive: random bytes, a truncated message, a message
/// of another protocol version, one for another run.
fn garbage(cluster: &str, run: u64, k: u64) -> Vec<u8> {
    let me = Endpoint {
        cluster: wire::ident(cluster).unwrap(),
        run,
    };
    let control = Message::Control(Control {
        step: 1,
        command: Command::Continue,
        through: 2,
        states: vec![0, 1],
        snapshot: false,
    });
    let good = wire::encode(&me.envelope(control.clone())).unwrap();
    match k % 4 {
        0 => (0..(k % 300)).map(|i| (i * 7919 + k) as u8).collect(),
        1 => good[..good.len() / 2].to_vec(),
        2 => {
            let mut v = good.clone();
            v[4] = wire::VERSION as u8 + 1;
            v
        }
        _ => wire::encode(
            &Endpoint {
                cluster: me.cluster.clone(),
                run: run ^ 1,
            }
            .envelope(control),
        )
        .unwrap(),
    }
}

/// Particle batches that decode or nearly do, for partition `to`'s inbox as if from `from`,
/// at some step: one naming an element outside the mesh, one with a duplicate id, one with
/// arrays of unequal length, one in an element of another partition. A node must drop each.
fn bad_batch(cluster: &str, run: u64, kind: u64, step: u32, to: u32, from: u32) -> Vec<u8> {
    let me = Endpoint {
        cluster: wire::ident(cluster).unwrap(),
        run,
    };
    let mut b = wire::ParticleBatch {
        from,
        to,
        step,
        particles: shoal_common::Particles {
            id: vec![3, 7],
            x: vec![0.0; 2],
            y: vec![0.0; 2],
            z: vec![-1.0; 2],
            element: vec![0, 1],
            status: vec![0; 2],
            release_time: vec![0.0; 2],
            happiness: vec![0.0; 2],
            fate_time: vec![f64::NAN; 2],
        },
    };
    let p = &mut b.particles;
    match kind % 4 {
        0 => p.element = vec![5, 1 << 30],
        1 => p.id = vec![5, 5],
        2 => p.x = vec![0.0; 3],
        // Element 0 and 1799 are in opposite corners: no partition owns both.
        _ => p.element = vec![0, 1799],
    }
    // Encoded by hand: `wire::encode` is happy to encode what `decode` refuses.
    wire::encode(&me.envelope(Message::ParticleBatch(b))).unwrap()
}

#[test]
fn garbage_on_every_key_is_dropped_and_counted_and_the_run_is_unharmed() {
    let (dir, toml) = setup("fabric_garbage");
    // The attacker is the hub the run's session connects to.
    let hub = Hub::open();
    hub.config(&dir, "fabric.json5");
    let attacker = hub.session.clone();
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (d, s) = (done.clone(), sent.clone());
    let thread = std::thread::spawn(move || {
        let mut k = 0u64;
        let mut tokens = Vec::new();
        while !d.load(Ordering::Relaxed) {
            // Find the run from the manager's token, the nodes from theirs.
            let managers: Vec<(String, u64)> = attacker
                .liveliness()
                .get("shoal/*/manager/*")
                .timeout(Duration::from_millis(300))
                .wait()
                .unwrap()
                .into_iter()
                .filter_map(|r| {
                    let key = r.result().ok()?.key_expr().as_str().to_string();
                    let parts: Vec<&str> = key.split('/').collect();
                    Some((
                        parts[1].to_string(),
                        u64::from_str_radix(parts[3], 16).ok()?,
                    ))
                })
                .collect();
            for (cluster, run) in managers {
                if tokens.is_empty() {
                    tokens.push(
                        attacker
                            .liveliness()
                            .declare_token(format!("shoal/{cluster}/node/evil/zz"))
                            .wait()
                            .unwrap(),
                    );
                }
                let keys = shoal_common::keys::RunKeys::new(&wire::ident(&cluster).unwrap(), run);
                let ask = |key: String, k: u64| {
                    let replies = attacker
                        .get(key)
                        .payload(garbage(&cluster, run, k))
                        .timeout(Duration::from_millis(300))
                        .wait()
                        .unwrap();
                    while replies.recv().is_ok() {}
                    s.fetch_add(1, Ordering::Relaxed);
                };
                for p in 0..3u32 {
                    for from in 0..3u32 {
                        attacker
                            .put(keys.inbox(p, from), garbage(&cluster, run, k))
                            .wait()
                            .unwrap();
                        s.fetch_add(1, Ordering::Relaxed);
                        // Forged batches for every step of the run, so that each reaches a
                        // merge before the real one if the node would take it.
                        for step in 0..180 {
                            let b = bad_batch(&cluster, run, k + step as u64, step, p, from);
                            attacker.put(keys.inbox(p, from), b).wait().unwrap();
                        }
                        k += 1;
                    }
                    ask(keys.sync(p), k);
                    ask(keys.snapshot(p), k + 1);
                    ask(keys.halo(p), k + 2);
                    ask(format!("shoal/{cluster}/assign/local-{p}"), k + 3);
                    k += 4;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let r = run_with(
        &dir,
        &toml(
            "attacked.nc",
            "[cluster]\nnodes=3\nzenoh_config='fabric.json5'\n",
        ),
        RunOptions::default(),
    );
    done.store(true, Ordering::Relaxed);
    thread.join().unwrap();
    direct(&dir, &toml);
    assert!(sent.load(Ordering::Relaxed) > 20, "the attacker barely ran");
    assert!(r.dropped > 10, "only {} dropped", r.dropped);
    files_bit_identical(&dir.join("attacked.nc"), &dir.join("direct.nc"), false).unwrap();
}

#[test]
fn a_named_cluster_without_nodes_stops_with_a_clear_error() {
    let (dir, toml) = setup("fabric_nobody");
    let cfg = config(
        &dir,
        &toml(
            "x.nc",
            "[cluster]\nwait_seconds=1.5\nzenoh_config='lonely.json5'\n",
        ),
    );
    json5(&dir, "lonely.json5", "tcp/127.0.0.1:0", "");
    let cfg = cfg.unwrap();
    let name = format!("nobody-{}", std::process::id());
    let e = run(
        &cfg,
        &RunOptions {
            quiet: true,
            cluster: Some(name.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&format!("no node joined cluster `{name}` within 1.5 s"))
            && msg.contains("shoal-node --cluster"),
        "{msg}"
    );
}
