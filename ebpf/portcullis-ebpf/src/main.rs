//! The Portcullis XDP flood filter. Per packet, before the kernel allocates
//! anything:
//!
//! 1. parse Ethernet (up to two VLAN tags), IPv4 / IPv6 (up to four
//!    extension headers), UDP / TCP, every read bounds-checked; malformed
//!    headers are dropped; fragments after the first pay the source's UDP
//!    bucket;
//! 2. drop sources in the blocklists (LPM tries, IPv4 and IPv6; blocked
//!    sources are counted per reason, not per source). An entry may carry
//!    an expiry, enforced here with no userspace running: an expired entry
//!    neither blocks nor hides the broader entries it sits in;
//! 3. drop sources listed by a threat-intelligence feed (LPM tries fed
//!    from feed files, counted per feed) unless they are allowlisted: the
//!    operator's blocklist wins over the allowlist, the allowlist over feeds;
//! 4. traffic not for a gateway port (SSH, the control plane, ARP…) passes;
//! 5. UDP and TCP SYNs to gateway ports pay a per-source token bucket (per
//!    IPv4 address, per IPv6 /64; direct-mapped into an array by a keyed
//!    hash: a source that lands on a taken slot takes it over, as an LRU
//!    would evict),
//!    unless the source is allowlisted; over the rate: drop. Buckets are
//!    shared by all CPUs (one rate per source, not per CPU); two CPUs
//!    updating one source's bucket at the same instant may lose an update
//!    (BPF has no atomic compare-and-swap here), which can let a packet or
//!    two extra through, never block one wrongly;
//! 6. the rest goes to the AF_XDP socket of the receiving queue, or to the
//!    kernel if none is registered there.
//!
//! Every outcome counts in a per-CPU counter named after it.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::bindings::xdp_action;
use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use aya_ebpf::macros::{map, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, LpmTrie, PerCpuArray, XskMap};
use aya_ebpf::programs::XdpContext;
use portcullis_common::{
    block_active, block_prefix_len, bucket_kind, bucket_slot, ip_proto, lists, port_index, v4_mapped, Bucket,
    BucketKey, FeedInfo, FeedValue, FilterConfig, Verdict, BLOCK_PERMANENT, BUCKET_SLOTS, FEED_V4_ENTRIES,
    FEED_V6_ENTRIES, MAX_FEEDS, MICRO,
};

#[map]
static CONFIG: Array<FilterConfig> = Array::pinned(1, 0);
/// One byte per (protocol, port): index `port` for UDP, `65536 + port` for
/// TCP; non-zero marks a gateway port. An array lookup is far cheaper than
/// a hash lookup on every packet.
#[map]
static PORTS: Array<u8> = Array::pinned(2 * 65_536, 0);
/// Blocked sources; the value is when the block ends (`bpf_ktime_get_ns`),
/// 0 for never.
#[map]
static BLOCK_V4: LpmTrie<[u8; 4], u64> = LpmTrie::pinned(65_536, 0);
#[map]
static BLOCK_V6: LpmTrie<[u8; 16], u64> = LpmTrie::pinned(65_536, 0);
#[map]
static ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::pinned(4_096, 0);
#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::pinned(4_096, 0);
#[map]
static BUCKETS: Array<Bucket> = Array::pinned(BUCKET_SLOTS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Verdict::COUNT, 0);
#[map]
static XSKS: XskMap = XskMap::pinned(64, 0);
/// Ranges listed by threat feeds; the value says which feeds.
#[map]
static FEED_V4: LpmTrie<[u8; 4], FeedValue> = LpmTrie::pinned(FEED_V4_ENTRIES, 0);
#[map]
static FEED_V6: LpmTrie<[u8; 16], FeedValue> = LpmTrie::pinned(FEED_V6_ENTRIES, 0);
/// The feed registry (names, sizes), kept by userspace; declared here so
/// that it is created and pinned with the other maps.
#[map]
static FEED_NAMES: Array<FeedInfo> = Array::pinned(MAX_FEEDS, 0);
/// Drops per feed.
#[map]
static FEED_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_FEEDS, 0);

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_LEN: usize = 40;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn portcullis_xdp(ctx: XdpContext) -> u32 {
    let verdict = filter(&ctx);
    if let Some(c) = COUNTERS.get_ptr_mut(verdict as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
    match verdict {
        Verdict::Redirected => XSKS.redirect(ctx.rx_queue_index(), 0).unwrap_or(xdp_action::XDP_PASS),
        Verdict::DropMalformed | Verdict::DropBlocklisted | Verdict::DropRateLimited | Verdict::DropThreatFeed => {
            xdp_action::XDP_DROP
        }
        Verdict::PassOther | Verdict::PassGateway => xdp_action::XDP_PASS,
    }
}

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// One byte of the packet. The volatile read keeps LLVM from merging
/// loads into shapes the verifier cannot follow.
#[inline(always)]
fn byte(ctx: &XdpContext, offset: usize) -> Option<u8> {
    // SAFETY: `at` checked the bounds.
    at::<u8>(ctx, offset).map(|p| unsafe { core::ptr::read_volatile(p) })
}

#[inline(always)]
fn be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let (hi, lo) = (byte(ctx, offset)?, byte(ctx, offset + 1)?);
    Some(u16::from_be_bytes([hi, lo]))
}

/// A packet's source and its transport, as far as the filter cares.
struct Packet {
    src: [u8; 16],
    v4: Option<[u8; 4]>,
    proto: u8,
    l4: usize,
}

fn filter(ctx: &XdpContext) -> Verdict {
    let Some(mut ethertype) = be16(ctx, 12) else { return Verdict::DropMalformed };
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = be16(ctx, l3 + 2) else { return Verdict::DropMalformed };
        ethertype = inner;
        l3 += VLAN_LEN;
    }
    let packet = match ethertype {
        ETH_P_IPV4 => match ipv4(ctx, l3) {
            Ok(p) => p,
            Err(v) => return v,
        },
        ETH_P_IPV6 => match ipv6(ctx, l3) {
            Ok(p) => p,
            Err(v) => return v,
        },
        _ => return Verdict::PassOther,
    };
    let lists = CONFIG.get(0).map_or(u32::MAX, |c| c.lists);
    if blocked(&packet, lists) {
        return Verdict::DropBlocklisted;
    }
    if feed_drop(&packet, lists) {
        return Verdict::DropThreatFeed;
    }
    let (port, kind) = match packet.proto {
        ip_proto::UDP => {
            let (Some(port), Some(len)) = (be16(ctx, packet.l4 + 2), be16(ctx, packet.l4 + 4)) else {
                return Verdict::DropMalformed;
            };
            if (len as usize) < UDP_LEN {
                return Verdict::DropMalformed;
            }
            (port, Some(bucket_kind::UDP))
        }
        ip_proto::TCP => {
            let (Some(port), Some(offset), Some(flags)) =
                (be16(ctx, packet.l4 + 2), byte(ctx, packet.l4 + 12), byte(ctx, packet.l4 + 13))
            else {
                return Verdict::DropMalformed;
            };
            if ((offset >> 4) as usize) * 4 < TCP_LEN || at::<[u8; TCP_LEN]>(ctx, packet.l4).is_none() {
                return Verdict::DropMalformed;
            }
            let syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
            (port, if syn { Some(bucket_kind::SYN) } else { None })
        }
        _ => return Verdict::PassOther,
    };
    if PORTS.get(port_index(port, packet.proto)).is_none_or(|v| *v == 0) {
        return Verdict::PassOther;
    }
    // The allowlist is only consulted for sources over their rate.
    if let Some(kind) = kind {
        if !take_token(&packet.src, kind) && !allowed(&packet, lists) {
            return Verdict::DropRateLimited;
        }
    }
    if XSKS.get(ctx.rx_queue_index()).is_some() {
        Verdict::Redirected
    } else {
        Verdict::PassGateway
    }
}

fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, Verdict> {
    let version_ihl = byte(ctx, l3).ok_or(Verdict::DropMalformed)?;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Err(Verdict::DropMalformed);
    }
    let total = be16(ctx, l3 + 2).ok_or(Verdict::DropMalformed)? as usize;
    let frag = be16(ctx, l3 + 6).ok_or(Verdict::DropMalformed)?;
    let proto = byte(ctx, l3 + 9).ok_or(Verdict::DropMalformed)?;
    // SAFETY: bounds checked by `at`.
    let src = unsafe { *at::<[u8; 4]>(ctx, l3 + 12).ok_or(Verdict::DropMalformed)? };
    if total < ihl || at::<[u8; 20]>(ctx, l3).is_none() {
        return Err(Verdict::DropMalformed);
    }
    let packet = Packet { src: v4_mapped(src), v4: Some(src), proto, l4: l3 + ihl };
    if frag & 0x1fff != 0 {
        return Err(later_fragment(&packet));
    }
    Ok(packet)
}

fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, Verdict> {
    let version = byte(ctx, l3).ok_or(Verdict::DropMalformed)?;
    if version >> 4 != 6 || at::<[u8; IPV6_LEN]>(ctx, l3).is_none() {
        return Err(Verdict::DropMalformed);
    }
    let mut proto = byte(ctx, l3 + 6).ok_or(Verdict::DropMalformed)?;
    // SAFETY: bounds checked by `at`.
    let src = unsafe { *at::<[u8; 16]>(ctx, l3 + 8).ok_or(Verdict::DropMalformed)? };
    let mut l4 = l3 + IPV6_LEN;
    // Walk up to four extension headers, so that a header in front cannot
    // smuggle a flood past the buckets.
    for _ in 0..4 {
        if !matches!(proto, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT) {
            break;
        }
        // Every extension header is at least 8 bytes; reading them whole
        // keeps the verifier able to prove the bounds at a variable offset.
        // SAFETY: `at` checked the bounds.
        let h = unsafe { core::ptr::read_volatile(at::<[u8; 8]>(ctx, l4).ok_or(Verdict::DropMalformed)?) };
        match proto {
            IPV6_FRAGMENT => {
                let offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
                proto = h[0];
                l4 += 8;
                if offset != 0 {
                    return Err(later_fragment(&Packet { src, v4: None, proto, l4 }));
                }
            }
            _ => {
                proto = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
        }
    }
    Ok(Packet { src, v4: None, proto, l4 })
}

/// A fragment after the first carries no ports: blocklisted sources are
/// dropped, and the rest pays the source's UDP bucket (floods of fragments
/// are still floods).
#[inline(always)]
fn later_fragment(p: &Packet) -> Verdict {
    let lists = CONFIG.get(0).map_or(u32::MAX, |c| c.lists);
    if blocked(p, lists) {
        Verdict::DropBlocklisted
    } else if feed_drop(p, lists) {
        Verdict::DropThreatFeed
    } else if !take_token(&p.src, bucket_kind::UDP) && !allowed(p, lists) {
        Verdict::DropRateLimited
    } else {
        Verdict::PassOther
    }
}

/// Whether the source is blocklisted; empty lists are not looked up.
#[inline(always)]
fn blocked(p: &Packet, lists: u32) -> bool {
    match p.v4 {
        Some(a) => lists & lists::BLOCK_V4 != 0 && block_in(&BLOCK_V4, a),
        None => lists & lists::BLOCK_V6 != 0 && block_in(&BLOCK_V6, p.src),
    }
}

/// Whether an entry of `trie` that has not expired covers `addr`.
///
/// The lookup returns the longest matching entry only. When that one has
/// expired, the broader entries around it (a permanent /24 around an
/// expired /32) still apply: the lookup just under the expired entry's
/// prefix length, which its value carries ([`block_prefix_len`]), returns
/// the next one out. One more lookup per expired entry passed, and only for
/// sources of an expired entry, until userspace purges it.
#[inline(always)]
fn block_in<const N: usize>(trie: &LpmTrie<[u8; N], u64>, addr: [u8; N]) -> bool {
    let bits = (N * 8) as u32;
    let Some(&value) = trie.get(Key::new(bits, addr)) else { return false };
    if value == BLOCK_PERMANENT {
        return true;
    }
    // SAFETY: a read of CLOCK_MONOTONIC, the clock userspace computes
    // expiries with (the coarse one lags by up to a tick).
    let now = unsafe { bpf_ktime_get_ns() };
    if block_active(value, now) {
        return true;
    }
    // Lookups at lengths under `below` skip the expired entries passed. A
    // value without its length (written by another tool) costs a step per
    // bit instead, never a missed entry, thanks to the `min`.
    let mut below = block_prefix_len(value).min(bits);
    for _ in 0..bits {
        if below == 0 {
            return false;
        }
        let Some(&value) = trie.get(Key::new(below - 1, addr)) else { return false };
        if block_active(value, now) {
            return true;
        }
        below = block_prefix_len(value).min(below - 1);
    }
    false
}

/// The first feed listing the source, if any.
#[inline(always)]
fn feed_of(p: &Packet, lists: u32) -> Option<u32> {
    let value = match p.v4 {
        Some(a) if lists & lists::FEED_V4 != 0 => FEED_V4.get(Key::new(32, a)),
        None if lists & lists::FEED_V6 != 0 => FEED_V6.get(Key::new(128, p.src)),
        _ => None,
    };
    value.map(|v| v.first)
}

/// Whether a threat feed lists the source and it is not allowlisted; the
/// drop is counted for the first feed listing it.
#[inline(always)]
fn feed_drop(p: &Packet, lists: u32) -> bool {
    let Some(feed) = feed_of(p, lists) else { return false };
    if allowed(p, lists) {
        return false;
    }
    if let Some(c) = FEED_DROPS.get_ptr_mut(feed) {
        // SAFETY: a per-CPU slot, written only by this CPU.
        unsafe { *c += 1 };
    }
    true
}

/// Whether the source is allowlisted; empty lists are not looked up.
#[inline(always)]
fn allowed(p: &Packet, lists: u32) -> bool {
    match p.v4 {
        Some(a) => lists & lists::ALLOW_V4 != 0 && ALLOW_V4.get(Key::new(32, a)).is_some(),
        None => lists & lists::ALLOW_V6 != 0 && ALLOW_V6.get(Key::new(128, p.src)).is_some(),
    }
}

/// The source's bucket of `kind`: whether a token was left.
#[inline(always)]
fn take_token(src: &[u8; 16], kind: u8) -> bool {
    let Some(cfg) = CONFIG.get(0) else { return true };
    let (rate, burst) =
        if kind == bucket_kind::UDP { (cfg.udp_rate, cfg.udp_burst) } else { (cfg.syn_rate, cfg.syn_burst) };
    if rate == 0 {
        return true;
    }
    // SAFETY: a monotonic clock read; the coarse clock (a tick, a few ms)
    // is cheaper and fine for refills.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // IPv6 sources share a bucket per /64: one host owns a whole /64, and
    // per-address buckets would let it walk past the limit.
    let mut addr = *src;
    if !is_v4_mapped(&addr) {
        addr[8..].copy_from_slice(&[0; 8]);
    }
    let key = BucketKey { addr, kind, _pad: [0; 3] };
    let Some(b) = BUCKETS.get_ptr_mut(bucket_slot(&key, cfg.seed)) else { return true };
    // SAFETY: an array slot; concurrent CPUs may race (see the module
    // docs), which costs accuracy, not memory safety.
    unsafe {
        if (*b).key != key {
            // A new source in this slot (or a collision): a fresh bucket.
            *b = Bucket { key, _pad: 0, tokens: (burst as u64).saturating_sub(1) * MICRO, last_ns: now, dropped: 0 };
            return burst > 0;
        }
        (*b).take(now, rate, burst)
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
