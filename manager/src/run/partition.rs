//! Splitting the mesh among nodes: METIS k-way on the element dual graph (elements joined
//! across shared edges), weighted by initial particles per element plus one, so that both
//! particles and mesh work are balanced; then halo rings around each part. METIS runs with a
//! fixed seed, so the same mesh and release give the same partition on every run.

use anyhow::{anyhow, bail, Result};
use shoal_common::mesh::{is_element, Mesh};

#[derive(Clone, Debug, PartialEq)]
pub struct Partitioning {
    pub n_parts: usize,
    /// The part owning each element (the mesh's own element numbering).
    pub part_of: Vec<u32>,
    /// Weight of each part.
    pub part_weight: Vec<u64>,
    /// Dual-graph edges whose ends lie in different parts.
    pub edge_cut: u64,
    /// Heaviest part over the mean part weight (1.0 is perfect).
    pub imbalance: f64,
}

/// Splits `mesh` into `n_parts`, with `weights[e]` the work of element `e` (at least 1).
pub fn partition(mesh: &Mesh, weights: &[u32], n_parts: usize) -> Result<Partitioning> {
    partition_shared(mesh, weights, n_parts, None, None)
}

/// [`partition`] with each part's share of the work given (`shares[p]`, positive, any sum:
/// they are scaled to 1), as METIS's target part weights: a faster node's parts get more. The
/// imbalance is then the heaviest part's weight over its target.
pub fn partition_shared(
    mesh: &Mesh,
    weights: &[u32],
    n_parts: usize,
    shares: Option<&[f64]>,
    flux: Option<&[[f32; 3]]>,
) -> Result<Partitioning> {
    let ne = mesh.n_elements();
    if flux.is_some_and(|f| f.len() != ne) {
        bail!(
            "partition: a flux for {} of {ne} elements",
            flux.map_or(0, |f| f.len())
        );
    }
    let top = flux.map_or(0.0, |f| {
        f.iter()
            .flatten()
            .copied()
            .filter(|x| x.is_finite())
            .fold(0.0f32, f32::max)
    });
    let targets: Vec<f64> = match shares {
        Some(s) => {
            if s.len() != n_parts || s.iter().any(|&x| !(x.is_finite() && x > 0.0)) {
                bail!("partition: shares {s:?} for {n_parts} parts");
            }
            let sum: f64 = s.iter().sum();
            s.iter().map(|x| x / sum).collect()
        }
        None => vec![1.0 / n_parts.max(1) as f64; n_parts],
    };
    let tpwgts: Vec<metis::Real> = targets.iter().map(|&x| x as metis::Real).collect();
    if weights.len() != ne {
        bail!("partition: {} weights for {ne} elements", weights.len());
    }
    if n_parts == 0 || n_parts > ne {
        bail!("partition: cannot split {ne} elements into {n_parts} parts");
    }
    let mut part = vec![0 as metis::Idx; ne];
    if n_parts > 1 {
        let mut xadj = Vec::with_capacity(ne + 1);
        let mut adjncy = Vec::with_capacity(3 * ne);
        let mut adjwgt = Vec::with_capacity(3 * ne);
        xadj.push(0 as metis::Idx);
        for (e, row) in mesh.nbe.iter().enumerate() {
            for (i, &n) in row.iter().enumerate() {
                if is_element(n) {
                    adjncy.push(n as metis::Idx);
                    adjwgt.push(edge_weight(flux.map_or(0.0, |f| f[e][i]), top));
                }
            }
            xadj.push(adjncy.len() as metis::Idx);
        }
        let vwgt: Vec<metis::Idx> = weights.iter().map(|w| (*w).max(1) as metis::Idx).collect();
        // METIS keeps its random state in process globals: concurrent calls race and make the
        // result depend on timing. One call at a time, each reseeded, is reproducible.
        static METIS: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = METIS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut graph = metis::Graph::new(1, n_parts as metis::Idx, &xadj, &adjncy)
            .map_err(|e| anyhow!("partition: {e}"))?
            .set_vwgt(&vwgt)
            .set_option(metis::option::Seed(17));
        if shares.is_some() {
            graph = graph.set_tpwgts(&tpwgts);
        }
        if top > 0.0 {
            graph = graph.set_adjwgt(&adjwgt);
        }
        graph.part_kway(&mut part).map_err(|e| {
            anyhow!("METIS failed to partition {ne} elements into {n_parts} parts: {e}")
        })?;
    }
    let part_of: Vec<u32> = part.iter().map(|p| *p as u32).collect();
    let mut part_weight = vec![0u64; n_parts];
    for (e, p) in part_of.iter().enumerate() {
        part_weight[*p as usize] += weights[e].max(1) as u64;
    }
    let mut edge_cut = 0;
    for (e, row) in mesh.nbe.iter().enumerate() {
        for &n in row {
            if is_element(n) && (n as usize) > e && part_of[n as usize] != part_of[e] {
                edge_cut += 1;
            }
        }
    }
    let total = part_weight.iter().sum::<u64>() as f64;
    let imbalance = part_weight
        .iter()
        .zip(&targets)
        .map(|(&w, &t)| w as f64 / (total * t))
        .fold(0.0, f64::max);
    Ok(Partitioning {
        n_parts,
        part_of,
        part_weight,
        edge_cut,
        imbalance,
    })
}

/// Elements of other parts within `rings` rings around part `p`, where a ring is every element
/// sharing a node with the previous one: a particle may cross a vertex as well as an edge.
/// Sorted by element number.
pub fn halo(mesh: &Mesh, part_of: &[u32], p: u32, rings: usize) -> Vec<u32> {
    let ne = mesh.n_elements();
    // Elements around each node (CSR).
    let mut start = vec![0u32; mesh.n_nodes() + 1];
    for t in &mesh.nv {
        for &n in t {
            start[n as usize + 1] += 1;
        }
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let mut fill = start.clone();
    let mut around = vec![0u32; start[mesh.n_nodes()] as usize];
    for (e, t) in mesh.nv.iter().enumerate() {
        for &n in t {
            around[fill[n as usize] as usize] = e as u32;
            fill[n as usize] += 1;
        }
    }
    let mut in_set = vec![false; ne];
    let mut frontier: Vec<u32> = (0..ne as u32)
        .filter(|&e| part_of[e as usize] == p)
        .collect();
    for &e in &frontier {
        in_set[e as usize] = true;
    }
    let mut halo = Vec::new();
    for _ in 0..rings {
        let mut next = Vec::new();
        for &e in &frontier {
            for &n in &mesh.nv[e as usize] {
                for &m in &around[start[n as usize] as usize..start[n as usize + 1] as usize] {
                    if !in_set[m as usize] {
                        in_set[m as usize] = true;
                        next.push(m);
                    }
                }
            }
        }
        halo.extend_from_slice(&next);
        frontier = next;
    }
    halo.sort_unstable();
    halo
}

/// A dual-graph edge's weight for METIS, which cuts the lightest edges it can: 1, plus up to
/// 100 for the water crossing it (`flux` of the largest, `top`). A cut then runs along the flow
/// where it can, so particles seldom cross between partitions (fewer migrants, and a load that
/// swings less with the tide).
fn edge_weight(flux: f32, top: f32) -> metis::Idx {
    if top > 0.0 && flux.is_finite() {
        1 + (100.0 * (flux / top).clamp(0.0, 1.0)).round() as metis::Idx
    } else {
        1
    }
}

/// How much water crosses each edge between two elements, per element and neighbour slot
/// (the slot of `nbe`): the depth-mean velocity of the two elements' layers across the edge's
/// length, m²/s, raised in `out` (zeros, one row per element, to begin) where `raw` carries
/// more: given a tide's phases one by one, the largest of them (slack water carries nothing).
/// Both elements of an edge get the same value, bit for bit, as METIS needs.
pub fn edge_flux(mesh: &Mesh, raw: &shoal_common::RawSlice, out: &mut [[f32; 3]]) {
    let (ne, nl) = (mesh.n_elements(), mesh.vertical.n_layers.max(1));
    {
        if raw.u.len() < nl * ne || raw.v.len() < nl * ne || out.len() != ne {
            return;
        }
        let mean = |f: &[f32], e: usize| {
            let fe = mesh.file_element[e] as usize;
            (0..nl).map(|k| f[k * ne + fe] as f64).sum::<f64>() / nl as f64
        };
        for (e, out_e) in out.iter_mut().enumerate() {
            let (ue, ve) = (mean(&raw.u, e), mean(&raw.v, e));
            for (i, &n) in mesh.nbe[e].iter().enumerate() {
                if !is_element(n) {
                    continue;
                }
                let (un, vn) = (mean(&raw.u, n as usize), mean(&raw.v, n as usize));
                // The edge opposite node i, and the velocity across it.
                let (a, b) = (
                    mesh.nv[e][(i + 1) % 3] as usize,
                    mesh.nv[e][(i + 2) % 3] as usize,
                );
                let (dx, dy) = (mesh.x[b] - mesh.x[a], mesh.y[b] - mesh.y[a]);
                let (u, v) = (0.5 * (ue + un), 0.5 * (ve + vn));
                let q = (u * dy - v * dx).abs() as f32;
                if q.is_finite() && q > out_e[i] {
                    out_e[i] = q;
                }
            }
        }
    }
}

/// The fastest horizontal speed in a slice, m/s (non-finite values ignored).
pub fn max_speed(raw: &shoal_common::RawSlice) -> f64 {
    raw.u
        .iter()
        .zip(&raw.v)
        .map(|(u, v)| (*u as f64).hypot(*v as f64))
        .filter(|s| s.is_finite())
        .fold(0.0, f64::max)
}

/// Rings needed so that one step's RK4 stages stay in the halo: the farthest a particle moves
/// in a step over the smallest element edge, plus one.
pub fn default_rings(max_speed: f64, dt: f64, smallest_edge: f64) -> usize {
    ((max_speed.abs() * dt / smallest_edge.max(1e-9)).ceil() as usize + 1).max(1)
}

/// `shoal partition`: how the run's mesh and release would split over `parts` nodes.
pub fn report(
    cfg: &crate::input::config::RunConfig,
    parts: usize,
    rings: Option<usize>,
) -> Result<String> {
    use std::fmt::Write;
    let (reader, mesh, _) =
        crate::input::fvcom::FvcomReader::open(&cfg.files, &cfg.open_boundary_nodes)?;
    let (start, duration) = crate::run::prepare::span(cfg, &reader.times);
    let points =
        crate::input::release::points(cfg, &mesh, reader.geo.as_ref(), start, duration)?.points;
    let placed = crate::input::release::place(&points, &mesh);
    let mut weights = vec![1u32; mesh.n_elements()];
    for (e, s) in placed
        .particles
        .element
        .iter()
        .zip(&placed.particles.status)
    {
        if *s != shoal_common::status::OUTSIDE_MESH {
            weights[*e as usize] += 1;
        }
    }
    let max_speed = max_speed(&reader.read_slice(0, start)?);
    let rings = rings.unwrap_or_else(|| default_rings(max_speed, cfg.dt, mesh.smallest_edge()));
    let p = partition(&mesh, &weights, parts)?;
    let mut out = String::new();
    writeln!(
        out,
        "{} elements, {} particles released in the mesh, {parts} parts",
        mesh.n_elements(),
        placed.particles.len() - placed.outside
    )?;
    writeln!(
        out,
        "edge cut {} (of {} interior edges), imbalance {:.3}",
        p.edge_cut,
        mesh.nbe
            .iter()
            .flatten()
            .filter(|n| is_element(**n))
            .count()
            / 2,
        p.imbalance
    )?;
    writeln!(out, "halo: {rings} rings (max speed {max_speed:.2} m/s x dt {} s over smallest edge {:.1} m, plus one)", cfg.dt, mesh.smallest_edge())?;
    for k in 0..parts {
        let owned = p.part_of.iter().filter(|q| **q == k as u32).count();
        let h = halo(&mesh, &p.part_of, k as u32, rings);
        writeln!(
            out,
            "  part {k}: {owned} elements, weight {}, halo {} elements",
            p.part_weight[k],
            h.len()
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::MeshInput;

    fn grid(n: usize) -> Mesh {
        rect(n, n)
    }

    fn rect(nx: usize, ny: usize) -> Mesh {
        let mut m = MeshInput::default();
        for j in 0..=ny {
            for i in 0..=nx {
                m.x.push(i as f64 * 100.0);
                m.y.push(j as f64 * 100.0);
                m.h.push(10.0);
            }
        }
        let id = |i: usize, j: usize| (j * (nx + 1) + i) as i64;
        for j in 0..ny {
            for i in 0..nx {
                m.nv.push([id(i, j), id(i + 1, j), id(i + 1, j + 1)]);
                m.nv.push([id(i, j), id(i + 1, j + 1), id(i, j + 1)]);
            }
        }
        m.n_layers = 1;
        Mesh::build(m).unwrap().0
    }

    #[test]
    fn shares_give_a_faster_node_more_and_a_bad_share_is_refused() {
        let mesh = grid(40);
        let weights = vec![1u32; mesh.n_elements()];
        // Three nodes, the first three times as fast as the others.
        let p = partition_shared(&mesh, &weights, 3, Some(&[3.0, 1.0, 1.0]), None).unwrap();
        let total: u64 = p.part_weight.iter().sum();
        let got: Vec<f64> = p
            .part_weight
            .iter()
            .map(|&w| w as f64 / total as f64)
            .collect();
        for (g, want) in got.iter().zip([0.6, 0.2, 0.2]) {
            assert!((g - want).abs() < 0.03, "shares {got:?}");
        }
        assert!(p.imbalance < 1.1, "imbalance {}", p.imbalance);
        for bad in [
            vec![1.0, 0.0, 1.0],
            vec![1.0, 1.0],
            vec![1.0, f64::NAN, 1.0],
        ] {
            assert!(partition_shared(&mesh, &weights, 3, Some(&bad), None).is_err());
        }
    }

    #[test]
    fn a_cut_weighted_by_the_flow_runs_along_it() {
        // A uniform eastward flow along a channel four times as long as wide: cut in two, the
        // shortest cut runs across the channel, but the parts should lie side by side along
        // it, so that the flow crosses (almost) no part boundary, at no cost in balance.
        let mesh = rect(48, 12);
        let ne = mesh.n_elements();
        let nl = mesh.vertical.n_layers;
        let raw = shoal_common::RawSlice {
            u: vec![1.0; ne * nl],
            v: vec![0.0; ne * nl],
            ..Default::default()
        };
        let mut flux = vec![[0.0f32; 3]; ne];
        edge_flux(&mesh, &raw, &mut flux);
        let weights = vec![1u32; ne];
        let crossings = |p: &Partitioning| {
            // Edges between parts that the flow crosses (an edge with an x extent of 0).
            let mut n = 0;
            for (e, row) in mesh.nbe.iter().enumerate().take(ne) {
                for (i, &m) in row.iter().enumerate() {
                    if is_element(m) && p.part_of[m as usize] != p.part_of[e] && flux[e][i] > 1.0 {
                        n += 1;
                    }
                }
            }
            n
        };
        let along = partition_shared(&mesh, &weights, 2, None, Some(&flux)).unwrap();
        let blind = partition(&mesh, &weights, 2).unwrap();
        assert!(along.imbalance < 1.05, "imbalance {}", along.imbalance);
        // METIS is a heuristic: a step or two in its line, where the blind cut runs across.
        let (a, b) = (crossings(&along), crossings(&blind));
        assert!(
            b >= 24 && a * 4 <= b,
            "{a} edges across the flow cut, against {b}"
        );
        // The flux is symmetric, as METIS needs.
        for e in 0..ne {
            for i in 0..3 {
                let m = mesh.nbe[e][i];
                if is_element(m) {
                    let j = mesh.nbe[m as usize]
                        .iter()
                        .position(|&k| k == e as u32)
                        .unwrap();
                    assert_eq!(flux[e][i].to_bits(), flux[m as usize][j].to_bits());
                }
            }
        }
    }

    #[test]
    fn parts_are_balanced_connected_and_reproducible() {
        let mesh = grid(40);
        let ne = mesh.n_elements();
        // Particles crowd one corner: weights must pull parts toward it.
        let weights: Vec<u32> = (0..ne)
            .map(|e| {
                if mesh.geom(e).xc < 1000.0 && mesh.geom(e).yc < 1000.0 {
                    50
                } else {
                    1
                }
            })
            .collect();
        let p = partition(&mesh, &weights, 4).unwrap();
        assert_eq!(p.part_of.len(), ne);
        assert!(p.part_weight.iter().all(|w| *w > 0));
        assert!(p.imbalance < 1.1, "imbalance {}", p.imbalance);
        // A 40 x 40 grid cut in four needs about two cuts across it: a few hundred edges at most.
        assert!(
            p.edge_cut > 0 && p.edge_cut < 400,
            "edge cut {}",
            p.edge_cut
        );
        for _ in 0..3 {
            assert_eq!(partition(&mesh, &weights, 4).unwrap(), p);
        }
        let one = partition(&mesh, &weights, 1).unwrap();
        assert!(one.part_of.iter().all(|p| *p == 0) && one.edge_cut == 0);
        assert!(partition(&mesh, &weights, 0).is_err());
        assert!(partition(&mesh, &weights[1..], 2).is_err());
    }

    #[test]
    fn halo_rings_grow_and_never_include_owned_elements() {
        let mesh = grid(30);
        let p = partition(&mesh, &vec![1; mesh.n_elements()], 3).unwrap();
        let mut last = 0;
        for rings in 1..4 {
            let h = halo(&mesh, &p.part_of, 1, rings);
            assert!(h.len() > last, "ring {rings} added nothing");
            assert!(h.iter().all(|e| p.part_of[*e as usize] != 1));
            last = h.len();
        }
        // Every element sharing a node with part 1 is in its first ring.
        let h1 = halo(&mesh, &p.part_of, 1, 1);
        for (e, t) in mesh.nv.iter().enumerate() {
            if p.part_of[e] == 1 {
                continue;
            }
            let touches = (0..mesh.n_elements())
                .any(|o| p.part_of[o] == 1 && mesh.nv[o].iter().any(|n| t.contains(n)));
            assert_eq!(
                touches,
                h1.binary_search(&(e as u32)).is_ok(),
                "element {e}"
            );
        }
        assert_eq!(default_rings(1.5, 60.0, 100.0), 2);
        assert_eq!(default_rings(0.0, 60.0, 100.0), 1);
    }
}
