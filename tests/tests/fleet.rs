//! The fleet's checks for real: `shoal doctor` and `shoal pi` against `shoal-node` processes on
//! loopback, and the node's systemd notifications through a real datagram socket.

use super::fabric::{clean, json5, Nodes};
use shoal_common::rng::quarter_circle_hits;
use shoal_manager::station::fleet::{self, FleetOptions};
use shoal_tests::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

/// A Pi 4's thermal sysfs, running hot: `cpu-thermal` at 85 °C, passive trip at 80 °C.
fn hot_pi_sysfs(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("sys");
    let zone = root.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    for (f, v) in [
        ("type", "cpu-thermal"),
        ("temp", "85012"),
        ("trip_point_0_type", "passive"),
        ("trip_point_0_temp", "80000"),
    ] {
        std::fs::write(zone.join(f), format!("{v}\n")).unwrap();
    }
    root
}

#[test]
fn doctor_and_pi_over_node_processes() {
    let dir = scratch("fleet_processes");
    let meeting = Hub::open();
    let hub = meeting.endpoint.clone();
    let first = meeting.config(&dir, "n0.json5");
    let second = meeting.config(&dir, "n1.json5");
    let cluster = format!("fleet-{}", std::process::id());
    let mut nodes = Nodes(Vec::new());
    for (k, cfg) in [first, second].iter().enumerate() {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal-node"));
        c.args(["--cluster", &cluster, "--name", &format!("n{k}"), "--quiet"])
            .args(["--threads", "1", "--device", "cpu", "--zenoh-config"])
            .arg(cfg)
            .stdin(Stdio::null());
        if k == 1 {
            c.env("SHOAL_SYSFS", hot_pi_sysfs(&dir));
        }
        nodes.0.push(c.spawn().unwrap());
    }
    let fleet_args = [
        "--cluster",
        &cluster,
        "--connect",
        &hub,
        "--nodes",
        "2",
        "--wait",
        "60",
    ];
    let out = clean(env!("CARGO_BIN_EXE_shoal"))
        .arg("doctor")
        .args(fleet_args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    // The hot node is flagged, so the doctor exits 1; both nodes are listed with their facts.
    assert_eq!(out.status.code(), Some(1), "{text}\n{err}");
    assert!(text.contains("2 nodes"), "{text}");
    let arch = std::env::consts::ARCH;
    for n in ["n0", "n1"] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no row for {n}:\n{text}"));
        assert!(
            row.contains(arch) && row.contains(env!("CARGO_PKG_VERSION")),
            "{row}"
        );
        assert!(row.contains(" ms"), "no clock offset: {row}");
    }
    assert!(
        text.contains("n1: hot: 85.0 °C in cpu-thermal (throttling starts at 80.0 °C)"),
        "{text}"
    );
    // A named cluster on plain TCP: each node's link is shown without a certificate, and
    // flagged as a warning (its configuration asks for none), not as a problem.
    for n in ["n0", "n1"] {
        assert!(
            text.contains(&format!(
                "warning: {n}: not authenticated: its tcp link to this manager has no certificate"
            )),
            "{text}"
        );
    }
    assert!(text.contains("tcp, no cert"), "{text}");
    assert!(text.contains("1 problem(s)"), "{text}");
    assert!(err.contains("the doctor found 1 problem"), "{err}");

    // pi over both processes equals the samples counted here, one by one.
    let (samples, seed) = (3_000_001u64, 42u64);
    let out = clean(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "pi",
            "--samples",
            &samples.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(fleet_args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside = quarter_circle_hits(seed, 0, samples);
    let expect = format!("pi ≈ {:.10}", 4.0 * inside as f64 / samples as f64);
    assert!(text.contains(&expect), "want {expect}:\n{text}");
    // Equal cores, so equal halves; each node names its own share.
    let row = |n: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(&format!("{n} ")))
            .unwrap_or_else(|| panic!("no row for {n}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let second = quarter_circle_hits(seed, 1_500_000, 1_500_001);
    assert!(row("n0").contains("samples 0..1500000 inside"), "{text}");
    assert!(
        row("n1").contains(&format!("samples 1500000..3000001 inside {second} ")),
        "{text}"
    );

    // The embedded default, three in-process nodes: the same estimate.
    let report = fleet::pi(
        &FleetOptions {
            nodes: Some(3),
            wait: 30.0,
            ..Default::default()
        },
        samples,
        seed,
    )
    .unwrap();
    assert_eq!(report.shares.len(), 3);
    assert_eq!(report.inside, inside);
    assert!((report.estimate() - std::f64::consts::PI).abs() < 5.0 * report.sigma());
}

#[test]
fn the_embedded_doctor_sees_its_own_nodes() {
    let report = fleet::doctor(&FleetOptions {
        nodes: Some(2),
        wait: 30.0,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.nodes.len(), 2);
    for n in &report.nodes {
        let h = n.health.as_ref().unwrap();
        assert_eq!(h.capabilities.arch.as_str(), std::env::consts::ARCH);
        assert!(h.capabilities.cores >= 1 && h.capabilities.memory_mib > 0);
        // Same process, same clock: the offset is within its own uncertainty, plus a little.
        let (off, err) = n.clock_offset.unwrap();
        assert!(off.abs() <= err + 0.005, "offset {off} ± {err}");
        assert!(!matches!(h.gpu, shoal_common::wire::GpuHealth::NotAsked));
    }
    // No thermal zones in a VM is not a problem; a GPU missing is not one either.
    let problems: Vec<_> = report
        .problems
        .iter()
        .filter(|(_, p)| !p.starts_with("hot") && !p.starts_with("throttled"))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
}

/// A `shoal-node` started by systemd with `Type=notify` and `WatchdogSec=`: READY once it is on
/// the fabric, WATCHDOG while it is healthy, STOPPING when it leaves.
#[test]
fn shoal_node_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = scratch("fleet_notify");
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let cfg = json5(&dir, "n.json5", "tcp/127.0.0.1:0", "");
    let mut nodes = Nodes(Vec::new());
    nodes.0.push(
        clean(env!("CARGO_BIN_EXE_shoal-node"))
            .args([
                "--cluster",
                "notify-test",
                "--name",
                "n0",
                "--quiet",
                "--device",
                "cpu",
            ])
            .arg("--zenoh-config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains("STATUS=in cluster notify-test as n0"),
        "{ready}"
    );
    let t = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(), "WATCHDOG=1");
    }
    // Three pings at half the 0.4 s period come within about 0.6 s; allow a slow machine.
    assert!(t.elapsed() < Duration::from_secs(30));
    let pid = nodes.0[0].id().to_string();
    assert!(Process::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut last = next();
    while last == "WATCHDOG=1" {
        last = next();
    }
    assert_eq!(last, "STOPPING=1");
    let st = nodes.0[0].wait().unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn both_binaries_answer_version_alike_and_the_node_explains_its_options() {
    let run = |exe: &str, arg: &str| {
        let out = std::process::Command::new(exe)
            .arg(arg)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{exe} {arg}: {out:?}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("error"),
            "{exe} {arg} printed an error: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let node = run(env!("CARGO_BIN_EXE_shoal-node"), "--version");
    let manager = run(env!("CARGO_BIN_EXE_shoal"), "--version");
    let version = node.trim().strip_prefix("shoal-node ").unwrap();
    assert_eq!(manager.trim().strip_prefix("shoal ").unwrap(), version);
    assert!(
        version.starts_with(env!("CARGO_PKG_VERSION")) && version.contains("(git "),
        "{version}"
    );
    let help = run(env!("CARGO_BIN_EXE_shoal-node"), "--help");
    for option in [
        "--cluster",
        "--name",
        "--zenoh-config",
        "--connect",
        "--listen",
        "--threads",
        "--device",
        "--quiet",
        "--version",
    ] {
        // An option line: it starts with the option (or its short form) and explains it.
        assert!(
            help.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with('-') && l.contains(&format!("{option} ")) && l.len() > 30
            }),
            "{option} is not explained:\n{help}"
        );
    }
    // Without a desktop session the GPU probe says nothing that reads like a failure.
    run(env!("CARGO_BIN_EXE_shoal-node"), "--device=auto");
}
