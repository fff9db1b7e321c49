//! The layers of a map, bottom to top: land and water with the mesh, the tracks, the mesh's
//! boundary, and the markers at the particles' ends; with the colours they are drawn in and
//! what the tracks are coloured by.

use super::framing::Frame;
use super::ok;
use super::reading::{MapMesh, Tracks};
use crate::output::plot::text::Pen;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use shoal_common::particles::status;

const LAND: RGBColor = RGBColor(232, 223, 200);
const WATER: RGBColor = RGBColor(246, 250, 253);
pub(super) const COAST: RGBColor = RGBColor(70, 70, 70);
pub(super) const OPEN: RGBColor = RGBColor(20, 80, 255);
pub(super) const INK: RGBColor = RGBColor(20, 20, 20);
const START: RGBColor = RGBColor(0, 150, 70);
pub(super) const TRACK: RGBColor = RGBColor(40, 90, 140);

/// Ten distinct colours for categories (release sites).
pub(super) const CATEGORIES: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A perceptually even ramp from dark purple through teal to yellow (viridis' anchor colours).
pub(super) fn ramp(s: f64) -> RGBColor {
    const STOPS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let s = if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let f = s * 4.0;
    let k = (f.floor() as usize).min(3);
    let t = f - k as f64;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// How a particle's end is marked, by its status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mark {
    Start,
    Active,
    Exited,
    Settled,
    Stranded,
    Dead,
    Lost,
}

impl Mark {
    pub(super) fn of(s: i8) -> Option<Mark> {
        match s as u8 {
            status::ACTIVE => Some(Mark::Active),
            status::EXITED => Some(Mark::Exited),
            status::SETTLED => Some(Mark::Settled),
            status::STRANDED => Some(Mark::Stranded),
            status::DEAD => Some(Mark::Dead),
            status::BAD_FIELD | status::OUTSIDE_MESH => Some(Mark::Lost),
            _ => None,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Mark::Start => "start",
            Mark::Active => "end (adrift)",
            Mark::Exited => "exited (open boundary)",
            Mark::Settled => "settled",
            Mark::Stranded => "stranded (dry)",
            Mark::Dead => "died",
            Mark::Lost => "lost (bad field or off mesh)",
        }
    }

    pub(super) fn colour(self) -> RGBColor {
        match self {
            Mark::Start => START,
            Mark::Active => INK,
            Mark::Exited => RGBColor(0, 150, 150),
            Mark::Settled => RGBColor(130, 40, 160),
            Mark::Stranded => RGBColor(170, 100, 20),
            Mark::Dead => RGBColor(210, 30, 30),
            Mark::Lost => RGBColor(120, 120, 120),
        }
    }

    pub(super) fn draw<DB: DrawingBackend>(
        self,
        area: &DrawingArea<DB, Shift>,
        (x, y): (i32, i32),
        r: i32,
    ) -> Result<()> {
        let c = self.colour();
        let w = (r / 3).max(1) as u32;
        let done = match self {
            Mark::Start => area.draw(&Circle::new((x, y), r, c.stroke_width(w))),
            Mark::Active => area.draw(&Circle::new((x, y), r, c.filled())),
            Mark::Exited => area.draw(&TriangleMarker::new((x, y), r + 1, c.filled())),
            Mark::Settled => area.draw(&Rectangle::new(
                [(x - r, y - r), (x + r, y + r)],
                c.filled(),
            )),
            Mark::Stranded => area.draw(&Rectangle::new(
                [(x - r, y - r), (x + r, y + r)],
                c.stroke_width(w),
            )),
            Mark::Dead | Mark::Lost => area.draw(&Cross::new((x, y), r + 1, c.stroke_width(w + 1))),
        };
        done.map_err(|e| anyhow!("{e}"))
    }
}

/// What the tracks are coloured by, read from the file.
pub(super) enum Colours {
    One,
    /// Per position, with the range and the colour bar's title.
    Ramp {
        values: Vec<f64>,
        lo: f64,
        hi: f64,
        title: String,
    },
    /// Per particle: a category and the categories' names.
    Key {
        of: Vec<usize>,
        names: Vec<String>,
        colours: Vec<RGBColor>,
        heading: &'static str,
    },
}

impl Colours {
    fn colour(&self, p: usize, t: usize, nt: usize) -> RGBColor {
        match self {
            Colours::One => TRACK,
            Colours::Ramp { values, lo, hi, .. } => {
                let s = (values[p * nt + t] - lo) / (hi - lo).max(1e-12);
                // Quantized, so that runs of one colour become one path.
                ramp((s * 48.0).round() / 48.0)
            }
            Colours::Key { of, colours, .. } => colours[of[p] % colours.len()],
        }
    }
}

/// Closed rings of the mesh's boundary, chained from its directed boundary edges; None where
/// they do not chain (then the triangles are filled instead).
fn rings(mesh: &MapMesh) -> Option<Vec<Vec<u32>>> {
    use std::collections::HashMap;
    let mut from: HashMap<u32, Vec<usize>> = HashMap::new();
    for (k, (a, _, _)) in mesh.edges.iter().enumerate() {
        from.entry(*a).or_default().push(k);
    }
    let mut used = vec![false; mesh.edges.len()];
    let mut out = Vec::new();
    for k0 in 0..mesh.edges.len() {
        if used[k0] {
            continue;
        }
        let start = mesh.edges[k0].0;
        let mut ring = vec![start];
        let mut k = k0;
        loop {
            used[k] = true;
            let b = mesh.edges[k].1;
            if b == start {
                break;
            }
            ring.push(b);
            k = *from.get(&b)?.iter().find(|j| !used[**j])?;
        }
        out.push(ring);
    }
    Some(out)
}

fn signed_area(mesh: &MapMesh, ring: &[u32]) -> f64 {
    let mut a = 0.0;
    for i in 0..ring.len() {
        let (p, q) = (ring[i] as usize, ring[(i + 1) % ring.len()] as usize);
        a += mesh.u[p] * mesh.v[q] - mesh.u[q] * mesh.v[p];
    }
    a / 2.0
}

/// Land, water, and the mesh where few enough triangles show.
pub(super) fn draw_mesh<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    mesh: &MapMesh,
) -> Result<()> {
    let (l, t) = (fr.left, fr.top);
    ok(area.draw(&Rectangle::new(
        [(l, t), (l + fr.w, t + fr.h)],
        LAND.filled(),
    )))?;
    let node = |n: u32| fr.ipx((mesh.u[n as usize], mesh.v[n as usize]));
    let in_view = |tri: &[u32; 3]| {
        let (a, b, c) = (tri[0] as usize, tri[1] as usize, tri[2] as usize);
        let (u0, u1) = (
            mesh.u[a].min(mesh.u[b]).min(mesh.u[c]),
            mesh.u[a].max(mesh.u[b]).max(mesh.u[c]),
        );
        let (v0, v1) = (
            mesh.v[a].min(mesh.v[b]).min(mesh.v[c]),
            mesh.v[a].max(mesh.v[b]).max(mesh.v[c]),
        );
        u1 >= fr.x0 && u0 <= fr.x1 && v1 >= fr.y0 && v0 <= fr.y1
    };
    let visible: Vec<&[u32; 3]> = mesh.nv.iter().filter(|tri| in_view(tri)).collect();
    // The sense in which elements run; rings that run the same way enclose water.
    let sense = mesh
        .nv
        .first()
        .map_or(1.0, |tri| signed_area(mesh, tri).signum());
    match rings(mesh) {
        Some(mut rs) => {
            rs.sort_by(|a, b| {
                signed_area(mesh, b)
                    .abs()
                    .total_cmp(&signed_area(mesh, a).abs())
            });
            for r in &rs {
                let water = signed_area(mesh, r).signum() == sense;
                let pts: Vec<(i32, i32)> = r.iter().map(|n| node(*n)).collect();
                ok(area.draw(&Polygon::new(
                    pts,
                    if water { WATER } else { LAND }.filled(),
                )))?;
            }
        }
        None => {
            for tri in &visible {
                let pts: Vec<(i32, i32)> = tri.iter().map(|n| node(*n)).collect();
                ok(area.draw(&Polygon::new(pts, WATER.filled())))?;
            }
        }
    }
    if visible.len() <= 20_000 {
        let grey = RGBColor(215, 220, 226);
        for tri in &visible {
            let mut pts: Vec<(i32, i32)> = tri.iter().map(|n| node(*n)).collect();
            pts.push(pts[0]);
            ok(area.draw(&PathElement::new(pts, grey.stroke_width(1))))?;
        }
    }
    Ok(())
}

/// The mesh's boundary: land edges dark, open edges blue and thick; drawn over the tracks, so
/// that where particles left stays visible.
pub(super) fn draw_edges<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    mesh: &MapMesh,
    pen: &Pen,
) -> Result<()> {
    let w = pen.scale.max(1) as u32;
    for (a, b, kind) in &mesh.edges {
        let (p, q) = (
            fr.px((mesh.u[*a as usize], mesh.v[*a as usize])),
            fr.px((mesh.u[*b as usize], mesh.v[*b as usize])),
        );
        let Some((p, q)) = fr.clip(p, q) else {
            continue;
        };
        let style = if *kind == shoal_common::mesh::OPEN {
            OPEN.stroke_width(2 * w + 1)
        } else {
            COAST.stroke_width(w)
        };
        ok(area.draw(&PathElement::new(vec![p, q], style)))?;
    }
    Ok(())
}

/// Which particles are drawn: all, or an even selection of at most `most`.
pub(super) fn chosen(n: usize, most: usize) -> impl Iterator<Item = usize> {
    (0..n).step_by(n.div_ceil(most).max(1))
}

/// How tracks are drawn: at most `most` of them, with this opacity and line width.
#[derive(Clone, Copy)]
pub(super) struct Strokes {
    pub most: usize,
    pub alpha: f64,
    pub width: u32,
}

/// Tracks up to record `upto`, clipped to the map, each run of one colour one path.
pub(super) fn draw_tracks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    tr: &Tracks,
    colours: &Colours,
    upto: usize,
    strokes: Strokes,
) -> Result<()> {
    let Strokes { most, alpha, width } = strokes;
    for p in chosen(tr.n, most) {
        let mut run: Vec<(i32, i32)> = Vec::new();
        let mut run_colour = TRACK;
        let mut prev: Option<(f64, f64)> = None;
        let flush = |run: &mut Vec<(i32, i32)>, c: RGBColor| -> Result<()> {
            if run.len() > 1 {
                ok(area.draw(&PathElement::new(
                    std::mem::take(run),
                    c.mix(alpha).stroke_width(width),
                )))?;
            }
            run.clear();
            Ok(())
        };
        for t in 0..=upto.min(tr.nt - 1) {
            let Some(here) = tr.at(p, t) else {
                flush(&mut run, run_colour)?;
                prev = None;
                continue;
            };
            let here = fr.px(here);
            if let Some(before) = prev {
                let c = colours.colour(p, t.saturating_sub(1), tr.nt);
                match fr.clip(before, here) {
                    Some((a, b)) => {
                        if c != run_colour || run.last() != Some(&a) {
                            flush(&mut run, run_colour)?;
                            run_colour = c;
                            run.push(a);
                        }
                        run.push(b);
                    }
                    None => flush(&mut run, run_colour)?,
                }
            }
            prev = Some(here);
        }
        flush(&mut run, run_colour)?;
    }
    Ok(())
}

/// Start and end markers (ends by status), or positions at record `at` (coloured dots, with
/// the statuses' markers for particles no longer adrift).
pub(super) fn draw_marks<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fr: &Frame,
    tr: &Tracks,
    colours: &Colours,
    at: Option<usize>,
    most: usize,
    r: i32,
) -> Result<()> {
    let upto = at.unwrap_or(tr.nt - 1);
    for p in chosen(tr.n, most) {
        if at.is_none() {
            if let Some(t0) = (0..tr.nt).find(|&t| tr.at(p, t).is_some()) {
                let here = tr.at(p, t0).expect("found");
                if fr.shows(here) {
                    Mark::Start.draw(area, fr.ipx(here), r)?;
                }
            }
        }
        let Some(t1) = tr.last(p, upto) else { continue };
        let here = tr.at(p, t1).expect("found");
        if !fr.shows(here) {
            continue;
        }
        let mark = Mark::of(tr.status[p * tr.nt + t1]).unwrap_or(Mark::Active);
        if at.is_some() && mark == Mark::Active {
            let c = colours.colour(p, t1, tr.nt);
            ok(area.draw(&Circle::new(fr.ipx(here), r, c.filled())))?;
        } else {
            mark.draw(area, fr.ipx(here), r)?;
        }
    }
    Ok(())
}

/// The statuses that occur at the ends (or at record `at`), in a fixed order.
pub(super) fn marks_present(tr: &Tracks, at: Option<usize>) -> Vec<Mark> {
    let upto = at.unwrap_or(tr.nt - 1);
    let mut seen = [false; 7];
    for p in 0..tr.n {
        if let Some(t) = tr.last(p, upto) {
            if let Some(m) = Mark::of(tr.status[p * tr.nt + t]) {
                seen[m as usize] = true;
            }
        }
    }
    let all = [
        Mark::Start,
        Mark::Active,
        Mark::Exited,
        Mark::Settled,
        Mark::Stranded,
        Mark::Dead,
        Mark::Lost,
    ];
    all.into_iter()
        .filter(|m| match m {
            Mark::Start => at.is_none(),
            Mark::Active => at.is_none() && seen[*m as usize],
            _ => seen[*m as usize],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_runs_dark_to_light() {
        let lum = |c: RGBColor| 0.3 * c.0 as f64 + 0.59 * c.1 as f64 + 0.11 * c.2 as f64;
        let mut last = -1.0;
        for k in 0..=20 {
            let l = lum(ramp(k as f64 / 20.0));
            assert!(l > last);
            last = l;
        }
    }
}
