//! shoal-node: the per-partition work. A [`Partition`] owns its particles and steps them with
//! the shared kernels, in rayon chunks, re-sorting by host element every few steps so that
//! neighbouring particles read neighbouring field memory. It never reads NetCDF: fields arrive
//! as [`shoal_common::FieldLevel`]s from whoever drives it (the manager, in-process, for now).

use rayon::prelude::*;
use shoal_common::kernel::{advance, observe, release_due, StepParams, Tally};
use shoal_common::{status, Mesh, Particles, Window};

#[cfg(feature = "gpu")]
pub mod gpu;

/// Particles per rayon task: large enough to amortise scheduling, small enough that every
/// thread gets several tasks. Depends only on the particle count, never on the thread count.
pub fn chunk_size(n: usize) -> usize {
    (n / 64).clamp(64, 4096)
}

/// Output view of every particle of a partition, keyed by particle id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub id: Vec<u32>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Metres below the surface (0 at the surface, negative down).
    pub z: Vec<f32>,
    pub sigma: Vec<f32>,
    pub status: Vec<u8>,
    /// Host element in the file's (FVCOM's) numbering.
    pub element: Vec<u32>,
    pub age: Vec<f32>,
    pub happiness: Vec<f32>,
}

pub struct Partition {
    pub particles: Particles,
    /// Re-sort by host element every this many steps (0: never).
    pub sort_every: u32,
    steps_since_sort: u32,
    /// Sort keys, reused as the permutation's scratch space.
    keys: Vec<u64>,
    order: Vec<u32>,
}

impl Partition {
    pub fn new(particles: Particles) -> Self {
        Partition {
            particles,
            sort_every: 8,
            steps_since_sort: u32::MAX,
            keys: Vec::new(),
            order: Vec::new(),
        }
    }

    /// Advances every particle from `t` to `t + dt`. The result is independent of the number of
    /// threads and of the current order of particles.
    pub fn step(
        &mut self,
        mesh: &Mesh,
        window: Window,
        params: &StepParams,
        t: f64,
        step: u32,
    ) -> Tally {
        if self.sort_every > 0 && self.steps_since_sort >= self.sort_every {
            self.sort_by_element();
        }
        self.steps_since_sort = self.steps_since_sort.saturating_add(1);
        let n = self.particles.len();
        self.particles
            .chunks_mut(chunk_size(n))
            .into_par_iter()
            .map(|chunk| advance(mesh, window, params, t, step, chunk))
            .reduce(Tally::empty, Tally::merge)
    }

    /// Heap bytes held for the particles: their state plus the sort buffers.
    pub fn heap_bytes(&self) -> usize {
        let p = &self.particles;
        p.id.capacity() * 4
            + (p.x.capacity() + p.y.capacity() + p.z.capacity() + p.release_time.capacity()) * 8
            + p.element.capacity() * 4
            + p.status.capacity()
            + p.happiness.capacity() * 4
            + self.keys.capacity() * 8
            + self.order.capacity() * 4
    }

    /// Releases the particles due at `t` without moving anything.
    pub fn release(&mut self, mesh: &Mesh, window: Window, t: f64) {
        let n = self.particles.len();
        self.particles
            .chunks_mut(chunk_size(n))
            .into_par_iter()
            .for_each(|c| release_due(mesh, window, t, c));
    }

    /// Orders particles by (host element, id); inactive ones go last.
    pub fn sort_by_element(&mut self) {
        let p = &self.particles;
        self.keys.clear();
        self.keys.extend((0..p.len()).map(|i| {
            let e = if p.status[i] == status::ACTIVE || p.status[i] == status::PENDING {
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

    /// The output view at time `t` (run clock), in the partition's current order.
    pub fn snapshot(&self, mesh: &Mesh, window: Window, t: f64) -> Snapshot {
        let p = &self.particles;
        let n = p.len();
        let rows: Vec<(f64, f64, f32, f32)> = (0..n)
            .into_par_iter()
            .map(|i| match p.status[i] {
                status::PENDING => (f64::NAN, f64::NAN, f32::NAN, f32::NAN),
                status::OUTSIDE_MESH => (p.x[i], p.y[i], f32::NAN, f32::NAN),
                _ => {
                    let (z, s) = observe(mesh, window, t, p.x[i], p.y[i], p.z[i], p.element[i]);
                    (p.x[i], p.y[i], z as f32, s as f32)
                }
            })
            .collect();
        Snapshot {
            id: p.id.clone(),
            x: rows.iter().map(|r| r.0).collect(),
            y: rows.iter().map(|r| r.1).collect(),
            z: rows.iter().map(|r| r.2).collect(),
            sigma: rows.iter().map(|r| r.3).collect(),
            status: p.status.clone(),
            element: p
                .element
                .iter()
                .map(|&e| mesh.file_element.get(e as usize).copied().unwrap_or(e))
                .collect(),
            age: (0..n)
                .map(|i| {
                    if p.status[i] == status::PENDING || p.status[i] == status::OUTSIDE_MESH {
                        f32::NAN
                    } else {
                        (t - p.release_time[i]) as f32
                    }
                })
                .collect(),
            happiness: p.happiness.clone(),
        }
    }
}
