//! What a partition holds of the run's fields and how it asks for the rest: the levels its
//! steps need, piece by piece and a level ahead, the values of elements beyond its halo on
//! demand, and a step that fetches what quarantined particles lacked and steps them again.

use super::{injected_slowness, PATIENCE};
use crate::fields::PartialFields;
use crate::net::{ask_later, bytes, Asked, Caller};
use crate::{Owner, Quarantine, Worker};
use anyhow::{bail, Context, Result};
use shoal_common::fields::span;
use shoal_common::kernel::{advance_touching, StepContext, StepParams, Tally};
use shoal_common::keys::RunKeys;
use shoal_common::wire::{self, FieldRequest, Message, RunSpec, Topology};
use shoal_common::{status, Mesh, Particles};
use std::collections::BTreeSet;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub(super) struct Supply<'a> {
    pub caller: Caller<'a>,
    pub keys: RunKeys,
    /// The partition.
    pub p: u32,
    pub mesh: &'a Mesh,
    pub spec: &'a RunSpec,
    pub topo: Topology,
    /// The owned elements, then the halo: the order of every field slice's pieces.
    pub topo_elements: Vec<u32>,
    pub fields: PartialFields,
    /// The pieces of the next level the run will need, asked for while it steps.
    pub prefetch: Option<(u32, Vec<Asked>)>,
}

impl<'a> Supply<'a> {
    /// Which partition owns each element, and which one this is.
    pub fn owner(&self) -> Owner<'a> {
        Owner {
            part_of: &self.spec.part_of,
            me: self.p,
        }
    }

    /// Steps `w`'s particles through step `s`, from `t` to `t1`; particles quarantined for want
    /// of field values are stepped again once those are fetched, until none lacks anything.
    pub fn advance(
        &mut self,
        w: &mut dyn Worker,
        s: u32,
        (t, t1): (f64, f64),
        abandon: &AtomicBool,
    ) -> Result<Tally> {
        let mut params = self.spec.params.clone();
        params.dt = t1 - t;
        let clock = Instant::now();
        let tally = w.step(&self.context(&params, t, s))?;
        if let Some(f) = injected_slowness() {
            std::thread::sleep(clock.elapsed().mul_f64(f - 1.0));
        }
        let Some(mut q) = w.take_quarantined(self.mesh)? else {
            return Ok(tally);
        };
        let fetched = self.settle(&mut q, &params, t, s, abandon)?;
        w.put_back(
            &self.context(&params, t, s),
            q,
            tally,
            fetched,
            self.owner(),
        )
    }

    fn context<'b>(&'b self, params: &'b StepParams, t: f64, step: u32) -> StepContext<'b> {
        StepContext {
            mesh: self.mesh,
            window: self.fields.window(),
            params,
            t,
            step,
        }
    }

    /// Steps the quarantined particles of `q` that are to be stepped again (each with its
    /// status at the step's start) until none lacks a field value: the values they touched
    /// and this partition lacks are fetched first. Returns whether anything was fetched.
    fn settle(
        &mut self,
        q: &mut Quarantine,
        params: &StepParams,
        t: f64,
        s: u32,
        abandon: &AtomicBool,
    ) -> Result<bool> {
        let again = &mut q.particles;
        let mut todo = std::mem::take(&mut q.todo);
        let before = again.status.clone();
        let mut fetched = false;
        while !todo.is_empty() {
            let mut sub = Particles::with_capacity(todo.len());
            for &k in &todo {
                sub.push_from(again, k);
                let last = sub.len() - 1;
                sub.status[last] = before[k];
            }
            let mut touched: Vec<u32> = Vec::new();
            let n = sub.len();
            let view = sub.chunks_mut(n).pop().expect("at least one particle");
            advance_touching(&self.context(params, t, s), view, &mut touched);
            for (j, &k) in todo.iter().enumerate() {
                again.set_from(k, &sub, j);
            }
            let missing: BTreeSet<u32> = touched
                .into_iter()
                .filter(|&e| !self.fields.present(e))
                .collect();
            if missing.is_empty() {
                break;
            }
            self.fetch(missing.into_iter().collect(), abandon)?;
            fetched = true;
            todo.retain(|&k| again.status[k] == status::BAD_FIELD);
        }
        Ok(fetched)
    }

    /// Makes sure the levels bracketing `[t0, t1]` are held, asking for the missing slices.
    pub fn cover(&mut self, t0: f64, t1: f64, abandon: &AtomicBool) -> Result<()> {
        let (lo, hi) = span(&self.spec.times, t0.min(t1), t0.max(t1));
        self.fields.drop_before(lo as u32);
        if self
            .fields
            .indices()
            .first()
            .is_some_and(|&f| f != lo as u32)
        {
            self.fields = PartialFields::default();
        }
        for idx in lo..=hi {
            let idx = idx as u32;
            if self.fields.has(idx) {
                continue;
            }
            let time = self.spec.times[idx as usize];
            self.fields.open(self.mesh, idx, time, self.spec.carried);
            self.fields.reserve(
                idx,
                self.topo_elements.len(),
                self.topo.nodes.len(),
                self.mesh.vertical.n_layers,
            );
            // The slice comes in pieces, each added to the level and dropped before the next
            // is read: asked for one at a time, or all at once a level ahead (below).
            let size = self.spec.field_piece.max(1);
            let mut early = match self.prefetch.take() {
                Some((i, asked)) if i == idx => asked,
                _ => Vec::new(),
            }
            .into_iter();
            for piece in 0..wire::field_pieces(self.topo_elements.len(), size) {
                let key = self.keys.field(self.p, idx, piece as u32);
                let came = match early.next() {
                    Some(a) => a.answer(&self.caller, abandon)?,
                    None => None,
                };
                let answer = match came {
                    Some(m) => m,
                    None => self.caller.ask(&key, None, PATIENCE, abandon)?,
                };
                let slice = match answer {
                    Message::FieldSlice(f) if f.time_index == idx => f,
                    other => bail!("expected field slice {idx}, got a {}", other.kind()),
                };
                let want =
                    (self.topo_elements.chunks(size as usize).nth(piece)).unwrap_or_default();
                if slice.elements != want {
                    bail!("field slice {idx} piece {piece} holds other elements than asked for");
                }
                self.fields
                    .fill(self.mesh, &slice, &slice.elements, &slice.nodes)
                    .with_context(|| format!("field slice {idx} piece {piece}"))?;
            }
            // The pages of the pieces go back before the next level comes.
            crate::health::give_back_memory();
        }
        // The level after these, in the run's direction, comes while the partition steps
        // through this interval: a slow link's transfer hides behind the stepping. It costs
        // one level's pieces held as they arrive.
        let next = if self.spec.params.dt >= 0.0 {
            Some(hi + 1)
        } else {
            lo.checked_sub(1)
        };
        if let Some(next) = next.filter(|&n| n < self.spec.times.len()) {
            let next = next as u32;
            if !self.fields.has(next) && self.prefetch.as_ref().is_none_or(|(i, _)| *i != next) {
                let size = self.spec.field_piece.max(1);
                let asked = (0..wire::field_pieces(self.topo_elements.len(), size))
                    .map(|piece| {
                        ask_later(
                            self.caller.session,
                            &self.keys.field(self.p, next, piece as u32),
                            PATIENCE,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                self.prefetch = Some((next, asked));
            }
        }
        Ok(())
    }

    /// Fetches the values of `elements` at every level held.
    fn fetch(&mut self, elements: Vec<u32>, abandon: &AtomicBool) -> Result<()> {
        self.fields.fetched += elements.len() as u64;
        for idx in self.fields.indices() {
            let req = bytes(
                self.caller.me,
                Message::FieldRequest(FieldRequest {
                    partition: self.p,
                    time_index: idx,
                    elements: elements.clone(),
                }),
            )?;
            let slice =
                match self
                    .caller
                    .ask(&self.keys.halo(self.p), Some(&req), PATIENCE, abandon)?
                {
                    Message::FieldSlice(f) if f.time_index == idx && !f.elements.is_empty() => f,
                    other => bail!("expected halo values, got a {}", other.kind()),
                };
            self.fields
                .fill(self.mesh, &slice, &slice.elements, &slice.nodes)
                .with_context(|| format!("halo values at time index {idx}"))?;
        }
        Ok(())
    }
}
