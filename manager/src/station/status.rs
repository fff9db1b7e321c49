//! The station's status page: a small read-only web page the manager serves on the LAN during a
//! run (`shoal run --status ADDR`) or for the fleet alone (`shoal status --serve ADDR`).
//!
//! It shows every node (architecture, cores, temperature, throttling, memory, device and why),
//! the run's step, rate, ETA and counts by status, and a picture of the latest snapshot, and
//! reloads itself every few seconds; under `shoal serve`, the job queue too (job, submitter,
//! state, progress, ETA, and a picture of each done job). It only reads: `GET /` (or
//! `/index.html`), `GET /status.json`, `GET /snapshot.png` and `GET /jobs/<id>.png`; any other
//! path is 404, and any other method gets no answer at all (the
//! connection is closed). HTTP/1.1 by hyper on a tokio runtime of its own thread, so a slow
//! browser never holds up a step.

use crate::station::membership::Member;
use anyhow::{anyhow, Context, Result};
use shoal_common::kernel::Tally;
use shoal_common::wire::{GpuHealth, Health};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the page reloads itself, and the fleet is asked how it is.
pub const REFRESH_S: u64 = 3;
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 32;
/// Connections one client address may hold at once (a browser opens up to six): beyond it, its
/// new ones are closed unanswered, so that one host holding connections idle cannot take every
/// place from the other visitors.
const PER_CLIENT: usize = 8;
/// A snapshot picture is drawn at most this often (wall seconds).
const PICTURE_EVERY: Duration = Duration::from_secs(2);

/// One node as the page shows it.
#[derive(Clone, Debug)]
pub struct NodeCard {
    pub arch: String,
    pub cores: u16,
    pub temperature_c: Option<f64>,
    pub throttling: String,
    pub memory: String,
    pub device: String,
    pub reason: String,
    /// Whether it answered the last question; a node that stops answering stays listed.
    pub answering: bool,
    pub seen: Instant,
}

impl NodeCard {
    /// A node's card from its answer to a checkup; `device` and `reason` say what it steps on
    /// where the node did not say (its full checkup names its own choice and why).
    pub fn from_health(h: &Health, device: &str, reason: &str) -> NodeCard {
        let (device, reason) = match h.device.split_once(':') {
            Some((word, _)) => (word, h.device.as_str()),
            None => (device, reason),
        };
        let t = &h.thermal;
        let mut throttling: Vec<String> = Vec::new();
        if let Some(bits) = t.throttled {
            let (now, _) = shoal_node::health::throttle_words(bits);
            throttling.extend(now.iter().map(|w| w.to_string()));
        }
        if t.cooling {
            throttling.push("cooling engaged".into());
        }
        if let (Some(f), Some(m)) = (t.freq_khz, t.max_freq_khz) {
            if f < m {
                throttling.push(format!("{} of {} MHz", f / 1000, m / 1000));
            }
        }
        let (device, reason) = match &h.gpu {
            GpuHealth::Passed { adapter, .. } if device == "gpu" => {
                ("gpu".to_string(), format!("{adapter}: {reason}"))
            }
            GpuHealth::Absent { why } => (device.to_string(), format!("{reason}; no GPU: {why}")),
            GpuHealth::Failed { adapter, why } => (
                device.to_string(),
                format!("{reason}; {adapter} failed its self-test: {why}"),
            ),
            GpuHealth::Passed { adapter, .. } => (
                device.to_string(),
                format!("{reason}; {adapter} passed its self-test"),
            ),
            GpuHealth::NotBuilt => (
                device.to_string(),
                format!("{reason}; built without GPU support"),
            ),
            GpuHealth::NotAsked => (device.to_string(), reason.to_string()),
        };
        NodeCard {
            arch: h.capabilities.arch.to_string(),
            cores: h.capabilities.cores,
            temperature_c: t.temperature_mc.map(|m| m as f64 / 1000.0),
            throttling: if throttling.is_empty() {
                "no".into()
            } else {
                throttling.join(", ")
            },
            memory: format!(
                "peak {:.0} MiB of {:.1} GiB",
                h.peak_rss_kib as f64 / 1024.0,
                h.capabilities.memory_mib as f64 / 1024.0
            ),
            device,
            reason,
            answering: true,
            seen: Instant::now(),
        }
    }

    /// This machine, for runs whose nodes share the manager's process.
    pub fn here(device: &str, reason: &str) -> NodeCard {
        let sys = shoal_node::health::sysfs_root();
        let h = Health {
            node: shoal_common::wire::ident("here").expect("a valid name"),
            capabilities: shoal_node::agent::capabilities(),
            clock_unix_ns: 0,
            uptime_s: 0,
            load: 0.0,
            peak_rss_kib: shoal_node::health::peak_rss_kib(),
            busy: 0,
            gpu: GpuHealth::NotAsked,
            thermal: shoal_node::health::thermal(&sys, None),
            zid: Default::default(),
            links: Vec::new(),
            device: String::new(),
        };
        NodeCard::from_health(&h, device, reason)
    }
}

/// The run as the page shows it.
#[derive(Clone, Debug, Default)]
pub struct RunCard {
    pub name: String,
    pub step: u32,
    pub n_steps: u32,
    pub particles: usize,
    /// Particle-steps per second since the run (or its resumption) began.
    pub rate: f64,
    pub eta_s: Option<f64>,
    pub counts: Vec<(&'static str, u64)>,
    /// The model time reached, UTC.
    pub model_time: String,
}

/// One job of the job server's queue as the page shows it.
#[derive(Clone, Debug, Default)]
pub struct JobRow {
    pub id: String,
    /// The submitter: the name on its certificate, or `user@host` for a job queued here.
    pub submitter: String,
    pub state: String,
    /// Steps done and in all, where known.
    pub progress: Option<(u32, u32)>,
    pub eta_s: Option<f64>,
    /// A picture of its trajectories once done (`/jobs/<id>.png`).
    pub picture: bool,
}

type Painter = Arc<(String, crate::output::plot::map::SnapshotPainter)>;

#[derive(Default)]
struct State {
    station: String,
    nodes: BTreeMap<String, NodeCard>,
    run: Option<RunCard>,
    /// The run going: its name (its output file) and what draws its snapshots.
    painter: Option<Painter>,
    /// The job server's queue; `None` outside `shoal serve`.
    jobs: Option<Vec<JobRow>>,
    picture: Option<Arc<Vec<u8>>>,
    pictured: Option<Instant>,
    pictures: u64,
}

/// What the page shows, shared by the run (or the fleet watcher, or the job server) and the
/// server.
pub struct Board {
    state: Mutex<State>,
    /// The job server's jobs directory, where each done job's picture lies.
    jobs_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Board")
    }
}

impl Board {
    /// `station` heads the page (the cluster's name); `run`, where there is one: its name and
    /// what draws its snapshots.
    pub fn new(
        station: &str,
        run: Option<(String, crate::output::plot::map::SnapshotPainter)>,
    ) -> Arc<Board> {
        Arc::new(Board {
            state: Mutex::new(State {
                station: station.to_string(),
                painter: run.map(Arc::new),
                ..Default::default()
            }),
            jobs_dir: None,
        })
    }

    /// The job server's board: its queue shown, and the pictures of done jobs served from
    /// `jobs_dir/<id>/picture.png`.
    pub fn for_jobs(station: &str, jobs_dir: &std::path::Path) -> Arc<Board> {
        Arc::new(Board {
            state: Mutex::new(State {
                station: station.to_string(),
                jobs: Some(Vec::new()),
                ..Default::default()
            }),
            jobs_dir: Some(jobs_dir.to_path_buf()),
        })
    }

    /// A run begins on a board that outlives it (the job server's): its name and painter.
    pub fn begin_run(&self, name: String, painter: crate::output::plot::map::SnapshotPainter) {
        self.with(|s| {
            s.painter = Some(Arc::new((name, painter)));
            s.run = None;
            s.picture = None;
            s.pictured = None;
            s.nodes.clear();
        });
    }

    /// The run is over: the board shows no run until the next begins.
    pub fn end_run(&self) {
        self.with(|s| {
            s.painter = None;
            s.run = None;
            s.picture = None;
        });
    }

    /// The running job's card: steps done and in all, and the ETA.
    pub fn progress(&self) -> Option<(u32, u32, Option<f64>)> {
        self.with(|s| s.run.as_ref().map(|r| (r.step, r.n_steps, r.eta_s)))
    }

    pub fn set_jobs(&self, rows: Vec<JobRow>) {
        self.with(|s| s.jobs = Some(rows));
    }

    /// A done job's picture, by its id (digits only: nothing else is a path here).
    fn job_picture(&self, id: &str) -> Option<Vec<u8>> {
        let dir = self.jobs_dir.as_ref()?;
        if id.is_empty() || id.len() > 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        std::fs::read(dir.join(id).join("picture.png")).ok()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    pub fn set_node(&self, name: &str, card: NodeCard) {
        self.with(|s| s.nodes.insert(name.to_string(), card));
    }

    /// A node that did not answer: kept, marked silent.
    pub fn silent(&self, name: &str) {
        self.with(|s| {
            if let Some(c) = s.nodes.get_mut(name) {
                c.answering = false;
            }
        });
    }

    /// After each step.
    pub fn step(
        &self,
        step: u32,
        n_steps: u32,
        n: usize,
        rate: f64,
        tally: &Tally,
        model_time: f64,
    ) {
        let eta_s = (rate > 0.0).then(|| (n_steps - step.min(n_steps)) as f64 * n as f64 / rate);
        let counts = vec![
            ("active", tally.active),
            ("pending", tally.pending),
            ("exited", tally.exited),
            ("settled", tally.settled),
            ("dead", tally.dead),
            ("stranded", tally.stranded),
            ("bad field", tally.bad_field),
            ("outside mesh", tally.outside_mesh),
        ];
        let mut card = RunCard {
            name: String::new(),
            step,
            n_steps,
            particles: n,
            rate,
            eta_s,
            counts: counts.into_iter().filter(|(_, c)| *c > 0).collect(),
            model_time: crate::input::timefmt::format_datetime(model_time),
        };
        self.with(|s| {
            card.name = s.painter.as_ref().map_or(String::new(), |p| p.0.clone());
            s.run = Some(card)
        });
    }

    /// At output times: a new picture of the particles, unless one was drawn very recently.
    pub fn snapshot(&self, snap: &shoal_common::snapshot::Snapshot) {
        let Some(painter) = self.with(|s| {
            let due = s.pictured.is_none_or(|t| t.elapsed() >= PICTURE_EVERY);
            s.painter.clone().filter(|_| due)
        }) else {
            return;
        };
        let painter = &painter.1;
        // Drawn outside the lock: the server keeps answering with the last picture meanwhile.
        match painter.paint(&snap.x, &snap.y, &snap.status) {
            Ok(png) => self.with(|s| {
                s.picture = Some(Arc::new(png));
                s.pictured = Some(Instant::now());
                s.pictures += 1;
            }),
            Err(e) => eprintln!("warning: status page: drawing the snapshot: {e:#}"),
        }
    }

    fn picture(&self) -> Option<Arc<Vec<u8>>> {
        self.with(|s| s.picture.clone())
    }

    /// The page itself.
    pub fn html(&self) -> String {
        self.with(|s| page(s))
    }

    /// The same, for scripts.
    pub fn json(&self) -> String {
        self.with(|s| {
            let nodes: Vec<serde_json::Value> = s
                .nodes
                .iter()
                .map(|(name, c)| {
                    serde_json::json!({
                        "name": name, "arch": c.arch, "cores": c.cores,
                        "temperature_c": c.temperature_c, "throttling": c.throttling,
                        "memory": c.memory, "device": c.device, "reason": c.reason,
                        "answering": c.answering, "seen_s_ago": c.seen.elapsed().as_secs_f64(),
                    })
                })
                .collect();
            let run = s.run.as_ref().map(|r| {
                serde_json::json!({
                    "name": r.name, "step": r.step, "steps": r.n_steps, "particles": r.particles,
                    "particle_steps_per_s": r.rate, "eta_s": r.eta_s, "model_time": r.model_time,
                    "counts": r.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
                })
            });
            let jobs = s.jobs.as_ref().map(|rows| {
                rows.iter()
                    .map(|j| {
                        serde_json::json!({
                            "id": j.id, "submitter": j.submitter, "state": j.state,
                            "step": j.progress.map(|p| p.0), "steps": j.progress.map(|p| p.1),
                            "eta_s": j.eta_s,
                            "picture": j.picture.then(|| format!("/jobs/{}.png", j.id)),
                        })
                    })
                    .collect::<Vec<_>>()
            });
            serde_json::json!({ "station": s.station, "nodes": nodes, "run": run, "jobs": jobs })
                .to_string()
        })
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn duration_words(s: f64) -> String {
    let s = s.round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, sec) => format!("{sec} s"),
        (0, m, sec) => format!("{m} min {sec:02} s"),
        (h, m, _) => format!("{h} h {m:02} min"),
    }
}

fn page(s: &State) -> String {
    let mut out = String::with_capacity(4096);
    out.push_str(&format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>shoal · {station}</title><style>\
         body{{font-family:sans-serif;margin:1.5em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}\
         td,th{{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}}\
         th{{background:#f2f4f7}} .hot{{color:#c00;font-weight:bold}} .silent{{color:#999}}\
         .bar{{background:#e5e9ef;width:24em;height:.8em}} .bar div{{background:#2a7;height:100%}}\
         img{{max-width:min(100%,640px);border:1px solid #ccc}} small{{color:#666}}\
         </style></head><body>\n<h1>shoal station <small>{station}</small></h1>\n",
        station = escape(&s.station)
    ));
    match &s.run {
        Some(r) => {
            let share = if r.n_steps > 0 {
                100.0 * r.step as f64 / r.n_steps as f64
            } else {
                100.0
            };
            out.push_str(&format!(
                "<h2>Run <small>{}</small></h2>\n<p>step <b id=\"step\">{}</b> of <span id=\"steps\">{}</span> \
                 ({share:.1} %) · model time {} UTC · {} particles · {:.2} M particle-steps/s · ETA {}</p>\n\
                 <div class=\"bar\"><div style=\"width:{share:.1}%\"></div></div>\n<table id=\"counts\"><tr>",
                escape(&r.name),
                r.step,
                r.n_steps,
                r.model_time,
                r.particles,
                r.rate / 1e6,
                r.eta_s.map_or("unknown".to_string(), duration_words)
            ));
            for (k, _) in &r.counts {
                out.push_str(&format!("<th>{k}</th>"));
            }
            out.push_str("</tr><tr>");
            for (_, v) in &r.counts {
                out.push_str(&format!("<td>{v}</td>"));
            }
            out.push_str("</tr></table>\n");
        }
        None => out.push_str("<h2>Run</h2>\n<p id=\"idle\">No run is going.</p>\n"),
    }
    if let Some(rows) = &s.jobs {
        out.push_str(&format!(
            "<h2>Jobs <small>{}</small></h2>\n<table id=\"jobs\"><tr><th>job</th><th>submitted by</th>\
             <th>state</th><th>progress</th><th>ETA</th><th>picture</th></tr>\n",
            rows.len()
        ));
        for j in rows.iter().rev() {
            let progress = j.progress.map_or(String::new(), |(step, n)| {
                format!(
                    "{step} of {n} ({:.0} %)",
                    100.0 * step as f64 / n.max(1) as f64
                )
            });
            out.push_str(&format!(
                "<tr class=\"job\"><td>{}</td><td>{}</td><td>{}</td><td>{progress}</td><td>{}</td><td>{}</td></tr>\n",
                escape(&j.id),
                escape(&j.submitter),
                escape(&j.state),
                j.eta_s.map_or(String::new(), duration_words),
                if j.picture {
                    format!("<a href=\"/jobs/{0}.png\">{0}.png</a>", escape(&j.id))
                } else {
                    String::new()
                }
            ));
        }
        out.push_str("</table>\n");
    }
    out.push_str(&format!(
        "<h2>Nodes <small>{}</small></h2>\n<table id=\"nodes\"><tr><th>node</th><th>architecture</th>\
         <th>cores</th><th>temperature</th><th>throttling</th><th>memory</th><th>device</th><th>why</th></tr>\n",
        s.nodes.len()
    ));
    for (name, c) in &s.nodes {
        let hot = c
            .temperature_c
            .is_some_and(|t| t * 1000.0 >= crate::station::fleet::HOT_MC as f64);
        let temp = c
            .temperature_c
            .map_or("unknown".to_string(), |t| format!("{t:.1} °C"));
        out.push_str(&format!(
            "<tr class=\"{}\"><td>{}{}</td><td>{}</td><td>{}</td><td class=\"{}\">{temp}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>\n",
            if c.answering { "node" } else { "node silent" },
            escape(name),
            if c.answering {
                String::new()
            } else {
                format!(" (silent for {})", duration_words(c.seen.elapsed().as_secs_f64()))
            },
            escape(&c.arch),
            c.cores,
            if hot { "hot" } else { "" },
            escape(&c.throttling),
            escape(&c.memory),
            escape(&c.device),
            escape(&c.reason),
        ));
    }
    out.push_str("</table>\n");
    // The picture last, so that the numbers fit on a phone's first screen.
    if s.run.is_some() && s.picture.is_some() {
        out.push_str(&format!(
            "<h2>Particles <small>at the latest output time</small></h2>\n\
             <p><img src=\"/snapshot.png?{}\" alt=\"the particles at the latest output time\"></p>\n",
            s.pictures
        ));
    }
    out.push_str(&format!(
        "<p><small>Read-only; reloads every {REFRESH_S} s. Also as <a href=\"/status.json\">JSON</a>. \
         Written {} UTC.</small></p>\n</body></html>\n",
        crate::input::timefmt::format_datetime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        )
    ));
    out
}

/// The page's server; dropping it stops it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// Other methods are answered with nothing: the service fails, and hyper closes the connection.
#[derive(Debug)]
struct NotGet;

impl std::fmt::Display for NotGet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the status page answers GET only")
    }
}

impl std::error::Error for NotGet {}

fn respond(
    board: &Board,
    req: &hyper::Request<hyper::body::Incoming>,
) -> std::result::Result<hyper::Response<Body>, NotGet> {
    if req.method() != hyper::Method::GET {
        return Err(NotGet);
    }
    let reply = |status: u16, kind: &str, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", kind)
            .header("cache-control", "no-store")
            .body(Body::new(body.into()))
            .expect("a well-formed response")
    };
    Ok(match req.uri().path() {
        "/" | "/index.html" => reply(200, "text/html; charset=utf-8", board.html().into_bytes()),
        "/status.json" => reply(200, "application/json", board.json().into_bytes()),
        "/snapshot.png" => match board.picture() {
            Some(png) => reply(200, "image/png", png.as_ref().clone()),
            None => reply(404, "text/plain", b"no snapshot yet\n".to_vec()),
        },
        path => match path
            .strip_prefix("/jobs/")
            .and_then(|p| p.strip_suffix(".png"))
            .and_then(|id| board.job_picture(id))
        {
            Some(png) => reply(200, "image/png", png),
            None => reply(404, "text/plain", b"not found\n".to_vec()),
        },
    })
}

/// Serves `board` at `addr` until the returned server is dropped.
pub fn serve(addr: SocketAddr, board: Arc<Board>) -> Result<Server> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("status page: cannot listen on {addr}"))?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("status page: {addr}"))?;
    let addr = std_listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| anyhow!("status page: starting its runtime: {e}"))?;
    let thread = std::thread::Builder::new()
        .name("shoal-status".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("warning: status page: {e}");
                        return;
                    }
                };
                // Connections open now: beyond the cap, new ones are closed at once, so that
                // browsers on the LAN never take the descriptors the run needs.
                let live = Arc::new(AtomicUsize::new(0));
                let held: Arc<Mutex<BTreeMap<std::net::IpAddr, usize>>> = Default::default();
                while !halt.load(Ordering::Relaxed) {
                    // Wakes to look at the stop flag; no connection waits on it.
                    let Ok(accepted) =
                        tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
                    else {
                        continue;
                    };
                    let (stream, client) = match accepted {
                        Ok((stream, peer)) => (stream, peer.ip()),
                        Err(_) => {
                            // Out of descriptors, most likely: wait rather than spin.
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    {
                        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                        let mine = held.entry(client).or_insert(0);
                        if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS || *mine >= PER_CLIENT {
                            continue;
                        }
                        *mine += 1;
                    }
                    live.fetch_add(1, Ordering::Relaxed);
                    let (board, live, held) = (board.clone(), live.clone(), held.clone());
                    tokio::task::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = respond(&board, &req);
                            async move { answer }
                        });
                        let conn = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .keep_alive(false)
                            .header_read_timeout(Duration::from_secs(10))
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                        // A client that stalls is dropped after a while.
                        let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
                        live.fetch_sub(1, Ordering::Relaxed);
                        let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(n) = held.get_mut(&client) {
                            *n -= 1;
                            if *n == 0 {
                                held.remove(&client);
                            }
                        }
                    });
                }
            });
        })
        .map_err(|e| anyhow!("status page: starting its thread: {e}"))?;
    Ok(Server {
        addr,
        stop,
        thread: Some(thread),
    })
}

/// Asks the fleet's nodes how they are every [`REFRESH_S`] seconds until `stop`: who holds a
/// token (the census), then a quick checkup of each (a full one, with the GPU self-test, the
/// first time where `full_once`). `device` gives what a node steps on and why.
pub fn watch_fleet(
    session: zenoh::Session,
    cluster: shoal_common::wire::Ident,
    dropped: Arc<shoal_node::net::Dropped>,
    board: Arc<Board>,
    stop: Arc<AtomicBool>,
    full_once: bool,
    device: (String, String),
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("shoal-status-fleet".into())
        .spawn(move || {
            // The full checkups' GPU verdicts, asked once per node beside the quick ones, on
            // threads of their own that give up when the watch stops.
            // With each, the node's own choice of device and why (empty where unknown).
            type Verdict = (GpuHealth, String);
            let verdicts: Arc<Mutex<BTreeMap<String, Option<Verdict>>>> = Default::default();
            let mut full_checkups = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let members: Vec<Member> =
                    match crate::station::membership::census(&session, &cluster, &dropped) {
                        Ok((m, _)) => m,
                        Err(_) => Vec::new(),
                    };
                if full_once {
                    for m in &members {
                        let mut v = verdicts.lock().unwrap_or_else(|p| p.into_inner());
                        if v.contains_key(&m.name) {
                            continue;
                        }
                        v.insert(m.name.clone(), None);
                        let (session, cluster, dropped, verdicts, name, stop) = (
                            session.clone(),
                            cluster.clone(),
                            dropped.clone(),
                            verdicts.clone(),
                            m.name.clone(),
                            stop.clone(),
                        );
                        let spawned = std::thread::Builder::new()
                            .name("shoal-status-full".into())
                            .spawn(move || {
                                let full = (true, Duration::from_secs(120));
                                let verdict = crate::station::fleet::checkup(
                                    &session, &cluster, &dropped, &name, full, &stop,
                                )
                                .map_or_else(
                                    |e| {
                                        let why = format!("no full checkup: {e:#}");
                                        let why = shoal_common::wire::text(&why);
                                        (GpuHealth::Absent { why }, String::new())
                                    },
                                    |h| (h.gpu, h.device),
                                );
                                verdicts
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(name, Some(verdict));
                            });
                        full_checkups.extend(spawned.ok());
                    }
                }
                let answers: Vec<(String, Result<Health>)> = std::thread::scope(|sc| {
                    let asks: Vec<_> = members
                        .iter()
                        .map(|m| {
                            let (session, cluster, dropped) = (&session, &cluster, &dropped);
                            let stop = &stop;
                            sc.spawn(move || {
                                let quick = (false, Duration::from_secs(2));
                                let h = crate::station::fleet::checkup(
                                    session, cluster, dropped, &m.name, quick, stop,
                                );
                                (m.name.clone(), h)
                            })
                        })
                        .collect();
                    asks.into_iter().filter_map(|h| h.join().ok()).collect()
                });
                for (name, answer) in answers {
                    match answer {
                        Ok(mut h) => {
                            // Quick checkups do not look at the GPU: the full one's verdict.
                            if let Some(Some(g)) = verdicts
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get(&name)
                            {
                                h.gpu = g.0.clone();
                                h.device = g.1.clone();
                            }
                            board.set_node(&name, NodeCard::from_health(&h, &device.0, &device.1));
                        }
                        Err(_) => board.silent(&name),
                    }
                }
                let rest = Duration::from_secs(REFRESH_S).saturating_sub(began.elapsed());
                let until = Instant::now() + rest;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            for t in full_checkups {
                let _ = t.join();
            }
        })
        .expect("spawning a thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_names_and_counts_only_what_occurs() {
        let board = Board::new("bay <one>", None);
        let mut tally = Tally::empty();
        tally.active = 90;
        tally.exited = 10;
        board.step(5, 10, 100, 2.0e6, &tally, 86_400.0);
        let card = NodeCard {
            arch: "aarch64".into(),
            cores: 4,
            temperature_c: Some(82.5),
            throttling: "no".into(),
            memory: "peak 10 MiB of 3.8 GiB".into(),
            device: "cpu".into(),
            reason: "a & b".into(),
            answering: true,
            seen: Instant::now(),
        };
        board.set_node("pi-1", card.clone());
        board.set_node("pi-2", card);
        board.silent("pi-2");
        let html = board.html();
        assert!(
            html.contains("bay &lt;one&gt;") && html.contains("a &amp; b"),
            "{html}"
        );
        assert!(html.contains("<b id=\"step\">5</b>") && html.contains("(50.0 %)"));
        assert!(html.contains("<th>exited</th>") && !html.contains("<th>dead</th>"));
        assert!(html.contains("class=\"hot\">82.5 °C") && html.contains("pi-2 (silent for"));
        let json: serde_json::Value = serde_json::from_str(&board.json()).unwrap();
        assert_eq!(json["run"]["counts"]["exited"], 10);
        assert_eq!(json["nodes"][1]["answering"], false);
    }
}
