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

/// Every kernel variant this CPU runs (scalar, SSE2, AVX2; NEON under qemu in the cross tests)
/// writes the same file, bit for bit, on the analytic flows and on meshes made to break the
/// geometry: rotation with diffusion and file mixing, a tide on a jittered mesh, sheared flow on
/// general sigma layers (the bracket search, not the arithmetic), and rotation over slivers
/// with a drying flat. Each variant runs in its own `shoal run --direct --kernel` process.
#[test]
fn every_kernel_variant_writes_the_same_bits() {
    let dir = scratch("kernels");
    let cases = [
        (
            "rotation",
            SynthOptions {
                flow: Flow::Rotation,
                kh: true,
                temp: true,
                ..Default::default()
            },
            "[diffusion]\nhorizontal_kh=2.0\nvertical='file'\n",
        ),
        (
            "tidal",
            SynthOptions {
                flow: Flow::Tidal,
                jitter: 0.3,
                ..Default::default()
            },
            "",
        ),
        (
            "shear",
            SynthOptions {
                flow: Flow::Shear,
                general_sigma: true,
                ..Default::default()
            },
            "[diffusion]\nvertical='constant'\nvertical_kh=0.001\n",
        ),
        (
            "slivers",
            SynthOptions {
                flow: Flow::Rotation,
                slivers: Some(0.02),
                drying: Some(0.3),
                ..Default::default()
            },
            "[diffusion]\nhorizontal_kh=5.0\n",
        ),
    ];
    let kernels: Vec<&str> = shoal_common::simd::Kernel::all_available()
        .iter()
        .map(|k| k.name())
        .collect();
    assert!(kernels.len() >= 2, "no vector variant here: {kernels:?}");
    for (name, o, extra) in cases {
        let o = SynthOptions {
            nx: 30,
            ny: 30,
            duration: 3.0 * 3600.0,
            ..o
        };
        synth_file(&dir, &format!("{name}.nc"), &o);
        let (cx, cy) = o.centre();
        for k in &kernels {
            std::fs::write(
                dir.join(format!("{name}-{k}.toml")),
                format!(
                    "seed=5\n[input]\nfiles=['{name}.nc']\n[release.generate]\ncount=2000\ncentre=[{cx},{cy}]\nradius=6000.0\nz=-2.0\n[run]\nduration='2h'\ndt='60s'\n{extra}[output]\nfile='{name}-{k}.nc'\ninterval='20min'\n"
                ),
            )
            .unwrap();
            let o = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
                .args(["run", &format!("{name}-{k}.toml"), "--direct", "--quiet"])
                .args(["--kernel", k])
                .current_dir(&dir)
                .env_remove("SHOAL_KERNEL")
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{name}, {k}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        for k in &kernels[1..] {
            files_bit_identical(
                &dir.join(format!("{name}-scalar.nc")),
                &dir.join(format!("{name}-{k}.nc")),
                true,
            )
            .unwrap_or_else(|e| panic!("{name}: {k} differs from scalar: {e:#}"));
        }
    }
}
