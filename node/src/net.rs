//! zenoh plumbing shared by the node agent and the manager: session configuration, and asking
//! one question (a `get`) for one decoded answer, dropping and counting what does not decode.

use anyhow::{anyhow, bail, Context, Result};
use shoal_common::wire::{decode, encode, Endpoint, Message, WireError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zenoh::query::ConsolidationMode;
use zenoh::{Config, Session, Wait};

/// How a session finds the others.
#[derive(Clone, Debug, Default)]
pub struct Fabric {
    /// A zenoh JSON5 configuration file (mode, connect/listen endpoints, routers, scouting).
    pub config_file: Option<std::path::PathBuf>,
    /// Endpoints to listen on, replacing the file's (e.g. `tcp/127.0.0.1:0`).
    pub listen: Option<Vec<String>>,
    /// Endpoints to connect to, added to the file's.
    pub connect: Vec<String>,
    /// Multicast scouting on the LAN; `None` keeps the file's (zenoh's default: on).
    pub multicast: Option<bool>,
}

fn json_list(v: &[String]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(",")
    )
}

impl Fabric {
    /// Loopback only: what the embedded default uses.
    pub fn loopback(connect: Vec<String>) -> Fabric {
        Fabric {
            config_file: None,
            listen: Some(vec!["tcp/127.0.0.1:0".into()]),
            connect,
            multicast: Some(false),
        }
    }

    pub fn config(&self) -> Result<Config> {
        let mut c = match &self.config_file {
            Some(p) => Config::from_file(p)
                .map_err(|e| anyhow!("{}: not a zenoh configuration: {e}", p.display()))?,
            None => Config::default(),
        };
        let set = |c: &mut Config, key: &str, v: &str| {
            c.insert_json5(key, v)
                .map_err(|e| anyhow!("zenoh configuration {key} = {v}: {e}"))
        };
        if self.config_file.is_none() {
            set(&mut c, "mode", "\"peer\"")?;
        }
        if let Some(l) = &self.listen {
            set(&mut c, "listen/endpoints", &json_list(l))?;
        }
        if !self.connect.is_empty() {
            let mut all: Vec<String> = c
                .get_json("connect/endpoints")
                .ok()
                .and_then(|j| json_string_list(&j))
                .unwrap_or_default();
            all.extend(self.connect.iter().cloned());
            set(&mut c, "connect/endpoints", &json_list(&all))?;
        }
        if let Some(m) = self.multicast {
            set(
                &mut c,
                "scouting/multicast/enabled",
                if m { "true" } else { "false" },
            )?;
        }
        Ok(c)
    }

    pub fn open(&self) -> Result<Session> {
        let c = self.config()?;
        zenoh::open(c)
            .wait()
            .map_err(|e| anyhow!("opening the zenoh session: {e}"))
    }
}

/// This session's links as `shoal doctor` reports them: the peer, the protocol, and the common
/// name of the certificate the peer showed (verified against the configured CA before the link
/// was made; none on TCP).
pub fn peer_links(session: &Session) -> Vec<shoal_common::wire::PeerLink> {
    use shoal_common::wire::{text, PeerLink};
    session
        .info()
        .links()
        .wait()
        .map(|l| PeerLink {
            peer: text(&l.zid().to_string()),
            protocol: text(l.dst().protocol().as_str()),
            certificate: l.auth_identifier().map(text),
        })
        .collect()
}

/// Whether a configuration admits only peers with a certificate of its CA: links limited to
/// QUIC (or TLS), mutual TLS on, and a root CA named. The ansible roles write such
/// configurations; the embedded default and a plain `--connect tcp/...` are not.
pub fn demands_certificates(c: &Config) -> bool {
    let get = |k: &str| c.get_json(k).unwrap_or_default();
    let protocols = json_string_list(&get("transport/link/protocols")).unwrap_or_default();
    let ca = get("transport/link/tls/root_ca_certificate");
    let ca64 = get("transport/link/tls/root_ca_certificate_base64");
    !protocols.is_empty()
        && protocols.iter().all(|p| p == "quic" || p == "tls")
        && get("transport/link/tls/enable_mtls").trim() == "true"
        && (!matches!(ca.trim(), "" | "null") || !matches!(ca64.trim(), "" | "null"))
}

/// A JSON list of strings, as zenoh prints connect endpoints (no JSON library needed).
fn json_string_list(j: &str) -> Option<Vec<String>> {
    let inner = j.trim().strip_prefix('[')?.strip_suffix(']')?;
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// Checks that a configuration file parses, naming it when it does not.
pub fn check_config_file(p: &Path) -> Result<()> {
    Config::from_file(p)
        .map(|_| ())
        .map_err(|e| anyhow!("{}: not a zenoh configuration: {e}", p.display()))
}

/// A TCP port on loopback that nobody listens on right now, for a session that others in this
/// process must find (zenoh does not report the port it picked for `:0` on loopback).
pub fn free_loopback_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// Counts what an agent refused: bytes that were not a message for it.
#[derive(Debug, Default)]
pub struct Dropped(pub AtomicU64);

impl Dropped {
    pub fn note(&self, what: &str, e: &WireError, quiet: bool) {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        // Say so for the first few and then every thousandth, never flood the log.
        if !quiet && (n <= 3 || n.is_multiple_of(1000)) {
            eprintln!("dropped {what}: {e} ({n} dropped so far)");
        }
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sees every message this process encodes for the fabric, with its encoded size: how
/// `shoal bench --case fabric` counts bytes on the wire. Unset, it costs one atomic load.
pub type Tap = dyn Fn(&shoal_common::wire::Envelope, usize) + Send + Sync;
static TAP: std::sync::OnceLock<Box<Tap>> = std::sync::OnceLock::new();

/// Installs the tap, once per process; false if one is already set.
pub fn set_tap(tap: Box<Tap>) -> bool {
    TAP.set(tap).is_ok()
}

pub fn bytes(me: &Endpoint, m: Message) -> Result<Vec<u8>> {
    let env = me.envelope(m);
    let b = encode(&env).map_err(|e| anyhow!("encoding: {e}"))?;
    if let Some(tap) = TAP.get() {
        tap(&env, b.len());
    }
    Ok(b)
}

/// Who asks, over what: the session, the run (or cluster) the answers must be for, where
/// answers that do not decode are counted, and whether to say so in the log.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub session: &'a Session,
    pub me: &'a Endpoint,
    pub dropped: &'a Dropped,
    pub quiet: bool,
}

impl Caller<'_> {
    /// Asks `key` once and returns the first answer that decodes for `me`. Retries while
    /// nobody answers (a queryable not declared yet), until `patience` runs out; answers that
    /// do not decode are dropped and counted. A reply the answerer marks as an error is an
    /// error.
    pub fn ask(
        &self,
        key: &str,
        payload: Option<&[u8]>,
        patience: Duration,
        abandon: &AtomicBool,
    ) -> Result<Message> {
        let me = self.me;
        ask_decoding(self, key, payload, &|b| decode(b, me), patience, abandon)
    }

    /// [`Caller::ask`] for an answer from a node in no run yet (its hello): `me` is the
    /// cluster's endpoint.
    pub fn ask_any_run(
        &self,
        key: &str,
        payload: &[u8],
        patience: Duration,
        abandon: &AtomicBool,
    ) -> Result<Message> {
        let cluster = &self.me.cluster;
        let dec = |b: &[u8]| shoal_common::wire::decode_any_run(b, cluster);
        ask_decoding(self, key, Some(payload), &dec, patience, abandon)
    }
}

type Decoder<'a> = &'a dyn Fn(&[u8]) -> Result<shoal_common::wire::Envelope, WireError>;

fn ask_decoding(
    c: &Caller,
    key: &str,
    payload: Option<&[u8]>,
    decode: Decoder,
    patience: Duration,
    abandon: &AtomicBool,
) -> Result<Message> {
    let (session, dropped, quiet) = (c.session, c.dropped, c.quiet);
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut get = session
            .get(key)
            .consolidation(ConsolidationMode::None)
            .timeout(left.max(Duration::from_millis(500)));
        if let Some(p) = payload {
            get = get.payload(p.to_vec());
        }
        let replies = get.wait().map_err(|e| anyhow!("asking {key}: {e}"))?;
        loop {
            match replies.recv_timeout(Duration::from_millis(250)) {
                Ok(Some(reply)) => match reply.result() {
                    Ok(sample) => match decode(&sample.payload().to_bytes()) {
                        Ok(env) => return Ok(env.message),
                        Err(e) => dropped.note(&format!("reply on {key}"), &e, quiet),
                    },
                    Err(err) => {
                        bail!(
                            "{key}: {}",
                            String::from_utf8_lossy(&err.payload().to_bytes())
                        )
                    }
                },
                Ok(None) => {
                    if abandon.load(Ordering::Relaxed) {
                        bail!("abandoned while waiting on {key}");
                    }
                }
                Err(_) => break,
            }
        }
        if Instant::now() >= deadline {
            bail!("no answer on {key} within {} s", patience.as_secs());
        }
        // Nobody answered: the queryable may be gone with its run, so look at `abandon` here
        // too, not only while a get is pending.
        if abandon.load(Ordering::Relaxed) {
            bail!("abandoned while waiting on {key}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Decodes a query's payload for `me`, counting it as dropped when it does not decode.
pub fn query_message(
    q: &zenoh::query::Query,
    me: &Endpoint,
    dropped: &Dropped,
    quiet: bool,
) -> Option<Message> {
    let key = q.key_expr().as_str().to_string();
    let Some(p) = q.payload() else {
        dropped.note(
            &format!("query on {key}"),
            &WireError::Malformed("no payload".into()),
            quiet,
        );
        let _ = q.reply_err("a shoal message was expected").wait();
        return None;
    };
    match decode(&p.to_bytes(), me) {
        Ok(env) => Some(env.message),
        Err(e) => {
            dropped.note(&format!("query on {key}"), &e, quiet);
            let _ = q.reply_err(format!("refused: {e}")).wait();
            None
        }
    }
}

pub fn reply(q: &zenoh::query::Query, me: &Endpoint, m: Message) -> Result<()> {
    let b = bytes(me, m)?;
    q.reply(q.key_expr().clone(), b)
        .wait()
        .map_err(|e| anyhow!("replying on {}: {e}", q.key_expr()))
        .context("reply")
}

/// What a partition's conversation with the manager hears ([`converse`]): a question to ask
/// (`keep`: hand its answer on; otherwise the answer is only checked), the end of the
/// questions, or news of a question in flight from zenoh's callbacks.
// A few at a time in a channel; a box per question would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Talk {
    Ask {
        key: String,
        message: Message,
        patience: Duration,
        keep: bool,
    },
    Close,
    Reply(u64, Result<Vec<u8>, String>),
    Finished(u64),
}

/// A question in flight.
struct Flight {
    key: String,
    bytes: Vec<u8>,
    deadline: Instant,
    patience: Duration,
    keep: bool,
    answer: Option<Result<Message>>,
    retry_at: Option<Instant>,
}

/// Asks each question as it comes, a zenoh get of its own, without waiting for the answer to
/// the one before (so a link's round trip limits nothing but the answers' lag), and hands the
/// answers to `answers` in the order the questions came. A question nobody answered is asked
/// again after 50 ms until its patience runs out, as [`Caller::ask`] does. Returns after the first
/// failed question, once every answer after [`Talk::Close`] is in, or when either of `abandon`
/// is set. `tell` is the sending end of `talk`, for the callbacks.
pub fn converse(
    c: &Caller,
    tell: &std::sync::mpsc::Sender<Talk>,
    talk: &std::sync::mpsc::Receiver<Talk>,
    answers: &std::sync::mpsc::Sender<Result<Message>>,
    abandon: [&AtomicBool; 2],
) {
    use std::collections::BTreeMap;
    use std::sync::mpsc::RecvTimeoutError;
    let (session, me, dropped, quiet) = (c.session, c.me, c.dropped, c.quiet);
    // Sends `Finished` when zenoh drops the get's callback, that is when the get is over.
    struct Over(u64, std::sync::mpsc::Sender<Talk>);
    impl Drop for Over {
        fn drop(&mut self) {
            let _ = self.1.send(Talk::Finished(self.0));
        }
    }
    let launch = |seq: u64, f: &Flight| -> Result<()> {
        let (tx, over) = (tell.clone(), Over(seq, tell.clone()));
        let left = f.deadline.saturating_duration_since(Instant::now());
        session
            .get(&f.key)
            .payload(f.bytes.clone())
            .consolidation(ConsolidationMode::None)
            .timeout(left.max(Duration::from_millis(500)))
            .callback(move |reply| {
                let _ = &over;
                let r = match reply.result() {
                    Ok(sample) => Ok(sample.payload().to_bytes().to_vec()),
                    Err(e) => Err(String::from_utf8_lossy(&e.payload().to_bytes()).into_owned()),
                };
                let _ = tx.send(Talk::Reply(seq, r));
            })
            .wait()
            .map_err(|e| anyhow!("asking {}: {e}", f.key))
    };
    let mut flights: BTreeMap<u64, Flight> = BTreeMap::new();
    let (mut next, mut closing) = (0u64, false);
    loop {
        // Answers in the questions' order.
        while let Some(e) = flights.first_entry() {
            if e.get().answer.is_none() {
                break;
            }
            let f = e.remove();
            match f.answer.expect("checked") {
                Ok(_) if !f.keep => {}
                a => {
                    let failed = a.is_err();
                    if answers.send(a).is_err() || failed {
                        return;
                    }
                }
            }
        }
        if (closing && flights.is_empty()) || abandon.iter().any(|a| a.load(Ordering::Relaxed)) {
            return;
        }
        let now = Instant::now();
        for (&seq, f) in flights.iter_mut() {
            if f.retry_at.is_some_and(|t| t <= now) {
                f.retry_at = None;
                if let Err(e) = launch(seq, f) {
                    f.answer = Some(Err(e));
                }
            }
        }
        let event = match talk.recv_timeout(Duration::from_millis(50)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match event {
            Talk::Ask {
                key,
                message,
                patience,
                keep,
            } => {
                let mut f = Flight {
                    key,
                    bytes: Vec::new(),
                    deadline: Instant::now() + patience,
                    patience,
                    keep,
                    answer: None,
                    retry_at: None,
                };
                match bytes(me, message) {
                    Ok(b) => {
                        f.bytes = b;
                        if let Err(e) = launch(next, &f) {
                            f.answer = Some(Err(e));
                        }
                    }
                    Err(e) => f.answer = Some(Err(e)),
                }
                flights.insert(next, f);
                next += 1;
            }
            Talk::Close => closing = true,
            Talk::Reply(seq, r) => {
                let Some(f) = flights.get_mut(&seq).filter(|f| f.answer.is_none()) else {
                    continue;
                };
                match r {
                    Ok(b) => match decode(&b, me) {
                        Ok(env) => f.answer = Some(Ok(env.message)),
                        Err(e) => dropped.note(&format!("reply on {}", f.key), &e, quiet),
                    },
                    Err(text) => f.answer = Some(Err(anyhow!("{}: {text}", f.key))),
                }
            }
            Talk::Finished(seq) => {
                let Some(f) = flights.get_mut(&seq).filter(|f| f.answer.is_none()) else {
                    continue;
                };
                if Instant::now() >= f.deadline {
                    f.answer = Some(Err(anyhow!(
                        "no answer on {} within {} s",
                        f.key,
                        f.patience.as_secs()
                    )));
                } else {
                    f.retry_at = Some(Instant::now() + Duration::from_millis(50));
                }
            }
        }
    }
}

/// A question asked now whose answer is read later ([`ask_later`]): a zenoh get in flight.
pub struct Asked {
    key: String,
    replies: zenoh::handlers::FifoChannelHandler<zenoh::query::Reply>,
}

/// Asks `key` (no payload) without waiting: the answer comes while the caller works.
pub fn ask_later(session: &Session, key: &str, patience: Duration) -> Result<Asked> {
    let replies = session
        .get(key)
        .consolidation(ConsolidationMode::None)
        .timeout(patience)
        .wait()
        .map_err(|e| anyhow!("asking {key}: {e}"))?;
    Ok(Asked {
        key: key.to_string(),
        replies,
    })
}

impl Asked {
    /// The answer, once it comes: `None` when the get ended without one that decodes (the
    /// caller asks again, with [`Caller::ask`]'s retries), an error for a refusal or when abandoned.
    pub fn answer(self, c: &Caller, abandon: &AtomicBool) -> Result<Option<Message>> {
        let (me, dropped, quiet) = (c.me, c.dropped, c.quiet);
        loop {
            match self.replies.recv_timeout(Duration::from_millis(250)) {
                Ok(Some(reply)) => match reply.result() {
                    Ok(sample) => match decode(&sample.payload().to_bytes(), me) {
                        Ok(env) => return Ok(Some(env.message)),
                        Err(e) => dropped.note(&format!("reply on {}", self.key), &e, quiet),
                    },
                    Err(err) => bail!(
                        "{}: {}",
                        self.key,
                        String::from_utf8_lossy(&err.payload().to_bytes())
                    ),
                },
                Ok(None) => {
                    if abandon.load(Ordering::Relaxed) {
                        bail!("abandoned while waiting on {}", self.key);
                    }
                }
                Err(_) => return Ok(None),
            }
        }
    }
}
