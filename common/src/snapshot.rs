//! The output's view of the particles at one time: what the trajectory file, the fates, the
//! density grid and the status page record of each particle. One type from every path (the
//! direct one, in-process nodes, node processes): the manager samples it from the gathered
//! state. Sampling is per particle, so any split of the particles into ranges gives the same
//! view (the node crate samples ranges side by side).

use crate::kernel::{observe, salinity_at, temperature_at};
use crate::{status, Mesh, Particles, Window};
use std::ops::Range;

/// Field values sampled at each particle for the output, beyond its position: the run file's
/// `[output] variables`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampled {
    pub temperature: bool,
    pub salinity: bool,
}

/// Output view of particles, keyed by particle id.
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
    /// Run clock seconds when it settled or died (NaN until then).
    pub fate_time: Vec<f64>,
    /// The water's temperature and salinity where the particle is (NaN where it has no
    /// position or the fields hold none); empty unless [`Sampled`] asks for them.
    pub temperature: Vec<f32>,
    pub salinity: Vec<f32>,
}

impl Snapshot {
    /// The view of particles `range` of `p` at time `t` (run clock): depth below the surface,
    /// sigma, age, the host element in the file's numbering, and the fields `sampled` names.
    /// Particles not yet released have no position; those released outside the mesh have no
    /// depth.
    pub fn of(
        p: &Particles,
        range: Range<usize>,
        mesh: &Mesh,
        window: Window,
        t: f64,
        sampled: Sampled,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        for i in range {
            let placed = p.status[i] != status::PENDING && p.status[i] != status::OUTSIDE_MESH;
            let at = |f: fn(&Mesh, Window, f64, f64, f64, f64, u32) -> Option<f64>| {
                placed
                    .then(|| f(mesh, window, t, p.x[i], p.y[i], p.z[i], p.element[i]))
                    .flatten()
                    .map_or(f32::NAN, |v| v as f32)
            };
            if sampled.temperature {
                s.temperature.push(at(temperature_at));
            }
            if sampled.salinity {
                s.salinity.push(at(salinity_at));
            }
            let (x, y, z, sigma) = match p.status[i] {
                status::PENDING => (f64::NAN, f64::NAN, f32::NAN, f32::NAN),
                status::OUTSIDE_MESH => (p.x[i], p.y[i], f32::NAN, f32::NAN),
                _ => {
                    let (z, sg) = observe(mesh, window, t, p.x[i], p.y[i], p.z[i], p.element[i]);
                    (p.x[i], p.y[i], z as f32, sg as f32)
                }
            };
            let unreleased = p.status[i] == status::PENDING || p.status[i] == status::OUTSIDE_MESH;
            let e = p.element[i];
            s.id.push(p.id[i]);
            s.x.push(x);
            s.y.push(y);
            s.z.push(z);
            s.sigma.push(sigma);
            s.status.push(p.status[i]);
            s.element
                .push(mesh.file_element.get(e as usize).copied().unwrap_or(e));
            s.age.push(if unreleased {
                f32::NAN
            } else {
                (t - p.release_time[i]).abs() as f32
            });
            s.happiness.push(p.happiness[i]);
            s.fate_time.push(p.fate_time[i]);
        }
        s
    }

    /// Every particle of `other`, appended.
    pub fn append(&mut self, mut other: Snapshot) {
        self.id.append(&mut other.id);
        self.x.append(&mut other.x);
        self.y.append(&mut other.y);
        self.z.append(&mut other.z);
        self.sigma.append(&mut other.sigma);
        self.status.append(&mut other.status);
        self.element.append(&mut other.element);
        self.age.append(&mut other.age);
        self.happiness.append(&mut other.happiness);
        self.fate_time.append(&mut other.fate_time);
        self.temperature.append(&mut other.temperature);
        self.salinity.append(&mut other.salinity);
    }

    pub fn len(&self) -> usize {
        self.id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}
