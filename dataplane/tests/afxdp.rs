//! The AF_XDP backend on the veth harness (root): the XDP filter redirects
//! the gateway port into the AF_XDP socket, the userspace stack terminates
//! TCP, and players in the players' namespace use the real Linux TCP stack
//! to log in and echo through the sample game server, over IPv4 and IPv6
//! (the stack learns their link-layer addresses from their frames).
#![cfg(feature = "afxdp")]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{echo_session, start_game_server, wait_for_links};
use portcullis_core::Config;
use portcullis_dataplane::RunningGateway;
use portcullis_harness::{Harness, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6};
use portcullis_xdp::Filter;

const SECRET: &str = "afxdp-test-secret-0123456789";

#[test]
fn players_log_in_and_echo_over_ipv4_and_ipv6_through_the_af_xdp_dataplane() {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let h = Harness::up().unwrap();
    let pin = PathBuf::from(format!("/sys/fs/bpf/portcullis-afxdp-test-{}", std::process::id()));
    let filter = Filter::at(&pin);
    // Pins are removed even when an assertion fails.
    struct Purge(Filter);
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = self.0.purge();
        }
    }
    let _purge = Purge(filter.clone());
    h.in_gateway(|| filter.attach(GATEWAY_IFACE, false)).expect("attach the XDP filter");

    // The sample game server on the gateway side's loopback.
    let (_rt, game_addr) = start_game_server(&h);

    let text = format!(
        "[[listeners]]\nbind = \"{GATEWAY_V4}:7000\"\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [afxdp]\ninterface = \"{GATEWAY_IFACE}\"\naddresses = [\"{GATEWAY_V4}/24\", \"{GATEWAY_V6}/64\"]\npin_dir = \"{}\"\n\
         [[services]]\nname = \"game\"\nservers = [\"{game_addr}\"]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n",
        pin.display()
    );
    let config = Config::parse(&text, "afxdp test").unwrap();
    let gateway = h.in_gateway(|| RunningGateway::start_afxdp(&config)).expect("AF_XDP gateway");
    wait_for_links(&gateway);

    for i in 0..4 {
        let ip: std::net::IpAddr = if i % 2 == 0 { GATEWAY_V4.into() } else { GATEWAY_V6.into() };
        assert_eq!(h.in_players(|| echo_session(SocketAddr::new(ip, 7000), SECRET, &format!("p{i}"))), 10);
    }
    // The worker's ring counters, exported with its status.
    std::thread::sleep(Duration::from_millis(250));
    let io = &gateway.status()[0].io;
    assert!(io.rx_frames >= 4 * 14 && io.tx_frames >= 4 * 14 && io.rx_bytes > 0 && io.tx_bytes > 0, "{io:?}");
    assert_eq!((io.kernel_rx_dropped, io.kernel_invalid_descs, io.drop_tx_oversize), (0, 0, 0), "{io:?}");
    let counters = filter.rules().unwrap().counters().unwrap();
    let redirected = counters.iter().find(|(v, _)| v.name() == "redirected").unwrap().1;
    assert!(redirected > 0, "the players' packets went through AF_XDP: {counters:?}");
    drop(gateway);
}
