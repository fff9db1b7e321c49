//! Where a mesh lies on the Earth: the transverse Mercator frame shoal projects a geographic
//! (lon/lat) mesh into, or, for a Cartesian FVCOM run, the projection its global attribute
//! `CoordinateProjection` names (a proj4 string such as `proj=utm +zone=19 +datum=WGS84`, or
//! `init=epsg:26919`), read with proj4rs (pure Rust: no C library on the Pi).

use shoal_common::TransverseMercator;

/// Maps mesh x/y (metres) to lon/lat (degrees) and back.
#[derive(Clone)]
pub enum Geo {
    /// A geographic mesh, in the frame it was projected to when read.
    Frame(TransverseMercator),
    /// A Cartesian mesh whose file names its projection.
    Crs {
        proj: Box<proj4rs::Proj>,
        lonlat: Box<proj4rs::Proj>,
        /// The attribute as written, for messages.
        text: String,
    },
}

impl std::fmt::Debug for Geo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Geo::Frame(tm) => write!(f, "Frame({tm:?})"),
            Geo::Crs { text, .. } => write!(f, "Crs({text})"),
        }
    }
}

impl Geo {
    /// Lon/lat (degrees) of a point of the mesh; NaN where the projection has no answer.
    pub fn inverse(&self, x: f64, y: f64) -> (f64, f64) {
        match self {
            Geo::Frame(tm) => tm.inverse(x, y),
            Geo::Crs { proj, lonlat, .. } => {
                let mut p = (x, y, 0.0);
                match proj4rs::transform::transform(proj, lonlat, &mut p) {
                    Ok(()) => (p.0.to_degrees(), p.1.to_degrees()),
                    Err(_) => (f64::NAN, f64::NAN),
                }
            }
        }
    }

    /// The mesh's x/y of a lon/lat (degrees); NaN where the projection has no answer.
    pub fn forward(&self, lon: f64, lat: f64) -> (f64, f64) {
        match self {
            Geo::Frame(tm) => tm.forward(lon, lat),
            Geo::Crs { proj, lonlat, .. } => {
                let mut p = (lon.to_radians(), lat.to_radians(), 0.0);
                match proj4rs::transform::transform(lonlat, proj, &mut p) {
                    Ok(()) => (p.0, p.1),
                    Err(_) => (f64::NAN, f64::NAN),
                }
            }
        }
    }

    /// The frame of a geographic mesh (`None` for a Cartesian one with a projection).
    pub fn frame(&self) -> Option<&TransverseMercator> {
        match self {
            Geo::Frame(tm) => Some(tm),
            Geo::Crs { .. } => None,
        }
    }
}

/// The projection `text` (a `CoordinateProjection` attribute) names: `Ok(None)` for none
/// (empty, `none`), `Err` with the reason when proj4rs cannot read it.
pub fn parse(text: &str) -> Result<Option<Geo>, String> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bare = t.trim_start_matches('+');
    let proj = if let Some(code) = bare
        .strip_prefix("init=")
        .and_then(|s| s.split_whitespace().next())
    {
        let Some(epsg) = code
            .to_ascii_lowercase()
            .strip_prefix("epsg:")
            .and_then(|n| n.parse::<u16>().ok())
        else {
            return Err(format!(
                "`{code}` is not an EPSG code, the only `init=` shoal knows"
            ));
        };
        proj4rs::Proj::from_epsg_code(epsg).map_err(|e| format!("EPSG:{epsg}: {e}"))?
    } else {
        // FVCOM writes the first parameter without its `+`.
        let s: Vec<String> = t
            .split_whitespace()
            .map(|w| {
                if w.starts_with('+') {
                    w.to_string()
                } else {
                    format!("+{w}")
                }
            })
            .collect();
        proj4rs::Proj::from_proj_string(&s.join(" ")).map_err(|e| e.to_string())?
    };
    if proj.is_latlong() {
        return Err("a lon/lat projection, but the mesh's coordinates are Cartesian".into());
    }
    let lonlat =
        proj4rs::Proj::from_proj_string("+proj=longlat +datum=WGS84").map_err(|e| e.to_string())?;
    Ok(Some(Geo::Crs {
        proj: Box::new(proj),
        lonlat: Box::new(lonlat),
        text: t.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fvcom_style_strings_and_epsg_codes_are_read_and_others_refused() {
        let a = parse("proj=utm +zone=19 +datum=WGS84").unwrap().unwrap();
        let b = parse("init=epsg:32619").unwrap().unwrap();
        for g in [&a, &b] {
            // UTM zone 19's central meridian, 69 W, on the equator: x = 500 000, y = 0.
            let (lon, lat) = g.inverse(500_000.0, 0.0);
            assert!((lon + 69.0).abs() < 1e-9 && lat.abs() < 1e-9, "{lon} {lat}");
            let (x, y) = g.forward(-70.0, 43.5);
            let back = g.inverse(x, y);
            assert!((back.0 + 70.0).abs() < 1e-9 && (back.1 - 43.5).abs() < 1e-9);
        }
        assert!(parse("none").unwrap().is_none());
        assert!(parse("init=nad83:1802").unwrap_err().contains("nad83:1802"));
        assert!(parse("proj=nonsense +zone=3").is_err());
        assert!(parse("+proj=longlat +datum=WGS84").is_err());
    }
}
