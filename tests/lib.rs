//! Helpers for the workspace integration tests: scratch directories, synthetic FVCOM files,
//! configurations, and reading trajectory output back.

use anyhow::Result;
use shoal_manager::input::config::RunConfig;
use shoal_manager::run::{run, RunOptions, RunReport};
use shoal_manager::tools::synth::{self, SynthOptions};
use std::path::{Path, PathBuf};

/// A fresh directory under the target dir, removed and recreated per test name.
pub fn scratch(name: &str) -> PathBuf {
    no_hdf5_locks();
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("shoal-tests"));
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn synth_file(dir: &Path, name: &str, o: &SynthOptions) -> PathBuf {
    let p = dir.join(name);
    synth::write(&p, o).unwrap();
    p
}

/// Writes `toml` as run.toml in `dir` and resolves it.
pub fn config(dir: &Path, toml: &str) -> Result<RunConfig> {
    let p = dir.join("run.toml");
    std::fs::write(&p, toml)?;
    RunConfig::from_path(&p)
}

pub fn run_quiet(cfg: &RunConfig, threads: usize) -> Result<RunReport> {
    run(
        cfg,
        &RunOptions {
            quiet: true,
            threads: Some(threads),
            ..Default::default()
        },
    )
}

/// HDF5 locks every file it opens with `flock`, which belongs to the open file, not the
/// process: a child process started by one test (the fabric tests start real `shoal-node`s)
/// inherits whatever another test's thread has open at that instant and holds its lock until
/// it closes it, so the other test's next open of that file fails. Tests write their own files
/// in their own directories, so locks protect nothing here. HDF5 reads this variable at every
/// open; `./dev test` sets it too, before anything starts.
fn no_hdf5_locks() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("HDF5_USE_FILE_LOCKING").is_none() {
            std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE");
        }
    });
}

/// The meeting point of a test's zenoh processes: a peer in the test's own process, listening
/// on a loopback port that it holds for as long as the test keeps it. Every manager and node of
/// the test listens on a port of its own choosing (`tcp/127.0.0.1:0`) and connects here; zenoh's
/// gossip then links them to one another directly, as on a station's LAN. So no process needs a
/// port chosen in advance, and a manager restarted mid-test finds the nodes again through the
/// hub. The hub's own port is the only one chosen before it is bound: when another test's
/// process took it in between, opening fails with "address in use" and the hub tries another
/// port, until a deadline.
pub struct Hub {
    pub session: zenoh::Session,
    /// `tcp/127.0.0.1:PORT`, for `connect` lists and `--connect`.
    pub endpoint: String,
}

impl Hub {
    pub fn open() -> Hub {
        use zenoh::Wait;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("no loopback port")
                .port();
            let endpoint = format!("tcp/127.0.0.1:{port}");
            let cfg = zenoh::Config::from_json5(&format!(
                "{{ mode: \"peer\", listen: {{ endpoints: [\"{endpoint}\"], exit_on_failure: true }}, scouting: {{ multicast: {{ enabled: false }} }} }}"
            ))
            .unwrap();
            match zenoh::open(cfg).wait() {
                Ok(session) => return Hub { session, endpoint },
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("hub: {endpoint} was taken before it could be bound ({e}); trying another port");
                }
                Err(e) => {
                    panic!("hub: no loopback port could be bound in {attempts} attempts: {e}")
                }
            }
        }
    }

    /// A zenoh configuration file in `dir` for a process of this test: listening on a loopback
    /// port of its own, connected to the hub.
    pub fn config(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "{{ mode: \"peer\", listen: {{ endpoints: [\"tcp/127.0.0.1:0\"] }}, connect: {{ endpoints: [\"{}\"] }}, scouting: {{ multicast: {{ enabled: false }} }} }}",
                self.endpoint
            ),
        )
        .unwrap();
        p
    }
}

/// The address a process printed on `line_start...` in `log` (for a status page bound to port
/// 0), waiting up to `within` for it to appear.
pub fn printed_addr(
    log: &Path,
    line_start: &str,
    within: std::time::Duration,
) -> std::net::SocketAddr {
    let deadline = std::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.lines().find_map(|l| l.strip_prefix(line_start)) {
            let addr = rest
                .trim_start_matches("http://")
                .split(['/', ' '])
                .next()
                .unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{addr}` is not an address: {e}", log.display()));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} printed no `{line_start}` line in {within:?}:\n{text}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A trajectory file read back whole; arrays are trajectory-major `[p * n_time + t]`.
pub struct Output {
    pub n_traj: usize,
    pub n_time: usize,
    pub time: Vec<f64>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    pub z: Vec<f32>,
    pub sigma: Vec<f32>,
    pub status: Vec<i8>,
    pub element: Vec<i32>,
    pub age: Vec<f32>,
    pub happiness: Option<Vec<f32>>,
    pub lon: Option<Vec<f64>>,
    pub lat: Option<Vec<f64>>,
}

impl Output {
    pub fn read(path: &Path) -> Result<Output> {
        let f = shoal_manager::nc::open(path)?;
        // Packed positions (`[output] precision`) come back unpacked; floats as they are.
        let getf64 = |n: &str| -> Result<Vec<f64>> {
            shoal_manager::output::unpacked(
                &f.variable(n).ok_or_else(|| anyhow::anyhow!("no {n}"))?,
            )
        };
        let getf32 = |n: &str| -> Result<Vec<f32>> {
            Ok(f.variable(n)
                .ok_or_else(|| anyhow::anyhow!("no {n}"))?
                .get_values::<f32, _>(..)?)
        };
        Ok(Output {
            n_traj: f.dimension_len("trajectory").unwrap(),
            n_time: f.dimension_len("time").unwrap(),
            time: getf64("time")?,
            x: getf64("x")?,
            y: getf64("y")?,
            z: match f.variable("z").map(|v| v.vartype()) {
                Some(netcdf::types::NcVariableType::Int(_)) => {
                    getf64("z")?.into_iter().map(|v| v as f32).collect()
                }
                _ => getf32("z")?,
            },
            sigma: getf32("sigma")?,
            status: f.variable("status").unwrap().get_values::<i8, _>(..)?,
            element: f.variable("element").unwrap().get_values::<i32, _>(..)?,
            age: getf32("age")?,
            happiness: f
                .variable("happiness")
                .map(|v| v.get_values::<f32, _>(..))
                .transpose()?,
            lon: f.variable("lon").map(|_| getf64("lon")).transpose()?,
            lat: f.variable("lat").map(|_| getf64("lat")).transpose()?,
        })
    }

    pub fn at(&self, p: usize, t: usize) -> usize {
        p * self.n_time + t
    }
}

/// Every variable of two NetCDF files, compared bit for bit (NaN equal to NaN of the same bits).
pub fn files_bit_identical(a: &Path, b: &Path, skip_attributes: bool) -> Result<()> {
    let (fa, fb) = (shoal_manager::nc::open(a)?, shoal_manager::nc::open(b)?);
    let _ = skip_attributes;
    let mut names: Vec<String> = fa.variables().map(|v| v.name()).collect();
    names.sort();
    let mut names_b: Vec<String> = fb.variables().map(|v| v.name()).collect();
    names_b.sort();
    anyhow::ensure!(
        names == names_b,
        "variables differ: {names:?} vs {names_b:?}"
    );
    for n in &names {
        let (a_var, b_var) = (fa.variable(n).unwrap(), fb.variable(n).unwrap());
        if a_var.vartype() == netcdf::types::NcVariableType::String {
            // Raw values of strings are pointers: compare the strings (1-D variables).
            let strings = |v: &netcdf::Variable| -> Result<Vec<String>> {
                (0..v.len()).map(|k| Ok(v.get_string([k])?)).collect()
            };
            anyhow::ensure!(
                strings(&a_var)? == strings(&b_var)?,
                "string variable `{n}` differs between {} and {}",
                a.display(),
                b.display()
            );
            continue;
        }
        let va = a_var.get_raw_values(..)?;
        let vb = b_var.get_raw_values(..)?;
        anyhow::ensure!(
            va == vb,
            "variable `{n}` differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    Ok(())
}

/// Runs Python's xarray on a trajectory file, when Python has it (CI requires it).
pub fn xarray_check(path: &Path) -> Result<Option<String>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check_xarray.py");
    let have = std::process::Command::new("python3")
        .args(["-c", "import xarray, netCDF4"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        anyhow::ensure!(
            std::env::var_os("SHOAL_REQUIRE_XARRAY").is_none(),
            "SHOAL_REQUIRE_XARRAY is set but python3 cannot import xarray and netCDF4"
        );
        eprintln!(
            "skipped: python3 with xarray not available for {}",
            path.display()
        );
        return Ok(None);
    }
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "xarray check failed on {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}
