//! The tests' one source of chance: xorshift64*, small, seeded and deterministic (std has no
//! random numbers). The fuzz tests (`gdb/fuzz.rs`, `symbols/tests.rs`, and version C's
//! `fileio/tests/model.rs`) each print their seed when they fail, so that a failure repeats.
#![forbid(unsafe_code)]

/// A seeded generator: the same seed gives the same numbers (a seed of 0 is taken as 1).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index into something `len` long (0 when `len` is 0).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    #[allow(dead_code)] // version C's file-protocol model
    pub fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[7]
    }

    /// True `percent` times in a hundred.
    #[allow(dead_code)] // version C's file-protocol model
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
