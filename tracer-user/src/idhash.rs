//! A fast hasher for maps keyed by identifiers the kernel or the agent generates (connection ids,
//! pids, thread ids, sequence numbers). They are not chosen by traced peers, so the DoS
//! resistance of the default SipHash buys nothing there; maps keyed by peer-controlled values
//! (socket addresses) keep the default hasher.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-rotate hashing (the FxHash construction) over the key's integer writes.
#[derive(Clone, Copy, Default)]
pub struct IdHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    /// Finished with murmur3's fmix64: a bare multiply leaves keys that differ only in their
    /// high bits (conn ids are `cpu << 56 | sequence`) with equal low bits, which the table
    /// indexes by.
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_i32(&mut self, i: i32) {
        self.add(i as u32 as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

pub type IdHashMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type IdHashSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sequential_ids_and_behaves_as_a_map() {
        let mut map: IdHashMap<(u64, u64), u64> = IdHashMap::default();
        for conn in 0..1000u64 {
            for seq in 0..4 {
                map.insert(((7 << 56) | conn, seq), conn * 4 + seq);
            }
        }
        assert_eq!(map.len(), 4000);
        assert_eq!(map.get(&((7 << 56) | 999, 3)), Some(&3999));
        // Ids that differ only in high bits (other CPUs) or only in low bits must spread over
        // both the low bits (bucket index) and the top 7 bits (control byte).
        for ids in [
            (0..256u64).map(|cpu| cpu << 56).collect::<Vec<_>>(),
            (0..256u64).map(|seq| seq << 32).collect(),
            (0..256u64).collect(),
        ] {
            let hashes: Vec<u64> = ids
                .iter()
                .map(|id| {
                    let mut h = IdHasher::default();
                    h.write_u64(*id);
                    h.finish()
                })
                .collect();
            let low: std::collections::HashSet<u64> = hashes.iter().map(|h| h & 0xff).collect();
            let top: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert!(
                low.len() > 128 && top.len() > 64,
                "clustered: {} {}",
                low.len(),
                top.len()
            );
        }
    }
}
