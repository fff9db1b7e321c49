//! The particle kernels: sample the flow at a point, advance one particle one step (Euler or
//! RK4, each stage at its own time), add random walks, and keep it in the water (land edges
//! reflect, open edges retire, surface and bottom reflect). Pure functions of their arguments:
//! the caller owns threads, ordering and I/O.

use crate::behaviour::{chance, chance_per_hour, fate_draws, swim, Band, Behaviour, Sun};
use crate::fields::{Bracket, FieldLevel, Window, COEF_DX, COEF_DY};
use crate::mesh::{is_element, Mesh, Walk, LAND, OPEN};
use crate::particles::{status, ParticlesMut};
use crate::rng::{draw, normal_pair, unit_open, Stream};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Integrator {
    Euler,
    #[default]
    Rk4,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum VerticalMixing {
    #[default]
    None,
    /// A constant diffusivity, m^2/s.
    Constant(f64),
    /// `kh` from the model output, at sigma levels.
    FromFile,
}

/// The seed's "happiest particle": happiness is a Gaussian of the distance from a preferred
/// temperature, and a particle is happy at or above `threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Happiness {
    pub preferred_temperature: f64,
    pub tolerance: f64,
    pub threshold: f64,
}

impl Happiness {
    #[inline]
    pub fn of(&self, temperature: f64) -> f32 {
        let d = (temperature - self.preferred_temperature) / self.tolerance;
        (-d * d).exp() as f32
    }
}

/// Everything a step needs besides fields and particles. `dt` is negative for a backward run:
/// advection, sinking and swimming run back in time, random walks spread as usual.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepParams {
    pub dt: f64,
    pub integrator: Integrator,
    /// Horizontal diffusivity, m^2/s (0 for none).
    pub horizontal_kh: f64,
    pub vertical_mixing: VerticalMixing,
    /// m/s, positive downward; negative values rise.
    pub sinking_speed: f64,
    pub seed: u64,
    pub happiness: Option<Happiness>,
    /// Larval behaviour (stages, migration, mortality, settlement); `None`: passive particles.
    pub behaviour: Option<Box<Behaviour>>,
}

/// The run clock at the start of step `s`: `s * dt`, no further than `duration` from the start,
/// in the run's direction (backward runs count down from 0).
#[inline]
pub fn step_time(s: u32, dt: f64, duration: f64) -> f64 {
    if dt >= 0.0 {
        (s as f64 * dt).min(duration)
    } else {
        -(s as f64 * -dt).min(duration)
    }
}

/// What one step of the kernel needs besides the particles: the mesh, the field levels that
/// bracket the step, the run's parameters (`params.dt` is this step's length), the model time
/// the step starts at and the step's number (for the random streams).
#[derive(Clone, Copy)]
pub struct StepContext<'a> {
    pub mesh: &'a Mesh,
    pub window: Window<'a>,
    pub params: &'a StepParams,
    pub t: f64,
    pub step: u32,
}

impl<'a> StepContext<'a> {
    pub fn new(
        mesh: &'a Mesh,
        window: Window<'a>,
        params: &'a StepParams,
        t: f64,
        step: u32,
    ) -> Self {
        StepContext {
            mesh,
            window,
            params,
            t,
            step,
        }
    }
}

/// What the flow is at a point.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub u: f64,
    pub v: f64,
    pub w: f64,
    pub zeta: f64,
    pub depth: f64,
    pub sigma: f64,
}

#[inline(always)]
fn lerp(a: f64, b: f64, w: f64) -> f64 {
    a + (b - a) * w
}

/// Index `k` and weight of `k + 1` for a value between the decreasing sigma values `col`;
/// beyond either end the nearest value is used unchanged.
#[inline(always)]
fn sigma_bracket(col: &[f32], sigma: f64) -> (usize, f64) {
    let n = col.len();
    if n == 1 || sigma >= col[0] as f64 {
        return (0, 0.0);
    }
    if sigma <= col[n - 1] as f64 {
        return (n - 1, 0.0);
    }
    let mut k = 0;
    while k + 2 < n && (col[k + 1] as f64) > sigma {
        k += 1;
    }
    let (a, b) = (col[k] as f64, col[k + 1] as f64);
    (k, (a - sigma) / (a - b))
}

#[inline(always)]
fn surface(lvl: &FieldLevel, e: usize, w: &[f64; 3]) -> f64 {
    let z = &lvl.zeta_elem[lvl.slot(e)];
    w[0] * z[0] as f64 + w[1] * z[1] as f64 + w[2] * z[2] as f64
}

/// Free surface and total depth at a point of element `e`, time-interpolated.
#[inline(always)]
fn water_column(
    mesh: &Mesh,
    a: &FieldLevel,
    b: &FieldLevel,
    wt: f64,
    e: usize,
    w: &[f64; 3],
) -> (f64, f64) {
    let zeta = lerp(surface(a, e, w), surface(b, e, w), wt);
    let h = mesh.h_elem(e);
    let h = w[0] * h[0] as f64 + w[1] * h[1] as f64 + w[2] * h[2] as f64;
    (zeta, (h + zeta).max(1e-3))
}

/// Velocity and water column at (x, y, z) in element `e` at time `t`. Element fields use the
/// linear reconstruction (exact for linear flows), linear in sigma between layer centres and
/// linear in time.
#[inline]
pub fn sample(mesh: &Mesh, window: Window, t: f64, x: f64, y: f64, z: f64, e: u32) -> Sample {
    sample_in(mesh, &window.at(t), x, y, z, e)
}

/// [`sample`] with the time bracket already found.
#[inline(always)]
pub fn sample_in(mesh: &Mesh, br: &Bracket, x: f64, y: f64, z: f64, e: u32) -> Sample {
    let w = mesh.weights(e as usize, x, y);
    sample_weighted(mesh, br, x, y, z, e, &w)
}

/// [`sample_in`] with the point's barycentric weights in `e` already known.
#[inline(always)]
fn sample_weighted(
    mesh: &Mesh,
    br: &Bracket,
    x: f64,
    y: f64,
    z: f64,
    e: u32,
    w: &[f64; 3],
) -> Sample {
    let pos = column_position(mesh, br, x, y, z, e, w);
    pos.sample(velocity_at(mesh, br, &pos))
}

/// Where a point sits in its element and water column: the first half of [`sample`].
#[derive(Clone, Copy, Debug, Default)]
struct ColumnPosition {
    e: usize,
    dx: f32,
    dy: f32,
    k: usize,
    k1: usize,
    wk: f32,
    zeta: f64,
    depth: f64,
    sigma: f64,
}

impl ColumnPosition {
    #[inline(always)]
    fn sample(&self, vel: [f64; 3]) -> Sample {
        Sample {
            u: vel[0],
            v: vel[1],
            w: vel[2],
            zeta: self.zeta,
            depth: self.depth,
            sigma: self.sigma,
        }
    }
}

#[inline(always)]
fn column_position(
    mesh: &Mesh,
    br: &Bracket,
    x: f64,
    y: f64,
    z: f64,
    e: u32,
    w: &[f64; 3],
) -> ColumnPosition {
    let e = e as usize;
    let (xc, yc) = mesh.centroid(e);
    let (dx, dy) = (x - xc, y - yc);
    let (zeta, depth) = water_column(mesh, br.a, br.b, br.wt, e, w);
    let sigma = ((z - zeta) / depth).clamp(-1.0, 0.0);
    let nl = mesh.vertical.n_layers;
    let (k, wk) = match mesh.vertical.even_layers {
        Some((first, _)) => {
            // Same answer as the search, by arithmetic: sigma = first + (k + wk) * step.
            let f = ((sigma - first) * mesh.vertical.inv_layer_step).clamp(0.0, (nl - 1) as f64);
            let k = (f as usize).min(nl - 2);
            (k, f - k as f64)
        }
        None => sigma_bracket(&mesh.siglay_elem(e), sigma),
    };
    ColumnPosition {
        e,
        dx: dx as f32,
        dy: dy as f32,
        k,
        k1: (k + 1).min(nl - 1),
        wk: wk as f32,
        zeta,
        depth,
        sigma,
    }
}

/// The second half of [`sample`]: blend the two layers' coefficient blocks (f32),
/// evaluate at the offset, and leave the time interpolation to f64 so slowly varying flows
/// integrate exactly. Short, so that a loop over particles keeps many loads in flight.
#[inline(always)]
fn velocity_at(mesh: &Mesh, br: &Bracket, p: &ColumnPosition) -> [f64; 3] {
    let nl = mesh.vertical.n_layers;
    let at = |lvl: &FieldLevel| -> [f64; 3] {
        let base = lvl.slot(p.e) * nl;
        let (top, bot) = (&lvl.coef[base + p.k], &lvl.coef[base + p.k1]);
        let mut r = [0f32; 3];
        for j in 0..3 {
            let c0 = top[j] + (bot[j] - top[j]) * p.wk;
            let (x, y) = (COEF_DX + j, COEF_DY + j);
            let cx = top[x] + (bot[x] - top[x]) * p.wk;
            let cy = top[y] + (bot[y] - top[y]) * p.wk;
            r[j] = c0 + cx * p.dx + cy * p.dy;
        }
        [r[0] as f64, r[1] as f64, r[2] as f64]
    };
    let va = at(br.a);
    if br.wt == 0.0 {
        return va;
    }
    let vb = at(br.b);
    let wt = br.wt;
    [
        lerp(va[0], vb[0], wt),
        lerp(va[1], vb[1], wt),
        lerp(va[2], vb[2], wt),
    ]
}

/// A batch's points: positions, host elements and barycentric weights there, lane by lane.
#[derive(Clone, Copy)]
struct Points {
    x: [f64; BATCH],
    y: [f64; BATCH],
    z: [f64; BATCH],
    e: [u32; BATCH],
    w: [[f64; 3]; BATCH],
}

impl Points {
    const EMPTY: Points = Points {
        x: [0.0; BATCH],
        y: [0.0; BATCH],
        z: [0.0; BATCH],
        e: [0; BATCH],
        w: [[0.0; 3]; BATCH],
    };
}

/// [`sample`] for the first `n` points of a batch, on the kernel variant this process runs
/// ([`crate::simd`]): every variant gives the same bits.
#[inline(always)]
fn sample_batch(mesh: &Mesh, br: &Bracket, n: usize, at: &Points, out: &mut [Sample; BATCH]) {
    match crate::simd::chosen() {
        crate::simd::Kernel::Scalar => sample_batch_scalar(mesh, br, n, at, out),
        crate::simd::Kernel::Lanes128 => sample_lanes(mesh, br, n, at, out),
        crate::simd::Kernel::Avx2 => sample_lanes_avx2(mesh, br, n, at, out),
    }
}

/// The scalar reference of [`sample_batch`], in two passes: first every point's column
/// position (the geometry and surface loads), then every point's coefficient blocks.
#[inline(always)]
fn sample_batch_scalar(
    mesh: &Mesh,
    br: &Bracket,
    n: usize,
    at: &Points,
    out: &mut [Sample; BATCH],
) {
    let mut pos = [ColumnPosition::default(); BATCH];
    for (j, p) in pos.iter_mut().enumerate().take(n) {
        *p = column_position(mesh, br, at.x[j], at.y[j], at.z[j], at.e[j], &at.w[j]);
    }
    for (o, p) in out.iter_mut().zip(&pos).take(n) {
        *o = p.sample(velocity_at(mesh, br, p));
    }
}

/// [`sample_batch`] in lanes, on the baseline vector instructions (SSE2 on x86-64, NEON on
/// aarch64).
#[inline(never)]
fn sample_lanes(mesh: &Mesh, br: &Bracket, n: usize, at: &Points, out: &mut [Sample; BATCH]) {
    sample_lanes_body(mesh, br, n, at, out)
}

/// [`sample_batch`] in lanes on AVX2 (chosen only where the CPU has it: [`crate::simd::set`]).
#[inline(never)]
fn sample_lanes_avx2(mesh: &Mesh, br: &Bracket, n: usize, at: &Points, out: &mut [Sample; BATCH]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(
            mesh: &Mesh,
            br: &Bracket,
            n: usize,
            at: &Points,
            out: &mut [Sample; BATCH],
        ) {
            sample_lanes_body(mesh, br, n, at, out)
        }
        debug_assert!(crate::simd::Kernel::Avx2.available());
        // SAFETY: the AVX2 variant is chosen only on a CPU that has AVX2 (`simd::set`,
        // `simd::Kernel::parse`).
        unsafe { avx2(mesh, br, n, at, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    sample_lanes_body(mesh, br, n, at, out)
}

/// Where each lane's point sits for the coefficient blocks: its two layers, the weight of
/// the lower one, and the offset from the element's centroid.
struct LayerLanes {
    k: [usize; BATCH],
    k1: [usize; BATCH],
    wk: [f32; BATCH],
    dx: [f32; BATCH],
    dy: [f32; BATCH],
}

impl LayerLanes {
    /// The velocity of the first `n` lanes at one level, as `velocity_at` does it; `base[j]`
    /// is where lane j's element's blocks start in the level's `coef`.
    #[inline(always)]
    fn velocity(&self, lvl: &FieldLevel, base: &[usize; BATCH], n: usize) -> [[f64; BATCH]; 3] {
        let mut r = [[0.0; BATCH]; 3];
        for j in 0..n {
            let (t, b) = (
                &lvl.coef[base[j] + self.k[j]],
                &lvl.coef[base[j] + self.k1[j]],
            );
            let v = crate::simd::block_velocity(t, b, self.wk[j], self.dx[j], self.dy[j]);
            for (rc, v) in r.iter_mut().zip(v) {
                rc[j] = v;
            }
        }
        r
    }
}

/// The lanes of [`sample_batch`]: each point's loads one by one (its element's centroid,
/// surface and bathymetry, gathered into lane arrays), the water column's arithmetic (the
/// barycentric blends, the time interpolation, the sigma bracket by arithmetic) over all
/// [`BATCH`] lanes at once as fixed-width loops that compile to vector instructions, then each
/// point's coefficient blocks with their nine blends at once ([`LayerLanes::velocity`]), and
/// the time interpolation of the velocities over all lanes. Each lane does exactly the
/// operations of [`column_position`] and [`velocity_at`] in their order; lanes past `n`
/// compute on zeros and are dropped.
#[inline(always)]
fn sample_lanes_body(mesh: &Mesh, br: &Bracket, n: usize, at: &Points, out: &mut [Sample; BATCH]) {
    let nl = mesh.vertical.n_layers;
    let (mut xc, mut yc) = ([0.0; BATCH], [0.0; BATCH]);
    let mut w = [[0.0; BATCH]; 3];
    let mut za = [[0.0; BATCH]; 3];
    let mut zb = [[0.0; BATCH]; 3];
    let mut hn = [[0.0; BATCH]; 3];
    let (mut base_a, mut base_b) = ([0usize; BATCH], [0usize; BATCH]);
    // Particles sorted by element come in runs: a lane in its predecessor's element reuses
    // what that one loaded.
    let mut held = None;
    for j in 0..n {
        let e = at.e[j] as usize;
        let (c, sa, sb) = match held {
            Some((he, c, sa, sb)) if he == e => (c, sa, sb),
            _ => {
                let c = mesh.centroid(e);
                let (sa, sb) = (br.a.slot(e), br.b.slot(e));
                held = Some((e, c, sa, sb));
                (c, sa, sb)
            }
        };
        (xc[j], yc[j]) = c;
        (base_a[j], base_b[j]) = (sa * nl, sb * nl);
        let (a, b) = (&br.a.zeta_elem[sa], &br.b.zeta_elem[sb]);
        let h = mesh.h_elem(e);
        for c in 0..3 {
            w[c][j] = at.w[j][c];
            za[c][j] = a[c] as f64;
            zb[c][j] = b[c] as f64;
            hn[c][j] = h[c] as f64;
        }
    }
    // The water column: as `water_column` and `column_position`, lane by lane.
    let wt = br.wt;
    let (mut dx, mut dy) = ([0f32; BATCH], [0f32; BATCH]);
    let (mut zeta, mut depth, mut sigma) = ([0.0; BATCH], [0.0; BATCH], [0.0; BATCH]);
    for j in 0..BATCH {
        dx[j] = (at.x[j] - xc[j]) as f32;
        dy[j] = (at.y[j] - yc[j]) as f32;
        let sa = w[0][j] * za[0][j] + w[1][j] * za[1][j] + w[2][j] * za[2][j];
        let sb = w[0][j] * zb[0][j] + w[1][j] * zb[1][j] + w[2][j] * zb[2][j];
        let z = lerp(sa, sb, wt);
        let h = w[0][j] * hn[0][j] + w[1][j] * hn[1][j] + w[2][j] * hn[2][j];
        zeta[j] = z;
        depth[j] = (h + z).max(1e-3);
        sigma[j] = ((at.z[j] - z) / depth[j]).clamp(-1.0, 0.0);
    }
    let (mut k, mut k1, mut wk) = ([0usize; BATCH], [0usize; BATCH], [0f32; BATCH]);
    match mesh.vertical.even_layers {
        Some((first, _)) => {
            let (inv, top) = (mesh.vertical.inv_layer_step, (nl - 1) as f64);
            // `f as usize` of the reference, over all lanes as `f as i32` (the same integer:
            // f lies in [0, nl - 1], and NaN gives 0 either way).
            let (mut f, mut ki) = ([0.0; BATCH], [0i32; BATCH]);
            let last = nl as i32 - 2;
            for j in 0..BATCH {
                f[j] = ((sigma[j] - first) * inv).clamp(0.0, top);
                ki[j] = (f[j] as i32).min(last);
                wk[j] = (f[j] - ki[j] as f64) as f32;
            }
            for j in 0..n {
                k[j] = ki[j] as usize;
            }
        }
        None => {
            for j in 0..n {
                let (kj, wj) = sigma_bracket(&mesh.siglay_elem(at.e[j] as usize), sigma[j]);
                k[j] = kj;
                wk[j] = wj as f32;
            }
        }
    }
    for j in 0..n {
        k1[j] = (k[j] + 1).min(nl - 1);
    }
    // The coefficient blocks: as `velocity_at`, lane by lane; each lane's nine blends at once.
    // Every lane's blocks asked for before the first is used: their loads overlap instead of
    // each lane waiting for its own.
    for j in 0..n {
        crate::simd::prefetch(&br.a.coef[base_a[j] + k[j]]);
        crate::simd::prefetch(&br.a.coef[base_a[j] + k1[j]][8]);
        if wt != 0.0 {
            crate::simd::prefetch(&br.b.coef[base_b[j] + k[j]]);
            crate::simd::prefetch(&br.b.coef[base_b[j] + k1[j]][8]);
        }
    }
    let lanes = LayerLanes { k, k1, wk, dx, dy };
    let mut vel = lanes.velocity(br.a, &base_a, n);
    if wt != 0.0 {
        let vb = lanes.velocity(br.b, &base_b, n);
        for (va, vb) in vel.iter_mut().zip(&vb) {
            for j in 0..BATCH {
                va[j] = lerp(va[j], vb[j], wt);
            }
        }
    }
    for (j, o) in out.iter_mut().enumerate().take(n) {
        *o = Sample {
            u: vel[0][j],
            v: vel[1][j],
            w: vel[2][j],
            zeta: zeta[j],
            depth: depth[j],
            sigma: sigma[j],
        };
    }
}

/// Free surface and depth only (for releases, output and reflection).
#[inline]
pub fn column_at(mesh: &Mesh, window: Window, t: f64, x: f64, y: f64, e: u32) -> (f64, f64) {
    let (a, b, wt) = window.bracket(t);
    let w = mesh.weights(e as usize, x, y);
    water_column(mesh, a, b, wt, e as usize, &w)
}

/// A node field of `lvl` (`values`, by node slot) given at sigma values `cols` (by mesh node),
/// interpolated at a point.
// The innermost interpolation, called six times a sample point: plain arguments keep it free
// of a struct built and taken apart on the hot path.
#[allow(clippy::too_many_arguments)]
#[inline]
fn node_profile_at(
    mesh: &Mesh,
    e: usize,
    w: &[f64; 3],
    sigma: f64,
    per_node: usize,
    cols: &[f32],
    lvl: &FieldLevel,
    values: &[f32],
) -> f64 {
    let mut out = 0.0;
    for (&node, &wi) in mesh.nv[e].iter().zip(w) {
        let n = node as usize;
        let c = mesh.vertical.column(n);
        let col = &cols[c * per_node..(c + 1) * per_node];
        let (k, wk) = sigma_bracket(col, sigma);
        let k1 = (k + 1).min(per_node - 1);
        let s = lvl.node(n);
        let val = &values[s * per_node..(s + 1) * per_node];
        out += wi * lerp(val[k] as f64, val[k1] as f64, wk);
    }
    out
}

/// Temperature at a point, or `None` when the fields carry none.
pub fn temperature_at(
    mesh: &Mesh,
    window: Window,
    t: f64,
    x: f64,
    y: f64,
    z: f64,
    e: u32,
) -> Option<f64> {
    layered_at(mesh, window, t, (x, y, z, e), |l| l.temp.as_deref())
}

/// Salinity at a point, or `None` when the fields carry none.
pub fn salinity_at(
    mesh: &Mesh,
    window: Window,
    t: f64,
    x: f64,
    y: f64,
    z: f64,
    e: u32,
) -> Option<f64> {
    layered_at(mesh, window, t, (x, y, z, e), |l| l.salinity.as_deref())
}

/// A node field at sigma layer centres, at a point (x, y, z, element).
fn layered_at(
    mesh: &Mesh,
    window: Window,
    t: f64,
    (x, y, z, e): (f64, f64, f64, u32),
    field: impl Fn(&FieldLevel) -> Option<&[f32]>,
) -> Option<f64> {
    let (a, b, wt) = window.bracket(t);
    let (ta, tb) = (field(a)?, field(b)?);
    let e = e as usize;
    let w = mesh.weights(e, x, y);
    let (zeta, depth) = water_column(mesh, a, b, wt, e, &w);
    let sigma = ((z - zeta) / depth).clamp(-1.0, 0.0);
    let nl = mesh.vertical.n_layers;
    let cols = &mesh.vertical.siglay_node;
    let va = node_profile_at(mesh, e, &w, sigma, nl, cols, a, ta);
    let vb = node_profile_at(mesh, e, &w, sigma, nl, cols, b, tb);
    Some(lerp(va, vb, wt))
}

/// Vertical diffusivity and its z-derivative at a point, at the step's start.
pub fn vertical_kh(cx: &StepContext, x: f64, y: f64, z: f64, e: u32) -> (f64, f64) {
    let (mesh, window, t) = (cx.mesh, cx.window, cx.t);
    match cx.params.vertical_mixing {
        VerticalMixing::None => (0.0, 0.0),
        VerticalMixing::Constant(k) => (k, 0.0),
        VerticalMixing::FromFile => {
            let (a, b, wt) = window.bracket(t);
            let (Some(ka), Some(kb)) = (a.kh.as_ref(), b.kh.as_ref()) else {
                return (0.0, 0.0);
            };
            let e = e as usize;
            let w = mesh.weights(e, x, y);
            let (zeta, depth) = water_column(mesh, a, b, wt, e, &w);
            let nlev = mesh.vertical.n_levels();
            let cols = &mesh.vertical.siglev_node;
            // Diffusivity at the point and half a level away, for a centred derivative that
            // stays one-sided at the surface and bottom.
            let sigma = ((z - zeta) / depth).clamp(-1.0, 0.0);
            let k_at = |s: f64| {
                lerp(
                    node_profile_at(mesh, e, &w, s, nlev, cols, a, ka),
                    node_profile_at(mesh, e, &w, s, nlev, cols, b, kb),
                    wt,
                )
            };
            let ds = 0.5 / (nlev as f64 - 1.0).max(1.0);
            let (s0, s1) = ((sigma - 0.5 * ds).max(-1.0), (sigma + 0.5 * ds).min(0.0));
            let dkdz = (k_at(s1) - k_at(s0)) / ((s1 - s0) * depth);
            (k_at(sigma).max(0.0), dkdz)
        }
    }
}

/// Where tracing a horizontal move ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Moved {
    /// Inside the mesh at (x, y) in `element` (after any reflections).
    Inside { x: f64, y: f64, element: u32 },
    /// Left through an open boundary at (x, y), last in `element`.
    Exited { x: f64, y: f64, element: u32 },
}

/// How far beyond an edge's line, in metres, an end point may lie and still be on the edge: far
/// above the rounding of positions a million metres from the origin (about 1e-10 m), far below
/// any distance that matters.
const ON_EDGE_M: f64 = 1e-6;

/// How far past a vertex, in metres, a path through it is followed to find the element it
/// enters: far below any element's size, far above the rounding of positions.
const PAST_VERTEX_M: f64 = 1e-4;

/// Moves a particle in a straight line from (x0, y0) in `e0` to (x1, y1), element by element,
/// reflecting the rest of the path off land edges and stopping at open edges.
#[inline(always)]
pub fn trace(mesh: &Mesh, e0: u32, x0: f64, y0: f64, x1: f64, y1: f64) -> Moved {
    // Fast path: the walk finds the end point without touching the boundary.
    if let Walk::Found(e) = mesh.walk(e0, x1, y1) {
        return Moved::Inside {
            x: x1,
            y: y1,
            element: e,
        };
    }
    trace_segment(mesh, e0, x0, y0, x1, y1)
}

/// [`trace`] element by element, for the moves the walk alone cannot finish: out of its way so
/// that the fast path stays small where it is inlined.
#[cold]
#[inline(never)]
fn trace_segment(mesh: &Mesh, e0: u32, x0: f64, y0: f64, x1: f64, y1: f64) -> Moved {
    let (mut ax, mut ay) = (x0, y0);
    let (mut bx, mut by) = (x1, y1);
    let mut e = e0;
    let mut came_from = u32::MAX;
    for _ in 0..4 * crate::mesh::MAX_WALK {
        let g = mesh.geom(e as usize);
        let wa = g.weights(ax, ay);
        let wb = g.weights(bx, by);
        if wb.iter().all(|w| *w >= -1e-12) {
            return Moved::Inside {
                x: bx,
                y: by,
                element: e,
            };
        }
        // The edge through which the segment leaves: smallest positive crossing parameter.
        let mut best: Option<(usize, f64)> = None;
        for i in 0..3 {
            if wb[i] < 0.0 && (mesh.nbe[e as usize][i] != came_from || came_from == u32::MAX) {
                let denom = wa[i] - wb[i];
                let s = if denom > 0.0 {
                    (wa[i] / denom).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                if best.is_none_or(|(_, bs)| s < bs) {
                    best = Some((i, s));
                }
            }
        }
        // Where the path leaves, and whether it does so at a vertex, whose far side decides.
        let (mut i, cx, cy, at_vertex) = match best {
            Some((i, s)) => {
                let (cx, cy) = (ax + s * (bx - ax), ay + s * (by - ay));
                // A boundary edge crossed at one of its ends: the path may only graze the
                // coast at that vertex (past a land corner) and go on in the water.
                let at_end = !is_element(mesh.nbe[e as usize][i]) && {
                    let wc = g.weights(cx, cy);
                    [(i + 1) % 3, (i + 2) % 3]
                        .iter()
                        .any(|&k| wc[k] / g.b[k].hypot(g.c[k]) < ON_EDGE_M)
                };
                (i, cx, cy, at_end)
            }
            None => {
                // Only the edge we came in by has the end point beyond it. A straight segment
                // that crossed that edge's line cannot cross it back, so either the end point
                // lies on the edge within rounding (it is here), or the segment never entered
                // this element's inside: it passed through an end of that edge, a vertex, into
                // an element of the vertex's fan that shares no edge with the one we came from.
                // (Stopping here, as this once did, left particles at the vertex for good:
                // every later step started at it and passed through it again.)
                let j = mesh.edge_to(e, came_from);
                if j == 3 {
                    return Moved::Inside {
                        x: ax,
                        y: ay,
                        element: e,
                    };
                }
                if -wb[j] / g.b[j].hypot(g.c[j]) < ON_EDGE_M {
                    return Moved::Inside {
                        x: bx,
                        y: by,
                        element: e,
                    };
                }
                (j, ax, ay, true)
            }
        };
        if at_vertex {
            // Step a hair past the vertex along the path and find the element there (a short
            // walk around the fan): the path goes on from it, or, when that point lies beyond
            // the coast, it meets land (or open water) at the vertex.
            match past_vertex(mesh, e, (cx, cy), (bx, by)) {
                (px, py, Walk::Found(f)) => {
                    e = f;
                    ax = px;
                    ay = py;
                    came_from = u32::MAX;
                    continue;
                }
                (_, _, Walk::Boundary { element, edge }) => {
                    e = element;
                    i = edge as usize;
                }
                (_, _, Walk::GaveUp(_)) if best.is_none() => {
                    return Moved::Inside {
                        x: ax,
                        y: ay,
                        element: e,
                    };
                }
                (_, _, Walk::GaveUp(_)) => {}
            }
        }
        let next = mesh.nbe[e as usize][i];
        if is_element(next) {
            came_from = e;
            e = next;
            ax = cx;
            ay = cy;
            continue;
        }
        if next == OPEN {
            return Moved::Exited {
                x: cx,
                y: cy,
                element: e,
            };
        }
        debug_assert_eq!(next, LAND);
        // Reflect the remainder of the path in the edge's line.
        let n = mesh.nv[e as usize];
        let (p, q) = (n[(i + 1) % 3] as usize, n[(i + 2) % 3] as usize);
        let (ex, ey) = (mesh.x[q] - mesh.x[p], mesh.y[q] - mesh.y[p]);
        let len = ex.hypot(ey);
        let (nx, ny) = (ey / len, -ex / len);
        let d = (bx - cx) * nx + (by - cy) * ny;
        bx -= 2.0 * d * nx;
        by -= 2.0 * d * ny;
        // Restart from just inside the crossing point, moving toward the centroid.
        let inset = 1e-9;
        let (xc, yc) = mesh.centroid(e as usize);
        ax = cx + (xc - cx) * inset;
        ay = cy + (yc - cy) * inset;
        came_from = u32::MAX;
    }
    // Pathological geometry: stay at the last safe point.
    let inside = mesh.walk(e, ax, ay);
    match inside {
        Walk::Found(el) => Moved::Inside {
            x: ax,
            y: ay,
            element: el,
        },
        _ => Moved::Inside {
            x: mesh.centroid(e as usize).0,
            y: mesh.centroid(e as usize).1,
            element: e,
        },
    }
}

/// A path from `a` (at a vertex of element `e`) toward `b`, followed [`PAST_VERTEX_M`] past the
/// vertex: that point, and where a walk from `e` finds it (the element of the vertex's fan the
/// path enters, or the boundary edge beyond which it lies).
fn past_vertex(mesh: &Mesh, e: u32, a: (f64, f64), b: (f64, f64)) -> (f64, f64, Walk) {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    if dx == 0.0 && dy == 0.0 {
        return (a.0, a.1, Walk::GaveUp(e));
    }
    let hair = PAST_VERTEX_M / dx.hypot(dy);
    let (px, py) = (a.0 + dx * hair, a.1 + dy * hair);
    (px, py, mesh.walk_around_coast(e, px, py))
}

/// The element to evaluate an intermediate stage in, and the point's weights there: where the
/// walk ends, or the last element before the boundary (the reconstruction extrapolates a little
/// past it).
#[inline(always)]
fn stage_element(mesh: &Mesh, from: u32, x: f64, y: f64) -> (u32, [f64; 3]) {
    match mesh.walk_weights(from, x, y) {
        (Walk::Found(e), w) | (Walk::Boundary { element: e, .. }, w) => (e, w),
        (Walk::GaveUp(e), _) => {
            let e = mesh.locate_indexed(x, y).unwrap_or(e);
            (e, mesh.weights(e as usize, x, y))
        }
    }
}

/// Reflects z into the water column [-h, zeta].
#[inline(always)]
fn reflect_vertical(z: f64, zeta: f64, depth: f64) -> f64 {
    let bottom = zeta - depth;
    let mut z = z;
    for _ in 0..4 {
        if z > zeta {
            z = 2.0 * zeta - z;
        } else if z < bottom {
            z = 2.0 * bottom - z;
        } else {
            return z;
        }
    }
    z.clamp(bottom, zeta)
}

/// Outcome of one particle's step, folded into the step's summary (which carries it as it is).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub active: u64,
    pub pending: u64,
    pub exited: u64,
    pub bad_field: u64,
    pub outside_mesh: u64,
    pub settled: u64,
    pub dead: u64,
    pub stranded: u64,
    pub happy: u64,
    /// Highest happiness and the id holding it (ties go to the smaller id).
    pub max_happiness: f32,
    pub happiest: u32,
}

impl Tally {
    pub fn empty() -> Self {
        Tally {
            max_happiness: f32::NEG_INFINITY,
            happiest: u32::MAX,
            ..Default::default()
        }
    }

    pub fn total(&self) -> u64 {
        self.active
            + self.pending
            + self.exited
            + self.bad_field
            + self.outside_mesh
            + self.settled
            + self.dead
            + self.stranded
    }

    /// Combining is associative and commutative, so any split of the work gives the same tally.
    pub fn merge(mut self, o: Tally) -> Tally {
        self.active += o.active;
        self.pending += o.pending;
        self.exited += o.exited;
        self.bad_field += o.bad_field;
        self.outside_mesh += o.outside_mesh;
        self.settled += o.settled;
        self.dead += o.dead;
        self.stranded += o.stranded;
        self.happy += o.happy;
        if o.max_happiness > self.max_happiness
            || (o.max_happiness == self.max_happiness && o.happiest < self.happiest)
        {
            self.max_happiness = o.max_happiness;
            self.happiest = o.happiest;
        }
        self
    }

    #[inline]
    fn add(&mut self, params: &StepParams, id: u32, s: u8, hp: f32) {
        match s {
            status::ACTIVE => self.active += 1,
            status::PENDING => self.pending += 1,
            status::EXITED => self.exited += 1,
            status::BAD_FIELD => self.bad_field += 1,
            status::SETTLED => self.settled += 1,
            status::DEAD => self.dead += 1,
            status::STRANDED => self.stranded += 1,
            _ => self.outside_mesh += 1,
        }
        if let (Some(h), status::ACTIVE) = (params.happiness, s) {
            if hp as f64 >= h.threshold {
                self.happy += 1;
            }
            if hp > self.max_happiness || (hp == self.max_happiness && id < self.happiest) {
                self.max_happiness = hp;
                self.happiest = id;
            }
        }
    }
}

/// Releases particle `i` if it is pending and due at `t` (`forward`: its release time is at or
/// before `t`; backward: at or after): its release depth is relative to the surface then.
#[inline]
fn release_one(mesh: &Mesh, window: Window, t: f64, forward: bool, p: &mut ParticlesMut, i: usize) {
    let due = if forward {
        p.release_time[i] <= t
    } else {
        p.release_time[i] >= t
    };
    if p.status[i] == status::PENDING && due {
        let e = p.element[i];
        let (zeta, depth) = column_at(mesh, window, t, p.x[i], p.y[i], e);
        if !(zeta.is_finite() && depth.is_finite()) {
            // No free surface where it is released (a fill value in the file): quarantined
            // where it is, never moved with NaN.
            p.status[i] = status::BAD_FIELD;
            return;
        }
        p.z[i] = (zeta + p.z[i]).clamp(zeta - depth, zeta);
        // Released on a dry cell, it waits there for the water.
        p.status[i] = if wet_at(&window.at(t), e as usize) {
            status::ACTIVE
        } else {
            status::STRANDED
        };
    }
}

/// Releases every pending particle due at `t` (so a snapshot at `t` shows them); `forward` is
/// the run's direction.
pub fn release_due(mesh: &Mesh, window: Window, t: f64, forward: bool, mut p: ParticlesMut) {
    for i in 0..p.id.len() {
        release_one(mesh, window, t, forward, &mut p, i);
    }
}

/// Whether element `e` is wet at the bracket's time: dry in either level that counts (the
/// earlier unless the time is the later's, the later unless it is the earlier's) makes it dry.
#[inline]
fn wet_at(br: &Bracket, e: usize) -> bool {
    (br.wt >= 1.0 || br.a.is_wet(e)) && (br.wt <= 0.0 || br.b.is_wet(e))
}

/// How a particle moves vertically by itself this step: sinking (m/s, positive down) and, while
/// migrating, the band it swims toward and its speed.
#[derive(Clone, Copy, Debug, Default)]
struct Vertical {
    sinking: f64,
    swim: Option<(Band, f64)>,
}

/// What behaviour decides before particle `i` moves: `Err(())` when it dies now (lethal water,
/// mortality, or past competency unsettled), else its own vertical motion.
#[inline]
fn before_move(
    cx: &StepContext,
    b: &Behaviour,
    sun: Option<&Sun>,
    p: &ParticlesMut,
    i: usize,
) -> Result<Vertical, ()> {
    let (mesh, window, params, t, step) = (cx.mesh, cx.window, cx.params, cx.t, cx.step);
    let age = (t - p.release_time[i]).abs();
    if let Some(s) = &b.settlement {
        if s.die_after_competency && age > s.competency.1 {
            return Err(());
        }
    }
    let (x, y, z, e) = (p.x[i], p.y[i], p.z[i], p.element[i]);
    let outside = |v: Option<f64>, r: Option<(f64, f64)>| match (v, r) {
        (Some(v), Some((lo, hi))) => !(v >= lo && v <= hi),
        _ => false,
    };
    if b.temperature_range.is_some()
        && outside(
            temperature_at(mesh, window, t, x, y, z, e),
            b.temperature_range,
        )
    {
        return Err(());
    }
    if b.salinity_range.is_some()
        && outside(salinity_at(mesh, window, t, x, y, z, e), b.salinity_range)
    {
        return Err(());
    }
    let stage = b.stage(age);
    if stage.mortality_rate > 0.0 {
        let (u, _) = fate_draws(params.seed, p.id[i], step);
        if u < chance(stage.mortality_rate, params.dt) {
            return Err(());
        }
    }
    let swim = match (&stage.migration, sun) {
        (Some(m), Some(sun)) => {
            let (sp, cp, lon) = match (b.place, mesh.sky(e as usize)) {
                (_, Some(s)) => (s[0] as f64, s[1] as f64, s[2] as f64),
                (Some(pl), None) => {
                    let phi = pl.latitude.to_radians();
                    (phi.sin(), phi.cos(), pl.longitude.to_radians())
                }
                (None, None) => (0.0, 1.0, 0.0),
            };
            let band = if sun.sin_elevation(sp, cp, lon) > 0.0 {
                m.day
            } else {
                m.night
            };
            Some((band, m.swim_speed))
        }
        _ => None,
    };
    Ok(Vertical {
        sinking: stage.sinking_speed,
        swim,
    })
}

/// After a move that ended in the water: a competent particle inside a settlement area settles
/// (at once, or with the configured chance per hour).
#[inline]
fn after_move(
    b: &Behaviour,
    params: &StepParams,
    t1: f64,
    step: u32,
    p: &mut ParticlesMut,
    i: usize,
) {
    let Some(s) = &b.settlement else { return };
    let age = (t1 - p.release_time[i]).abs();
    if age < s.competency.0 || age > s.competency.1 {
        return;
    }
    if s.area_at(p.x[i], p.y[i]).is_none() {
        return;
    }
    let settles = match s.probability_per_hour {
        None => true,
        Some(ph) => fate_draws(params.seed, p.id[i], step).1 < chance_per_hour(ph, params.dt),
    };
    if settles {
        p.status[i] = status::SETTLED;
        p.fate_time[i] = t1;
    }
}

/// Particles advanced together, stage by stage: their stage computations are independent, so the
/// processor overlaps them instead of waiting on one particle's chain of dependent loads.
pub const BATCH: usize = 16;

/// Advances every particle of `p` from time `t` to `t + dt`. `step` numbers the step for the
/// random streams. Pending particles due at `t` are released first, those due before `t + dt`
/// at its end.
pub fn advance(cx: &StepContext, p: ParticlesMut) -> Tally {
    advance_touching(cx, p, &mut ())
}

/// Told of every element whose field values a step reads beyond the particle's own starting
/// element: each RK stage's element and the element it ends in. A node that holds only part of
/// the fields uses it to learn which elements a quarantined particle needed; `()` ignores it
/// and costs nothing.
pub trait Touch {
    fn touch(&mut self, element: u32);
}

impl Touch for () {
    #[inline(always)]
    fn touch(&mut self, _: u32) {}
}

impl Touch for Vec<u32> {
    fn touch(&mut self, element: u32) {
        self.push(element);
    }
}

/// [`advance`], telling `touched` of the elements read (see [`Touch`]).
pub fn advance_touching<T: Touch>(cx: &StepContext, mut p: ParticlesMut, touched: &mut T) -> Tally {
    let (mesh, window, params, t, step) = (cx.mesh, cx.window, cx.params, cx.t, cx.step);
    let mut tally = Tally::empty();
    let dt = params.dt;
    let forward = dt >= 0.0;
    let behaviour = params.behaviour.as_deref();
    let sun = behaviour
        .filter(|b| b.migrates())
        .map(|b| Sun::at(b.clock_origin + t));
    let start = window.at(t);
    let passive = Vertical {
        sinking: params.sinking_speed,
        swim: None,
    };
    let mut batch = [0usize; BATCH];
    let mut own = [passive; BATCH];
    let mut nb = 0;
    for i in 0..p.id.len() {
        release_one(mesh, window, t, forward, &mut p, i);
        if p.status[i] == status::PENDING {
            release_one(mesh, window, t + dt, forward, &mut p, i);
            continue;
        }
        if !status::in_play(p.status[i]) {
            continue;
        }
        // Stranded or not, a particle can die.
        let own_motion = match behaviour {
            None => passive,
            Some(b) => match before_move(cx, b, sun.as_ref(), &p, i) {
                Ok(v) => v,
                Err(()) => {
                    p.status[i] = status::DEAD;
                    p.fate_time[i] = t;
                    continue;
                }
            },
        };
        if !wet_at(&start, p.element[i] as usize) {
            // Its cell is dry: it waits where it is.
            p.status[i] = status::STRANDED;
            continue;
        }
        own[nb] = own_motion;
        batch[nb] = i;
        nb += 1;
        if nb == BATCH {
            advance_batch(cx, &mut p, &batch, &own, touched);
            nb = 0;
        }
    }
    advance_batch(cx, &mut p, &batch[..nb], &own, touched);
    if let Some(b) = behaviour.filter(|b| b.settlement.is_some()) {
        for i in 0..p.id.len() {
            // Only what moved this step settles: not a particle released at its end.
            let released = if forward {
                p.release_time[i] <= t
            } else {
                p.release_time[i] >= t
            };
            if p.status[i] == status::ACTIVE && released {
                after_move(b, params, t + dt, step, &mut p, i);
            }
        }
    }
    for i in 0..p.id.len() {
        let s = p.status[i];
        if let (Some(h), status::ACTIVE) = (params.happiness, s) {
            let temp = temperature_at(mesh, window, t + dt, p.x[i], p.y[i], p.z[i], p.element[i]);
            p.happiness[i] = temp.map(|tp| h.of(tp)).unwrap_or(0.0);
        }
        tally.add(params, p.id[i], s, p.happiness[i]);
    }
    tally
}

/// The tally of particles as they stand (the counts and reductions [`advance`] returns for
/// them after a step), for a node that re-stepped some of them.
pub fn tally_of(params: &StepParams, id: &[u32], state: &[u8], happiness: &[f32]) -> Tally {
    let mut tally = Tally::empty();
    for i in 0..id.len() {
        tally.add(params, id[i], state[i], happiness[i]);
    }
    tally
}

/// One step for the active particles at indices `batch` of `p`, each with its own vertical
/// motion `own[j]`. Each particle's arithmetic is exactly that of a particle stepped alone; only
/// the interleaving differs.
fn advance_batch<T: Touch>(
    cx: &StepContext,
    p: &mut ParticlesMut,
    batch: &[usize],
    own: &[Vertical; BATCH],
    touched: &mut T,
) {
    let (mesh, window, params, t) = (cx.mesh, cx.window, cx.params, cx.t);
    let n = batch.len();
    let dt = params.dt;
    let mut start = Points::EMPTY;
    for (j, &i) in batch.iter().enumerate() {
        start.x[j] = p.x[i];
        start.y[j] = p.y[i];
        start.z[j] = p.z[i];
        start.e[j] = p.element[i];
    }
    let mut s1 = [Sample::default(); BATCH];
    let br = window.at(t);
    for j in 0..n {
        start.w[j] = mesh.weights(start.e[j] as usize, start.x[j], start.y[j]);
    }
    sample_batch(mesh, &br, n, &start, &mut s1);
    let (x0, y0, z0, e0) = (&start.x, &start.y, &start.z, &start.e);
    // Own vertical speed (positive up): sinking, and swimming toward the band from the depth
    // below the surface at the start.
    let mut wo = [0.0; BATCH];
    for j in 0..n {
        let v = &own[j];
        wo[j] = -v.sinking
            + v.swim.map_or(0.0, |(band, speed)| {
                swim(band, speed, s1[j].zeta - z0[j], dt)
            });
    }
    let mut xn = [0.0; BATCH];
    let mut yn = [0.0; BATCH];
    let mut zn = [0.0; BATCH];
    match params.integrator {
        Integrator::Euler => {
            for j in 0..n {
                xn[j] = x0[j] + dt * s1[j].u;
                yn[j] = y0[j] + dt * s1[j].v;
                zn[j] = z0[j] + dt * (s1[j].w + wo[j]);
            }
        }
        Integrator::Rk4 => {
            let h = 0.5 * dt;
            let mut stage = Points {
                e: *e0,
                ..Points::EMPTY
            };
            let mut prev = s1;
            // k1 + 2 k2 + 2 k3 + k4, summed in that order.
            let mut acc = [(0.0, 0.0, 0.0); BATCH];
            for j in 0..n {
                acc[j] = (s1[j].u, s1[j].v, s1[j].w);
            }
            for (frac, weight, ts) in [(h, 2.0, t + h), (h, 2.0, t + h), (dt, 1.0, t + dt)] {
                let br = window.at(ts);
                for j in 0..n {
                    let (x, y) = (x0[j] + frac * prev[j].u, y0[j] + frac * prev[j].v);
                    stage.x[j] = x;
                    stage.y[j] = y;
                    stage.z[j] = z0[j] + frac * (prev[j].w + wo[j]);
                    (stage.e[j], stage.w[j]) = stage_element(mesh, stage.e[j], x, y);
                    touched.touch(stage.e[j]);
                }
                sample_batch(mesh, &br, n, &stage, &mut prev);
                for j in 0..n {
                    acc[j].0 += weight * prev[j].u;
                    acc[j].1 += weight * prev[j].v;
                    acc[j].2 += weight * prev[j].w;
                }
            }
            let sixth = dt / 6.0;
            for j in 0..n {
                xn[j] = x0[j] + sixth * acc[j].0;
                yn[j] = y0[j] + sixth * acc[j].1;
                zn[j] = z0[j] + sixth * acc[j].2 + dt * wo[j];
            }
        }
    }
    let end = window.at(t + dt);
    for (j, &i) in batch.iter().enumerate() {
        let start = (x0[j], y0[j], z0[j], e0[j]);
        let advected = (xn[j], yn[j], zn[j], s1[j].zeta);
        finish_one(cx, p, i, start, advected, &end, touched);
    }
}

/// After advection: quarantine non-finite results, add the random walks, then move the particle
/// with land reflection and open-boundary exits, and reflect it into the water column.
#[inline]
fn finish_one<T: Touch>(
    cx: &StepContext,
    p: &mut ParticlesMut,
    i: usize,
    start: (f64, f64, f64, u32),
    advected: (f64, f64, f64, f64),
    end: &Bracket,
    touched: &mut T,
) {
    let (mesh, params, step, id) = (cx.mesh, cx.params, cx.step, p.id[i]);
    let (x, y, z, element, state) = (
        &mut p.x[i],
        &mut p.y[i],
        &mut p.z[i],
        &mut p.element[i],
        &mut p.status[i],
    );
    // Random walks spread forward in time whichever way the run goes.
    let dt = params.dt.abs();
    let (x0, y0, z0, e0) = start;
    let (mut xn, mut yn, mut zn, zeta0) = advected;
    if !(xn.is_finite() && yn.is_finite() && zn.is_finite() && zeta0.is_finite()) {
        // Quarantine: the particle keeps its last good position.
        *state = status::BAD_FIELD;
        return;
    }
    let horizontal = params.horizontal_kh > 0.0;
    let vertical = !matches!(params.vertical_mixing, VerticalMixing::None);
    if horizontal || vertical {
        let bits = draw(params.seed, id, step, Stream::Walk);
        if horizontal {
            let (n1, n2) = normal_pair(bits[0], bits[1]);
            let s = (2.0 * params.horizontal_kh * dt).sqrt();
            xn += s * n1;
            yn += s * n2;
        }
        if vertical {
            // Visser (1997): drift by K' and a step scaled by K at the drift-corrected depth;
            // R is uniform on [-1, 1] with variance r = 1/3.
            let (_, dkdz) = vertical_kh(cx, x0, y0, z0, e0);
            let zc = z0 + 0.5 * dkdz * dt;
            let (kc, _) = vertical_kh(cx, x0, y0, zc, e0);
            let r = 2.0 * unit_open(bits[2]) - 1.0;
            zn += dkdz * dt + r * (2.0 * kc * dt * 3.0).sqrt();
        }
    }
    match trace(mesh, e0, x0, y0, xn, yn) {
        Moved::Inside {
            x: xa,
            y: ya,
            element: e,
        } => {
            touched.touch(e);
            let w = mesh.weights(e as usize, xa, ya);
            let (zeta, depth) = water_column(mesh, end.a, end.b, end.wt, e as usize, &w);
            if !zeta.is_finite() {
                // No free surface where it lands: quarantined, like a non-finite velocity.
                *state = status::BAD_FIELD;
                return;
            }
            if !wet_at(end, e as usize) {
                // It would end in a dry cell: it stays where it was.
                *state = status::STRANDED;
                return;
            }
            *state = status::ACTIVE;
            *x = xa;
            *y = ya;
            *z = reflect_vertical(zn, zeta, depth);
            *element = e;
        }
        Moved::Exited {
            x: xa,
            y: ya,
            element: e,
        } => {
            *x = xa;
            *y = ya;
            *z = zn;
            *element = e;
            *state = status::EXITED;
        }
    }
}

/// Output view of a particle: depth below the surface (m, 0 at the surface, negative down) and sigma.
pub fn observe(mesh: &Mesh, window: Window, t: f64, x: f64, y: f64, z: f64, e: u32) -> (f64, f64) {
    let (zeta, depth) = column_at(mesh, window, t, x, y, e);
    (z - zeta, ((z - zeta) / depth).clamp(-1.0, 0.0))
}

/// Flows with known answers on an in-memory mesh, so the numerics are checked wherever the
/// crate's tests run: natively, and as aarch64 and armv7 binaries under qemu-user in CI.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::{FieldLevel, RawSlice, Window};
    use crate::mesh::{tests::grid_mesh, Mesh};
    use crate::particles::{status, Particles};

    const X0: f64 = 400_000.0;
    const Y0: f64 = 4_500_000.0;

    /// A 60 x 60 grid of 200 m squares at UTM-sized offsets, and a steady level of the flow
    /// `uv(x, y)` sampled at element centroids.
    fn steady(uv: impl Fn(f64, f64) -> (f64, f64)) -> (Mesh, FieldLevel) {
        steady_on(grid_mesh(60, 60, 200.0, X0, Y0), uv)
    }

    /// The steady level of the flow `uv(x, y)` on the mesh `input`.
    fn steady_on(
        input: crate::mesh::MeshInput,
        uv: impl Fn(f64, f64) -> (f64, f64),
    ) -> (Mesh, FieldLevel) {
        let centroid =
            |t: &[i64; 3], c: &[f64]| t.iter().map(|&n| c[n as usize]).sum::<f64>() / 3.0;
        let (u, v): (Vec<f32>, Vec<f32>) = input
            .nv
            .iter()
            .map(|t| {
                let (u, v) = uv(centroid(t, &input.x), centroid(t, &input.y));
                (u as f32, v as f32)
            })
            .unzip();
        let nn = input.x.len();
        let (mesh, _) = Mesh::build(input).unwrap();
        let raw = RawSlice {
            time: 0.0,
            u,
            v,
            zeta: vec![0.0; nn],
            ..Default::default()
        };
        let level = FieldLevel::from_slice(&mesh, &raw).unwrap();
        (mesh, level)
    }

    /// Every kernel variant this CPU runs samples a batch to the same bits as the scalar
    /// reference: two levels with a surface and a time weight between them, points spread over
    /// the mesh (some on edges and vertices), batches of every length.
    #[test]
    fn every_kernel_variant_samples_the_same_bits() {
        let (mesh, a) = steady(|x, y| (0.3 + 1e-4 * (y - Y0), -0.2 + 2e-4 * (x - X0)));
        let mut a = a;
        let mut b = a.clone();
        b.time = 3600.0;
        for (k, c) in a.coef.iter_mut().enumerate() {
            c[2] = 1e-3 * (k % 7) as f32;
        }
        for (k, c) in b.coef.iter_mut().enumerate() {
            for v in c.iter_mut() {
                *v = *v * 1.37 - 0.01 * (k % 5) as f32;
            }
        }
        for (k, z) in a.zeta_elem.iter_mut().enumerate() {
            *z = [0.1 * (k % 3) as f32, -0.2, 0.05];
        }
        for (k, z) in b.zeta_elem.iter_mut().enumerate() {
            *z = [0.3, 0.07 * (k % 4) as f32, -0.1];
        }
        let levels = [a, b];
        let window = Window { levels: &levels };
        let mut x = 0x1234_5678_u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        // The last batch comes in runs of points a metre apart, mostly in one element, as
        // particles sorted by element do (the lanes reuse what a run's first point loaded).
        for (t, n, runs) in [
            (0.0, BATCH, false),
            (1234.5, 7, false),
            (3600.0, 1, false),
            (2000.0, BATCH, true),
        ] {
            let br = window.at(t);
            let mut at = Points::EMPTY;
            for j in 0..n {
                if runs && j % 4 != 0 {
                    let (px, py) = (at.x[j - 1] + 1.0, at.y[j - 1] - 0.5);
                    let e = mesh.locate(px, py, None).expect("inside the mesh");
                    (at.x[j], at.y[j], at.z[j], at.e[j]) = (px, py, -next() * 12.0, e);
                    at.w[j] = mesh.weights(e as usize, px, py);
                    continue;
                }
                // A third of the points on grid lines: element edges and vertices.
                let snap = |v: f64| {
                    if j % 3 == 0 {
                        (v / 200.0).round() * 200.0
                    } else {
                        v
                    }
                };
                let (px, py) = (
                    X0 + 200.0 + snap(next() * 11_000.0),
                    Y0 + 200.0 + snap(next() * 11_000.0),
                );
                let e = mesh.locate(px, py, None).expect("inside the mesh");
                at.x[j] = px;
                at.y[j] = py;
                at.z[j] = -next() * 12.0;
                at.e[j] = e;
                at.w[j] = mesh.weights(e as usize, px, py);
            }
            let mut want = [Sample::default(); BATCH];
            sample_batch_scalar(&mesh, &br, n, &at, &mut want);
            let bits = |s: &[Sample; BATCH]| -> Vec<[u64; 6]> {
                s[..n]
                    .iter()
                    .map(|s| [s.u, s.v, s.w, s.zeta, s.depth, s.sigma].map(f64::to_bits))
                    .collect()
            };
            let mut got = [Sample::default(); BATCH];
            sample_lanes(&mesh, &br, n, &at, &mut got);
            assert_eq!(bits(&got), bits(&want), "lanes, t {t}");
            if crate::simd::Kernel::Avx2.available() {
                let mut got = [Sample::default(); BATCH];
                sample_lanes_avx2(&mesh, &br, n, &at, &mut got);
                assert_eq!(bits(&got), bits(&want), "avx2, t {t}");
            }
        }
    }

    fn release(mesh: &Mesh, points: &[(f64, f64)]) -> Particles {
        let mut p = Particles::default();
        for (i, &(x, y)) in points.iter().enumerate() {
            let e = mesh.locate(x, y, None).expect("inside the mesh");
            p.push(i as u32, x, y, -1.0, e, status::ACTIVE, 0.0);
        }
        p
    }

    fn params(dt: f64, kh: f64) -> StepParams {
        StepParams {
            dt,
            integrator: Integrator::Rk4,
            horizontal_kh: kh,
            vertical_mixing: VerticalMixing::None,
            sinking_speed: 0.0,
            seed: 99,
            happiness: None,
            behaviour: None,
        }
    }

    /// Steps every particle `steps` times in chunks of `chunk`.
    fn run(
        mesh: &Mesh,
        level: &FieldLevel,
        p: &mut Particles,
        prm: &StepParams,
        steps: u32,
        chunk: usize,
    ) {
        let levels = std::slice::from_ref(level);
        for s in 0..steps {
            let t = s as f64 * prm.dt;
            for c in p.chunks_mut(chunk) {
                let cx = StepContext {
                    mesh,
                    window: Window { levels },
                    params: prm,
                    t,
                    step: s,
                };
                advance(&cx, c);
            }
        }
    }

    #[test]
    fn a_uniform_current_carries_every_particle_exactly_its_distance() {
        let (u, v) = (0.3f32 as f64, -0.2f32 as f64);
        let (mesh, level) = steady(|_, _| (u, v));
        let start: Vec<(f64, f64)> = (0..50)
            .map(|i| {
                (
                    X0 + 1000.0 + 150.0 * i as f64,
                    Y0 + 6000.0 + 97.0 * i as f64,
                )
            })
            .collect();
        let mut p = release(&mesh, &start);
        run(&mesh, &level, &mut p, &params(60.0, 0.0), 100, 16);
        for (i, &(x, y)) in start.iter().enumerate() {
            assert_eq!(p.status[i], status::ACTIVE);
            assert!(
                (p.x[i] - (x + u * 6000.0)).abs() < 1e-6,
                "x {} vs {}",
                p.x[i],
                x + u * 6000.0
            );
            assert!(
                (p.y[i] - (y + v * 6000.0)).abs() < 1e-6,
                "y {} vs {}",
                p.y[i],
                y + v * 6000.0
            );
        }
    }

    #[test]
    fn solid_body_rotation_comes_back_to_the_start_within_a_centimetre() {
        let (cx, cy) = (X0 + 6000.0, Y0 + 6000.0);
        let omega = std::f64::consts::TAU / (6.0 * 3600.0);
        let (mesh, level) = steady(|x, y| (-omega * (y - cy), omega * (x - cx)));
        let start: Vec<(f64, f64)> = (0..64)
            .map(|i| {
                let (r, a) = (1000.0 + 55.0 * i as f64, i as f64 * 2.399_963);
                (cx + r * a.cos(), cy + r * a.sin())
            })
            .collect();
        let mut p = release(&mesh, &start);
        // One revolution: 360 steps of 60 s.
        run(&mesh, &level, &mut p, &params(60.0, 0.0), 360, 64);
        for (i, &(x, y)) in start.iter().enumerate() {
            let d = (p.x[i] - x).hypot(p.y[i] - y);
            assert!(d < 0.01, "particle {i} ends {d} m from its start");
        }
    }

    #[test]
    fn the_random_walk_spreads_as_2kt_and_ignores_chunking() {
        let (mesh, level) = steady(|_, _| (0.0, 0.0));
        let (cx, cy) = (X0 + 6000.0, Y0 + 6000.0);
        let n = 4000;
        let start = vec![(cx, cy); n];
        let (kh, dt, steps) = (0.5, 60.0, 60);
        let mut a = release(&mesh, &start);
        let mut b = a.clone();
        run(&mesh, &level, &mut a, &params(dt, kh), steps, 4000);
        run(&mesh, &level, &mut b, &params(dt, kh), steps, 7);
        assert_eq!((&a.x, &a.y), (&b.x, &b.y), "chunking changed a random walk");
        let var = |v: &[f64], c: f64| v.iter().map(|x| (x - c) * (x - c)).sum::<f64>() / n as f64;
        let expect = 2.0 * kh * dt * steps as f64;
        for (axis, got) in [("x", var(&a.x, cx)), ("y", var(&a.y, cy))] {
            // 4000 samples: the variance's standard error is about 2.2 %.
            assert!(
                (got / expect - 1.0).abs() < 0.08,
                "{axis} variance {got} vs 2Kt {expect}"
            );
        }
    }

    /// The grid of `steady`, every inside node jittered by up to 30 m, and slivers: in each
    /// listed square the far corner of its second triangle is moved to just off the square's
    /// diagonal, so that triangle keeps `ratio` of its area and its other neighbours turn very
    /// obtuse. The slivers' nodes, for releases that start on them.
    fn slivered() -> (crate::mesh::MeshInput, Vec<(f64, f64)>) {
        let (nx, dx) = (60usize, 200.0);
        let mut m = grid_mesh(nx, nx, dx, X0, Y0);
        let id = |i: usize, j: usize| j * (nx + 1) + i;
        let jitter = |k: usize, salt: u32| {
            let bits = crate::rng::philox4x32_10([k as u32, salt, 0, 0], [7, 9])[0];
            bits as f64 / 4_294_967_296.0 * 60.0 - 30.0
        };
        for j in 1..nx {
            for i in 1..nx {
                let k = id(i, j);
                m.x[k] += jitter(k, 1);
                m.y[k] += jitter(k, 2);
            }
        }
        let squares = [
            (35, 30, 0.03),
            (30, 40, 0.01),
            (22, 27, 0.03),
            (40, 21, 0.01),
            (26, 18, 0.02),
            (44, 36, 0.01),
        ];
        let mut nodes = Vec::new();
        for (i, j, ratio) in squares {
            let (a, b, c) = (id(i + 1, j), id(i, j + 1), id(i + 1, j + 1));
            crate::mesh::squash_onto_edge(&mut m.x, &mut m.y, a, b, c, ratio);
            nodes.extend([a, b, c].map(|k| (m.x[k], m.y[k])));
        }
        // Every triangle keeps the grid's (clockwise) orientation: the mesh is valid.
        for t in &m.nv {
            let [p, q, r] = t.map(|k| k as usize);
            let area2 =
                (m.x[q] - m.x[p]) * (m.y[r] - m.y[p]) - (m.x[r] - m.x[p]) * (m.y[q] - m.y[p]);
            assert!(area2 < 0.0, "a triangle turned over: {t:?}");
        }
        (m, nodes)
    }

    /// Solid-body rotation on a mesh with slivers down to 1 % of their neighbours' area and very
    /// obtuse triangles, no diffusion, particles released on rings through the slivers' nodes
    /// and on the nodes themselves: every particle keeps moving, no two end at one point, a
    /// revolution brings each back to its start, and the backward run from the end brings each
    /// back within 1 m. Particles once stopped at such vertices for good.
    #[test]
    fn no_particle_is_trapped_by_slivers_or_vertices() {
        let (cx, cy) = (X0 + 6000.0, Y0 + 6000.0);
        let omega = std::f64::consts::TAU / (6.0 * 3600.0);
        let (input, nodes) = slivered();
        let (mesh, level) = steady_on(input, |x, y| (-omega * (y - cy), omega * (x - cx)));
        let q = mesh.quality();
        assert!(q.slivers >= 6 && q.smallest_angle_deg < 1.0, "{q:?}");
        let mut start = Vec::new();
        for &(x, y) in &nodes {
            let (r, a0) = ((x - cx).hypot(y - cy), (y - cy).atan2(x - cx));
            for k in 1..24 {
                let a = a0 + k as f64 * std::f64::consts::TAU / 24.0;
                start.push((cx + r * a.cos(), cy + r * a.sin()));
            }
            start.push((x, y));
        }
        let n = start.len();
        let mut p = release(&mesh, &start);
        let fwd = params(60.0, 0.0);
        let mut before: Vec<(f64, f64)> = start.clone();
        for hour in 0..6u32 {
            let levels = std::slice::from_ref(&level);
            for s in hour * 60..(hour + 1) * 60 {
                for c in p.chunks_mut(64) {
                    let cx = StepContext {
                        mesh: &mesh,
                        window: Window { levels },
                        params: &fwd,
                        t: s as f64 * 60.0,
                        step: s,
                    };
                    advance(&cx, c);
                }
            }
            for i in 0..n {
                assert_eq!(p.status[i], status::ACTIVE, "particle {i}");
                let r = (start[i].0 - cx).hypot(start[i].1 - cy);
                let moved = (p.x[i] - before[i].0).hypot(p.y[i] - before[i].1);
                // An hour is a sixth of a revolution: a chord of length r.
                assert!(
                    (moved - r).abs() < 1.0,
                    "particle {i} moved {moved} m in hour {hour}, not {r} m"
                );
                before[i] = (p.x[i], p.y[i]);
            }
        }
        let mut ends: Vec<(f64, f64, usize)> = (0..n).map(|i| (p.x[i], p.y[i], i)).collect();
        ends.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        for w in ends.windows(2) {
            assert!(
                (w[0].0, w[0].1) != (w[1].0, w[1].1),
                "particles {} and {} end at one point",
                w[0].2,
                w[1].2
            );
        }
        let mut worst = 0.0f64;
        for (i, &(x, y)) in start.iter().enumerate() {
            worst = worst.max((p.x[i] - x).hypot(p.y[i] - y));
        }
        assert!(
            worst < 0.05,
            "a revolution ends up to {worst} m from the start"
        );
        // Backward from the ends, on the run clock counting down.
        let back = params(-60.0, 0.0);
        let levels = std::slice::from_ref(&level);
        for s in 0..360u32 {
            for c in p.chunks_mut(64) {
                let cx = StepContext {
                    mesh: &mesh,
                    window: Window { levels },
                    params: &back,
                    t: -(s as f64) * 60.0,
                    step: s,
                };
                advance(&cx, c);
            }
        }
        // Backward from a full revolution's end is a full revolution back to the start.
        let mut worst = 0.0f64;
        for (i, &(x, y)) in start.iter().enumerate() {
            assert_eq!(p.status[i], status::ACTIVE, "particle {i}");
            worst = worst.max((p.x[i] - x).hypot(p.y[i] - y));
        }
        assert!(
            worst < 1.0,
            "the backward run misses a release point by {worst} m"
        );
    }

    /// Paths through the vertex of a concave land corner, touching the land only there, at many
    /// slopes and in both directions: each goes on to its end point. The walk meets the coast on
    /// the way, so these are the trace's own paths; they once stopped at the corner for good.
    #[test]
    fn a_path_through_a_coastal_vertex_goes_on_past_it() {
        // An L-shaped sea: a 20 x 20 grid of 200 m squares without its north-east quarter.
        let mut input = grid_mesh(20, 20, 200.0, X0, Y0);
        let (vx, vy) = (X0 + 2000.0, Y0 + 2000.0);
        input.nv.retain(|t| {
            let c = |v: &[f64]| t.iter().map(|&n| v[n as usize]).sum::<f64>() / 3.0;
            !(c(&input.x) > vx && c(&input.y) > vy)
        });
        let (mesh, _) = Mesh::build(input).unwrap();
        let mut checked = 0;
        for (p, q) in [
            (1.0, 1.0),
            (2.0, 1.0),
            (1.0, 2.0),
            (3.0, 1.0),
            (1.0, 3.0),
            (5.0, 2.0),
        ] {
            for (s, t) in [(30.0, 50.0), (100.0, 20.0), (7.0, 150.0)] {
                // From the western arm through the corner into the southern arm, and back.
                let west = (vx - s * p, vy + s * q);
                let south = (vx + t * p, vy - t * q);
                for (a, b) in [(west, south), (south, west)] {
                    let e = mesh.locate(a.0, a.1, None).unwrap();
                    match trace(&mesh, e, a.0, a.1, b.0, b.1) {
                        Moved::Inside { x, y, element } => {
                            assert!(
                                (x, y) == b,
                                "{a:?} -> {b:?} through the corner ends at ({x}, {y})"
                            );
                            // In that element, up to a micrometre.
                            let w = mesh.weights(element as usize, x, y);
                            assert!(w.iter().all(|v| *v > -1e-8), "{a:?} -> {b:?}: {w:?}");
                        }
                        other => panic!("{a:?} -> {b:?}: {other:?}"),
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 36);
    }
}
