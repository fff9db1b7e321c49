//! The GPU path: one fused RK4 step per dispatch (`step.wgsl`), particle state resident on the
//! device, field levels uploaded once each, only step counts (48 bytes) read back per step and
//! whole state only for snapshots. The device is created once per node with the limits of a
//! Raspberry Pi's VideoCore (8 storage buffers per stage, 256 invocations and 16 KiB of shared
//! memory per workgroup) so that what passes here runs there. The CPU kernel stays the
//! reference: a self-test compares the two before a GPU is trusted.
//!
//! The module's files by job: `context.rs` the device and its limits, `layout.rs` the records
//! shared with the shader, `levels.rs` field levels in the device's slots, `slots.rs` particle
//! slots and reading them back; here the partition's making and its step, and [`GpuError`].

mod context;
mod layout;
mod levels;
pub mod selftest;
mod slots;

pub use context::{videocore_limits, GpuContext};
pub use layout::{GpuParticle, VACANT};

use context::{bind, check_size, read_buffer};
use layout::{to_gpu, GpuElement, Params, Stage, COUNTS, COUNTS_BYTES, WORKGROUP};
use shoal_common::kernel::{Integrator, StepContext, StepParams, Tally, VerticalMixing};
use shoal_common::{FieldLevel, Mesh, Particles};
use slots::particle_buffers;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Why the GPU path failed. Its text is what the path said before it had a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuError {
    /// No Vulkan adapter, or none whose name contains `named` (`SHOAL_GPU_ADAPTER`).
    NoAdapter { named: Option<String> },
    /// The adapter would not open a device with the limits asked for; `adapter` is its name
    /// and backend.
    OpenDevice { adapter: String, reason: String },
    /// A buffer beyond the adapter's limits (see `check_size`).
    TooLarge { what: String, bytes: u64, max: u64 },
    /// A node's partition map does not cover the mesh's elements.
    PartitionMap { map: usize, mesh: usize },
    /// A step would read more field levels than the device's three slots.
    TooManyLevels,
    /// Waiting for the device failed or ran past its patience.
    Wait { secs: u64, reason: String },
    /// Mapping or reading a buffer back failed.
    Readback(String),
    /// The device named a particle slot beyond those in use.
    BadSlot { slot: usize, n: usize },
}

impl std::fmt::Display for GpuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuError::NoAdapter { named: Some(w) } => {
                write!(f, "no Vulkan adapter named like `{w}` (SHOAL_GPU_ADAPTER)")
            }
            GpuError::NoAdapter { named: None } => {
                f.write_str("no Vulkan adapter found (install a Vulkan driver, e.g. Mesa's)")
            }
            GpuError::OpenDevice { adapter, reason } => {
                write!(f, "{adapter}: cannot open device: {reason}")
            }
            GpuError::TooLarge { what, bytes, max } => {
                write!(f, "{what} needs {bytes} bytes, more than the adapter's {max}")
            }
            GpuError::PartitionMap { map, mesh } => {
                write!(f, "the partition map has {map} elements, the mesh {mesh}")
            }
            GpuError::TooManyLevels => f.write_str(
                "a step reads more than three field levels (the time step is longer than the field interval); the GPU path holds three",
            ),
            GpuError::Wait { secs, reason } => {
                write!(f, "waiting for the GPU ({secs} s at most): {reason}")
            }
            GpuError::Readback(why) => write!(f, "GPU readback: {why}"),
            GpuError::BadSlot { slot, n } => write!(f, "the device named slot {slot} of {n}"),
        }
    }
}

impl std::error::Error for GpuError {}

/// What a run reads from its field levels besides velocities and the free surface, so that a
/// [`GpuPartition`] makes room for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Vertical mixing with `kh` from the file.
    pub kh: bool,
    /// Temperature, for the happiest-particle example.
    pub temperature: bool,
}

impl Needs {
    pub fn of(params: &StepParams) -> Needs {
        Needs {
            kh: params.vertical_mixing == VerticalMixing::FromFile,
            temperature: params.happiness.is_some(),
        }
    }
}

/// Why the GPU path cannot run this configuration, if it cannot.
/// `shortest_interval`: the smallest spacing of the run's field times, seconds (a step that
/// spans more than one interval would read four levels; the GPU holds three).
pub fn unsupported(params: &StepParams, shortest_interval: Option<f64>) -> Option<String> {
    if let Some(i) = shortest_interval.filter(|i| params.dt.abs() > *i) {
        return Some(format!(
            "the time step ({} s) is longer than the field interval ({i} s), so a step would read four field levels; the GPU path holds three",
            params.dt.abs()
        ));
    }
    if params.dt < 0.0 {
        return Some("backward tracking runs on the CPU only".into());
    }
    if let Some(b) = &params.behaviour {
        let mut what = Vec::new();
        if b.stages.len() > 1 {
            what.push("stages by age");
        }
        if b.migrates() {
            what.push("diel migration");
        }
        if b.stages.iter().any(|s| s.mortality_rate > 0.0) {
            what.push("mortality");
        }
        if b.temperature_range.is_some() || b.salinity_range.is_some() {
            what.push("lethal temperature or salinity");
        }
        if b.settlement.is_some() {
            what.push("settlement");
        }
        if what.is_empty() {
            what.push("larval behaviour");
        }
        return Some(format!(
            "{} run on the CPU only (the GPU kernel moves passive particles)",
            what.join(", ")
        ));
    }
    None
}

/// A partition whose particles live on the GPU.
pub struct GpuPartition {
    ctx: Arc<GpuContext>,
    /// Particle slots in use (vacant ones included), and the slots the buffers have room for.
    n: usize,
    cap: usize,
    /// The mesh's sizes, as the device's levels are laid out.
    n_elements: usize,
    n_nodes: usize,
    n_layers: usize,
    particles: wgpu::Buffer,
    staging: [wgpu::Buffer; 2],
    next_staging: usize,
    elements: wgpu::Buffer,
    sig: wgpu::Buffer,
    /// Field levels' coefficients, a buffer per slot: two, and a third once a step straddles
    /// a field time (it then needs three levels).
    coef: Vec<wgpu::Buffer>,
    coef_bytes: u64,
    /// Each slot's scalars (free surface, `kh`, temperature), `scal_len` floats a slot.
    scal: wgpu::Buffer,
    scal_len: usize,
    counts: wgpu::Buffer,
    counts_staging: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    /// Model time of the level in each slot.
    slot_time: [f64; 3],
    /// Where the nodes' level sigmas start in the `sig` buffer.
    lev_base: u32,
    /// Whether the level buffers hold `kh`.
    kh_room: bool,
    /// Where the nodes' layer sigmas start in `sig`, and temperature in the level buffers.
    lay_base: u32,
    temp_base: u32,
    temp_room: bool,
    /// The CPU copy, refreshed by [`GpuPartition::download`]; a vacant slot's status is
    /// [`VACANT`].
    pub mirror: Particles,
    /// On a node: the partition this one is; `None` on the one-machine path.
    me: Option<u32>,
    /// Vacant slots, for the migrants that come in.
    vacant: Vec<u32>,
    /// What the last step found: migrants waiting in the counts buffer, particles it
    /// quarantined.
    migrants: usize,
    quarantined: usize,
    /// Bytes read back from the device since the partition was made.
    pub readback_bytes: u64,
}

impl GpuPartition {
    /// `needs`: room in each field level for what the run reads besides velocities.
    pub fn new(
        ctx: Arc<GpuContext>,
        mesh: &Mesh,
        particles: Particles,
        needs: Needs,
    ) -> Result<Self, GpuError> {
        Self::build(ctx, mesh, particles, needs, None)
    }

    /// A node's partition `me` of a mesh split by `part_of`: after each step the particles in
    /// elements another partition owns are found on the device and read back as migrants
    /// ([`GpuPartition::take_migrants`]), and migrants coming in take their slots
    /// ([`GpuPartition::append`]).
    pub fn on_node(
        ctx: Arc<GpuContext>,
        mesh: &Mesh,
        particles: Particles,
        needs: Needs,
        part_of: &[u32],
        me: u32,
    ) -> Result<Self, GpuError> {
        if part_of.len() != mesh.n_elements() {
            return Err(GpuError::PartitionMap {
                map: part_of.len(),
                mesh: mesh.n_elements(),
            });
        }
        Self::build(ctx, mesh, particles, needs, Some((part_of, me)))
    }

    fn build(
        ctx: Arc<GpuContext>,
        mesh: &Mesh,
        particles: Particles,
        needs: Needs,
        owner: Option<(&[u32], u32)>,
    ) -> Result<Self, GpuError> {
        let n = particles.len();
        // Room for migrants coming in without growing at once.
        let cap = if owner.is_some() {
            n + n / 4 + 64
        } else {
            n.max(1)
        };
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for g in (0..mesh.n_elements()).map(|e| mesh.geom(e)) {
            x0 = x0.min(g.xc);
            x1 = x1.max(g.xc);
            y0 = y0.min(g.yc);
            y1 = y1.max(g.yc);
        }
        let origin = (0.5 * (x0 + x1), 0.5 * (y0 + y1));
        let elements: Vec<GpuElement> = (0..mesh.n_elements())
            .map(|e| {
                let g = mesh.geom(e);
                let (dx, dy) = (g.xc - origin.0, g.yc - origin.1);
                GpuElement {
                    xc: dx as f32,
                    yc: dy as f32,
                    xl: (dx - dx as f32 as f64) as f32,
                    yl: (dy - dy as f32 as f64) as f32,
                    b: g.b.map(|v| v as f32),
                    c: g.c.map(|v| v as f32),
                    h: mesh.h_elem(e),
                    nbe: mesh.nbe[e],
                    nv: mesh.nv[e],
                    owner: owner.map_or(0, |(part_of, _)| part_of[e]),
                }
            })
            .collect();
        let nl = mesh.vertical.n_layers;
        // Each element's layer sigmas, where layers are uneven or vary from node to node
        // (FVCOM's generalized sigma); a placeholder otherwise.
        let mut sig: Vec<f32> = if nl > 1 && mesh.vertical.even_layers.is_none() {
            (0..mesh.n_elements())
                .flat_map(|e| mesh.siglay_elem(e).into_owned())
                .collect()
        } else {
            vec![0.0; 4]
        };
        // Then the nodes' level sigmas (one column where all nodes share it), for `kh`, and
        // their layer sigmas, for temperature.
        let lev_base = sig.len() as u32;
        sig.extend_from_slice(&mesh.vertical.siglev_node);
        let lay_base = sig.len() as u32;
        sig.extend_from_slice(&mesh.vertical.siglay_node);
        let coef_bytes = (mesh.n_elements() * nl * 48) as u64;
        check_size(&ctx, "the field coefficients", coef_bytes)?;
        check_size(&ctx, "the layer sigmas", (sig.len() * 4) as u64)?;
        let d = &ctx.device;
        let (particles_buf, staging, counts) = particle_buffers(&ctx, cap, owner.is_some())?;
        if n > 0 {
            ctx.queue.write_buffer(
                &particles_buf,
                0,
                bytemuck::cast_slice(&to_gpu(&particles, mesh)),
            );
        }
        let elements_buf = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("elements"),
            contents: bytemuck::cast_slice(&elements),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let sig_buf = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("layer sigmas"),
            contents: bytemuck::cast_slice(&sig),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let level_buf = |label: &str, size: u64| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let coef = vec![
            level_buf("coef 0", coef_bytes),
            level_buf("coef 1", coef_bytes),
        ];
        // Each slot's scalars: the free surface at each element's nodes (4 floats per
        // element), then, for `kh` from the file, n_levels values per node.
        let kh_floats = if needs.kh {
            mesh.n_nodes() * mesh.vertical.n_levels()
        } else {
            0
        };
        // Then temperature, n_layers values per node.
        let temp_floats = if needs.temperature {
            mesh.n_nodes() * nl
        } else {
            0
        };
        let temp_base = (mesh.n_elements() * 4 + kh_floats) as u32;
        let scal_len = mesh.n_elements() * 4 + kh_floats + temp_floats;
        let scal_bytes = (3 * scal_len * 4) as u64;
        check_size(
            &ctx,
            "the field levels' surface, diffusivity and temperature",
            scal_bytes,
        )?;
        let scal = level_buf("scalars", scal_bytes);
        let counts_staging = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("counts staging"),
            size: COUNTS_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind_group = bind(
            &ctx,
            [&params, &particles_buf, &elements_buf],
            [&coef[0], &coef[1], &coef[0]],
            [&scal, &counts, &sig_buf],
        );
        Ok(GpuPartition {
            ctx: ctx.clone(),
            n,
            cap,
            n_elements: mesh.n_elements(),
            n_nodes: mesh.n_nodes(),
            n_layers: nl,
            particles: particles_buf,
            staging,
            next_staging: 0,
            elements: elements_buf,
            sig: sig_buf,
            coef,
            coef_bytes,
            scal,
            scal_len,
            counts,
            counts_staging,
            params,
            bind_group,
            slot_time: [f64::NAN; 3],
            lev_base,
            kh_room: kh_floats > 0,
            lay_base,
            temp_base,
            temp_room: temp_floats > 0,
            mirror: particles,
            me: owner.map(|(_, me)| me),
            vacant: Vec::new(),
            migrants: 0,
            quarantined: 0,
            readback_bytes: 0,
        })
    }

    /// One step from `t` to `t + dt`; its stages may lie in different field intervals.
    pub fn step(&mut self, cx: &StepContext) -> Result<Tally, GpuError> {
        let (mesh, window, params, t, step) = (cx.mesh, cx.window, cx.params, cx.t, cx.step);
        // The levels around each stage time (start, middle, end) and the later one's weight,
        // as the CPU's kernel brackets them.
        let times = [t, t + 0.5 * params.dt, t + params.dt];
        let brackets = times.map(|tau| window.bracket(tau));
        let levels: Vec<&FieldLevel> = brackets.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
        let slots = self.place(&levels)?;
        let stage = |k: usize| {
            let w = brackets[k].2;
            Stage {
                a: slots[2 * k],
                b: slots[2 * k + 1],
                w: w as f32,
                edge: u32::from(w <= 0.0) | (u32::from(w >= 1.0) << 1),
            }
        };
        let all = |f: fn(&FieldLevel) -> bool| levels.iter().all(|l| f(l));
        let (sig_first, sig_step) = mesh.vertical.even_layers.unwrap_or((-0.5, -1.0));
        let p = Params {
            n: self.n as u32,
            n_layers: mesh.vertical.n_layers as u32,
            step,
            integrator: match params.integrator {
                Integrator::Euler => 0,
                Integrator::Rk4 => 1,
            },
            seed_lo: params.seed as u32,
            seed_hi: (params.seed >> 32) as u32,
            max_walk: shoal_common::mesh::MAX_WALK as u32,
            clock: t as f32,
            dt: params.dt as f32,
            horizontal_kh: params.horizontal_kh as f32,
            vertical_kh: match params.vertical_mixing {
                VerticalMixing::Constant(k) => k as f32,
                _ => 0.0,
            },
            sinking: params.sinking_speed as f32,
            sig_first: sig_first as f32,
            sig_step: sig_step as f32,
            uneven: u32::from(mesh.vertical.n_layers > 1 && mesh.vertical.even_layers.is_none()),
            kh_file: u32::from(
                params.vertical_mixing == VerticalMixing::FromFile
                    && self.kh_room
                    && all(|l| l.kh.is_some()),
            ),
            n_levels: mesh.vertical.n_levels() as u32,
            lev_base: self.lev_base,
            lev_uniform: u32::from(mesh.vertical.uniform),
            kh_base: (mesh.n_elements() * 4) as u32,
            happy: u32::from(params.happiness.is_some()),
            temp_on: u32::from(self.temp_room && all(|l| l.temp.is_some())),
            temp_base: self.temp_base,
            lay_base: self.lay_base,
            preferred: params
                .happiness
                .map_or(0.0, |h| h.preferred_temperature as f32),
            tolerance: params.happiness.map_or(1.0, |h| h.tolerance as f32),
            threshold: params.happiness.map_or(0.0, |h| h.threshold as f32),
            scal_len: self.scal_len as u32,
            s0: stage(0),
            sh: stage(1),
            s1: stage(2),
            me: self.me.unwrap_or(0),
            cap: self.cap as u32,
            node: u32::from(self.me.is_some()),
            pad: 0,
        };
        let q = &self.ctx.queue;
        q.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        // Counts by status, then the happy count, the highest happiness (f32 bits: happiness is
        // never negative, so the bits order as the numbers) and the smallest id holding it.
        let mut zeroed = [0u32; COUNTS];
        zeroed[7] = u32::MAX;
        q.write_buffer(&self.counts, 0, bytemuck::cast_slice(&zeroed));
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.ctx.pipeline);
            pass.set_bind_group(0, &self.bind_group, &[]);
            let groups = (self.n as u32).div_ceil(WORKGROUP).max(1);
            let gx = groups.min(65_535);
            pass.dispatch_workgroups(gx, groups.div_ceil(gx), 1);
            if params.happiness.is_some() {
                // Once every particle's happiness is in, the smallest id at the maximum.
                pass.set_pipeline(&self.ctx.happiest);
                pass.dispatch_workgroups(gx, groups.div_ceil(gx), 1);
            }
            if self.me.is_some() {
                // Then the particles that left the partition, out of their slots.
                pass.set_pipeline(&self.ctx.emigrate);
                pass.dispatch_workgroups(gx, groups.div_ceil(gx), 1);
            }
        }
        enc.copy_buffer_to_buffer(&self.counts, 0, &self.counts_staging, 0, COUNTS_BYTES);
        q.submit([enc.finish()]);
        let c = read_buffer(&self.ctx, &self.counts_staging, COUNTS_BYTES)?;
        self.readback_bytes += COUNTS_BYTES;
        let c: &[u32] = bytemuck::cast_slice(&c);
        self.migrants = c[9] as usize;
        self.quarantined = c[10] as usize;
        let mut tally = Tally::empty();
        tally.active = c[0] as u64;
        tally.pending = c[1] as u64;
        tally.exited = c[2] as u64;
        tally.bad_field = c[3] as u64;
        tally.outside_mesh = c[4] as u64;
        tally.stranded = c[8] as u64;
        if params.happiness.is_some() && tally.active > 0 {
            tally.happy = c[5] as u64;
            tally.max_happiness = f32::from_bits(c[6]);
            tally.happiest = c[7];
        }
        Ok(tally)
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

#[cfg(test)]
mod tests {
    use super::GpuError;

    #[test]
    fn errors_read_as_the_messages_they_replace() {
        let named = GpuError::NoAdapter {
            named: Some("V3D".into()),
        };
        assert_eq!(
            named.to_string(),
            "no Vulkan adapter named like `V3D` (SHOAL_GPU_ADAPTER)"
        );
        let big = GpuError::TooLarge {
            what: "the particle state".into(),
            bytes: 10,
            max: 8,
        };
        assert_eq!(
            big.to_string(),
            "the particle state needs 10 bytes, more than the adapter's 8"
        );
        let map = GpuError::PartitionMap { map: 3, mesh: 4 };
        assert_eq!(
            map.to_string(),
            "the partition map has 3 elements, the mesh 4"
        );
        let slot = GpuError::BadSlot { slot: 9, n: 5 };
        assert_eq!(slot.to_string(), "the device named slot 9 of 5");
        assert_eq!(
            GpuError::Readback("mapping failed".into()).to_string(),
            "GPU readback: mapping failed"
        );
    }
}
