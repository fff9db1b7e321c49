//! Framing a map: where it lies, in map units (the projection and the extent) and in pixels
//! (the layout), and what is drawn around it: the frame, ticks and axis names, the titles, the
//! scale bar, and the panel with the legend and the colour bar or key.

use super::layers::{ramp, Colours, Mark, COAST, INK, OPEN};
use super::reading::{MapMesh, Tracks};
use super::{ok, MAX_SIZE};
use crate::output::plot::text::{Align, Pen};
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use shoal_common::projection::wrap_lon;

/// Where the map lies: its extent in map units and its rectangle in pixels.
#[derive(Clone, Copy)]
pub(super) struct Frame {
    pub(super) x0: f64,
    pub(super) x1: f64,
    pub(super) y0: f64,
    pub(super) y1: f64,
    pub(super) geographic: bool,
    /// Metres per map unit along x.
    pub(super) mx: f64,
    pub(super) left: i32,
    pub(super) top: i32,
    pub(super) w: i32,
    pub(super) h: i32,
}

impl Frame {
    pub(super) fn px(&self, (u, v): (f64, f64)) -> (f64, f64) {
        (
            self.left as f64 + (u - self.x0) / (self.x1 - self.x0) * self.w as f64,
            self.top as f64 + (self.y1 - v) / (self.y1 - self.y0) * self.h as f64,
        )
    }

    pub(super) fn ipx(&self, p: (f64, f64)) -> (i32, i32) {
        let (x, y) = self.px(p);
        (
            x.clamp(-1e6, 1e6).round() as i32,
            y.clamp(-1e6, 1e6).round() as i32,
        )
    }

    pub(super) fn shows(&self, (u, v): (f64, f64)) -> bool {
        u >= self.x0 && u <= self.x1 && v >= self.y0 && v <= self.y1
    }

    /// The part of segment a-b (pixels) inside the map (Liang-Barsky).
    pub(super) fn clip(&self, a: (f64, f64), b: (f64, f64)) -> Option<((i32, i32), (i32, i32))> {
        if ![a.0, a.1, b.0, b.1].iter().all(|v| v.is_finite()) {
            return None;
        }
        let (xmin, ymin) = (self.left as f64, self.top as f64);
        let (xmax, ymax) = (xmin + self.w as f64, ymin + self.h as f64);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (p, q) in [
            (-dx, a.0 - xmin),
            (dx, xmax - a.0),
            (-dy, a.1 - ymin),
            (dy, ymax - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    return None;
                }
            } else {
                let r = q / p;
                if p < 0.0 {
                    t0 = t0.max(r);
                } else {
                    t1 = t1.min(r);
                }
            }
        }
        if t0 > t1 || !t0.is_finite() || !t1.is_finite() {
            return None;
        }
        let at = |t: f64| {
            let px = |v: f64| v.clamp(-1e6, 1e6).round() as i32;
            (px(a.0 + t * dx), px(a.1 + t * dy))
        };
        Some((at(t0), at(t1)))
    }
}

/// A point of the mesh's frame (metres) in map units: degrees, longitude in -180..180, where
/// `geo` places the mesh on the Earth; kilometres otherwise.
pub(super) fn to_map(geo: Option<&crate::input::crs::Geo>, x: f64, y: f64) -> (f64, f64) {
    match geo {
        Some(g) => {
            let (lon, lat) = g.inverse(x, y);
            (wrap_lon(lon), lat)
        }
        None => (x / 1000.0, y / 1000.0),
    }
}

/// A round step for about `want` ticks over `span`, and the decimals its labels need.
fn tick_step(span: f64, want: f64) -> (f64, usize) {
    let raw = (span / want).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut decimals = (-step.log10().floor()).max(0.0) as usize;
    if (step / 10f64.powi(-(decimals as i32)) - (step / 10f64.powi(-(decimals as i32))).round())
        .abs()
        > 1e-6
    {
        decimals += 1;
    }
    (step, decimals)
}

/// Round values from `lo` to `hi` about `want` to the span, and the decimals their labels need;
/// never more than 50, whatever the numbers.
fn ticks(lo: f64, hi: f64, want: f64) -> (Vec<f64>, usize) {
    let (step, d) = tick_step(hi - lo, want);
    let first = (lo / step).ceil();
    let v = (0..50)
        .map(|k| (first + k as f64) * step)
        .take_while(|v| *v <= hi + 1e-9 * step)
        .collect();
    (v, d)
}

fn tick_label(value: f64, decimals: usize, axis: char, geographic: bool) -> String {
    let value = if value.abs() < 1e-9 { 0.0 } else { value };
    if !geographic {
        return format!("{value:.decimals$}");
    }
    let hemisphere = match (axis, value < 0.0) {
        ('x', false) => 'E',
        ('x', true) => 'W',
        (_, false) => 'N',
        (_, true) => 'S',
    };
    format!("{:.decimals$}°{hemisphere}", value.abs())
}

/// The map's extent: as asked, or where the particles went, padded; never thinner than a
/// twentieth of the mesh.
pub(super) fn extent(tr: &Tracks, mesh: &MapMesh, asked: Option<[f64; 4]>) -> Result<[f64; 4]> {
    if let Some(e) = asked {
        anyhow::ensure!(
            e.iter().all(|a| a.is_finite()) && e[1] > e[0] && e[3] > e[2],
            "--extent: give west,east,south,north with west < east and south < north"
        );
        return Ok(e);
    }
    let bbox = |u: &[f64], v: &[f64]| {
        u.iter()
            .zip(v)
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .fold([f64::MAX, f64::MIN, f64::MAX, f64::MIN], |e, (a, b)| {
                [e[0].min(*a), e[1].max(*a), e[2].min(*b), e[3].max(*b)]
            })
    };
    let m = bbox(&mesh.u, &mesh.v);
    let p = bbox(&tr.u, &tr.v);
    let e = if p[0] <= p[1] { p } else { m };
    let least = ((m[1] - m[0]).max(m[3] - m[2]) / 20.0).max(1e-6);
    let (cx, cy) = ((e[0] + e[1]) / 2.0, (e[2] + e[3]) / 2.0);
    let wx = ((e[1] - e[0]) * 1.16).max(least);
    let wy = ((e[3] - e[2]) * 1.16).max(least);
    Ok([cx - wx / 2.0, cx + wx / 2.0, cy - wy / 2.0, cy + wy / 2.0])
}

/// The picture's layout: the frame, the pen, the picture's size and the panel's left edge.
pub(super) struct Layout {
    pub(super) frame: Frame,
    pub(super) pen: Pen,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) panel: i32,
}

pub(super) fn layout(e: [f64; 4], geographic: bool, size: u32, vector: bool) -> Layout {
    let size = size.clamp(200, MAX_SIZE);
    let pen = Pen {
        scale: ((size as f64 / 500.0).round() as i32).max(1),
        vector,
    };
    let (mx, my) = if geographic {
        let lat = ((e[2] + e[3]) / 2.0).to_radians();
        (111_195.0 * lat.cos().max(0.01), 111_195.0)
    } else {
        (1000.0, 1000.0)
    };
    let (ww, hh) = ((e[1] - e[0]) * mx, (e[3] - e[2]) * my);
    let (w, h) = if ww >= hh {
        (
            size as i32,
            ((size as f64 * hh / ww) as i32).max(size as i32 / 3),
        )
    } else {
        (
            ((size as f64 * ww / hh) as i32).max(size as i32 / 3),
            size as i32,
        )
    };
    let line = pen.height() * 3 / 2;
    let (left, top) = (pen.advance() * 9 + line * 2, line * 3);
    let panel_w = pen.advance() * 30;
    let bottom = line * 3;
    let h_all = (top + h + bottom).max(top + 22 * line);
    let frame = Frame {
        x0: e[0],
        x1: e[1],
        y0: e[2],
        y1: e[3],
        geographic,
        mx,
        left,
        top,
        w,
        h,
    };
    Layout {
        frame,
        pen,
        width: (left + w + pen.advance() * 3 + panel_w) as u32,
        height: h_all as u32,
        panel: left + w + pen.advance() * 3,
    }
}

/// Margins, frame, ticks, axis names, title, scale bar, legend and colour bar.
pub(super) fn draw_decor<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    lay: &Layout,
    title: &str,
    subtitle: &str,
    marks: &[Mark],
    colours: &Colours,
) -> Result<()> {
    let (fr, pen) = (&lay.frame, &lay.pen);
    let (w, h) = (lay.width as i32, lay.height as i32);
    let (l, t, r, b) = (fr.left, fr.top, fr.left + fr.w, fr.top + fr.h);
    // Whatever of the map spilled past its frame is painted over.
    for rect in [
        [(0, 0), (w, t)],
        [(0, b), (w, h)],
        [(0, 0), (l, h)],
        [(r, 0), (w, h)],
    ] {
        ok(area.draw(&Rectangle::new(rect, WHITE.filled())))?;
    }
    ok(area.draw(&Rectangle::new([(l, t), (r, b)], INK.stroke_width(1))))?;
    let line = pen.height() * 3 / 2;
    pen.write(area, title, (l, line / 2), Align::Left, false, &INK)?;
    pen.write(
        area,
        subtitle,
        (l, line / 2 + line),
        Align::Left,
        false,
        &RGBColor(80, 80, 80),
    )?;
    // Ticks.
    let tick = pen.scale * 4;
    let (xs, dx) = ticks(fr.x0, fr.x1, 5.0);
    for u in xs {
        let (x, _) = fr.ipx((u, fr.y0));
        ok(area.draw(&PathElement::new(
            vec![(x, b), (x, b + tick)],
            INK.stroke_width(1),
        )))?;
        pen.write(
            area,
            &tick_label(u, dx, 'x', fr.geographic),
            (x, b + tick + 2),
            Align::Centre,
            false,
            &INK,
        )?;
    }
    let (ys, dy) = ticks(fr.y0, fr.y1, 5.0);
    for v in ys {
        let (_, y) = fr.ipx((fr.x0, v));
        ok(area.draw(&PathElement::new(
            vec![(l - tick, y), (l, y)],
            INK.stroke_width(1),
        )))?;
        pen.write(
            area,
            &tick_label(v, dy, 'y', fr.geographic),
            (l - tick - 3, y - pen.height() / 2),
            Align::Right,
            false,
            &INK,
        )?;
    }
    let (xname, yname) = if fr.geographic {
        ("Longitude", "Latitude")
    } else {
        ("x (km)", "y (km)")
    };
    pen.write(
        area,
        xname,
        ((l + r) / 2, b + tick + line + 2),
        Align::Centre,
        false,
        &INK,
    )?;
    pen.write(
        area,
        yname,
        (pen.scale * 2, (t + b) / 2),
        Align::Centre,
        true,
        &INK,
    )?;
    // A scale bar, bottom left inside the map: a round length near a fifth of its width.
    let width_m = (fr.x1 - fr.x0) * fr.mx;
    let (step, _) = tick_step(width_m / 5.0, 1.0);
    let step = if step > width_m / 4.0 {
        step / 2.0
    } else {
        step
    };
    let bar = (step / fr.mx / (fr.x1 - fr.x0) * fr.w as f64).round() as i32;
    let text = if step >= 1000.0 {
        format!("{} km", step / 1000.0)
    } else {
        format!("{step} m")
    };
    let (bx, by) = (l + line, b - line * 2);
    ok(area.draw(&Rectangle::new(
        [
            (bx - 4, by - 4),
            (bx + bar.max(pen.width(&text)) + 4, b - line / 2 + 2),
        ],
        WHITE.mix(0.8).filled(),
    )))?;
    ok(area.draw(&Rectangle::new(
        [(bx, by), (bx + bar, by + pen.scale * 3)],
        INK.filled(),
    )))?;
    pen.write(
        area,
        &text,
        (bx, by + pen.scale * 3 + 3),
        Align::Left,
        false,
        &INK,
    )?;
    // The panel: markers, boundaries, then what the tracks are coloured by.
    let px = lay.panel;
    let mut y = t;
    let r = pen.scale * 2 + 1;
    for m in marks {
        m.draw(area, (px + r, y + pen.height() / 2), r)?;
        pen.write(
            area,
            m.label(),
            (px + 3 * r + 4, y),
            Align::Left,
            false,
            &INK,
        )?;
        y += line;
    }
    for (c, wdt, name) in [(COAST, 1, "land boundary"), (OPEN, 3, "open boundary")] {
        let mid = y + pen.height() / 2;
        ok(area.draw(&PathElement::new(
            vec![(px, mid), (px + 2 * r + 2, mid)],
            c.stroke_width(wdt * pen.scale as u32),
        )))?;
        pen.write(area, name, (px + 3 * r + 4, y), Align::Left, false, &INK)?;
        y += line;
    }
    y += line;
    match colours {
        Colours::One => {}
        Colours::Key {
            of,
            names,
            colours,
            heading,
        } => {
            pen.write(area, heading, (px, y), Align::Left, false, &INK)?;
            y += line;
            let mut used = vec![false; names.len()];
            for k in of {
                if let Some(u) = used.get_mut(*k) {
                    *u = true;
                }
            }
            let shown: Vec<usize> = (0..names.len()).filter(|k| used[*k]).collect();
            let room = ((lay.height as i32 - y - line) / line).max(1) as usize;
            for (i, k) in shown.iter().enumerate() {
                if i + 1 == room && shown.len() > room {
                    pen.write(
                        area,
                        &format!("and {} more", shown.len() - i),
                        (px, y),
                        Align::Left,
                        false,
                        &INK,
                    )?;
                    break;
                }
                let c = colours[k % colours.len()];
                ok(area.draw(&Rectangle::new(
                    [(px, y), (px + 2 * r, y + pen.height())],
                    c.filled(),
                )))?;
                pen.write(
                    area,
                    &names[*k],
                    (px + 3 * r + 4, y),
                    Align::Left,
                    false,
                    &INK,
                )?;
                y += line;
            }
        }
        Colours::Ramp { lo, hi, title, .. } => {
            pen.write(area, title, (px, y), Align::Left, false, &INK)?;
            y += line;
            let bar_h = (lay.height as i32 - y - line * 2)
                .min(fr.h / 2)
                .max(line * 4);
            let bw = pen.advance() * 2;
            for k in 0..bar_h {
                let s = 1.0 - k as f64 / (bar_h - 1).max(1) as f64;
                ok(area.draw(&Rectangle::new(
                    [(px, y + k), (px + bw, y + k + 1)],
                    ramp(s).filled(),
                )))?;
            }
            ok(area.draw(&Rectangle::new(
                [(px, y), (px + bw, y + bar_h)],
                INK.stroke_width(1),
            )))?;
            let (vs, d) = ticks(*lo, *hi, 4.0);
            for v in vs {
                let yy = y + ((hi - v) / (hi - lo) * (bar_h - 1) as f64).round() as i32;
                ok(area.draw(&PathElement::new(
                    vec![(px + bw, yy), (px + bw + 4, yy)],
                    INK.stroke_width(1),
                )))?;
                pen.write(
                    area,
                    &tick_label(v, d, 'v', false),
                    (px + bw + 7, yy - pen.height() / 2),
                    Align::Left,
                    false,
                    &INK,
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_fall_on_round_numbers() {
        assert_eq!(tick_step(10.0, 5.0), (2.0, 0));
        assert_eq!(tick_step(0.3, 5.0), (0.1, 1));
        assert_eq!(tick_step(1.2, 5.0), (0.25, 2));
        assert_eq!(tick_label(-122.5, 1, 'x', true), "122.5°W");
        assert_eq!(tick_label(37.75, 2, 'y', true), "37.75°N");
        assert_eq!(tick_label(-0.0, 0, 'x', false), "0");
    }

    #[test]
    fn segments_are_clipped_to_the_frame() {
        let fr = Frame {
            x0: 0.0,
            x1: 1.0,
            y0: 0.0,
            y1: 1.0,
            geographic: false,
            mx: 1000.0,
            left: 10,
            top: 10,
            w: 100,
            h: 100,
        };
        assert_eq!(
            fr.clip((0.0, 60.0), (200.0, 60.0)),
            Some(((10, 60), (110, 60)))
        );
        assert_eq!(fr.clip((0.0, 0.0), (5.0, 200.0)), None);
        assert_eq!(
            fr.clip((20.0, 20.0), (30.0, 40.0)),
            Some(((20, 20), (30, 40)))
        );
    }
}
