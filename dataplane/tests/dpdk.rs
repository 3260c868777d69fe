//! The DPDK backend on the veth harness (root): DPDK drives `veth-g`
//! through a `net_af_xdp` vdev, whose own XDP program hands every frame to
//! DPDK; the userspace stack answers ARP and neighbour solicitation and
//! terminates TCP, and players behind the harness's router use the real
//! Linux TCP stack to log in and echo through the sample game server, over
//! IPv4 and IPv6 — and, through the SDK, over KCP and QUIC, whose datagrams
//! the stack takes straight from DPDK's rings.
//!
//! DPDK's EAL starts once per process, so this file holds one test.
#![cfg(feature = "dpdk")]

mod common;

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{echo, logged_in, logged_in_from, recv, send, start_game_server, wait_for_links};
use portcullis_client::{Client, DirectDialer, Tls, TransportKind};
use portcullis_core::config::MIN_MBUFS;
use portcullis_core::Config;
use portcullis_dataplane::io::dpdk::init_eal;
use portcullis_dataplane::RunningGateway;
use portcullis_harness::{ip, Harness, Options, GATEWAY_IFACE, GATEWAY_V4, GATEWAY_V6};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{Codec, Envelope};
use portcullis_sample_game_server::ECHO;

const SECRET: &str = "dpdk-test-secret-0123456789";

/// Whether an XDP program is attached to the gateway side's veth.
fn xdp_attached(h: &Harness) -> bool {
    ip(&["-n", &h.gateway, "-o", "link", "show", GATEWAY_IFACE]).unwrap().contains(" xdp")
}

#[test]
fn players_log_in_and_echo_through_the_dpdk_dataplane() {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    // Players behind a router, over both families.
    let h = Harness::up_with(Options { routed: true, sources: 2, ..Options::default() }).unwrap();
    let router = h.router.clone().expect("routed");
    // EAL's runtime directory (empty with --no-shconf) goes, even when an
    // assertion fails.
    struct RuntimeDir(String);
    impl Drop for RuntimeDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let prefix = format!("pcx-dpdk-{}", std::process::id());
    let _runtime = RuntimeDir(format!("/var/run/dpdk/{prefix}"));
    // The kernel of the gateway side has the address but nothing listens.
    assert!(!xdp_attached(&h));

    // The sample game server on the gateway side's loopback.
    let (_rt, game_addr) = start_game_server(&h);

    // No shared config files (a prefix of our own all the same), no
    // hugepages, no PCI scan, the main lcore on CPU 0 (the workers are not
    // pinned), quiet.
    let eal = [
        "--no-shconf".to_string(),
        format!("--file-prefix={prefix}"),
        "--no-huge".into(),
        "--no-pci".into(),
        "--no-telemetry".into(),
        "-l".into(),
        "0".into(),
        "-m".into(),
        "512".into(),
        "--log-level=notice".into(),
        format!("--vdev=net_af_xdp0,iface={GATEWAY_IFACE}"),
    ];
    let eal = eal.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    // A self-signed certificate for the QUIC listener.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("pcx-dpdk-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let udp_listeners = format!(
        "[[listeners]]\nbind = \"{GATEWAY_V4}:7010\"\ntransport = \"kcp\"\n\
         [[listeners]]\nbind = \"{GATEWAY_V4}:7011\"\ntransport = \"quic\"\ntls_cert = {:?}\ntls_key = {:?}\n",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let text = format!(
        "[limits]\nsession_rate = 1000000\nsession_burst = 1000000\nuser_rate = 1000000\nuser_burst = 1000000\n[[listeners]]\nbind = \"{GATEWAY_V4}:7000\"\n{udp_listeners}[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n\
         [dpdk]\neal_args = [{eal}]\naddresses = [\"{GATEWAY_V4}/24\", \"{GATEWAY_V6}/64\"]\nmbufs = {MIN_MBUFS}\n\
         [[services]]\nname = \"game\"\nservers = [\"{game_addr}\"]\n[[routes]]\ncommands = [1000, 1999]\nservice = \"game\"\n"
    );
    let config = Config::parse(&text, "dpdk test").unwrap();
    let started = Instant::now();
    let gateway = h.in_gateway(|| RunningGateway::start_dpdk(&config)).expect("DPDK gateway");
    eprintln!("DPDK gateway started in {:?}", started.elapsed());
    assert!(xdp_attached(&h), "net_af_xdp attached its XDP program to {GATEWAY_IFACE}");
    wait_for_links(&gateway);
    // Only the userspace stack serves the port: the gateway side's kernel,
    // which owns the same address, refuses it.
    let kernel =
        h.in_gateway(|| TcpStream::connect_timeout(&SocketAddr::new(GATEWAY_V4.into(), 7000), Duration::from_secs(2)));
    assert_eq!(kernel.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionRefused));

    // No neighbour entry yet: the router's first packet to the gateway needs
    // the stack's ARP reply (and neighbour advertisement for IPv6).
    let neigh = |addr: String| ip(&["-n", &router, "neigh", "show", &addr]).unwrap();
    assert!(!neigh(GATEWAY_V4.to_string()).contains("lladdr"), "{}", neigh(GATEWAY_V4.to_string()));
    let gateway_addr = SocketAddr::new(GATEWAY_V4.into(), 7000);
    let (v4, v6) = h.player_addrs;
    let sources = [IpAddr::V4(v4), IpAddr::V6(v6)].into_iter().chain(h.sources());
    let echoes: usize = h.in_players(|| {
        sources
            .enumerate()
            .map(|(i, source)| {
                let to = if source.is_ipv4() { gateway_addr } else { SocketAddr::new(GATEWAY_V6.into(), 7000) };
                let user = format!("p{i}");
                let (mut s, mut buf) = logged_in_from(source, to, SECRET, &user);
                (2..12).filter(|&seq| echo(&mut s, &mut buf, seq, &user)).count()
            })
            .sum()
    });
    assert_eq!(echoes, 60, "two routed players per family, and the main addresses");

    // Enough traffic to pass every mbuf of the (smallest) pool through the
    // queue several times: net_af_xdp uses the pool as its UMEM, and an
    // mbuf outside it would stop reception.
    let rounds = 2 * MIN_MBUFS as usize;
    let elapsed = h.in_players(|| {
        let (mut s, mut buf) = logged_in(gateway_addr, SECRET, "bulk");
        s.set_nodelay(true).unwrap();
        let started = Instant::now();
        let mut ack = 0;
        for seq in 0..rounds as u32 {
            let payload = seq.to_be_bytes();
            // Acknowledged as they arrive, which keeps the replay buffer small.
            send(&mut s, &Envelope { ack, ..Envelope::new(ECHO, seq + 2, 0, &payload) });
            let back = recv(&mut s, &mut buf);
            assert_eq!((back.seq, &*back.payload), (seq + 2, &payload[..]));
            ack = back.server_seq;
        }
        started.elapsed()
    });
    eprintln!(
        "{rounds} echo round trips in {elapsed:?} ({:.0}/s, one player, debug build)",
        rounds as f64 / elapsed.as_secs_f64()
    );
    // KCP and QUIC players through the SDK, from the players' namespace.
    let tls = Tls { roots: vec![cert.cert.der().clone()], server_name: "localhost".into() };
    let udp_echoes = h.in_players(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut echoed = 0;
            for (kind, port) in [(TransportKind::Kcp, 7010), (TransportKind::Quic, 7011)] {
                let connector = portcullis_client::connector_tls(kind, Arc::new(DirectDialer), Some(tls.clone()));
                let to = SocketAddr::new(GATEWAY_V4.into(), port);
                let (client, _events) = Client::connect_via(to, Codec::Protobuf, Duration::from_secs(10), connector)
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?} to {to}: {e}"));
                let claims = Claims { uid: format!("{kind:?}"), dev: "pc".into(), exp: u64::MAX, role: String::new() };
                client.login(&sign(SECRET.as_bytes(), &claims)).await.unwrap();
                for k in 0..10 {
                    let payload = format!("{kind:?} {k}");
                    echoed += usize::from(client.call(ECHO, payload.as_bytes()).await.unwrap() == payload.as_bytes());
                }
            }
            echoed
        })
    });
    assert_eq!(udp_echoes, 20, "ten echoes over KCP and ten over QUIC");
    let _ = std::fs::remove_dir_all(&dir);

    // The stack answered ARP and neighbour solicitation with the port's MAC
    // address, veth-g's.
    let mac = h.gateway_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    for addr in [GATEWAY_V4.to_string(), GATEWAY_V6.to_string()] {
        assert!(neigh(addr.clone()).contains(&format!("lladdr {mac}")), "{} (veth-g is {mac})", neigh(addr));
    }
    // Workers report about every 100 ms.
    let reported = Instant::now() + Duration::from_secs(2);
    let frames_in = || gateway.status().iter().map(|w| w.stats.frames_in).sum::<u64>();
    while frames_in() < (6 * 11 + rounds) as u64 {
        assert!(Instant::now() < reported, "the core saw the players' frames: {}", frames_in());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The worker's ring counters, exported with its status.
    let io = &gateway.status()[0].io;
    assert!(io.rx_frames >= frames_in() && io.tx_frames > 0 && io.rx_bytes > 0 && io.tx_bytes > 0, "{io:?}");
    assert_eq!((io.drop_tx_ring_full, io.drop_tx_no_buffer, io.drop_tx_oversize), (0, 0, 0), "{io:?}");

    // EAL runs once per process: the same arguments again are fine, others
    // are refused with both lists named.
    let d = config.dpdk.as_ref().unwrap();
    init_eal(&d.eal_args).unwrap();
    let e = init_eal(&["--no-huge".to_string()]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("already runs") && e.to_string().contains(GATEWAY_IFACE), "{e}");

    // Stopping the gateway closes the port, which detaches its XDP program;
    // DPDK cannot reopen it in this process, which a second start says.
    gateway.stop().unwrap();
    assert!(!xdp_attached(&h), "the port was closed");
    let again = h.in_gateway(|| RunningGateway::start_dpdk(&config)).err().expect("a closed port stays closed");
    assert!(again.to_string().contains("dpdk.port = 0"), "{again}");
}
