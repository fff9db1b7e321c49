//! The real SFBOFS subset (../shared/data): nine hours of tracking in San Francisco Bay.
//! Found through SHOAL_REAL_FVCOM; where that is unset the test says it was skipped.

use shoal_common::status;
use shoal_manager::fvcom::FvcomReader;
use shoal_tests::*;
use std::path::PathBuf;

fn real_file() -> Option<PathBuf> {
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
    let (reader, mesh, _) = FvcomReader::open(&[file.clone()], &[]).unwrap();
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
