//! Before a node trusts an adapter it runs a known problem on both paths and compares (some Pi
//! drivers compute wrong answers), then times both to see whether the GPU is worth it.

use super::{GpuContext, GpuError, GpuPartition};
use crate::Partition;
use shoal_common::kernel::{Integrator, StepContext, StepParams, VerticalMixing};
use shoal_common::rng::{draw, unit_open, Stream};
use shoal_common::{status, FieldLevel, Mesh, MeshInput, Particles, RawSlice, Window};
use std::sync::Arc;
use std::time::Instant;

/// Largest distance allowed between CPU and GPU positions after the self-test's 30 steps.
pub const SELF_TEST_TOLERANCE_M: f64 = 0.01;

/// A jittered 40 x 40 grid of 100 m squares at UTM-sized offsets with an open east side, 5 sigma
/// layers, and a time-varying flow: solid-body rotation with vertical shear plus an eastward
/// drift, so particles turn, reflect off land and leave through the open boundary.
pub fn reference_problem(n_particles: usize) -> (Mesh, Vec<FieldLevel>, Particles) {
    let (nx, ny, dx, x0, y0, nl) = (40usize, 40usize, 100.0, 500_000.0, 4_000_000.0, 5usize);
    let mut input = MeshInput::default();
    for j in 0..=ny {
        for i in 0..=nx {
            let n = (j * (nx + 1) + i) as u32;
            let jit = if i > 0 && i < nx && j > 0 && j < ny {
                25.0
            } else {
                0.0
            };
            let b = draw(99, n, 0, Stream::Sample);
            input
                .x
                .push(x0 + i as f64 * dx + jit * (unit_open(b[0]) - 0.5));
            input
                .y
                .push(y0 + j as f64 * dx + jit * (unit_open(b[1]) - 0.5));
            input.h.push(20.0);
        }
    }
    let id = |i: usize, j: usize| (j * (nx + 1) + i) as i64;
    for j in 0..ny {
        for i in 0..nx {
            input.nv.push([id(i, j), id(i + 1, j), id(i + 1, j + 1)]);
            input.nv.push([id(i, j), id(i + 1, j + 1), id(i, j + 1)]);
        }
    }
    input.n_layers = nl;
    input.siglay = (0..nl).map(|k| -((k as f32) + 0.5) / nl as f32).collect();
    input.siglev = (0..=nl).map(|k| -(k as f32) / nl as f32).collect();
    input.open_boundary_nodes = (0..=ny).map(|j| (j * (nx + 1) + nx) as u32).collect();
    let (mesh, _) = Mesh::build(input).expect("reference mesh");
    let ne = mesh.n_elements();
    let (cx, cy) = (x0 + 0.5 * nx as f64 * dx, y0 + 0.5 * ny as f64 * dx);
    let omega = std::f64::consts::TAU / 7200.0;
    let levels = [(0.0, 1.0), (3600.0, 1.3)]
        .iter()
        .map(|&(time, scale)| {
            let mut raw = RawSlice {
                time,
                u: vec![0.0; ne * nl],
                v: vec![0.0; ne * nl],
                ww: Some(vec![0.0; ne * nl]),
                zeta: vec![0.0; mesh.n_nodes()],
                temp: None,
                kh: None,
                salinity: None,
                wet: None,
            };
            for k in 0..nl {
                let shear = 1.0 + 0.3 * (-(k as f64 + 0.5) / nl as f64);
                for fe in 0..ne {
                    // Fields come in file order; the mesh stores elements in its own.
                    let e = mesh
                        .file_element
                        .iter()
                        .position(|&f| f as usize == fe)
                        .unwrap();
                    let g = mesh.geom(e);
                    raw.u[k * ne + fe] = (scale * shear * (-omega * (g.yc - cy) + 0.3)) as f32;
                    raw.v[k * ne + fe] = (scale * shear * omega * (g.xc - cx)) as f32;
                }
            }
            FieldLevel::from_slice(&mesh, &raw).expect("reference level")
        })
        .collect();
    let mut p = Particles::with_capacity(n_particles);
    for i in 0..n_particles {
        let b = draw(7, i as u32, 0, Stream::Sample);
        let x = x0 + 200.0 + (nx as f64 * dx - 400.0) * unit_open(b[0]);
        let y = y0 + 200.0 + (ny as f64 * dx - 400.0) * unit_open(b[1]);
        let e = mesh.locate(x, y, None).expect("inside");
        p.push(
            i as u32,
            x,
            y,
            -19.0 * unit_open(b[2]),
            e,
            status::ACTIVE,
            0.0,
        );
    }
    (mesh, levels, p)
}

pub fn reference_params() -> StepParams {
    StepParams {
        dt: 60.0,
        integrator: Integrator::Rk4,
        horizontal_kh: 0.5,
        vertical_mixing: VerticalMixing::Constant(1e-4),
        sinking_speed: 0.0,
        seed: 3,
        happiness: None,
        behaviour: None,
    }
}

#[derive(Clone, Debug)]
pub struct SelfTest {
    pub particles: usize,
    pub steps: u32,
    /// Largest CPU-GPU distance among particles with the same status.
    pub max_distance_m: f64,
    pub status_mismatches: usize,
    pub exited: u64,
}

impl SelfTest {
    pub fn passed(&self) -> bool {
        self.max_distance_m < SELF_TEST_TOLERANCE_M
            && self.status_mismatches * 200 <= self.particles
    }
}

/// Runs the reference problem on both paths and compares, particle by particle.
pub fn self_test(ctx: &Arc<GpuContext>) -> Result<SelfTest, GpuError> {
    let (mesh, levels, particles) = reference_problem(4000);
    let window = Window { levels: &levels };
    let params = reference_params();
    let steps = 30;
    let mut cpu = Partition::new(particles.clone());
    let mut gpu = GpuPartition::new(ctx.clone(), &mesh, particles, Default::default())?;
    let mut last = None;
    for s in 0..steps {
        let t = s as f64 * params.dt;
        cpu.advance(&StepContext::new(&mesh, window, &params, t, s));
        last = Some(gpu.step(&StepContext::new(&mesh, window, &params, t, s))?);
    }
    let g = gpu.download(&mesh)?.clone();
    let c = &cpu.particles;
    let mut by_id = vec![0usize; c.len()];
    for (i, id) in c.id.iter().enumerate() {
        by_id[*id as usize] = i;
    }
    let (mut worst, mut mismatches) = (0.0f64, 0);
    for i in 0..g.len() {
        let j = by_id[g.id[i] as usize];
        if g.status[i] != c.status[j] {
            mismatches += 1;
            continue;
        }
        let d = (g.x[i] - c.x[j]).hypot(g.y[i] - c.y[j]);
        if !d.is_finite() {
            worst = f64::INFINITY;
        } else {
            worst = worst.max(d);
        }
    }
    Ok(SelfTest {
        particles: g.len(),
        steps,
        max_distance_m: worst,
        status_mismatches: mismatches,
        exited: last.map(|t| t.exited).unwrap_or(0),
    })
}

/// Particle-steps per second of each path on the reference problem: (cpu, gpu).
pub fn calibrate(
    ctx: &Arc<GpuContext>,
    particles: usize,
    steps: u32,
) -> Result<(f64, f64), GpuError> {
    let (mesh, levels, p) = reference_problem(particles);
    let window = Window { levels: &levels };
    let mut params = reference_params();
    params.horizontal_kh = 0.0;
    params.vertical_mixing = VerticalMixing::None;
    let mut cpu = Partition::new(p.clone());
    let mut gpu = GpuPartition::new(ctx.clone(), &mesh, p, Default::default())?;
    cpu.advance(&StepContext::new(&mesh, window, &params, 0.0, 0));
    gpu.step(&StepContext::new(&mesh, window, &params, 0.0, 0))?;
    let t0 = Instant::now();
    for s in 1..=steps {
        cpu.advance(&StepContext::new(
            &mesh,
            window,
            &params,
            s as f64 * 60.0,
            s,
        ));
    }
    let cpu_rate = (particles as f64 * steps as f64) / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for s in 1..=steps {
        gpu.step(&StepContext::new(
            &mesh,
            window,
            &params,
            s as f64 * 60.0,
            s,
        ))?;
    }
    let gpu_rate = (particles as f64 * steps as f64) / t0.elapsed().as_secs_f64();
    Ok((cpu_rate, gpu_rate))
}
