//! Which instructions the kernel's lanes run on: one choice per process, from `SHOAL_KERNEL`
//! (or `--kernel` on the command line), checked against what this CPU has.
//!
//! The kernel samples the flow for a batch of particles at once ([`crate::kernel`]): the
//! loads are per particle, and the arithmetic between them (the barycentric blends of the
//! surface and the bathymetry, the sigma bracket, the coefficient-block blends and the time
//! interpolation) runs over fixed-width arrays of lanes that the compiler turns into vector
//! instructions. That code is compiled once for each instruction set below and chosen here at
//! run time. Every variant does the same IEEE operations in the same order on each lane (no
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

    /// What a process runs unless told otherwise: the scalar reference. No vector variant is
    /// faster than it yet on the dense case (BENCHMARKS.md, "The kernel in lanes"): the
    /// sampling's time goes to each point's scattered loads, which lanes do not share.
    pub fn default_here() -> Kernel {
        Kernel::Scalar
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
