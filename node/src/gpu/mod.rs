//! The GPU path: one fused RK4 step per dispatch (`step.wgsl`), particle state resident on the
//! device, field levels uploaded once each, only step counts (48 bytes) read back per step and
//! whole state only for snapshots. The device is created once per node with the limits of a
//! Raspberry Pi's VideoCore (8 storage buffers per stage, 256 invocations and 16 KiB of shared
//! memory per workgroup) so that what passes here runs there. The CPU kernel stays the
//! reference: a self-test compares the two before a GPU is trusted.

use shoal_common::kernel::{Integrator, StepParams, Tally, VerticalMixing};
use shoal_common::{status, FieldLevel, Mesh, Particles, Window};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// What a step reads back: counts by status (active, pending, exited, bad field, outside the
/// mesh), the happy count, the highest happiness and its particle, stranded, the migrants a
/// node's partition found, the particles this step quarantined, and spare room (`HEADER` in
/// step.wgsl). The migrants themselves follow in the same buffer, `MIGRANT_WORDS` each.
const COUNTS: usize = 16;
const COUNTS_BYTES: u64 = (COUNTS * 4) as u64;
const MIGRANT_WORDS: usize = 9;
/// A slot whose particle left for another partition (`VACANT` in step.wgsl).
pub const VACANT: u8 = 255;
/// The longest a readback waits for the device: a GPU that hangs fails the step, by name,
/// instead of stopping the node for ever.
const GPU_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

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
    /// Happiness at the end of the last step (f32 bits), for the happiest-particle example.
    happiness: u32,
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
    /// The element's nodes, for values given per node (`kh` from the file).
    nv: [u32; 3],
    /// The partition that owns the element, on a node (`emigrate` sends the particles in
    /// elements another owns); 0 on the one-machine path.
    owner: u32,
}

// Mirrors `struct Stage` in step.wgsl: the slots of the levels around a stage's time, and the
// later one's weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Stage {
    a: u32,
    b: u32,
    w: f32,
    /// Bit 0: the time is the earlier level's (weight 0); bit 1: the later's (weight 1).
    edge: u32,
}

// Mirrors `struct Params` in step.wgsl (a multiple of 16 bytes, as uniforms are).
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
    dt: f32,
    horizontal_kh: f32,
    vertical_kh: f32,
    sinking: f32,
    sig_first: f32,
    sig_step: f32,
    /// 1: layers are found by search in each element's own layer sigmas (`sig`); 0: by
    /// arithmetic from `sig_first` and `sig_step`.
    uneven: u32,
    /// 1: vertical mixing with `kh` from the file (Visser's scheme); the levels carry it.
    kh_file: u32,
    n_levels: u32,
    /// Where the nodes' level sigmas start in `sig`, and whether one column serves all nodes.
    lev_base: u32,
    lev_uniform: u32,
    /// Where `kh` starts in each slot's scalars (after the free surface), in floats.
    kh_base: u32,
    /// 1: the happiest-particle example; `temp_on`: the levels carry temperature (at
    /// `temp_base` in each slot's scalars; layer sigmas per node from `lay_base` in `sig`).
    happy: u32,
    temp_on: u32,
    temp_base: u32,
    lay_base: u32,
    preferred: f32,
    tolerance: f32,
    threshold: f32,
    /// Floats per slot in the scalar buffer.
    scal_len: u32,
    /// The step's start, middle and end.
    s0: Stage,
    sh: Stage,
    s1: Stage,
    /// The node's partition, for `emigrate`.
    me: u32,
    /// Particle slots the buffers hold room for (where the quarantined records start).
    cap: u32,
    /// 1 on a node: migrants and quarantined particles are recorded after the header.
    node: u32,
    pad: u32,
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
    /// The happiest particle's id, after the step.
    happiest: wgpu::ComputePipeline,
    /// A node's migrants, after the step.
    emigrate: wgpu::ComputePipeline,
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
                storage(8, true),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("step"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let entry = |name: &'static str| {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(name),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pipeline = entry("step");
        let happiest = entry("happiest");
        let emigrate = entry("emigrate");
        Ok(Arc::new(GpuContext {
            device,
            queue,
            adapter: info,
            pipeline,
            happiest,
            emigrate,
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

fn check_size(ctx: &GpuContext, what: &str, bytes: u64) -> Result<(), String> {
    let l = ctx.device.limits();
    let max = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if bytes > max {
        return Err(format!(
            "{what} needs {bytes} bytes, more than the adapter's {max}"
        ));
    }
    Ok(())
}

impl GpuPartition {
    /// `needs`: room in each field level for what the run reads besides velocities.
    pub fn new(
        ctx: Arc<GpuContext>,
        mesh: &Mesh,
        particles: Particles,
        needs: Needs,
    ) -> Result<Self, String> {
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
    ) -> Result<Self, String> {
        if part_of.len() != mesh.n_elements() {
            return Err(format!(
                "the partition map has {} elements, the mesh {}",
                part_of.len(),
                mesh.n_elements()
            ));
        }
        Self::build(ctx, mesh, particles, needs, Some((part_of, me)))
    }

    fn build(
        ctx: Arc<GpuContext>,
        mesh: &Mesh,
        particles: Particles,
        needs: Needs,
        owner: Option<(&[u32], u32)>,
    ) -> Result<Self, String> {
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

    /// Puts the levels a step reads in slots (uploading those not resident, into slots this
    /// step does not need; a third slot is made the first time three levels are needed) and
    /// returns each one's slot.
    fn place(&mut self, need: &[&FieldLevel]) -> Result<Vec<u32>, String> {
        let mut slots: Vec<Option<usize>> = need
            .iter()
            .map(|l| (0..self.coef.len()).find(|&s| self.slot_time[s] == l.time))
            .collect();
        for i in 0..need.len() {
            if slots[i].is_some() {
                continue;
            }
            if let Some(j) = (0..i).find(|&j| need[j].time == need[i].time) {
                slots[i] = slots[j];
                continue;
            }
            let free = (0..self.coef.len()).find(|s| !slots.contains(&Some(*s)));
            let s = match free {
                Some(s) => s,
                None if self.coef.len() < 3 => {
                    self.third_slot();
                    2
                }
                None => {
                    return Err(
                        "a step reads more than three field levels (the time step is longer than the field interval); the GPU path holds three"
                            .into(),
                    )
                }
            };
            self.upload(s, need[i]);
            slots[i] = Some(s);
        }
        Ok(slots.into_iter().map(|s| s.unwrap_or(0) as u32).collect())
    }

    /// The third coefficient slot, for steps that straddle a field time.
    fn third_slot(&mut self) {
        let buf = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("coef 2"),
            size: self.coef_bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.coef.push(buf);
        self.bind_group = bind(
            &self.ctx,
            [&self.params, &self.particles, &self.elements],
            [&self.coef[0], &self.coef[1], &self.coef[2]],
            [&self.scal, &self.counts, &self.sig],
        );
    }

    /// Uploads `level` into slot `s`. A node's partition-local level (slots for the elements
    /// and nodes it holds) is laid out by mesh number on the device, a stretch of elements at a
    /// time, with its stand-in (NaN surface, zero velocity) wherever it holds nothing: a
    /// particle that reaches one is quarantined, as on the CPU.
    fn upload(&mut self, s: usize, level: &FieldLevel) {
        let q = &self.ctx.queue;
        let nl = self.n_layers;
        let at = (s * self.scal_len * 4) as u64;
        // Built on the host a stretch at a time (a few levels per run) and dropped after the
        // copy.
        const STRETCH: usize = 16_384;
        for first in (0..self.n_elements).step_by(STRETCH) {
            let last = (first + STRETCH).min(self.n_elements);
            let slots: Vec<usize> = (first..last).map(|e| level.slot(e)).collect();
            let coef: Vec<[f32; shoal_common::fields::N_COEF]> = slots
                .iter()
                .flat_map(|&k| level.coef[k * nl..(k + 1) * nl].iter().copied())
                .collect();
            let coef = shoal_common::fields::padded_coef(&coef);
            q.write_buffer(
                &self.coef[s],
                (first * nl * 48) as u64,
                bytemuck::cast_slice(&coef),
            );
            // The surface at the element's nodes, and 1 where the element is wet, 0 where dry,
            // -1 where it cannot be sampled: a node's level lacks it (its stand-in, slot 0, or
            // an element whose neighbours have not all come yet), or the file's surface there
            // is not a number. The shader tests the flag, not the NaN, which its compiler may
            // assume never happens.
            let zeta: Vec<[f32; 4]> = slots
                .iter()
                .map(|&k| {
                    let z = level.zeta_elem[k];
                    let wet = level.wet.as_ref().is_none_or(|w| w[k] != 0);
                    let lacking = z.iter().any(|v| !v.is_finite());
                    let flag = match (lacking, wet) {
                        (true, _) => -1.0,
                        (false, true) => 1.0,
                        (false, false) => 0.0,
                    };
                    [z[0], z[1], z[2], flag]
                })
                .collect();
            q.write_buffer(
                &self.scal,
                at + (first * 16) as u64,
                bytemuck::cast_slice(&zeta),
            );
        }
        // Values per node, node-major (node * per + k), laid out by mesh node.
        let by_node = |v: &[f32], per: usize| -> Vec<f32> {
            if level.node_slot.is_none() {
                return v.to_vec();
            }
            (0..self.n_nodes)
                .flat_map(|n| {
                    let k = level.node(n);
                    v[k * per..(k + 1) * per].iter().copied()
                })
                .collect()
        };
        let elements_end = at + (self.n_elements * 16) as u64;
        if let (true, Some(kh)) = (self.kh_room, &level.kh) {
            let kh = by_node(kh, nl + 1);
            q.write_buffer(&self.scal, elements_end, bytemuck::cast_slice(&kh));
        }
        if let (true, Some(temp)) = (self.temp_room, &level.temp) {
            let temp = by_node(temp, nl);
            q.write_buffer(
                &self.scal,
                at + self.temp_base as u64 * 4,
                bytemuck::cast_slice(&temp),
            );
        }
        self.slot_time[s] = level.time;
    }

    /// Forgets the levels on the device, so that each is uploaded again when next needed: a
    /// node calls it once it has fetched values its levels lacked.
    pub fn forget_levels(&mut self) {
        self.slot_time = [f64::NAN; 3];
    }

    /// One step from `t` to `t + dt`; its stages may lie in different field intervals.
    pub fn step(
        &mut self,
        mesh: &Mesh,
        window: Window,
        params: &StepParams,
        t: f64,
        step: u32,
    ) -> Result<Tally, String> {
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

    /// Reads the particle state back into [`GpuPartition::mirror`] (through a ring of staging
    /// buffers) and returns it, vacant slots included.
    pub fn download(&mut self, mesh: &Mesh) -> Result<&Particles, String> {
        let raw = self.read_particles()?;
        let gp: &[GpuParticle] = bytemuck::cast_slice(&raw);
        for (i, g) in gp.iter().take(self.n).enumerate() {
            from_gpu(mesh, g, &mut self.mirror, i);
        }
        Ok(&self.mirror)
    }

    /// The device's particle slots in use, as bytes.
    fn read_particles(&mut self) -> Result<Vec<u8>, String> {
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
        self.readback_bytes += bytes;
        Ok(raw)
    }

    /// The particles held (vacant slots left out), read back: a node's snapshot.
    pub fn live(&mut self, mesh: &Mesh) -> Result<Particles, String> {
        let vacant = self.vacant.len();
        let m = self.download(mesh)?;
        let mut out = Particles::with_capacity(m.len().saturating_sub(vacant));
        for i in (0..m.len()).filter(|&i| m.status[i] != VACANT) {
            out.push_from(m, i);
        }
        Ok(out)
    }

    /// Particles the last step quarantined.
    pub fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// Reads back the particles the last step quarantined (they kept their state at the
    /// step's start): their slots, and the particles with the status each had then. Only their
    /// records come back (36 bytes each), not the partition's state.
    pub fn take_quarantined(&mut self, mesh: &Mesh) -> Result<(Vec<u32>, Particles), String> {
        let k = std::mem::take(&mut self.quarantined);
        let at = COUNTS_BYTES + (self.cap * MIGRANT_WORDS * 4) as u64;
        let rows = self.read_records(at, k)?;
        let mut slots = Vec::with_capacity(k);
        let mut out = Particles::with_capacity(k);
        for (slot, g) in rows {
            out.push_from(&self.mirror, slot);
            let last = out.len() - 1;
            from_gpu(mesh, &g, &mut out, last);
            slots.push(slot as u32);
        }
        Ok((slots, out))
    }

    /// `k` records (a slot and its particle) from byte `at` of the counts buffer, in slot order
    /// whatever order the device wrote them in.
    fn read_records(&mut self, at: u64, k: usize) -> Result<Vec<(usize, GpuParticle)>, String> {
        if k == 0 {
            return Ok(Vec::new());
        }
        let bytes = (k * MIGRANT_WORDS * 4) as u64;
        // A record is 36 bytes, a particle in the staging ring 32: a buffer of the right size,
        // made for the purpose.
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("records staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("records"),
            });
        enc.copy_buffer_to_buffer(&self.counts, at, &staging, 0, bytes);
        self.ctx.queue.submit([enc.finish()]);
        let raw = read_buffer(&self.ctx, &staging, bytes)?;
        self.readback_bytes += bytes;
        let words: &[u32] = bytemuck::cast_slice(&raw);
        let mut rows: Vec<(usize, GpuParticle)> = words
            .chunks_exact(MIGRANT_WORDS)
            .map(|w| {
                let g: GpuParticle = bytemuck::pod_read_unaligned(bytemuck::cast_slice(&w[1..]));
                (w[0] as usize, g)
            })
            .collect();
        rows.sort_unstable_by_key(|r| r.0);
        if let Some((slot, _)) = rows.iter().find(|r| r.0 >= self.n) {
            return Err(format!("the device named slot {slot} of {}", self.n));
        }
        Ok(rows)
    }

    /// Writes particle `k` of `from` into slot `slot` (device and mirror).
    fn write_slot(&mut self, mesh: &Mesh, slot: usize, from: &Particles, k: usize) {
        let mut one = Particles::with_capacity(1);
        one.push_from(from, k);
        let g = to_gpu(&one, mesh);
        let at = (slot * std::mem::size_of::<GpuParticle>()) as u64;
        self.ctx
            .queue
            .write_buffer(&self.particles, at, bytemuck::cast_slice(&g));
        if slot < self.mirror.len() {
            self.mirror.set_from(slot, from, k);
        } else {
            self.mirror.push_from(from, k);
        }
    }

    /// Puts the particles [`GpuPartition::take_quarantined`] gave back into their slots once
    /// stepped again; those not `kept` (they left the partition) leave their slots vacant.
    pub fn put_back(&mut self, mesh: &Mesh, slots: &[u32], p: &Particles, kept: &[bool]) {
        for (k, &slot) in slots.iter().enumerate() {
            if kept[k] {
                self.write_slot(mesh, slot as usize, p, k);
            } else {
                self.vacate(mesh, slot as usize);
            }
        }
    }

    fn vacate(&mut self, mesh: &Mesh, slot: usize) {
        let mut gone = Particles::with_capacity(1);
        gone.push_from(&self.mirror, slot);
        gone.status[0] = VACANT;
        self.write_slot(mesh, slot, &gone, 0);
        self.vacant.push(slot as u32);
    }

    /// Reads back the particles the last step found in elements another partition owns; their
    /// slots are vacant now.
    pub fn take_migrants(&mut self, mesh: &Mesh) -> Result<Particles, String> {
        let k = std::mem::take(&mut self.migrants);
        let rows = self.read_records(COUNTS_BYTES, k)?;
        let mut out = Particles::with_capacity(k);
        for (slot, g) in rows {
            out.push_from(&self.mirror, slot);
            let last = out.len() - 1;
            from_gpu(mesh, &g, &mut out, last);
            self.mirror.status[slot] = VACANT;
            self.vacant.push(slot as u32);
        }
        Ok(out)
    }

    /// Takes in migrants from other partitions: into vacant slots first, then at the end, the
    /// buffers growing by half when they are full.
    pub fn append(&mut self, mesh: &Mesh, p: &Particles) -> Result<(), String> {
        let fresh = p.len().saturating_sub(self.vacant.len());
        if self.n + fresh > self.cap {
            self.grow(self.n + fresh)?;
        }
        // The lowest vacant slots first.
        self.vacant.sort_unstable_by(|a, b| b.cmp(a));
        for k in 0..p.len() {
            let slot = match self.vacant.pop() {
                Some(s) => s as usize,
                None => {
                    self.n += 1;
                    self.n - 1
                }
            };
            self.write_slot(mesh, slot, p, k);
        }
        Ok(())
    }

    /// Room for at least `need` particle slots: new buffers, the state copied on the device.
    fn grow(&mut self, need: usize) -> Result<(), String> {
        let cap = need.max(self.cap + self.cap / 2);
        let (particles, staging, counts) = particle_buffers(&self.ctx, cap, self.me.is_some())?;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("grow"),
            });
        let bytes = (self.n * std::mem::size_of::<GpuParticle>()) as u64;
        if bytes > 0 {
            enc.copy_buffer_to_buffer(&self.particles, 0, &particles, 0, bytes);
        }
        self.ctx.queue.submit([enc.finish()]);
        self.particles = particles;
        self.staging = staging;
        self.counts = counts;
        self.cap = cap;
        self.bind_group = bind(
            &self.ctx,
            [&self.params, &self.particles, &self.elements],
            [
                &self.coef[0],
                &self.coef[1],
                self.coef.get(2).unwrap_or(&self.coef[0]),
            ],
            [&self.scal, &self.counts, &self.sig],
        );
        Ok(())
    }

    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }
}

/// The buffers sized by the particle slots: the particles, two staging buffers to read them
/// back, and the counts (with room for every particle as a migrant on a node).
fn particle_buffers(
    ctx: &GpuContext,
    cap: usize,
    migrants: bool,
) -> Result<(wgpu::Buffer, [wgpu::Buffer; 2], wgpu::Buffer), String> {
    let bytes = (cap.max(1) * std::mem::size_of::<GpuParticle>()) as u64;
    check_size(ctx, "the particle state", bytes)?;
    // Room for every particle as a migrant, then as a quarantined particle.
    let counts_bytes = COUNTS_BYTES
        + if migrants {
            (2 * cap * MIGRANT_WORDS * 4) as u64
        } else {
            0
        };
    check_size(ctx, "the migrants", counts_bytes)?;
    let d = &ctx.device;
    let buffer = |label: &str, size: u64, usage: wgpu::BufferUsages| {
        d.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let rw =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let read = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
    Ok((
        buffer("particles", bytes, rw),
        [
            buffer("staging 0", bytes, read),
            buffer("staging 1", bytes, read),
        ],
        buffer("counts", counts_bytes, rw),
    ))
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
            timeout: Some(GPU_PATIENCE),
        })
        .map_err(|e| {
            format!(
                "waiting for the GPU ({} s at most): {e}",
                GPU_PATIENCE.as_secs()
            )
        })?;
    rx.recv_timeout(GPU_PATIENCE)
        .map_err(|e| format!("GPU readback: {e}"))?
        .map_err(|e| format!("GPU readback: {e}"))?;
    let out = buf
        .get_mapped_range(0..bytes)
        .map_err(|e| format!("GPU readback: {e:?}"))?
        .to_vec();
    buf.unmap();
    Ok(out)
}

/// The step's bind group: params, particles, elements; the three coefficient slots (the first
/// bound again where there is no third); scalars, counts, sigmas.
fn bind(
    ctx: &GpuContext,
    [params, particles, elements]: [&wgpu::Buffer; 3],
    coef: [&wgpu::Buffer; 3],
    [scal, counts, sig]: [&wgpu::Buffer; 3],
) -> wgpu::BindGroup {
    let buffers = [
        params, particles, elements, coef[0], coef[1], coef[2], scal, counts, sig,
    ];
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(k, b)| wgpu::BindGroupEntry {
            binding: k as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("step"),
        layout: &ctx.layout,
        entries: &entries,
    })
}

/// Row `i` of `m` from the device's particle `g` (positions from the host element's centroid;
/// id, release and fate times stay the host's).
fn from_gpu(mesh: &Mesh, g: &GpuParticle, m: &mut Particles, i: usize) {
    let c = mesh.geom((g.elem as usize).min(mesh.n_elements() - 1));
    m.x[i] = c.xc + g.ox as f64;
    m.y[i] = c.yc + g.oy as f64;
    m.z[i] = g.z as f64;
    m.element[i] = g.elem;
    m.status[i] = g.status as u8;
    m.happiness[i] = f32::from_bits(g.happiness);
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
                happiness: p.happiness[i].to_bits(),
            }
        })
        .collect()
}

pub mod selftest;

const _: () = assert!(std::mem::size_of::<Params>() == 176);

/// Status codes written by the shader are the CPU's.
const _: () = assert!(
    status::ACTIVE == 0
        && status::PENDING == 1
        && status::EXITED == 2
        && status::BAD_FIELD == 3
        && status::STRANDED == 7
);
