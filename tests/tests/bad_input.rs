//! Bad input gets a clear error naming the file, variable or key, and nothing is lost.

use shoal_common::status;
use shoal_manager::cli::run_cli;
use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;

fn small(flow: Flow) -> SynthOptions {
    SynthOptions {
        flow,
        nx: 10,
        ny: 10,
        dx: 300.0,
        layers: 3,
        duration: 3.0 * 3600.0,
        ..Default::default()
    }
}

const RUN: &str = "[input]\nfiles=['f.nc']\n[release.generate]\ncount=50\n[run]\nduration='1h'\n[output]\nfile='out.nc'\n";

#[test]
fn a_file_without_u_is_named() {
    let dir = scratch("no_u");
    synth_file(
        &dir,
        "f.nc",
        &SynthOptions {
            omit_u: true,
            ..small(Flow::Uniform)
        },
    );
    let err = run_quiet(&config(&dir, RUN).unwrap(), 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("`u`") && msg.contains("f.nc"), "{msg}");
}

#[test]
fn a_truncated_file_is_reported_with_its_path() {
    let dir = scratch("truncated");
    let p = synth_file(&dir, "whole.nc", &small(Flow::Uniform));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(dir.join("f.nc"), &bytes[..bytes.len() / 2]).unwrap();
    let err = run_quiet(&config(&dir, RUN).unwrap(), 1).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("f.nc") && msg.contains("cannot open"), "{msg}");
    let err = run_cli(["shoal", "inspect", dir.join("f.nc").to_str().unwrap()]).unwrap_err();
    assert!(format!("{err:#}").contains("f.nc"));
}

#[test]
fn nan_velocities_flag_particles_and_never_make_nan_positions() {
    let dir = scratch("nan");
    let mut o = small(Flow::Uniform);
    o.speed = 0.3;
    // Poison a band of elements across the middle of the domain.
    o.nan_elements = (0..2 * o.nx * o.ny)
        .filter(|e| (e / (2 * o.nx)) == 5)
        .collect();
    synth_file(&dir, "f.nc", &o);
    let cfg = config(&dir, "[input]\nfiles=['f.nc']\n[release.generate]\ncount=300\n[run]\nduration='2h'\ndt='60s'\n[output]\nfile='out.nc'\ninterval='10min'\n").unwrap();
    let rep = run_quiet(&cfg, 2).unwrap();
    assert!(rep.last.bad_field > 0, "{:?}", rep.last);
    assert_eq!(rep.last.total(), 300);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    for i in 0..out.x.len() {
        assert!(
            out.x[i].is_finite() && out.y[i].is_finite(),
            "NaN position at {i}"
        );
    }
    let flagged = (0..out.n_traj)
        .filter(|&p| out.status[out.at(p, out.n_time - 1)] == status::BAD_FIELD as i8)
        .count();
    assert_eq!(flagged as u64, rep.last.bad_field);
}

#[test]
fn unknown_config_keys_are_errors_that_name_the_key() {
    let dir = scratch("badkey");
    synth_file(&dir, "f.nc", &small(Flow::Uniform));
    std::fs::write(
        dir.join("run.toml"),
        format!("{RUN}[diffusion]\nhorizontal_kh=1.0\nvertikal='none'\n"),
    )
    .unwrap();
    let err = run_cli(["shoal", "run", dir.join("run.toml").to_str().unwrap()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vertikal") && msg.contains("run.toml"),
        "{msg}"
    );
}

#[test]
fn release_points_outside_the_mesh_are_counted_and_kept() {
    let dir = scratch("outside");
    let o = small(Flow::Uniform);
    synth_file(&dir, "f.nc", &o);
    let mut csv = String::from("x,y,z,release_time\n");
    for i in 0..20 {
        let inside = i % 4 != 0;
        let x = if inside {
            o.x0 + 100.0 + 50.0 * i as f64
        } else {
            o.x0 - 5000.0
        };
        csv += &format!(
            "{x},{},-1.0,{}\n",
            o.y0 + 1000.0,
            if i == 1 { "2024-05-23T00:30:00" } else { "0" }
        );
    }
    std::fs::write(dir.join("r.csv"), csv).unwrap();
    let cfg = config(&dir, "[input]\nfiles=['f.nc']\n[release]\nfile='r.csv'\n[run]\nduration='1h'\n[output]\nfile='out.nc'\ninterval='10min'\n").unwrap();
    let rep = run_quiet(&cfg, 1).unwrap();
    assert_eq!(rep.outside, 5);
    assert_eq!(rep.last.outside_mesh, 5);
    assert_eq!(rep.last.active, 15);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    assert_eq!(out.n_traj, 20);
    for p in (0..20).step_by(4) {
        assert_eq!(out.status[out.at(p, 3)], status::OUTSIDE_MESH as i8);
    }
    // Particle 1 waits for its release time.
    assert_eq!(out.status[out.at(1, 2)], status::PENDING as i8);
    assert!(out.x[out.at(1, 2)].is_nan());
    assert_eq!(out.status[out.at(1, 3)], status::ACTIVE as i8);
    assert!(out.age[out.at(1, 3)].abs() < 1e-3);
}

#[test]
fn a_run_past_the_end_of_the_input_names_both_times() {
    let dir = scratch("toolong");
    synth_file(&dir, "f.nc", &small(Flow::Uniform));
    let cfg = config(&dir, &RUN.replace("'1h'", "'2d'")).unwrap();
    let msg = format!("{:#}", run_quiet(&cfg, 1).unwrap_err());
    assert!(
        msg.contains("2024-05-25 00:00:00") && msg.contains("2024-05-23 03:00:00"),
        "{msg}"
    );
}
