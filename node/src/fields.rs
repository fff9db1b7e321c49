//! A node's field levels: local [`FieldLevel`]s holding only the elements (and their nodes)
//! the node was given (its owned and halo elements, and those fetched on demand), in slots
//! handed out as values arrive. An element it lacks, or holds but cannot reconstruct yet, has a
//! NaN free surface, so a particle that samples it is quarantined without moving; the agent then
//! fetches the element (invariant 5) and steps the particle again. Present elements are
//! reconstructed with the same arithmetic as a whole slice
//! ([`shoal_common::fields::reconstruct`]), so results are bit-identical to the one-machine
//! path. Dropping a level frees everything it held, fetched values included.

use anyhow::{bail, Result};
use shoal_common::fields::{grow, reconstruct, Carried, COEF_DX, COEF_DY, N_COEF};
use shoal_common::mesh::is_element;
use shoal_common::wire::FieldSlice;
use shoal_common::{FieldLevel, Mesh, Window};

/// Raw values received for one time index, by the level's element and node slots.
struct Raw {
    index: u32,
    /// Each element slot's row in `vel` ([`NO_ROW`]: none kept).
    row: Vec<u32>,
    /// u, v, ww per row and layer, row-major. Rows are kept only while an element may still
    /// be needed to reconstruct a neighbour: an element present with every neighbour present
    /// gives its row up ([`PartialFields::fill`] compacts), and a later slice naming it again
    /// gives it a new one.
    vel: [Vec<f32>; 3],
    ww: bool,
    /// Per element slot: values received; reconstructed (sampleable).
    known: Vec<bool>,
    present: Vec<bool>,
    /// Per node slot.
    zeta: Vec<f32>,
}

const NO_ROW: u32 = u32::MAX;

impl Raw {
    /// Element slot `slot`'s row, made if it has none.
    fn row_of(&mut self, slot: usize, nl: usize) -> usize {
        if self.row[slot] == NO_ROW {
            self.row[slot] = (self.vel[0].len() / nl) as u32;
            for v in self.vel.iter_mut().take(if self.ww { 3 } else { 2 }) {
                v.extend(std::iter::repeat_n(0.0, nl));
            }
        }
        self.row[slot] as usize
    }

    /// Gives up the rows of elements present with every neighbour present, and packs the rest.
    fn compact(&mut self, mesh: &Mesh, level: &FieldLevel, nl: usize) {
        let Some(map) = &level.elem_slot else { return };
        let present = |e: usize| self.present[map[e] as usize];
        let mut done = vec![false; self.row.len()];
        for (e, &slot) in map.iter().enumerate() {
            let slot = slot as usize;
            if slot != 0
                && self.row[slot] != NO_ROW
                && present(e)
                && mesh.nbe[e]
                    .iter()
                    .all(|&n| !is_element(n) || present(n as usize))
            {
                done[slot] = true;
            }
        }
        if !done.iter().any(|&d| d) {
            return;
        }
        let comps = if self.ww { 3 } else { 2 };
        let mut vel: [Vec<f32>; 3] = Default::default();
        for (slot, row) in self.row.iter_mut().enumerate() {
            if *row == NO_ROW {
                continue;
            }
            if done[slot] {
                *row = NO_ROW;
                continue;
            }
            let r = *row as usize;
            *row = (vel[0].len() / nl) as u32;
            for (to, from) in vel.iter_mut().zip(&self.vel).take(comps) {
                to.extend_from_slice(&from[r * nl..(r + 1) * nl]);
            }
        }
        self.vel = vel;
    }
}

/// The levels a partition holds, oldest first, covering the current step.
#[derive(Default)]
pub struct PartialFields {
    pub levels: Vec<FieldLevel>,
    raw: Vec<Raw>,
    /// Elements received beyond the topology, over the run.
    pub fetched: u64,
}

impl PartialFields {
    pub fn window(&self) -> Window<'_> {
        Window {
            levels: &self.levels,
        }
    }

    /// The time indices held, oldest first.
    pub fn indices(&self) -> Vec<u32> {
        self.raw.iter().map(|r| r.index).collect()
    }

    /// Keeps only the levels with index `lo` or later.
    pub fn drop_before(&mut self, lo: u32) {
        let n = self.raw.iter().take_while(|r| r.index < lo).count();
        self.raw.drain(..n);
        self.levels.drain(..n);
    }

    pub fn has(&self, index: u32) -> bool {
        self.raw.iter().any(|r| r.index == index)
    }

    /// Whether element `e` can be sampled at every level held.
    pub fn present(&self, e: u32) -> bool {
        self.raw
            .iter()
            .zip(&self.levels)
            .all(|(r, l)| r.present[l.slot(e as usize)])
    }

    /// Elements held at each level, oldest first.
    pub fn elements_held(&self) -> Vec<usize> {
        self.levels.iter().map(|l| l.elements_held()).collect()
    }

    /// Bytes held for field values: the levels and the raw values they are made from.
    pub fn heap_bytes(&self) -> usize {
        let raw: usize = self
            .raw
            .iter()
            .map(|r| {
                r.vel.iter().map(|v| v.capacity() * 4).sum::<usize>()
                    + r.row.capacity() * 4
                    + r.known.capacity()
                    + r.present.capacity()
                    + r.zeta.capacity() * 4
            })
            .sum();
        raw + self.levels.iter().map(|l| l.heap_bytes()).sum::<usize>()
    }

    /// Starts level `index` (time `time` on the run clock) holding nothing; it goes after the
    /// levels held.
    pub fn open(&mut self, mesh: &Mesh, index: u32, time: f64, carried: Carried) {
        self.levels.push(FieldLevel::local(mesh, time, carried));
        self.raw.push(Raw {
            index,
            row: vec![NO_ROW],
            vel: Default::default(),
            ww: false,
            known: vec![false],
            present: vec![false],
            zeta: vec![f32::NAN],
        });
    }

    /// Room in level `index` for `elements` more elements and `nodes` more nodes, made at once
    /// before a slice comes in pieces, so that its arrays are allocated at their size.
    pub fn reserve(&mut self, index: u32, elements: usize, nodes: usize, n_layers: usize) {
        let Some(at) = self.raw.iter().position(|r| r.index == index) else {
            return;
        };
        self.levels[at].reserve_exact(elements, nodes, n_layers);
        let raw = &mut self.raw[at];
        raw.known.reserve_exact(elements);
        raw.present.reserve_exact(elements);
        raw.row.reserve_exact(elements);
        raw.zeta.reserve_exact(nodes);
    }

    /// Adds the values of `slice` to its level; `elements` and `nodes` say what they are for
    /// (the slice's own lists, or the topology's when it has none). Every index and length is
    /// checked: the slice came off the network.
    pub fn fill(
        &mut self,
        mesh: &Mesh,
        slice: &FieldSlice,
        elements: &[u32],
        nodes: &[u32],
    ) -> Result<()> {
        let (ne, nn, nl) = (mesh.n_elements(), mesh.n_nodes(), mesh.vertical.n_layers);
        let Some(at) = self.raw.iter().position(|r| r.index == slice.time_index) else {
            bail!(
                "field slice for time index {} not asked for",
                slice.time_index
            );
        };
        if slice.n_layers as usize != nl {
            bail!("field slice has {} layers, the mesh {nl}", slice.n_layers);
        }
        if slice.u.len() != elements.len() * nl || slice.zeta.len() != nodes.len() {
            bail!("field slice values do not match its elements and nodes");
        }
        if elements.iter().any(|&e| e as usize >= ne) || nodes.iter().any(|&n| n as usize >= nn) {
            bail!("field slice names an element or node outside the mesh");
        }
        let level = &mut self.levels[at];
        if level.temp.is_some() && slice.temp.len() != nodes.len() * nl {
            bail!("field slice lacks temp");
        }
        if level.kh.is_some() && slice.kh.len() != nodes.len() * (nl + 1) {
            bail!("field slice lacks kh");
        }
        if level.salinity.is_some() && slice.salinity.len() != nodes.len() * nl {
            bail!("field slice lacks salinity");
        }
        if level.wet.is_some() && slice.wet.len() != elements.len() {
            bail!("field slice lacks wet_cells");
        }
        let raw = &mut self.raw[at];
        level.reserve(elements.len(), nodes.len(), nl);
        grow(&mut raw.known, elements.len());
        grow(&mut raw.present, elements.len());
        grow(&mut raw.row, elements.len());
        grow(&mut raw.zeta, nodes.len());
        let comps = if raw.ww || !slice.ww.is_empty() { 3 } else { 2 };
        for v in raw.vel.iter_mut().take(comps) {
            v.reserve(elements.len() * nl);
        }
        if !slice.ww.is_empty() && !raw.ww {
            raw.ww = true;
            raw.vel[2] = vec![0.0; raw.vel[0].len()];
        }
        for (i, &e) in elements.iter().enumerate() {
            let slot = level.add_element(e as usize, nl);
            if slot == raw.known.len() {
                raw.known.push(false);
                raw.present.push(false);
                raw.row.push(NO_ROW);
            }
            let row = raw.row_of(slot, nl);
            let (dst, src) = (row * nl..(row + 1) * nl, i * nl..(i + 1) * nl);
            raw.vel[0][dst.clone()].copy_from_slice(&slice.u[src.clone()]);
            raw.vel[1][dst.clone()].copy_from_slice(&slice.v[src.clone()]);
            if !slice.ww.is_empty() {
                raw.vel[2][dst].copy_from_slice(&slice.ww[src]);
            }
            raw.known[slot] = true;
            if let Some(w) = &mut level.wet {
                w[slot] = slice.wet[i];
            }
        }
        for (i, &n) in nodes.iter().enumerate() {
            let slot = level.add_node(n as usize, nl);
            if slot == raw.zeta.len() {
                raw.zeta.push(f32::NAN);
            }
            raw.zeta[slot] = slice.zeta[i];
            let copy = |field: &mut Option<Vec<f32>>, from: &[f32], per: usize| {
                if let Some(f) = field {
                    f[slot * per..(slot + 1) * per].copy_from_slice(&from[i * per..(i + 1) * per]);
                }
            };
            copy(&mut level.temp, &slice.temp, nl);
            copy(&mut level.salinity, &slice.salinity, nl);
            copy(&mut level.kh, &slice.kh, nl + 1);
        }
        // An element becomes present once it, its edge neighbours and its nodes are known: its
        // reconstruction needs its neighbours' values.
        let mut candidates: Vec<u32> = Vec::with_capacity(elements.len() * 4);
        for &e in elements {
            candidates.push(e);
            candidates.extend(
                mesh.nbe[e as usize]
                    .iter()
                    .copied()
                    .filter(|&n| is_element(n)),
            );
        }
        candidates.sort_unstable();
        candidates.dedup();
        let known = |level: &FieldLevel, raw: &Raw, e: usize| raw.known[level.slot(e)];
        let node_known = |level: &FieldLevel, n: usize| level.node(n) != 0;
        for c in candidates {
            let c = c as usize;
            let cs = level.slot(c);
            if cs == 0
                || raw.present[cs]
                || !raw.known[cs]
                || !mesh.nbe[c]
                    .iter()
                    .all(|&n| !is_element(n) || known(level, raw, n as usize))
                || !mesh.nv[c].iter().all(|&n| node_known(level, n as usize))
            {
                continue;
            }
            let lsq = mesh.lsq(c);
            for comp in 0..if raw.ww { 3 } else { 2 } {
                let (vel, row) = (&raw.vel[comp], &raw.row);
                for k in 0..nl {
                    let [u0, gx, gy] = reconstruct(&lsq, mesh.nbe[c], c, |el| {
                        vel[row[level.slot(el)] as usize * nl + k]
                    });
                    let block: &mut [f32; N_COEF] = &mut level.coef[cs * nl + k];
                    block[comp] = u0;
                    block[COEF_DX + comp] = gx;
                    block[COEF_DY + comp] = gy;
                }
            }
            level.zeta_elem[cs] = mesh.nv[c].map(|n| raw.zeta[level.node(n as usize)]);
            raw.present[cs] = true;
        }
        raw.compact(mesh, level, nl);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::fields::RawSlice;
    use shoal_common::MeshInput;

    /// An `n` x `n` grid of 100 m squares, two triangles each, one layer.
    fn grid(n: usize) -> Mesh {
        let mut m = MeshInput::default();
        for j in 0..=n {
            for i in 0..=n {
                m.x.push(i as f64 * 100.0);
                m.y.push(j as f64 * 100.0);
                m.h.push(10.0);
            }
        }
        let id = |i: usize, j: usize| (j * (n + 1) + i) as i64;
        for j in 0..n {
            for i in 0..n {
                m.nv.push([id(i, j), id(i + 1, j), id(i, j + 1)]);
                m.nv.push([id(i + 1, j), id(i + 1, j + 1), id(i, j + 1)]);
            }
        }
        m.n_layers = 1;
        Mesh::build(m).unwrap().0
    }

    /// A slice of `elements` (and their nodes) from the whole slice `raw`, as the manager cuts it.
    fn cut(mesh: &Mesh, raw: &RawSlice, index: u32, elements: &[u32]) -> (FieldSlice, Vec<u32>) {
        let mut nodes: Vec<u32> = elements.iter().flat_map(|&e| mesh.nv[e as usize]).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let file = |e: u32| mesh.file_element[e as usize] as usize;
        let slice = FieldSlice {
            partition: 0,
            time_index: index,
            time: raw.time,
            n_layers: 1,
            elements: elements.to_vec(),
            nodes: nodes.clone(),
            u: elements.iter().map(|&e| raw.u[file(e)]).collect(),
            v: elements.iter().map(|&e| raw.v[file(e)]).collect(),
            ww: vec![],
            zeta: nodes.iter().map(|&n| raw.zeta[n as usize]).collect(),
            kh: vec![],
            temp: nodes.iter().map(|&n| 10.0 + n as f32).collect(),
            salinity: vec![],
            wet: vec![],
        };
        (slice, nodes)
    }

    #[test]
    fn the_store_holds_exactly_what_it_was_given_and_drops_it_with_its_level() {
        let mesh = grid(8);
        let ne = mesh.n_elements();
        let raw = |time: f64| RawSlice {
            time,
            u: (0..ne).map(|e| 0.1 + e as f32 * 0.01).collect(),
            v: (0..ne).map(|e| -0.2 + e as f32 * 0.003).collect(),
            zeta: (0..mesh.n_nodes()).map(|n| 0.01 * n as f32).collect(),
            temp: Some((0..mesh.n_nodes()).map(|n| 10.0 + n as f32).collect()),
            ..Default::default()
        };
        let whole = FieldLevel::from_slice(&mesh, &raw(0.0)).unwrap();
        // Owned: the first 30 elements in mesh order; halo: their other neighbours.
        let owned: Vec<u32> = (0..30).collect();
        let mut halo: Vec<u32> = owned
            .iter()
            .flat_map(|&e| mesh.nbe[e as usize])
            .filter(|&n| is_element(n) && n >= 30)
            .collect();
        halo.sort_unstable();
        halo.dedup();
        let topology: Vec<u32> = owned.iter().chain(&halo).copied().collect();
        let carried = Carried {
            temp: true,
            ..Default::default()
        };
        let mut f = PartialFields::default();
        for index in 0..2u32 {
            f.open(&mesh, index, index as f64 * 3600.0, carried);
            let (s, nodes) = cut(&mesh, &raw(index as f64 * 3600.0), index, &topology);
            f.fill(&mesh, &s, &topology, &nodes).unwrap();
        }
        assert_eq!(f.elements_held(), [topology.len(), topology.len()]);
        assert!(f.levels[0].elements_held() < ne);
        // Every owned element whose neighbours came too samples as the whole level does.
        for &e in &owned {
            let e = e as usize;
            let l = &f.levels[0];
            if f.present(e as u32) {
                assert_eq!(l.coef[l.slot(e)], whole.coef[e], "element {e}");
                assert_eq!(l.zeta_elem[l.slot(e)], whole.zeta_elem[e], "element {e}");
            }
        }
        assert!(owned.iter().all(|&e| f.present(e)));
        // Three elements fetched on demand, at the first level only, join its store.
        let far: Vec<u32> = vec![(ne - 1) as u32, (ne - 2) as u32, (ne - 9) as u32];
        let (s, nodes) = cut(&mesh, &raw(0.0), 0, &far);
        f.fill(&mesh, &s, &far, &nodes).unwrap();
        assert_eq!(f.elements_held(), [topology.len() + 3, topology.len()]);
        let l = &f.levels[0];
        let t = l.temp.as_ref().unwrap();
        for &n in &nodes {
            assert_eq!(t[l.node(n as usize)], 10.0 + n as f32);
        }
        // Dropping the first level releases what was fetched for it.
        let before = f.heap_bytes();
        f.drop_before(1);
        assert_eq!(f.elements_held(), [topology.len()]);
        assert!(f.heap_bytes() < before);
        assert!(!f.present((ne - 1) as u32));
    }
}
