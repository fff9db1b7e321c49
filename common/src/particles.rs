//! Particle state in structure-of-arrays form. A particle is identified by its `id` everywhere
//! (output column, random stream); its index in these vectors changes whenever the owner sorts.

/// What a particle is doing. Written to the output as CF flag values.
pub mod status {
    pub const ACTIVE: u8 = 0;
    /// Not yet released (its release time is later).
    pub const PENDING: u8 = 1;
    /// Left the domain through an open boundary.
    pub const EXITED: u8 = 2;
    /// Met a non-finite velocity or surface; frozen where it was, never moved with NaN.
    pub const BAD_FIELD: u8 = 3;
    /// Its release point is outside the mesh: kept and reported, never tracked.
    pub const OUTSIDE_MESH: u8 = 4;
    /// Settled in a settlement polygon once competent: stops there for good.
    pub const SETTLED: u8 = 5;
    /// Died (mortality, a lethal temperature or salinity, or past competency unsettled):
    /// stays where it died.
    pub const DEAD: u8 = 6;
    /// Its cell is dry, or its step would have ended in a dry cell: it waited where it was, and
    /// moves again once the water is back.
    pub const STRANDED: u8 = 7;
    pub const FLAG_VALUES: [u8; 8] = [
        ACTIVE,
        PENDING,
        EXITED,
        BAD_FIELD,
        OUTSIDE_MESH,
        SETTLED,
        DEAD,
        STRANDED,
    ];
    pub const FLAG_MEANINGS: &str =
        "active pending exited_open_boundary bad_field outside_mesh settled dead stranded";

    /// Whether a particle with this status is stepped (it may move, die or settle).
    #[inline]
    pub fn in_play(s: u8) -> bool {
        s == ACTIVE || s == STRANDED
    }
}

/// Every particle's state, one record from the kernel to the wire, the checkpoint and the
/// output: a new per-particle variable is a field here (and in the push/extend helpers below,
/// and in [`OnWire`]).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(from = "OnWire")]
pub struct Particles {
    pub id: Vec<u32>,
    pub x: Vec<f64>,
    pub y: Vec<f64>,
    /// Metres relative to the model datum, positive up; for a pending particle, metres relative
    /// to the surface at its release.
    pub z: Vec<f64>,
    pub element: Vec<u32>,
    pub status: Vec<u8>,
    /// Seconds on the run clock.
    pub release_time: Vec<f64>,
    pub happiness: Vec<f32>,
    /// Seconds on the run clock when the particle settled or died; NaN until then.
    pub fate_time: Vec<f64>,
}

/// A column on the wire: every value, or the one value every particle shares (compared bit for
/// bit). Most of a state's columns are one value for the whole run or long stretches of it (a
/// single release's time, no fate yet, no happiness, a release depth), so a state or a batch
/// over a slow link is less than half the arrays' size.
#[derive(serde::Serialize)]
enum Column<'a, T> {
    Each(&'a [T]),
    Same(T),
}

#[derive(serde::Deserialize)]
enum OwnedColumn<T> {
    Each(Vec<T>),
    Same(T),
}

/// Bit-for-bit equality, so NaNs (a fate not yet met) count as one value.
trait Bits: Copy {
    fn bits(self) -> u64;
}
impl Bits for f64 {
    fn bits(self) -> u64 {
        self.to_bits()
    }
}
impl Bits for f32 {
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Bits for u8 {
    fn bits(self) -> u64 {
        self as u64
    }
}

impl<'a, T: Bits> Column<'a, T> {
    fn of(v: &'a [T]) -> Column<'a, T> {
        match v.first() {
            Some(&a) if v.iter().all(|b| b.bits() == a.bits()) => Column::Same(a),
            _ => Column::Each(v),
        }
    }
}

impl<T: Clone> OwnedColumn<T> {
    /// The values for `n` particles. A column of another length stays so, for the receiver's
    /// layout check to refuse ([`Particles::check_layout`]); `n` is the explicit id count, so a
    /// shared value never expands past eight bytes for each byte received.
    fn values(self, n: usize) -> Vec<T> {
        match self {
            OwnedColumn::Each(v) => v,
            OwnedColumn::Same(a) => vec![a; n],
        }
    }
}

/// How [`Particles`] travel (postcard, in this order): ids and positions as they are, the columns
/// that are often one value as [`Column`]s.
#[derive(serde::Serialize)]
struct OnWireRef<'a> {
    id: &'a [u32],
    x: &'a [f64],
    y: &'a [f64],
    z: Column<'a, f64>,
    element: &'a [u32],
    status: Column<'a, u8>,
    release_time: Column<'a, f64>,
    happiness: Column<'a, f32>,
    fate_time: Column<'a, f64>,
}

#[derive(serde::Deserialize)]
struct OnWire {
    id: Vec<u32>,
    x: Vec<f64>,
    y: Vec<f64>,
    z: OwnedColumn<f64>,
    element: Vec<u32>,
    status: OwnedColumn<u8>,
    release_time: OwnedColumn<f64>,
    happiness: OwnedColumn<f32>,
    fate_time: OwnedColumn<f64>,
}

impl From<OnWire> for Particles {
    fn from(w: OnWire) -> Particles {
        let n = w.id.len();
        Particles {
            x: w.x,
            y: w.y,
            z: w.z.values(n),
            element: w.element,
            status: w.status.values(n),
            release_time: w.release_time.values(n),
            happiness: w.happiness.values(n),
            fate_time: w.fate_time.values(n),
            id: w.id,
        }
    }
}

impl serde::Serialize for Particles {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        OnWireRef {
            id: &self.id,
            x: &self.x,
            y: &self.y,
            z: Column::of(&self.z),
            element: &self.element,
            status: Column::of(&self.status),
            release_time: Column::of(&self.release_time),
            happiness: Column::of(&self.happiness),
            fate_time: Column::of(&self.fate_time),
        }
        .serialize(s)
    }
}

/// Mutable views of a contiguous range of particles, for one worker.
pub struct ParticlesMut<'a> {
    pub id: &'a [u32],
    pub x: &'a mut [f64],
    pub y: &'a mut [f64],
    pub z: &'a mut [f64],
    pub element: &'a mut [u32],
    pub status: &'a mut [u8],
    pub release_time: &'a [f64],
    pub happiness: &'a mut [f32],
    pub fate_time: &'a mut [f64],
}

impl Particles {
    pub fn len(&self) -> usize {
        self.id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.id.is_empty()
    }

    pub fn with_capacity(n: usize) -> Self {
        Particles {
            id: Vec::with_capacity(n),
            x: Vec::with_capacity(n),
            y: Vec::with_capacity(n),
            z: Vec::with_capacity(n),
            element: Vec::with_capacity(n),
            status: Vec::with_capacity(n),
            release_time: Vec::with_capacity(n),
            happiness: Vec::with_capacity(n),
            fate_time: Vec::with_capacity(n),
        }
    }

    /// Adds a particle with no happiness and no fate yet.
    // One argument per column a caller sets: a record type would be one more copy of the
    // columns, which this type exists to be the only one of.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        id: u32,
        x: f64,
        y: f64,
        z: f64,
        element: u32,
        status: u8,
        release_time: f64,
    ) {
        self.id.push(id);
        self.x.push(x);
        self.y.push(y);
        self.z.push(z);
        self.element.push(element);
        self.status.push(status);
        self.release_time.push(release_time);
        self.happiness.push(0.0);
        self.fate_time.push(f64::NAN);
    }

    /// Whether the arrays have one length and the ids increase (as a batch's and a checkpoint's
    /// must), and if not, why.
    pub fn check_layout(&self) -> Result<(), &'static str> {
        let n = self.id.len();
        let lens = [
            self.x.len(),
            self.y.len(),
            self.z.len(),
            self.element.len(),
            self.status.len(),
            self.release_time.len(),
            self.happiness.len(),
            self.fate_time.len(),
        ];
        if lens.iter().any(|&l| l != n) {
            return Err("arrays differ in length");
        }
        if self.id.windows(2).any(|w| w[0] >= w[1]) {
            return Err("ids are not in increasing order");
        }
        Ok(())
    }

    /// Particle `i` of `other`, appended.
    pub fn push_from(&mut self, other: &Particles, i: usize) {
        self.id.push(other.id[i]);
        self.x.push(other.x[i]);
        self.y.push(other.y[i]);
        self.z.push(other.z[i]);
        self.element.push(other.element[i]);
        self.status.push(other.status[i]);
        self.release_time.push(other.release_time[i]);
        self.happiness.push(other.happiness[i]);
        self.fate_time.push(other.fate_time[i]);
    }

    /// Writes particle `i` of `other` over particle `j`.
    pub fn set_from(&mut self, j: usize, other: &Particles, i: usize) {
        self.id[j] = other.id[i];
        self.x[j] = other.x[i];
        self.y[j] = other.y[i];
        self.z[j] = other.z[i];
        self.element[j] = other.element[i];
        self.status[j] = other.status[i];
        self.release_time[j] = other.release_time[i];
        self.happiness[j] = other.happiness[i];
        self.fate_time[j] = other.fate_time[i];
    }

    /// Every particle of `other`, appended.
    pub fn extend(&mut self, other: &Particles) {
        self.id.extend_from_slice(&other.id);
        self.x.extend_from_slice(&other.x);
        self.y.extend_from_slice(&other.y);
        self.z.extend_from_slice(&other.z);
        self.element.extend_from_slice(&other.element);
        self.status.extend_from_slice(&other.status);
        self.release_time.extend_from_slice(&other.release_time);
        self.happiness.extend_from_slice(&other.happiness);
        self.fate_time.extend_from_slice(&other.fate_time);
    }

    /// Removes the particles at `indices` (strictly increasing) in O(len(indices)): each hole is
    /// filled from the end, so the order of the rest changes.
    pub fn remove_sorted(&mut self, indices: &[usize]) {
        for &i in indices.iter().rev() {
            self.id.swap_remove(i);
            self.x.swap_remove(i);
            self.y.swap_remove(i);
            self.z.swap_remove(i);
            self.element.swap_remove(i);
            self.status.swap_remove(i);
            self.release_time.swap_remove(i);
            self.happiness.swap_remove(i);
            self.fate_time.swap_remove(i);
        }
    }

    /// Splits into views of at most `chunk` particles each.
    pub fn chunks_mut(&mut self, chunk: usize) -> Vec<ParticlesMut<'_>> {
        let chunk = chunk.max(1);
        let mut out = Vec::with_capacity(self.len().div_ceil(chunk));
        let mut id = &self.id[..];
        let mut x = &mut self.x[..];
        let mut y = &mut self.y[..];
        let mut z = &mut self.z[..];
        let mut element = &mut self.element[..];
        let mut status = &mut self.status[..];
        let mut release_time = &self.release_time[..];
        let mut happiness = &mut self.happiness[..];
        let mut fate_time = &mut self.fate_time[..];
        while !id.is_empty() {
            let n = chunk.min(id.len());
            let (a, b) = id.split_at(n);
            id = b;
            let (xa, xb) = std::mem::take(&mut x).split_at_mut(n);
            x = xb;
            let (ya, yb) = std::mem::take(&mut y).split_at_mut(n);
            y = yb;
            let (za, zb) = std::mem::take(&mut z).split_at_mut(n);
            z = zb;
            let (ea, eb) = std::mem::take(&mut element).split_at_mut(n);
            element = eb;
            let (sa, sb) = std::mem::take(&mut status).split_at_mut(n);
            status = sb;
            let (ra, rb) = release_time.split_at(n);
            release_time = rb;
            let (ha, hb) = std::mem::take(&mut happiness).split_at_mut(n);
            happiness = hb;
            let (fa, fb) = std::mem::take(&mut fate_time).split_at_mut(n);
            fate_time = fb;
            out.push(ParticlesMut {
                id: a,
                x: xa,
                y: ya,
                z: za,
                element: ea,
                status: sa,
                release_time: ra,
                happiness: ha,
                fate_time: fa,
            });
        }
        out
    }

    /// Sorts by id (the order particles travel in).
    pub fn sort_by_id(&mut self) {
        if self.id.windows(2).all(|w| w[0] < w[1]) {
            return;
        }
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        order.sort_unstable_by_key(|&i| self.id[i as usize]);
        self.permute(&order, &mut Vec::new());
    }

    /// Reorders every array by `order` (a permutation of indices), using `scratch` so that no
    /// allocation happens on the hot path.
    pub fn permute(&mut self, order: &[u32], scratch: &mut Vec<u64>) {
        fn apply<T>(v: &mut [T], order: &[u32], scratch: &mut Vec<u64>)
        where
            T: Copy + Into<u64> + FromBits,
        {
            scratch.clear();
            scratch.extend(order.iter().map(|&i| v[i as usize].into()));
            for (d, s) in v.iter_mut().zip(scratch.iter()) {
                *d = T::from_bits(*s);
            }
        }
        apply(&mut self.id, order, scratch);
        apply_f64(&mut self.x, order, scratch);
        apply_f64(&mut self.y, order, scratch);
        apply_f64(&mut self.z, order, scratch);
        apply(&mut self.element, order, scratch);
        apply(&mut self.status, order, scratch);
        apply_f64(&mut self.release_time, order, scratch);
        apply_f64(&mut self.fate_time, order, scratch);
        scratch.clear();
        scratch.extend(
            order
                .iter()
                .map(|&i| self.happiness[i as usize].to_bits() as u64),
        );
        for (d, s) in self.happiness.iter_mut().zip(scratch.iter()) {
            *d = f32::from_bits(*s as u32);
        }
    }
}

trait FromBits {
    fn from_bits(b: u64) -> Self;
}
impl FromBits for u32 {
    fn from_bits(b: u64) -> Self {
        b as u32
    }
}
impl FromBits for u8 {
    fn from_bits(b: u64) -> Self {
        b as u8
    }
}

fn apply_f64(v: &mut [f64], order: &[u32], scratch: &mut Vec<u64>) {
    scratch.clear();
    scratch.extend(order.iter().map(|&i| v[i as usize].to_bits()));
    for (d, s) in v.iter_mut().zip(scratch.iter()) {
        *d = f64::from_bits(*s);
    }
}
