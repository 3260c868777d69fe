//! The XDP flood filter on the veth harness (root). Each test builds its own
//! pair of namespaces and its own pin directory, attaches the filter to the
//! gateway side and sends real traffic from the players' side. Without root,
//! namespaces or the compiled program, each test says why and skips.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portcullis_common::{lists, FilterConfig, Verdict};
use portcullis_harness::flood::{self, Flood, Kind};
use portcullis_harness::{Harness, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6, PLAYER_IFACE, PLAYER_V6};
use portcullis_xdp::{self as filter, Cidr, Entry, Filter, List, Proto};

const PORT: u16 = 7000;

struct Setup {
    h: Harness,
    filter: Filter,
    pin: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.filter.purge();
    }
}

static N: AtomicU32 = AtomicU32::new(0);

/// A harness with the filter attached to its gateway side, gateway ports
/// udp/tcp 7000 and the given UDP rate; `None` (with a message) if this
/// machine cannot run it.
fn setup(test: &str, udp: (u32, u32)) -> Option<Setup> {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping {test}: {why}");
        return None;
    }
    if let Err(e) = filter::program() {
        assert!(std::env::var("PORTCULLIS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"), "required but: {e}");
        eprintln!("skipping {test}: {e}");
        return None;
    }
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let h = Harness::up().expect("harness");
    let filter = Filter::at(&pin);
    let mode = h.in_gateway(|| filter.attach(GATEWAY_IFACE, false));
    let s = Setup { h, filter, pin };
    match mode {
        Ok(_) => {}
        Err(filter::FilterError::NoBpffs(dir))
            if std::env::var("PORTCULLIS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1") =>
        {
            eprintln!("skipping {test}: {dir} is not bpffs (./scripts/setup.sh mounts it)");
            return None;
        }
        Err(e) => panic!("attach: {e}"),
    }
    let mut rules = s.filter.rules().expect("rules");
    rules.add_port(Proto::Udp, PORT).unwrap();
    rules.add_port(Proto::Tcp, PORT).unwrap();
    rules
        .set_rates(FilterConfig {
            udp_rate: udp.0,
            udp_burst: udp.1,
            syn_rate: 100,
            syn_burst: 10,
            ..FilterConfig::default()
        })
        .unwrap();
    Some(s)
}

impl Setup {
    fn counter(&self, v: Verdict) -> u64 {
        self.filter.rules().unwrap().counters().unwrap().into_iter().find(|(x, _)| *x == v).unwrap().1
    }

    /// A UDP socket on the gateway side.
    fn receiver(&self, addr: IpAddr) -> UdpSocket {
        let s = self.h.in_gateway(|| UdpSocket::bind(SocketAddr::new(addr, PORT))).expect("bind receiver");
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        // Room for every datagram a test lets through before it reads them.
        let size: libc::c_int = 32 << 20;
        // SAFETY: setsockopt on a socket we own, with a c_int option.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
        s
    }

    fn flood(&self, f: &Flood) -> flood::Report {
        self.h
            .in_players(|| {
                flood::pin_to_cpu(0);
                flood::run(PLAYER_IFACE, self.h.player_mac, self.h.players_next_hop, f)
            })
            .expect("flood")
    }

    fn ctl(&self, args: &[&str]) -> String {
        let (ok, text) = self.try_ctl(args);
        assert!(ok, "portcullisctl {args:?}: {text}");
        text
    }

    /// `portcullisctl filter … args`: whether it succeeded, and its output.
    fn try_ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
            .args(["filter", "--pin-dir", self.pin.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Sends `n` datagrams from `src` to the gateway port (paced).
    fn send_from(&self, src: IpAddr, n: u64) -> flood::Report {
        let dst = if src.is_ipv4() { IpAddr::V4(GATEWAY_V4) } else { IpAddr::V6(GATEWAY_V6) };
        self.flood(&Flood { rate: Some(20_000), ..Flood::udp(src, dst, PORT, n) })
    }
}

/// Datagrams received per source until the socket is quiet.
fn drain(sock: &UdpSocket) -> HashMap<IpAddr, u64> {
    let mut counts = HashMap::new();
    let mut buf = [0u8; 2048];
    while let Ok((_, from)) = sock.recv_from(&mut buf) {
        *counts.entry(from.ip()).or_default() += 1;
    }
    counts
}

fn v4(x: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 77, 0, x))
}

#[test]
fn a_flood_is_cut_to_its_rate_while_a_legitimate_client_loses_nothing() {
    let Some(s) = setup("flood_cut_to_rate", (500, 50)) else { return };
    let rx = s.receiver(GATEWAY_V4.into());
    // Paced so that the veth ring never overflows: what is measured is the
    // filter, not a saturated link.
    let flood_spec = Flood { rate: Some(50_000), ..Flood::udp(v4(11), GATEWAY_V4.into(), PORT, 25_000) };
    let (report, legit_sent) = std::thread::scope(|t| {
        let legit = t.spawn(|| {
            s.h.in_players(|| {
                let sock = UdpSocket::bind(SocketAddr::new(v4(10), 0)).unwrap();
                for i in 0..100u32 {
                    sock.send_to(&i.to_be_bytes(), SocketAddr::new(GATEWAY_V4.into(), PORT)).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
                100u64
            })
        });
        let report = s.flood(&flood_spec);
        (report, legit.join().unwrap())
    });
    let got = drain(&rx);
    let flood_got = got.get(&v4(11)).copied().unwrap_or(0);
    assert_eq!(got.get(&v4(10)).copied().unwrap_or(0), legit_sent, "the legitimate client lost nothing: {got:?}");
    let allowed = 50.0 + 500.0 * (report.elapsed.as_secs_f64() + 0.05);
    assert!(flood_got >= 50 && (flood_got as f64) <= allowed, "flood passed {flood_got}, bucket allows {allowed:.0}");
    assert!(s.counter(Verdict::DropRateLimited) >= report.sent - flood_got);
    let top = s.filter.rules().unwrap().top_sources(1).unwrap();
    assert_eq!(top[0].addr, v4(11), "the flooder tops the sources");
}

#[test]
fn blocklisted_cidrs_are_dropped_entirely_until_removed() {
    let Some(s) = setup("blocklist", (0, 0)) else { return };
    let rx = s.receiver(GATEWAY_V4.into());
    let block: Cidr = "10.77.0.0/28".parse().unwrap();
    s.filter.rules().unwrap().add(List::Block, block).unwrap();
    let r = s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(12), GATEWAY_V4.into(), PORT, 1_000) });
    assert!(drain(&rx).is_empty(), "nothing from a blocked source");
    assert_eq!(s.counter(Verdict::DropBlocklisted), r.sent);
    assert!(s.filter.rules().unwrap().remove(List::Block, block).unwrap());
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(12), GATEWAY_V4.into(), PORT, 100) });
    assert_eq!(drain(&rx).get(&v4(12)).copied(), Some(100), "allowed again after removal");
}

#[test]
fn allowlisted_sources_bypass_the_rate_limit() {
    let Some(s) = setup("allowlist", (100, 10)) else { return };
    let rx = s.receiver(GATEWAY_V4.into());
    s.filter.rules().unwrap().add(List::Allow, "10.77.0.13".parse().unwrap()).unwrap();
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(13), GATEWAY_V4.into(), PORT, 2_000) });
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(14), GATEWAY_V4.into(), PORT, 2_000) });
    let got = drain(&rx);
    assert_eq!(got.get(&v4(13)).copied(), Some(2_000), "allowlisted: all of it");
    assert!(got.get(&v4(14)).copied().unwrap_or(0) < 200, "not allowlisted: limited ({got:?})");
}

#[test]
fn malformed_packets_are_counted_and_dropped_and_other_ports_pass() {
    let Some(s) = setup("malformed_and_pass", (10, 1)) else { return };
    for kind in [Kind::MalformedIhl, Kind::Truncated] {
        s.flood(&Flood { kind, rate: Some(50_000), ..Flood::udp(v4(15), GATEWAY_V4.into(), PORT, 500) });
    }
    assert_eq!(s.counter(Verdict::DropMalformed), 1_000);
    // SSH-like TCP on another port passes untouched, even at a tight UDP rate.
    let before = s.counter(Verdict::PassOther);
    let listener = s.h.in_gateway(|| TcpListener::bind(SocketAddr::new(GATEWAY_V4.into(), 2222))).unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let echoed = s.h.in_players(|| {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(GATEWAY_V4.into(), 2222), Duration::from_secs(5)).unwrap();
        c.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    server.join().unwrap();
    assert_eq!(&echoed, b"hello");
    assert!(s.counter(Verdict::PassOther) > before);
}

#[test]
fn ipv6_floods_are_limited_and_blocklisted() {
    let Some(s) = setup("ipv6", (300, 30)) else { return };
    let rx = s.receiver(GATEWAY_V6.into());
    let r = s.flood(&Flood::udp(PLAYER_V6.into(), GATEWAY_V6.into(), PORT, 20_000));
    let got = drain(&rx).get(&IpAddr::V6(PLAYER_V6)).copied().unwrap_or(0);
    let allowed = 30.0 + 300.0 * (r.elapsed.as_secs_f64() + 0.05);
    assert!(got >= 30 && got as f64 <= allowed, "IPv6 flood passed {got}, bucket allows {allowed:.0}");
    s.filter.rules().unwrap().add(List::Block, "fd77::/16".parse().unwrap()).unwrap();
    let before = s.counter(Verdict::DropBlocklisted);
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(PLAYER_V6.into(), GATEWAY_V6.into(), PORT, 500) });
    assert_eq!(s.counter(Verdict::DropBlocklisted) - before, 500);
    // SYN floods over IPv6 pay the SYN bucket (100/s, burst 10).
    let r =
        s.flood(&Flood { kind: Kind::Syn, ..Flood::udp("fd77::99".parse().unwrap(), GATEWAY_V6.into(), PORT, 5_000) });
    assert!(s.counter(Verdict::DropRateLimited) >= r.sent - 10 - (100.0 * (r.elapsed.as_secs_f64() + 0.05)) as u64);
}

#[test]
fn rules_from_the_cli_take_effect_and_the_filter_outlives_its_loader() {
    let Some(s) = setup("cli", (0, 0)) else { return };
    // Re-attach from another process (the CLI) and let it exit.
    let netns = s.h.gateway.clone();
    let out = s.ctl(&["attach", "--iface", GATEWAY_IFACE, "--netns", &netns]);
    assert!(out.contains("attached to veth-g"), "{out}");
    let rx = s.receiver(GATEWAY_V4.into());
    s.ctl(&["block", "add", "10.77.0.16/32"]);
    s.ctl(&["rate", "--udp", "200/20"]);
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(16), GATEWAY_V4.into(), PORT, 300) });
    assert!(drain(&rx).is_empty(), "blocked by a rule set from another process, no loader running");
    let status = s.ctl(&["status"]);
    assert!(
        status.contains("drop_blocklisted") && status.contains("10.77.0.16/32") && status.contains("udp 200/s"),
        "{status}"
    );
    s.ctl(&["block", "remove", "10.77.0.16/32"]);
    // Bad input is refused with an explanation.
    let bad = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
        .args(["filter", "--pin-dir", s.pin.to_str().unwrap(), "block", "add", "10.0.0.0/40"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("at most 32"));
    let bad = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
        .args(["filter", "--pin-dir", s.pin.to_str().unwrap(), "rate", "--udp", "100/0"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("burst"));
}

#[test]
fn counters_and_rules_survive_a_reload_of_the_program() {
    let Some(s) = setup("reload", (0, 0)) else { return };
    s.filter.rules().unwrap().add(List::Block, "10.77.0.17".parse().unwrap()).unwrap();
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(17), GATEWAY_V4.into(), PORT, 400) });
    let before = s.counter(Verdict::DropBlocklisted);
    assert_eq!(before, 400);
    // Reload: a new program instance replaces the attachment.
    s.h.in_gateway(|| s.filter.attach(GATEWAY_IFACE, false)).unwrap();
    assert_eq!(s.counter(Verdict::DropBlocklisted), before, "counters survived");
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(17), GATEWAY_V4.into(), PORT, 100) });
    assert_eq!(s.counter(Verdict::DropBlocklisted), before + 100, "the blocklist survived");
    let started = Instant::now();
    s.filter.detach(GATEWAY_IFACE).unwrap();
    assert!(!s.filter.is_attached(GATEWAY_IFACE));
    s.flood(&Flood { rate: Some(20_000), ..Flood::udp(v4(17), GATEWAY_V4.into(), PORT, 100) });
    assert_eq!(s.counter(Verdict::DropBlocklisted), before + 100, "detached: no longer filtering");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn later_fragments_and_ipv6_fragments_pay_the_udp_bucket() {
    let Some(s) = setup("fragments", (100, 10)) else { return };
    for src in [v4(18), IpAddr::V6(PLAYER_V6)] {
        let before = s.counter(Verdict::DropRateLimited);
        let dst = if src.is_ipv4() { IpAddr::V4(GATEWAY_V4) } else { IpAddr::V6(GATEWAY_V6) };
        let r = s.flood(&Flood { kind: Kind::LaterFragment, rate: Some(20_000), ..Flood::udp(src, dst, PORT, 2_000) });
        let dropped = s.counter(Verdict::DropRateLimited) - before;
        let allowed = 10 + (100.0 * (r.elapsed.as_secs_f64() + 0.05)) as u64;
        assert!(dropped + allowed >= r.sent, "{src}: only {dropped} of {} fragments dropped", r.sent);
    }
}

/// Sleeps until `deadline` (plus a margin for the kernel's clock reads).
fn sleep_past(deadline: Instant) {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(100));
}

#[test]
fn a_block_with_a_ttl_ends_in_the_program_with_no_userspace_running() {
    let Some(s) = setup("block_ttl", (0, 0)) else { return };
    let rx = s.receiver(GATEWAY_V4.into());
    let ttl = Duration::from_secs(2);
    let mut rules = s.filter.rules().unwrap();
    let before_add = Instant::now();
    rules.block_for("10.77.0.22".parse().unwrap(), Some(ttl)).unwrap();
    let r = s.send_from(v4(22), 300);
    assert!(before_add.elapsed() < ttl, "the flood ran within the ttl (took {:?})", before_add.elapsed());
    assert!(drain(&rx).is_empty(), "nothing from a source while its block lasts");
    let dropped = s.counter(Verdict::DropBlocklisted);
    assert_eq!(dropped, r.sent);
    let left = rules.blocked().unwrap()[0].expires_in.expect("a temporary block");
    assert!(left <= ttl && left > Duration::ZERO, "{left:?} left");
    // Past the expiry, with no process touching the maps: the program
    // lets the source through by itself.
    sleep_past(before_add + ttl);
    s.send_from(v4(22), 100);
    assert_eq!(drain(&rx).get(&v4(22)).copied(), Some(100), "passes again once the block is over");
    assert_eq!(s.counter(Verdict::DropBlocklisted), dropped);
    // The expired entry was still in the map; purging removes it and the
    // list flag, so the program stops looking the list up.
    assert_eq!(rules.blocked().unwrap(), vec![], "an expired entry is not listed");
    assert_ne!(rules.rates().unwrap().lists & lists::BLOCK_V4, 0);
    assert_eq!(rules.purge_expired().unwrap(), 1);
    assert_eq!(rules.purge_expired().unwrap(), 0);
    assert_eq!(rules.rates().unwrap().lists & lists::BLOCK_V4, 0, "the list flag follows");
    // A block for no time is refused.
    assert!(matches!(
        rules.block_for("10.77.0.22".parse().unwrap(), Some(Duration::ZERO)),
        Err(filter::FilterError::BadTtl(_))
    ));
}

#[test]
fn an_expired_block_no_longer_hides_the_broader_block_around_it() {
    let Some(s) = setup("block_ttl_nested", (0, 0)) else { return };
    let rx4 = s.receiver(GATEWAY_V4.into());
    let rx6 = s.receiver(GATEWAY_V6.into());
    let ttl = Duration::from_secs(1);
    let mut rules = s.filter.rules().unwrap();
    let started = Instant::now();
    // Short blocks inside short blocks inside a permanent one, and a short
    // one alone.
    for (cidr, ttl) in [
        ("10.77.0.16/28", None),
        ("10.77.0.20/30", Some(ttl)),
        ("10.77.0.23/32", Some(ttl)),
        ("fd77::/16", None),
        ("fd77::/64", Some(ttl)),
        ("fd77::2/128", Some(ttl)),
        ("10.77.0.40/32", Some(ttl)),
    ] {
        rules.block_for(cidr.parse().unwrap(), ttl).unwrap();
    }
    sleep_past(started + ttl);
    let before = s.counter(Verdict::DropBlocklisted);
    s.send_from(v4(23), 200);
    s.send_from(IpAddr::V6(PLAYER_V6), 200);
    s.send_from(v4(40), 200);
    assert_eq!(s.counter(Verdict::DropBlocklisted) - before, 400, "the /28 and the /16 around them still block");
    assert_eq!(drain(&rx4).get(&v4(40)).copied(), Some(200), "nothing around 10.77.0.40 blocks it");
    assert!(drain(&rx6).is_empty());
    // Lifting the permanent blocks leaves only expired entries: all pass.
    rules.remove(List::Block, "10.77.0.16/28".parse().unwrap()).unwrap();
    rules.remove(List::Block, "fd77::/16".parse().unwrap()).unwrap();
    s.send_from(v4(23), 100);
    s.send_from(IpAddr::V6(PLAYER_V6), 100);
    assert_eq!(drain(&rx4).get(&v4(23)).copied(), Some(100));
    assert_eq!(drain(&rx6).get(&IpAddr::V6(PLAYER_V6)).copied(), Some(100));
    assert_eq!(rules.purge_expired().unwrap(), 5);
}

#[test]
fn the_cli_shows_how_long_blocks_last_and_drops_expired_ones() {
    let Some(s) = setup("cli_ttl", (0, 0)) else { return };
    let rx = s.receiver(GATEWAY_V4.into());
    let started = Instant::now();
    let out = s.ctl(&["block", "add", "10.77.0.25", "--ttl", "2s"]);
    assert!(out.contains("blocked 10.77.0.25/32 for 2s"), "{out}");
    s.ctl(&["block", "add", "10.77.0.26"]);
    let listed = s.ctl(&["block", "list"]);
    let line = listed.lines().find(|l| l.starts_with("10.77.0.25/32")).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.ends_with("expires in 2s") || line.ends_with("expires in 1s"), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("10.77.0.26/32") && l.ends_with("permanent")), "{listed}");
    let status = s.ctl(&["status"]);
    assert!(status.contains("10.77.0.25/32 (expires in ") && status.contains("10.77.0.26/32 (permanent)"), "{status}");
    s.send_from(v4(25), 100);
    assert!(drain(&rx).is_empty(), "blocked while it lasts");
    sleep_past(started + Duration::from_secs(2));
    s.send_from(v4(25), 100);
    assert_eq!(drain(&rx).get(&v4(25)).copied(), Some(100), "passes once expired, no command run");
    // Listing removes the expired entry; the permanent one stays.
    let listed = s.ctl(&["block", "list"]);
    assert!(!listed.contains("10.77.0.25") && listed.contains("10.77.0.26/32"), "{listed}");
    let mut rules = s.filter.rules().unwrap();
    assert_eq!(rules.purge_expired().unwrap(), 0, "the CLI purged it already");
    assert_eq!(rules.blocked().unwrap(), vec![Entry { cidr: "10.77.0.26".parse().unwrap(), expires_in: None }]);
    let status = s.ctl(&["status"]);
    assert!(!status.contains("10.77.0.25"), "{status}");
    // Bad durations are refused with an explanation.
    for bad in ["0", "5x"] {
        let (ok, text) = s.try_ctl(&["block", "add", "10.77.0.25", "--ttl", bad]);
        assert!(!ok && text.contains("bad duration"), "{text}");
    }
}

#[test]
fn a_blocklist_pinned_by_an_older_build_is_refused_clearly_then_converted_by_attach() {
    let Some(s) = setup("legacy_blocklist", (0, 0)) else { return };
    if Command::new("bpftool").arg("version").output().is_err() {
        eprintln!("skipping legacy_blocklist: bpftool is missing (./scripts/setup.sh installs it)");
        return;
    }
    // What a build before expiries pinned: one-byte values. The attached
    // program keeps the map it has; the pin is replaced.
    let path = s.pin.join("maps/BLOCK_V4");
    std::fs::remove_file(&path).unwrap();
    let p = path.to_str().unwrap();
    let bpftool = |args: &[&str]| {
        let out = Command::new("bpftool").args(args).output().unwrap();
        assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    bpftool(&[
        "map", "create", p, "type", "lpm_trie", "key", "8", "value", "1", "entries", "65536", "name", "BLOCK_V4",
        "flags", "1",
    ]);
    bpftool(&["map", "update", "pinned", p, "key", "32", "0", "0", "0", "10", "77", "0", "27", "value", "1"]);
    let e = s.filter.rules().err().expect("the old map cannot be used");
    let text = e.to_string();
    assert!(text.contains("BLOCK_V4") && text.contains("filter purge") && text.contains("attach"), "{text}");
    let (ok, text) = s.try_ctl(&["block", "list"]);
    assert!(!ok && text.contains("older build"), "{text}");
    // Attaching again converts the entries into permanent blocks.
    s.h.in_gateway(|| s.filter.attach(GATEWAY_IFACE, false)).unwrap();
    let rules = s.filter.rules().unwrap();
    assert_eq!(rules.blocked().unwrap(), vec![Entry { cidr: "10.77.0.27".parse().unwrap(), expires_in: None }]);
    let rx = s.receiver(GATEWAY_V4.into());
    let before = s.counter(Verdict::DropBlocklisted);
    s.send_from(v4(27), 100);
    assert!(drain(&rx).is_empty());
    assert_eq!(s.counter(Verdict::DropBlocklisted) - before, 100);
}

/// `portcullis-control` with only the filter of `s` (no dataplane); killed
/// on drop.
struct ControlProcess {
    child: std::process::Child,
    api: String,
    dir: PathBuf,
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const ADMIN_TOKEN: &str = "filter-admin-token-0123456789";
const READ_TOKEN: &str = "filter-read-token-0123456789";

impl Setup {
    fn control(&self) -> ControlProcess {
        let dir =
            std::env::temp_dir().join(format!("portcullis-filter-control-{}", self.pin.display()).replace('/', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = |_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (api, metrics) = (port(0), port(1));
        let config = dir.join("control.toml");
        std::fs::write(
            &config,
            format!(
                "[api]\nlisten = \"{api}\"\n[[api.tokens]]\nname = \"ops\"\ntoken = \"{ADMIN_TOKEN}\"\nrole = \"admin\"\n\
                 [[api.tokens]]\nname = \"viewer\"\ntoken = \"{READ_TOKEN}\"\nrole = \"read\"\n\
                 [metrics]\nlisten = \"{metrics}\"\n[filter]\npin_dir = \"{}\"\n",
                self.pin.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-control"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("start portcullis-control");
        let c = ControlProcess { child, api: format!("http://{api}"), dir };
        let ready = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(api).is_err() {
            assert!(Instant::now() < ready, "control never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// `portcullisctl --control … filter args` with `token`.
    fn ctl_via(&self, c: &ControlProcess, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullisctl"))
            .args(["--control", &c.api, "filter"])
            .args(args)
            .env("PORTCULLIS_TOKEN", token)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

#[test]
fn the_filter_through_the_control_plane_blocks_with_an_expiry_and_refuses_readers() {
    let Some(s) = setup("filter_via_control", (0, 0)) else { return };
    let c = s.control();
    let rx = s.receiver(GATEWAY_V4.into());
    let (ok, text) = s.ctl_via(&c, READ_TOKEN, &["block", "add", "10.77.0.23/32", "--ttl", "5s"]);
    assert!(!ok && text.contains("PermissionDenied"), "{text}");
    let started = Instant::now();
    let (ok, text) = s.ctl_via(&c, ADMIN_TOKEN, &["block", "add", "10.77.0.23/32", "--ttl", "5s"]);
    assert!(ok && text.contains("10.77.0.23/32 (expires in"), "{text}");
    s.send_from(v4(23), 100);
    assert!(drain(&rx).is_empty(), "blocked at the NIC while the block lasts");
    let (ok, status) = s.ctl_via(&c, READ_TOKEN, &["status"]);
    assert!(ok && status.contains("drop_blocklisted 100") && status.contains("udp:7000"), "{status}");
    let (ok, json) = s.ctl_via(&c, READ_TOKEN, &["--json", "status"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let left = v["blocked"][0]["expires_in_ms"].as_u64();
    assert!(left.is_some_and(|ms| ms <= 5000), "{json}");
    // Rates and ports change through control too.
    let (ok, text) = s.ctl_via(&c, ADMIN_TOKEN, &["rate", "--udp", "50/100"]);
    assert!(ok && text.contains("udp 50/s burst 100"), "{text}");
    sleep_past(started + Duration::from_secs(5));
    s.send_from(v4(23), 10);
    assert_eq!(drain(&rx).get(&v4(23)).copied(), Some(10), "the block ended by itself");
    let (_, status) = s.ctl_via(&c, READ_TOKEN, &["status"]);
    assert!(!status.contains("10.77.0.23"), "expired entries are purged: {status}");
}

/// A TCP connection from `src` on the players' side to the gateway's port.
fn connect_from(h: &Harness, src: IpAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    h.in_players(|| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.bind(&SocketAddr::new(src, 0).into())?;
        sock.connect_timeout(&SocketAddr::new(GATEWAY_V4.into(), PORT).into(), timeout)?;
        let stream: TcpStream = sock.into();
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(stream)
    })
}

/// The ERROR codes the gateway sent on `stream` until it closed it.
fn errors_until_closed(mut stream: TcpStream) -> Vec<i32> {
    use portcullis_proto::framework::PayloadForm;
    use portcullis_proto::pb::client::Error as ErrorMsg;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let mut codes = Vec::new();
    let mut pos = 0;
    while let Ok(Some((range, used))) = portcullis_proto::Codec::Protobuf.framing().next_frame(&buf[pos..], usize::MAX)
    {
        let env = portcullis_proto::Codec::Protobuf.decode(&buf[pos + range.start..pos + range.end]).unwrap();
        if env.cmd == portcullis_proto::cmd::ERROR {
            codes.push(PayloadForm::Protobuf.decode::<ErrorMsg>(&env.payload).unwrap().code);
        }
        pos += used;
    }
    codes
}

#[test]
fn a_source_whose_behaviour_passes_block_is_dropped_at_the_nic_until_the_block_expires() {
    use portcullis_proto::pb::client::ErrorCode;
    let Some(s) = setup("behaviour_block", (100_000, 100_000)) else { return };
    // 5 points per bad frame or refusal, 5 points of decay a second:
    // kicked at 20 (and on probation for 2 s), blocked at 30 for 3 s.
    let config = portcullis_core::Config::parse(
        &format!(
            "[gateway]\nworkers = 1\nmax_bad_frames = 100\n\
             [security]\nxdp_pin_dir = \"{}\"\n\
             [security.behaviour]\nthrottle = 10\nkick = 20\nblock = 30\nbad_frame = 5\nrefusal = 5\n\
             block_secs = 3\ndecay_per_sec = 5\nban_secs = 2\n\
             [[listeners]]\nbind = \"{GATEWAY_V4}:{PORT}\"\ncodec = \"protobuf\"\n\
             [auth]\nkind = \"token\"\nsecret = \"0123456789abcdef0123\"\n",
            s.pin.display()
        ),
        "test",
    )
    .unwrap();
    let gateway = s.h.in_gateway(|| portcullis_dataplane::RunningGateway::start(&config)).unwrap();
    let (attacker, bystander) = (v4(20), v4(21));
    // Garbage: four undecodable frames, 20 points: kicked.
    let mut c = connect_from(&s.h, attacker, Duration::from_secs(2)).unwrap();
    c.write_all(&[0, 0, 0, 2, 0xff, 0xff].repeat(4)).unwrap();
    let codes = errors_until_closed(c);
    assert_eq!(codes.last(), Some(&(ErrorCode::BadFrame as i32)), "{codes:?}");
    // Back again while kicked, on probation: garbage before a login is
    // closed at once (BLOCKED), 5 points each, until it passes 30 and the
    // source goes to the XDP blocklist.
    for _ in 0..2 {
        let mut c = connect_from(&s.h, attacker, Duration::from_secs(2)).unwrap();
        c.write_all(&[0, 0, 0, 2, 0xff, 0xff]).unwrap();
        assert_eq!(errors_until_closed(c).first(), Some(&(ErrorCode::Blocked as i32)));
    }
    for _ in 0..5 {
        let Ok(mut c) = connect_from(&s.h, attacker, Duration::from_millis(300)) else { break };
        let _ = c.write_all(&[0, 0, 0, 2, 0xff, 0xff]);
        // Refused, or — the block landing in the middle of the handshake —
        // never accepted.
        let codes = errors_until_closed(c);
        assert!(codes.is_empty() || codes[0] == ErrorCode::Blocked as i32, "{codes:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let entry = loop {
        let blocked = s.filter.rules().unwrap().blocked().unwrap();
        if let Some(e) = blocked.into_iter().find(|e| e.cidr.contains(attacker)) {
            break e;
        }
        assert!(Instant::now() < deadline, "the block never reached the XDP filter");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(entry.expires_in.is_some_and(|left| left <= Duration::from_secs(3)), "{entry:?}");
    assert!(s.ctl(&["status"]).contains(&attacker.to_string()), "portcullisctl filter status lists it");
    // Now its SYNs never reach the gateway: dropped at the NIC.
    let dropped = s.counter(Verdict::DropBlocklisted);
    assert!(connect_from(&s.h, attacker, Duration::from_millis(500)).is_err());
    assert!(s.counter(Verdict::DropBlocklisted) > dropped, "XDP counted the dropped SYNs");
    // Another source plays on.
    let mut b = connect_from(&s.h, bystander, Duration::from_secs(2)).unwrap();
    let mut heartbeat = Vec::new();
    portcullis_proto::Codec::Protobuf
        .encode(&portcullis_proto::Envelope::new(portcullis_proto::cmd::HEARTBEAT, 1, 0, b""), &mut heartbeat);
    b.write_all(&heartbeat).unwrap();
    let mut answer = [0u8; 4];
    b.read_exact(&mut answer).unwrap();
    // The block expires in the XDP program itself, the score decays: the
    // source is served again.
    std::thread::sleep(entry.expires_in.unwrap() + Duration::from_secs(1));
    let mut c = connect_from(&s.h, attacker, Duration::from_secs(2)).expect("the block expired");
    c.write_all(&heartbeat).unwrap();
    c.read_exact(&mut answer).expect("served again");
    let stats = gateway.status().into_iter().fold(portcullis_core::Stats::default(), |mut t, w| {
        t += &w.stats;
        t
    });
    // Kicked once at least (the decaying score may cross `kick` again on
    // its way to `block`), blocked once.
    assert!(stats.escalated_kicks >= 1, "{stats:?}");
    assert_eq!(stats.escalated_blocks, 1);
    assert_eq!(gateway.nic_counters().unwrap().blocks_applied.load(Ordering::Relaxed), 1);
    gateway.stop().unwrap();
}

/// A dataplane configured with `[[security.feeds]]` loads them into the
/// filter and reloads a feed when its file changes; the CLI lists, loads
/// and removes feeds.
#[test]
fn a_dataplane_with_feeds_drops_listed_sources_at_the_nic_and_follows_the_file() {
    let Some(s) = setup("dataplane_feeds", (100_000, 100_000)) else { return };
    let dir = std::env::temp_dir().join(format!("portcullis-feeds-{}", s.pin.file_name().unwrap().to_string_lossy()));
    std::fs::create_dir_all(&dir).unwrap();
    let feed = dir.join("drop.txt");
    std::fs::write(&feed, format!("; Spamhaus-style\n{} ; SBL1\n", v4(30))).unwrap();
    let config = portcullis_core::Config::parse(
        &format!(
            "[gateway]\nworkers = 1\n\
             [security]\nxdp_pin_dir = \"{}\"\nfeed_poll_ms = 50\n\
             [[security.feeds]]\nname = \"drop\"\npath = \"{}\"\n\
             [[listeners]]\nbind = \"{GATEWAY_V4}:{PORT}\"\ncodec = \"protobuf\"\n\
             [auth]\nkind = \"token\"\nsecret = \"0123456789abcdef0123\"\n",
            s.pin.display(),
            feed.display()
        ),
        "test",
    )
    .unwrap();
    let gateway = s.h.in_gateway(|| portcullis_dataplane::RunningGateway::start(&config)).unwrap();
    let entries = || s.filter.rules().unwrap().feeds().unwrap().into_iter().find(|f| f.name == "drop");
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the feed loads at start", &|| entries().is_some_and(|f| f.entries_v4 == 1));
    let dropped = s.counter(Verdict::DropThreatFeed);
    assert!(connect_from(&s.h, v4(30), Duration::from_millis(500)).is_err(), "listed: dropped at the NIC");
    assert!(s.counter(Verdict::DropThreatFeed) > dropped);
    connect_from(&s.h, v4(31), Duration::from_secs(2)).expect("unlisted connects");
    // The file changes: 30 leaves the feed, 31 joins it.
    std::fs::write(&feed, format!("{}\n", v4(31))).unwrap();
    wait("the reload", &|| connect_from(&s.h, v4(31), Duration::from_millis(200)).is_err());
    connect_from(&s.h, v4(30), Duration::from_secs(2)).expect("removed from the feed: connects again");
    // The CLI.
    let table = s.ctl(&["feeds"]);
    assert!(table.contains("drop") && table.contains("DROPPED"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&s.ctl(&["--json", "feeds"])).unwrap();
    assert_eq!(json[0]["name"], "drop");
    assert_eq!(json[0]["entries_v4"], 1);
    assert!(json[0]["drops"].as_u64().unwrap() > 0, "{json}");
    let other = dir.join("level1.netset");
    std::fs::write(&other, "# FireHOL\n198.51.100.0/24\nnot-an-address\n2001:db8::/32\n").unwrap();
    let out = s.ctl(&["feed", "load", "level1", other.to_str().unwrap()]);
    assert!(out.contains("2 entries") && out.contains("level1.netset:3"), "{out}");
    assert!(s.ctl(&["status"]).contains("threat feeds: drop (1 entries"), "status shows feeds");
    let out = s.ctl(&["feed", "remove", "level1"]);
    assert!(out.contains("removed"), "{out}");
    let (ok, out) = s.try_ctl(&["feed", "remove", "level1"]);
    assert!(!ok && out.contains("no feed named"), "{out}");
    std::fs::write(&other, "<html>\n").unwrap();
    let (ok, out) = s.try_ctl(&["feed", "load", "level1", other.to_str().unwrap()]);
    assert!(!ok && out.contains("no address"), "{out}");
    gateway.stop().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
