//! Larval dispersal: releases from named GeoJSON sites, repeated in time, on a synthetic mesh;
//! the same file on the direct path and on three in-process nodes.

use shoal_manager::fvcom::FvcomReader;
use shoal_manager::release;
use shoal_manager::run::{run, RunOptions};
use shoal_manager::sites;
use shoal_manager::synth::{Flow, SynthOptions};
use shoal_tests::*;
use std::path::Path;

/// A closed ring of [x, y] positions.
fn ring(pts: &[(f64, f64)]) -> String {
    let mut all: Vec<String> = pts.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
    all.push(all[0].clone());
    format!("[{}]", all.join(","))
}

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> String {
    ring(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
}

fn feature(name: &str, kind: &str, coordinates: &str) -> String {
    format!(
        r#"{{"type":"Feature","properties":{{"name":"{name}"}},"geometry":{{"type":"{kind}","coordinates":{coordinates}}}}}"#
    )
}

fn write_sites(dir: &Path, name: &str, features: &[String]) {
    std::fs::write(
        dir.join(name),
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        ),
    )
    .unwrap();
}

/// The synthetic mesh spans x 400 000 .. 415 000 and y 4 500 000 .. 4 515 000 m.
fn three_sites(dir: &Path) {
    write_sites(
        dir,
        "sites.geojson",
        &[
            feature(
                "north bank",
                "Polygon",
                &format!("[{}]", rect(405e3, 4510e3, 407e3, 4512e3)),
            ),
            // Half of it west of the mesh: its points must all be drawn in the water.
            feature(
                "edge",
                "Polygon",
                &format!("[{}]", rect(399e3, 4502e3, 401.5e3, 4504e3)),
            ),
            // A square with a hole, and an islet.
            feature(
                "atoll",
                "MultiPolygon",
                &format!(
                    "[[{},{}],[{}]]",
                    rect(409e3, 4503e3, 413e3, 4507e3),
                    rect(410e3, 4504e3, 412e3, 4506e3),
                    rect(413.5e3, 4500.5e3, 414e3, 4501e3)
                ),
            ),
        ],
    );
}

fn larval_toml(out: &str, seed: u64, release: &str) -> String {
    format!(
        "seed={seed}\n[input]\nfiles=['f.nc']\n[release]\n{release}\n[run]\nduration='3h'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='{out}'\ninterval='30min'\ndensity={{ file='density-{out}', cell=500.0, per_origin=true }}\n"
    )
}

/// The density file's counts, worked out again from the trajectories: per time, site and cell,
/// the active particles whose position falls in the cell.
fn check_density(traj: &Path, density: &Path, sites: usize) {
    let out = Output::read(traj).unwrap();
    let f = netcdf::open(traj).unwrap();
    let origin: Vec<i32> = f.variable("origin").unwrap().get_values(..).unwrap();
    let d = netcdf::open(density).unwrap();
    let xs: Vec<f64> = d.variable("x").unwrap().get_values(..).unwrap();
    let ys: Vec<f64> = d.variable("y").unwrap().get_values(..).unwrap();
    let times: Vec<f64> = d.variable("time").unwrap().get_values(..).unwrap();
    assert_eq!(
        times, out.time,
        "the density map's times are the trajectories'"
    );
    let counts: Vec<i32> = d.variable("density").unwrap().get_values(..).unwrap();
    let (nx, ny) = (xs.len(), ys.len());
    let cell = xs[1] - xs[0];
    let (x0, y0) = (xs[0] - cell / 2.0, ys[0] - cell / 2.0);
    let mut want = vec![0i32; times.len() * sites * ny * nx];
    for p in 0..out.n_traj {
        for t in 0..out.n_time {
            let k = out.at(p, t);
            if out.status[k] != 0 {
                continue;
            }
            let i = ((out.x[k] - x0) / cell).floor() as usize;
            let j = ((out.y[k] - y0) / cell).floor() as usize;
            want[((t * sites + origin[p] as usize) * ny + j) * nx + i] += 1;
        }
    }
    assert_eq!(counts, want);
    let active = out.status.iter().filter(|s| **s == 0).count();
    assert!(active > 0);
    assert_eq!(counts.iter().sum::<i32>() as usize, active);
}

/// The synthetic mesh (4 h of solid-body rotation) and the three sites, in `dir`.
fn coast(dir: &Path) {
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 30,
        ny: 30,
        duration: 4.0 * 3600.0,
        ..Default::default()
    };
    synth_file(dir, "f.nc", &o);
    three_sites(dir);
}

const RELEASE: &str = "polygons = 'sites.geojson'\nper_polygon = 40\nz_range = [-4.0, -1.0]\nevery = '1h'\nuntil = '2024-05-23 02:00:00'";

#[test]
fn polygon_releases_are_exact_inside_in_the_water_and_the_same_on_every_path() {
    let dir = scratch("larvae_polygons");
    coast(&dir);
    let cfg = config(&dir, &larval_toml("direct.nc", 7, RELEASE)).unwrap();
    let (reader, mesh, _) = FvcomReader::open(&cfg.files, &cfg.open_boundary_nodes).unwrap();
    let start = reader.times[0];
    let rel = release::points(&cfg, &mesh, start, 3.0 * 3600.0).unwrap();
    let origins = rel.sites.clone().expect("a polygon release has sites");
    assert_eq!(origins.names, ["north bank", "edge", "atoll"]);
    // Three releases of 40 per site, in id order release by release, site by site.
    assert_eq!(rel.points.len(), 3 * 3 * 40);
    let shapes = sites::read(&dir.join("sites.geojson"), None).unwrap();
    for (id, p) in rel.points.iter().enumerate() {
        let site = (id / 40) % 3;
        assert_eq!(origins.origin[id] as usize, site, "particle {id}");
        assert_eq!(p.time, 3600.0 * (id / 120) as f64, "particle {id}");
        assert!(shapes[site].contains(p.x, p.y), "particle {id} at {p:?}");
        assert!(
            mesh.locate(p.x, p.y, None).is_some(),
            "particle {id} on land: {p:?}"
        );
        assert!((-4.0..=-1.0).contains(&p.z), "particle {id} z {}", p.z);
    }
    // Inside the hole of the atoll there is nothing; both parts of it are used.
    let atoll: Vec<_> = rel.points.iter().skip(80).take(40).collect();
    assert!(atoll
        .iter()
        .all(|p| !(p.x > 410e3 && p.x < 412e3 && p.y > 4504e3 && p.y < 4506e3)));
    // The edge site's points are all in its eastern, wet part.
    assert!(rel.points[40..80].iter().all(|p| p.x >= 400e3));
    // The same seed gives the same points; another seed others.
    assert_eq!(
        release::points(&cfg, &mesh, start, 3.0 * 3600.0)
            .unwrap()
            .points,
        rel.points
    );
    let other = config(&dir, &larval_toml("other.nc", 8, RELEASE)).unwrap();
    assert_ne!(
        release::points(&other, &mesh, start, 3.0 * 3600.0)
            .unwrap()
            .points,
        rel.points
    );

    // The direct path and three in-process nodes write the same file, origins included.
    let cfg = config(&dir, &larval_toml("direct.nc", 7, RELEASE)).unwrap();
    run(
        &cfg,
        &RunOptions {
            quiet: true,
            direct: true,
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let nodes = config(&dir, &larval_toml("nodes.nc", 7, RELEASE)).unwrap();
    run(
        &nodes,
        &RunOptions {
            quiet: true,
            nodes: Some(3),
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    files_bit_identical(&dir.join("direct.nc"), &dir.join("nodes.nc"), false).unwrap();
    files_bit_identical(
        &dir.join("density-direct.nc"),
        &dir.join("density-nodes.nc"),
        false,
    )
    .unwrap();
    check_density(&dir.join("direct.nc"), &dir.join("density-direct.nc"), 3);
    let png = dir.join("density.png");
    shoal_manager::plot::plot(&dir.join("density-direct.nc"), None, &png, 300).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let f = netcdf::open(dir.join("direct.nc")).unwrap();
    let origin: Vec<i32> = f.variable("origin").unwrap().get_values(..).unwrap();
    for k in 0..3 {
        assert_eq!(origin.iter().filter(|&&o| o == k).count(), 120, "site {k}");
    }
    let names = f.variable("origin_name").unwrap();
    let names: Vec<String> = (0..3).map(|k| names.get_string([k]).unwrap()).collect();
    assert_eq!(names, ["north bank", "edge", "atoll"]);
    // The first release is in the file where it was drawn.
    let out = Output::read(&dir.join("direct.nc")).unwrap();
    for (id, p) in rel.points.iter().enumerate().take(120) {
        assert_eq!(out.x[out.at(id, 0)], p.x, "particle {id}");
        assert_eq!(out.y[out.at(id, 0)], p.y, "particle {id}");
    }
    // xarray opens it (an error here when it cannot; CI requires xarray).
    xarray_check(&dir.join("direct.nc")).unwrap();
}

#[test]
fn polygon_release_mistakes_name_the_key_or_the_site() {
    let dir = scratch("larvae_polygon_errors");
    coast(&dir);
    write_sites(
        &dir,
        "land.geojson",
        &[
            feature(
                "bay",
                "Polygon",
                &format!("[{}]", rect(401e3, 4501e3, 402e3, 4502e3)),
            ),
            feature(
                "inland",
                "Polygon",
                &format!("[{}]", rect(380e3, 4501e3, 381e3, 4502e3)),
            ),
        ],
    );
    let fails = |release: &str| -> String {
        let e = match config(&dir, &larval_toml("x.nc", 1, release)) {
            Err(e) => e,
            Ok(cfg) => match run_quiet(&cfg, 1) {
                Err(e) => e,
                Ok(_) => panic!("ran: {release}"),
            },
        };
        format!("{e:#}")
    };
    let cases = [
        ("polygons = 'land.geojson'\nper_polygon = 5", "site `inland` has no water"),
        ("polygons = 'nowhere.geojson'\nper_polygon = 5", "cannot read polygon file"),
        ("polygons = 'sites.geojson'", "release.per_polygon"),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\nz_range = [-1.0, -4.0]",
            "release.z_range",
        ),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\nz = 2.0",
            "release.z",
        ),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\nevery = '1h'",
            "release.until",
        ),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\nevery = '1h'\nuntil = '2024-05-23 05:00:00'",
            "after the run's end",
        ),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\nevery = 0.001\nuntil = '2024-05-23 02:00:00'",
            "at most 100000",
        ),
        ("per_polygon = 5\n[release.generate]\ncount = 3", "release.per_polygon"),
        (
            "polygons = 'sites.geojson'\nper_polygon = 5\n[release.generate]\ncount = 3",
            "only one of",
        ),
    ];
    let density = |d: &str| {
        format!(
            "seed=1\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=10\n[run]\nduration='1h'\ndt='60s'\n[output]\nfile='d.nc'\ninterval='30min'\ndensity={{ {d} }}\n"
        )
    };
    for (d, want) in [
        ("file='m.nc', cell_degrees=0.01", "the mesh is Cartesian"),
        (
            "file='m.nc', cell=100.0, per_origin=true",
            "needs a release from sites",
        ),
        ("file='m.nc'", "output.density.cell"),
        ("file='m.nc', cell=-5.0", "output.density.cell"),
        ("cell=100.0", "output.density.file"),
        ("file='m.nc', cell=0.01", "give a larger cell"),
        (
            "file='d.nc', cell=100.0",
            "is the trajectory file or its checkpoint",
        ),
    ] {
        let e = match config(&dir, &density(d)) {
            Err(e) => e,
            Ok(cfg) => run_quiet(&cfg, 1).expect_err(d),
        };
        let e = format!("{e:#}");
        assert!(e.contains(want), "{d}: {e}");
    }
    for (release, want) in cases {
        let e = fails(release);
        assert!(e.contains(want), "{release}: {e}");
    }
}
