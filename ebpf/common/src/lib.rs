//! Types shared between the XDP program (kernel side, `no_std`) and the
//! dataplane that loads it and manages its maps.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree
//! on the layout of map keys and values byte for byte. With the `user`
//! feature they implement `aya::Pod`.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod cidr;

/// What the XDP program did with a packet. Each has its own per-CPU
/// counter in [`maps::COUNTERS`], indexed by the discriminant.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for a gateway port (SSH, control plane, ARP…): to the kernel.
    PassOther = 0,
    /// For a gateway port, but no AF_XDP socket on this queue: to the kernel.
    PassGateway = 1,
    /// For a gateway port: redirected to the AF_XDP socket of its queue.
    Redirected = 2,
    /// Dropped: headers truncated or inconsistent.
    DropMalformed = 3,
    /// Dropped: the source is in a blocklist.
    DropBlocklisted = 4,
    /// Dropped: the source exceeded its UDP or SYN rate.
    DropRateLimited = 5,
    /// Dropped: the source is listed by a threat-intelligence feed (and
    /// not allowlisted).
    DropThreatFeed = 6,
}

impl Verdict {
    /// Number of verdicts, the length of the counter array.
    pub const COUNT: u32 = 7;

    /// Every verdict, in discriminant order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::PassOther,
        Verdict::PassGateway,
        Verdict::Redirected,
        Verdict::DropMalformed,
        Verdict::DropBlocklisted,
        Verdict::DropRateLimited,
        Verdict::DropThreatFeed,
    ];

    /// The counter name used in metrics and the CLI (`drop_rate_limited`…).
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassOther => "pass_other",
            Verdict::PassGateway => "pass_gateway",
            Verdict::Redirected => "redirected",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropBlocklisted => "drop_blocklisted",
            Verdict::DropRateLimited => "drop_rate_limited",
            Verdict::DropThreatFeed => "drop_threat_feed",
        }
    }
}

/// IP protocol numbers of the gateway ports.
pub mod ip_proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Names of the program and of its maps, pinned by name under
/// `/sys/fs/bpf/portcullis/`.
pub mod maps {
    /// The XDP program.
    pub const PROGRAM: &str = "portcullis_xdp";
    /// `Array<FilterConfig>` of one entry.
    pub const CONFIG: &str = "CONFIG";
    /// `Array<u8>` indexed by [`crate::port_index`]: the gateway ports.
    pub const PORTS: &str = "PORTS";
    /// `LpmTrie<[u8; 4], u64>`: blocked IPv4 sources. The value is when the
    /// block ends, in `bpf_ktime_get_ns` time (CLOCK_MONOTONIC, ns), or
    /// [`BLOCK_PERMANENT`](crate::BLOCK_PERMANENT); see
    /// [`block_active`](crate::block_active). The low byte of an expiry is
    /// the entry's prefix length ([`block_value`](crate::block_value)).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// `LpmTrie<[u8; 16], u64>`: blocked IPv6 sources, valued as
    /// [`BLOCK_V4`].
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// `LpmTrie<[u8; 4], u8>`: IPv4 sources that bypass rate limits.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<[u8; 16], u8>`: IPv6 sources that bypass rate limits.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `Array<Bucket>` of [`crate::BUCKET_SLOTS`]: per-source token buckets,
    /// direct-mapped by a keyed hash of the source.
    pub const BUCKETS: &str = "BUCKETS";
    /// `PerCpuArray<u64>` of [`crate::Verdict::COUNT`] counters.
    pub const COUNTERS: &str = "COUNTERS";
    /// `XskMap`: the AF_XDP socket of each receive queue.
    pub const XSKS: &str = "XSKS";
    /// `LpmTrie<[u8; 4], FeedValue>`: IPv4 ranges listed by threat feeds
    /// ([`crate::FeedValue`]: which feeds list each).
    pub const FEED_V4: &str = "FEED_V4";
    /// `LpmTrie<[u8; 16], FeedValue>`: IPv6 ranges listed by threat feeds.
    pub const FEED_V6: &str = "FEED_V6";
    /// `Array<FeedInfo>` of [`crate::MAX_FEEDS`]: the registry of feeds by
    /// id (name, entries, last load), kept by userspace.
    pub const FEED_NAMES: &str = "FEED_NAMES";
    /// `PerCpuArray<u64>` of [`crate::MAX_FEEDS`]: packets dropped per feed
    /// (counted for the lowest-numbered feed listing the source).
    pub const FEED_DROPS: &str = "FEED_DROPS";
}

/// Most threat feeds loaded at once (a feed is a bit of [`FeedValue::feeds`]).
pub const MAX_FEEDS: u32 = 64;

/// Capacity of [`maps::FEED_V4`]: room for the large public lists
/// (FireHOL level 1–3, Spamhaus DROP) together.
pub const FEED_V4_ENTRIES: u32 = 262_144;

/// Capacity of [`maps::FEED_V6`].
pub const FEED_V6_ENTRIES: u32 = 65_536;

/// The value of a threat-feed trie entry: every feed that lists the range,
/// so that feeds listing the same range can be loaded and removed
/// independently.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedValue {
    /// Bit `i` set: feed `i` lists this range.
    pub feeds: u64,
    /// The lowest set bit of `feeds` (the feed a drop is counted for),
    /// kept by userspace so the program needs no bit scan.
    pub first: u32,
    /// Explicit padding, always zero.
    pub _pad: u32,
}

impl FeedValue {
    /// The value listing `feeds` (a bitmask, not 0).
    pub const fn of(feeds: u64) -> FeedValue {
        FeedValue { feeds, first: feeds.trailing_zeros(), _pad: 0 }
    }
}

/// Longest feed name, in bytes.
pub const FEED_NAME_LEN: usize = 48;

/// A slot of the feed registry ([`maps::FEED_NAMES`]); an all-zero slot is
/// free.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedInfo {
    /// The name, UTF-8, zero-padded.
    pub name: [u8; FEED_NAME_LEN],
    /// IPv4 entries in the trie for this feed.
    pub entries_v4: u32,
    /// IPv6 entries in the trie for this feed.
    pub entries_v6: u32,
    /// When it was last synced, Unix time in milliseconds.
    pub loaded_unix_ms: u64,
}

impl Default for FeedInfo {
    fn default() -> Self {
        FeedInfo { name: [0; FEED_NAME_LEN], entries_v4: 0, entries_v6: 0, loaded_unix_ms: 0 }
    }
}

/// The value of a blocklist entry that never expires.
pub const BLOCK_PERMANENT: u64 = 0;

/// Whether a blocklist entry whose value is `expires_ns` (see
/// [`maps::BLOCK_V4`]) still blocks at `now_ns` (CLOCK_MONOTONIC, ns): it is
/// permanent, or its end is still ahead. An entry that no longer blocks is
/// as if it were not listed, until userspace removes it. Shared by the XDP
/// program and the loader so both judge expiry alike.
#[inline(always)]
pub const fn block_active(expires_ns: u64, now_ns: u64) -> bool {
    expires_ns == BLOCK_PERMANENT || now_ns < expires_ns
}

/// The blocklist value of an entry of `prefix_len` bits whose block ends
/// at `end_ns` (CLOCK_MONOTONIC): the time rounded up to a multiple of
/// 256 ns (and never 0, which is [`BLOCK_PERMANENT`]), with the prefix
/// length in its low byte. Once the entry has expired, the program looks up
/// the broader entries around it just under that length, in one lookup
/// instead of one per bit.
#[inline(always)]
pub const fn block_value(end_ns: u64, prefix_len: u8) -> u64 {
    let rounded = end_ns.saturating_add(0xff) & !0xff;
    (if rounded == 0 { 0x100 } else { rounded }) | prefix_len as u64
}

/// The prefix length a blocklist value carries (see [`block_value`]).
#[inline(always)]
pub const fn block_prefix_len(value: u64) -> u32 {
    (value & 0xff) as u32
}

/// Index of a gateway port in the ports array: UDP ports first, then TCP.
#[inline(always)]
pub const fn port_index(port: u16, proto: u8) -> u32 {
    if proto == ip_proto::TCP {
        65_536 + port as u32
    } else {
        port as u32
    }
}

/// Bits of [`FilterConfig::lists`]: which lists have entries, so that the
/// program skips lookups in empty tries.
pub mod lists {
    /// `BLOCK_V4` is not empty.
    pub const BLOCK_V4: u32 = 1;
    /// `BLOCK_V6` is not empty.
    pub const BLOCK_V6: u32 = 2;
    /// `ALLOW_V4` is not empty.
    pub const ALLOW_V4: u32 = 4;
    /// `ALLOW_V6` is not empty.
    pub const ALLOW_V6: u32 = 8;
    /// `FEED_V4` is not empty.
    pub const FEED_V4: u32 = 16;
    /// `FEED_V6` is not empty.
    pub const FEED_V6: u32 = 32;
}

/// Rates of the per-source token buckets, packets per second; a rate of 0
/// means no limit.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterConfig {
    /// UDP packets per second per source, to gateway ports.
    pub udp_rate: u32,
    /// UDP bucket size.
    pub udp_burst: u32,
    /// TCP SYNs per second per source, to gateway ports.
    pub syn_rate: u32,
    /// SYN bucket size.
    pub syn_burst: u32,
    /// [`lists`] bits, kept by the loader.
    pub lists: u32,
    /// Random key of the bucket hash, set by the loader: sources cannot be
    /// chosen to collide.
    pub seed: u32,
}

/// Which bucket of a source.
pub mod bucket_kind {
    /// UDP to gateway ports.
    pub const UDP: u8 = 0;
    /// TCP SYN to gateway ports.
    pub const SYN: u8 = 1;
}

/// Key of a token bucket: the source (IPv4 mapped into IPv6) and the kind.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BucketKey {
    /// Source address; IPv4 as `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// [`bucket_kind`].
    pub kind: u8,
    /// Explicit padding, always zero.
    pub _pad: [u8; 3],
}

/// Micro-tokens per packet: buckets count in millionths of a packet so the
/// refill needs no floating point.
pub const MICRO: u64 = 1_000_000;

/// Slots of the bucket array (a power of two).
pub const BUCKET_SLOTS: u32 = 1 << 18;

/// The slot of a source's bucket: a keyed hash of the address and kind.
#[inline(always)]
pub fn bucket_slot(key: &BucketKey, seed: u32) -> u32 {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&key.addr[..8]);
    hi.copy_from_slice(&key.addr[8..]);
    let x = u64::from_ne_bytes(lo) ^ u64::from_ne_bytes(hi).rotate_left(29) ^ ((key.kind as u64) << 56) ^ seed as u64;
    // splitmix64's finaliser.
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let h = x ^ (x >> 31);
    (h >> (64 - BUCKET_SLOTS.trailing_zeros())) as u32
}

/// A token bucket of one source, in its slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Whose bucket this is; another source hashing here takes the slot over.
    pub key: BucketKey,
    /// Explicit padding, always zero.
    pub _pad: u32,
    /// Tokens, in millionths of a packet.
    pub tokens: u64,
    /// Time of the last refill, `bpf_ktime_get_coarse_ns`.
    pub last_ns: u64,
    /// Packets of this source dropped for being over the rate (the "top
    /// sources" view; approximate when CPUs race).
    pub dropped: u64,
}

impl Bucket {
    /// Refills at `rate` per second up to `burst` for `now_ns`, then takes
    /// one packet's worth if there is one. Shared by the XDP program and the
    /// tests so both run the same arithmetic.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate: u32, burst: u32) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // Ten seconds refill any bucket; capping keeps the product small.
        let elapsed = if elapsed > 10_000_000_000 { 10_000_000_000 } else { elapsed };
        let cap = burst as u64 * MICRO;
        let refilled = self.tokens + elapsed * rate as u64 / 1_000;
        self.tokens = if refilled > cap { cap } else { refilled };
        self.last_ns = now_ns;
        if self.tokens >= MICRO {
            self.tokens -= MICRO;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// An IPv4 address as the IPv6 key of shared maps (`::ffff:a.b.c.d`).
#[inline(always)]
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` data with explicit padding, valid for any bytes.
    unsafe impl aya::Pod for super::FilterConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BucketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FeedValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FeedInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_stable() {
        assert_eq!(port_index(7000, ip_proto::UDP), 7000);
        assert_eq!(port_index(7000, ip_proto::TCP), 72_536);
        assert_eq!(core::mem::size_of::<FilterConfig>(), 24);
        assert_eq!(core::mem::size_of::<BucketKey>(), 20);
        assert_eq!(core::mem::size_of::<Bucket>(), 48);
        assert_eq!(core::mem::size_of::<FeedValue>(), 16);
        assert_eq!(core::mem::size_of::<FeedInfo>(), 64);
        assert_eq!(FeedValue::of(0b1100).first, 2);
        assert_eq!(Verdict::DropThreatFeed as u32, 6, "appended: earlier counters keep their index");
        for (i, v) in Verdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i);
        }
    }

    #[test]
    fn a_block_ends_at_its_expiry() {
        assert!(block_active(BLOCK_PERMANENT, u64::MAX), "permanent");
        assert!(block_active(1_000, 999));
        assert!(!block_active(1_000, 1_000), "over at its expiry");
        assert!(!block_active(1_000, 5_000));
        let v = block_value(1_000, 24);
        assert_eq!((v, block_prefix_len(v)), (1_024 | 24, 24), "rounded up, the length in the low byte");
        assert!(block_active(v, 1_000) && !block_active(v, 1_024 + 24));
        assert_eq!(block_value(512, 128), 512 | 128, "an aligned time stays");
        assert_eq!(block_prefix_len(block_value(u64::MAX, 32)), 32);
        assert_ne!(block_value(0, 0), BLOCK_PERMANENT, "a time is never taken for permanent");
    }

    #[test]
    fn bucket_slots_spread_and_depend_on_the_seed() {
        let key = |i: u32| BucketKey { addr: v4_mapped(i.to_be_bytes()), kind: 0, _pad: [0; 3] };
        let mut used = [false; BUCKET_SLOTS as usize];
        let mut distinct = 0;
        for i in 0..10_000u32 {
            let s = bucket_slot(&key(i), 7) as usize;
            if !used[s] {
                used[s] = true;
                distinct += 1;
            }
        }
        assert!(distinct > 9_700, "{distinct} distinct slots for 10 000 sources");
        let moved = (0..1000u32).filter(|i| bucket_slot(&key(*i), 7) != bucket_slot(&key(*i), 8)).count();
        assert!(moved > 990, "the seed changes the slots");
    }

    #[test]
    fn bucket_burst_then_rate() {
        let mut b = Bucket::default();
        // Starting empty at t=1 s: a full burst of 5 is available.
        let passed = (0..10).filter(|_| b.take(1_000_000_000, 100, 5)).count();
        assert_eq!(passed, 5);
        // 100/s: 10 ms later one more.
        assert!(b.take(1_010_000_000, 100, 5));
        assert!(!b.take(1_010_000_000, 100, 5));
        assert_eq!(b.dropped, 6, "five refused at first, one now");
        // Over a simulated second at 1000 attempts/s: about the rate.
        let mut n = 0;
        for ms in 1..=1000u64 {
            if b.take(1_010_000_000 + ms * 1_000_000, 100, 5) {
                n += 1;
            }
        }
        assert!((99..=101).contains(&n), "{n}");
    }
}
