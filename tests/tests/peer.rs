//! Reference cases from a peer's own tests: the 7-node, 5-element FVCOM mock of PyLag's FVCOM
//! data reader tests (`pylag/tests/test_fvcom_data_reader.py` in the public pmlmodelling/pylag
//! repository), written here as a real FVCOM NetCDF file from the arrays that test lists, read
//! by shoal's reader, and asked the same questions. Where shoal computes the same quantity by
//! the same method the numbers are PyLag's; where the method differs, the test says how and
//! pins what shoal gives.

use shoal_common::fields::FieldLevel;
use shoal_common::kernel::{self, Moved, VerticalMixing};
use shoal_common::{Mesh, Window};
use shoal_manager::input::fvcom::FvcomReader;
use shoal_tests::*;
use std::path::{Path, PathBuf};

/// The mock's arrays, as PyLag's test lists them (0-based; FVCOM's files are 1-based, so the
/// file gets them plus one). Its `h` and `zeta` list 6 values for 7 nodes; node 6, used only by
/// element 4, which no case asks about, gets h = 10 m and zeta = 0 here.
fn mock_file(dir: &Path) -> PathBuf {
    let path = dir.join("pylag_mock.nc");
    let (ne, nn, nlay, nlev) = (5usize, 7usize, 3usize, 4usize);
    let nv = [[4, 0, 2, 4, 3], [3, 1, 4, 5, 6], [1, 3, 1, 3, 0]];
    let nbe = [[1, 0, 0, -1, -1], [2, 4, -1, 0, 1], [3, -1, -1, -1, -1]];
    let x = [2.0, 1.0, 0.0, 2.0, 1.0, 1.5, 3.0f32];
    let y = [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 1.0f32];
    let h = [10.0, 11.0, 10.0, 11.0, 11.0, 10.0, 10.0f32];
    let zeta = [
        [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0f32],
        [0.0, 2.0, 0.0, 2.0, 2.0, 0.0, 0.0],
    ];
    // u, v and ww by layer, the same in every element; kh by level, temp and salinity by
    // layer, the same at every node; two times an hour apart.
    let uvw = [[2.0, 1.0, 0.0f32], [4.0, 2.0, 0.0]];
    let kh = [[0.0, 0.01, 0.01, 0.0f32], [0.0, 0.1, 0.1, 0.0]];
    let tracer = [[0.01, 0.01, 0.0f32], [0.1, 0.1, 0.0]];

    let mut f = shoal_manager::nc::create(&path).unwrap();
    f.add_attribute("CoordinateSystem", "Cartesian").unwrap();
    for (d, n) in [
        ("node", nn),
        ("nele", ne),
        ("three", 3),
        ("siglay", nlay),
        ("siglev", nlev),
    ] {
        f.add_dimension(d, n).unwrap();
    }
    f.add_unlimited_dimension("time").unwrap();
    let mut put = |name: &str, dims: &[&str], values: Vec<f32>| {
        f.add_variable::<f32>(name, dims)
            .unwrap()
            .put_values(&values, ..)
            .unwrap();
    };
    put("x", &["node"], x.to_vec());
    put("y", &["node"], y.to_vec());
    put("h", &["node"], h.to_vec());
    let by_node = |col: &[f32]| -> Vec<f32> {
        col.iter()
            .flat_map(|v| std::iter::repeat_n(*v, nn))
            .collect()
    };
    put("siglay", &["siglay", "node"], by_node(&[-0.1, -0.5, -0.9]));
    put(
        "siglev",
        &["siglev", "node"],
        by_node(&[0.0, -0.2, -0.8, -1.0]),
    );
    let table = |t: [[i32; 5]; 3]| -> Vec<i32> { t.iter().flatten().map(|v| v + 1).collect() };
    for (name, t) in [("nv", nv), ("nbe", nbe)] {
        f.add_variable::<i32>(name, &["three", "nele"])
            .unwrap()
            .put_values(&table(t), ..)
            .unwrap();
    }
    let mut time = f.add_variable::<f64>("time", &["time"]).unwrap();
    time.put_attribute("units", "seconds since 2000-01-01 00:00:00")
        .unwrap();
    time.put_values(&[0.0, 3600.0], ..).unwrap();
    for name in ["zeta", "u", "v", "ww", "kh", "temp", "salinity"] {
        let dims: &[&str] = match name {
            "zeta" => &["time", "node"],
            "kh" => &["time", "siglev", "node"],
            "temp" | "salinity" => &["time", "siglay", "node"],
            _ => &["time", "siglay", "nele"],
        };
        f.add_variable::<f32>(name, dims).unwrap();
    }
    f.add_variable::<i32>("wet_cells", &["time", "nele"])
        .unwrap();
    for it in 0..2 {
        let mut v = |name: &str, values: Vec<f32>| {
            let mut var = f.variable_mut(name).unwrap();
            if name == "zeta" {
                var.put_values(&values, (it..it + 1, ..)).unwrap();
            } else {
                var.put_values(&values, (it..it + 1, .., ..)).unwrap();
            }
        };
        v("zeta", zeta[it].to_vec());
        let per_element: Vec<f32> = uvw[it]
            .iter()
            .flat_map(|u| std::iter::repeat_n(*u, ne))
            .collect();
        for name in ["u", "v", "ww"] {
            v(name, per_element.clone());
        }
        v("kh", by_node(&kh[it]));
        v("temp", by_node(&tracer[it]));
        v("salinity", by_node(&tracer[it]));
        f.variable_mut("wet_cells")
            .unwrap()
            .put_values(&[1i32; 5], (it..it + 1, ..))
            .unwrap();
    }
    drop(f);
    path
}

struct Mock {
    mesh: Mesh,
    levels: Vec<FieldLevel>,
}

impl Mock {
    fn open() -> Mock {
        // A directory per call: the tests run at once, and `scratch` empties its directory.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = scratch(&format!("pylag_mock_{k}"));
        let path = mock_file(&dir);
        let (reader, mesh, _) = FvcomReader::open(&[path], &[]).unwrap();
        let levels = (0..2)
            .map(|i| {
                let raw = reader.read_slice(i, reader.times[0]).unwrap();
                FieldLevel::from_slice(&mesh, &raw).unwrap()
            })
            .collect();
        Mock { mesh, levels }
    }

    fn window(&self) -> Window<'_> {
        Window {
            levels: &self.levels,
        }
    }

    /// Shoal's element holding (x, y), as the file numbers it.
    fn host(&self, x: f64, y: f64, hint: Option<u32>) -> Option<u32> {
        self.mesh
            .locate(x, y, hint)
            .map(|e| self.mesh.file_element[e as usize])
    }

    /// Shoal's element for the file's element `file_e`.
    fn element(&self, file_e: u32) -> u32 {
        self.mesh
            .file_element
            .iter()
            .position(|&f| f == file_e)
            .unwrap() as u32
    }
}

/// Host elements, as PyLag's global search and its search from a previous host find them.
#[test]
fn host_elements_are_pylags() {
    let m = Mock::open();
    // test_find_host_using_global_search: element 0's centroid.
    assert_eq!(m.host(1.3333333333, 1.6666666667, None), Some(0));
    // test_find_host_when_particle_is_in_the_domain: from element 3.
    assert_eq!(
        m.host(1.3333333333, 1.6666666667, Some(m.element(3))),
        Some(0)
    );
    // On an internal side (x = 1.5, y = 1.5 lies on the edge elements 0 and 1 share), just
    // inside element 0, and just inside an external element's side: PyLag names 0, 0 and 1.
    assert_eq!(m.host(1.5, 1.5, Some(m.element(0))), Some(0));
    assert_eq!(m.host(1.5 - 1e-15, 1.5, Some(m.element(0))), Some(0));
    assert_eq!(
        m.host(1.6666666667, 1.0 + 1e-15, Some(m.element(1))),
        Some(1)
    );
    assert_eq!(m.host(1.6666666667, 1.0, Some(m.element(1))), Some(1));
    // Differs by method: 1e-15 m past a shared edge, PyLag moves to element 1; shoal's walk
    // accepts a point within 1e-12 of an element's weights, so it stays in 0. Both hosts give
    // the same interpolated values there to 1e-12.
    assert_eq!(m.host(1.5 + 1e-15, 1.5, Some(m.element(0))), Some(0));
    // Differs by rule: element 2 has two land edges, and PyLag refuses to host particles in
    // such elements (its global search returns -1 at element 2's centroid); shoal tracks in
    // every element.
    assert_eq!(m.host(0.6666666667, 1.3333333333, None), Some(2));
    // Differs by tolerance: 1e-15 m below element 1's land edge, PyLag says "outside"; shoal's
    // search accepts a point within 1e-12 of an element's weights, so it is on the edge.
    assert_eq!(m.host(1.6666666667, 1.0 - 1e-15, None), Some(1));
    // Well outside, below the land edge: no host.
    assert_eq!(m.host(1.6666666667, 0.9, None), None);
}

/// Barycentric weights: a third each at a centroid, zero on an edge (PyLag's
/// test_set_default_location and ..._on_an_external_elements_side).
#[test]
fn barycentric_weights_are_pylags() {
    let m = Mock::open();
    let e1 = m.element(1) as usize;
    let w = m.mesh.weights(e1, 1.66666666667, 1.33333333333);
    for wi in w {
        assert!((wi - 1.0 / 3.0).abs() < 1e-9, "{w:?}");
    }
    let w = m.mesh.weights(e1, 1.5, 1.0);
    let low = w.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(low.abs() < 1e-12, "{w:?}");
}

/// Reflection at the land edge y = 1 of element 1 (PyLag's FVCOMReflectingHorizBoundary
/// Condition tests): straight down and at an angle, the rest of the path mirrored in the edge.
#[test]
fn reflections_at_land_are_pylags() {
    let m = Mock::open();
    let e1 = m.element(1);
    for ((x0, y0), (x1, y1), (xr, yr)) in [
        (
            (1.6666666667, 1.2),
            (1.6666666667, 0.9),
            (1.6666666667, 1.1),
        ),
        ((1.4, 1.1), (1.6, 0.9), (1.6, 1.1)),
        // test_find_host_when_particle_has_crossed_a_land_boundary: PyLag flags the crossing
        // (-1) and keeps element 1; shoal reflects at once, to (1.5, 2.0), in element 3.
        ((1.6666666667, 1.3333333333), (1.5, 0.0), (1.5, 2.0)),
    ] {
        match kernel::trace(&m.mesh, e1, x0, y0, x1, y1) {
            Moved::Inside { x, y, element } => {
                assert!(
                    (x - xr).abs() < 1e-9 && (y - yr).abs() < 1e-9,
                    "({x0}, {y0}) -> ({x1}, {y1}) reflects to ({x}, {y}), not ({xr}, {yr})"
                );
                assert_eq!(m.mesh.locate(x, y, Some(element)), Some(element));
            }
            other => panic!("({x0}, {y0}) -> ({x1}, {y1}): {other:?}"),
        }
    }
}

/// The water column, velocities by layer and time, tracers and diffusivity at element 0's
/// centroid, as PyLag's get_zmin/get_zmax, get_velocity_*, get_thetao, get_so and
/// get_vertical_eddy_diffusivity tests ask.
#[test]
fn fields_at_a_point_are_pylags() {
    let m = Mock::open();
    let (x, y) = (1.3333333333, 1.6666666667);
    let e0 = m.element(0);
    let w = m.window();
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-6, "{what}: {a} not {b}");
    // zmin -11 m (h = 11 at all three nodes); zmax 1 m at t = 0 and 1.5 m at 1800 s.
    let (zeta, depth) = kernel::column_at(&m.mesh, w, 0.0, x, y, e0);
    close(zeta, 1.0, "zeta at 0 s");
    close(zeta - depth, -11.0, "bed");
    close(
        kernel::column_at(&m.mesh, w, 1800.0, x, y, e0).0,
        1.5,
        "zeta at 1800 s",
    );
    // Velocity (u, v and w alike): at the surface and within the top half-layer, the top
    // layer's; halfway between layer centres, halfway between their values, also halfway in
    // time; in the bottom half-layer and at the bed, the bottom layer's (zero).
    for (t, z, expect) in [
        (0.0, 1.0, 2.0),
        (1800.0, 1.5, 3.0),
        (0.0, -0.2, 2.0),
        (0.0, -2.6, 1.5),
        (1800.0, -2.25, 2.25),
        (0.0, -10.999, 0.0),
        (1800.0, -10.999, 0.0),
        (0.0, -9.8, 0.0),
    ] {
        let s = kernel::sample(&m.mesh, w, t, x, y, z, e0);
        for (name, value) in [("u", s.u), ("v", s.v), ("w", s.w)] {
            close(value, expect, &format!("{name} at z {z}, t {t}"));
        }
    }
    // Temperature and salinity at z = -0.1 m, t = 0: the top layer's 0.01.
    close(
        kernel::temperature_at(&m.mesh, w, 0.0, x, y, -0.1, e0).unwrap(),
        0.01,
        "temperature",
    );
    close(
        kernel::salinity_at(&m.mesh, w, 0.0, x, y, -0.1, e0).unwrap(),
        0.01,
        "salinity",
    );
    // kh at z = -0.2 m (sigma -0.1, halfway between levels 0 and -0.2): 0.005.
    let params = kernel::StepParams {
        dt: 60.0,
        integrator: kernel::Integrator::Rk4,
        horizontal_kh: 0.0,
        vertical_mixing: VerticalMixing::FromFile,
        sinking_speed: 0.0,
        seed: 0,
        happiness: None,
        behaviour: None,
    };
    let cx = kernel::StepContext::new(&m.mesh, w, &params, 0.0, 0);
    let (k, dkdz) = kernel::vertical_kh(&cx, x, y, -0.2, e0);
    close(k, 0.005, "kh");
    // Differs by method: PyLag gives dkh/dz = -0.0026042 there; shoal differences kh over half
    // a level on either side, which inside one linear segment is the segment's own slope:
    // (0.01 - 0) / (-0.2 - 0) per unit sigma over a 12 m column, -0.0041667.
    close(dkdz, -0.01 / 0.2 / 12.0, "dkh/dz");
}
