//! The job server and its jobs from another host, for real: a `shoal serve` process on a QUIC
//! fabric with mutual TLS under a cluster CA made by the roles' own `shoal-pki`, a `shoal-node`
//! process, and `shoal submit`/`jobs`/`fetch` processes holding a certificate of their own (the
//! "laptop"). The server is killed with SIGKILL during a submission and in the middle of a run;
//! every job must finish once, bit-identical to the one-machine run.

use crate::fabric::{clean, direct, setup, Nodes};
use crate::faults::{ended, job_rows};
use crate::status::Killed;
use shoal_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A cluster CA and certificates for `names` (all at 127.0.0.1), by `shoal-pki`, in `dir`.
fn pki(dir: &Path, cluster: &str, names: &[&str]) {
    let tool = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ansible/roles/fabric/files/shoal-pki"
    );
    let run = |args: &[&str]| {
        let o = std::process::Command::new("sh")
            .arg(tool)
            .args(args)
            .output()
            .expect("sh");
        assert!(
            o.status.success(),
            "shoal-pki {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let d = dir.to_str().unwrap();
    run(&["ca", d, cluster]);
    for n in names {
        run(&["host", d, n, "IP:127.0.0.1"]);
    }
}

/// A zenoh configuration like the fabric role's: QUIC only, mutual TLS under `ca` with the
/// certificate `cert` (`hosts/NAME` without its suffix), and access under `shoal/<cluster>/`
/// for `members` alone.
fn quic_config(
    file: &Path,
    ca: &Path,
    cert: &Path,
    listen: Option<u16>,
    dial: &[u16],
    cluster: &str,
    members: &[&str],
) -> PathBuf {
    let listen = listen.map_or(String::new(), |p| format!("\"quic/127.0.0.1:{p}\""));
    let dial: Vec<String> = dial
        .iter()
        .map(|p| format!("\"quic/127.0.0.1:{p}\""))
        .collect();
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    let (c, ca) = (cert.display(), ca.display());
    std::fs::write(
        file,
        format!(
            r#"{{ mode: "peer",
  listen: {{ endpoints: [{listen}] }},
  connect: {{ endpoints: [{dial}] }},
  scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }},
  transport: {{ link: {{ protocols: ["quic"],
    tls: {{ root_ca_certificate: "{ca}", verify_name_on_connect: true,
      listen_private_key: "{c}.key", listen_certificate: "{c}.crt",
      connect_private_key: "{c}.key", connect_certificate: "{c}.crt",
      enable_mtls: true, close_link_on_expiration: true }} }} }},
  access_control: {{ enabled: true, default_permission: "deny",
    rules: [{{ id: "cluster", flows: ["egress", "ingress"], permission: "allow",
      messages: ["put", "delete", "declare_subscriber", "query", "reply", "declare_queryable",
                 "liveliness_token", "liveliness_query", "declare_liveliness_subscriber"],
      key_exprs: ["shoal/{cluster}/**"] }}],
    subjects: [{{ id: "hosts", cert_common_names: [{members}], link_protocols: ["quic"] }}],
    policies: [{{ rules: ["cluster"], subjects: ["hosts"] }}] }},
}}"#,
            dial = dial.join(","),
            members = members.join(","),
        ),
    )
    .unwrap();
    file.to_path_buf()
}

/// A UDP port on loopback that nobody holds right now (QUIC listens on UDP).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

#[test]
fn jobs_sent_from_another_host_finish_once_and_identical_through_power_cuts() {
    let (dir, toml) = setup("jobs_remote");
    let direct = direct(&dir, &toml);
    let cluster = format!("remote-{}", std::process::id());
    let members = ["manager", "node1", "laptop"];
    pki(&dir.join("pki"), &cluster, &members);
    // A stranger: a certificate named like the laptop's, from another CA.
    pki(&dir.join("other"), &cluster, &["laptop"]);
    let (ca, hosts) = (dir.join("pki/ca.crt"), dir.join("pki/hosts"));
    let (node_port, server_port) = (free_udp_port(), free_udp_port());
    let node_cfg = quic_config(
        &dir.join("node.json5"),
        &ca,
        &hosts.join("node1"),
        Some(node_port),
        &[],
        &cluster,
        &members,
    );
    let manager_cfg = quic_config(
        &dir.join("manager.json5"),
        &ca,
        &hosts.join("manager"),
        None,
        &[node_port],
        &cluster,
        &members,
    );
    let laptop_cfg = quic_config(
        &dir.join("laptop.json5"),
        &ca,
        &hosts.join("laptop"),
        None,
        &[server_port],
        &cluster,
        &members,
    );
    let stranger_cfg = quic_config(
        &dir.join("stranger.json5"),
        &dir.join("other/ca.crt"),
        &dir.join("other/hosts/laptop"),
        None,
        &[server_port],
        &cluster,
        &members,
    );
    let mut nodes = Nodes(Vec::new());
    nodes.0.push(
        clean(env!("CARGO_BIN_EXE_shoal-node"))
            .args(["--cluster", &cluster, "--name", "node1", "--device", "cpu"])
            .args(["--threads", "1", "--quiet", "--zenoh-config"])
            .arg(&node_cfg)
            .stdin(Stdio::null())
            .env_remove("SHOAL_TEST_FAULT")
            .spawn()
            .unwrap(),
    );
    // The laptop's run files: its inputs (the mesh) are beside them, and travel by content.
    let extra = "[cluster]\nnodes=1\nwait_seconds=60\npatience_seconds=60\n";
    for name in ["a", "b"] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            toml(&format!("{name}.nc"), extra),
        )
        .unwrap();
    }
    let spool = dir.join("spool");
    let server = |fault: Option<&str>, log: &str| -> Child {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal"));
        c.args(["serve", "--cluster", &cluster, "--quiet"])
            .arg("--spool")
            .arg(&spool)
            .arg("--zenoh-config")
            .arg(&manager_cfg)
            .args(["--listen", &format!("quic/127.0.0.1:{server_port}")])
            .args(["--status", "127.0.0.1:0"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .env_remove("SHOAL_TEST_FAULT");
        if let Some(f) = fault {
            c.env("SHOAL_TEST_FAULT", f);
        }
        c.spawn().unwrap()
    };
    let laptop = |cfg: &Path, args: &[&str]| {
        let mut c = clean(env!("CARGO_BIN_EXE_shoal"));
        c.args(args)
            .args(["--cluster", &cluster, "--zenoh-config"])
            .arg(cfg)
            .current_dir(&dir)
            .env_remove("SHOAL_TEST_FAULT")
            .env_remove("SHOAL_SPOOL");
        c
    };

    // Cut 1, during a submission: the server dies after writing the job in incoming/, before
    // it is queued. The submitter asks again while nobody answers; the restarted server
    // discards the half-received job and queues the retry, once.
    let mut cut = Killed(server(Some("submit-cut:0"), "serve1.log"));
    let submit_a = laptop(&laptop_cfg, &["submit", "a.toml", "--wait", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        ended(&mut cut.0, Duration::from_secs(90)),
        "signal 9",
        "{}",
        std::fs::read_to_string(dir.join("serve1.log")).unwrap()
    );
    assert_eq!(
        std::fs::read_dir(spool.join("incoming")).unwrap().count(),
        1
    );

    // Cut 2, in the middle of job 1's run (just after its checkpoint at step 60).
    let mut cut = Killed(server(Some("checkpoint:60"), "serve2.log"));
    let o = submit_a.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "job 000001 queued"
    );
    let o = laptop(&laptop_cfg, &["submit", "b.toml", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "job 000002 queued"
    );
    let how = ended(&mut cut.0, Duration::from_secs(180));
    let log2 = std::fs::read_to_string(dir.join("serve2.log")).unwrap();
    assert_eq!(how, "signal 9", "{log2}");
    assert!(
        log2.contains("discarded 1 submission(s) cut short"),
        "{log2}"
    );
    assert!(spool.join("jobs/000001/a.nc.checkpoint").is_file());

    // Back after the cut: job 1 resumes from its checkpoint, then job 2 runs.
    let mut up = Killed(server(None, "serve3.log"));
    let deadline = Instant::now() + Duration::from_secs(300);
    let table = loop {
        let o = laptop(&laptop_cfg, &["jobs"]).output().unwrap();
        let table = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if table.matches(" done ").count() == 2 {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "{table}\n{}",
            std::fs::read_to_string(dir.join("serve3.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let rows = job_rows(&table);
    // Submitted by the name on the laptop's certificate; job 1 started twice, job 2 once.
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0][..5],
        ["000001", "done", "2", "180", "laptop"],
        "{table}"
    );
    assert_eq!(
        rows[1][..5],
        ["000002", "done", "1", "180", "laptop"],
        "{table}"
    );

    // The outputs come back to the laptop, equal to the one-machine run value by value.
    for (id, out) in [("000001", "a.nc"), ("000002", "b.nc")] {
        let to = dir.join(format!("fetched-{id}"));
        let o = laptop(&laptop_cfg, &["fetch", id, "--to", to.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files_bit_identical(&direct, &to.join(out), false).unwrap();
        assert!(to.join("picture.png").is_file());
        assert!(!to.join(format!("{out}.checkpoint")).exists());
    }

    // The status page shows the queue with its submitter and pictures.
    let page = printed_addr(
        &dir.join("serve3.log"),
        "status page: http://",
        Duration::from_secs(30),
    );
    // (It looks at the queue every second.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let (json, v) = loop {
        let json = http_get(page, "/status.json");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        if v["jobs"][1]["state"] == "done" || Instant::now() > deadline {
            break (json, v);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{json}");
    assert_eq!(jobs[0]["submitter"], "laptop", "{json}");
    assert_eq!(jobs[1]["picture"], "/jobs/000002.png", "{json}");
    assert!(http_get(page, "/jobs/000002.png").starts_with("\u{fffd}PNG"));

    // A bad run file is refused with the error `shoal run` gives, and nothing is queued.
    std::fs::write(
        dir.join("bad.toml"),
        toml("bad.nc", extra).replace("dt='60s'", "dt='-60s'"),
    )
    .unwrap();
    let o = laptop(&laptop_cfg, &["submit", "bad.toml"])
        .output()
        .unwrap();
    let run = clean(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "bad.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let (err, want) = (
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(!o.status.success() && !run.status.success());
    assert!(
        want.contains("key `run.dt`") && err == want,
        "{err}\n{want}"
    );
    let o = laptop(&laptop_cfg, &["jobs"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);

    // A stranger with another CA's certificate never reaches the server.
    let o = laptop(&stranger_cfg, &["jobs", "--wait", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no job server"),
        "{err}"
    );

    // SIGTERM with nothing running: the server stops saying so.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert_eq!(ended(&mut up.0, Duration::from_secs(30)), "exit 143");
    drop(nodes);
}

/// The body of `GET path` at `addr`, as text (lossy).
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut b = Vec::new();
    s.read_to_end(&mut b).unwrap();
    let at = b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8_lossy(&b[at..]).into_owned()
}
