//! The GPU path: one fused RK4 step per dispatch (`step.wgsl`), particle state resident on the
//! device, field levels uploaded once each, only step counts (32 bytes) read back per step and
//! whole state only for snapshots. The device is created once per node with the limits of a
//! Raspberry Pi's VideoCore (8 storage buffers per stage, 256 invocations and 16 KiB of shared
//! memory per workgroup) so that what passes here runs there. The CPU kernel stays the
//! reference: a self-test compares the two before a GPU is trusted.

use shoal_common::kernel::{Integrator, StepParams, Tally, VerticalMixing};
use shoal_common::{status, FieldLevel, Mesh, Particles, Window};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Invocations per workgroup; the shader's `@workgroup_size` says the same.
const WORKGROUP: u32 = 64;

// Mirrors `struct Particle` in step.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GpuParticle {
    /// Offset from the host element's centroid, metres.
    ox: f32,
    oy: f32,
    z: f32,
    release: f32,
    elem: u32,
    status: u32,
    id: u32,
    pad: u32,
}

// Mirrors `struct Element` in step.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct GpuElement {
    /// Centroid relative to the partition's origin as (hi, lo) f32 pairs.
    xc: f32,
    yc: f32,
    xl: f32,
    yl: f32,
    b: [f32; 3],
    c: [f32; 3],
    h: [f32; 3],
    nbe: [u32; 3],
}

// Mirrors `struct Params` in step.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    n_layers: u32,
    step: u32,
    integrator: u32,
    seed_lo: u32,
    seed_hi: u32,
    max_walk: u32,
    /// Run clock at the step's start (release times are on it).
    clock: f32,
    t: f32,
    dt: f32,
    span: f32,
    horizontal_kh: f32,
    vertical_kh: f32,
    sinking: f32,
    sig_first: f32,
    sig_step: f32,
}

/// The limits a Raspberry Pi 4/5 VideoCore offers through Vulkan, requested exactly.
pub fn videocore_limits(adapter: &wgpu::Limits) -> wgpu::Limits {
    let mut l = wgpu::Limits::downlevel_defaults();
    l.max_storage_buffers_per_shader_stage = 8;
    l.max_compute_invocations_per_workgroup = 256;
    l.max_compute_workgroup_size_x = 256;
    l.max_compute_workgroup_size_y = 256;
    l.max_compute_workgroup_size_z = 64;
    l.max_compute_workgroup_storage_size = 16 * 1024;
    l.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size.min(1 << 30);
    l.max_buffer_size = adapter.max_buffer_size.min(1 << 30);
    l
}

/// A device, its queue and the compiled step pipeline: built once per node.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: wgpu::AdapterInfo,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl GpuContext {
    /// Picks the best Vulkan adapter (discrete, integrated, virtual, then CPU ones such as
    /// lavapipe); `SHOAL_GPU_ADAPTER` chooses by name instead.
    pub fn new() -> Result<Arc<GpuContext>, String> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
        let wanted = std::env::var("SHOAL_GPU_ADAPTER").ok();
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let adapter = adapters
            .into_iter()
            .filter(|a| {
                wanted
                    .as_ref()
                    .is_none_or(|w| a.get_info().name.contains(w.as_str()))
            })
            .min_by_key(rank)
            .ok_or_else(|| match &wanted {
                Some(w) => format!("no Vulkan adapter named like `{w}` (SHOAL_GPU_ADAPTER)"),
                None => {
                    "no Vulkan adapter found (install a Vulkan driver, e.g. Mesa's)".to_string()
                }
            })?;
        let info = adapter.get_info();
        let limits = videocore_limits(&adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shoal node"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| {
            format!(
                "{} ({:?}): cannot open device: {e}",
                info.name, info.backend
            )
        })?;
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("step.wgsl"),
            source: wgpu::ShaderSource::Wgsl(include_str!("step.wgsl").into()),
        });
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("step"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, false),
                storage(2, true),
                storage(3, true),
                storage(4, true),
                storage(5, true),
                storage(6, true),
                storage(7, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("step"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("step"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("step"),
            compilation_options: Default::default(),
            cache: None,
        });
        Ok(Arc::new(GpuContext {
            device,
            queue,
            adapter: info,
            pipeline,
            layout,
        }))
    }

    /// "name (backend, device type)", for logs and `shoal doctor`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.adapter.name, self.adapter.backend, self.adapter.device_type
        )
    }
}

/// Why the GPU path cannot run this configuration, if it cannot.
pub fn unsupported(mesh: &Mesh, params: &StepParams, needs_temperature: bool) -> Option<String> {
    if needs_temperature {
        return Some(
            "behaviour needs temperature (happiness), which the GPU kernel does not interpolate"
                .into(),
        );
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
    if params.vertical_mixing == VerticalMixing::FromFile {
        return Some("vertical mixing with kh from the file runs on the CPU only".into());
    }
    if mesh.vertical.n_layers > 1 && mesh.vertical.even_layers.is_none() {
        return Some(
            "sigma layers are not evenly spaced and uniform; the GPU kernel needs them so".into(),
        );
    }
    None
}

/// A partition whose particles live on the GPU.
pub struct GpuPartition {
    ctx: Arc<GpuContext>,
    n: usize,
    particles: wgpu::Buffer,
    staging: [wgpu::Buffer; 2],
    next_staging: usize,
    _elements: wgpu::Buffer,
    coef: [wgpu::Buffer; 2],
    zeta: [wgpu::Buffer; 2],
    counts: wgpu::Buffer,
    counts_staging: wgpu::Buffer,
    params: wgpu::Buffer,
    /// Bind groups with slots (0, 1) and (1, 0) as levels (a, b).
    bind_groups: [wgpu::BindGroup; 2],
    /// Model time of the level in each slot.
    slot_time: [f64; 2],
    /// The CPU copy, refreshed by [`GpuPartition::download`].
    pub mirror: Particles,
}

fn check_size(ctx: &GpuContext, what: &str, bytes: u64) -> Result<(), String> {
    let l = ctx.device.limits();
    let max = (l.max_storage_buffer_binding_size as u64).min(l.max_buffer_size);
    if bytes > max {
        return Err(format!(
            "{what} needs {bytes} bytes, more than the adapter's {max}"
        ));
    }
    Ok(())
}

impl GpuPartition {
    pub fn new(ctx: Arc<GpuContext>, mesh: &Mesh, particles: Particles) -> Result<Self, String> {
        let n = particles.len();
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
                }
            })
            .collect();
        let nl = mesh.vertical.n_layers;
        let coef_bytes = (mesh.n_elements() * nl * 48) as u64;
        let particle_bytes = (n.max(1) * std::mem::size_of::<GpuParticle>()) as u64;
        check_size(&ctx, "the field coefficients", coef_bytes)?;
        check_size(&ctx, "the particle state", particle_bytes)?;
        let d = &ctx.device;
        let usage_rw = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let gpu_particles = to_gpu(&particles, mesh);
        let particles_buf = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("particles"),
            contents: if n == 0 {
                &[0u8; 48]
            } else {
                bytemuck::cast_slice(&gpu_particles)
            },
            usage: usage_rw,
        });
        let staging = [0, 1].map(|k| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some(if k == 0 { "staging 0" } else { "staging 1" }),
                size: particle_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let elements_buf = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("elements"),
            contents: bytemuck::cast_slice(&elements),
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
        let coef = [
            level_buf("coef 0", coef_bytes),
            level_buf("coef 1", coef_bytes),
        ];
        let zeta_bytes = (mesh.n_elements() * 16) as u64;
        let zeta = [
            level_buf("zeta 0", zeta_bytes),
            level_buf("zeta 1", zeta_bytes),
        ];
        let counts = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("counts"),
            size: 32,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let counts_staging = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("counts staging"),
            size: 32,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let params = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bind = |a: usize, b: usize| {
            d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("step"),
                layout: &ctx.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: params.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: particles_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: elements_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: coef[a].as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: coef[b].as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 5,
                        resource: zeta[a].as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 6,
                        resource: zeta[b].as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 7,
                        resource: counts.as_entire_binding(),
                    },
                ],
            })
        };
        let bind_groups = [bind(0, 1), bind(1, 0)];
        Ok(GpuPartition {
            ctx: ctx.clone(),
            n,
            particles: particles_buf,
            staging,
            next_staging: 0,
            _elements: elements_buf,
            coef,
            zeta,
            counts,
            counts_staging,
            params,
            bind_groups,
            slot_time: [f64::NAN; 2],
            mirror: particles,
        })
    }

    /// Makes `level` resident (uploading it once) and returns its slot; `keep` is the slot that
    /// must not be overwritten.
    fn resident(&mut self, level: &FieldLevel, keep: Option<usize>) -> usize {
        if let Some(s) = (0..2).find(|&s| self.slot_time[s] == level.time) {
            return s;
        }
        let s = match keep {
            Some(k) => 1 - k,
            None => 0,
        };
        let q = &self.ctx.queue;
        // Built on the host once per level (a few per run) and dropped after the copy.
        let coef = shoal_common::fields::padded_coef(&level.coef);
        q.write_buffer(&self.coef[s], 0, bytemuck::cast_slice(&coef));
        let zeta: Vec<[f32; 4]> = level
            .zeta_elem
            .iter()
            .map(|z| [z[0], z[1], z[2], 0.0])
            .collect();
        q.write_buffer(&self.zeta[s], 0, bytemuck::cast_slice(&zeta));
        self.slot_time[s] = level.time;
        s
    }

    /// One step from `t` to `t + dt`. The step must lie within one field interval.
    pub fn step(
        &mut self,
        mesh: &Mesh,
        window: Window,
        params: &StepParams,
        t: f64,
        step: u32,
    ) -> Result<Tally, String> {
        let (a, b, _) = window.bracket(t);
        if a.elem_slot.is_some() || b.elem_slot.is_some() {
            return Err("the GPU path steps whole field levels, not a partition's".into());
        }
        let (a1, b1, _) = window.bracket(t + params.dt);
        let (a, b) = if a.time == b.time { (a1, b1) } else { (a, b) };
        if !(a.time <= t + 1e-9 && b.time >= t + params.dt - 1e-9)
            || (a1.time != a.time && a1.time != b.time)
        {
            return Err("the step straddles two field intervals; the GPU path needs dt to divide the field interval".into());
        }
        let sa = self.resident(a, None);
        let sb = if b.time == a.time {
            sa
        } else {
            self.resident(b, Some(sa))
        };
        // Bind group (0,1) or (1,0); a single level uses it as both with weight 0.
        let group = if sa == 0 { 0 } else { 1 };
        let sb_ok = sb == 1 - sa || sb == sa;
        debug_assert!(sb_ok);
        let span = if b.time > a.time {
            (b.time - a.time) as f32
        } else {
            1.0
        };
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
            t: (t - a.time) as f32,
            dt: params.dt as f32,
            span: if sb == sa { f32::MAX } else { span },
            horizontal_kh: params.horizontal_kh as f32,
            vertical_kh: match params.vertical_mixing {
                VerticalMixing::Constant(k) => k as f32,
                _ => 0.0,
            },
            sinking: params.sinking_speed as f32,
            sig_first: sig_first as f32,
            sig_step: sig_step as f32,
        };
        let q = &self.ctx.queue;
        q.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
        q.write_buffer(&self.counts, 0, &[0u8; 32]);
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
            pass.set_bind_group(0, &self.bind_groups[group], &[]);
            let groups = (self.n as u32).div_ceil(WORKGROUP).max(1);
            let gx = groups.min(65_535);
            pass.dispatch_workgroups(gx, groups.div_ceil(gx), 1);
        }
        enc.copy_buffer_to_buffer(&self.counts, 0, &self.counts_staging, 0, 32);
        q.submit([enc.finish()]);
        let c = read_buffer(&self.ctx, &self.counts_staging, 32)?;
        let c: &[u32] = bytemuck::cast_slice(&c);
        let mut tally = Tally::empty();
        tally.active = c[0] as u64;
        tally.pending = c[1] as u64;
        tally.exited = c[2] as u64;
        tally.bad_field = c[3] as u64;
        tally.outside_mesh = c[4] as u64;
        Ok(tally)
    }

    /// Reads the particle state back into [`GpuPartition::mirror`] (through a ring of staging
    /// buffers) and returns it.
    pub fn download(&mut self, mesh: &Mesh) -> Result<&Particles, String> {
        let bytes = (self.n.max(1) * std::mem::size_of::<GpuParticle>()) as u64;
        let staging = &self.staging[self.next_staging];
        self.next_staging = 1 - self.next_staging;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("download"),
            });
        enc.copy_buffer_to_buffer(&self.particles, 0, staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let raw = read_buffer(&self.ctx, staging, bytes)?;
        let gp: &[GpuParticle] = bytemuck::cast_slice(&raw);
        let m = &mut self.mirror;
        for (i, g) in gp.iter().take(self.n).enumerate() {
            let c = mesh.geom((g.elem as usize).min(mesh.n_elements() - 1));
            m.x[i] = c.xc + g.ox as f64;
            m.y[i] = c.yc + g.oy as f64;
            m.z[i] = g.z as f64;
            m.element[i] = g.elem;
            m.status[i] = g.status as u8;
        }
        Ok(&self.mirror)
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

/// Copies a buffer's first `bytes` out, waiting for the device.
fn read_buffer(ctx: &GpuContext, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: None,
        })
        .map_err(|e| format!("waiting for the GPU: {e}"))?;
    rx.recv()
        .map_err(|e| format!("GPU readback: {e}"))?
        .map_err(|e| format!("GPU readback: {e}"))?;
    let out = buf
        .get_mapped_range(0..bytes)
        .map_err(|e| format!("GPU readback: {e:?}"))?
        .to_vec();
    buf.unmap();
    Ok(out)
}

fn to_gpu(p: &Particles, mesh: &Mesh) -> Vec<GpuParticle> {
    (0..p.len())
        .map(|i| {
            let c = mesh.geom((p.element[i] as usize).min(mesh.n_elements() - 1));
            GpuParticle {
                ox: (p.x[i] - c.xc) as f32,
                oy: (p.y[i] - c.yc) as f32,
                z: p.z[i] as f32,
                release: p.release_time[i] as f32,
                elem: p.element[i],
                status: p.status[i] as u32,
                id: p.id[i],
                pad: 0,
            }
        })
        .collect()
}

pub mod selftest;

/// Status codes written by the shader are the CPU's.
const _: () = assert!(
    status::ACTIVE == 0 && status::PENDING == 1 && status::EXITED == 2 && status::BAD_FIELD == 3
);
