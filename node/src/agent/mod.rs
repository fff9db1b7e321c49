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
//!
//! The agent's jobs, a file each: [`serve`] (the main loop, the watchdog, a run's assignment),
//! [`doctor`] (the `shoal doctor` and `shoal pi` queryables), [`meshes`] (the meshes built in
//! this process), [`partition`] (the per-partition step protocol) and [`supply`] (a partition's
//! field values, and steps that fetch what quarantined particles lacked).

mod doctor;
mod meshes;
mod partition;
mod serve;
mod supply;

pub use doctor::pi_hits;
pub use meshes::offer_mesh;
pub use serve::serve;

use crate::net::Fabric;
use shoal_common::wire::{self, Capabilities, Ident};
use std::sync::Arc;
use std::time::Duration;

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
