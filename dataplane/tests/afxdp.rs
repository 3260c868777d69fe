//! The AF_XDP backend on the veth harness (root): the XDP filter redirects
//! the gateway port into the AF_XDP socket, the userspace stack terminates
//! TCP, and players in the players' namespace use the real Linux TCP stack
//! to log in and echo through the sample game server, over IPv4 and IPv6 —
//! on the gateway's link, and behind a router from thousands of addresses
//! (the stack answers each flow through the next hop its frames came from).
#![cfg(feature = "afxdp")]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::{echo, logged_in_from, start_game_server, wait_for_links};
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_harness::flood::{self, Flood, Kind};
use portcullis_harness::{Harness, Options, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6, PLAYER_IFACE};
use portcullis_xdp::Filter;

const SECRET: &str = "afxdp-test-secret-0123456789";

/// A harness with the XDP filter attached and the AF_XDP gateway running
/// (and the game server it links to).
struct Setup {
    gateway: RunningGateway,
    filter: Filter,
    _rt: tokio::runtime::Runtime,
    h: Harness,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Pins are removed even when an assertion fails.
        let _ = self.filter.purge();
    }
}

/// The tests that load the machine (floods, loss) take turns: on two cores,
/// one starves the other's players.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup(options: Options, extra: &str) -> Option<Setup> {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping: {why}");
        return None;
    }
    let h = Harness::up_with(options).unwrap();
    let pin = PathBuf::from(format!("/sys/fs/bpf/portcullis-afxdp-test-{}-{}", std::process::id(), h.name));
    let filter = Filter::at(&pin);
    h.in_gateway(|| filter.attach(GATEWAY_IFACE, false)).expect("attach the XDP filter");
    // The sample game server on the gateway side's loopback.
    let (rt, game_addr) = start_game_server(&h);
    let queues: Vec<u32> = (0..options.queues).collect();
    let text = format!(
        "{extra}\n[[listeners]]\nbind = \"{GATEWAY_V4}:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [afxdp]\ninterface = \"{GATEWAY_IFACE}\"\nqueues = {queues:?}\naddresses = [\"{GATEWAY_V4}/24\", \"{GATEWAY_V6}/64\"]\npin_dir = \"{}\"\n\
         [[services]]\nname = \"game\"\nservers = [\"{game_addr}\"]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        pin.display()
    );
    let config = Config::parse(&text, "afxdp test").unwrap();
    let gateway = h.in_gateway(|| RunningGateway::start_afxdp(&config)).expect("AF_XDP gateway");
    wait_for_links(&gateway);
    Some(Setup { gateway, filter, _rt: rt, h })
}

fn gateway_addr(family_of: IpAddr) -> SocketAddr {
    SocketAddr::new(if family_of.is_ipv4() { GATEWAY_V4.into() } else { GATEWAY_V6.into() }, 7000)
}

#[test]
fn players_log_in_and_echo_over_ipv4_and_ipv6_through_the_af_xdp_dataplane() {
    for routed in [false, true] {
        let Some(s) = setup(Options { routed, sources: 4, ..Options::default() }, "") else { return };
        let (v4, v6) = s.h.player_addrs;
        for (i, source) in
            [IpAddr::V4(v4), IpAddr::V6(v6)].into_iter().chain(s.h.sources().into_iter().take(4)).enumerate()
        {
            let user = format!("p{i}");
            let echoed = s.h.in_players(|| {
                let (mut conn, mut buf) = logged_in_from(source, gateway_addr(source), SECRET, &user);
                (2..12).filter(|&seq| echo(&mut conn, &mut buf, seq, &user)).count()
            });
            assert_eq!(echoed, 10, "routed {routed}, from {source}");
        }
        // The worker's ring counters, exported with its status.
        std::thread::sleep(Duration::from_millis(250));
        let io = &s.gateway.status()[0].io;
        assert!(io.rx_frames >= 6 * 12 && io.tx_frames >= 6 * 12 && io.rx_bytes > 0 && io.tx_bytes > 0, "{io:?}");
        assert_eq!((io.kernel_rx_dropped, io.kernel_invalid_descs, io.drop_tx_oversize), (0, 0, 0), "{io:?}");
        let counters = s.filter.rules().unwrap().counters().unwrap();
        let redirected = counters.iter().find(|(v, _)| v.name() == "redirected").unwrap().1;
        assert!(redirected > 0, "the players' packets went through AF_XDP: {counters:?}");
    }
}

/// 2 000 players, each from an address of its own behind the router, stay
/// logged in while idle for 70 s — past any neighbour cache's lifetime —
/// and each is answered afterwards.
#[test]
fn two_thousand_routed_players_are_answered_after_seventy_seconds_idle() {
    let options = Options { routed: true, sources: 1_000, ..Options::default() };
    // Its 2 000 logins load the machine; its 70 s of idleness do not.
    let turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = setup(options, "[gateway]\nheartbeat_timeout_ms = 300000") else { return };
    let sources = s.h.sources();
    assert_eq!(sources.len(), 2_000);
    let mut players = s.h.in_players(|| {
        sources
            .iter()
            .enumerate()
            .map(|(i, &source)| logged_in_from(source, gateway_addr(source), SECRET, &format!("idle-{i}")))
            .collect::<Vec<_>>()
    });
    // Worker status is reported about every 100 ms.
    let reported = std::time::Instant::now() + Duration::from_secs(3);
    while s.gateway.status().iter().map(|w| w.connections).sum::<usize>() < 2_000 {
        assert!(std::time::Instant::now() < reported, "{:?}", s.gateway.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(turn);
    std::thread::sleep(Duration::from_secs(70));
    let mut answered = 0;
    for (i, (conn, buf)) in players.iter_mut().enumerate() {
        answered += usize::from(echo(conn, buf, 2, &format!("idle-{i}")));
    }
    assert_eq!(answered, 2_000, "every idle player is still answered");
}

/// Sends `flood` from the players' side in a thread of its own.
fn flood_in_background(h: &Harness, flood: Flood) -> std::thread::JoinHandle<flood::Report> {
    let (ns, src_mac, dst_mac) = (h.players.clone(), h.player_mac, h.players_next_hop);
    std::thread::spawn(move || {
        portcullis_harness::enter(&ns).unwrap();
        flood::run(PLAYER_IFACE, src_mac, dst_mac, &flood).unwrap()
    })
}

/// 20 players log in and echo ten times each, every one from an address of
/// its own; returns the echoes answered.
fn twenty_players_play(h: &Harness, round: usize) -> usize {
    let sources: Vec<IpAddr> = h.sources().into_iter().filter(IpAddr::is_ipv4).take(20).collect();
    h.in_players(|| {
        let players: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(i, &source)| {
                let user = format!("r{round}-p{i}");
                let (conn, buf) = logged_in_from(source, gateway_addr(source), SECRET, &user);
                (conn, buf, user)
            })
            .collect();
        players.into_iter().map(|(mut c, mut b, u)| (2..12).filter(|&seq| echo(&mut c, &mut b, seq, &u)).count()).sum()
    })
}

/// A SYN flood — from 60 000 spoofed sources at the generator's full rate,
/// then from the players' own addresses, each under the filter's per-source
/// rate — fills no more than the backlog: the rest is answered with SYN
/// cookies, and 20 players log in and play during each flood and after it.
#[test]
fn players_get_in_and_play_through_syn_floods() {
    let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = setup(Options { routed: true, sources: 60, ..Options::default() }, "") else { return };
    let spoofed = Flood {
        kind: Kind::Syn,
        sources: Flood::spoofed(Ipv4Addr::new(172, 16, 0, 0), 60_000),
        rate: None,
        for_at_most: Some(Duration::from_secs(8)),
        ..Flood::udp(Ipv4Addr::UNSPECIFIED.into(), GATEWAY_V4.into(), 7000, u64::MAX)
    };
    let flood = flood_in_background(&s.h, spoofed);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(twenty_players_play(&s.h, 0), 200, "during the spoofed flood");
    let report = flood.join().unwrap();
    let cookies = s.gateway.status()[0].io.syn_cookies_sent;
    eprintln!("spoofed flood: {} SYNs in {:?}; {cookies} cookies sent", report.sent, report.elapsed);
    assert!(cookies > 1_000, "the backlog filled and cookies answered the rest");
    assert_eq!(twenty_players_play(&s.h, 1), 200, "after it");

    // The players' own addresses, 60 of them, 10 SYN/s each (the filter
    // lets 50/s through per source).
    let real = Flood {
        kind: Kind::Syn,
        sources: s.h.sources().into_iter().filter(IpAddr::is_ipv4).collect(),
        rate: Some(600),
        for_at_most: Some(Duration::from_secs(6)),
        ..Flood::udp(Ipv4Addr::UNSPECIFIED.into(), GATEWAY_V4.into(), 7000, u64::MAX)
    };
    let flood = flood_in_background(&s.h, real);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(twenty_players_play(&s.h, 2), 200, "during the flood from real addresses");
    flood.join().unwrap();
    assert_eq!(twenty_players_play(&s.h, 3), 200, "after it");
}

/// Two workers on two veth queues, players behind a router that drops 20 %:
/// a player whose segment (and tail-loss probe) is lost times out and
/// rehashes its flow (Linux does, on a retransmission timeout), which may
/// move the flow to the other queue. The
/// worker that gets it hands it to the flow's owner: every echo is answered.
#[test]
fn a_flow_that_moves_to_another_queue_is_served_by_its_worker() {
    let _turn = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let options = Options { routed: true, sources: 24, queues: 2 };
    let Some(s) = setup(options, "[gateway]\nworkers = 2") else { return };
    let router = s.h.router.clone().expect("routed");
    // 20 % loss towards the gateway (this kernel has no netem: nftables'
    // random numbers instead).
    let rules = "add table inet loss\n\
                 add chain inet loss forward { type filter hook forward priority 0; }\n\
                 add rule inet loss forward oifname \"veth-rg\" numgen random mod 100 < 20 drop\n";
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", &router, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft (nftables)");
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft rules in the router");
    let sources: Vec<IpAddr> = s.h.sources().into_iter().filter(IpAddr::is_ipv4).collect();
    let players = s.h.players.clone();
    let threads: Vec<_> = sources
        .into_iter()
        .enumerate()
        .map(|(i, source)| {
            let ns = players.clone();
            std::thread::spawn(move || {
                portcullis_harness::enter(&ns).unwrap();
                let user = format!("lossy-{i}");
                let (mut conn, mut buf) = logged_in_from(source, gateway_addr(source), SECRET, &user);
                (2..42).filter(|&seq| echo(&mut conn, &mut buf, seq, &user)).count()
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|t| t.join().expect("a player thread")).sum();
    assert_eq!(answered, 24 * 40, "every echo answered through 20 % loss");
    std::thread::sleep(Duration::from_millis(250));
    let forwarded: u64 = s.gateway.status().iter().map(|w| w.io.frames_forwarded).sum();
    eprintln!("frames handed to their flow's worker: {forwarded}");
    assert!(forwarded > 0, "some flow moved queues (20 % loss, 24 players × 40 echoes)");
}
