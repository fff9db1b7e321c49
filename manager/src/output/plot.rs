//! `shoal plot`: trajectories over the mesh outline, or a density map (`[output] density`), to
//! PNG. No fonts are needed, so it works on a headless Pi: land edges are drawn dark, open edges
//! blue, each trajectory in its own colour; density cells from pale yellow (one particle) to dark
//! blue (the most), on a logarithmic scale, empty cells white; or a connectivity matrix
//! (`[output] connectivity`) as a heat map, origins down the side and destinations across the
//! top, labelled with a small bitmap font drawn here.

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
    if f.variable("probability").is_some() && f.dimension("destination").is_some() {
        return plot_connectivity(output, &f, png, size);
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
        let v = f
            .variable(name)
            .ok_or_else(|| anyhow!("{}: variable `{name}` not found", output.display()))?;
        super::unpacked(&v).with_context(|| output.display().to_string())
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

/// 5 x 7 glyphs, a row per byte (bit 4 the leftmost column), for what names and shares use;
/// lower case is drawn as upper case and anything else as a hollow box.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        ' ' => [0; 7],
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '%' => [24, 25, 2, 4, 8, 19, 3],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '/' => [0, 1, 2, 4, 8, 16, 0],
        '\'' => [4, 4, 8, 0, 0, 0, 0],
        '&' => [12, 18, 20, 8, 21, 18, 13],
        _ => [31, 17, 17, 17, 17, 17, 31],
    }
}

/// Draws `text` with its top-left corner at (x, y), `scale` pixels per glyph dot; `vertical`
/// turns it to read upward from (x, y) as its bottom-left corner.
fn label<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    text: &str,
    (x, y): (i32, i32),
    scale: i32,
    vertical: bool,
    colour: &RGBColor,
) -> Result<()> {
    for (k, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5 {
                if bits & (16 >> col) == 0 {
                    continue;
                }
                let (gx, gy) = (k as i32 * 6 + col, row as i32);
                let (px, py) = if vertical {
                    (x + gy * scale, y - gx * scale)
                } else {
                    (x + gx * scale, y + gy * scale)
                };
                area.draw(&Rectangle::new(
                    [(px, py), (px + scale, py + scale)],
                    colour.filled(),
                ))
                .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    Ok(())
}

/// A connectivity matrix as a heat map: one row per origin, one column per destination, each
/// cell shaded by the share of the origin's particles that settled there (summed over repeated
/// releases; the largest share darkest) and labelled with it in per cent.
pub fn plot_connectivity(path: &Path, f: &netcdf::File, png: &Path, size: u32) -> Result<()> {
    let names = |var: &str, dim: &str| -> Result<Vec<String>> {
        let n = f.dimension_len(dim).unwrap_or(0);
        let v = f
            .variable(var)
            .ok_or_else(|| anyhow!("{}: no `{var}`", path.display()))?;
        (0..n)
            .map(|k| {
                v.get_string([k])
                    .with_context(|| format!("{}: reading `{var}`", path.display()))
            })
            .collect()
    };
    let (origins, destinations) = (
        names("origin_name", "origin")?,
        names("destination_name", "destination")?,
    );
    let (no, nd) = (origins.len(), destinations.len());
    anyhow::ensure!(no > 0 && nd > 0, "{}: an empty matrix", path.display());
    let read = |var: &str| -> Result<Vec<f64>> {
        f.variable(var)
            .ok_or_else(|| anyhow!("{}: no `{var}`", path.display()))?
            .get_values::<f64, _>(..)
            .with_context(|| format!("{}: reading `{var}`", path.display()))
    };
    let (count, released) = (read("count")?, read("released")?);
    anyhow::ensure!(
        count.len() % (no * nd) == 0 && released.len() * nd == count.len(),
        "{}: `count` and `released` do not match the origins and destinations",
        path.display()
    );
    let mut share = vec![0.0; no * nd];
    for o in 0..no {
        let total: f64 = released.iter().skip(o).step_by(no).sum();
        for d in 0..nd {
            let c: f64 = count.iter().skip(o * nd + d).step_by(no * nd).sum();
            share[o * nd + d] = if total > 0.0 { c / total } else { 0.0 };
        }
    }
    let scale = 2;
    let char_w = 6 * scale;
    let longest = |v: &[String]| v.iter().map(|s| s.chars().count()).max().unwrap_or(0) as i32;
    let left = longest(&origins) * char_w + 12;
    let top = longest(&destinations) * char_w + 12;
    let cell = (((size as i32 - left.max(top)) / no.max(nd) as i32).clamp(5 * char_w, 120)) as u32;
    // A matrix too large to draw legibly is better read from the CSV.
    let most = 16_384u64;
    anyhow::ensure!(
        (no.max(nd) as u64) * cell as u64 + left.max(top) as u64 <= most,
        "{}: {no} origins x {nd} destinations are too many to draw (over {most} pixels); read the CSV beside it",
        path.display()
    );
    let (w, h) = (
        left as u32 + nd as u32 * cell + 8,
        top as u32 + no as u32 * cell + 8,
    );
    let root = BitMapBackend::new(png, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let ink = RGBColor(20, 20, 20);
    for (o, name) in origins.iter().enumerate() {
        let y = top + o as i32 * cell as i32 + (cell as i32 - 7 * scale) / 2;
        label(&root, name, (6, y), scale, false, &ink)?;
    }
    for (d, name) in destinations.iter().enumerate() {
        let x = left + d as i32 * cell as i32 + (cell as i32 - 7 * scale) / 2;
        label(&root, name, (x, top - 6), scale, true, &ink)?;
    }
    // Shaded relative to the largest share, so that small matrices still show their pattern.
    let most = share.iter().copied().fold(0.0, f64::max).max(1e-12);
    for o in 0..no {
        for d in 0..nd {
            let value = share[o * nd + d];
            let s = value / most;
            let mix = |a: f64, b: f64| (a + (b - a) * s).round() as u8;
            let fill = RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0));
            let (x, y) = (left + d as i32 * cell as i32, top + o as i32 * cell as i32);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                fill.filled(),
            ))
            .map_err(|e| anyhow!("{e}"))?;
            root.draw(&Rectangle::new(
                [(x, y), (x + cell as i32, y + cell as i32)],
                RGBColor(180, 180, 180),
            ))
            .map_err(|e| anyhow!("{e}"))?;
            let text = format!("{:.0}%", 100.0 * value);
            let tx = x + (cell as i32 - text.len() as i32 * char_w) / 2;
            let colour = if s > 0.5 { WHITE } else { ink };
            label(
                &root,
                &text,
                (tx, y + (cell as i32 - 7 * scale) / 2),
                scale,
                false,
                &colour,
            )?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", png.display()))?;
    Ok(())
}
