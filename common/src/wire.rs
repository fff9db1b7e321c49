//! The byte format between manager and nodes, and the only module that knows it. Every message
//! travels in an [`Envelope`]: magic, protocol version, cluster id, run id, then one [`Message`]
//! (postcard: varint lengths and discriminants, little-endian floats). Identifiers and small
//! headers are fixed-capacity (heapless); decoding checks the size bound first, never panics,
//! and rejects foreign magic, versions, clusters and runs with a typed error, so a receiver can
//! drop and count what is not its own. Golden byte arrays in the tests pin the format: a change
//! there is a deliberate, versioned act. Encodings are not canonical (postcard accepts overlong
//! varints), so nothing may hash or compare raw message bytes; compare decoded values.

use crate::kernel::StepParams;
use crate::mesh::MeshInput;
use serde::{Deserialize, Serialize};

/// First bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"SHOL";
/// Protocol version; bump on any change to the encoding of any message.
pub const VERSION: u16 = 12;
/// Largest envelope accepted, bytes (a field slice of a large partition fits easily).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Capacity of identifiers (cluster and node names).
pub const IDENT_CAPACITY: usize = 32;
/// Capacity of short text fields (architecture, version, adapter).
pub const TEXT_CAPACITY: usize = 64;
/// Most partitions one node can be assigned.
pub const MAX_PARTITIONS_PER_NODE: usize = 64;

pub type Ident = heapless::String<IDENT_CAPACITY>;
pub type Text = heapless::String<TEXT_CAPACITY>;

/// Makes an identifier, refusing names longer than [`IDENT_CAPACITY`] bytes.
pub fn ident(s: &str) -> Result<Ident, WireError> {
    Ident::try_from(s).map_err(|_| WireError::TooLong {
        what: "identifier",
        max: IDENT_CAPACITY,
    })
}

/// Makes a short text field, cutting it at [`TEXT_CAPACITY`] bytes on a character boundary.
pub fn text(s: &str) -> Text {
    let mut cut = s.len().min(TEXT_CAPACITY);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Text::try_from(&s[..cut]).unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub magic: [u8; 4],
    pub version: u16,
    pub cluster: Ident,
    pub run: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub header: Header,
    pub message: Message,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Assignment(Assignment),
    Topology(Topology),
    FieldSlice(FieldSlice),
    ParticleBatch(ParticleBatch),
    StepSummary(StepSummary),
    /// A partition's whole particle state after a step (`from` the partition, `to` unused), sent
    /// when the manager asks for it: the output and the checkpoint are made from it.
    Snapshot(ParticleBatch),
    Control(Control),
    RunSpec(Box<RunSpec>),
    FieldRequest(FieldRequest),
    Ready(Ready),
    Failure(Failure),
    Checkup(Checkup),
    Health(Box<Health>),
    PiRequest(PiRequest),
    PiShare(PiShare),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Assignment(_) => "assignment",
            Message::Topology(_) => "topology",
            Message::FieldSlice(_) => "field slice",
            Message::ParticleBatch(_) => "particle batch",
            Message::StepSummary(_) => "step summary",
            Message::Snapshot(_) => "snapshot",
            Message::Control(_) => "control",
            Message::RunSpec(_) => "run specification",
            Message::FieldRequest(_) => "field request",
            Message::Ready(_) => "ready",
            Message::Failure(_) => "failure",
            Message::Checkup(_) => "checkup",
            Message::Health(_) => "health report",
            Message::PiRequest(_) => "pi request",
            Message::PiShare(_) => "pi share",
        }
    }
}

/// What a node can do, carried by its hello and its liveliness token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    pub arch: Text,
    pub version: Text,
    pub cores: u16,
    pub memory_mib: u32,
    /// The GPU adapter in use, if any.
    pub gpu: Option<Text>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub node: Ident,
    pub capabilities: Capabilities,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub node: Ident,
    pub partitions: heapless::Vec<u32, MAX_PARTITIONS_PER_NODE>,
}

/// A partition's part of the mesh: the global numbers of its owned elements and its halo,
/// each halo element's owning partition, and the nodes they touch. Local indices are positions
/// in `owned` followed by `halo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub partition: u32,
    pub owned: Vec<u32>,
    pub halo: Vec<u32>,
    pub halo_owner: Vec<u32>,
    pub nodes: Vec<u32>,
}

/// One partition's field values at one time index, in mesh numbering. `u`, `v`, `ww` hold
/// `n_layers` values per element of `elements`, element-major; `zeta` one per node of `nodes`,
/// `temp` and `salinity` `n_layers` and `kh` `n_layers + 1` per node; `wet` one per element
/// (FVCOM's `wet_cells`: 1 wet, 0 dry). `elements` and `nodes` say which: a piece of the
/// partition's topology ([`field_piece`]) or what an on-demand request needs. Empty value vectors
/// mean the variable is absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldSlice {
    pub partition: u32,
    pub time_index: u32,
    /// Seconds on the run clock.
    pub time: f64,
    pub n_layers: u16,
    pub elements: Vec<u32>,
    pub nodes: Vec<u32>,
    pub u: Vec<f32>,
    pub v: Vec<f32>,
    pub ww: Vec<f32>,
    pub zeta: Vec<f32>,
    pub kh: Vec<f32>,
    pub temp: Vec<f32>,
    pub salinity: Vec<f32>,
    pub wet: Vec<u8>,
}

/// Bytes of velocity values in one piece of a partition's field slice, by default, for the nodes
/// of a named cluster: a partition's slice at one time goes in pieces, asked for one after
/// another, so that a node holds one piece in flight (received and decoded) instead of its
/// whole slice. 1 MiB keeps a node of the scale benchmark under 400 MB (BENCHMARKS.md).
pub const FIELD_PIECE_BYTES: usize = 1 << 20;

/// The same for the embedded default's in-process nodes, which share the manager's memory:
/// fewer round trips per level (each piece costs one; `shoal bench --case fabric` is 2-3 %
/// slower with 1 MiB pieces).
pub const FIELD_PIECE_BYTES_IN_PROCESS: usize = 4 << 20;

/// Elements in a piece of `bytes` of velocities (u, v and ww, 4 bytes each per layer) on a mesh
/// of `n_layers` layers, at least one.
pub fn field_piece(bytes: usize, n_layers: usize) -> u32 {
    (bytes / (12 * n_layers.max(1))).clamp(1, u32::MAX as usize) as u32
}

/// Pieces of a field slice of `elements` topology elements in pieces of `piece` elements (at
/// least one piece). Piece `k` holds the topology's elements `k * piece..` (owned, then halo)
/// and the nodes of those elements.
pub fn field_pieces(elements: usize, piece: u32) -> usize {
    elements.div_ceil(piece.max(1) as usize).max(1)
}

/// A node's request for field values its halo lacks (invariant 5): the reply is a
/// [`FieldSlice`] holding these elements, their edge neighbours and their nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldRequest {
    pub partition: u32,
    pub time_index: u32,
    pub elements: Vec<u32>,
}

/// Everything a node needs to step a run besides fields and particles: the mesh as the manager
/// read it (building it gives the same [`crate::Mesh`]), the step parameters, the run clock of
/// every time index, and the owner of every element (mesh numbering). A run resumed from a
/// checkpoint (after a node or the manager was lost) starts at `first_step`, not 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub mesh: MeshInput,
    pub params: StepParams,
    pub times: Vec<f64>,
    pub first_step: u32,
    pub n_steps: u32,
    pub duration: f64,
    pub n_particles: u32,
    pub n_parts: u32,
    pub part_of: Vec<u32>,
    pub sort_every: u32,
    /// The optional fields the field slices carry.
    pub carried: crate::fields::Carried,
    /// Elements per piece of a field slice ([`field_pieces`]), at least one.
    pub field_piece: u32,
    /// Where the run asks its partitions to be stepped (`run.device`); each node combines it
    /// with its own setting ([`Device::with`]).
    pub device: Device,
}

/// Where a node steps its particles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Device {
    /// The GPU when its self-test passes and it is faster than the CPU here.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            other => Err(format!("`{other}` is not one of auto, cpu, gpu")),
        }
    }
}

impl Device {
    /// Where a node steps a run: its own setting and the run's (`run.device`) together. Either
    /// saying `cpu` keeps it on the CPU; otherwise either saying `gpu` requires the GPU; else
    /// the node decides.
    pub fn with(self, run: Device) -> Device {
        match (self, run) {
            (Device::Cpu, _) | (_, Device::Cpu) => Device::Cpu,
            (Device::Gpu, _) | (_, Device::Gpu) => Device::Gpu,
            _ => Device::Auto,
        }
    }
}

/// A partition has its topology, fields and particles and can hear its neighbours.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub partition: u32,
    pub node: Ident,
    /// Where the node steps this partition, in a few words ("gpu: <adapter>" or "cpu").
    pub device: Text,
}

/// A partition cannot go on: the manager stops the run and says why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub partition: u32,
    pub reason: String,
}

/// `shoal doctor`'s question to a node. `full` asks for the GPU self-test too (slow the first
/// time); a quick checkup is a clock reading, answered at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkup {
    pub full: bool,
}

/// The GPU as a node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum GpuHealth {
    /// A quick checkup does not look.
    NotAsked,
    /// Built without the `gpu` feature.
    NotBuilt,
    /// No usable adapter, and why.
    Absent {
        why: Text,
    },
    /// The self-test (GPU against CPU kernel) failed on this adapter.
    Failed {
        adapter: Text,
        why: Text,
    },
    Passed {
        adapter: Text,
        max_distance_mm: f32,
    },
}

/// Temperature and throttling, from `/sys/class/thermal`, cpufreq and `vcgencmd`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Thermal {
    /// The hottest thermal zone, milli-degrees Celsius, and its type (`cpu-thermal` on a Pi).
    pub temperature_mc: Option<i32>,
    pub zone: Text,
    /// That zone's lowest passive trip point (where the kernel starts throttling).
    pub passive_trip_mc: Option<i32>,
    /// A CPU cooling device is engaged now (cpufreq capped by the thermal governor).
    pub cooling: bool,
    pub freq_khz: Option<u32>,
    pub max_freq_khz: Option<u32>,
    /// `vcgencmd get_throttled` bits, where the firmware tool exists.
    pub throttled: Option<u32>,
}

/// A node's answer to a [`Checkup`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub node: Ident,
    pub capabilities: Capabilities,
    /// The node's wall clock as it answered, nanoseconds since the Unix epoch.
    pub clock_unix_ns: i64,
    pub uptime_s: u64,
    /// One-minute load average.
    pub load: f32,
    /// The node process's peak resident memory (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// Partitions it is stepping now.
    pub busy: u32,
    pub gpu: GpuHealth,
    pub thermal: Thermal,
    /// The node's zenoh id (hex), by which the doctor finds its own link to the node.
    pub zid: Text,
    /// Every link the node's session has, as the node sees it.
    pub links: Vec<PeerLink>,
    /// Where the node would step partitions and why (`shoal-node --device`, and for a full
    /// checkup the choice it makes with it: self-test, calibration); empty where not asked.
    pub device: String,
}

/// One zenoh link of a node's session: the peer at the other end, the link's protocol (`quic`,
/// `tcp`), and the common name of the certificate the peer authenticated with, if any (QUIC
/// with mutual TLS checks it against the cluster CA before the link exists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerLink {
    pub peer: Text,
    pub protocol: Text,
    pub certificate: Option<Text>,
}

/// `shoal pi`: count the samples `first..first + count` of the seed's Monte Carlo stream that
/// fall in the quarter circle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PiRequest {
    pub seed: u64,
    pub first: u64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PiShare {
    pub node: Ident,
    pub first: u64,
    pub count: u64,
    pub inside: u64,
    pub seconds: f64,
    pub threads: u32,
}

/// Particles moving from one partition to another after `step`, in id order. An empty batch
/// still travels: it tells the receiver that nothing more is coming. A partition's state for the
/// manager is one too (`to` unused).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParticleBatch {
    pub from: u32,
    pub to: u32,
    pub step: u32,
    pub particles: crate::Particles,
}

impl ParticleBatch {
    /// The batch carrying `particles` (sorted by id first) from partition `from` to `to` after
    /// `step`.
    pub fn of(from: u32, to: u32, step: u32, mut particles: crate::Particles) -> ParticleBatch {
        particles.sort_by_id();
        ParticleBatch {
            from,
            to,
            step,
            particles,
        }
    }

    pub fn len(&self) -> usize {
        self.particles.len()
    }
    pub fn is_empty(&self) -> bool {
        self.particles.is_empty()
    }

    /// Checks what decoding cannot know: that every particle is one of the run's
    /// `n_particles`, has a known status, and sits in one of the mesh's `n_elements`. (Array
    /// lengths and increasing ids are checked by [`decode`].) A receiver indexes its mesh with
    /// these elements, so a batch must pass this before it is merged.
    pub fn check_against(&self, n_elements: usize, n_particles: usize) -> Result<(), WireError> {
        let bad = |why| {
            Err(WireError::Inconsistent {
                kind: "particle batch",
                why,
            })
        };
        let p = &self.particles;
        if p.id.last().is_some_and(|&i| i as usize >= n_particles) {
            return bad("a particle id beyond the run's particles");
        }
        if p.element.iter().any(|&e| e as usize >= n_elements) {
            return bad("an element outside the mesh");
        }
        if p.status
            .iter()
            .any(|s| !crate::status::FLAG_VALUES.contains(s))
        {
            return bad("an unknown status");
        }
        Ok(())
    }
}

/// First bytes of a checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"SHCK";
/// Version of the checkpoint layout; bump on any change to [`Checkpoint`] or [`Saved`].
pub const CHECKPOINT_VERSION: u16 = 3;

/// Everything a run needs to go on from the end of step `step`: every particle's state and how
/// many time records the output holds by then. The schedule holds the last one to roll back to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub step: u32,
    pub records: u32,
    pub particles: crate::Particles,
}

/// A checkpoint file: a [`Saved`] state and the hash of the configuration and input it belongs
/// to. The manager writes one at every output time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub magic: [u8; 4],
    pub version: u16,
    pub run_hash: u64,
    pub saved: Saved,
}

/// Encodes a checkpoint (no size bound: it is a local file, not a message).
pub fn encode_checkpoint(c: &Checkpoint) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(c).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Decodes a checkpoint file's bytes: magic and version first, then the layout, then the
/// particle arrays as [`decode`] checks a batch. Never panics.
pub fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, WireError> {
    let c: Checkpoint = take_versioned(bytes, CHECKPOINT_MAGIC, CHECKPOINT_VERSION)?;
    check_particles(&c.saved.particles)?;
    Ok(c)
}

/// Decodes a `T` that starts with `magic` and a varint `version`: the magic first, so foreign
/// bytes are named as such rather than as malformed, then the version before committing to this
/// version's layout of the rest, then the whole, with nothing left over.
fn take_versioned<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    magic: [u8; 4],
    version: u16,
) -> Result<T, WireError> {
    if bytes.len() < 4 || bytes[..4] != magic {
        let mut found = [0u8; 4];
        let n = bytes.len().min(4);
        found[..n].copy_from_slice(&bytes[..n]);
        return Err(WireError::ForeignMagic { found });
    }
    let (found, _) = postcard::take_from_bytes::<u16>(&bytes[4..])
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if found != version {
        return Err(WireError::Version { found });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

/// A partition's account of one step: counts (conservation is checked against them) and
/// reductions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub partition: u32,
    pub step: u32,
    /// The step's counts and reductions over the partition's particles, as the kernel gave them.
    pub tally: crate::kernel::Tally,
    pub sent: u64,
    pub received: u64,
    /// Partitions sent a batch this step (every neighbour, empty or not, then any other
    /// partition a particle reached), with the number of particles in each.
    pub sent_to: Vec<u32>,
    pub sent_counts: Vec<u32>,
    /// Messages this partition's agent dropped as foreign or malformed so far.
    pub dropped: u64,
    /// The node process's peak resident memory (`VmHWM`) so far, KiB.
    pub peak_rss_kib: u64,
    /// Microseconds this partition worked on the step (fields, stepping, sending migrants)
    /// before it said so: beside the step's wall time on the manager, how loaded its node is.
    pub busy_us: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Start,
    Continue,
    Stop,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Control {
    pub step: u32,
    pub command: Command,
    /// The last step the partition may take before it hears from the manager again: it steps
    /// on neighbour to neighbour (every partition merges every other's batch of a step before
    /// the next) and sends its summaries without waiting for their answers, up to this step.
    pub through: u32,
    /// The steps whose state (the particles as they are when the step begins, a
    /// [`Message::Snapshot`]) the manager wants, among those up to `through + 1`.
    pub states: Vec<u32>,
    /// Send the partition's state after `step` once its batches are merged. (Never on the
    /// start: the manager computes a fresh run's first state itself.)
    pub snapshot: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("not a shoal message (magic {found:02x?})")]
    ForeignMagic { found: [u8; 4] },
    #[error("protocol version {found}, this build speaks {VERSION}")]
    Version { found: u16 },
    #[error("message for cluster `{found}`, not this one")]
    ForeignCluster { found: Ident },
    #[error("message for run {found:#x}, not this one")]
    ForeignRun { found: u64 },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("inconsistent {kind}: {why}")]
    Inconsistent {
        kind: &'static str,
        why: &'static str,
    },
    #[error("{what} longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
}

/// Who a receiver is: messages for anyone else are refused.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub cluster: Ident,
    pub run: u64,
}

impl Endpoint {
    pub fn envelope(&self, message: Message) -> Envelope {
        Envelope {
            header: Header {
                magic: MAGIC,
                version: VERSION,
                cluster: self.cluster.clone(),
                run: self.run,
            },
            message,
        }
    }
}

/// Encodes an envelope.
pub fn encode(env: &Envelope) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_allocvec(env).map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes bytes from the network for `me`. Never panics; every refusal is a [`WireError`].
pub fn decode(bytes: &[u8], me: &Endpoint) -> Result<Envelope, WireError> {
    decode_for(bytes, &me.cluster, Some(me.run))
}

/// [`decode`] for a member of `cluster` that is in no run yet (an assignment names the run).
pub fn decode_any_run(bytes: &[u8], cluster: &Ident) -> Result<Envelope, WireError> {
    decode_for(bytes, cluster, None)
}

fn decode_for(bytes: &[u8], cluster: &Ident, run: Option<u64>) -> Result<Envelope, WireError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        });
    }
    let env: Envelope = take_versioned(bytes, MAGIC, VERSION)?;
    if env.header.cluster != *cluster {
        return Err(WireError::ForeignCluster {
            found: env.header.cluster,
        });
    }
    if run.is_some_and(|r| r != env.header.run) {
        return Err(WireError::ForeignRun {
            found: env.header.run,
        });
    }
    check(&env.message)?;
    Ok(env)
}

/// Particles' arrays have one length and their ids increase.
fn check_particles(p: &crate::Particles) -> Result<(), WireError> {
    p.check_layout().map_err(|why| WireError::Inconsistent {
        kind: "particle batch",
        why,
    })
}

/// What a message's layout alone cannot refuse: structure-of-arrays messages must have arrays
/// of one length, and lists must agree with each other.
fn check(m: &Message) -> Result<(), WireError> {
    let bad = |kind, why| Err(WireError::Inconsistent { kind, why });
    match m {
        Message::ParticleBatch(b) | Message::Snapshot(b) => check_particles(&b.particles)?,
        Message::Topology(t) if t.halo.len() != t.halo_owner.len() => {
            return bad("topology", "halo and halo_owner differ in length");
        }
        Message::FieldSlice(f) => {
            if f.u.len() != f.v.len() || (!f.ww.is_empty() && f.ww.len() != f.u.len()) {
                return bad("field slice", "u, v and ww differ in length");
            }
            let nl = f.n_layers as usize;
            if nl == 0 || f.u.len() % nl != 0 {
                return bad(
                    "field slice",
                    "velocity length is not a multiple of the layers",
                );
            }
            if !f.elements.is_empty() && f.u.len() != f.elements.len() * nl {
                return bad("field slice", "velocities do not match its elements");
            }
            let nn = f.zeta.len();
            if (!f.nodes.is_empty() && nn != f.nodes.len())
                || (!f.temp.is_empty() && f.temp.len() != nn * nl)
                || (!f.kh.is_empty() && f.kh.len() != nn * (nl + 1))
                || (!f.salinity.is_empty() && f.salinity.len() != nn * nl)
            {
                return bad("field slice", "node values do not match its nodes");
            }
            if !f.wet.is_empty() && f.wet.len() * nl != f.u.len() {
                return bad("field slice", "wet_cells do not match its elements");
            }
        }
        Message::StepSummary(s) if s.sent_to.len() != s.sent_counts.len() => {
            return bad("step summary", "sent_to and sent_counts differ in length");
        }
        Message::RunSpec(r) => {
            if r.part_of.len() != r.mesh.nv.len() {
                return bad("run specification", "part_of does not cover the elements");
            }
            if r.part_of.iter().any(|p| *p >= r.n_parts) {
                return bad("run specification", "an element's owner is not a partition");
            }
            if r.times.is_empty() {
                return bad("run specification", "no time slices");
            }
            if r.first_step > r.n_steps {
                return bad("run specification", "it starts after its last step");
            }
        }
        Message::PiShare(p) if p.inside > p.count => {
            return bad("pi share", "more samples inside than taken");
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{philox4x32_10, unit_open};

    /// A deterministic source of arbitrary values for the property tests.
    struct Gen(u32, u32);
    impl Gen {
        fn u32(&mut self) -> u32 {
            self.1 += 1;
            philox4x32_10([self.0, self.1, 0, 0], [0xface, 0xfeed])[0]
        }
        fn len(&mut self, max: u32) -> usize {
            (self.u32() % (max + 1)) as usize
        }
        fn f64(&mut self) -> f64 {
            (unit_open(self.u32()) - 0.5) * 1e7
        }
        fn f32s(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f64() as f32).collect()
        }
        fn f64s(&mut self, n: usize) -> Vec<f64> {
            (0..n).map(|_| self.f64()).collect()
        }
        fn u32s(&mut self, n: usize) -> Vec<u32> {
            (0..n).map(|_| self.u32()).collect()
        }
        fn name(&mut self) -> Ident {
            let n = self.len(IDENT_CAPACITY as u32);
            let s: String = (0..n)
                .map(|_| (b'a' + (self.u32() % 26) as u8) as char)
                .collect();
            ident(&s).unwrap()
        }
        fn message(&mut self, kind: u32) -> Message {
            match kind % 16 {
                0 => Message::Hello(Hello {
                    node: self.name(),
                    capabilities: Capabilities {
                        arch: text("aarch64"),
                        version: text("0.1.0"),
                        cores: self.u32() as u16,
                        memory_mib: self.u32(),
                        gpu: if self.u32().is_multiple_of(2) {
                            None
                        } else {
                            Some(text("V3D 4.2.14.0 (Vulkan)"))
                        },
                    },
                }),
                1 => {
                    let n = self.len(MAX_PARTITIONS_PER_NODE as u32);
                    Message::Assignment(Assignment {
                        node: self.name(),
                        partitions: heapless::Vec::from_slice(&self.u32s(n)).unwrap(),
                    })
                }
                2 => {
                    let (a, b, c) = (self.len(500), self.len(100), self.len(600));
                    Message::Topology(Topology {
                        partition: self.u32(),
                        owned: self.u32s(a),
                        halo: self.u32s(b),
                        halo_owner: self.u32s(b),
                        nodes: self.u32s(c),
                    })
                }
                3 => {
                    let nl = 1 + self.len(20);
                    let ne = self.len(50);
                    let nn = self.len(50);
                    let explicit = self.u32().is_multiple_of(2);
                    Message::FieldSlice(FieldSlice {
                        partition: self.u32(),
                        time_index: self.u32(),
                        time: self.f64(),
                        n_layers: nl as u16,
                        elements: if explicit { self.u32s(ne) } else { vec![] },
                        nodes: if explicit { self.u32s(nn) } else { vec![] },
                        u: self.f32s(ne * nl),
                        v: self.f32s(ne * nl),
                        ww: self.f32s(ne * nl),
                        zeta: self.f32s(nn),
                        kh: self.f32s(nn * (nl + 1)),
                        temp: vec![],
                        salinity: self.f32s(nn * nl),
                        wet: vec![1; ne],
                    })
                }
                4 => {
                    let n = self.len(300);
                    let mut id = self.u32s(n);
                    id.sort_unstable();
                    id.dedup();
                    let n = id.len();
                    Message::ParticleBatch(ParticleBatch {
                        from: self.u32(),
                        to: self.u32(),
                        step: self.u32(),
                        particles: crate::Particles {
                            id,
                            x: self.f64s(n),
                            y: self.f64s(n),
                            z: self.f64s(n),
                            element: self.u32s(n),
                            status: (0..n).map(|_| self.u32() as u8 % 8).collect(),
                            release_time: self.f64s(n),
                            happiness: self.f32s(n),
                            fate_time: self.f64s(n),
                        },
                    })
                }
                5 => Message::StepSummary(StepSummary {
                    partition: self.u32(),
                    step: self.u32(),
                    tally: crate::kernel::Tally {
                        active: self.u32() as u64 * 7,
                        pending: 0,
                        exited: self.u32() as u64,
                        bad_field: 1,
                        outside_mesh: 2,
                        settled: 6,
                        dead: 7,
                        stranded: 8,
                        happy: 5,
                        max_happiness: self.f64() as f32,
                        happiest: self.u32(),
                    },
                    sent: 3,
                    received: 4,
                    sent_to: vec![1, 2, 9],
                    sent_counts: vec![0, 40, 1],
                    dropped: self.u32() as u64,
                    peak_rss_kib: self.u32() as u64,
                    busy_us: self.u32() as u64,
                }),
                6 => {
                    let n = self.len(200) as u32;
                    Message::Snapshot(ParticleBatch {
                        from: self.u32(),
                        to: u32::MAX,
                        step: self.u32(),
                        particles: crate::Particles {
                            id: (0..n).map(|i| i * 3).collect(),
                            x: self.f64s(n as usize),
                            y: self.f64s(n as usize),
                            z: self.f64s(n as usize),
                            element: self.u32s(n as usize),
                            status: vec![0; n as usize],
                            release_time: self.f64s(n as usize),
                            happiness: self.f32s(n as usize),
                            fate_time: self.f64s(n as usize),
                        },
                    })
                }
                7 => {
                    let n = self.len(10);
                    Message::Control(Control {
                        step: self.u32(),
                        command: [Command::Start, Command::Continue, Command::Stop][self.len(2)]
                            .clone(),
                        through: self.u32(),
                        states: self.u32s(n),
                        snapshot: self.u32().is_multiple_of(2),
                    })
                }
                8 => {
                    let nl = 1 + self.len(5);
                    let nt = 1 + self.len(20);
                    Message::RunSpec(Box::new(RunSpec {
                        mesh: MeshInput {
                            x: self.f64s(3),
                            y: self.f64s(3),
                            h: self.f32s(3),
                            nv: vec![[0, 1, 2]],
                            nbe: Some(vec![[-1, -1, -1]]),
                            a1u: None,
                            a2u: None,
                            siglay: self.f32s(nl),
                            siglev: self.f32s(nl + 1),
                            n_layers: nl,
                            open_boundary_nodes: vec![1],
                            projection: None,
                        },
                        params: StepParams {
                            dt: self.f64(),
                            integrator: crate::kernel::Integrator::Rk4,
                            horizontal_kh: 0.1,
                            vertical_mixing: crate::kernel::VerticalMixing::Constant(1e-3),
                            sinking_speed: 0.0,
                            seed: self.u32() as u64,
                            happiness: None,
                            behaviour: None,
                        },
                        times: self.f64s(nt),
                        first_step: 0,
                        n_steps: self.u32(),
                        duration: self.f64(),
                        n_particles: self.u32(),
                        n_parts: 1,
                        part_of: vec![0],
                        sort_every: 8,
                        carried: crate::fields::Carried {
                            temp: true,
                            ..Default::default()
                        },
                        field_piece: self.u32(),
                        device: [Device::Auto, Device::Cpu, Device::Gpu][self.len(2)],
                    }))
                }
                9 => {
                    let n = self.len(100);
                    Message::FieldRequest(FieldRequest {
                        partition: self.u32(),
                        time_index: self.u32(),
                        elements: self.u32s(n),
                    })
                }
                10 => Message::Ready(Ready {
                    partition: self.u32(),
                    node: self.name(),
                    device: text("gpu: llvmpipe"),
                }),
                11 => Message::Failure(Failure {
                    partition: self.u32(),
                    reason: format!("{}: no field", self.name()),
                }),
                12 => Message::Checkup(Checkup {
                    full: self.u32().is_multiple_of(2),
                }),
                13 => {
                    let some = self.u32().is_multiple_of(2);
                    Message::Health(Box::new(Health {
                        node: self.name(),
                        capabilities: Capabilities {
                            arch: text("armv7"),
                            version: text("0.1.0"),
                            cores: 4,
                            memory_mib: self.u32(),
                            gpu: None,
                        },
                        clock_unix_ns: self.u32() as i64 * -1_000_003,
                        uptime_s: self.u32() as u64,
                        load: self.f64() as f32,
                        peak_rss_kib: self.u32() as u64,
                        busy: self.u32(),
                        device: "gpu: as configured".into(),
                        gpu: match self.u32() % 5 {
                            0 => GpuHealth::NotAsked,
                            1 => GpuHealth::NotBuilt,
                            2 => GpuHealth::Absent {
                                why: text("no Vulkan loader"),
                            },
                            3 => GpuHealth::Failed {
                                adapter: text("V3D 7.1"),
                                why: text("12 m apart"),
                            },
                            _ => GpuHealth::Passed {
                                adapter: text("llvmpipe"),
                                max_distance_mm: self.f64() as f32,
                            },
                        },
                        thermal: Thermal {
                            temperature_mc: some.then(|| self.u32() as i32),
                            zone: text("cpu-thermal"),
                            passive_trip_mc: some.then_some(80_000),
                            cooling: some,
                            freq_khz: some.then(|| self.u32()),
                            max_freq_khz: Some(2_400_000),
                            throttled: some.then(|| self.u32()),
                        },
                        zid: text("6a1f03c2b94e7d10"),
                        links: (0..self.u32() % 3)
                            .map(|k| PeerLink {
                                peer: text("1b2c3d4e5f607182"),
                                protocol: text(if k == 0 { "quic" } else { "tcp" }),
                                certificate: (k == 0).then(|| text(self.name().as_str())),
                            })
                            .collect(),
                    }))
                }
                14 => Message::PiRequest(PiRequest {
                    seed: self.u32() as u64,
                    first: (self.u32() as u64) << 20,
                    count: self.u32() as u64,
                }),
                _ => {
                    let count = self.u32() as u64;
                    Message::PiShare(PiShare {
                        node: self.name(),
                        first: self.u32() as u64,
                        count,
                        inside: count / 4 * 3,
                        seconds: self.f64().abs(),
                        threads: self.u32() % 64,
                    })
                }
            }
        }
    }

    fn me() -> Endpoint {
        Endpoint {
            cluster: ident("field-station").unwrap(),
            run: 0x5eed_0001,
        }
    }

    #[test]
    fn every_message_round_trips() {
        for case in 0..1200u32 {
            let mut g = Gen(case, 0);
            let env = me().envelope(g.message(case));
            let bytes = encode(&env).unwrap();
            assert_eq!(
                decode(&bytes, &me()).unwrap(),
                env,
                "case {case} ({})",
                env.message.kind()
            );
        }
    }

    /// Layout: magic, version (varint), cluster (length + bytes), run (varint: 0x5eed0001 is
    /// 81 80 b4 f7 05), message discriminant, then the message's fields in order.
    #[test]
    fn golden_bytes_pin_the_format() {
        let hello = me().envelope(Message::Hello(Hello {
            node: ident("pi-4").unwrap(),
            capabilities: Capabilities {
                arch: text("aarch64"),
                version: text("0.1.0"),
                cores: 4,
                memory_mib: 3796,
                gpu: None,
            },
        }));
        let golden_hello: &[u8] = &[
            b'S', b'H', b'O', b'L', 12, 13, b'f', b'i', b'e', b'l', b'd', b'-', b's', b't', b'a',
            b't', b'i', b'o', b'n', 0x81, 0x80, 0xb4, 0xf7, 0x05, 0, 4, b'p', b'i', b'-', b'4', 7,
            b'a', b'a', b'r', b'c', b'h', b'6', b'4', 5, b'0', b'.', b'1', b'.', b'0', 4, 0xd4,
            0x1d, 0,
        ];
        assert_eq!(encode(&hello).unwrap(), golden_hello);
        let control = me().envelope(Message::Control(Control {
            step: 300,
            command: Command::Stop,
            through: 301,
            states: vec![1, 200],
            snapshot: true,
        }));
        // ... 7 (control), step 300, 2 (stop), through 301, states [1, 200], snapshot true.
        let golden_control: &[u8] = &[
            b'S', b'H', b'O', b'L', 12, 13, b'f', b'i', b'e', b'l', b'd', b'-', b's', b't', b'a',
            b't', b'i', b'o', b'n', 0x81, 0x80, 0xb4, 0xf7, 0x05, 7, 0xac, 0x02, 2, 0xad, 0x02, 2,
            1, 0xc8, 0x01, 1,
        ];
        assert_eq!(encode(&control).unwrap(), golden_control);
        assert_eq!(decode(golden_control, &me()).unwrap(), control);
        let pi = me().envelope(Message::PiRequest(PiRequest {
            seed: 7,
            first: 300,
            count: 2,
        }));
        // ... 14 (pi request), seed 7, first 300, count 2.
        let golden_pi: &[u8] = &[
            b'S', b'H', b'O', b'L', 12, 13, b'f', b'i', b'e', b'l', b'd', b'-', b's', b't', b'a',
            b't', b'i', b'o', b'n', 0x81, 0x80, 0xb4, 0xf7, 0x05, 14, 7, 0xac, 0x02, 2,
        ];
        assert_eq!(encode(&pi).unwrap(), golden_pi);
    }

    #[test]
    fn a_particle_batch_costs_little_more_than_its_payload() {
        let n = 1000;
        let b = ParticleBatch {
            from: 1,
            to: 2,
            step: 3,
            particles: crate::Particles {
                id: (0..n).collect(),
                x: vec![1.5; n as usize],
                y: vec![2.5; n as usize],
                z: vec![-3.0; n as usize],
                element: vec![77; n as usize],
                status: vec![0; n as usize],
                release_time: vec![0.0; n as usize],
                happiness: vec![0.5; n as usize],
                fate_time: vec![f64::NAN; n as usize],
            },
        };
        // Each particle's own: ids (varint), x and y, element (varint); z, status, release
        // time, happiness and fate time are one value each here.
        let payload = n as usize * (4 + 2 * 8 + 4);
        let env = me().envelope(Message::ParticleBatch(b.clone()));
        let bytes = encode(&env).unwrap();
        assert!(
            (bytes.len() as f64) < 1.1 * payload as f64,
            "{} bytes for {payload} of payload",
            bytes.len()
        );
        // Decoded, the NaNs of the fate times come back as they went (compared by re-encoding:
        // NaN is not equal to itself).
        let again = |bytes: &[u8]| encode(&decode(bytes, &me()).unwrap()).unwrap();
        assert!(again(&bytes) == bytes);
        // A column of values of their own costs them all; NaNs of one kind are one value.
        let mut varied = b;
        varied.particles.z[7] = -3.5;
        varied.particles.fate_time[9] = 10.0;
        let more = encode(&me().envelope(Message::ParticleBatch(varied.clone()))).unwrap();
        // Each column: its length (2 bytes of varint) and 1 000 values, for one value.
        assert_eq!(more.len(), bytes.len() + 2 * (2 + (n as usize - 1) * 8));
        assert!(again(&more) == more);
        let Message::ParticleBatch(back) = decode(&more, &me()).unwrap().message else {
            panic!("not a batch");
        };
        assert!(back.particles.z == varied.particles.z);
        assert!(back.particles.status == varied.particles.status);
        assert!(back.particles.release_time == varied.particles.release_time);
    }

    #[test]
    fn foreign_and_malformed_bytes_are_refused_by_name() {
        let env = me().envelope(Message::Control(Control {
            step: 1,
            command: Command::Stop,
            through: 1,
            states: vec![],
            snapshot: false,
        }));
        let bytes = encode(&env).unwrap();
        assert!(matches!(
            decode(b"GET / HTTP/1.1", &me()),
            Err(WireError::ForeignMagic { .. })
        ));
        assert!(matches!(
            decode(&[], &me()),
            Err(WireError::ForeignMagic { .. })
        ));
        let mut v1 = bytes.clone();
        v1[4] = 1;
        assert_eq!(decode(&v1, &me()), Err(WireError::Version { found: 1 }));
        assert_eq!(decode_any_run(&bytes, &me().cluster).unwrap(), env);
        let other = Endpoint {
            cluster: ident("elsewhere").unwrap(),
            run: me().run,
        };
        assert!(matches!(
            decode(
                &encode(&other.envelope(env.message.clone())).unwrap(),
                &me()
            ),
            Err(WireError::ForeignCluster { .. })
        ));
        let later = Endpoint {
            cluster: me().cluster,
            run: 7,
        };
        assert_eq!(
            decode(
                &encode(&later.envelope(env.message.clone())).unwrap(),
                &me()
            ),
            Err(WireError::ForeignRun { found: 7 })
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing, &me()),
            Err(WireError::Malformed(_))
        ));
        let bad = me().envelope(Message::ParticleBatch(ParticleBatch {
            from: 0,
            to: 1,
            step: 0,
            particles: crate::Particles {
                id: vec![1, 2],
                x: vec![0.0],
                ..Default::default()
            },
        }));
        assert!(matches!(
            decode(&encode(&bad).unwrap(), &me()),
            Err(WireError::Inconsistent { .. })
        ));
        assert!(ident(&"x".repeat(IDENT_CAPACITY + 1)).is_err());
    }

    #[test]
    fn the_decoder_never_panics_on_truncated_flipped_or_random_bytes() {
        for case in 0..200u32 {
            let mut g = Gen(case + 10_000, 0);
            let bytes = encode(&me().envelope(g.message(case))).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut], &me()).is_err(),
                    "truncation at {cut} accepted"
                );
            }
            for k in 0..bytes.len().min(64) {
                let mut flipped = bytes.clone();
                flipped[k] ^= 1 << (g.u32() % 8);
                // Whatever is accepted survives a re-encoding unchanged. (Bytes need not match:
                // postcard accepts overlong varints such as d6 00 for 0x56.)
                if let Ok(env) = decode(&flipped, &me()) {
                    assert_eq!(
                        decode(&encode(&env).unwrap(), &me()).unwrap(),
                        env,
                        "case {case}, byte {k}"
                    );
                }
            }
            let random: Vec<u8> = (0..g.len(2000)).map(|_| g.u32() as u8).collect();
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&[VERSION as u8, 0]);
            with_magic.extend_from_slice(&random);
            let _ = decode(&random, &me());
            let _ = decode(&with_magic, &me());
        }
    }

    fn batch(ids: Vec<u32>, element: Vec<u32>, status: Vec<u8>) -> ParticleBatch {
        let n = ids.len();
        ParticleBatch {
            from: 0,
            to: 1,
            step: 2,
            particles: crate::Particles {
                id: ids,
                x: vec![1.0; n],
                y: vec![2.0; n],
                z: vec![-1.0; n],
                element,
                status,
                release_time: vec![0.0; n],
                happiness: vec![0.0; n],
                fate_time: vec![3600.0; n],
            },
        }
    }

    #[test]
    fn a_batch_is_checked_against_the_mesh_and_the_run() {
        assert!(batch(vec![0, 5], vec![3, 9], vec![0, 1])
            .check_against(10, 6)
            .is_ok());
        let refused = |b: ParticleBatch| b.check_against(10, 6).unwrap_err().to_string();
        assert!(refused(batch(vec![0, 5], vec![3, 10], vec![0, 0])).contains("outside the mesh"));
        assert!(refused(batch(vec![0, 6], vec![3, 3], vec![0, 0])).contains("particle id"));
        assert!(refused(batch(vec![1], vec![3], vec![200])).contains("unknown status"));
    }

    #[test]
    fn a_checkpoint_round_trips_and_refuses_other_bytes() {
        let c = Checkpoint {
            magic: CHECKPOINT_MAGIC,
            version: CHECKPOINT_VERSION,
            run_hash: 0xdead_beef_0123,
            saved: Saved {
                step: 40,
                records: 3,
                particles: batch(vec![0, 1, 7], vec![1, 2, 3], vec![0, 2, 4]).particles,
            },
        };
        let bytes = encode_checkpoint(&c).unwrap();
        assert_eq!(decode_checkpoint(&bytes).unwrap(), c);
        for cut in 0..bytes.len() {
            assert!(decode_checkpoint(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            decode_checkpoint(b"CDF\x01...."),
            Err(WireError::ForeignMagic { .. })
        ));
        let mut later = bytes.clone();
        later[4] = 9;
        assert_eq!(
            decode_checkpoint(&later),
            Err(WireError::Version { found: 9 })
        );
        let mut g = Gen(5, 0);
        for k in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[k] ^= 1 << (g.u32() % 8);
            let _ = decode_checkpoint(&flipped);
        }
    }
}
