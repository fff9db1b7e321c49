//! Faults, for real: `shoal-node` processes killed with SIGKILL mid-run, a partition that panics,
//! a manager process killed mid-run and while it writes a checkpoint, then `--resume`. Every
//! finished file must equal the one-machine run value by value, and the survivors must take
//! the next run without being restarted.

use crate::fabric::{clean, direct, setup, Nodes};
use shoal_manager::run::{RunOptions, RunReport};
use shoal_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Output as ProcessOutput, Stdio};
use std::time::{Duration, Instant};

/// A named cluster on loopback: the manager (in this process or as its own, restarted ones
/// too) and the nodes each listen on a port of their own and meet at the test's hub.
pub(crate) struct Station {
    dir: PathBuf,
    pub(crate) cluster: String,
    node_cfg: PathBuf,
    nodes: Nodes,
    // Declared last: dropped after the nodes are gone.
    hub: Hub,
}

impl Station {
    pub(crate) fn new(dir: &Path, tag: &str) -> Station {
        let hub = Hub::open();
        hub.config(dir, "manager.json5");
        let node_cfg = hub.config(dir, "node.json5");
        Station {
            dir: dir.to_path_buf(),
            cluster: format!("{tag}-{}", std::process::id()),
            node_cfg,
            nodes: Nodes(Vec::new()),
            hub,
        }
    }

    /// Starts `shoal-node --name NAME` on its CPU with `SHOAL_TEST_FAULT` set to `fault` when
    /// given.
    pub(crate) fn start(&mut self, name: &str, fault: Option<&str>) -> usize {
        self.start_on(name, fault, "cpu")
    }

    /// Starts `shoal-node --name NAME --device DEVICE`.
    pub(crate) fn start_on(&mut self, name: &str, fault: Option<&str>, device: &str) -> usize {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal-node"));
        c.args([
            "--cluster",
            &self.cluster,
            "--name",
            name,
            "--device",
            device,
        ]);
        // Node logs on stderr only when asked, for debugging.
        if std::env::var_os("SHOAL_TEST_NODE_LOGS").is_none() {
            c.arg("--quiet");
        }
        c.arg("--zenoh-config")
            .arg(&self.node_cfg)
            .stdin(Stdio::null())
            .env_remove("SHOAL_TEST_FAULT");
        if let Some(f) = fault {
            c.env("SHOAL_TEST_FAULT", f);
        }
        self.nodes.0.push(c.spawn().unwrap());
        self.nodes.0.len() - 1
    }

    fn node(&mut self, i: usize) -> &mut Child {
        &mut self.nodes.0[i]
    }

    /// A run file for `out` that waits for `nodes` nodes of this station.
    pub(crate) fn toml(
        &self,
        toml: &dyn Fn(&str, &str) -> String,
        name: &str,
        out: &str,
        nodes: usize,
    ) {
        let extra = format!(
            "[cluster]\nnodes={nodes}\nwait_seconds=60\npatience_seconds=60\nzenoh_config='manager.json5'\n"
        );
        std::fs::write(self.dir.join(name), toml(out, &extra)).unwrap();
    }

    /// The manager in this test's process.
    pub(crate) fn run(&self, name: &str) -> RunReport {
        let cfg = shoal_manager::input::config::RunConfig::from_path(&self.dir.join(name)).unwrap();
        shoal_manager::run::run(
            &cfg,
            &RunOptions {
                quiet: true,
                cluster: Some(self.cluster.clone()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// The manager as its own process, with a fault to inject and more arguments.
    pub(crate) fn manager(&self, name: &str, fault: Option<&str>, args: &[&str]) -> ProcessOutput {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal"));
        c.args(["run", name, "--cluster", &self.cluster])
            .args(args)
            .current_dir(&self.dir)
            .env_remove("SHOAL_TEST_FAULT");
        if let Some(f) = fault {
            c.env("SHOAL_TEST_FAULT", f);
        }
        c.output().unwrap()
    }
}

/// `shoal jobs`' table as rows of words, its header left out.
pub(crate) fn job_rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// Waits for a child to end and says how: exit code, or the signal that killed it.
pub(crate) fn ended(c: &mut Child, within: Duration) -> String {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return match st.signal() {
                Some(sig) => format!("signal {sig}"),
                None => format!("exit {}", st.code().unwrap_or(-1)),
            };
        }
        if Instant::now() > deadline {
            return "still running".into();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn killed(out: &ProcessOutput) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9)
}

/// Distinct steps in `1..n` drawn from a seeded generator (a 64-bit LCG), in draw order.
fn seeded_steps(seed: u64, n: u32, count: usize) -> Vec<u32> {
    let mut x = seed;
    let mut out = Vec::new();
    while out.len() < count {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let s = 1 + ((x >> 33) % (n as u64 - 1)) as u32;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

#[test]
fn a_node_killed_mid_run_changes_no_byte_and_the_survivors_take_the_next_run() {
    let (dir, toml) = setup("faults_node_kill");
    let direct = direct(&dir, &toml);
    let mut station = Station::new(&dir, "kill");
    station.start("a", None);
    station.start("b", None);
    // The setup's run is 180 steps with horizontal and vertical random walks.
    let steps = seeded_steps(0x5eed_2026, 180, 3);
    for (i, &k) in steps.iter().enumerate() {
        let victim = format!("v{i}");
        let v = station.start(&victim, Some(&format!("kill:{k}")));
        let out = format!("killed{i}.nc");
        station.toml(&toml, "kill.toml", &out, 3);
        let r = station.run("kill.toml");
        assert_eq!(ended(station.node(v), Duration::from_secs(10)), "signal 9");
        assert_eq!(r.recoveries, 1, "killed at step {k}: {:?}", r.faults);
        assert!(
            r.faults[0].contains(&format!("node {victim}")),
            "{:?}",
            r.faults
        );
        assert_eq!((r.steps, r.nodes), (180, 2));
        files_bit_identical(&direct, &dir.join(&out), false)
            .unwrap_or_else(|e| panic!("node killed at step {k}: {e:#}"));
        // The survivors take the next run as they are.
        let next = format!("after{i}.nc");
        station.toml(&toml, "next.toml", &next, 2);
        let r = station.run("next.toml");
        assert_eq!((r.recoveries, r.nodes), (0, 2));
        files_bit_identical(&direct, &dir.join(&next), false).unwrap();
    }
}

#[test]
fn a_panicking_partition_is_named_and_recovered_like_a_lost_node() {
    let (dir, toml) = setup("faults_panic");
    let direct = direct(&dir, &toml);
    let mut station = Station::new(&dir, "panic");
    station.start("a", None);
    station.start("b", None);
    let p = station.start("p", Some("panic:50"));
    station.toml(&toml, "panic.toml", "panic.nc", 3);
    let r = station.run("panic.toml");
    assert_eq!(r.recoveries, 1, "{:?}", r.faults);
    let fault = &r.faults[0];
    assert!(
        fault.contains("on node p") && fault.contains("panicked") && fault.contains("partition"),
        "{fault}"
    );
    files_bit_identical(&direct, &dir.join("panic.nc"), false).unwrap();
    // The node whose partition panicked lives on, and the others take the next run. (It would
    // panic again at step 50, so it leaves first: which two of three nodes a run takes is not
    // fixed.)
    assert_eq!(ended(station.node(p), Duration::ZERO), "still running");
    station.node(p).kill().unwrap();
    station.node(p).wait().unwrap();
    station.toml(&toml, "next.toml", "next.nc", 2);
    let r = station.run("next.toml");
    assert_eq!(r.recoveries, 0);
    files_bit_identical(&direct, &dir.join("next.nc"), false).unwrap();
}

/// SIGTERM (`systemctl stop`, a shutdown) and SIGINT (Ctrl-C) stop `shoal run` at the next step
/// boundary with a checkpoint there: the log says at which step and model time, where the
/// checkpoint is and the command that goes on; the exit code is 128 plus the signal, not a
/// failure's; and `--resume` finishes a file identical to the run never stopped. On the
/// one-machine path and with in-process nodes; the signal is sent as a seeded step begins.
#[test]
fn a_signal_stops_the_run_at_a_step_with_a_checkpoint_to_go_on_from() {
    let (dir, toml) = setup("faults_signal");
    let direct = direct(&dir, &toml);
    for (fault, code, args) in [
        ("sigterm:40", 143, &["--direct"][..]),
        ("sigint:95", 130, &["--nodes", "2"][..]),
    ] {
        let (name, out) = (format!("s{code}.toml"), format!("s{code}.nc"));
        std::fs::write(dir.join(&name), toml(&out, "")).unwrap();
        let run = |more: &[&str], fault: Option<&str>| {
            let mut c = clean(env!("CARGO_BIN_EXE_shoal"));
            c.args(["run", &name, "--quiet"])
                .args(args)
                .args(more)
                .current_dir(&dir)
                .env_remove("SHOAL_TEST_FAULT");
            if let Some(f) = fault {
                c.env("SHOAL_TEST_FAULT", f);
            }
            c.output().unwrap()
        };
        let o = run(&[], Some(fault));
        let log = String::from_utf8_lossy(&o.stderr);
        let step: u32 = fault[fault.find(':').unwrap() + 1..].parse().unwrap();
        let signal = if code == 143 { "SIGTERM" } else { "SIGINT" };
        assert_eq!(o.status.code(), Some(code), "{log}");
        // In this process the run stops after the step the signal came in; with nodes, after
        // the last step they were allowed to take by then (they may run ahead of the manager).
        let said = format!("stopped by {signal} after step ");
        let at: u32 = log
            .find(&said)
            .and_then(|i| log[i + said.len()..].split(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            (at == step + 1 || (args[0] != "--direct" && at > step + 1))
                && log.contains(&format!("after step {at} of 180 (model time "))
                && log.contains(&format!("the checkpoint is {out}.checkpoint"))
                && log.contains(&format!("`shoal run {name} --resume`")),
            "{log}"
        );
        assert!(!log.contains("error"), "{log}");
        let o = run(&["--resume"], None);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{log}");
        files_bit_identical(&direct, &dir.join(&out), false).unwrap();
    }
}

/// A full disk (a 650 kB tmpfs made for the test, for a run whose files need about 1.1 MB): the
/// run stops with an error naming the file and the room left, leaves no partial checkpoint
/// behind, keeps the last good checkpoint and the records before it, and `--resume` finishes
/// the file of a run that never lacked room once the disk has room.
#[test]
fn a_full_disk_stops_the_run_naming_the_room_left_and_it_resumes_once_freed() {
    let (dir, toml) = setup("faults_full_disk");
    let direct = direct(&dir, &toml);
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mount = |opts: &str| {
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&disk)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount("size=650k") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: a tmpfs must mount"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    std::fs::write(dir.join("full.toml"), toml("disk/full.nc", "")).unwrap();
    let run = |more: &[&str]| {
        clean(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "full.toml", "--quiet", "--direct"])
            .args(more)
            .current_dir(&dir)
            .env_remove("SHOAL_TEST_FAULT")
            .output()
            .unwrap()
    };
    let o = run(&[]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{log}");
    assert!(
        log.contains("No space left on device")
            && log.contains("disk/full.nc")
            && log.contains(" MB free of ")
            && log.contains("is kept in ")
            && log.contains("`shoal run --resume`"),
        "{log}"
    );
    assert!(!disk.join("full.nc.checkpoint.tmp").exists(), "{log}");
    assert!(disk.join("full.nc.checkpoint").is_file(), "{log}");
    // Room again (the card swapped, files moved off): the run goes on where it stopped.
    assert!(mount("remount,size=8m"));
    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    files_bit_identical(&direct, &disk.join("full.nc"), false).unwrap();
}

/// The job server through power cuts at seeded moments: a submitter killed with its submission
/// written but not queued, the server killed during a run (just after the checkpoint at step
/// 60), inside the write of the checkpoint at step 100, after a run finished but before it was
/// recorded as done, and just after it was recorded, before the next job. Each restart goes on
/// from what survived; every job's output equals its clean run bit for bit, none is lost, and
/// none runs again once done. Then SIGTERM stops the server in a job, which the next start
/// resumes.
#[test]
fn the_job_server_loses_no_job_and_runs_none_twice_through_power_cuts() {
    let (dir, toml) = setup("faults_jobs");
    let direct = direct(&dir, &toml);
    let spool = dir.join("spool");
    let shoal = |args: &[&str], fault: Option<&str>| {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal"));
        c.args(args)
            .args(["--spool", spool.to_str().unwrap()])
            .current_dir(&dir)
            .env_remove("SHOAL_TEST_FAULT");
        if let Some(f) = fault {
            c.env("SHOAL_TEST_FAULT", f);
        }
        c.output().unwrap()
    };
    for name in ["a", "cut", "b"] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            toml(&format!("{name}.nc"), ""),
        )
        .unwrap();
    }
    assert!(shoal(&["submit", "a.toml"], None).status.success());
    let o = shoal(&["submit", "cut.toml"], Some("submit-cut:0"));
    assert!(killed(&o), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(shoal(&["submit", "b.toml"], None).status.success());
    let serve = ["serve", "--nodes", "2", "--quiet", "--until-empty"];
    for fault in [
        "checkpoint:60",
        "checkpoint-write:100",
        "job-ran:1",
        "job-done:1",
    ] {
        let o = shoal(&serve, Some(fault));
        assert!(
            killed(&o),
            "{fault}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = shoal(&serve, None);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("job 000002 starts") && !log.contains("job 000001"),
        "{log}"
    );
    let table = String::from_utf8_lossy(&shoal(&["jobs"], None).stdout).into_owned();
    let rows = job_rows(&table);
    // Job 1 started once and was resumed three times; job 2 ran once; the cut one is not there.
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(&rows[0][..4], ["000001", "done", "4", "180"], "{table}");
    assert_eq!(&rows[1][..4], ["000002", "done", "1", "180"], "{table}");
    assert_eq!(
        std::fs::read_dir(spool.join("incoming")).unwrap().count(),
        0
    );
    for (id, out) in [("000001", "a.nc"), ("000002", "b.nc")] {
        let job = spool.join("jobs").join(id);
        files_bit_identical(&direct, &job.join(out), false).unwrap();
        assert!(!job.join(format!("{out}.checkpoint")).exists());
    }

    // SIGTERM in a job (sent as step 50 begins): the server stops it with a checkpoint, exits
    // saying it was stopped, and the next start resumes it.
    std::fs::write(dir.join("c.toml"), toml("c.nc", "")).unwrap();
    assert!(shoal(&["submit", "c.toml"], None).status.success());
    let o = shoal(&serve, Some("sigterm:50"));
    let log = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(143), "{log}");
    assert!(log.contains("job 000003 stopped after step"), "{log}");
    let o = shoal(&serve, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    files_bit_identical(&direct, &spool.join("jobs/000003/c.nc"), false).unwrap();
}

/// `shoal cancel`: a queued job at once (it never starts), a running one at its next step
/// boundary (the server goes on with the queue, here empty, and the job is recorded as
/// cancelled with the step it stopped after).
#[test]
fn shoal_cancel_cancels_a_queued_job_at_once_and_a_running_one_at_a_step() {
    let (dir, toml) = setup("jobs_cancel");
    let spool = dir.join("spool");
    let shoal = |args: &[&str]| {
        clean(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .args(["--spool", spool.to_str().unwrap()])
            .current_dir(&dir)
            .env_remove("SHOAL_TEST_FAULT")
            .output()
            .unwrap()
    };
    // Long enough to be cancelled while it runs: 20 000 particles, 2 880 steps.
    let long = toml("long.nc", "")
        .replace("count=3000", "count=20000")
        .replace("duration='3h'\ndt='60s'", "duration='4h'\ndt='5s'");
    std::fs::write(dir.join("long.toml"), long).unwrap();
    std::fs::write(dir.join("short.toml"), toml("short.nc", "")).unwrap();
    assert!(shoal(&["submit", "long.toml"]).status.success());
    assert!(shoal(&["submit", "short.toml"]).status.success());
    let o = shoal(&["cancel", "000002"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("job 000002 cancelled"));
    let server = clean(env!("CARGO_BIN_EXE_shoal"))
        .args(["serve", "--direct", "--quiet", "--until-empty"])
        .args(["--spool", spool.to_str().unwrap()])
        .current_dir(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = spool.join("jobs/000001/long.nc.checkpoint");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !checkpoint.exists() {
        assert!(Instant::now() < deadline, "job 1 never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = shoal(&["cancel", "000001"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("stops at its next step boundary"),
        "{o:?}"
    );
    let o = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    let table = String::from_utf8_lossy(&shoal(&["jobs"]).stdout).into_owned();
    let rows = job_rows(&table);
    assert_eq!(&rows[0][..2], ["000001", "cancelled"], "{table}");
    assert!(
        table.contains("cancelled after step ") && table.contains(" of 2880"),
        "{table}"
    );
    assert_eq!(&rows[1][..3], ["000002", "cancelled", "0"], "{table}");
    assert!(!spool.join("jobs/000002/short.nc").exists());
}

/// A node that cannot take its share (here `--device gpu` for a run with mortality, which the GPU
/// path refuses) says so for each partition it was
/// given before stepping: the manager goes on without it at once, with the node's reason, not
/// after its patience (60 s here) with a silent node's, and the output equals the one-machine
/// run's.
#[test]
fn a_node_that_cannot_take_its_share_says_why_at_once() {
    let (dir, toml) = setup("faults_refuses");
    let mortal = |out: &str, extra: &str| {
        toml(out, extra).replace("[behaviour]\n", "[behaviour]\nmortality_per_day=0.5\n")
    };
    let direct = direct(&dir, &mortal);
    let mut station = Station::new(&dir, "refuses");
    station.start("cpu", None);
    station.start_on("gpu", None, "gpu");
    station.toml(&mortal, "m.toml", "m.nc", 2);
    let r = station.run("m.toml");
    assert_eq!(r.recoveries, 1, "{:?}", r.faults);
    let why = &r.faults[0];
    assert!(
        why.contains("on node gpu failed: device Gpu: ") && why.contains("mortality"),
        "{why}"
    );
    files_bit_identical(&direct, &dir.join("m.nc"), false).unwrap();
}

#[test]
fn a_killed_manager_resumes_from_its_checkpoint_with_the_nodes_there_now() {
    let (dir, toml) = setup("faults_manager");
    let direct = direct(&dir, &toml);
    let mut station = Station::new(&dir, "resume");
    station.start("a", None);
    station.start("b", None);
    let c = station.start("c", None);
    let checkpoint = dir.join("m.nc.checkpoint");

    // Killed just after the checkpoint at step 60; resumed with the same three nodes.
    station.toml(&toml, "m.toml", "m.nc", 3);
    let out = station.manager("m.toml", Some("checkpoint:60"), &[]);
    assert!(killed(&out), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(checkpoint.exists());
    let out = station.manager("m.toml", None, &["--resume"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed:\n{log}");
    assert!(log.contains("after step 60 of 180"), "{log}");
    files_bit_identical(&direct, &dir.join("m.nc"), false).unwrap();
    assert!(!checkpoint.exists(), "a finished run keeps its checkpoint");

    // Killed inside the write of the checkpoint at step 100 (complete in its temporary file,
    // not yet in place): the resume goes on from step 80's, with one node fewer.
    let out = station.manager("m.toml", Some("checkpoint-write:100"), &[]);
    assert!(killed(&out), "{}", String::from_utf8_lossy(&out.stderr));
    station.node(c).kill().unwrap();
    station.toml(&toml, "m2.toml", "m.nc", 2);
    let out = station.manager("m2.toml", None, &["--resume"]);
    let log = String::from_utf8_lossy(&out.stderr);
    // The configuration differs in its node count, so its hash does: a refusal names it.
    assert!(!out.status.success());
    assert!(log.contains("another configuration or input"), "{log}");
    let out = station.manager("m.toml", None, &["--resume", "--nodes", "2"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "resume failed:\n{log}");
    assert!(log.contains("after step 80 of 180"), "{log}");
    assert!(log.contains("2 nodes"), "{log}");
    files_bit_identical(&direct, &dir.join("m.nc"), false).unwrap();

    // The nodes abandoned the dead managers' runs on their own and take a new one.
    station.toml(&toml, "fresh.toml", "fresh.nc", 2);
    let r = station.run("fresh.toml");
    assert_eq!(r.recoveries, 0);
    files_bit_identical(&direct, &dir.join("fresh.nc"), false).unwrap();
}

/// A node of another protocol version: its token stands in the census as a stranger, the
/// manager tells it which version it speaks and runs without it, and the doctor still lists it.
/// A real node, sent an envelope of another version, refuses it naming both versions. (The old
/// node is this test's own zenoh session with the token and assignment queryable an old
/// `shoal-node` would declare: one build cannot hold two wire versions.)
#[test]
fn a_node_of_another_protocol_version_is_told_which_one_the_manager_speaks() {
    use shoal_common::{keys, wire};
    use std::sync::{Arc, Mutex};
    use zenoh::Wait;
    let (dir, toml) = setup("faults_version");
    let mut station = Station::new(&dir, "version");
    station.start("n0", None);
    let cluster = wire::ident(&station.cluster).unwrap();
    let old = wire::VERSION - 1;
    let header = |version: u16| wire::Header {
        magic: wire::MAGIC,
        version,
        cluster: cluster.clone(),
        run: 0,
    };
    let hello = wire::Message::Hello(wire::Hello {
        node: wire::ident("old").unwrap(),
        capabilities: shoal_node::agent::capabilities(),
    });
    let old_hello = wire::encode(&wire::Envelope {
        header: header(old),
        message: hello.clone(),
    })
    .unwrap();
    let session = &station.hub.session;
    let _token = session
        .liveliness()
        .declare_token(keys::node_token(&cluster, "old", &old_hello))
        .wait()
        .unwrap();
    let heard = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let h = heard.clone();
    let refusal = format!(
        "refused: protocol version {}, this build speaks {old}",
        wire::VERSION
    );
    let r = refusal.clone();
    let _assign = session
        .declare_queryable(keys::assign(&cluster, "old"))
        .callback(move |q| {
            h.lock()
                .unwrap()
                .extend(q.payload().map(|p| p.to_bytes().to_vec()));
            let _ = q.reply_err(r.clone()).wait();
        })
        .wait()
        .unwrap();

    // The run takes the one node of this version and tells the other which version it speaks.
    station.toml(&toml, "v.toml", "v.nc", 1);
    let out = station.manager("v.toml", None, &[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let told = format!(
        "fabric: node old speaks protocol version {old} and this manager {}: it takes no part \
         until both run the same release of shoal (told it so; it answered: {refusal})",
        wire::VERSION
    );
    assert!(log.contains(&told), "{log}");
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "told once per wait for nodes");
    let env = wire::decode_any_run(&heard[0], &cluster).unwrap();
    assert_eq!(env.header.version, wire::VERSION);

    // A real node refuses a manager of another version and names both.
    let newer = wire::encode(&wire::Envelope {
        header: header(wire::VERSION + 1),
        message: hello,
    })
    .unwrap();
    let replies = session
        .get(keys::assign(&cluster, "n0"))
        .payload(newer)
        .timeout(Duration::from_secs(10))
        .wait()
        .unwrap();
    let reply = replies
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let why =
        String::from_utf8_lossy(&reply.result().unwrap_err().payload().to_bytes()).into_owned();
    assert_eq!(
        why,
        format!(
            "the manager of cluster `{}` speaks protocol version {} and this node {}: refusing \
             its runs until both run the same release of shoal",
            station.cluster,
            wire::VERSION + 1,
            wire::VERSION
        )
    );

    // The doctor sees both: the node it can read, and the one it cannot, with the reason.
    let out = clean(env!("CARGO_BIN_EXE_shoal"))
        .args(["doctor", "--cluster", &station.cluster, "--connect"])
        .arg(&station.hub.endpoint)
        .args(["--nodes", "1", "--wait", "30"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.trim_start().starts_with("n0 ")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "old: cannot be read: protocol version {old}, this build speaks {}",
            wire::VERSION
        )),
        "{text}"
    );
}
