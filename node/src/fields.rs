//! A node's field levels: full-size [`FieldLevel`]s in which only the elements the node has
//! values for are present. An absent element has a NaN free surface, so a particle that samples
//! it is quarantined without moving; the agent then fetches the element (invariant 5) and steps
//! the particle again. Present elements are reconstructed with the same arithmetic as a whole
//! slice ([`shoal_common::fields::reconstruct`]), so results are bit-identical to the one-machine
//! path.

use anyhow::{bail, Result};
use shoal_common::fields::{reconstruct, Carried, N_COEF};
use shoal_common::mesh::is_element;
use shoal_common::wire::FieldSlice;
use shoal_common::{FieldLevel, Mesh, Window};

/// Raw values received for one time index, in mesh numbering.
struct Raw {
    index: u32,
    /// u, v, ww per element and layer, element-major; zero where not received.
    vel: [Vec<f32>; 3],
    ww: bool,
    known: Vec<bool>,
    present: Vec<bool>,
    zeta: Vec<f32>,
    node_known: Vec<bool>,
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
        self.raw.iter().all(|r| r.present[e as usize])
    }

    /// Starts level `index` (time `time` on the run clock) with nothing present; it goes after
    /// the levels held.
    pub fn open(&mut self, mesh: &Mesh, index: u32, time: f64, carried: Carried) {
        let (ne, nn, nl) = (mesh.n_elements(), mesh.n_nodes(), mesh.vertical.n_layers);
        self.levels.push(FieldLevel::absent(mesh, time, carried));
        self.raw.push(Raw {
            index,
            vel: [vec![0.0; ne * nl], vec![0.0; ne * nl], Vec::new()],
            ww: false,
            known: vec![false; ne],
            present: vec![false; ne],
            zeta: vec![f32::NAN; nn],
            node_known: vec![false; nn],
        });
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
        if !slice.ww.is_empty() && !raw.ww {
            raw.ww = true;
            raw.vel[2] = vec![0.0; ne * nl];
        }
        for (i, &e) in elements.iter().enumerate() {
            let (e, src) = (e as usize, i * nl..(i + 1) * nl);
            raw.vel[0][e * nl..(e + 1) * nl].copy_from_slice(&slice.u[src.clone()]);
            raw.vel[1][e * nl..(e + 1) * nl].copy_from_slice(&slice.v[src.clone()]);
            if !slice.ww.is_empty() {
                raw.vel[2][e * nl..(e + 1) * nl].copy_from_slice(&slice.ww[src]);
            }
            raw.known[e] = true;
            if let Some(w) = &mut level.wet {
                w[e] = slice.wet[i];
            }
        }
        for (i, &n) in nodes.iter().enumerate() {
            let n = n as usize;
            raw.zeta[n] = slice.zeta[i];
            raw.node_known[n] = true;
            if let Some(t) = &mut level.temp {
                t[n * nl..(n + 1) * nl].copy_from_slice(&slice.temp[i * nl..(i + 1) * nl]);
            }
            if let Some(s) = &mut level.salinity {
                s[n * nl..(n + 1) * nl].copy_from_slice(&slice.salinity[i * nl..(i + 1) * nl]);
            }
            if let Some(k) = &mut level.kh {
                k[n * (nl + 1)..(n + 1) * (nl + 1)]
                    .copy_from_slice(&slice.kh[i * (nl + 1)..(i + 1) * (nl + 1)]);
            }
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
        for c in candidates {
            let c = c as usize;
            if raw.present[c]
                || !raw.known[c]
                || !mesh.nbe[c]
                    .iter()
                    .all(|&n| !is_element(n) || raw.known[n as usize])
                || !mesh.nv[c].iter().all(|&n| raw.node_known[n as usize])
            {
                continue;
            }
            for comp in 0..if raw.ww { 3 } else { 2 } {
                let vel = &raw.vel[comp];
                for k in 0..nl {
                    let [u0, gx, gy] = reconstruct(mesh, c, |el| vel[el * nl + k]);
                    let block: &mut [f32; N_COEF] = &mut level.coef[c * nl + k];
                    block[comp] = u0;
                    block[4 + comp] = gx;
                    block[8 + comp] = gy;
                }
            }
            level.zeta_elem[c] = mesh.nv[c].map(|n| raw.zeta[n as usize]);
            raw.present[c] = true;
        }
        Ok(())
    }
}
