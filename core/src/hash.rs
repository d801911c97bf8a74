//! A fast hasher for the checker's and reader's integer-keyed maps (cluster
//! and page numbers, table offsets, rule addresses). std's SipHash resists
//! hash flooding, which these maps do not need: their keys are bounded by
//! the caps of `Limits`, whatever the image says. SipHash was a tenth of a
//! qcow2 check's instructions on small images.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// One folded multiply per word: the 128-bit product of the key and an
/// odd constant, high half XOR low half, so both the low bits (the
/// table's bucket) and the high bits (its tag) depend on every key bit.
/// Cluster offsets, whose low bits are all zero, spread as well as any.
#[derive(Default, Clone, Copy)]
pub(crate) struct FoldHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl FoldHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let m = ((self.0 ^ word) as u128).wrapping_mul(K as u128);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for FoldHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(n as u64);
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// A HashMap keyed by integers, hashed by [`FoldHasher`].
pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FoldHasher>>;
/// A HashSet of integers, hashed by [`FoldHasher`].
pub(crate) type FastSet<K> = HashSet<K, BuildHasherDefault<FoldHasher>>;
