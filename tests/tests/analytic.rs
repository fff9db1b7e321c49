//! Flows with known answers: solid-body rotation, a uniform tide checked at every output, and a
//! sheared 3-D flow. Meshes are jittered and sit at UTM-sized offsets.

use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;

#[test]
fn solid_body_rotation_returns_to_the_start_within_a_metre() {
    let dir = scratch("rotation");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 60,
        ny: 60,
        dx: 400.0,
        jitter: 0.25,
        layers: 3,
        duration: 13.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "rot.nc", &o);
    let (cx, cy) = o.centre();
    let mut csv = String::from("x,y,z\n");
    for i in 0..400 {
        let r = 1000.0 + 9000.0 * (i as f64 / 400.0);
        let a = i as f64 * 2.399_963;
        csv += &format!(
            "{},{},-{}\n",
            cx + r * a.cos(),
            cy + r * a.sin(),
            (i % 19) as f64
        );
    }
    std::fs::write(dir.join("release.csv"), csv).unwrap();
    let cfg = config(&dir, "[input]\nfiles=['rot.nc']\n[release]\nfile='release.csv'\n[run]\nduration='12h'\ndt='60s'\n[output]\nfile='out.nc'\ninterval='1h'\n").unwrap();
    let rep = run_quiet(&cfg, 2).unwrap();
    assert_eq!(rep.last.active, 400);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    assert_eq!(out.n_time, 13);
    let last = out.n_time - 1;
    let mut total = 0.0;
    for p in 0..out.n_traj {
        let (i0, i1) = (out.at(p, 0), out.at(p, last));
        total += (out.x[i1] - out.x[i0]).hypot(out.y[i1] - out.y[i0]);
        // Radius is conserved all along, not only at the end.
        let r0 = (out.x[i0] - cx).hypot(out.y[i0] - cy);
        for t in 0..out.n_time {
            let i = out.at(p, t);
            let r = (out.x[i] - cx).hypot(out.y[i] - cy);
            assert!(
                (r - r0).abs() < 1.0,
                "particle {p} radius {r0} -> {r} at output {t}"
            );
        }
    }
    let mean = total / out.n_traj as f64;
    assert!(
        mean < 1.0,
        "mean distance from start after one revolution: {mean} m"
    );
}

#[test]
fn uniform_tide_matches_the_exact_integral_at_every_output() {
    let dir = scratch("tide");
    let o = SynthOptions {
        flow: Flow::Tidal,
        nx: 80,
        ny: 16,
        dx: 500.0,
        jitter: 0.2,
        layers: 2,
        duration: 13.0 * 3600.0,
        period: 12.42 * 3600.0,
        speed: 1.0,
        ..Default::default()
    };
    synth_file(&dir, "tide.nc", &o);
    let (cx, cy) = o.centre();
    let cfg = config(&dir, &format!(
        "[input]\nfiles=['tide.nc']\n[release.generate]\ncount=50\ncentre=[{cx},{cy}]\nradius=2000.0\nz=-3.0\n[run]\nduration='13h'\ndt='120s'\n[output]\nfile='out.nc'\ninterval='10min'\n"
    )).unwrap();
    run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    // The velocity the tracker sees: the f32 values written hourly, linear in between.
    let slices: Vec<f64> = (0..o.n_times())
        .map(|k| o.velocity(0.0, 0.0, 0.0, k as f64 * 3600.0).0 as f32 as f64)
        .collect();
    let exact = |t: f64| -> f64 {
        let mut s = 0.0;
        let mut k = 0;
        while (k as f64 + 1.0) * 3600.0 <= t {
            s += 0.5 * (slices[k] + slices[k + 1]) * 3600.0;
            k += 1;
        }
        let tau = t - k as f64 * 3600.0;
        if tau > 0.0 {
            let slope = (slices[k + 1] - slices[k]) / 3600.0;
            s += slices[k] * tau + 0.5 * slope * tau * tau;
        }
        s
    };
    assert_eq!(out.n_time, 79);
    let mut worst: f64 = 0.0;
    for t in 0..out.n_time {
        let dx_exact = exact(out.time[t]);
        for p in 0..out.n_traj {
            let dx = out.x[out.at(p, t)] - out.x[out.at(p, 0)];
            let dy = out.y[out.at(p, t)] - out.y[out.at(p, 0)];
            worst = worst.max((dx - dx_exact).abs()).max(dy.abs());
        }
    }
    assert!(
        worst < 1e-3,
        "worst error against the exact displacement: {worst} m"
    );
    // The tide really moved them: U T / (2 pi) = 7.1 km at the far turn.
    let far = (0..out.n_time)
        .map(|t| out.x[out.at(0, t)] - out.x[out.at(0, 0)])
        .fold(0.0, f64::max);
    assert!(far > 6500.0, "{far}");
}

#[test]
fn sheared_flow_moves_each_depth_at_its_own_speed() {
    let dir = scratch("shear");
    let o = SynthOptions {
        flow: Flow::Shear,
        nx: 40,
        ny: 10,
        dx: 500.0,
        layers: 10,
        depth: 20.0,
        duration: 3.0 * 3600.0,
        speed: 0.5,
        ..Default::default()
    };
    synth_file(&dir, "shear.nc", &o);
    let mut csv = String::from("x,y,z\n");
    // Depths between the top and bottom layer centres (sigma -0.05 .. -0.95), where linear
    // interpolation between layer centres is exact for a linear profile.
    let depths: Vec<f64> = (0..10).map(|k| -1.0 - 1.8 * k as f64).collect();
    for (k, z) in depths.iter().enumerate() {
        csv += &format!(
            "{},{},{}\n",
            o.x0 + 2000.0,
            o.y0 + 1000.0 + 300.0 * k as f64,
            z
        );
    }
    std::fs::write(dir.join("release.csv"), csv).unwrap();
    let cfg = config(&dir, "[input]\nfiles=['shear.nc']\n[release]\nfile='release.csv'\n[run]\nduration='3h'\ndt='60s'\n[output]\nfile='out.nc'\ninterval='30min'\n").unwrap();
    run_quiet(&cfg, 1).unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    for (p, z) in depths.iter().enumerate() {
        let sigma = z / 20.0;
        for t in 0..out.n_time {
            let expected = 0.5 * (1.0 + sigma) * out.time[t];
            let got = out.x[out.at(p, t)] - out.x[out.at(p, 0)];
            assert!(
                (got - expected).abs() < 1e-3 * (1.0 + expected.abs() * 1e-3),
                "depth {z}: moved {got}, expected {expected}"
            );
            assert!((out.z[out.at(p, t)] as f64 - z).abs() < 1e-4);
            assert!((out.sigma[out.at(p, t)] as f64 - sigma).abs() < 1e-5);
        }
    }
}

#[test]
fn euler_in_uniform_flow_with_sinking_is_exact() {
    let dir = scratch("euler_sinking");
    let o = SynthOptions {
        flow: Flow::Uniform,
        nx: 40,
        ny: 8,
        dx: 500.0,
        layers: 5,
        depth: 30.0,
        speed: 0.25,
        duration: 4.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "u.nc", &o);
    let (cx, cy) = o.centre();
    let cfg = config(&dir, &format!(
        "[input]\nfiles=['u.nc']\n[release.generate]\ncount=20\ncentre=[{},{cy}]\nradius=500.0\nz=-1.0\n[run]\nduration='2h'\ndt='5min'\nintegrator='euler'\n[behaviour]\nsinking_speed=0.002\n[output]\nfile='out.nc'\ninterval='30min'\n",
        cx - 6000.0
    )).unwrap();
    run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    for p in 0..out.n_traj {
        for t in 0..out.n_time {
            let (i, i0) = (out.at(p, t), out.at(p, 0));
            let secs = out.time[t];
            // f32 field values and reconstruction weights: a few micrometres per hour.
            assert!(
                (out.x[i] - out.x[i0] - 0.25 * secs).abs() < 1e-4,
                "x drift {}",
                out.x[i] - out.x[i0]
            );
            // Sinks 0.002 m/s from 1 m below the surface: 15.4 m after 2 h, inside 30 m of water.
            assert!(
                (out.z[i] as f64 - (-1.0 - 0.002 * secs)).abs() < 1e-4,
                "z {}",
                out.z[i]
            );
        }
    }
}
