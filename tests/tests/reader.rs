//! The FVCOM reader against every quirk of DESIGN.md §3, and files concatenated in time.

use shoal_common::MeshNote;
use shoal_manager::cli::run_cli;
use shoal_manager::fvcom::{Coordinates, FvcomReader};
use shoal_manager::synth::{Flow, SynthOptions, TimeStyle};
use shoal_tests::*;

fn base() -> SynthOptions {
    SynthOptions {
        flow: Flow::Tidal,
        nx: 12,
        ny: 8,
        dx: 400.0,
        layers: 4,
        duration: 6.0 * 3600.0,
        ..Default::default()
    }
}

#[test]
fn every_quirk_reads_to_the_same_mesh_and_times() {
    let dir = scratch("quirks");
    let reference = synth_file(&dir, "ref.nc", &base());
    let (r0, m0, notes0) = FvcomReader::open(&[reference], &[]).unwrap();
    assert_eq!(r0.time_source, vec!["Itime+Itime2"]);
    assert!(notes0.contains(&MeshNote::ReorientedElements(m0.n_elements())));
    let variants: Vec<(&str, SynthOptions)> = vec![
        (
            "zero_based.nc",
            SynthOptions {
                zero_based: true,
                ..base()
            },
        ),
        (
            "no_nbe.nc",
            SynthOptions {
                no_nbe: true,
                ..base()
            },
        ),
        (
            "bad_nbe.nc",
            SynthOptions {
                corrupt_nbe: true,
                ..base()
            },
        ),
        (
            "times.nc",
            SynthOptions {
                time_style: TimeStyle::Times,
                ..base()
            },
        ),
        (
            "float_time.nc",
            SynthOptions {
                time_style: TimeStyle::Float,
                ..base()
            },
        ),
        (
            "no_ww.nc",
            SynthOptions {
                no_ww: true,
                ..base()
            },
        ),
        (
            "two_d.nc",
            SynthOptions {
                two_d: true,
                ..base()
            },
        ),
        (
            "a1u.nc",
            SynthOptions {
                a1u: true,
                ..base()
            },
        ),
    ];
    for (name, o) in variants {
        let p = synth_file(&dir, name, &o);
        let (r, m, notes) =
            FvcomReader::open(&[p], &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(m.nv, m0.nv, "{name}");
        assert_eq!(m.nbe, m0.nbe, "{name}");
        assert_eq!(r.times, r0.times, "{name}");
        assert_eq!(r.coordinates, Coordinates::Cartesian);
        match name {
            "no_nbe.nc" => assert!(notes.contains(&MeshNote::NbeMissing)),
            "bad_nbe.nc" => assert!(
                notes
                    .iter()
                    .any(|n| matches!(n, MeshNote::NbeInconsistent { .. })),
                "{notes:?}"
            ),
            "times.nc" => assert_eq!(r.time_source, vec!["Times"]),
            "float_time.nc" => {
                assert_eq!(r.time_source, vec!["time (f32)"]);
                assert!(
                    r.warnings.iter().any(|w| w.contains("single-precision")
                        && w.contains("snapped to a regular 3600 s axis")),
                    "{:?}",
                    r.warnings
                );
            }
            "no_ww.nc" => {
                assert!(!r.layout.ww);
                assert!(r.warnings.iter().any(|w| w.contains("`ww`")));
            }
            "a1u.nc" => {
                // Read from the file (no note), remapped with the reordered nodes: the same
                // coefficients the geometry gives.
                assert!(
                    !notes.contains(&MeshNote::ReconstructionComputed),
                    "{notes:?}"
                );
                // Up to the f32 node coordinates the file holds (synth computed from f64).
                let diff = |a: &[[f32; 4]], b: &[[f32; 4]]| {
                    a.iter()
                        .flatten()
                        .zip(b.iter().flatten())
                        .map(|(p, q)| (p - q).abs())
                        .fold(0.0f32, f32::max)
                };
                assert!(
                    diff(&m.a1u, &m0.a1u) < 1e-5,
                    "a1u differs by {}",
                    diff(&m.a1u, &m0.a1u)
                );
                assert!(
                    diff(&m.a2u, &m0.a2u) < 1e-5,
                    "a2u differs by {}",
                    diff(&m.a2u, &m0.a2u)
                );
            }
            "two_d.nc" => {
                assert!(!r.layout.three_d && r.layout.u == "ua");
                assert_eq!(m.vertical.n_layers, 1);
            }
            _ => {}
        }
        // Every variant still runs.
        let slice = r.read_slice(2, r.times[0]).unwrap();
        assert_eq!(slice.time, 7200.0);
    }
}

#[test]
fn spherical_meshes_with_0_360_longitudes_are_projected() {
    let dir = scratch("spherical");
    let o = SynthOptions {
        spherical: Some((237.5, 37.8)),
        ..base()
    };
    let p = synth_file(&dir, "sph.nc", &o);
    let (r, m, _) = FvcomReader::open(&[p], &[]).unwrap();
    assert_eq!(r.coordinates, Coordinates::Geographic);
    let tm = m.projection.unwrap();
    assert!((tm.lon0 - (237.5 - 360.0)).abs() < 0.05, "{}", tm.lon0);
    // Grid spacing survives the round trip through degrees (f32 lon/lat: about 1 m).
    let d = (m.x[1] - m.x[0]).hypot(m.y[1] - m.y[0]);
    assert!((d - 400.0).abs() < 2.0, "{d}");
    let text = shoal_manager::inspect::inspect(&[dir.join("sph.nc")]).unwrap();
    assert!(
        text.contains("Geographic") && text.contains("transverse Mercator"),
        "{text}"
    );
}

#[test]
fn files_concatenated_in_time_run_like_one_file() {
    let dir = scratch("concat");
    let whole = SynthOptions {
        duration: 12.0 * 3600.0,
        ..base()
    };
    synth_file(&dir, "whole.nc", &whole);
    let epoch = Some(whole.start);
    // Two halves that share their boundary slice, as FVCOM restarts often do.
    synth_file(
        &dir,
        "a.nc",
        &SynthOptions {
            duration: 6.0 * 3600.0,
            epoch,
            ..base()
        },
    );
    synth_file(
        &dir,
        "b.nc",
        &SynthOptions {
            start: whole.start + 6.0 * 3600.0,
            duration: 6.0 * 3600.0,
            epoch,
            ..base()
        },
    );
    let (r, _, _) = FvcomReader::open(&[dir.join("a.nc"), dir.join("b.nc")], &[]).unwrap();
    assert_eq!(r.times.len(), 13);
    let run = |files: &str, out: &str| {
        let cfg = config(&dir, &format!("seed=4\n[input]\nfiles={files}\n[release.generate]\ncount=100\n[run]\nduration='11h'\ndt='90s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='{out}'\ninterval='30min'\n")).unwrap();
        run_quiet(&cfg, 2).unwrap();
    };
    run("['whole.nc']", "one.nc");
    run("['a.nc', 'b.nc']", "two.nc");
    let (a, b) = (
        Output::read(&dir.join("one.nc")).unwrap(),
        Output::read(&dir.join("two.nc")).unwrap(),
    );
    assert_eq!(a.x, b.x);
    assert_eq!(a.y, b.y);
    assert_eq!(a.status, b.status);
    // Out of order is refused, naming the file.
    let err = FvcomReader::open(&[dir.join("b.nc"), dir.join("a.nc")], &[])
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("a.nc"), "{err:#}");
}

#[test]
fn the_cli_writes_inspects_and_plots() {
    let dir = scratch("cli");
    let nc = dir.join("s.nc");
    run_cli([
        "shoal",
        "synth",
        "--flow",
        "shear",
        "--nx",
        "8",
        "--ny",
        "6",
        "--duration",
        "3h",
        "-o",
        nc.to_str().unwrap(),
    ])
    .unwrap();
    let text = shoal_manager::inspect::inspect(&[nc.clone()]).unwrap();
    assert!(
        text.contains("96 elements") && text.contains("4 slices"),
        "{text}"
    );
    std::fs::write(dir.join("run.toml"), "[input]\nfiles=['s.nc']\n[release.generate]\ncount=20\n[run]\nduration='2h'\n[output]\nfile='o.nc'\n").unwrap();
    run_cli([
        "shoal",
        "run",
        "--quiet",
        dir.join("run.toml").to_str().unwrap(),
    ])
    .unwrap();
    let png = dir.join("o.png");
    run_cli([
        "shoal",
        "plot",
        dir.join("o.nc").to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
    ])
    .unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 2000);
}
