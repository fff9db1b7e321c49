//! Random walks: horizontal displacement variance 2 Kh t; Visser's vertical scheme keeps a
//! well-mixed distribution well mixed under a depth-varying diffusivity.

use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;

#[test]
fn horizontal_random_walk_spreads_with_variance_two_kh_t() {
    let dir = scratch("walk");
    let o = SynthOptions {
        flow: Flow::Still,
        nx: 40,
        ny: 40,
        dx: 500.0,
        jitter: 0.2,
        layers: 1,
        duration: 3.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "still.nc", &o);
    let (cx, cy) = o.centre();
    let cfg = config(&dir, &format!(
        "seed=11\n[input]\nfiles=['still.nc']\n[release.generate]\ncount=20000\ncentre=[{cx},{cy}]\nradius=0.0\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=10.0\n[output]\nfile='out.nc'\ninterval='1h'\n"
    )).unwrap();
    run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    for t in 1..out.n_time {
        let expected = 2.0 * 10.0 * out.time[t];
        for (name, v) in [("x", &out.x), ("y", &out.y)] {
            let vals: Vec<f64> = (0..out.n_traj)
                .map(|p| v[out.at(p, t)] - v[out.at(p, 0)])
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var =
                vals.iter().map(|d| (d - mean) * (d - mean)).sum::<f64>() / (vals.len() - 1) as f64;
            // Standard error of a variance from 20000 samples is about 1 %.
            assert!(
                (var / expected - 1.0).abs() < 0.04,
                "{name} variance {var} vs {expected} at {} s",
                out.time[t]
            );
            assert!(
                mean.abs() < 4.0 * (expected / vals.len() as f64).sqrt(),
                "{name} mean drift {mean}"
            );
        }
    }
}

#[test]
fn well_mixed_particles_stay_well_mixed_with_depth_varying_kh() {
    let dir = scratch("wellmixed");
    let o = SynthOptions {
        flow: Flow::Still,
        nx: 6,
        ny: 6,
        dx: 500.0,
        layers: 20,
        depth: 20.0,
        kh: true,
        duration: 4.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "mix.nc", &o);
    let (cx, cy) = o.centre();
    let n = 20_000;
    let mut csv = String::from("x,y,z\n");
    for i in 0..n {
        csv += &format!(
            "{},{},{}\n",
            cx + (i % 100) as f64,
            cy + (i / 100) as f64 * 0.5,
            -20.0 * (i as f64 + 0.5) / n as f64
        );
    }
    std::fs::write(dir.join("release.csv"), csv).unwrap();
    let cfg = config(&dir, "seed=5\n[input]\nfiles=['mix.nc']\n[release]\nfile='release.csv'\n[run]\nduration='4h'\ndt='20s'\n[diffusion]\nvertical='file'\n[output]\nfile='out.nc'\ninterval='1h'\n").unwrap();
    run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    let bins = 10;
    for t in 1..out.n_time {
        let mut count = vec![0usize; bins];
        for p in 0..out.n_traj {
            let z = out.z[out.at(p, t)] as f64;
            assert!((-20.0..=0.0).contains(&z), "z {z} outside the water column");
            count[((-z / 20.0 * bins as f64) as usize).min(bins - 1)] += 1;
        }
        let expected = n as f64 / bins as f64;
        let chi2: f64 = count
            .iter()
            .map(|c| (*c as f64 - expected).powi(2) / expected)
            .sum();
        // 9 degrees of freedom: P(chi2 > 27.9) = 0.001.
        assert!(
            chi2 < 27.9,
            "not well mixed after {} s: {count:?} (chi2 {chi2:.1})",
            out.time[t]
        );
    }
    // And the particles did move: the walk is not a no-op.
    let moved = (0..out.n_traj)
        .filter(|&p| (out.z[out.at(p, out.n_time - 1)] - out.z[out.at(p, 0)]).abs() > 0.5)
        .count();
    assert!(moved > n / 2, "{moved}");
}
