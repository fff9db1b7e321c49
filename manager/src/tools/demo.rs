//! `shoal demo`: a complete example on a generated mesh: a patch of larvae released into a
//! rotating, temperature-graded basin, looking for water at their preferred temperature.

use crate::config::RunConfig;
use crate::run::{run, RunOptions, RunReport};
use crate::synth::{self, Flow, SynthOptions};
use anyhow::{Context, Result};
use std::path::Path;

pub fn demo_config(dir: &Path) -> String {
    let _ = dir;
    r#"# Written by `shoal demo`. Edit and run again with `shoal run demo.toml`.
seed = 7

[input]
files = ["demo_fvcom.nc"]

[release.generate]
count = 2000
centre = [410000.0, 4510000.0]   # metres, in the mesh's frame
radius = 1500.0
z = -2.0

[run]
duration = "12h"
dt = "60s"
integrator = "rk4"

[diffusion]
horizontal_kh = 1.0
vertical = "file"

[behaviour]
preferred_temperature = 16.0
temperature_tolerance = 1.5
happy_threshold = 0.9
stop_when_happy_share = 0.95

[output]
file = "demo_trajectories.nc"
interval = "30min"
"#
    .to_string()
}

pub fn demo(dir: &Path, opts: &RunOptions) -> Result<RunReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let input = dir.join("demo_fvcom.nc");
    let so = SynthOptions {
        flow: Flow::Rotation,
        nx: 40,
        ny: 40,
        kh: true,
        temp: true,
        duration: 14.0 * 3600.0,
        ..Default::default()
    };
    if !opts.quiet {
        eprintln!("demo: writing synthetic FVCOM output {}", input.display());
    }
    synth::write(&input, &so)?;
    let cfg_path = dir.join("demo.toml");
    std::fs::write(&cfg_path, demo_config(dir))
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let cfg = RunConfig::from_path(&cfg_path)?;
    let report = run(&cfg, opts)?;
    let png = dir.join("demo_trajectories.png");
    crate::plot::plot(&cfg.output, Some(&input), &png, 900)?;
    println!(
        "demo: trajectories in {}, picture in {}",
        cfg.output.display(),
        png.display()
    );
    Ok(report)
}
