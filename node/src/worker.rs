//! Where a partition's particles are stepped: one interface ([`Worker`]) for the CPU partition
//! ([`Partition`], rayon) and the GPU one ([`GpuWorker`], wgpu), used alike by the node agent
//! and by the manager's one-machine path (`--direct`).
//!
//! A step may set particles aside for want of field values (a node holds only its share of the
//! fields): each keeps its state at the step's start, is handed out by
//! [`Worker::take_quarantined`], stepped again by the caller once the values are fetched, and
//! put back by [`Worker::put_back`]. Each particle's step depends on nothing but itself, so the
//! bits are those of one step with every value at hand.

use crate::Partition;
use anyhow::{anyhow, Result};
use shoal_common::kernel::{tally_of, StepContext, Tally};
use shoal_common::{status, Mesh, Particles};
use std::collections::BTreeMap;

/// Which partition owns each element, and which one this is.
#[derive(Clone, Copy)]
pub struct Owner<'a> {
    pub part_of: &'a [u32],
    pub me: u32,
}

impl Owner<'_> {
    /// Whether particle `k` of `p` stays here: in an element this partition owns, or outside
    /// the mesh (those keep their last element and stay with the partition that holds them).
    pub fn keeps(&self, p: &Particles, k: usize) -> bool {
        p.status[k] == status::OUTSIDE_MESH || self.owner_of(p, k) == self.me
    }

    fn owner_of(&self, p: &Particles, k: usize) -> u32 {
        self.part_of[p.element[k] as usize]
    }

    /// Particles `which` of `p`, by the partition that owns their element.
    fn by_owner(
        &self,
        p: &Particles,
        which: impl Iterator<Item = usize>,
    ) -> BTreeMap<u32, Particles> {
        let mut out: BTreeMap<u32, Particles> = BTreeMap::new();
        for k in which {
            out.entry(self.owner_of(p, k)).or_default().push_from(p, k);
        }
        out
    }
}

/// Particles a step set aside for want of field values.
pub struct Quarantine {
    /// Each as it was at the step's start, its status too (a particle quarantined as it was
    /// released has status [`status::BAD_FIELD`] and is not stepped again).
    pub particles: Particles,
    /// Those to step again: the ones in play at the step's start.
    pub todo: Vec<usize>,
    /// Where each came from in the worker (an index or a device slot).
    at: Vec<u32>,
}

/// A partition's particles and the device that steps them.
pub trait Worker {
    /// Steps every particle through `cx.step`. Particles that lack a field value keep their
    /// state at the step's start with status [`status::BAD_FIELD`].
    fn step(&mut self, cx: &StepContext) -> Result<Tally>;

    /// The particles the last step quarantined, taken out to be stepped again; `None` when
    /// there are none.
    fn take_quarantined(&mut self, mesh: &Mesh) -> Result<Option<Quarantine>>;

    /// Puts back the particles of `q` once stepped again by the caller (`fetched`: whether
    /// field values were fetched for them), and returns the step's tally (`tally`, the step's
    /// own) with them counted as they are now. Those that left `owner`'s elements go out with
    /// the next [`Worker::emigrants`].
    fn put_back(
        &mut self,
        cx: &StepContext,
        q: Quarantine,
        tally: Tally,
        fetched: bool,
        owner: Owner,
    ) -> Result<Tally>;

    /// Takes out the particles in elements another partition owns, by destination.
    fn emigrants(&mut self, mesh: &Mesh, owner: Owner) -> Result<BTreeMap<u32, Particles>>;

    /// Adds particles that came from other partitions.
    fn take_in(&mut self, mesh: &Mesh, p: &Particles) -> Result<()>;

    /// A copy of the particles held.
    fn state(&mut self, mesh: &Mesh) -> Result<Particles>;

    /// Whether a separate set of particles (those that just came in) may be stepped on its own
    /// and taken in after: true on the CPU; a GPU partition steps its particles as one set.
    fn steps_sets_apart(&self) -> bool;

    /// What the worker did besides stepping, for the partition's last log line (empty or
    /// starting with `; `).
    fn report(&self, steps: u32) -> String;
}

impl Worker for Partition {
    fn step(&mut self, cx: &StepContext) -> Result<Tally> {
        Ok(self.advance(cx))
    }

    fn take_quarantined(&mut self, _mesh: &Mesh) -> Result<Option<Quarantine>> {
        let (set, before) = (&self.particles, &self.before);
        let at: Vec<u32> = (0..set.len())
            .filter(|&i| status::in_play(before[i]) && set.status[i] == status::BAD_FIELD)
            .map(|i| i as u32)
            .collect();
        if at.is_empty() {
            return Ok(None);
        }
        let mut particles = Particles::with_capacity(at.len());
        for &i in &at {
            particles.push_from(set, i as usize);
            let last = particles.len() - 1;
            particles.status[last] = before[i as usize];
        }
        let todo = (0..at.len()).collect();
        Ok(Some(Quarantine {
            particles,
            todo,
            at,
        }))
    }

    fn put_back(
        &mut self,
        cx: &StepContext,
        q: Quarantine,
        _tally: Tally,
        _fetched: bool,
        _owner: Owner,
    ) -> Result<Tally> {
        let set = &mut self.particles;
        for (k, &i) in q.at.iter().enumerate() {
            set.set_from(i as usize, &q.particles, k);
        }
        Ok(tally_of(cx.params, &set.id, &set.status, &set.happiness))
    }

    fn emigrants(&mut self, _mesh: &Mesh, owner: Owner) -> Result<BTreeMap<u32, Particles>> {
        let p = &self.particles;
        let leaving: Vec<usize> = (0..p.len()).filter(|&i| !owner.keeps(p, i)).collect();
        let out = owner.by_owner(p, leaving.iter().copied());
        self.particles.remove_sorted(&leaving);
        Ok(out)
    }

    fn take_in(&mut self, _mesh: &Mesh, p: &Particles) -> Result<()> {
        self.particles.extend(p);
        Ok(())
    }

    fn state(&mut self, _mesh: &Mesh) -> Result<Particles> {
        Ok(self.particles.clone())
    }

    fn steps_sets_apart(&self) -> bool {
        true
    }

    fn report(&self, _steps: u32) -> String {
        String::new()
    }
}

/// A partition whose particles live on the GPU.
#[cfg(feature = "gpu")]
pub struct GpuWorker {
    pub gpu: crate::gpu::GpuPartition,
    /// Particles found leaving while quarantined ones were stepped again on the host.
    host_out: Particles,
}

#[cfg(feature = "gpu")]
impl GpuWorker {
    pub fn new(gpu: crate::gpu::GpuPartition) -> Self {
        GpuWorker {
            gpu,
            host_out: Particles::default(),
        }
    }
}

#[cfg(feature = "gpu")]
impl Worker for GpuWorker {
    fn step(&mut self, cx: &StepContext) -> Result<Tally> {
        self.gpu
            .step(cx)
            .map_err(|e| anyhow!("GPU step {}: {e}", cx.step))
    }

    fn take_quarantined(&mut self, mesh: &Mesh) -> Result<Option<Quarantine>> {
        if self.gpu.quarantined() == 0 {
            return Ok(None);
        }
        let (at, mut particles) = self
            .gpu
            .take_quarantined(mesh)
            .map_err(|e| anyhow!("GPU quarantine: {e}"))?;
        // Those quarantined as they were released stay so, as on the CPU.
        let todo = (0..particles.len())
            .filter(|&k| status::in_play(particles.status[k]))
            .collect();
        for s in particles.status.iter_mut() {
            if !status::in_play(*s) {
                *s = status::BAD_FIELD;
            }
        }
        Ok(Some(Quarantine {
            particles,
            todo,
            at,
        }))
    }

    fn put_back(
        &mut self,
        cx: &StepContext,
        q: Quarantine,
        mut tally: Tally,
        fetched: bool,
        owner: Owner,
    ) -> Result<Tally> {
        if fetched {
            self.gpu.forget_levels();
        }
        let again = &q.particles;
        // The device counted them all as quarantined.
        tally.bad_field -= again.len() as u64;
        tally = tally.merge(tally_of(
            cx.params,
            &again.id,
            &again.status,
            &again.happiness,
        ));
        let kept: Vec<bool> = (0..again.len()).map(|k| owner.keeps(again, k)).collect();
        for k in (0..again.len()).filter(|&k| !kept[k]) {
            self.host_out.push_from(again, k);
        }
        self.gpu.put_back(cx.mesh, &q.at, again, &kept);
        Ok(tally)
    }

    fn emigrants(&mut self, mesh: &Mesh, owner: Owner) -> Result<BTreeMap<u32, Particles>> {
        let mut leaving = self
            .gpu
            .take_migrants(mesh)
            .map_err(|e| anyhow!("GPU migrants: {e}"))?;
        leaving.extend(&std::mem::take(&mut self.host_out));
        Ok(owner.by_owner(&leaving, 0..leaving.len()))
    }

    fn take_in(&mut self, mesh: &Mesh, p: &Particles) -> Result<()> {
        self.gpu
            .append(mesh, p)
            .map_err(|e| anyhow!("GPU migrants in: {e}"))
    }

    fn state(&mut self, mesh: &Mesh) -> Result<Particles> {
        self.gpu
            .live(mesh)
            .map_err(|e| anyhow!("reading the GPU's particles back: {e}"))
    }

    fn steps_sets_apart(&self) -> bool {
        false
    }

    fn report(&self, steps: u32) -> String {
        let bytes = self.gpu.readback_bytes;
        format!(
            "; read back {bytes} bytes from the GPU ({:.0} a step)",
            bytes as f64 / steps.max(1) as f64
        )
    }
}
