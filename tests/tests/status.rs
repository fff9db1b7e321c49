//! The station's status page, for real: a manager process stepping on two `shoal-node`
//! processes serves it, and Debian's chromium loads it headless; then `shoal status` serves the
//! fleet alone. HTTP is spoken here by hand for what a browser will not do (other methods).

use crate::fabric::{clean, setup};
use crate::faults::Station;
use shoal_tests::*;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection; everything the server sent back, as text (empty
/// where it closed the connection without a word).
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The body of `GET /status.json`, parsed, once the server answers.
fn status_json(port: u16) -> Option<serde_json::Value> {
    let text = http(port, "GET", "/status.json").ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Polls until `ok` holds of the status JSON, or panics after `within`.
fn until(
    port: u16,
    within: Duration,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if let Some(j) = status_json(port) {
            if ok(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "{what}: never so; last {j}");
        } else {
            assert!(Instant::now() < deadline, "{what}: the page never answered");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Debian's chromium, headless (`--no-sandbox`: CI runs as root), or None where it is missing
/// and nothing requires it.
fn chromium() -> Option<&'static str> {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found
        && (std::env::var_os("CI").is_some() || std::env::var_os("SHOAL_REQUIRE_BROWSER").is_some())
    {
        panic!("chromium is missing; CI installs Debian's `chromium` package");
    }
    found.then_some("chromium")
}

/// Loads `url` in headless chromium with `args`; what it printed. Killed after a minute.
fn browse(browser: &str, dir: &Path, args: &[&str], url: &str) -> String {
    let out_path = dir.join("chromium.out");
    let mut child = clean(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(dir.join("chromium.err")).unwrap())
        .env("HOME", dir)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish loading {url} within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium failed: {}",
        std::fs::read_to_string(dir.join("chromium.err")).unwrap_or_default()
    );
    std::fs::read_to_string(&out_path).unwrap()
}

fn step_of(dom: &str) -> u64 {
    let at = dom
        .find("id=\"step\">")
        .unwrap_or_else(|| panic!("no step on the page:\n{dom}"));
    dom[at + 10..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A child process, killed when the test ends however it ends (a failed assertion too).
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shoal run RUN --quiet ARGS --status 127.0.0.1:0` in `dir`, its log in `manager.log`: the
/// process (killed when dropped) and the address its page bound.
fn run_with_page(dir: &Path, run: &str, args: &[&str]) -> (Killed, std::net::SocketAddr) {
    let manager = Killed(
        clean(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", run, "--quiet"])
            .args(args)
            .args(["--status", "127.0.0.1:0"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("manager.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    // The page binds a port of its own and says which.
    let addr = printed_addr(
        &dir.join("manager.log"),
        "status page: ",
        Duration::from_secs(120),
    );
    (manager, addr)
}

#[test]
fn the_status_page_shows_both_nodes_and_a_step_that_grows_in_a_real_browser() {
    let Some(browser) = chromium() else {
        eprintln!("skipped: chromium is not installed");
        return;
    };
    let (dir, toml) = setup("status_page");
    let mut station = Station::new(&dir, "status");
    for name in ["pi-east", "pi-west"] {
        station.start(name, None);
    }
    let cluster = station.cluster.clone();
    // Long enough to be seen stepping (it is stopped once seen): 40 000 particles, 2 880 steps.
    let run = toml(
        "page.nc",
        "[cluster]\nnodes=2\nwait_seconds=60\nzenoh_config='manager.json5'\n",
    )
    .replace("count=3000", "count=40000")
    .replace("duration='3h'\ndt='60s'", "duration='4h'\ndt='5s'");
    std::fs::write(dir.join("page.toml"), run).unwrap();
    let (_manager, addr) = run_with_page(&dir, "page.toml", &["--cluster", &cluster]);
    let port = addr.port();
    until(
        port,
        Duration::from_secs(120),
        "two nodes and a step",
        |j| {
            j["nodes"].as_array().is_some_and(|n| n.len() == 2)
                && j["run"]["step"].as_u64().unwrap_or(0) > 0
        },
    );
    let url = format!("http://{addr}/");
    let first = browse(browser, &dir, &["--dump-dom"], &url);
    for name in ["pi-east", "pi-west"] {
        assert!(
            first.contains(&format!("<td>{name}</td>")),
            "{name} is not on the page:\n{first}"
        );
    }
    assert!(
        first.contains("x86_64") || first.contains("aarch64"),
        "{first}"
    );
    assert!(
        first.contains("a named cluster"),
        "the device's reason is missing:\n{first}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let second = browse(browser, &dir, &["--dump-dom"], &url);
    let (a, b) = (step_of(&first), step_of(&second));
    assert!(b > a, "the step did not grow: {a} then {b}");
    let shot = dir.join("page.png");
    browse(
        browser,
        &dir,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,900",
        ],
        &url,
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1200, 900));
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 20,
        "the screenshot is nearly blank ({} colours)",
        colours.len()
    );
    // The snapshot the page shows is a picture.
    let png = http(port, "GET", "/snapshot.png").unwrap();
    assert!(
        png.starts_with("HTTP/1.1 200") && png.contains("image/png"),
        "{}",
        &png[..png.len().min(200)]
    );
    // One host holding 500 connections idle (from 127.0.0.2) takes its share of the page's
    // places, not all of them: a browser elsewhere (127.0.0.1) is still answered.
    let idle: Vec<std::net::TcpStream> = (0..500)
        .filter_map(|_| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
                .ok()?;
            s.connect_timeout(&addr.into(), Duration::from_secs(2))
                .ok()?;
            Some(s.into())
        })
        .collect();
    assert!(
        idle.len() >= 100,
        "only {} idle connections opened",
        idle.len()
    );
    let third = browse(browser, &dir, &["--dump-dom"], &url);
    assert!(third.contains("<td>pi-east</td>"), "{third}");
    drop(idle);
    // Read-only: other paths are 404, other methods get nothing at all.
    assert!(http(port, "GET", "/nowhere")
        .unwrap()
        .starts_with("HTTP/1.1 404"));
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        let answer = http(port, method, "/").unwrap_or_default();
        assert!(answer.is_empty(), "{method} was answered: {answer}");
    }
}

#[test]
fn shoal_status_serves_the_fleet_alone_with_each_nodes_device_verdict() {
    let dir = scratch("status_fleet");
    let mut station = Station::new(&dir, "fleet");
    for name in ["a1", "b2"] {
        station.start(name, None);
    }
    let cluster = station.cluster.clone();
    let _status = Killed(
        clean(env!("CARGO_BIN_EXE_shoal"))
            .args(["status", "--cluster", &cluster, "--zenoh-config"])
            .arg(dir.join("manager.json5"))
            .args(["--serve", "127.0.0.1:0", "--seconds", "150"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("status.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let port = printed_addr(
        &dir.join("status.log"),
        "status page: ",
        Duration::from_secs(120),
    )
    .port();
    // The full checkup (with the GPU self-test) comes once per node; quick ones follow.
    let j = until(
        port,
        Duration::from_secs(140),
        "both nodes with a GPU verdict",
        |j| {
            j["nodes"].as_array().is_some_and(|n| {
                n.len() == 2
                    && n.iter().all(|c| {
                        let r = c["reason"].as_str().unwrap_or("");
                        c["answering"] == true && (r.contains("self-test") || r.contains("GPU"))
                    })
            })
        },
    );
    assert!(j["run"].is_null(), "{j}");
    assert_eq!(j["station"], cluster.as_str());
    let page = http(port, "GET", "/").unwrap();
    assert!(
        page.contains("No run is going")
            && page.contains("<td>a1</td>")
            && page.contains("<td>b2</td>"),
        "{page}"
    );
    assert!(http(port, "GET", "/snapshot.png")
        .unwrap()
        .starts_with("HTTP/1.1 404"));
}

/// The status page of an embedded run shows its in-process nodes as they are, each by its name
/// with the device it steps on, not one card for the machine.
#[test]
fn an_embedded_runs_page_shows_each_in_process_node_by_name() {
    let (dir, toml) = setup("status_embedded");
    let run = toml("embedded.nc", "")
        .replace("count=3000", "count=20000")
        .replace("duration='3h'\ndt='60s'", "duration='4h'\ndt='5s'");
    std::fs::write(dir.join("embedded.toml"), run).unwrap();
    let (_manager, addr) = run_with_page(&dir, "embedded.toml", &["--nodes", "2"]);
    let port = addr.port();
    let j = until(port, Duration::from_secs(120), "two named nodes", |j| {
        j["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    let mut names: Vec<&str> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["local-0", "local-1"], "{j}");
}
