//! shoal-node: the per-partition work. A [`Partition`] owns its particles and steps them with
//! the shared kernels, in rayon chunks, re-sorting by host element every few steps so that
//! neighbouring particles read neighbouring field memory. It never reads NetCDF: fields arrive
//! as [`shoal_common::FieldLevel`]s from whoever drives it (the manager, in-process, for now).

use rayon::prelude::*;
use shoal_common::kernel::{advance, release_due, StepContext, Tally};
use shoal_common::{status, Mesh, Particles, Window};
use std::sync::Arc;

/// The version `shoal --version` and `shoal-node --version` print: the package's, and the git
/// revision the binary was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("SHOAL_GIT_REV"),
    ")"
);

/// Keeps the GPU probe quiet on a machine without a desktop session (a Pi, a server, CI):
/// Mesa's implicit Vulkan layer `VK_LAYER_MESA_device_select` looks for a Wayland display to
/// pick a default GPU, and libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set"
/// when there is none, once per driver. shoal chooses its adapter itself, so with no
/// `XDG_RUNTIME_DIR` the layer is switched off (`NODEVICE_SELECT=1`, its documented switch).
/// Call it first thing in `main`, before any thread starts: it sets an environment variable.
pub fn calm_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

pub mod agent;
pub mod cli;
pub mod fields;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod health;
pub mod net;
pub mod systemd;
pub mod worker;

pub use worker::{Owner, Quarantine, Worker};

/// Advances every particle of `set` through `step` in rayon chunks, in the current pool.
pub fn advance_particles(set: &mut Particles, cx: &StepContext) -> Tally {
    let n = set.len();
    set.chunks_mut(chunk_size(n))
        .into_par_iter()
        .map(|chunk| advance(cx, chunk))
        .reduce(Tally::empty, Tally::merge)
}

/// Particles per rayon task: large enough to amortise scheduling, small enough that every
/// thread gets several tasks. Depends only on the particle count, never on the thread count.
pub fn chunk_size(n: usize) -> usize {
    (n / 64).clamp(64, 4096)
}

pub use shoal_common::snapshot::Snapshot;

pub struct Partition {
    pub particles: Particles,
    /// Re-sort by host element every this many steps (0: never).
    pub sort_every: u32,
    steps_since_sort: u32,
    /// Sort keys, reused as the permutation's scratch space.
    keys: Vec<u64>,
    order: Vec<u32>,
    /// Where it steps and releases: a pool of its own, or the current one (`None`).
    pub pool: Option<Arc<rayon::ThreadPool>>,
    /// Each particle's status at the last step's start, to find the ones the step quarantined.
    pub(crate) before: Vec<u8>,
}

impl Partition {
    pub fn new(particles: Particles) -> Self {
        Partition {
            particles,
            sort_every: 8,
            steps_since_sort: u32::MAX,
            keys: Vec::new(),
            order: Vec::new(),
            pool: None,
            before: Vec::new(),
        }
    }

    /// Advances every particle through `cx.step` ([`Worker::step`] for a partition), in its
    /// pool or the current one. The result is independent of the number of threads and of the
    /// particles' order.
    pub fn advance(&mut self, cx: &StepContext) -> Tally {
        self.prepare();
        self.before.clone_from(&self.particles.status);
        let set = &mut self.particles;
        match &self.pool {
            Some(pool) => pool.install(|| advance_particles(set, cx)),
            None => advance_particles(set, cx),
        }
    }

    /// Re-sorts by host element when due (before a step).
    fn prepare(&mut self) {
        if self.sort_every > 0 && self.steps_since_sort >= self.sort_every {
            self.sort_by_element();
        }
        self.steps_since_sort = self.steps_since_sort.saturating_add(1);
    }

    /// Heap bytes held for the particles: their state plus the sort buffers.
    pub fn heap_bytes(&self) -> usize {
        let p = &self.particles;
        p.id.capacity() * 4
            + (p.x.capacity() + p.y.capacity() + p.z.capacity() + p.release_time.capacity()) * 8
            + p.element.capacity() * 4
            + p.status.capacity()
            + p.happiness.capacity() * 4
            + p.fate_time.capacity() * 8
            + self.keys.capacity() * 8
            + self.order.capacity() * 4
            + self.before.capacity()
    }

    /// Releases the particles due at `t` without moving anything (`forward`: the run's
    /// direction).
    pub fn release(&mut self, mesh: &Mesh, window: Window, t: f64, forward: bool) {
        let n = self.particles.len();
        let set = &mut self.particles;
        let mut work = || {
            set.chunks_mut(chunk_size(n))
                .into_par_iter()
                .for_each(|c| release_due(mesh, window, t, forward, c))
        };
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }

    /// Orders particles by (host element, id); inactive ones go last.
    pub fn sort_by_element(&mut self) {
        let p = &self.particles;
        self.keys.clear();
        self.keys.extend((0..p.len()).map(|i| {
            let e = if status::in_play(p.status[i]) || p.status[i] == status::PENDING {
                p.element[i]
            } else {
                u32::MAX
            };
            ((e as u64) << 32) | i as u64
        }));
        self.keys.par_sort_unstable();
        self.order.clear();
        self.order.extend(self.keys.iter().map(|k| *k as u32));
        self.particles.permute(&self.order, &mut self.keys);
        self.steps_since_sort = 0;
    }
}

/// The output view of `p` at time `t` (run clock), with the fields `sampled` names, sampled in
/// chunks side by side ([`Snapshot::of`] for each range, joined in order).
pub fn snapshot_of(
    p: &Particles,
    mesh: &Mesh,
    window: Window,
    t: f64,
    sampled: shoal_common::snapshot::Sampled,
) -> Snapshot {
    let chunk = chunk_size(p.len());
    let ranges: Vec<_> = (0..p.len())
        .step_by(chunk)
        .map(|a| a..(a + chunk).min(p.len()))
        .collect();
    ranges
        .into_par_iter()
        .map(|r| Snapshot::of(p, r, mesh, window, t, sampled))
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Snapshot::default(), |mut all, s| {
            all.append(s);
            all
        })
}

pub use shoal_common::wire::Device;

/// The device chosen, and why, in words for the log and `shoal doctor`.
pub struct Choice {
    #[cfg(feature = "gpu")]
    pub gpu: Option<std::sync::Arc<gpu::GpuContext>>,
    pub reason: String,
}

impl Choice {
    /// Not stepping here: a named cluster's nodes choose for themselves.
    pub fn elsewhere(why: &str) -> Choice {
        Choice {
            #[cfg(feature = "gpu")]
            gpu: None,
            reason: why.to_string(),
        }
    }

    fn cpu(reason: String) -> Choice {
        Choice {
            #[cfg(feature = "gpu")]
            gpu: None,
            reason: format!("cpu: {reason}"),
        }
    }

    /// The device, in words for the manager and the logs: `cpu`, or `gpu: <adapter>`.
    pub fn device(&self) -> String {
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &self.gpu {
            return format!("gpu: {}", ctx.adapter.name);
        }
        "cpu".to_string()
    }

    /// The worker that steps `part`'s particles (released already) on the device chosen: the
    /// partition itself on the CPU, or its particles moved to the GPU. `owner`: on a node, which
    /// partition owns each element and which one this is (the GPU then finds the particles
    /// leaving); `None` on the one-machine path.
    pub fn worker(
        &self,
        part: Partition,
        mesh: &Mesh,
        params: &shoal_common::kernel::StepParams,
        owner: Option<Owner>,
    ) -> anyhow::Result<Box<dyn Worker>> {
        #[cfg(feature = "gpu")]
        if let Some(ctx) = &self.gpu {
            let needs = gpu::Needs::of(params);
            let (ctx, particles) = (ctx.clone(), part.particles);
            let gpu = match owner {
                Some(o) => gpu::GpuPartition::on_node(ctx, mesh, particles, needs, o.part_of, o.me),
                None => gpu::GpuPartition::new(ctx, mesh, particles, needs),
            }
            .map_err(|e| anyhow::anyhow!("GPU setup: {e}"))?;
            return Ok(Box::new(worker::GpuWorker::new(gpu)));
        }
        let _ = (mesh, params, owner);
        Ok(Box::new(part))
    }
}

#[cfg(feature = "gpu")]
mod probe {
    use super::gpu::{selftest, GpuContext};
    use std::sync::{Arc, OnceLock};

    /// Adapter and self-test, once per process.
    pub fn adapter() -> &'static Result<(Arc<GpuContext>, selftest::SelfTest), String> {
        static P: OnceLock<Result<(Arc<GpuContext>, selftest::SelfTest), String>> = OnceLock::new();
        P.get_or_init(|| {
            let ctx = GpuContext::new().map_err(|e| e.to_string())?;
            let st = selftest::self_test(&ctx).map_err(|e| e.to_string())?;
            Ok((ctx, st))
        })
    }

    /// CPU and GPU particle-steps/s on the reference problem, once per process.
    pub fn speeds(ctx: &Arc<GpuContext>) -> &'static Result<(f64, f64), String> {
        static S: OnceLock<Result<(f64, f64), String>> = OnceLock::new();
        S.get_or_init(|| selftest::calibrate(ctx, 50_000, 3).map_err(|e| e.to_string()))
    }
}

/// The GPU adapter's name and its self-test, once per process: what `shoal doctor` reports.
#[cfg(feature = "gpu")]
pub fn gpu_probe() -> Result<(String, gpu::selftest::SelfTest), String> {
    probe::adapter()
        .as_ref()
        .map(|(ctx, st)| (ctx.describe(), st.clone()))
        .map_err(|e| e.clone())
}

/// Chooses where to step particles. `unsupported` says why this run cannot use the GPU path, if
/// it cannot. Asking for the GPU explicitly is an error when it is missing, unsuitable or fails
/// its self-test; `auto` falls back to the CPU and says why.
pub fn choose_device(device: Device, unsupported: Option<String>) -> Result<Choice, String> {
    if device == Device::Cpu {
        return Ok(Choice::cpu("as configured".into()));
    }
    #[cfg(not(feature = "gpu"))]
    {
        let _ = unsupported;
        return match device {
            Device::Gpu => Err("this build has no GPU support (the `gpu` feature is off)".into()),
            _ => Ok(Choice::cpu("this build has no GPU support".into())),
        };
    }
    #[cfg(feature = "gpu")]
    {
        if let Some(why) = unsupported {
            return match device {
                Device::Gpu => Err(format!("device = \"gpu\" but {why}")),
                _ => Ok(Choice::cpu(why)),
            };
        }
        let (ctx, st) = match probe::adapter() {
            Ok(p) => p,
            Err(e) if device == Device::Gpu => return Err(e.clone()),
            Err(e) => return Ok(Choice::cpu(e.clone())),
        };
        let test = format!(
            "self-test on {} passed ({} particles, {} steps, CPU-GPU distance at most {:.1} mm)",
            ctx.describe(),
            st.particles,
            st.steps,
            st.max_distance_m * 1000.0
        );
        if !st.passed() {
            let why = format!("GPU self-test on {} failed: {st:?}", ctx.describe());
            return if device == Device::Gpu {
                Err(why)
            } else {
                Ok(Choice::cpu(why))
            };
        }
        if device == Device::Gpu {
            return Ok(Choice {
                gpu: Some(ctx.clone()),
                reason: format!("gpu: as configured; {test}"),
            });
        }
        match probe::speeds(ctx) {
            Ok((cpu, gpu)) if gpu > cpu => Ok(Choice {
                gpu: Some(ctx.clone()),
                reason: format!(
                    "gpu: {test}; {:.1}x the CPU's speed ({:.2} vs {:.2} M particle-steps/s)",
                    gpu / cpu,
                    gpu / 1e6,
                    cpu / 1e6
                ),
            }),
            Ok((cpu, gpu)) => Ok(Choice::cpu(format!(
                "{test}, but the GPU is slower here ({:.2} vs {:.2} M particle-steps/s)",
                gpu / 1e6,
                cpu / 1e6
            ))),
            Err(e) => Ok(Choice::cpu(format!("GPU calibration failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorting_reorders_without_losing_or_changing_particles() {
        let mut p = Particles::default();
        for i in 0..1000u32 {
            let e = (i * 7919) % 97;
            let s = if i % 13 == 0 {
                status::EXITED
            } else {
                status::ACTIVE
            };
            p.push(i, i as f64, -(i as f64), -0.01 * i as f64, e, s, 0.0);
        }
        let before = p.clone();
        let mut part = Partition::new(p);
        part.sort_by_element();
        let q = &part.particles;
        // Active particles come first, in element order (the rest in any order), and every
        // particle is intact.
        let keys: Vec<(bool, u32)> = (0..q.len())
            .map(|i| {
                if q.status[i] == status::ACTIVE {
                    (false, q.element[i])
                } else {
                    (true, 0)
                }
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        for i in 0..q.len() {
            let j = q.id[i] as usize;
            assert_eq!(
                (q.x[i], q.y[i], q.z[i], q.element[i], q.status[i]),
                (
                    before.x[j],
                    before.y[j],
                    before.z[j],
                    before.element[j],
                    before.status[j]
                )
            );
        }
    }

    #[test]
    fn chunks_depend_only_on_the_particle_count() {
        assert_eq!(chunk_size(10), 64);
        assert_eq!(chunk_size(64 * 1000), 1000);
        assert_eq!(chunk_size(10_000_000), 4096);
        assert_eq!("gpu".parse::<Device>(), Ok(Device::Gpu));
        assert!("tpu".parse::<Device>().is_err());
    }
}
