//! Meshes made to break the tracker: slivers with 1 % of their neighbours' area beside very
//! obtuse triangles, in solid-body rotation with no diffusion, with particles released on the
//! slivers' nodes and on circles through them. On every path (direct, in-process nodes, node
//! processes, the GPU) every particle keeps moving as the flow says and no two share a position;
//! the CPU paths agree bit for bit, and a backward run from the end returns each particle to its
//! release within 1 m. Particles once stopped for good at such vertices, silently.
//!
//! Then meshes drawn from seeds, with islands, headlands, concave coasts and channels one
//! element wide besides the slivers, in rotation, uniform and sheared flows (see below).

use crate::fabric::run_with;
use crate::faults::Station;
use shoal_manager::run::RunOptions;
use shoal_manager::tools::synth::{Flow, Grid, SynthOptions};
use shoal_tests::*;
use std::path::Path;

fn slivered() -> SynthOptions {
    SynthOptions {
        flow: Flow::Rotation,
        nx: 36,
        ny: 36,
        dx: 250.0,
        jitter: 0.15,
        slivers: Some(0.01),
        layers: 2,
        period: 6.0 * 3600.0,
        duration: 7.0 * 3600.0,
        ..Default::default()
    }
}

/// The slivers' nodes inside the circle the rotation keeps in the domain, and eleven more points
/// on the circle through each: (x, y) and the circle's radius.
fn release(o: &SynthOptions) -> Vec<(f64, f64, f64)> {
    let g = o.grid();
    let (cx, cy) = o.centre();
    let mut points = Vec::new();
    for t in &g.nv {
        let (a, b, c) = (t[0], t[1], t[2]);
        let area = 0.5
            * ((g.x[b] - g.x[a]) * (g.y[c] - g.y[a]) - (g.x[c] - g.x[a]) * (g.y[b] - g.y[a])).abs();
        if area > 0.05 * 0.5 * o.dx * o.dx {
            continue;
        }
        for n in [a, b, c] {
            let r = (g.x[n] - cx).hypot(g.y[n] - cy);
            if r > 0.45 * o.nx as f64 * o.dx {
                continue;
            }
            let a0 = (g.y[n] - cy).atan2(g.x[n] - cx);
            points.push((g.x[n], g.y[n], r));
            for k in 1..12 {
                let a = a0 + k as f64 * std::f64::consts::TAU / 12.0;
                points.push((cx + r * a.cos(), cy + r * a.sin(), r));
            }
        }
    }
    points
}

/// The file's particles, checked: always active, each hour's move a sixth of a revolution (a
/// chord as long as the radius), and no two at one point at any record.
fn check(file: &Path, points: &[(f64, f64, f64)], what: &str) -> Output {
    let out = Output::read(file).unwrap();
    assert_eq!(out.n_traj, points.len(), "{what}");
    assert!(
        out.status.iter().all(|s| *s == 0),
        "{what}: a particle stopped being active"
    );
    for (p, &(_, _, r)) in points.iter().enumerate() {
        for t in 1..out.n_time {
            let (k0, k1) = (out.at(p, t - 1), out.at(p, t));
            let moved = (out.x[k1] - out.x[k0]).hypot(out.y[k1] - out.y[k0]);
            assert!(
                (moved - r).abs() < 1.0,
                "{what}: particle {p} moved {moved} m in hour {t}, not {r} m"
            );
        }
    }
    if let Some(&(t, p, q)) = shared_positions(&out).first() {
        panic!("{what}: particles {p} and {q} share a position at record {t}");
    }
    out
}

/// Every pair of particles at one position, bit for bit: (record, particle, particle).
fn shared_positions(out: &Output) -> Vec<(usize, usize, usize)> {
    let mut shared = Vec::new();
    for t in 0..out.n_time {
        let mut at: Vec<(f64, f64, usize)> = (0..out.n_traj)
            .map(|p| (out.x[out.at(p, t)], out.y[out.at(p, t)], p))
            .collect();
        at.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for v in at.windows(2) {
            if (v[0].0, v[0].1) == (v[1].0, v[1].1) {
                shared.push((t, v[0].2, v[1].2));
            }
        }
    }
    shared
}

#[test]
fn slivers_and_vertices_trap_no_particle_on_any_path() {
    let dir = scratch("geometry_slivers");
    let o = slivered();
    synth_file(&dir, "slivers.nc", &o);
    let points = release(&o);
    assert!(points.len() >= 100, "only {} release points", points.len());
    let mut csv = String::from("x,y,z\n");
    for (x, y, _) in &points {
        csv.push_str(&format!("{x},{y},-1.0\n"));
    }
    std::fs::write(dir.join("release.csv"), csv).unwrap();
    let toml = |out: &str, extra: &str| {
        format!("seed=4\n[input]\nfiles=['slivers.nc']\n[release]\nfile='release.csv'\n[run]\nduration='6h'\ndt='60s'\n{extra}[output]\nfile='{out}'\ninterval='1h'\n")
    };
    run_with(
        &dir,
        &toml("direct.nc", ""),
        RunOptions {
            direct: true,
            threads: Some(2),
            ..Default::default()
        },
    );
    let direct = check(&dir.join("direct.nc"), &points, "direct");
    // One revolution: back where they started, up to the file's single-precision velocities
    // and node coordinates (0.1 m here).
    for (p, &(x, y, _)) in points.iter().enumerate() {
        let k = direct.at(p, direct.n_time - 1);
        let d = (direct.x[k] - x).hypot(direct.y[k] - y);
        assert!(
            d < 1.0,
            "particle {p} ends a revolution {d} m from its start"
        );
    }
    run_with(
        &dir,
        &toml("nodes.nc", ""),
        RunOptions {
            nodes: Some(3),
            ..Default::default()
        },
    );
    files_bit_identical(&dir.join("direct.nc"), &dir.join("nodes.nc"), false).unwrap();
    let mut station = Station::new(&dir, "slivers");
    station.start("s0", None);
    station.start("s1", None);
    station.toml(&toml, "processes.toml", "processes.nc", 2);
    station.run("processes.toml");
    files_bit_identical(&dir.join("direct.nc"), &dir.join("processes.nc"), false).unwrap();

    // Backward from the ends, on the CPU.
    let mut ends = String::from("x,y,z\n");
    for p in 0..direct.n_traj {
        let k = direct.at(p, direct.n_time - 1);
        ends.push_str(&format!(
            "{},{},{}\n",
            direct.x[k], direct.y[k], direct.z[k]
        ));
    }
    std::fs::write(dir.join("ends.csv"), ends).unwrap();
    run_with(
        &dir,
        "seed=4\n[input]\nfiles=['slivers.nc']\n[release]\nfile='ends.csv'\n[run]\nstart='2024-05-23 06:00:00'\nduration='6h'\ndt='60s'\ndirection='backward'\n[output]\nfile='backward.nc'\ninterval='1h'\n",
        RunOptions {
            direct: true,
            ..Default::default()
        },
    );
    let back = Output::read(&dir.join("backward.nc")).unwrap();
    for (p, &(x, y, _)) in points.iter().enumerate() {
        let k = back.at(p, back.n_time - 1);
        let d = (back.x[k] - x).hypot(back.y[k] - y);
        assert!(d < 1.0, "particle {p} comes back {d} m from its release");
    }

    // The GPU, where one is (lavapipe in CI): the same checks, and within 1 cm of the CPU.
    if crate::gpu::context().is_some() {
        run_with(
            &dir,
            &toml("gpu.nc", "device='gpu'\n"),
            RunOptions {
                direct: true,
                ..Default::default()
            },
        );
        let gpu = check(&dir.join("gpu.nc"), &points, "gpu");
        let worst = (0..gpu.x.len())
            .map(|k| (gpu.x[k] - direct.x[k]).hypot(gpu.y[k] - direct.y[k]))
            .fold(0.0f64, f64::max);
        assert!(worst < 0.01, "the GPU parts from the CPU by {worst} m");
    }
}

// ---------------------------------------------------------------------------------------------
// Generated meshes: seeded generators in the spirit of property tests. Each seed draws a mesh
// (size, jitter, slivers of 1-5 % of their neighbours' area with angles under 1 degree beside
// triangles near 180 degrees, islands, a headland with a concave coast and land corners, a
// channel one element wide between two islands) and a flow (solid-body rotation, uniform or
// sheared along a drawn heading), releases particles on the slivers' nodes, on vertices, on edges
// (the coast's too) and inside elements, and checks on every path, with no diffusion:
// - no active particle is motionless between two records where the flow moves it (a particle
//   pressed against land where no direction along the coast lies downstream is not moved by
//   its flow, and is told apart);
// - no two particles share a position at any record;
// - nothing is ever on land: every record lies in the water;
// - particles that never came near land return to their release within 1 m when run backward
//   from their ends (the rest reflected, which does not reverse, and are counted);
// - in-process nodes and node processes give the direct path's file bit for bit, and the GPU
//   (where one is) passes the same checks.
// SHOAL_GEOMETRY_SEEDS=N draws N meshes instead of the suite's few, to search further.

/// splitmix64: a small seeded generator, the same draws on every machine.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// In `lo..=hi`.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.unit() * (hi - lo + 1) as f64) as usize
    }
}

/// Land features on an `n` x `n` grid of squares, each kept a square clear of the others so
/// that no vertex joins two separate stretches of water.
struct Shore {
    n: usize,
    land: Vec<bool>,
    taken: Vec<bool>,
}

impl Shore {
    /// Places a feature (rectangles `(ix, jy, w, h)` of land) if its squares and the square
    /// around them are clear; `area` is the feature's whole extent (a channel between two
    /// islands included).
    fn place(
        &mut self,
        rects: &[(usize, usize, usize, usize)],
        area: (usize, usize, usize, usize),
    ) -> bool {
        let n = self.n;
        let (ax, ay, aw, ah) = area;
        if ax + aw > n || ay + ah > n {
            return false;
        }
        let lo = |v: usize| v.saturating_sub(1);
        for j in lo(ay)..(ay + ah + 1).min(n) {
            for i in lo(ax)..(ax + aw + 1).min(n) {
                if self.taken[j * n + i] {
                    return false;
                }
            }
        }
        for j in ay..ay + ah {
            for i in ax..ax + aw {
                self.taken[j * n + i] = true;
            }
        }
        for &(x, y, w, h) in rects {
            for j in y..y + h {
                for i in x..x + w {
                    self.land[j * n + i] = true;
                }
            }
        }
        true
    }
}

fn generated(seed: u64) -> SynthOptions {
    let mut d = Draw(seed ^ 0x5b0a_16e0);
    let n = d.int(20, 28);
    let slivers = [0.01, 0.02, 0.05][d.int(0, 2)];
    // A third of the meshes are regular, and half the flows run along the mesh's lines (its
    // rows, columns or diagonals): particles released on vertices then pass through vertex
    // after vertex, exactly.
    let jitter = if d.unit() < 1.0 / 3.0 {
        0.0
    } else {
        0.3 * d.unit()
    };
    let heading = if d.unit() < 0.5 {
        45.0 * d.int(0, 7) as f64
    } else {
        360.0 * d.unit()
    };
    let mut s = Shore {
        n,
        land: vec![false; n * n],
        taken: vec![false; n * n],
    };
    // A headland from a side with an arm at its tip: a concave coast with land corners.
    for _ in 0..20 {
        let (len, wide, arm) = (d.int(3, n / 3), d.int(2, 3), d.int(2, 4));
        let at = d.int(2, n - 8);
        // Along x from the west side, then turned by the side drawn.
        let rects = [(0, at, len, wide), (len - wide, at + wide, wide, arm)];
        let turn = |r: (usize, usize, usize, usize), side: usize| match side {
            0 => r,
            1 => (n - r.0 - r.2, r.1, r.2, r.3),
            2 => (r.1, r.0, r.3, r.2),
            _ => (r.1, n - r.0 - r.2, r.3, r.2),
        };
        let side = d.int(0, 3);
        let rects: Vec<_> = rects.iter().map(|&r| turn(r, side)).collect();
        let area = turn((0, at, len, wide + arm), side);
        if s.place(&rects, area) {
            break;
        }
    }
    // A channel one element wide between two islands.
    for _ in 0..20 {
        let (len, at, across) = (d.int(4, 8), d.int(2, n - 10), d.int(3, n - 8));
        let mut rects = vec![(at, across, len, 2), (at, across + 3, len, 2)];
        let mut area = (at, across, len, 5);
        if d.unit() < 0.5 {
            rects = rects.iter().map(|r| (r.1, r.0, r.3, r.2)).collect();
            area = (area.1, area.0, area.3, area.2);
        }
        if s.place(&rects, area) {
            break;
        }
    }
    // Islands of one to three squares a side.
    for _ in 0..d.int(1, 3) {
        for _ in 0..20 {
            let (w, h) = (d.int(1, 3), d.int(1, 3));
            let (x, y) = (d.int(2, n - 2 - w), d.int(2, n - 2 - h));
            if s.place(&[(x, y, w, h)], (x, y, w, h)) {
                break;
            }
        }
    }
    let flow = [Flow::Rotation, Flow::Uniform, Flow::Shear][(seed % 3) as usize];
    SynthOptions {
        flow,
        nx: n,
        ny: n,
        dx: 250.0,
        jitter,
        slivers: Some(slivers),
        land: (0..n * n)
            .filter(|&k| s.land[k])
            .map(|k| (k % n, k / n))
            .collect(),
        heading,
        speed: 0.3,
        layers: 2,
        period: 6.0 * 3600.0,
        duration: 3.0 * 3600.0,
        ..Default::default()
    }
}

/// The mesh's water, for the checks: its triangles in bins of one square, and its land edges
/// with the normal pointing onto land.
struct Water {
    g: Grid,
    x0: f64,
    y0: f64,
    dx: f64,
    n: usize,
    bins: Vec<Vec<usize>>,
    coast: Vec<([f64; 2], [f64; 2], [f64; 2])>,
}

impl Water {
    fn new(o: &SynthOptions) -> Water {
        // Node coordinates as the file holds them, in single precision.
        let mut g = o.grid();
        for v in g.x.iter_mut().chain(g.y.iter_mut()) {
            *v = *v as f32 as f64;
        }
        let n = o.nx + 2;
        let (x0, y0, dx) = (o.x0 - o.dx, o.y0 - o.dx, o.dx);
        let mut bins = vec![Vec::new(); n * n];
        let mut edges: std::collections::HashMap<(usize, usize), (usize, usize)> =
            Default::default();
        for (e, t) in g.nv.iter().enumerate() {
            let xs = t.map(|k| g.x[k]);
            let ys = t.map(|k| g.y[k]);
            let bin = |v: f64, lo: f64| (((v - lo) / dx).floor().max(0.0) as usize).min(n - 1);
            // Bounding boxes a metre wider: points just outside an edge find its triangle.
            let lo = |v: [f64; 3], o: f64| bin(v.iter().copied().fold(f64::MAX, f64::min) - 1.0, o);
            let hi = |v: [f64; 3], o: f64| bin(v.iter().copied().fold(f64::MIN, f64::max) + 1.0, o);
            let (i0, i1, j0, j1) = (lo(xs, x0), hi(xs, x0), lo(ys, y0), hi(ys, y0));
            for j in j0..=j1 {
                for i in i0..=i1 {
                    bins[j * n + i].push(e);
                }
            }
            for k in 0..3 {
                let (a, b) = (t[k], t[(k + 1) % 3]);
                edges
                    .entry((a.min(b), a.max(b)))
                    .or_insert((0, t[(k + 2) % 3]))
                    .0 += 1;
            }
        }
        let mut coast = Vec::new();
        for (&(a, b), &(count, far)) in &edges {
            if count == 1 {
                let (pa, pb) = ([g.x[a], g.y[a]], [g.x[b], g.y[b]]);
                let len = (pb[0] - pa[0]).hypot(pb[1] - pa[1]);
                let mut nrm = [(pb[1] - pa[1]) / len, -(pb[0] - pa[0]) / len];
                // Onto land: away from the triangle's third node.
                if nrm[0] * (g.x[far] - pa[0]) + nrm[1] * (g.y[far] - pa[1]) > 0.0 {
                    nrm = [-nrm[0], -nrm[1]];
                }
                coast.push((pa, pb, nrm));
            }
        }
        Water {
            g,
            x0,
            y0,
            dx,
            n,
            bins,
            coast,
        }
    }

    /// In some triangle, up to `slack` metres outside its edges.
    fn wet(&self, x: f64, y: f64, slack: f64) -> bool {
        let i = ((x - self.x0) / self.dx).floor();
        let j = ((y - self.y0) / self.dx).floor();
        if i < 0.0 || j < 0.0 || i >= self.n as f64 || j >= self.n as f64 {
            return false;
        }
        self.bins[j as usize * self.n + i as usize]
            .iter()
            .any(|&e| {
                let t = self.g.nv[e];
                (0..3).all(|k| {
                    let (a, b) = (t[k], t[(k + 1) % 3]);
                    let (ex, ey) = (self.g.x[b] - self.g.x[a], self.g.y[b] - self.g.y[a]);
                    // Clockwise triangles: inside is to the right of each edge.
                    let cross = ex * (y - self.g.y[a]) - ey * (x - self.g.x[a]);
                    cross <= slack * ex.hypot(ey)
                })
            })
    }

    /// The land edges within `r` of a point: their (unit tangent, normal onto land).
    fn near(&self, x: f64, y: f64, r: f64) -> Vec<([f64; 2], [f64; 2])> {
        self.coast
            .iter()
            .filter(|(a, b, _)| segment_distance([x, y], *a, *b) < r)
            .map(|(a, b, nrm)| {
                let len = (b[0] - a[0]).hypot(b[1] - a[1]);
                ([(b[0] - a[0]) / len, (b[1] - a[1]) / len], *nrm)
            })
            .collect()
    }

    fn to_land(&self, x: f64, y: f64) -> f64 {
        self.coast
            .iter()
            .map(|(a, b, _)| segment_distance([x, y], *a, *b))
            .fold(f64::MAX, f64::min)
    }

    /// Pressed against land with nowhere to go: the flow `u` pushes onto some land edge within
    /// `reach` (a step: a particle that far from a wall square to the flow bounces back to where
    /// it was), and no direction along those edges that leaves none of them has the flow behind
    /// it.
    fn pinned(&self, x: f64, y: f64, u: (f64, f64), reach: f64) -> bool {
        let near = self.near(x, y, reach);
        let onto = |d: [f64; 2], nrm: &[f64; 2]| d[0] * nrm[0] + d[1] * nrm[1] > 1e-9;
        if !near.iter().any(|(_, nrm)| onto([u.0, u.1], nrm)) {
            return false;
        }
        let speed = u.0.hypot(u.1);
        !near.iter().any(|(t, _)| {
            [*t, [-t[0], -t[1]]].iter().any(|d| {
                !near.iter().any(|(_, nrm)| onto(*d, nrm)) && d[0] * u.0 + d[1] * u.1 > 1e-3 * speed
            })
        })
    }
}

fn segment_distance(p: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
    let s = (((p[0] - a[0]) * ex + (p[1] - a[1]) * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
    (p[0] - a[0] - s * ex).hypot(p[1] - a[1] - s * ey)
}

/// Release points: the slivers' nodes, vertices (the coast's among them), edge midpoints and
/// points inside elements, all distinct.
fn generated_release(o: &SynthOptions, g: &Grid, seed: u64) -> Vec<(f64, f64)> {
    let mut d = Draw(seed.wrapping_mul(31) ^ 0xe1e_a5e);
    let mut points = Vec::new();
    let area = |t: &[usize; 3]| {
        0.5 * ((g.x[t[1]] - g.x[t[0]]) * (g.y[t[2]] - g.y[t[0]])
            - (g.x[t[2]] - g.x[t[0]]) * (g.y[t[1]] - g.y[t[0]]))
            .abs()
    };
    for t in &g.nv {
        if area(t) < 0.1 * 0.5 * o.dx * o.dx {
            points.extend(t.iter().map(|&k| (g.x[k], g.y[k])));
        }
    }
    for _ in 0..60 {
        let k = d.int(0, g.x.len() - 1);
        points.push((g.x[k], g.y[k]));
    }
    for _ in 0..60 {
        let t = g.nv[d.int(0, g.nv.len() - 1)];
        let k = d.int(0, 2);
        let (a, b) = (t[k], t[(k + 1) % 3]);
        points.push((0.5 * (g.x[a] + g.x[b]), 0.5 * (g.y[a] + g.y[b])));
    }
    for _ in 0..150 {
        let t = g.nv[d.int(0, g.nv.len() - 1)];
        let (mut r, mut s) = (d.unit(), d.unit());
        if r + s > 1.0 {
            (r, s) = (1.0 - r, 1.0 - s);
        }
        let w = [1.0 - r - s, r, s];
        points.push((
            (0..3).map(|k| w[k] * g.x[t[k]]).sum(),
            (0..3).map(|k| w[k] * g.y[t[k]]).sum(),
        ));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    points.dedup();
    points
}

/// The properties, on one file: per particle, whether it kept clear of land (by more than a
/// step) at every record.
fn check_generated(
    w: &Water,
    o: &SynthOptions,
    file: &Path,
    points: &[(f64, f64)],
    what: &str,
) -> (Output, Vec<bool>) {
    let out = Output::read(file).unwrap();
    assert_eq!(out.n_traj, points.len(), "{what}");
    let dt = out.time[1] - out.time[0];
    // The GPU holds positions in single precision from the host element's centroid (hundreds of
    // metres away: 1e-5 m a rounding), and a reflection compounds a few: under a millimetre.
    let slack = if what.ends_with("gpu") { 1e-3 } else { 1e-6 };
    let mut clear = vec![true; out.n_traj];
    let (mut pinned, mut gathered) = (0, 0);
    for (p, clear_p) in clear.iter_mut().enumerate() {
        for t in 0..out.n_time {
            let k = out.at(p, t);
            let (x, y) = (out.x[k], out.y[k]);
            assert_eq!(
                out.status[k], 0,
                "{what}: particle {p} is not active at record {t}"
            );
            assert!(
                w.wet(x, y, slack),
                "{what}: particle {p} is on land at record {t}: ({x}, {y})"
            );
            let sigma = out.sigma[k] as f64;
            let u = o.velocity(x, y, sigma, 0.0);
            let step = u.0.hypot(u.1) * dt;
            if w.to_land(x, y) < 2.0 * step + 1.0 {
                *clear_p = false;
            }
            if t == 0 {
                continue;
            }
            let k0 = out.at(p, t - 1);
            let (x0, y0) = (out.x[k0], out.y[k0]);
            let u0 = o.velocity(x0, y0, sigma, 0.0);
            let moved = (x - x0).hypot(y - y0);
            if moved < 1e-3 && u0.0.hypot(u0.1) * dt > 1.0 {
                assert!(
                    w.pinned(x0, y0, u0, u0.0.hypot(u0.1) * dt + 1.0),
                    "{what}: particle {p} stands still at ({x0}, {y0}) from record {} to {t}, in a flow of {:.3} m/s that no land stops (land {:.3} m away; edges within a step, as tangent and normal onto land: {:?})",
                    t - 1,
                    u0.0.hypot(u0.1),
                    w.to_land(x0, y0),
                    w.near(x0, y0, u0.0.hypot(u0.1) * dt + 1.0)
                );
                pinned += 1;
            }
        }
    }
    for (t, p, q) in shared_positions(&out) {
        // Reflection folds: particles the flow presses into a concave corner of the coast
        // gather there, and in single precision (the GPU) meet. Anywhere else, a shared
        // position is particles stopped together.
        let k = out.at(p, t);
        let (x, y) = (out.x[k], out.y[k]);
        let u = o.velocity(x, y, out.sigma[k] as f64, 0.0);
        let reach = u.0.hypot(u.1) * dt + 1.0;
        assert!(
            w.to_land(x, y) < reach && w.near(x, y, reach).len() >= 2,
            "{what}: particles {p} and {q} share a position at record {t}: ({x}, {y}), {:.3} m from land",
            w.to_land(x, y)
        );
        gathered += 1;
    }
    eprintln!(
        "{what}: {} particles, {} kept clear of land, {pinned} record intervals pressed against land, {gathered} positions shared in corners of the coast",
        out.n_traj,
        clear.iter().filter(|c| **c).count()
    );
    (out, clear)
}

#[test]
fn generated_meshes_with_slivers_islands_channels_and_land_corners_keep_every_property_on_every_path(
) {
    let dir = scratch("geometry_generated");
    let seeds: Vec<u64> = match std::env::var("SHOAL_GEOMETRY_SEEDS") {
        Ok(v) => {
            // N (seeds 0 to N - 1), or A-B (seeds A to B).
            let n = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .expect("SHOAL_GEOMETRY_SEEDS: N or A-B")
            };
            match v.split_once('-') {
                Some((a, b)) => (n(a)..=n(b)).collect(),
                None => (0..n(&v)).collect(),
            }
        }
        Err(_) => (0..6).collect(),
    };
    let make_toml = |file: String, release: String| {
        move |out: &str, extra: &str| {
            format!("seed=4\n[input]\nfiles=['{file}']\n[release]\nfile='{release}'\n[run]\nduration='2h'\ndt='60s'\n{extra}[output]\nfile='{out}'\ninterval='60s'\n")
        }
    };
    let mut station = Station::new(&dir, "generated");
    station.start("g0", None);
    station.start("g1", None);
    let gpu = crate::gpu::context().is_some();
    for &seed in &seeds {
        let o = generated(seed);
        let file = format!("mesh{seed}.nc");
        synth_file(&dir, &file, &o);
        let w = Water::new(&o);
        let points = generated_release(&o, &w.g, seed);
        let mut csv = String::from("x,y,z\n");
        for (x, y) in &points {
            csv.push_str(&format!("{x},{y},-1.0\n"));
        }
        let release = format!("release{seed}.csv");
        std::fs::write(dir.join(&release), csv).unwrap();
        let toml = make_toml(file.clone(), release);
        let what = |path: &str| {
            format!(
                "seed {seed} ({:?} flow heading {:.0}, {n} x {n} squares, {} of land, jitter {:.2}, slivers {:?}) {path}",
                o.flow,
                o.heading,
                o.land.len(),
                o.jitter,
                o.slivers,
                n = o.nx
            )
        };
        let direct = dir.join(format!("direct{seed}.nc"));
        run_with(
            &dir,
            &toml(direct.file_name().unwrap().to_str().unwrap(), ""),
            RunOptions {
                direct: true,
                threads: Some(2),
                ..Default::default()
            },
        );
        let (out, clear) = check_generated(&w, &o, &direct, &points, &what("direct"));
        let n_clear = clear.iter().filter(|c| **c).count();
        assert!(
            n_clear >= 20,
            "{}: only {n_clear} of {} particles kept clear of land",
            what("direct"),
            points.len()
        );

        // Backward from the ends: those that kept clear come back within 1 m.
        let mut ends = String::from("x,y,z\n");
        for p in 0..out.n_traj {
            let k = out.at(p, out.n_time - 1);
            ends.push_str(&format!("{},{},{}\n", out.x[k], out.y[k], out.z[k]));
        }
        let ends_file = format!("ends{seed}.csv");
        std::fs::write(dir.join(&ends_file), ends).unwrap();
        run_with(
            &dir,
            &format!("seed=4\n[input]\nfiles=['{file}']\n[release]\nfile='{ends_file}'\n[run]\nstart='2024-05-23 02:00:00'\nduration='2h'\ndt='60s'\ndirection='backward'\n[output]\nfile='back{seed}.nc'\ninterval='1h'\n"),
            RunOptions {
                direct: true,
                ..Default::default()
            },
        );
        let back = Output::read(&dir.join(format!("back{seed}.nc"))).unwrap();
        for (p, &(x, y)) in points.iter().enumerate().filter(|(p, _)| clear[*p]) {
            let k = back.at(p, back.n_time - 1);
            let d = (back.x[k] - x).hypot(back.y[k] - y);
            assert!(
                d < 1.0,
                "{}: particle {p} comes back {d} m from its release",
                what("backward")
            );
        }

        let nodes = format!("nodes{seed}.nc");
        run_with(
            &dir,
            &toml(&nodes, ""),
            RunOptions {
                nodes: Some(3),
                ..Default::default()
            },
        );
        files_bit_identical(&direct, &dir.join(&nodes), false).unwrap();
        let processes = format!("processes{seed}.nc");
        station.toml(&toml, &format!("processes{seed}.toml"), &processes, 2);
        station.run(&format!("processes{seed}.toml"));
        files_bit_identical(&direct, &dir.join(&processes), false).unwrap();

        if gpu {
            let on_gpu = format!("gpu{seed}.nc");
            run_with(
                &dir,
                &toml(&on_gpu, "device='gpu'\n"),
                RunOptions {
                    direct: true,
                    ..Default::default()
                },
            );
            check_generated(&w, &o, &dir.join(&on_gpu), &points, &what("gpu"));
        }
    }
}
