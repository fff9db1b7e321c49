//! `shoal plot`: trajectories over the mesh outline, to PNG. No fonts are needed, so it works on
//! a headless Pi: land edges are drawn dark, open edges blue, each trajectory in its own colour.

use crate::fvcom::FvcomReader;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

pub fn plot(output: &Path, mesh_file: Option<&Path>, png: &Path, size: u32) -> Result<()> {
    let f = netcdf::open(output)
        .with_context(|| format!("{}: cannot open trajectory file", output.display()))?;
    let mesh_path: PathBuf = match mesh_file {
        Some(p) => p.to_path_buf(),
        None => {
            let files: String = f
                .attribute("shoal_input_files")
                .and_then(|a| a.value().ok())
                .and_then(|v| String::try_from(v).ok())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: no `shoal_input_files` attribute; pass --mesh",
                        output.display()
                    )
                })?;
            PathBuf::from(files.split(", ").next().unwrap_or_default())
        }
    };
    let (_, mesh, _) = FvcomReader::open(&[mesh_path], &[])?;
    let get = |name: &str| -> Result<Vec<f64>> {
        f.variable(name)
            .ok_or_else(|| anyhow!("{}: variable `{name}` not found", output.display()))?
            .get_values::<f64, _>(..)
            .with_context(|| format!("{}: reading `{name}`", output.display()))
    };
    let n_traj = f.dimension_len("trajectory").unwrap_or(0);
    let n_time = f.dimension_len("time").unwrap_or(0);
    let (x, y) = (get("x")?, get("y")?);

    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (a, b) in mesh.x.iter().zip(&mesh.y) {
        x0 = x0.min(*a);
        x1 = x1.max(*a);
        y0 = y0.min(*b);
        y1 = y1.max(*b);
    }
    let pad = 0.02 * (x1 - x0).max(y1 - y0);
    let (w, h) = ((x1 - x0) + 2.0 * pad, (y1 - y0) + 2.0 * pad);
    let (pw, ph) = if w >= h {
        (size, ((size as f64) * h / w).max(64.0) as u32)
    } else {
        (((size as f64) * w / h).max(64.0) as u32, size)
    };
    let root = BitMapBackend::new(png, (pw, ph)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(8)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), (y0 - pad)..(y1 + pad))
        .map_err(|e| anyhow!("{e}"))?;
    let grey = RGBColor(200, 200, 200);
    for t in &mesh.nv {
        let pts: Vec<(f64, f64)> = [t[0], t[1], t[2], t[0]]
            .iter()
            .map(|&n| (mesh.x[n as usize], mesh.y[n as usize]))
            .collect();
        if mesh.n_elements() <= 20_000 {
            chart
                .draw_series(LineSeries::new(pts, grey.stroke_width(1)))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    for (a, b, kind) in mesh.boundary_edges() {
        let colour = if kind == shoal_common::mesh::OPEN {
            BLUE
        } else {
            RGBColor(40, 40, 40)
        };
        let seg = vec![
            (mesh.x[a as usize], mesh.y[a as usize]),
            (mesh.x[b as usize], mesh.y[b as usize]),
        ];
        chart
            .draw_series(LineSeries::new(seg, colour.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    // At most 2000 trajectories, evenly chosen, keep the picture readable.
    let stride = (n_traj / 2000).max(1);
    for p in (0..n_traj).step_by(stride) {
        let colour = Palette99::pick(p).to_rgba();
        let pts: Vec<(f64, f64)> = (0..n_time)
            .map(|t| (x[p * n_time + t], y[p * n_time + t]))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .collect();
        if let Some(first) = pts.first() {
            chart
                .draw_series(std::iter::once(Circle::new(*first, 2, colour.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(1)))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
