//! The stack against a smoltcp client over an in-memory wire, with the real
//! gateway core behind it: ARP and IPv6 neighbour discovery (both ways),
//! ICMP echo, the TCP handshake over IPv4 and IPv6, a login and heartbeats
//! both ways, a client close, the backlog under a half-open flood, UDP echo.

use std::time::{Duration, Instant};

use portcullis_proto::pb::client::{LoginReply, LoginRequest, SendToUser};
use portcullis_proto::token::{sign, Claims};
use portcullis_proto::{cmd, flags, Codec, Envelope};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use super::*;
use portcullis_core::config::Config as GatewayConfig;
use portcullis_core::shard::Shared;
use portcullis_core::Output;

use crate::io::dispatch::ClientTransport;

const SECRET: &str = "netstack-test-secret-0123";
const GW: Ipv4Address = Ipv4Address::new(10, 77, 0, 1);
const CLIENT: Ipv4Address = Ipv4Address::new(10, 77, 0, 2);
const GW6: Ipv6Address = Ipv6Address::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Address = Ipv6Address::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);

struct Wire {
    start: Instant,
    now: Instant,
    gw_dev: FrameQueue,
    stack: NetStack,
    core: Gateway,
    cl_dev: FrameQueue,
    client: Interface,
    sockets: SocketSet<'static>,
}

impl Wire {
    fn new(cfg: NetConfig) -> Wire {
        Wire::with_listener(cfg, "")
    }

    /// A wire whose gateway listener has the `extra` lines.
    fn with_listener(cfg: NetConfig, extra: &str) -> Wire {
        let text = format!(
            "[[listeners]]\nbind = \"10.77.0.1:7000\"\n{extra}\n[auth]\nkind = \"token\"\nsecret = \"{SECRET}\"\n"
        );
        let config = GatewayConfig::parse(&text, "netstack test").unwrap();
        let now = Instant::now();
        let auth = portcullis_core::auth::from_config(&config).unwrap();
        let core = Gateway::new(&config, 0, Shared::new(1, [3; 32]), auth, now, Duration::from_secs(1_800_000_000));
        let gw_dev = FrameQueue::default();
        let addrs = [IpCidr::new(GW.into(), 24), IpCidr::new(GW6.into(), 64)];
        let stack = NetStack::new(&gw_dev, [2, 0, 0, 0, 0, 1], &addrs, &[(7000, 0)], cfg, now)
            .with_websocket(crate::transport::websocket::WsSettings::for_listeners(&config).unwrap());
        let mut cl_dev = FrameQueue::default();
        let mut client = Interface::new(
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 2]))),
            &mut cl_dev,
            smoltcp::time::Instant::ZERO,
        );
        client.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(CLIENT.into(), 24));
            let _ = a.push(IpCidr::new(CLIENT6.into(), 64));
        });
        Wire { start: now, now, gw_dev, stack, core, cl_dev, client, sockets: SocketSet::new(Vec::new()) }
    }

    /// One millisecond of both sides, frames carried across the wire.
    fn step(&mut self) {
        self.stack.poll(self.now, &mut self.gw_dev, &mut self.core);
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Transmit(c) => self.stack.transmit(&mut self.core, c),
                Output::Close(c) => self.stack.close(self.now, &mut self.core, c),
                _ => {}
            }
        }
        self.stack.poll(self.now, &mut self.gw_dev, &mut self.core);
        while let Some(f) = self.gw_dev.tx.pop_front() {
            self.cl_dev.push_rx(&f);
            self.gw_dev.recycle(f);
        }
        let ts = smoltcp::time::Instant::from_micros((self.now - self.start).as_micros() as i64);
        self.client.poll(ts, &mut self.cl_dev, &mut self.sockets);
        while let Some(f) = self.cl_dev.tx.pop_front() {
            self.gw_dev.push_rx(&f);
            self.cl_dev.recycle(f);
        }
        self.now += Duration::from_millis(1);
    }

    fn run_until(&mut self, mut done: impl FnMut(&mut Wire) -> bool) {
        for _ in 0..5_000 {
            self.step();
            if done(self) {
                return;
            }
        }
        panic!("the condition never held");
    }

    fn connect(&mut self, local_port: u16) -> SocketHandle {
        self.connect_to(IpAddress::from(GW), local_port)
    }

    fn connect_to(&mut self, gateway: IpAddress, local_port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 65536]), tcp::SocketBuffer::new(vec![0; 65536]));
        s.connect(self.client.context(), (gateway, 7000), local_port).unwrap();
        self.sockets.add(s)
    }

    fn sock(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn send(&mut self, h: SocketHandle, env: &Envelope<'_>) {
        let mut frame = Vec::new();
        Codec::Protobuf.encode(env, &mut frame);
        assert_eq!(self.sock(h).send_slice(&frame).unwrap(), frame.len());
    }

    /// The next whole frame the client received.
    fn recv(&mut self, h: SocketHandle, buf: &mut Vec<u8>) -> Envelope<'static> {
        self.run_until(|w| {
            let s = w.sock(h);
            while s.can_recv() {
                let _ = s.recv(|b| {
                    buf.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            Codec::Protobuf.framing().next_frame(buf, 1 << 20).unwrap().is_some()
        });
        let (r, used) = Codec::Protobuf.framing().next_frame(buf, 1 << 20).unwrap().unwrap();
        let env = Codec::Protobuf.decode(&buf[r]).unwrap().into_owned();
        buf.drain(..used);
        env
    }
}

fn login_frame(user: &str) -> Vec<u8> {
    let token =
        sign(SECRET.as_bytes(), &Claims { uid: user.into(), dev: "pc".into(), exp: u64::MAX, role: String::new() });
    Codec::Protobuf.payload_form().encode_to_vec(&LoginRequest { token, ..Default::default() })
}

#[test]
fn a_tcp_client_logs_in_through_the_userspace_stack() {
    let mut w = Wire::new(NetConfig::default());
    let h = w.connect(40_000);
    w.run_until(|w| w.sock(h).state() == tcp::State::Established);
    w.run_until(|w| w.stack.connections() == 1 && w.core.connection_count() == 1);
    let login = login_frame("alice");
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login));
    let mut buf = Vec::new();
    let reply = w.recv(h, &mut buf);
    assert_eq!((reply.cmd, reply.seq, reply.flags), (cmd::LOGIN, 1, flags::RESPONSE));
    let r: LoginReply = Codec::Protobuf.payload_form().decode(&reply.payload).unwrap();
    assert_eq!(r.user_id, "alice");
    // Several frames in one segment, answered in order.
    let mut batch = Vec::new();
    for seq in 2..6 {
        Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, seq, 0, b""), &mut batch);
    }
    assert_eq!(w.sock(h).send_slice(&batch).unwrap(), batch.len());
    let seqs: Vec<u32> = (0..4).map(|_| w.recv(h, &mut buf).seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5]);
    // The client closes: the core hears it.
    w.sock(h).close();
    w.run_until(|w| w.core.connection_count() == 0);
    assert_eq!(w.stack.connections(), 0);
}

/// A masked client WebSocket frame (FIN set).
fn ws_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mask = [9, 8, 7, 6];
    out.push(0x80 | opcode);
    assert!(payload.len() < 126);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[test]
fn a_websocket_client_logs_in_and_closes_through_the_userspace_stack() {
    let mut w = Wire::with_listener(NetConfig::default(), "transport = \"websocket\"");
    let h = w.connect(40_100);
    w.run_until(|w| w.core.connection_count() == 1);
    let mut out = b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // The LOGIN message right behind the request, without its length prefix.
    let mut login = Vec::new();
    Codec::Protobuf.encode(&Envelope::new(cmd::LOGIN, 1, 0, &login_frame("alice")), &mut login);
    ws_frame(&mut out, 0x2, &login[4..]);
    assert_eq!(w.sock(h).send_slice(&out).unwrap(), out.len());
    let mut buf = Vec::new();
    let drain = |w: &mut Wire, buf: &mut Vec<u8>| {
        let s = w.sock(h);
        while s.can_recv() {
            let _ = s.recv(|b| {
                buf.extend_from_slice(b);
                (b.len(), ())
            });
        }
    };
    let head_end = |buf: &[u8]| buf.windows(4).position(|x| x == b"\r\n\r\n").map(|i| i + 4);
    // A server frame at `at`: where its payload starts and its length.
    let frame_at = |buf: &[u8], at: usize| match buf.get(at + 1) {
        Some(126) => buf.get(at + 2..at + 4).map(|b| (at + 4, usize::from(u16::from_be_bytes([b[0], b[1]])))),
        Some(&n) if n < 126 => Some((at + 2, usize::from(n))),
        _ => None,
    };
    w.run_until(|w| {
        drain(w, &mut buf);
        head_end(&buf).and_then(|end| frame_at(&buf, end)).is_some_and(|(start, len)| buf.len() >= start + len)
    });
    let end = head_end(&buf).unwrap();
    let (start, len) = frame_at(&buf, end).unwrap();
    let answer = String::from_utf8_lossy(&buf[..end]).to_string();
    assert!(answer.starts_with("HTTP/1.1 101 ") && answer.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{answer}");
    assert_eq!(buf[end], 0x82, "one binary message, unfragmented");
    let reply = Codec::Protobuf.decode(&buf[start..start + len]).unwrap().into_owned();
    assert_eq!((reply.cmd, reply.seq), (cmd::LOGIN, 1));
    let r: LoginReply = Codec::Protobuf.payload_form().decode(&reply.payload).unwrap();
    assert_eq!(r.user_id, "alice");
    buf.drain(..start + len);
    // The client closes: the same status comes back, then the FIN.
    let mut close = Vec::new();
    ws_frame(&mut close, 0x8, &1000u16.to_be_bytes());
    assert_eq!(w.sock(h).send_slice(&close).unwrap(), close.len());
    w.run_until(|w| {
        drain(w, &mut buf);
        !w.sock(h).may_recv()
    });
    assert_eq!(buf, [0x88, 2, 0x03, 0xe8]);
    assert_eq!(w.core.connection_count(), 0);
}

#[test]
fn a_websocket_connection_refused_at_accept_gets_its_error_after_the_handshake() {
    let extra = "transport = \"websocket\"\n[limits]\nmax_connections_per_ip = 1";
    let mut w = Wire::with_listener(NetConfig::default(), extra);
    let first = w.connect(40_200);
    w.run_until(|w| w.core.connection_count() == 1);
    let second = w.connect(40_201);
    // Refused by the core as soon as it connects; the socket stays open,
    // waiting for the request.
    w.run_until(|w| w.sock(second).state() == tcp::State::Established);
    for _ in 0..50 {
        w.step();
    }
    assert_eq!(w.core.connection_count(), 1);
    assert!(w.sock(second).may_recv(), "not closed before the handshake");
    let request = b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(w.sock(second).send_slice(request).unwrap(), request.len());
    let mut buf = Vec::new();
    w.run_until(|w| {
        let s = w.sock(second);
        while s.can_recv() {
            let _ = s.recv(|b| {
                buf.extend_from_slice(b);
                (b.len(), ())
            });
        }
        !s.may_recv()
    });
    let end = buf.windows(4).position(|x| x == b"\r\n\r\n").unwrap() + 4;
    assert!(buf.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&buf));
    assert_eq!(buf[end], 0x82, "the ERROR as a binary message");
    let len = usize::from(buf[end + 1]);
    let err = Codec::Protobuf.decode(&buf[end + 2..end + 2 + len]).unwrap();
    assert_eq!(err.cmd, cmd::ERROR);
    assert_eq!(&buf[end + 2 + len..], [0x88, 2, 0x03, 0xe8], "then the close frame, then the FIN");
    // The first connection was never disturbed.
    assert_eq!(w.core.connection_count(), 1);
    assert_eq!(w.sock(first).state(), tcp::State::Established);
}

#[test]
fn a_refused_websocket_connection_without_a_request_is_closed_after_the_wait() {
    let extra = "transport = \"websocket\"\n[limits]\nmax_connections_per_ip = 1";
    let mut w = Wire::with_listener(NetConfig::default(), extra);
    let _first = w.connect(40_210);
    w.run_until(|w| w.core.connection_count() == 1);
    let second = w.connect(40_211);
    w.run_until(|w| w.sock(second).state() == tcp::State::Established);
    let opened = w.now;
    w.run_until(|w| !w.sock(second).may_recv());
    let waited = w.now - opened;
    assert!(
        waited >= REFUSED_HANDSHAKE_WAIT && waited < REFUSED_HANDSHAKE_WAIT + Duration::from_millis(500),
        "{waited:?}"
    );
}

#[test]
fn logout_closes_the_tcp_connection_from_the_gateway_side() {
    let mut w = Wire::new(NetConfig::default());
    let h = w.connect(40_001);
    w.run_until(|w| w.core.connection_count() == 1);
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login_frame("bob")));
    let mut buf = Vec::new();
    assert_eq!(w.recv(h, &mut buf).cmd, cmd::LOGIN);
    w.send(h, &Envelope::new(cmd::LOGOUT, 2, 0, b""));
    assert_eq!(w.recv(h, &mut buf).cmd, cmd::LOGOUT);
    w.run_until(|w| !w.sock(h).may_recv());
    assert_eq!(w.core.connection_count(), 0);
}

#[test]
fn many_clients_share_a_port_and_the_backlog_bounds_half_open_sockets() {
    let mut w = Wire::new(NetConfig { backlog: 4, ..NetConfig::default() });
    // Waves of four SYNs at once: a listening socket opens for each, and an
    // established connection frees its place in the backlog.
    let mut clients = Vec::new();
    for wave in 0..3u16 {
        let hs: Vec<SocketHandle> = (0..4).map(|i| w.connect(41_000 + wave * 4 + i)).collect();
        w.run_until(|w| hs.iter().all(|&h| w.sock(h).state() == tcp::State::Established));
        assert!(w.stack.listening() <= 4, "never more half-open sockets than the backlog");
        clients.extend(hs);
    }
    w.run_until(|w| w.core.connection_count() == 12);
    assert_eq!(w.stack.listening(), 0, "no socket listens without a SYN");
    for (i, &h) in clients.iter().enumerate() {
        w.send(h, &Envelope::new(cmd::HEARTBEAT, i as u32 + 1, 0, b""));
    }
    for (i, &h) in clients.iter().enumerate() {
        let mut buf = Vec::new();
        assert_eq!(w.recv(h, &mut buf).seq, i as u32 + 1);
    }
}

#[test]
fn the_udp_echo_service_answers_each_datagram_to_its_sender() {
    let mut w = Wire::new(NetConfig { udp_echo: Some(7100), ..NetConfig::default() });
    let buffer = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 65536]);
    let mut s = udp::Socket::new(buffer(), buffer());
    s.bind(40_000).unwrap();
    let h = w.sockets.add(s);
    // Sizes from one byte to a full frame's worth, several in flight.
    let sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + usize::from(i) * 70]).collect();
    for d in &sent {
        w.sockets.get_mut::<udp::Socket>(h).send_slice(d, (IpAddress::from(GW), 7100)).unwrap();
    }
    let mut got = Vec::new();
    w.run_until(|w| {
        let s = w.sockets.get_mut::<udp::Socket>(h);
        while let Ok((d, meta)) = s.recv() {
            assert_eq!(meta.endpoint, (IpAddress::from(GW), 7100).into(), "answered from the echo port");
            got.push(d.to_vec());
        }
        got.len() == sent.len()
    });
    assert_eq!(got, sent);
    // Another port is not echoed.
    w.sockets.get_mut::<udp::Socket>(h).send_slice(b"nobody", (IpAddress::from(GW), 7101)).unwrap();
    for _ in 0..50 {
        w.step();
    }
    assert!(w.sockets.get_mut::<udp::Socket>(h).recv().is_err());
}

#[test]
fn ipv6_neighbour_discovery_tcp_and_icmp_echo_on_both_families() {
    use smoltcp::socket::icmp;
    use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr};
    let mut w = Wire::new(NetConfig::default());
    // TCP over IPv6: the client resolves the gateway by neighbour
    // solicitation, the stack answers, and resolves the client in turn.
    let h = w.connect_to(IpAddress::from(GW6), 40_100);
    w.run_until(|w| w.sock(h).state() == tcp::State::Established);
    w.run_until(|w| w.core.connection_count() == 1);
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login_frame("v6")));
    let mut buf = Vec::new();
    let reply = w.recv(h, &mut buf);
    assert_eq!((reply.cmd, reply.flags), (cmd::LOGIN, flags::RESPONSE));

    // ICMP echo to both of the gateway's addresses.
    let buffer = || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]);
    let mut s = icmp::Socket::new(buffer(), buffer());
    s.bind(icmp::Endpoint::Ident(0x1234)).unwrap();
    let ping = w.sockets.add(s);
    let caps = smoltcp::phy::DeviceCapabilities::default();
    let data = b"portcullis ping";
    let v4 = Icmpv4Repr::EchoRequest { ident: 0x1234, seq_no: 1, data };
    let mut bytes = vec![0; v4.buffer_len()];
    v4.emit(&mut Icmpv4Packet::new_unchecked(&mut bytes), &caps.checksum);
    w.sockets.get_mut::<icmp::Socket>(ping).send_slice(&bytes, IpAddress::from(GW)).unwrap();
    let v6 = Icmpv6Repr::EchoRequest { ident: 0x1234, seq_no: 2, data };
    let mut bytes = vec![0; v6.buffer_len()];
    v6.emit(&CLIENT6, &GW6, &mut Icmpv6Packet::new_unchecked(&mut bytes), &caps.checksum);
    w.sockets.get_mut::<icmp::Socket>(ping).send_slice(&bytes, IpAddress::from(GW6)).unwrap();
    let mut replies = Vec::new();
    w.run_until(|w| {
        while let Ok((packet, from)) = w.sockets.get_mut::<icmp::Socket>(ping).recv() {
            replies.push((from, packet.to_vec()));
        }
        replies.len() == 2
    });
    replies.sort_by_key(|(from, _)| matches!(from, IpAddress::Ipv6(_)));
    let r4 = Icmpv4Packet::new_checked(&replies[0].1).unwrap();
    assert_eq!(replies[0].0, IpAddress::from(GW));
    assert_eq!(
        Icmpv4Repr::parse(&r4, &caps.checksum).unwrap(),
        Icmpv4Repr::EchoReply { ident: 0x1234, seq_no: 1, data }
    );
    let r6 = Icmpv6Packet::new_checked(&replies[1].1).unwrap();
    assert_eq!(replies[1].0, IpAddress::from(GW6));
    assert_eq!(
        Icmpv6Repr::parse(&GW6, &CLIENT6, &r6, &caps.checksum).unwrap(),
        Icmpv6Repr::EchoReply { ident: 0x1234, seq_no: 2, data }
    );
}

/// A SYN from a spoofed source that will never complete the handshake.
fn spoofed_syn(src: Ipv4Address, port: u16) -> Vec<u8> {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
        TcpRepr, TcpSeqNumber,
    };
    let tcp = TcpRepr {
        src_port: port,
        dst_port: 7000,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 64_000,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: GW,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress([2, 0, 0, 0, 0, 9]),
        dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        ethertype: EthernetProtocol::Ipv4,
    };
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    let mut frame = vec![0; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut e = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.emit(&mut e);
    let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
    ip.emit(&mut p, &caps);
    tcp.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), &src.into(), &GW.into(), &caps);
    frame
}

#[test]
fn a_syn_flood_fills_only_the_backlog_and_players_get_in_through_cookies() {
    let mut w = Wire::new(NetConfig { backlog: 4, ..NetConfig::default() });
    // Twenty spoofed SYNs: four take the whole backlog, the rest get a
    // cookie and cost nothing.
    for i in 0..20u8 {
        w.gw_dev.push_rx(&spoofed_syn(Ipv4Address::new(10, 77, 0, 100 + i), 50_000));
    }
    w.step();
    assert_eq!(w.stack.listening(), 4, "the backlog bounds what a flood holds");
    assert_eq!(w.stack.counters.syn_cookies_sent, 16);
    // A player arriving now gets in through a cookie, and its connection
    // works both ways with the sequence numbers shifted: a login, and more
    // data than one window each way.
    let h = w.connect(42_000);
    w.run_until(|w| w.sock(h).state() == tcp::State::Established);
    w.run_until(|w| w.core.connection_count() == 1);
    assert_eq!(w.stack.counters.syn_cookies_accepted, 1);
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login_frame("cookie")));
    let mut buf = Vec::new();
    assert_eq!(w.recv(h, &mut buf).cmd, cmd::LOGIN);
    for round in 0..20u32 {
        let mut batch = Vec::new();
        for seq in 0..20 {
            let payload = vec![round as u8; 200];
            Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, 100 + round * 20 + seq, 0, &payload), &mut batch);
        }
        assert_eq!(w.sock(h).send_slice(&batch).unwrap(), batch.len());
        for seq in 0..20 {
            assert_eq!(w.recv(h, &mut buf).seq, 100 + round * 20 + seq);
        }
    }
    // Past the handshake timeout the spoofed half-open sockets are gone.
    for _ in 0..5_100 {
        w.step();
    }
    assert_eq!(w.stack.listening(), 0);
    let h2 = w.connect(42_001);
    w.run_until(|w| w.sock(h2).state() == tcp::State::Established);
    w.run_until(|w| w.core.connection_count() == 2);
    assert_eq!(w.stack.counters.syn_cookies_accepted, 1, "a free backlog needs no cookie");
}

#[test]
fn a_close_delivers_everything_queued_before_the_fin() {
    let mut w = Wire::new(NetConfig::default());
    // A player with a small window who stops reading.
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 2048]), tcp::SocketBuffer::new(vec![0; 65536]));
    s.connect(w.client.context(), (IpAddress::from(GW), 7000), 43_000).unwrap();
    let h = w.sockets.add(s);
    w.run_until(|w| w.core.connection_count() == 1);
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login_frame("slow")));
    let mut buf = Vec::new();
    assert_eq!(w.recv(h, &mut buf).cmd, cmd::LOGIN);
    // 900 requests (under the rate limit's burst): their answers are far
    // more than the player's window and the gateway's send buffer hold.
    let mut batch = Vec::new();
    for seq in 0..900 {
        Codec::Protobuf.encode(&Envelope::new(cmd::HEARTBEAT, 10 + seq, 0, b""), &mut batch);
    }
    for chunk in batch.chunks(1024) {
        w.sock(h).send_slice(chunk).unwrap();
        for _ in 0..20 {
            w.step();
        }
    }
    for _ in 0..200 {
        w.step();
    }
    assert!(!w.core.outbound(ConnId::new(Transport::UserTcp, 1)).is_empty(), "answers wait in the core");
    // The gateway shuts down: a KICK after the answers, then the close.
    w.core.shutdown(w.now);
    for _ in 0..50 {
        w.step();
    }
    assert_eq!(w.core.connection_count(), 0, "the core let go of the connection");
    // Now the player reads: every answer, in order, then the KICK, then EOF.
    let mut seqs = Vec::new();
    loop {
        let env = w.recv(h, &mut buf);
        if env.cmd == cmd::KICK {
            break;
        }
        assert_eq!(env.cmd, cmd::HEARTBEAT);
        seqs.push(env.seq);
    }
    assert_eq!(seqs, (10..910).collect::<Vec<u32>>(), "nothing lost, nothing reordered");
    w.run_until(|w| !w.sock(h).may_recv());
    assert!(buf.is_empty(), "nothing after the KICK");
    // The player closes its side too: the gateway's socket is freed.
    assert_eq!(w.stack.closing(), 1);
    w.sock(h).close();
    w.run_until(|w| w.stack.closing() == 0);
}

#[test]
fn an_idle_connection_gives_its_buffer_pages_back_and_works_after() {
    let mut w = Wire::new(NetConfig::default());
    let h = w.connect(40_010);
    w.run_until(|w| w.core.connection_count() == 1);
    w.send(h, &Envelope::new(cmd::LOGIN, 1, 0, &login_frame("idle")));
    let mut buf = Vec::new();
    assert_eq!(w.recv(h, &mut buf).cmd, cmd::LOGIN);
    assert_eq!(w.stack.buffers_backed(), 1, "bytes went through the rings");
    // Quiet past RELEASE_AFTER (in the wire's time): the pages go back.
    w.run_until(|w| w.stack.buffers_backed() == 0);
    assert!(w.now - w.start >= buffers::RELEASE_AFTER);
    // The rings work as before: 40 messages of 500 bytes to itself, more
    // than either ring holds at once, come back intact (a push and an answer
    // each).
    let payload: Vec<u8> = (0..500u32).map(|i| i as u8).collect();
    let msg = SendToUser { user_id: "idle".into(), payload: payload.clone() };
    let msg = Codec::Protobuf.payload_form().encode_to_vec(&msg);
    let (mut sent, mut pushes, mut answers) = (0u32, 0, Vec::new());
    while answers.len() < 40 {
        if sent < 40 && w.sock(h).send_queue() < 2_000 {
            sent += 1;
            w.send(h, &Envelope::new(cmd::SEND_TO_USER, 100 + sent, 0, &msg));
        }
        let env = w.recv(h, &mut buf);
        if env.flags & flags::RESPONSE != 0 {
            answers.push(env.seq);
        } else {
            assert!(env.payload.ends_with(&payload), "the message arrives intact");
            pushes += 1;
        }
    }
    assert_eq!(answers, (101..141).collect::<Vec<u32>>());
    assert_eq!(pushes, 40);
    assert_eq!(w.stack.buffers_backed(), 1);
}
