//! The veth test harness: network namespaces joined by a veth pair, built
//! with iproute2, torn down on drop (even when a test panics), with stale
//! leftovers of crashed runs cleaned on the next start.
//!
//! ```text
//!  <name>-p (players)                      <name>-g (gateway side)
//!  veth-p 10.77.0.2/24, .10–.59 extra  ⇄   veth-g 10.77.0.1/24  ← XDP attaches here
//!         fd77::2/64                               fd77::1/64      game servers on its lo
//! ```
//!
//! Every address lives inside these namespaces; nothing is routed to the
//! host. Code runs inside a namespace through [`Harness::in_ns`] (a thread
//! that joins the network namespace only, so bpffs pins stay visible).
//! [`flood`] crafts raw frames from the players' side.

pub mod flood;

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

/// A players namespace and a gateway namespace joined by a veth pair.
pub struct Harness {
    /// Prefix of both namespaces' names.
    pub name: String,
    /// The players' namespace.
    pub players: String,
    /// The gateway side's namespace.
    pub gateway: String,
    /// MAC address of `veth-g`.
    pub gateway_mac: [u8; 6],
    /// MAC address of `veth-p`.
    pub player_mac: [u8; 6],
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
        Self::build_for(owner, 1)
    }

    /// Builds a new harness owned by this process whose veth pair has
    /// `queues` receive and transmit queues on each side (one AF_XDP worker
    /// each); connections spread over them by flow hash.
    pub fn up_with_queues(queues: u32) -> anyhow::Result<Harness> {
        Self::build_for(std::process::id(), queues)
    }

    fn build_for(owner: u32, queues: u32) -> anyhow::Result<Harness> {
        cleanup_stale();
        let name = format!("{PREFIX}{owner}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut h = Harness {
            players: format!("{name}-p"),
            gateway: format!("{name}-g"),
            name,
            gateway_mac: [0; 6],
            player_mac: [0; 6],
        };
        // From here on, Drop cleans up whatever was made.
        (h.gateway_mac, h.player_mac) = h.build(queues.max(1))?;
        Ok(h)
    }

    fn build(&self, queues: u32) -> anyhow::Result<([u8; 6], [u8; 6])> {
        let (p, g) = (self.players.as_str(), self.gateway.as_str());
        ip(&["netns", "add", p])?;
        ip(&["netns", "add", g])?;
        let q = queues.to_string();
        let q = ["numtxqueues", &q, "numrxqueues", &q];
        ip(&[
            &["-n", p, "link", "add", PLAYER_IFACE][..],
            &q,
            &["type", "veth", "peer", "name", GATEWAY_IFACE],
            &q,
            &["netns", g],
        ]
        .concat())?;
        ip(&["-n", g, "addr", "add", &format!("{GATEWAY_V4}/24"), "dev", GATEWAY_IFACE])?;
        ip(&["-n", g, "-6", "addr", "add", &format!("{GATEWAY_V6}/64"), "dev", GATEWAY_IFACE, "nodad"])?;
        ip(&["-n", p, "addr", "add", &format!("{PLAYER_V4}/24"), "dev", PLAYER_IFACE])?;
        for x in EXTRA_SOURCES {
            ip(&["-n", p, "addr", "add", &format!("10.77.0.{x}/24"), "dev", PLAYER_IFACE])?;
        }
        ip(&["-n", p, "-6", "addr", "add", &format!("{PLAYER_V6}/64"), "dev", PLAYER_IFACE, "nodad"])?;
        for (ns, iface) in [(p, PLAYER_IFACE), (g, GATEWAY_IFACE)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", iface, "up"])?;
        }
        Ok((mac(g, GATEWAY_IFACE)?, mac(p, PLAYER_IFACE)?))
    }

    /// A harness that already exists (built by another process).
    pub fn open(name: &str) -> anyhow::Result<Harness> {
        let (players, gateway) = (format!("{name}-p"), format!("{name}-g"));
        let (gateway_mac, player_mac) = (mac(&gateway, GATEWAY_IFACE)?, mac(&players, PLAYER_IFACE)?);
        Ok(Harness { name: name.into(), players, gateway, gateway_mac, player_mac })
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

    /// Player source addresses beyond the main one.
    pub fn sources(&self) -> Vec<IpAddr> {
        EXTRA_SOURCES.map(|x| IpAddr::V4(Ipv4Addr::new(10, 77, 0, x))).collect()
    }

    /// Removes both namespaces (and with them the veth pair).
    pub fn down(&self) {
        for ns in [&self.players, &self.gateway] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.down();
    }
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
