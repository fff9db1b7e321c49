//! The trajectory file: CF trajectory layout that xarray opens, the configuration in its
//! attributes, readable after the run is killed, and the happiness reduction and stop.

use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;

const CHILD: &str = "SHOAL_TEST_KILLED_RUN_DIR";

fn happy_setup(dir: &std::path::Path, extra: &str) -> shoal_manager::input::config::RunConfig {
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 20,
        ny: 20,
        temp: true,
        duration: 6.0 * 3600.0,
        ..Default::default()
    };
    synth_file(dir, "f.nc", &o);
    let (cx, cy) = o.centre();
    config(dir, &format!("seed=2\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=400\ncentre=[{cx},{cy}]\nradius=4000.0\n[run]\nduration='6h'\ndt='60s'\n[behaviour]\npreferred_temperature=15.0\ntemperature_tolerance=1.0\n{extra}[output]\nfile='out.nc'\ninterval='20min'\n")).unwrap()
}

#[test]
fn output_is_a_cf_trajectory_file_with_the_configuration() {
    let dir = scratch("cf");
    let cfg = happy_setup(&dir, "");
    let rep = run_quiet(&cfg, 2).unwrap();
    let f = shoal_manager::nc::open(dir.join("out.nc")).unwrap();
    let attr = |n: &str| String::try_from(f.attribute(n).unwrap().value().unwrap()).unwrap();
    assert_eq!(attr("featureType"), "trajectory");
    assert_eq!(attr("Conventions"), "CF-1.8");
    assert!(attr("shoal_config").contains("preferred_temperature=15.0"));
    assert_eq!(attr("shoal_seed"), "2");
    // CF's audit trail: a UTC time, then what wrote the file.
    let history = attr("history");
    assert!(
        history.starts_with("20") && history.contains("Z: ") && history.contains("(shoal "),
        "{history}"
    );
    let time = f.variable("time").unwrap();
    assert_eq!(
        String::try_from(time.attribute_value("units").unwrap().unwrap()).unwrap(),
        "seconds since 2024-05-23 00:00:00"
    );
    let dims: Vec<String> = f
        .variable("x")
        .unwrap()
        .dimensions()
        .iter()
        .map(|d| d.name())
        .collect();
    assert_eq!(dims, ["trajectory", "time"]);
    // The run-wide maximum equals the maximum in the last snapshot, held by the named particle.
    let out = Output::read(&dir.join("out.nc")).unwrap();
    let h = out.happiness.as_ref().unwrap();
    let last: Vec<f32> = (0..out.n_traj)
        .map(|p| h[out.at(p, out.n_time - 1)])
        .collect();
    let max = last.iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(rep.last.max_happiness, max);
    assert_eq!(last[rep.last.happiest as usize], max);
    assert!(!rep.ecstatic);
    xarray_check(&dir.join("out.nc")).unwrap();
}

#[test]
fn compressed_and_quantized_outputs_agree_with_full_floats() {
    let dir = scratch("storage");
    let mut cfg = happy_setup(&dir, "");
    // The keys, and their errors.
    let with = |extra: &str| {
        config(&dir, &format!("[input]\nfiles=['f.nc']\n[release.generate]\ncount=1\ncentre=[0,0]\nradius=1.0\n[output]\n{extra}"))
    };
    assert_eq!(
        with("precision='1cm'\n").unwrap().storage,
        shoal_manager::input::config::Storage {
            deflate: 1,
            precision: Some(0.01)
        }
    );
    assert_eq!(
        with("precision='5 mm'\ncompression=0\n")
            .unwrap()
            .storage
            .deflate,
        0
    );
    for (bad, key) in [
        ("precision='1 furlong'\n", "output.precision"),
        ("precision=-1.0\n", "output.precision"),
        ("compression=12\n", "output.compression"),
    ] {
        let e = format!("{:#}", with(bad).unwrap_err());
        assert!(e.contains(key), "{bad}: {e}");
    }
    let write = |cfg: &shoal_manager::input::config::RunConfig, name: &str| {
        let mut c = cfg.clone();
        c.output = dir.join(name);
        run_quiet(&c, 2).unwrap();
        (
            Output::read(&c.output).unwrap(),
            std::fs::metadata(&c.output).unwrap().len(),
        )
    };
    cfg.storage = shoal_manager::input::config::Storage {
        deflate: 0,
        precision: None,
    };
    let (full, full_bytes) = write(&cfg, "full.nc");
    cfg.storage = shoal_manager::input::config::Storage::default();
    let (deflated, deflated_bytes) = write(&cfg, "deflated.nc");
    cfg.storage.precision = Some(0.01);
    let (packed, packed_bytes) = write(&cfg, "packed.nc");
    // Deflate loses nothing; packing loses no more than half the precision.
    let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
    assert!(same(&full.x, &deflated.x) && same(&full.y, &deflated.y));
    assert_eq!(full.z, deflated.z);
    let mut worst: f64 = 0.0;
    for (a, b) in [(&full.x, &packed.x), (&full.y, &packed.y)] {
        for (p, q) in a.iter().zip(b.iter()) {
            assert_eq!(p.is_finite(), q.is_finite());
            if p.is_finite() {
                worst = worst.max((p - q).abs());
            }
        }
    }
    for (p, q) in full.z.iter().zip(&packed.z) {
        assert_eq!(p.is_finite(), q.is_finite());
        if p.is_finite() {
            worst = worst.max((p - q).abs() as f64 - 1e-6 * p.abs() as f64);
        }
    }
    assert!(
        worst > 0.0 && worst <= 0.005 + 1e-9,
        "largest difference {worst} m"
    );
    assert_eq!(full.status, packed.status);
    assert!(
        packed_bytes < deflated_bytes && deflated_bytes < full_bytes,
        "{full_bytes} bytes of floats, {deflated_bytes} deflated, {packed_bytes} packed"
    );
    // Chunks of one record and at most 4 096 particles (here all 400).
    let f = shoal_manager::nc::open(dir.join("deflated.nc")).unwrap();
    let chunk = f.variable("x").unwrap().chunking().unwrap().unwrap();
    assert_eq!(chunk, [400, 1], "{chunk:?}");
    // xarray unpacks the integers itself.
    xarray_check(&dir.join("packed.nc")).unwrap();
}

#[test]
fn the_run_stops_when_enough_particles_are_happy() {
    let dir = scratch("ecstatic");
    let cfg = happy_setup(&dir, "happy_threshold=0.5\nstop_when_happy_share=0.3\n");
    let rep = run_quiet(&cfg, 2).unwrap();
    assert!(rep.ecstatic);
    assert!(rep.steps < 360, "{}", rep.steps);
    assert!(rep.last.happy as f64 >= 0.3 * rep.last.active as f64);
    let out = Output::read(&dir.join("out.nc")).unwrap();
    assert!(
        (out.time[out.n_time - 1] - rep.steps as f64 * 60.0).abs() < 1e-9,
        "last snapshot at the stop"
    );
}

/// Run in a child process: writes part of a run, then dies without closing the file.
#[test]
fn killed_run_child() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let cfg = config(&dir, "[input]\nfiles=['f.nc']\n[release.generate]\ncount=1000\n[run]\nduration='5h'\ndt='60s'\n[output]\nfile='out.nc'\ninterval='10min'\n").unwrap();
    let mut writer = shoal_manager::output::TrajectoryWriter::create(
        &cfg.output,
        1000,
        0.0,
        None,
        shoal_manager::output::Columns::default(),
        None,
        &[],
        cfg.storage,
        (0.0, 0.0),
    )
    .unwrap();
    let snap = shoal_common::snapshot::Snapshot {
        id: (0..1000).collect(),
        x: vec![1.0; 1000],
        y: vec![2.0; 1000],
        z: vec![-1.0; 1000],
        sigma: vec![-0.1; 1000],
        status: vec![0; 1000],
        element: vec![3; 1000],
        age: vec![0.0; 1000],
        happiness: vec![0.0; 1000],
        fate_time: vec![f64::NAN; 1000],
        temperature: vec![],
        salinity: vec![],
    };
    for k in 0..7 {
        writer
            .write(k as f64 * 600.0, std::slice::from_ref(&snap))
            .unwrap();
    }
    std::process::abort();
}

#[test]
fn a_killed_run_leaves_a_readable_file() {
    let dir = scratch("killed");
    synth_file(
        &dir,
        "f.nc",
        &SynthOptions {
            nx: 8,
            ny: 8,
            ..Default::default()
        },
    );
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "output::killed_run_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &dir)
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have died");
    let out = Output::read(&dir.join("out.nc")).unwrap();
    assert_eq!(out.n_time, 7);
    assert_eq!(out.time[6], 3600.0);
    assert!(out.x.iter().all(|v| *v == 1.0));
}

const HDF5_CHILD: &str = "SHOAL_TEST_HDF5_CHILD";

/// A thread-safe HDF5 prints a whole error stack for each failed call on any thread where
/// netcdf-c did not turn printing off, and netcdf-c fails some calls on purpose (it asks for the
/// optional `_Quantize*` attributes of every variable it opens): this test suite printed 12 500
/// of them. A child process of this test binary synthesises a file, runs on it with two
/// in-process nodes, and reads the output back on fresh threads, as the tests do; its stderr
/// must hold no stack. The `shoal` command in its own process must show none either.
#[test]
fn no_hdf5_error_stack_reaches_stderr_from_any_thread() {
    if std::env::var_os(HDF5_CHILD).is_some() {
        let dir = scratch("hdf5_quiet_child");
        let cfg = happy_setup(&dir, "");
        run_quiet(&cfg, 2).unwrap();
        for _ in 0..3 {
            let out = dir.join("out.nc");
            std::thread::spawn(move || Output::read(&out).unwrap())
                .join()
                .unwrap();
        }
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new(me)
        .args([
            "--exact",
            "output::no_hdf5_error_stack_reaches_stderr_from_any_thread",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HDF5_CHILD, "1")
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{err}"
    );
    assert!(!err.contains("HDF5-DIAG"), "an HDF5 error stack:\n{err}");

    // The CLI, in its own process: a run with two nodes, the reader's report, a plot.
    let dir = scratch("hdf5_quiet");
    happy_setup(&dir, "");
    let runs: [&[&str]; 3] = [
        &["run", "run.toml", "--quiet", "--nodes", "2"],
        &["inspect", "f.nc"],
        &["plot", "out.nc", "-o", "out.png"],
    ];
    for args in runs {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "shoal {args:?} failed:\n{err}");
        assert!(
            !err.contains("HDF5-DIAG"),
            "shoal {args:?} printed an HDF5 error stack:\n{err}"
        );
    }
}

/// `[output] variables`: the water's temperature and salinity where each particle is, along its
/// track, against the synthetic file's own fields (linear in x and sigma, so the sampling's
/// barycentric and between-layer interpolation is exact but within half a layer of the surface
/// or bed, where it holds the nearest layer's value); refused by name where the input lacks one.
#[test]
fn temperature_and_salinity_along_each_track() {
    let dir = scratch("sampled");
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 20,
        ny: 20,
        temp: true,
        salinity: true,
        duration: 3.0 * 3600.0,
        ..Default::default()
    };
    synth_file(&dir, "f.nc", &o);
    let (cx, cy) = o.centre();
    let toml = |extra: &str| {
        format!("seed=3\n[input]\nfiles=['f.nc']\n[release.generate]\ncount=300\ncentre=[{cx},{cy}]\nradius=6000.0\nz=-4.0\n[run]\nduration='2h'\ndt='60s'\n[diffusion]\nhorizontal_kh=1.0\n[output]\nfile='out.nc'\ninterval='30min'\n{extra}")
    };
    let cfg = config(&dir, &toml("variables=['temperature','salinity']\n")).unwrap();
    run_quiet(&cfg, 2).unwrap();
    let f = shoal_manager::nc::open(dir.join("out.nc")).unwrap();
    let values = |name: &str| -> Vec<f64> {
        let v = f.variable(name).unwrap();
        if name == "temperature" {
            let units = String::try_from(v.attribute("units").unwrap().value().unwrap()).unwrap();
            assert_eq!(units, "degree_Celsius");
        }
        v.get_values::<f64, _>(..).unwrap()
    };
    let (x, sigma, t, s) = (
        values("x"),
        values("sigma"),
        values("temperature"),
        values("salinity"),
    );
    let status = f
        .variable("status")
        .unwrap()
        .get_values::<i8, _>(..)
        .unwrap();
    let half_layer = 0.5 / o.layers as f64;
    let mut checked = 0;
    for k in 0..x.len() {
        // Released outside the mesh: no depth, so no water to sample.
        if status[k] == shoal_common::status::OUTSIDE_MESH as i8 {
            assert!(t[k].is_nan() && s[k].is_nan(), "record {k}");
            continue;
        }
        assert!(
            x[k].is_finite() && t[k].is_finite() && s[k].is_finite(),
            "record {k}"
        );
        assert!(
            (s[k] - o.salinity(x[k])).abs() < 1e-3,
            "salinity {} at x {}",
            s[k],
            x[k]
        );
        // Between the layer centres, the field's own value; nearer the surface or bed, the
        // nearest centre's.
        let inner = sigma[k].clamp(-1.0 + half_layer, -half_layer);
        assert!(
            (t[k] - o.temperature(x[k], inner)).abs() < 2e-3,
            "temperature {} at x {} sigma {}",
            t[k],
            x[k],
            sigma[k]
        );
        checked += 1;
    }
    assert!(checked > 300 * 5 / 2, "{checked} records in the water");
    // Without the key, neither variable is in the file.
    drop(f);
    let plain = config(&dir, &toml("")).unwrap();
    run_quiet(&plain, 2).unwrap();
    let f = shoal_manager::nc::open(dir.join("out.nc")).unwrap();
    assert!(f.variable("temperature").is_none() && f.variable("salinity").is_none());
    // A name shoal does not sample, or one named twice, is refused by the key.
    for bad in [
        "variables=['oxygen']\n",
        "variables=['salinity','salinity']\n",
    ] {
        let e = format!("{:#}", config(&dir, &toml(bad)).unwrap_err());
        assert!(e.contains("output.variables"), "{e}");
    }
    // An input without salinity: the file, the key and the variable are named.
    synth_file(
        &dir,
        "f.nc",
        &SynthOptions {
            salinity: false,
            ..o.clone()
        },
    );
    let e = format!(
        "{:#}",
        run_quiet(&config(&dir, &toml("variables=['salinity']\n")).unwrap(), 1).unwrap_err()
    );
    assert!(
        e.contains("f.nc") && e.contains("output.variables") && e.contains("`salinity`"),
        "{e}"
    );
}
