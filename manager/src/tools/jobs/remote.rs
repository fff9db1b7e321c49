//! Jobs from other hosts: `shoal submit --cluster NAME` (and `jobs`, `cancel`, `fetch`) over the
//! cluster's fabric, answered by `shoal serve --cluster NAME` on one queryable,
//! `shoal/<cluster>/jobs`.
//!
//! Who may ask is the fabric's business: on a deployed station every link is QUIC with mutual
//! TLS under the cluster's CA and zenoh's access control admits only the inventory's
//! certificate names under `shoal/<cluster>/`, so a host without a certificate of the cluster
//! never reaches the queryable. The server records a job's submitter as the name on the
//! certificate of its link to the submitting session (a plain-TCP fabric has none, and says so).
//!
//! A submission is the run file and, for each input file it names, the content's SHA-256: the
//! server answers which contents it lacks (or holds in part, from an upload cut short), and
//! the submitter sends those in pieces of [`CHUNK`] bytes, which the server appends under
//! `store/partial/` and, once whole and hashed, renames into `store/`. Then the job is queued
//! with its inputs linked into its directory, checked as `shoal run` checks a run file. Every
//! request is size-capped before it is decoded, inputs are capped per job
//! (`--max-input-mb`), and a piece is taken only where the disk has room for the rest.
//! Requests are postcard, behind a magic and a version; errors go back as zenoh error replies
//! with the message `shoal run` would print.

use super::{fetch_files, ListedJob, OutputFile, Phase, SentInput, ServeOptions, Spool};
use crate::input::config::{PathKind, RunConfig};
use crate::station::status::Board;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zenoh::{Session, Wait};

/// Bytes of a file in one request or answer.
pub const CHUNK: usize = 1 << 20;
const MAGIC: [u8; 4] = *b"SJOB";
const VERSION: u16 = 1;
/// A run file's bytes at most.
const MAX_RUN_FILE: usize = 256 << 10;
/// A request's bytes at most: a piece and its header.
const MAX_REQUEST: usize = CHUNK + (64 << 10);
/// Room kept free on the server's disk beyond what an upload needs.
const SPARE_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    magic: [u8; 4],
    version: u16,
    body: T,
}

fn seal<T: Serialize>(body: T) -> Result<Vec<u8>> {
    postcard::to_allocvec(&Envelope {
        magic: MAGIC,
        version: VERSION,
        body,
    })
    .map_err(|e| anyhow!("encoding: {e}"))
}

fn open<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct Head {
        magic: [u8; 4],
        version: u16,
    }
    let (head, _) =
        postcard::take_from_bytes::<Head>(bytes).map_err(|_| anyhow!("not a shoal job message"))?;
    if head.magic != MAGIC {
        bail!("not a shoal job message");
    }
    if head.version != VERSION {
        bail!(
            "job protocol version {} (this shoal speaks {VERSION}): use the same shoal release \
             on both hosts",
            head.version
        );
    }
    let env: Envelope<T> =
        postcard::from_bytes(bytes).map_err(|e| anyhow!("a malformed job message: {e}"))?;
    Ok(env.body)
}

/// An input's content as the submitter holds it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Content {
    sha256: String,
    size: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// How many bytes of each content the server holds (its size when whole).
    Have {
        files: Vec<Content>,
    },
    /// A piece of a content, from `offset`.
    Put {
        content: Content,
        offset: u64,
        bytes: Vec<u8>,
    },
    Submit {
        run_file: String,
        inputs: Vec<SentInput>,
        /// The submitting session's zenoh id: its link's certificate names the submitter.
        zid: String,
        /// `user@host` as the submitter says it.
        who: String,
        /// The submission's own random name: a retry after a lost answer queues nothing twice.
        token: String,
    },
    List,
    Cancel {
        id: String,
    },
    Outputs {
        id: String,
    },
    Read {
        id: String,
        name: String,
        offset: u64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Have { held: Vec<u64> },
    Put { held: u64 },
    Queued { id: String },
    Jobs(Vec<ListedJob>),
    Cancel(Phase),
    Outputs(Vec<OutputFile>),
    Bytes(Vec<u8>),
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A file name with no directory in it.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.contains('/')
        && !s.contains('\0')
        && s != "."
        && s != ".."
}

/// The server's store of input contents, by SHA-256.
struct Store {
    dir: PathBuf,
    /// Bytes of inputs one job may bring.
    max: u64,
}

impl Store {
    fn open(spool: &Path, max: u64) -> Result<Store> {
        let dir = spool.join("store");
        std::fs::create_dir_all(dir.join("partial"))
            .with_context(|| format!("job spool {}", spool.display()))?;
        Ok(Store { dir, max })
    }

    fn whole(&self, sha: &str) -> PathBuf {
        self.dir.join(sha)
    }

    fn partial(&self, sha: &str) -> PathBuf {
        self.dir.join("partial").join(sha)
    }

    fn check(&self, c: &Content) -> Result<()> {
        if !is_sha256(&c.sha256) {
            bail!("`{}` is not a SHA-256 in hex", c.sha256);
        }
        if c.size > self.max {
            bail!(
                "an input of {:.1} MB: this server takes at most {:.1} MB of inputs for a job \
                 (shoal serve --max-input-mb)",
                c.size as f64 / 1e6,
                self.max as f64 / 1e6
            );
        }
        Ok(())
    }

    /// Bytes held of `c`: its size when whole, what arrived of it otherwise.
    fn held(&self, c: &Content) -> Result<u64> {
        self.check(c)?;
        if self.whole(&c.sha256).is_file() {
            return Ok(c.size);
        }
        let part = std::fs::metadata(self.partial(&c.sha256)).map_or(0, |m| m.len());
        Ok(if part <= c.size { part } else { 0 })
    }

    /// Appends a piece at `offset`, which must be where the content's partial file ends (a
    /// piece already held is taken again as done: its answer may have been lost). Once whole,
    /// the content is hashed and, when it matches, renamed into the store.
    fn put(&self, c: &Content, offset: u64, bytes: &[u8]) -> Result<u64> {
        let held = self.held(c)?;
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= c.size);
        let Some(end) = end else {
            bail!(
                "a piece of {} bytes from byte {offset} of a {}-byte input",
                bytes.len(),
                c.size
            );
        };
        if end <= held {
            return Ok(held);
        }
        if offset != held {
            bail!("a piece from byte {offset}; the server holds {held} bytes of it");
        }
        let part = self.partial(&c.sha256);
        if let Some((free, _)) = crate::output::room::free_space(&self.dir) {
            let need = c.size - held + SPARE_BYTES;
            if free < need {
                bail!(
                    "no room for it: {:.1} MB free where the job spool is ({}), {:.1} MB needed",
                    free as f64 / 1e6,
                    self.dir.display(),
                    need as f64 / 1e6
                );
            }
        }
        if offset == 0 {
            let _ = std::fs::remove_file(&part);
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .with_context(|| format!("writing {}", part.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", part.display()))?;
        if end < c.size {
            return Ok(end);
        }
        f.sync_all()
            .with_context(|| format!("writing {}", part.display()))?;
        let got = crate::input::identity::sha256(&part)?;
        if got != c.sha256 {
            let _ = std::fs::remove_file(&part);
            bail!(
                "the input arrived with SHA-256 {got}, not {}: send it again",
                c.sha256
            );
        }
        let whole = self.whole(&c.sha256);
        std::fs::rename(&part, &whole).with_context(|| format!("storing {}", whole.display()))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("storing {}", whole.display()))?;
        Ok(end)
    }
}

/// `shoal serve --cluster`'s answers to other hosts, from a thread of its own; dropping it
/// stops them.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The server's session: the cluster's configuration (its certificates and access list),
/// listening where `--listen` says and dialling nobody then (the runs dial the nodes).
fn server_session(opts: &ServeOptions) -> Result<Session> {
    let listen = (!opts.listen.is_empty()).then(|| opts.listen.clone());
    let fabric = shoal_node::net::Fabric {
        config_file: opts.zenoh_config.clone(),
        listen: listen.clone(),
        connect: Vec::new(),
        multicast: None,
    };
    let mut c = fabric.config()?;
    if listen.is_some() {
        c.insert_json5("connect/endpoints", "[]")
            .map_err(|e| anyhow!("zenoh configuration connect/endpoints: {e}"))?;
    }
    zenoh::open(c)
        .wait()
        .map_err(|e| anyhow!("opening the job server's zenoh session: {e}"))
}

impl Listener {
    pub fn start(
        spool: &Spool,
        cluster: &str,
        opts: &ServeOptions,
        board: Arc<Board>,
    ) -> Result<Listener> {
        let ident =
            shoal_common::wire::ident(cluster).map_err(|e| anyhow!("--cluster {cluster}: {e}"))?;
        let session = server_session(opts)?;
        let key = shoal_common::keys::jobs(&ident);
        let queryable = session
            .declare_queryable(&key)
            .wait()
            .map_err(|e| anyhow!("declaring {key}: {e}"))?;
        let server = Server {
            spool: spool.clone(),
            store: Store::open(&spool.dir, opts.max_input_bytes)?,
            session: session.clone(),
            board,
        };
        eprintln!("serve: taking jobs from other hosts on {key}");
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::Builder::new()
            .name("shoal-jobs".into())
            .spawn(move || {
                while !halt.load(Ordering::Relaxed) {
                    match queryable.recv_timeout(Duration::from_millis(200)) {
                        Ok(Some(q)) => server.handle(&q),
                        Ok(None) => {}
                        Err(_) => break,
                    }
                }
                drop(queryable);
                let _ = session.close().wait();
            })
            .map_err(|e| anyhow!("starting the job server's thread: {e}"))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }
}

struct Server {
    spool: Spool,
    store: Store,
    session: Session,
    board: Arc<Board>,
}

impl Server {
    fn handle(&self, q: &zenoh::query::Query) {
        let answer = self.answer(q).and_then(seal);
        let sent = match answer {
            Ok(bytes) => q.reply(q.key_expr().clone(), bytes).wait(),
            Err(e) => q.reply_err(format!("{e:#}")).wait(),
        };
        if let Err(e) = sent {
            eprintln!("warning: serve: answering {}: {e}", q.key_expr());
        }
    }

    fn answer(&self, q: &zenoh::query::Query) -> Result<Answer> {
        let bytes = q
            .payload()
            .map(|p| p.to_bytes())
            .ok_or_else(|| anyhow!("a request with no payload"))?;
        if bytes.len() > MAX_REQUEST {
            bail!("a request of {} bytes: {MAX_REQUEST} at most", bytes.len());
        }
        Ok(match open::<Request>(&bytes)? {
            Request::Have { files } => {
                let total: u64 = files.iter().map(|c| c.size).sum();
                if total > self.store.max {
                    bail!(
                        "the inputs come to {:.1} MB: this server takes at most {:.1} MB of \
                         inputs for a job (shoal serve --max-input-mb)",
                        total as f64 / 1e6,
                        self.store.max as f64 / 1e6
                    );
                }
                let held = files
                    .iter()
                    .map(|c| self.store.held(c))
                    .collect::<Result<_>>()?;
                Answer::Have { held }
            }
            Request::Put {
                content,
                offset,
                bytes,
            } => Answer::Put {
                held: self.store.put(&content, offset, &bytes)?,
            },
            Request::Submit {
                run_file,
                inputs,
                zid,
                who,
                token,
            } => Answer::Queued {
                id: self.submit(&run_file, &inputs, &zid, &who, &token)?,
            },
            Request::List => {
                let progress = self.board.progress();
                let jobs = self.spool.jobs()?;
                Answer::Jobs(
                    jobs.iter()
                        .map(|j| ListedJob::of(j, super::row(j, progress)))
                        .collect(),
                )
            }
            Request::Cancel { id } => Answer::Cancel(self.spool.cancel(&id)?),
            Request::Outputs { id } => Answer::Outputs(self.spool.outputs(&id)?),
            Request::Read { id, name, offset } => {
                Answer::Bytes(self.spool.read_output(&id, &name, offset, CHUNK)?)
            }
        })
    }

    /// Queues a job from another host: checked whole (sizes, names, every input held) and as
    /// `shoal run` checks its run file, before it enters the queue.
    fn submit(
        &self,
        run_file: &str,
        inputs: &[SentInput],
        zid: &str,
        who: &str,
        token: &str,
    ) -> Result<String> {
        if run_file.len() > MAX_RUN_FILE {
            bail!(
                "a run file of {} bytes: {MAX_RUN_FILE} at most",
                run_file.len()
            );
        }
        if token.is_empty() || token.len() > 64 || who.len() > 128 {
            bail!("a submission with a malformed token or submitter");
        }
        let mut total = 0u64;
        for (k, i) in inputs.iter().enumerate() {
            if !is_sha256(&i.sha256) || !is_plain_name(&i.name) || i.written.len() > 4096 {
                bail!("input `{}`: a malformed name or SHA-256", i.written);
            }
            if inputs[..k].iter().any(|o| o.name == i.name) {
                bail!("two inputs named `{}`", i.name);
            }
            total += std::fs::metadata(self.store.whole(&i.sha256)).map_or(0, |m| m.len());
        }
        if total > self.store.max {
            bail!(
                "the inputs come to {:.1} MB: this server takes at most {:.1} MB",
                total as f64 / 1e6,
                self.store.max as f64 / 1e6
            );
        }
        // A retry of a submission whose answer was lost finds its job.
        if let Some(j) = self
            .spool
            .jobs()?
            .into_iter()
            .find(|j| j.spec.token.as_deref() == Some(token))
        {
            return Ok(j.id);
        }
        let submitter = submitter(&self.session, zid, who);
        let store = |sha: &str| {
            let p = self.store.whole(sha);
            p.is_file().then_some(p)
        };
        let id = self
            .spool
            .queue_from(run_file, &submitter, inputs, &store, token)?;
        eprintln!("serve: job {id} queued by {submitter}");
        Ok(id)
    }
}

/// The name on the certificate of this session's link to `zid`; without one, what the
/// submitter says, marked as unchecked.
fn submitter(session: &Session, zid: &str, who: &str) -> String {
    let who: String = who.chars().filter(|c| !c.is_control()).take(64).collect();
    let certificate = session
        .info()
        .links()
        .wait()
        .find(|l| l.zid().to_string() == zid)
        .and_then(|l| l.auth_identifier().map(str::to_string));
    match certificate {
        Some(name) => name,
        None => format!("{who} (no certificate)"),
    }
}

/// Where a client finds the job server.
#[derive(Clone, Debug, Default)]
pub struct RemoteOptions {
    pub cluster: String,
    /// The client's zenoh configuration: its certificate and the server's endpoint.
    pub zenoh_config: Option<PathBuf>,
    pub connect: Vec<String>,
    /// How long to wait for the server to answer at all.
    pub wait: Duration,
}

/// A session that asks a cluster's job server.
pub struct Remote {
    session: Session,
    key: String,
    cluster: String,
    wait: Duration,
}

impl Remote {
    pub fn open(o: &RemoteOptions) -> Result<Remote> {
        let ident = shoal_common::wire::ident(&o.cluster)
            .map_err(|e| anyhow!("--cluster {}: {e}", o.cluster))?;
        let session = shoal_node::net::Fabric {
            config_file: o.zenoh_config.clone(),
            listen: Some(Vec::new()),
            connect: o.connect.clone(),
            multicast: None,
        }
        .open()?;
        Ok(Remote {
            session,
            key: shoal_common::keys::jobs(&ident),
            cluster: o.cluster.clone(),
            wait: o.wait,
        })
    }

    /// Asks once for one answer; asks again while nobody answers, for `self.wait`. `slow`: the
    /// server may take long to answer (a hash of a large input once its last piece came).
    fn ask(&self, req: &Request, slow: bool) -> Result<Answer> {
        let bytes = seal(req)?;
        let deadline = Instant::now() + self.wait;
        let patience = if slow {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(60)
        };
        loop {
            let replies = self
                .session
                .get(&self.key)
                .payload(bytes.clone())
                .timeout(patience)
                .wait()
                .map_err(|e| anyhow!("asking {}: {e}", self.key))?;
            if let Ok(reply) = replies.recv() {
                return match reply.result() {
                    Ok(sample) => open(&sample.payload().to_bytes()),
                    Err(e) => Err(anyhow!(
                        "the job server of cluster `{}`: {}",
                        self.cluster,
                        String::from_utf8_lossy(&e.payload().to_bytes())
                    )),
                };
            }
            if Instant::now() >= deadline {
                bail!(
                    "no job server of cluster `{}` answered on {} within {} s: is `shoal serve \
                     --cluster {}` running, and do --zenoh-config and --connect reach it?",
                    self.cluster,
                    self.key,
                    self.wait.as_secs(),
                    self.cluster
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends the run file at `run_file` and the inputs the server lacks, and queues it there.
    pub fn submit(&self, run_file: &Path, quiet: bool) -> Result<String> {
        let (text, base) = super::read_run_file(run_file)?;
        // Checked here as `shoal run` checks it, noting every input it names.
        let named = std::cell::RefCell::new(Vec::<String>::new());
        RunConfig::from_str_placing(&text, &|p, kind| {
            if kind == PathKind::Input && !named.borrow().iter().any(|n| n == p) {
                named.borrow_mut().push(p.to_string());
            }
            base.join(p)
        })
        .with_context(|| format!("in {}", run_file.display()))?;
        let mut inputs: Vec<SentInput> = Vec::new();
        let mut contents = Vec::new();
        for written in named.into_inner() {
            let path = base.join(&written);
            let size = std::fs::metadata(&path)
                .ok()
                .filter(|m| m.is_file())
                .ok_or_else(|| {
                    anyhow!(
                        "cannot read {} (named in {})",
                        path.display(),
                        run_file.display()
                    )
                })?
                .len();
            let sha256 = crate::input::identity::sha256(&path)?;
            let file = path
                .file_name()
                .map_or("input".into(), |n| n.to_string_lossy().into_owned());
            let mut name = file.clone();
            let mut k = 1;
            while inputs.iter().any(|i| i.name == name) {
                k += 1;
                name = format!("{k}-{file}");
            }
            inputs.push(SentInput {
                written,
                name,
                sha256: sha256.clone(),
            });
            contents.push((path, Content { sha256, size }));
        }
        let Answer::Have { held } = self.ask(
            &Request::Have {
                files: contents.iter().map(|c| c.1.clone()).collect(),
            },
            false,
        )?
        else {
            bail!("the job server answered out of turn");
        };
        for ((path, content), held) in contents.iter().zip(held) {
            self.send(path, content, held, quiet)?;
        }
        let token = shoal_common::keys::hex(&rand_token());
        let who = format!(
            "{}@{}",
            std::env::var("USER").unwrap_or_else(|_| "someone".into()),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_or("somewhere".into(), |h| h.trim().to_string())
        );
        match self.ask(
            &Request::Submit {
                run_file: text,
                inputs,
                zid: self.session.zid().to_string(),
                who,
                token,
            },
            true,
        )? {
            Answer::Queued { id } => Ok(id),
            _ => bail!("the job server answered out of turn"),
        }
    }

    /// Sends `content` (the file at `path`) from byte `held` on.
    fn send(&self, path: &Path, content: &Content, mut held: u64, quiet: bool) -> Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        if held >= content.size {
            if !quiet {
                eprintln!("submit: {} is held there already", path.display());
            }
            return Ok(());
        }
        let mut f =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut buf = vec![0u8; CHUNK];
        while held < content.size {
            f.seek(SeekFrom::Start(held))?;
            let want = CHUNK.min((content.size - held) as usize);
            f.read_exact(&mut buf[..want])
                .with_context(|| format!("reading {}", path.display()))?;
            let last = held + want as u64 == content.size;
            let answer = self.ask(
                &Request::Put {
                    content: content.clone(),
                    offset: held,
                    bytes: buf[..want].to_vec(),
                },
                last,
            )?;
            let Answer::Put { held: now } = answer else {
                bail!("the job server answered out of turn");
            };
            if now <= held {
                bail!(
                    "the job server took nothing of {} at byte {held}",
                    path.display()
                );
            }
            held = now;
        }
        if !quiet {
            eprintln!(
                "submit: sent {} ({:.1} MB)",
                path.display(),
                content.size as f64 / 1e6
            );
        }
        Ok(())
    }

    pub fn jobs(&self) -> Result<Vec<ListedJob>> {
        match self.ask(&Request::List, false)? {
            Answer::Jobs(rows) => Ok(rows),
            _ => bail!("the job server answered out of turn"),
        }
    }

    pub fn cancel(&self, id: &str) -> Result<Phase> {
        match self.ask(&Request::Cancel { id: id.into() }, false)? {
            Answer::Cancel(p) => Ok(p),
            _ => bail!("the job server answered out of turn"),
        }
    }

    /// Copies job `id`'s outputs into `to`, each checked against its SHA-256.
    pub fn fetch(&self, id: &str, to: &Path) -> Result<Vec<PathBuf>> {
        let Answer::Outputs(files) = self.ask(&Request::Outputs { id: id.into() }, true)? else {
            bail!("the job server answered out of turn");
        };
        fetch_files(&files, to, &|name, offset| match self.ask(
            &Request::Read {
                id: id.into(),
                name: name.into(),
                offset,
            },
            false,
        )? {
            Answer::Bytes(b) => Ok(b),
            _ => bail!("the job server answered out of turn"),
        })
    }
}

/// 16 random bytes from the kernel, for a submission's token.
fn rand_token() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut t = [0u8; 16];
    // The system's generator fails only where /dev/urandom is missing: a clock then.
    if ring::rand::SystemRandom::new().fill(&mut t).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        t = now.to_le_bytes();
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_messages_round_trip_and_strangers_are_refused() {
        let req = Request::Cancel {
            id: "000007".into(),
        };
        let b = seal(&req).unwrap();
        assert!(matches!(open::<Request>(&b).unwrap(), Request::Cancel { id } if id == "000007"));
        assert!(open::<Request>(b"SJO").is_err());
        assert!(open::<Request>(b"XJOB\x01\x00\x04").is_err());
        for cut in 0..b.len() {
            let _ = open::<Request>(&b[..cut]);
        }
        let mut other = b.clone();
        other[4] = 9;
        let e = open::<Request>(&other).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn the_store_takes_pieces_in_order_and_keeps_only_what_hashes_right() {
        let dir = std::env::temp_dir().join(format!("shoal-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, 1000).unwrap();
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let sha =
            shoal_common::keys::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        let c = Content {
            sha256: sha.clone(),
            size: data.len() as u64,
        };
        assert_eq!(store.held(&c).unwrap(), 0);
        assert_eq!(store.put(&c, 0, &data[..100]).unwrap(), 100);
        // The same piece again (its answer lost): taken as done.
        assert_eq!(store.put(&c, 0, &data[..100]).unwrap(), 100);
        assert!(store.put(&c, 200, &data[200..]).is_err());
        assert_eq!(store.put(&c, 100, &data[100..]).unwrap(), 300);
        assert_eq!(std::fs::read(store.whole(&sha)).unwrap(), data);
        // A content that does not hash to its name is dropped.
        let bad = Content {
            sha256: "0".repeat(64),
            size: 10,
        };
        let e = store.put(&bad, 0, &[1; 10]).unwrap_err().to_string();
        assert!(e.contains("send it again"), "{e}");
        assert_eq!(store.held(&bad).unwrap(), 0);
        let big = Content {
            sha256: "1".repeat(64),
            size: 2000,
        };
        assert!(store
            .held(&big)
            .unwrap_err()
            .to_string()
            .contains("--max-input-mb"));
        assert!(store
            .held(&Content {
                sha256: "../x".into(),
                size: 1
            })
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
