//! The `shoal-node` command line, shared by the binary and the integration tests' copy.

use crate::agent::{default_name, serve, NodeOptions};
use crate::net::{check_config_file, Fabric};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const HELP: &str = "\
shoal-node: the shoal node agent. It joins a cluster over zenoh, steps the mesh partitions a
manager assigns it, hands particles that leave them to their neighbours, and takes the next run
when one ends. Without --cluster it says what a manager would see of this machine and which
device it would step particles on, and why.

usage: shoal-node [--cluster NAME [--name NODE] [--zenoh-config FILE] [--connect ENDPOINT]...
                  [--listen ENDPOINT]... [--threads N] [--quiet]] [--device auto|cpu|gpu]

options:
  --cluster NAME        join the cluster NAME (letters, digits, - _ .) and serve until Ctrl-C;
                        a manager runs on it with `shoal run --cluster NAME`
  --name NODE           this node's name in the cluster (default: the host name)
  --zenoh-config FILE   a zenoh JSON5 configuration (endpoints, TLS or QUIC certificates,
                        access control); the Ansible roles write one
  --connect ENDPOINT    also connect to ENDPOINT, e.g. tcp/10.0.0.1:7447 (repeatable)
  --listen ENDPOINT     listen on ENDPOINT, e.g. tcp/0.0.0.0:0 (repeatable)
  --threads N           step particles on N threads (default: one per core)
  --device D            where to step partitions: auto (default: the GPU when the run can
                        use it, its self-test passes and it is faster than the cores here),
                        cpu or gpu (an error where the GPU cannot); a run's `run.device`
                        = cpu keeps every node on its cores. Without --cluster: which
                        device this machine would use, and why
  --quiet               print errors only
  -V, --version         print the version and the git revision, and exit
  -h, --help            print this help, and exit

Without a configuration file nodes find each other by multicast scouting on the LAN.
`shoal doctor --cluster NAME` shows every node of a cluster and its health.";

fn fail(msg: String) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2);
}

/// `shoal-node` with these arguments (after the program name).
pub fn main(args: impl Iterator<Item = String>) {
    let mut device = crate::Device::Auto;
    let mut cluster: Option<String> = None;
    let mut name: Option<String> = None;
    let mut fabric = Fabric::default();
    let mut threads: Option<usize> = None;
    let mut quiet = false;
    let mut args = args;
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |what: &str| -> String {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| fail(format!("{flag} needs {what}")))
        };
        match flag.as_str() {
            "--device" => {
                device = value("auto, cpu or gpu")
                    .parse()
                    .unwrap_or_else(|e| fail(format!("--device: {e}")))
            }
            "--cluster" => cluster = Some(value("a cluster name")),
            "--name" => name = Some(value("a node name")),
            "--zenoh-config" => {
                let p = std::path::PathBuf::from(value("a file"));
                check_config_file(&p).unwrap_or_else(|e| fail(format!("--zenoh-config {e:#}")));
                fabric.config_file = Some(p);
            }
            "--connect" => fabric
                .connect
                .push(value("an endpoint such as tcp/10.0.0.1:7447")),
            "--listen" => fabric
                .listen
                .get_or_insert_with(Vec::new)
                .push(value("an endpoint such as tcp/0.0.0.0:0")),
            "--threads" => {
                threads = Some(
                    value("a number")
                        .parse()
                        .unwrap_or_else(|_| fail("--threads needs a number".into())),
                )
            }
            "--quiet" => quiet = true,
            "-h" | "--help" => {
                println!("{HELP}");
                return;
            }
            "-V" | "--version" => {
                println!("shoal-node {}", crate::VERSION);
                return;
            }
            other => fail(format!("unknown argument `{other}` (try --help)")),
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Some(cluster) = cluster else {
        println!(
            "shoal-node {} on {} ({} cores)",
            crate::VERSION,
            std::env::consts::ARCH,
            cores
        );
        match crate::choose_device(device, None) {
            Ok(choice) => println!("device: {}", choice.reason),
            Err(e) => {
                eprintln!("error: --device {device:?}: {e}");
                std::process::exit(1);
            }
        }
        println!("Join a cluster with `shoal-node --cluster NAME`.");
        return;
    };
    if !shoal_common::keys::is_chunk(&cluster) {
        fail(format!(
            "--cluster `{cluster}`: use letters, digits, `-`, `_` and `.` only"
        ));
    }
    let cluster =
        shoal_common::wire::ident(&cluster).unwrap_or_else(|e| fail(format!("--cluster: {e}")));
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .unwrap_or_else(|e| fail(format!("--threads: {e}")));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::Relaxed) {
            // A second Ctrl-C: leave at once.
            std::process::exit(130);
        }
        eprintln!("shoal-node: stopping (Ctrl-C again to leave at once)");
    }) {
        fail(format!("installing the Ctrl-C handler: {e}"));
    }
    let opts = NodeOptions {
        cluster,
        name: name.unwrap_or_else(default_name),
        fabric,
        quiet,
        pool: None,
        notify: true,
        device,
    };
    let session = opts
        .fabric
        .open()
        .unwrap_or_else(|e| fail(format!("{e:#}")));
    match serve(&opts, &session, &stop) {
        Ok(dropped) => {
            if dropped > 0 && !quiet {
                eprintln!("shoal-node: dropped {dropped} foreign or malformed messages");
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
    let _ = zenoh::Wait::wait(session.close());
}
