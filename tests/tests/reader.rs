//! The FVCOM reader against every quirk of DESIGN.md §3, and files concatenated in time.

use shoal_common::{MeshNote, TransverseMercator};
use shoal_manager::cli::run_cli;
use shoal_manager::input::fvcom::{Coordinates, FvcomReader};
use shoal_manager::tools::synth::{Flow, SynthOptions, TimeStyle};
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
                let diff = |k: usize| {
                    (0..m.n_elements())
                        .flat_map(|e| m.lsq(e)[k].into_iter().zip(m0.lsq(e)[k]))
                        .map(|(p, q)| (p - q).abs())
                        .fold(0.0f32, f32::max)
                };
                assert!(diff(0) < 1e-5, "a1u differs by {}", diff(0));
                assert!(diff(1) < 1e-5, "a2u differs by {}", diff(1));
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
    let text = shoal_manager::tools::inspect::inspect(&[dir.join("sph.nc")]).unwrap();
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
    // Given out of order, they are taken in time order.
    let (rev, _, _) = FvcomReader::open(&[dir.join("b.nc"), dir.join("a.nc")], &[]).unwrap();
    assert_eq!(rev.times, r.times);
    assert!(rev.path(0).ends_with("a.nc"));

    // Three files, each repeating the previous one's last record (as restarts write it), given
    // in no order: the run equals the one-file run value by value.
    let part = |name: &str, from_h: f64, hours: f64| {
        synth_file(
            &dir,
            name,
            &SynthOptions {
                start: whole.start + from_h * 3600.0,
                duration: hours * 3600.0,
                epoch,
                ..base()
            },
        )
    };
    part("p1.nc", 0.0, 4.0);
    part("p2.nc", 4.0, 5.0);
    part("p3.nc", 9.0, 3.0);
    run("['p3.nc', 'p1.nc', 'p2.nc']", "three.nc");
    let c = Output::read(&dir.join("three.nc")).unwrap();
    assert_eq!((a.x, a.y, a.z, a.status), (c.x, c.y, c.z, c.status));

    // A gap in time, or an overlap of more than the repeated record, names both files.
    part("late.nc", 8.0, 4.0);
    let err = FvcomReader::open(&[dir.join("a.nc"), dir.join("late.nc")], &[])
        .err()
        .unwrap();
    let e = format!("{err:#}");
    assert!(
        e.contains("a gap") && e.contains("a.nc") && e.contains("late.nc"),
        "{e}"
    );
    part("early.nc", 4.0, 4.0);
    let err = FvcomReader::open(&[dir.join("a.nc"), dir.join("early.nc")], &[])
        .err()
        .unwrap();
    let e = format!("{err:#}");
    assert!(
        e.contains("overlap") && e.contains("a.nc") && e.contains("early.nc"),
        "{e}"
    );
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
    let text = shoal_manager::tools::inspect::inspect(std::slice::from_ref(&nc)).unwrap();
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

/// A surface-only file as oil-spill and search tools publish them (2-D `u`/`v` with a
/// `_FillValue` of 999, no `h`, sigma or `zeta`), with a single time record: a steady flow.
fn surface_only_steady(dir: &std::path::Path) -> SynthOptions {
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 60,
        ny: 60,
        dx: 400.0,
        jitter: 0.25,
        surface_only: true,
        duration: 0.0,
        ..Default::default()
    };
    synth_file(dir, "surface.nc", &o);
    o
}

#[test]
fn a_surface_only_steady_rotation_brings_particles_back_after_a_revolution() {
    let dir = scratch("surface_only");
    let o = surface_only_steady(&dir);
    let text = shoal_manager::tools::inspect::inspect(&[dir.join("surface.nc")]).unwrap();
    assert!(
        text.contains("surface only: no bathymetry") && text.contains("1 slices"),
        "{text}"
    );
    assert!(text.contains("a steady flow"), "{text}");
    let (r, _, _) = FvcomReader::open(&[dir.join("surface.nc")], &[]).unwrap();
    assert!(r.surface_only && r.times.len() == 1 && !r.layout.three_d);
    let (cx, cy) = o.centre();
    // A start years after the record's time: a steady field holds at every time.
    let run = |extra: &str| {
        config(&dir, &format!("[input]\nfiles=['surface.nc']\n[release.generate]\ncount=400\ncentre=[{cx},{cy}]\nradius=9000.0\n[run]\nstart='2031-02-03T04:05:06'\nduration='12h'\ndt='60s'\n{extra}[output]\nfile='out.nc'\ninterval='1h'\n"))
    };
    let rep = run_quiet(&run("").unwrap(), 2).unwrap();
    assert_eq!(rep.last.active, 400);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    assert_eq!(out.n_time, 13);
    let last = out.n_time - 1;
    let mut worst: f64 = 0.0;
    let mut moved: f64 = 0.0;
    for p in 0..out.n_traj {
        let (i0, i1) = (out.at(p, 0), out.at(p, last));
        worst = worst.max((out.x[i1] - out.x[i0]).hypot(out.y[i1] - out.y[i0]));
        let half = out.at(p, last / 2);
        moved = moved.max((out.x[half] - out.x[i0]).hypot(out.y[half] - out.y[i0]));
        for t in 0..out.n_time {
            assert_eq!(out.z[out.at(p, t)], 0.0, "particle {p} left the surface");
        }
    }
    eprintln!(
        "surface-only steady rotation: farthest from its start after a revolution {worst:.4} m"
    );
    assert!(
        worst < 1.0,
        "farthest from its start after a revolution: {worst} m"
    );
    assert!(
        moved > 10_000.0,
        "half a revolution moved at most {moved} m"
    );

    // What needs a water column is refused, naming the key.
    for (extra, key) in [
        (
            "[diffusion]\nvertical='constant'\nvertical_kh=1e-3\n",
            "diffusion.vertical",
        ),
        (
            "[behaviour]\nsinking_speed=0.001\n",
            "behaviour.sinking_speed",
        ),
    ] {
        let e = format!("{:#}", run_quiet(&run(extra).unwrap(), 1).unwrap_err());
        assert!(e.contains(key) && e.contains("surface only"), "{e}");
    }
    let deep = config(&dir, &format!("[input]\nfiles=['surface.nc']\n[release.generate]\ncount=10\ncentre=[{cx},{cy}]\nradius=900.0\nz=-2.0\n[run]\nduration='1h'\n[output]\nfile='deep.nc'\n")).unwrap();
    let e = format!("{:#}", run_quiet(&deep, 1).unwrap_err());
    assert!(
        e.contains("release.generate.z") && e.contains("surface only"),
        "{e}"
    );
    // A steady field needs to be told how long to run.
    let endless = config(&dir, &format!("[input]\nfiles=['surface.nc']\n[release.generate]\ncount=10\ncentre=[{cx},{cy}]\nradius=900.0\n[output]\nfile='endless.nc'\n")).unwrap();
    let e = format!("{:#}", run_quiet(&endless, 1).unwrap_err());
    assert!(
        e.contains("run.duration") && e.contains("surface.nc"),
        "{e}"
    );
}

#[test]
fn a_variable_of_the_wrong_shape_is_refused_when_the_file_opens_naming_it() {
    let dir = scratch("wrong_shape");
    let path = synth_file(&dir, "f.nc", &base());
    {
        // Salinity at nodes without layers: a layered variable of the wrong shape.
        let mut f = shoal_manager::nc::append(&path).unwrap();
        f.add_variable::<f32>("salinity", &["time", "node"])
            .unwrap();
    }
    let err = FvcomReader::open(std::slice::from_ref(&path), &[])
        .err()
        .unwrap();
    let e = format!("{err:#}");
    assert!(
        e.contains("f.nc") && e.contains("`salinity`") && e.contains("(time, node)"),
        "{e}"
    );
    // Text where numbers belong.
    let other = synth_file(&dir, "g.nc", &base());
    {
        let mut f = shoal_manager::nc::append(&other).unwrap();
        f.add_string_variable("wet_cells", &["time", "nele"])
            .unwrap();
    }
    let err = FvcomReader::open(&[other], &[]).err().unwrap();
    let e = format!("{err:#}");
    assert!(
        e.contains("`wet_cells`") && e.contains("not numeric"),
        "{e}"
    );
}

#[test]
fn a_cartesian_file_that_names_its_utm_zone_gets_lon_lat_in_the_output() {
    let dir = scratch("utm");
    // The default offset (400 km E, 4 500 km N) is a place in UTM zone 19, off New England.
    let o = SynthOptions {
        flow: Flow::Uniform,
        nx: 20,
        ny: 20,
        dx: 500.0,
        speed: 0.3,
        projection: Some("proj=utm +zone=19 +datum=WGS84 +units=m +no_defs".into()),
        ..base()
    };
    synth_file(&dir, "utm.nc", &o);
    let text = shoal_manager::tools::inspect::inspect(&[dir.join("utm.nc")]).unwrap();
    assert!(text.contains("proj=utm +zone=19"), "{text}");
    let (cx, cy) = o.centre();
    let run = |file: &str, release: &str, out: &str| {
        config(&dir, &format!("seed=5\n[input]\nfiles=['{file}']\n{release}[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='{out}'\ninterval='30min'\n"))
            .and_then(|c| run_quiet(&c, 2))
    };
    run(
        "utm.nc",
        &format!("[release.generate]\ncount=200\ncentre=[{cx},{cy}]\nradius=3000.0\n"),
        "out.nc",
    )
    .unwrap();
    let out = Output::read(&dir.join("out.nc")).unwrap();
    let (lon, lat) = (out.lon.clone().unwrap(), out.lat.clone().unwrap());
    // Independently: UTM zone 19 is a transverse Mercator about 69 W with scale 0.9996 on its
    // central meridian and a false easting of 500 km (common's Krüger series, WGS84).
    let tm = TransverseMercator::new(-69.0, 0.0);
    let mut worst: f64 = 0.0;
    for i in 0..out.x.len() {
        let (l, b) = tm.inverse((out.x[i] - 500_000.0) / 0.9996, out.y[i] / 0.9996);
        worst = worst.max((l - lon[i]).abs()).max((b - lat[i]).abs());
    }
    eprintln!("UTM zone 19: output lon/lat within {worst:.2e} degrees of the independent inverse");
    assert!(worst < 1e-7, "lon/lat differ by up to {worst} degrees");
    assert!(
        (lon[0] + 70.2).abs() < 0.3 && (lat[0] - 40.7).abs() < 0.3,
        "{} {}",
        lon[0],
        lat[0]
    );

    // A site given in lon/lat is placed through the same projection.
    let corner = |dx: f64, dy: f64| tm.inverse((cx + dx - 500_000.0) / 0.9996, (cy + dy) / 0.9996);
    let ring: Vec<(f64, f64)> = [
        (-1000.0, -1000.0),
        (1000.0, -1000.0),
        (1000.0, 1000.0),
        (-1000.0, 1000.0),
        (-1000.0, -1000.0),
    ]
    .iter()
    .map(|&(a, b)| corner(a, b))
    .collect();
    let coords: Vec<String> = ring.iter().map(|(a, b)| format!("[{a},{b}]")).collect();
    std::fs::write(
        dir.join("site.geojson"),
        format!(r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"name":"box"}},"geometry":{{"type":"Polygon","coordinates":[[{}]]}}}}]}}"#, coords.join(",")),
    )
    .unwrap();
    run(
        "utm.nc",
        "[release]\npolygons='site.geojson'\nper_polygon=100\n",
        "site.nc",
    )
    .unwrap();
    let s = Output::read(&dir.join("site.nc")).unwrap();
    for p in 0..s.n_traj {
        let i = s.at(p, 0);
        assert!(
            (s.x[i] - cx).abs() < 1000.0 + 1e-3 && (s.y[i] - cy).abs() < 1000.0 + 1e-3,
            "released at {} {}",
            s.x[i] - cx,
            s.y[i] - cy
        );
    }

    // An attribute proj4rs cannot read is a warning naming it; the output has x/y only.
    synth_file(
        &dir,
        "odd.nc",
        &SynthOptions {
            projection: Some("init=nad27:1802".into()),
            ..o.clone()
        },
    );
    let (r, _, _) = FvcomReader::open(&[dir.join("odd.nc")], &[]).unwrap();
    assert!(r.geo.is_none());
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("CoordinateProjection") && w.contains("nad27:1802")),
        "{:?}",
        r.warnings
    );
    run(
        "odd.nc",
        &format!("[release.generate]\ncount=20\ncentre=[{cx},{cy}]\nradius=300.0\n"),
        "odd_out.nc",
    )
    .unwrap();
    assert!(Output::read(&dir.join("odd_out.nc")).unwrap().lon.is_none());
}

/// File shapes from model servers (THREDDS, ERDDAP and tile services cutting FVCOM hindcasts):
/// UGRID connectivity `nv(nele, 3)` with `start_index`, `siglay` without `siglev`, `time` as
/// i64 or f64 in any CF unit, and BitRound-quantized fields. Each reads to the same mesh, times
/// and sigma levels as FVCOM's own layout, and the same velocities up to the quantization.
#[test]
fn files_as_model_servers_publish_them_read_as_fvcoms_own() {
    let dir = scratch("served");
    let (r0, m0, _) = FvcomReader::open(&[synth_file(&dir, "plain.nc", &base())], &[]).unwrap();
    let s0 = r0.read_slice(2, r0.times[0]).unwrap();
    let general = SynthOptions {
        general_sigma: true,
        ..base()
    };
    let (_, mg, _) = FvcomReader::open(&[synth_file(&dir, "general.nc", &general)], &[]).unwrap();
    let variants: Vec<(&str, SynthOptions)> = vec![
        (
            "ugrid.nc",
            SynthOptions {
                ugrid: true,
                ..base()
            },
        ),
        (
            "ugrid0.nc",
            SynthOptions {
                ugrid: true,
                zero_based: true,
                no_nbe: true,
                ..base()
            },
        ),
        (
            "no_siglev.nc",
            SynthOptions {
                no_siglev: true,
                ..base()
            },
        ),
        (
            "general_no_siglev.nc",
            SynthOptions {
                no_siglev: true,
                ..general.clone()
            },
        ),
        (
            "hours_i64.nc",
            SynthOptions {
                time_units: Some("hours since 1858-11-17 00:00:00".into()),
                time_int64: true,
                time_style: TimeStyle::Float,
                ..base()
            },
        ),
        (
            "seconds_f64.nc",
            SynthOptions {
                time_units: Some("seconds since 2024-05-23T00:00:00".into()),
                time_style: TimeStyle::Float,
                ..base()
            },
        ),
        (
            "quantized.nc",
            SynthOptions {
                quantize: Some(12),
                ..base()
            },
        ),
    ];
    for (name, o) in variants {
        let p = synth_file(&dir, name, &o);
        let (r, m, _) = FvcomReader::open(&[p], &[]).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_eq!(m.nv, m0.nv, "{name}");
        assert_eq!(m.nbe, m0.nbe, "{name}");
        assert_eq!(r.times, r0.times, "{name}");
        let s = r.read_slice(2, r.times[0]).unwrap();
        let close = |a: &[f32], b: &[f32], tol: f32| {
            a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= tol)
        };
        match name {
            "no_siglev.nc" | "general_no_siglev.nc" => {
                let reference = if name == "no_siglev.nc" { &m0 } else { &mg };
                assert!(
                    close(
                        &m.vertical.siglev_node,
                        &reference.vertical.siglev_node,
                        1e-6
                    ),
                    "{name}: levels {:?} against {:?}",
                    &m.vertical.siglev_node[..5],
                    &reference.vertical.siglev_node[..5]
                );
                assert!(
                    r.warnings
                        .iter()
                        .any(|w| w.contains("no `siglev`") && w.contains("mid-levels")),
                    "{name}: {:?}",
                    r.warnings
                );
            }
            "hours_i64.nc" | "seconds_f64.nc" => {
                assert_eq!(r.time_source, vec!["time"], "{name}");
                assert!(
                    !r.warnings.iter().any(|w| w.contains("single-precision")),
                    "{name}: {:?}",
                    r.warnings
                );
            }
            "quantized.nc" => {
                // 12 significant bits: within 2^-12 of each value (the temperatures, which vary
                // in x; the tide's velocities are round numbers), and not all the same bits.
                let (q, t) = (s.temp.as_ref().unwrap(), s0.temp.as_ref().unwrap());
                let within = q
                    .iter()
                    .zip(t)
                    .all(|(q, t)| (q - t).abs() <= t.abs() * 2f32.powi(-12));
                assert!(within, "quantized temperatures stray too far");
                assert_ne!(q, t, "nothing was quantized");
            }
            _ => {}
        }
        if name != "quantized.nc" {
            assert_eq!(s.u, s0.u, "{name}");
            assert_eq!(s.v, s0.v, "{name}");
        }
    }
}

/// A file shaped like a 45-layer GOM4 subset from a data server (UGRID, `siglay` without
/// `siglev`, i64 hours since 1858-11-17, quantized, and a `CoordinateProjection` of
/// `init=nad83:1802`, which proj4rs cannot read, beside `lon`/`lat`), written with the CLI:
/// it runs, tracking in the file's lon/lat with a warning that names the attribute, and the
/// tracks match those of the same flow in FVCOM's own Cartesian layout.
#[test]
fn a_gom4_shaped_file_runs_in_its_lon_lat() {
    let dir = scratch("gom4_shape");
    let synth = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "shoal",
            "synth",
            "--flow",
            "rotation",
            "--nx",
            "24",
            "--ny",
            "24",
            "--dx",
            "400",
            "--layers",
            "12",
            "--duration",
            "6h",
            "--period",
            "12h",
            "-o",
            name,
        ];
        args.extend_from_slice(extra);
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == name {
                    dir.join(a).to_string_lossy().into_owned()
                } else {
                    a.to_string()
                }
            })
            .collect();
        run_cli(args).unwrap();
    };
    synth("plain.nc", &[]);
    synth(
        "gom4.nc",
        &[
            "--ugrid",
            "--no-siglev",
            "--time-units",
            "hours since 1858-11-17 00:00:00",
            "--time-int64",
            "--time-style",
            "float",
            "--quantize",
            "16",
            "--projection",
            "init=nad83:1802",
            "--lonlat-too=-68.5,43.7",
        ],
    );
    let (r, _, _) = FvcomReader::open(&[dir.join("gom4.nc")], &[]).unwrap();
    assert_eq!(r.coordinates, Coordinates::Geographic);
    let text = shoal_manager::tools::inspect::inspect(&[dir.join("gom4.nc")]).unwrap();
    assert!(
        text.contains("shape: smallest angle") && text.contains("0 sliver(s)"),
        "{text}"
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("`CoordinateProjection`")
                && w.contains("init=nad83:1802")
                && w.contains("`lon`/`lat`")),
        "{:?}",
        r.warnings
    );
    let o = SynthOptions {
        nx: 24,
        ny: 24,
        dx: 400.0,
        ..Default::default()
    };
    let (cx, cy) = o.centre();
    for name in ["plain", "gom4"] {
        let centre = if name == "gom4" {
            "-68.5,43.7".to_string()
        } else {
            format!("{cx},{cy}")
        };
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("seed=3\n[input]\nfiles=['{name}.nc']\n[release.generate]\ncount=200\ncentre=[{centre}]\nradius=3000.0\nz=-2.0\n[run]\nduration='3h'\ndt='60s'\n[output]\nfile='{name}_out.nc'\ninterval='1h'\n"),
        )
        .unwrap();
        run_cli([
            "shoal",
            "run",
            "--quiet",
            dir.join(format!("{name}.toml")).to_str().unwrap(),
        ])
        .unwrap();
    }
    let plain = Output::read(&dir.join("plain_out.nc")).unwrap();
    let gom4 = Output::read(&dir.join("gom4_out.nc")).unwrap();
    let (lon, lat) = (gom4.lon.as_ref().unwrap(), gom4.lat.as_ref().unwrap());
    assert_eq!(gom4.n_time, plain.n_time);
    assert!(
        gom4.status.iter().all(|s| *s == 0),
        "every particle stays active"
    );
    // The release draws the same offsets around each centre; the tracks, put back into the
    // synthetic file's frame, agree to within the f32 lon/lat the file holds and the small turn
    // between that frame and the reader's own projection.
    let tm = TransverseMercator::new(-68.5, 43.7);
    let mut worst = 0.0f64;
    for k in 0..plain.x.len() {
        let l = if lon[k] > 180.0 {
            lon[k] - 360.0
        } else {
            lon[k]
        };
        let (x, y) = tm.forward(l, lat[k]);
        let (x, y) = (x + cx, y + cy);
        let start = (k / plain.n_time) * plain.n_time;
        let travelled = (plain.x[k] - plain.x[start]).hypot(plain.y[k] - plain.y[start]);
        let apart = (x - plain.x[k]).hypot(y - plain.y[k]);
        worst = worst.max(apart - 0.002 * travelled);
    }
    assert!(
        worst < 5.0,
        "tracks part by up to {worst} m beyond 0.2 % of the distance"
    );
}
