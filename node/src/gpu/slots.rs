//! Particle slots on the device: reading the state back (all of it, the live particles, or the
//! records of migrants and quarantined particles), writing particles into slots and vacating
//! them, and growing the buffers when migrants come in.

use super::context::{bind, check_size, read_buffer, GpuContext};
use super::layout::{from_gpu, to_gpu, GpuParticle, COUNTS_BYTES, MIGRANT_WORDS, VACANT};
use super::{GpuError, GpuPartition};
use shoal_common::{Mesh, Particles};

impl GpuPartition {
    /// Reads the particle state back into [`GpuPartition::mirror`] (through a ring of staging
    /// buffers) and returns it, vacant slots included.
    pub fn download(&mut self, mesh: &Mesh) -> Result<&Particles, GpuError> {
        let raw = self.read_particles()?;
        let gp: &[GpuParticle] = bytemuck::cast_slice(&raw);
        for (i, g) in gp.iter().take(self.n).enumerate() {
            from_gpu(mesh, g, &mut self.mirror, i);
        }
        Ok(&self.mirror)
    }

    /// The device's particle slots in use, as bytes.
    fn read_particles(&mut self) -> Result<Vec<u8>, GpuError> {
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
    pub fn live(&mut self, mesh: &Mesh) -> Result<Particles, GpuError> {
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
    pub fn take_quarantined(&mut self, mesh: &Mesh) -> Result<(Vec<u32>, Particles), GpuError> {
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
    fn read_records(&mut self, at: u64, k: usize) -> Result<Vec<(usize, GpuParticle)>, GpuError> {
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
            return Err(GpuError::BadSlot {
                slot: *slot,
                n: self.n,
            });
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
    pub fn take_migrants(&mut self, mesh: &Mesh) -> Result<Particles, GpuError> {
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
    pub fn append(&mut self, mesh: &Mesh, p: &Particles) -> Result<(), GpuError> {
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
    fn grow(&mut self, need: usize) -> Result<(), GpuError> {
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
}

/// The buffers sized by the particle slots: the particles, two staging buffers to read them
/// back, and the counts (with room for every particle as a migrant on a node).
pub(super) fn particle_buffers(
    ctx: &GpuContext,
    cap: usize,
    migrants: bool,
) -> Result<(wgpu::Buffer, [wgpu::Buffer; 2], wgpu::Buffer), GpuError> {
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
