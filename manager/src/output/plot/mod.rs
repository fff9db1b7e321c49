//! `shoal plot`: a map of trajectories ([`map`]), a density map (`[output] density`) or a
//! connectivity matrix (`[output] connectivity`). No fonts are needed, so it works on a headless
//! Pi ([`text`]). Density cells run from pale yellow (one particle) to dark blue (the most), on a
//! logarithmic scale, empty cells white; the matrix is a heat map, origins down the side and
//! destinations across the top.

pub mod map;
pub mod text;

use anyhow::{anyhow, Context, Result};
pub use map::{animate, ColourBy, MapOptions};
use plotters::prelude::*;
use std::path::Path;
use text::{Align, Pen};

/// Runs `$body` with `$root` a white drawing area of `$size` pixels: an SVG where `$image` ends
/// in `.svg`, a bitmap (PNG) otherwise; `$body` is compiled for each backend.
macro_rules! on_canvas {
    ($image:expr, $size:expr, |$root:ident| $body:block) => {{
        if map::is_svg($image) {
            let $root = SVGBackend::new($image, $size).into_drawing_area();
            $root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
            $body
            $root.present().with_context(|| format!("writing {}", $image.display()))?;
        } else {
            let $root = BitMapBackend::new($image, $size).into_drawing_area();
            $root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
            $body
            $root.present().with_context(|| format!("writing {}", $image.display()))?;
        }
    }};
}

/// Pixels for an extent drawn `size` pixels on its longer side, in its proportions.
fn canvas_size(size: u32, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> (u32, u32) {
    let (w, h) = (x1 - x0, y1 - y0);
    if w >= h {
        (size, ((size as f64) * h / w).max(64.0) as u32)
    } else {
        (((size as f64) * w / h).max(64.0) as u32, size)
    }
}

/// `shoal plot` with its defaults: a map of the tracks, a density map or a connectivity matrix,
/// whichever the file holds.
pub fn plot(output: &Path, mesh_file: Option<&Path>, image: &Path, size: u32) -> Result<()> {
    let opts = MapOptions {
        mesh: mesh_file.map(Path::to_path_buf),
        size,
        ..Default::default()
    };
    plot_with(output, image, &opts)
}

pub fn plot_with(output: &Path, image: &Path, opts: &MapOptions) -> Result<()> {
    let f = crate::nc::open(output)
        .with_context(|| format!("{}: cannot open trajectory file", output.display()))?;
    let grid = f.variable("density").is_some() && f.dimension("trajectory").is_none();
    let matrix = f.variable("probability").is_some() && f.dimension("destination").is_some();
    if grid {
        return plot_density(output, &f, None, image, opts.size);
    }
    if matrix {
        return plot_connectivity(output, &f, image, opts.size);
    }
    drop(f);
    map::plot(output, image, opts)
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
    let cells = || {
        total
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
            })
    };
    on_canvas!(png, canvas_size(size, (x0, x1), (y0, y1)), |root| {
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| anyhow!("{e}"))?;
        chart.draw_series(cells()).map_err(|e| anyhow!("{e}"))?;
    });
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
    let pen = Pen {
        scale,
        vector: map::is_svg(png),
    };
    let char_w = pen.advance();
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
    let ink = RGBColor(20, 20, 20);
    on_canvas!(png, (w, h), |root| {
        for (o, name) in origins.iter().enumerate() {
            let y = top + o as i32 * cell as i32 + (cell as i32 - 7 * scale) / 2;
            pen.write(&root, name, (6, y), Align::Left, false, &ink)?;
        }
        for (d, name) in destinations.iter().enumerate() {
            let x = left + d as i32 * cell as i32 + (cell as i32 - 7 * scale) / 2;
            pen.write(&root, name, (x, top - 6), Align::Left, true, &ink)?;
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
                pen.write(
                    &root,
                    &text,
                    (tx, y + (cell as i32 - 7 * scale) / 2),
                    Align::Left,
                    false,
                    &colour,
                )?;
            }
        }
    });
    Ok(())
}
