//! Trajectory maps: `shoal plot` (tracks, or positions at one time) and `shoal animate`.
//!
//! A map says what, where and when: a title with the source, the period and the particle count;
//! axes in degrees (geographic meshes) or kilometres (Cartesian); land shaded, the mesh's land
//! boundary dark and its open boundaries blue; a scale bar; start and end markers and the
//! statuses that occur in a legend; and a colour bar or a key for what the tracks are coloured
//! by. Everything is drawn here in pixels (no chart library's layout), so that PNG, SVG and
//! each GIF frame come out the same.
//!
//! The work is split by job: `reading.rs` reads the trajectory file and the mesh it ran on,
//! `framing.rs` places the map in the picture and draws what surrounds it (axes, titles, the
//! scale bar and the panel), `layers.rs` draws what lies inside it (land and water with the
//! mesh, the tracks, the boundary, the markers) and `status_page.rs` paints the status page's
//! live map. This file holds the options and the two commands that put them together.

mod framing;
mod layers;
mod reading;
mod status_page;

pub use status_page::SnapshotPainter;

use super::text::Align;
use crate::input::timefmt;
use anyhow::{anyhow, Context, Result};
use framing::{draw_decor, extent, layout, Layout};
use layers::{
    draw_edges, draw_marks, draw_mesh, draw_tracks, marks_present, Colours, Mark, Strokes, INK,
};
use plotters::coord::Shift;
use plotters::prelude::*;
use reading::{colours, default_colour_by, load, record_at, MapMesh, Tracks};
use std::path::{Path, PathBuf};

/// What the tracks are coloured by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColourBy {
    /// Time since release, hours.
    Age,
    /// Depth below the surface, metres.
    Depth,
    /// The particle's last status.
    Status,
    /// The release site (`origin`).
    Origin,
    /// The happiest-particle example's happiness.
    Happiness,
    /// One colour.
    None,
}

/// How `shoal plot` and `shoal animate` draw a trajectory file.
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// The FVCOM file with the mesh (default: the run's first input).
    pub mesh: Option<PathBuf>,
    /// Pixels on the map's longer side.
    pub size: u32,
    /// Default: by origin where there are several release sites, by age otherwise.
    pub colour_by: Option<ColourBy>,
    /// West, east, south, north in the map's units (degrees or km).
    pub extent: Option<[f64; 4]>,
    /// Positions at this time (a date and time, or a duration after the first record).
    pub time: Option<String>,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            mesh: None,
            size: 1000,
            colour_by: None,
            extent: None,
            time: None,
        }
    }
}

/// The largest map side, pixels (`--size`).
pub const MAX_SIZE: u32 = 16_384;

/// `YYYY-MM-DD HH:MM` (seconds shown only when there are some).
fn when(unix: f64) -> String {
    let s = timefmt::format_datetime(unix);
    s.strip_suffix(":00").map_or(s.clone(), str::to_string)
}

/// Hours and minutes after the first record, for labels.
fn after(seconds: f64) -> String {
    let m = (seconds / 60.0).round() as i64;
    match (m / 60, m % 60) {
        (h, 0) => format!("+{h} h"),
        (0, mm) => format!("+{mm} min"),
        (h, mm) => format!("+{h} h {mm:02} min"),
    }
}

fn ok<T, E: std::fmt::Display>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

fn titles(tr: &Tracks, at: Option<usize>) -> (String, String) {
    let (first, last) = (tr.times[0], tr.times[tr.nt - 1]);
    let title = format!("{} · {} particles", tr.source, tr.n);
    let subtitle = match at {
        Some(k) => format!(
            "at {} UTC ({} of {} to {})",
            when(tr.times[k]),
            after(tr.times[k] - first),
            when(first),
            when(last)
        ),
        None => format!("{} to {} UTC · {} records", when(first), when(last), tr.nt),
    };
    (title, subtitle)
}

/// What one still picture shows.
struct Picture<'a> {
    lay: &'a Layout,
    tr: &'a Tracks,
    mesh: &'a MapMesh,
    colours: &'a Colours,
    at: Option<usize>,
    title: &'a str,
    subtitle: &'a str,
    marks: &'a [Mark],
}

impl Picture<'_> {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>, vector: bool) -> Result<()> {
        let (lay, tr, colours) = (self.lay, self.tr, self.colours);
        ok(area.fill(&WHITE))?;
        draw_mesh(area, &lay.frame, self.mesh)?;
        // SVG files stay small enough to open: fewer tracks than a bitmap takes.
        let most = if vector { 600 } else { 2000 };
        let w = (lay.pen.scale as u32).max(1);
        // Markers shrink where there are many.
        let r = if tr.n > 300 {
            lay.pen.scale
        } else {
            lay.pen.scale + 1
        };
        match self.at {
            None => {
                let strokes = Strokes {
                    most,
                    alpha: 0.85,
                    width: w,
                };
                draw_tracks(area, &lay.frame, tr, colours, tr.nt - 1, strokes)?;
                draw_edges(area, &lay.frame, self.mesh, &lay.pen)?;
                draw_marks(area, &lay.frame, tr, colours, None, most, r)?;
            }
            Some(k) => {
                let strokes = Strokes {
                    most,
                    alpha: 0.15,
                    width: w,
                };
                draw_tracks(area, &lay.frame, tr, &Colours::One, k, strokes)?;
                draw_edges(area, &lay.frame, self.mesh, &lay.pen)?;
                draw_marks(area, &lay.frame, tr, colours, Some(k), 20 * most, r)?;
            }
        }
        draw_decor(area, lay, self.title, self.subtitle, self.marks, colours)
    }
}

/// `shoal plot` of a trajectory file: PNG, or SVG where the name ends in `.svg`.
pub fn plot(output: &Path, image: &Path, opts: &MapOptions) -> Result<()> {
    let (tr, mesh, geographic, f) = load(output, opts)?;
    let by = opts.colour_by.unwrap_or_else(|| default_colour_by(&f));
    let colours = colours(&f, &tr, by)?;
    let at = opts
        .time
        .as_deref()
        .map(|s| record_at(&tr, s))
        .transpose()?;
    let vector = is_svg(image);
    let lay = layout(
        extent(&tr, &mesh, opts.extent)?,
        geographic,
        opts.size,
        vector,
    );
    let (title, subtitle) = titles(&tr, at);
    let marks = marks_present(&tr, at);
    let parts = Picture {
        lay: &lay,
        tr: &tr,
        mesh: &mesh,
        colours: &colours,
        at,
        title: &title,
        subtitle: &subtitle,
        marks: &marks,
    };
    if vector {
        let area = SVGBackend::new(image, (lay.width, lay.height)).into_drawing_area();
        parts.draw(&area, vector)?;
        area.present()
            .with_context(|| format!("writing {}", image.display()))?;
    } else {
        let area = BitMapBackend::new(image, (lay.width, lay.height)).into_drawing_area();
        parts.draw(&area, vector)?;
        area.present()
            .with_context(|| format!("writing {}", image.display()))?;
    }
    Ok(())
}

pub fn is_svg(image: &Path) -> bool {
    image
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
}

/// `shoal animate`: the run as a GIF, a frame per record (at most `frames`), positions as dots
/// over faint tracks, with the time in the corner.
pub fn animate(
    output: &Path,
    gif_path: &Path,
    opts: &MapOptions,
    frames: usize,
    fps: f64,
) -> Result<usize> {
    anyhow::ensure!(
        gif_path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gif")),
        "{}: animations are written as GIF; name the file *.gif",
        gif_path.display()
    );
    anyhow::ensure!(fps > 0.0 && fps <= 100.0, "--fps must be in (0, 100]");
    let (tr, mesh, geographic, f) = load(output, opts)?;
    let by = opts.colour_by.unwrap_or_else(|| default_colour_by(&f));
    let colours = colours(&f, &tr, by)?;
    let lay = layout(
        extent(&tr, &mesh, opts.extent)?,
        geographic,
        opts.size,
        false,
    );
    anyhow::ensure!(
        lay.width <= u16::MAX as u32 && lay.height <= u16::MAX as u32,
        "--size {} is too large for a GIF",
        opts.size
    );
    let (title, _) = titles(&tr, None);
    let subtitle = format!("{} to {} UTC", when(tr.times[0]), when(tr.times[tr.nt - 1]));
    let (w, h) = (lay.width, lay.height);
    let mut base = vec![0u8; w as usize * h as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut base, (w, h)).into_drawing_area();
        ok(area.fill(&WHITE))?;
        draw_mesh(&area, &lay.frame, &mesh)?;
        draw_decor(
            &area,
            &lay,
            &title,
            &subtitle,
            &marks_present(&tr, Some(tr.nt - 1)),
            &colours,
        )?;
        ok(area.present())?;
    }
    let file = std::fs::File::create(gif_path)
        .with_context(|| format!("creating {}", gif_path.display()))?;
    let mut enc = gif::Encoder::new(std::io::BufWriter::new(file), w as u16, h as u16, &[])
        .with_context(|| format!("writing {}", gif_path.display()))?;
    enc.set_repeat(gif::Repeat::Infinite)
        .with_context(|| format!("writing {}", gif_path.display()))?;
    let stride = tr.nt.div_ceil(frames.max(1)).max(1);
    let records: Vec<usize> = (0..tr.nt)
        .step_by(stride)
        .chain(((tr.nt - 1) % stride != 0).then_some(tr.nt - 1))
        .collect();
    let delay = (100.0 / fps).round().max(1.0) as u16;
    for &k in &records {
        let mut buf = base.clone();
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let fr = &lay.frame;
            let strokes = Strokes {
                most: 2000,
                alpha: 0.12,
                width: 1,
            };
            draw_tracks(&area, fr, &tr, &Colours::One, k, strokes)?;
            draw_edges(&area, fr, &mesh, &lay.pen)?;
            draw_marks(&area, fr, &tr, &colours, Some(k), 20_000, lay.pen.scale + 1)?;
            let label = format!(
                "{} UTC  {}",
                when(tr.times[k]),
                after(tr.times[k] - tr.times[0])
            );
            let pad = lay.pen.scale * 3;
            let (x, y) = (fr.left + pad, fr.top + pad);
            ok(area.draw(&Rectangle::new(
                [
                    (x - pad / 2, y - pad / 2),
                    (
                        x + lay.pen.width(&label) + pad / 2,
                        y + lay.pen.height() + pad / 2,
                    ),
                ],
                WHITE.mix(0.85).filled(),
            )))?;
            lay.pen
                .write(&area, &label, (x, y), Align::Left, false, &INK)?;
            ok(area.present())?;
        }
        let mut frame = gif::Frame::from_rgb_speed(w as u16, h as u16, &buf, 20);
        frame.delay = delay;
        enc.write_frame(&frame)
            .with_context(|| format!("writing {}", gif_path.display()))?;
    }
    Ok(records.len())
}
