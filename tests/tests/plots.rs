//! `shoal plot` and `shoal animate` on real runs: a Cartesian and a geographic mesh, PNG and
//! SVG, tracks and positions at one time, colour bars and keys, and the errors a user meets.

use shoal_manager::cli::run_cli;
use shoal_manager::tools::synth::{Flow, SynthOptions};
use shoal_tests::*;
use std::path::{Path, PathBuf};

/// A run on a small synthetic mesh (geographic when `spherical`), its trajectory file.
fn tracked(dir: &Path, spherical: bool, sites: bool) -> PathBuf {
    let o = SynthOptions {
        flow: Flow::Rotation,
        nx: 16,
        ny: 16,
        dx: 500.0,
        duration: 4.0 * 3600.0,
        spherical: spherical.then_some((-70.0, 42.0)),
        ..Default::default()
    };
    synth_file(dir, "mesh.nc", &o);
    let release = if sites {
        std::fs::write(dir.join("sites.geojson"), site_collection(spherical)).unwrap();
        "[release]\npolygons = 'sites.geojson'\nper_polygon = 30\nz = -1.0\n".to_string()
    } else if spherical {
        "[release.generate]\ncount = 60\ncentre = [-70.0, 42.0]\nradius = 1500.0\nz = -1.0\n"
            .to_string()
    } else {
        "[release.generate]\ncount = 60\nradius = 1500.0\nz = -1.0\n".to_string()
    };
    let toml = format!(
        "[input]\nfiles = ['mesh.nc']\n{release}[run]\nduration = '3h'\ndt = '60s'\n[output]\nfile = 'out.nc'\ninterval = '20min'\n"
    );
    let cfg = config(dir, &toml).unwrap();
    run_quiet(&cfg, 2).unwrap();
    dir.join("out.nc")
}

/// Two square release sites either side of the mesh's centre.
fn site_collection(spherical: bool) -> String {
    let square = |cx: f64, cy: f64, h: f64| {
        format!(
            "[[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]]",
            a = cx - h,
            b = cy - h,
            c = cx + h,
            d = cy + h
        )
    };
    let (west, east) = if spherical {
        (square(-70.01, 42.0, 0.004), square(-69.99, 42.0, 0.004))
    } else {
        (
            square(402_500.0, 4_504_000.0, 400.0),
            square(405_500.0, 4_504_000.0, 400.0),
        )
    };
    let feature = |name: &str, ring: &str| {
        format!(
            r#"{{"type":"Feature","properties":{{"name":"{name}"}},"geometry":{{"type":"Polygon","coordinates":{ring}}}}}"#
        )
    };
    format!(
        r#"{{"type":"FeatureCollection","features":[{},{}]}}"#,
        feature("West Reef", &west),
        feature("East Reef", &east)
    )
}

fn plot(args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["shoal"];
    all.extend_from_slice(args);
    run_cli(all)
}

/// Width, height, the share of pixels that are not white, and the number of distinct colours.
fn looks(png: &Path) -> (u32, u32, f64, usize) {
    let img = image::open(png).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    (w, h, inked as f64 / (w * h) as f64, colours.len())
}

#[test]
fn maps_of_a_cartesian_and_a_geographic_run_have_axes_titles_and_keys() {
    for spherical in [false, true] {
        let dir = scratch(if spherical { "plot_geo" } else { "plot_xy" });
        let out = tracked(&dir, spherical, false);
        let o = out.to_str().unwrap();
        // PNG: the map's longer side is --size, the margins add less than its size again.
        let png = dir.join("map.png");
        plot(&["plot", o, "-o", png.to_str().unwrap(), "--size", "600"]).unwrap();
        let (w, h, inked, colours) = looks(&png);
        assert!(
            (600..1200).contains(&w) && (200..1200).contains(&h),
            "{w} x {h}"
        );
        assert!(inked > 0.3, "only {inked:.2} of the picture is drawn");
        assert!(colours > 20, "{colours} colours");
        // SVG: the words are text a reader (or this test) can find.
        let svg = dir.join("map.svg");
        plot(&[
            "plot",
            o,
            "-o",
            svg.to_str().unwrap(),
            "--colour-by",
            "depth",
        ])
        .unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        let words: Vec<&str> = if spherical {
            vec!["Longitude", "Latitude", "°W", "°N"]
        } else {
            vec!["x (km)", "y (km)"]
        };
        for w in words
            .iter()
            .chain(&[
                "mesh.nc · 60 particles",
                "10 records",
                "start",
                "end (adrift)",
            ])
            .chain(&["depth (m)", "land boundary", "open boundary"])
        {
            assert!(text.contains(w), "{} lacks {w:?}", svg.display());
        }
        assert!(
            text.contains(" km\n") || text.contains(" m\n"),
            "no scale bar"
        );
        // Positions at one time: named in the subtitle.
        let at = dir.join("at.svg");
        plot(&["plot", o, "-o", at.to_str().unwrap(), "--time", "1h"]).unwrap();
        let text = std::fs::read_to_string(&at).unwrap();
        assert!(text.contains("(+1 h of"), "{text}");
        let err = plot(&["plot", o, "-o", png.to_str().unwrap(), "--time", "9h"]).unwrap_err();
        assert!(format!("{err:#}").contains("--time `9h`"), "{err:#}");
    }
}

#[test]
fn release_sites_get_a_key_and_files_without_them_say_which_variable_is_missing() {
    let dir = scratch("plot_sites");
    let out = tracked(&dir, false, true);
    let svg = dir.join("sites.svg");
    let o = out.to_str().unwrap();
    plot(&["plot", o, "-o", svg.to_str().unwrap()]).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    for w in ["release site", "West Reef", "East Reef", "60 particles"] {
        assert!(text.contains(w), "the map lacks {w:?}");
    }
    let plain = scratch("plot_no_sites");
    let out = tracked(&plain, false, false);
    let png = plain.join("x.png");
    let err = plot(&[
        "plot",
        out.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--colour-by",
        "origin",
    ])
    .unwrap_err();
    let e = format!("{err:#}");
    assert!(
        e.contains("no variable `origin`") && e.contains("out.nc"),
        "{e}"
    );
    let err = plot(&[
        "plot",
        out.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--extent",
        "1,0,0,1",
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("--extent"), "{err:#}");
    // Zoomed in on a corner of the mesh: the picture is still drawn.
    plot(&[
        "plot",
        out.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--extent=-2,0,-2,0",
        "--colour-by",
        "status",
    ])
    .unwrap();
    assert!(looks(&png).2 > 0.3);
}

#[test]
fn an_animation_has_a_frame_per_record_and_its_particles_move() {
    use image::AnimationDecoder;
    let dir = scratch("animate");
    let out = tracked(&dir, true, false);
    let gif = dir.join("run.gif");
    plot(&[
        "animate",
        out.to_str().unwrap(),
        "-o",
        gif.to_str().unwrap(),
        "--size",
        "400",
    ])
    .unwrap();
    let frames = image::codecs::gif::GifDecoder::new(std::fs::File::open(&gif).unwrap())
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 10, "ten records");
    let (first, last) = (frames[0].buffer(), frames[9].buffer());
    assert_eq!(first.dimensions(), last.dimensions());
    let differ = first
        .pixels()
        .zip(last.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differ > 500,
        "{differ} pixels changed from first frame to last"
    );
    let err = plot(&["animate", out.to_str().unwrap(), "-o", "run.mp4"]).unwrap_err();
    assert!(format!("{err:#}").contains("GIF"), "{err:#}");
}

/// An output records each input by absolute path and SHA-256, and `shoal plot` finds the mesh
/// from any working directory: where the run read it, then beside the output when the two moved
/// together; when it is in neither place the error names both.
#[test]
fn plots_find_the_mesh_from_any_directory_and_beside_a_moved_output() {
    let dir = scratch("plot_paths");
    let out = tracked(&dir, false, false);
    let f = netcdf::open(&out).unwrap();
    let text = |name: &str| -> String {
        String::try_from(f.attribute(name).unwrap().value().unwrap()).unwrap()
    };
    let mesh = dir.join("mesh.nc").canonicalize().unwrap();
    assert_eq!(text("shoal_input_files"), mesh.display().to_string());
    let sum = std::process::Command::new("sha256sum")
        .arg(&mesh)
        .output()
        .unwrap();
    let sum = String::from_utf8(sum.stdout).unwrap();
    assert_eq!(text("shoal_input_sha256"), sum.split(' ').next().unwrap());
    drop(f);
    let shoal = |cwd: &Path, args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    // From the output's own directory, by a relative path.
    let (ok, log) = shoal(&dir, &["plot", "out.nc", "-o", "here.png"]);
    assert!(ok && dir.join("here.png").is_file(), "{log}");
    // Moved together: the recorded path is gone, the mesh beside the output is found.
    let moved = scratch("plot_paths_moved");
    for name in ["out.nc", "mesh.nc"] {
        std::fs::rename(dir.join(name), moved.join(name)).unwrap();
    }
    let target = moved.join("out.nc");
    let (ok, log) = shoal(
        Path::new("/"),
        &[
            "plot",
            target.to_str().unwrap(),
            "-o",
            moved.join("there.png").to_str().unwrap(),
        ],
    );
    assert!(ok && moved.join("there.png").is_file(), "{log}");
    // In neither place: the error names both and the way out.
    std::fs::remove_file(moved.join("mesh.nc")).unwrap();
    let (ok, log) = shoal(
        Path::new("/"),
        &[
            "plot",
            target.to_str().unwrap(),
            "-o",
            moved.join("none.png").to_str().unwrap(),
        ],
    );
    assert!(!ok, "{log}");
    assert!(
        log.contains(&mesh.display().to_string())
            && log.contains(&moved.join("mesh.nc").display().to_string())
            && log.contains("--mesh"),
        "{log}"
    );
}
