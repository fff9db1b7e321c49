//! Stepping in this process alone: one partition on the CPU (rayon) or the GPU (wgpu). The
//! one-machine path (`--direct`) and the GPU's; the fabric's results are checked against it.

use super::prepare::FieldWindow;
use super::schedule::Stepper;
use anyhow::{anyhow, Result};
use shoal_common::kernel::{step_time, StepParams, Tally};
use shoal_common::{Mesh, Particles};
use shoal_node::Partition;
use std::sync::Arc;

/// Where the particles are stepped.
enum Worker {
    Cpu(Partition),
    #[cfg(feature = "gpu")]
    Gpu(Box<shoal_node::gpu::GpuPartition>),
}

pub struct Direct<'a> {
    mesh: &'a Mesh,
    params: StepParams,
    duration: f64,
    sort_every: u32,
    pool: Arc<rayon::ThreadPool>,
    choice: &'a shoal_node::Choice,
    worker: Option<Worker>,
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
            Some(Worker::Cpu(p)) => Ok(p.particles.clone()),
            #[cfg(feature = "gpu")]
            Some(Worker::Gpu(g)) => g
                .download(self.mesh)
                .cloned()
                .map_err(|e| anyhow!("GPU readback: {e}")),
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
        let (mesh, window) = (self.mesh, fields.window());
        let forward = dt >= 0.0;
        self.pool
            .install(|| part.release(mesh, window, t0, forward));
        self.worker = Some(match self.choice {
            #[cfg(feature = "gpu")]
            shoal_node::Choice { gpu: Some(ctx), .. } => Worker::Gpu(Box::new(
                shoal_node::gpu::GpuPartition::new(
                    ctx.clone(),
                    mesh,
                    part.particles,
                    shoal_node::gpu::Needs::of(&self.params),
                )
                .map_err(|e| anyhow!("GPU setup: {e}"))?,
            )),
            _ => Worker::Cpu(part),
        });
        gather.then(|| self.state()).transpose()
    }

    fn step(&mut self, s: u32, fields: &mut FieldWindow) -> Result<Tally> {
        let dt = self.params.dt;
        let t = step_time(s, dt, self.duration);
        let t1 = step_time(s + 1, dt, self.duration);
        let mut p = self.params.clone();
        p.dt = t1 - t;
        fields.cover(t, t1)?;
        let (mesh, window) = (self.mesh, fields.window());
        match self.worker.as_mut() {
            Some(Worker::Cpu(part)) => Ok(self.pool.install(|| part.step(mesh, window, &p, t, s))),
            #[cfg(feature = "gpu")]
            Some(Worker::Gpu(g)) => g
                .step(mesh, window, &p, t, s)
                .map_err(|e| anyhow!("GPU step {s}: {e}")),
            None => Err(anyhow!("step {s} before the run began")),
        }
    }

    fn end_step(&mut self, _s: u32, _stop: bool, gather: bool) -> Result<Option<Particles>> {
        gather.then(|| self.state()).transpose()
    }
}
