//! `shoal plot`: trajectories over the mesh outline, or a density map (`[output] density`), to
//! PNG. No fonts are needed, so it works on a headless Pi: land edges are drawn dark, open edges
//! blue, each trajectory in its own colour; density cells from pale yellow (one particle) to dark
//! blue (the most), on a logarithmic scale, empty cells white.

use crate::fvcom::FvcomReader;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A white picture `size` pixels on its longer side, in the proportions of the extent.
fn canvas(
    png: &Path,
    size: u32,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> Result<DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>> {
    let (w, h) = (x1 - x0, y1 - y0);
    let (pw, ph) = if w >= h {
        (size, ((size as f64) * h / w).max(64.0) as u32)
    } else {
        (((size as f64) * w / h).max(64.0) as u32, size)
    };
    let root = BitMapBackend::new(png, (pw, ph)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    Ok(root)
}

pub fn plot(output: &Path, mesh_file: Option<&Path>, png: &Path, size: u32) -> Result<()> {
    let f = netcdf::open(output)
        .with_context(|| format!("{}: cannot open trajectory file", output.display()))?;
    if f.variable("density").is_some() && f.dimension("trajectory").is_none() {
        return plot_density(output, &f, None, png, size);
    }
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
    let root = canvas(png, size, (x0 - pad, x1 + pad), (y0 - pad, y1 + pad))?;
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

/// A density map's record (default: the last), summed over release sites, as coloured cells.
pub fn plot_density(
    path: &Path,
    f: &netcdf::File,
    record: Option<usize>,
    png: &Path,
    size: u32,
) -> Result<()> {
    let coord = |names: [&str; 2]| -> Result<Vec<f64>> {
        let v = names
            .iter()
            .find_map(|n| f.variable(n))
            .ok_or_else(|| anyhow!("{}: no `{}` coordinate", path.display(), names[0]))?;
        v.get_values::<f64, _>(..)
            .with_context(|| format!("{}: reading `{}`", path.display(), v.name()))
    };
    let (xs, ys) = (coord(["x", "lon"])?, coord(["y", "lat"])?);
    let v = f.variable("density").expect("checked by the caller");
    let dims: Vec<usize> = v.dimensions().iter().map(|d| d.len()).collect();
    let times = dims[0];
    anyhow::ensure!(times > 0, "{}: no time written yet", path.display());
    let t = record.unwrap_or(times - 1);
    anyhow::ensure!(t < times, "{}: record {t} of {times}", path.display());
    let (nx, ny) = (xs.len(), ys.len());
    let layers = if dims.len() == 4 { dims[1] } else { 1 };
    let counts: Vec<i32> = if dims.len() == 4 {
        v.get_values::<i32, _>((t..t + 1, .., .., ..))
    } else {
        v.get_values::<i32, _>((t..t + 1, .., ..))
    }
    .with_context(|| format!("{}: reading `density`", path.display()))?;
    anyhow::ensure!(
        counts.len() == layers * nx * ny && nx > 0 && ny > 0,
        "{}: `density` is not (time, [origin,] y, x) over its coordinates",
        path.display()
    );
    // The cell size as written (a grid one cell wide has no spacing to measure).
    let cell = f
        .attribute("shoal_cell_size")
        .and_then(|a| a.value().ok())
        .and_then(|v| f64::try_from(v).ok())
        .or_else(|| (nx > 1).then(|| xs[1] - xs[0]))
        .ok_or_else(|| anyhow!("{}: no `shoal_cell_size` attribute", path.display()))?;
    let mut total = vec![0i64; nx * ny];
    for l in 0..layers {
        for (c, t) in total.iter_mut().enumerate() {
            *t += counts[l * nx * ny + c] as i64;
        }
    }
    let (cx, cy) = (cell, cell);
    let (x0, x1) = (xs[0] - cx / 2.0, xs[nx - 1] + cx / 2.0);
    let (y0, y1) = (ys[0] - cy / 2.0, ys[ny - 1] + cy / 2.0);
    let root = canvas(png, size, (x0, x1), (y0, y1))?;
    let mut chart = ChartBuilder::on(&root)
        .margin(8)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| anyhow!("{e}"))?;
    let most = total.iter().copied().max().unwrap_or(0).max(1) as f64;
    let colour = |n: i64| {
        let s = if most > 1.0 {
            (n as f64).ln() / most.ln()
        } else {
            1.0
        };
        let mix = |a: f64, b: f64| (a + (b - a) * s).round() as u8;
        RGBColor(mix(255.0, 8.0), mix(237.0, 48.0), mix(160.0, 107.0))
    };
    let cells = total
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| {
            let (i, j) = ((c % nx) as f64, (c / nx) as f64);
            Rectangle::new(
                [
                    (x0 + i * cx, y0 + j * cy),
                    (x0 + (i + 1.0) * cx, y0 + (j + 1.0) * cy),
                ],
                colour(*n).filled(),
            )
        });
    chart.draw_series(cells).map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
