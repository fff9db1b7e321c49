//! Meshes made to break the tracker: slivers with 1 % of their neighbours' area beside very
//! obtuse triangles, in solid-body rotation with no diffusion, with particles released on the
//! slivers' nodes and on circles through them. On every path (direct, in-process nodes, node
//! processes, the GPU) every particle keeps moving as the flow says and no two share a position;
//! the CPU paths agree bit for bit, and a backward run from the end returns each particle to its
//! release within 1 m. Particles once stopped for good at such vertices, silently.

use crate::fabric::run_with;
use crate::faults::Station;
use shoal_manager::run::RunOptions;
use shoal_manager::synth::{Flow, SynthOptions};
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
    for t in 0..out.n_time {
        let mut at: Vec<(f64, f64, usize)> = (0..out.n_traj)
            .map(|p| (out.x[out.at(p, t)], out.y[out.at(p, t)], p))
            .collect();
        at.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for w in at.windows(2) {
            assert!(
                (w[0].0, w[0].1) != (w[1].0, w[1].1),
                "{what}: particles {} and {} share a position at record {t}",
                w[0].2,
                w[1].2
            );
        }
    }
    out
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
