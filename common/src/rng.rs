//! Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers:
//! as easy as 1, 2, 3"). A draw is a pure function of (seed, particle id, step, stream), so a
//! particle's random walk never depends on thread count, chunking, partitioning or order of work.
//! Only 32-bit multiplies are used, so the GPU path can compute the very same numbers.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = (a as u64) * (b as u64);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds: maps a 128-bit counter and a 64-bit key to 128 random bits.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Which use a draw is for; distinct streams never share a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stream {
    /// Horizontal and vertical random walk of one step.
    Walk = 0,
    /// Release positions generated from the seed.
    Release = 1,
    /// Monte Carlo samples (smoke tests, estimates).
    Sample = 2,
    /// A particle's fate in one step: dying and settling.
    Fate = 3,
}

/// The random bits for one (seed, particle, step, stream) tuple.
#[inline]
pub fn draw(seed: u64, particle: u32, step: u32, stream: Stream) -> [u32; 4] {
    philox4x32_10(
        [particle, step, stream as u32, 0],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Uniform in the open interval (0, 1), from 32 bits.
#[inline(always)]
pub fn unit_open(bits: u32) -> f64 {
    (bits as f64 + 0.5) * (1.0 / 4_294_967_296.0)
}

/// Two independent standard normals from two 32-bit draws (Box-Muller).
#[inline]
pub fn normal_pair(b0: u32, b1: u32) -> (f64, f64) {
    let r = (-2.0 * unit_open(b0).ln()).sqrt();
    let theta = std::f64::consts::TAU * unit_open(b1);
    (r * theta.cos(), r * theta.sin())
}

/// How many of the Monte Carlo samples `first..first + count` fall inside the quarter circle
/// x² + y² < 1 of the unit square: `shoal pi`'s kernel. Sample `k` is a pure function of
/// (seed, k): draw `k / 2` of [`Stream::Sample`] holds two points, and `k` takes the lower or the
/// upper pair of its words. So any split of the samples over nodes and threads gives the same
/// total. The test is exact, in integers: with x = (a + ½)/2³², x² + y² < 1 is
/// (2a + 1)² + (2b + 1)² < 2⁶⁶.
pub fn quarter_circle_hits(seed: u64, first: u64, count: u64) -> u64 {
    #[inline(always)]
    fn inside(a: u32, b: u32) -> u64 {
        let (a, b) = (2 * a as u128 + 1, 2 * b as u128 + 1);
        (a * a + b * b < 1u128 << 66) as u64
    }
    let draw_of = |j: u64| draw(seed, j as u32, (j >> 32) as u32, Stream::Sample);
    let end = first.saturating_add(count);
    let mut k = first;
    let mut hits = 0;
    if k < end && k % 2 == 1 {
        let w = draw_of(k / 2);
        hits += inside(w[2], w[3]);
        k += 1;
    }
    while k + 1 < end {
        let w = draw_of(k / 2);
        hits += inside(w[0], w[1]) + inside(w[2], w[3]);
        k += 2;
    }
    if k < end {
        let w = draw_of(k / 2);
        hits += inside(w[0], w[1]);
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors published with Random123 (kat_vectors, philox4x32 10 rounds).
    #[test]
    fn philox_matches_published_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn normals_have_unit_variance_and_zero_mean() {
        let n = 200_000u32;
        let (mut s, mut s2) = (0.0, 0.0);
        for i in 0..n / 2 {
            let b = draw(7, i, 3, Stream::Walk);
            let (a, c) = normal_pair(b[0], b[1]);
            s += a + c;
            s2 += a * a + c * c;
        }
        let mean = s / n as f64;
        let var = s2 / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }

    #[test]
    fn streams_and_steps_are_independent_counters() {
        assert_ne!(draw(1, 5, 9, Stream::Walk), draw(1, 5, 9, Stream::Release));
        assert_ne!(draw(1, 5, 9, Stream::Walk), draw(1, 5, 10, Stream::Walk));
        assert_ne!(draw(1, 5, 9, Stream::Walk), draw(2, 5, 9, Stream::Walk));
        assert_eq!(draw(1, 5, 9, Stream::Walk), draw(1, 5, 9, Stream::Walk));
    }

    #[test]
    fn pi_samples_split_anywhere_give_the_same_hits() {
        let (seed, n) = (2026, 100_001u64);
        let whole = quarter_circle_hits(seed, 0, n);
        // One sample at a time, straight from the definition.
        let one_by_one: u64 = (0..n)
            .map(|k| {
                let w = draw(seed, (k / 2) as u32, ((k / 2) >> 32) as u32, Stream::Sample);
                let (a, b) = if k % 2 == 0 {
                    (w[0], w[1])
                } else {
                    (w[2], w[3])
                };
                let (x, y) = (unit_open(a), unit_open(b));
                (x * x + y * y < 1.0) as u64
            })
            .sum();
        assert_eq!(whole, one_by_one);
        for cuts in [[0, 1, 2], [3, 50_000, 50_001], [7, 8, 99_999]] {
            let mut b = vec![0];
            b.extend(cuts);
            b.push(n);
            let split: u64 = b
                .windows(2)
                .map(|w| quarter_circle_hits(seed, w[0], w[1] - w[0]))
                .sum();
            assert_eq!(split, whole, "cut at {cuts:?}");
        }
        let estimate = 4.0 * whole as f64 / n as f64;
        let sigma = 4.0
            * (0.25 * std::f64::consts::PI * (1.0 - 0.25 * std::f64::consts::PI) / n as f64).sqrt();
        assert!(
            (estimate - std::f64::consts::PI).abs() < 4.0 * sigma,
            "{estimate}"
        );
        assert_ne!(quarter_circle_hits(seed + 1, 0, n), whole);
        assert_eq!(
            quarter_circle_hits(seed, u64::MAX - 1, 5),
            quarter_circle_hits(seed, u64::MAX - 1, 1)
        );
        assert_eq!(quarter_circle_hits(seed, 10, 0), 0);
    }
}
