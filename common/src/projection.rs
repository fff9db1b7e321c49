//! Geographic meshes are tracked in a local metric frame: a transverse Mercator projection on the
//! WGS84 ellipsoid, centred on the mesh, with unit scale on its central meridian. Krüger's series
//! to third order in n keeps the round trip at the sub-millimetre level over a few degrees, far
//! wider than any coastal FVCOM mesh.

use serde::{Deserialize, Serialize};

const A: f64 = 6_378_137.0;
const F: f64 = 1.0 / 298.257_223_563;

/// A transverse Mercator frame: x east, y north, metres, origin at (lon0, lat0).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransverseMercator {
    pub lon0: f64,
    pub lat0: f64,
    northing0: f64,
}

struct Series {
    big_a: f64,
    alpha: [f64; 3],
    beta: [f64; 3],
    delta: [f64; 3],
    e2n: f64,
}

fn series() -> Series {
    let n = F / (2.0 - F);
    let (n2, n3) = (n * n, n * n * n);
    Series {
        big_a: A / (1.0 + n) * (1.0 + n2 / 4.0 + n2 * n2 / 64.0),
        alpha: [
            n / 2.0 - 2.0 * n2 / 3.0 + 5.0 * n3 / 16.0,
            13.0 * n2 / 48.0 - 3.0 * n3 / 5.0,
            61.0 * n3 / 240.0,
        ],
        beta: [
            n / 2.0 - 2.0 * n2 / 3.0 + 37.0 * n3 / 96.0,
            n2 / 48.0 + n3 / 15.0,
            17.0 * n3 / 480.0,
        ],
        delta: [
            2.0 * n - 2.0 * n2 / 3.0 - 2.0 * n3,
            7.0 * n2 / 3.0 - 8.0 * n3 / 5.0,
            56.0 * n3 / 15.0,
        ],
        e2n: 2.0 * n.sqrt() / (1.0 + n),
    }
}

/// Wraps a longitude into [-180, 180).
pub fn wrap_lon(lon: f64) -> f64 {
    (lon + 180.0).rem_euclid(360.0) - 180.0
}

impl TransverseMercator {
    /// A frame centred on the given point (degrees; longitudes in either 0..360 or -180..180).
    pub fn new(lon0: f64, lat0: f64) -> Self {
        let mut tm = TransverseMercator {
            lon0: wrap_lon(lon0),
            lat0,
            northing0: 0.0,
        };
        tm.northing0 = tm.forward(lon0, lat0).1;
        tm
    }

    /// (lon, lat) in degrees to (x, y) in metres.
    pub fn forward(&self, lon: f64, lat: f64) -> (f64, f64) {
        let s = series();
        let phi = lat.to_radians();
        let dlam = wrap_lon(lon - self.lon0).to_radians();
        let t = (phi.sin().atanh() - s.e2n * (s.e2n * phi.sin()).atanh()).sinh();
        let xi_p = t.atan2(dlam.cos());
        let eta_p = (dlam.sin() / (1.0 + t * t).sqrt()).atanh();
        let (mut xi, mut eta) = (xi_p, eta_p);
        for (j, a) in s.alpha.iter().enumerate() {
            let k = 2.0 * (j + 1) as f64;
            xi += a * (k * xi_p).sin() * (k * eta_p).cosh();
            eta += a * (k * xi_p).cos() * (k * eta_p).sinh();
        }
        (s.big_a * eta, s.big_a * xi - self.northing0)
    }

    /// (x, y) in metres to (lon, lat) in degrees, longitudes in [-180, 180).
    pub fn inverse(&self, x: f64, y: f64) -> (f64, f64) {
        let s = series();
        let xi = (y + self.northing0) / s.big_a;
        let eta = x / s.big_a;
        let (mut xi_p, mut eta_p) = (xi, eta);
        for (j, b) in s.beta.iter().enumerate() {
            let k = 2.0 * (j + 1) as f64;
            xi_p -= b * (k * xi).sin() * (k * eta).cosh();
            eta_p -= b * (k * xi).cos() * (k * eta).sinh();
        }
        let chi = (xi_p.sin() / eta_p.cosh()).asin();
        let mut phi = chi;
        for (j, d) in s.delta.iter().enumerate() {
            phi += d * (2.0 * (j + 1) as f64 * chi).sin();
        }
        let lam = eta_p.sinh().atan2(xi_p.cos());
        (wrap_lon(self.lon0 + lam.to_degrees()), phi.to_degrees())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_sub_millimetre_across_a_bay() {
        let tm = TransverseMercator::new(237.6, 37.8); // SFBOFS writes 0..360 longitudes
        for &(lon, lat) in &[(237.3, 37.4), (-122.1, 38.2), (237.6, 37.8), (238.4, 37.0)] {
            let (x, y) = tm.forward(lon, lat);
            let (lon2, lat2) = tm.inverse(x, y);
            let (x2, y2) = tm.forward(lon2, lat2);
            assert!(
                (x - x2).abs() < 1e-3 && (y - y2).abs() < 1e-3,
                "{lon} {lat}"
            );
            assert!((wrap_lon(lon) - lon2).abs() < 1e-8 && (lat - lat2).abs() < 1e-8);
        }
    }

    #[test]
    fn distances_match_the_ellipsoid() {
        // One minute of latitude near 37.8N is about 1849.9 m on WGS84 (meridian radius M = 6 359 416 m); one degree of
        // longitude there is about 88.0 km.
        let tm = TransverseMercator::new(-122.4, 37.8);
        let (_, y0) = tm.forward(-122.4, 37.8);
        let (_, y1) = tm.forward(-122.4, 37.8 + 1.0 / 60.0);
        assert!(((y1 - y0) - 1849.9).abs() < 0.5, "{}", y1 - y0);
        let (x0, _) = tm.forward(-122.9, 37.8);
        let (x1, _) = tm.forward(-121.9, 37.8);
        assert!(((x1 - x0) - 88_050.0).abs() < 150.0, "{}", x1 - x0);
        assert!(tm.forward(-122.4, 37.8).1.abs() < 1e-6);
    }
}
