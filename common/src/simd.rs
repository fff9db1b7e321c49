//! Which instructions the kernel's lanes run on: one choice per process, from `SHOAL_KERNEL`
//! (or `--kernel` on the command line), checked against what this CPU has.
//!
//! The kernel samples the flow for a batch of particles at once ([`crate::kernel`]): the
//! loads are per particle, and the arithmetic between them (the barycentric blends of the
//! surface and the bathymetry, the sigma bracket, the coefficient-block blends and the time
//! interpolation) runs over fixed-width arrays of lanes that the compiler turns into vector
//! instructions; each point's nine coefficient blends and its three velocity components run
//! in explicit 4-lane instructions ([`block_velocity`]), and every lane's coefficient blocks
//! are asked for ([`prefetch`]) before the first is used, so their cache misses overlap. That
//! code is compiled once for each instruction set below and chosen here at run time. Every variant does the same IEEE operations in the same order on each lane (no
//! fused multiply-add anywhere, which Rust never forms by itself), so every variant writes the
//! same bits; the scalar variant is the reference, one particle at a time.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// One particle at a time: the reference.
    Scalar,
    /// Lanes in 128-bit registers: SSE2 on x86-64 (every x86-64 has it), NEON on aarch64.
    Lanes128,
    /// Lanes in 256-bit AVX2 registers (x86-64 with AVX2, checked at run time).
    Avx2,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Lanes128 if cfg!(target_arch = "aarch64") => "neon",
            Kernel::Lanes128 if cfg!(target_arch = "x86_64") => "sse2",
            Kernel::Lanes128 => "lanes",
            Kernel::Avx2 => "avx2",
        }
    }

    /// Whether this CPU can run it.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar | Kernel::Lanes128 => true,
            Kernel::Avx2 => avx2(),
        }
    }

    /// Every variant this CPU runs, the reference first.
    pub fn all_available() -> Vec<Kernel> {
        [Kernel::Scalar, Kernel::Lanes128, Kernel::Avx2]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }

    /// The widest variant this CPU runs.
    pub fn best() -> Kernel {
        if avx2() {
            Kernel::Avx2
        } else {
            Kernel::Lanes128
        }
    }

    /// What a process runs unless told otherwise: the widest variant here. It writes the
    /// reference's bits and runs 1.1 to 1.4 times as fast on the dense and sparse cases
    /// (BENCHMARKS.md, "The kernel in lanes").
    pub fn default_here() -> Kernel {
        Kernel::best()
    }

    /// `scalar`, `simd` (the best here), or a variant by name; an error names what this CPU
    /// runs.
    pub fn parse(s: &str) -> Result<Kernel, String> {
        let k = match s {
            "scalar" => Kernel::Scalar,
            "simd" => Kernel::best(),
            "sse2" if cfg!(target_arch = "x86_64") => Kernel::Lanes128,
            "neon" if cfg!(target_arch = "aarch64") => Kernel::Lanes128,
            "lanes" => Kernel::Lanes128,
            "avx2" => Kernel::Avx2,
            other => {
                return Err(format!(
                    "kernel `{other}`: use scalar, simd or one of {}",
                    names()
                ))
            }
        };
        if !k.available() {
            return Err(format!(
                "kernel `{s}`: this CPU has no {}; it runs {}",
                k.name(),
                names()
            ));
        }
        Ok(k)
    }
}

fn names() -> String {
    Kernel::all_available()
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// 0: not chosen yet; otherwise 1 + the variant's index.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

fn code(k: Kernel) -> u8 {
    match k {
        Kernel::Scalar => 1,
        Kernel::Lanes128 => 2,
        Kernel::Avx2 => 3,
    }
}

/// Chooses the variant for this process (`--kernel`); an unavailable one is refused.
pub fn set(k: Kernel) -> Result<(), String> {
    if !k.available() {
        return Err(format!("kernel {}: not on this CPU", k.name()));
    }
    CHOSEN.store(code(k), Ordering::Relaxed);
    Ok(())
}

/// The variant this process runs: as set, else `SHOAL_KERNEL` (an unknown or unavailable
/// value is said once on stderr and the scalar reference used), else [`Kernel::default_here`].
#[inline]
pub fn chosen() -> Kernel {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Kernel::Scalar,
        2 => Kernel::Lanes128,
        3 => Kernel::Avx2,
        _ => from_env(),
    }
}

#[cold]
fn from_env() -> Kernel {
    let k = match std::env::var("SHOAL_KERNEL") {
        Err(_) => Kernel::default_here(),
        Ok(s) => Kernel::parse(s.trim()).unwrap_or_else(|e| {
            eprintln!("warning: SHOAL_KERNEL: {e}; using the scalar kernel");
            Kernel::Scalar
        }),
    };
    // Another thread may have chosen meanwhile: the first choice stands.
    let _ = CHOSEN.compare_exchange(0, code(k), Ordering::Relaxed, Ordering::Relaxed);
    chosen()
}

/// Asks the cache for the line holding `*p` ahead of its use (a hint: it changes no value).
#[inline(always)]
pub(crate) fn prefetch<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and cannot fault; SSE is part of every
    // x86-64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((p as *const T).cast::<i8>());
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above; `prfm` is a hint that cannot fault.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p as *const T, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// One point's velocity from a layer pair's coefficient blocks (f32), as the scalar reference
/// computes it (`kernel::velocity_at`): each of the nine coefficients blended between the
/// layers, `c + (b - c) * wk`, then `u_j = c0_j + cx_j * dx + cy_j * dy` for the three
/// components, in that order. Here the nine blends run as two 4-lane blends and one scalar,
/// and the three components as one 4-lane evaluation: the same IEEE operations on each value,
/// so the same bits.
// The shuffles below take the block's layout as it is: three values, their x gradients, their
// y gradients.
const _: () = assert!(
    crate::fields::N_COEF == 9 && crate::fields::COEF_DX == 3 && crate::fields::COEF_DY == 6
);

#[inline(always)]
pub(crate) fn block_velocity(
    top: &[f32; 9],
    bot: &[f32; 9],
    wk: f32,
    dx: f32,
    dy: f32,
) -> [f64; 3] {
    let last = top[8] + (bot[8] - top[8]) * wk;
    block_lanes(top, bot, last, wk, dx, dy)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_lanes(top: &[f32; 9], bot: &[f32; 9], last: f32, wk: f32, dx: f32, dy: f32) -> [f64; 3] {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of every x86-64; the loads read 4 floats at offsets 0 and 4 of
    // 9-float arrays.
    unsafe {
        let w = _mm_set1_ps(wk);
        let blend = |i: usize| {
            let t = _mm_loadu_ps(top.as_ptr().add(i));
            let b = _mm_loadu_ps(bot.as_ptr().add(i));
            _mm_add_ps(t, _mm_mul_ps(_mm_sub_ps(b, t), w))
        };
        // lo = (c0, c1, c2, cx0), hi = (cx1, cx2, cy0, cy1), last = cy2.
        let (lo, hi) = (blend(0), blend(4));
        let t = _mm_shuffle_ps::<0b01_00_11_11>(lo, hi); // (cx0, cx0, cx1, cx2)
        let cx = _mm_shuffle_ps::<0b11_11_10_00>(t, t); // (cx0, cx1, cx2, cx2)
        let cy = _mm_shuffle_ps::<0b00_00_11_10>(hi, _mm_set1_ps(last)); // (cy0, cy1, cy2, cy2)
        let r = _mm_add_ps(
            _mm_add_ps(lo, _mm_mul_ps(cx, _mm_set1_ps(dx))),
            _mm_mul_ps(cy, _mm_set1_ps(dy)),
        );
        let (a, b) = (_mm_cvtps_pd(r), _mm_cvtps_pd(_mm_movehl_ps(r, r)));
        [
            _mm_cvtsd_f64(a),
            _mm_cvtsd_f64(_mm_unpackhi_pd(a, a)),
            _mm_cvtsd_f64(b),
        ]
    }
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn block_lanes(top: &[f32; 9], bot: &[f32; 9], last: f32, wk: f32, dx: f32, dy: f32) -> [f64; 3] {
    use std::arch::aarch64::*;
    // SAFETY: NEON is part of every aarch64 Linux target; the loads read 4 floats at offsets
    // 0 and 4 of 9-float arrays.
    unsafe {
        let blend = |i: usize| {
            let t = vld1q_f32(top.as_ptr().add(i));
            let b = vld1q_f32(bot.as_ptr().add(i));
            vaddq_f32(t, vmulq_n_f32(vsubq_f32(b, t), wk))
        };
        let (lo, hi) = (blend(0), blend(4));
        let cx = vextq_f32::<3>(lo, hi); // (cx0, cx1, cx2, cy0)
        let cy = vextq_f32::<2>(hi, vdupq_n_f32(last)); // (cy0, cy1, cy2, cy2)
        let r = vaddq_f32(vaddq_f32(lo, vmulq_n_f32(cx, dx)), vmulq_n_f32(cy, dy));
        let (a, b) = (vcvt_f64_f32(vget_low_f32(r)), vcvt_high_f64_f32(r));
        [
            vgetq_lane_f64::<0>(a),
            vgetq_lane_f64::<1>(a),
            vgetq_lane_f64::<0>(b),
        ]
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn block_lanes(top: &[f32; 9], bot: &[f32; 9], last: f32, wk: f32, dx: f32, dy: f32) -> [f64; 3] {
    let mut bl = [0f32; 9];
    for c in 0..8 {
        bl[c] = top[c] + (bot[c] - top[c]) * wk;
    }
    bl[8] = last;
    [0, 1, 2].map(|c| (bl[c] + bl[3 + c] * dx + bl[6 + c] * dy) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_parse_by_name_and_refuse_what_this_cpu_lacks() {
        assert_eq!(Kernel::parse("scalar"), Ok(Kernel::Scalar));
        assert_eq!(Kernel::parse("simd"), Ok(Kernel::best()));
        assert!(Kernel::parse("fast")
            .unwrap_err()
            .contains("use scalar, simd"));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Kernel::parse("sse2"), Ok(Kernel::Lanes128));
            assert_eq!(Kernel::parse("avx2").is_ok(), avx2());
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(Kernel::parse("neon"), Ok(Kernel::Lanes128));
            assert!(Kernel::parse("avx2").is_err());
        }
        assert_eq!(Kernel::all_available()[0], Kernel::Scalar);
    }
}
