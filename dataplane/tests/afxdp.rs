//! The AF_XDP backend on the veth harness (root): the XDP filter redirects
//! the gateway port into the AF_XDP socket, the userspace stack terminates
//! TCP, and players in the players' namespace use the real Linux TCP stack
//! to log in and echo through the sample game server, over IPv4 and IPv6 —
//! on the gateway's link, and behind a router from thousands of addresses
//! (the stack answers each flow through the next hop its frames came from).
#![cfg(feature = "afxdp")]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::{echo, logged_in_from, start_game_server, wait_for_links};
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_harness::{Harness, Options, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6};
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
    let text = format!(
        "{extra}\n[[listeners]]\nbind = \"{GATEWAY_V4}:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [afxdp]\ninterface = \"{GATEWAY_IFACE}\"\naddresses = [\"{GATEWAY_V4}/24\", \"{GATEWAY_V6}/64\"]\npin_dir = \"{}\"\n\
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
    std::thread::sleep(Duration::from_secs(70));
    let mut answered = 0;
    for (i, (conn, buf)) in players.iter_mut().enumerate() {
        answered += usize::from(echo(conn, buf, 2, &format!("idle-{i}")));
    }
    assert_eq!(answered, 2_000, "every idle player is still answered");
}
