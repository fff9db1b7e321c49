//! Stepping in this process alone: one partition on the CPU (rayon) or the GPU (wgpu), through
//! the node's [`Worker`]. The one-machine path (`--direct`) and the GPU's; the fabric's results
//! are checked against it.

use super::prepare::FieldWindow;
use super::schedule::Stepper;
use anyhow::{anyhow, Result};
use shoal_common::kernel::{step_time, StepContext, StepParams, Tally};
use shoal_common::{Mesh, Particles};
use shoal_node::{Partition, Worker};
use std::sync::Arc;

pub struct Direct<'a> {
    mesh: &'a Mesh,
    params: StepParams,
    duration: f64,
    sort_every: u32,
    pool: Arc<rayon::ThreadPool>,
    choice: &'a shoal_node::Choice,
    worker: Option<Box<dyn Worker>>,
}

impl<'a> Direct<'a> {
    pub fn new(
        prep: &'a super::prepare::Prepared,
        sort_every: u32,
        choice: &'a shoal_node::Choice,
    ) -> Self {
        Direct {
            mesh: &prep.mesh,
            params: prep.params.clone(),
            duration: prep.duration,
            sort_every,
            pool: prep.pool.clone(),
            choice,
            worker: None,
        }
    }

    fn state(&mut self) -> Result<Particles> {
        match self.worker.as_mut() {
            Some(w) => w.state(self.mesh),
            None => Err(anyhow!("no particles to read: the run has not begun")),
        }
    }
}

impl Stepper for Direct<'_> {
    fn begin(
        &mut self,
        from: u32,
        particles: &Particles,
        fields: &mut FieldWindow,
        gather: bool,
    ) -> Result<Option<Particles>> {
        let dt = self.params.dt;
        let t0 = step_time(from, dt, self.duration);
        fields.cover(t0, step_time(from + 1, dt, self.duration))?;
        let mut part = Partition::new(particles.clone());
        part.sort_every = self.sort_every;
        part.pool = Some(self.pool.clone());
        part.release(self.mesh, fields.window(), t0, dt >= 0.0);
        self.worker = Some(self.choice.worker(part, self.mesh, &self.params, None)?);
        gather.then(|| self.state()).transpose()
    }

    fn step(&mut self, s: u32, fields: &mut FieldWindow) -> Result<Tally> {
        let dt = self.params.dt;
        let t = step_time(s, dt, self.duration);
        let t1 = step_time(s + 1, dt, self.duration);
        let mut params = self.params.clone();
        params.dt = t1 - t;
        fields.cover(t, t1)?;
        let cx = StepContext {
            mesh: self.mesh,
            window: fields.window(),
            params: &params,
            t,
            step: s,
        };
        match self.worker.as_mut() {
            Some(w) => w.step(&cx),
            None => Err(anyhow!("step {s} before the run began")),
        }
    }

    fn end_step(&mut self, _s: u32, _stop: bool, gather: bool) -> Result<Option<Particles>> {
        gather.then(|| self.state()).transpose()
    }
}
