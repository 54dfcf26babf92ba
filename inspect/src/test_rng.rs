//! The tests' one source of chance: xorshift64*, small, seeded and deterministic (std has no
//! random numbers). Public, for the versions' fuzz tests as well as the toolbox's own (the gdb
//! packet fuzz test and the mutated ELFs of the symbol reader): each prints its seed when it
//! fails, so that a failure repeats.

/// A seeded generator: the same seed gives the same numbers (a seed of 0 is taken as 1).
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // never ends: an `Iterator` would only add an `Option`
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

    /// One of `items`, which must not be empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// A random byte.
    pub fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[7]
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
