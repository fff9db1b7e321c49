//! The records the host and step.wgsl share (particle, element, stage and the step's params,
//! each mirroring a shader struct), the counts buffer's layout, and a particle's conversion to
//! and from the host's `Particles`.

use shoal_common::{status, Mesh, Particles};

/// What a step reads back: counts by status (active, pending, exited, bad field, outside the
/// mesh), the happy count, the highest happiness and its particle, stranded, the migrants a
/// node's partition found, the particles this step quarantined, and spare room (`HEADER` in
/// step.wgsl). The migrants themselves follow in the same buffer, `MIGRANT_WORDS` each.
pub(super) const COUNTS: usize = 16;
pub(super) const COUNTS_BYTES: u64 = (COUNTS * 4) as u64;
pub(super) const MIGRANT_WORDS: usize = 9;
/// A slot whose particle left for another partition (`VACANT` in step.wgsl).
pub const VACANT: u8 = 255;

/// Invocations per workgroup; the shader's `@workgroup_size` says the same.
pub(super) const WORKGROUP: u32 = 64;

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
pub(super) struct GpuElement {
    /// Centroid relative to the partition's origin as (hi, lo) f32 pairs.
    pub(super) xc: f32,
    pub(super) yc: f32,
    pub(super) xl: f32,
    pub(super) yl: f32,
    pub(super) b: [f32; 3],
    pub(super) c: [f32; 3],
    pub(super) h: [f32; 3],
    pub(super) nbe: [u32; 3],
    /// The element's nodes, for values given per node (`kh` from the file).
    pub(super) nv: [u32; 3],
    /// The partition that owns the element, on a node (`emigrate` sends the particles in
    /// elements another owns); 0 on the one-machine path.
    pub(super) owner: u32,
}

// Mirrors `struct Stage` in step.wgsl: the slots of the levels around a stage's time, and the
// later one's weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Stage {
    pub(super) a: u32,
    pub(super) b: u32,
    pub(super) w: f32,
    /// Bit 0: the time is the earlier level's (weight 0); bit 1: the later's (weight 1).
    pub(super) edge: u32,
}

// Mirrors `struct Params` in step.wgsl (a multiple of 16 bytes, as uniforms are).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) n_layers: u32,
    pub(super) step: u32,
    pub(super) integrator: u32,
    pub(super) seed_lo: u32,
    pub(super) seed_hi: u32,
    pub(super) max_walk: u32,
    /// Run clock at the step's start (release times are on it).
    pub(super) clock: f32,
    pub(super) dt: f32,
    pub(super) horizontal_kh: f32,
    pub(super) vertical_kh: f32,
    pub(super) sinking: f32,
    pub(super) sig_first: f32,
    pub(super) sig_step: f32,
    /// 1: layers are found by search in each element's own layer sigmas (`sig`); 0: by
    /// arithmetic from `sig_first` and `sig_step`.
    pub(super) uneven: u32,
    /// 1: vertical mixing with `kh` from the file (Visser's scheme); the levels carry it.
    pub(super) kh_file: u32,
    pub(super) n_levels: u32,
    /// Where the nodes' level sigmas start in `sig`, and whether one column serves all nodes.
    pub(super) lev_base: u32,
    pub(super) lev_uniform: u32,
    /// Where `kh` starts in each slot's scalars (after the free surface), in floats.
    pub(super) kh_base: u32,
    /// 1: the happiest-particle example; `temp_on`: the levels carry temperature (at
    /// `temp_base` in each slot's scalars; layer sigmas per node from `lay_base` in `sig`).
    pub(super) happy: u32,
    pub(super) temp_on: u32,
    pub(super) temp_base: u32,
    pub(super) lay_base: u32,
    pub(super) preferred: f32,
    pub(super) tolerance: f32,
    pub(super) threshold: f32,
    /// Floats per slot in the scalar buffer.
    pub(super) scal_len: u32,
    /// The step's start, middle and end.
    pub(super) s0: Stage,
    pub(super) sh: Stage,
    pub(super) s1: Stage,
    /// The node's partition, for `emigrate`.
    pub(super) me: u32,
    /// Particle slots the buffers hold room for (where the quarantined records start).
    pub(super) cap: u32,
    /// 1 on a node: migrants and quarantined particles are recorded after the header.
    pub(super) node: u32,
    pub(super) pad: u32,
}

/// Row `i` of `m` from the device's particle `g` (positions from the host element's centroid;
/// id, release and fate times stay the host's).
pub(super) fn from_gpu(mesh: &Mesh, g: &GpuParticle, m: &mut Particles, i: usize) {
    let c = mesh.geom((g.elem as usize).min(mesh.n_elements() - 1));
    m.x[i] = c.xc + g.ox as f64;
    m.y[i] = c.yc + g.oy as f64;
    m.z[i] = g.z as f64;
    m.element[i] = g.elem;
    m.status[i] = g.status as u8;
    m.happiness[i] = f32::from_bits(g.happiness);
}

pub(super) fn to_gpu(p: &Particles, mesh: &Mesh) -> Vec<GpuParticle> {
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

const _: () = assert!(std::mem::size_of::<Params>() == 176);

/// Status codes written by the shader are the CPU's.
const _: () = assert!(
    status::ACTIVE == 0
        && status::PENDING == 1
        && status::EXITED == 2
        && status::BAD_FIELD == 3
        && status::STRANDED == 7
);
