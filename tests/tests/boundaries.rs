//! Land reflects, open boundaries retire particles with a status code, nothing leaves the mesh.

use shoal_common::{status, Mesh};
use shoal_manager::input::fvcom::FvcomReader;
use shoal_manager::tools::synth::{self, Flow, SynthOptions};
use shoal_tests::*;

/// A 4 km x 2 km channel with a uniform eastward current of `speed` m/s.
fn channel(speed: f64) -> SynthOptions {
    SynthOptions {
        flow: Flow::Uniform,
        nx: 20,
        ny: 10,
        dx: 200.0,
        jitter: 0.2,
        layers: 2,
        duration: 3.0 * 3600.0,
        speed,
        ..Default::default()
    }
}

fn mesh_of(path: &std::path::Path) -> Mesh {
    FvcomReader::open(&[path.to_path_buf()], &[]).unwrap().1
}

#[test]
fn land_reflection_keeps_every_particle_inside_the_mesh() {
    let dir = scratch("land");
    let o = SynthOptions {
        flow: Flow::Uniform,
        nx: 20,
        ny: 20,
        dx: 200.0,
        jitter: 0.3,
        layers: 2,
        duration: 6.0 * 3600.0,
        speed: 0.8,
        ..Default::default()
    };
    let path = synth_file(&dir, "box.nc", &o);
    let mesh = mesh_of(&path);
    let cfg = config(&dir, "seed=3\n[input]\nfiles=['box.nc']\n[release.generate]\ncount=500\n[run]\nduration='6h'\ndt='60s'\n[diffusion]\nhorizontal_kh=5.0\n[output]\nfile='out.nc'\ninterval='10min'\n").unwrap();
    let rep = run_quiet(&cfg, 2).unwrap();
    assert_eq!(rep.last.active, 500);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    let xmax = o.x0 + o.nx as f64 * o.dx;
    let mut near_east = 0;
    for p in 0..out.n_traj {
        for t in 0..out.n_time {
            let i = out.at(p, t);
            assert_eq!(out.status[i], status::ACTIVE as i8);
            assert!(
                mesh.contains(out.x[i], out.y[i]),
                "particle {p} outside the mesh at output {t}: {} {}",
                out.x[i],
                out.y[i]
            );
        }
        if out.x[out.at(p, out.n_time - 1)] > xmax - 500.0 {
            near_east += 1;
        }
    }
    // The flow pushed them against the east wall, where they stayed.
    assert!(near_east > 450, "{near_east} of 500 near the east wall");
}

#[test]
fn open_boundary_retires_particles_where_they_cross() {
    let dir = scratch("open");
    let o = channel(1.0);
    synth_file(&dir, "chan.nc", &o);
    synth::write_obc_east(&dir.join("chan_obc.dat"), &o).unwrap();
    let cfg = config(&dir, "[input]\nfiles=['chan.nc']\nopen_boundary_file='chan_obc.dat'\n[release.generate]\ncount=200\n[run]\nduration='2h'\ndt='60s'\n[output]\nfile='out.nc'\ninterval='5min'\n").unwrap();
    let rep = run_quiet(&cfg, 2).unwrap();
    assert_eq!(rep.last.exited, 200, "{:?}", rep.last);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    let xmax = o.x0 + o.nx as f64 * o.dx;
    for p in 0..out.n_traj {
        let mut exited = false;
        for t in 0..out.n_time {
            let i = out.at(p, t);
            if exited {
                assert_eq!(
                    out.status[i],
                    status::EXITED as i8,
                    "a retired particle came back"
                );
            }
            if out.status[i] == status::EXITED as i8 {
                exited = true;
                assert!(
                    (out.x[i] - xmax).abs() < 1e-6,
                    "exit point {} is not on the open boundary {xmax}",
                    out.x[i]
                );
            }
        }
        assert!(exited);
    }
}

#[test]
fn a_gnome_boundary_table_opens_the_same_edges_as_the_equivalent_obc_file() {
    let dir = scratch("bnd");
    let o = channel(0.5);
    synth_file(&dir, "obc.nc", &o);
    synth::write_obc_east(&dir.join("east_obc.dat"), &o).unwrap();
    synth_file(
        &dir,
        "bnd.nc",
        &SynthOptions {
            bnd: true,
            ..o.clone()
        },
    );
    let run = |file: &str, extra: &str, out: &str| {
        config(&dir, &format!("seed=3\n[input]\nfiles=['{file}']\n{extra}[release.generate]\ncount=300\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=2.0\n[output]\nfile='{out}'\ninterval='10min'\n"))
            .and_then(|c| run_quiet(&c, 2))
    };
    let a = run("obc.nc", "open_boundary_file='east_obc.dat'\n", "a.nc").unwrap();
    let b = run("bnd.nc", "", "b.nc").unwrap();
    assert!(a.last.exited > 100, "{:?}", a.last);
    assert_eq!(a.last, b.last);
    let (oa, ob) = (
        Output::read(&dir.join("a.nc")).unwrap(),
        Output::read(&dir.join("b.nc")).unwrap(),
    );
    assert_eq!((oa.x, oa.y, oa.status), (ob.x, ob.y, ob.status));
    // Both given and in agreement: fine. In disagreement: the error names a node and `bnd`.
    run("bnd.nc", "open_boundary_file='east_obc.dat'\n", "c.nc").unwrap();
    let e = format!(
        "{:#}",
        run("bnd.nc", "open_boundary_nodes=[1, 2]\n", "d.nc").unwrap_err()
    );
    assert!(
        e.contains("bnd.nc") && e.contains("`bnd`") && e.contains("node 1 "),
        "{e}"
    );
}
