// One fused RK4 (or Euler) step per particle: release, locate by neighbour walk, interpolate
// (FVCOM linear reconstruction, linear in sigma, linear in time at each stage's own time, between
// the two levels around that time, so that a step may straddle a field time),
// advance, random walk (Philox4x32-10, the same stream as the CPU), land reflection, open-boundary
// exit, surface and bottom reflection. f32 only. A particle's position is its offset from its
// host element's centroid, a small number, and centroids are exact (hi, lo) pairs relative to
// the partition's origin, so moving between elements loses nothing and long runs do not drift
// by rounding, whatever the driver's compiler does with floating-point expressions.
// Shared structs mirror `node/src/gpu/mod.rs` (GpuParticle, GpuElement, Params): keep in step.

struct Particle {
    ox: f32, oy: f32, z: f32, release: f32,
    elem: u32, status: u32, id: u32, happiness: u32,
};

// Centroid (hi, lo), barycentric coefficients (w_i = 1/3 + b_i dx + c_i dy), depths, neighbours,
// nodes.
struct Element {
    xc: f32, yc: f32, xl: f32, yl: f32,
    b0: f32, b1: f32, b2: f32, c0: f32,
    c1: f32, c2: f32, h0: f32, h1: f32,
    h2: f32, n0: u32, n1: u32, n2: u32,
    v0: u32, v1: u32, v2: u32, owner: u32,
};

// Each stage time of the step (its start, middle and end) reads the two field levels around it
// from their slots (`a`, `b`) with weight `w` of the later: a step may straddle a field time.
// `edge`: bit 0 set where the time is the earlier level's own (weight 0), bit 1 where it is the
// later's (weight 1), decided on the host in f64 as the CPU's wetting rule needs.
struct Stage { a: u32, b: u32, w: f32, edge: u32 };

struct Params {
    n: u32, n_layers: u32, step: u32, integrator: u32,
    seed_lo: u32, seed_hi: u32, max_walk: u32, clock: f32,
    dt: f32, horizontal_kh: f32, vertical_kh: f32, sinking: f32,
    sig_first: f32, sig_step: f32, uneven: u32, kh_file: u32,
    n_levels: u32, lev_base: u32, lev_uniform: u32, kh_base: u32,
    happy: u32, temp_on: u32, temp_base: u32, lay_base: u32,
    preferred: f32, tolerance: f32, threshold: f32, scal_len: u32,
    s0: Stage, sh: Stage, s1: Stage,
    me: u32, cap: u32, node: u32, pad0: u32,
};

const ACTIVE: u32 = 0u;
const PENDING: u32 = 1u;
const EXITED: u32 = 2u;
const BAD_FIELD: u32 = 3u;
const OUTSIDE_MESH: u32 = 4u;
const STRANDED: u32 = 7u;
// A slot whose particle went to another partition (a node's GPU partition keeps the hole and
// fills it with the next migrant that comes in); never stepped nor counted.
const VACANT: u32 = 255u;
// The counts' header, words; a node's migrants follow it, MIGRANT words each.
const HEADER: u32 = 16u;
const MIGRANT: u32 = 9u;
const LAND: u32 = 0xffffffffu;
const OPEN: u32 = 0xfffffffeu;

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> particles: array<Particle>;
@group(0) @binding(2) var<storage, read> elements: array<Element>;
// Coefficient blocks of the field levels in slots 0, 1 and 2 (the third only bound to its own
// buffer once a step needed three levels): 3 vec4 per element and layer,
// [u0 v0 w0 _], [ux vx wx _], [uy vy wy _].
@group(0) @binding(3) var<storage, read> coef0: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> coef1: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> coef2: array<vec4<f32>>;
// Each slot's scalars, `P.scal_len` floats a slot: the free surface at each element's three
// nodes and whether the element is wet (1) or dry (0) (4 floats per element), then, for `kh` from the file, n_levels values per node from
// `P.kh_base`, then temperature, n_layers values per node from `P.temp_base`.
@group(0) @binding(6) var<storage, read> scal: array<f32>;
// Status counts of this step: active, pending, exited, bad_field, outside_mesh; then the happy
// count, the highest happiness (f32 bits) and the smallest id holding it; then stranded, the
// migrants found by `emigrate`, and the particles quarantined by this step. On a node, after the
// HEADER words, room for P.cap migrants, each its slot and its 8 words of particle state, then
// for P.cap quarantined particles alike.
@group(0) @binding(7) var<storage, read_write> counts: array<atomic<u32>>;
// Each element's layer sigmas, n_layers per element, where layers are uneven or vary from node
// to node (FVCOM's generalized sigma; `P.uneven`), four placeholder zeros otherwise; then from
// `P.lev_base` the nodes' level sigmas, n_levels per node (one column if `P.lev_uniform`), and
// from `P.lay_base` their layer sigmas, n_layers per node (likewise).
@group(0) @binding(8) var<storage, read> sig: array<f32>;

fn sc(slot: u32, i: u32) -> f32 { return scal[slot * P.scal_len + i]; }

// Set when the step read an element it cannot sample (the level marks those with a wet flag
// of -1: a node's partition lacks its values, or its surface is not a number): the particle
// is quarantined where it was, and on a node stepped again once the values are fetched. A
// flag, not a NaN test, since shader compilers may assume floats are never NaN.
var<private> lacking: bool;

fn surface(slot: u32, e: u32) -> vec3<f32> {
    let o = slot * P.scal_len + 4u * e;
    if (scal[o + 3u] < 0.0) { lacking = true; }
    return vec3<f32>(scal[o], scal[o + 1u], scal[o + 2u]);
}

// Whether element e is wet at a stage's time: dry in either level that counts (the earlier
// unless the time is the later's, the later unless it is the earlier's) makes it dry.
fn wet(st: Stage, e: u32) -> bool {
    let a_wet = scal[st.a * P.scal_len + 4u * e + 3u] != 0.0;
    let b_wet = scal[st.b * P.scal_len + 4u * e + 3u] != 0.0;
    return ((st.edge & 2u) != 0u || a_wet) && ((st.edge & 1u) != 0u || b_wet);
}

// The free surface at weights w of element e, at a stage's time.
fn zeta_at(st: Stage, e: u32, w: vec3<f32>) -> f32 {
    return mix(dot(w, surface(st.a, e)), dot(w, surface(st.b, e)), st.w);
}

// The CPU's `sigma_bracket` over `count` sigmas from `base` in `sig`, top down: (layer, weight).
fn bracket(base: u32, count: u32, sigma: f32) -> vec2<f32> {
    if (count == 1u || sigma >= sig[base]) { return vec2<f32>(0.0, 0.0); }
    if (sigma <= sig[base + count - 1u]) { return vec2<f32>(f32(count - 1u), 0.0); }
    var k = 0u;
    while (k + 2u < count && sig[base + k + 1u] > sigma) { k = k + 1u; }
    let a = sig[base + k];
    return vec2<f32>(f32(k), (a - sigma) / (a - sig[base + k + 1u]));
}

fn is_element(n: u32) -> bool { return n < OPEN; }

fn nbe(e: Element, i: u32) -> u32 {
    if (i == 0u) { return e.n0; }
    if (i == 1u) { return e.n1; }
    return e.n2;
}

// Barycentric weights of the point at (dx, dy) from the element's centroid.
fn weights(e: Element, dx: f32, dy: f32) -> vec3<f32> {
    return vec3<f32>(
        1.0 / 3.0 + e.b0 * dx + e.c0 * dy,
        1.0 / 3.0 + e.b1 * dx + e.c1 * dy,
        1.0 / 3.0 + e.b2 * dx + e.c2 * dy);
}

// The gradient of the weight of node `j`: it points into the element, across edge `j`.
fn grad(e: Element, j: u32) -> vec2<f32> {
    if (j == 0u) { return vec2<f32>(e.b0, e.c0); }
    if (j == 1u) { return vec2<f32>(e.b1, e.c1); }
    return vec2<f32>(e.b2, e.c2);
}

// How far beyond an edge's line, in metres, an end point may lie and still be on the edge, and
// how far past a vertex a path through it is followed: above the rounding of f32 offsets from a
// centroid kilometres away, below any distance that matters.
const ON_EDGE_M: f32 = 1e-2;
const PAST_VERTEX_M: f32 = 1e-2;

struct Walked { elem: u32, found: bool, edge: u32 };

// Offset from element `el`'s centroid to the centroid of `home`: differences of nearby
// coordinates are exact in f32, and the lo parts carry the rest.
fn shift(home: Element, el: Element) -> vec2<f32> {
    return vec2<f32>((home.xc - el.xc) + (home.xl - el.xl), (home.yc - el.yc) + (home.yl - el.yl));
}

// Walk from `start` towards the point (px, py), given relative to the centroid of `home`.
fn walk(start: u32, px: f32, py: f32, home: Element) -> Walked {
    return walk_ex(start, px, py, home, false);
}

// The walk; `around_coast` (the trace's look past a coastal vertex) goes on across another edge
// the point lies beyond where the coast is the most negative one (Mesh::walk_around_coast).
fn walk_ex(start: u32, px: f32, py: f32, home: Element, around_coast: bool) -> Walked {
    var e = start;
    // Never back through the edge we came in by (Mesh::walk_weights on the CPU says why).
    var entry = 3u;
    for (var k = 0u; k < P.max_walk; k = k + 1u) {
        let el = elements[e];
        let o = shift(home, el);
        let w = weights(el, o.x + px, o.y + py);
        var i_min = 3u;
        var w_min = -1e-6;
        for (var j = 0u; j < 3u; j = j + 1u) {
            if (w[j] < w_min && j != entry) { i_min = j; w_min = w[j]; }
        }
        if (i_min == 3u) { return Walked(e, true, 0u); }
        var next = nbe(el, i_min);
        if (!is_element(next) && !around_coast) { return Walked(e, false, i_min); }
        if (!is_element(next)) {
            // The coast is the most negative edge, but another edge the point also lies beyond
            // may lead to it (around a concave corner of the coast), as on the CPU.
            var other = 3u;
            var w_other = -1e-6;
            for (var j = 0u; j < 3u; j = j + 1u) {
                if (j != entry && j != i_min && w[j] < w_other && is_element(nbe(el, j))) {
                    other = j;
                    w_other = w[j];
                }
            }
            if (other == 3u) { return Walked(e, false, i_min); }
            next = nbe(el, other);
        }
        let ne = elements[next];
        entry = 3u;
        for (var j = 0u; j < 3u; j = j + 1u) {
            if (nbe(ne, j) == e) { entry = j; }
        }
        e = next;
    }
    return Walked(e, false, 3u);
}

struct Flow { u: f32, v: f32, w: f32, zeta: f32, depth: f32 };

fn coef_at(slot: u32, idx: u32) -> vec4<f32> {
    if (slot == 0u) { return coef0[idx]; }
    if (slot == 1u) { return coef1[idx]; }
    return coef2[idx];
}

// A level's coefficients at layer weight wk between blocks `top` and `bot`, at offset (dx, dy).
fn blend(slot: u32, top: u32, bot: u32, wk: f32, dx: f32, dy: f32) -> vec4<f32> {
    return mix(coef_at(slot, top), coef_at(slot, bot), wk)
        + mix(coef_at(slot, top + 1u), coef_at(slot, bot + 1u), wk) * dx
        + mix(coef_at(slot, top + 2u), coef_at(slot, bot + 2u), wk) * dy;
}

// Velocity at offset (dx, dy) from element e's centroid, height z, at a stage's time.
fn sample(e: u32, dx: f32, dy: f32, z: f32, st: Stage) -> Flow {
    let el = elements[e];
    let w = weights(el, dx, dy);
    let zeta = zeta_at(st, e, w);
    let h = dot(w, vec3<f32>(el.h0, el.h1, el.h2));
    let depth = max(h + zeta, 1e-3);
    let sigma = clamp((z - zeta) / depth, -1.0, 0.0);
    let nl = P.n_layers;
    var k = 0u;
    var wk = 0.0;
    if (nl > 1u && P.uneven == 1u) {
        // Above the first layer centre or below the last, that layer's value; between, linear.
        let br = bracket(e * nl, nl, sigma);
        k = u32(br.x);
        wk = br.y;
    } else if (nl > 1u) {
        let f = clamp((sigma - P.sig_first) / P.sig_step, 0.0, f32(nl - 1u));
        k = min(u32(f), nl - 2u);
        wk = f - f32(k);
    }
    let k1 = min(k + 1u, nl - 1u);
    let top = (e * nl + k) * 3u;
    let bot = (e * nl + k1) * 3u;
    let vel = mix(blend(st.a, top, bot, wk, dx, dy), blend(st.b, top, bot, wk, dx, dy), st.w);
    return Flow(vel.x, vel.y, vel.z, zeta, depth);
}

fn column(e: u32, dx: f32, dy: f32, st: Stage) -> vec2<f32> {
    let el = elements[e];
    let w = weights(el, dx, dy);
    let zeta = zeta_at(st, e, w);
    let h = dot(w, vec3<f32>(el.h0, el.h1, el.h2));
    return vec2<f32>(zeta, max(h + zeta, 1e-3));
}

fn node_of(el: Element, i: u32) -> u32 {
    if (i == 0u) { return el.v0; }
    if (i == 1u) { return el.v1; }
    return el.v2;
}

// A field given per node at `count` sigmas (levels or layer centres), at sigma, weights w in
// element el, at a stage's time: each node's profile linear between its own sigmas (from
// `sig_base` in `sig`, one column if `P.lev_uniform`), its values from `base` in each slot's
// scalars, the nodes blended by w (the CPU's `node_profile_at`).
fn node_profile(el: Element, w: vec3<f32>, sigma: f32, st: Stage, count: u32, sig_base: u32, base: u32) -> f32 {
    var va = 0.0;
    var vb = 0.0;
    for (var i = 0u; i < 3u; i = i + 1u) {
        let n = node_of(el, i);
        var col = n;
        if (P.lev_uniform == 1u) { col = 0u; }
        let br = bracket(sig_base + col * count, count, sigma);
        let k = u32(br.x);
        let k1 = min(k + 1u, count - 1u);
        let at = base + n * count;
        va = va + w[i] * mix(sc(st.a, at + k), sc(st.a, at + k1), br.y);
        vb = vb + w[i] * mix(sc(st.b, at + k), sc(st.b, at + k1), br.y);
    }
    return mix(va, vb, st.w);
}

// Vertical diffusivity from the file, at the nodes' sigma levels.
fn kh_at(el: Element, w: vec3<f32>, sigma: f32, st: Stage) -> f32 {
    return node_profile(el, w, sigma, st, P.n_levels, P.lev_base, P.kh_base);
}

// Temperature, at the nodes' layer centres (the CPU's `layered_at`).
fn temperature_at(el: Element, w: vec3<f32>, sigma: f32, st: Stage) -> f32 {
    return node_profile(el, w, sigma, st, P.n_layers, P.lay_base, P.temp_base);
}

// Stores the particle and counts it; an active one's happiness is taken where it ended, at the
// step's end, and joins the step's reductions.
fn finish(i: u32, q: Particle) {
    let w1 = P.s1;
    var p = q;
    if (P.happy == 1u && p.status == ACTIVE) {
        var hp = 0.0;
        if (P.temp_on == 1u) {
            let el = elements[p.elem];
            let w = weights(el, p.ox, p.oy);
            let c = column(p.elem, p.ox, p.oy, w1);
            let sg = clamp((p.z - c.x) / c.y, -1.0, 0.0);
            let d = (temperature_at(el, w, sg, w1) - P.preferred) / P.tolerance;
            hp = exp(-d * d);
        }
        p.happiness = bitcast<u32>(hp);
        // A NaN (a fill value in the file) is never happy nor the happiest, as on the CPU;
        // tested on the bits, since shader compilers may assume floats are never NaN.
        if ((p.happiness & 0x7f800000u) != 0x7f800000u) {
            if (hp >= P.threshold) { atomicAdd(&counts[5], 1u); }
            atomicMax(&counts[6], p.happiness);
        }
    }
    particles[i] = p;
    count(p.status);
}

// The second pass of a step with happiness: the smallest id at the highest happiness.
@compute @workgroup_size(64)
fn happiest(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= P.n) { return; }
    let p = particles[i];
    if (p.status == ACTIVE && p.happiness == atomicLoad(&counts[6])) {
        atomicMin(&counts[7], p.id);
    }
}

// 32 x 32 -> 64-bit multiply in 16-bit halves: (hi, lo).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
    let al = a & 0xffffu; let ah = a >> 16u;
    let bl = b & 0xffffu; let bh = b >> 16u;
    let ll = al * bl; let lh = al * bh; let hl = ah * bl; let hh = ah * bh;
    let mid = (ll >> 16u) + (lh & 0xffffu) + (hl & 0xffffu);
    let hi = hh + (lh >> 16u) + (hl >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(ctr: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = ctr;
    var k = key;
    for (var r = 0u; r < 10u; r = r + 1u) {
        if (r > 0u) { k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u); }
        let p0 = mulhilo(0xD2511F53u, c.x);
        let p1 = mulhilo(0xCD9E8D57u, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

fn unit_open(b: u32) -> f32 { return (f32(b) + 0.5) * (1.0 / 4294967296.0); }

fn count(tagged: u32) {
    let s = tagged & 0xffu;
    if (s == STRANDED) { atomicAdd(&counts[8], 1u); } else { atomicAdd(&counts[min(s, 4u)], 1u); }
}

// Copies particle `q` of slot `i` to the counts' record at word `o`.
fn record(o: u32, i: u32, q: Particle) {
    atomicStore(&counts[o], i);
    atomicStore(&counts[o + 1u], bitcast<u32>(q.ox));
    atomicStore(&counts[o + 2u], bitcast<u32>(q.oy));
    atomicStore(&counts[o + 3u], bitcast<u32>(q.z));
    atomicStore(&counts[o + 4u], bitcast<u32>(q.release));
    atomicStore(&counts[o + 5u], q.elem);
    atomicStore(&counts[o + 6u], q.status);
    atomicStore(&counts[o + 7u], q.id);
    atomicStore(&counts[o + 8u], q.happiness);
}

// Quarantine where it was (`q`, the particle as the step found it): BAD_FIELD, with the status
// it had then (plus one) in the next byte. On a node it is also recorded after the migrants'
// room (P.cap records), with that status, for the host to step it again once it has fetched
// the values it lacked.
fn quarantine(i: u32, q: Particle, was: u32) -> u32 {
    let k = atomicAdd(&counts[10], 1u);
    if (P.node == 1u) {
        var r = q;
        r.status = was;
        record(HEADER + (P.cap + k) * MIGRANT, i, r);
    }
    return BAD_FIELD | ((was + 1u) << 8u);
}

// A node's pass after the step: every particle whose element another partition owns leaves
// this one. It is copied after the header for the host to send on, and its slot is left vacant.
@compute @workgroup_size(64)
fn emigrate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= P.n) { return; }
    let p = particles[i];
    if (p.status == VACANT || p.status == OUTSIDE_MESH || elements[p.elem].owner == P.me) {
        return;
    }
    record(HEADER + atomicAdd(&counts[9], 1u) * MIGRANT, i, p);
    particles[i].status = VACANT;
}

@compute @workgroup_size(64)
fn step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= P.n) { return; }
    var p = particles[i];
    if (p.status == VACANT) { return; }
    lacking = false;
    let was = p.status;
    let dt = P.dt;
    // The field levels and weights of the step's stage times.
    let w0 = P.s0;
    let wh = P.sh;
    let w1 = P.s1;

    // Everything below is relative to the host element's centroid.
    var e0 = p.elem;
    let el0 = elements[e0];
    let x0 = p.ox;
    let y0 = p.oy;

    // Release (at the step's start, or at its end and then not moved): no free surface there
    // quarantines it, a dry cell strands it until the water comes.
    if (p.status == PENDING) {
        var at = w0;
        let due_now = p.release <= P.clock;
        if (!due_now) { at = w1; }
        if (due_now || p.release <= P.clock + dt) {
            let c = column(e0, x0, y0, at);
            if (c.x != c.x || c.y != c.y) {
                p.status = quarantine(i, p, was);
            } else {
                p.z = clamp(c.x + p.z, c.x - c.y, c.x);
                p.status = ACTIVE;
                if (!wet(at, e0)) { p.status = STRANDED; }
            }
            if (!due_now) {
                finish(i, p);
                return;
            }
        }
    }
    if (p.status != ACTIVE && p.status != STRANDED) {
        finish(i, p);
        return;
    }
    // A dry cell: it waits where it is.
    if (!wet(w0, e0)) {
        p.status = STRANDED;
        finish(i, p);
        return;
    }

    let z0 = p.z;
    let ws = -P.sinking;
    let s1 = sample(e0, x0, y0, z0, w0);
    var dxn: f32;
    var dyn_: f32;
    var zn: f32;
    if (P.integrator == 0u) {
        dxn = dt * s1.u;
        dyn_ = dt * s1.v;
        zn = z0 + dt * (s1.w + ws);
    } else {
        let h = 0.5 * dt;
        let x2 = x0 + h * s1.u; let y2 = y0 + h * s1.v; let z2 = z0 + h * (s1.w + ws);
        let e2 = walk(e0, x2, y2, el0).elem;
        let o2 = shift(el0, elements[e2]);
        let s2 = sample(e2, o2.x + x2, o2.y + y2, z2, wh);
        let x3 = x0 + h * s2.u; let y3 = y0 + h * s2.v; let z3 = z0 + h * (s2.w + ws);
        let e3 = walk(e2, x3, y3, el0).elem;
        let o3 = shift(el0, elements[e3]);
        let s3 = sample(e3, o3.x + x3, o3.y + y3, z3, wh);
        let x4 = x0 + dt * s3.u; let y4 = y0 + dt * s3.v; let z4 = z0 + dt * (s3.w + ws);
        let e4 = walk(e3, x4, y4, el0).elem;
        let o4 = shift(el0, elements[e4]);
        let s4 = sample(e4, o4.x + x4, o4.y + y4, z4, w1);
        let sixth = dt / 6.0;
        dxn = sixth * (s1.u + 2.0 * (s2.u + s3.u) + s4.u);
        dyn_ = sixth * (s1.v + 2.0 * (s2.v + s3.v) + s4.v);
        zn = z0 + sixth * (s1.w + 2.0 * (s2.w + s3.w) + s4.w) + dt * ws;
    }
    // NaN or infinity anywhere: quarantine where it was (x != x is the NaN test).
    let probe = dxn + dyn_ + zn + s1.zeta;
    if (lacking || probe != probe || abs(probe) > 3.0e38) {
        p.status = quarantine(i, p, was);
        finish(i, p);
        return;
    }
    if (P.horizontal_kh > 0.0 || P.vertical_kh > 0.0 || P.kh_file == 1u) {
        let bits = philox(vec4<u32>(p.id, P.step, 0u, 0u), vec2<u32>(P.seed_lo, P.seed_hi));
        if (P.horizontal_kh > 0.0) {
            let r = sqrt(-2.0 * log(unit_open(bits.x)));
            let th = 6.283185307179586 * unit_open(bits.y);
            let s = sqrt(2.0 * P.horizontal_kh * dt);
            dxn = dxn + s * r * cos(th);
            dyn_ = dyn_ + s * r * sin(th);
        }
        if (P.kh_file == 1u) {
            // Visser (1997), as the CPU: drift by K' and a step scaled by K at the
            // drift-corrected depth, both at the step's start (position, element and time).
            let w = weights(el0, x0, y0);
            let c = column(e0, x0, y0, w0);
            let sg = clamp((z0 - c.x) / c.y, -1.0, 0.0);
            let ds = 0.5 / max(f32(P.n_levels) - 1.0, 1.0);
            let sa = max(sg - 0.5 * ds, -1.0);
            let sb = min(sg + 0.5 * ds, 0.0);
            let dkdz = (kh_at(el0, w, sb, w0) - kh_at(el0, w, sa, w0)) / ((sb - sa) * c.y);
            let zc = z0 + 0.5 * dkdz * dt;
            let kc = max(kh_at(el0, w, clamp((zc - c.x) / c.y, -1.0, 0.0), w0), 0.0);
            let r = 2.0 * unit_open(bits.z) - 1.0;
            zn = zn + dkdz * dt + r * sqrt(2.0 * kc * dt * 3.0);
        } else if (P.vertical_kh > 0.0) {
            let r = 2.0 * unit_open(bits.z) - 1.0;
            zn = zn + r * sqrt(2.0 * P.vertical_kh * dt * 3.0);
        }
    }

    // Move from (x0, y0) by (dxn, dyn_), element by element, reflecting off land edges.
    var ax = x0; var ay = y0;
    var bx = x0 + dxn; var by = y0 + dyn_;
    var e = e0;
    var came = LAND;
    var exited = false;
    var done = false;
    var reflected = false;
    for (var it = 0u; it < 4u * P.max_walk; it = it + 1u) {
        var el = elements[e];
        let o = shift(el0, el);
        var ox = o.x; var oy = o.y;
        let wa = weights(el, ox + ax, oy + ay);
        let wb = weights(el, ox + bx, oy + by);
        if (min(wb.x, min(wb.y, wb.z)) >= -1e-6) { done = true; break; }
        var best = 3u;
        var best_s = 2.0;
        for (var j = 0u; j < 3u; j = j + 1u) {
            let wbj = wb[j];
            if (wbj < 0.0 && (came == LAND || nbe(el, j) != came)) {
                let denom = wa[j] - wbj;
                var s = 0.0;
                if (denom > 0.0) { s = clamp(wa[j] / denom, 0.0, 1.0); }
                if (s < best_s) { best = j; best_s = s; }
            }
        }
        var cx = ax + best_s * (bx - ax);
        var cy = ay + best_s * (by - ay);
        // Whether the path leaves at a vertex, whose far side decides (kernel::trace on the CPU
        // does the same).
        var at_vertex = false;
        if (best == 3u) {
            // Only the edge we came in by has the end point beyond it: the end point lies on
            // that edge within rounding (it is here), or the segment passed through an end of
            // the edge, a vertex, into an element of its fan that shares no edge with the one
            // we came from.
            var j = 3u;
            for (var k = 0u; k < 3u; k = k + 1u) {
                if (came != LAND && nbe(el, k) == came) { j = k; }
            }
            if (j == 3u) { bx = ax; by = ay; done = true; reflected = true; break; }
            if (-wb[j] / length(grad(el, j)) < ON_EDGE_M) { done = true; break; }
            best = j;
            cx = ax;
            cy = ay;
            at_vertex = true;
        } else if (!is_element(nbe(el, best))) {
            // A boundary edge crossed at one of its ends: the path may only graze the coast at
            // that vertex and go on in the water.
            let wc = weights(el, ox + cx, oy + cy);
            let k1 = (best + 1u) % 3u;
            let k2 = (best + 2u) % 3u;
            at_vertex = wc[k1] / length(grad(el, k1)) < ON_EDGE_M
                || wc[k2] / length(grad(el, k2)) < ON_EDGE_M;
        }
        let dd = vec2<f32>(bx - cx, by - cy);
        if (at_vertex && length(dd) > 0.0) {
            // Follow the path a hair past the vertex and walk to the element there; where that
            // point lies beyond the coast, the path meets it at the vertex.
            let hair = PAST_VERTEX_M / length(dd);
            let px = cx + dd.x * hair;
            let py = cy + dd.y * hair;
            let past = walk_ex(e, px, py, el0, true);
            if (past.found) { e = past.elem; came = LAND; ax = px; ay = py; continue; }
            if (past.edge != 3u) {
                e = past.elem;
                el = elements[e];
                let o2 = shift(el0, el);
                ox = o2.x;
                oy = o2.y;
                best = past.edge;
            } else if (is_element(nbe(el, best))) {
                bx = ax; by = ay; done = true; reflected = true; break;
            }
        } else if (at_vertex && is_element(nbe(el, best))) {
            done = true; break;
        }
        let next = nbe(el, best);
        if (is_element(next)) {
            came = e; e = next; ax = cx; ay = cy;
            continue;
        }
        if (next == OPEN) { bx = cx; by = cy; exited = true; done = true; break; }
        // Land: reflect the rest of the path in the edge (nodes j+1, j+2 of the element); the
        // edge direction follows from the barycentric gradient of the opposite node.
        let g = grad(el, best);
        // grad w_best points into the element, so the outward normal is -grad / |grad|.
        let len = length(g);
        let nx = -g.x / len; let ny = -g.y / len;
        let d = (bx - cx) * nx + (by - cy) * ny;
        bx = bx - 2.0 * d * nx;
        by = by - 2.0 * d * ny;
        reflected = true;
        ax = cx + (-ox - cx) * 1e-6;
        ay = cy + (-oy - cy) * 1e-6;
        came = LAND;
    }
    if (!done) { bx = ax; by = ay; }

    // New position: relative to the new host element's centroid. Without a reflection or exit
    // the end point is exactly start + displacement.
    var mx = dxn;
    var my = dyn_;
    if (reflected || exited || !done) {
        mx = bx - x0;
        my = by - y0;
    }
    let oe = shift(el0, elements[e]);
    let nx = (x0 + mx) + oe.x;
    let ny = (y0 + my) + oe.y;
    if (exited) {
        p.ox = nx;
        p.oy = ny;
        p.elem = e;
        p.status = EXITED;
        p.z = zn;
        finish(i, p);
        return;
    }
    let c = column(e, nx, ny, w1);
    if (lacking || c.x != c.x) {
        // No free surface where it would land: quarantined where it was.
        p.status = quarantine(i, p, was);
    } else if (!wet(w1, e)) {
        // It would end in a dry cell: it stays where it was.
        p.status = STRANDED;
    } else {
        p.ox = nx;
        p.oy = ny;
        p.elem = e;
        let top = c.x;
        let bottom = c.x - c.y;
        var z = zn;
        for (var r = 0u; r < 4u; r = r + 1u) {
            if (z > top) { z = 2.0 * top - z; } else if (z < bottom) { z = 2.0 * bottom - z; }
        }
        p.z = clamp(z, bottom, top);
        p.status = ACTIVE;
    }
    finish(i, p);
}
