//! The GPU path on a real Vulkan driver (Mesa's lavapipe in CI): VideoCore limits, the self-test
//! against the CPU kernel, agreement on analytic flows, determinism. With SHOAL_REQUIRE_GPU set,
//! a missing adapter fails these tests instead of skipping them.

use shoal_node::gpu::selftest::{self_test, SELF_TEST_TOLERANCE_M};
use shoal_node::gpu::GpuContext;
use std::sync::{Arc, OnceLock};

pub fn context() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    match CTX.get_or_init(GpuContext::new) {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            assert!(
                std::env::var_os("SHOAL_REQUIRE_GPU").is_none(),
                "SHOAL_REQUIRE_GPU is set but: {e}"
            );
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

#[test]
fn self_test_passes_against_the_cpu_kernel() {
    let Some(ctx) = context() else { return };
    let r = self_test(&ctx).unwrap();
    eprintln!("self-test on {}: {r:?}", ctx.describe());
    assert!(r.passed(), "{r:?} (tolerance {SELF_TEST_TOLERANCE_M} m)");
    assert!(
        r.exited > 0,
        "the reference problem should exercise the open boundary"
    );
}

use shoal_common::{status, Mesh};
use shoal_manager::fvcom::FvcomReader;
use shoal_manager::synth::{self, Flow, SynthOptions};
use shoal_tests::*;

#[test]
fn the_device_has_exactly_the_videocore_limits() {
    let Some(ctx) = context() else { return };
    let l = ctx.device.limits();
    assert_eq!(l.max_storage_buffers_per_shader_stage, 8);
    assert_eq!(l.max_compute_invocations_per_workgroup, 256);
    assert_eq!(l.max_compute_workgroup_storage_size, 16 * 1024);
    assert_eq!(l.max_compute_workgroup_size_x, 256);
}

/// Runs `toml` (with `device` filled in) on the CPU and on the GPU; returns both outputs.
fn both(dir: &std::path::Path, toml: &str) -> (Output, Output) {
    let cpu = config(dir, &toml.replace("DEVICE", "cpu").replace("OUT", "cpu.nc")).unwrap();
    let rc = run_quiet(&cpu, 2).unwrap();
    assert!(rc.device.starts_with("cpu"), "{}", rc.device);
    let gpu = config(dir, &toml.replace("DEVICE", "gpu").replace("OUT", "gpu.nc")).unwrap();
    let rg = run_quiet(&gpu, 2).unwrap();
    assert!(rg.device.starts_with("gpu"), "{}", rg.device);
    assert_eq!(
        (rc.last.active, rc.last.exited),
        (rg.last.active, rg.last.exited)
    );
    (
        Output::read(&dir.join("cpu.nc")).unwrap(),
        Output::read(&dir.join("gpu.nc")).unwrap(),
    )
}

fn max_distance(a: &Output, b: &Output) -> f64 {
    (0..a.x.len())
        .map(|i| (a.x[i] - b.x[i]).hypot(a.y[i] - b.y[i]))
        .fold(0.0, f64::max)
}

/// CPU and GPU agree within this distance after an hour of solid-body rotation.
const ROTATION_TOLERANCE_M: f64 = 0.001;

#[test]
fn gpu_matches_cpu_on_an_hour_of_solid_body_rotation() {
    if context().is_none() {
        return;
    }
    let dir = scratch("gpu_rotation");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 50,
        ny: 50,
        dx: 400.0,
        layers: 4,
        duration: 2.0 * 3600.0,
        temp: false,
        ..Default::default()
    };
    synth_file(&dir, "rot.nc", &o);
    let (cx, cy) = o.centre();
    let (c, g) = both(&dir, &format!(
        "[input]\nfiles=['rot.nc']\n[release.generate]\ncount=2000\ncentre=[{cx},{cy}]\nradius=8000.0\nz=-2.0\n[run]\nduration='1h'\ndt='60s'\ndevice='DEVICE'\n[output]\nfile='OUT'\ninterval='10min'\n"
    ));
    assert_eq!(c.status, g.status);
    let d = max_distance(&c, &g);
    eprintln!(
        "rotation, 1 h: largest CPU-GPU distance {:.3} mm",
        d * 1000.0
    );
    assert!(d < ROTATION_TOLERANCE_M, "{d} m");
    // Depth in the output comes from the same column interpolation.
    let dz =
        c.z.iter()
            .zip(&g.z)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
    assert!(dz < 1e-3, "{dz}");
}

#[test]
fn gpu_retires_the_same_particles_at_the_open_boundary() {
    if context().is_none() {
        return;
    }
    let dir = scratch("gpu_open");
    let o = SynthOptions {
        flow: Flow::Uniform,
        nx: 20,
        ny: 10,
        dx: 200.0,
        layers: 2,
        duration: 3.0 * 3600.0,
        speed: 1.0,
        temp: false,
        ..Default::default()
    };
    synth_file(&dir, "chan.nc", &o);
    synth::write_obc_east(&dir.join("chan_obc.dat"), &o).unwrap();
    let (c, g) = both(&dir, "[input]\nfiles=['chan.nc']\nopen_boundary_file='chan_obc.dat'\n[release.generate]\ncount=300\n[run]\nduration='2h'\ndt='60s'\ndevice='DEVICE'\n[output]\nfile='OUT'\ninterval='5min'\n");
    assert_eq!(c.status, g.status, "statuses differ");
    assert!(g.status.iter().any(|s| *s == status::EXITED as i8));
    let d = max_distance(&c, &g);
    assert!(d < 0.01, "exit points differ by {d} m");
}

#[test]
fn gpu_keeps_diffusing_particles_inside_land_and_is_deterministic() {
    let Some(_) = context() else { return };
    let dir = scratch("gpu_land");
    let o = SynthOptions {
        flow: Flow::Uniform,
        nx: 20,
        ny: 20,
        dx: 200.0,
        jitter: 0.3,
        layers: 2,
        duration: 3.0 * 3600.0,
        speed: 0.8,
        temp: false,
        ..Default::default()
    };
    let path = synth_file(&dir, "box.nc", &o);
    let mesh: Mesh = FvcomReader::open(&[path], &[]).unwrap().1;
    let toml = |out: &str| {
        format!("seed=3\n[input]\nfiles=['box.nc']\n[release.generate]\ncount=500\n[run]\nduration='3h'\ndt='60s'\ndevice='gpu'\n[diffusion]\nhorizontal_kh=5.0\nvertical='constant'\nvertical_kh=0.001\n[output]\nfile='{out}'\ninterval='10min'\n")
    };
    run_quiet(&config(&dir, &toml("a.nc")).unwrap(), 2).unwrap();
    run_quiet(&config(&dir, &toml("b.nc")).unwrap(), 2).unwrap();
    files_bit_identical(&dir.join("a.nc"), &dir.join("b.nc"), false).unwrap();
    let out = Output::read(&dir.join("a.nc")).unwrap();
    for p in 0..out.n_traj {
        for t in 0..out.n_time {
            let i = out.at(p, t);
            assert_eq!(out.status[i], status::ACTIVE as i8);
            assert!(
                mesh.contains(out.x[i], out.y[i]),
                "particle {p} outside at output {t}"
            );
            assert!((-20.0..=0.0).contains(&out.z[i]), "z {}", out.z[i]);
        }
    }
}

#[test]
fn auto_says_why_it_chose_and_gpu_refuses_what_it_cannot_do() {
    let dir = scratch("gpu_choice");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 10,
        ny: 10,
        duration: 3.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let base = "[input]\nfiles=['f.nc']\n[release.generate]\ncount=50\n[run]\nduration='1h'\ndevice='DEVICE'\n[behaviour]\npreferred_temperature=15.0\n[output]\nfile='o.nc'\n";
    let rep = run_quiet(&config(&dir, &base.replace("DEVICE", "auto")).unwrap(), 1).unwrap();
    assert!(
        rep.device.starts_with("cpu: ") && rep.device.contains("temperature"),
        "{}",
        rep.device
    );
    let err = run_quiet(&config(&dir, &base.replace("DEVICE", "gpu")).unwrap(), 1).unwrap_err();
    assert!(format!("{err:#}").contains("run.device"), "{err:#}");
    // Without the happiness the choice is the adapter's (or its absence), stated either way.
    let plain = base
        .replace("[behaviour]\npreferred_temperature=15.0\n", "")
        .replace("DEVICE", "auto");
    let rep = run_quiet(&config(&dir, &plain).unwrap(), 1).unwrap();
    if context().is_some() {
        assert!(
            rep.device.contains("self-test") && rep.device.contains("passed"),
            "{}",
            rep.device
        );
    }
}

#[test]
fn gpu_matches_cpu_on_sheared_flow_and_on_a_tide() {
    if context().is_none() {
        return;
    }
    // Sheared 3-D flow: exercises the GPU's interpolation between sigma layers.
    let dir = scratch("gpu_shear");
    let o = SynthOptions {
        flow: Flow::Shear,
        nx: 40,
        ny: 10,
        dx: 500.0,
        layers: 10,
        depth: 20.0,
        duration: 3.0 * 3600.0,
        speed: 0.5,
        temp: false,
        ..Default::default()
    };
    synth_file(&dir, "shear.nc", &o);
    let (c, g) = both(&dir, &format!(
        "[input]\nfiles=['shear.nc']\n[release.generate]\ncount=500\ncentre=[{},{}]\nradius=1500.0\nz=-7.0\n[run]\nduration='2h'\ndt='60s'\ndevice='DEVICE'\n[diffusion]\nvertical='constant'\nvertical_kh=0.0005\n[output]\nfile='OUT'\ninterval='20min'\n",
        o.x0 + 3000.0,
        o.centre().1
    ));
    assert_eq!(c.status, g.status);
    let d = max_distance(&c, &g);
    eprintln!(
        "shear, 2 h with vertical mixing: largest CPU-GPU distance {:.3} mm",
        d * 1000.0
    );
    // The vertical walk's draws are f32 on the GPU and f64 on the CPU; through the shear the
    // tiny depth differences become horizontal ones (0.9 mm measured on lavapipe).
    assert!(d < 0.002, "{d} m");
    // A tide: exercises the interpolation in time at each stage's own time.
    let dir = scratch("gpu_tide");
    let o = SynthOptions {
        flow: Flow::Tidal,
        nx: 80,
        ny: 16,
        dx: 500.0,
        layers: 2,
        duration: 7.0 * 3600.0,
        period: 12.42 * 3600.0,
        temp: false,
        ..Default::default()
    };
    synth_file(&dir, "tide.nc", &o);
    let (cx, cy) = o.centre();
    let (c, g) = both(&dir, &format!(
        "[input]\nfiles=['tide.nc']\n[release.generate]\ncount=200\ncentre=[{cx},{cy}]\nradius=2000.0\n[run]\nduration='6h'\ndt='120s'\ndevice='DEVICE'\n[output]\nfile='OUT'\ninterval='30min'\n"
    ));
    let d = max_distance(&c, &g);
    eprintln!("tide, 6 h: largest CPU-GPU distance {:.3} mm", d * 1000.0);
    assert!(d < 0.01, "{d} m");
}
