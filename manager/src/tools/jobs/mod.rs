//! The station's job server: a queue of runs on disk that `shoal serve` runs one after another,
//! and that survives a power cut at any moment.
//!
//! The queue is a directory, the spool, of job directories; a job appears whole (it is written
//! in `incoming/` and renamed into `jobs/`) and its state is replaced atomically (write, fsync,
//! rename, fsync the directory, as checkpoints are). That is all the crash safety a queue of a
//! few jobs a day needs: nothing to build on a Pi (SQLite would be a C library in every build),
//! nothing to repair after a cut, and `ls` and `cat` show it.
//!
//! ```text
//! spool/
//!   incoming/        submissions being written: whatever is here when the server starts is
//!                    a submission cut short, and is discarded
//!   store/<sha256>   input files sent from other hosts, by content (store/partial/ while
//!                    they arrive; see `remote`)
//!   jobs/000001/
//!     run.toml       the run file as submitted
//!     job.json       where its relative paths resolve, who submitted it and when, and the
//!                    inputs sent with it
//!     state.json     queued, running, done, failed or cancelled; times, steps, the error
//!     inputs/        a job from another host: its input files (links into store/)
//!     cancel         present when a cancel was asked for
//!     progress.json  the running job's step, steps and ETA, every few seconds
//!     <outputs>      the run's outputs (its checkpoint beside them while it runs), and
//!                    picture.png, its trajectories drawn once it is done
//! ```
//!
//! A job's outputs (trajectories, density, connectivity) always go into its directory. A running job found when the server starts
//! (its power was cut) resumes from its checkpoint; the finished run keeps its checkpoint until
//! the job is recorded as done, so a cut between the two resumes a run with nothing left to do
//! instead of running it again.

pub mod remote;

use crate::input::config::{PathKind, RunConfig};
use crate::run::stop::{self, Stopped};
use crate::run::{RunOptions, RunReport};
use crate::station::status::{self, Board, JobRow};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the queue knows of a job besides its run file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// The directory the run file's relative paths resolve against (the submitter's); empty
    /// for a job from another host: its own directory.
    pub base: PathBuf,
    pub submitter: String,
    pub submitted: f64,
    /// Input files sent with the job from another host, held in its `inputs/`.
    #[serde(default)]
    pub inputs: Vec<SentInput>,
    /// A submission from another host names itself, so that a retry queues nothing twice.
    #[serde(default)]
    pub token: Option<String>,
}

/// An input file sent with a job: the path the run file names, the file's name in the job's
/// `inputs/`, and its content's SHA-256 (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentInput {
    pub written: String,
    pub name: String,
    pub sha256: String,
}

/// A run file's text and the absolute directory its relative paths resolve against.
fn read_run_file(run_file: &Path) -> Result<(String, PathBuf)> {
    let text = std::fs::read_to_string(run_file)
        .with_context(|| format!("cannot read {}", run_file.display()))?;
    let dir = run_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((text, crate::input::identity::absolute(dir)))
}

/// Where a job's paths lead: inputs sent with it to its `inputs/`, other inputs as the run file
/// says from `base`, and every output into the job's directory `dir` by its file name.
fn placing<'a>(
    base: &'a Path,
    dir: &'a Path,
    inputs: &'a [SentInput],
) -> impl Fn(&str, PathKind) -> PathBuf + 'a {
    move |p: &str, kind: PathKind| match kind {
        PathKind::Input => match inputs.iter().find(|i| i.written == p) {
            Some(i) => dir.join("inputs").join(&i.name),
            None => base.join(p),
        },
        PathKind::Output => dir.join(
            Path::new(p)
                .file_name()
                .map_or_else(|| PathBuf::from("out.nc"), PathBuf::from),
        ),
        PathKind::Local => base.join(p),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

/// Where a job stands.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobState {
    pub phase: Phase,
    /// When it last started (or resumed) and when it ended, Unix seconds.
    pub started: Option<f64>,
    pub finished: Option<f64>,
    /// How many times it started: 1, plus one for each resume after a cut or a stop.
    pub starts: u32,
    pub steps: Option<u32>,
    /// The error of a failed job, the reason of a cancelled one.
    pub note: String,
}

impl JobState {
    fn queued() -> JobState {
        JobState {
            phase: Phase::Queued,
            started: None,
            finished: None,
            starts: 0,
            steps: None,
            note: String::new(),
        }
    }
}

/// One job as `shoal jobs` lists it.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub dir: PathBuf,
    pub spec: JobSpec,
    pub state: JobState,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over it,
/// and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(ctx);
    }
    std::fs::rename(&tmp, path).with_context(ctx)?;
    sync_dir(dir).with_context(ctx)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The spool at `dir`, its folders made where missing.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Spool> {
        for sub in ["incoming", "jobs"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("job spool {}", dir.display()))?;
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn jobs_dir(&self) -> PathBuf {
        self.dir.join("jobs")
    }

    /// Queues the run file at `run_file`, checked first as `shoal run` would check it (the same
    /// error for a bad one, and nothing queued). Returns the job's id.
    pub fn submit(&self, run_file: &Path, submitter: &str) -> Result<String> {
        let (text, base) = read_run_file(run_file)?;
        self.queue(&text, Some(base), submitter, &[], &|_| None, None)
            .with_context(|| format!("in {}", run_file.display()))
    }

    /// Queues a job from another host: its paths resolve in its own directory, where its
    /// `inputs` are linked from `stored` (where each content is, by SHA-256).
    fn queue_from(
        &self,
        text: &str,
        submitter: &str,
        inputs: &[SentInput],
        stored: &dyn Fn(&str) -> Option<PathBuf>,
        token: &str,
    ) -> Result<String> {
        self.queue(text, None, submitter, inputs, stored, Some(token))
    }

    /// Queues a run file's `text`: its relative paths resolve from `base` (a job from another
    /// host has none: they resolve in its own directory), and the `inputs` sent with it are
    /// linked into its `inputs/` from where `stored` says each one's content is. The run file
    /// is checked with its inputs in place, and nothing is queued when it fails.
    fn queue(
        &self,
        text: &str,
        base: Option<PathBuf>,
        submitter: &str,
        inputs: &[SentInput],
        stored: &dyn Fn(&str) -> Option<PathBuf>,
        token: Option<&str>,
    ) -> Result<String> {
        // Written whole in incoming/, then renamed into the queue under the next free id.
        let tmp =
            self.dir
                .join("incoming")
                .join(format!("{}-{}", std::process::id(), now().to_bits()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        let made = self.fill(&tmp, text, base, submitter, inputs, stored);
        let spec = match made {
            Ok(spec) => JobSpec {
                token: token.map(str::to_string),
                ..spec
            },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        write_atomic(&tmp.join("run.toml"), text.as_bytes())?;
        write_atomic(&tmp.join("job.json"), &serde_json::to_vec_pretty(&spec)?)?;
        write_atomic(
            &tmp.join("state.json"),
            &serde_json::to_vec_pretty(&JobState::queued())?,
        )?;
        crate::fault::maybe_die("submit-cut", 0);
        loop {
            let next = self.ids()?.last().map_or(1, |(n, _)| n + 1);
            let id = format!("{next:06}");
            let dest = self.jobs_dir().join(&id);
            // A rename onto a directory another submitter just made fails: take the next id.
            match std::fs::rename(&tmp, &dest) {
                Ok(()) => {
                    sync_dir(&self.jobs_dir())
                        .with_context(|| format!("queueing {}", dest.display()))?;
                    return Ok(id);
                }
                Err(_) if dest.exists() => continue,
                Err(e) => return Err(e).with_context(|| format!("queueing {}", dest.display())),
            }
        }
    }

    /// Links a submission's inputs into `tmp/inputs/` and checks its run file with them there.
    fn fill(
        &self,
        tmp: &Path,
        text: &str,
        base: Option<PathBuf>,
        submitter: &str,
        inputs: &[SentInput],
        stored: &dyn Fn(&str) -> Option<PathBuf>,
    ) -> Result<JobSpec> {
        if !inputs.is_empty() {
            std::fs::create_dir(tmp.join("inputs"))
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        for i in inputs {
            let from = stored(&i.sha256).ok_or_else(|| {
                anyhow::anyhow!(
                    "input `{}` (SHA-256 {}) never arrived whole: send it again",
                    i.written,
                    i.sha256
                )
            })?;
            let to = tmp.join("inputs").join(&i.name);
            // A link costs no room; a copy where the store is on another filesystem.
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        // Checked as it will run: inputs in place, outputs in the job's directory.
        let from = base.clone().unwrap_or_else(|| tmp.to_path_buf());
        RunConfig::from_str_placing(text, &placing(&from, tmp, inputs))?;
        Ok(JobSpec {
            base: base.unwrap_or_default(),
            submitter: submitter.to_string(),
            submitted: now(),
            inputs: inputs.to_vec(),
            token: None,
        })
    }

    /// The jobs' numbers and directory names, in order.
    fn ids(&self) -> Result<Vec<(u64, String)>> {
        let mut ids: Vec<(u64, String)> = std::fs::read_dir(self.jobs_dir())
            .with_context(|| format!("reading {}", self.jobs_dir().display()))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                Some((name.parse().ok()?, name))
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Every job, in the order they were queued.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.ids()?
            .into_iter()
            .map(|(_, id)| self.job(&id))
            .collect()
    }

    pub fn job(&self, id: &str) -> Result<Job> {
        // An id is digits (it may come from another host): nothing else names a directory.
        if id.is_empty() || id.len() > 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
            bail!("`{id}` is not a job id (such as 000001)");
        }
        let dir = self.jobs_dir().join(id);
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            std::fs::read(&p).with_context(|| format!("job {id}: reading {}", p.display()))
        };
        if !dir.is_dir() {
            bail!("no job {id} in {}", self.dir.display());
        }
        Ok(Job {
            id: id.to_string(),
            spec: serde_json::from_slice(&read("job.json")?)
                .with_context(|| format!("job {id}: job.json"))?,
            state: serde_json::from_slice(&read("state.json")?)
                .with_context(|| format!("job {id}: state.json"))?,
            dir,
        })
    }

    fn set_state(&self, job: &Job, state: &JobState) -> Result<()> {
        write_atomic(
            &job.dir.join("state.json"),
            &serde_json::to_vec_pretty(state)?,
        )
    }

    /// Cancels a queued job at once, and asks the server to stop a running one (at its next
    /// step boundary).
    pub fn cancel(&self, id: &str) -> Result<Phase> {
        let job = self.job(id)?;
        match job.state.phase {
            Phase::Queued => {
                let mut s = job.state.clone();
                s.phase = Phase::Cancelled;
                s.finished = Some(now());
                s.note = "cancelled while queued".into();
                self.set_state(&job, &s)?;
                Ok(Phase::Cancelled)
            }
            Phase::Running => {
                write_atomic(&job.dir.join("cancel"), b"")?;
                Ok(Phase::Running)
            }
            other => bail!("job {id} is {other:?} already: nothing to cancel"),
        }
    }

    /// Discards submissions cut short (a submitter that died before its job was queued).
    fn discard_incoming(&self) -> Result<usize> {
        let incoming = self.dir.join("incoming");
        let mut n = 0;
        for e in std::fs::read_dir(&incoming)
            .with_context(|| format!("reading {}", incoming.display()))?
            .filter_map(|e| e.ok())
        {
            std::fs::remove_dir_all(e.path())
                .with_context(|| format!("discarding {}", e.path().display()))?;
            n += 1;
        }
        Ok(n)
    }

    /// The next job to run: one that was running when the server stopped (its power cut),
    /// then the first queued.
    fn next(&self) -> Result<Option<Job>> {
        let jobs = self.jobs()?;
        let running = jobs.iter().find(|j| j.state.phase == Phase::Running);
        let queued = jobs.iter().find(|j| j.state.phase == Phase::Queued);
        Ok(running.or(queued).cloned())
    }
}

/// How `shoal serve` runs its jobs.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The cluster of running nodes; `None`: the embedded default (or `direct`).
    pub cluster: Option<String>,
    pub nodes: Option<usize>,
    pub direct: bool,
    pub quiet: bool,
    /// Stop once the queue is empty (tests, and a batch of jobs by hand).
    pub until_empty: bool,
    /// The zenoh configuration of the cluster's fabric (its certificates), for the runs and
    /// for submissions from other hosts; it replaces a run file's `cluster.zenoh_config`.
    pub zenoh_config: Option<PathBuf>,
    /// Where other hosts reach the server (e.g. `quic/0.0.0.0:7448`); with a cluster named,
    /// the server answers `shoal submit --cluster`, `jobs`, `cancel` and `fetch` on its fabric.
    pub listen: Vec<String>,
    /// Serve the station's status page, with the queue, here.
    pub status: Option<std::net::SocketAddr>,
    /// The most bytes of input files the server takes for one job.
    pub max_input_bytes: u64,
}

/// Runs the spool's jobs one after another until asked to stop (SIGTERM, SIGINT), resuming
/// first the one a power cut interrupted. A stop during a job leaves it running, to resume at
/// the next start, and ends with [`Stopped`].
pub fn serve(spool: &Spool, opts: &ServeOptions) -> Result<()> {
    stop::listen();
    let cut = spool.discard_incoming()?;
    if cut > 0 {
        eprintln!("serve: discarded {cut} submission(s) cut short");
    }
    // A cut between a job's record of done and the removal of its checkpoint leaves one.
    for job in spool
        .jobs()?
        .iter()
        .filter(|j| j.state.phase == Phase::Done)
    {
        for e in std::fs::read_dir(&job.dir)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().ends_with(".checkpoint") {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    eprintln!("serve: jobs in {}", spool.dir.display());
    let station = opts.cluster.as_deref().unwrap_or("this machine");
    let board = Board::for_jobs(station, &spool.jobs_dir());
    let _page = match opts.status {
        Some(addr) => {
            let server = status::serve(addr, board.clone())?;
            eprintln!("status page: http://{}/", server.addr);
            Some(server)
        }
        None => None,
    };
    let _keeper = keep_board(spool.clone(), board.clone());
    let _remote = match &opts.cluster {
        Some(cluster) => Some(remote::Listener::start(
            spool,
            cluster,
            opts,
            board.clone(),
        )?),
        None => None,
    };
    loop {
        if let Some(signal) = stop::asked() {
            eprintln!("serve: stopped by signal {signal}");
            return Ok(());
        }
        let Some(job) = spool.next()? else {
            if opts.until_empty {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        run_job(spool, &job, opts, &board)?;
    }
}

/// Runs (or resumes) one job and records how it ended.
fn run_job(spool: &Spool, job: &Job, opts: &ServeOptions, board: &Arc<Board>) -> Result<()> {
    let text = std::fs::read_to_string(job.dir.join("run.toml"))
        .with_context(|| format!("job {}: run.toml", job.id))?;
    let mut state = job.state.clone();
    let resume_from = state.phase == Phase::Running;
    let base = if job.spec.base.as_os_str().is_empty() {
        job.dir.clone()
    } else {
        job.spec.base.clone()
    };
    let cfg = RunConfig::from_str_placing(&text, &placing(&base, &job.dir, &job.spec.inputs)).map(
        |mut cfg| {
            // The server says where its jobs run, not the run file.
            cfg.cluster.name = opts.cluster.clone();
            if opts.zenoh_config.is_some() {
                cfg.cluster.zenoh_config = opts.zenoh_config.clone();
            }
            cfg
        },
    );
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => return finish(spool, job, state, Err(e), None),
    };
    let checkpoint = crate::input::config::checkpoint_path(&cfg.output);
    let resume = resume_from && checkpoint.is_file();
    state.phase = Phase::Running;
    state.started = Some(now());
    state.starts += 1;
    spool.set_state(job, &state)?;
    eprintln!(
        "serve: job {} {} ({})",
        job.id,
        if resume { "resumes" } else { "starts" },
        cfg.output.display()
    );
    let watch = watch_cancel(job.dir.join("cancel"));
    let report = crate::run::run(
        &cfg,
        &RunOptions {
            quiet: opts.quiet,
            cluster: opts.cluster.clone(),
            nodes: opts.nodes,
            direct: opts.direct,
            resume,
            keep_checkpoint: true,
            board: Some(board.clone()),
            ..Default::default()
        },
    );
    drop(watch);
    finish(spool, job, state, report, Some(&cfg.output))
}

/// Records a job's end: done, failed, cancelled, or (stopped by a signal) still running, to
/// resume at the next start.
fn finish(
    spool: &Spool,
    job: &Job,
    mut state: JobState,
    r: Result<RunReport>,
    output: Option<&Path>,
) -> Result<()> {
    let checkpoint = output.map(crate::input::config::checkpoint_path);
    state.finished = Some(now());
    match r {
        Ok(report) => {
            crate::fault::maybe_die("job-ran", job.id.parse().unwrap_or(0));
            // Drawn before the job is recorded as done, so a done job always has its picture
            // (a cut in between draws it again at the next start).
            if let Some(out) = output {
                picture(job, out);
            }
            state.phase = Phase::Done;
            state.steps = Some(report.steps);
            spool.set_state(job, &state)?;
            // Recorded as done: the checkpoint has nothing left to give (one a cut left here
            // is removed at the next start).
            if let Some(c) = &checkpoint {
                let _ = std::fs::remove_file(c);
            }
            eprintln!("serve: job {} done ({} steps)", job.id, report.steps);
            crate::fault::maybe_die("job-done", job.id.parse().unwrap_or(0));
            Ok(())
        }
        Err(e) => match e.downcast_ref::<Stopped>() {
            Some(s) if job.dir.join("cancel").exists() => {
                stop::clear();
                state.phase = Phase::Cancelled;
                state.steps = Some(s.step);
                state.note = format!("cancelled after step {} of {}", s.step, s.n_steps);
                spool.set_state(job, &state)?;
                eprintln!("serve: job {} {}", job.id, state.note);
                Ok(())
            }
            Some(s) => {
                // Still running as far as the queue is concerned: the next start resumes it.
                state.finished = None;
                spool.set_state(job, &state)?;
                eprintln!(
                    "serve: job {} stopped after step {} of {}; its checkpoint is {}; the next \
                     `shoal serve` resumes it",
                    job.id,
                    s.step,
                    s.n_steps,
                    s.checkpoint.display()
                );
                Ok(())
            }
            None => {
                state.phase = Phase::Failed;
                state.note = format!("{e:#}");
                spool.set_state(job, &state)?;
                eprintln!("serve: job {} failed: {}", job.id, state.note);
                Ok(())
            }
        },
    }
}

/// Draws a done job's trajectories (`output`) as `picture.png` in its directory, for the
/// status page (a failure only warns: the job is done all the same).
fn picture(job: &Job, output: &Path) {
    let png = job.dir.join("picture.png");
    // Drawn beside it and renamed, so a cut never leaves half a picture.
    let tmp = job.dir.join("picture.tmp.png");
    let drawn = crate::output::plot::plot(output, None, &tmp, 800)
        .and_then(|()| Ok(std::fs::rename(&tmp, &png)?));
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&tmp);
        eprintln!(
            "warning: serve: job {}: drawing {}: {e:#}",
            job.id,
            png.display()
        );
    }
}

/// Keeps the board's queue and each running job's `progress.json` current while the server
/// runs, every second, from its own thread.
fn keep_board(spool: Spool, board: Arc<Board>) -> Ticker {
    let mut written = std::time::Instant::now();
    Ticker::start(Duration::from_secs(1), move || {
        if let Ok(jobs) = spool.jobs() {
            let progress = board.progress();
            board.set_jobs(jobs.iter().map(|j| row(j, progress)).collect());
            // On an SD card a write a step would wear it: every 5 s at most.
            if let (Some(p), Some(j)) = (
                progress,
                jobs.iter().find(|j| j.state.phase == Phase::Running),
            ) {
                if written.elapsed() >= Duration::from_secs(5) {
                    let _ = write_progress(&j.dir, p);
                    written = std::time::Instant::now();
                }
            }
        }
        true
    })
}

/// A thread that calls `tick` every `period` until `tick` returns false or the ticker is
/// dropped (which waits for the thread to end).
struct Ticker {
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(period: Duration, mut tick: impl FnMut() -> bool + Send + 'static) -> Ticker {
        use std::sync::atomic::Ordering;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) && tick() {
                std::thread::sleep(period);
            }
        });
        Ticker {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a running job stands, for `shoal jobs` in another process: written by rename, not
/// synced (a cut loses at most this note, which the next start writes again).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Progress {
    step: u32,
    steps: u32,
    eta_s: Option<f64>,
}

fn write_progress(dir: &Path, (step, steps, eta_s): (u32, u32, Option<f64>)) -> Result<()> {
    let p = Progress { step, steps, eta_s };
    let tmp = dir.join("progress.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&p)?)?;
    std::fs::rename(&tmp, dir.join("progress.json"))?;
    Ok(())
}

fn read_progress(dir: &Path) -> Option<Progress> {
    serde_json::from_slice(&std::fs::read(dir.join("progress.json")).ok()?).ok()
}

/// A job as the status page and `shoal jobs` show it; `live` is the running job's progress
/// where this process runs it.
pub fn row(j: &Job, live: Option<(u32, u32, Option<f64>)>) -> JobRow {
    let running = j.state.phase == Phase::Running;
    let progress = if running {
        live.or_else(|| read_progress(&j.dir).map(|p| (p.step, p.steps, p.eta_s)))
    } else {
        None
    };
    JobRow {
        id: j.id.clone(),
        submitter: j.spec.submitter.clone(),
        state: format!("{:?}", j.state.phase).to_lowercase(),
        progress: progress.map(|p| (p.0, p.1)).or_else(|| {
            j.state
                .steps
                .map(|s| (s, s))
                .filter(|_| j.state.phase == Phase::Done)
        }),
        eta_s: progress.and_then(|p| p.2),
        picture: j.dir.join("picture.png").is_file(),
    }
}

/// Whether a file of a job's directory is one of its outputs: not the queue's own files, a
/// file being written, or a checkpoint.
fn is_output(name: &str) -> bool {
    let own = [
        "run.toml",
        "job.json",
        "state.json",
        "cancel",
        "progress.json",
    ];
    !name.is_empty()
        && !own.contains(&name)
        && !name.ends_with(".tmp")
        && !name.ends_with(".tmp.png")
        && !name.ends_with(".checkpoint")
}

/// A job's output file as `shoal fetch` copies it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutputFile {
    pub name: String,
    pub size: u64,
    /// Its content's SHA-256, hex.
    pub sha256: String,
}

impl Spool {
    /// The outputs of a job that has ended (done, failed or cancelled): every plain file in its
    /// directory but the queue's own.
    pub fn outputs(&self, id: &str) -> Result<Vec<OutputFile>> {
        let job = self.job(id)?;
        if matches!(job.state.phase, Phase::Queued | Phase::Running) {
            bail!(
                "job {id} is {}: its outputs are fetched once it has ended",
                format!("{:?}", job.state.phase).to_lowercase()
            );
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(&job.dir)
            .with_context(|| format!("reading {}", job.dir.display()))?
            .filter_map(|e| e.ok())
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !is_output(&name) || !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let size = e.metadata()?.len();
            let sha256 = crate::input::identity::sha256(&e.path())?;
            out.push(OutputFile { name, size, sha256 });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Up to `len` bytes of output `name` of job `id` from `offset`; `name` must be one of
    /// [`Spool::outputs`].
    pub fn read_output(&self, id: &str, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let job = self.job(id)?;
        let ok = is_output(name)
            && !name.contains('/')
            && name != ".."
            && name != "."
            && !matches!(job.state.phase, Phase::Queued | Phase::Running);
        if !ok {
            bail!("job {id} has no output `{name}` to fetch");
        }
        let p = job.dir.join(name);
        let mut f = std::fs::File::open(&p).with_context(|| format!("job {id}: `{name}`"))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }
}

/// Copies job `id`'s outputs from `spool` into `to`, each checked against its SHA-256 and
/// renamed into place whole. Returns the files written.
pub fn fetch_local(spool: &Spool, id: &str, to: &Path) -> Result<Vec<PathBuf>> {
    let files = spool.outputs(id)?;
    fetch_files(&files, to, &|name, offset| {
        spool.read_output(id, name, offset, remote::CHUNK)
    })
}

/// Writes `files` into `to`, reading each by `read(name, offset)` until its size.
fn fetch_files(
    files: &[OutputFile],
    to: &Path,
    read: &dyn Fn(&str, u64) -> Result<Vec<u8>>,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut written = Vec::new();
    for f in files {
        let dest = to.join(&f.name);
        let part = to.join(format!("{}.part", f.name));
        let mut out =
            std::fs::File::create(&part).with_context(|| format!("writing {}", part.display()))?;
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut offset = 0u64;
        while offset < f.size {
            let bytes = read(&f.name, offset)?;
            if bytes.is_empty() {
                bail!("`{}` ended at byte {offset} of {}", f.name, f.size);
            }
            hash.update(&bytes);
            out.write_all(&bytes)
                .with_context(|| format!("writing {}", part.display()))?;
            offset += bytes.len() as u64;
        }
        out.sync_all()?;
        let got = shoal_common::keys::hex(hash.finish().as_ref());
        if offset != f.size || got != f.sha256 {
            let _ = std::fs::remove_file(&part);
            bail!(
                "`{}` arrived as {offset} bytes with SHA-256 {got}, not {} bytes with {}",
                f.name,
                f.size,
                f.sha256
            );
        }
        std::fs::rename(&part, &dest).with_context(|| format!("writing {}", dest.display()))?;
        written.push(dest);
    }
    Ok(written)
}

/// Watches for a job's cancel file while it runs, and asks the run to stop when it appears.
fn watch_cancel(flag: PathBuf) -> Ticker {
    Ticker::start(Duration::from_millis(200), move || {
        if flag.exists() {
            stop::ask(libc::SIGTERM);
            return false;
        }
        true
    })
}

/// `shoal jobs`: one line per job.
pub fn table(spool: &Spool) -> Result<String> {
    let rows: Vec<ListedJob> = spool
        .jobs()?
        .iter()
        .map(|j| ListedJob::of(j, row(j, None)))
        .collect();
    Ok(listing(&rows))
}

/// A job as `shoal jobs` lists it, here or from another host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListedJob {
    pub id: String,
    pub phase: String,
    pub starts: u32,
    pub steps: Option<u32>,
    /// The running job's step and steps.
    pub progress: Option<(u32, u32)>,
    pub eta_s: Option<f64>,
    pub submitter: String,
    pub note: String,
}

impl ListedJob {
    fn of(j: &Job, r: JobRow) -> ListedJob {
        ListedJob {
            id: j.id.clone(),
            phase: r.state,
            starts: j.state.starts,
            steps: j.state.steps,
            progress: r.progress.filter(|_| j.state.phase == Phase::Running),
            eta_s: r.eta_s,
            submitter: j.spec.submitter.clone(),
            note: j.state.note.clone(),
        }
    }
}

/// `shoal jobs`' table: one line per job.
pub fn listing(rows: &[ListedJob]) -> String {
    let mut out = String::from("job     state      starts  steps  submitted by  note\n");
    for j in rows {
        let note = match (j.progress, j.note.is_empty()) {
            (Some((step, n)), true) => format!(
                "step {step} of {n}{}",
                j.eta_s
                    .map_or(String::new(), |e| format!(", {e:.0} s left"))
            ),
            _ => j.note.clone(),
        };
        out.push_str(&format!(
            "{:<7} {:<10} {:>6}  {:>5}  {:<12}  {}\n",
            j.id,
            j.phase,
            j.starts,
            j.steps.map_or("-".to_string(), |n| n.to_string()),
            j.submitter,
            note
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids and output names may come from another host: only a job's digits name its
    /// directory, and only its outputs can be read from it.
    #[test]
    fn job_ids_are_digits_and_only_outputs_are_read() {
        let dir = std::env::temp_dir().join(format!("shoal-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Spool::open(&dir).unwrap();
        let run = "[input]\nfiles=['f.nc']\n[release.generate]\ncount=10\ncentre=[0.0,0.0]\n\
                   radius=10.0\nz=-1.0\n[run]\nduration='1h'\ndt='60s'\n[output]\nfile='out.nc'\n\
                   interval='20min'\n";
        let id = spool
            .queue(run, Some(dir.clone()), "me", &[], &|_| None, None)
            .unwrap();
        assert_eq!(id, "000001");
        for bad in ["../jobs/000001", "/etc", "", "00001a", "1234567890123"] {
            assert!(spool.job(bad).is_err(), "{bad}");
        }
        let job = spool.job(&id).unwrap();
        assert!(spool
            .outputs(&id)
            .unwrap_err()
            .to_string()
            .contains("queued"));
        let mut state = job.state.clone();
        state.phase = Phase::Done;
        spool.set_state(&job, &state).unwrap();
        std::fs::write(job.dir.join("out.nc"), b"abc").unwrap();
        std::fs::write(job.dir.join("out.nc.checkpoint"), b"x").unwrap();
        let names: Vec<String> = spool
            .outputs(&id)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["out.nc"]);
        assert_eq!(spool.read_output(&id, "out.nc", 1, 10).unwrap(), b"bc");
        for bad in [
            "job.json",
            "state.json",
            "../../x",
            "out.nc.checkpoint",
            ".",
            "",
        ] {
            assert!(spool.read_output(&id, bad, 0, 10).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
