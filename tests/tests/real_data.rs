//! The real SFBOFS subset (../shared/data): nine hours of tracking in San Francisco Bay.
//! Found through SHOAL_REAL_FVCOM; where that is unset the test says it was skipped.

use shoal_common::status;
use shoal_manager::input::fvcom::FvcomReader;
use shoal_tests::*;
use std::path::PathBuf;

pub(crate) fn real_file() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("SHOAL_REAL_FVCOM")?);
    assert!(
        p.exists(),
        "SHOAL_REAL_FVCOM is set to {}, which does not exist",
        p.display()
    );
    Some(p)
}

#[test]
fn sfbofs_nine_hours_particles_stay_in_the_water() {
    let Some(file) = real_file() else {
        eprintln!("skipped: SHOAL_REAL_FVCOM is not set");
        return;
    };
    let dir = scratch("sfbofs");
    let (reader, mesh, _) = FvcomReader::open(std::slice::from_ref(&file), &[]).unwrap();
    assert_eq!(
        (mesh.n_nodes(), mesh.n_elements(), mesh.vertical.n_layers),
        (551, 903, 20)
    );
    assert_eq!(reader.times.len(), 10);
    assert_eq!(reader.times[1] - reader.times[0], 3600.0);
    assert!(mesh.projection.is_some());
    let cfg = config(&dir, &format!(
        "seed=1\n[input]\nfiles=['{}']\n[release.generate]\ncount=3000\nz=-1.0\n[run]\nduration='9h'\ndt='60s'\n[diffusion]\nhorizontal_kh=0.5\n[behaviour]\npreferred_temperature=16.0\n[output]\nfile='sfbofs.nc'\ninterval='30min'\n",
        file.display()
    )).unwrap();
    let rep = run_quiet(&cfg, 2).unwrap();
    assert_eq!(rep.steps, 540);
    assert_eq!(rep.outside, 0);
    let out = Output::read(&dir.join("sfbofs.nc")).unwrap();
    assert_eq!(out.n_time, 19);
    let (lon, lat) = (out.lon.as_ref().unwrap(), out.lat.as_ref().unwrap());
    let mut moved = 0;
    for p in 0..out.n_traj {
        for t in 0..out.n_time {
            let i = out.at(p, t);
            let s = out.status[i] as u8;
            assert!(s == status::ACTIVE || s == status::BAD_FIELD, "status {s}");
            assert!(out.x[i].is_finite() && out.y[i].is_finite());
            assert!(
                mesh.contains(out.x[i], out.y[i]),
                "particle {p} on land at output {t}"
            );
            assert!(
                (-1.0..=0.0).contains(&out.sigma[i]),
                "sigma {}",
                out.sigma[i]
            );
            assert!(
                (-123.0..-122.0).contains(&lon[i]) && (37.0..38.5).contains(&lat[i]),
                "{} {}",
                lon[i],
                lat[i]
            );
        }
        let (a, b) = (out.at(p, 0), out.at(p, out.n_time - 1));
        if (out.x[b] - out.x[a]).hypot(out.y[b] - out.y[a]) > 100.0 {
            moved += 1;
        }
    }
    assert!(
        moved > out.n_traj / 2,
        "only {moved} particles moved more than 100 m in 9 h of tides"
    );
    let happiness = out.happiness.as_ref().unwrap();
    let max = happiness
        .iter()
        .cloned()
        .filter(|h| h.is_finite())
        .fold(0.0f32, f32::max);
    assert!(max > 0.0 && max <= 1.0);
    xarray_check(&dir.join("sfbofs.nc")).unwrap();
}

/// Releases from two sites given in lon/lat on the geographic SFBOFS mesh, with a lon/lat density
/// map per site: every release point lies inside its site, and xarray opens both files.
#[test]
fn sfbofs_sites_in_lon_lat_and_a_density_map_per_site() {
    let Some(file) = real_file() else {
        eprintln!("skipped: SHOAL_REAL_FVCOM is not set");
        return;
    };
    let dir = scratch("sfbofs_sites");
    // Squares of 0.004 degrees around two element centres of the subset.
    let sites = [
        ("Raccoon Strait", -122.471, 37.863),
        ("Richardson Bay", -122.5095, 37.8817),
    ];
    let features: Vec<String> = sites
        .iter()
        .map(|(name, lon, lat)| {
            let (a, b, c, d) = (lon - 0.002, lat - 0.002, lon + 0.002, lat + 0.002);
            format!(
                r#"{{"type":"Feature","properties":{{"name":"{name}"}},"geometry":{{"type":"Polygon","coordinates":[[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]]}}}}"#
            )
        })
        .collect();
    std::fs::write(
        dir.join("sites.geojson"),
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        ),
    )
    .unwrap();
    let cfg = config(&dir, &format!(
        "seed=3\n[input]\nfiles=['{}']\n[release]\npolygons='sites.geojson'\nper_polygon=200\nz=-1.0\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=0.5\n[output]\nfile='sites.nc'\ninterval='30min'\ndensity={{ file='density.nc', cell_degrees=0.002, per_origin=true }}\n",
        file.display()
    )).unwrap();
    run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("sites.nc")).unwrap();
    let (lon, lat) = (out.lon.as_ref().unwrap(), out.lat.as_ref().unwrap());
    let f = shoal_manager::nc::open(dir.join("sites.nc")).unwrap();
    let origin: Vec<i32> = f.variable("origin").unwrap().get_values(..).unwrap();
    assert_eq!(out.n_traj, 400);
    for p in 0..out.n_traj {
        let (_, slon, slat) = sites[origin[p] as usize];
        let k = out.at(p, 0);
        assert!(
            (lon[k] - slon).abs() <= 0.002 + 1e-9 && (lat[k] - slat).abs() <= 0.002 + 1e-9,
            "particle {p} of site {} released at {}, {}",
            origin[p],
            lon[k],
            lat[k]
        );
    }
    assert_eq!(origin.iter().filter(|&&o| o == 1).count(), 200);
    let d = shoal_manager::nc::open(dir.join("density.nc")).unwrap();
    assert!(d.variable("lon").is_some() && d.variable("lat").is_some());
    let counts: Vec<i32> = d.variable("density").unwrap().get_values(..).unwrap();
    let active = out
        .status
        .iter()
        .filter(|s| **s == status::ACTIVE as i8)
        .count();
    // Every active particle of every output time is in some cell of the map.
    assert_eq!(counts.iter().sum::<i32>() as usize, active);
    xarray_check(&dir.join("sites.nc")).unwrap();
}

/// A larval run on the SFBOFS subset: releases from two sites, diel migration (the sun seen from
/// each element's lon/lat), mortality, lethal salinity, and settlement on two polygons in the
/// bay; the connectivity file accounts for every settled particle and xarray opens it.
#[test]
fn sfbofs_larvae_write_a_connectivity_matrix() {
    let Some(file) = real_file() else {
        eprintln!("skipped: SHOAL_REAL_FVCOM is not set");
        return;
    };
    let dir = scratch("sfbofs_larvae");
    use shoal_manager::tools::demo::{collection, square};
    std::fs::write(
        dir.join("sites.geojson"),
        collection(&[
            square("Raccoon Strait", (-122.471, 37.863), 0.002),
            square("Richardson Bay", (-122.5095, 37.8817), 0.002),
        ]),
    )
    .unwrap();
    std::fs::write(
        dir.join("reefs.geojson"),
        collection(&[
            square("Angel Island", (-122.471, 37.863), 0.008),
            square("Sausalito", (-122.5095, 37.8817), 0.008),
        ]),
    )
    .unwrap();
    let cfg = config(&dir, &format!(
        "seed=9\n[input]\nfiles=['{}']\n[release]\npolygons='sites.geojson'\nper_polygon=300\nz=-1.0\n[run]\nduration='3h'\ndt='60s'\n[diffusion]\nhorizontal_kh=0.5\n[behaviour]\nmortality_per_day=1.0\nsalinity_range=[5.0, 40.0]\n[behaviour.migration]\nday_depth=[4.0, 6.0]\nnight_depth=1.0\nswim_speed=0.005\n[settlement]\npolygons='reefs.geojson'\ncompetency=['1h', '3h']\nprobability_per_hour=0.5\n[output]\nfile='larvae.nc'\ninterval='30min'\nconnectivity='connectivity.nc'\n",
        file.display()
    )).unwrap();
    let report = run_quiet(&cfg, 2).unwrap();
    let out = Output::read(&dir.join("larvae.nc")).unwrap();
    let last = out.n_time - 1;
    let settled = (0..out.n_traj)
        .filter(|&p| out.status[out.at(p, last)] == status::SETTLED as i8)
        .count();
    assert!(settled > 0, "nobody settled: {:?}", report.last);
    assert_eq!(settled as u64, report.last.settled);
    let c = shoal_manager::nc::open(dir.join("connectivity.nc")).unwrap();
    let count: Vec<i32> = c.variable("count").unwrap().get_values(..).unwrap();
    assert_eq!(count.iter().sum::<i32>() as usize, settled);
    let released: Vec<i32> = c.variable("released").unwrap().get_values(..).unwrap();
    assert_eq!(released, [300, 300]);
    xarray_check(&dir.join("connectivity.nc")).unwrap();
    xarray_check(&dir.join("larvae.nc")).unwrap();
}
