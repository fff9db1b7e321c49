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
//!   jobs/000001/
//!     run.toml       the run file as submitted
//!     job.json       where its relative paths resolve, who submitted it and when
//!     state.json     queued, running, done, failed or cancelled; times, steps, the error
//!     cancel         present when a cancel was asked for
//!     <output>       the run's output (its checkpoint beside it while it runs)
//! ```
//!
//! A job's output always goes into its directory. A running job found when the server starts
//! (its power was cut) resumes from its checkpoint; the finished run keeps its checkpoint until
//! the job is recorded as done, so a cut between the two resumes a run with nothing left to do
//! instead of running it again.

use crate::input::config::RunConfig;
use crate::run::stop::{self, Stopped};
use crate::run::{RunOptions, RunReport};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the queue knows of a job besides its run file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    /// The directory the run file's relative paths resolve against (the submitter's).
    pub base: PathBuf,
    pub submitter: String,
    pub submitted: f64,
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
        let text = std::fs::read_to_string(run_file)
            .with_context(|| format!("cannot read {}", run_file.display()))?;
        let dir = run_file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = crate::input::identity::absolute(dir);
        RunConfig::from_str(&text, &base).with_context(|| format!("in {}", run_file.display()))?;
        let spec = JobSpec {
            base,
            submitter: submitter.to_string(),
            submitted: now(),
        };
        let state = JobState {
            phase: Phase::Queued,
            started: None,
            finished: None,
            starts: 0,
            steps: None,
            note: String::new(),
        };
        // Written whole in incoming/, then renamed into the queue under the next free id.
        let tmp =
            self.dir
                .join("incoming")
                .join(format!("{}-{}", std::process::id(), now().to_bits()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        write_atomic(&tmp.join("run.toml"), text.as_bytes())?;
        write_atomic(&tmp.join("job.json"), &serde_json::to_vec_pretty(&spec)?)?;
        write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(&state)?)?;
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
        run_job(spool, &job, opts)?;
    }
}

/// Runs (or resumes) one job and records how it ended.
fn run_job(spool: &Spool, job: &Job, opts: &ServeOptions) -> Result<()> {
    let text = std::fs::read_to_string(job.dir.join("run.toml"))
        .with_context(|| format!("job {}: run.toml", job.id))?;
    let mut state = job.state.clone();
    let resume_from = state.phase == Phase::Running;
    let cfg = RunConfig::from_str(&text, &job.spec.base).map(|mut cfg| {
        // Its outputs go into the job's directory.
        let name = cfg.output.file_name().map(PathBuf::from);
        cfg.output = job.dir.join(name.unwrap_or_else(|| "out.nc".into()));
        cfg
    });
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
    let watch = CancelWatch::start(job.dir.join("cancel"));
    let report = crate::run::run(
        &cfg,
        &RunOptions {
            quiet: opts.quiet,
            cluster: opts.cluster.clone(),
            nodes: opts.nodes,
            direct: opts.direct,
            resume,
            keep_checkpoint: true,
            ..Default::default()
        },
    );
    drop(watch);
    finish(spool, job, state, report, Some(&checkpoint))
}

/// Records a job's end: done, failed, cancelled, or (stopped by a signal) still running, to
/// resume at the next start.
fn finish(
    spool: &Spool,
    job: &Job,
    mut state: JobState,
    r: Result<RunReport>,
    checkpoint: Option<&Path>,
) -> Result<()> {
    state.finished = Some(now());
    match r {
        Ok(report) => {
            crate::fault::maybe_die("job-ran", job.id.parse().unwrap_or(0));
            state.phase = Phase::Done;
            state.steps = Some(report.steps);
            spool.set_state(job, &state)?;
            // Recorded as done: the checkpoint has nothing left to give (one a cut left here
            // is removed at the next start).
            if let Some(c) = checkpoint {
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

/// Watches for a job's cancel file while it runs, and asks the run to stop when it appears.
struct CancelWatch {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CancelWatch {
    fn start(flag: PathBuf) -> CancelWatch {
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let thread = std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                if flag.exists() {
                    stop::ask(libc::SIGTERM);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        CancelWatch {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `shoal jobs`: one line per job.
pub fn table(spool: &Spool) -> Result<String> {
    let mut out = String::from("job     state      starts  steps  submitted by  note\n");
    for j in spool.jobs()? {
        let s = &j.state;
        out.push_str(&format!(
            "{:<7} {:<10} {:>6}  {:>5}  {:<12}  {}\n",
            j.id,
            format!("{:?}", s.phase).to_lowercase(),
            s.starts,
            s.steps.map_or("-".to_string(), |n| n.to_string()),
            j.spec.submitter,
            s.note
        ));
    }
    Ok(out)
}
