//! Larval dispersal: releases from named GeoJSON sites, repeated in time, on a synthetic mesh;
//! the same file on the direct path and on three in-process nodes.

use shoal_manager::input::fvcom::FvcomReader;
use shoal_manager::input::release;
use shoal_manager::input::sites;
use shoal_manager::run::{run, RunOptions};
use shoal_manager::tools::synth::{Flow, SynthOptions};
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
    let f = shoal_manager::nc::open(traj).unwrap();
    let origin: Vec<i32> = f.variable("origin").unwrap().get_values(..).unwrap();
    let d = shoal_manager::nc::open(density).unwrap();
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
    let rel = release::points(&cfg, &mesh, reader.geo.as_ref(), start, 3.0 * 3600.0).unwrap();
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
        release::points(&cfg, &mesh, reader.geo.as_ref(), start, 3.0 * 3600.0)
            .unwrap()
            .points,
        rel.points
    );
    let other = config(&dir, &larval_toml("other.nc", 8, RELEASE)).unwrap();
    assert_ne!(
        release::points(&other, &mesh, reader.geo.as_ref(), start, 3.0 * 3600.0)
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
    shoal_manager::output::plot::plot(&dir.join("density-direct.nc"), None, &png, 300).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let svg = dir.join("density.svg");
    shoal_manager::output::plot::plot(&dir.join("density-direct.nc"), None, &svg, 300).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("<rect"), "{text}");
    let f = shoal_manager::nc::open(dir.join("direct.nc")).unwrap();
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
            "beyond the run's end",
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

/// Runs `toml(out)` on the direct path and on three in-process nodes; the trajectories (and
/// `also`, files named after the output) are the same bit for bit. Returns the direct file.
fn on_both_paths(dir: &Path, toml: &dyn Fn(&str) -> String, also: &[&str]) -> std::path::PathBuf {
    for (out, direct) in [("direct.nc", true), ("nodes.nc", false)] {
        let cfg = config(dir, &toml(out)).unwrap();
        run(
            &cfg,
            &RunOptions {
                quiet: true,
                direct,
                nodes: (!direct).then_some(3),
                threads: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    }
    files_bit_identical(&dir.join("direct.nc"), &dir.join("nodes.nc"), false).unwrap();
    for a in also {
        files_bit_identical(
            &dir.join(format!("{a}-direct.nc")),
            &dir.join(format!("{a}-nodes.nc")),
            false,
        )
        .unwrap();
    }
    dir.join("direct.nc")
}

const SETTLED: i8 = 5;
const DEAD: i8 = 6;
const STRANDED: i8 = 7;

/// In a uniform eastward current without diffusion, particles released in a band settle in the
/// first reef they are inside once competent: which reef follows from each particle's release
/// point, the speed and the competency window, worked out here particle by particle.
#[test]
fn connectivity_in_uniform_flow_follows_the_geometry() {
    let dir = scratch("larvae_connectivity");
    let o = SynthOptions {
        flow: Flow::Uniform,
        speed: 0.5,
        nx: 30,
        ny: 30,
        duration: 6.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    write_sites(
        &dir,
        "source.geojson",
        &[
            feature(
                "west",
                "Polygon",
                &format!("[{}]", rect(401e3, 4503e3, 402e3, 4509e3)),
            ),
            feature(
                "north",
                "Polygon",
                &format!("[{}]", rect(401e3, 4510e3, 402e3, 4511e3)),
            ),
        ],
    );
    // Reef A covers the south half of the band just where particles become competent (2 h,
    // 3.6 km downstream); reef B the whole band farther on, before the maximum age (5 h).
    write_sites(
        &dir,
        "reefs.geojson",
        &[
            feature(
                "A",
                "Polygon",
                &format!("[{}]", rect(404e3, 4503e3, 405e3, 4506e3)),
            ),
            feature(
                "B",
                "Polygon",
                &format!("[{}]", rect(407e3, 4503e3, 409e3, 4509e3)),
            ),
            feature(
                "C",
                "Polygon",
                &format!("[{}]", rect(412e3, 4500.5e3, 414e3, 4502e3)),
            ),
        ],
    );
    let toml = |out: &str| {
        format!(
            "seed=4\n[input]\nfiles=['f.nc']\n[release]\npolygons='source.geojson'\nper_polygon=500\nz=-2.0\n[run]\nduration='6h'\ndt='60s'\n[settlement]\npolygons='reefs.geojson'\ncompetency=['2h', '5h']\ndie_after_competency=true\n[output]\nfile='{out}'\ninterval='1h'\nconnectivity='conn-{out}'\n"
        )
    };
    let file = on_both_paths(&dir, &toml, &["conn"]);
    let out = Output::read(&file).unwrap();
    let f = shoal_manager::nc::open(&file).unwrap();
    let dest: Vec<i32> = f.variable("destination").unwrap().get_values(..).unwrap();
    let when: Vec<f64> = f
        .variable("settlement_time")
        .unwrap()
        .get_values(..)
        .unwrap();
    let origin: Vec<i32> = f.variable("origin").unwrap().get_values(..).unwrap();
    let last = out.n_time - 1;
    let mut expect = [[0i32; 3]; 2];
    for p in 0..out.n_traj {
        let (x0, y0) = (out.x[out.at(p, 0)], out.y[out.at(p, 0)]);
        let at_competency = x0 + 0.5 * 7200.0;
        let (want, t): (i32, f64) = if origin[p] == 1 {
            // North of every reef: never settles, dies past 5 h.
            (-1, f64::NAN)
        } else if y0 < 4506e3 && at_competency <= 405e3 {
            (0, 7200.0)
        } else {
            // Enters B at the first step ending east of 407 km (30 m a step).
            let steps = ((407e3 - x0) / 30.0).ceil();
            (1, steps * 60.0)
        };
        assert_eq!(dest[p], want, "particle {p} from ({x0}, {y0})");
        let k = out.at(p, last);
        if want >= 0 {
            expect[origin[p] as usize][want as usize] += 1;
            assert_eq!(out.status[k], SETTLED, "particle {p}");
            assert!(
                (when[p] - t).abs() < 1e-6,
                "particle {p} settled at {} not {t}",
                when[p]
            );
            // A settled particle stays where it settled.
            assert_eq!(out.x[k], out.x[out.at(p, last - 1)]);
        } else {
            assert_eq!(
                out.status[k], DEAD,
                "particle {p}: unsettled past competency"
            );
        }
    }
    // 40 % of the band's width (x0 below 401.4 km) and half its height reach A: 20 %.
    let share_a = expect[0][0] as f64 / 500.0;
    assert!(
        (share_a - 0.2).abs() < 4.0 * (0.2f64 * 0.8 / 500.0).sqrt(),
        "{share_a}"
    );
    let c = shoal_manager::nc::open(dir.join("conn-direct.nc")).unwrap();
    let count: Vec<i32> = c.variable("count").unwrap().get_values(..).unwrap();
    assert_eq!(count, expect.concat());
    let prob: Vec<f64> = c.variable("probability").unwrap().get_values(..).unwrap();
    for (k, p) in prob.iter().enumerate() {
        assert_eq!(*p, count[k] as f64 / 500.0);
    }
    let names = c.variable("destination_name").unwrap();
    assert_eq!(names.get_string([1]).unwrap(), "B");
    let csv = std::fs::read_to_string(dir.join("conn-direct.csv")).unwrap();
    assert!(csv.starts_with("release_time,origin,destination,count,released,probability\n"));
    assert_eq!(csv.lines().count(), 1 + 2 * 3);
    assert!(
        csv.contains(&format!("\"west\",\"A\",{},500,", expect[0][0])),
        "{csv}"
    );
    let png = dir.join("matrix.png");
    shoal_manager::output::plot::plot(&dir.join("conn-direct.nc"), None, &png, 400).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    // As SVG, the sites' names and the shares are text.
    let svg = dir.join("matrix.svg");
    shoal_manager::output::plot::plot(&dir.join("conn-direct.nc"), None, &svg, 400).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    let words: Vec<&str> = text
        .split("</text>")
        .filter_map(|t| t.rsplit_once(">\n").map(|(_, w)| w.trim()))
        .collect();
    for w in ["west", "north", "A"] {
        assert!(
            words.contains(&w),
            "no {w:?} among the SVG's words {words:?}"
        );
    }
    assert!(words.iter().any(|w| w.ends_with('%')), "{words:?}");
    xarray_check(&dir.join("conn-direct.nc")).unwrap();
    xarray_check(&file).unwrap();
}

/// The standard normal distribution function.
fn phi(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// erf by Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    y.copysign(x)
}

/// Still water and horizontal diffusion: released on a line, particles spread across it as a
/// Gaussian of variance 2 K t, so the shares settling in lateral bands at the one competent age
/// are differences of erf; each within 4 binomial standard errors.
#[test]
fn lateral_shares_under_diffusion_follow_the_gaussian() {
    let dir = scratch("larvae_erf");
    let o = SynthOptions {
        flow: Flow::Still,
        nx: 30,
        ny: 30,
        duration: 3.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let yc = 4507.5e3;
    write_sites(
        &dir,
        "line.geojson",
        &[feature(
            "line",
            "Polygon",
            &format!("[{}]", rect(405e3, yc - 0.01, 410e3, yc + 0.01)),
        )],
    );
    // K = 1 m^2/s for 2 h: sigma = sqrt(2 K t) = 120 m.
    let s = (2.0f64 * 1.0 * 7200.0).sqrt();
    let bands = [(0.0, 1.0), (1.0, 2.0), (-1.0, 0.0), (-3.0, -1.0)];
    let reefs: Vec<String> = bands
        .iter()
        .enumerate()
        .map(|(k, (a, b))| {
            feature(
                &format!("band{k}"),
                "Polygon",
                &format!("[{}]", rect(401e3, yc + a * s, 414e3, yc + b * s)),
            )
        })
        .collect();
    write_sites(&dir, "bands.geojson", &reefs);
    let n = 3000;
    let toml = |out: &str| {
        format!(
            "seed=11\n[input]\nfiles=['f.nc']\n[release]\npolygons='line.geojson'\nper_polygon={n}\nz=-2.0\n[run]\nduration='2h'\ndt='120s'\n[diffusion]\nhorizontal_kh=1.0\n[settlement]\npolygons='bands.geojson'\ncompetency=['2h', '2h']\n[output]\nfile='{out}'\ninterval='1h'\nconnectivity='conn-{out}'\n"
        )
    };
    on_both_paths(&dir, &toml, &["conn"]);
    let c = shoal_manager::nc::open(dir.join("conn-direct.nc")).unwrap();
    let count: Vec<i32> = c.variable("count").unwrap().get_values(..).unwrap();
    for (k, (a, b)) in bands.iter().enumerate() {
        let want = phi(*b) - phi(*a);
        let got = count[k] as f64 / n as f64;
        let se = (want * (1.0 - want) / n as f64).sqrt();
        assert!(
            (got - want).abs() < 4.0 * se,
            "band {k} [{a}, {b}] sigma: {got} vs {want} (se {se})"
        );
    }
}

/// Mortality at m per day leaves exp(-m t) alive; the dead stay where they died, with status
/// dead, while the living go on diffusing.
#[test]
fn mortality_leaves_exp_minus_mt_alive() {
    let dir = scratch("larvae_mortality");
    let o = SynthOptions {
        flow: Flow::Still,
        nx: 30,
        ny: 30,
        duration: 13.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    three_sites(&dir);
    let toml = |out: &str| {
        format!(
            "seed=5\n[input]\nfiles=['f.nc']\n[release]\npolygons='sites.geojson'\nper_polygon=1500\nz=-3.0\n[run]\nduration='12h'\ndt='300s'\n[diffusion]\nhorizontal_kh=0.5\n[behaviour]\nmortality_per_day=2.0\n[output]\nfile='{out}'\ninterval='1h'\n"
        )
    };
    let file = on_both_paths(&dir, &toml, &[]);
    let out = Output::read(&file).unwrap();
    let n = out.n_traj as f64;
    for t in 1..out.n_time {
        let days = out.time[t] / 86_400.0;
        let alive = (0..out.n_traj)
            .filter(|&p| out.status[out.at(p, t)] == 0)
            .count() as f64
            / n;
        let want = (-2.0 * days).exp();
        let se = (want * (1.0 - want) / n).sqrt();
        assert!(
            (alive - want).abs() < 4.0 * se,
            "t={days} d: {alive} alive vs {want}"
        );
        for p in 0..out.n_traj {
            if out.status[out.at(p, t - 1)] == DEAD {
                let (a, b) = (out.at(p, t - 1), out.at(p, t));
                assert_eq!(out.status[b], DEAD);
                assert_eq!(
                    (out.x[a], out.y[a], out.z[a]),
                    (out.x[b], out.y[b], out.z[b])
                );
            }
        }
    }
}

/// Diel vertical migration on a Cartesian mesh at (0 N, 0 E): at noon particles sit at the day
/// depth, at midnight at the night depth (the swim speed gets them there within the hour);
/// from the second day a stage stops migrating and rises to the surface.
#[test]
fn diel_migration_follows_the_sun_and_stages_by_age() {
    let dir = scratch("larvae_diel");
    let o = SynthOptions {
        flow: Flow::Still,
        nx: 20,
        ny: 20,
        duration: 48.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let toml = |out: &str| {
        format!(
            "seed=2\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=200\nz=-10.0\n[run]\nduration='40h'\ndt='60s'\n[behaviour.migration]\nday_depth=15.0\nnight_depth=[1.0, 2.0]\nswim_speed=0.01\nlatitude=0.0\nlongitude=0.0\n[[behaviour.stage]]\nage='30h'\nmigration=false\nsinking_speed=-0.002\n[output]\nfile='{out}'\ninterval='1h'\n"
        )
    };
    let file = on_both_paths(&dir, &toml, &[]);
    let out = Output::read(&file).unwrap();
    let hour = |h: usize| {
        out.time
            .iter()
            .position(|t| *t == h as f64 * 3600.0)
            .unwrap()
    };
    for p in 0..out.n_traj {
        // Midnight at 0 E is within two minutes of 00:00 UTC, noon of 12:00.
        for (h, depth) in [(0, None), (12, Some(15.0)), (24, Some(2.0))] {
            let z = out.z[out.at(p, hour(h))] as f64;
            match depth {
                None => assert!((z + 10.0).abs() < 1e-3),
                Some(d) => assert!((z + d).abs() < 1e-3, "particle {p} at {h} h: z {z}"),
            }
        }
        // Past 30 h it rises at 2 mm/s: at the surface by 36 h, though it is noon.
        let z = out.z[out.at(p, hour(36))] as f64;
        assert!(z > -0.5, "particle {p} at 36 h: z {z}");
    }
}

/// Forward, then backward from the end: back to the release points within a metre, on
/// solid-body rotation and on the tide; the backward file's times run backward and say so.
#[test]
fn backward_tracking_returns_to_the_release() {
    for flow in [Flow::Rotation, Flow::Tidal] {
        let dir = scratch(&format!("larvae_backward_{flow:?}"));
        let o = SynthOptions {
            flow,
            nx: 30,
            ny: 30,
            speed: 0.5,
            duration: 8.0 * 3600.0,
            ..Default::default()
        };
        synth_file(&dir, "f.nc", &o);
        let fwd = config(&dir, "seed=1\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=100\ncentre=[407500.0, 4507500.0]\nradius=3000.0\nz=-2.0\n[run]\nstart='2024-05-23 01:00:00'\nduration='6h'\ndt='60s'\n[output]\nfile='forward.nc'\ninterval='1h'\n").unwrap();
        run_quiet(&fwd, 2).unwrap();
        let f = Output::read(&dir.join("forward.nc")).unwrap();
        let last = f.n_time - 1;
        let mut csv = String::from("x,y,z\n");
        for p in 0..f.n_traj {
            let k = f.at(p, last);
            csv.push_str(&format!("{},{},{}\n", f.x[k], f.y[k], f.z[k]));
        }
        std::fs::write(dir.join("ends.csv"), csv).unwrap();
        let toml = |out: &str| {
            format!(
                "seed=1\n[input]\nfiles=['f.nc']\n[release]\nfile='ends.csv'\n[run]\nstart='2024-05-23 07:00:00'\nduration='6h'\ndt='60s'\ndirection='backward'\n[output]\nfile='{out}'\ninterval='1h'\n"
            )
        };
        let file = on_both_paths(&dir, &toml, &[]);
        let b = Output::read(&file).unwrap();
        assert_eq!(b.time.first(), Some(&0.0));
        assert_eq!(b.time.last(), Some(&(-6.0 * 3600.0)));
        assert!(b.time.windows(2).all(|w| w[1] < w[0]), "{:?}", b.time);
        for p in 0..b.n_traj {
            let (k, s) = (b.at(p, b.n_time - 1), f.at(p, 0));
            let d = (b.x[k] - f.x[s]).hypot(b.y[k] - f.y[s]);
            assert!(
                d < 1.0,
                "{flow:?}: particle {p} ends {d} m from its release"
            );
        }
        let nc = shoal_manager::nc::open(&file).unwrap();
        let dir_attr: String = nc
            .attribute("shoal_direction")
            .unwrap()
            .value()
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(dir_attr, "backward");
    }
}

/// A drying tidal flat: no active particle is ever in a cell that is dry at that time; the
/// stranded wait and move again once the flood comes back.
#[test]
fn wetting_and_drying_strands_and_frees_particles() {
    let dir = scratch("larvae_drying");
    let o = SynthOptions {
        flow: Flow::Tidal,
        speed: 0.3,
        nx: 30,
        ny: 10,
        depth: 6.0,
        drying: Some(2.0),
        duration: 26.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let toml = |out: &str| {
        format!(
            "seed=3\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=600\ncentre=[410000.0, 4502500.0]\nradius=2400.0\nz=-0.2\n[run]\nduration='24h'\ndt='60s'\n[diffusion]\nhorizontal_kh=0.5\n[output]\nfile='{out}'\ninterval='1h'\n"
        )
    };
    let file = on_both_paths(&dir, &toml, &[]);
    let out = Output::read(&file).unwrap();
    let input = shoal_manager::nc::open(dir.join("f.nc")).unwrap();
    let wet: Vec<i32> = input.variable("wet_cells").unwrap().get_values(..).unwrap();
    let ne = input.dimension_len("nele").unwrap();
    let mut stranded = 0;
    let mut freed = 0;
    for t in 0..out.n_time {
        // Output times are the file's hours.
        let level = (out.time[t] / 3600.0).round() as usize;
        for p in 0..out.n_traj {
            let k = out.at(p, t);
            let e = out.element[k];
            if out.status[k] == 0 {
                assert_eq!(
                    wet[level * ne + e as usize],
                    1,
                    "active particle {p} in dry cell {e} at {} h",
                    level
                );
            }
            if out.status[k] == STRANDED {
                stranded += 1;
                if (t + 1..out.n_time).any(|u| out.status[out.at(p, u)] == 0) {
                    freed += 1;
                }
            }
        }
    }
    assert!(stranded > 0, "nothing was stranded");
    assert!(freed > 0, "no stranded particle moved again");
}

/// Every behaviour key is checked, and the error names it.
#[test]
fn behaviour_mistakes_name_the_key() {
    let dir = scratch("larvae_behaviour_errors");
    coast(&dir);
    std::fs::write(dir.join("bad.geojson"), "not json").unwrap();
    write_sites(
        &dir,
        "bowtie.geojson",
        &[feature(
            "bowtie",
            "Polygon",
            &format!(
                "[{}]",
                ring(&[
                    (402e3, 4502e3),
                    (404e3, 4504e3),
                    (404e3, 4502e3),
                    (402e3, 4504e3)
                ])
            ),
        )],
    );
    let base = "seed=1\n[input]\nfiles=['f.nc']\n[release]\npolygons='sites.geojson'\nper_polygon=5\n[run]\nduration='1h'\ndt='60s'\n[output]\nfile='e.nc'\n";
    for (extra, want) in [
        (
            "[behaviour]\npreferred_temperature=15.0\ntemperature_tolerance=0.0\n",
            "behaviour.temperature_tolerance",
        ),
        (
            "[settlement]\npolygons='sites.geojson'\ncompetency=['5d', '1d']\n",
            "settlement.competency",
        ),
        (
            "[settlement]\npolygons='missing.geojson'\n",
            "cannot read polygon file",
        ),
        ("[settlement]\npolygons='bad.geojson'\n", "not GeoJSON"),
        ("[settlement]\npolygons='bowtie.geojson'\n", "bowtie"),
        (
            "[settlement]\npolygons='sites.geojson'\nprobability_per_hour=-0.5\n",
            "settlement.probability_per_hour",
        ),
        (
            "[settlement]\ncompetency=['1d', '5d']\n",
            "settlement.polygons",
        ),
        (
            "[behaviour]\nmortality_per_day=-1.0\n",
            "behaviour.mortality_per_day",
        ),
        (
            "[behaviour]\ntemperature_range=[30.0, 10.0]\n",
            "behaviour.temperature_range",
        ),
        (
            "[behaviour]\nsalinity_range=[10.0, 40.0]\n",
            "needs variable `salinity`",
        ),
        (
            "[behaviour.migration]\nday_depth=10.0\nnight_depth=1.0\n",
            "behaviour.migration.swim_speed",
        ),
        (
            "[behaviour.migration]\nday_depth=-10.0\nnight_depth=1.0\nswim_speed=0.01\n",
            "behaviour.migration.day_depth",
        ),
        (
            "[behaviour.migration]\nday_depth=10.0\nnight_depth=1.0\nswim_speed=0.01\n",
            "behaviour.migration.latitude",
        ),
        (
            "[[behaviour.stage]]\nmortality_per_day=1.0\n",
            "behaviour.stage[0].age",
        ),
        (
            "[[behaviour.stage]]\nage='2d'\nmigration=true\n",
            "behaviour.stage[0].migration",
        ),
    ] {
        let text = format!("{base}{extra}");
        let e = match config(&dir, &text) {
            Err(e) => e,
            Ok(cfg) => run_quiet(&cfg, 1).expect_err(extra),
        };
        let e = format!("{e:#}");
        assert!(e.contains(want), "{extra}: {e}");
    }
    for (run_extra, want) in [
        ("direction='sideways'\n", "run.direction"),
        (
            "direction='backward'\n[behaviour]\nmortality_per_day=1.0\n",
            "runs forward only",
        ),
    ] {
        let text = base.replace("dt='60s'\n", &format!("dt='60s'\n{run_extra}"));
        let e = format!("{:#}", config(&dir, &text).expect_err(run_extra));
        assert!(e.contains(want), "{run_extra}: {e}");
    }
    let e = format!(
        "{:#}",
        config(&dir, &format!("{base}connectivity='c.nc'\n")).unwrap_err()
    );
    assert!(e.contains("output.connectivity"), "{e}");
    // A backward run releases at or before its start.
    std::fs::write(
        dir.join("later.csv"),
        "x,y,z,release_time\n405000,4505000,-1,3600\n",
    )
    .unwrap();
    let cfg = config(
        &dir,
        "[input]\nfiles=['f.nc']\n[release]\nfile='later.csv'\n[run]\nduration='1h'\ndirection='backward'\n",
    )
    .unwrap();
    let e = format!("{:#}", run_quiet(&cfg, 1).unwrap_err());
    assert!(e.contains("outside the backward run"), "{e}");
}
