//! Larval behaviour as pure functions of a particle's state, its age and the step's key:
//! stages by age, diel vertical migration steered by the sun's elevation, mortality (a constant
//! rate and lethal temperature or salinity), and settlement in named areas within a competency
//! window. The kernel ([`crate::kernel`]) calls these; every random choice is keyed by (seed,
//! particle id, step, [`Stream::Fate`]) so any split of the work gives the same fates.
//!
//! The sun: the Astronomical Almanac's low-precision formulas (mean longitude and anomaly, the
//! ecliptic longitude with two terms of the equation of centre, the obliquity, then right
//! ascension and declination; Greenwich mean sidereal time from the Julian date). The Almanac
//! gives 0.01° for the sun's position between 1950 and 2050; UTC is taken for UT1 (under 0.9 s,
//! 0.004°). Day is the sun's centre above the geometric horizon (elevation > 0, no refraction),
//! at the centroid of the particle's element (geographic meshes) or at the run file's place
//! (Cartesian meshes): on a mesh of kilometre elements the place is within 0.01° of longitude,
//! under a minute of sunrise.

use crate::rng::{draw, unit_open, Stream};
use serde::{Deserialize, Serialize};

/// A ring of vertices in the mesh's frame, closed implicitly (the last vertex is not the first).
pub type Ring = Vec<(f64, f64)>;

/// An area of the mesh's plane: polygons of an outer ring and holes, with their bounding box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Area {
    /// Each polygon's rings, the outer first.
    pub polygons: Vec<Vec<Ring>>,
    /// (x0, y0, x1, y1) of the outer rings.
    pub bbox: (f64, f64, f64, f64),
}

impl Area {
    /// Inside an outer ring and none of its holes.
    #[inline]
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let (x0, y0, x1, y1) = self.bbox;
        if x < x0 || x > x1 || y < y0 || y > y1 {
            return false;
        }
        self.polygons
            .iter()
            .any(|p| in_ring(&p[0], x, y) && !p[1..].iter().any(|h| in_ring(h, x, y)))
    }
}

/// Even-odd rule over one ring.
pub fn in_ring(r: &[(f64, f64)], x: f64, y: f64) -> bool {
    let n = r.len();
    let mut inside = false;
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (xi, yi) = r[i];
        let (xj, yj) = r[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Depths a migrating particle swims into, metres below the surface (positive down):
/// `shallow <= deep`; equal for one depth.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub shallow: f64,
    pub deep: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Migration {
    pub day: Band,
    pub night: Band,
    /// m/s, at most, up or down.
    pub swim_speed: f64,
}

/// What a particle does from `from_age` (seconds since its release) until the next stage.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub from_age: f64,
    /// m/s, positive down.
    pub sinking_speed: f64,
    /// Per second: a particle survives a step of `dt` with probability exp(-rate dt).
    pub mortality_rate: f64,
    pub migration: Option<Migration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    /// Where particles settle, in order: a point in several areas belongs to the first.
    pub areas: Vec<Area>,
    /// Ages (seconds) between which a particle can settle.
    pub competency: (f64, f64),
    /// Chance of settling within an hour while competent and inside an area; `None`: at the
    /// first step that ends inside one.
    pub probability_per_hour: Option<f64>,
    /// Past the competency window, an unsettled particle dies.
    pub die_after_competency: bool,
}

impl Settlement {
    /// The first area holding (x, y).
    #[inline]
    pub fn area_at(&self, x: f64, y: f64) -> Option<usize> {
        self.areas.iter().position(|a| a.contains(x, y))
    }
}

/// Where the sun is looked at from, for a mesh without geographic coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub latitude: f64,
    pub longitude: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    /// At least one; the first from age 0, the rest by increasing age.
    pub stages: Vec<Stage>,
    /// Lethal outside this range (°C), where the fields carry `temp`.
    pub temperature_range: Option<(f64, f64)>,
    /// Lethal outside this range, where the fields carry `salinity`.
    pub salinity_range: Option<(f64, f64)>,
    pub settlement: Option<Settlement>,
    /// The run clock's zero, Unix seconds (for the sun).
    pub clock_origin: f64,
    /// Cartesian meshes' place for the sun; geographic meshes use each element's centroid.
    pub place: Option<Place>,
}

impl Behaviour {
    /// The stage at `age` seconds.
    #[inline]
    pub fn stage(&self, age: f64) -> &Stage {
        let k = self
            .stages
            .iter()
            .rposition(|s| s.from_age <= age)
            .unwrap_or(0);
        &self.stages[k]
    }

    /// Whether any stage migrates (the step then needs the sun).
    pub fn migrates(&self) -> bool {
        self.stages.iter().any(|s| s.migration.is_some())
    }
}

/// The sun over the Earth at one moment: its declination and Greenwich hour angle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sun {
    pub sin_declination: f64,
    pub cos_declination: f64,
    /// Greenwich hour angle, radians (the local hour angle is this plus the east longitude).
    pub hour_angle: f64,
}

impl Sun {
    /// The sun at `unix` seconds (UTC).
    pub fn at(unix: f64) -> Sun {
        let n = unix / 86_400.0 + 2_440_587.5 - 2_451_545.0;
        let rad = std::f64::consts::PI / 180.0;
        let mean_longitude = (280.460 + 0.985_647_4 * n).rem_euclid(360.0);
        let g = ((357.528 + 0.985_600_3 * n).rem_euclid(360.0)) * rad;
        let lambda = (mean_longitude + 1.915 * g.sin() + 0.020 * (2.0 * g).sin()) * rad;
        let epsilon = (23.439 - 0.000_000_4 * n) * rad;
        let ra = (epsilon.cos() * lambda.sin()).atan2(lambda.cos());
        let sin_dec = epsilon.sin() * lambda.sin();
        let gmst_hours = (18.697_374_558 + 24.065_709_824_419_08 * n).rem_euclid(24.0);
        Sun {
            sin_declination: sin_dec,
            cos_declination: (1.0 - sin_dec * sin_dec).sqrt(),
            hour_angle: gmst_hours * 15.0 * rad - ra,
        }
    }

    /// Sine of the sun's elevation seen from latitude `phi` (as its sine and cosine) and east
    /// longitude `lon` (radians).
    #[inline]
    pub fn sin_elevation(&self, sin_phi: f64, cos_phi: f64, lon: f64) -> f64 {
        sin_phi * self.sin_declination
            + cos_phi * self.cos_declination * (self.hour_angle + lon).cos()
    }

    /// Elevation in degrees from a place in degrees.
    pub fn elevation_deg(&self, latitude: f64, longitude: f64) -> f64 {
        let (p, l) = (latitude.to_radians(), longitude.to_radians());
        self.sin_elevation(p.sin(), p.cos(), l)
            .clamp(-1.0, 1.0)
            .asin()
            .to_degrees()
    }
}

/// The vertical speed (m/s, positive up) that takes a particle `depth` metres below the surface
/// toward `band`, at most `speed`, without passing its edge within `|dt|`.
#[inline]
pub fn swim(band: Band, speed: f64, depth: f64, dt: f64) -> f64 {
    let reach = dt.abs();
    if depth < band.shallow {
        -speed.min((band.shallow - depth) / reach)
    } else if depth > band.deep {
        speed.min((depth - band.deep) / reach)
    } else {
        0.0
    }
}

/// The random numbers of one particle's fate at one step: uniform in (0, 1), for dying and for
/// settling.
#[inline]
pub fn fate_draws(seed: u64, id: u32, step: u32) -> (f64, f64) {
    let b = draw(seed, id, step, Stream::Fate);
    (unit_open(b[0]), unit_open(b[1]))
}

/// Chance of an event of `rate` per second happening within `dt` seconds.
#[inline]
pub fn chance(rate: f64, dt: f64) -> f64 {
    -(-rate * dt.abs()).exp_m1()
}

/// Chance of settling within `dt` seconds given a chance `p` per hour.
#[inline]
pub fn chance_per_hour(p: f64, dt: f64) -> f64 {
    if p >= 1.0 {
        1.0
    } else {
        -((dt.abs() / 3600.0) * (-p).ln_1p()).exp_m1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> f64 {
        // Days from civil (Howard Hinnant's algorithm), enough for these dates.
        let (y, m) = if mo <= 2 {
            (y - 1, mo + 9)
        } else {
            (y, mo - 3)
        };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m + 2) / 5 + d - 1;
        let doe = yoe as u32 * 365 + yoe as u32 / 4 - yoe as u32 / 100 + doy;
        let days = era as i64 * 146_097 + doe as i64 - 719_468;
        (days * 86_400 + h as i64 * 3600 + mi as i64 * 60) as f64
    }

    #[test]
    fn the_declination_is_right_at_the_solstice_and_the_equinox() {
        // June solstice 2024-06-20 20:51 UTC: declination 23.44°; March equinox 2024-03-20
        // 03:06 UTC: 0°.
        let s = Sun::at(unix(2024, 6, 20, 20, 51));
        let dec = s.sin_declination.asin().to_degrees();
        assert!((dec - 23.44).abs() < 0.01, "solstice declination {dec}");
        let e = Sun::at(unix(2024, 3, 20, 3, 6));
        let dec = e.sin_declination.asin().to_degrees();
        assert!(dec.abs() < 0.01, "equinox declination {dec}");
    }

    #[test]
    fn noon_at_greenwich_follows_the_equation_of_time() {
        // Early November the sun runs 16 min 26 s ahead of the clock (the equation of time's
        // maximum): the highest sun at Greenwich on 2024-11-03 comes near 11:43:34 UTC.
        let day = unix(2024, 11, 3, 0, 0);
        let mut best = (f64::MIN, 0.0);
        for s in (10 * 3600..14 * 3600).step_by(5) {
            let el = Sun::at(day + s as f64).elevation_deg(51.48, 0.0);
            if el > best.0 {
                best = (el, s as f64);
            }
        }
        let noon = 11.0 * 3600.0 + 43.0 * 60.0 + 34.0;
        assert!((best.1 - noon).abs() < 60.0, "noon at {} s", best.1);
        // Noon elevation 90° - 51.48° + declination (-15.1° on that day).
        assert!(
            (best.0 - (90.0 - 51.48 - 15.1)).abs() < 0.3,
            "noon elevation {}",
            best.0
        );
    }

    #[test]
    fn a_swimmer_stops_at_the_edge_of_its_band() {
        let band = Band {
            shallow: 5.0,
            deep: 10.0,
        };
        assert_eq!(swim(band, 0.01, 7.0, 60.0), 0.0);
        assert_eq!(swim(band, 0.01, 0.0, 60.0), -0.01);
        assert!((swim(band, 0.01, 4.9, 60.0) + 0.1 / 60.0).abs() < 1e-12);
        assert!((swim(band, 0.01, 10.3, -60.0) - 0.3 / 60.0).abs() < 1e-12);
        assert!((chance(1.0 / 86_400.0, 86_400.0) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!((chance_per_hour(0.5, 7200.0) - 0.75).abs() < 1e-12);
        assert_eq!(chance_per_hour(1.0, 60.0), 1.0);
    }
}
