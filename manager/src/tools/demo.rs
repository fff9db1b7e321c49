//! `shoal demo`: a complete example on a generated mesh: a patch of larvae released into a
//! rotating, temperature-graded basin, looking for water at their preferred temperature; and
//! `shoal demo --larvae`, a larval dispersal study on a generated coast: two spawning sites,
//! three reefs, diel migration, mortality and settlement, ending in a connectivity matrix.

use crate::input::config::RunConfig;
use crate::run::{run, RunOptions, RunReport};
use crate::tools::synth::{self, Flow, SynthOptions};
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
    crate::output::plot::plot(&cfg.output, Some(&input), &png, 900)?;
    println!(
        "demo: trajectories in {}, picture in {}",
        cfg.output.display(),
        png.display()
    );
    Ok(report)
}

/// The larval study's run file (the README shows it too).
pub fn larvae_config() -> &'static str {
    r#"# A larval dispersal study, written by `shoal demo --larvae`.
# Run it again with `shoal run larvae.toml`.
seed = 42

[input]
files = ["coast_fvcom.nc"]

[release]
polygons = "spawning.geojson"   # named GeoJSON polygons (lon/lat on geographic meshes)
per_polygon = 1000              # particles per site and release
z_range = [-5.0, -1.0]          # metres below the surface, drawn per particle
every = "6h"                    # release again every 6 h ...
until = "2024-05-23 12:00:00"   # ... until noon: three releases

[run]
duration = "48h"
dt = "120s"

[diffusion]
horizontal_kh = 2.0             # m^2/s

[behaviour]
mortality_per_day = 0.3         # survivors after t days: exp(-0.3 t)

[behaviour.migration]           # down by day, up by night
day_depth = [8.0, 12.0]         # metres below the surface
night_depth = 2.0
swim_speed = 0.003              # m/s
latitude = 44.6                 # where the sun is seen from (this mesh is Cartesian)
longitude = -63.6

[[behaviour.stage]]             # older larvae stop migrating and sink slowly
age = "24h"
migration = false
sinking_speed = 0.0005

[settlement]
polygons = "reefs.geojson"
competency = ["12h", "40h"]     # ages between which larvae can settle
probability_per_hour = 0.5      # while competent and over a reef
die_after_competency = true

[output]
file = "larvae_trajectories.nc"
interval = "1h"
connectivity = "connectivity.nc" # and connectivity.csv beside it
density = { file = "larvae_density.nc", cell = 500.0, per_origin = true }
"#
}

/// A square GeoJSON feature named `name`, of half-width `r` around (x, y), in the units the
/// file's mesh takes (metres, or degrees of lon/lat).
pub fn square(name: &str, (x, y): (f64, f64), r: f64) -> String {
    let (a, b, c, d) = (x - r, y - r, x + r, y + r);
    format!(
        r#"{{"type":"Feature","properties":{{"name":"{name}"}},"geometry":{{"type":"Polygon","coordinates":[[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]]}}}}"#
    )
}

/// A GeoJSON FeatureCollection of `features`.
pub fn collection(features: &[String]) -> String {
    format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    )
}

/// The larval study: a rotating coastal basin, two spawning sites upstream of three reefs.
pub fn demo_larvae(dir: &Path, opts: &RunOptions) -> Result<RunReport> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let input = dir.join("coast_fvcom.nc");
    let so = SynthOptions {
        flow: Flow::Rotation,
        nx: 40,
        ny: 40,
        period: 24.0 * 3600.0,
        duration: 50.0 * 3600.0,
        ..Default::default()
    };
    if !opts.quiet {
        eprintln!("demo: writing synthetic FVCOM output {}", input.display());
    }
    synth::write(&input, &so)?;
    let (cx, cy) = so.centre();
    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    // The flow turns anticlockwise about the centre once a day: the sites lie 6 km out, the
    // reefs a little further round the same circle and one inside it.
    write(
        "spawning.geojson",
        collection(&[
            square("North bank", (cx, cy + 6000.0), 700.0),
            square("East bank", (cx + 6000.0, cy), 700.0),
        ]),
    )?;
    write(
        "reefs.geojson",
        collection(&[
            square("West reef", (cx - 6000.0, cy), 1500.0),
            square("South reef", (cx, cy - 6000.0), 1500.0),
            square("Inner reef", (cx + 2500.0, cy + 2500.0), 1200.0),
        ]),
    )?;
    let cfg_path = dir.join("larvae.toml");
    std::fs::write(&cfg_path, larvae_config())
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let cfg = RunConfig::from_path(&cfg_path)?;
    let report = run(&cfg, opts)?;
    let connectivity = dir.join("connectivity.nc");
    let png = dir.join("connectivity.png");
    crate::output::plot::plot(&connectivity, None, &png, 600)?;
    println!(
        "demo: trajectories in {}, connectivity in {} and {}, heat map in {}",
        cfg.output.display(),
        connectivity.display(),
        dir.join("connectivity.csv").display(),
        png.display()
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn the_readme_shows_the_larval_demo_and_it_parses() {
        let readme = include_str!("../../../README.md");
        let text = larvae_config();
        assert!(
            readme.contains(text),
            "README's larval run file differs from the demo's"
        );
        let cfg = RunConfig::from_str(text, Path::new("/data")).unwrap();
        let l = cfg.larvae.unwrap();
        assert_eq!(l.stages.len(), 2);
        assert_eq!(l.stages[1].from_age, 86_400.0);
        assert!(l.stages[1].migration.is_none());
        assert_eq!(l.stages[0].mortality_rate, 0.3 / 86_400.0);
        let s = cfg.settlement.unwrap();
        assert_eq!(s.competency, (43_200.0, 144_000.0));
        assert_eq!(
            cfg.connectivity,
            Some(PathBuf::from("/data/connectivity.nc"))
        );
    }
}
