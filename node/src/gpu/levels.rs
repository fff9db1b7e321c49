//! Field levels on the device: which coefficient slot (two, or three once a step straddles a
//! field time) holds which level, and uploading a level's coefficients, surface, `kh` and
//! temperature into its slot.

use super::context::bind;
use super::{GpuError, GpuPartition};
use shoal_common::FieldLevel;

impl GpuPartition {
    /// Puts the levels a step reads in slots (uploading those not resident, into slots this
    /// step does not need; a third slot is made the first time three levels are needed) and
    /// returns each one's slot.
    pub(super) fn place(&mut self, need: &[&FieldLevel]) -> Result<Vec<u32>, GpuError> {
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
                None => return Err(GpuError::TooManyLevels),
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
}
