//! Invariant 1 on one machine: the same run with 1 and 2 threads is bit-identical, random walks
//! and particle sorting included.

use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;

#[test]
fn one_and_two_threads_give_bit_identical_output() {
    let dir = scratch("threads");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 30,
        ny: 30,
        kh: true,
        temp: true,
        duration: 4.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let (cx, cy) = o.centre();
    let toml = |out: &str| {
        format!(
        "seed=99\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=3000\ncentre=[{cx},{cy}]\nradius=4000.0\nz=-5.0\n[run]\nduration='3h'\ndt='45s'\nsort_every=3\n[diffusion]\nhorizontal_kh=2.0\nvertical='file'\n[behaviour]\npreferred_temperature=15.0\nsinking_speed=0.0005\n[output]\nfile='{out}'\ninterval='15min'\n"
    )
    };
    let one = config(&dir, &toml("one.nc")).unwrap();
    let r1 = run_quiet(&one, 1).unwrap();
    let two = config(&dir, &toml("two.nc")).unwrap();
    let r2 = run_quiet(&two, 2).unwrap();
    assert_eq!(r1.threads, 1);
    assert_eq!(r2.threads, 2);
    assert_eq!(r1.last, r2.last);
    files_bit_identical(&dir.join("one.nc"), &dir.join("two.nc"), false).unwrap();
    // Random walks really happened (the comparison is not between two still pictures).
    let out = Output::read(&dir.join("one.nc")).unwrap();
    let spread = (0..out.n_traj)
        .filter(|&p| (out.z[out.at(p, out.n_time - 1)] + 5.0).abs() > 0.1)
        .count();
    assert!(spread > 1000, "{spread}");
}
