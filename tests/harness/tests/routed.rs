//! The routed harness (root): players on subnets of their own reach the
//! gateway side through the router namespace, from thousands of source
//! addresses, over IPv4 and IPv6; the gateway sees their own addresses.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use portcullis_harness::{Harness, Options, GATEWAY_V4, GATEWAY_V6, ROUTED_PLAYER_V4};

#[test]
fn players_behind_the_router_reach_the_gateway_from_their_own_addresses() {
    if let Some(why) = portcullis_harness::unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let h = Harness::up_with(Options { routed: true, sources: 2_000, ..Options::default() }).expect("routed harness");
    let sources = h.sources();
    assert_eq!(sources.len(), 4_000);
    assert_ne!(h.players_next_hop, h.gateway_mac, "players send to the router");
    let listeners = h.in_gateway(|| {
        [IpAddr::V4(GATEWAY_V4), IpAddr::V6(GATEWAY_V6)].map(|ip| TcpListener::bind(SocketAddr::new(ip, 7000)).unwrap())
    });
    // The main address, and a spread of the extra ones of both families.
    let picks: Vec<IpAddr> =
        std::iter::once(IpAddr::V4(ROUTED_PLAYER_V4)).chain(sources.iter().step_by(397).copied()).collect();
    for &source in &picks {
        let target = if source.is_ipv4() { listeners[0].local_addr() } else { listeners[1].local_addr() }.unwrap();
        let mut client = h
            .in_players(|| {
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(target),
                    socket2::Type::STREAM,
                    Some(socket2::Protocol::TCP),
                )?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
                Ok::<TcpStream, std::io::Error>(socket.into())
            })
            .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
        let (mut server, peer) = listeners[usize::from(source.is_ipv6())].accept().unwrap();
        assert_eq!(peer.ip(), source, "the gateway sees the player's own address");
        client.write_all(b"ping").unwrap();
        let mut buf = [0; 4];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
}
