//! Packet loss and delay on a routed harness's router, in userspace: a
//! stand-in for `tc netem`.
//!
//! # Why not netem
//!
//! The kernels we test on are built without `CONFIG_NET_SCH_NETEM` (and
//! without fq or codel), so `tc qdisc add … netem delay 30ms loss 5%` fails.
//! They do have TUN devices and policy routing, which is all this needs.
//!
//! # How packets flow
//!
//! [`start`] makes two TUN devices (`IFF_TUN | IFF_NO_PI`: bare IP
//! packets) in the router namespace `<name>-r`, one per direction, and
//! steers every packet the router forwards into them with policy routing
//! (IPv4 and IPv6 alike):
//!
//! ```text
//!  players → veth-rp ─ rule "iif veth-rp lookup 100" → table 100: default dev lossy-up   ─┐
//!                                                                                          │ read by this process:
//!  gateway → veth-rg ─ rule "iif veth-rg lookup 101" → table 101: default dev lossy-down ─┤ dropped with probability
//!                                                                                          │ `loss`, the rest held for
//!  written back to the same TUN: iif lossy-up / lossy-down, no rule matches,               │ `delay` (FIFO)
//!  the main table routes it out of veth-rg / veth-rp as before                          ←─┘
//! ```
//!
//! Each direction has its own thread, queue (bounded: packets beyond
//! [`LossyOptions::queue_limit`] are dropped, like a full netem queue) and
//! xorshift generator, so the directions lose packets independently, like
//! netem on both router interfaces. Packets are moved untouched (checksums
//! included); the router decrements their TTL / hop limit twice. The
//! router's own traffic (ARP, neighbour discovery) does not go through the
//! TUNs: the local table is looked up before the rules, and locally sent
//! packets have no `iif` of a veth. The TUNs get no IPv6 link-local
//! address; what multicast the router still sends into them (MLD reports)
//! is discarded and counted apart ([`DirectionStats::local`]).
//!
//! Dropping the [`LossyHandle`] deletes the rules, stops the threads and
//! closes the TUNs, which removes the devices and their routes: the router
//! forwards directly again. Should the process die instead, the kernel
//! removes the TUNs and their routes all the same, and the leftover rules
//! point at empty tables, which the kernel skips.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{enter, ip, ROUTER_GATEWAY_IFACE, ROUTER_PLAYERS_IFACE};

/// TUN device carrying packets from the players towards the gateway.
pub const TUN_TO_GATEWAY: &str = "lossy-up";
/// TUN device carrying packets from the gateway towards the players.
pub const TUN_TO_PLAYERS: &str = "lossy-down";
/// Routing table (and rule priority) of the players → gateway direction.
pub const TABLE_TO_GATEWAY: u32 = 100;
/// Routing table (and rule priority) of the gateway → players direction.
pub const TABLE_TO_PLAYERS: u32 = 101;

/// How packets are delayed and lost, in each direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossyOptions {
    /// How long every packet is held (one way).
    pub delay: Duration,
    /// Probability that a packet is dropped, in percent (0–100), in each
    /// direction independently.
    pub loss: f64,
    /// Seed of the loss generators (the same seed drops the same packets
    /// of the same sequence).
    pub seed: u64,
    /// Packets held per direction at most; more are dropped.
    pub queue_limit: usize,
}

impl Default for LossyOptions {
    fn default() -> Self {
        LossyOptions { delay: Duration::ZERO, loss: 0.0, seed: 1, queue_limit: 100_000 }
    }
}

/// Packet counts of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets read from the TUN.
    pub received: u64,
    /// Packets dropped at random.
    pub dropped: u64,
    /// Packets dropped because the queue was full.
    pub overflowed: u64,
    /// Packets written back (after the delay).
    pub forwarded: u64,
    /// Packets the kernel refused to take back.
    pub write_errors: u64,
    /// The router's own multicast sent into the TUN (MLD reports),
    /// discarded: not forwarded traffic, not counted as received.
    pub local: u64,
}

/// Packet counts of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossyStats {
    /// Players → gateway.
    pub to_gateway: DirectionStats,
    /// Gateway → players.
    pub to_players: DirectionStats,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    overflowed: AtomicU64,
    forwarded: AtomicU64,
    write_errors: AtomicU64,
    local: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            overflowed: self.overflowed.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            local: self.local.load(Ordering::Relaxed),
        }
    }
}

/// Loss and delay running on a harness's router; undone on drop (packets
/// still held then are discarded, as when a netem qdisc is removed).
pub struct LossyHandle {
    router: String,
    options: LossyOptions,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// `ip` arguments that delete the rules added so far.
    rules: Vec<Vec<String>>,
    counters: [Arc<Counters>; 2],
}

impl LossyHandle {
    /// The router namespace the packets go through.
    pub fn router(&self) -> &str {
        &self.router
    }

    /// The options it runs with.
    pub fn options(&self) -> LossyOptions {
        self.options
    }

    /// Packet counts so far.
    pub fn stats(&self) -> LossyStats {
        LossyStats { to_gateway: self.counters[0].snapshot(), to_players: self.counters[1].snapshot() }
    }

    /// Deletes the rules, stops the threads and closes the TUNs (which
    /// removes them and their routes). Idempotent.
    fn teardown(&mut self) {
        for rule in self.rules.drain(..) {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                eprintln!("lossy: cannot undo `ip {}`: {e}", args.join(" "));
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for LossyHandle {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Delays and drops every packet the router of harness `harness_name`
/// (namespace `<harness_name>-r`) forwards, in both directions, until the
/// handle is dropped.
pub fn start(harness_name: &str, options: LossyOptions) -> io::Result<LossyHandle> {
    if !(0.0..=100.0).contains(&options.loss) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("loss {} % is not 0–100", options.loss)));
    }
    if options.queue_limit == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "queue limit 0"));
    }
    let router = format!("{harness_name}-r");
    if !std::path::Path::new(&format!("/var/run/netns/{router}")).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no router namespace {router}: is {harness_name} a routed harness (`up --routed`)?"),
        ));
    }
    let mut handle = LossyHandle {
        router: router.clone(),
        options,
        stop: Arc::new(AtomicBool::new(false)),
        threads: Vec::new(),
        rules: Vec::new(),
        counters: [Arc::default(), Arc::default()],
    };
    // From here on, dropping `handle` undoes whatever was done.
    let mtu = [ROUTER_PLAYERS_IFACE, ROUTER_GATEWAY_IFACE]
        .iter()
        .map(|iface| link_mtu(&router, iface))
        .collect::<io::Result<Vec<u32>>>()?
        .into_iter()
        .max()
        .unwrap_or(1500)
        .max(1500);
    let directions = [
        (TUN_TO_GATEWAY, ROUTER_PLAYERS_IFACE, TABLE_TO_GATEWAY, 0x5157_4159_u64),
        (TUN_TO_PLAYERS, ROUTER_GATEWAY_IFACE, TABLE_TO_PLAYERS, 0x504c_4159_u64),
    ];
    let mut tuns = Vec::new();
    for (tun, ..) in directions {
        let fd = open_tun(&router, tun)?;
        // No link-local address on the TUN (addr_gen_mode 1): the router
        // then sends nothing of its own into it (MLD reports, router
        // solicitations), only what it forwards.
        for (key, value) in [
            (format!("net.ipv4.conf.{tun}.rp_filter"), "0"),
            ("net.ipv4.conf.all.rp_filter".to_string(), "0"),
            (format!("net.ipv6.conf.{tun}.forwarding"), "1"),
            (format!("net.ipv6.conf.{tun}.accept_ra"), "0"),
            (format!("net.ipv6.conf.{tun}.addr_gen_mode"), "1"),
        ] {
            crate::sysctl(&router, &key, value).map_err(io::Error::other)?;
        }
        let mtu = mtu.to_string();
        run_ip(&["-n", &router, "link", "set", "dev", tun, "mtu", &mtu, "up"])?;
        tuns.push(fd);
    }
    for (i, ((tun, _, _, salt), fd)) in directions.into_iter().zip(tuns).enumerate() {
        let (stop, counters) = (handle.stop.clone(), handle.counters[i].clone());
        let seed = options.seed ^ salt;
        let thread = std::thread::Builder::new()
            .name(format!("lossy {tun}"))
            .spawn(move || pump(fd, options, seed, &stop, &counters))?;
        handle.threads.push(thread);
    }
    for (tun, iif, table, _) in directions {
        let table = table.to_string();
        for family in ["-4", "-6"] {
            run_ip(&["-n", &router, family, "route", "add", "default", "dev", tun, "table", &table])?;
        }
        for family in ["-4", "-6"] {
            let rule = |verb: &str| -> Vec<String> {
                ["-n", &router, family, "rule", verb, "iif", iif, "lookup", &table, "priority", &table]
                    .map(String::from)
                    .to_vec()
            };
            // Rules a killed run left behind: this process holds the TUNs,
            // so no other one on this router uses them.
            let del = rule("del");
            while ip(&del.iter().map(String::as_str).collect::<Vec<_>>()).is_ok() {}
            let add = rule("add");
            run_ip(&add.iter().map(String::as_str).collect::<Vec<_>>())?;
            handle.rules.push(rule("del"));
        }
    }
    Ok(handle)
}

fn run_ip(args: &[&str]) -> io::Result<String> {
    ip(args).map_err(io::Error::other)
}

fn link_mtu(ns: &str, iface: &str) -> io::Result<u32> {
    let out = run_ip(&["-n", ns, "-o", "link", "show", iface])?;
    out.split(" mtu ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no MTU for {iface} in {ns}: {out}")))
}

/// `struct ifreq` as TUNSETIFF reads it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device `name` in network namespace `ns` (a device belongs
/// to the namespace of the thread that opened `/dev/net/tun`), non-blocking.
fn open_tun(ns: &str, name: &str) -> io::Result<OwnedFd> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name} too long")));
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns).map_err(io::Error::other)?;
            // SAFETY: a NUL-terminated path; the result is checked.
            let raw =
                unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if raw < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
            }
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
                _pad: [0; 22],
            };
            req.name[..name.len()].copy_from_slice(name.as_bytes());
            // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as (40 bytes).
            if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
                let e = io::Error::last_os_error();
                let hint = if e.raw_os_error() == Some(libc::EBUSY) { " (lossy already running there?)" } else { "" };
                return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name} in {ns}: {e}{hint}")));
            }
            Ok(fd)
        })
        .join()
        .expect("tun thread")
    })
}

/// xorshift64*: small, fast, good enough to drop packets.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds diverge and 0 is fine.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True with probability `percent` / 100.
    pub(crate) fn chance(&mut self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        // 53 random bits as a fraction in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit * 100.0 < percent
    }
}

/// Longest sleep between checks of the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// Packets read in a row before the queue's head is looked at again.
const READ_BURST: usize = 256;

/// One direction: reads packets from the TUN, drops some, writes the rest
/// back once due. Returns (closing the TUN) when `stop` is set.
fn pump(fd: OwnedFd, options: LossyOptions, seed: u64, stop: &AtomicBool, counters: &Counters) {
    let mut rng = XorShift::new(seed);
    // The delay is the same for all, so arrival order is due order.
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let (_, packet) = queue.pop_front().expect("front");
            // SAFETY: writes `packet.len()` initialised bytes from a live buffer.
            let n = unsafe { libc::write(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
            if n < 0 {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
            } else {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            if spare.len() < 1_024 {
                spare.push(packet);
            }
        }
        let wait = queue.front().map_or(TICK, |(due, _)| due.saturating_duration_since(now)).min(TICK);
        let timeout = libc::timespec { tv_sec: wait.as_secs() as libc::time_t, tv_nsec: wait.subsec_nanos().into() };
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let ready = unsafe { libc::ppoll(&mut pfd, 1, &timeout, std::ptr::null()) };
        if ready <= 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        for _ in 0..READ_BURST {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EAGAIN: drained.
            }
            let arrived = Instant::now();
            let packet = &buf[..n as usize];
            if !forwardable(packet) {
                counters.local.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.received.fetch_add(1, Ordering::Relaxed);
            if rng.chance(options.loss) {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if queue.len() >= options.queue_limit {
                counters.overflowed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut packet = spare.pop().unwrap_or_default();
            packet.clear();
            packet.extend_from_slice(&buf[..n as usize]);
            queue.push_back((arrived + options.delay, packet));
        }
    }
}

/// Whether `packet` can be something the router forwards: unicast IPv4 or
/// IPv6. The router forwards no multicast, so multicast in the TUN is its
/// own (MLD reports of the TUN device itself).
fn forwardable(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.len() >= 20 && !(224..=255).contains(&packet[16]),
        Some(6) => packet.len() >= 40 && packet[24] != 0xff,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_drops_about_the_asked_fraction() {
        for percent in [0.0, 5.0, 20.0, 50.0, 100.0] {
            let mut rng = XorShift::new(42);
            let dropped = (0..100_000).filter(|_| rng.chance(percent)).count() as f64 / 1_000.0;
            assert!((dropped - percent).abs() < 0.5, "{percent} %: dropped {dropped} %");
        }
    }

    #[test]
    fn the_same_seed_drops_the_same_packets() {
        let run = |seed| {
            let mut rng = XorShift::new(seed);
            (0..1_000).map(|_| rng.chance(30.0)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert_ne!(XorShift::new(0).next_u64(), 0);
    }

    #[test]
    fn only_unicast_counts_as_forwarded() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 77, 0, 1]);
        assert!(forwardable(&v4));
        v4[16] = 224;
        assert!(!forwardable(&v4));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        assert!(forwardable(&v6));
        v6[24] = 0xff;
        assert!(!forwardable(&v6));
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = LossyOptions { loss: 120.0, ..LossyOptions::default() };
        assert_eq!(start("pcx-none", bad).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        let missing = start("pcx-no-such-harness", LossyOptions::default()).err().map(|e| e.kind());
        assert_eq!(missing, Some(io::ErrorKind::NotFound));
    }
}
