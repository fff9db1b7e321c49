//! The status page's live map: a run's whole mesh laid out and drawn once, and each snapshot's
//! particles painted over it as a PNG.

use super::framing::{draw_decor, layout, to_map, Layout};
use super::layers::{chosen, draw_edges, draw_mesh, Colours, Mark, TRACK};
use super::ok;
use super::reading::MapMesh;
use anyhow::{anyhow, Result};
use image::ImageEncoder;
use plotters::prelude::*;
use shoal_common::particles::status;

/// Draws the particles of a run's snapshots over its whole mesh, for the status page: the
/// mesh is laid out and drawn once, each picture only adds the dots.
pub struct SnapshotPainter {
    lay: Layout,
    base: Vec<u8>,
    geo: Option<crate::input::crs::Geo>,
}

impl SnapshotPainter {
    pub fn new(
        mesh: &shoal_common::Mesh,
        geo: Option<crate::input::crs::Geo>,
        size: u32,
    ) -> Result<Self> {
        let map = MapMesh::of(mesh, geo.as_ref());
        let e = {
            let b = map
                .u
                .iter()
                .zip(&map.v)
                .fold([f64::MAX, f64::MIN, f64::MAX, f64::MIN], |e, (a, b)| {
                    [e[0].min(*a), e[1].max(*a), e[2].min(*b), e[3].max(*b)]
                });
            let pad = 0.03 * (b[1] - b[0]).max(b[3] - b[2]).max(1e-9);
            [b[0] - pad, b[1] + pad, b[2] - pad, b[3] + pad]
        };
        let mut lay = layout(e, geo.is_some(), size, false);
        // No panel: the page says what the dots are.
        lay.width = (lay.panel - lay.pen.advance() * 2) as u32;
        let mut base = vec![0u8; lay.width as usize * lay.height as usize * 3];
        {
            let area =
                BitMapBackend::with_buffer(&mut base, (lay.width, lay.height)).into_drawing_area();
            ok(area.fill(&WHITE))?;
            draw_mesh(&area, &lay.frame, &map)?;
            draw_edges(&area, &lay.frame, &map, &lay.pen)?;
            draw_decor(&area, &lay, "", "", &[], &Colours::One)?;
            ok(area.present())?;
        }
        Ok(SnapshotPainter { lay, base, geo })
    }

    /// A PNG of the particles at (x, y) (metres in the mesh's frame), drifting ones as dots
    /// and the others by their statuses' markers.
    pub fn paint(&self, x: &[f64], y: &[f64], status: &[u8]) -> Result<Vec<u8>> {
        let (w, h) = (self.lay.width, self.lay.height);
        let mut buf = self.base.clone();
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let fr = &self.lay.frame;
            let n = x.len().min(y.len()).min(status.len());
            for p in chosen(n, 20_000) {
                let (a, b) = (x[p], y[p]);
                if !(a.is_finite() && b.is_finite()) || status[p] == status::PENDING {
                    continue;
                }
                let at = to_map(self.geo.as_ref(), a, b);
                if !fr.shows(at) {
                    continue;
                }
                match Mark::of(status[p] as i8) {
                    Some(Mark::Active) | None => {
                        ok(area.draw(&Circle::new(fr.ipx(at), 2, TRACK.filled())))?
                    }
                    Some(m) => m.draw(&area, fr.ipx(at), 2)?,
                }
            }
            ok(area.present())?;
        }
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&buf, w, h, image::ColorType::Rgb8)
            .map_err(|e| anyhow!("encoding the snapshot: {e}"))?;
        Ok(png)
    }
}
