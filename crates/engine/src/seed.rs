//! Seeded randomness that never changes between releases: SplitMix64 (Steele, Lea, Flood 2014)
//! and a mixer of two seeds built on its finaliser.
//!
//! Written here rather than taken from `rand`, whose `StdRng` algorithm is documented as free
//! to change: a resumed run must draw the same epoch order and dropout masks from
//! `(seed, step)` after any dependency update. Used by data batching (epoch order, splits) and
//! LoRA (initialisation streams, dropout masks).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective avalanche of 64 bits.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes two seeds into one (e.g. run seed and step, or step and adapter stream).
pub fn mix(a: u64, b: u64) -> u64 {
    finalize(a ^ b.wrapping_mul(GOLDEN))
}

/// The SplitMix64 generator: tiny, fast, and fixed forever.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        finalize(self.0)
    }

    /// Uniform in `0..n` (n > 0) by rejection, so small `n` has no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference SplitMix64 stream for seed 1234567 (Vigna's `splitmix64.c`), so the
    /// generator cannot drift silently: every saved run's data order depends on it.
    #[test]
    fn matches_the_reference_stream() {
        let mut g = SplitMix64(1234567);
        let want = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for w in want {
            assert_eq!(g.next_u64(), w);
        }
    }
}
