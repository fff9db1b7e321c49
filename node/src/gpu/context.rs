//! The device: the Vulkan adapter chosen and opened with a VideoCore's limits, the compiled
//! step pipelines and their bind group, the adapter's buffer limits, and buffers read back.

use super::GpuError;
use std::sync::Arc;

/// The longest a readback waits for the device: a GPU that hangs fails the step, by name,
/// instead of stopping the node for ever.
const GPU_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

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
    pub(super) pipeline: wgpu::ComputePipeline,
    /// The happiest particle's id, after the step.
    pub(super) happiest: wgpu::ComputePipeline,
    /// A node's migrants, after the step.
    pub(super) emigrate: wgpu::ComputePipeline,
    pub(super) layout: wgpu::BindGroupLayout,
}

impl GpuContext {
    /// Picks the best Vulkan adapter (discrete, integrated, virtual, then CPU ones such as
    /// lavapipe); `SHOAL_GPU_ADAPTER` chooses by name instead.
    pub fn new() -> Result<Arc<GpuContext>, GpuError> {
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
            .ok_or_else(|| GpuError::NoAdapter {
                named: wanted.clone(),
            })?;
        let info = adapter.get_info();
        let limits = videocore_limits(&adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shoal node"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| GpuError::OpenDevice {
            adapter: format!("{} ({:?})", info.name, info.backend),
            reason: e.to_string(),
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

/// Whether a buffer of `bytes` fits the adapter's limits; `what` names it in the error.
pub(super) fn check_size(ctx: &GpuContext, what: &str, bytes: u64) -> Result<(), GpuError> {
    let l = ctx.device.limits();
    let max = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
    if bytes > max {
        return Err(GpuError::TooLarge {
            what: what.to_string(),
            bytes,
            max,
        });
    }
    Ok(())
}

/// Copies a buffer's first `bytes` out, waiting for the device.
pub(super) fn read_buffer(
    ctx: &GpuContext,
    buf: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<u8>, GpuError> {
    let (tx, rx) = std::sync::mpsc::channel();
    buf.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(GPU_PATIENCE),
        })
        .map_err(|e| GpuError::Wait {
            secs: GPU_PATIENCE.as_secs(),
            reason: e.to_string(),
        })?;
    rx.recv_timeout(GPU_PATIENCE)
        .map_err(|e| GpuError::Readback(e.to_string()))?
        .map_err(|e| GpuError::Readback(e.to_string()))?;
    let out = buf
        .get_mapped_range(0..bytes)
        .map_err(|e| GpuError::Readback(format!("{e:?}")))?
        .to_vec();
    buf.unmap();
    Ok(out)
}

/// The step's bind group: params, particles, elements; the three coefficient slots (the first
/// bound again where there is no third); scalars, counts, sigmas.
pub(super) fn bind(
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
