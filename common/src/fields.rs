//! Field values at one model time, laid out for the kernels: element-centred velocities become
//! per-element, per-layer linear reconstructions `[u0, du/dx, du/dy, v0, .., w0, ..]` (so a
//! particle's interpolation reads one contiguous block), node fields stay node-major.
//! Built from one time slice as a reader delivers it (layer-major, FVCOM's `(siglay, nele)`).

use crate::mesh::{is_element, Mesh};

/// Coefficients per element and layer, `[u0, v0, w0, du/dx, dv/dx, dw/dx, du/dy, dv/dy, dw/dy]`,
/// so that the velocity at an offset (dx, dy) from the centroid is
/// `c[0..3] + c[3..6] * dx + c[6..9] * dy`. Nine values, 36 bytes: the GPU, which wants 4-wide
/// vectors, pads them when a level is uploaded ([`padded_coef`]).
pub const N_COEF: usize = 9;

/// Offsets of the x and y gradients in a coefficient block.
pub const COEF_DX: usize = 3;
pub const COEF_DY: usize = 6;

/// One time slice in FVCOM's own layout. Layer-major arrays, as read from `(time, siglay, nele)`.
#[derive(Clone, Debug, Default)]
pub struct RawSlice {
    /// Seconds on the run clock.
    pub time: f64,
    pub u: Vec<f32>,
    pub v: Vec<f32>,
    /// Vertical velocity, m/s, positive up; `None` means zero.
    pub ww: Option<Vec<f32>>,
    pub zeta: Vec<f32>,
    pub temp: Option<Vec<f32>>,
    pub kh: Option<Vec<f32>>,
    /// Salinity, layer-major like `temp`.
    pub salinity: Option<Vec<f32>>,
    /// FVCOM's `wet_cells` in the file's element order: 1 wet, 0 dry.
    pub wet: Option<Vec<u8>>,
}

/// Which optional fields a run reads and sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    pub temp: bool,
    pub kh: bool,
    pub salinity: bool,
    pub wet: bool,
}

/// One model time. Element values live in slots, node values in node slots: for a whole level
/// (the manager's, the direct path's) slot is the mesh's own number; a partition's level is
/// local ([`FieldLevel::local`]): it holds only the elements and nodes it was given, in slots
/// handed out as they arrive, with slot 0 standing for every element (node) it lacks: a NaN
/// surface and zero velocity, so a particle that samples one is quarantined.
#[derive(Clone, Debug)]
pub struct FieldLevel {
    pub time: f64,
    /// One block per element slot and layer, `slot * n_layers + layer`; see [`N_COEF`].
    pub coef: Vec<[f32; N_COEF]>,
    /// Free surface at each element slot's three nodes.
    pub zeta_elem: Vec<[f32; 3]>,
    /// Temperature, node-slot-major `slot * n_layers + layer`.
    pub temp: Option<Vec<f32>>,
    /// Vertical eddy diffusivity, node-slot-major `slot * n_levels + level`.
    pub kh: Option<Vec<f32>>,
    /// Salinity, like `temp`.
    pub salinity: Option<Vec<f32>>,
    /// Per element slot: 1 wet, 0 dry.
    pub wet: Option<Vec<u8>>,
    /// A local level's slot of each mesh element (0: not held); `None` for a whole level.
    pub elem_slot: Option<Vec<u32>>,
    /// A local level's slot of each mesh node (0: not held).
    pub node_slot: Option<Vec<u32>>,
    /// A local level's node slots in use, slot 0 included.
    pub node_slots: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FieldError {
    #[error("{name}: expected {expected} values for one time slice, found {found}")]
    Shape {
        name: &'static str,
        expected: usize,
        found: usize,
    },
}

fn node_major(src: &[f32], n_nodes: usize, per_node: usize) -> Vec<f32> {
    let mut out = vec![0.0; src.len()];
    for k in 0..per_node {
        for n in 0..n_nodes {
            out[n * per_node + k] = src[k * n_nodes + n];
        }
    }
    out
}

/// One element's linear reconstruction of an element-centred value: `[value, d/dx, d/dy]`, the
/// gradient from FVCOM's least-squares weights over its edge neighbours. `value(e)` reads the
/// value at element `e` (mesh numbering); `lsq` and `nb` are the element's [`Mesh::lsq`] and
/// `nbe` rows, looked up once for all its layers. The one place this arithmetic lives, so that a
/// node reconstructing its own elements from a partial slice gets the very bits of a whole slice.
#[inline]
pub fn reconstruct(
    lsq: &[[f32; 4]; 2],
    nb: [u32; 3],
    e: usize,
    value: impl Fn(usize) -> f32,
) -> [f32; 3] {
    let u0 = value(e);
    let [a1, a2] = lsq;
    let (mut gx, mut gy) = (a1[0] * u0, a2[0] * u0);
    for j in 0..3 {
        if is_element(nb[j]) {
            let un = value(nb[j] as usize);
            gx += a1[j + 1] * un;
            gy += a2[j + 1] * un;
        }
    }
    // A missing neighbour value (fill, NaN) degrades the element to a constant value rather
    // than poisoning it; a missing own value stays NaN and the kernel quarantines particles
    // that meet it.
    if !(gx.is_finite() && gy.is_finite()) {
        gx = 0.0;
        gy = 0.0;
    }
    [u0, gx, gy]
}

/// The time indices `lo..=hi` whose levels bracket the run-clock span `[t0, t1]`, given the
/// run-clock time of each index: the last at or before `t0` and the first at or after `t1`.
pub fn span(times: &[f64], t0: f64, t1: f64) -> (usize, usize) {
    let lo = (0..times.len())
        .rev()
        .find(|&i| times[i] <= t0 + 1e-9)
        .unwrap_or(0);
    let hi = (0..times.len())
        .find(|&i| times[i] >= t1 - 1e-9)
        .unwrap_or(times.len().saturating_sub(1))
        .max(lo);
    (lo, hi)
}

/// A level's coefficient blocks as the GPU kernel reads them: three 4-wide vectors per element
/// and layer, `[u0, v0, w0, 0]`, the x gradients and the y gradients.
pub fn padded_coef(coef: &[[f32; N_COEF]]) -> Vec<[f32; 12]> {
    coef.iter()
        .map(|c| {
            [
                c[0], c[1], c[2], 0.0, c[3], c[4], c[5], 0.0, c[6], c[7], c[8], 0.0,
            ]
        })
        .collect()
}

/// Room in `v` for `more` values, growing by at least an eighth of its length when it must
/// grow: a few fetched elements must not double a level's arrays, as `Vec::reserve` would, nor
/// reallocate them every time.
pub fn grow<T>(v: &mut Vec<T>, more: usize) {
    if v.capacity() - v.len() < more {
        v.reserve_exact(more.max(v.len() / 8));
    }
}

impl FieldLevel {
    /// A local level holding nothing yet: only slot 0, the stand-in for every element and node
    /// it lacks (NaN surface and node values, zero velocity; wet, so that the NaN surface is
    /// what quarantines a particle). Its slot maps cost 4 bytes per mesh element and node.
    pub fn local(mesh: &Mesh, time: f64, carried: Carried) -> FieldLevel {
        let nl = mesh.vertical.n_layers;
        FieldLevel {
            time,
            coef: vec![[0.0f32; N_COEF]; nl],
            zeta_elem: vec![[f32::NAN; 3]],
            temp: carried.temp.then(|| vec![f32::NAN; nl]),
            kh: carried.kh.then(|| vec![f32::NAN; nl + 1]),
            salinity: carried.salinity.then(|| vec![f32::NAN; nl]),
            wet: carried.wet.then(|| vec![1u8]),
            elem_slot: Some(vec![0; mesh.n_elements()]),
            node_slot: Some(vec![0; mesh.n_nodes()]),
            node_slots: 1,
        }
    }

    /// The slot of mesh element `e`.
    #[inline(always)]
    pub fn slot(&self, e: usize) -> usize {
        match &self.elem_slot {
            None => e,
            Some(m) => m[e] as usize,
        }
    }

    /// The slot of mesh node `n`.
    #[inline(always)]
    pub fn node(&self, n: usize) -> usize {
        match &self.node_slot {
            None => n,
            Some(m) => m[n] as usize,
        }
    }

    /// Element slots in use, the stand-in slot 0 of a local level left out.
    pub fn elements_held(&self) -> usize {
        self.zeta_elem.len() - usize::from(self.elem_slot.is_some())
    }

    /// A local level's node slots in use, the stand-in slot 0 left out (0 for a whole level).
    pub fn nodes_held(&self) -> usize {
        self.node_slots.saturating_sub(1)
    }

    /// Room for `elements` more element slots and `nodes` more node slots, each array growing
    /// by at least an eighth of its length when it must grow, so that fetches of a few elements
    /// neither reallocate every time nor double a level, as `Vec::reserve` would.
    pub fn reserve(&mut self, elements: usize, nodes: usize, n_layers: usize) {
        self.make_room(elements, nodes, n_layers, false);
    }

    /// Room for exactly `elements` more element slots and `nodes` more node slots: a partition's
    /// level, whose size is known before its slice arrives in pieces, is allocated once at that
    /// size.
    pub fn reserve_exact(&mut self, elements: usize, nodes: usize, n_layers: usize) {
        self.make_room(elements, nodes, n_layers, true);
    }

    fn make_room(&mut self, elements: usize, nodes: usize, n_layers: usize, exact: bool) {
        if self.elem_slot.is_none() {
            return;
        }
        fn room<T>(v: &mut Vec<T>, more: usize, exact: bool) {
            if exact {
                v.reserve_exact(more)
            } else {
                grow(v, more)
            }
        }
        room(&mut self.coef, elements * n_layers, exact);
        room(&mut self.zeta_elem, elements, exact);
        if let Some(w) = &mut self.wet {
            room(w, elements, exact);
        }
        for (field, per) in [
            (&mut self.temp, n_layers),
            (&mut self.salinity, n_layers),
            (&mut self.kh, n_layers + 1),
        ] {
            if let Some(v) = field {
                room(v, nodes * per, exact);
            }
        }
    }

    /// A local level's slot for mesh element `e`, made (absent: NaN surface, zero velocity,
    /// wet) if it has none. A whole level's slot is `e` itself.
    pub fn add_element(&mut self, e: usize, n_layers: usize) -> usize {
        let Some(map) = &mut self.elem_slot else {
            return e;
        };
        if map[e] != 0 {
            return map[e] as usize;
        }
        let slot = self.zeta_elem.len();
        map[e] = slot as u32;
        self.zeta_elem.push([f32::NAN; 3]);
        self.coef
            .extend(std::iter::repeat_n([0.0f32; N_COEF], n_layers));
        if let Some(w) = &mut self.wet {
            w.push(1);
        }
        slot
    }

    /// A local level's slot for mesh node `n`, made (NaN values) if it has none.
    pub fn add_node(&mut self, n: usize, n_layers: usize) -> usize {
        let Some(map) = &mut self.node_slot else {
            return n;
        };
        if map[n] != 0 {
            return map[n] as usize;
        }
        let slot = self.node_slots;
        self.node_slots += 1;
        map[n] = slot as u32;
        for (field, per) in [
            (&mut self.temp, n_layers),
            (&mut self.salinity, n_layers),
            (&mut self.kh, n_layers + 1),
        ] {
            if let Some(v) = field {
                v.extend(std::iter::repeat_n(f32::NAN, per));
            }
        }
        slot
    }

    /// Bytes held by this level's arrays (by length), slot maps included.
    pub fn heap_bytes(&self) -> usize {
        let f = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, |v| v.len() * 4);
        let m = |v: &Option<Vec<u32>>| v.as_ref().map_or(0, |v| v.len() * 4);
        self.coef.len() * N_COEF * 4
            + self.zeta_elem.len() * 12
            + f(&self.temp)
            + f(&self.kh)
            + f(&self.salinity)
            + self.wet.as_ref().map_or(0, |w| w.len())
            + m(&self.elem_slot)
            + m(&self.node_slot)
    }

    /// Whether mesh element `e` is wet at this time; always, without wetting and drying.
    #[inline]
    pub fn is_wet(&self, e: usize) -> bool {
        self.wet.as_ref().is_none_or(|w| w[self.slot(e)] != 0)
    }

    pub fn from_slice(mesh: &Mesh, raw: &RawSlice) -> Result<FieldLevel, FieldError> {
        let ne = mesh.n_elements();
        let nn = mesh.n_nodes();
        let nl = mesh.vertical.n_layers;
        let check = |name: &'static str, len: usize, expected: usize| {
            if len == expected {
                Ok(())
            } else {
                Err(FieldError::Shape {
                    name,
                    expected,
                    found: len,
                })
            }
        };
        check("u", raw.u.len(), ne * nl)?;
        check("v", raw.v.len(), ne * nl)?;
        if let Some(w) = &raw.ww {
            check("ww", w.len(), ne * nl)?;
        }
        check("zeta", raw.zeta.len(), nn)?;
        if let Some(t) = &raw.temp {
            check("temp", t.len(), nn * nl)?;
        }
        if let Some(k) = &raw.kh {
            check("kh", k.len(), nn * (nl + 1))?;
        }
        if let Some(t) = &raw.salinity {
            check("salinity", t.len(), nn * nl)?;
        }
        if let Some(w) = &raw.wet {
            check("wet_cells", w.len(), ne)?;
        }
        let mut coef = vec![[0.0f32; N_COEF]; ne * nl];
        let lsq = mesh.lsq_rows();
        let fields: [Option<&[f32]>; 3] = [Some(&raw.u), Some(&raw.v), raw.ww.as_deref()];
        for (c, field) in fields.iter().enumerate() {
            let Some(f) = field else { continue };
            for k in 0..nl {
                let layer = &f[k * ne..(k + 1) * ne];
                // Slices come in the file's element order; the mesh stores its own.
                let file = &mesh.file_element;
                for e in 0..ne {
                    let [u0, gx, gy] =
                        reconstruct(&lsq[e], mesh.nbe[e], e, |el| layer[file[el] as usize]);
                    let block = &mut coef[e * nl + k];
                    block[c] = u0;
                    block[COEF_DX + c] = gx;
                    block[COEF_DY + c] = gy;
                }
            }
        }
        let zeta_elem = mesh
            .nv
            .iter()
            .map(|t| t.map(|n| raw.zeta[n as usize]))
            .collect();
        Ok(FieldLevel {
            time: raw.time,
            coef,
            zeta_elem,
            temp: raw.temp.as_ref().map(|t| node_major(t, nn, nl)),
            kh: raw.kh.as_ref().map(|k| node_major(k, nn, nl + 1)),
            salinity: raw.salinity.as_ref().map(|t| node_major(t, nn, nl)),
            wet: raw
                .wet
                .as_ref()
                .map(|w| mesh.file_element.iter().map(|&f| w[f as usize]).collect()),
            elem_slot: None,
            node_slot: None,
            node_slots: 0,
        })
    }
}

/// The two levels around one time and the weight of the later one: found once per RK stage,
/// since every particle of a step shares the stage times.
#[derive(Clone, Copy, Debug)]
pub struct Bracket<'a> {
    pub a: &'a FieldLevel,
    pub b: &'a FieldLevel,
    pub wt: f64,
}

/// The field levels bracketing the time span of a step, oldest first.
#[derive(Clone, Copy, Debug)]
pub struct Window<'a> {
    pub levels: &'a [FieldLevel],
}

impl<'a> Window<'a> {
    #[inline]
    pub fn at(&self, t: f64) -> Bracket<'a> {
        let (a, b, wt) = self.bracket(t);
        Bracket { a, b, wt }
    }

    /// The two levels around time `t` and the weight of the later one. Times outside the window
    /// use its nearest level unchanged.
    #[inline]
    pub fn bracket(&self, t: f64) -> (&'a FieldLevel, &'a FieldLevel, f64) {
        let l = self.levels;
        if l.len() == 1 || t <= l[0].time {
            return (&l[0], &l[0], 0.0);
        }
        let last = l.len() - 1;
        if t >= l[last].time {
            return (&l[last], &l[last], 0.0);
        }
        let mut i = 0;
        while i + 1 < last && l[i + 1].time <= t {
            i += 1;
        }
        let (a, b) = (&l[i], &l[i + 1]);
        (a, b, (t - a.time) / (b.time - a.time))
    }
}
