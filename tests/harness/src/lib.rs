//! The veth test harness: network namespaces joined by veth pairs, built
//! with iproute2, torn down on drop (even when a test panics), with stale
//! leftovers of crashed runs cleaned on the next start.
//!
//! Direct (players on the gateway's link):
//!
//! ```text
//!  <name>-p (players)                      <name>-g (gateway side)
//!  veth-p 10.77.0.2/24, .10–.59 extra  ⇄   veth-g 10.77.0.1/24  ← XDP attaches here
//!         fd77::2/64                               fd77::1/64      game servers on its lo
//! ```
//!
//! Routed ([`Options::routed`]), as in the field — every player arrives
//! through a router, from an address off the gateway's subnet:
//!
//! ```text
//!  <name>-p (players)                  <name>-r (router)                        <name>-g (gateway side)
//!  veth-p 10.88.0.2/24 + N sources ⇄ veth-rp 10.88.0.1/24  veth-rg 10.77.0.2/24 ⇄ veth-g 10.77.0.1/24
//!         fd88::2/64 + N sources           fd88::1/64             fd77::2/64           fd77::1/64
//!  default via the router                  forwarding, rp_filter off                   default via the router
//!                                          10.88.0.0/16, fd88:0:0:1::/64 via the players' side
//! ```
//!
//! The N extra sources of a routed harness are 10.88.1.1, 10.88.1.2, … and
//! fd88:0:0:1::1, fd88:0:0:1::2, … — one address each on the players' veth,
//! routed by the router through the players' side as one network behind
//! another router, as on the internet: however many there are, the router
//! needs one neighbour entry for them (the kernel's neighbour tables hold
//! 1 024 entries for all namespaces together). Thousands are fine: they are
//! added in one `ip -batch`.
//!
//! Every address lives inside these namespaces; nothing is routed to the
//! host. Code runs inside a namespace through [`Harness::in_ns`] (a thread
//! that joins the network namespace only, so bpffs pins stay visible).
//! [`flood`] crafts raw frames from the players' side; [`lossy`] delays and
//! drops what a routed harness's router forwards (netem's job, in userspace).

pub mod flood;
pub mod lossy;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces of this harness start with this.
pub const PREFIX: &str = "pcx-";

/// Interface on the players' side.
pub const PLAYER_IFACE: &str = "veth-p";
/// Interface on the gateway side, where the XDP filter attaches.
pub const GATEWAY_IFACE: &str = "veth-g";
/// Gateway address.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// Players' main address.
pub const PLAYER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Gateway IPv6 address.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// Players' IPv6 address.
pub const PLAYER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// Extra player source addresses: 10.77.0.10 … 10.77.0.59.
pub const EXTRA_SOURCES: std::ops::RangeInclusive<u8> = 10..=59;
/// Players' main address behind the router.
pub const ROUTED_PLAYER_V4: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// Players' main IPv6 address behind the router.
pub const ROUTED_PLAYER_V6: Ipv6Addr = Ipv6Addr::new(0xfd88, 0, 0, 0, 0, 0, 0, 2);
/// The router's address on the gateway's link (the gateway's next hop).
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The router's IPv6 address on the gateway's link.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The router's interface towards the players.
pub const ROUTER_PLAYERS_IFACE: &str = "veth-rp";
/// The router's interface towards the gateway.
pub const ROUTER_GATEWAY_IFACE: &str = "veth-rg";

/// How a harness is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Receive and transmit queues of the gateway's veth (one AF_XDP worker
    /// each); connections spread over them by flow hash.
    pub queues: u32,
    /// Players behind a router namespace, on subnets of their own.
    pub routed: bool,
    /// Extra player source addresses of a routed harness, per family.
    pub sources: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { queues: 1, routed: false, sources: 50 }
    }
}

/// Runs `ip` with `args`; an error carries its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip").args(args).output().map_err(|e| anyhow::anyhow!("cannot run ip (iproute2): {e}"))?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why harness tests cannot run here, if they cannot (checked once per
/// process). With `PORTCULLIS_REQUIRE_ROOT_TESTS=1` (CI) a missing
/// capability is a failure instead of a skip.
pub fn unavailable() -> Option<String> {
    static CHECK: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let why = CHECK.get_or_init(probe).clone();
    if let Some(why) = &why {
        if std::env::var("PORTCULLIS_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
            panic!("root tests are required here (PORTCULLIS_REQUIRE_ROOT_TESTS=1) but cannot run: {why}");
        }
    }
    why
}

fn probe() -> Option<String> {
    // SAFETY: a plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, veth, XDP)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("needs iproute2 (`ip`); ./scripts/setup.sh installs it".into());
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create network namespaces: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Removes namespaces left by harness processes that no longer run.
pub fn cleanup_stale() -> Vec<String> {
    let Ok(list) = ip(&["netns", "list"]) else { return Vec::new() };
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            && ip(&["netns", "del", name]).is_ok()
        {
            removed.push(name.to_string());
        }
    }
    removed
}

/// A players namespace and a gateway namespace joined by a veth pair, or
/// through a router namespace.
pub struct Harness {
    /// Prefix of the namespaces' names.
    pub name: String,
    /// The players' namespace.
    pub players: String,
    /// The gateway side's namespace.
    pub gateway: String,
    /// The router's namespace, if the players are behind one.
    pub router: Option<String>,
    /// MAC address of `veth-g`.
    pub gateway_mac: [u8; 6],
    /// MAC address of `veth-p`.
    pub player_mac: [u8; 6],
    /// Where frames from `veth-p` go: `veth-g`, or the router's `veth-rp`.
    pub players_next_hop: [u8; 6],
    /// The players' main addresses (IPv4, IPv6).
    pub player_addrs: (Ipv4Addr, Ipv6Addr),
    sources: Vec<IpAddr>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Harness {
    /// Builds a new harness owned by this process (cleaning stale ones first).
    pub fn up() -> anyhow::Result<Harness> {
        Self::up_for(std::process::id())
    }

    /// Builds a new harness owned by process `owner`: it counts as stale
    /// once that process is gone. Scripts pass their own pid and keep the
    /// harness with [`Harness::keep`].
    pub fn up_for(owner: u32) -> anyhow::Result<Harness> {
        Self::build_for(owner, Options::default())
    }

    /// Builds a new direct harness owned by this process whose veth pair
    /// has `queues` receive and transmit queues on each side.
    pub fn up_with_queues(queues: u32) -> anyhow::Result<Harness> {
        Self::up_with(Options { queues, ..Options::default() })
    }

    /// Builds a new harness owned by this process.
    pub fn up_with(options: Options) -> anyhow::Result<Harness> {
        Self::build_for(std::process::id(), options)
    }

    /// Builds a new harness owned by process `owner`.
    pub fn up_with_for(owner: u32, options: Options) -> anyhow::Result<Harness> {
        Self::build_for(owner, options)
    }

    fn build_for(owner: u32, options: Options) -> anyhow::Result<Harness> {
        cleanup_stale();
        let name = format!("{PREFIX}{owner}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let (player_addrs, sources) = if options.routed {
            (
                (ROUTED_PLAYER_V4, ROUTED_PLAYER_V6),
                (0..options.sources).flat_map(|i| [IpAddr::V4(routed_v4(i)), IpAddr::V6(routed_v6(i))]).collect(),
            )
        } else {
            ((PLAYER_V4, PLAYER_V6), EXTRA_SOURCES.map(|x| IpAddr::V4(Ipv4Addr::new(10, 77, 0, x))).collect())
        };
        let mut h = Harness {
            players: format!("{name}-p"),
            gateway: format!("{name}-g"),
            router: options.routed.then(|| format!("{name}-r")),
            name,
            gateway_mac: [0; 6],
            player_mac: [0; 6],
            players_next_hop: [0; 6],
            player_addrs,
            sources,
        };
        // From here on, Drop cleans up whatever was made.
        h.build(options.queues.max(1))?;
        Ok(h)
    }

    fn build(&mut self, queues: u32) -> anyhow::Result<()> {
        let (p, g) = (self.players.clone(), self.gateway.clone());
        let q = queues.to_string();
        let q = ["numtxqueues", &q, "numrxqueues", &q];
        ip(&["netns", "add", &p])?;
        ip(&["netns", "add", &g])?;
        let gateway_peer = match &self.router {
            None => (p.as_str(), PLAYER_IFACE),
            Some(r) => {
                ip(&["netns", "add", r])?;
                (r.as_str(), ROUTER_GATEWAY_IFACE)
            }
        };
        // No duplicate address detection: IPv6 (link-local addresses too)
        // works as soon as a link is up, not a second or two later.
        for ns in [Some(&p), Some(&g), self.router.as_ref()].into_iter().flatten() {
            sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")?;
            sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")?;
        }
        // The gateway's link: veth-g and its peer (the players' veth-p, or
        // the router's veth-rg), with `queues` queues on both ends.
        ip(&[
            &["-n", gateway_peer.0, "link", "add", gateway_peer.1][..],
            &q,
            &["type", "veth", "peer", "name", GATEWAY_IFACE],
            &q,
            &["netns", &g],
        ]
        .concat())?;
        ip(&["-n", &g, "addr", "add", &format!("{GATEWAY_V4}/24"), "dev", GATEWAY_IFACE])?;
        ip(&["-n", &g, "-6", "addr", "add", &format!("{GATEWAY_V6}/64"), "dev", GATEWAY_IFACE, "nodad"])?;
        let mut up = vec![(g.clone(), GATEWAY_IFACE)];
        match self.router.clone() {
            None => {
                let mut batch = format!("addr add {PLAYER_V4}/24 dev {PLAYER_IFACE}\n");
                batch.push_str(&format!("addr add {PLAYER_V6}/64 dev {PLAYER_IFACE} nodad\n"));
                for source in &self.sources {
                    batch.push_str(&format!("addr add {source}/24 dev {PLAYER_IFACE}\n"));
                }
                ip_batch(&p, &batch)?;
                up.push((p.clone(), PLAYER_IFACE));
                self.players_next_hop = mac(&g, GATEWAY_IFACE)?;
            }
            Some(r) => {
                ip(&[
                    "-n",
                    &p,
                    "link",
                    "add",
                    PLAYER_IFACE,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    ROUTER_PLAYERS_IFACE,
                    "netns",
                    &r,
                ])?;
                let router = [
                    format!("addr add {ROUTER_V4}/24 dev {ROUTER_GATEWAY_IFACE}"),
                    format!("addr add {ROUTER_V6}/64 dev {ROUTER_GATEWAY_IFACE} nodad"),
                    format!("addr add 10.88.0.1/24 dev {ROUTER_PLAYERS_IFACE}"),
                    format!("addr add fd88::1/64 dev {ROUTER_PLAYERS_IFACE} nodad"),
                ]
                .join("\n");
                ip_batch(&r, &router)?;
                // Forward, and let spoofed sources through (as the
                // internet's routers do towards a host).
                for (key, value) in [
                    ("net.ipv4.ip_forward", "1"),
                    ("net.ipv6.conf.all.forwarding", "1"),
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.default.rp_filter", "0"),
                    (&format!("net.ipv4.conf.{ROUTER_PLAYERS_IFACE}.rp_filter"), "0"),
                ] {
                    sysctl(&r, key, value)?;
                }
                let mut players = format!(
                    "addr add {ROUTED_PLAYER_V4}/24 dev {PLAYER_IFACE}\naddr add {ROUTED_PLAYER_V6}/64 dev {PLAYER_IFACE} nodad\n"
                );
                for source in &self.sources {
                    let (prefix, flags) = if source.is_ipv4() { (32, "") } else { (128, " nodad") };
                    players.push_str(&format!("addr add {source}/{prefix} dev {PLAYER_IFACE}{flags}\n"));
                }
                ip_batch(&p, &players)?;
                up.extend([
                    (p.clone(), PLAYER_IFACE),
                    (r.clone(), ROUTER_PLAYERS_IFACE),
                    (r.clone(), ROUTER_GATEWAY_IFACE),
                ]);
                up.push((r.clone(), "lo"));
                self.players_next_hop = mac(&r, ROUTER_PLAYERS_IFACE)?;
            }
        }
        for ns in [&p, &g] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (ns, iface) in &up {
            ip(&["-n", ns, "link", "set", iface, "up"])?;
        }
        if self.router.is_some() {
            ip(&["-n", &p, "route", "add", "default", "via", "10.88.0.1"])?;
            ip(&["-n", &p, "-6", "route", "add", "default", "via", "fd88::1"])?;
            ip(&["-n", &g, "route", "add", "default", "via", &ROUTER_V4.to_string()])?;
            ip(&["-n", &g, "-6", "route", "add", "default", "via", &ROUTER_V6.to_string()])?;
            let r = self.router.as_deref().expect("routed");
            ip(&["-n", r, "route", "add", "10.88.0.0/16", "via", &ROUTED_PLAYER_V4.to_string()])?;
            ip(&["-n", r, "-6", "route", "add", "fd88:0:0:1::/64", "via", &ROUTED_PLAYER_V6.to_string()])?;
        }
        self.gateway_mac = mac(&g, GATEWAY_IFACE)?;
        self.player_mac = mac(&p, PLAYER_IFACE)?;
        Ok(())
    }

    /// A harness that already exists (built by another process).
    pub fn open(name: &str) -> anyhow::Result<Harness> {
        let (players, gateway, router) = (format!("{name}-p"), format!("{name}-g"), format!("{name}-r"));
        let (gateway_mac, player_mac) = (mac(&gateway, GATEWAY_IFACE)?, mac(&players, PLAYER_IFACE)?);
        let routed = list().contains(&router);
        let players_next_hop = if routed { mac(&router, ROUTER_PLAYERS_IFACE)? } else { gateway_mac };
        let player_addrs = if routed { (ROUTED_PLAYER_V4, ROUTED_PLAYER_V6) } else { (PLAYER_V4, PLAYER_V6) };
        let sources =
            if routed { Vec::new() } else { EXTRA_SOURCES.map(|x| IpAddr::V4(Ipv4Addr::new(10, 77, 0, x))).collect() };
        Ok(Harness {
            name: name.into(),
            players,
            gateway,
            router: routed.then_some(router),
            gateway_mac,
            player_mac,
            players_next_hop,
            player_addrs,
            sources,
        })
    }

    /// Leaves the namespaces in place when this value goes away.
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    /// Runs `f` in a thread inside network namespace `ns` (only the network
    /// namespace changes: files, bpffs pins and memory are shared).
    pub fn in_ns<R: Send>(&self, ns: &str, f: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(ns).unwrap_or_else(|e| panic!("{e}"));
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }

    /// Runs `f` on the gateway side.
    pub fn in_gateway<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.in_ns(&self.gateway, f)
    }

    /// Runs `f` on the players' side.
    pub fn in_players<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.in_ns(&self.players, f)
    }

    /// Player source addresses beyond the main ones (both families on a
    /// routed harness, alternating).
    pub fn sources(&self) -> Vec<IpAddr> {
        self.sources.clone()
    }

    /// Removes the namespaces (and with them the veth pairs).
    pub fn down(&self) {
        for ns in [Some(&self.players), Some(&self.gateway), self.router.as_ref()].into_iter().flatten() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.down();
    }
}

/// The `i`-th extra IPv4 source of a routed harness: 10.88.1.1, 10.88.1.2, …
/// (250 per /24, skipping .0 and .251–.255).
pub fn routed_v4(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 88, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

/// The `i`-th extra IPv6 source of a routed harness: fd88:0:0:1::1, fd88:0:0:1::2, …
pub fn routed_v6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd88, 0, 0, 1, 0, 0, (i >> 16) as u16, (i + 1) as u16)
}

/// Runs `ip -n <ns> -batch -` over `commands` (one per line): thousands of
/// addresses in one process.
pub fn ip_batch(ns: &str, commands: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run ip (iproute2): {e}"))?;
    child.stdin.take().expect("piped").write_all(commands.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("ip -n {ns} -batch: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Sets a sysctl inside network namespace `ns`.
pub(crate) fn sysctl(ns: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            std::fs::write(&path, value).map_err(|e| anyhow::anyhow!("{key} = {value} in {ns}: {e}"))
        })
        .join()
        .expect("sysctl thread")
    })
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter(ns: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("no network namespace {ns}: {e}"))?;
    // SAFETY: setns on a namespace fd we own, for this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        anyhow::bail!("cannot enter {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn mac(ns: &str, iface: &str) -> anyhow::Result<[u8; 6]> {
    let out = ip(&["-n", ns, "-o", "link", "show", iface])?;
    let text = out.split("link/ether ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_default();
    let bytes: Vec<u8> = text.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    bytes.try_into().map_err(|_| anyhow::anyhow!("no MAC address for {iface} in {ns}: {out}"))
}

/// Namespaces of running or stale harnesses.
pub fn list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(String::from)
        .collect()
}
