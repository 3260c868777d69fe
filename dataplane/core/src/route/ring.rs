//! Consistent hashing: a ring of virtual nodes per server, placed by a hash
//! of the server's address, so that every gateway builds the same ring and
//! adding or removing one of N servers moves only about 1/N of the keys.

/// Virtual nodes per unit of weight.
const VNODES: u32 = 160;

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser): the same on
/// every machine and every build, unlike std's hasher.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A hash ring mapping keys to server indexes.
#[derive(Debug, Default, Clone)]
pub struct HashRing {
    points: Vec<(u64, usize)>,
}

impl HashRing {
    /// A ring over servers given as `(address, weight)`; server `i` is the
    /// `i`-th of the iterator.
    pub fn new<'a>(servers: impl IntoIterator<Item = (&'a str, u32)>) -> HashRing {
        let mut points = Vec::new();
        for (i, (addr, weight)) in servers.into_iter().enumerate() {
            for v in 0..VNODES * weight.max(1) {
                points.push((stable_hash(format!("{addr}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// The first server clockwise from `hash` for which `usable` holds.
    pub fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.points.len();
        let start = self.points.partition_point(|p| p.0 < hash);
        (0..n).map(|k| self.points[(start + k) % n].1).find(|&i| usable(i))
    }
}
