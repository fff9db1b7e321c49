//! Named sites from GeoJSON: release areas (`[release] polygons`). A site is one Feature of a
//! FeatureCollection, a Polygon or MultiPolygon (holes allowed) named by its `name` property, in
//! lon/lat for geographic meshes (projected into the mesh's frame here) or in the mesh's x/y
//! metres for Cartesian ones. Points are drawn uniformly by area inside a site and in the water
//! (inside the mesh) by rejection from the site's bounding box, each attempt keyed by (seed,
//! particle id, attempt), so a release is the same on any machine and any number of nodes.

use crate::input::crs::Geo;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use shoal_common::rng::{draw, unit_open, Stream};
use shoal_common::Mesh;
use std::path::Path;

use shoal_common::behaviour::{Area, Ring};

/// One named site: polygons of an outer ring and holes.
#[derive(Clone, Debug)]
pub struct Site {
    pub name: String,
    /// Its polygons in the mesh's frame: the kernel tests settlement in this very area.
    pub area: Area,
}

/// Draws give up on a point after this many attempts outside the site's water.
pub const MAX_ATTEMPTS: u32 = 200_000;

/// Reads the sites of a GeoJSON FeatureCollection, checking what a person could get wrong, and
/// names the file and the feature in every error.
pub fn read(path: &Path, projection: Option<&Geo>) -> Result<Vec<Site>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read polygon file {}", path.display()))?;
    parse(&text, projection).with_context(|| format!("polygon file {}", path.display()))
}

pub fn parse(text: &str, projection: Option<&Geo>) -> Result<Vec<Site>> {
    let doc: Value = serde_json::from_str(text).map_err(|e| anyhow!("not GeoJSON: {e}"))?;
    let features = match doc.get("type").and_then(Value::as_str) {
        Some("FeatureCollection") => doc
            .get("features")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("a FeatureCollection without a `features` list"))?
            .iter()
            .collect::<Vec<_>>(),
        Some("Feature") => vec![&doc],
        Some(t) => bail!("a GeoJSON `{t}`: give a FeatureCollection of Polygon or MultiPolygon features, each with a `name` property"),
        None => bail!("not GeoJSON: no `type`"),
    };
    if features.is_empty() {
        bail!("the FeatureCollection has no features");
    }
    let mut sites: Vec<Site> = Vec::with_capacity(features.len());
    for (k, f) in features.iter().enumerate() {
        let name = f
            .get("properties")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| anyhow!("feature {k} has no `name` property (a string)"))?
            .to_string();
        if sites.iter().any(|s| s.name == name) {
            bail!("two features are named `{name}`");
        }
        let site = site(&name, f, projection).with_context(|| format!("feature {k} (`{name}`)"))?;
        sites.push(site);
    }
    Ok(sites)
}

fn site(name: &str, f: &Value, projection: Option<&Geo>) -> Result<Site> {
    let g = f
        .get("geometry")
        .filter(|g| !g.is_null())
        .ok_or_else(|| anyhow!("no geometry"))?;
    let coords = g
        .get("coordinates")
        .ok_or_else(|| anyhow!("a geometry without `coordinates`"))?;
    let polygons: Vec<&Value> = match g.get("type").and_then(Value::as_str) {
        Some("Polygon") => vec![coords],
        Some("MultiPolygon") => coords
            .as_array()
            .ok_or_else(|| anyhow!("MultiPolygon coordinates are not a list"))?
            .iter()
            .collect(),
        Some(t) => bail!("a {t}: only Polygon and MultiPolygon sites have an area"),
        None => bail!("a geometry without `type`"),
    };
    let mut out = Vec::with_capacity(polygons.len());
    for (p, poly) in polygons.iter().enumerate() {
        let rings = poly
            .as_array()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| anyhow!("polygon {p}: no rings"))?;
        let mut parsed = Vec::with_capacity(rings.len());
        for (r, ring) in rings.iter().enumerate() {
            let ring =
                parse_ring(ring, projection).with_context(|| format!("polygon {p}, ring {r}"))?;
            parsed.push(ring);
        }
        out.push(parsed);
    }
    let mut bbox = (
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    );
    for poly in &out {
        for &(x, y) in &poly[0] {
            bbox = (bbox.0.min(x), bbox.1.min(y), bbox.2.max(x), bbox.3.max(y));
        }
    }
    Ok(Site {
        name: name.to_string(),
        area: Area {
            polygons: out,
            bbox,
        },
    })
}

fn parse_ring(ring: &Value, projection: Option<&Geo>) -> Result<Ring> {
    let pts = ring
        .as_array()
        .ok_or_else(|| anyhow!("not a list of positions"))?;
    let mut raw: Ring = Vec::with_capacity(pts.len());
    for (i, p) in pts.iter().enumerate() {
        let xy = p
            .as_array()
            .filter(|a| a.len() >= 2)
            .and_then(|a| Some((a[0].as_f64()?, a[1].as_f64()?)))
            .filter(|(a, b)| a.is_finite() && b.is_finite())
            .ok_or_else(|| anyhow!("position {i} is not [x, y] numbers"))?;
        raw.push(xy);
    }
    let lonlat = |p: &(f64, f64)| (-180.0..=360.0).contains(&p.0) && (-90.0..=90.0).contains(&p.1);
    let project = |g: &Geo| raw.iter().map(|p| g.forward(p.0, p.1)).collect::<Ring>();
    let mut out = match projection {
        None => raw.clone(),
        Some(g) if g.frame().is_some() => {
            if let Some(i) = raw.iter().position(|p| !lonlat(p)) {
                bail!(
                    "position {i} ({}, {}) is not lon/lat, and the mesh is geographic",
                    raw[i].0,
                    raw[i].1
                );
            }
            project(g)
        }
        // A Cartesian mesh that knows its projection takes rings in lon/lat or in its x/y;
        // projected coordinates are never all within lon/lat's ranges.
        Some(g) if raw.iter().all(lonlat) => project(g),
        Some(_) => raw.clone(),
    };
    if let Some(i) = out
        .iter()
        .position(|p| !(p.0.is_finite() && p.1.is_finite()))
    {
        bail!("position {i} has no place in the mesh's projection");
    }
    if out.len() < 4 {
        bail!("{} positions; a ring needs at least 4 (closed)", out.len());
    }
    if out.first() != out.last() {
        bail!("not closed: the last position must repeat the first");
    }
    out.pop();
    if let Some((a, b)) = self_intersection(&out) {
        bail!("the ring crosses itself (edges {a} and {b})");
    }
    if ring_area(&out).abs() == 0.0 {
        bail!("the ring has no area");
    }
    Ok(out)
}

/// Twice the signed area of a ring (positive counter-clockwise).
fn ring_area(r: &[(f64, f64)]) -> f64 {
    let n = r.len();
    (0..n)
        .map(|i| {
            let (a, b) = (r[i], r[(i + 1) % n]);
            a.0 * b.1 - b.0 * a.1
        })
        .sum()
}

/// The first pair of non-adjacent edges that touch or cross, if any.
fn self_intersection(r: &[(f64, f64)]) -> Option<(usize, usize)> {
    let n = r.len();
    let edge = |i: usize| (r[i], r[(i + 1) % n]);
    for i in 0..n {
        let (a, b) = edge(i);
        let (ax0, ax1) = (a.0.min(b.0), a.0.max(b.0));
        let (ay0, ay1) = (a.1.min(b.1), a.1.max(b.1));
        for j in i + 2..n {
            if i == 0 && j == n - 1 {
                continue; // the closing edge shares the first vertex
            }
            let (c, d) = edge(j);
            if c.0.max(d.0) < ax0 || c.0.min(d.0) > ax1 || c.1.max(d.1) < ay0 || c.1.min(d.1) > ay1
            {
                continue;
            }
            if segments_meet(a, b, c, d) {
                return Some((i, j));
            }
        }
    }
    None
}

fn orient(a: (f64, f64), b: (f64, f64), c: (f64, f64)) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

fn segments_meet(a: (f64, f64), b: (f64, f64), c: (f64, f64), d: (f64, f64)) -> bool {
    let (d1, d2) = (orient(c, d, a), orient(c, d, b));
    let (d3, d4) = (orient(a, b, c), orient(a, b, d));
    if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0))
        && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0))
    {
        return true;
    }
    let on = |p: (f64, f64), q: (f64, f64), r: (f64, f64)| {
        r.0 >= p.0.min(q.0) && r.0 <= p.0.max(q.0) && r.1 >= p.1.min(q.1) && r.1 <= p.1.max(q.1)
    };
    (d1 == 0.0 && on(c, d, a))
        || (d2 == 0.0 && on(c, d, b))
        || (d3 == 0.0 && on(a, b, c))
        || (d4 == 0.0 && on(a, b, d))
}

impl Site {
    /// Inside an outer ring and none of its holes.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        self.area.contains(x, y)
    }

    /// Whether the site and the mesh can share water: a mesh node or element centre inside the
    /// site, or a site vertex inside the mesh.
    pub fn touches(&self, mesh: &Mesh) -> bool {
        let nodes = (0..mesh.n_nodes()).any(|n| self.contains(mesh.x[n], mesh.y[n]));
        let centres = || {
            (0..mesh.n_elements()).any(|e| {
                let v = mesh.nv[e];
                let cx = v.iter().map(|&n| mesh.x[n as usize]).sum::<f64>() / 3.0;
                let cy = v.iter().map(|&n| mesh.y[n as usize]).sum::<f64>() / 3.0;
                self.contains(cx, cy)
            })
        };
        let vertices = || {
            self.area
                .polygons
                .iter()
                .flat_map(|p| p[0].iter())
                .any(|&(x, y)| mesh.locate(x, y, None).is_some())
        };
        nodes || centres() || vertices()
    }

    /// Particle `id`'s point: uniform by area in the site's water, keyed by (seed, id, attempt).
    /// The third number of the accepted draw is returned for the depth.
    pub fn draw(&self, seed: u64, id: u32, mesh: &Mesh) -> Result<(f64, f64, f64)> {
        let (x0, y0, x1, y1) = self.area.bbox;
        for attempt in 0..MAX_ATTEMPTS {
            let b = draw(seed, id, attempt, Stream::Release);
            let x = x0 + unit_open(b[0]) * (x1 - x0);
            let y = y0 + unit_open(b[1]) * (y1 - y0);
            if self.contains(x, y) && mesh.locate(x, y, None).is_some() {
                return Ok((x, y, unit_open(b[2])));
            }
        }
        bail!(
            "site `{}`: no point in the water after {MAX_ATTEMPTS} draws (almost all of it is on land or outside the mesh)",
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(name: &str, x0: f64, y0: f64, s: f64) -> String {
        format!(
            r#"{{"type":"Feature","properties":{{"name":"{name}"}},"geometry":{{"type":"Polygon","coordinates":[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]}}}}"#,
            x1 = x0 + s,
            y1 = y0 + s
        )
    }

    fn collection(features: &[String]) -> String {
        format!(
            r#"{{"type":"FeatureCollection","features":[{}]}}"#,
            features.join(",")
        )
    }

    #[test]
    fn squares_holes_and_multipolygons_contain_what_they_should() {
        let holed = r#"{"type":"Feature","properties":{"name":"ring"},"geometry":{"type":"MultiPolygon","coordinates":[
            [[[0,0],[10,0],[10,10],[0,10],[0,0]],[[4,4],[6,4],[6,6],[4,6],[4,4]]],
            [[[20,0],[22,0],[22,2],[20,2],[20,0]]]]}}"#;
        let sites = parse(
            &collection(&[square("a", 0.0, 0.0, 1.0), holed.to_string()]),
            None,
        )
        .unwrap();
        assert_eq!(sites.len(), 2);
        assert!(sites[0].contains(0.5, 0.5) && !sites[0].contains(1.5, 0.5));
        let r = &sites[1];
        assert!(r.contains(1.0, 1.0) && r.contains(21.0, 1.0));
        assert!(!r.contains(5.0, 5.0), "inside the hole");
        assert!(!r.contains(15.0, 1.0));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", parse(text, None).unwrap_err());
        assert!(err("[1,2]").contains("no `type`"), "{}", err("[1,2]"));
        assert!(err("{").contains("not GeoJSON"));
        let bow = r#"{"type":"Feature","properties":{"name":"bow"},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}}"#;
        let e = err(&collection(&[bow.to_string()]));
        assert!(e.contains("`bow`") && e.contains("crosses itself"), "{e}");
        let open = r#"{"type":"Feature","properties":{"name":"open"},"geometry":{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}}"#;
        assert!(err(&collection(&[open.to_string()])).contains("not closed"));
        let unnamed = square("a", 0.0, 0.0, 1.0).replace(r#""name":"a""#, r#""id":3"#);
        assert!(err(&collection(&[unnamed])).contains("feature 0 has no `name`"));
        let twice = collection(&[square("a", 0.0, 0.0, 1.0), square("a", 2.0, 0.0, 1.0)]);
        assert!(err(&twice).contains("two features are named `a`"));
        let point = r#"{"type":"Feature","properties":{"name":"p"},"geometry":{"type":"Point","coordinates":[0,0]}}"#;
        assert!(err(&collection(&[point.to_string()])).contains("a Point"));
    }
}
